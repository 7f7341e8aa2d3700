// r1lite's compiled decoding step for a CPU: fp32, x86 with AVX2 and FMA, a few sequences at a time.
//
// rows_linear: y = x @ w.T + bias for a few rows of x (a decoding step's sequences). At a handful of rows a
// decoding step's products are bound by how fast the weights stream from memory, not by arithmetic. It reads the
// weight rows two at a time, once, front to back, and multiplies them into blocks of four rows of x held in the
// first-level cache, prefetching the weights a fixed distance ahead of where it reads. The output columns are split
// across torch's threads in contiguous blocks, so each thread streams one contiguous range.
//
// decode_layers: every decoder layer of a Llama-family model for one new token per sequence, in one call: RMS
// norms, the stacked q/k/v product, the rotary embedding, the write into the key/value cache, attention over the
// cache, the output product, the gated MLP and both residual additions. Between products, torch would run some
// forty small operations per layer, each with its fixed cost; here they are loops over a few rows.
//
// Built on first use by r1lite.kernels (torch.utils.cpp_extension); never required: without a compiler, r1lite
// decodes with torch's operations and oneDNN's products instead.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kBlock = 8;                // rows of x multiplied into one pass over a weight row
constexpr int64_t kPrefetchFloats = 4096;    // how far ahead of the read the weights are prefetched (16 KiB)
constexpr int64_t kGrain = 64;               // fewest output columns a thread takes

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

// One weight row (K floats) into M <= kBlock rows of x (K apart): out[m * N] = x[m] . row (+ bias).
template <int M>
void dot_rows(const float* x, const float* row, float bias, float* out, int64_t K, int64_t N) {
  const int64_t body = K - K % 8;
  __m256 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < body; k += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(row + k + kPrefetchFloats), _MM_HINT_T0);
    const __m256 wv = _mm256_loadu_ps(row + k);
    for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), wv, acc[m]);
  }
  for (int m = 0; m < M; ++m) {
    float sum = horizontal_sum(acc[m]);
    for (int64_t k = body; k < K; ++k) sum += x[m * K + k] * row[k];
    out[m * N] = sum + bias;
  }
}

using DotRows = void (*)(const float*, const float*, float, float*, int64_t, int64_t);
constexpr DotRows kDotRows[kBlock] = {dot_rows<1>, dot_rows<2>, dot_rows<3>, dot_rows<4>,
                                      dot_rows<5>, dot_rows<6>, dot_rows<7>, dot_rows<8>};

// Two weight rows (K floats each, one after the other) into M <= kPairBlock rows of x: each x load feeds two
// fused multiply-adds, where dot_rows spends one load per multiply-add and runs out of load slots at eight rows.
// Rows of x beyond kPairBlock take another pass over the same two weight rows, then in the first-level cache.
constexpr int64_t kPairBlock = 4;

template <int M>
void dot_rows_pair(const float* x, const float* row, const float* bias, float* out, int64_t K, int64_t N) {
  const int64_t body = K - K % 8;
  const float* next = row + K;
  __m256 acc0[M], acc1[M];
  for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < body; k += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(row + k + kPrefetchFloats), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(next + k + kPrefetchFloats), _MM_HINT_T0);
    const __m256 w0 = _mm256_loadu_ps(row + k), w1 = _mm256_loadu_ps(next + k);
    for (int m = 0; m < M; ++m) {
      __m256 xv = _mm256_loadu_ps(x + m * K + k);
      asm("" : "+x"(xv));  // held in a register: compilers otherwise fold the load into both multiply-adds
      acc0[m] = _mm256_fmadd_ps(xv, w0, acc0[m]);
      acc1[m] = _mm256_fmadd_ps(xv, w1, acc1[m]);
    }
  }
  for (int m = 0; m < M; ++m) {
    float sum0 = horizontal_sum(acc0[m]), sum1 = horizontal_sum(acc1[m]);
    for (int64_t k = body; k < K; ++k) {
      sum0 += x[m * K + k] * row[k];
      sum1 += x[m * K + k] * next[k];
    }
    out[m * N] = sum0 + (bias ? bias[0] : 0.0f);
    out[m * N + 1] = sum1 + (bias ? bias[1] : 0.0f);
  }
}

using DotRowsPair = void (*)(const float*, const float*, const float*, float*, int64_t, int64_t);
constexpr DotRowsPair kDotRowsPair[kPairBlock] = {dot_rows_pair<1>, dot_rows_pair<2>, dot_rows_pair<3>,
                                                  dot_rows_pair<4>};

// y (M, N) = x (M, K) @ w (N, K).T + b, all contiguous; b may be null.
void linear_rows(const float* xp, int64_t M, int64_t K, const float* wp, int64_t N, const float* b, float* yp) {
  // Output columns in pairs (a pair's two weight rows are read together); an odd last column alone.
  at::parallel_for(0, (N + 1) / 2, kGrain / 2, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {  // each weight row read from memory once, for all rows of x
      const int64_t n = 2 * p;
      if (n + 1 < N) {
        for (int64_t m0 = 0; m0 < M; m0 += kPairBlock) {
          const int64_t count = std::min(kPairBlock, M - m0);
          kDotRowsPair[count - 1](xp + m0 * K, wp + n * K, b ? b + n : nullptr, yp + m0 * N + n, K, N);
        }
      } else {
        for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
          const int64_t count = std::min(kBlock, M - m0);
          kDotRows[count - 1](xp + m0 * K, wp + n * K, b ? b[n] : 0.0f, yp + m0 * N + n, K, N);
        }
      }
    }
  });
}

torch::Tensor rows_linear(const torch::Tensor& x, const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rows_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat, "rows_linear: fp32 only");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "rows_linear: a contiguous (out, in) weight");
  const int64_t K = weight.size(1), N = weight.size(0);
  TORCH_CHECK(x.size(-1) == K, "rows_linear: x has ", x.size(-1), " features, the weight ", K);
  const torch::Tensor rows = x.reshape({-1, K}).contiguous();
  const int64_t M = rows.size(0);
  const float* b = nullptr;
  torch::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->numel() == N, "rows_linear: an fp32 bias of ", N);
    bias_c = bias->contiguous();
    b = bias_c.data_ptr<float>();
  }
  torch::Tensor y = torch::empty({M, N}, rows.options());
  linear_rows(rows.data_ptr<float>(), M, K, weight.data_ptr<float>(), N, b, y.data_ptr<float>());
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

// ---- decode_layers ----------------------------------------------------------------------------------------

// Per layer, in this order (an empty tensor where a layer has no bias).
enum Weight { kNorm1, kQKV, kQKVBias, kO, kOBias, kNorm2, kGateUp, kGateUpBias, kDown, kDownBias, kPerLayer };

inline float dot(const float* a, const float* b, int64_t n) {
  const int64_t body = n - n % 8;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < body; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float sum = horizontal_sum(acc);
  for (int64_t i = body; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y += p * v over n floats.
inline void axpy(float p, const float* v, float* y, int64_t n) {
  const int64_t body = n - n % 8;
  const __m256 pv = _mm256_set1_ps(p);
  for (int64_t i = 0; i < body; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + i), _mm256_loadu_ps(y + i)));
  for (int64_t i = body; i < n; ++i) y[i] += p * v[i];
}

// e^x for eight floats, to within a few units in the last place: e^x = 2^n * e^r with n = round(x / ln 2) and
// |r| <= ln(2) / 2, e^r from its degree-7 Taylor-like polynomial (minimax coefficients), 2^n written into the
// exponent bits. Exactly 0 below -87.3 (where e^x leaves fp32's normal range: masked attention columns) and
// clamped at 88 above (e^88 ~ 1.7e38, still finite).
inline __m256 exp8(__m256 x) {
  const __m256 low = _mm256_set1_ps(-87.3f);
  const __m256 vanish = _mm256_cmp_ps(x, low, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, low), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln 2, with ln 2 split into a part exact in fp32 and the rest.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.9875691500e-4f);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.3981999507e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
  poly = _mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(vanish, _mm256_mul_ps(poly, _mm256_castsi256_ps(exponent)));
}

// p[i] = e^(p[i] - shift) over n floats; returns their sum.
inline float exp_shifted(float* p, float shift, int64_t n) {
  const int64_t body = n - n % 8;
  const __m256 sv = _mm256_set1_ps(shift);
  __m256 total = _mm256_setzero_ps();
  for (int64_t i = 0; i < body; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + i), sv));
    _mm256_storeu_ps(p + i, e);
    total = _mm256_add_ps(total, e);
  }
  float sum = horizontal_sum(total);
  for (int64_t i = body; i < n; ++i) sum += (p[i] = std::exp(p[i] - shift));
  return sum;
}

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i] over n floats.
inline void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  const int64_t body = n - n % 8;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < body; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 sigmoid = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid), _mm256_loadu_ps(up + i)));
  }
  for (int64_t i = body; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// transformers' RMSNorm in fp32: weight * x / sqrt(mean(x^2) + eps), row by row.
void rms_norm(const float* x, const float* weight, double eps, float* out, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * width;
    const float scale = 1.0f / std::sqrt(dot(xr, xr, width) / static_cast<float>(width) + static_cast<float>(eps));
    for (int64_t i = 0; i < width; ++i) out[r * width + i] = weight[i] * (xr[i] * scale);
  }
}

const float* bias_of(const torch::Tensor& bias) { return bias.numel() ? bias.data_ptr<float>() : nullptr; }

// x (B, hidden): the embeddings of each sequence's new token, turned into the last layer's output in place.
// cos, sin (B, D): the rotary embedding at each sequence's position, sin with its first half negated (so that
// rotate_half(t) * sin == swap_halves(t) * sin). keys, values: per layer (B, KV, W, D), the cache of slot b in row
// b; the new key and value go to column columns[b]. mask (B, W): additive, 0 where a column may be attended to.
torch::Tensor decode_layers(torch::Tensor x, const std::vector<torch::Tensor>& weights, const std::vector<double>& eps,
                            const std::vector<torch::Tensor>& keys, const std::vector<torch::Tensor>& values,
                            const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& columns,
                            const torch::Tensor& mask, int64_t heads, int64_t kv_heads, double scaling) {
  const int64_t layers = static_cast<int64_t>(keys.size());
  TORCH_CHECK(layers > 0 && values.size() == keys.size(), "decode_layers: keys and values for every layer");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == layers * kPerLayer, "decode_layers: ", kPerLayer,
              " weights per layer");
  TORCH_CHECK(static_cast<int64_t>(eps.size()) == 2 * layers, "decode_layers: two norm epsilons per layer");
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() == 2 && x.is_contiguous(), "decode_layers: x (B, hidden) fp32");
  const int64_t B = x.size(0), hidden = x.size(1);
  const int64_t D = keys[0].size(3), W = keys[0].size(2), groups = heads / kv_heads;
  TORCH_CHECK(heads % kv_heads == 0 && keys[0].size(1) == kv_heads, "decode_layers: heads do not match the cache");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.size(0) == B && cos.size(1) == D && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == torch::kFloat && sin.scalar_type() == torch::kFloat,
              "decode_layers: cos and sin (B, head_dim) fp32");
  TORCH_CHECK(mask.scalar_type() == torch::kFloat && mask.dim() == 2 && mask.size(0) == B && mask.size(1) == W &&
                  mask.is_contiguous(), "decode_layers: mask (B, width) fp32");
  TORCH_CHECK(columns.scalar_type() == torch::kLong && columns.numel() == B, "decode_layers: one column per row");
  for (int64_t l = 0; l < layers; ++l) {
    for (const auto* cache : {&keys[l], &values[l]}) {
      TORCH_CHECK(cache->scalar_type() == torch::kFloat && cache->is_contiguous() && cache->dim() == 4 &&
                      cache->size(0) == B && cache->size(1) == kv_heads && cache->size(2) == W && cache->size(3) == D,
                  "decode_layers: a contiguous fp32 cache (B, KV, W, D) per layer");
    }
    for (int64_t w = 0; w < kPerLayer; ++w) {
      const auto& t = weights[l * kPerLayer + w];
      TORCH_CHECK(t.scalar_type() == torch::kFloat && t.is_contiguous(), "decode_layers: contiguous fp32 weights");
    }
  }
  const int64_t* cols = columns.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(cols[b] >= 0 && cols[b] < W, "decode_layers: column outside the cache");
  const int64_t qkv_width = (heads + 2 * kv_heads) * D;
  const int64_t intermediate = weights[kDown].size(1);
  const int64_t half = D / 2;

  auto options = x.options();
  torch::Tensor h_t = torch::empty({B, hidden}, options);
  torch::Tensor qkv_t = torch::empty({B, qkv_width}, options);
  torch::Tensor attn_t = torch::empty({B, heads * D}, options);
  torch::Tensor proj_t = torch::empty({B, hidden}, options);
  torch::Tensor gate_up_t = torch::empty({B, 2 * intermediate}, options);
  torch::Tensor gated_t = torch::empty({B, intermediate}, options);
  torch::Tensor probs_t = torch::empty({B * heads, W}, options);
  float* xp = x.data_ptr<float>();
  float* h = h_t.data_ptr<float>();
  float* qkv = qkv_t.data_ptr<float>();
  float* attn = attn_t.data_ptr<float>();
  float* proj = proj_t.data_ptr<float>();
  float* gate_up = gate_up_t.data_ptr<float>();
  float* gated = gated_t.data_ptr<float>();
  float* probs = probs_t.data_ptr<float>();
  const float* cosp = cos.data_ptr<float>();
  const float* sinp = sin.data_ptr<float>();
  const float* maskp = mask.data_ptr<float>();
  std::vector<float> turned(D);

  for (int64_t l = 0; l < layers; ++l) {
    const torch::Tensor* w = &weights[l * kPerLayer];
    float* kc = keys[l].data_ptr<float>();
    float* vc = values[l].data_ptr<float>();

    rms_norm(xp, w[kNorm1].data_ptr<float>(), eps[2 * l], h, B, hidden);
    linear_rows(h, B, hidden, w[kQKV].data_ptr<float>(), qkv_width, bias_of(w[kQKVBias]), qkv);
    for (int64_t b = 0; b < B; ++b) {
      float* row = qkv + b * qkv_width;
      const float* c = cosp + b * D;
      const float* s = sinp + b * D;
      for (int64_t head = 0; head < heads + kv_heads; ++head) {  // queries and keys turn; values do not
        float* t = row + head * D;
        for (int64_t i = 0; i < D; ++i) turned[i] = t[i] * c[i] + t[i < half ? i + half : i - half] * s[i];
        std::copy(turned.begin(), turned.end(), t);
      }
      for (int64_t g = 0; g < kv_heads; ++g) {
        const int64_t at = ((b * kv_heads + g) * W + cols[b]) * D;
        std::copy(row + (heads + g) * D, row + (heads + g + 1) * D, kc + at);
        std::copy(row + (heads + kv_heads + g) * D, row + (heads + kv_heads + g + 1) * D, vc + at);
      }
    }
    // Attention, one task per (sequence, key/value head): its query heads share each key and value read.
    at::parallel_for(0, B * kv_heads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t b = task / kv_heads, g = task % kv_heads;
        const float* kb = kc + (b * kv_heads + g) * W * D;
        const float* vb = vc + (b * kv_heads + g) * W * D;
        const float* m = maskp + b * W;
        for (int64_t j = 0; j < groups; ++j) {
          const int64_t head = g * groups + j;
          const float* q = qkv + b * qkv_width + head * D;
          float* p = probs + (b * heads + head) * W;
          float top = -std::numeric_limits<float>::infinity();
          for (int64_t c = 0; c < W; ++c) {
            p[c] = dot(q, kb + c * D, D) * static_cast<float>(scaling) + m[c];
            top = std::max(top, p[c]);
          }
          const float total = exp_shifted(p, top, W);
          float* out = attn + b * heads * D + head * D;
          std::fill(out, out + D, 0.0f);
          const float inverse = 1.0f / total;
          for (int64_t c = 0; c < W; ++c) {
            if (p[c] != 0.0f) axpy(p[c] * inverse, vb + c * D, out, D);
          }
        }
      }
    });
    linear_rows(attn, B, heads * D, w[kO].data_ptr<float>(), hidden, bias_of(w[kOBias]), proj);
    for (int64_t i = 0; i < B * hidden; ++i) xp[i] += proj[i];

    rms_norm(xp, w[kNorm2].data_ptr<float>(), eps[2 * l + 1], h, B, hidden);
    linear_rows(h, B, hidden, w[kGateUp].data_ptr<float>(), 2 * intermediate, bias_of(w[kGateUpBias]), gate_up);
    for (int64_t b = 0; b < B; ++b) {
      const float* gate = gate_up + b * 2 * intermediate;
      silu_mul(gate, gate + intermediate, gated + b * intermediate, intermediate);
    }
    linear_rows(gated, B, intermediate, w[kDown].data_ptr<float>(), hidden, bias_of(w[kDownBias]), proj);
    for (int64_t i = 0; i < B * hidden; ++i) xp[i] += proj[i];
  }
  return x;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rows_linear", &rows_linear, "x @ weight.T + bias for a few rows of x (fp32, AVX2 + FMA)");
  m.def("decode_layers", &decode_layers, "every decoder layer for one new token per sequence (fp32, AVX2 + FMA)");
}

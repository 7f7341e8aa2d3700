// r1lite's compiled decoding step for a CPU: fp32, x86 with AVX2 and FMA, a few sequences at a time.
//
// panels_linear: y = x @ w.T + bias, the weight laid out once in panels of 16 output columns (r1lite.kernels.pack),
// for the few rows of a decoding step and the few hundred of a prefill alike.
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
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

namespace {

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

// ---- panels_linear ----------------------------------------------------------------------------------------
//
// A product computed as dot products of x's rows with the weight's rows (the weight as torch holds it) sweeps all
// of x again from the second-level cache for every weight row: from a dozen rows of x up, that sweep, not the
// arithmetic, sets its speed. Here the weight is laid out once in panels of kPanel output columns,
// (ceil(N / kPanel), K, kPanel), zeros past N, and a product is a sum of outer products: per k, one panel row (two
// vector loads) times up to kPanelRows broadcast values of x, into 2 x kPanelRows accumulators held in registers.
// x is taken in chunks of rows that stay in the second-level cache and K in blocks whose slice of a panel stays in
// the first; threads take a few panels at a time, each streamed front to back with software prefetch. Every
// product of the embedded model's decoding step, LM head included, on an AVX2 EPYC: as fast as the dot-product form
// r1lite used before at 1-8 rows (both bound by memory), 1.12-1.30x faster at 16-32 (benchmarks/panels_vs_rows.py).
constexpr int64_t kPanel = 16;              // output columns per panel: two vectors of eight
constexpr int64_t kPanelRows = 6;           // rows of x per pass over a panel: 12 accumulators, 2 loads, 1 broadcast
constexpr int64_t kDepth = 256;             // K per block: a panel's block is 16 KiB, its six rows of x 6 KiB
constexpr int64_t kChunkBytes = 256 << 10;  // rows of x taken together: about half of a core's second-level cache
constexpr int64_t kPanelPrefetch = 256;     // panel rows (64 B each) prefetched ahead of the read: 16 KiB
constexpr int64_t kGrab = 4;                // panels a thread takes at a time

// Rows m < M of y[:, n0:n0 + kPanel] (+)= x[:, k0:k0 + depth] @ panel block; `first`: = bias (or 0) + product.
template <int M>
void panel_rows(const float* x, int64_t K, const float* panel, int64_t depth, const float* bias, bool first, float* y,
                int64_t N, int64_t n0) {
  const int64_t width = std::min(kPanel, N - n0);
  alignas(32) float row[kPanel] = {};
  __m256 acc0[M], acc1[M];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {  // compilers keep acc0/acc1 in registers only where every loop over m unrolls
    if (first) {
      acc0[m] = acc1[m] = _mm256_setzero_ps();
    } else if (width == kPanel) {
      acc0[m] = _mm256_loadu_ps(y + m * N + n0);
      acc1[m] = _mm256_loadu_ps(y + m * N + n0 + 8);
    } else {
      std::copy(y + m * N + n0, y + m * N + n0 + width, row);
      acc0[m] = _mm256_load_ps(row);
      acc1[m] = _mm256_load_ps(row + 8);
    }
  }
  for (int64_t k = 0; k < depth; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(panel + (k + kPanelPrefetch) * kPanel), _MM_HINT_T0);
    const __m256 w0 = _mm256_loadu_ps(panel + k * kPanel), w1 = _mm256_loadu_ps(panel + k * kPanel + 8);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_broadcast_ss(x + m * K + k);
      acc0[m] = _mm256_fmadd_ps(xv, w0, acc0[m]);
      acc1[m] = _mm256_fmadd_ps(xv, w1, acc1[m]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    float* out = y + m * N + n0;
    const bool with_bias = first && bias;
    if (width == kPanel) {
      const __m256 b0 = with_bias ? _mm256_loadu_ps(bias + n0) : _mm256_setzero_ps();
      const __m256 b1 = with_bias ? _mm256_loadu_ps(bias + n0 + 8) : _mm256_setzero_ps();
      _mm256_storeu_ps(out, _mm256_add_ps(acc0[m], b0));
      _mm256_storeu_ps(out + 8, _mm256_add_ps(acc1[m], b1));
    } else {  // the last panel: zeros past N
      _mm256_store_ps(row, acc0[m]);
      _mm256_store_ps(row + 8, acc1[m]);
      for (int64_t j = 0; j < width; ++j) out[j] = row[j] + (with_bias ? bias[n0 + j] : 0.0f);
    }
  }
}

using PanelRows = void (*)(const float*, int64_t, const float*, int64_t, const float*, bool, float*, int64_t, int64_t);
constexpr PanelRows kPanelRowsFns[kPanelRows] = {panel_rows<1>, panel_rows<2>, panel_rows<3>,
                                                 panel_rows<4>, panel_rows<5>, panel_rows<6>};

// Runs `work(take)` once on every thread of torch's pool; `take(begin, end)` hands the calling thread the next `grab`
// of `count` items, [begin, end), from a counter the threads share, and returns false once none are left. A thread
// that runs fast takes more: with halves fixed in advance, the faster thread waited for the slower at the end of
// every loop, and on a shared host one core often runs slower than the other.
template <typename Work>
void share_out(int64_t count, int64_t grab, const Work& work) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    work([&](int64_t& begin, int64_t& end) {
      begin = next.fetch_add(grab);
      end = std::min(count, begin + grab);
      return begin < count;
    });
  });
}

// y (M, N) = x (M, K) @ w.T + b, w laid out in panels (ceil(N / kPanel), K, kPanel); all contiguous, b may be null.
// Threads take panels kGrab at a time (`share_out`).
void linear_panels(const float* xp, int64_t M, int64_t K, const float* panels, int64_t N, const float* b, float* yp) {
  const int64_t count = (N + kPanel - 1) / kPanel;
  const int64_t chunk = std::max<int64_t>(kPanelRows, kChunkBytes / (K * 4) / kPanelRows * kPanelRows);
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t m1 = std::min(M, m0 + chunk);
    share_out(count, kGrab, [&](const auto& take) {
      for (int64_t first, last; take(first, last);) {
        for (int64_t p = first; p < last; ++p) {
          for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
            const float* block = panels + (p * K + k0) * kPanel;
            const int64_t depth = std::min(kDepth, K - k0);
            // Passes of near-equal rows (26 rows as 6 + 5 + 5 + 5 + 5, not 6 + 6 + 6 + 6 + 2): a pass of one or two
            // rows has too few accumulators to hide the multiply-add's latency, and cost 1.5x a row of a full pass.
            for (int64_t m = m0; m < m1;) {
              const int64_t left = m1 - m, passes = (left + kPanelRows - 1) / kPanelRows;
              const int64_t rows = (left + passes - 1) / passes;
              kPanelRowsFns[rows - 1](xp + m * K + k0, K, block, depth, b, k0 == 0, yp + m * N, N, p * kPanel);
              m += rows;
            }
          }
        }
      }
    });
  }
}

// Whether `panels` is an fp32 weight of N outputs laid out by r1lite.kernels.pack: contiguous (ceil(N / kPanel), K,
// kPanel).
bool laid_out(const torch::Tensor& panels, int64_t N) {
  return panels.scalar_type() == torch::kFloat && panels.dim() == 3 && panels.size(2) == kPanel &&
         panels.size(0) == (N + kPanel - 1) / kPanel && panels.is_contiguous();
}

torch::Tensor panels_linear(const torch::Tensor& x, const torch::Tensor& panels, int64_t N,
                            const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && panels.device().is_cpu(), "panels_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == torch::kFloat && panels.scalar_type() == torch::kFloat, "panels_linear: fp32 only");
  TORCH_CHECK(laid_out(panels, N), "panels_linear: a contiguous (ceil(N / ", kPanel, "), K, ", kPanel,
              ") weight for N = ", N);
  const int64_t K = panels.size(1);
  TORCH_CHECK(x.size(-1) == K, "panels_linear: x has ", x.size(-1), " features, the weight ", K);
  const torch::Tensor rows = x.reshape({-1, K}).contiguous();
  const float* b = nullptr;
  torch::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->numel() == N, "panels_linear: an fp32 bias of ", N);
    bias_c = bias->contiguous();
    b = bias_c.data_ptr<float>();
  }
  torch::Tensor y = torch::empty({rows.size(0), N}, rows.options());
  linear_panels(rows.data_ptr<float>(), rows.size(0), K, panels.data_ptr<float>(), N, b, y.data_ptr<float>());
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

// The dot products of q (D floats, D a multiple of 8) with eight keys D floats apart, as one vector: eight
// accumulators, then one transposing reduction (three rounds of pairwise sums) where eight separate dot products
// would each end in a horizontal sum of their own.
inline __m256 dot8(const float* q, const float* keys, int64_t D) {
  __m256 acc[8];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < D; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys + j * D + i), acc[j]);
  }
  const __m256 s01 = _mm256_hadd_ps(acc[0], acc[1]), s23 = _mm256_hadd_ps(acc[2], acc[3]);
  const __m256 s45 = _mm256_hadd_ps(acc[4], acc[5]), s67 = _mm256_hadd_ps(acc[6], acc[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  // s0123: the halves of keys 0-3's sums in its two 128-bit lanes, s4567 those of keys 4-7.
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// out (V vectors of 8) = sum over c < n of p[c] * inverse * v[c], v[c] read from `common` for c < shared and from
// `own` after: the output held in registers across columns.
template <int V>
void weighted_rows(const float* p, float inverse, const float* common, const float* own, int64_t shared, int64_t n,
                   float* out) {
  __m256 acc[V];
#pragma GCC unroll 16
  for (int i = 0; i < V; ++i) acc[i] = _mm256_setzero_ps();
  const int64_t split = std::min(shared, n);
  for (int64_t c = 0; c < split; ++c) {
    if (p[c] == 0.0f) continue;  // a masked column
    const __m256 weight = _mm256_set1_ps(p[c] * inverse);
#pragma GCC unroll 16
    for (int i = 0; i < V; ++i) acc[i] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(common + c * V * 8 + i * 8), acc[i]);
  }
  for (int64_t c = split; c < n; ++c) {
    if (p[c] == 0.0f) continue;
    const __m256 weight = _mm256_set1_ps(p[c] * inverse);
#pragma GCC unroll 16
    for (int i = 0; i < V; ++i) acc[i] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(own + c * V * 8 + i * 8), acc[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < V; ++i) _mm256_storeu_ps(out + i * 8, acc[i]);
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

// Rows per task where the loops between products run on several threads. Even a decoding step's few rows are
// shared out: a thread that runs them alone leaves the others spinning until it is done.
constexpr int64_t kRowsPerTask = 8;

// transformers' RMSNorm in fp32: weight * x / sqrt(mean(x^2) + eps), row by row.
void rms_norm(const float* x, const float* weight, double eps, float* out, int64_t rows, int64_t width) {
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * width;
      const float scale = 1.0f / std::sqrt(dot(xr, xr, width) / static_cast<float>(width) + static_cast<float>(eps));
      for (int64_t i = 0; i < width; ++i) out[r * width + i] = weight[i] * (xr[i] * scale);
    }
  });
}

// x += y over n floats.
void add(float* x, const float* y, int64_t n) {
  at::parallel_for(0, n, kRowsPerTask * 1024, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] += y[i];
  });
}

const float* bias_of(const torch::Tensor& bias) { return bias.numel() ? bias.data_ptr<float>() : nullptr; }

// x (R, hidden): the embeddings of R new tokens, turned into the last layer's output in place. Row r is a token of
// the sequence in cache slot slots[r]; its key and value go to column columns[r] of that slot, and it attends to
// the slot's columns 0..columns[r] alone, under its row of the additive mask (R, Wm), 0 where a column may be
// attended to. Every row's key and value are written before any row attends, so the rows of one sequence's prompt
// (a prefill) see each other, each the ones before it; a decoding step is one row per sequence. The columns after a
// row's own (another sequence's leftovers, or not yet written) are masked for it anyway and never read. No two rows
// may write the same column of the same slot. cos, sin (R, D): the rotary embedding at each row's position, sin
// with its first half negated (so that rotate_half(t) * sin == swap_halves(t) * sin). keys, values: per layer
// (S, KV, W, D), one slot per sequence. The first `shared` columns hold the same keys and values in every slot (a
// prefix every sequence starts with): they are read from slot 0 alone, so that a decoding step reads them from
// memory once for all its rows instead of once per row, and no row may write them.
torch::Tensor decode_layers(torch::Tensor x, const std::vector<torch::Tensor>& weights, const std::vector<double>& eps,
                            const std::vector<torch::Tensor>& keys, const std::vector<torch::Tensor>& values,
                            const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& slots,
                            const torch::Tensor& columns, const torch::Tensor& mask, int64_t shared, int64_t heads,
                            int64_t kv_heads, double scaling) {
  const int64_t layers = static_cast<int64_t>(keys.size());
  TORCH_CHECK(layers > 0 && values.size() == keys.size(), "decode_layers: keys and values for every layer");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == layers * kPerLayer, "decode_layers: ", kPerLayer,
              " weights per layer");
  TORCH_CHECK(static_cast<int64_t>(eps.size()) == 2 * layers, "decode_layers: two norm epsilons per layer");
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() == 2 && x.is_contiguous(), "decode_layers: x (R, hidden) fp32");
  const int64_t B = x.size(0), hidden = x.size(1);
  const int64_t S = keys[0].size(0), D = keys[0].size(3), W = keys[0].size(2), groups = heads / kv_heads;
  TORCH_CHECK(heads % kv_heads == 0 && keys[0].size(1) == kv_heads, "decode_layers: heads do not match the cache");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.size(0) == B && cos.size(1) == D && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == torch::kFloat && sin.scalar_type() == torch::kFloat,
              "decode_layers: cos and sin (R, head_dim) fp32");
  TORCH_CHECK(mask.scalar_type() == torch::kFloat && mask.dim() == 2 && mask.size(0) == B && mask.size(1) <= W &&
                  mask.is_contiguous(), "decode_layers: mask (R, at most the cache's width) fp32");
  TORCH_CHECK(columns.scalar_type() == torch::kLong && columns.numel() == B && columns.is_contiguous(),
              "decode_layers: one column per row");
  TORCH_CHECK(slots.scalar_type() == torch::kLong && slots.numel() == B && slots.is_contiguous(),
              "decode_layers: one slot per row");
  for (int64_t l = 0; l < layers; ++l) {
    for (const auto* cache : {&keys[l], &values[l]}) {
      TORCH_CHECK(cache->scalar_type() == torch::kFloat && cache->is_contiguous() && cache->dim() == 4 &&
                      cache->size(0) == S && cache->size(1) == kv_heads && cache->size(2) == W && cache->size(3) == D,
                  "decode_layers: a contiguous fp32 cache (S, KV, W, D) per layer");
    }
    for (int64_t w = 0; w < kPerLayer; ++w) {
      const auto& t = weights[l * kPerLayer + w];
      TORCH_CHECK(t.scalar_type() == torch::kFloat && t.is_contiguous(), "decode_layers: contiguous fp32 weights");
    }
  }
  TORCH_CHECK(weights[kDown].dim() == 3, "decode_layers: weights laid out in panels (r1lite.kernels.pack)");
  const int64_t qkv_width = (heads + 2 * kv_heads) * D;
  const int64_t intermediate = weights[kDown].size(1);
  // Each product's weight in panels (ceil(N / kPanel), K, kPanel), and its bias N floats or none.
  const int64_t shapes[4][3] = {{kQKV, qkv_width, hidden},
                                {kO, hidden, heads * D},
                                {kGateUp, 2 * intermediate, hidden},
                                {kDown, hidden, intermediate}};
  for (int64_t l = 0; l < layers; ++l) {
    for (const auto& [index, n, k] : shapes) {
      const auto& panels = weights[l * kPerLayer + index];
      const auto& bias = weights[l * kPerLayer + index + 1];
      TORCH_CHECK(laid_out(panels, n) && panels.size(1) == k && (bias.numel() == 0 || bias.numel() == n),
                  "decode_layers: layer ", l, " weight ", index, " is not a (", n, " x ", k,
                  ") weight laid out in panels with its bias");
    }
  }
  const int64_t* cols = columns.data_ptr<int64_t>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t mask_width = mask.size(1);
  TORCH_CHECK(shared >= 0 && shared <= W, "decode_layers: a shared prefix longer than the cache");
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(cols[b] >= 0 && cols[b] < mask_width, "decode_layers: a column outside the mask (and the cache)");
    TORCH_CHECK(cols[b] >= shared, "decode_layers: a row writes a column of the shared prefix");
    TORCH_CHECK(slot[b] >= 0 && slot[b] < S, "decode_layers: a slot outside the cache");
  }
  const int64_t half = D / 2;

  auto options = x.options();
  torch::Tensor h_t = torch::empty({B, hidden}, options);
  torch::Tensor qkv_t = torch::empty({B, qkv_width}, options);
  torch::Tensor attn_t = torch::empty({B, heads * D}, options);
  torch::Tensor proj_t = torch::empty({B, hidden}, options);
  torch::Tensor gate_up_t = torch::empty({B, 2 * intermediate}, options);
  torch::Tensor gated_t = torch::empty({B, intermediate}, options);
  float* xp = x.data_ptr<float>();
  float* h = h_t.data_ptr<float>();
  float* qkv = qkv_t.data_ptr<float>();
  float* attn = attn_t.data_ptr<float>();
  float* proj = proj_t.data_ptr<float>();
  float* gate_up = gate_up_t.data_ptr<float>();
  float* gated = gated_t.data_ptr<float>();
  const float* cosp = cos.data_ptr<float>();
  const float* sinp = sin.data_ptr<float>();
  const float* maskp = mask.data_ptr<float>();

  for (int64_t l = 0; l < layers; ++l) {
    const torch::Tensor* w = &weights[l * kPerLayer];
    float* kc = keys[l].data_ptr<float>();
    float* vc = values[l].data_ptr<float>();

    rms_norm(xp, w[kNorm1].data_ptr<float>(), eps[2 * l], h, B, hidden);
    linear_panels(h, B, hidden, w[kQKV].data_ptr<float>(), qkv_width, bias_of(w[kQKVBias]), qkv);
    at::parallel_for(0, B, kRowsPerTask, [&](int64_t b0, int64_t b1) {
      std::vector<float> turned(D);
      for (int64_t b = b0; b < b1; ++b) {
        float* row = qkv + b * qkv_width;
        const float* c = cosp + b * D;
        const float* s = sinp + b * D;
        for (int64_t head = 0; head < heads + kv_heads; ++head) {  // queries and keys turn; values do not
          float* t = row + head * D;
          // One rounding order written out (std::fma), so that the compiler cannot contract it one way in its
          // vector loop and another in the scalar one it picks for some addresses: every row, on whatever thread,
          // gets the same bits.
          for (int64_t i = 0; i < D; ++i) turned[i] = std::fma(t[i], c[i], t[i < half ? i + half : i - half] * s[i]);
          std::copy(turned.begin(), turned.end(), t);
        }
        for (int64_t g = 0; g < kv_heads; ++g) {
          const int64_t at = ((slot[b] * kv_heads + g) * W + cols[b]) * D;
          std::copy(row + (heads + g) * D, row + (heads + g + 1) * D, kc + at);
          std::copy(row + (heads + kv_heads + g) * D, row + (heads + kv_heads + g + 1) * D, vc + at);
        }
      }
    });
    // Attention, one task per (row, key/value head): its query heads share each key and value read. The first
    // `shared` columns, the same in every slot, are read from slot 0's, which the rows of every slot then share.
    // Threads take tasks one at a time (`share_out`): a task's length follows its row's column.
    share_out(B * kv_heads, 1, [&](const auto& take) {
      std::vector<float> buffer(mask_width);  // one head's scores, then its probabilities, at a time
      std::vector<float> straddle(8 * D);     // eight keys on both sides of the shared prefix's end, side by side
      float* p = buffer.data();
      for (int64_t task, last; take(task, last);) {
        const int64_t b = task / kv_heads, g = task % kv_heads;
        const float* kb = kc + (slot[b] * kv_heads + g) * W * D;
        const float* vb = vc + (slot[b] * kv_heads + g) * W * D;
        const float* k0 = kc + g * W * D;  // slot 0's
        const float* v0 = vc + g * W * D;
        const auto key = [&](int64_t c) { return (c < shared ? k0 : kb) + c * D; };
        const float* m = maskp + b * mask_width;
        const int64_t seen = cols[b] + 1;  // the new key's column and those before it: nothing later is attended
        const int64_t across = shared / 8 * 8;  // the block of eight columns the prefix ends inside, if any
        if (D % 8 == 0 && shared % 8 != 0 && across + 8 <= seen) {
          for (int64_t i = 0; i < 8; ++i) std::copy(key(across + i), key(across + i) + D, straddle.data() + i * D);
        }
        for (int64_t j = 0; j < groups; ++j) {
          const int64_t head = g * groups + j;
          const float* q = qkv + b * qkv_width + head * D;
          float top = -std::numeric_limits<float>::infinity();
          int64_t c = 0;
          if (D % 8 == 0) {  // eight columns at a time
            const __m256 scale = _mm256_set1_ps(static_cast<float>(scaling));
            __m256 tops = _mm256_set1_ps(top);
            for (; c + 8 <= seen; c += 8) {
              const float* eight = c + 8 <= shared ? k0 + c * D : c >= shared ? kb + c * D : straddle.data();
              const __m256 scores = _mm256_fmadd_ps(dot8(q, eight, D), scale, _mm256_loadu_ps(m + c));
              _mm256_storeu_ps(p + c, scores);
              tops = _mm256_max_ps(tops, scores);
            }
            alignas(32) float lanes[8];
            _mm256_store_ps(lanes, tops);
            top = *std::max_element(lanes, lanes + 8);
          }
          for (; c < seen; ++c) {
            p[c] = dot(q, key(c), D) * static_cast<float>(scaling) + m[c];
            top = std::max(top, p[c]);
          }
          const float total = exp_shifted(p, top, seen);
          float* out = attn + b * heads * D + head * D;
          const float inverse = 1.0f / total;
          if (D == 64) {
            weighted_rows<8>(p, inverse, v0, vb, shared, seen, out);
          } else if (D == 128) {
            weighted_rows<16>(p, inverse, v0, vb, shared, seen, out);
          } else {
            std::fill(out, out + D, 0.0f);
            for (int64_t col = 0; col < seen; ++col) {
              if (p[col] != 0.0f) axpy(p[col] * inverse, (col < shared ? v0 : vb) + col * D, out, D);
            }
          }
        }
      }
    });
    linear_panels(attn, B, heads * D, w[kO].data_ptr<float>(), hidden, bias_of(w[kOBias]), proj);
    add(xp, proj, B * hidden);

    rms_norm(xp, w[kNorm2].data_ptr<float>(), eps[2 * l + 1], h, B, hidden);
    linear_panels(h, B, hidden, w[kGateUp].data_ptr<float>(), 2 * intermediate, bias_of(w[kGateUpBias]), gate_up);
    at::parallel_for(0, B, kRowsPerTask, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const float* gate = gate_up + b * 2 * intermediate;
        silu_mul(gate, gate + intermediate, gated + b * intermediate, intermediate);
      }
    });
    linear_panels(gated, B, intermediate, w[kDown].data_ptr<float>(), hidden, bias_of(w[kDownBias]), proj);
    add(xp, proj, B * hidden);
  }
  return x;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("panels_linear", &panels_linear, "x @ weight.T + bias from the weight laid out in panels (fp32, AVX2 + FMA)");
  m.def("decode_layers", &decode_layers, "every decoder layer for one new token per sequence (fp32, AVX2 + FMA)");
}

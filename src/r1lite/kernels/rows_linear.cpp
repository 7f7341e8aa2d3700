// y = x @ w.T + bias for a few rows of x (a decoding step's sequences), fp32, on an x86 CPU with AVX2 and FMA.
//
// At a handful of rows a decoding step's products are bound by how fast the weights stream from memory, not by
// arithmetic. This kernel reads each weight row once, front to back, and multiplies it into up to eight rows of x
// held in the first-level cache, prefetching the weights a fixed distance ahead of where it reads. The output
// columns are split across torch's threads in contiguous blocks, so each thread streams one contiguous range.
// Built on first use by r1lite.kernels (torch.utils.cpp_extension); never required: without a compiler,
// r1lite decodes with oneDNN's products instead.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

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
  const float* xp = rows.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {  // each weight row read from memory once, for all rows of x
      for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
        const int64_t count = std::min(kBlock, M - m0);
        kDotRows[count - 1](xp + m0 * K, wp + n * K, b ? b[n] : 0.0f, yp + m0 * N + n, K, N);
      }
    }
  });
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rows_linear", &rows_linear, "x @ weight.T + bias for a few rows of x (fp32, AVX2 + FMA)");
}

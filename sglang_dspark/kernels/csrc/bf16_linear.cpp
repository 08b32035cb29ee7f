// y = x W^T (+ b) for bfloat16 weights on x86 CPUs with AVX2 + FMA but no native bf16 GEMM.
//
// PyTorch's bf16 matmul on such CPUs runs one matrix-vector product per row of x, so a batch of
// M decode tokens reads the weights M times. Here every weight row is read from memory once,
// widened to fp32 in registers, and multiplied with a tile of up to 4 rows of x (kept in fp32).
#include <ATen/Parallel.h>

#include <algorithm>

#include "ops.h"

namespace {

constexpr int64_t kRowBlock = 64;  // rows of x per pass over a weight block (fp32, stays in L2)

// out[m][n] = dot(x[m], w[n]) for an MT x NB tile; x rows are fp32, w rows bf16, both K long.
template <int MT, int NB>
inline void tile(const float* x, int64_t K, const uint16_t* w, float out[MT][NB]) {
  __m256 acc[MT][NB];
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n) acc[m][n] = _mm256_setzero_ps();
  const int64_t K8 = K & ~int64_t(7);
  for (int64_t k = 0; k < K8; k += 8) {
    __m256 wv[NB];
    for (int n = 0; n < NB; ++n) wv[n] = load_bf16x8(w + n * K + k);
    for (int m = 0; m < MT; ++m) {
      __m256 xv = _mm256_loadu_ps(x + m * K + k);
      for (int n = 0; n < NB; ++n) acc[m][n] = _mm256_fmadd_ps(xv, wv[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n) {
      float s = hsum(acc[m][n]);
      for (int64_t k = K8; k < K; ++k) s += x[m * K + k] * bf16_to_float(w[n * K + k]);
      out[m][n] = s;
    }
}

template <int NB>
void rows_tile(const float* x, int64_t M, int64_t K, const uint16_t* w, const float* bias, int64_t n0,
               float* y, int64_t N) {
  float out[4][NB];
  int64_t m = 0;
  auto store = [&](int mt) {
    for (int i = 0; i < mt; ++i)
      for (int n = 0; n < NB; ++n) y[(m + i) * N + n0 + n] = out[i][n] + (bias ? bias[n0 + n] : 0.f);
  };
  for (; m + 4 <= M; m += 4) { tile<4, NB>(x + m * K, K, w, out); store(4); }
  switch (M - m) {
    case 3: tile<3, NB>(x + m * K, K, w, out); store(3); break;
    case 2: tile<2, NB>(x + m * K, K, w, out); store(2); break;
    case 1: tile<1, NB>(x + m * K, K, w, out); store(1); break;
    default: break;
  }
}

}  // namespace

// x [M, K] (bf16 or fp32), weight [N, K] bf16 contiguous, bias [N] or None -> [M, N] in x's dtype.
torch::Tensor bf16_linear(const torch::Tensor& x, const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() && weight.dim() == 2,
              "weight must be a contiguous 2-D bfloat16 tensor");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == weight.size(1), "x must be [M, K] with K = weight.size(1)");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  torch::Tensor xf = x.to(torch::kFloat32).contiguous();
  torch::Tensor bf;
  if (bias.has_value()) bf = bias->to(torch::kFloat32).contiguous();
  torch::Tensor y = torch::empty({M, N}, x.options().dtype(torch::kFloat32));
  const float* xp = xf.data_ptr<float>();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  const float* bp = bias.has_value() ? bf.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  constexpr int64_t NB = 2;
  const int64_t nblocks = N / NB;
  at::parallel_for(0, nblocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
      const int64_t mrows = std::min(kRowBlock, M - m0);
      for (int64_t b = begin; b < end; ++b)
        rows_tile<NB>(xp + m0 * K, mrows, K, wp + b * NB * K, bp, b * NB, yp + m0 * N, N);
    }
  });
  for (int64_t n = nblocks * NB; n < N; ++n)  // odd N: the last weight row alone
    rows_tile<1>(xp, M, K, wp + n * K, bp, n, yp, N);
  return y.to(x.scalar_type());
}

// RMSNorm with HF's rounding: normalize in fp32, round to the input dtype, then scale by the weight
// (rounded again). The residual variant first forms x + residual rounded to the input dtype, as
// `residual + hidden` does in bf16, and returns that sum for the next layer.
#include <ATen/Parallel.h>

#include <cmath>

#include "ops.h"

namespace {

// One row: src = x (+ residual, rounded to T into sum); sum of squares over 8 lanes (each a chain of fused
// multiply-adds over the row in order) then hsum's tree; out = round(round(src * inv) * w).
template <typename T>
void norm_row(const T* x, const T* residual, const T* w, int64_t d, float eps, T* out, T* sum) {
  const T* src = x;
  if (residual != nullptr) {
    for (int64_t i = 0; i < d; i += 8)
      store_lanes(sum, i, d, _mm256_add_ps(load_lanes(x, i, d), load_lanes(residual, i, d)));
    src = sum;
  }
  __m256 sq = _mm256_setzero_ps();
  for (int64_t i = 0; i < d; i += 8) {
    const __m256 v = load_lanes(src, i, d);
    sq = _mm256_fmadd_ps(v, v, sq);
  }
  const __m256 inv = _mm256_set1_ps(1.f / std::sqrt(hsum(sq) / static_cast<float>(d) + eps));
  for (int64_t i = 0; i < d; i += 8)
    store_lanes(out, i, d,
                _mm256_mul_ps(round8<T>(_mm256_mul_ps(load_lanes(src, i, d), inv)), load_lanes(w, i, d)));
}

// Rows are few per call (a decode step's tokens) and each takes well under a microsecond: threads only from 64.
template <typename T>
void run(const T* x, const T* residual, const T* w, int64_t N, int64_t d, float eps, T* out, T* sum_out) {
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      norm_row(x + n * d, residual != nullptr ? residual + n * d : nullptr, w, d, eps, out + n * d,
               sum_out != nullptr ? sum_out + n * d : nullptr);
  });
}

void check(const torch::Tensor& x, const torch::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous [N, d] tensor");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.scalar_type() == x.scalar_type(),
              "weight must be [d] in x's dtype");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "rms_norm supports bfloat16 and float32");
}

template <typename F>
void dispatch(const torch::Tensor& x, F&& f) {
  if (x.scalar_type() == at::kBFloat16) f(at::BFloat16{});
  else f(float{});
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check(x, weight);
  torch::Tensor out = torch::empty_like(x);
  const torch::Tensor w = weight.contiguous();
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    run<T>(x.data_ptr<T>(), nullptr, w.data_ptr<T>(), x.size(0), x.size(1), static_cast<float>(eps), out.data_ptr<T>(), nullptr);
  });
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                                      const torch::Tensor& weight, double eps) {
  check(x, weight);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type() && residual.is_contiguous(),
              "residual must match x");
  torch::Tensor out = torch::empty_like(x), sum = torch::empty_like(x);
  const torch::Tensor w = weight.contiguous();
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    run<T>(x.data_ptr<T>(), residual.data_ptr<T>(), w.data_ptr<T>(), x.size(0), x.size(1), static_cast<float>(eps),
           out.data_ptr<T>(), sum.data_ptr<T>());
  });
  return {out, sum};
}

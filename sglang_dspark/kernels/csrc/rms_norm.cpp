// RMSNorm with HF's rounding: normalize in fp32, round to the input dtype, then scale by the weight
// (rounded again). The residual variant first forms x + residual rounded to the input dtype, as
// `residual + hidden` does in bf16, and returns that sum for the next layer.
#include <ATen/Parallel.h>

#include <cmath>

#include "ops.h"

namespace {

template <typename T>
void run(const T* x, const T* residual, const T* w, int64_t N, int64_t d, float eps, T* out, T* sum_out) {
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xr = x + n * d;
      T* o = out + n * d;
      const T* src = xr;
      if (residual != nullptr) {
        T* s = sum_out + n * d;
        for (int64_t i = 0; i < d; ++i) s[i] = static_cast<T>(static_cast<float>(xr[i]) + static_cast<float>(residual[n * d + i]));
        src = s;
      }
      float sq = 0.f;
      for (int64_t i = 0; i < d; ++i) {
        const float v = static_cast<float>(src[i]);
        sq += v * v;
      }
      const float inv = 1.f / std::sqrt(sq / static_cast<float>(d) + eps);
      for (int64_t i = 0; i < d; ++i)
        o[i] = static_cast<T>(static_cast<float>(static_cast<T>(static_cast<float>(src[i]) * inv)) * static_cast<float>(w[i]));
    }
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

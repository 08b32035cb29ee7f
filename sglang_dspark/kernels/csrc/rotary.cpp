// Rotary position embedding of q and k in place, with HF's rounding: out = q cos + rotate_half(q) sin, where
// rotate_half(q) = [-q[D/2:], q[:D/2]] and each product and the sum are rounded to the tensors' dtype, as
// torch's elementwise ops do (no fused multiply-add: fp32 outputs match HF bit for bit).
#include <ATen/Parallel.h>

#include "ops.h"

namespace {

template <typename T>
__attribute__((optimize("fp-contract=off"))) void rotate_heads(T* x, int64_t N, int64_t H, int64_t row_stride,
                                                              int64_t head_stride, int64_t D, const T* cos,
                                                              const T* sin) {
  const int64_t half = D / 2;
  at::parallel_for(0, N * H, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> in(D);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / H, h = item % H;
      T* v = x + n * row_stride + h * head_stride;
      const T* c = cos + n * D;
      const T* s = sin + n * D;
      for (int64_t d = 0; d < D; ++d) in[d] = static_cast<float>(v[d]);
      for (int64_t d = 0; d < D; ++d) {
        const float rot = d < half ? -in[d + half] : in[d - half];
        const T a = static_cast<T>(in[d] * static_cast<float>(c[d]));
        const T b = static_cast<T>(rot * static_cast<float>(s[d]));
        v[d] = static_cast<T>(static_cast<float>(a) + static_cast<float>(b));
      }
    }
  });
}

void rotate(torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "q/k must be [N, H, D] with contiguous heads");
  const int64_t N = x.size(0), H = x.size(1), D = x.size(2);
  if (x.scalar_type() == at::kBFloat16) {
    rotate_heads(x.data_ptr<at::BFloat16>(), N, H, x.stride(0), x.stride(1), D, cos.data_ptr<at::BFloat16>(),
                 sin.data_ptr<at::BFloat16>());
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "rotary supports bfloat16 and float32");
    rotate_heads(x.data_ptr<float>(), N, H, x.stride(0), x.stride(1), D, cos.data_ptr<float>(), sin.data_ptr<float>());
  }
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> rotary(torch::Tensor q, torch::Tensor k, const torch::Tensor& cos,
                                                const torch::Tensor& sin) {
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(2) % 2 == 0, "q [N, Hq, D], k [N, Hkv, D]");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == q.size(0) * q.size(2) &&
                  sin.sizes() == cos.sizes(),
              "cos/sin must be contiguous [N, 1, D]");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && cos.scalar_type() == q.scalar_type() &&
                  sin.scalar_type() == q.scalar_type(),
              "one dtype for q, k, cos and sin");
  rotate(q, cos, sin);
  rotate(k, cos, sin);
  return {q, k};
}

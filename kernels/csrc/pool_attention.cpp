// Query tokens attending over cached keys/values read in place from the token-level KV pool through
// their request's slot list (no gathered copy of K/V per layer). Query n sees the first kv_lens[n]
// slots of slot row q_rows[n]: a decode token sees its whole request, the j-th of e new tokens of a
// request with s keys (a verify chain, a short extend) sees s - e + j + 1 (causal).
// Grouped-query attention: query heads h*G .. h*G+G-1 share KV head h. fp32 math throughout.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops.h"

namespace {

template <typename T>
float dot(const float* q, const T* k, int64_t D) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), acc);
  return hsum(acc);
}

template <typename T>
void axpy(float a, const T* v, float* y, int64_t D) {  // y += a * v
  const __m256 av = _mm256_set1_ps(a);
  for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(y + d, _mm256_fmadd_ps(av, load8(v + d), _mm256_loadu_ps(y + d)));
}

// q, out [N, Hq, D]; k_buf, v_buf [T, Hkv, D]; slots [B, S]; rows, lens [N]
template <typename T>
void run(const T* q, const T* k_buf, const T* v_buf, const int64_t* slots, const int64_t* rows, const int64_t* lens,
         int64_t N, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, float scale, T* out) {
  const int64_t G = Hq / Hkv;
  at::parallel_for(0, N * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), acc(G * D), scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / Hkv, h = item % Hkv, len = lens[n];
      const int64_t* row = slots + rows[n] * S;
      scores.assign(G * len, 0.f);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = static_cast<float>(q[(n * Hq + h * G + g) * D + d]) * scale;
      std::vector<float> mx(G, -std::numeric_limits<float>::infinity());
      for (int64_t t = 0; t < len; ++t) {
        const T* k = k_buf + (row[t] * Hkv + h) * D;
        for (int64_t g = 0; g < G; ++g) {
          const float s = dot(qf.data() + g * D, k, D);
          scores[g * len + t] = s;
          mx[g] = std::max(mx[g], s);
        }
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      std::vector<float> denom(G, 0.f);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t t = 0; t < len; ++t) {
          const float p = std::exp(scores[g * len + t] - mx[g]);
          scores[g * len + t] = p;
          denom[g] += p;
        }
      for (int64_t t = 0; t < len; ++t) {
        const T* v = v_buf + (row[t] * Hkv + h) * D;
        for (int64_t g = 0; g < G; ++g) axpy(scores[g * len + t], v, acc.data() + g * D, D);
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d)
          out[(n * Hq + h * G + g) * D + d] = static_cast<T>(acc[g * D + d] / denom[g]);
    }
  });
}

}  // namespace

torch::Tensor pool_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                             const torch::Tensor& slots, const torch::Tensor& q_rows, const torch::Tensor& kv_lens,
                             double scale) {
  TORCH_CHECK(q.dim() == 3 && k_buf.dim() == 3 && v_buf.sizes() == k_buf.sizes(), "q [N, Hq, D], k/v [T, Hkv, D]");
  TORCH_CHECK(q.is_contiguous() && k_buf.is_contiguous() && v_buf.is_contiguous(), "q, k, v must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_buf.scalar_type() && q.scalar_type() == v_buf.scalar_type(), "one dtype for q, k, v");
  const int64_t N = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k_buf.size(1);
  TORCH_CHECK(k_buf.size(2) == D && D % 8 == 0 && Hq % Hkv == 0, "head_dim must match and be a multiple of 8");
  TORCH_CHECK(slots.dim() == 2 && q_rows.numel() == N && kv_lens.numel() == N, "slots [B, S], q_rows and kv_lens [N]");
  const torch::Tensor s = slots.to(torch::kInt64).contiguous(), rows = q_rows.to(torch::kInt64).contiguous(),
                      lens = kv_lens.to(torch::kInt64).contiguous();
  torch::Tensor out = torch::empty_like(q);
  if (N == 0) return out;
  TORCH_CHECK(lens.min().item<int64_t>() >= 1 && lens.max().item<int64_t>() <= s.size(1), "kv_lens out of range");
  TORCH_CHECK(rows.min().item<int64_t>() >= 0 && rows.max().item<int64_t>() < s.size(0), "q_rows out of range");
  const float sc = static_cast<float>(scale);
  if (q.scalar_type() == at::kBFloat16) {
    run(q.data_ptr<at::BFloat16>(), k_buf.data_ptr<at::BFloat16>(), v_buf.data_ptr<at::BFloat16>(), s.data_ptr<int64_t>(),
        rows.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), N, s.size(1), Hq, Hkv, D, sc, out.data_ptr<at::BFloat16>());
  } else {
    TORCH_CHECK(q.scalar_type() == at::kFloat, "pool_attention supports bfloat16 and float32");
    run(q.data_ptr<float>(), k_buf.data_ptr<float>(), v_buf.data_ptr<float>(), s.data_ptr<int64_t>(),
        rows.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), N, s.size(1), Hq, Hkv, D, sc, out.data_ptr<float>());
  }
  return out;
}

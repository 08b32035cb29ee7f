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

// [sum(a0), sum(a1), ..., sum(a7)]: eight horizontal sums in one vector.
inline __m256 hsum8(const __m256* a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

template <typename T>
float dot(const float* q, const T* k, int64_t D) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), acc);
  return hsum(acc);
}

// scores[t] = q . k_t for the keys of one (query, head): eight keys per horizontal reduction.
template <typename T>
void score_keys(const float* q, const T* k_buf, const int64_t* row, int64_t len, int64_t Hkv, int64_t h, int64_t D,
                float* scores) {
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    const T* k[8];
    for (int j = 0; j < 8; ++j) k[j] = k_buf + (row[t + j] * Hkv + h) * D;
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, load8(k[j] + d), acc[j]);
    }
    _mm256_storeu_ps(scores + t, hsum8(acc));
  }
  for (; t < len; ++t) scores[t] = dot(q, k_buf + (row[t] * Hkv + h) * D, D);
}

// probs[t] = exp(scores[t] - max) in place over the padded length (a multiple of 8); returns the sum over len.
inline float softmax_numerators(float* scores, int64_t len, int64_t padded) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < len; ++t) mx = std::max(mx, scores[t]);
  for (int64_t t = len; t < padded; ++t) scores[t] = mx;  // padding: exp(0), excluded from the sum below
  const __m256 mv = _mm256_set1_ps(mx);
  __m256 sum = _mm256_setzero_ps();
  for (int64_t t = 0; t < padded; t += 8) {
    const __m256 p = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + t), mv));
    _mm256_storeu_ps(scores + t, p);
    if (t + 8 <= len) sum = _mm256_add_ps(sum, p);
  }
  float total = hsum(sum);
  for (int64_t t = len - len % 8; t < len; ++t) total += scores[t];
  return total;
}

// out[0:D] = sum_t probs[t] v_t / denom, 64 output dims at a time in registers.
template <typename T>
void weighted_values(const float* probs, const T* v_buf, const int64_t* row, int64_t len, int64_t Hkv, int64_t h,
                     int64_t D, float denom, float* out) {
  for (int64_t d0 = 0; d0 < D; d0 += 64) {
    const int64_t chunks = std::min<int64_t>(8, (D - d0) / 8);
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
      const __m256 p = _mm256_set1_ps(probs[t]);
      const T* v = v_buf + (row[t] * Hkv + h) * D + d0;
      if (chunks == 8) {
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(p, load8(v + 8 * i), acc[i]);
      } else {
        for (int64_t i = 0; i < chunks; ++i) acc[i] = _mm256_fmadd_ps(p, load8(v + 8 * i), acc[i]);
      }
    }
    const __m256 inv = _mm256_set1_ps(1.0f / denom);
    for (int64_t i = 0; i < chunks; ++i) _mm256_storeu_ps(out + d0 + 8 * i, _mm256_mul_ps(acc[i], inv));
  }
}

// q [N, Hq, D] (rows q_stride apart: a view of a fused QKV output), out [N, Hq, D]; k_buf, v_buf [T, Hkv, D];
// slots [B, S]; rows, lens [N]. One work item per (query, head): the query heads sharing a KV head read its keys
// from cache.
template <typename T>
void run(const T* q, int64_t q_stride, const T* k_buf, const T* v_buf, const int64_t* slots, const int64_t* rows,
         const int64_t* lens, int64_t N, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, float scale, T* out) {
  const int64_t G = Hq / Hkv;
  at::parallel_for(0, N * Hq, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(D), res(D), scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / Hq, head = item % Hq, h = head / G, len = lens[n], padded = (len + 7) / 8 * 8;
      const int64_t* row = slots + rows[n] * S;
      scores.resize(padded);
      for (int64_t d = 0; d < D; ++d) qf[d] = static_cast<float>(q[n * q_stride + head * D + d]) * scale;
      score_keys(qf.data(), k_buf, row, len, Hkv, h, D, scores.data());
      const float denom = softmax_numerators(scores.data(), len, padded);
      weighted_values(scores.data(), v_buf, row, len, Hkv, h, D, denom, res.data());
      for (int64_t d = 0; d < D; ++d) out[(n * Hq + head) * D + d] = static_cast<T>(res[d]);
    }
  });
}

}  // namespace

torch::Tensor pool_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                             const torch::Tensor& slots, const torch::Tensor& q_rows, const torch::Tensor& kv_lens,
                             double scale) {
  TORCH_CHECK(q.dim() == 3 && k_buf.dim() == 3 && v_buf.sizes() == k_buf.sizes(), "q [N, Hq, D], k/v [T, Hkv, D]");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2), "q must have contiguous heads");
  TORCH_CHECK(k_buf.is_contiguous() && v_buf.is_contiguous(), "k, v must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_buf.scalar_type() && q.scalar_type() == v_buf.scalar_type(), "one dtype for q, k, v");
  const int64_t N = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k_buf.size(1);
  TORCH_CHECK(k_buf.size(2) == D && D % 8 == 0 && Hq % Hkv == 0, "head_dim must match and be a multiple of 8");
  TORCH_CHECK(slots.dim() == 2 && q_rows.numel() == N && kv_lens.numel() == N, "slots [B, S], q_rows and kv_lens [N]");
  const torch::Tensor s = slots.to(torch::kInt64).contiguous(), rows = q_rows.to(torch::kInt64).contiguous(),
                      lens = kv_lens.to(torch::kInt64).contiguous();
  torch::Tensor out = torch::empty({N, Hq, D}, q.options());
  if (N == 0) return out;
  // bounds of every index the kernel reads through, checked in a loop (a handful of values per call)
  const int64_t *lp = lens.data_ptr<int64_t>(), *rp = rows.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    TORCH_CHECK(lp[n] >= 1 && lp[n] <= s.size(1), "kv_lens out of range");
    TORCH_CHECK(rp[n] >= 0 && rp[n] < s.size(0), "q_rows out of range");
  }
  const float sc = static_cast<float>(scale);
  if (q.scalar_type() == at::kBFloat16) {
    run(q.data_ptr<at::BFloat16>(), q.stride(0), k_buf.data_ptr<at::BFloat16>(), v_buf.data_ptr<at::BFloat16>(),
        s.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), N, s.size(1), Hq, Hkv, D, sc,
        out.data_ptr<at::BFloat16>());
  } else {
    TORCH_CHECK(q.scalar_type() == at::kFloat, "pool_attention supports bfloat16 and float32");
    run(q.data_ptr<float>(), q.stride(0), k_buf.data_ptr<float>(), v_buf.data_ptr<float>(), s.data_ptr<int64_t>(),
        rows.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), N, s.size(1), Hq, Hkv, D, sc, out.data_ptr<float>());
  }
  return out;
}

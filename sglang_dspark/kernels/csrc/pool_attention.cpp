// Query tokens attending over cached keys/values read in place from the token-level KV pool through
// their request's slot list (no gathered copy of K/V per layer). Query n sees the first kv_lens[n]
// slots of slot row q_rows[n]: a decode token sees its whole request, the j-th of e new tokens of a
// request with s keys (a verify chain, a short extend) sees s - e + j + 1 (causal).
// Grouped-query attention: query heads h*G .. h*G+G-1 share KV head h. fp32 math throughout, but for bf16
// pools on CPUs with AVX512_BF16: bf16 products summed in fp32, the probabilities rounded to bf16 (dp below).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops.h"

namespace {

// Query heads per work item: up to three heads that share a KV head score and weigh each key after one load and
// widening of it, with their accumulators and that key in AVX2's sixteen registers (one head: eight keys, or 64
// output dims, at a time; more: four keys, or 32 dims). The loops over them are unrolled by pragma so that the
// accumulator arrays live in registers (left rolled, GCC kept them on the stack).
constexpr int kMaxHeads = 3;
template <int NH>
constexpr int kKeysPerBlock = NH == 1 ? 8 : 4;
template <int NH>
constexpr int kValueChunks = NH == 1 ? 8 : 4;  // 8-dim chunks of the output in registers

// Keys (and values) are read through the request's slot list, a gather the hardware prefetchers do not follow
// across rows: each row is prefetched this many keys ahead of its use.
constexpr int64_t kPrefetchKeys = 32;

// the cache lines of n elements from p
template <typename T>
inline void prefetch_row(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
}

// Four sums in one vector, each as ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) over its vector's lanes.
inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

template <typename T>
float dot(const float* q, const T* k, int64_t D) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), acc);
  return hsum(acc);
}

// scores[i][t] = q[i] . k_t for NH query heads over the keys of their KV head h, kKeysPerBlock at a time. Each
// score is the same sequence of operations whatever NH is: 8-lane products summed over D in order, reduced by
// hsum4's tree for the keys before the last len % 8 and by hsum's for those.
template <typename T, int NH>
void score_keys(const float* const* q, const T* k_buf, const int64_t* row, int64_t len, int64_t Hkv, int64_t h,
                int64_t D, float* const* scores) {
  constexpr int KB = kKeysPerBlock<NH>;
  const int64_t blocked = len - len % 8;
  for (int64_t t = 0; t < blocked; t += KB) {
    const T* k[KB];
#pragma GCC unroll 8
    for (int j = 0; j < KB; ++j) {
      k[j] = k_buf + (row[t + j] * Hkv + h) * D;
      if (t + j + kPrefetchKeys < len) prefetch_row(k_buf + (row[t + j + kPrefetchKeys] * Hkv + h) * D, D);
    }
    __m256 acc[NH * KB];
#pragma GCC unroll 16
    for (int a = 0; a < NH * KB; ++a) acc[a] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      __m256 qv[NH];
#pragma GCC unroll 4
      for (int i = 0; i < NH; ++i) qv[i] = _mm256_loadu_ps(q[i] + d);
#pragma GCC unroll 8
      for (int j = 0; j < KB; ++j) {
        const __m256 kv = load8(k[j] + d);
#pragma GCC unroll 4
        for (int i = 0; i < NH; ++i) acc[i * KB + j] = _mm256_fmadd_ps(qv[i], kv, acc[i * KB + j]);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NH; ++i)
#pragma GCC unroll 2
      for (int j = 0; j < KB; j += 4) {
        const __m256* a = acc + i * KB + j;
        _mm_storeu_ps(scores[i] + t + j, hsum4(a[0], a[1], a[2], a[3]));
      }
  }
  for (int64_t t = blocked; t < len; ++t)
    for (int i = 0; i < NH; ++i) scores[i][t] = dot(q[i], k_buf + (row[t] * Hkv + h) * D, D);
}

// probs[t] = exp(scores[t] - max) in place over the padded length (a multiple of 8); returns the sum over len.
inline float softmax_numerators(float* scores, int64_t len, int64_t padded) {
  __m256 m8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(scores + t));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m8);
  float mx = *std::max_element(lanes, lanes + 8);
  for (; t < len; ++t) mx = std::max(mx, scores[t]);
  for (int64_t t = len; t < padded; ++t) scores[t] = mx;  // padding: exp(0), excluded from the sum below
  const __m256 mv = _mm256_set1_ps(mx);
  __m256 sum = _mm256_setzero_ps();
  for (t = 0; t < padded; t += 8) {
    const __m256 p = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + t), mv));
    _mm256_storeu_ps(scores + t, p);
    if (t + 8 <= len) sum = _mm256_add_ps(sum, p);
  }
  float total = hsum(sum);
  for (t = len - len % 8; t < len; ++t) total += scores[t];
  return total;
}

// out[i][d0 : d0 + 8 C] = sum_t probs[i][t] v_t / denom[i] for NH query heads, the 8 C dims in registers: each
// output a chain of fused multiply-adds over t in order, whatever C is.
template <typename T, int NH, int C>
void weighted_values_chunk(const float* const* probs, const T* v_buf, const int64_t* row, int64_t len, int64_t Hkv,
                           int64_t h, int64_t D, int64_t d0, const float* denom, float* const* out) {
  __m256 acc[NH * C];
#pragma GCC unroll 16
  for (int a = 0; a < NH * C; ++a) acc[a] = _mm256_setzero_ps();
  for (int64_t t = 0; t < len; ++t) {
    const T* v = v_buf + (row[t] * Hkv + h) * D + d0;
    if (t + kPrefetchKeys < len) prefetch_row(v_buf + (row[t + kPrefetchKeys] * Hkv + h) * D + d0, 8 * C);
    __m256 p[NH];
#pragma GCC unroll 4
    for (int i = 0; i < NH; ++i) p[i] = _mm256_set1_ps(probs[i][t]);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m256 vc = load8(v + 8 * c);
#pragma GCC unroll 4
      for (int i = 0; i < NH; ++i) acc[i * C + c] = _mm256_fmadd_ps(p[i], vc, acc[i * C + c]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < NH; ++i) {
    const __m256 inv = _mm256_set1_ps(1.0f / denom[i]);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out[i] + d0 + 8 * c, _mm256_mul_ps(acc[i * C + c], inv));
  }
}

// out[i][0:D] = sum_t probs[i][t] v_t / denom[i] for NH query heads: as many 8-dim chunks at a time as are left,
// up to kValueChunks (8, 4, 2, 1).
template <typename T, int NH>
void weighted_values(const float* const* probs, const T* v_buf, const int64_t* row, int64_t len, int64_t Hkv,
                     int64_t h, int64_t D, const float* denom, float* const* out) {
  constexpr int C = kValueChunks<NH>;
  for (int64_t d0 = 0; d0 < D;) {
    const int64_t left = (D - d0) / 8;
    if (left >= C) {
      weighted_values_chunk<T, NH, C>(probs, v_buf, row, len, Hkv, h, D, d0, denom, out);
      d0 += 8 * C;
    } else if (C > 4 && left >= 4) {
      weighted_values_chunk<T, NH, 4>(probs, v_buf, row, len, Hkv, h, D, d0, denom, out);
      d0 += 32;
    } else if (left >= 2) {
      weighted_values_chunk<T, NH, 2>(probs, v_buf, row, len, Hkv, h, D, d0, denom, out);
      d0 += 16;
    } else {
      weighted_values_chunk<T, NH, 1>(probs, v_buf, row, len, Hkv, h, D, d0, denom, out);
      d0 += 8;
    }
  }
}

// Attention of NH query heads (from head0, all of KV head h) of query n; qf / scores / res: NH scratch rows.
template <typename T, int NH>
void attend_heads(const T* q, int64_t q_stride, const T* k_buf, const T* v_buf, const int64_t* row, int64_t n,
                  int64_t len, int64_t head0, int64_t h, int64_t Hkv, int64_t Hq, int64_t D, float scale,
                  std::vector<float>* qf, std::vector<float>* scores, std::vector<float>* res, T* out) {
  const int64_t padded = (len + 7) / 8 * 8;
  const float* qp[NH];
  float *sp[NH], *rp[NH];
  float denom[NH];
  for (int i = 0; i < NH; ++i) {
    const T* qh = q + n * q_stride + (head0 + i) * D;
    for (int64_t d = 0; d < D; ++d) qf[i][d] = static_cast<float>(qh[d]) * scale;
    scores[i].resize(padded);
    qp[i] = qf[i].data();
    sp[i] = scores[i].data();
    rp[i] = res[i].data();
  }
  score_keys<T, NH>(qp, k_buf, row, len, Hkv, h, D, sp);
  for (int i = 0; i < NH; ++i) denom[i] = softmax_numerators(sp[i], len, padded);
  weighted_values<T, NH>(sp, v_buf, row, len, Hkv, h, D, denom, rp);
  for (int i = 0; i < NH; ++i)
    for (int64_t d = 0; d < D; ++d) out[(n * Hq + head0 + i) * D + d] = static_cast<T>(rp[i][d]);
}

// ---- bf16 keys and values on CPUs with AVX512_BF16 (both builds, chosen at run time): the scores and the
// weighted sum of the values as bf16 pair dot products (VDPBF16PS) into fp32, reading K and V without widening
// them, and the probabilities rounded to bf16 before they weigh the values (as HF's eager attention rounds
// them). 1.16x-1.31x per call against that path on an Intel Xeon (benchmarks/results/engine.md).
// GCC 10 or later compiles it (a target pragma); other compilers build the fp32 path alone.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
#define POOL_ATTENTION_BF16_DOT 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
namespace dp {

constexpr int kKeys = 8;  // keys per score block
template <int NH>
constexpr int kChunks = NH == 1 ? 4 : 2;  // 32-dim chunks of the output in registers per pass over the values

// the first min(32, n) elements of a 32-element chunk
inline __mmask32 chunk_mask(int64_t n) {
  return n >= 32 ? ~__mmask32{0} : n <= 0 ? __mmask32{0} : (__mmask32{1} << n) - 1;
}

inline __m512i load_chunk(const uint16_t* p, __mmask32 m) { return _mm512_maskz_loadu_epi16(m, p); }

// the sums of the 16 lanes of a[0..7], in a's order; every vector's lanes summed by the same tree
inline __m256 sum8(const __m512* a) {
  __m512 s[4], w[2];
  for (int j = 0; j < 4; ++j)  // [a(2j) lanes 0-7 + 8-15 | a(2j+1) the same], 128-bit quarters paired
    s[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int j = 0; j < 2; ++j)  // quarter k: four partial sums of a(4j + k)
    w[j] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * j], s[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(s[2 * j], s[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 m = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]), _mm512_unpackhi_ps(w[0], w[1]));
  const __m512 t = _mm512_add_ps(m, _mm512_permute_ps(m, _MM_SHUFFLE(1, 0, 3, 2)));  // quarter k: a(k), a(4 + k)
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps256(_mm512_permutexvar_ps(order, t));
}

// scores[i][t] = scale * q[i] . k_t for NH query heads over the keys of KV head h, kKeys at a time (past len the
// block repeats the last key; scores must hold len rounded up to kKeys).
template <int NH>
void scores(const uint16_t* const* q, const uint16_t* k_buf, const int64_t* row, int64_t len, int64_t Hkv,
            int64_t h, int64_t D, float scale, float* const* out) {
  const __m256 sc = _mm256_set1_ps(scale);
  for (int64_t t = 0; t < len; t += kKeys) {
    const uint16_t* k[kKeys];
#pragma GCC unroll 8
    for (int j = 0; j < kKeys; ++j) {
      k[j] = k_buf + (row[std::min(t + j, len - 1)] * Hkv + h) * D;
      if (t + j + kPrefetchKeys < len) prefetch_row(k_buf + (row[t + j + kPrefetchKeys] * Hkv + h) * D, D);
    }
    __m512 acc[NH * kKeys];
#pragma GCC unroll 24
    for (int a = 0; a < NH * kKeys; ++a) acc[a] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 32) {
      const __mmask32 m = chunk_mask(D - d);
      __m512bh qv[NH];
#pragma GCC unroll 4
      for (int i = 0; i < NH; ++i) qv[i] = (__m512bh)load_chunk(q[i] + d, m);
#pragma GCC unroll 8
      for (int j = 0; j < kKeys; ++j) {
        const __m512bh kv = (__m512bh)load_chunk(k[j] + d, m);
#pragma GCC unroll 4
        for (int i = 0; i < NH; ++i) acc[i * kKeys + j] = _mm512_dpbf16_ps(acc[i * kKeys + j], qv[i], kv);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NH; ++i) _mm256_storeu_ps(out[i] + t, _mm256_mul_ps(sum8(acc + i * kKeys), sc));
  }
}

// probs[t] = bf16(p[t] / denom) for t < len, 0 up to the padded length (a multiple of 8)
inline void round_probs(const float* p, int64_t len, int64_t padded, float denom, uint16_t* probs) {
  const __m256 inv = _mm256_set1_ps(1.0f / denom);
  for (int64_t t = 0; t < padded; t += 8) {
    const __mmask8 live = t + 8 <= len ? 0xFF : static_cast<__mmask8>((1u << std::max<int64_t>(len - t, 0)) - 1);
    const __m256 x = _mm256_maskz_mul_ps(live, _mm256_loadu_ps(p + t), inv);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(probs + t), (__m128i)_mm256_cvtneps_pbh(x));
  }
}

// out[i][d0 : d0 + 32 C] = sum_t probs[i][t] v_t, keys in pairs (t, t + 1): each output a chain of pair dot
// products over t in order, whatever C is. A pair's two rows are interleaved by 16-bit element: a 128-bit quarter
// L of the low half holds dims 8L .. 8L + 3 of both, of the high half 8L + 4 .. 8L + 7.
template <int NH, int C>
void values_chunk(const uint16_t* const* probs, const uint16_t* v_buf, const int64_t* row, int64_t len, int64_t Hkv,
                  int64_t h, int64_t D, int64_t d0, float* const* out) {
  __m512 acc[NH * 2 * C];
#pragma GCC unroll 16
  for (int a = 0; a < NH * 2 * C; ++a) acc[a] = _mm512_setzero_ps();
  __mmask32 m[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) m[c] = chunk_mask(D - d0 - 32 * c);
  for (int64_t t = 0; t < len; t += 2) {
    const uint16_t* a = v_buf + (row[t] * Hkv + h) * D + d0;
    const uint16_t* b = t + 1 < len ? v_buf + (row[t + 1] * Hkv + h) * D + d0 : a;  // its probability is 0
    for (int64_t u = t + kPrefetchKeys; u < std::min(t + kPrefetchKeys + 2, len); ++u)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c)
        _mm_prefetch(reinterpret_cast<const char*>(v_buf + (row[u] * Hkv + h) * D + d0 + 32 * c), _MM_HINT_T0);
    __m512bh p[NH];
#pragma GCC unroll 4
    for (int i = 0; i < NH; ++i) {
      int32_t pair;
      std::memcpy(&pair, probs[i] + t, sizeof(pair));
      p[i] = (__m512bh)_mm512_set1_epi32(pair);
    }
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const __m512i va = load_chunk(a + 32 * c, m[c]), vb = load_chunk(b + 32 * c, m[c]);
      const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(va, vb), hi = (__m512bh)_mm512_unpackhi_epi16(va, vb);
#pragma GCC unroll 4
      for (int i = 0; i < NH; ++i) {
        acc[(i * C + c) * 2] = _mm512_dpbf16_ps(acc[(i * C + c) * 2], lo, p[i]);
        acc[(i * C + c) * 2 + 1] = _mm512_dpbf16_ps(acc[(i * C + c) * 2 + 1], hi, p[i]);
      }
    }
  }
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
#pragma GCC unroll 4
  for (int i = 0; i < NH; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const __m512 lo = acc[(i * C + c) * 2], hi = acc[(i * C + c) * 2 + 1];
      float* o = out[i] + d0 + 32 * c;
      _mm512_mask_storeu_ps(o, static_cast<__mmask16>(m[c]), _mm512_permutex2var_ps(lo, first, hi));
      _mm512_mask_storeu_ps(o + 16, static_cast<__mmask16>(m[c] >> 16), _mm512_permutex2var_ps(lo, second, hi));
    }
}

// Attention of NH query heads (from head0, all of KV head h) of query n, bf16 q / k / v / out; scores, probs,
// res: NH scratch rows.
template <int NH>
void attend_heads(const uint16_t* q, int64_t q_stride, const uint16_t* k_buf, const uint16_t* v_buf,
                  const int64_t* row, int64_t n, int64_t len, int64_t head0, int64_t h, int64_t Hkv, int64_t Hq,
                  int64_t D, float scale, std::vector<float>* scores_, std::vector<uint16_t>* probs_,
                  std::vector<float>* res, at::BFloat16* out) {
  const int64_t padded = (len + kKeys - 1) / kKeys * kKeys;
  const uint16_t* qp[NH];
  const uint16_t* pp[NH];
  float *sp[NH], *rp[NH];
  for (int i = 0; i < NH; ++i) {
    qp[i] = q + n * q_stride + (head0 + i) * D;
    scores_[i].resize(padded);
    probs_[i].resize(padded);
    sp[i] = scores_[i].data();
    rp[i] = res[i].data();
    pp[i] = probs_[i].data();
  }
  scores<NH>(qp, k_buf, row, len, Hkv, h, D, scale, sp);
  for (int i = 0; i < NH; ++i)
    round_probs(sp[i], len, padded, softmax_numerators(sp[i], len, padded), probs_[i].data());
  // passes of C chunks while the dims left fill more than C - 1 of them, then one chunk at a time
  constexpr int C = kChunks<NH>;
  int64_t d0 = 0;
  for (; D - d0 > 32 * (C - 1); d0 += 32 * C) values_chunk<NH, C>(pp, v_buf, row, len, Hkv, h, D, d0, rp);
  for (; d0 < D; d0 += 32) values_chunk<NH, 1>(pp, v_buf, row, len, Hkv, h, D, d0, rp);
  for (int i = 0; i < NH; ++i)
    for (int64_t d = 0; d < D; ++d) out[(n * Hq + head0 + i) * D + d] = static_cast<at::BFloat16>(rp[i][d]);
}

// one work item: query heads head0 .. head0 + heads - 1 (1 to kMaxHeads) of query n
void attend(int64_t heads, const at::BFloat16* q, int64_t q_stride, const at::BFloat16* k_buf,
            const at::BFloat16* v_buf, const int64_t* row, int64_t n, int64_t len, int64_t head0, int64_t h,
            int64_t Hkv, int64_t Hq, int64_t D, float scale, std::vector<float>* scores_,
            std::vector<uint16_t>* probs, std::vector<float>* res, at::BFloat16* out) {
  const auto* q16 = reinterpret_cast<const uint16_t*>(q);
  const auto* k16 = reinterpret_cast<const uint16_t*>(k_buf);
  const auto* v16 = reinterpret_cast<const uint16_t*>(v_buf);
  if (heads == 3)
    attend_heads<3>(q16, q_stride, k16, v16, row, n, len, head0, h, Hkv, Hq, D, scale, scores_, probs, res, out);
  else if (heads == 2)
    attend_heads<2>(q16, q_stride, k16, v16, row, n, len, head0, h, Hkv, Hq, D, scale, scores_, probs, res, out);
  else
    attend_heads<1>(q16, q_stride, k16, v16, row, n, len, head0, h, Hkv, Hq, D, scale, scores_, probs, res, out);
}

}  // namespace dp
#pragma GCC pop_options
#else
#define POOL_ATTENTION_BF16_DOT 0
#endif

// whether bf16 pools take the dp path on this CPU
inline bool cpu_has_bf16_dot() {
#if POOL_ATTENTION_BF16_DOT
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// Where each of `threads` contiguous ranges of work items starts (and the last ends): near-equal sums of the
// items' key counts (plus a fixed 32 for each item's own work), so requests of different lengths keep no thread
// idle at the end, and each thread still reads its requests' keys in order (handing items out one at a time
// was 1.2x slower on equal lengths: neighbouring KV heads share cache lines).
std::vector<int64_t> balanced_cuts(const int64_t* lens, int64_t items, int64_t per_query, int64_t threads) {
  std::vector<int64_t> cuts(threads + 1, items);
  int64_t total = 0;
  for (int64_t i = 0; i < items; ++i) total += lens[i / per_query] + 32;
  int64_t done = 0, t = 1;  // item i starts range t when its middle is past range t's share of the total
  cuts[0] = 0;
  for (int64_t i = 0; i < items && t < threads; ++i) {
    const int64_t cost = lens[i / per_query] + 32;
    while (t < threads && (2 * done + cost) * threads >= 2 * total * t) cuts[t++] = i;
    done += cost;
  }
  return cuts;
}

// q [N, Hq, D] (rows q_stride apart: a view of a fused QKV output), out [N, Hq, D]; k_buf, v_buf [T, Hkv, D];
// slots [B, S]; rows, lens [N]. One work item per query and part of a KV head's query heads (G = Hq / Hkv heads in
// ceil(G / kMaxHeads) parts of near-equal size): the heads of a part read each key once.
template <typename T>
void run(const T* q, int64_t q_stride, const T* k_buf, const T* v_buf, const int64_t* slots, const int64_t* rows,
         const int64_t* lens, int64_t N, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, float scale, T* out,
         bool bf16_dot) {
  const int64_t G = Hq / Hkv, parts = (G + kMaxHeads - 1) / kMaxHeads;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N * Hkv * parts));
  const std::vector<int64_t> cuts = balanced_cuts(lens, N * Hkv * parts, Hkv * parts, threads);
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    std::vector<float> qf[kMaxHeads], scores[kMaxHeads], res[kMaxHeads];
    std::vector<uint16_t> probs[kMaxHeads];
    for (int i = 0; i < kMaxHeads; ++i) {
      qf[i].resize(D);
      res[i].resize(D);
    }
    for (int64_t item = cuts[first]; item < cuts[last]; ++item) {
      const int64_t n = item / (Hkv * parts), h = item / parts % Hkv, part = item % parts;
      const int64_t head0 = h * G + part * (G / parts) + std::min(part, G % parts);  // part sizes G/parts (+1)
      const int64_t heads = G / parts + (part < G % parts ? 1 : 0);
      const int64_t* row = slots + rows[n] * S;
      const int64_t len = lens[n];
#if POOL_ATTENTION_BF16_DOT
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        if (bf16_dot) {
          dp::attend(heads, q, q_stride, k_buf, v_buf, row, n, len, head0, h, Hkv, Hq, D, scale, scores, probs, res,
                     out);
          continue;
        }
      }
#endif
      if (heads == 3) {
        attend_heads<T, 3>(q, q_stride, k_buf, v_buf, row, n, len, head0, h, Hkv, Hq, D, scale, qf, scores, res, out);
      } else if (heads == 2) {
        attend_heads<T, 2>(q, q_stride, k_buf, v_buf, row, n, len, head0, h, Hkv, Hq, D, scale, qf, scores, res, out);
      } else {
        attend_heads<T, 1>(q, q_stride, k_buf, v_buf, row, n, len, head0, h, Hkv, Hq, D, scale, qf, scores, res, out);
      }
    }
  });
}

}  // namespace

torch::Tensor pool_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                             const torch::Tensor& slots, const torch::Tensor& q_rows, const torch::Tensor& kv_lens,
                             double scale, bool bf16_dot) {
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
        out.data_ptr<at::BFloat16>(), bf16_dot && cpu_has_bf16_dot());
  } else {
    TORCH_CHECK(q.scalar_type() == at::kFloat, "pool_attention supports bfloat16 and float32");
    run(q.data_ptr<float>(), q.stride(0), k_buf.data_ptr<float>(), v_buf.data_ptr<float>(), s.data_ptr<int64_t>(),
        rows.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), N, s.size(1), Hq, Hkv, D, sc, out.data_ptr<float>(),
        false);
  }
  return out;
}

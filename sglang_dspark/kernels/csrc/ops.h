// Native CPU kernels for bf16 inference on x86 CPUs with AVX2 + FMA (see kernels/cpu_ops.py).
#pragma once
#include <torch/extension.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

// y = x W^T (+ b): x [M, K], W [N, K] bf16 -> [M, N] in x's dtype, fp32 accumulation.
torch::Tensor bf16_linear(const torch::Tensor& x, const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias);

// Attention of query tokens over keys/values read in place from the token-level pool: query n sees the
// first kv_lens[n] slots of slots[q_rows[n]]. bf16_dot: bf16 pools use the CPU's bf16 dot products where it has
// them (false: the fp32 path every AVX2 CPU runs).
torch::Tensor pool_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                             const torch::Tensor& slots, const torch::Tensor& q_rows, const torch::Tensor& kv_lens,
                             double scale, bool bf16_dot = true);

// Rotary embedding of q [N, Hq, D] and k [N, Hkv, D] in place (HF's rotate_half and rounding); cos/sin [N, 1, D].
std::tuple<torch::Tensor, torch::Tensor> rotary(torch::Tensor q, torch::Tensor k, const torch::Tensor& cos,
                                                const torch::Tensor& sin);

// SiLU(gate) * up of gate_up [N, 2 I] (gate columns first) -> [N, I]: SiLU rounded to the dtype, then the product
// (as torch's F.silu(gate) * up rounds), each element alone (batch-invariant).
torch::Tensor silu_mul(const torch::Tensor& gate_up);

// HF RMSNorm of x [N, d]; with a residual, of x + residual, returning (normed, x + residual).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
std::tuple<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                                      const torch::Tensor& weight, double eps);

static inline __m256 load_bf16x8(const uint16_t* p) {
  __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}


// 8 floats from bf16 or fp32 memory.
static inline __m256 load8(const at::BFloat16* p) { return load_bf16x8(reinterpret_cast<const uint16_t*>(p)); }
static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

// 8 values rounded to bf16 (to nearest even, NaN to a quiet NaN: c10::BFloat16's rounding) or stored as fp32
static inline void store8(at::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i bias = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1)),
                                        _mm256_set1_epi32(0x7FFF));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
  const __m256 quiet_nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0));
  rounded = _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(rounded), quiet_nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
static inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }

// 8 fp32 values rounded to T (bf16: as store8 rounds; fp32: unchanged)
template <typename T>
static inline __m256 round8(__m256 v) {
  alignas(32) T r[8];
  store8(r, v);
  return load8(r);
}

// 8 lanes of row[i ..] (the last partial chunk padded with zeros); store_lanes writes back the live ones
template <typename T>
static inline __m256 load_lanes(const T* row, int64_t i, int64_t d) {
  if (i + 8 <= d) return load8(row + i);
  alignas(32) T pad[8] = {};
  std::copy(row + i, row + d, pad);
  return load8(pad);
}
template <typename T>
static inline void store_lanes(T* row, int64_t i, int64_t d, __m256 v) {
  if (i + 8 <= d) return store8(row + i, v);
  alignas(32) T pad[8];
  store8(pad, v);
  std::copy(pad, pad + (d - i), row + i);
}

// exp(x) for x <= 0: Cephes' polynomial, relative error about 2e-7.
static inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// Native CPU kernels for bf16 inference on x86 CPUs with AVX2 + FMA (see kernels/cpu_ops.py).
#pragma once
#include <torch/extension.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>

// y = x W^T (+ b): x [M, K], W [N, K] bf16 -> [M, N] in x's dtype, fp32 accumulation.
torch::Tensor bf16_linear(const torch::Tensor& x, const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias);

// Attention of query tokens over keys/values read in place from the token-level pool: query n sees the
// first kv_lens[n] slots of slots[q_rows[n]].
torch::Tensor pool_attention(const torch::Tensor& q, const torch::Tensor& k_buf, const torch::Tensor& v_buf,
                             const torch::Tensor& slots, const torch::Tensor& q_rows, const torch::Tensor& kv_lens,
                             double scale);

// Rotary embedding of q [N, Hq, D] and k [N, Hkv, D] in place (HF's rotate_half and rounding); cos/sin [N, 1, D].
std::tuple<torch::Tensor, torch::Tensor> rotary(torch::Tensor q, torch::Tensor k, const torch::Tensor& cos,
                                                const torch::Tensor& sin);

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

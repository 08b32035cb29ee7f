// 16 values of a bf16 or fp32 tensor as fp32 in one AVX-512 register (bf16: widened exactly).
#pragma once
#include <immintrin.h>
#include <torch/extension.h>

inline __m512 load16f(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16f(const at::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

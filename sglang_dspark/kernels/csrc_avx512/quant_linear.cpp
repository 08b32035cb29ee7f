// y = x W^T (+ b) with W kept in a GGML block format (see kernels/quant_formats.py), AVX-512.
//
// Every call reads each quantized weight row once: a panel of kPanel rows is decoded to fp32 in a per-thread
// buffer (L1/L2) and multiplied with every row of x in tiles of up to 4 rows, fp32 accumulation. So batch-1
// decode streams the quantized bytes once per token and a batch of M rows (verify chains, batched decode,
// prefill) once per 64 rows of x.
//
// Row independence: output (m, n) is always the same sequence of fused multiply-adds, 16 lanes wide, over
// K in order, then one horizontal sum, whichever tile or batch size row m lands in; so a verify chain gives
// the same logits as decoding its tokens one by one.
//
// Block layouts (GGML's, as in the GGUF file; fp16 little-endian scales), weight w of a block:
//   Q4_0 (32 w, 18 B): d, qs[16]           w = (q - 8) d      q: byte j low nibble -> w j, high -> w j+16
//   Q4_1 (32 w, 20 B): d, m, qs[16]        w = q d + m
//   Q8_0 (32 w, 34 B): d, int8 q[32]       w = q d
//   Q5_0 (32 w, 22 B): d, qh[4], qs[16]    w = (q - 16) d     q = nibble as Q4_0 | bit w of qh (u32) << 4
//   Q5_1 (32 w, 24 B): d, m, qh[4], qs[16] w = q d + m
//   Q4_K (256 w, 144 B): d, dmin, sc[12], qs[128]: 8 sub-blocks of 32 with 6-bit scale s and min m packed
//        in sc; sub-blocks 2j, 2j+1 are the low / high nibbles of qs[32j..32j+31]; w = d s q - dmin m
//   Q5_K (256 w, 176 B): as Q4_K plus qh[32] before qs: bit i of qh[l] is bit 4 of weight l of sub-block i
//   Q6_K (256 w, 210 B): ql[128], qh[64], int8 sc[16], d: weight 128h + r takes 4 bits from
//        ql[64h + r % 64] (nibble r / 64) and 2 bits from qh[32h + r % 32] (pair r / 32); w = d sc[i / 16] (q - 32)
// Every decode rounds as gguf-py's dequantizer does (the test's reference).
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

enum QType : int64_t { kQ4_0 = 0, kQ4_1, kQ8_0, kQ5_0, kQ5_1, kQ4_K, kQ5_K, kQ6_K, kNumTypes };

constexpr int64_t kBlockBytes[kNumTypes] = {18, 20, 34, 22, 24, 144, 176, 210};
constexpr int64_t kBlockWeights[kNumTypes] = {32, 32, 32, 32, 32, 256, 256, 256};
constexpr int64_t kPanel = 4;      // weight rows decoded together
constexpr int64_t kRowBlock = 64;  // rows of x per pass over the weights (fp32, stays in L2)

inline float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m512i widen(__m128i q) { return _mm512_cvtepu8_epi32(q); }
inline __m512 to_float(__m512i q) { return _mm512_cvtepi32_ps(q); }
// bits [shift, shift + width) of 16 bytes, as 16 int32
inline __m512i bits(__m128i q, int shift, int width) {
  return _mm512_and_si512(_mm512_srlv_epi32(widen(q), _mm512_set1_epi32(shift)), _mm512_set1_epi32((1 << width) - 1));
}

// 16 weights q d + m (exact where q d is: one rounding, as gguf-py's d * q + m)
inline void store_affine(float* dst, __m512i q, float d, float m) {
  _mm512_storeu_ps(dst, _mm512_fmadd_ps(to_float(q), _mm512_set1_ps(d), _mm512_set1_ps(m)));
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block j from the 12 packed bytes
inline void scale_min_k4(const uint8_t* sc, int j, int& s, int& m) {
  if (j < 4) {
    s = sc[j] & 63;
    m = sc[j + 4] & 63;
  } else {
    s = (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
    m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
  }
}

// One block at blk -> kBlockWeights[T] floats at dst.
template <QType T>
void decode_block(const uint8_t* blk, float* dst) {
  if constexpr (T == kQ8_0) {
    const __m512 d = _mm512_set1_ps(fp16(blk));
    _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(blk + 2))), d));
    _mm512_storeu_ps(dst + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(blk + 18))), d));
  } else if constexpr (T == kQ4_0 || T == kQ4_1) {
    const float d = fp16(blk);
    const float m = T == kQ4_1 ? fp16(blk + 2) : -8.0f * d;  // (q - 8) d as q d + (-8 d): exact
    const __m128i q = load16(blk + kBlockBytes[T] - 16);
    store_affine(dst, bits(q, 0, 4), d, m);
    store_affine(dst + 16, bits(q, 4, 4), d, m);
  } else if constexpr (T == kQ5_0 || T == kQ5_1) {
    const float d = fp16(blk);
    const float m = T == kQ5_1 ? fp16(blk + 2) : -16.0f * d;
    uint32_t qh;
    std::memcpy(&qh, blk + kBlockBytes[T] - 20, 4);
    const __m128i q = load16(blk + kBlockBytes[T] - 16);
    const __m512i high = _mm512_set1_epi32(16);
    store_affine(dst, _mm512_mask_or_epi32(bits(q, 0, 4), static_cast<__mmask16>(qh), bits(q, 0, 4), high), d, m);
    store_affine(dst + 16,
                 _mm512_mask_or_epi32(bits(q, 4, 4), static_cast<__mmask16>(qh >> 16), bits(q, 4, 4), high), d, m);
  } else if constexpr (T == kQ4_K || T == kQ5_K) {
    const float d = fp16(blk), dmin = fp16(blk + 2);
    const uint8_t* sc = blk + 4;
    const uint8_t* qh = blk + 16;
    const uint8_t* qs = blk + (T == kQ5_K ? 48 : 16);
    for (int i = 0; i < 8; ++i) {  // sub-block i: nibble i % 2 of qs[32 (i / 2) ..]
      int s, m;
      scale_min_k4(sc, i, s, m);
      for (int h = 0; h < 2; ++h) {
        __m512i q = bits(load16(qs + 32 * (i / 2) + 16 * h), 4 * (i % 2), 4);
        if constexpr (T == kQ5_K) q = _mm512_or_si512(q, _mm512_slli_epi32(bits(load16(qh + 16 * h), i, 1), 4));
        store_affine(dst + 32 * i + 16 * h, q, d * s, -(dmin * m));
      }
    }
  } else {  // kQ6_K
    const uint8_t* ql = blk;
    const uint8_t* qh = blk + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    const float d = fp16(blk + 208);
    const __m512i bias = _mm512_set1_epi32(32);
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < 128; r += 16) {
        const __m512i lo = bits(load16(ql + 64 * h + r % 64), 4 * (r / 64), 4);
        const __m512i hi = bits(load16(qh + 32 * h + r % 32), 2 * (r / 32), 2);
        const __m512i q = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), bias);
        // (d sc) q, in gguf-py's order
        _mm512_storeu_ps(dst + 128 * h + r, _mm512_mul_ps(to_float(q), _mm512_set1_ps(d * sc[(128 * h + r) / 16])));
      }
  }
}

// One row of K weights (blocks starting at src) -> K floats at dst.
template <QType T>
void decode_row(const uint8_t* src, int64_t K, float* dst) {
  for (int64_t b = 0; b < K / kBlockWeights[T]; ++b) decode_block<T>(src + b * kBlockBytes[T], dst + b * kBlockWeights[T]);
}

// out[m][n] = dot(x[m], w[n]) for MT rows of x and NB decoded weight rows, all fp32 and K long.
template <int MT, int NB>
inline void tile(const float* x, int64_t K, const float* w, float out[4][kPanel]) {
  __m512 acc[MT][NB];
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n) acc[m][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 wv[NB];
    for (int n = 0; n < NB; ++n) wv[n] = _mm512_loadu_ps(w + n * K + k);
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int n = 0; n < NB; ++n) acc[m][n] = _mm512_fmadd_ps(xv, wv[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n) out[m][n] = _mm512_reduce_add_ps(acc[m][n]);
}

template <int NB, typename OutT>
void panel_times_rows(const float* x, int64_t M, int64_t K, const float* w, const float* bias, int64_t n0, OutT* y,
                      int64_t N) {
  float out[4][kPanel];
  auto store = [&](int64_t m, int mt) {
    for (int i = 0; i < mt; ++i)
      for (int n = 0; n < NB; ++n) y[(m + i) * N + n0 + n] = static_cast<OutT>(out[i][n] + (bias ? bias[n0 + n] : 0.f));
  };
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) { tile<4, NB>(x + m * K, K, w, out); store(m, 4); }
  switch (M - m) {
    case 3: tile<3, NB>(x + m * K, K, w, out); store(m, 3); break;
    case 2: tile<2, NB>(x + m * K, K, w, out); store(m, 2); break;
    case 1: tile<1, NB>(x + m * K, K, w, out); store(m, 1); break;
    default: break;
  }
}

template <QType T, typename OutT>
void run(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t row_bytes, const float* bias, OutT* y,
         int64_t N) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  at::parallel_for(0, panels, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(kPanel * K);
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, M - m0);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n0 = p * kPanel, nb = std::min(kPanel, N - n0);
        for (int64_t n = 0; n < nb; ++n) decode_row<T>(w + (n0 + n) * row_bytes, K, buf.data() + n * K);
        const float* xm = x + m0 * K;
        OutT* ym = y + m0 * N;
        switch (nb) {
          case 4: panel_times_rows<4, OutT>(xm, rows, K, buf.data(), bias, n0, ym, N); break;
          case 3: panel_times_rows<3, OutT>(xm, rows, K, buf.data(), bias, n0, ym, N); break;
          case 2: panel_times_rows<2, OutT>(xm, rows, K, buf.data(), bias, n0, ym, N); break;
          default: panel_times_rows<1, OutT>(xm, rows, K, buf.data(), bias, n0, ym, N); break;
        }
      }
    }
  });
}


template <typename OutT>
void dispatch(int64_t qtype, const float* xp, int64_t M, int64_t K, const uint8_t* wp, int64_t rb, const float* bp,
              OutT* yp, int64_t N) {
  switch (qtype) {
    case kQ4_0: run<kQ4_0>(xp, M, K, wp, rb, bp, yp, N); break;
    case kQ4_1: run<kQ4_1>(xp, M, K, wp, rb, bp, yp, N); break;
    case kQ8_0: run<kQ8_0>(xp, M, K, wp, rb, bp, yp, N); break;
    case kQ5_0: run<kQ5_0>(xp, M, K, wp, rb, bp, yp, N); break;
    case kQ5_1: run<kQ5_1>(xp, M, K, wp, rb, bp, yp, N); break;
    case kQ4_K: run<kQ4_K>(xp, M, K, wp, rb, bp, yp, N); break;
    case kQ5_K: run<kQ5_K>(xp, M, K, wp, rb, bp, yp, N); break;
    default: run<kQ6_K>(xp, M, K, wp, rb, bp, yp, N); break;
  }
}

// n values of a bf16 or fp32 tensor's memory as fp32 (no torch op: a decode step makes hundreds of these calls)
std::vector<float> as_float(const torch::Tensor& t) {
  std::vector<float> out(t.numel());
  if (t.scalar_type() == at::kBFloat16) {
    const at::BFloat16* p = t.data_ptr<at::BFloat16>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(p[i]);
  } else {
    TORCH_CHECK(t.scalar_type() == at::kFloat, "quant_linear supports bfloat16 and float32 inputs");
    std::memcpy(out.data(), t.data_ptr<float>(), out.size() * sizeof(float));
  }
  return out;
}

}  // namespace

// x [M, K] (bf16 or fp32, contiguous), weight [N, K / block weights * block bytes] uint8 in format qtype,
// bias [N] or None -> [M, N] in x's dtype, or in fp32 with float_out.
torch::Tensor quant_linear(const torch::Tensor& x, const torch::Tensor& weight, int64_t qtype, int64_t K,
                           const c10::optional<torch::Tensor>& bias, bool float_out) {
  TORCH_CHECK(qtype >= 0 && qtype < kNumTypes, "unknown quantized weight type ", qtype);
  TORCH_CHECK(K % kBlockWeights[qtype] == 0, "K must be a multiple of ", kBlockWeights[qtype]);
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.dim() == 2 && weight.is_contiguous() &&
                  weight.size(1) == K / kBlockWeights[qtype] * kBlockBytes[qtype],
              "weight must be contiguous uint8 [N, K / block weights * block bytes]");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K && x.is_contiguous(), "x must be contiguous [M, K]");
  const int64_t M = x.size(0), N = weight.size(0);
  const std::vector<float> xf = x.scalar_type() == at::kFloat ? std::vector<float>() : as_float(x);
  const float* xp = x.scalar_type() == at::kFloat ? x.data_ptr<float>() : xf.data();
  std::vector<float> bf;
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == N && bias->is_contiguous(), "bias must be contiguous [N]");
    bf = as_float(*bias);
  }
  const float* bp = bias.has_value() ? bf.data() : nullptr;
  const uint8_t* wp = weight.data_ptr<uint8_t>();
  const int64_t rb = weight.size(1);
  torch::Tensor y = torch::empty({M, N}, x.options().dtype(float_out ? at::kFloat : x.scalar_type()));
  if (y.scalar_type() == at::kFloat) {
    dispatch(qtype, xp, M, K, wp, rb, bp, y.data_ptr<float>(), N);
  } else {
    dispatch(qtype, xp, M, K, wp, rb, bp, y.data_ptr<at::BFloat16>(), N);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quant_linear", &quant_linear,
        "y = x W^T (+ b) with W in a GGML block format (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)");
}

// y = x W^T (+ b) with W kept in a GGML block format (Q4_0, Q4_1, Q8_0; see kernels/quant_formats.py), AVX-512.
//
// Every call reads each quantized weight row once: a panel of kPanel rows is decoded to fp32 in a per-thread
// buffer (L1/L2) and multiplied with every row of x in tiles of up to 4 rows, fp32 accumulation. So batch-1
// decode streams the quantized bytes once per token and a batch of M rows (verify chains, batched decode,
// prefill) once per 64 rows of x.
//
// Row independence: output (m, n) is always the same sequence of fused multiply-adds, 16 lanes wide, over
// K in order, then one horizontal sum, whichever tile or batch size row m lands in; so a verify chain gives
// the same logits as decoding its tokens one by one.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

enum QType : int64_t { kQ4_0 = 0, kQ4_1 = 1, kQ8_0 = 2 };

constexpr int64_t kBlock = 32;
constexpr int64_t kPanel = 4;      // weight rows decoded together
constexpr int64_t kRowBlock = 64;  // rows of x per pass over the weights (fp32, stays in L2)

inline float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 16 nibbles (the low or high halves of 16 bytes) as floats.
inline __m512 nibbles_lo(__m128i q) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, _mm_set1_epi8(0x0F)))); }
inline __m512 nibbles_hi(__m128i q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0F))));
}

// One row of K weights (K / 32 blocks starting at src) -> K floats at dst.
template <QType T>
void decode_row(const uint8_t* src, int64_t K, float* dst) {
  for (int64_t b = 0; b < K / kBlock; ++b, dst += kBlock) {
    if constexpr (T == kQ8_0) {
      const uint8_t* blk = src + b * 34;
      const __m512 d = _mm512_set1_ps(fp16(blk));
      const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
      const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18));
      _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d));
      _mm512_storeu_ps(dst + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d));
    } else {
      constexpr int64_t bytes = T == kQ4_1 ? 20 : 18;
      const uint8_t* blk = src + b * bytes;
      const float df = fp16(blk);
      const __m512 d = _mm512_set1_ps(df);
      const __m512 m = _mm512_set1_ps(T == kQ4_1 ? fp16(blk + 2) : -8.0f * df);
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + bytes - 16));
      // Q4_1: q * d + m; Q4_0: (q - 8) * d, as q * d + (-8 d) (exact: q - 8 and 8 d are exact in fp32)
      _mm512_storeu_ps(dst, _mm512_fmadd_ps(nibbles_lo(q), d, m));
      _mm512_storeu_ps(dst + 16, _mm512_fmadd_ps(nibbles_hi(q), d, m));
    }
  }
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

template <int NB>
void panel_times_rows(const float* x, int64_t M, int64_t K, const float* w, const float* bias, int64_t n0, float* y,
                      int64_t N) {
  float out[4][kPanel];
  auto store = [&](int64_t m, int mt) {
    for (int i = 0; i < mt; ++i)
      for (int n = 0; n < NB; ++n) y[(m + i) * N + n0 + n] = out[i][n] + (bias ? bias[n0 + n] : 0.f);
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

template <QType T>
void run(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t row_bytes, const float* bias, float* y,
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
        float* ym = y + m0 * N;
        switch (nb) {
          case 4: panel_times_rows<4>(xm, rows, K, buf.data(), bias, n0, ym, N); break;
          case 3: panel_times_rows<3>(xm, rows, K, buf.data(), bias, n0, ym, N); break;
          case 2: panel_times_rows<2>(xm, rows, K, buf.data(), bias, n0, ym, N); break;
          default: panel_times_rows<1>(xm, rows, K, buf.data(), bias, n0, ym, N); break;
        }
      }
    }
  });
}

}  // namespace

// x [M, K] (bf16 or fp32), weight [N, K / 32 * block bytes] uint8 in format qtype, bias [N] or None
// -> [M, N] in x's dtype.
torch::Tensor quant_linear(const torch::Tensor& x, const torch::Tensor& weight, int64_t qtype, int64_t K,
                           const c10::optional<torch::Tensor>& bias) {
  static const int64_t block_bytes[] = {18, 20, 34};
  TORCH_CHECK(qtype >= kQ4_0 && qtype <= kQ8_0, "unknown quantized weight type ", qtype);
  TORCH_CHECK(K % kBlock == 0, "K must be a multiple of 32");
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.dim() == 2 && weight.is_contiguous() &&
                  weight.size(1) == K / kBlock * block_bytes[qtype],
              "weight must be contiguous uint8 [N, K / 32 * block bytes]");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "x must be [M, K]");
  const int64_t M = x.size(0), N = weight.size(0);
  torch::Tensor xf = x.to(torch::kFloat32).contiguous();
  torch::Tensor bf;
  if (bias.has_value()) bf = bias->to(torch::kFloat32).contiguous();
  torch::Tensor y = torch::empty({M, N}, x.options().dtype(torch::kFloat32));
  const float* bp = bias.has_value() ? bf.data_ptr<float>() : nullptr;
  const uint8_t* wp = weight.data_ptr<uint8_t>();
  switch (qtype) {
    case kQ4_0: run<kQ4_0>(xf.data_ptr<float>(), M, K, wp, weight.size(1), bp, y.data_ptr<float>(), N); break;
    case kQ4_1: run<kQ4_1>(xf.data_ptr<float>(), M, K, wp, weight.size(1), bp, y.data_ptr<float>(), N); break;
    default: run<kQ8_0>(xf.data_ptr<float>(), M, K, wp, weight.size(1), bp, y.data_ptr<float>(), N); break;
  }
  return y.to(x.scalar_type());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quant_linear", &quant_linear, "y = x W^T (+ b) with W in a GGML block format (Q4_0, Q4_1, Q8_0)");
}

// y = x W^T (+ b) with W kept in a GGML block format (see kernels/quant_formats.py), AVX-512 VNNI.
//
// Activations are quantized as llama.cpp quantizes them for its dot products: each row of x, in groups of 32,
// to int8 with one fp32 scale per group (dx = max |x| / 127, q = round-to-nearest-even(x / dx)). Each
// 32-weight group of W is unpacked in registers to 32 unsigned bytes u with a scale a and an offset c
// (w = a u + c), and the group's contribution is  a dx (u . q)  +  c dx (sum of q):  the byte dot product
// is exact (VPDPBUSD, int32), the rest fp32. Q8_0's signed bytes take llama.cpp's sign trick instead
// (|w| . sign(w) q); Q6_K's two scales per group weight each half of the dot product.
//
// Each weight row is read from memory once per call and unpacked once per pass of up to 8 rows of x, so
// batch-1 decode streams the quantized bytes once per token and does little work per byte.
//
// Row independence: output (m, n) is always the same sequence of fp32 operations (per group, in order: one
// 8-lane fused multiply-add of the dot product times a dx; then the 8-lane sum, plus the offsets' sum
// c . (dx sum of q) taken 8 lanes at a time over the groups), whichever tile or batch size row m lands in; so a
// verify chain gives the same logits as decoding its tokens one by one. Floating-point contraction is off in
// this file (the pragma below) so the compiler cannot change that; the native kernels built beside it keep the
// flags of their own extension (kernels/cpu_ops.py), so the fused decoder layer computes what they compute.
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
//   Q4_0x16 .. Q6_Kx16: every format above repacked at load (quant_formats.interleave) in tiles of 16 weight
//        rows; per group of a tile, the rows' quant bytes as 4 (Q8_0: 8) x 16 dwords, (Q5_x, Q5_K) 8 64-bit
//        masks of fifth bits, (Q6_K) two lines of 2-bit fields for bits 4-5; then for Q4_0 .. Q5_1 and Q8_0
//        the group's 16 scales d and (Q4_1, Q5_1) 16 minimums m; for the K-quants, after the 8 groups of a
//        super-block, its 16 rows' other bytes: Q4_K / Q5_K 16 d, 16 dmin and the 12 bytes of packed scales
//        and minimums as 12 x 16 bytes (byte i of every row in turn), Q6_K its 16 x 16 int8 scales so, then 16 d.
//
// The tiled formats turn the loops around: dword j of all 16 rows is one 512-bit register, so one VPDPBUSD
// with dword j of x broadcast advances 16 rows' dot products by 4 weights, and one group costs 8 of them, a
// conversion and two fused multiply-adds for 16 rows (per row of x), where the row-major formats spend about
// four 256-bit operations per row and group plus the unpacking and scale loads. Q8_0's signed bytes become
// unsigned by flipping their sign bit (u = w + 128, offset c = -128 d). Each output is one lane of a register:
// per group, in order, acc = dot (a dx) + acc, then acc = c (dx sum of q) + acc. A K-quant tile decodes a group's
// a = d s and c = -dmin m from its super-block's bytes for 16 rows at once, as the row-major path does; Q6_K
// (w = a (u - 32), a per 16 weights) takes the offset in int32, each half of a group as acc = ((u - 32) . q)
// (a dx) + acc: exact where the fp32 offset would cancel a rounded product (a = d sc has up to 18 bits).
#pragma GCC optimize("fp-contract=off")

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include "quant_linear.h"
#include "widen.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

enum QType : int64_t {
  kQ4_0 = 0, kQ4_1, kQ8_0, kQ5_0, kQ5_1, kQ4_K, kQ5_K, kQ6_K, kQ4_0x16, kQ4_1x16, kQ8_0x16, kQ5_0x16, kQ5_1x16,
  kQ4_Kx16, kQ5_Kx16, kQ6_Kx16, kNumTypes
};

constexpr int64_t kBlockBytes[kNumTypes] = {18, 20, 34, 22, 24, 144, 176, 210, 18, 20, 34, 22, 24, 144, 176, 210};
constexpr int64_t kBlockWeights[kNumTypes] = {32, 32, 32, 32, 32, 256, 256, 256, 32, 32, 32, 32, 32, 256, 256, 256};
constexpr int64_t kGroup = 32;  // weights per activation scale and per unpacked weight group
constexpr int64_t kTileRows = 16;  // weight rows per tile of the interleaved formats

inline float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m256i load32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// 16 bytes of nibbles -> 32 bytes: low nibbles (weights 0..15), then high nibbles (16..31)
inline __m256i nibbles(const uint8_t* p) {
  const __m128i q = load16(p);
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
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

// One 32-weight group of a weight row, unpacked: w = a u + c (Q6_K: a0 / c0 for weights 0..15, a1 / c1 for
// 16..31; Q8_0: u holds the signed weights).
struct Group {
  __m256i u;
  float a0, a1, c0, c1;
};

template <QType T>
inline Group unpack(const uint8_t* row, int64_t g) {
  Group out;
  if constexpr (kBlockWeights[T] == 32) {
    const uint8_t* blk = row + g * kBlockBytes[T];
    const float d = fp16(blk);
    out.a0 = out.a1 = d;
    if constexpr (T == kQ8_0) {
      out.u = load32(blk + 2);
      out.c0 = out.c1 = 0.f;
    } else {
      out.u = nibbles(blk + kBlockBytes[T] - 16);
      if constexpr (T == kQ5_0 || T == kQ5_1) {
        uint32_t qh;
        std::memcpy(&qh, blk + kBlockBytes[T] - 20, 4);
        out.u = _mm256_mask_add_epi8(out.u, static_cast<__mmask32>(qh), out.u, _mm256_set1_epi8(16));
      }
      const float c = T == kQ4_0 ? -8.0f * d : T == kQ5_0 ? -16.0f * d : fp16(blk + 2);  // x8, x16: exact
      out.c0 = out.c1 = c;
    }
  } else if constexpr (T == kQ4_K || T == kQ5_K) {
    const uint8_t* blk = row + (g / 8) * kBlockBytes[T];
    const int i = g % 8;
    int s, m;
    scale_min_k4(blk + 4, i, s, m);
    const uint8_t* qs = blk + (T == kQ5_K ? 48 : 16) + 32 * (i / 2);
    __m256i u = _mm256_and_si256(_mm256_srli_epi16(load32(qs), 4 * (i % 2)), _mm256_set1_epi8(0x0F));
    if constexpr (T == kQ5_K) {
      const __mmask32 high = _mm256_test_epi8_mask(load32(blk + 16), _mm256_set1_epi8(static_cast<char>(1 << i)));
      u = _mm256_mask_add_epi8(u, high, u, _mm256_set1_epi8(16));
    }
    out.u = u;
    out.a0 = out.a1 = fp16(blk) * static_cast<float>(s);
    out.c0 = out.c1 = -(fp16(blk + 2) * static_cast<float>(m));
  } else {  // kQ6_K: group j of the block is r = 32 (j % 4) of half h = j / 4
    const uint8_t* blk = row + (g / 8) * kBlockBytes[T];
    const int j = g % 8, h = j / 4, r = 32 * (j % 4);
    const __m256i lo =
        _mm256_and_si256(_mm256_srli_epi16(load32(blk + 64 * h + r % 64), 4 * (r / 64)), _mm256_set1_epi8(0x0F));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(load32(blk + 128 + 32 * h), 2 * (r / 32)),
                                        _mm256_set1_epi8(0x03));
    out.u = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192) + (128 * h + r) / 16;
    const float d = fp16(blk + 208);
    out.a0 = d * static_cast<float>(sc[0]);
    out.a1 = d * static_cast<float>(sc[1]);
    out.c0 = -32.0f * out.a0;
    out.c1 = -32.0f * out.a1;
  }
  return out;
}

// Rows of x quantized per group: q [M, K] int8, dx per group, and for the offsets dx * (sum of q) per group,
// or per half group for Q6_K (halves = 2), zero-padded to a multiple of 8 per row (offset_len); and the sums of
// q per half group as integers (half_sums [M * groups * 2])
struct QuantizedRows {
  int64_t groups, offset_len;
  std::vector<int8_t> q;
  std::vector<float> dx, sum;
  std::vector<int32_t> half_sums;

  template <typename X>  // float or at::BFloat16
  QuantizedRows(const X* x, int64_t M, int64_t K, int halves)
      : groups(K / kGroup), offset_len((groups * halves + 7) / 8 * 8), q(M * K), dx(M * groups),
        sum(M * offset_len, 0.f), half_sums(M * groups * 2) {
    for (int64_t i = 0; i < M * groups; ++i) {
      const X* xp = x + i * kGroup;
      const __m512 v0 = load16f(xp), v1 = load16f(xp + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const float d = amax / 127.0f;
      const float id = d != 0.f ? 1.0f / d : 0.f;
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));  // nearest, ties to even
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q.data() + i * kGroup), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q.data() + i * kGroup + 16), _mm512_cvtepi32_epi8(q1));
      const int lo = _mm512_reduce_add_epi32(q0), hi = _mm512_reduce_add_epi32(q1);
      dx[i] = d;
      half_sums[2 * i] = lo;
      half_sums[2 * i + 1] = hi;
      float* row_sums = sum.data() + (i / groups) * offset_len + (i % groups) * halves;
      if (halves == 2) {
        row_sums[0] = d * static_cast<float>(lo);
        row_sums[1] = d * static_cast<float>(hi);
      } else {
        row_sums[0] = d * static_cast<float>(lo + hi);
      }
    }
  }
};

inline float hsum8(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// u . q over one group: 8 int32 lanes, lanes 0..3 from weights 0..15 and 4..7 from 16..31
template <QType T>
inline __m256i group_dot(__m256i u, __m256i q) {
  if constexpr (T == kQ8_0) {  // signed x signed: |w| . (q with w's sign)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(u), _mm256_sign_epi8(q, u));
  } else {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, q);
  }
}

// out[m][n] for MT rows of x (from row m0) and NB weight rows (from n0): the fixed per-output sequence.
template <QType T, int MT, int NB>
inline void tile(const QuantizedRows& xq, int64_t m0, int64_t K, const uint8_t* w, int64_t row_bytes, int64_t n0,
                 float* offsets, float out[MT][NB]) {
  constexpr int halves = T == kQ6_K ? 2 : 1;
  const int64_t groups = K / kGroup, len = xq.offset_len;
  __m256 acc[MT][NB];
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n) acc[m][n] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    Group wg[NB];
    __m256 a[NB];  // each lane's weight scale
    for (int n = 0; n < NB; ++n) {
      // the rows four tiles ahead, at the same column: short rows read side by side defeat the prefetchers
      const int64_t ahead = (n0 + 4 * NB + n) * row_bytes + g * kGroup * kBlockBytes[T] / kBlockWeights[T];
      _mm_prefetch(reinterpret_cast<const char*>(w + ahead), _MM_HINT_T0);
      wg[n] = unpack<T>(w + (n0 + n) * row_bytes, g);
      a[n] = _mm256_set1_ps(wg[n].a0);
      if constexpr (T == kQ6_K) a[n] = _mm256_blend_ps(a[n], _mm256_set1_ps(wg[n].a1), 0xF0);
      offsets[n * len + g * halves] = wg[n].c0;
      if constexpr (T == kQ6_K) offsets[n * len + g * halves + 1] = wg[n].c1;
    }
    for (int m = 0; m < MT; ++m) {
      const int64_t xg = (m0 + m) * groups + g;
      const __m256i q = load32(xq.q.data() + xg * kGroup);
      const __m256 dx = _mm256_set1_ps(xq.dx[xg]);
      for (int n = 0; n < NB; ++n) {
        const __m256 dot = _mm256_cvtepi32_ps(group_dot<T>(wg[n].u, q));
        acc[m][n] = _mm256_fmadd_ps(dot, _mm256_mul_ps(a[n], dx), acc[m][n]);
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n) {
      float off = 0.f;
      if constexpr (T != kQ8_0) {  // the offsets' sum: c . (dx * sum of q), 8 lanes over the groups in order
        const float* s = xq.sum.data() + (m0 + m) * len;
        __m256 o = _mm256_setzero_ps();
        for (int64_t i = 0; i < len; i += 8)
          o = _mm256_fmadd_ps(_mm256_loadu_ps(offsets + n * len + i), _mm256_loadu_ps(s + i), o);
        off = hsum8(o);
      }
      out[m][n] = hsum8(acc[m][n]) + off;
    }
}

template <QType T, int MT, int NB, typename OutT>
inline void tile_store(const QuantizedRows& xq, int64_t m0, int64_t K, const uint8_t* w, int64_t rb, int64_t n0,
                       float* offsets, const float* bias, OutT* y, int64_t N) {
  float out[MT][NB];
  tile<T, MT, NB>(xq, m0, K, w, rb, n0, offsets, out);
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n) y[(m0 + m) * N + n0 + n] = static_cast<OutT>(out[m][n] + (bias ? bias[n0 + n] : 0.f));
}

// NB weight rows from n0 times every row of x, in tiles of up to 8 rows
template <QType T, int NB, typename OutT>
void rows_times_x(const QuantizedRows& xq, int64_t M, int64_t K, const uint8_t* w, int64_t rb, int64_t n0,
                  float* offsets, const float* bias, OutT* y, int64_t N) {
  int64_t m = 0;
  if constexpr (NB <= 2) {
    for (; m + 8 <= M; m += 8) tile_store<T, 8, NB>(xq, m, K, w, rb, n0, offsets, bias, y, N);
    for (; m + 4 <= M; m += 4) tile_store<T, 4, NB>(xq, m, K, w, rb, n0, offsets, bias, y, N);
  }
  for (; m + 2 <= M; m += 2) tile_store<T, 2, NB>(xq, m, K, w, rb, n0, offsets, bias, y, N);
  if (m < M) tile_store<T, 1, NB>(xq, m, K, w, rb, n0, offsets, bias, y, N);
}

template <QType T, typename OutT>
void run(const QuantizedRows& xq, int64_t M, int64_t K, const uint8_t* w, int64_t rb, const float* bias, OutT* y,
         int64_t N) {
  // batch 1: four weight rows at a time (independent chains), but Q8_0's one at a time (a single stream, which
  // the prefetchers follow: its 34-byte blocks read 2x faster so); more rows: two weight rows by up to eight
  // rows of x
  const int64_t nb = M > 1 ? 2 : T == kQ8_0 ? 1 : 4;
  at::parallel_for(0, (N + nb - 1) / nb, 16 / nb, [&](int64_t begin, int64_t end) {
    std::vector<float> offsets(4 * xq.offset_len, 0.f);  // the offsets c of up to four weight rows, per group
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * nb, left = N - n0;
      float* o = offsets.data();
      if (nb == 4 && left >= 4) {
        rows_times_x<T, 4, OutT>(xq, M, K, w, rb, n0, o, bias, y, N);
      } else if (nb == 2 && left >= 2) {
        rows_times_x<T, 2, OutT>(xq, M, K, w, rb, n0, o, bias, y, N);
      } else {
        for (int64_t n = n0; n < std::min(N, n0 + nb); ++n) rows_times_x<T, 1, OutT>(xq, M, K, w, rb, n, o, bias, y, N);
      }
    }
  });
}

// A tiled group's layout (T: the base format): bytes of quants and fifth-bit masks before the scales, and the
// offset c of w = d u + c where it is a multiple of d (the others store m)
constexpr QType kTiledBase(int64_t qtype) {
  constexpr QType bases[] = {kQ4_0, kQ4_1, kQ8_0, kQ5_0, kQ5_1, kQ4_K, kQ5_K, kQ6_K};  // of kQ4_0x16 .. kQ6_Kx16
  return bases[qtype - kQ4_0x16];
}
constexpr bool kFiveBit(QType T) { return T == kQ5_0 || T == kQ5_1 || T == kQ5_K; }
constexpr bool kHasMinimum(QType T) { return T == kQ4_1 || T == kQ5_1; }
constexpr int64_t kTiledQuantBytes(QType T) {
  return kTileRows * (T == kQ8_0 ? 32 : 16) + (kFiveBit(T) ? 64 : 0) + (T == kQ6_K ? 128 : 0);
}
constexpr int64_t kGroupsPerBlock = 8;  // 32-weight groups per K-quant super-block
constexpr float kOffsetTimesD(QType T) { return T == kQ8_0 ? -128.0f : T == kQ5_0 ? -16.0f : -8.0f; }

// Dword j of a group of x in every lane, read from x's memory so that it compiles to one broadcast load (from a
// local copy of the group the compiler moves the dwords through general registers: a move and a shift each).
inline __m512i broadcast_dword(const int8_t* q, int j) {
  int32_t v;
  std::memcpy(&v, q + 4 * j, sizeof(v));
  return _mm512_set1_epi32(v);
}

// How many groups ahead a tiled weight's cache lines are prefetched (0: none). A thread's tiles are one sequential
// stream. On Zen 4 the hardware prefetchers follow it: prefetching 1-32 groups ahead read the layer matmuls at
// 20-22 GB/s instead of 29-32 (2 threads). On an Intel Xeon they left the L3-resident weights of a decode step at
// about half of the L3's bandwidth, and every line 32 groups (10-17 KB) ahead made whole forwards of 1-8 rows
// 1.13-1.27x faster (benchmarks/results/engine.md).
inline int64_t prefetch_groups() {
  static const int64_t groups = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") ? 32 : 0;
  }();
  return groups;
}

// A tiled group's quants at p as unsigned bytes: w[j] holds weights 4j..4j+3 of the 16 rows (one per lane), to
// meet dword j of x
template <QType T>
inline void unpack_tiled(const uint8_t* p, __m512i w[8]) {
  if constexpr (T == kQ8_0) {
    for (int j = 0; j < 8; ++j)
      w[j] = _mm512_xor_si512(_mm512_loadu_si512(p + 64 * j), _mm512_set1_epi8(static_cast<char>(0x80)));
    return;
  }
  const __m512i low = _mm512_set1_epi8(0x0F);  // low nibbles: weights 4j..4j+3, high nibbles: 16+4j..16+4j+3
  for (int j = 0; j < 4; ++j) {
    const __m512i v = _mm512_loadu_si512(p + 64 * j);
    w[j] = _mm512_and_si512(v, low);
    w[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
  }
  if constexpr (kFiveBit(T)) {  // + 16 where the fifth bit is set
    for (int j = 0; j < 8; ++j) {
      uint64_t high;
      std::memcpy(&high, p + 256 + 8 * j, 8);
      w[j] = _mm512_mask_add_epi8(w[j], high, w[j], _mm512_set1_epi8(16));
    }
  }
  if constexpr (T == kQ6_K) {  // bits 4-5 of w[4L + f]: field f of line L's bytes
    const __m512i bits = _mm512_set1_epi8(0x30);
    for (int L = 0; L < 2; ++L) {
      const __m512i h = _mm512_loadu_si512(p + 256 + 64 * L);
      w[4 * L] = _mm512_or_si512(w[4 * L], _mm512_and_si512(_mm512_slli_epi16(h, 4), bits));
      w[4 * L + 1] = _mm512_or_si512(w[4 * L + 1], _mm512_and_si512(_mm512_slli_epi16(h, 2), bits));
      w[4 * L + 2] = _mm512_or_si512(w[4 * L + 2], _mm512_and_si512(h, bits));
      w[4 * L + 3] = _mm512_or_si512(w[4 * L + 3], _mm512_and_si512(_mm512_srli_epi16(h, 2), bits));
    }
  }
}

// acc[m] += group g's 16 outputs for row m0 + m of x: (u . q) (a dx) + c (dx sum of q); Q6_K (w = a (u - 32),
// a0 and a1 for its halves): ((u - 32) . q) (a dx) for each half in turn, the offset taken in int32 (exact)
template <int MT, bool Q6K>
inline void accumulate(const QuantizedRows& xq, int64_t m0, int64_t g, const __m512i w[8], __m512 a0, __m512 a1,
                       __m512 c, __m512 acc[MT]) {
  const int64_t groups = xq.groups, len = xq.offset_len;
  for (int m = 0; m < MT; ++m) {
    const int64_t xg = (m0 + m) * groups + g;
    const int8_t* q = xq.q.data() + xg * kGroup;
    __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();  // weights 0..15, 16..31
    for (int j = 0; j < 4; ++j) {
      lo = _mm512_dpbusd_epi32(lo, w[j], broadcast_dword(q, j));
      hi = _mm512_dpbusd_epi32(hi, w[4 + j], broadcast_dword(q, 4 + j));
    }  // |u . q| <= 255 * 127 * 32: exact in int32
    const __m512 dx = _mm512_set1_ps(xq.dx[xg]);
    if constexpr (Q6K) {
      lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(32 * xq.half_sums[2 * xg]));
      hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(32 * xq.half_sums[2 * xg + 1]));
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(a0, dx), acc[m]);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_mul_ps(a1, dx), acc[m]);
    } else {
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi));
      acc[m] = _mm512_fmadd_ps(dot, _mm512_mul_ps(a0, dx), acc[m]);
      acc[m] = _mm512_fmadd_ps(c, _mm512_set1_ps(xq.sum[(m0 + m) * len + g]), acc[m]);
    }
  }
}

inline void prefetch_lines(const uint8_t* p, int64_t bytes) {
  for (int64_t line = 0; line < bytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(p + line), _MM_HINT_T0);
}

// 16 int8 (or uint8) of a scale plane (one per row) as fp32
inline __m512 plane_i8(const uint8_t* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(p))); }
inline __m512 plane_u8(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }

// The groups of a 32-weight tiled format (T: the base format), prefetching `ahead` bytes ahead (0: not)
template <QType T, int MT>
inline void tile_groups(const QuantizedRows& xq, int64_t m0, const uint8_t* tile, int64_t ahead, __m512 acc[MT]) {
  constexpr int64_t group_bytes = kTileRows * kBlockBytes[T];
  constexpr int64_t quant_bytes = kTiledQuantBytes(T);  // then the scales
  for (int64_t g = 0; g < xq.groups; ++g) {
    const uint8_t* p = tile + g * group_bytes;
    if (ahead) prefetch_lines(p + ahead, group_bytes);  // past the weight's end near its last tiles: no fault
    __m512i w[8];
    unpack_tiled<T>(p, w);
    const __m512 d = _mm512_cvtph_ps(load32(p + quant_bytes));
    const __m512 c = kHasMinimum(T) ? _mm512_cvtph_ps(load32(p + quant_bytes + 32))
                                    : _mm512_mul_ps(d, _mm512_set1_ps(kOffsetTimesD(T)));  // exact
    accumulate<MT, false>(xq, m0, g, w, d, d, c, acc);
  }
}

// The super-blocks of a K-quant tiled format: each group's scales decoded for the 16 rows from the block's bytes
template <QType T, int MT>
inline void tile_super_blocks(const QuantizedRows& xq, int64_t m0, const uint8_t* tile, int64_t ahead,
                              __m512 acc[MT]) {
  constexpr int64_t block_bytes = kTileRows * kBlockBytes[T], quant_bytes = kTiledQuantBytes(T);
  for (int64_t b = 0; b < xq.groups / kGroupsPerBlock; ++b) {
    const uint8_t* blk = tile + b * block_bytes;
    const uint8_t* other = blk + kGroupsPerBlock * quant_bytes;
    if (ahead) prefetch_lines(blk + ahead, block_bytes);
    __m512i w[8];
    if constexpr (T == kQ6_K) {  // w = d sc (u - 32), sc per 16 weights: planes 2i, 2i + 1 for group i
      const __m512 d = _mm512_cvtph_ps(load32(other + 256));
      for (int i = 0; i < kGroupsPerBlock; ++i) {
        const __m512 a0 = _mm512_mul_ps(d, plane_i8(other + 32 * i));
        const __m512 a1 = _mm512_mul_ps(d, plane_i8(other + 32 * i + 16));
        unpack_tiled<T>(blk + i * quant_bytes, w);
        accumulate<MT, true>(xq, m0, b * kGroupsPerBlock + i, w, a0, a1, a0, acc);
      }
    } else {  // w = d s u - dmin m, 6-bit s and m of group i packed in 12 bytes (scale_min_k4)
      const __m512 d = _mm512_cvtph_ps(load32(other));
      const __m512 neg_dmin = _mm512_mul_ps(_mm512_cvtph_ps(load32(other + 32)), _mm512_set1_ps(-1.0f));
      __m128i P[12];
      for (int k = 0; k < 12; ++k) P[k] = load16(other + 64 + 16 * k);
      const __m128i six = _mm_set1_epi8(63), four = _mm_set1_epi8(0x0F), top = _mm_set1_epi8(0x30);
      for (int i = 0; i < kGroupsPerBlock; ++i) {
        __m128i s, m;
        if (i < 4) {
          s = _mm_and_si128(P[i], six);
          m = _mm_and_si128(P[i + 4], six);
        } else {  // low 4 bits from byte i + 4, bits 4-5 from the top of byte i - 4 (s) or i (m)
          s = _mm_or_si128(_mm_and_si128(P[i + 4], four), _mm_and_si128(_mm_srli_epi16(P[i - 4], 2), top));
          m = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(P[i + 4], 4), four), _mm_and_si128(_mm_srli_epi16(P[i], 2), top));
        }
        const __m512 a = _mm512_mul_ps(d, plane_u8(s)), c = _mm512_mul_ps(neg_dmin, plane_u8(m));
        unpack_tiled<T>(blk + i * quant_bytes, w);
        accumulate<MT, false>(xq, m0, b * kGroupsPerBlock + i, w, a, a, c, acc);
      }
    }
  }
}

// A tiled weight (T: the base format): the 16 outputs of one tile (from weight row n0) for MT rows of x
template <QType T, int MT, typename OutT>
inline void tile16(const QuantizedRows& xq, int64_t m0, const uint8_t* tile, int64_t n0, const float* bias, OutT* y,
                   int64_t N, int64_t ahead) {
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  if constexpr (kBlockWeights[T] == kGroup) {
    tile_groups<T, MT>(xq, m0, tile, ahead, acc);
  } else {
    tile_super_blocks<T, MT>(xq, m0, tile, ahead, acc);
  }
  for (int m = 0; m < MT; ++m) {
    alignas(64) float out[kTileRows];
    _mm512_store_ps(out, bias ? _mm512_add_ps(acc[m], _mm512_loadu_ps(bias + n0)) : acc[m]);
    for (int n = 0; n < kTileRows; ++n) y[(m0 + m) * N + n0 + n] = static_cast<OutT>(out[n]);
  }
}

template <QType T, typename OutT>
void run_tiles(const QuantizedRows& xq, int64_t M, const uint8_t* w, int64_t rb, const float* bias, OutT* y,
               int64_t N) {
  const int64_t ahead = prefetch_groups() * kTileRows * kBlockBytes[T] * kGroup / kBlockWeights[T];
  at::parallel_for(0, N / kTileRows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const uint8_t* tile = w + t * kTileRows * rb;
      const int64_t n0 = t * kTileRows;
      int64_t m = 0;
      for (; m + 8 <= M; m += 8) tile16<T, 8>(xq, m, tile, n0, bias, y, N, ahead);
      switch (M - m) {  // the rest in one more pass over the tile (a verify chain of 7: one pass, not 4 + 2 + 1)
        case 7: tile16<T, 7>(xq, m, tile, n0, bias, y, N, ahead); break;
        case 6: tile16<T, 6>(xq, m, tile, n0, bias, y, N, ahead); break;
        case 5: tile16<T, 5>(xq, m, tile, n0, bias, y, N, ahead); break;
        case 4: tile16<T, 4>(xq, m, tile, n0, bias, y, N, ahead); break;
        case 3: tile16<T, 3>(xq, m, tile, n0, bias, y, N, ahead); break;
        case 2: tile16<T, 2>(xq, m, tile, n0, bias, y, N, ahead); break;
        case 1: tile16<T, 1>(xq, m, tile, n0, bias, y, N, ahead); break;
        default: break;
      }
    }
  });
}

template <typename OutT>
void dispatch(int64_t qtype, const QuantizedRows& xq, int64_t M, int64_t K, const uint8_t* wp, int64_t rb,
              const float* bp, OutT* yp, int64_t N) {
  switch (qtype) {
    case kQ4_0: run<kQ4_0>(xq, M, K, wp, rb, bp, yp, N); break;
    case kQ4_1: run<kQ4_1>(xq, M, K, wp, rb, bp, yp, N); break;
    case kQ8_0: run<kQ8_0>(xq, M, K, wp, rb, bp, yp, N); break;
    case kQ5_0: run<kQ5_0>(xq, M, K, wp, rb, bp, yp, N); break;
    case kQ5_1: run<kQ5_1>(xq, M, K, wp, rb, bp, yp, N); break;
    case kQ4_K: run<kQ4_K>(xq, M, K, wp, rb, bp, yp, N); break;
    case kQ5_K: run<kQ5_K>(xq, M, K, wp, rb, bp, yp, N); break;
    case kQ6_K: run<kQ6_K>(xq, M, K, wp, rb, bp, yp, N); break;
    case kQ4_0x16: run_tiles<kQ4_0>(xq, M, wp, rb, bp, yp, N); break;
    case kQ4_1x16: run_tiles<kQ4_1>(xq, M, wp, rb, bp, yp, N); break;
    case kQ8_0x16: run_tiles<kQ8_0>(xq, M, wp, rb, bp, yp, N); break;
    case kQ5_0x16: run_tiles<kQ5_0>(xq, M, wp, rb, bp, yp, N); break;
    case kQ5_1x16: run_tiles<kQ5_1>(xq, M, wp, rb, bp, yp, N); break;
    case kQ4_Kx16: run_tiles<kQ4_K>(xq, M, wp, rb, bp, yp, N); break;
    case kQ5_Kx16: run_tiles<kQ5_K>(xq, M, wp, rb, bp, yp, N); break;
    default: run_tiles<kQ6_K>(xq, M, wp, rb, bp, yp, N); break;
  }
}

// a bf16 or fp32 tensor's values as fp32 (no torch op: a decode step makes hundreds of these calls)
std::vector<float> as_float(const torch::Tensor& t) {
  std::vector<float> out(t.numel());
  if (t.scalar_type() == at::kBFloat16) {
    const at::BFloat16* p = t.data_ptr<at::BFloat16>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(p[i]);
  } else {
    TORCH_CHECK(t.scalar_type() == at::kFloat, "quant_linear supports bfloat16 and float32 biases");
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
  TORCH_CHECK(qtype < kQ4_0x16 || N % kTileRows == 0, "an interleaved weight has a multiple of 16 rows");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "quant_linear supports bfloat16 and float32 inputs");
  const int halves = qtype == kQ6_K ? 2 : 1;  // the row-major Q6_K offsets; its tiles take half_sums
  const QuantizedRows xq = x.scalar_type() == at::kFloat ? QuantizedRows(x.data_ptr<float>(), M, K, halves)
                                                         : QuantizedRows(x.data_ptr<at::BFloat16>(), M, K, halves);
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
    dispatch(qtype, xq, M, K, wp, rb, bp, y.data_ptr<float>(), N);
  } else {
    dispatch(qtype, xq, M, K, wp, rb, bp, y.data_ptr<at::BFloat16>(), N);
  }
  return y;
}

// Rows ids [n] of a tiled 32-weight format (Q4_0x16 .. Q5_1x16) [N, K], decoded as gguf-py decodes their blocks
// (w = d q, d (q - 8), d q + m, d (q - 16) in fp32) -> [n, K] fp32: an embedding lookup.
torch::Tensor tiled_rows(const torch::Tensor& weight, const torch::Tensor& ids, int64_t qtype, int64_t K) {
  TORCH_CHECK(qtype >= kQ4_0x16 && qtype <= kQ5_1x16, "tiled_rows takes a tiled 32-weight format, not ", qtype);
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.dim() == 2 && weight.is_contiguous() &&
                  weight.size(0) % kTileRows == 0 && weight.size(1) == K / kGroup * kBlockBytes[qtype],
              "weight must be contiguous uint8 [N, K / 32 * block bytes], N a multiple of 16");
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1, "ids must be int64 [n]");
  const QType base = kTiledBase(qtype);
  const bool five = kFiveBit(base), minimum = kHasMinimum(base);
  const int64_t n = ids.numel(), N = weight.size(0), groups = K / kGroup, group_bytes = kTileRows * kBlockBytes[qtype];
  const int64_t quant_bytes = kTiledQuantBytes(base);
  const torch::Tensor idx = ids.contiguous();
  const int64_t* rows = idx.data_ptr<int64_t>();
  const uint8_t* w = weight.data_ptr<uint8_t>();
  torch::Tensor out = torch::empty({n, K}, weight.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rows[i];
    TORCH_CHECK(r >= 0 && r < N, "row ", r, " out of range for ", N, " rows");
    const int64_t lane = r % kTileRows;
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* p = w + (r / kTileRows) * groups * group_bytes + g * group_bytes;
      const uint8_t* q = p + 4 * lane;  // quant byte j of the row: q[(j / 4) * 64 + j % 4]
      const float d = fp16(p + quant_bytes + 2 * lane);
      const float m = minimum ? fp16(p + quant_bytes + 32 + 2 * lane) : 0.f;
      float* y = o + i * K + g * kGroup;
      for (int j = 0; j < 32; ++j) {  // weight j
        const uint8_t byte = q[(j % 16) / 4 * 64 + j % 4 + (base == kQ8_0 ? j / 16 * 256 : 0)];
        if (base == kQ8_0) {
          y[j] = d * static_cast<float>(static_cast<int8_t>(byte));
          continue;
        }
        int u = j < 16 ? byte & 0x0F : byte >> 4;
        if (five) {
          uint64_t high;  // mask j / 4, bit 4 lane + j % 4
          std::memcpy(&high, p + 256 + 8 * (j / 4), 8);
          u += static_cast<int>((high >> (4 * lane + j % 4)) & 1) << 4;
        }
        y[j] = minimum ? d * static_cast<float>(u) + m : d * (static_cast<float>(u) + kOffsetTimesD(base));
      }
    }
  }
  return out;
}

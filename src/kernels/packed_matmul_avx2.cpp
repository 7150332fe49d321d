// Packed low-bit products on AVX2 (CPUs without AVX-512; packed_kernels.hpp): each equals its
// scalar reference in packed_matmul.cpp bit for bit, as the AVX-512 kernels do.
//
// Float activations: the pinned order of docs/conventions.md §44 has 16 lanes (column c in lane
// c % 16); here they are two 8-float vectors, lanes 0-7 and 8-15 (4-bit codes: the 8 even and the
// 8 odd columns, put back in column order before the halving), each lane adding w * x (mul, then
// add: no FMA in the target) in order of c from +0, and the halving starts with lo + hi.
// Integer activations: each group's int32 dot exactly (8-bit: int8 widened to int16, madd_epi16;
// 4-bit whose values span <= 127: unsigned codes by int8 x, maddubs_epi16, which cannot saturate
// there), then the reference's float steps on 8 rows at once.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "src/kernels/packed_kernels.hpp"

// AVX2 only: no "fma" (the pinned order multiplies, then adds; the build also has -ffp-contract=off).
#define LOWBIT_AVX2 __attribute__((target("avx2")))

namespace lowbit::detail {

namespace {

// The 16 lane sums [lo | hi] -> one float: lane k += lane k + 8, + 4, + 2, + 1 (halve_lanes).
LOWBIT_AVX2 inline float reduce_pinned(__m256 lo, __m256 hi) {
  const __m256 a8 = _mm256_add_ps(lo, hi);
  const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
  const __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
  const __m128 a1 = _mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1));
  return _mm_cvtss_f32(a1);
}

// 4-bit sums: [even columns | odd columns] of 16 -> column order [0..7 | 8..15].
LOWBIT_AVX2 inline float reduce_permuted(__m256 even, __m256 odd) {
  const __m256 a = _mm256_unpacklo_ps(even, odd);  // [e0 o0 e1 o1 | e4 o4 e5 o5]
  const __m256 b = _mm256_unpackhi_ps(even, odd);  // [e2 o2 e3 o3 | e6 o6 e7 o7]
  return reduce_pinned(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// One lookup of 8 codes in the 16 scaled values [slo | shi]: permutevar8x32 reads an index's low
// 3 bits, blendv the sign bit, where `bit3` holds each code's bit 3.
LOWBIT_AVX2 inline __m256 lookup16(__m256 slo, __m256 shi, __m256i idx, __m256i bit3) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(slo, idx), _mm256_permutevar8x32_ps(shi, idx), _mm256_castsi256_ps(bit3));
}

// How a row's codes become values: int8 codes; 4-bit codes through the table of 16 floats;
// 4-bit codes whose values are all integers (q4_0's code - 8, int4), through a table of bytes.
enum class codes { int8, lut4, int_lut4 };

// The weights (lut[code] * scale, dequantize_ref's value) of columns [c, c + 16) of a row as
// [lo | hi]: 8-bit in column order (int8 * scale); 4-bit as [even columns | odd columns] (the low
// and the high nibbles of 8 bytes), lut4 from the table of the 16 scaled values (slut = lut *
// scale: the same one product per value), int_lut4 as float(int8 value) * scale, the same product
// (lut[code] is that integer) with byte shuffles in place of the float permutes (vpermps).
template <codes K>
LOWBIT_AVX2 inline void weights16(const uint8_t* row, int64_t c, __m256 slo, __m256 shi, __m256 scale, __m128i table,
                                  __m256& lo, __m256& hi) {
  if constexpr (K == codes::int8) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
    lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), scale);
    hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))), scale);
  } else if constexpr (K == codes::int_lut4) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2));
    // [8 low nibbles | 8 high nibbles] (a 16-bit shift: each byte's high nibble into its low bits).
    const __m128i nib = _mm_and_si128(_mm_unpacklo_epi64(b, _mm_srli_epi16(b, 4)), _mm_set1_epi8(0x0f));
    const __m128i v = _mm_shuffle_epi8(table, nib);
    lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), scale);
    hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v))), scale);
  } else {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2)));
    lo = lookup16(slo, shi, b, _mm256_slli_epi32(b, 28));                          // low nibble: bits 0-3
    hi = lookup16(slo, shi, _mm256_srli_epi32(b, 4), _mm256_slli_epi32(b, 24));  // high nibble: bits 4-7
  }
}

// Rows [o0, o0 + R) x tokens [t0, t0 + T), each 16 codes decoded once for T tokens; x is
// permuted_x's order for 4-bit weights. PF > 0: prefetch the rows PF on (the GEMV).
template <codes K, int R, int T, int PF = 0>
LOWBIT_AVX2 void tile(const packed_matrix& w, const float* x, float* y, int64_t o0, int64_t t0, __m128i table) {
  const int64_t cols = w.cols, gpr = w.groups_per_row(), G = w.group;
  const __m256 lut_lo = _mm256_loadu_ps(w.lut.data()), lut_hi = _mm256_loadu_ps(w.lut.data() + 8);
  __m256 acc[R][T][2];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
  const tile_rows<R> tr(w, o0);
  const auto& rows = tr.codes;
  const auto& sc = tr.scales;
  if constexpr (PF > 0) prefetch_rows(w, o0 + PF, R);
  for (int64_t g = 0; g < gpr; ++g) {
    __m256 s[R], slo[R], shi[R];
    for (int i = 0; i < R; ++i) {
      s[i] = _mm256_set1_ps(sc[i][g]);
      if constexpr (K == codes::lut4) slo[i] = _mm256_mul_ps(lut_lo, s[i]), shi[i] = _mm256_mul_ps(lut_hi, s[i]);
      else slo[i] = shi[i] = s[i];
    }
    for (int64_t c = g * G; c < (g + 1) * G; c += 16) {
      for (int i = 0; i < R; ++i) {
        __m256 wlo, whi;
        weights16<K>(rows[i], c, slo[i], shi[i], s[i], table, wlo, whi);
        for (int j = 0; j < T; ++j) {
          const float* xc = x + (t0 + j) * cols + c;
          acc[i][j][0] = _mm256_add_ps(acc[i][j][0], _mm256_mul_ps(wlo, _mm256_loadu_ps(xc)));
          acc[i][j][1] = _mm256_add_ps(acc[i][j][1], _mm256_mul_ps(whi, _mm256_loadu_ps(xc + 8)));
        }
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j)
      y[(t0 + j) * w.rows + o0 + i] =
          K != codes::int8 ? reduce_permuted(acc[i][j][0], acc[i][j][1]) : reduce_pinned(acc[i][j][0], acc[i][j][1]);
}

// GEMV rows [o0, o1): one row at a time for 8-bit codes (one stream from memory), pairs of rows
// for 4-bit ones (decoding, not memory, bounds them: two rows' chains of adds in flight), each
// prefetching the rows kPrefetchRows on (the matrix's last rows without), as the AVX-512 kernel. q4_0 GEMVs
// from DRAM, one thread, bench/bench_packed.cpp with BENCH_THREAD_CLOCK, 4 alternating runs on a
// shared AMD EPYC (AVX2), GB/s of codes + scales, medians for 768x768 and 2048x768: float table
// (vpermps) one row 3.9 and 4.0; byte table (int_lut4) one row 4.1 and 4.1, two rows 4.2 and 4.4.
template <codes K>
LOWBIT_AVX2 void gemv_rows(const packed_matrix& w, const float* x, float* y, int64_t o0, int64_t o1, __m128i table) {
  constexpr int R = K == codes::int8 ? 1 : 2;
  int64_t o = o0;
  for (; o + R <= o1; o += R) tile<K, R, 1, kPrefetchRows>(w, x, y, o, 0, table);
  for (; o < o1; ++o) tile<K, 1, 1, kPrefetchRows>(w, x, y, o, 0, table);
}

// GEMM: one row by four tokens (16 accumulators of 8 floats would not fit AVX2's 16 registers
// with two rows), then the last tokens one at a time.
template <codes K>
LOWBIT_AVX2 void gemm_row(const packed_matrix& w, const float* x, int64_t n, float* y, int64_t o, __m128i table) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) tile<K, 1, 4>(w, x, y, o, t, table);
  for (; t < n; ++t) tile<K, 1, 1>(w, x, y, o, t, table);
}

template <codes K>
LOWBIT_AVX2 void packed_matmul_codes(const packed_matrix& w, const float* x_in, int64_t n, float* y) {
  const std::vector<float> xp = K != codes::int8 ? permuted_x(x_in, n, w.cols) : std::vector<float>();
  const float* x = K != codes::int8 ? xp.data() : x_in;
  alignas(16) int8_t table_bytes[16] = {};  // int_lut4: each code's integer value
  if constexpr (K == codes::int_lut4)
    for (int c = 0; c < 16; ++c) table_bytes[c] = static_cast<int8_t>(w.lut[size_t(c)]);
  const __m128i table = _mm_load_si128(reinterpret_cast<const __m128i*>(table_bytes));
  const bool threads = packed_product_threads(w.rows, w.cols, n);
  if (n == 1) {  // GEMV, in chunks of 64 rows
    const int64_t chunks = (w.rows + 63) / 64;
#pragma omp parallel for schedule(static) if (threads)
    for (int64_t b = 0; b < chunks; ++b) gemv_rows<K>(w, x, y, b * 64, std::min(w.rows, b * 64 + 64), table);
    return;
  }
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t o = 0; o < w.rows; ++o) gemm_row<K>(w, x, n, y, o, table);
}

// Float weights in the same order: R rows of W against one token. Columns past the last multiple
// of 16 (cols need not be one): the lanes that get a term add it, the others keep their sums
// exactly (a blend, not an add of 0). R > 1 (GEMM) prefetches the same columns of the next block
// of rows (R rows on), as the AVX-512 kernel: R short row streams at once are more than the
// hardware prefetcher follows. R = 1 (the GEMV) prefetches nothing: one stream, which the hardware
// prefetcher follows; the AVX-512 kernel's prefetch 4 rows on was slower here (stories15M's
// 32,000 x 288 classifier from DRAM, one thread, bench/bench_packed.cpp with BENCH_THREAD_CLOCK,
// 6 alternating runs on a shared AMD EPYC (AVX2): 13.3 GB/s median with it, 14.1 without).
template <int R>
LOWBIT_AVX2 void float_rows(const float* w, int64_t cols, const float* x, float* y) {
  __m256 lo[R], hi[R];
  for (int i = 0; i < R; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
  const int64_t full = cols / 16 * 16;
  for (int64_t c = 0; c < full; c += 16) {
    const __m256 xlo = _mm256_loadu_ps(x + c), xhi = _mm256_loadu_ps(x + c + 8);
    if constexpr (R > 1)
      for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(w + (i + R) * cols + c), _MM_HINT_T0);
    for (int i = 0; i < R; ++i) {
      lo[i] = _mm256_add_ps(lo[i], _mm256_mul_ps(_mm256_loadu_ps(w + i * cols + c), xlo));
      hi[i] = _mm256_add_ps(hi[i], _mm256_mul_ps(_mm256_loadu_ps(w + i * cols + c + 8), xhi));
    }
  }
  if (full < cols) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int32_t left = int32_t(cols - full);
    const __m256i mlo = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane);
    const __m256i mhi = _mm256_cmpgt_epi32(_mm256_set1_epi32(left - 8), lane);
    const __m256 flo = _mm256_castsi256_ps(mlo), fhi = _mm256_castsi256_ps(mhi);
    const __m256 xlo = _mm256_maskload_ps(x + full, mlo), xhi = _mm256_maskload_ps(x + full + 8, mhi);
    for (int i = 0; i < R; ++i) {
      const __m256 plo = _mm256_mul_ps(_mm256_maskload_ps(w + i * cols + full, mlo), xlo);
      const __m256 phi = _mm256_mul_ps(_mm256_maskload_ps(w + i * cols + full + 8, mhi), xhi);
      lo[i] = _mm256_blendv_ps(lo[i], _mm256_add_ps(lo[i], plo), flo);
      hi[i] = _mm256_blendv_ps(hi[i], _mm256_add_ps(hi[i], phi), fhi);
    }
  }
  for (int i = 0; i < R; ++i) y[i] = reduce_pinned(lo[i], hi[i]);
}

}  // namespace

LOWBIT_AVX2 void packed_matmul_avx2(const packed_matrix& w, const float* x, int64_t n, float* y) {
  if (w.bits == 8) packed_matmul_codes<codes::int8>(w, x, n, y);
  else if (w.integer_values) packed_matmul_codes<codes::int_lut4>(w, x, n, y);
  else packed_matmul_codes<codes::lut4>(w, x, n, y);
}

LOWBIT_AVX2 void lane_ordered_matmul_avx2(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y) {
  lane_ordered_schedule(
      rows, cols, n,
      [&](int64_t o0, int64_t o1) LOWBIT_AVX2 {  // decode's classifier: one row at a time
        for (int64_t o = o0; o < o1; ++o) float_rows<1>(w + o * cols, cols, x, y + o);
      },
      [&](int64_t o0, int64_t t) LOWBIT_AVX2 { float_rows<4>(w + o0 * cols, cols, x + t * cols, y + t * rows + o0); },
      [&](int64_t o, int64_t t) LOWBIT_AVX2 { float_rows<1>(w + o * cols, cols, x + t * cols, y + t * rows + o); });
}

// ---- integer activations ----------------------------------------------------------------------
namespace {

// How a row's codes enter the int32 dots. wide8, wide4: int8 values (4-bit: through the table of
// lut[code]) widened to int16 against x as int16, madd_epi16: exact for any int8 codes. u4, u4_code:
// 4-bit codes as the unsigned bytes u = lut[code] + bias (u4: a byte table; u4_code: lut[code] =
// code - 8, q4_0's, so u is the code itself, bias 8, no table) against x as int8, maddubs_epi16
// then madd_epi16 with ones, and the group's dot = that sum - bias * (the group's sum of x), as
// the AVX-512 VNNI kernel (packed_matmul.cpp). maddubs_epi16 saturates a pair sum outside int16;
// with u in [0, 127] a pair is at most 2 * 127 * 128 = 32512 in size: never (u4 only when the
// lut's max - min <= 127, see packed_matmul_int_avx2; q4_0: u <= 15). 8-bit weights stay wide:
// u = w + 128 reaches 255, and 2 * 255 * 128 would saturate.
enum class int_codes { wide8, wide4, u4, u4_code };

// x's codes in the weight's order: 8-bit as they are; 4-bit each 32 columns as [16 even columns |
// 16 odd] (the low nibbles of the 16 bytes of codes, then the high ones). T: int16 (wide), int8.
template <class T>
std::vector<T> weight_order_x(const int8_activations& a, int bits) {
  std::vector<T> out(size_t(a.n * a.cols));
  for (int64_t t = 0; t < a.n; ++t)
    for (int64_t c = 0; c < a.cols; ++c) {
      const int64_t at = bits == 8 ? c : c / 32 * 32 + (c % 2) * 16 + (c % 32) / 2;
      out[size_t(t * a.cols + at)] = a.q[size_t(t * a.cols + c)];
    }
  return out;
}

// Each (token, group)'s sum of x [n, groups]: the bias's share of the u4 dots.
std::vector<int32_t> group_sums_x(const int8_activations& a, int64_t group) {
  const int64_t gpr = a.cols / group;
  std::vector<int32_t> sums(size_t(a.n * gpr), 0);
  for (int64_t t = 0; t < a.n; ++t)
    for (int64_t c = 0; c < a.cols; ++c) sums[size_t(t * gpr + c / group)] += a.q[size_t(t * a.cols + c)];
  return sums;
}

// S rows' int32 partials r[0 .. S) (8 lanes each) -> one vector: S = 2, hadd(r[0], r[1]); S = 4,
// hadd(hadd(r[0], r[1]), hadd(r[2], r[3])) = [rows 0-3: lanes 0-3's sums | rows 0-3: lanes 4-7's].
template <int S>
LOWBIT_AVX2 inline __m256i hadd_rows(const __m256i* r) {
  if constexpr (S == 2) return _mm256_hadd_epi32(r[0], r[1]);
  else return _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
}

// The 8 rows' 8 / S vectors of hadd_rows<S> -> one vector, lane i = the sum of row i's partials.
template <int S>
LOWBIT_AVX2 inline __m256i reduce_rows8(const __m256i* p) {
  const __m256i q0 = S == 4 ? p[0] : hadd_rows<2>(p), q1 = S == 4 ? p[1] : hadd_rows<2>(p + 2);  // rows 0-3, 4-7
  return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

// One block of 32 columns of a row (codes at `row`, this block's first byte) against x's block
// (int16 or int8 per K): 8 int32 partials whose sum is the block's dot (u4: of u, before the bias).
template <int_codes K>
LOWBIT_AVX2 inline __m256i block_partials(const uint8_t* row, const void* xb, __m128i table) {
  if constexpr (K == int_codes::wide8 || K == int_codes::wide4) {
    const int16_t* x = static_cast<const int16_t*>(xb);
    __m256i w0, w1;
    if constexpr (K == int_codes::wide8) {
      w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
      w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16)));
    } else {  // the 16 bytes' low nibbles (even columns), then high ones, each through the table
      const __m128i low4 = _mm_set1_epi8(0x0f);
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
      w0 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(table, _mm_and_si128(b, low4)));
      w1 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(b, 4), low4)));
    }
    return _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))),
                            _mm256_madd_epi16(w1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16))));
  } else {
    // [the 16 bytes | the same 16 bytes >> 4] & 0x0f: the low nibbles, then the high ones.
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
    __m256i u = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1),
                                 _mm256_set1_epi8(0x0f));
    if constexpr (K == int_codes::u4) u = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), u);
    const __m256i pairs = _mm256_maddubs_epi16(u, _mm256_loadu_si256(static_cast<const __m256i*>(xb)));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
  }
}

// Rows [o0, o0 + 8) (past the last row: the last row again, not stored) against every token, row
// i in lane i. 1. S rows side by side, S rows after S: each group's 8 int32 partials of each, 32
// columns a step (block_partials), hadd_rows<S> into parts [groups][8 / S]; 2. per group
// the 8 rows' dots (reduce_rows8, u4: minus bias * the group's sum of x), then the reference's
// float steps ((sw * sx) * float(dot) added to +0, groups in order) on 8 rows at once.
template <int_codes K>
LOWBIT_AVX2 void int_rows8(const packed_matrix& w, const void* xq, const int32_t* xsums, int32_t bias,
                           const int8_activations& a, __m128i table, int64_t o0, float* y, __m256i* parts,
                           float* row_scales) {
  constexpr bool wide = K == int_codes::wide8 || K == int_codes::wide4;
  constexpr int64_t x_bytes = wide ? 2 : 1;  // per column
  constexpr int64_t bits = K == int_codes::wide8 ? 8 : 4;
  // Rows side by side: 4 for 4-bit codes, 2 for 8-bit. One thread, bench/bench_packed.cpp with
  // BENCH_THREAD_CLOCK, shared AMD EPYC (AVX2), us: q8_0 2048 x 768 140 with four against 108-116
  // with two; q4_0 (medians of 3, four against two) 2048 x 768 96.8 / 103.5, 768 x 768 39.0 /
  // 42.2, 32000 x 288 703.7 / 720.3, but 768 x 2048 119.0 / 111.5 (not explained; perhaps
  // the 4 KiB of prefetches issued at once for rows of 1 KiB); syn85m q4_0 decode 140.2 / 136.7 tokens/s.
  constexpr int S = bits == 4 ? 4 : 2;
  const int64_t gpr = w.groups_per_row(), G = w.group, cols = w.cols;
  const int live = int(std::min<int64_t>(8, w.rows - o0));
  for (int i = 0; i < 8; ++i)  // the 8 rows' scales, row i at [g * 8 + i]
    for (int64_t g = 0; g < gpr; ++g) row_scales[g * 8 + i] = w.scales[size_t(std::min(o0 + i, w.rows - 1) * gpr + g)];
  for (int64_t t = 0; t < a.n; ++t) {
    const char* xt = static_cast<const char*>(xq) + t * cols * x_bytes;
    for (int k = 0; k < 8 / S; ++k) {  // rows S k .. S k + S - 1 side by side (S streams from memory)
      const uint8_t* rows[S];
      for (int h = 0; h < S; ++h) {
        const int64_t o = std::min(o0 + S * k + h, w.rows - 1);
        rows[h] = w.codes.data() + o * w.row_bytes;
        if (t == 0) prefetch_rows(w, o + kPrefetchRows, 1);  // the row kPrefetchRows on, and its scales
      }
      for (int64_t g = 0; g < gpr; ++g) {
        __m256i dot[S];
        for (int h = 0; h < S; ++h) dot[h] = _mm256_setzero_si256();
        for (int64_t c = g * G; c < (g + 1) * G; c += 32)
          for (int h = 0; h < S; ++h)
            dot[h] = _mm256_add_epi32(dot[h], block_partials<K>(rows[h] + c * bits / 8, xt + c * x_bytes, table));
        _mm256_store_si256(parts + g * (8 / S) + k, hadd_rows<S>(dot));
      }
    }
    const float* sx = a.scale.data() + t * gpr;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t g = 0; g < gpr; ++g) {
      __m256i dots = reduce_rows8<S>(parts + g * (8 / S));
      // Exact: the true dot fits an int32 (check_int), and int32 adds wrap, so the sum of u * x
      // minus bias * sum x is it whatever the intermediate values.
      if constexpr (!wide) dots = _mm256_sub_epi32(dots, _mm256_set1_epi32(int32_t(uint32_t(bias) * uint32_t(xsums[t * gpr + g]))));
      const __m256 m = _mm256_mul_ps(_mm256_load_ps(row_scales + g * 8), _mm256_set1_ps(sx[g]));
      acc = _mm256_add_ps(acc, _mm256_mul_ps(m, _mm256_cvtepi32_ps(dots)));
    }
    alignas(32) float out[8];
    _mm256_store_ps(out, acc);
    std::memcpy(y + t * w.rows + o0, out, size_t(live) * sizeof(float));
  }
}

}  // namespace

LOWBIT_AVX2 void packed_matmul_int_avx2(const packed_matrix& w, const int8_activations& a, float* y) {
  // 4-bit: each code's integer value (lut, in [-127, 127]: integer_values). When the values span
  // at most 127 (q4_0, int4), u = lut[code] - min(lut) in [0, 127] is maddubs_epi16's unsigned
  // operand (int_codes::u4), the table holding u; otherwise the table holds lut[code] (wide4).
  int_codes kind = w.bits == 8 ? int_codes::wide8 : int_codes::wide4;
  int32_t bias = 0;
  alignas(16) int8_t table_bytes[16] = {};
  if (w.bits == 4) {
    const auto [lo, hi] = std::minmax_element(w.lut.begin(), w.lut.end());
    const bool code_minus_8 = lut_is_code_minus_8(w);
    if (*hi - *lo <= 127) {
      kind = code_minus_8 ? int_codes::u4_code : int_codes::u4;
      bias = -int32_t(*lo);
    }
    for (int c = 0; c < 16; ++c) table_bytes[c] = static_cast<int8_t>(int32_t(w.lut[size_t(c)]) + bias);
  }
  const __m128i table = _mm_load_si128(reinterpret_cast<const __m128i*>(table_bytes));
  const bool wide = kind == int_codes::wide8 || kind == int_codes::wide4;
  const std::vector<int16_t> x16 = wide ? weight_order_x<int16_t>(a, w.bits) : std::vector<int16_t>();
  const std::vector<int8_t> x8 = wide ? std::vector<int8_t>() : weight_order_x<int8_t>(a, w.bits);
  const std::vector<int32_t> xsums = wide ? std::vector<int32_t>() : group_sums_x(a, w.group);
  const void* xq = wide ? static_cast<const void*>(x16.data()) : static_cast<const void*>(x8.data());
  const int64_t blocks = (w.rows + 7) / 8, gpr = w.groups_per_row();
  const bool threads = packed_product_threads(w.rows, w.cols, a.n);
#pragma omp parallel if (threads)
  {
    // [groups][8 / S] int32 partials (int_rows8), then [groups][8 rows] scales, 32-byte aligned.
    const int64_t part_words = 8 * 4 * gpr;  // S >= 2
    std::vector<float> scratch(size_t(part_words + 8 * gpr + 8));
    void* base = scratch.data();
    size_t room = scratch.size() * sizeof(float);
    float* aligned = static_cast<float*>(std::align(32, size_t(part_words + 8 * gpr) * sizeof(float), base, room));
    __m256i* parts = reinterpret_cast<__m256i*>(aligned);
    float* row_scales = aligned + part_words;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      switch (kind) {
        case int_codes::wide8: int_rows8<int_codes::wide8>(w, xq, nullptr, 0, a, table, b * 8, y, parts, row_scales); break;
        case int_codes::wide4: int_rows8<int_codes::wide4>(w, xq, nullptr, 0, a, table, b * 8, y, parts, row_scales); break;
        case int_codes::u4: int_rows8<int_codes::u4>(w, xq, xsums.data(), bias, a, table, b * 8, y, parts, row_scales); break;
        case int_codes::u4_code: int_rows8<int_codes::u4_code>(w, xq, xsums.data(), bias, a, table, b * 8, y, parts, row_scales); break;
      }
    }
  }
}

}  // namespace lowbit::detail

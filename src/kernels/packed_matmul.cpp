// Packed low-bit matrix products (packed_matmul.hpp): the scalar references (the specification),
// the AVX-512 kernels and the dispatch: AVX-512, else AVX2 (packed_matmul_avx2.cpp), else the
// scalar references (the portable fallback), chosen at run time.
//
// The AVX-512 code is written with intrinsics rather than Highway: it needs AVX-512 VNNI's
// dpbusd (u8 x s8 dot of four bytes into int32), which Highway's portable ops do not expose as one
// operation, and a 16-entry float table lookup (permutexvar) on every step; both are one
// instruction here and compile-time-selected functions keep the rest of the kernels unchanged.
#include "lowbit/kernels/packed_matmul.hpp"

// GCC 12 warns inside its own AVX-512 headers (the _mm512_undefined_* operands of
// cvtepi8_epi32 and friends) when they are inlined into target-attribute functions (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/element.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/scale.hpp"
#include "src/kernels/packed_kernels.hpp"

namespace lowbit {

namespace {

// The kernel levels, in order: the best the CPU runs is used, unless use_ref() (scalar) or a test's
// force_packed_kernel_target caps it.
enum class level { scalar = 0, avx2 = 1, avx512 = 2 };
level cpu_level() {
  static const level best = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
                                ? level::avx512
                            : __builtin_cpu_supports("avx2") ? level::avx2
                                                             : level::scalar;
  return best;
}
bool cpu_has_vnni() {
  static const bool yes = cpu_level() == level::avx512 && __builtin_cpu_supports("avx512vnni");
  return yes;
}
std::atomic<int> g_level_cap{int(level::avx512)};
level active_level() {
  if (use_ref()) return level::scalar;
  return level(std::min(int(cpu_level()), g_level_cap.load()));
}
bool use_vnni() { return active_level() == level::avx512 && cpu_has_vnni(); }
const char* level_name(level l) { return l == level::avx512 ? "avx512" : l == level::avx2 ? "avx2" : "scalar"; }

// The value of an 8-bit code: every 8-bit packed format is int8 two's complement (checked at pack).
inline float int8_value(uint8_t code) { return static_cast<float>(static_cast<int8_t>(code)); }

inline uint32_t code_at(const packed_matrix& w, int64_t r, int64_t c) {
  const uint8_t* row = w.codes.data() + r * w.row_bytes;
  if (w.bits == 8) return row[c];
  return (row[c >> 1] >> ((c & 1) * 4)) & 0xfu;
}

// Lane sums -> one float, the pinned halving tree.
inline float halve_lanes(float* acc) {
  for (int width = 8; width >= 1; width /= 2)
    for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
  return acc[0];
}

}  // namespace

bool has_packed_kernel(const format& f, std::string* why) {
  auto no = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return false;
  };
  const element_format& e = f.element;
  if (f.named == preset::q8_0 || f.named == preset::q4_0 || f.named == preset::nvfp4) return true;
  if (f.named != preset::none) return no(fmt::format("{} has no packed kernel", format_name(f)));
  if (f.power != 0) return no("power-mapped formats have no packed kernel");
  if (f.gran != granularity::group && f.gran != granularity::row)
    return no(fmt::format("{}: packed kernels need a scale per group or per row", format_name(f)));
  if (f.gran == granularity::group && f.group_size % 16 != 0)
    return no(fmt::format("{}: packed kernels need groups of a multiple of 16", format_name(f)));
  if (e.kind == element_kind::uint_asym) return no(fmt::format("{}: asymmetric (zero-point) elements have no packed kernel", format_name(f)));
  if (e.bits == 4) return true;
  if (e.bits == 8 && e.kind == element_kind::int_sym && e.frac_bits == 0) return true;
  return no(fmt::format("{}: packed kernels take 4-bit elements or int8", format_name(f)));
}

const char* packed_formats_help() {
  return "q8_0, q4_0, mxfp4, nvfp4, and symmetric 4-bit or int8 elements with group (multiple of 16) or row "
         "scales, e.g. int4/g32, int8/c, e2m1/g16:e4m3";
}

float packed_matrix::value(int64_t r, int64_t c) const {
  const uint32_t code = code_at(*this, r, c);
  return bits == 8 ? int8_value(static_cast<uint8_t>(code)) : lut[code];
}

packed_matrix pack_matrix(quantized_tensor q) {
  std::string why;
  if (!has_packed_kernel(q.fmt, &why)) throw error(fmt::format("{} (packed kernels: {})", why, packed_formats_help()));
  if (q.cols % 16 != 0 || q.cols == 0)
    throw error(fmt::format("packed kernels need rows of a multiple of 16 values; this {} tensor has {}",
                            format_name(q.fmt), q.cols));
  packed_matrix w;
  w.fmt = q.fmt;
  w.rows = q.rows, w.cols = q.cols;
  w.bits = q.fmt.element.bits;
  w.group = q.fmt.gran == granularity::row ? q.cols : q.fmt.group_size;
  if (q.cols % w.group != 0)
    throw error(fmt::format("packed kernels need rows of whole groups: {} values in groups of {} ({})", q.cols,
                            w.group, format_name(q.fmt)));
  w.row_bytes = q.row_bytes;
  if (w.row_bytes != q.cols * w.bits / 8) throw error("pack_matrix: internal: unexpected row layout");
  w.codes = std::move(q.codes);  // (the scales below read q's scales, not its codes)
  // The lut: dequantize_value_ref's value of each code before the scale.
  w.integer_values = true;
  if (w.bits == 4) {
    for (uint32_t c = 0; c < 16; ++c) {
      w.lut[c] = has_fixed_zero_point(q.fmt) ? static_cast<float>(c) - 8.0f : decode_ref(q.fmt.element, c);
      if (!(w.lut[c] == std::nearbyint(w.lut[c]) && std::fabs(w.lut[c]) <= 127)) w.integer_values = false;
    }
  } else {
    for (uint32_t c = 0; c < 256; ++c)
      if (!(decode_ref(q.fmt.element, c) == int8_value(static_cast<uint8_t>(c))))
        throw error(fmt::format("pack_matrix: internal: {}'s 8-bit codes are not int8", format_name(q.fmt)));
  }
  // Each group's multiplier as stored_group_scale forms it (nvfp4: tensor_scale x block scale).
  const int64_t gpr = w.groups_per_row();
  w.scales.resize(size_t(w.rows * gpr));
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t g = 0; g < gpr; ++g) {
      const group_scale gs = stored_group_scale(q, r, g * w.group);
      w.scales[size_t(r * gpr + g)] = gs.nonfinite ? std::numeric_limits<float>::quiet_NaN() : gs.scale;
    }
  return w;
}

void dequantize_packed(const packed_matrix& w, float* out) {
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t c = 0; c < w.cols; ++c) out[r * w.cols + c] = w.value(r, c) * w.scale(r, c);
}

// ---- float activations: references --------------------------------------------------------------

float lane_ordered_dot_ref(const float* w, const float* x, int64_t n) {
  float acc[16] = {};
  for (int64_t c = 0; c < n; ++c) {
    const float p = w[c] * x[c];
    acc[c % 16] += p;
  }
  return halve_lanes(acc);
}

void lane_ordered_matmul_ref(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < rows; ++o) y[t * rows + o] = lane_ordered_dot_ref(w + o * cols, x + t * cols, cols);
}

void packed_matmul_ref(const packed_matrix& w, const float* x, int64_t n, float* y) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < w.rows; ++o) {
      float acc[16] = {};
      const float* xt = x + t * w.cols;
      for (int64_t c = 0; c < w.cols; ++c) {
        const float wv = w.value(o, c) * w.scale(o, c);  // dequantize_ref's value
        const float p = wv * xt[c];
        acc[c % 16] += p;
      }
      y[t * w.rows + o] = halve_lanes(acc);
    }
}

// ---- float activations: AVX-512 ------------------------------------------------------------------
namespace detail {

bool packed_product_threads(int64_t rows, int64_t cols, int64_t n) {
  return double(rows) * double(cols) * double(n) > 4e6 && omp_get_max_threads() > 1;
}

std::vector<float> permuted_x(const float* x, int64_t n, int64_t cols) {
  std::vector<float> out(size_t(n * cols));
  for (int64_t b = 0; b < n * cols; b += 16)
    for (int k = 0; k < 8; ++k) out[size_t(b + k)] = x[b + 2 * k], out[size_t(b + 8 + k)] = x[b + 2 * k + 1];
  return out;
}

}  // namespace detail

namespace {
using detail::packed_product_threads;
using detail::permuted_x;
using detail::lane_ordered_schedule;
using detail::prefetch_rows;
using detail::tile_rows;
using detail::lut_is_code_minus_8;
using detail::kPrefetchRows;

#define LOWBIT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define LOWBIT_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

LOWBIT_AVX512 inline float reduce_pinned(__m512 acc) {
  // lane k += lane k + 8, + 4, + 2, + 1 (halve_lanes).
  __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
  __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
  __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
  __m128 a1 = _mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1));
  return _mm_cvtss_f32(a1);
}

// The order of a 4-bit row's 16 columns [c, c + 16) in the kernels' lanes: the 8 even columns,
// then the 8 odd ones (the low and the high nibbles of 8 bytes, so no nibble interleave is
// needed). x is read in that order (permuted_x) and the lane sums are put back in column order
// (unpermute) before the pinned halving; every lane still adds its own column's terms in order of
// c, so the result is the same bit for bit.
LOWBIT_AVX512 inline __m512i nibble_shifts() {
  return _mm512_set_epi32(4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0);
}
// lane L of the column-ordered sums <- lane (L even: L / 2, odd: 8 + L / 2) of the permuted ones.
LOWBIT_AVX512 inline __m512 unpermute(__m512 acc) {
  return _mm512_permutexvar_ps(_mm512_set_epi32(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0), acc);
}

// The 16 weights (lut[code] * scale, dequantize_ref's value) of columns [c, c + 16) of a row:
// 4-bit in the permuted order, from a table of the 16 scaled values (slut = lut * scale: the
// same one product per value as value * scale), 8-bit in column order.
template <int BITS>
LOWBIT_AVX512 inline __m512 weights16(const uint8_t* row, int64_t c, __m512 slut, __m512 scale) {
  if constexpr (BITS == 8)
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)))),
                         scale);
  // Bytes [b0..b7, b0..b7] widened to 32 bits and the upper 8 shifted right by 4: the low
  // nibbles (even columns) then the high ones (odd); permutexvar reads only an index's low 4 bits.
  int64_t eight;
  std::memcpy(&eight, row + c / 2, 8);
  const __m512i idx = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_set1_epi64x(eight)), nibble_shifts());
  return _mm512_permutexvar_ps(idx, slut);
}

// Rows [o0, o0 + R) x tokens [t0, t0 + T): R * T accumulators, each W chunk decoded once for T
// tokens; groups in the outer loop (one scaled table or scale per row and group). x is
// permuted_x's order for 4-bit weights. PF > 0: prefetch the row PF rows on (one row at a time,
// GEMV: rows beyond the cache come from DRAM, and one row's codes are a few cache lines).
template <int BITS, int R, int T, int PF = 0>
LOWBIT_AVX512 void tile_avx512(const packed_matrix& w, const float* x, float* y, int64_t o0, int64_t t0) {
  const int64_t cols = w.cols, gpr = w.groups_per_row(), G = w.group;
  const __m512 lut = _mm512_loadu_ps(w.lut.data());
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  const tile_rows<R> tr(w, o0);
  const auto& rows = tr.codes;
  const auto& sc = tr.scales;
  if constexpr (PF > 0) {
    prefetch_rows(w, o0 + PF, R);
  } else if (R > 1) {
    // The same columns of the next block of rows (contiguous: R rows on). R rows read at once
    // are R streams inside one page, which the hardware prefetcher does not follow (measured
    // on 2048 x 768 q4_0 GEMVs beyond the cache, one thread: median 2.7 -> 3.8 GB/s, noisy).
    for (int i = 0; i < R; ++i)
      for (int64_t b = 0; b < w.row_bytes; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(rows[i] + R * w.row_bytes + b), _MM_HINT_T0);
  }
  for (int64_t g = 0; g < gpr; ++g) {
    __m512 s[R], slut[R];
    for (int i = 0; i < R; ++i) {
      s[i] = _mm512_set1_ps(sc[i][g]);
      if constexpr (BITS == 4) slut[i] = _mm512_mul_ps(lut, s[i]);
    }
    for (int64_t c = g * G; c < (g + 1) * G; c += 16) {
      __m512 xs[T];
      for (int j = 0; j < T; ++j) xs[j] = _mm512_loadu_ps(x + (t0 + j) * cols + c);
      for (int i = 0; i < R; ++i) {
        const __m512 wv = weights16<BITS>(rows[i], c, slut[i], s[i]);
        for (int j = 0; j < T; ++j) acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_mul_ps(wv, xs[j]));
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) y[(t0 + j) * w.rows + o0 + i] = reduce_pinned(BITS == 4 ? unpermute(acc[i][j]) : acc[i][j]);
}

template <int BITS, int R>
LOWBIT_AVX512 void rows_avx512(const packed_matrix& w, const float* x, int64_t n, float* y, int64_t o0) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) tile_avx512<BITS, R, 4>(w, x, y, o0, t);
  for (; t < n; ++t) tile_avx512<BITS, R, 1>(w, x, y, o0, t);
}

// GEMV rows [o0, o1): one row at a time for 8-bit codes (one stream from memory), pairs of rows
// for 4-bit codes (two chains of adds in flight: decoding, not memory,
// bounds them), each prefetching the rows kPrefetchRows on. Measured with bench/bench_packed.cpp on
// the decode shapes from DRAM, one thread, shared machine (GB/s of codes + scales, medians):
// q4_0 R = 1: 7.3-8.5, R = 2: 8.4-9.9, R = 4: 8.0-9.1; q8_0 R = 1: 15-17, R = 2: 10-16, R = 4:
// 9-15; prefetch distance 4 rows >= 8 rows.
template <int BITS>
LOWBIT_AVX512 void gemv_rows_avx512(const packed_matrix& w, const float* x, float* y, int64_t o0, int64_t o1) {
  constexpr int R = BITS == 4 ? 2 : 1;
  int64_t o = o0;
  for (; o + R <= o1; o += R) tile_avx512<BITS, R, 1, kPrefetchRows>(w, x, y, o, 0);
  for (; o < o1; ++o) tile_avx512<BITS, 1, 1, kPrefetchRows>(w, x, y, o, 0);
}

template <int BITS>
LOWBIT_AVX512 void packed_matmul_bits(const packed_matrix& w, const float* x_in, int64_t n, float* y) {
  const std::vector<float> xp = BITS == 4 ? permuted_x(x_in, n, w.cols) : std::vector<float>();
  const float* x = BITS == 4 ? xp.data() : x_in;
  const bool threads = packed_product_threads(w.rows, w.cols, n);
  if (n == 1) {  // GEMV: one row at a time (one stream from memory), in chunks of 64 rows
    const int64_t chunks = (w.rows + 63) / 64;
#pragma omp parallel for schedule(static) if (threads)
    for (int64_t b = 0; b < chunks; ++b) gemv_rows_avx512<BITS>(w, x, y, b * 64, std::min(w.rows, b * 64 + 64));
    return;
  }
  // GEMM: blocks of 2 rows x 4 tokens.
  const int64_t blocks = (w.rows + 1) / 2;
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t b = 0; b < blocks; ++b) {
    if (2 * b + 2 <= w.rows) rows_avx512<BITS, 2>(w, x, n, y, 2 * b);
    else rows_avx512<BITS, 1>(w, x, n, y, 2 * b);
  }
}

LOWBIT_AVX512 void packed_matmul_avx512(const packed_matrix& w, const float* x, int64_t n, float* y) {
  if (w.bits == 8) packed_matmul_bits<8>(w, x, n, y);
  else packed_matmul_bits<4>(w, x, n, y);
}

// Float weights in the same order: R rows of W against one token; PF > 0: prefetch the rows PF
// rows on. The GEMV (decode) goes one row at a time with PF = 4: one stream from memory, which
// the hardware prefetcher follows (stories15M's 32,000 x 288 classifier from DRAM, one thread,
// bench/bench_packed.cpp, shared machine: 4 rows at a time 11 GB/s, one at a time 22 GB/s).
template <int R, int PF = 0>
LOWBIT_AVX512 void float_rows_avx512(const float* w, int64_t cols, const float* x, float* y) {
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t full = cols / 16 * 16;
  for (int64_t c = 0; c < full; c += 16) {
    const __m512 xs = _mm512_loadu_ps(x + c);
    // PF == 0: the same columns of the next block of rows (R rows on): R short row streams at
    // once are more than the hardware prefetcher follows.
    for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(w + (i + (PF > 0 ? PF : R)) * cols + c), _MM_HINT_T0);
    for (int i = 0; i < R; ++i) acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(_mm512_loadu_ps(w + i * cols + c), xs));
  }
  if (full < cols) {  // the tail: lanes past cols keep their sums (a masked add, not + 0)
    const __mmask16 m = static_cast<__mmask16>((1u << (cols - full)) - 1);
    const __m512 xs = _mm512_maskz_loadu_ps(m, x + full);
    for (int i = 0; i < R; ++i)
      acc[i] = _mm512_mask_add_ps(acc[i], m, acc[i], _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i * cols + full), xs));
  }
  for (int i = 0; i < R; ++i) y[i] = reduce_pinned(acc[i]);
}

LOWBIT_AVX512 void float_gemv_rows(const float* w, int64_t cols, const float* x, float* y, int64_t o0, int64_t o1,
                                   int64_t rows) {
  int64_t o = o0;
  // The prefetch reaches kPrefetchRows rows on; the matrix's last rows go without it (no read past W).
  for (; o < o1 && o + kPrefetchRows < rows; ++o) float_rows_avx512<1, kPrefetchRows>(w + o * cols, cols, x, y + o);
  for (; o < o1; ++o) float_rows_avx512<1>(w + o * cols, cols, x, y + o);
}

LOWBIT_AVX512 void lane_ordered_matmul_avx512(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n,
                                              float* y) {
  lane_ordered_schedule(
      rows, cols, n, [&](int64_t o0, int64_t o1) LOWBIT_AVX512 { float_gemv_rows(w, cols, x, y, o0, o1, rows); },
      [&](int64_t o0, int64_t t) LOWBIT_AVX512 {
        float_rows_avx512<4>(w + o0 * cols, cols, x + t * cols, y + t * rows + o0);
      },
      [&](int64_t o, int64_t t) LOWBIT_AVX512 { float_rows_avx512<1>(w + o * cols, cols, x + t * cols, y + t * rows + o); });
}

}  // namespace

void lane_ordered_matmul(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y) {
  if (n <= 0 || rows == 0) return;
  switch (active_level()) {
    case level::avx512: return lane_ordered_matmul_avx512(w, rows, cols, x, n, y);
    case level::avx2: return detail::lane_ordered_matmul_avx2(w, rows, cols, x, n, y);
    case level::scalar: return lane_ordered_matmul_ref(w, rows, cols, x, n, y);
  }
}

void packed_matmul(const packed_matrix& w, const float* x, int64_t n, float* y) {
  if (n <= 0 || w.rows == 0) return;
  switch (active_level()) {
    case level::avx512: return packed_matmul_avx512(w, x, n, y);
    case level::avx2: return detail::packed_matmul_avx2(w, x, n, y);
    case level::scalar: return packed_matmul_ref(w, x, n, y);
  }
}

// ---- integer activations ------------------------------------------------------------------------

int8_activations quantize_activations(const float* x, int64_t n, int64_t cols, int64_t group) {
  if (group <= 0 || cols % group != 0)
    throw error(fmt::format("quantize_activations: {} columns do not split into groups of {}", cols, group));
  // Parsed once (this runs on every linear layer's input of a decode step).
  static const format q8_0 = parse_format("q8_0"), int8_per_row = parse_format("int8/c");
  const quantized_tensor q = quantize(x, n, cols, group == 32     ? q8_0
                                                  : group == cols ? int8_per_row
                                                                  : parse_format(fmt::format("int8/g{}", group)));
  int8_activations a;
  a.n = n, a.cols = cols, a.group = group;
  a.q.resize(size_t(n * cols));
  for (int64_t i = 0; i < n * cols; ++i) a.q[size_t(i)] = static_cast<int8_t>(q.codes[size_t(i)]);
  a.scale.resize(size_t(n * (cols / group)));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t g = 0; g < cols / group; ++g) {
      const group_scale gs = stored_group_scale(q, t, g * group);
      a.scale[size_t(t * (cols / group) + g)] = gs.nonfinite ? std::numeric_limits<float>::quiet_NaN() : gs.scale;
    }
  return a;
}

namespace {
void check_int(const packed_matrix& w, const int8_activations& a) {
  if (!w.integer_values)
    throw error(fmt::format("{} has no integer codes: the integer-activation product takes q8_0, q4_0, intN", format_name(w.fmt)));
  if (a.cols != w.cols || a.group != w.group)
    throw error(fmt::format("packed_int: activations [{}] in groups of {} against weights [{}] in groups of {}", a.cols,
                            a.group, w.cols, w.group));
  if (w.group > kMaxIntDotGroup)
    throw error(fmt::format("packed_int: groups of {} columns: an exact int32 dot holds at most {}", w.group,
                            kMaxIntDotGroup));
}
}  // namespace

void packed_int_dots_ref(const packed_matrix& w, const int8_activations& a, int32_t* dots) {
  check_int(w, a);
  const int64_t gpr = w.groups_per_row();
  for (int64_t t = 0; t < a.n; ++t)
    for (int64_t o = 0; o < w.rows; ++o)
      for (int64_t g = 0; g < gpr; ++g) {
        int32_t s = 0;
        for (int64_t c = g * w.group; c < (g + 1) * w.group; ++c)
          s += static_cast<int32_t>(w.value(o, c)) * int32_t(a.q[size_t(t * w.cols + c)]);
        dots[(t * w.rows + o) * gpr + g] = s;
      }
}

namespace {

// packed_matmul_int's whole product, 16 rows at a time with row i in lane i: each group's exact
// dot for 16 rows in one vector, then the reference's float steps ((sw * sx) * float(dot) added
// to +0, groups in order) on 16 rows at once, each lane its own row's chain in the reference's
// order (no horizontal float sums, no scalar chain per row).
//
// The dots: dpbusd multiplies unsigned by signed bytes, so the weight goes in as the unsigned
// operand with an offset of 128 (q8_0: w ^ 0x80 = w + 128; 4-bit: a table of lut[code] + 128,
// lut values in [-127, 127]) and x as the signed one; sum (w + 128) x - 128 sum x is the dot,
// exactly in int32 (|sum| <= 255 * 127 * cols). Each step takes 64 columns (two blocks of 32) of
// 16 rows, 16 dword partials per row, and a transpose-and-add tree (reduce_rows) turns the 16
// rows' partials into the two blocks' dots of the 16 rows.
// Prefetch distances of the integer kernel, in rows: into L1 and (the next block) into L2.
constexpr int64_t kIntAhead = 4, kIntFar = 16;
struct int_x {
  int64_t cols64 = 0;          // cols rounded up to 64: the kernel's steps
  std::vector<int8_t> q;       // [n, cols64], in the weight's byte order (below), zeros past cols
  std::vector<int32_t> sums;   // [n, cols64 / 32]: each block of 32's sum of x (the offset's share)
};
// 4-bit weights: each 64 columns as [block 0's even columns | block 1's even | block 0's odd |
// block 1's odd] (16 each): the low nibbles of the 32 bytes of codes, then the high nibbles.
int_x prepare_int_x(const int8_activations& a, int bits) {
  int_x p;
  p.cols64 = (a.cols + 63) / 64 * 64;
  p.q.assign(size_t(a.n * p.cols64), 0);
  p.sums.assign(size_t(a.n * p.cols64 / 32), 0);
  for (int64_t t = 0; t < a.n; ++t) {
    const int8_t* x = a.q.data() + t * a.cols;
    int8_t* out = p.q.data() + t * p.cols64;
    for (int64_t c = 0; c < a.cols; ++c) {
      int64_t at = c;
      if (bits == 4) {
        const int64_t base = c / 64 * 64, j = c % 64, block = j / 32, k = (j % 32) / 2, odd = j % 2;
        at = base + odd * 32 + block * 16 + k;
      }
      out[at] = x[c];
      p.sums[size_t(t * p.cols64 / 32 + c / 32)] += x[c];
    }
  }
  return p;
}

// r[i]: row i's 16 dword partials of one step; quad k (dwords 4k..4k+3) belongs to block 0 or 1
// of the step: 4-bit [0, 1, 0, 1], 8-bit [0, 0, 1, 1]. Returns the two blocks' dots, lane i row i.
template <int BITS>
LOWBIT_VNNI inline void reduce_rows(__m512i* r, __m512i& block0, __m512i& block1) {
  __m512i v[8], u[4], m[2];
  for (int p = 0; p < 8; ++p)  // per quad: [a0 + a2, b0 + b2, a1 + a3, b1 + b3] of rows 2p, 2p + 1
    v[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]), _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]));
  for (int q = 0; q < 4; ++q)  // per quad: the quad's sum of rows 4q .. 4q + 3
    u[q] = _mm512_add_epi32(_mm512_unpacklo_epi64(v[2 * q], v[2 * q + 1]), _mm512_unpackhi_epi64(v[2 * q], v[2 * q + 1]));
  for (int h = 0; h < 2; ++h) {  // [rows 8h..8h+3 block 0, block 1, rows 8h+4..8h+7 block 0, block 1]
    if constexpr (BITS == 4)
      m[h] = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2 * h], u[2 * h + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_i32x4(u[2 * h], u[2 * h + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    else
      m[h] = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2 * h], u[2 * h + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_i32x4(u[2 * h], u[2 * h + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  block0 = _mm512_shuffle_i32x4(m[0], m[1], _MM_SHUFFLE(2, 0, 2, 0));
  block1 = _mm512_shuffle_i32x4(m[0], m[1], _MM_SHUFFLE(3, 1, 3, 1));
}

// out[c * 16 + i] = the scale of row o0 + i (past the last row: the last row), group g0 + c, for
// the groups g0 .. g0 + 15 that exist: a 16 x 16 transpose in registers (unpack, then shuffles
// within and across 128-bit lanes).
LOWBIT_VNNI inline void transpose_scales16(const packed_matrix& w, int64_t o0, int64_t g0, float* out) {
  const int64_t gpr = w.groups_per_row(), count = std::min<int64_t>(16, gpr - g0);
  const __mmask16 live = static_cast<__mmask16>((1u << count) - 1);
  __m512 r[16], t[16], u[16];
  for (int i = 0; i < 16; ++i)
    r[i] = _mm512_maskz_loadu_ps(live, w.scales.data() + std::min(o0 + i, w.rows - 1) * gpr + g0);
  for (int k = 0; k < 8; ++k)
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]), t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  for (int j = 0; j < 4; ++j) {  // u[4j + m], 128-bit lane L: rows 4j .. 4j + 3 of column 4L + m
    u[4 * j + 0] = _mm512_shuffle_ps(t[4 * j + 0], t[4 * j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * j + 1] = _mm512_shuffle_ps(t[4 * j + 0], t[4 * j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * j + 2] = _mm512_shuffle_ps(t[4 * j + 1], t[4 * j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * j + 3] = _mm512_shuffle_ps(t[4 * j + 1], t[4 * j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int m = 0; m < 4; ++m) {  // column 4L + m = [lane L of u[m], u[4 + m], u[8 + m], u[12 + m]]
    const __m512 a = _mm512_shuffle_f32x4(u[m], u[4 + m], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 b = _mm512_shuffle_f32x4(u[m], u[4 + m], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 c = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 d = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 col[4] = {_mm512_shuffle_f32x4(a, c, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(a, c, _MM_SHUFFLE(3, 1, 3, 1)),
                           _mm512_shuffle_f32x4(b, d, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(b, d, _MM_SHUFFLE(3, 1, 3, 1))};
    for (int L = 0; L < 4; ++L)
      if (4 * L + m < count) _mm512_store_ps(out + (4 * L + m) * 16, col[L]);
  }
}

// Rows [o0, o0 + 16) (past the last row: the last row again, not stored) against every token.
// AFFINE: 4-bit codes whose value is code - 8 (q4_0): the code itself is w + 8, no table.
// The weights are read one row at a time (one stream from memory, as the float GEMV: 16 rows
// read side by side ran at about 9 GB/s from DRAM, bench/bench_packed.cpp), each step's 16
// partials kept in `parts` [steps][16 rows] (L1/L2) for the reduction, and the rows' scales
// in `row_scales` [groups][16 rows] (lane i: row i).
template <int BITS, bool AFFINE = false>
LOWBIT_VNNI void int_rows16(const packed_matrix& w, const int_x& px, const int8_activations& a, const uint8_t* lut_bytes,
                            int64_t o0, float* y, __m512i* parts, float* row_scales) {
  const int64_t gpr = w.groups_per_row(), blocks_per_group = w.group / 32, cols = w.cols;
  const int64_t steps = px.cols64 / 64;
  const int live = int(std::min<int64_t>(16, w.rows - o0));
  const __m512i lutp = _mm512_loadu_si512(lut_bytes);
  const __m512i offset = _mm512_set1_epi8(char(0x80)), low4 = _mm512_set1_epi8(0x0f);
  const int32_t bias = AFFINE ? 8 : 128;  // u = w + bias
  const int64_t step_bytes = 64 * BITS / 8;
  for (int64_t t = 0; t < a.n; ++t) {
    const int8_t* xt = px.q.data() + t * px.cols64;
    const int32_t* sums = px.sums.data() + t * (px.cols64 / 32);
    const float* sx = a.scale.data() + t * gpr;
    __m512 acc = _mm512_setzero_ps();
    __m512i group_dot = _mm512_setzero_si512();
    int64_t g = 0, blocks_left = blocks_per_group;  // the group of the next block, and its blocks to come
    const auto add_block = [&](__m512i dot, int64_t b) LOWBIT_VNNI {
      dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(bias * sums[b]));  // the exact dot
      group_dot = _mm512_add_epi32(group_dot, dot);
      if (--blocks_left == 0) {
        const __m512 sw = _mm512_load_ps(row_scales + g * 16);
        const __m512 m = _mm512_mul_ps(sw, _mm512_set1_ps(sx[g]));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(m, _mm512_cvtepi32_ps(group_dot)));
        group_dot = _mm512_setzero_si512();
        ++g, blocks_left = blocks_per_group;
      }
    };
    // 1. Each row's 16 dword partials of each step, row by row.
    for (int i = 0; i < 16; ++i) {
      const int64_t o = std::min(o0 + i, w.rows - 1);
      const uint8_t* row = w.codes.data() + o * w.row_bytes;
      // The rows kIntAhead and kIntFar on: reading 16 rows' worth of steps before the float
      // steps, the hardware prefetcher alone left the kernel waiting on DRAM (cold 768 x 768
      // q8_0 with L1 prefetch alone: 63-73 us, with the L2 prefetch 16 rows on: 34-51 us;
      // bench/bench_packed.cpp, shared machine).
      const bool ahead = t == 0 && o + kIntAhead < w.rows, far = t == 0 && o + kIntFar < w.rows;
      if (ahead)  // the scales of the row kIntAhead on
        for (int64_t g = 0; g < gpr; g += 16)
          _mm_prefetch(reinterpret_cast<const char*>(w.scales.data() + (o + kIntAhead) * gpr + g), _MM_HINT_T0);
      for (int64_t k = 0; k < steps; ++k) {
        const int64_t c = k * 64;
        const bool half = c + 64 > cols;  // the last 32 columns alone (x is zero past cols)
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(row + kIntAhead * w.row_bytes + k * step_bytes), _MM_HINT_T0);
        if (far) _mm_prefetch(reinterpret_cast<const char*>(row + kIntFar * w.row_bytes + k * step_bytes), _MM_HINT_T1);
        __m512i u;
        if constexpr (BITS == 8) {
          const __m512i wv = half ? _mm512_maskz_loadu_epi8(0xffffffffull, row + c) : _mm512_loadu_si512(row + c);
          u = _mm512_xor_si512(wv, offset);
        } else {
          // [the 32 bytes | the same 32 bytes >> 4] & 0x0f: the low nibbles, then the high ones.
          const __m256i cb = half ? _mm256_maskz_loadu_epi8(0xffffu, row + c / 2)
                                  : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c / 2));
          const __m512i both = _mm512_broadcast_i64x4(cb);
          const __m512i nib = _mm512_and_si512(_mm512_mask_srli_epi16(both, __mmask32(0xffff0000u), both, 4), low4);
          u = AFFINE ? nib : _mm512_shuffle_epi8(lutp, nib);
        }
        parts[k * 16 + i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, _mm512_loadu_si512(xt + c));
      }
    }
    if (t == 0)  // the 16 rows' scales with row i in lane i, 16 groups at a time
      for (int64_t g0 = 0; g0 < gpr; g0 += 16) transpose_scales16(w, o0, g0, row_scales + g0 * 16);
    // 2. Per step: the two blocks' dots of the 16 rows, then the float steps in the reference's order.
    for (int64_t k = 0; k < steps; ++k) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = parts[k * 16 + i];
      __m512i block0, block1;
      reduce_rows<BITS>(r, block0, block1);
      add_block(block0, 2 * k);
      if (64 * k + 64 <= cols) add_block(block1, 2 * k + 1);
    }
    _mm512_mask_storeu_ps(y + t * w.rows + o0, static_cast<__mmask16>((1u << live) - 1), acc);
  }
}

LOWBIT_VNNI void packed_matmul_int_vnni(const packed_matrix& w, const int8_activations& a, float* y) {
  alignas(64) uint8_t lut_bytes[64];  // 4-bit: lut[code] + 128 in each 16-byte lane (shuffle_epi8's table)
  for (int i = 0; i < 64; ++i) lut_bytes[i] = w.bits == 4 ? static_cast<uint8_t>(int(w.lut[size_t(i % 16)]) + 128) : 0;
  const bool affine = lut_is_code_minus_8(w);
  const int_x px = prepare_int_x(a, w.bits);
  const int64_t blocks = (w.rows + 15) / 16, steps = px.cols64 / 64;
  const bool threads = packed_product_threads(w.rows, w.cols, a.n);
#pragma omp parallel if (threads)
  {
    // [steps][16 rows] partials, then [groups][16 rows] scales, 64-byte aligned.
    const int64_t part_floats = 16 * 16 * steps;
    std::vector<float> scratch(size_t(part_floats + 16 * w.groups_per_row() + 16));
    void* base = scratch.data();
    size_t room = scratch.size() * sizeof(float);
    float* aligned = static_cast<float*>(std::align(64, size_t(part_floats + 16 * w.groups_per_row()) * sizeof(float), base, room));
    __m512i* parts = reinterpret_cast<__m512i*>(aligned);
    float* row_scales = aligned + part_floats;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      if (w.bits == 8) int_rows16<8>(w, px, a, lut_bytes, b * 16, y, parts, row_scales);
      else if (affine) int_rows16<4, true>(w, px, a, lut_bytes, b * 16, y, parts, row_scales);
      else int_rows16<4>(w, px, a, lut_bytes, b * 16, y, parts, row_scales);
    }
  }
}

}  // namespace

namespace {
template <class Dots>
void combine(const packed_matrix& w, const int8_activations& a, float* y, Dots&& dots_fn) {
  const int64_t gpr = w.groups_per_row();
  std::vector<int32_t> dots(size_t(a.n * w.rows * gpr));
  dots_fn(dots.data());
  for (int64_t t = 0; t < a.n; ++t)
    for (int64_t o = 0; o < w.rows; ++o) {
      float acc = 0;
      const int32_t* d = dots.data() + (t * w.rows + o) * gpr;
      for (int64_t g = 0; g < gpr; ++g)
        acc += (w.scales[size_t(o * gpr + g)] * a.scale[size_t(t * gpr + g)]) * static_cast<float>(d[g]);
      y[t * w.rows + o] = acc;
    }
}
}  // namespace

void packed_matmul_int_ref(const packed_matrix& w, const int8_activations& a, float* y) {
  combine(w, a, y, [&](int32_t* d) { packed_int_dots_ref(w, a, d); });
}

void packed_matmul_int(const packed_matrix& w, const int8_activations& a, float* y) {
  check_int(w, a);
  // The kernels take any int8 codes (VNNI: x is dpbusd's signed operand; AVX2: int16 products).
  if (w.group % 32 != 0 || active_level() == level::scalar) packed_matmul_int_ref(w, a, y);
  else if (use_vnni()) packed_matmul_int_vnni(w, a, y);
  else detail::packed_matmul_int_avx2(w, a, y);  // AVX-512 without VNNI runs AVX2's
}

std::string packed_kernel_target(bool integer) {
  if (integer && use_vnni()) return "avx512-vnni";
  if (integer && active_level() == level::avx512) return "avx2";
  return level_name(active_level());
}

std::vector<std::string> packed_kernel_targets() {
  std::vector<std::string> out;
  for (int l = int(cpu_level()); l >= 0; --l) out.push_back(level_name(level(l)));
  return out;
}

void force_packed_kernel_target(const std::string& target) {
  if (target.empty()) return g_level_cap.store(int(level::avx512));
  for (int l = int(cpu_level()); l >= 0; --l)
    if (target == level_name(level(l))) return g_level_cap.store(l);
  throw error(fmt::format("force_packed_kernel_target: {} is not one of this CPU's packed kernels", target));
}

}  // namespace lowbit

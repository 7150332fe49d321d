// Packed low-bit matrix products (packed_matmul.hpp): the scalar references (the specification)
// and the AVX-512 kernels behind a runtime check (the scalar references are the portable fallback).
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

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/element.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/scale.hpp"

namespace lowbit {

namespace {

std::atomic<bool> g_force_scalar{false};

bool cpu_has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}
bool cpu_has_vnni() {
  static const bool yes = cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
  return yes;
}
bool use_avx512() { return !g_force_scalar.load(std::memory_order_relaxed) && !use_ref() && cpu_has_avx512(); }
bool use_vnni() { return !g_force_scalar.load(std::memory_order_relaxed) && !use_ref() && cpu_has_vnni(); }

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

packed_matrix pack_matrix(const quantized_tensor& q) {
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
  w.codes = q.codes;
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
namespace {

#define LOWBIT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define LOWBIT_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

// 16 codes of row `row` from column c (a multiple of 16) as int32 lanes.
template <int BITS>
LOWBIT_AVX512 inline __m512i load_codes16(const uint8_t* row, int64_t c) {
  if constexpr (BITS == 8) return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
  // 8 bytes hold 16 nibbles, element 2k in the low nibble of byte k: spread each byte to 16 bits
  // as (lo | hi << 8), so the bytes read in element order.
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2));
  const __m128i w16 = _mm_cvtepu8_epi16(b);
  const __m128i lo = _mm_and_si128(w16, _mm_set1_epi16(0x000f));
  const __m128i hi = _mm_and_si128(_mm_slli_epi16(w16, 4), _mm_set1_epi16(0x0f00));
  return _mm512_cvtepu8_epi32(_mm_or_si128(lo, hi));
}

// The 16 values (before the scale) of the codes in `idx`.
template <int BITS>
LOWBIT_AVX512 inline __m512 values16(__m512i idx, __m512 lut) {
  if constexpr (BITS == 8) return _mm512_cvtepi32_ps(idx);
  else return _mm512_permutexvar_ps(idx, lut);
}

LOWBIT_AVX512 inline float reduce_pinned(__m512 acc) {
  // lane k += lane k + 8, + 4, + 2, + 1 (halve_lanes).
  __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
  __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
  __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
  __m128 a1 = _mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1));
  return _mm_cvtss_f32(a1);
}

// Rows [o0, o0 + R) x tokens [t0, t0 + T): R * T accumulators, each W chunk decoded once for T
// tokens; groups in the outer loop (one scale broadcast per row and group).
template <int BITS, int R, int T>
LOWBIT_AVX512 void tile_avx512(const packed_matrix& w, const float* x, float* y, int64_t o0, int64_t t0) {
  const int64_t cols = w.cols, gpr = w.groups_per_row(), G = w.group;
  const __m512 lut = _mm512_loadu_ps(w.lut.data());
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  const uint8_t* rows[R];
  const float* sc[R];
  for (int i = 0; i < R; ++i) {
    rows[i] = w.codes.data() + (o0 + i) * w.row_bytes;
    sc[i] = w.scales.data() + (o0 + i) * gpr;
  }
  for (int64_t g = 0; g < gpr; ++g) {
    __m512 s[R];
    for (int i = 0; i < R; ++i) s[i] = _mm512_set1_ps(sc[i][g]);
    for (int64_t c = g * G; c < (g + 1) * G; c += 16) {
      __m512 xs[T];
      for (int j = 0; j < T; ++j) xs[j] = _mm512_loadu_ps(x + (t0 + j) * cols + c);
      // The same columns of the next block of rows (contiguous: R rows on). R rows read at once
      // are R streams inside one page, which the hardware prefetcher does not follow (measured
      // on 2048 x 768 q4_0 GEMVs beyond the cache, one thread: median 2.7 -> 3.8 GB/s, noisy).
      for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(rows[i] + R * w.row_bytes + c * BITS / 8), _MM_HINT_T0);
      for (int i = 0; i < R; ++i) {
        const __m512 wv = _mm512_mul_ps(values16<BITS>(load_codes16<BITS>(rows[i], c), lut), s[i]);
        for (int j = 0; j < T; ++j) acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_mul_ps(wv, xs[j]));
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) y[(t0 + j) * w.rows + o0 + i] = reduce_pinned(acc[i][j]);
}

template <int BITS, int R>
LOWBIT_AVX512 void rows_avx512(const packed_matrix& w, const float* x, int64_t n, float* y, int64_t o0) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) tile_avx512<BITS, R, 4>(w, x, y, o0, t);
  for (; t < n; ++t) tile_avx512<BITS, R, 1>(w, x, y, o0, t);
}

template <int BITS>
LOWBIT_AVX512 void packed_matmul_bits(const packed_matrix& w, const float* x, int64_t n, float* y) {
  // Blocks of 4 rows (GEMV: four independent sums in flight) or 2 rows x 4 tokens (GEMM).
  const int64_t rb = n == 1 ? 4 : 2;
  const int64_t blocks = (w.rows + rb - 1) / rb;
  const bool threads = double(w.rows) * double(w.cols) * double(n) > 4e6 && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t o0 = b * rb;
    const int64_t left = std::min(rb, w.rows - o0);
    if (left == 4) rows_avx512<BITS, 4>(w, x, n, y, o0);
    else if (left == 2) rows_avx512<BITS, 2>(w, x, n, y, o0);
    else
      for (int64_t o = o0; o < o0 + left; ++o) rows_avx512<BITS, 1>(w, x, n, y, o);
  }
}

LOWBIT_AVX512 void packed_matmul_avx512(const packed_matrix& w, const float* x, int64_t n, float* y) {
  if (w.bits == 8) packed_matmul_bits<8>(w, x, n, y);
  else packed_matmul_bits<4>(w, x, n, y);
}

// Float weights in the same order: R rows of W against one token.
template <int R>
LOWBIT_AVX512 void float_rows_avx512(const float* w, int64_t cols, const float* x, float* y) {
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t full = cols / 16 * 16;
  for (int64_t c = 0; c < full; c += 16) {
    const __m512 xs = _mm512_loadu_ps(x + c);
    // The next block of rows (R rows on, contiguous in memory): R short row streams at once are
    // more than the hardware prefetcher follows (measured on stories15M's 32,000 x 288
    // classifier, one thread, shared machine: median 4.9 -> 5.4 GB/s).
    for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(w + (i + R) * cols + c), _MM_HINT_T0);
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

LOWBIT_AVX512 void lane_ordered_matmul_avx512(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n,
                                              float* y) {
  const int64_t blocks = (rows + 3) / 4;
  const bool threads = double(rows) * double(cols) * double(n) > 4e6 && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t o0 = b * 4;
    for (int64_t t = 0; t < n; ++t) {
      if (o0 + 4 <= rows) float_rows_avx512<4>(w + o0 * cols, cols, x + t * cols, y + t * rows + o0);
      else
        for (int64_t o = o0; o < rows; ++o) float_rows_avx512<1>(w + o * cols, cols, x + t * cols, y + t * rows + o);
    }
  }
}

}  // namespace

void lane_ordered_matmul(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y) {
  if (n <= 0 || rows == 0) return;
  if (use_avx512()) lane_ordered_matmul_avx512(w, rows, cols, x, n, y);
  else lane_ordered_matmul_ref(w, rows, cols, x, n, y);
}

void packed_matmul(const packed_matrix& w, const float* x, int64_t n, float* y) {
  if (n <= 0 || w.rows == 0) return;
  if (use_avx512()) packed_matmul_avx512(w, x, n, y);
  else packed_matmul_ref(w, x, n, y);
}

// ---- integer activations ------------------------------------------------------------------------

int8_activations quantize_activations(const float* x, int64_t n, int64_t cols, int64_t group) {
  if (group <= 0 || cols % group != 0)
    throw error(fmt::format("quantize_activations: {} columns do not split into groups of {}", cols, group));
  const format f = group == 32 ? parse_format("q8_0") : parse_format(group == cols ? "int8/c" : fmt::format("int8/g{}", group));
  const quantized_tensor q = quantize(x, n, cols, f);
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

// 32 codes of a row from column c as int8 values (4-bit: through the integer lut). 4-bit codes
// come as [the 16 even columns | the 16 odd columns] (the low and the high nibbles of 16 bytes,
// no interleave); the activations are read in that order too (deinterleave_pairs), and an
// integer dot does not depend on the order of its terms.
LOWBIT_VNNI inline __m256i int_values32(const uint8_t* row, int bits, int64_t c, __m256i lut8) {
  if (bits == 8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c));
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2));
  const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));
  return _mm256_shuffle_epi8(lut8, _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}

// x's codes with each block of 32 as [its even columns | its odd columns] (4-bit weights).
std::vector<int8_t> deinterleave_pairs(const int8_activations& a) {
  std::vector<int8_t> out(a.q.size());
  for (size_t b = 0; b + 32 <= a.q.size(); b += 32)
    for (int k = 0; k < 16; ++k) out[b + size_t(k)] = a.q[b + size_t(2 * k)], out[b + 16 + size_t(k)] = a.q[b + size_t(2 * k + 1)];
  return out;
}

// sum of 32 int8 products a * b, exactly: dpbusd takes u8 x s8, so |a| against b with a's sign.
LOWBIT_VNNI inline __m256i dot32(__m256i acc, __m256i a, __m256i b) {
  return _mm256_dpbusd_epi32(acc, _mm256_abs_epi8(a), _mm256_sign_epi8(b, a));
}

LOWBIT_VNNI inline int32_t hsum8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// Row o's dots with every token's groups (the body of packed_int_dots_vnni's loop, a function of
// its own so that no vector value crosses into OpenMP's outlined body, which clang compiles
// without the target attribute).
LOWBIT_VNNI void int_dots_of_row(const packed_matrix& w, const int8_t* xq, int64_t n, const int8_t* lut_bytes,
                                 int64_t o, int32_t* dots) {
  const int64_t gpr = w.groups_per_row(), G = w.group;
  const __m256i lut8 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lut_bytes));
  const uint8_t* row = w.codes.data() + o * w.row_bytes;
  for (int64_t t = 0; t < n; ++t) {
    const int8_t* xt = xq + t * w.cols;
    for (int64_t g = 0; g < gpr; ++g) {
      __m256i acc = _mm256_setzero_si256();
      for (int64_t c = g * G; c < (g + 1) * G; c += 32)
        acc = dot32(acc, int_values32(row, w.bits, c, lut8), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt + c)));
      dots[(t * w.rows + o) * gpr + g] = hsum8(acc);
    }
  }
}

LOWBIT_VNNI void packed_int_dots_vnni(const packed_matrix& w, const int8_activations& a, int32_t* dots) {
  const std::vector<int8_t> xd = w.bits == 4 ? deinterleave_pairs(a) : std::vector<int8_t>();
  const int8_t* xq = w.bits == 4 ? xd.data() : a.q.data();
  alignas(32) int8_t lut_bytes[32];
  for (int i = 0; i < 32; ++i) lut_bytes[i] = static_cast<int8_t>(w.bits == 4 ? w.lut[i % 16] : 0);
  const bool threads = double(w.rows) * double(w.cols) * double(a.n) > 4e6 && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t o = 0; o < w.rows; ++o) int_dots_of_row(w, xq, a.n, lut_bytes, o, dots);
}

// packed_matmul_int's whole product: each group's exact dot combined at once in the reference's
// order (groups in order, (sw * sx) * float(dot) added to +0), without the dots array. Rows go in
// pairs: two independent chains of float adds, and one horizontal reduction for both dots.
template <int R>
LOWBIT_VNNI inline void int_rows(const packed_matrix& w, const int8_t* xq, const int8_activations& a, const int8_t* lut_bytes,
                                 int64_t o0, float* y) {
  const __m256i lut8 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lut_bytes));
  const int64_t gpr = w.groups_per_row(), G = w.group;
  const uint8_t* row[R];
  const float* sw[R];
  for (int i = 0; i < R; ++i) {
    row[i] = w.codes.data() + (o0 + i) * w.row_bytes;
    sw[i] = w.scales.data() + (o0 + i) * gpr;
  }
  if (o0 + R < w.rows)  // the next rows' codes, every line: rows are short streams
    for (int64_t b = 0; b < R * w.row_bytes; b += 64)
      _mm_prefetch(reinterpret_cast<const char*>(row[0] + R * w.row_bytes + b), _MM_HINT_T0);
  for (int64_t t = 0; t < a.n; ++t) {
    const int8_t* xt = xq + t * w.cols;
    const float* sx = a.scale.data() + t * gpr;
    float acc[R] = {};
    for (int64_t g = 0; g < gpr; ++g) {
      __m256i d[R];
      for (int i = 0; i < R; ++i) d[i] = _mm256_setzero_si256();
      for (int64_t c = g * G; c < (g + 1) * G; c += 32) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt + c));
        for (int i = 0; i < R; ++i) d[i] = dot32(d[i], int_values32(row[i], w.bits, c, lut8), xv);
      }
      int32_t dot[R];
      if constexpr (R == 2) {  // [d0 pairs, d1 pairs] -> the two sums
        __m256i h = _mm256_hadd_epi32(d[0], d[1]);
        __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        q = _mm_hadd_epi32(q, q);
        dot[0] = _mm_cvtsi128_si32(q), dot[1] = _mm_extract_epi32(q, 1);
      } else {
        for (int i = 0; i < R; ++i) dot[i] = hsum8(d[i]);
      }
      for (int i = 0; i < R; ++i) acc[i] += (sw[i][g] * sx[g]) * static_cast<float>(dot[i]);
    }
    for (int i = 0; i < R; ++i) y[t * w.rows + o0 + i] = acc[i];
  }
}

LOWBIT_VNNI void packed_matmul_int_vnni(const packed_matrix& w, const int8_activations& a, float* y) {
  alignas(32) int8_t lut_bytes[32];
  for (int i = 0; i < 32; ++i) lut_bytes[i] = static_cast<int8_t>(w.bits == 4 ? w.lut[i % 16] : 0);
  const std::vector<int8_t> xd = w.bits == 4 ? deinterleave_pairs(a) : std::vector<int8_t>();
  const int8_t* xq = w.bits == 4 ? xd.data() : a.q.data();
  const int64_t pairs = (w.rows + 1) / 2;
  const bool threads = double(w.rows) * double(w.cols) * double(a.n) > 4e6 && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t b = 0; b < pairs; ++b) {
    if (2 * b + 2 <= w.rows) int_rows<2>(w, xq, a, lut_bytes, 2 * b, y);
    else int_rows<1>(w, xq, a, lut_bytes, 2 * b, y);
  }
}

}  // namespace

// Whether the VNNI kernels apply: dpbusd's u8 operand |a| reads a value -128 as 128 (right), but
// its sign flip of b would overflow for b = -128; quantize_activations' codes are in [-127, 127]
// (amax / 127 scales), other callers' may not be.
namespace {
bool vnni_applies(const packed_matrix& w, const int8_activations& a) {
  return use_vnni() && w.group % 32 == 0 && std::find(a.q.begin(), a.q.end(), int8_t(-128)) == a.q.end();
}
}  // namespace

void packed_int_dots(const packed_matrix& w, const int8_activations& a, int32_t* dots) {
  check_int(w, a);
  if (vnni_applies(w, a)) packed_int_dots_vnni(w, a, dots);
  else packed_int_dots_ref(w, a, dots);
}

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
  if (vnni_applies(w, a)) packed_matmul_int_vnni(w, a, y);
  else packed_matmul_int_ref(w, a, y);
}

std::string packed_kernel_target(bool integer) {
  if (integer) return use_vnni() ? "avx512-vnni" : "scalar";
  return use_avx512() ? "avx512" : "scalar";
}

void force_packed_scalar(bool on) { g_force_scalar.store(on); }

}  // namespace lowbit

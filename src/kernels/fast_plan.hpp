// The plan of one fast-kernel call (no Highway here), shared by the translation units of the
// fast kernels: the per-format constants of the SIMD element rounding (grid_params), the element
// job of one group (row_job), what a row needs besides its data (row_plan), the per-call state
// (fast_call), which formats the SIMD path covers, and the entry points a unit offers the others
// (each unit's HWY_DYNAMIC_DISPATCH reaches only the functions it HWY_EXPORTs itself).
//
//   simd_common-inl.hpp       vector types, partial-vector loads and stores (per target)
//   simd_round-inl.hpp        element rounding of one vector (per target)
//   scales_fast-inl.hpp       group statistics and batched scales (per target)
//   fake_quantize_rows.cpp    the row kernel, fake_quantize
//   fake_quantize_columns.cpp the column tiles, fake_quantize_columns
//   scales_fast.cpp           statistics entry points, fast_call's first passes
//   philox_fast.cpp           the Philox stream (random_words)
//   codes_fast.cpp            quantize / dequantize to codes
//   simd_targets.cpp          target control for tests, the _ref switch
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"

namespace lowbit::detail {

// Per-format constants of the SIMD element rounding (computed once per call).
struct grid_params {
  int kind = 0;          // 0 minifloat, 1 integer (int/uint), 2 lut
  int32_t emin = 0, mbits = 0, bias = 0;
  int32_t below_log2step = 0;  // minifloat: L below emin (emin - M, or emin without subnormals)
  int32_t fixed_log2step = 0;  // integer: -frac
  bool m0_parity = false;      // M = 0 minifloat: lo's code parity is the exponent's
  // emin < -126 (e8 with bias 128, fnuz): float32 subnormal inputs lie in the element's normal or
  // subnormal range, so their binade comes from the pattern's leading one, not the exponent field.
  bool deep_emin = false;
  int32_t max_bits = 0;        // |largest finite| as float32 bits
  int32_t tiny_step_bits = 0;  // the step in the s >= 24 region, as float32 bits
  float tiny_step = 0;
  bool saturate = true;
  int32_t special_bits = 0;    // Inf (0x7f800000) or canonical NaN for non-saturating overflow
  bool signed_zero = false;
  // RNE fast paths: minifloats with M > 0 that saturate round with (|y| + C) - C, C = 2^(L+23);
  // integers with roundps. Both are exactly the reference's ties-to-even-code rounding.
  bool fast_rne = false, int_fast = false, e8_fast = false, sr_fast = false;
  float max_value = 0;
  int32_t e8_shift = 0;      // e8_fast: float32 mantissa bits below the element's
  float frac_scale = 1, inv_frac_scale = 1;  // 2^frac, 2^-frac (MXINT8)
  uint32_t sign_bit = 0;     // minifloat: the code's sign bit
  bool subnormals = true;    // minifloat
  // lut (round to nearest, ties to even index): entry i+1 is taken when y > lut_thr[i]. A tie
  // threshold that goes up (odd i) is stored as the float below it (y >= t <=> y > prev(t)).
  // Padded to 16 (thresholds +inf, values the last): a binary search with lane permutes on
  // 16-lane targets. Fixed arrays keep the struct trivially copyable (the row kernel copies it).
  static constexpr int kMaxLut = 16;
  int lut_n = 0;
  std::array<float, kMaxLut> lut_values{}, lut_thr{};
  // The same search on 8-lane targets (RoundToTable), whose lane permutes reach 8 entries: the
  // third step's thresholds lut_thr[4j + 1], the fourth's lut_thr[2j], and the entries 2j, 2j + 1.
  std::array<float, kMaxLut / 2> lut_thr_4j1{}, lut_thr_2j{}, lut_values_2j{}, lut_values_2j1{};
};

inline grid_params make_grid_params(const element_format& e) {
  grid_params g;
  const element_limits lim = limits_of(e);
  switch (e.kind) {
    case element_kind::minifloat:
      g.kind = 0;
      g.emin = 1 - e.bias;
      g.mbits = e.mbits;
      g.bias = e.bias;
      g.below_log2step = e.subnormals ? g.emin - e.mbits : g.emin;
      g.m0_parity = e.mbits == 0;
      g.deep_emin = g.emin < -126;
      g.max_bits = static_cast<int32_t>(std::bit_cast<uint32_t>(static_cast<float>(lim.max)));
      g.tiny_step = std::ldexp(1.0f, g.below_log2step);
      g.saturate = e.overflow == overflow_policy::saturate;
      g.special_bits = e.overflow == overflow_policy::inf ? 0x7f800000 : 0x7fc00000;
      g.signed_zero = has_signed_zero(e);
      g.sign_bit = 1u << (e.ebits + e.mbits);
      g.subnormals = e.subnormals;
      // (|y| + C) - C needs C = 2^(L+23) <= 2^126 for L up to emax - M, and M <= 22 (so that no
      // value below max is already on the grid with a larger C).
      g.fast_rne = e.mbits > 0 && e.mbits <= 22 && g.saturate && lim.emax - e.mbits <= 103;
      // Elements with float32's exponent range (e8mM, bias 127): RNE is a fixed shift of the pattern.
      // (fp32 itself, M = 23, is the identity there: only saturation and the canonical NaN.)
      g.e8_fast = e.ebits == 8 && e.bias == 127 && e.subnormals && g.saturate && e.mbits <= 23;
      g.e8_shift = 23 - e.mbits;
      // Stochastic rounding by q = |y| 2^-L, floor, t = q - floor (all exact) needs 2^-L in float32.
      g.sr_fast = g.saturate && g.below_log2step >= -126 && lim.emax - e.mbits <= 126;
      g.max_value = static_cast<float>(lim.max);
      break;
    case element_kind::int_sym:
    case element_kind::uint_asym:
      g.kind = 1;
      g.fixed_log2step = -e.frac_bits;
      g.max_bits = e.kind == element_kind::int_sym
                       ? static_cast<int32_t>(std::bit_cast<uint32_t>(static_cast<float>(lim.max)))
                       : 0x7f800000;  // uint: no saturation here, the caller clamps to the zero point range
      g.tiny_step = std::ldexp(1.0f, g.fixed_log2step);
      g.int_fast = true;
      g.sr_fast = e.kind == element_kind::int_sym;
      g.max_value = static_cast<float>(lim.max);
      g.frac_scale = std::ldexp(1.0f, e.frac_bits);
      g.inv_frac_scale = std::ldexp(1.0f, -e.frac_bits);
      break;
    case element_kind::lut: {
      g.kind = 2;
      g.lut_n = static_cast<int>(e.table.size());
      if (g.lut_n > grid_params::kMaxLut) break;  // larger tables take the scalar path
      g.lut_thr.fill(INFINITY);
      for (int i = 0; i < grid_params::kMaxLut; ++i) g.lut_values[i] = e.table[std::min(i, g.lut_n - 1)];
      for (size_t i = 0; i + 1 < e.table.size(); ++i) {
        const long double mid = (static_cast<long double>(e.table[i]) + e.table[i + 1]) / 2;
        const float m = static_cast<float>(mid);
        if (static_cast<long double>(m) == mid)  // a tie goes to the even index: up for odd i
          g.lut_thr[i] = (i & 1u) ? std::nextafter(m, -INFINITY) : m;
        else  // the largest float below mid: y > it <=> y > mid
          g.lut_thr[i] = static_cast<long double>(m) < mid ? m : std::nextafter(m, -INFINITY);
      }
      for (size_t j = 0; j < grid_params::kMaxLut / 2; ++j) {
        g.lut_thr_4j1[j] = j < 4 ? g.lut_thr[4 * j + 1] : INFINITY;
        g.lut_thr_2j[j] = g.lut_thr[2 * j];
        g.lut_values_2j[j] = g.lut_values[2 * j];
        g.lut_values_2j1[j] = g.lut_values[2 * j + 1];
      }
      break;
    }
  }
  g.tiny_step_bits = static_cast<int32_t>(std::bit_cast<uint32_t>(g.tiny_step));
  return g;
}

// What one call of the row kernel needs besides the data.
struct row_job {
  float scale;       // multiply the rounded value by this (1 for a plain cast)
  float divisor;     // y = x / divisor ...
  float multiplier;  // ... or y = x * multiplier when the scale is a power of two (exact)
  bool use_multiplier;
  bool scaled;
  bool uint_clamp;   // uint: clamp the rounded y to [clamp_lo, clamp_hi]
  float clamp_lo, clamp_hi;
  const uint32_t* random;  // sr: one word per element, or nullptr
  // ~sr8 / ~sr16 (docs/conventions.md §43): instead of `random`, the Philox output itself, element
  // i's R = random_bits bits at bytes [i R/8, (i + 1) R/8) (little-endian), or nullptr.
  const uint8_t* random_bytes = nullptr;
  int random_bits = 0;
  // Every input of the span is finite (its group's amax was): with a nonzero divisor / finite
  // multiplier no y is NaN, and the sr_hoistable loop leaves out its canonical-NaN select.
  bool finite_input = false;
  bool stream;       // non-temporal stores (large out-of-place outputs: no read-for-ownership)
  int64_t prefetch_ahead;  // floats ahead of the input to prefetch while computing (0: none)
};

inline bool is_exact_pow2_reciprocal(float s) {
  if (!(s > 0) || !std::isfinite(s)) return false;
  const uint32_t b = std::bit_cast<uint32_t>(s);
  return (b & 0x7fffffu) == 0 && s >= 0x1p-126f && s <= 0x1p126f;
}

// The element job of one group given its scale.
inline row_job make_job(const format& f, const grid_params& g, const group_scale& gs, bool unscaled) {
  row_job job{};
  job.scaled = f.gran != granularity::none;
  job.scale = unscaled ? 1.0f : gs.scale;
  job.divisor = gs.scale;
  job.use_multiplier = is_exact_pow2_reciprocal(gs.scale);
  // 2^-k of a scale 2^k (-126 <= k <= 126), from the bits: exact, no division.
  job.multiplier = job.use_multiplier ? std::bit_cast<float>(uint32_t{254u << 23} - (std::bit_cast<uint32_t>(gs.scale) & 0x7f800000u)) : 0.0f;
  if (f.element.kind == element_kind::uint_asym) {
    job.uint_clamp = true;
    const int32_t z = job.scaled ? gs.zero_point : 0;
    job.clamp_lo = static_cast<float>(-z);  // +0 when z = 0 (integers have no -0)
    job.clamp_hi = g.max_value - static_cast<float>(z);
  }
  if (f.named == preset::q8_0) {  // ggml: roundf(x * (1/d)) (the caller rounds rna), then * d
    job.use_multiplier = true;
    job.multiplier = gs.multiplier;
  }
  return job;
}

// Everything a row needs besides its data (one per call).
struct row_plan {
  const format* f;
  const grid_params* grid;
  const scale_context* sctx;
  int64_t group_cols;      // columns per scale group (the row for /c, /t and plain casts)
  bool want_minmax;
  group_scale tensor_gs;   // /t
  float tensor_scale;      // nvfp4
  bool unscaled;           // quantize(): leave values on the element grid
  bool stream;             // write aligned output vectors with non-temporal stores
  bool rows_backward;      // rows are visited back to front (a second pass): prefetch the row before
  bool batch;              // groups' scales can be computed N groups at a time (BatchScales)
  int batch_preset;        // 0 generic (scale_context::inline_rule), 1 nvfp4, 2 q8_0
  bool ggml_batch;         // q4_0/q5_0/q4_1/q5_1: N blocks' scales at a time (BatchGgmlScales)
  // sr: the Philox stream (seed, tensor id); the row kernel makes each chunk's draws just before using
  // them (the multiplies then overlap the memory stalls of the data, and stay in L1)
  uint64_t rng_seed, rng_tensor_id;
  int rng_bits;  // format::sr_bits: 0 the exact draw (docs/conventions.md §10), else §43's R-bit draw
};

// The SIMD path covers every format but these, which run the scalar per-value code explicitly.
inline bool simd_covers(const format& f) {
  if (f.power != 0) return false;
  if (f.rule == scale_rule::mse || f.rule == scale_rule::percentile) return false;
  if (f.element.kind == element_kind::lut &&
      (f.rounding != rounding_mode::rne || f.element.table.size() > grid_params::kMaxLut))
    return false;
  return true;
}

// The per-call state the fast kernels share (fake_quantize, fake_quantize_columns, quantize).
struct fast_call {
  grid_params grid;
  scale_context sctx;
  row_plan plan;
  // nvfp4 on its rows' own layout (keep_group_amax): the first pass (the tensor's finite amax)
  // also keeps the amax of the groups in its whole batches, row r's at group_amax + r *
  // amax_per_row, so that the second pass's batches do not take them again (the entries of a
  // row's last groups, which the second pass takes one at a time, are left unwritten).
  const int32_t* group_amax = nullptr;
  int64_t amax_per_row = 0;
  const int32_t* group_amax_of(int64_t r) const { return group_amax ? group_amax + r * amax_per_row : nullptr; }

  // The grid constants, the scale context and the row plan of f for a [rows, cols] tensor x;
  // /t and nvfp4 take their first pass over x here (scales_fast.cpp).
  fast_call(const format& f, const float* x, int64_t rows, int64_t cols, bool unscaled, uint64_t tensor_id,
            bool keep_group_amax = false);
  fast_call(const fast_call&) = delete;  // plan points into grid and sctx
  fast_call& operator=(const fast_call&) = delete;
};

// Formats whose fast kernels read the tensor twice: a per-tensor scale (/t) and nvfp4's tensor
// scale come from a first pass over the whole tensor.
inline bool has_first_pass(const format& f) { return f.gran == granularity::tensor || f.named == preset::nvfp4; }

// fn(r) for r in [0, rows) inside an OpenMP parallel region: each thread a contiguous block of
// rows (OpenMP's static schedule), walked front to back, or back to front (`backward`: a second
// pass that starts on the rows its thread's first pass read last, still in the caches).
template <class Fn>
inline void for_rows_in_team(int64_t rows, bool backward, int thread, int threads, Fn&& fn) {
  const int64_t q = rows / threads, rem = rows % threads;
  const int64_t r0 = thread * q + std::min<int64_t>(thread, rem), r1 = r0 + q + (thread < rem ? 1 : 0);
  if (backward)
    for (int64_t r = r1 - 1; r >= r0; --r) fn(r);
  else
    for (int64_t r = r0; r < r1; ++r) fn(r);
}

// The row kernel (fake_quantize_rows.cpp's FakeQuantRow on the chosen target) for the other units:
// row x of `cols` values into y under plan; index0 = the stochastic-rounding counter of x[0];
// scales / zero_points receive each group's (quantize), group_amax = the nvfp4 first pass's
// amax bits of the row's batched groups (or nullptr).
void fake_quant_row(const float* x, float* y, size_t cols, const row_plan& plan, uint64_t index0, float* scales,
                    int32_t* zero_points, const int32_t* group_amax);

}  // namespace lowbit::detail

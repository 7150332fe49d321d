// Fast quantize / dequantize / fake-quantize: Highway SIMD with dynamic dispatch, OpenMP over rows.
// Must equal quantize_ref.cpp bit for bit on every input (tests/kernels/test_differential.cpp).
//
// The element rounding works on the float32 bit pattern of y = x / s (one lane = one value):
//   p     = unbiased exponent of |y| (float32 subnormals: -126)
//   step  = 2^L, L = max(p, emin) - M for minifloats (emin with subnormals off below emin),
//           L = -frac for integers
//   s     = L - p + 23: how many float32 mantissa bits fall below the grid
//   s <= 0        y is on the grid already
//   1 <= s <= 23  truncate the low s bits of the pattern (rem), add 2^s if rounding up; the
//                 carry runs into the exponent field, which is exactly the next grid value
//   s >= 24       |y| < step: the neighbours are 0 and one step (a per-format constant)
// then saturation/overflow per policy, the sign, and NaN -> canonical NaN. Costs about 30
// integer ops per vector. Formats the SIMD path does not cover (power maps, LUT with directed
// or stochastic rounding, mse/percentile rules) call the scalar per-value code explicitly.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/quantize_fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/simd.hpp"
#include "lowbit/kernels/threads.hpp"

#ifndef LOWBIT_QUANTIZE_FAST_ONCE
#define LOWBIT_QUANTIZE_FAST_ONCE
namespace lowbit::detail {

// Per-format constants of the SIMD element rounding (computed once per call).
struct grid_params {
  int kind = 0;          // 0 minifloat, 1 integer (int/uint), 2 lut
  int32_t emin = 0, mbits = 0, bias = 0;
  int32_t below_log2step = 0;  // minifloat: L below emin (emin - M, or emin without subnormals)
  int32_t fixed_log2step = 0;  // integer: -frac
  bool m0_parity = false;      // M = 0 minifloat: lo's code parity is the exponent's
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
      g.e8_fast = e.ebits == 8 && e.bias == 127 && e.subnormals && g.saturate && e.mbits <= 22;
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
  bool batch;              // groups' scales can be computed N groups at a time (BatchScales)
  int batch_preset;        // 0 generic (scale_context::inline_rule), 1 nvfp4, 2 q8_0
  // sr: the Philox stream (seed, tensor id); the row kernel makes each chunk's draws just before using
  // them (the multiplies then overlap the memory stalls of the data, and stay in L1)
  uint64_t rng_seed, rng_tensor_id;
};

}  // namespace lowbit::detail
#endif  // LOWBIT_QUANTIZE_FAST_ONCE

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::grid_params;
using detail::row_job;
using detail::row_plan;

using DF = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<DF>;
using DU = hn::RebindToUnsigned<DF>;
using VF = hn::Vec<DF>;
using VI = hn::Vec<DI>;

// Partial vectors at the end of a span go through an aligned stack buffer: Highway 1.0.3's
// MaskedLoad on SSE4 is an aligned full-vector load, which faults on misaligned tails and reads
// past the end. Lanes beyond `count` read as 0.
template <class D, typename T>
HWY_INLINE hn::Vec<D> LoadTail(D d, const T* p, size_t count) {
  HWY_ALIGN T buf[hn::MaxLanes(D())] = {};
  std::memcpy(buf, p, count * sizeof(T));
  return hn::Load(d, buf);
}
template <class D, typename T>
HWY_INLINE void StoreTail(D d, hn::Vec<D> v, T* p, size_t count) {
  HWY_ALIGN T buf[hn::MaxLanes(D())];
  hn::Store(v, d, buf);
  std::memcpy(p, buf, count * sizeof(T));
}

// Magnitude round-up decision of each mode, from rem vs half and the parity of lo's code.
template <rounding_mode kMode>
HWY_INLINE hn::Mask<DI> RoundUp(DI di, VI rem, VI half, VI lo_odd, hn::Mask<DI> negative, hn::Mask<DI> sr_up) {
  const VI zero = hn::Zero(di);
  if constexpr (kMode == rounding_mode::rne)
    return hn::Or(hn::Gt(rem, half), hn::And(hn::Eq(rem, half), hn::Ne(lo_odd, zero)));
  else if constexpr (kMode == rounding_mode::rna)
    return hn::Not(hn::Lt(rem, half));
  else if constexpr (kMode == rounding_mode::rtz)
    return hn::Lt(rem, zero);  // never
  else if constexpr (kMode == rounding_mode::up)
    return hn::AndNot(negative, hn::Ne(rem, zero));
  else if constexpr (kMode == rounding_mode::down)
    return hn::And(negative, hn::Ne(rem, zero));
  else if constexpr (kMode == rounding_mode::odd)
    return hn::And(hn::Ne(rem, zero), hn::Eq(lo_odd, zero));
  else
    return sr_up;
}

// y rounded onto a minifloat or integer grid (no scale), as float; see the file comment.
template <rounding_mode kMode>
HWY_INLINE VF RoundToGrid(DF df, VF y, VF u, const grid_params& g) {
  const DI di;
  const VI bits = hn::BitCast(di, y);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI ab = hn::And(bits, abs_mask);
  const VI sign = hn::AndNot(abs_mask, bits);
  const auto negative = hn::Ne(sign, hn::Zero(di));
  const VI one = hn::Set(di, 1);
  const VI ef = hn::ShiftRight<23>(ab);
  const VI p = hn::Sub(hn::Max(ef, one), hn::Set(di, 127));
  VI log2step;
  if (g.kind == 0) {
    const auto below = hn::Lt(p, hn::Set(di, g.emin));
    log2step = hn::IfThenElse(below, hn::Set(di, g.below_log2step), hn::Sub(p, hn::Set(di, g.mbits)));
  } else {
    log2step = hn::Set(di, g.fixed_log2step);
  }
  const VI s = hn::Add(hn::Sub(log2step, p), hn::Set(di, 23));

  // 1 <= s <= 23: drop s mantissa bits of the pattern.
  const VI sc = hn::Min(hn::Max(s, one), hn::Set(di, 23));
  const VI unit = (one << sc);
  const VI mask = hn::Sub(unit, one);
  const VI rem = hn::And(ab, mask);
  const VI half = hn::ShiftRight<1>(unit);
  const VI mant = hn::Or(hn::And(ab, hn::Set(di, 0x7fffff)),
                         hn::IfThenElseZero(hn::Gt(ef, hn::Zero(di)), hn::Set(di, 0x800000)));
  VI lo_odd = hn::And((mant >> sc), one);
  if (g.kind == 0 && g.m0_parity) {
    const auto normal = hn::Not(hn::Lt(p, hn::Set(di, g.emin)));
    lo_odd = hn::IfThenElse(normal, hn::And(hn::Add(p, hn::Set(di, g.bias)), one), lo_odd);
  }
  hn::Mask<DI> sr_up = hn::Lt(one, one), sr_up_tiny = sr_up;
  const VF ay = hn::BitCast(df, ab);
  if constexpr (kMode == rounding_mode::sr) {
    // On the signed value (docs/conventions.md §10): for y >= 0, t = rem * 2^-s (exact) or |y| / step below
    // the grid, and the magnitude goes up iff u < t; for y < 0, t = (unit - rem) * 2^-s or
    // (step - |y|) / step, and the magnitude goes up iff not u < t.
    const VF inv_unit = hn::BitCast(df, hn::ShiftLeft<23>(hn::Sub(hn::Set(di, 127), sc)));
    const VI rem_signed = hn::IfThenElse(negative, hn::Sub(unit, rem), rem);
    const VF t = hn::Mul(hn::ConvertTo(df, rem_signed), inv_unit);
    sr_up = hn::Xor(hn::RebindMask(di, hn::Lt(u, t)), negative);
    const VF step = hn::Set(df, g.tiny_step);
    const VF t_tiny = hn::Div(hn::IfThenElse(hn::RebindMask(df, negative), hn::Sub(step, ay), ay), step);
    sr_up_tiny = hn::Xor(hn::RebindMask(di, hn::Lt(u, t_tiny)), negative);
  }
  const auto up = RoundUp<kMode>(di, rem, half, lo_odd, negative, sr_up);
  const VI res_pattern = hn::Add(hn::AndNot(mask, ab), hn::IfThenElseZero(up, unit));

  // s >= 24: neighbours 0 and tiny_step; rem > half iff s == 24 and |y| is above 2^p.
  const auto s24 = hn::Eq(s, hn::Set(di, 24));
  const auto ef_pos = hn::Gt(ef, hn::Zero(di));
  const VI frac_bits = hn::And(ab, hn::Set(di, 0x7fffff));
  const auto gt_half = hn::And(hn::And(s24, ef_pos), hn::Ne(frac_bits, hn::Zero(di)));
  const auto eq_half = hn::And(hn::And(s24, ef_pos), hn::Eq(frac_bits, hn::Zero(di)));
  // Encode gt/eq as rem/half numbers so that RoundUp serves both regions: rem = 2 (gt), 1 (eq),
  // 0 < rem < 1 is impossible, so use rem = 1 (nonzero, below half = 2) for "inexact, below".
  const VI two = hn::Set(di, 2);
  const VI rem_tiny = hn::IfThenElse(gt_half, hn::Set(di, 3),
                                     hn::IfThenElse(eq_half, two, hn::IfThenElseZero(hn::Ne(ab, hn::Zero(di)), one)));
  const auto up_tiny = RoundUp<kMode>(di, rem_tiny, two, hn::Zero(di), negative, sr_up_tiny);
  const VI res_tiny = hn::IfThenElseZero(up_tiny, hn::Set(di, g.tiny_step_bits));

  VI res = hn::IfThenElse(hn::Gt(s, hn::Set(di, 23)), res_tiny,
                          hn::IfThenElse(hn::Lt(s, one), ab, res_pattern));

  // Overflow: saturate, or Inf/NaN for a rounding away from zero (and for Inf inputs).
  const VI max_bits = hn::Set(di, g.max_bits);
  const auto over = hn::Gt(res, max_bits);
  if (g.saturate) {
    res = hn::IfThenElse(over, max_bits, res);
  } else {
    const auto inf_in = hn::Eq(ab, hn::Set(di, 0x7f800000));
    hn::Mask<DI> toward_zero;
    if constexpr (kMode == rounding_mode::rtz || kMode == rounding_mode::odd) toward_zero = hn::Eq(one, one);
    else if constexpr (kMode == rounding_mode::up) toward_zero = negative;
    else if constexpr (kMode == rounding_mode::down) toward_zero = hn::Not(negative);
    else toward_zero = hn::Lt(one, one);
    const auto special = hn::And(over, hn::Or(inf_in, hn::Not(toward_zero)));
    res = hn::IfThenElse(over, hn::IfThenElse(special, hn::Set(di, g.special_bits), max_bits), res);
  }
  VI out_sign = sign;
  if (!g.signed_zero) out_sign = hn::IfThenZeroElse(hn::Eq(res, hn::Zero(di)), sign);
  VI out = hn::Or(res, out_sign);
  // NaN inputs, and NaN results of overflow, become the canonical NaN.
  const auto nan = hn::Or(hn::Gt(ab, hn::Set(di, 0x7f800000)), hn::Gt(res, hn::Set(di, 0x7f800000)));
  out = hn::IfThenElse(nan, hn::Set(di, 0x7fc00000), out);
  return hn::BitCast(df, out);
}

// Nearest table entry, ties to the even index (rne only).
HWY_INLINE VF RoundToTable(DF df, VF y, const grid_params& g) {
#if HWY_TARGET != HWY_SCALAR
  if (hn::Lanes(df) >= 16) {
    // Binary search: idx counts the thresholds below y, four permute + compare steps.
    const DI di;
    const VF thr = hn::LoadU(df, g.lut_thr.data());
    VI idx = hn::Zero(di);
    for (int bit = 8; bit >= 1; bit /= 2) {
      const VF t = hn::TableLookupLanes(thr, hn::IndicesFromVec(df, hn::Add(idx, hn::Set(di, bit - 1))));
      idx = hn::Add(idx, hn::IfThenElseZero(hn::RebindMask(di, hn::Gt(y, t)), hn::Set(di, bit)));
    }
    const VF v = hn::TableLookupLanes(hn::LoadU(df, g.lut_values.data()), hn::IndicesFromVec(df, idx));
    return hn::IfThenElse(hn::Eq(y, y), v, hn::Set(df, canonical_nan()));
  }
#endif
  VF v = hn::Set(df, g.lut_values[0]);
  for (int i = 0; i + 1 < g.lut_n; ++i) {
    const auto take = hn::Gt(y, hn::Set(df, g.lut_thr[static_cast<size_t>(i)]));
    v = hn::IfThenElse(take, hn::Set(df, g.lut_values[static_cast<size_t>(i + 1)]), v);
  }
  return hn::IfThenElse(hn::Eq(y, y), v, hn::Set(df, canonical_nan()));
}

// The step exponent L of |y|'s binade on a minifloat grid: p - M at and above emin, the
// constant below it (emin - M, or emin without subnormals).
HWY_INLINE VI MinifloatLog2Step(DI di, VF ay, const grid_params& g) {
  const VI p = hn::Sub(hn::Max(hn::ShiftRight<23>(hn::BitCast(di, ay)), hn::Set(di, 1)), hn::Set(di, 127));
  return hn::IfThenElse(hn::Lt(p, hn::Set(di, g.emin)), hn::Set(di, g.below_log2step), hn::Sub(p, hn::Set(di, g.mbits)));
}

// A rounded magnitude r given back the input's sign (none on a zero of a format without -0), and
// NaN inputs (|y| bits above Inf's) turned into the canonical NaN.
HWY_INLINE VF SignAndNan(DF df, VF r, VI bits, VI ab, const grid_params& g) {
  const DI di;
  VI out = hn::BitCast(di, r);
  VI sign = hn::AndNot(hn::Set(di, 0x7fffffff), bits);
  if (!g.signed_zero) sign = hn::IfThenZeroElse(hn::Eq(out, hn::Zero(di)), sign);
  out = hn::Or(out, sign);
  out = hn::IfThenElse(hn::Gt(ab, hn::Set(di, 0x7f800000)), hn::Set(di, 0x7fc00000), out);
  return hn::BitCast(df, out);
}

// RNE onto a minifloat grid (M > 0, saturating): (|y| + C) - C with C = 2^(L+23) rounds |y| to a
// multiple of the step 2^L in float32 arithmetic, ties to even multiples = even codes. About 16 ops.
HWY_INLINE VF RoundRneFast(DF df, VF y, const grid_params& g) {
  const DI di;
  const VI bits = hn::BitCast(di, y);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI ab = hn::And(bits, abs_mask);
  // Clamp first: saturation (Inf too) is then free and C stays in range; NaN is restored below.
  const VF ay = hn::Min(hn::BitCast(df, ab), hn::Set(df, g.max_value));
  const VI L = MinifloatLog2Step(di, ay, g);
  const VF c = hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(L, hn::Set(di, 150))));
  return SignAndNan(df, hn::Sub(hn::Add(ay, c), c), bits, ab, g);
}

// Stochastic rounding onto a minifloat or int grid (saturating): with step 2^L of |y|'s binade,
// q = |y| 2^-L, lo = floor(q), t = q - lo (the reference's (|y| - lo) / (hi - lo), exactly), and
// the magnitude goes up iff u < t. Clamping |y| to max first is exact here (max stays max).
HWY_INLINE VF RoundSrFast(DF df, VF y, VF u, const grid_params& g) {
  const DI di;
  const VI bits = hn::BitCast(di, y);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI ab = hn::And(bits, abs_mask);
  const VF ay = hn::Min(hn::BitCast(df, ab), hn::Set(df, g.max_value));
  const VI L = g.kind == 0 ? MinifloatLog2Step(di, ay, g) : hn::Set(di, g.fixed_log2step);
  const VF inv_step = hn::BitCast(df, hn::ShiftLeft<23>(hn::Sub(hn::Set(di, 127), L)));
  const VF step = hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(L, hn::Set(di, 127))));
  const VF q = hn::Mul(ay, inv_step);
  const VF lo = hn::Floor(q);
  // docs/conventions.md §10 on the signed value: t = q - lo for y >= 0, (lo + 1) - q for y < 0 (see above).
  const auto negative = hn::RebindMask(df, hn::Lt(bits, hn::Zero(di)));
  const VF t = hn::IfThenElse(negative, hn::Sub(hn::Add(lo, hn::Set(df, 1.0f)), q), hn::Sub(q, lo));
  const VF up = hn::IfThenElseZero(hn::Xor(hn::Lt(u, t), negative), hn::Set(df, 1.0f));
  return SignAndNan(df, hn::Mul(hn::Add(lo, up), step), bits, ab, g);
}

// RNE onto e8mM (bf16, tf32, ...): round the float32 pattern at a fixed bit, ties to even, then
// saturate (a carry into the Inf pattern is above max too).
HWY_INLINE VF RoundE8Fast(DF df, VF y, const grid_params& g) {
  const DI di;
  const VI bits = hn::BitCast(di, y);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI ab = hn::And(bits, abs_mask);
  const int s = g.e8_shift;
  const VI lsb = hn::And(hn::ShiftRightSame(ab, s), hn::Set(di, 1));
  VI r = hn::Add(hn::Add(ab, hn::Set(di, (1 << (s - 1)) - 1)), lsb);
  r = hn::And(r, hn::Set(di, ~((1 << s) - 1)));
  r = hn::Min(r, hn::Set(di, g.max_bits));
  VI out = hn::Or(r, hn::AndNot(abs_mask, bits));
  out = hn::IfThenElse(hn::Gt(ab, hn::Set(di, 0x7f800000)), hn::Set(di, 0x7fc00000), out);
  return hn::BitCast(df, out);
}

// RNE / RNA onto the integer grid k * 2^-frac: roundps, then the clamp; -0 becomes +0 (integers
// have no -0), NaN the canonical NaN.
template <rounding_mode kMode>
HWY_INLINE VF RoundIntFast(DF df, VF y, const grid_params& g, bool uint_clamp) {
  const VF ys = g.frac_scale != 1.0f ? hn::Mul(y, hn::Set(df, g.frac_scale)) : y;
  VF q = hn::Round(ys);
  if constexpr (kMode == rounding_mode::rna) {  // ties away: fix the ties roundps sent to even
    const VF t = hn::Trunc(ys);
    const auto tie = hn::Eq(hn::Abs(hn::Sub(ys, t)), hn::Set(df, 0.5f));
    q = hn::IfThenElse(tie, hn::Add(t, hn::CopySign(hn::Set(df, 1.0f), ys)), q);
  }
  if (g.frac_scale != 1.0f) q = hn::Mul(q, hn::Set(df, g.inv_frac_scale));
  if (!uint_clamp) q = hn::Min(hn::Max(q, hn::Set(df, -g.max_value)), hn::Set(df, g.max_value));
  q = hn::Add(q, hn::Zero(df));  // -0 -> +0
  return hn::IfThenElse(hn::Eq(ys, ys), q, hn::Set(df, canonical_nan()));
}

// Which element rounding a span uses, chosen once per span: the LUT compare chain, the integer
// roundps path, the minifloat (|y| + C) - C path, or the general bit-pattern path.
enum class span_path { table, int_fast, rne_fast, e8_fast, sr_fast, generic };
// How y is formed: x itself (plain cast), x * (1/s) (s a power of two: exact), or x / s.
enum class span_scale { none, mul, div };

template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE VF FakeQuantVec(DF df, VF x, VF u, const grid_params& g, VF mul, VF div, VF scale, bool uint_clamp,
                           VF clamp_lo, VF clamp_hi) {
  VF y = x;
  if constexpr (kScale == span_scale::mul) y = hn::Mul(x, mul);
  if constexpr (kScale == span_scale::div) y = hn::Div(x, div);
  VF q;
  if constexpr (kPath == span_path::table) q = RoundToTable(df, y, g);
  else if constexpr (kPath == span_path::int_fast) q = RoundIntFast<kMode>(df, y, g, uint_clamp);
  else if constexpr (kPath == span_path::rne_fast) q = RoundRneFast(df, y, g);
  else if constexpr (kPath == span_path::e8_fast) q = RoundE8Fast(df, y, g);
  else if constexpr (kPath == span_path::sr_fast) q = RoundSrFast(df, y, u, g);
  else q = RoundToGrid<kMode>(df, y, u, g);
  if (uint_clamp) {
    const VF c = hn::Min(hn::Max(q, clamp_lo), clamp_hi);
    q = hn::IfThenElse(hn::Eq(q, q), c, q);
  }
  if constexpr (kScale != span_scale::none) q = hn::Mul(q, scale);
  return q;
}

HWY_INLINE VF UniformFromWords(DF df, const uint32_t* w, size_t i, size_t count) {
  const DU du;
  const auto words = LoadTail(du, w + i, count);
  const DI di;
  return hn::Mul(hn::ConvertTo(df, hn::BitCast(di, hn::ShiftRight<8>(words))), hn::Set(df, 0x1p-24f));
}

// out[0..n) = fake-quantized in[0..n) under one scale (mul = 1/s, div = s, scale = what the
// rounded values are multiplied by: s, or 1 for quantize's unscaled values).
template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void ApplyScaleT(const float* HWY_RESTRICT in, float* HWY_RESTRICT out, size_t n, VF mul, VF div,
                            VF scale, const uint32_t* random, const row_job& job, const grid_params& g) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const VF clamp_lo = hn::Set(df, job.clamp_lo), clamp_hi = hn::Set(df, job.clamp_hi);
  const bool uint_clamp = job.uint_clamp, stream = job.stream;
  const int64_t ahead = job.prefetch_ahead;
  VF u = hn::Zero(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    // While this span computes from cache, pull the next one (the next row for /c) from memory.
    if (ahead) hwy::Prefetch(in + i + ahead);
    if constexpr (kMode == rounding_mode::sr) u = UniformFromWords(df, random, i, N);
    const VF r = FakeQuantVec<kMode, kPath, kScale>(df, hn::LoadU(df, in + i), u, g, mul, div, scale, uint_clamp,
                                                    clamp_lo, clamp_hi);
    if (stream && (reinterpret_cast<uintptr_t>(out + i) & (N * sizeof(float) - 1)) == 0) hn::Stream(r, df, out + i);
    else hn::StoreU(r, df, out + i);
  }
  if (i < n) {
    if constexpr (kMode == rounding_mode::sr) u = UniformFromWords(df, random, i, n - i);
    const VF r = FakeQuantVec<kMode, kPath, kScale>(df, LoadTail(df, in + i, n - i), u, g, mul, div, scale,
                                                    uint_clamp, clamp_lo, clamp_hi);
    StoreTail(df, r, out + i, n - i);
  }
}

template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void FakeQuantSpanT(const float* in, float* out, size_t n, const row_job& job, const grid_params& g) {
  const DF df;
  ApplyScaleT<kMode, kPath, kScale>(in, out, n, hn::Set(df, job.multiplier), hn::Set(df, job.divisor),
                                    hn::Set(df, job.scale), job.random, job, g);
}

template <rounding_mode kMode, span_path kPath>
HWY_INLINE void FakeQuantSpanScale(const float* in, float* out, size_t n, const row_job& job, const grid_params& g) {
  if (!job.scaled) FakeQuantSpanT<kMode, kPath, span_scale::none>(in, out, n, job, g);
  else if (job.use_multiplier) FakeQuantSpanT<kMode, kPath, span_scale::mul>(in, out, n, job, g);
  else FakeQuantSpanT<kMode, kPath, span_scale::div>(in, out, n, job, g);
}

// The elements of N consecutive groups of k under their batch scales (all multiply, or all
// divide).
template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void BatchApplyT(const float* in, float* out, size_t k, size_t groups, const float* batch_scale,
                            const float* batch_mult, const row_job& job, const grid_params& g, bool unscaled) {
  const DF df;
  for (size_t j = 0; j < groups; ++j) {
    const VF div = hn::Set(df, batch_scale[j]);
    ApplyScaleT<kMode, kPath, kScale>(in + j * k, out + j * k, k, hn::Set(df, batch_mult[j]), div,
                                      unscaled ? hn::Set(df, 1.0f) : div,
                                      job.random ? job.random + j * k : nullptr, job, g);
  }
}

// The span path of a format under a rounding (the fast paths exist for rne, and rna on integers).
template <rounding_mode kMode>
span_path path_of(const grid_params& g) {
  if (kMode == rounding_mode::rne && g.kind == 2) return span_path::table;
  if ((kMode == rounding_mode::rne || kMode == rounding_mode::rna) && g.int_fast) return span_path::int_fast;
  if (kMode == rounding_mode::rne && g.e8_fast) return span_path::e8_fast;
  if (kMode == rounding_mode::rne && g.fast_rne) return span_path::rne_fast;
  if (kMode == rounding_mode::sr && g.sr_fast) return span_path::sr_fast;
  return span_path::generic;
}

// fn(mode), mode a std::integral_constant of the rounding m: the one switch from a runtime
// rounding to the kernels' template parameter.
template <class Fn>
HWY_INLINE decltype(auto) WithRounding(rounding_mode m, Fn&& fn) {
  using R = rounding_mode;
  switch (m) {
    case R::rne: return fn(std::integral_constant<R, R::rne>{});
    case R::rna: return fn(std::integral_constant<R, R::rna>{});
    case R::rtz: return fn(std::integral_constant<R, R::rtz>{});
    case R::up: return fn(std::integral_constant<R, R::up>{});
    case R::down: return fn(std::integral_constant<R, R::down>{});
    case R::odd: return fn(std::integral_constant<R, R::odd>{});
    case R::sr: break;
  }
  return fn(std::integral_constant<R, R::sr>{});
}

// fn(path), path a std::integral_constant of path_of<kMode>(g): the one switch from a span path to
// the kernels' template parameter, instantiating only the pairs (kMode, path) that path_of returns.
template <rounding_mode kMode, class Fn>
HWY_INLINE decltype(auto) WithSpanPath(const grid_params& g, Fn&& fn) {
  using P = span_path;
  constexpr bool rne = kMode == rounding_mode::rne;
  switch (path_of<kMode>(g)) {
    case P::table:
      if constexpr (rne) return fn(std::integral_constant<P, P::table>{});
      break;
    case P::int_fast:
      if constexpr (rne || kMode == rounding_mode::rna) return fn(std::integral_constant<P, P::int_fast>{});
      break;
    case P::rne_fast:
      if constexpr (rne) return fn(std::integral_constant<P, P::rne_fast>{});
      break;
    case P::e8_fast:
      if constexpr (rne) return fn(std::integral_constant<P, P::e8_fast>{});
      break;
    case P::sr_fast:
      if constexpr (kMode == rounding_mode::sr) return fn(std::integral_constant<P, P::sr_fast>{});
      break;
    case P::generic: break;
  }
  return fn(std::integral_constant<P, P::generic>{});
}

// Group statistics: amax as the max of |x| bit patterns (exact, NaN-safe), and min/max.
// finite_only: ignore NaN/Inf (nvfp4's tensor amax).
HWY_INLINE void GroupStatsT(const float* HWY_RESTRICT x, size_t n, bool want_minmax, bool finite_only, simd_stats* st) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI inf_bits = hn::Set(di, 0x7f800000);
  VI amax = hn::Zero(di);
  VF mn = hn::Zero(df), mx = hn::Zero(df);
  size_t i = 0;
  auto body = [&](VF v) {
    VI a = hn::And(hn::BitCast(di, v), abs_mask);
    if (finite_only) a = hn::IfThenZeroElse(hn::Not(hn::Lt(a, inf_bits)), a);
    amax = hn::Max(amax, a);
    if (want_minmax) {
      mn = hn::Min(mn, v);
      mx = hn::Max(mx, v);
    }
  };
  for (; i + N <= n; i += N) body(hn::LoadU(df, x + i));
  if (i < n) body(LoadTail(df, x + i, n - i));  // lanes past the end read as 0
  st->amax_bits = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, amax)));
  if (want_minmax) {
    st->min = hn::GetLane(hn::MinOfLanes(df, mn));
    st->max = hn::GetLane(hn::MaxOfLanes(df, mx));
  }
}


// q4_0: y = x * id + 8.5, q = min(15, trunc(y)), value (q - 8) * d  (ggml quantize_row_q4_0_ref).
void FakeQuantQ4_0(const float* HWY_RESTRICT in, float* HWY_RESTRICT out, size_t n, float id, float d) {
  const DF df;
  const size_t N = hn::Lanes(df);
  auto f = [&](VF x) {
    const VF v = hn::Add(hn::Mul(x, hn::Set(df, id)), hn::Set(df, 8.5f));
    VF q = hn::Min(hn::Max(hn::Trunc(v), hn::Zero(df)), hn::Set(df, 15.0f));
    q = hn::IfThenElse(hn::Eq(v, v), q, hn::Set(df, 8.0f));  // see quantize_ref.cpp
    return hn::Mul(hn::Sub(q, hn::Set(df, 8.0f)), hn::Set(df, d));
  };
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(f(hn::LoadU(df, in + i)), df, out + i);
  if (i < n) StoreTail(df, f(LoadTail(df, in + i, n - i)), out + i, n - i);
}



#if HWY_TARGET != HWY_SCALAR
// Max over lanes of N vectors at once: lane j of the result is the max of v[j]. A tree of
// ConcatEven/ConcatOdd + Max (N - 1 steps of 3 ops) instead of N separate MaxOfLanes.
HWY_INLINE VI MaxOfLanesBatch(DI di, VI* v, size_t count) {
  for (size_t width = count; width > 1; width /= 2)
    for (size_t j = 0; j < width / 2; ++j)
      v[j] = hn::Max(hn::ConcatEven(di, v[2 * j + 1], v[2 * j]), hn::ConcatOdd(di, v[2 * j + 1], v[2 * j]));
  return v[0];
}

// The amax bits of N consecutive groups of k starting at p: lane j is group j's. kFinite: also
// max the finite |x| bits into *finite (lane-wise), from the same loads.
template <bool kFinite = false>
HWY_INLINE VI BatchGroupAmax(DI di, const float* p, size_t k, VI* partial, VI* finite = nullptr) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI inf_bits = hn::Set(di, 0x7f800000);
  auto add = [&](VI& m, VF v) {
    const VI a = hn::And(hn::BitCast(di, v), abs_mask);
    m = hn::Max(m, a);
    if constexpr (kFinite) *finite = hn::Max(*finite, hn::IfThenElseZero(hn::Lt(a, inf_bits), a));
  };
  for (size_t j = 0; j < N; ++j, p += k) {
    VI m = hn::Zero(di);
    size_t i = 0;
    for (; i + N <= k; i += N) add(m, hn::LoadU(df, p + i));
    if (i < k) add(m, LoadTail(df, p + i, k - i));
    partial[j] = m;
  }
  return MaxOfLanesBatch(di, partial, N);
}

// (|v| + C) - C onto a minifloat grid, vectorised, for non-negative v: ties to even. Used for
// the block scales of nvfp4 (E4M3) and q8_0 (fp16).
HWY_INLINE VF RoundScaleGrid(DF df, VF v, int emin, int mbits) {
  const DI di;
  const VI p = hn::Sub(hn::Max(hn::ShiftRight<23>(hn::BitCast(di, v)), hn::Set(di, 1)), hn::Set(di, 127));
  const VI L = hn::IfThenElse(hn::Lt(p, hn::Set(di, emin)), hn::Set(di, emin - mbits), hn::Sub(p, hn::Set(di, mbits)));
  const VF c = hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(L, hn::Set(di, 150))));
  return hn::Sub(hn::Add(v, c), c);
}

// nvfp4 (docs/formats.md §1.3) and q8_0 block scales of N groups, vectorised: the same float operations
// as choose_scale. `mult` receives 1/d for q8_0 (ggml multiplies by it), 0 for nvfp4 (divide).
HWY_INLINE bool BatchScalesPreset(DF df, VI amax_bits, const row_plan& plan, float* scale, float* stored,
                                  float* mult) {
  const DI di;
  if (!hn::AllFalse(di, hn::Gt(amax_bits, hn::Set(di, 0x7f7fffff)))) return false;  // NaN/Inf: per group
  const VF amax = hn::BitCast(df, amax_bits);
  if (plan.batch_preset == 1) {
    const VF ts = hn::Set(df, plan.tensor_scale);
    const VF ratio = hn::Min(hn::Max(hn::Div(hn::Div(amax, hn::Set(df, 6.0f)), ts), hn::Set(df, 0x1p-6f)),
                             hn::Set(df, 448.0f));
    const VF sq = RoundScaleGrid(df, ratio, -6, 3);  // E4M3: ratio >= 2^-6 is normal, <= 448
    hn::Store(sq, df, stored);
    hn::Store(hn::Mul(ts, sq), df, scale);
    hn::Store(hn::Zero(df), df, mult);
    return true;
  }
  const VF d = hn::Div(amax, hn::Set(df, 127.0f));
  const auto nz = hn::Ne(d, hn::Zero(df));
  const VF id = hn::IfThenElseZero(nz, hn::Div(hn::Set(df, 1.0f), d));
  if (!hn::AllFalse(df, hn::Gt(id, hn::Set(df, 3.4e38f)))) return false;  // 1/d = Inf: per group
  hn::Store(id, df, mult);
  if (!hn::AllFalse(df, hn::Gt(d, hn::Set(df, 65504.0f)))) return false;  // fp16 overflow: per group
  const VF d16 = hn::Min(RoundScaleGrid(df, d, -14, 10), hn::Set(df, INFINITY));
  if (!hn::AllFalse(df, hn::Gt(d16, hn::Set(df, 65504.0f)))) return false;
  hn::Store(d16, df, scale);
  hn::Store(d16, df, stored);
  return true;
}

// The scales of N groups from their amax bits, vectorised; the same arithmetic as
// fast_group_scale (tests/kernels/test_differential.cpp checks against the reference). Returns
// false (the caller takes the per-group path) when a group needs the general one: zero,
// subnormal or non-finite amax, or an exponent at the ends of the range.
HWY_INLINE bool BatchScales(DF df, VI amax_bits, const scale_context& ctx, float* scale, float* mult) {
  const DI di;
  if (!hn::AllFalse(di, hn::Lt(amax_bits, hn::Set(di, 0x00800000))) ||
      !hn::AllFalse(di, hn::Gt(amax_bits, hn::Set(di, 0x7f7fffff))))
    return false;
  const VF amax = hn::BitCast(df, amax_bits);
  if (ctx.inline_rule == scale_context::inline_max_minifloat) {  // round_scale_fast, vectorised
    const VF v = hn::Min(hn::Div(amax, hn::Set(df, ctx.elem_max)), hn::Set(df, ctx.s_max));
    const VF r = RoundScaleGrid(df, v, ctx.s_emin, ctx.s_mbits);
    hn::Store(hn::IfThenElse(hn::Gt(r, hn::Zero(df)), r, hn::Set(df, ctx.s_min)), df, scale);
    hn::Store(hn::Zero(df), df, mult);
    return true;
  }
  if (ctx.inline_rule == scale_context::inline_max_fp32) {
    VF sv = hn::Div(amax, hn::Set(df, ctx.elem_max));
    sv = hn::IfThenElse(hn::Gt(sv, hn::Zero(df)), hn::Min(sv, hn::Set(df, ctx.s_max)), hn::Set(df, ctx.s_min));
    hn::Store(sv, df, scale);
    hn::Store(hn::Zero(df), df, mult);  // not a power of two: divide
    return true;
  }
  VI e;
  const VI mant_mask = hn::Set(di, 0x7fffff);
  switch (ctx.f->rule) {
    case scale_rule::ocp: e = hn::Sub(hn::ShiftRight<23>(amax_bits), hn::Set(di, 127 + ctx.emax)); break;
    case scale_rule::ceil:
      e = hn::Sub(hn::ShiftRight<23>(amax_bits), hn::Set(di, 127 + ctx.emax));
      e = hn::Add(e, hn::IfThenElseZero(hn::Ne(hn::And(amax_bits, mant_mask), hn::Zero(di)), hn::Set(di, 1)));
      break;
    default: {  // rceil / even on r = amax / elem_max
      const VI rb = hn::BitCast(di, hn::Div(amax, hn::Set(df, ctx.elem_max)));
      if (!hn::AllFalse(di, hn::Lt(rb, hn::Set(di, 0x00800000)))) return false;
      e = hn::Sub(hn::ShiftRight<23>(rb), hn::Set(di, 127));
      const VI m = hn::And(rb, mant_mask);
      const auto up = ctx.f->rule == scale_rule::rceil ? hn::Ne(m, hn::Zero(di)) : hn::Gt(m, hn::Set(di, 0x3504F3));
      e = hn::Add(e, hn::IfThenElseZero(up, hn::Set(di, 1)));
    }
  }
  if (ctx.k_overflow_nan && !hn::AllFalse(di, hn::Gt(e, hn::Set(di, ctx.k_max)))) return false;
  e = hn::Min(hn::Max(e, hn::Set(di, ctx.k_min)), hn::Set(di, ctx.k_max));
  if (!hn::AllFalse(di, hn::Lt(e, hn::Set(di, -126))) || !hn::AllFalse(di, hn::Gt(e, hn::Set(di, 126)))) return false;
  hn::Store(hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(e, hn::Set(di, 127)))), df, scale);
  hn::Store(hn::BitCast(df, hn::ShiftLeft<23>(hn::Sub(hn::Set(di, 127), e))), df, mult);
  return true;
}
#endif

// The stochastic-rounding draws of a row's elements [c, c + n), made a chunk (>= 1024 elements)
// at a time into a thread-local buffer (element i of the tensor uses Philox block i/4, word i%4).
class RowDraws {
 public:
  RowDraws(const row_plan& plan, uint64_t index0, size_t cols) : plan_(plan), index0_(index0), cols_(cols) {}
  const uint32_t* at(size_t c, size_t n) {
    if (base_ && c >= begin_ && c + n <= end_) return base_ + (c - begin_);
    thread_local std::vector<uint32_t> buf;
    begin_ = c;
    end_ = std::min(cols_, c + std::max<size_t>(n, 1024));
    buf.resize(end_ - begin_);
    random_words(plan_.rng_seed, plan_.rng_tensor_id, index0_ + begin_, end_ - begin_, buf.data());
    base_ = buf.data();
    return base_;
  }

 private:
  const row_plan& plan_;
  uint64_t index0_;
  size_t cols_, begin_ = 0, end_ = 0;
  const uint32_t* base_ = nullptr;
};

// One row: per group, the statistics (SIMD), the scale (inline for the common rules, else the
// scalar choose_scale), the elements. `scales`/`zero_points` receive each group's stored scale
// (quantize), or are nullptr. The grid constants are a local copy so that they stay in registers.
template <rounding_mode kMode, span_path kPath>
HWY_NOINLINE void FakeQuantRowPath(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, size_t cols,
                                   const row_plan& plan, const grid_params g, uint64_t index0, float* scales,
                                   int32_t* zero_points, const int32_t* group_amax) {
  const format& f = *plan.f;
  const size_t k = static_cast<size_t>(plan.group_cols);
  const bool q8 = f.named == preset::q8_0;
  RowDraws draws(plan, index0, cols);
  // The stochastic draws of [c, c + n), made here just before they are used (sr only).
  auto draws_for = [&](size_t c, size_t n) -> const uint32_t* {
    if constexpr (kMode == rounding_mode::sr) return draws.at(c, n);
    return nullptr;
  };
  size_t c0 = 0, gi = 0;
#if HWY_TARGET != HWY_SCALAR
  if (plan.batch) {
    // N groups at a time: their statistics, one vectorised scale computation, then the elements.
    const DF df;
    const DI di;
    const size_t N = hn::Lanes(df);
    HWY_ALIGN float batch_scale[hn::MaxLanes(DF())];
    HWY_ALIGN float batch_stored[hn::MaxLanes(DF())];
    HWY_ALIGN float batch_mult[hn::MaxLanes(DF())];
    VI partial[hn::MaxLanes(DF())];
    row_job job = detail::make_job(f, g, group_scale{}, plan.unscaled);
    job.stream = plan.stream;
    job.prefetch_ahead = plan.stream ? 1024 : 0;
    for (; c0 + N * k <= cols; c0 += N * k, gi += N) {
      const VI amax_bits = group_amax ? hn::LoadU(di, group_amax + gi) : BatchGroupAmax(di, x + c0, k, partial);
      if (plan.batch_preset == 0) {
        if (!BatchScales(df, amax_bits, *plan.sctx, batch_scale, batch_mult)) break;
        hn::Store(hn::Load(df, batch_scale), df, batch_stored);
      } else if (!BatchScalesPreset(df, amax_bits, plan, batch_scale, batch_stored, batch_mult)) {
        break;
      }
      if (scales)
        for (size_t j = 0; j < N; ++j) scales[gi + j] = batch_stored[j];
      // A batch multiplies (power-of-two scales, q8_0's 1/d) or divides as a whole.
      bool all_mul = true;
      for (size_t j = 0; j < N; ++j) all_mul &= batch_mult[j] != 0.0f;
      job.random = draws_for(c0, N * k);
      if (q8)
        BatchApplyT<rounding_mode::rna, span_path::int_fast, span_scale::mul>(x + c0, y + c0, k, N, batch_scale,
                                                                             batch_mult, job, g, plan.unscaled);
      else if (all_mul)
        BatchApplyT<kMode, kPath, span_scale::mul>(x + c0, y + c0, k, N, batch_scale, batch_mult, job, g, plan.unscaled);
      else
        BatchApplyT<kMode, kPath, span_scale::div>(x + c0, y + c0, k, N, batch_scale, batch_mult, job, g, plan.unscaled);
    }
  }
#endif
  for (; c0 < cols; c0 += k, ++gi) {
    const size_t n = std::min(k, cols - c0);
    group_scale gs;
    if (f.gran == granularity::tensor) {
      gs = plan.tensor_gs;
    } else if (f.gran != granularity::none) {
      simd_stats ss;
      GroupStatsT(x + c0, n, plan.want_minmax, false, &ss);
      const bool nonfinite = ss.amax_bits >= 0x7f800000u;
      const float amax = std::bit_cast<float>(ss.amax_bits);
      if (nonfinite || !fast_group_scale(*plan.sctx, amax, &gs)) {
        group_stats st;
        st.nonfinite = nonfinite;
        st.amax = amax;
        st.min = ss.min;
        st.max = ss.max;
        gs = choose_scale(*plan.sctx, st, x + c0, static_cast<int64_t>(n), plan.tensor_scale);
      }
      if (scales) scales[gi] = gs.nonfinite ? canonical_nan() : gs.stored;
      if (zero_points) zero_points[gi] = gs.zero_point;
    }
    if (gs.nonfinite) {
      std::fill(y + c0, y + c0 + n, canonical_nan());
      continue;
    }
    if (f.named == preset::q4_0) {
      FakeQuantQ4_0(x + c0, y + c0, n, gs.multiplier, gs.scale);
      continue;
    }
    if (HWY_UNLIKELY(q8 && std::isinf(gs.multiplier))) {  // subnormal d: the reference's clamps
      for (size_t c = c0; c < c0 + n; ++c) {
        const uint32_t code = quantize_value_ref(f, x[c], gs, 0.0f);
        y[c] = plan.unscaled ? decode_ref(f.element, code) : dequantize_value_ref(f, code, gs);
      }
      continue;
    }
    row_job job = detail::make_job(f, g, gs, plan.unscaled);
    job.random = draws_for(c0, n);
    job.stream = plan.stream;
    job.prefetch_ahead = plan.stream ? (k >= 1024 ? static_cast<int64_t>(k) : 1024) : 0;
    if (q8) FakeQuantSpanScale<rounding_mode::rna, span_path::int_fast>(x + c0, y + c0, n, job, g);  // ggml's roundf
    else FakeQuantSpanScale<kMode, kPath>(x + c0, y + c0, n, job, g);
  }
}

void FakeQuantRow(const float* x, float* y, size_t cols, const row_plan& plan, uint64_t index0,
                  float* scales, int32_t* zero_points, const int32_t* group_amax) {
  struct flush_at_exit {  // non-temporal stores must be fenced before others read the output
    bool on;
    ~flush_at_exit() {
      if (on) hwy::FlushStream();
    }
  } flush{plan.stream};
  const grid_params& g = *plan.grid;
  WithRounding(plan.f->rounding, [&](auto mode) {
    WithSpanPath<mode()>(g, [&](auto path) {
      FakeQuantRowPath<mode(), path()>(x, y, cols, plan, g, index0, scales, zero_points, group_amax);
    });
  });
}

// ---- groups along rows (fake_quantize_columns) ---------------------------------------------------
// One tile: columns [c0, c0 + N) of rows [r0, r1), one group of each column. The statistics are a
// lane-wise max over the rows (no horizontal reduction), the N scales one vectorised computation
// (BatchScales / BatchScalesPreset, as the row kernel's batches), then every row vector is rounded
// under its lanes' scales. Returns false (the caller takes the gathered per-column path) when a
// scale needs the general code (zero, subnormal or non-finite amax, ...). Stochastic rounding:
// element (r, c) draws the transposed tensor's counter counters.of(c, rows) + r; each column's
// draws for [r0, r1) are made in one run and each row vector gathers its lanes' words.
template <rounding_mode kMode, span_path kPath>
HWY_NOINLINE bool FakeQuantColumnTilePath(const float* in, float* out, size_t rows, size_t cols, size_t r0, size_t r1,
                                          size_t c0, const row_plan& plan, const grid_params g,
                                          const sr_counters& counters) {
#if HWY_TARGET == HWY_SCALAR
  return false;
#else
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  VI m = hn::Zero(di);
  for (size_t r = r0; r < r1; ++r) m = hn::Max(m, hn::And(hn::BitCast(di, hn::LoadU(df, in + r * cols + c0)), abs_mask));
  HWY_ALIGN float scale[hn::MaxLanes(DF())];
  HWY_ALIGN float stored[hn::MaxLanes(DF())];
  HWY_ALIGN float mult[hn::MaxLanes(DF())];
  if (plan.batch_preset == 0) {
    if (!BatchScales(df, m, *plan.sctx, scale, mult)) return false;
  } else if (!BatchScalesPreset(df, m, plan, scale, stored, mult)) {
    return false;
  }
  const VF div = hn::Load(df, scale), mul = hn::Load(df, mult), zero = hn::Zero(df);
  // sr: words[j * n + i] is the draw of element (r0 + i, c0 + j).
  const size_t n = r1 - r0;
  thread_local std::vector<uint32_t> words;
  if constexpr (kMode == rounding_mode::sr) {
    words.resize(N * n);
    for (size_t j = 0; j < N; ++j)
      random_words(plan.rng_seed, plan.rng_tensor_id, counters.of(static_cast<int64_t>(c0 + j), static_cast<int64_t>(rows)) + r0,
                   n, words.data() + j * n);
  }
  const VI lane_offsets = hn::Mul(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(n)));
  auto each_row = [&](auto quantize_vec) {
    for (size_t r = r0; r < r1; ++r) {
      VF u = zero;
      if constexpr (kMode == rounding_mode::sr) {  // UniformFromWords of the gathered words
        const VI w = hn::GatherIndex(di, reinterpret_cast<const int32_t*>(words.data() + (r - r0)), lane_offsets);
        u = hn::Mul(hn::ConvertTo(df, hn::BitCast(di, hn::ShiftRight<8>(hn::BitCast(DU(), w)))), hn::Set(df, 0x1p-24f));
      }
      hn::StoreU(quantize_vec(hn::LoadU(df, in + r * cols + c0), u), df, out + r * cols + c0);
    }
  };
  if (plan.batch_preset == 2) {  // q8_0: ggml's roundf(x * (1/d)) * d
    each_row([&](VF x, VF) {
      return FakeQuantVec<rounding_mode::rna, span_path::int_fast, span_scale::mul>(df, x, zero, g, mul, div, div,
                                                                                  false, zero, zero);
    });
  } else if (hn::AllFalse(df, hn::Eq(mul, zero))) {  // every lane's scale a power of two: exact multiply
    each_row([&](VF x, VF u) {
      return FakeQuantVec<kMode, kPath, span_scale::mul>(df, x, u, g, mul, div, div, false, zero, zero);
    });
  } else {
    each_row([&](VF x, VF u) {
      return FakeQuantVec<kMode, kPath, span_scale::div>(df, x, u, g, mul, div, div, false, zero, zero);
    });
  }
  return true;
#endif
}

// `counters` describe the transposed tensor [cols, rows] (fake_quantize_columns).
bool FakeQuantColumnTile(const float* in, float* out, size_t rows, size_t cols, size_t r0, size_t r1, size_t c0,
                         const row_plan& plan, const sr_counters& counters) {
  const grid_params& g = *plan.grid;
  return WithRounding(plan.f->rounding, [&](auto mode) {
    return WithSpanPath<mode()>(g, [&](auto path) {
      return FakeQuantColumnTilePath<mode(), path()>(in, out, rows, cols, r0, r1, c0, plan, g, counters);
    });
  });
}

size_t LanesF32() { return hn::Lanes(DF()); }

// nvfp4's first pass over a row: the row's finite amax (the tensor scale) and the amax bits of
// the groups of k in whole batches of N (the second pass's batches read those instead of the
// groups; its per-group tail takes its own statistics). One read of the data.
void GroupAmaxRow(const float* HWY_RESTRICT x, size_t cols, size_t k, int32_t* HWY_RESTRICT group_amax,
                  uint32_t* finite_amax_bits) {
  size_t c0 = 0;
  uint32_t finite = 0;
#if HWY_TARGET != HWY_SCALAR
  const DI di;
  const size_t N = hn::Lanes(di);
  VI partial[hn::MaxLanes(DI())];
  VI finite_v = hn::Zero(di);
  for (size_t g = 0; c0 + N * k <= cols; c0 += N * k, g += N)
    hn::StoreU(BatchGroupAmax<true>(di, x + c0, k, partial, &finite_v), di, group_amax + g);
  finite = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, finite_v)));
#endif
  if (c0 < cols) {
    simd_stats st;
    GroupStatsT(x + c0, cols - c0, false, true, &st);
    finite = std::max(finite, st.amax_bits);
  }
  *finite_amax_bits = finite;
}

void GroupStats(const float* HWY_RESTRICT x, size_t n, bool want_minmax, bool finite_only, simd_stats* st) {
  GroupStatsT(x, n, want_minmax, finite_only, st);
}

// Dequantize a span of unpacked codes under one scale: value = table[code] * s, or for
// asymmetric formats (code - z) * s; a plain cast (scaled = false) is table[code] alone. The
// reference's float operations, a gather per vector.
void DequantSpan(const uint32_t* HWY_RESTRICT codes, const float* HWY_RESTRICT table, size_t n, float s, float z,
                 bool asym, bool scaled, float* HWY_RESTRICT out) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VF sv = hn::Set(df, s), zv = hn::Set(df, z);
  auto value = [&](VI c) {
    VF v = asym ? hn::Sub(hn::ConvertTo(df, c), zv) : hn::GatherIndex(df, table, c);
    return scaled ? hn::Mul(v, sv) : v;
  };
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(value(hn::BitCast(di, hn::LoadU(DU(), codes + i))), df, out + i);
  if (i < n) StoreTail(df, value(hn::BitCast(di, LoadTail(DU(), codes + i, n - i))), out + i, n - i);
}

// Codes of values already on a minifloat or integer grid (quantize's unscaled output): the
// bit-level inverse of decode, branch-free. Returns false if a value is NaN or Inf (the caller
// then encodes that span with the scalar encoder).
bool EncodeSpan(const float* HWY_RESTRICT vals, size_t n, const grid_params& g, int32_t zero_point,
                uint32_t* HWY_RESTRICT codes) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const int mbits = g.mbits;
  const VI abs_mask = hn::Set(di, 0x7fffffff), one = hn::Set(di, 1), zero = hn::Zero(di);
  auto code_of = [&](VF v, bool* special) -> VI {
    const VI bits = hn::BitCast(di, v);
    const VI a = hn::And(bits, abs_mask);
    if (!hn::AllFalse(di, hn::Gt(a, hn::Set(di, 0x7f7fffff)))) *special = true;
    if (g.kind == 2) {  // a table value's index: how many entries lie below it
      VI idx = zero;
      for (int t = 0; t + 1 < g.lut_n; ++t)
        idx = hn::Add(idx, hn::IfThenElseZero(hn::RebindMask(di, hn::Gt(v, hn::Set(df, g.lut_values[t]))), one));
      return idx;
    }
    if (g.kind == 1) {  // integers: code = v * 2^frac (two's complement, masked), or v + z (uint)
      const VI q = hn::ConvertTo(di, g.frac_scale != 1.0f ? hn::Mul(v, hn::Set(df, g.frac_scale)) : v);
      return zero_point ? hn::Add(q, hn::Set(di, zero_point)) : q;
    }
    const VI ef = hn::ShiftRight<23>(a);
    const VI p = hn::Sub(ef, hn::Set(di, 127));
    const VI normal = hn::Or(hn::ShiftLeftSame(hn::Add(p, hn::Set(di, g.bias)), mbits),
                             hn::ShiftRightSame(hn::And(a, hn::Set(di, 0x7fffff)), 23 - mbits));
    VI sub;
    if (g.subnormals) {
      // A subnormal element value m * 2^(emin - M): m from the float's significand by a shift.
      const VI mi = hn::Or(hn::And(a, hn::Set(di, 0x7fffff)), hn::IfThenElseZero(hn::Gt(ef, zero), hn::Set(di, 0x800000)));
      const VI sh = hn::Add(hn::Max(ef, one), hn::Set(di, -150 - g.emin + mbits));
      sub = hn::IfThenElse(hn::Lt(sh, zero), hn::BitCast(di, hn::BitCast(DU(), mi) >> hn::BitCast(DU(), hn::Neg(sh))),
                           mi << hn::Max(sh, zero));
    } else {
      sub = hn::Set(di, 1 << mbits);
    }
    const auto is_normal = hn::And(hn::Gt(ef, zero), hn::Not(hn::Lt(p, hn::Set(di, g.emin))));
    VI mag = hn::IfThenElse(is_normal, normal, sub);
    mag = hn::IfThenZeroElse(hn::Eq(a, zero), mag);
    const VI sign = hn::IfThenElseZero(hn::Lt(bits, zero), hn::Set(di, static_cast<int32_t>(g.sign_bit)));
    return hn::Or(mag, sign);
  };
  bool special = false;
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::BitCast(DU(), code_of(hn::LoadU(df, vals + i), &special)), DU(), codes + i);
  if (i < n) StoreTail(DU(), hn::BitCast(DU(), code_of(LoadTail(df, vals + i, n - i), &special)), codes + i, n - i);
  return !special;
}

#if HWY_TARGET != HWY_SCALAR
// Philox4x32-10 on kChains x N64 consecutive counter blocks [first, first + kChains N64), one
// block per 64-bit lane, into dst (4 words per block); false where the counter's low word would
// carry into c1 inside them (the lanes add 32-bit counters). vpmuludq multiplies each lane's low
// 32 bits into the full 64-bit product, so hi = product >> 32 and lo = product (its upper half is
// never read: every later multiply uses low halves only, and the output keeps low halves) — 6
// ops a round per chain. Independent chains keep enough multiplies in flight to cover their
// latency.
template <size_t kChains>
HWY_INLINE bool PhiloxChains(uint64_t first, const philox_stream& ps, uint32_t* HWY_RESTRICT dst) {
  const DU du;
  const hn::Repartition<uint64_t, DU> d64;
  const size_t N64 = hn::Lanes(d64);
  if ((first >> 32) != ((first + kChains * N64) >> 32)) return false;
  const auto m0 = hn::Set(du, 0xD2511F53u), m1 = hn::Set(du, 0xCD9E8D57u);
  hn::Vec<decltype(d64)> x0[kChains], x1[kChains], x2[kChains], x3[kChains];
  for (size_t v = 0; v < kChains; ++v) {
    x0[v] = hn::Add(hn::Iota(d64, 0), hn::Set(d64, uint64_t{static_cast<uint32_t>(first)} + v * N64));
    x1[v] = hn::Set(d64, first >> 32);
    x2[v] = hn::Set(d64, ps.c2);
    x3[v] = hn::Set(d64, ps.c3);
  }
  uint32_t k0 = ps.key[0], k1 = ps.key[1];
  for (int round = 0; round < 10; ++round) {
    const auto kv0 = hn::Set(d64, k0), kv1 = hn::Set(d64, k1);
    for (size_t v = 0; v < kChains; ++v) {
      const auto p0 = hn::MulEven(hn::BitCast(du, x0[v]), m0);
      const auto p1 = hn::MulEven(hn::BitCast(du, x2[v]), m1);
      x0[v] = hn::Xor3(hn::ShiftRight<32>(p1), x1[v], kv0);  // one vpternlog on AVX-512
      x1[v] = p1;
      x2[v] = hn::Xor3(hn::ShiftRight<32>(p0), x3[v], kv1);
      x3[v] = p0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // Block i's words (x0, x1, x2, x3)[i] go to dst[4i .. 4i+3]: pairs of words as 64-bit lanes.
  const auto low32 = hn::Set(d64, 0xffffffffull);
  for (size_t v = 0; v < kChains; ++v) {
    const auto w01 = hn::Or(hn::And(x0[v], low32), hn::ShiftLeft<32>(x1[v]));
    const auto w23 = hn::Or(hn::And(x2[v], low32), hn::ShiftLeft<32>(x3[v]));
    hn::StoreInterleaved2(w01, w23, d64, reinterpret_cast<uint64_t*>(dst + 4 * v * N64));
  }
  return true;
}
#endif

// Philox4x32-10 for N consecutive counter blocks at once; writes 4 words per block, in element
// order (block b's word w is element 4b + w), for blocks [block0, block0 + count).
void PhiloxBlocks(uint64_t block0, size_t count, const philox_stream& ps, uint32_t* HWY_RESTRICT out) {
#if HWY_TARGET == HWY_SCALAR
  for (size_t k = 0; k < count; ++k) ps.block(block0 + k, out + 4 * k);  // one lane: no 64-bit lanes
#else
  const hn::Repartition<uint64_t, DU> d64;
  const size_t N64 = hn::Lanes(d64);
  // 4 chains where there are 32 vector registers (4 ran 8% faster than 2 on Zen 4's AVX-512);
  // 2 where 16 hold the state and the constants (AVX2, SSE4, NEON).
  constexpr size_t kChains = HWY_MAX_BYTES >= 64 ? 4 : 2;
  size_t b = 0;
  // Whole steps of kChains x N64 blocks, then of N64 blocks (short calls: a column's group), then
  // the last partial vector through a buffer; a step whose counter carries into c1 stops the
  // vector loops, and the rest goes one block at a time.
  bool vector = true;
  while (vector && b + kChains * N64 <= count)
    if ((vector = PhiloxChains<kChains>(block0 + b, ps, out + 4 * b))) b += kChains * N64;
  while (vector && b + N64 <= count)
    if ((vector = PhiloxChains<1>(block0 + b, ps, out + 4 * b))) b += N64;
  if (vector && b < count) {
    HWY_ALIGN uint32_t tail[4 * hn::MaxLanes(d64)];
    if (PhiloxChains<1>(block0 + b, ps, tail)) {
      std::copy_n(tail, 4 * (count - b), out + 4 * b);
      b = count;
    }
  }
  for (; b < count; ++b) ps.block(block0 + b, out + 4 * b);  // counter carries, one at a time
#endif
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(FakeQuantRow);
HWY_EXPORT(GroupStats);
HWY_EXPORT(FakeQuantColumnTile);
HWY_EXPORT(LanesF32);
HWY_EXPORT(GroupAmaxRow);
HWY_EXPORT(PhiloxBlocks);
HWY_EXPORT(DequantSpan);
HWY_EXPORT(EncodeSpan);

namespace {
std::atomic<bool> g_use_ref{false};

using detail::grid_params;
using detail::row_plan;

// The SIMD path covers every format but these, which run the scalar per-value code explicitly.
bool simd_covers(const format& f) {
  if (f.power != 0) return false;
  if (f.rule == scale_rule::mse || f.rule == scale_rule::percentile) return false;
  if (f.element.kind == element_kind::lut &&
      (f.rounding != rounding_mode::rne || f.element.table.size() > detail::grid_params::kMaxLut))
    return false;
  return true;
}

// Below kParallelMinElements (threads.hpp) a kernel runs on the calling thread: waking a team
// costs more than the work (and on a loaded machine a spinning team can cost a scheduler slice
// per call).

// fn(r0, r1) on blocks of consecutive rows of a [rows, cols] tensor, one block per thread (the
// calling thread alone below kParallelMinElements): the row kernels that run scalar code.
template <class Fn>
void for_row_blocks(int64_t rows, int64_t cols, Fn&& fn) {
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per = (rows + nt - 1) / nt, r0 = std::min(rows, t * per), r1 = std::min(rows, r0 + per);
    if (r1 > r0) fn(r0, r1);
  }
}

// Statistics of the whole tensor, threaded (for /t, and nvfp4's finite amax).
group_stats tensor_stats_fast(const float* x, int64_t n, bool want_minmax, bool finite_only) {
  const int nt = n >= kParallelMinElements ? omp_get_max_threads() : 1;
  std::vector<simd_stats> part(static_cast<size_t>(nt));
  const int64_t chunk = (n + nt - 1) / std::max(1, nt);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    simd_stats s;
    if (e > b) HWY_DYNAMIC_DISPATCH(GroupStats)(x + b, static_cast<size_t>(e - b), want_minmax, finite_only, &s);
    part[static_cast<size_t>(t)] = s;
  }
  group_stats st;
  uint32_t amax_bits = 0;
  for (const auto& s : part) {
    amax_bits = std::max(amax_bits, s.amax_bits);
    st.min = std::min(st.min, s.min);
    st.max = std::max(st.max, s.max);
  }
  st.nonfinite = amax_bits >= 0x7f800000u;
  st.amax = std::bit_cast<float>(amax_bits);
  return st;
}

// The per-call state both fast kernels share.
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

  fast_call(const format& f, const float* x, int64_t rows, int64_t cols, bool unscaled, uint64_t tensor_id,
            bool keep_group_amax = false)
      : grid(detail::make_grid_params(f.element)), sctx(make_scale_context(f, /*reference=*/false)) {
    plan.f = &f;
    plan.rng_seed = f.seed;
    plan.rng_tensor_id = tensor_id;
    plan.grid = &grid;
    plan.sctx = &sctx;
    plan.group_cols = f.gran == granularity::group ? f.group_size : std::max<int64_t>(cols, 1);
    plan.want_minmax = f.element.kind == element_kind::uint_asym;
    plan.unscaled = unscaled;
    plan.stream = false;
    plan.batch_preset = f.named == preset::nvfp4 ? 1 : f.named == preset::q8_0 ? 2 : 0;
    plan.batch = f.gran == granularity::group && f.group_size <= 512 &&
                 (sctx.inline_rule != scale_context::inline_none || plan.batch_preset != 0);
    plan.tensor_scale = 1.0f;
    if (f.named == preset::nvfp4 && keep_group_amax) {  // (nvfp4's groups of 16 always batch)
      thread_local std::vector<int32_t> amax_buffer;  // reused by the calls of a thread
      amax_per_row = groups_per_row(f, cols);
      amax_buffer.resize(static_cast<size_t>(rows * amax_per_row));
      int32_t* const amax = amax_buffer.data();  // the calling thread's buffer (the team's are others)
      uint32_t finite_bits = 0;
#pragma omp parallel for schedule(static) reduction(max : finite_bits) if (rows * cols >= kParallelMinElements)
      for (int64_t r = 0; r < rows; ++r) {
        uint32_t row_bits = 0;
        HWY_DYNAMIC_DISPATCH(GroupAmaxRow)(x + r * cols, static_cast<size_t>(cols), static_cast<size_t>(plan.group_cols),
                                           amax + r * amax_per_row, &row_bits);
        finite_bits = std::max(finite_bits, row_bits);
      }
      group_amax = amax;
      plan.tensor_scale = nvfp4_tensor_scale(std::bit_cast<float>(finite_bits));
    } else if (f.named == preset::nvfp4) {
      plan.tensor_scale = nvfp4_tensor_scale(tensor_stats_fast(x, rows * cols, false, true).amax);
    }
    if (f.gran == granularity::tensor) {  // per-tensor scale: a first pass over the data
      const group_stats st = tensor_stats_fast(x, rows * cols, plan.want_minmax, false);
      plan.tensor_gs = choose_scale(sctx, st, x, rows * cols, plan.tensor_scale);
    }
  }
};

}  // namespace

void set_use_ref(bool v) { g_use_ref.store(v); }
bool use_ref() { return g_use_ref.load(); }

void random_words(uint64_t seed, uint64_t tensor_id, uint64_t first, size_t count, uint32_t* out) {
  if (use_ref()) return random_words_ref(seed, tensor_id, first, count, out);
  const philox_stream ps = philox_stream_of(seed, tensor_id);
  // Whole blocks go straight to out (block b holds elements 4b .. 4b+3); a partial block at
  // either end is made once and the words it covers copied.
  auto partial = [&](uint64_t block, uint64_t from, uint64_t to) {
    uint32_t words[4];
    ps.block(block, words);
    for (uint64_t i = from; i < to; ++i) out[i - first] = words[i & 3];
  };
  const uint64_t end = first + count;
  uint64_t i = first;
  if (count > 0 && (i & 3) != 0) {
    const uint64_t stop = std::min(end, (i | 3) + 1);
    partial(i >> 2, i, stop);
    i = stop;
  }
  const uint64_t whole = (end - i) >> 2;
  if (whole > 0) {
    HWY_DYNAMIC_DISPATCH(PhiloxBlocks)(i >> 2, static_cast<size_t>(whole), ps, out + (i - first));
    i += 4 * whole;
  }
  if (i < end) partial(i >> 2, i, end);
}

void fake_quantize(const float* in, float* out, int64_t rows, int64_t cols, const format& f, uint64_t tensor_id,
                   sr_counters counters) {
  if (use_ref() || rows < 0 || cols < 0) return fake_quantize_ref(in, out, rows, cols, f, tensor_id, counters);
  if (is_kquant(f))  // ggml's super-block searches (scalar, kquant.cpp), straight to values
    return for_row_blocks(rows, cols, [&](int64_t r0, int64_t r1) { kquant_fake_quantize_rows(f, in, out, cols, r0, r1); });
  if (!simd_covers(f)) {
    // Explicit scalar fallback (power maps, LUT with directed/stochastic rounding, mse/percentile
    // rules): the reference, a block of rows per thread. Scales over the whole tensor would be
    // read while other threads write in place: those run the reference on one thread.
    if (f.gran == granularity::tensor || f.named == preset::nvfp4) return fake_quantize_ref(in, out, rows, cols, f, tensor_id, counters);
    return for_row_blocks(rows, cols, [&](int64_t r0, int64_t r1) {
      fake_quantize_rows_ref(in, out, rows, cols, r0, r1, f, tensor_id, counters);
    });
  }
  fast_call call(f, in, rows, cols, false, tensor_id, /*keep_group_amax=*/true);
  // Outputs larger than the caches go around them (no read-for-ownership of the destination).
  constexpr int64_t kStreamBytes = int64_t{8} << 20;
  call.plan.stream = in != out && rows * cols * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      // In place is safe: each group's statistics are taken before its outputs are written.
      const float* x = in + r * cols;
      HWY_DYNAMIC_DISPATCH(FakeQuantRow)(x, out + r * cols, static_cast<size_t>(cols), call.plan,
                                         counters.of(r, cols), nullptr, nullptr, call.group_amax_of(r));
    }
  }
}

namespace {

// dst [cols, rows] = src [rows, cols]^T, tiles of 32 x 32 (dst != src).
void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
  for (int64_t t = 0; t < row_tiles * col_tiles; ++t) {
    const int64_t r0 = t / col_tiles * kTile, c0 = t % col_tiles * kTile;
    for (int64_t c = c0; c < std::min(cols, c0 + kTile); ++c)
      for (int64_t r = r0; r < std::min(rows, r0 + kTile); ++r) dst[c * rows + r] = src[r * cols + c];
  }
}

}  // namespace

void fake_quantize_columns(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                           uint64_t tensor_id, sr_counters counters) {
  if (use_ref() || rows < 0 || cols < 0) return fake_quantize_columns_ref(in, out, rows, cols, f, tensor_id, counters);
  if (rows == 0 || cols == 0) return;
  // One scale for every element, no draws: the values do not depend on the layout.
  if ((f.gran == granularity::tensor || f.gran == granularity::none) && f.rounding != rounding_mode::sr)
    return fake_quantize(in, out, rows, cols, f, tensor_id);
  if (is_kquant(f)) {  // ggml's searches run along super-blocks of 256: on an explicit transpose
    std::vector<float> t(static_cast<size_t>(rows * cols));
    transpose(in, rows, cols, t.data());
    fake_quantize(t.data(), t.data(), cols, rows, f, tensor_id, counters);
    transpose(t.data(), cols, rows, out);
    return;
  }
  // The formats the SIMD path does not cover: the scalar per-value code, which is the reference.
  if (!simd_covers(f)) return fake_quantize_columns_ref(in, out, rows, cols, f, tensor_id, counters);
  // The transposed tensor [cols, rows]: rows of `rows` elements, groups of k along them.
  const fast_call call(f, in, cols, rows, false, tensor_id);
  const int64_t k = call.plan.group_cols;
  const int64_t lanes = static_cast<int64_t>(HWY_DYNAMIC_DISPATCH(LanesF32)());
  // Tiles: the scale rules the row kernel's batches compute N at a time (per group or per
  // column), no zero points. The rest (q4_0, /t and plain casts with stochastic rounding, ...)
  // runs the row kernel on each column's group, gathered.
  const bool tiles = (f.gran == granularity::group || f.gran == granularity::row) &&
                     (call.sctx.inline_rule != scale_context::inline_none || call.plan.batch_preset != 0) &&
                     !call.plan.want_minmax && lanes > 1;
  const int64_t col_blocks = (cols + lanes - 1) / lanes, row_groups = (rows + k - 1) / k;
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  {
    std::vector<float> column;  // one column's group, gathered (the general path)
#pragma omp for schedule(static)
    for (int64_t t = 0; t < col_blocks * row_groups; ++t) {
      const int64_t c0 = (t % col_blocks) * lanes, r0 = (t / col_blocks) * k;
      const int64_t c1 = std::min(cols, c0 + lanes), r1 = std::min(rows, r0 + k);
      if (tiles && c1 - c0 == lanes &&
          HWY_DYNAMIC_DISPATCH(FakeQuantColumnTile)(in, out, static_cast<size_t>(rows), static_cast<size_t>(cols),
                                                    static_cast<size_t>(r0), static_cast<size_t>(r1),
                                                    static_cast<size_t>(c0), call.plan, counters))
        continue;
      // The row kernel on each column's group, gathered: element (r, c) is element (c, r) of the
      // transposed tensor (its stochastic-rounding counter: counters.of(c, rows) + r).
      column.resize(static_cast<size_t>(r1 - r0));
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = r0; r < r1; ++r) column[static_cast<size_t>(r - r0)] = in[r * cols + c];
        HWY_DYNAMIC_DISPATCH(FakeQuantRow)(column.data(), column.data(), column.size(), call.plan,
                                           counters.of(c, rows) + static_cast<uint64_t>(r0), nullptr, nullptr,
                                           nullptr);
        for (int64_t r = r0; r < r1; ++r) out[r * cols + c] = column[static_cast<size_t>(r - r0)];
      }
    }
  }
}

// ---- quantize to codes -------------------------------------------------------------------------------
namespace {

// The code of a value already on the element grid, for the spans EncodeSpan leaves (NaN/Inf):
// the exact codec, which gives a grid value its own code; uint adds its zero point.
uint32_t code_of_grid_value(const format& f, float v, int32_t zero_point) {
  if (f.element.kind == element_kind::uint_asym && !std::isnan(v))
    return static_cast<uint32_t>(v + static_cast<float>(f.gran == granularity::none ? 0 : zero_point));
  return encode_ref(f.element, v, rounding_mode::rne);
}

}  // namespace

quantized_tensor quantize(const float* x, int64_t rows, int64_t cols, const format& f, uint64_t tensor_id) {
  // Codes come from the same row kernel as fake_quantize with the scale left out (values on the
  // element grid); the cases the SIMD path does not cover, and q4_0, use the reference.
  if (use_ref() || (!is_kquant(f) && !simd_covers(f)) || f.named == preset::q4_0 || rows < 0 || cols < 0)
    return quantize_ref(x, rows, cols, f, tensor_id);
  quantized_tensor q = quantized_tensor::allocate(f, rows, cols);
  if (is_kquant(f)) {  // rows in parallel; each row's codes and scales are its own bytes
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
    for (int64_t r = 0; r < rows; ++r) kquant_quantize_rows(x, r, r + 1, q);
    return q;
  }
  const fast_call call(f, x, rows, cols, true, tensor_id, /*keep_group_amax=*/true);
  q.tensor_scale = call.plan.tensor_scale;
  const int64_t gpr = groups_per_row(f, cols);
  const bool asym = f.element.kind == element_kind::uint_asym;
  if (f.gran == granularity::tensor) {
    q.scales[0] = call.plan.tensor_gs.nonfinite ? canonical_nan() : call.plan.tensor_gs.stored;
    if (asym) q.zero_points[0] = call.plan.tensor_gs.zero_point;
  }
  const int64_t k = call.plan.group_cols;
  // SIMD encoding for codes of at most 31 bits; spans with NaN/Inf take the exact codec.
  const bool simd_encode = f.element.bits < 32;
  const uint32_t code_mask = f.element.bits >= 32 ? 0xffffffffu : (1u << f.element.bits) - 1u;
  std::atomic<bool> unstorable_nan{false};
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  {
    std::vector<uint32_t> row_codes(static_cast<size_t>(cols));
    std::vector<float> vals(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * cols;
      std::fill(row_codes.begin(), row_codes.end(), 0u);  // NaN-scale groups keep code 0
      const bool grouped = f.gran == granularity::group || f.gran == granularity::row;
      float* sc = grouped ? q.scales.data() + r * gpr : nullptr;
      int32_t* zp = grouped && asym ? q.zero_points.data() + r * gpr : nullptr;
      HWY_DYNAMIC_DISPATCH(FakeQuantRow)(xr, vals.data(), static_cast<size_t>(cols), call.plan,
                                         static_cast<uint64_t>(r * cols), sc, zp, call.group_amax_of(r));
      for (int64_t c0 = 0, g = 0; c0 < cols; c0 += k, ++g) {
        const int64_t c1 = std::min(cols, c0 + k);
        const float s = f.gran == granularity::none ? 1.0f : (grouped ? sc[g] : q.scales[0]);
        if (std::isnan(s)) continue;  // the NaN scale carries the group; codes stay 0
        const int32_t z = !asym || f.gran == granularity::none ? 0 : (grouped ? zp[g] : q.zero_points[0]);
        if (simd_encode && HWY_DYNAMIC_DISPATCH(EncodeSpan)(vals.data() + c0, static_cast<size_t>(c1 - c0), call.grid,
                                                           z, row_codes.data() + c0)) {
          if (f.element.kind == element_kind::int_sym)  // two's complement in `bits` bits
            for (int64_t c = c0; c < c1; ++c) row_codes[static_cast<size_t>(c)] &= code_mask;
          continue;
        }
        for (int64_t c = c0; c < c1; ++c) {
          const uint32_t code = code_of_grid_value(f, vals[static_cast<size_t>(c)], z);
          if (code == kNoCode && f.element.bits < 32) unstorable_nan.store(true);
          row_codes[static_cast<size_t>(c)] = code;
        }
      }
      pack_codes(row_codes.data(), cols, f.element.bits, q.codes.data() + r * q.row_bytes);
    }
  }
  if (unstorable_nan.load()) return quantize_ref(x, rows, cols, f, tensor_id);  // throws the reference's message
  return q;
}

void dequantize(const quantized_tensor& q, float* out) {
  if (use_ref() || q.fmt.power != 0 || q.fmt.element.bits > 16) return dequantize_ref(q, out);
  if (is_kquant(q.fmt)) {
#pragma omp parallel for schedule(static) if (q.rows * q.cols >= kParallelMinElements)
    for (int64_t r = 0; r < q.rows; ++r) kquant_dequantize_rows(q, r, r + 1, out);
    return;
  }
  const format& f = q.fmt;
  // Decode table of every code, then one multiply per value (the reference's float operations).
  std::vector<float> table(static_cast<size_t>(code_count(f.element)));
  for (size_t c = 0; c < table.size(); ++c) table[c] = decode_ref(f.element, static_cast<uint32_t>(c));
  const bool asym = f.element.kind == element_kind::uint_asym || f.named == preset::q4_0;
  const int64_t k = f.gran == granularity::group ? f.group_size : std::max<int64_t>(q.cols, 1);
#pragma omp parallel if (q.rows * q.cols >= kParallelMinElements)
  {
  std::vector<uint32_t> codes(static_cast<size_t>(q.cols));
#pragma omp for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) {
    float* y = out + r * q.cols;
    unpack_codes(q.codes.data() + r * q.row_bytes, q.cols, f.element.bits, codes.data());
    for (int64_t c0 = 0; c0 < q.cols; c0 += k) {
      const int64_t c1 = std::min(q.cols, c0 + k);
      const size_t n = static_cast<size_t>(c1 - c0);
      const uint32_t* cc = codes.data() + c0;
      if (f.gran == granularity::none) {
        HWY_DYNAMIC_DISPATCH(DequantSpan)(cc, table.data(), n, 1.0f, 0.0f, false, false, y + c0);
        continue;
      }
      const float stored = q.scale_at(r, c0);
      if (std::isnan(stored)) {
        std::fill(y + c0, y + c1, canonical_nan());
        continue;
      }
      const float s = f.named == preset::nvfp4 ? q.tensor_scale * stored : stored;
      const float z = asym ? static_cast<float>(q.zero_point_at(r, c0)) : 0.0f;
      HWY_DYNAMIC_DISPATCH(DequantSpan)(cc, table.data(), n, s, z, asym, true, y + c0);
    }
  }
  }
}

// ---- SIMD target control (tests) -------------------------------------------------------------------
std::vector<std::pair<int64_t, std::string>> simd_targets() {
  std::vector<std::pair<int64_t, std::string>> out;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) out.emplace_back(t, hwy::TargetName(t));
  return out;
}

void force_simd_target(int64_t target) {
  hwy::SetSupportedTargetsForTest(target);
  hwy::GetChosenTarget().DeInit();
}

}  // namespace lowbit
#endif  // HWY_ONCE

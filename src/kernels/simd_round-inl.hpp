// Element rounding of the fast kernels, one vector at a time, per target (Highway's -inl
// pattern): the row kernel (fake_quantize_rows.cpp) and the column tiles
// (fake_quantize_columns.cpp) round with these; they must equal the reference's encode/decode
// bit for bit (tests/kernels/test_differential.cpp).
//
// The element rounding works on the float32 bit pattern of y = x / s (one lane = one value):
//   p     = unbiased exponent of |y| (float32 subnormals: -126), the unit of the pattern's bits
//   e     = floor(log2 |y|): p, except for float32 subnormals when emin < -126 (deep_emin)
//   step  = 2^L, L = max(e, emin) - M for minifloats (emin with subnormals off below emin),
//           L = -frac for integers
//   s     = L - p + 23: how many float32 mantissa bits fall below the grid
//   s <= 0        y is on the grid already
//   1 <= s <= 23  truncate the low s bits of the pattern (rem), add 2^s if rounding up; the
//                 carry runs into the exponent field, which is exactly the next grid value
//   s >= 24       |y| < step: the neighbours are 0 and one step (a per-format constant)
// then saturation/overflow per policy, the sign, and NaN -> canonical NaN. Costs about 30
// integer ops per vector. Formats the SIMD path does not cover (power maps, LUT with directed

// Include guard (still compiled once per target)
#if defined(LOWBIT_KERNELS_SIMD_ROUND_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_KERNELS_SIMD_ROUND_INL_H_
#undef LOWBIT_KERNELS_SIMD_ROUND_INL_H_
#else
#define LOWBIT_KERNELS_SIMD_ROUND_INL_H_
#endif

#include <type_traits>

#include <hwy/highway.h>

#include "src/kernels/fast_plan.hpp"
#include "src/kernels/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

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

// floor(log2 |y|) of a magnitude pattern ab, float32 subnormals included: their mantissa m,
// converted to float exactly (m < 2^23), has exponent floor(log2 m), and |y| = m 2^-149. The
// exponent field's p otherwise. (Zero gives -276, below every emin.)
HWY_INLINE VI BinadeOf(DI di, VI ab, VI p) {
  const DF df;
  const VI ef = hn::ShiftRight<23>(ab);
  const VI m_exp = hn::ShiftRight<23>(hn::BitCast(di, hn::ConvertTo(df, hn::And(ab, hn::Set(di, 0x7fffff)))));
  return hn::IfThenElse(hn::Gt(ef, hn::Zero(di)), p, hn::Sub(m_exp, hn::Set(di, 127 + 149)));
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
  const VI e = g.deep_emin ? BinadeOf(di, ab, p) : p;
  if (g.kind == 0) {
    const auto below = hn::Lt(e, hn::Set(di, g.emin));
    log2step = hn::IfThenElse(below, hn::Set(di, g.below_log2step), hn::Sub(e, hn::Set(di, g.mbits)));
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
    const auto normal = hn::Not(hn::Lt(e, hn::Set(di, g.emin)));
    lo_odd = hn::IfThenElse(normal, hn::And(hn::Add(e, hn::Set(di, g.bias)), one), lo_odd);
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

// Nearest table entry, ties to the even index (rne only). kNan = false: y is not NaN.
template <bool kNan = true>
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
    if constexpr (!kNan) return v;
    return hn::IfThenElse(hn::Eq(y, y), v, hn::Set(df, canonical_nan()));
  }
  if constexpr (hn::MaxLanes(DF()) == 8) {
    // The same binary search where a permute reaches 8 entries (AVX2): step 1 against thr[7],
    // step 2 against thr[3] or thr[11] (a blend), then with j = 2 m1 + m2 step 3 against
    // thr[4j + 1], with j = 2j + m3 step 4 against thr[2j], and the entry is 2j + m4 (entry 2j
    // or 2j + 1, a blend): idx = 8 m1 + 4 m2 + 2 m3 + m4 as above (fast_plan.hpp's de-interleaved
    // copies of the tables). Half the operations of the compare chain below.
    const DI di;
    const auto m1 = hn::Gt(y, hn::Set(df, g.lut_thr[7]));
    const auto m2 = hn::Gt(y, hn::IfThenElse(m1, hn::Set(df, g.lut_thr[11]), hn::Set(df, g.lut_thr[3])));
    VI j = hn::Sub(hn::IfThenElseZero(hn::RebindMask(di, m1), hn::Set(di, 2)), hn::VecFromMask(di, hn::RebindMask(di, m2)));
    const auto m3 = hn::Gt(y, hn::TableLookupLanes(hn::LoadU(df, g.lut_thr_4j1.data()), hn::IndicesFromVec(df, j)));
    j = hn::Sub(hn::Add(j, j), hn::VecFromMask(di, hn::RebindMask(di, m3)));  // (a true mask is -1)
    const auto pair = hn::IndicesFromVec(df, j);
    const auto m4 = hn::Gt(y, hn::TableLookupLanes(hn::LoadU(df, g.lut_thr_2j.data()), pair));
    const VF v = hn::IfThenElse(m4, hn::TableLookupLanes(hn::LoadU(df, g.lut_values_2j1.data()), pair),
                                hn::TableLookupLanes(hn::LoadU(df, g.lut_values_2j.data()), pair));
    if constexpr (!kNan) return v;
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
  const VI ab = hn::BitCast(di, ay);
  VI p = hn::Sub(hn::Max(hn::ShiftRight<23>(ab), hn::Set(di, 1)), hn::Set(di, 127));
  if (g.deep_emin) p = BinadeOf(di, ab, p);
  return hn::IfThenElse(hn::Lt(p, hn::Set(di, g.emin)), hn::Set(di, g.below_log2step), hn::Sub(p, hn::Set(di, g.mbits)));
}

// A rounded magnitude r (sign bit clear) given back the input's sign (none on a zero of a format
// without -0), and NaN inputs (|y| bits above Inf's) turned into the canonical NaN (kNan; false
// where the caller knows y is not NaN).
template <bool kNan = true>
HWY_INLINE VF SignAndNan(DF df, VF r, VI bits, VI ab, const grid_params& g) {
  const DI di;
  VI out;
  if (g.signed_zero) {
    out = hn::BitCast(di, hn::CopySign(r, hn::BitCast(df, bits)));  // r | sign, one op on AVX-512
  } else {
    const VI mag = hn::BitCast(di, r);
    out = hn::Or(mag, hn::IfThenZeroElse(hn::Eq(mag, hn::Zero(di)), hn::AndNot(hn::Set(di, 0x7fffffff), bits)));
  }
  if constexpr (kNan) out = hn::IfThenElse(hn::Gt(ab, hn::Set(di, 0x7f800000)), hn::Set(di, 0x7fc00000), out);
  return hn::BitCast(df, out);
}

// RNE onto a minifloat grid (M > 0, saturating): (|y| + C) - C with C = 2^(L+23) rounds |y| to a
// multiple of the step 2^L in float32 arithmetic, ties to even multiples = even codes. About 12
// ops. kNan = false: y is known not to be NaN (the canonical-NaN select is left out).
template <bool kNan = true>
HWY_INLINE VF RoundRneFast(DF df, VF y, const grid_params& g) {
  const DI di;
  const VI bits = hn::BitCast(di, y);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI ab = hn::And(bits, abs_mask);
  // Clamp first: saturation (Inf too) is then free and C stays in range; NaN is restored below.
  const VF ay = hn::Min(hn::BitCast(df, ab), hn::Set(df, g.max_value));
  VI c_bits;
  if (g.subnormals && !g.deep_emin) {
    // C's pattern straight from |y|'s exponent field ef (3 ops instead of MinifloatLog2Step's 7,
    // the same value): L + 150 = max(ef, 1) - M + 23 at and above emin, emin + 127 - M + 23
    // below it, = max(ef, emin + 127) + 23 - M since emin >= -126 here; no carry out of the
    // exponent field (ay <= max, emax - M <= 103).
    const VI ef_bits = hn::And(hn::BitCast(di, ay), hn::Set(di, 0x7f800000));
    c_bits = hn::Add(hn::Max(ef_bits, hn::Set(di, (g.emin + 127) << 23)), hn::Set(di, (23 - g.mbits) << 23));
  } else {
    c_bits = hn::ShiftLeft<23>(hn::Add(MinifloatLog2Step(di, ay, g), hn::Set(di, 150)));
  }
  const VF c = hn::BitCast(df, c_bits);
  return SignAndNan<kNan>(df, hn::Sub(hn::Add(ay, c), c), bits, ab, g);
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
  // The biased step exponent L + 127 (MinifloatLog2Step's L, kept biased), then the step 2^L and
  // 2^-L from it: 2^-L's exponent field is 254 - (L + 127).
  VI biased_L;
  if (g.kind != 0) {
    biased_L = hn::Set(di, g.fixed_log2step + 127);
  } else if (g.deep_emin) {
    biased_L = hn::Add(MinifloatLog2Step(di, ay, g), hn::Set(di, 127));
  } else {
    const VI ef = hn::Max(hn::ShiftRight<23>(hn::BitCast(di, ay)), hn::Set(di, 1));  // p + 127
    biased_L = hn::IfThenElse(hn::Lt(ef, hn::Set(di, g.emin + 127)), hn::Set(di, g.below_log2step + 127),
                              hn::Sub(ef, hn::Set(di, g.mbits)));
  }
  const VI step_bits = hn::ShiftLeft<23>(biased_L);
  const VF step = hn::BitCast(df, step_bits);
  const VF inv_step = hn::BitCast(df, hn::Sub(hn::Set(di, 254 << 23), step_bits));
  const VF q = hn::Mul(ay, inv_step);
  const VF lo = hn::Floor(q);
  const VF lo1 = hn::Add(lo, hn::Set(df, 1.0f));
  // docs/conventions.md §10 on the signed value: t = q - lo for y >= 0, (lo + 1) - q for y < 0 (see above).
  const auto negative = hn::RebindMask(df, hn::Lt(bits, hn::Zero(di)));
  const VF t = hn::IfThenElse(negative, hn::Sub(lo1, q), hn::Sub(q, lo));
  const VF r = hn::IfThenElse(hn::Xor(hn::Lt(u, t), negative), lo1, lo);
  return SignAndNan(df, hn::Mul(r, step), bits, ab, g);
}

// RoundSrFast's grid constants for one span, made once so that the element loop keeps them in
// registers: read from grid_params inside the loop they were broadcast again after every store
// (a float store may alias the struct's floats), next to a branch per vector on the grid's kind.
// Covers the sr_fast grids whose step needs no per-format branch (sr_hoistable): the integers and
// the minifloats with subnormals and emin >= -126 (not deep_emin); the others take RoundSrFast.
struct sr_consts {
  VF max_value, neg_max_value;
  VI step_floor;   // see RoundSrHoisted
  VI step_shift;
};

// yes where v's sign bit is set, else no: IfNegativeThenElse (one blendv) on x86 from SSE4 on;
// Highway's SSSE3 version selects with and/andnot, which needs the whole lane set, so there and
// elsewhere the sign bit is broadcast first.
HWY_INLINE VF IfSignThenElse(VF v, VF yes, VF no) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_SSE4
  return hn::IfNegativeThenElse(v, yes, no);
#else
  const DF df;
  const DI di;
  return hn::IfThenElse(hn::MaskFromVec(hn::BitCast(df, hn::BroadcastSignBit(hn::BitCast(di, v)))), yes, no);
#endif
}

HWY_INLINE bool sr_hoistable(const grid_params& g) {
  return g.sr_fast && (g.kind == 1 || (g.kind == 0 && g.subnormals && !g.deep_emin));
}

// RoundSrHoisted's kCoarseDraw holds for R-bit draws (u a multiple of 2^-(R+1)) on a grid whose
// q = |y| / step stays below 2^(23 - R): minifloats q < 2^(M+1), integers q <= the largest code.
HWY_INLINE bool sr_coarse_draw(const grid_params& g, int draw_bits) {
  if (!sr_hoistable(g) || (draw_bits != 8 && draw_bits != 16)) return false;
  const float bound = draw_bits == 8 ? 0x1p15f : 0x1p7f;
  if (g.kind == 0) return g.mbits + 1 <= 23 - draw_bits;
  return g.max_value * g.frac_scale < bound;
}

HWY_INLINE sr_consts SrConsts(const grid_params& g) {
  const DF df;
  const DI di;
  sr_consts c;
  c.max_value = hn::Set(df, g.max_value);
  c.neg_max_value = hn::Set(df, -g.max_value);
  if (g.kind == 0) {
    c.step_floor = hn::Set(di, (g.emin + 127) << 23);
    c.step_shift = hn::Set(di, g.mbits << 23);
  } else {  // every |y| <= max has an exponent field below Inf's: the max is always the floor
    c.step_floor = hn::Set(di, 0x7f800000);
    c.step_shift = hn::Set(di, 0x7f800000 - ((g.fixed_log2step + 127) << 23));
  }
  return c;
}

// RoundSrFast (same value for every y, NaN included) on sr_hoistable grids, from sr_consts:
// - the step's pattern 2^L = max(ef, floor) - shift with ef = ay's exponent field (ay <= max):
//   minifloats: floor = (emin + 127) << 23, shift = M << 23, i.e. (max(ef, emin + 127) - M) << 23,
//   RoundSrFast's biased_L (below emin: emin - M = below_log2step, subnormals on; its max(ef, 1)
//   only matters under emin + 127 >= 1); integers: floor = Inf's field, above every ef, and
//   floor - shift = the fixed step's pattern.
// - the sign's selects read y's sign bit itself (IfSignThenElse: blendv on AVX2) and the
//   up/down decision's sign bit is (u < t) xor y's sign: RoundSrFast's negative mask and its Xor.
// - r * step >= 0 (r = floor(q) >= +0 or floor(q) + 1): the sign is or-ed in, and a format
//   without -0 (kSignedZero = g.signed_zero false) turns -0 into +0 by adding +0 (SignAndNan's
//   select on a zero magnitude).
// kCoarseDraw (the u of ~sr8 / ~sr16 on grids with q < 2^(23 - R), sr_coarse_draw): the decision
// and the select in one rounding, r = |floor(fl(u - q))| for y >= 0 and floor(fl(u + q)) for
// y < 0, the same r as RoundSrFast's (3 ops fewer, 7 cycles less latency from q to r on Zen 3).
// It is taken on the signed value: with ys = y clamped to [-max, max] (|ys| = ay, the same step)
// and qs = ys / step = -+q (exact), fl(qs - u) = -fl(u - qs) and ceil(-a) = -floor(a), so
// ceil(fl(qs - u)) = r for y >= 0 and -r for y < 0: r with y's sign, but for a zero r of a y >= 0
// (ceil of (-1, 0) is -0), whose sign bit the and with (y's sign | 0x7fffffff) clears (12 vector
// ops from y to the result instead of 15; 10 without -0). Where Ceil is emulated (SSSE3) the sign
// of its zero is not relied on: |out| with y's sign.
// Proof, with lo = floor(q), t = q - lo (exact), q in [2^e, 2^(e+1)), e <= 22 - R, and
// u = (2k + 1) 2^-(R+1) (docs/conventions.md §43), so u is a multiple of ulp(q) = 2^(e-23):
// - y >= 0, RoundSrFast: lo + [u < t]. v = q - u = lo + (t - u), t - u in (-1, 1), so
//   ceil(v) = lo + [u < t]. v is a multiple of 2^(e-23): for v >= 0 it is below 2^(e+1), hence
//   exact; for v < 0 (only when lo = 0) it lies in (-1, 0), and so does fl(v) (u - q <= u < 1,
//   and u - q >= u/2 > 0 unless Sterbenz makes it exact). So ceil(fl(v)) = ceil(v), and
//   fl(u - q) = -fl(q - u) gives |floor(fl(u - q))| = ceil(fl(v)) (floor of [0, 1) is +0).
// - y < 0, RoundSrFast: lo + [fl(lo + 1 - q) <= u] (magnitude up iff not u < t).
//   q >= 1/2: lo + 1 - q = 1 - t is a multiple of 2^-24 in (0, 1], exact; w = q + u = lo + t + u
//   is a multiple of 2^(e-23) (2^-24 for e = -1); below lo + 1 <= 2^(e+1) it is exact (so never
//   rounds up to lo + 1); at or above it, it is below lo + 2 - 2^(e-23) (t <= 1 - 2^(e-23),
//   u <= 1 - 2^-(R+1)) and rounds into [lo + 1, lo + 2). So floor(fl(w)) = lo + [t + u >= 1].
//   q < 1/2 (lo = 0; 1 - q may round): u is a multiple of 2^-23, so u + 2^-25, half-way between
//   u and the float above it, rounds to u (even), and fl(1 - q) <= u iff q + u >= 1 - 2^-25;
//   likewise 1 - 2^-25 lies half-way between 1 - 2^-24 and 1 and rounds to 1 (even), so
//   fl(q + u) >= 1 iff q + u >= 1 - 2^-25: the same condition.
// Tested in tests/kernels/test_stochastic_bits.cpp (RBitCoarseDecisionAtTheBoundaries).
// kNan = false: y is known not to be NaN.
template <bool kNan = true, bool kCoarseDraw = false, bool kSignedZero = true>
HWY_INLINE VF RoundSrHoisted(DF df, VF y, VF u, const sr_consts& c) {
  const DI di;
  const VI bits = hn::BitCast(di, y);
  if constexpr (kCoarseDraw) {
    const VF ys = hn::Min(hn::Max(y, c.neg_max_value), c.max_value);  // (y = -0 stays -0)
    const VI step_bits = hn::Sub(hn::Max(hn::And(hn::BitCast(di, ys), hn::Set(di, 0x7f800000)), c.step_floor), c.step_shift);
    const VF inv_step = hn::BitCast(df, hn::Sub(hn::Set(di, 254 << 23), step_bits));
    VF out = hn::Mul(hn::Ceil(hn::Sub(hn::Mul(ys, inv_step), u)), hn::BitCast(df, step_bits));
    if constexpr (kSignedZero) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_SSE4
      out = hn::And(out, hn::BitCast(df, hn::Or(bits, hn::Set(di, 0x7fffffff))));
#else  // (SSSE3's Ceil, without roundps, can return +0 for (-1, 0): y's sign or-ed into |out|)
      out = hn::Or(hn::Abs(out), hn::And(y, hn::Set(df, -0.0f)));
#endif
    } else {
      out = hn::Add(out, hn::Zero(df));  // -0 + +0 = +0
    }
    if constexpr (kNan) {
      const VI ab = hn::And(bits, hn::Set(di, 0x7fffffff));
      out = hn::IfThenElse(hn::RebindMask(df, hn::Gt(ab, hn::Set(di, 0x7f800000))), hn::Set(df, canonical_nan()), out);
    }
    return out;
  }
  const VI ab = hn::And(bits, hn::Set(di, 0x7fffffff));
  const VF ay = hn::Min(hn::BitCast(df, ab), c.max_value);
  const VI step_bits = hn::Sub(hn::Max(hn::And(hn::BitCast(di, ay), hn::Set(di, 0x7f800000)), c.step_floor), c.step_shift);
  const VF inv_step = hn::BitCast(df, hn::Sub(hn::Set(di, 254 << 23), step_bits));
  const VF q = hn::Mul(ay, inv_step);
  const VF lo = hn::Floor(q);
  const VF lo1 = hn::Add(lo, hn::Set(df, 1.0f));
  const VF t = IfSignThenElse(y, hn::Sub(lo1, q), hn::Sub(q, lo));
  const VF up = hn::Xor(hn::VecFromMask(df, hn::Lt(u, t)), y);  // sign bit: (u < t) xor negative
  const VF r = hn::Mul(IfSignThenElse(up, lo1, lo), hn::BitCast(df, step_bits));
  VF out = hn::Or(r, hn::And(y, hn::Set(df, -0.0f)));
  if constexpr (!kSignedZero) out = hn::Add(out, hn::Zero(df));  // -0 + +0 = +0
  if constexpr (kNan) out = hn::IfThenElse(hn::RebindMask(df, hn::Gt(ab, hn::Set(di, 0x7f800000))), hn::Set(df, canonical_nan()), out);
  return out;
}

// RNE onto e8mM (bf16, tf32, ...): round the float32 pattern at a fixed bit, ties to even, then
// saturate (a carry into the Inf pattern is above max too).
HWY_INLINE VF RoundE8Fast(DF df, VF y, const grid_params& g) {
  const DI di;
  const VI bits = hn::BitCast(di, y);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI ab = hn::And(bits, abs_mask);
  const int s = g.e8_shift;
  VI r = ab;
  if (s > 0) {  // (s = 0: fp32 onto itself)
    const VI lsb = hn::And(hn::ShiftRightSame(ab, s), hn::Set(di, 1));
    r = hn::Add(hn::Add(ab, hn::Set(di, (1 << (s - 1)) - 1)), lsb);
    r = hn::And(r, hn::Set(di, ~((1 << s) - 1)));
  }
  r = hn::Min(r, hn::Set(di, g.max_bits));
  VI out = hn::Or(r, hn::AndNot(abs_mask, bits));
  out = hn::IfThenElse(hn::Gt(ab, hn::Set(di, 0x7f800000)), hn::Set(di, 0x7fc00000), out);
  return hn::BitCast(df, out);
}

// RNE / RNA onto the integer grid k * 2^-frac: roundps, then the clamp; -0 becomes +0 (integers
// have no -0), NaN the canonical NaN.
template <rounding_mode kMode, bool kNan = true>
HWY_INLINE VF RoundIntFast(DF df, VF y, const grid_params& g, bool uint_clamp) {
  const VF ys = g.frac_scale != 1.0f ? hn::Mul(y, hn::Set(df, g.frac_scale)) : y;
  VF q;
  if constexpr (kMode == rounding_mode::rna) {
    // Ties away: t = trunc(y), and the fraction y - t (exact) reaching 1/2 moves t one step away.
    const VF t = hn::Trunc(ys);
    const auto away = hn::Ge(hn::Abs(hn::Sub(ys, t)), hn::Set(df, 0.5f));
    q = hn::Add(t, hn::IfThenElseZero(away, hn::CopySign(hn::Set(df, 1.0f), ys)));
  } else {
    q = hn::Round(ys);
  }
  if (g.frac_scale != 1.0f) q = hn::Mul(q, hn::Set(df, g.inv_frac_scale));
  if (!uint_clamp) q = hn::Min(hn::Max(q, hn::Set(df, -g.max_value)), hn::Set(df, g.max_value));
  q = hn::Add(q, hn::Zero(df));  // -0 -> +0
  if constexpr (!kNan) return q;
  return hn::IfThenElse(hn::Eq(ys, ys), q, hn::Set(df, canonical_nan()));
}

// Which element rounding a span uses, chosen once per span: the LUT compare chain, the integer
// roundps path, the minifloat (|y| + C) - C path, or the general bit-pattern path.
enum class span_path { table, int_fast, rne_fast, e8_fast, sr_fast, generic };
// How y is formed: x itself (plain cast), x * (1/s) (s a power of two: exact), or x / s.
enum class span_scale { none, mul, div };

// kNan = false: the caller knows no y is NaN (rne_fast then leaves out its canonical-NaN select).
template <rounding_mode kMode, span_path kPath, span_scale kScale, bool kNan = true>
HWY_INLINE VF FakeQuantVec(DF df, VF x, VF u, const grid_params& g, VF mul, VF div, VF scale, bool uint_clamp,
                           VF clamp_lo, VF clamp_hi) {
  VF y = x;
  if constexpr (kScale == span_scale::mul) y = hn::Mul(x, mul);
  if constexpr (kScale == span_scale::div) y = hn::Div(x, div);
  VF q;
  if constexpr (kPath == span_path::table) q = RoundToTable<kNan>(df, y, g);
  else if constexpr (kPath == span_path::int_fast) q = RoundIntFast<kMode, kNan>(df, y, g, uint_clamp);
  else if constexpr (kPath == span_path::rne_fast) q = RoundRneFast<kNan>(df, y, g);
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

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_KERNELS_SIMD_ROUND_INL_H_

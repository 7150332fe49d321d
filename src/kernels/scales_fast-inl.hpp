// Group statistics and batched scales of the fast kernels, per target (Highway's -inl pattern):
// the amax (and min/max) of a group, the amax of N groups at once, and the scales of N groups in
// one vectorised computation. Used by the row kernel (fake_quantize_rows.cpp), the column tiles
// (fake_quantize_columns.cpp) and the statistics passes (scales_fast.cpp); the scales equal
// choose_scale's (docs/conventions.md §5-8, tests/kernels/test_differential.cpp).

// Include guard (still compiled once per target)
#if defined(LOWBIT_KERNELS_SCALES_FAST_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LOWBIT_KERNELS_SCALES_FAST_INL_H_
#undef LOWBIT_KERNELS_SCALES_FAST_INL_H_
#else
#define LOWBIT_KERNELS_SCALES_FAST_INL_H_
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <type_traits>

#include <hwy/highway.h>

#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/simd.hpp"
#include "src/kernels/fast_plan.hpp"
#include "src/kernels/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

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
  // Four vectors a step (a row of /c): the loop's counter, compare and branch were most of its
  // instructions.
  for (; i + 4 * N <= n; i += 4 * N) {
    body(hn::LoadU(df, x + i));
    body(hn::LoadU(df, x + i + N));
    body(hn::LoadU(df, x + i + 2 * N));
    body(hn::LoadU(df, x + i + 3 * N));
  }
  for (; i + N <= n; i += N) body(hn::LoadU(df, x + i));
  if (i < n) body(LoadTail(df, x + i, n - i));  // lanes past the end read as 0
  st->amax_bits = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, amax)));
  if (want_minmax) {
    st->min = hn::GetLane(hn::MinOfLanes(df, mn));
    st->max = hn::GetLane(hn::MaxOfLanes(df, mx));
  }
}

#if HWY_TARGET != HWY_SCALAR
// Lane j = op over the lanes of v[j], for the 8 vectors of an 8-lane target (AVX2, where
// ConcatEven/ConcatOdd cross the 128-bit blocks: two operations each): within each block, the
// 32-bit lanes of v[2j] and v[2j + 1] interleaved and combined (lanes v[2j]a, v[2j+1]a, v[2j]b,
// v[2j+1]b: a and b two halves of each one's lanes in the block), then the 64-bit lanes of two
// such pairs (the block's part of v[4j], ..., v[4j + 3] in order), then the two blocks. 21
// operations instead of the tree's 35. The lanes are combined in another order than the tree's:
// the same result for a max of integers, and for a min/max of floats without NaN up to the sign
// of a zero result (MinMaxOfLanesBatch's one caller never takes one).
template <class D, class Op>
HWY_INLINE hn::Vec<D> CombineLanesOf8(D d, hn::Vec<D>* v, Op op) {
  const hn::Repartition<uint64_t, D> d64;
  hn::Vec<D> pair[4];
  for (size_t j = 0; j < 4; ++j)
    pair[j] = op(hn::InterleaveLower(d, v[2 * j], v[2 * j + 1]), hn::InterleaveUpper(d, v[2 * j], v[2 * j + 1]));
  hn::Vec<D> quad[2];
  for (size_t j = 0; j < 2; ++j) {
    const auto a = hn::BitCast(d64, pair[2 * j]), b = hn::BitCast(d64, pair[2 * j + 1]);
    quad[j] = op(hn::BitCast(d, hn::InterleaveLower(d64, a, b)), hn::BitCast(d, hn::InterleaveUpper(d64, a, b)));
  }
  return op(hn::ConcatLowerLower(d, quad[1], quad[0]), hn::ConcatUpperUpper(d, quad[1], quad[0]));
}

// Max over lanes of N vectors at once: lane j of the result is the max of v[j]. A tree of
// ConcatEven/ConcatOdd + Max (N - 1 steps of 3 ops) instead of N separate MaxOfLanes
// (CombineLanesOf8 on 8-lane targets).
HWY_INLINE VI MaxOfLanesBatch(DI di, VI* v, size_t count) {
  if constexpr (hn::MaxLanes(DI()) == 8) {
    if (count == 8) return CombineLanesOf8(di, v, [](VI a, VI b) { return hn::Max(a, b); });
  }
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
  // Groups of 2 or 4 vectors (nvfp4's 16 and the MX / g32 groups on AVX2) with a constant count:
  // the loop's counter, compare and branch were most of the instructions (7 per vector, 2 left).
  auto groups_of = [&](auto vecs) {
    for (size_t j = 0; j < N; ++j, p += k) {
      VI m = hn::Zero(di);
      for (size_t v = 0; v < vecs(); ++v) add(m, hn::LoadU(df, p + v * N));
      partial[j] = m;
    }
  };
  if (k == 4 * N) {
    groups_of(std::integral_constant<size_t, 4>{});
  } else if (k == 2 * N) {
    groups_of(std::integral_constant<size_t, 2>{});
  } else {
    for (size_t j = 0; j < N; ++j, p += k) {
      VI m = hn::Zero(di);
      size_t i = 0;
      for (; i + N <= k; i += N) add(m, hn::LoadU(df, p + i));
      if (i < k) add(m, LoadTail(df, p + i, k - i));
      partial[j] = m;
    }
  }
  return MaxOfLanesBatch(di, partial, N);
}

// (|v| + C) - C onto a minifloat grid, vectorised, for non-negative v: ties to even. Used for
// the block scales of nvfp4 (E4M3) and q8_0 (fp16). C = 2^(L + 23) with the step exponent
// L = max(p, emin) - M, p = max(ef, 1) - 127 from v's exponent field ef; its pattern
// (L + 150) << 23 is max(ef, e0) << 23 + (23 - M) << 23 with e0 = max(emin, -126) + 127
// (RoundRneFast's form, three operations): the same integer for every v >= 0 (p < emin means
// ef < emin + 127; ef <= 255, so no shift overflows).
HWY_INLINE VF RoundScaleGrid(DF df, VF v, int emin, int mbits) {
  const DI di;
  const VI ef_bits = hn::And(hn::BitCast(di, v), hn::Set(di, 0x7f800000));
  const VI c_bits = hn::Add(hn::Max(ef_bits, hn::Set(di, (std::max(emin, -126) + 127) << 23)), hn::Set(di, (23 - mbits) << 23));
  const VF c = hn::BitCast(df, c_bits);
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

#if HWY_TARGET != HWY_SCALAR
// Lane j = the max (kMax) or min of the lanes of v[j], for N vectors (MaxOfLanesBatch on floats).
template <bool kMax>
HWY_INLINE VF MinMaxOfLanesBatch(DF df, VF* v, size_t count) {
  if constexpr (hn::MaxLanes(DF()) == 8) {
    if (count == 8) return CombineLanesOf8(df, v, [](VF a, VF b) { return kMax ? hn::Max(a, b) : hn::Min(a, b); });
  }
  for (size_t width = count; width > 1; width /= 2)
    for (size_t j = 0; j < width / 2; ++j) {
      const VF a = hn::ConcatEven(df, v[2 * j + 1], v[2 * j]), b = hn::ConcatOdd(df, v[2 * j + 1], v[2 * j]);
      v[j] = kMax ? hn::Max(a, b) : hn::Min(a, b);
    }
  return v[0];
}

// The scales of N consecutive ggml blocks of k (q4_0/q5_0, or q4_1/q5_1 `with_min`) starting at
// p, vectorised: ggml_scale_from_max / ggml_scale_from_range's float operations, with vmax = the
// larger of max and -min (the value ggml's scan keeps when only one sign reaches amax) and the
// fp16 rounding as RoundScaleGrid of |d| (round_minifloat_fast's (|v| + C) - C). Fills
// gs[0..N); false where a block needs choose_scale: a NaN/Inf, max = -min != 0 (which of the two
// comes first decides), a zero min or max with a min (its sign), fp16 overflow or 1/d = Inf.
// BatchGgmlScaleVecs leaves the results in vectors (lane j = block j): the fp16 scale d16, the
// multiplier 1/d, and with a min the block's min mn and its fp16 rounding m16; BatchGgmlScales
// spreads them into group_scale structs.
struct ggml_scale_vecs {
  VF d16, id, mn, m16;
};
HWY_INLINE bool BatchGgmlScaleVecs(DF df, const float* p, size_t k, const scale_context& ctx, bool with_min,
                                   ggml_scale_vecs* out) {
  const DI di;
  const size_t N = hn::Lanes(df);
  VF hi[hn::MaxLanes(DF())];
  VF lo[hn::MaxLanes(DF())];
  VI abs_or = hn::Zero(di);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  auto blocks = [&](auto vecs) {  // vecs(): the vectors of a block, the last one overlapping where k % N != 0
    for (size_t j = 0; j < N; ++j, p += k) {
      VF h = hn::LoadU(df, p), l = h;
      abs_or = hn::Max(abs_or, hn::And(hn::BitCast(di, h), abs_mask));
      for (size_t t = 1; t < vecs(); ++t) {
        const size_t i = t * N;
        const VF v = i + N <= k ? hn::LoadU(df, p + i) : hn::LoadU(df, p + k - N);  // k >= N
        h = hn::Max(h, v);
        l = hn::Min(l, v);
        abs_or = hn::Max(abs_or, hn::And(hn::BitCast(di, v), abs_mask));
      }
      hi[j] = h;
      lo[j] = l;
    }
  };
  if (k == 4 * N) {  // ggml's 32 on AVX2: the loop unrolled
    blocks(std::integral_constant<size_t, 4>{});
  } else {
    const size_t vecs = (k + N - 1) / N;
    blocks([vecs] { return vecs; });
  }
  if (!hn::AllFalse(di, hn::Gt(abs_or, hn::Set(di, 0x7f7fffff)))) return false;  // NaN/Inf somewhere
  const VF mx = MinMaxOfLanesBatch<true>(df, hi, N), mn = MinMaxOfLanesBatch<false>(df, lo, N);
  const VF zero = hn::Zero(df), fp16_max = hn::Set(df, ctx.s_max);  // ggml's fp16: 65504
  VF d, m16 = zero;
  if (with_min) {
    if (!hn::AllFalse(df, hn::Or(hn::Eq(mn, zero), hn::Eq(mx, zero)))) return false;
    d = hn::Div(hn::Sub(mx, mn), hn::Set(df, static_cast<float>((1 << ctx.f->element.bits) - 1)));
    if (!hn::AllFalse(df, hn::Gt(hn::Abs(mn), fp16_max))) return false;
    m16 = hn::CopySign(RoundScaleGrid(df, hn::Abs(mn), ctx.s_emin, ctx.s_mbits), mn);
  } else {
    const VF neg_mn = hn::Neg(mn);
    if (!hn::AllFalse(df, hn::And(hn::Eq(mx, neg_mn), hn::Ne(mx, zero)))) return false;
    // vmax: max where it is the larger magnitude, else min; +0 for an all-zero block.
    const VF vmax = hn::IfThenElse(hn::Gt(mx, neg_mn), mx, hn::IfThenElse(hn::Gt(neg_mn, mx), mn, zero));
    d = hn::Div(vmax, hn::Set(df, -static_cast<float>(1 << (ctx.f->element.bits - 1))));
  }
  if (!hn::AllFalse(df, hn::Gt(hn::Abs(d), fp16_max))) return false;
  const VF id = hn::IfThenElseZero(hn::Ne(d, zero), hn::Div(hn::Set(df, 1.0f), d));
  if (!hn::AllFalse(df, hn::Gt(hn::Abs(id), hn::Set(df, 3.4e38f)))) return false;  // 1/d = Inf
  const VF d16 = hn::CopySign(RoundScaleGrid(df, hn::Abs(d), ctx.s_emin, ctx.s_mbits), d);
  if (!hn::AllFalse(df, hn::Gt(hn::Abs(d16), fp16_max))) return false;
  out->d16 = d16;
  out->id = id;
  out->mn = mn;
  out->m16 = m16;
  return true;
}

HWY_INLINE bool BatchGgmlScales(DF df, const float* p, size_t k, const scale_context& ctx, bool with_min,
                                group_scale* gs) {
  const size_t N = hn::Lanes(df);
  ggml_scale_vecs v;
  if (!BatchGgmlScaleVecs(df, p, k, ctx, with_min, &v)) return false;
  HWY_ALIGN float d_s[hn::MaxLanes(DF())], id_s[hn::MaxLanes(DF())], mn_s[hn::MaxLanes(DF())], m_s[hn::MaxLanes(DF())];
  hn::Store(v.d16, df, d_s);
  hn::Store(v.id, df, id_s);
  hn::Store(v.mn, df, mn_s);
  hn::Store(v.m16, df, m_s);
  const int32_t zp = with_min ? 0 : int32_t{1} << (ctx.f->element.bits - 1);
  for (size_t j = 0; j < N; ++j) {
    group_scale g;
    g.multiplier = id_s[j];
    g.scale = g.stored = d_s[j];
    if (with_min) {
      g.min = mn_s[j];
      g.offset = -m_s[j];
    } else {
      g.zero_point = zp;
    }
    gs[j] = g;
  }
  return true;
}
#endif

// The scale of one of ggml's blocks with a fixed zero point (q4_0/q5_0: from vmax, the first value
// of largest magnitude) or a min (q4_1/q5_1: from min and max), its statistics taken with SIMD
// (the last vector overlaps the one before where n is not a multiple of N: max and min do not
// mind). False where choose_scale's scalar scan must decide: a group shorter than a vector, a
// NaN or Inf (the group's scale is NaN), or q4_1/q5_1's min or max a zero (its sign is the one
// ggml's scan meets first).
HWY_INLINE bool GgmlBlockScaleFast(const float* HWY_RESTRICT x, size_t n, const scale_context& ctx, bool with_min,
                                   group_scale* gs) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  if (n < N) return false;
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  VF v = hn::LoadU(df, x);
  VI amax = hn::And(hn::BitCast(di, v), abs_mask);
  VF lo = v, hi = v;
  for (size_t i = N;; i += N) {
    if (i >= n) break;
    v = hn::LoadU(df, x + (i + N <= n ? i : n - N));
    amax = hn::Max(amax, hn::And(hn::BitCast(di, v), abs_mask));
    if (with_min) {
      lo = hn::Min(lo, v);
      hi = hn::Max(hi, v);
    }
  }
  const uint32_t amax_bits = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, amax)));
  if (amax_bits >= 0x7f800000u) return false;
  if (with_min) {
    const float mn = hn::GetLane(hn::MinOfLanes(df, lo)), mx = hn::GetLane(hn::MaxOfLanes(df, hi));
    if (mn == 0.0f || mx == 0.0f) return false;
    *gs = ggml_scale_from_range(ctx, mn, mx);
    return true;
  }
  float vmax = 0.0f;  // ggml's scan keeps the first |x| above the running amax, starting from 0
  if (amax_bits != 0)
    for (size_t i = 0; i < n; ++i)
      if ((std::bit_cast<uint32_t>(x[i]) & 0x7fffffffu) == amax_bits) {
        vmax = x[i];
        break;
      }
  *gs = ggml_scale_from_max(ctx, vmax);
  return true;
}

// One ggml block's scale: GgmlBlockScaleFast, or choose_scale's scan where it declines (incl. a
// NaN/Inf block: nonfinite).
HWY_INLINE group_scale GgmlBlockScale(const float* HWY_RESTRICT x, size_t n, const scale_context& ctx, bool with_min) {
  group_scale gs;
  if (GgmlBlockScaleFast(x, n, ctx, with_min, &gs)) return gs;
  simd_stats ss;
  GroupStatsT(x, n, false, false, &ss);
  group_stats st;
  st.nonfinite = ss.amax_bits >= 0x7f800000u;
  st.amax = std::bit_cast<float>(ss.amax_bits);
  return choose_scale(ctx, st, x, static_cast<int64_t>(n), 1.0f);
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#endif  // LOWBIT_KERNELS_SCALES_FAST_INL_H_

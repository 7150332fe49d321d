// The fast row kernel: fake_quantize (groups along a row), Highway SIMD with dynamic dispatch,
// OpenMP over rows. One row at a time: per group the statistics, the scale (N groups at once
// where the rule allows, scales_fast-inl.hpp), the elements (simd_round-inl.hpp). quantize
// (codes_fast.cpp) and the columns' general path (fake_quantize_columns.cpp) run the same kernel
// through detail::fake_quant_row. /t and nvfp4 take their second pass over spans of the tensor
// instead (FakeQuantTensorSpan). Must equal quantize_ref.cpp bit for bit on every input
// (tests/kernels/test_differential.cpp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/fake_quantize_rows.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/simd.hpp"
#include "lowbit/kernels/threads.hpp"
#include "src/kernels/fast_plan.hpp"
#include "src/kernels/scales_fast-inl.hpp"
#include "src/kernels/simd_common-inl.hpp"
#include "src/kernels/simd_round-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

HWY_INLINE VF UniformFromWords(DF df, const uint32_t* w, size_t i, size_t count) {
  const DU du;
  const auto words = LoadTail(du, w + i, count);
  const DI di;
  return hn::Mul(hn::ConvertTo(df, hn::BitCast(di, hn::ShiftRight<8>(words))), hn::Set(df, 0x1p-24f));
}

// The same uniform from the R bits k of ~sr8 / ~sr16 straight out of the Philox output (no word
// buffer): u = k 2^-R + 2^-(R+1) = (k + 1/2) 2^-R, both steps exact, which is UniformFromWords of
// the word (2k + 1) << (31 - R).
HWY_INLINE VF UniformFromRawBits(DF df, const uint8_t* raw, int bits, size_t i, size_t count) {
  const DU du;
  const DI di;
#if HWY_TARGET == HWY_SCALAR
  const size_t N = count;  // (one lane: never a partial vector)
#else
  const size_t N = hn::Lanes(du);
#endif
  hn::Vec<DU> k;
  if (bits == 8) {
    const hn::Rebind<uint8_t, DU> d8;
    k = hn::PromoteTo(du, count == N ? hn::LoadU(d8, raw + i) : LoadTail(d8, raw + i, count));
  } else {
    const hn::Rebind<uint16_t, DU> d16;
    const auto* halves = reinterpret_cast<const uint16_t*>(raw);
    k = hn::PromoteTo(du, count == N ? hn::LoadU(d16, halves + i) : LoadTail(d16, halves + i, count));
  }
  const float unit = bits == 8 ? 0x1p-8f : 0x1p-16f;
  return hn::MulAdd(hn::ConvertTo(df, hn::BitCast(di, k)), hn::Set(df, unit), hn::Set(df, 0.5f * unit));
}

// The uniforms of elements [draw0 + i, draw0 + i + count) of a job's draws.
HWY_INLINE VF UniformOf(DF df, const row_job& job, size_t draw0, size_t i, size_t count) {
  if (job.random_bytes) return UniformFromRawBits(df, job.random_bytes, job.random_bits, draw0 + i, count);
  return UniformFromWords(df, job.random + draw0, i, count);
}

// The uniform of draw i (a whole vector) on the sr_hoistable loops: from ~sr8's bytes (kDrawBits
// = 8) or ~sr16's halfwords (16) of the Philox output, or a word per element (0); the same values
// as UniformOf, the draws' kind chosen once per span instead of per vector.
template <int kDrawBits>
HWY_INLINE VF UniformAt(DF df, const uint8_t* HWY_RESTRICT raw, const uint32_t* HWY_RESTRICT words, size_t i) {
  const DU du;
  const DI di;
  if constexpr (kDrawBits == 8) {
    const hn::Rebind<uint8_t, DU> d8;
    const VF k = hn::ConvertTo(df, hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(d8, raw + i))));
    return hn::MulAdd(k, hn::Set(df, 0x1p-8f), hn::Set(df, 0x1p-9f));
  } else if constexpr (kDrawBits == 16) {
    const hn::Rebind<uint16_t, DU> d16;
    const VF k = hn::ConvertTo(df, hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(d16, reinterpret_cast<const uint16_t*>(raw) + i))));
    return hn::MulAdd(k, hn::Set(df, 0x1p-16f), hn::Set(df, 0x1p-17f));
  } else {
    (void)raw;
    return hn::Mul(hn::ConvertTo(df, hn::BitCast(di, hn::ShiftRight<8>(hn::LoadU(du, words + i)))), hn::Set(df, 0x1p-24f));
  }
}

// fn(draw_bits, coarse, signed_zero) as std::integral_constants: where the job's draws are
// (UniformAt), sr_coarse_draw (RoundSrHoisted's kCoarseDraw) and the grid's signed zero.
template <class Fn>
HWY_INLINE void WithDrawSource(const row_job& job, const grid_params& g, Fn&& fn) {
  using yes = std::true_type;
  using no = std::false_type;
  auto with_zero = [&](auto bits, auto coarse) {
    if (g.signed_zero) return fn(bits, coarse, yes{});
    return fn(bits, coarse, no{});
  };
  if (!job.random_bytes) return with_zero(std::integral_constant<int, 0>{}, no{});
  if (job.random_bits == 8) {
    if (sr_coarse_draw(g, 8)) return with_zero(std::integral_constant<int, 8>{}, yes{});
    return with_zero(std::integral_constant<int, 8>{}, no{});
  }
  if (sr_coarse_draw(g, 16)) return with_zero(std::integral_constant<int, 16>{}, yes{});
  return with_zero(std::integral_constant<int, 16>{}, no{});
}

// FakeQuantVec's sr_fast element on an sr_hoistable grid (RoundSrHoisted: the same value).
template <span_scale kScale, bool kNan, bool kCoarse, bool kSignedZero>
HWY_INLINE VF SrHoistedVec(DF df, VF x, VF u, const sr_consts& c, VF mul, VF div, VF scale) {
  VF y = x;
  if constexpr (kScale == span_scale::mul) y = hn::Mul(x, mul);
  if constexpr (kScale == span_scale::div) y = hn::Div(x, div);
  VF q = RoundSrHoisted<kNan, kCoarse, kSignedZero>(df, y, u, c);
  if constexpr (kScale != span_scale::none) q = hn::Mul(q, scale);
  return q;
}

// ApplyScaleT's whole vectors on an sr_hoistable grid (no uint clamp there: sr_fast integers are
// symmetric); returns how many elements it did (the tail is ApplyScaleT's). kNan = false: no y
// is NaN.
template <span_scale kScale, bool kNan, int kDrawBits, bool kCoarse, bool kSignedZero>
HWY_INLINE size_t ApplyScaleSr(const float* HWY_RESTRICT in, float* HWY_RESTRICT out, size_t n, VF mul, VF div,
                               VF scale, size_t draw0, const row_job& job, const sr_consts c) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const bool stream = job.stream;
  const int64_t ahead = job.prefetch_ahead;
  const uint8_t* raw = job.random_bytes ? job.random_bytes + draw0 * static_cast<size_t>(kDrawBits / 8) : nullptr;
  const uint32_t* words = job.random ? job.random + draw0 : nullptr;
  size_t i = 0;
  for (; i + N <= n; i += N) {
    if (ahead) hwy::Prefetch(in + i + ahead);
    const VF r = SrHoistedVec<kScale, kNan, kCoarse, kSignedZero>(df, hn::LoadU(df, in + i), UniformAt<kDrawBits>(df, raw, words, i), c, mul,
                                            div, scale);
    if (stream && (reinterpret_cast<uintptr_t>(out + i) & (N * sizeof(float) - 1)) == 0) hn::Stream(r, df, out + i);
    else hn::StoreU(r, df, out + i);
  }
  return i;
}

// out[0..n) = fake-quantized in[0..n) under one scale (mul = 1/s, div = s, scale = what the
// rounded values are multiplied by: s, or 1 for quantize's unscaled values); sr: element i's draw
// is the job's draw draw0 + i.
template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void ApplyScaleT(const float* HWY_RESTRICT in, float* HWY_RESTRICT out, size_t n, VF mul, VF div,
                            VF scale, size_t draw0, const row_job& job, const grid_params& g) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const VF clamp_lo = hn::Set(df, job.clamp_lo), clamp_hi = hn::Set(df, job.clamp_hi);
  const bool uint_clamp = job.uint_clamp, stream = job.stream;
  const int64_t ahead = job.prefetch_ahead;
  VF u = hn::Zero(df);
  size_t i = 0;
  if constexpr (kPath == span_path::sr_fast) {
    if (sr_hoistable(g) && !job.uint_clamp) {
      // y = x / s is NaN only through 0 / 0 (s = 0), x * m only through 0 * Inf (m = Inf).
      const bool nan_free = job.finite_input && (kScale != span_scale::div || job.divisor != 0.0f) &&
                            (kScale != span_scale::mul || std::isfinite(job.multiplier));
      const sr_consts c = SrConsts(g);
      WithDrawSource(job, g, [&](auto bits, auto coarse, auto signed_zero) {
        if (nan_free)
          i = ApplyScaleSr<kScale, false, bits(), coarse(), signed_zero()>(in, out, n, mul, div, scale, draw0, job, c);
        else
          i = ApplyScaleSr<kScale, true, bits(), coarse(), signed_zero()>(in, out, n, mul, div, scale, draw0, job, c);
      });
    }
  }
  for (; i + N <= n; i += N) {
    // While this span computes from cache, pull the next one (the next row for /c) from memory.
    if (ahead) hwy::Prefetch(in + i + ahead);
    if constexpr (kMode == rounding_mode::sr) u = UniformOf(df, job, draw0, i, N);
    const VF r = FakeQuantVec<kMode, kPath, kScale>(df, hn::LoadU(df, in + i), u, g, mul, div, scale, uint_clamp,
                                                    clamp_lo, clamp_hi);
    if (stream && (reinterpret_cast<uintptr_t>(out + i) & (N * sizeof(float) - 1)) == 0) hn::Stream(r, df, out + i);
    else hn::StoreU(r, df, out + i);
  }
  if (i < n) {
    if constexpr (kMode == rounding_mode::sr) u = UniformOf(df, job, draw0, i, n - i);
    const VF r = FakeQuantVec<kMode, kPath, kScale>(df, LoadTail(df, in + i, n - i), u, g, mul, div, scale,
                                                    uint_clamp, clamp_lo, clamp_hi);
    StoreTail(df, r, out + i, n - i);
  }
}

template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void FakeQuantSpanT(const float* in, float* out, size_t n, const row_job& job, const grid_params& g) {
  const DF df;
  ApplyScaleT<kMode, kPath, kScale>(in, out, n, hn::Set(df, job.multiplier), hn::Set(df, job.divisor),
                                    hn::Set(df, job.scale), 0, job, g);
}

template <rounding_mode kMode, span_path kPath>
HWY_INLINE void FakeQuantSpanScale(const float* in, float* out, size_t n, const row_job& job, const grid_params& g) {
  if (!job.scaled) FakeQuantSpanT<kMode, kPath, span_scale::none>(in, out, n, job, g);
  else if (job.use_multiplier) FakeQuantSpanT<kMode, kPath, span_scale::mul>(in, out, n, job, g);
  else FakeQuantSpanT<kMode, kPath, span_scale::div>(in, out, n, job, g);
}

// Whole vectors per group (k = 32, 64, ...): one flat loop over a batch's vectors, each taking
// its group's scale, so that the groups' loop setup and tail checks are paid once. kNan = false:
// no y can be NaN.
template <rounding_mode kMode, span_path kPath, span_scale kScale, bool kNan>
HWY_INLINE void BatchVectorsT(const float* in, float* out, size_t k, size_t groups, const float* batch_scale,
                              const float* batch_mult, const row_job& job, const grid_params& g, bool unscaled) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const size_t per_group = k / N;
  const VF clamp_lo = hn::Set(df, job.clamp_lo), clamp_hi = hn::Set(df, job.clamp_hi);
  const bool uint_clamp = job.uint_clamp;
  const int64_t ahead = job.prefetch_ahead;
  const bool stream = job.stream && (reinterpret_cast<uintptr_t>(out) & (N * sizeof(float) - 1)) == 0;
  VF u = hn::Zero(df);
  size_t i = 0;
  for (size_t j = 0; j < groups; ++j) {
    const VF div = hn::Set(df, batch_scale[j]), mul = hn::Set(df, batch_mult[j]);
    const VF scale = unscaled ? hn::Set(df, 1.0f) : div;
    for (size_t p = 0; p < per_group; ++p, i += N) {
      if (ahead) hwy::Prefetch(in + i + ahead);
      if constexpr (kMode == rounding_mode::sr) u = UniformOf(df, job, 0, i, N);
      const VF r = FakeQuantVec<kMode, kPath, kScale, kNan>(df, hn::LoadU(df, in + i), u, g, mul, div, scale, uint_clamp,
                                                            clamp_lo, clamp_hi);
      if (stream) hn::Stream(r, df, out + i);
      else hn::StoreU(r, df, out + i);
    }
  }
}

// BatchVectorsT on an sr_hoistable grid (RoundSrHoisted, the draws' kind chosen once). No
// software prefetch: the row kernel's batches leave it out under stochastic rounding.
// kVecsPerGroup: k / N where a constant (2 or 4: the loop over a group's vectors unrolled), else 0.
template <span_scale kScale, bool kNan, int kDrawBits, bool kCoarse, bool kSignedZero, size_t kVecsPerGroup = 0>
HWY_INLINE void BatchVectorsSr(const float* HWY_RESTRICT in, float* HWY_RESTRICT out, size_t k, size_t groups,
                               const float* batch_scale, const float* batch_mult, const row_job& job,
                               const sr_consts c, bool unscaled) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const size_t per_group = kVecsPerGroup ? kVecsPerGroup : k / N;
  const bool stream = job.stream && (reinterpret_cast<uintptr_t>(out) & (N * sizeof(float) - 1)) == 0;
  const uint8_t* raw = job.random_bytes;
  const uint32_t* words = job.random;
  size_t i = 0;
  for (size_t j = 0; j < groups; ++j) {
    const VF div = hn::Set(df, batch_scale[j]), mul = hn::Set(df, batch_mult[j]);
    const VF scale = unscaled ? hn::Set(df, 1.0f) : div;
    for (size_t p = 0; p < per_group; ++p, i += N) {
      const VF r = SrHoistedVec<kScale, kNan, kCoarse, kSignedZero>(df, hn::LoadU(df, in + i), UniformAt<kDrawBits>(df, raw, words, i), c,
                                              mul, div, scale);
      if (stream) hn::Stream(r, df, out + i);
      else hn::StoreU(r, df, out + i);
    }
  }
}

// The elements of N consecutive groups of k under their batch scales (all multiply, or all
// divide).
template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void BatchApplyT(const float* in, float* out, size_t k, size_t groups, const float* batch_scale,
                            const float* batch_mult, const row_job& job, const grid_params& g, bool unscaled) {
  const DF df;
  const size_t N = hn::Lanes(df);
  if (k % N == 0) {
    // A batch's inputs are finite (BatchScales* refuse a NaN/Inf amax): a y is NaN only through
    // 0 / 0 or 0 * Inf, i.e. a zero or non-finite scale (an all-zero nvfp4 tensor's), or a
    // non-finite multiplier.
    const DI di;
    const VI sb = hn::And(hn::BitCast(di, hn::LoadU(df, batch_scale)), hn::Set(di, 0x7fffffff));
    const VI mb = hn::And(hn::BitCast(di, hn::LoadU(df, batch_mult)), hn::Set(di, 0x7fffffff));
    const bool nan_free = hn::AllTrue(di, hn::And(hn::Gt(sb, hn::Zero(di)), hn::Lt(sb, hn::Set(di, 0x7f800000)))) &&
                          hn::AllTrue(di, hn::Lt(mb, hn::Set(di, 0x7f800000)));
    if constexpr (kPath == span_path::sr_fast) {
      if (sr_hoistable(g) && !job.uint_clamp) {
        const sr_consts c = SrConsts(g);
        WithDrawSource(job, g, [&](auto bits, auto coarse, auto signed_zero) {
          if (groups == N && nan_free && k == 4 * N)
            BatchVectorsSr<kScale, false, bits(), coarse(), signed_zero(), 4>(in, out, k, groups, batch_scale, batch_mult, job, c, unscaled);
          else if (groups == N && nan_free && k == 2 * N)
            BatchVectorsSr<kScale, false, bits(), coarse(), signed_zero(), 2>(in, out, k, groups, batch_scale, batch_mult, job, c, unscaled);
          else if (groups == N && nan_free)
            BatchVectorsSr<kScale, false, bits(), coarse(), signed_zero()>(in, out, k, groups, batch_scale, batch_mult, job, c, unscaled);
          else
            BatchVectorsSr<kScale, true, bits(), coarse(), signed_zero()>(in, out, k, groups, batch_scale, batch_mult, job, c, unscaled);
        });
        return;
      }
    }
    if (groups == N && nan_free)
      BatchVectorsT<kMode, kPath, kScale, false>(in, out, k, groups, batch_scale, batch_mult, job, g, unscaled);
    else
      BatchVectorsT<kMode, kPath, kScale, true>(in, out, k, groups, batch_scale, batch_mult, job, g, unscaled);
    return;
  }
  for (size_t j = 0; j < groups; ++j) {
    const VF div = hn::Set(df, batch_scale[j]);
    ApplyScaleT<kMode, kPath, kScale>(in + j * k, out + j * k, k, hn::Set(df, batch_mult[j]), div,
                                      unscaled ? hn::Set(df, 1.0f) : div, j * k, job, g);
  }
}

// ggml's blocks of 32 without a rounding mode (quantize_ref.cpp's quantize_value has the rules):
//   q4_0, q5_0: y = x * id + (z + 0.5), value (q - z) * d           (quantize_row_q4_0_ref / _q5_0_ref)
//   q4_1, q5_1: y = (x - min) * id + 0.5, value q * d - offset       (_q4_1_ref / _q5_1_ref; offset = -m)
// q = clamp(trunc(y), 0, maxq); a NaN y (an Inf id) gives the value 0 (code z, or 0 with a min).
// One vector: a = min, b = offset with a min; a = z + 0.5, b = z without. kNan = false: no y is NaN.
template <bool kWithMin, bool kNan>
HWY_INLINE VF GgmlBlockVec(DF df, VF x, VF id, VF d, VF a, VF b, VF top) {
  const VF zero = hn::Zero(df);
  const VF v = kWithMin ? hn::Add(hn::Mul(hn::Sub(x, a), id), hn::Set(df, 0.5f)) : hn::Add(hn::Mul(x, id), a);
  VF q = hn::Min(hn::Max(hn::Trunc(v), zero), top);
  if constexpr (kNan) q = hn::IfThenElse(hn::Eq(v, v), q, kWithMin ? zero : b);
  return kWithMin ? hn::Sub(hn::Mul(d, q), b) : hn::Mul(hn::Sub(q, b), d);
}

void FakeQuantGgmlBlock(const float* HWY_RESTRICT in, float* HWY_RESTRICT out, size_t n, const group_scale& gs,
                        bool with_min, float maxq) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const VF id = hn::Set(df, gs.multiplier), d = hn::Set(df, gs.scale), top = hn::Set(df, maxq);
  const VF a = with_min ? hn::Set(df, gs.min) : hn::Set(df, static_cast<float>(gs.zero_point) + 0.5f);
  const VF b = with_min ? hn::Set(df, gs.offset) : hn::Set(df, static_cast<float>(gs.zero_point));
  auto f = [&](VF x) {
    return with_min ? GgmlBlockVec<true, true>(df, x, id, d, a, b, top) : GgmlBlockVec<false, true>(df, x, id, d, a, b, top);
  };
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(f(hn::LoadU(df, in + i)), df, out + i);
  if (i < n) StoreTail(df, f(LoadTail(df, in + i, n - i)), out + i, n - i);
}

#if HWY_TARGET != HWY_SCALAR
// The N blocks of k (a whole number of vectors) of a batch whose scales BatchGgmlScaleVecs took
// (lane j = block j), FakeQuantGgmlBlock's values without its NaN select: the inputs are finite,
// 1/d is finite and |d| <= 65504 (so x - min <= max - min is finite), hence no y is NaN. A block's
// constants are broadcast from memory (one load each) instead of spread into group_scale structs;
// blocks of 4 vectors (32 on AVX2) take an unrolled loop.
template <bool kWithMin>
HWY_INLINE void GgmlBatchApply(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, size_t k, const ggml_scale_vecs& v,
                               int element_bits) {
  const DF df;
  constexpr size_t N = hn::MaxLanes(DF());
  HWY_ALIGN float d_s[N], id_s[N], a_s[N];
  hn::Store(v.d16, df, d_s);
  hn::Store(v.id, df, id_s);
  const float z = kWithMin ? 0.0f : static_cast<float>(1 << (element_bits - 1));
  if constexpr (kWithMin) hn::Store(v.mn, df, a_s);
  HWY_ALIGN float b_s[N];
  if constexpr (kWithMin) hn::Store(hn::Neg(v.m16), df, b_s);  // offset = -m16 (BatchGgmlScales)
  const VF top = hn::Set(df, static_cast<float>((1 << element_bits) - 1));
  const VF zb = hn::Set(df, z), za = hn::Set(df, z + 0.5f);
  auto blocks = [&](auto vecs) {
    for (size_t j = 0; j < N; ++j, x += k, y += k) {
      const VF id = hn::Set(df, id_s[j]), d = hn::Set(df, d_s[j]);
      const VF a = kWithMin ? hn::Set(df, a_s[j]) : za, b = kWithMin ? hn::Set(df, b_s[j]) : zb;
      for (size_t i = 0; i < vecs(); ++i)
        hn::StoreU(GgmlBlockVec<kWithMin, false>(df, hn::LoadU(df, x + i * N), id, d, a, b, top), df, y + i * N);
    }
  };
  if (k == 4 * N) return blocks(std::integral_constant<size_t, 4>{});
  const size_t vecs = k / N;
  blocks([vecs] { return vecs; });
}
#endif

// The stochastic-rounding draws of a row's elements [c, c + n), made a chunk (>= 1024 elements;
// >= 4096 for ~sr8 / ~sr16, whose Philox output is 4 or 8 KiB then: fewer calls, each making its
// round keys once) at a time into a thread-local buffer (element i of the tensor uses Philox block i/4, word i%4;
// under ~srR block i/(128/R), docs/conventions.md §43). ~sr8 and ~sr16 keep the Philox output
// itself (a quarter / half of the words' bytes; the element loop widens the bits), the others
// one word per element.
class RowDraws {
 public:
  RowDraws(const row_plan& plan, uint64_t index0, size_t cols)
      : plan_(plan), index0_(index0), cols_(cols),
        raw_(std::endian::native == std::endian::little && (plan.rng_bits == 8 || plan.rng_bits == 16)) {}
  // Points job's draws at those of [c, c + n).
  void at(size_t c, size_t n, row_job& job) {
    if (!(base_ && c >= begin_ && c + n <= end_)) fill(c, n);
    if (raw_) {
      job.random_bytes = raw_base_ + (c - begin_) * static_cast<size_t>(plan_.rng_bits / 8);
      job.random_bits = plan_.rng_bits;
    } else {
      job.random = base_ + (c - begin_);
    }
  }

 private:
  void fill(size_t c, size_t n) {
    thread_local std::vector<uint32_t> buf;
    begin_ = c;
    end_ = std::min(cols_, c + std::max<size_t>(n, raw_ ? 4096 : 1024));
    if (raw_) {
      const uint64_t per_block = 128 / static_cast<uint64_t>(plan_.rng_bits);
      const uint64_t first = index0_ + begin_, b0 = first / per_block, b1 = (index0_ + end_ - 1) / per_block;
      buf.resize(4 * (b1 - b0 + 1));
      random_blocks(plan_.rng_seed, plan_.rng_tensor_id, b0, b1 - b0 + 1, buf.data());
      raw_base_ = reinterpret_cast<const uint8_t*>(buf.data()) + (first - b0 * per_block) * static_cast<uint64_t>(plan_.rng_bits / 8);
    } else {
      buf.resize(end_ - begin_);
      random_words(plan_.rng_seed, plan_.rng_tensor_id, index0_ + begin_, end_ - begin_, buf.data(), plan_.rng_bits);
    }
    base_ = buf.data();
  }

  const row_plan& plan_;
  uint64_t index0_;
  size_t cols_, begin_ = 0, end_ = 0;
  bool raw_;
  const uint32_t* base_ = nullptr;
  const uint8_t* raw_base_ = nullptr;
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
  const bool ggml_block = has_fixed_zero_point(f) || has_block_min(f);  // q4_0, q5_0, q4_1, q5_1
  RowDraws draws(plan, index0, cols);
  // The stochastic draws of [c, c + n), made here just before they are used (sr only).
  auto draws_for = [&](size_t c, size_t n, row_job& job) {
    if constexpr (kMode == rounding_mode::sr) draws.at(c, n, job);
  };
  size_t c0 = 0, gi = 0;
#if HWY_TARGET != HWY_SCALAR
  if (plan.ggml_batch) {
    // ggml's blocks, N at a time: their scales in one vectorised computation, then each block.
    const size_t N = hn::Lanes(DF());
    group_scale batch[hn::MaxLanes(DF())];
    const bool with_min = has_block_min(f);
    const float maxq = static_cast<float>((1 << f.element.bits) - 1);
    for (; c0 + N * k <= cols; c0 += N * k, gi += N) {
      ggml_scale_vecs vecs;
      const bool vector_apply = !scales && !zero_points && k % N == 0;
      if (vector_apply && BatchGgmlScaleVecs(DF(), x + c0, k, *plan.sctx, with_min, &vecs)) {
        if (with_min) GgmlBatchApply<true>(x + c0, y + c0, k, vecs, f.element.bits);
        else GgmlBatchApply<false>(x + c0, y + c0, k, vecs, f.element.bits);
        continue;
      }
      // A batch the vector scales declined (a NaN/Inf) would be declined again by BatchGgmlScales,
      // which runs the same test: block by block.
      if (vector_apply || !BatchGgmlScales(DF(), x + c0, k, *plan.sctx, with_min, batch))
        for (size_t j = 0; j < N; ++j) batch[j] = GgmlBlockScale(x + c0 + j * k, k, *plan.sctx, with_min);
      for (size_t j = 0; j < N; ++j) {
        if (scales) scales[gi + j] = batch[j].nonfinite ? canonical_nan() : batch[j].stored;
        if (zero_points) zero_points[gi + j] = batch[j].zero_point;
        if (batch[j].nonfinite) std::fill(y + c0 + j * k, y + c0 + (j + 1) * k, canonical_nan());
        else FakeQuantGgmlBlock(x + c0 + j * k, y + c0 + j * k, k, batch[j], with_min, maxq);
      }
    }
  }
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
    // Stochastic rounding computes long enough per element that the hardware prefetcher keeps up:
    // its software prefetch cost more than it hid (e2m1/g32~sr8 at 64 MiB: 0.90 -> 0.80 ns/element).
    job.prefetch_ahead = plan.stream && kMode != rounding_mode::sr ? 1024 : 0;
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
      draws_for(c0, N * k, job);
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
    } else if (ggml_block && GgmlBlockScaleFast(x + c0, n, *plan.sctx, has_block_min(f), &gs)) {
      if (scales) scales[gi] = gs.stored;
      if (zero_points) zero_points[gi] = gs.zero_point;
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
    if (has_fixed_zero_point(f) || has_block_min(f)) {
      FakeQuantGgmlBlock(x + c0, y + c0, n, gs, has_block_min(f), static_cast<float>((1 << f.element.bits) - 1));
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
    // A scaled group gets here only with a finite amax (a NaN/Inf one has a non-finite scale and
    // was filled with NaN above), so every x is finite; a plain cast may hold any x.
    job.finite_input = f.gran != granularity::none;
    draws_for(c0, n, job);
    job.stream = plan.stream;
    // Row-sized groups (/c, /t) prefetch the same columns of the next row to be visited.
    const int64_t next_row = plan.rows_backward ? -static_cast<int64_t>(k) : static_cast<int64_t>(k);
    job.prefetch_ahead = plan.stream ? (k >= 1024 ? next_row : 1024) : 0;
    if (q8) FakeQuantSpanScale<rounding_mode::rna, span_path::int_fast>(x + c0, y + c0, n, job, g);  // ggml's roundf
    else FakeQuantSpanScale<kMode, kPath>(x + c0, y + c0, n, job, g);
  }
}

// Non-temporal stores must be fenced before others read the output: at the end of a call that made them.
struct flush_at_exit {
  bool on;
  ~flush_at_exit() {
    if (on) hwy::FlushStream();
  }
};

void FakeQuantRow(const float* x, float* y, size_t cols, const row_plan& plan, uint64_t index0,
                  float* scales, int32_t* zero_points, const int32_t* group_amax) {
  const flush_at_exit flush{plan.stream};
  const grid_params& g = *plan.grid;
  WithRounding(plan.f->rounding, [&](auto mode) {
    WithSpanPath<mode()>(g, [&](auto path) {
      FakeQuantRowPath<mode(), path()>(x, y, cols, plan, g, index0, scales, zero_points, group_amax);
    });
  });
}

// The second pass over one thread's span of a tensor whose rows lie end to end (/t, and nvfp4
// with whole groups per row; not stochastic rounding: its draws follow the rows) reads it back to
// front, starting where the first pass stopped, as two streams: the two halves of the span, one
// unit (a vector for /t, a batch of N groups for nvfp4) of each per step. After a four-stream
// first pass (StreamAmax, scales_fast.cpp) this machine (Zen 4, 64 MiB) copies at 1.00x memcpy
// with two such streams, 0.90x with one, 0.66x in the row kernel's order (rows back to front,
// each row front to back, which the hardware prefetchers follow badly). The loops are written out
// (no closures): the stores may alias anything, and a closure's captures would be reloaded after
// each of them.

// The /t second pass's unit: 128 floats (512 bytes, whole vectors on every target) of each
// stream per step. Alternating the two streams every vector (32 bytes on AVX2) ran at 0.46x memcpy
// on an AVX2 Zen machine at 64 MiB, where nvfp4's 512-byte batches ran at 0.77x.
constexpr size_t kTensorUnit = 128;

// The floats before y's first vector-aligned element (all of n where y is not float aligned).
HWY_INLINE size_t HeadToAligned(const float* y, size_t n) {
  const size_t bytes = hn::Lanes(DF()) * sizeof(float), a = reinterpret_cast<uintptr_t>(y);
  if (a % sizeof(float)) return n;
  return std::min(n, ((bytes - a % bytes) % bytes) / sizeof(float));
}

// /t: count (<= N, or any count where !kFull) values under the tensor's scale.
template <rounding_mode kMode, span_path kPath, span_scale kScale, bool kNan, bool kFull>
HWY_INLINE void TensorVecs(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, size_t count, bool stream,
                           const grid_params& g, VF mul, VF div, VF scale, bool uint_clamp, VF lo, VF hi) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const VF u = hn::Zero(df);
  if constexpr (kFull) {  // one unit of kTensorUnit floats, its vectors back to front
    for (size_t j = kTensorUnit; j >= N; j -= N) {
      const VF r = FakeQuantVec<kMode, kPath, kScale, kNan>(df, hn::LoadU(df, x + j - N), u, g, mul, div, scale, uint_clamp, lo, hi);
      if (stream) hn::Stream(r, df, y + j - N);
      else hn::StoreU(r, df, y + j - N);
    }
  } else {
    for (size_t j = 0; j < count; j += N) {
      const size_t c = std::min(N, count - j);
      StoreTail(df, FakeQuantVec<kMode, kPath, kScale, kNan>(df, LoadTail(df, x + j, c), u, g, mul, div, scale, uint_clamp, lo, hi),
                y + j, c);
    }
  }
}

// /t: y[0, n) = x's values under the tensor's one scale, FakeQuantVec as in the row kernel's
// FakeQuantSpanScale: a head up to the first aligned output vector, two streams of whole vectors,
// a tail. kNan = false: no y can be NaN.
template <rounding_mode kMode, span_path kPath, span_scale kScale, bool kNan>
HWY_NOINLINE void TensorSpanT(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, size_t n, const row_job job,
                              const grid_params g) {
  const DF df;
  const VF mul = hn::Set(df, job.multiplier), div = hn::Set(df, job.divisor), scale = hn::Set(df, job.scale);
  const VF lo = hn::Set(df, job.clamp_lo), hi = hn::Set(df, job.clamp_hi);
  const bool uc = job.uint_clamp, stream = job.stream;
  constexpr size_t U = kTensorUnit;
  const size_t head = HeadToAligned(y, n), units = (n - head) / U, tail = (n - head) % U;
  const size_t ha = units / 2, hb = units - ha;
  const float* xa = x + head;
  float* ya = y + head;
  const float* xb = xa + ha * U;
  float* yb = ya + ha * U;
  if (tail) TensorVecs<kMode, kPath, kScale, kNan, false>(xa + units * U, ya + units * U, tail, false, g, mul, div, scale, uc, lo, hi);
  if (hb > ha) TensorVecs<kMode, kPath, kScale, kNan, true>(xb + ha * U, yb + ha * U, U, stream, g, mul, div, scale, uc, lo, hi);
  for (size_t t = ha; t-- > 0;) {
    TensorVecs<kMode, kPath, kScale, kNan, true>(xb + t * U, yb + t * U, U, stream, g, mul, div, scale, uc, lo, hi);
    TensorVecs<kMode, kPath, kScale, kNan, true>(xa + t * U, ya + t * U, U, stream, g, mul, div, scale, uc, lo, hi);
  }
  if (head) TensorVecs<kMode, kPath, kScale, kNan, false>(x, y, head, false, g, mul, div, scale, uc, lo, hi);
}

#if HWY_TARGET != HWY_SCALAR
// nvfp4: the scales of one batch of N groups of k = 16 (a whole number of vectors on every
// target) at x into scale[0, N), as the row kernel's batches (BatchGroupAmax, BatchScalesPreset),
// the loads back to front so that the hardware prefetchers follow the streams. False where a
// group holds a NaN/Inf (the batch then goes through the row kernel).
HWY_INLINE bool Nvfp4BatchScales(const float* HWY_RESTRICT x, const row_plan& plan, float* scale) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df), k = 16;
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  HWY_ALIGN float stored[hn::MaxLanes(DF())];
  HWY_ALIGN float mult[hn::MaxLanes(DF())];
  VI partial[hn::MaxLanes(DF())];
  for (size_t j = N; j-- > 0;) {
    VI m = hn::And(hn::BitCast(di, hn::LoadU(df, x + j * k + k - N)), abs_mask);
    for (size_t i = k - N; i > 0; i -= N) m = hn::Max(m, hn::And(hn::BitCast(di, hn::LoadU(df, x + j * k + i - N)), abs_mask));
    partial[j] = m;
  }
  return BatchScalesPreset(df, MaxOfLanesBatch(di, partial, N), plan, scale, stored, mult);
}

// nvfp4's element grid, E2M1 (emin 0, M = 1, max 6, subnormals, -0), as compile-time constants:
// RoundRneFast on this local copy folds them into its operations (no per-vector tests of
// grid_params' flags, no constants reloaded from memory); the same operations, so the same bits.
HWY_INLINE grid_params E2m1Grid() {
  grid_params e{};
  e.kind = 0;
  e.emin = 0;
  e.mbits = 1;
  e.subnormals = true;
  e.deep_emin = false;
  e.signed_zero = true;
  e.max_value = 6.0f;
  return e;
}

// Whether g is E2M1's grid as far as RoundRneFast reads it.
HWY_INLINE bool IsE2m1Grid(const grid_params& g) {
  return g.kind == 0 && g.emin == 0 && g.mbits == 1 && g.subnormals && !g.deep_emin && g.signed_zero &&
         g.max_value == 6.0f;
}

// nvfp4, RNE, normal scales: the elements of one batch, back to front, on E2M1's constant grid.
template <bool kStream>
HWY_INLINE void Nvfp4BatchApplyE2m1(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, const float* scale) {
  const DF df;
  constexpr size_t N = hn::MaxLanes(DF()), k = 16, kPerGroup = k / N;  // (a constant count: unrolled)
  const grid_params e2m1 = E2m1Grid();
  for (size_t j = N; j-- > 0;) {
    const VF div = hn::Set(df, scale[j]);
    for (size_t p = kPerGroup; p-- > 0;) {
      const size_t i = j * k + p * N;
      const VF r = hn::Mul(RoundRneFast<false>(df, hn::Div(hn::LoadU(df, x + i), div), e2m1), div);
      if constexpr (kStream) hn::Stream(r, df, y + i);
      else hn::StoreU(r, df, y + i);
    }
  }
}

// nvfp4: the elements of one batch under its scales (Nvfp4BatchScales), back to front.
template <rounding_mode kMode, span_path kPath>
HWY_INLINE void Nvfp4BatchApply(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, const float* scale, bool stream,
                                const grid_params& g) {
  const DF df;
  const size_t N = hn::Lanes(df), k = 16;
  // No NaN/Inf input here (BatchScalesPreset declines those), so with normal scales no y is NaN
  // and RNE leaves out the canonical-NaN select (a tensor scale near float32's underflow can
  // make a scale subnormal or 0: those keep it).
  const bool normal_scales = hn::AllFalse(df, hn::Not(hn::Ge(hn::Load(df, scale), hn::Set(df, 0x1p-126f))));
  if (kPath == span_path::rne_fast && normal_scales) {
    if (IsE2m1Grid(g)) {
      if (stream) Nvfp4BatchApplyE2m1<true>(x, y, scale);
      else Nvfp4BatchApplyE2m1<false>(x, y, scale);
      return;
    }
    for (size_t j = N; j-- > 0;) {
      const VF div = hn::Set(df, scale[j]);
      for (size_t i = j * k + k; i > j * k; i -= N) {
        const VF r = hn::Mul(RoundRneFast<false>(df, hn::Div(hn::LoadU(df, x + i - N), div), g), div);
        if (stream) hn::Stream(r, df, y + i - N);
        else hn::StoreU(r, df, y + i - N);
      }
    }
    return;
  }
  const VF u = hn::Zero(df), unused = hn::Zero(df);
  for (size_t j = N; j-- > 0;) {
    const VF div = hn::Set(df, scale[j]);
    for (size_t i = j * k + k; i > j * k; i -= N) {
      const VF r = FakeQuantVec<kMode, kPath, span_scale::div>(df, hn::LoadU(df, x + i - N), u, g, unused, div, div,
                                                               false, unused, unused);
      if (stream) hn::Stream(r, df, y + i - N);
      else hn::StoreU(r, df, y + i - N);
    }
  }
}

// nvfp4: y[0, n) (whole groups of 16): two streams of whole batches (B's last one first where
// the halves differ, then B's and A's batch t for t down to 0); the groups after the last whole
// batch go through the row kernel. Software-pipelined: the next batch's scales (loads from
// memory, a chain of two divisions and the grid rounding) are issued before the current batch's
// elements, so that the two overlap (one batch after the other left the scales' latency
// exposed: 1.3x the /t second pass's time).
template <rounding_mode kMode, span_path kPath>
HWY_NOINLINE void Nvfp4SpanT(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, size_t n, const row_plan& plan,
                             const grid_params g) {
  const size_t N = hn::Lanes(DF()), unit = N * 16, units = n / unit, ha = units / 2, hb = units - ha;
  const bool stream = plan.stream && HeadToAligned(y, n) == 0;
  if (n % unit) FakeQuantRowPath<kMode, kPath>(x + units * unit, y + units * unit, n % unit, plan, g, 0, nullptr, nullptr, nullptr);
  if (units == 0) return;
  const size_t odd = hb > ha ? 1 : 0;
  auto unit_at = [ha, odd](size_t step) -> size_t {  // the batch index of the step-th batch visited
    if (odd && step == 0) return 2 * ha;
    const size_t s = step - odd, t = ha - 1 - s / 2;
    return s % 2 == 0 ? ha + t : t;
  };
  HWY_ALIGN float scale[2][hn::MaxLanes(DF())];
  bool ok[2];
  ok[0] = Nvfp4BatchScales(x + unit_at(0) * unit, plan, scale[0]);
  for (size_t step = 0; step < units; ++step) {
    const size_t cur = step & 1, b = unit_at(step) * unit;
    if (step + 1 < units) ok[cur ^ 1] = Nvfp4BatchScales(x + unit_at(step + 1) * unit, plan, scale[cur ^ 1]);
    if (ok[cur]) Nvfp4BatchApply<kMode, kPath>(x + b, y + b, scale[cur], stream, g);
    else FakeQuantRowPath<kMode, kPath>(x + b, y + b, unit, plan, g, 0, nullptr, nullptr, nullptr);
  }
}
#endif

// One thread's span [0, n) of the second pass of a /t or nvfp4 fake_quantize whose rows lie end
// to end (see above); nvfp4's span starts on a batch of N groups.
void FakeQuantTensorSpan(const float* x, float* y, size_t n, const row_plan& plan) {
  const flush_at_exit flush{plan.stream};
  const grid_params& g = *plan.grid;
  const format& f = *plan.f;
  WithRounding(f.rounding, [&](auto mode) {
    WithSpanPath<mode()>(g, [&](auto path) {
#if HWY_TARGET != HWY_SCALAR
      if (f.named == preset::nvfp4) return Nvfp4SpanT<mode(), path()>(x, y, n, plan, g);
#endif
      if (f.gran != granularity::tensor || f.named == preset::nvfp4)  // (the scalar target's nvfp4)
        return FakeQuantRowPath<mode(), path()>(x, y, n, plan, g, 0, nullptr, nullptr, nullptr);
      if (plan.tensor_gs.nonfinite) return std::fill(y, y + n, canonical_nan());
      row_job job = detail::make_job(f, g, plan.tensor_gs, plan.unscaled);
      job.stream = plan.stream;
      // A NaN or Inf anywhere made the scale non-finite (above), so x is finite here; with a
      // normal scale (times or divided by) no y is NaN, and RNE's canonical-NaN select goes.
      if constexpr (path() == span_path::rne_fast) {
        if (job.scaled && job.divisor >= 0x1p-126f && job.divisor <= 0x1p127f) {
          if (job.use_multiplier) TensorSpanT<mode(), path(), span_scale::mul, false>(x, y, n, job, g);
          else TensorSpanT<mode(), path(), span_scale::div, false>(x, y, n, job, g);
          return;
        }
      }
      if (!job.scaled) TensorSpanT<mode(), path(), span_scale::none, true>(x, y, n, job, g);
      else if (job.use_multiplier) TensorSpanT<mode(), path(), span_scale::mul, true>(x, y, n, job, g);
      else TensorSpanT<mode(), path(), span_scale::div, true>(x, y, n, job, g);
    });
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(FakeQuantRow);
HWY_EXPORT(FakeQuantTensorSpan);

namespace detail {

void fake_quant_row(const float* x, float* y, size_t cols, const row_plan& plan, uint64_t index0, float* scales,
                    int32_t* zero_points, const int32_t* group_amax) {
  HWY_DYNAMIC_DISPATCH(FakeQuantRow)(x, y, cols, plan, index0, scales, zero_points, group_amax);
}

}  // namespace detail

namespace {

using detail::fast_call;
using detail::simd_covers;

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

}  // namespace

void fake_quantize(const float* in, float* out, int64_t rows, int64_t cols, const format& f, uint64_t tensor_id,
                   sr_counters counters) {
  if (use_ref() || rows < 0 || cols < 0) return fake_quantize_ref(in, out, rows, cols, f, tensor_id, counters);
  const serial_scope team(rows * cols < kParallelMinElements);  // the team the load leaves room for
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
  // /t and nvfp4 (whole groups per row, not stochastic rounding: its draws follow the rows) take
  // their second pass over the rows laid end to end (FakeQuantTensorSpan); nvfp4's then takes
  // each group's amax from the data in cache instead of a stored first-pass copy.
  const bool tensor_span = detail::has_first_pass(f) && f.rounding != rounding_mode::sr &&
                           (f.named != preset::nvfp4 || cols % f.group_size == 0);
  fast_call call(f, in, rows, cols, false, tensor_id, /*keep_group_amax=*/!tensor_span);
  // Outputs larger than the caches go around them (no read-for-ownership of the destination).
  constexpr int64_t kStreamBytes = int64_t{8} << 20;
  call.plan.stream = in != out && rows * cols * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  if (tensor_span) {
    // Each thread a span of whole units (256 floats: whole vectors, and whole batches of nvfp4's
    // groups of 16 on every target), in place safe: the statistics came first.
    const int64_t n = rows * cols, unit = 256;
#pragma omp parallel if (n >= kParallelMinElements)
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t per = ((n + unit - 1) / unit + nt - 1) / nt * unit, b = std::min(n, t * per), e = std::min(n, b + per);
      if (e > b)
        HWY_DYNAMIC_DISPATCH(FakeQuantTensorSpan)(in + b, out + b, static_cast<size_t>(e - b), call.plan);
    }
    return;
  }
  // (Stochastic rounding, and nvfp4 with a partial group per row, below.) A first pass over the
  // tensor (/t, nvfp4) read it front to back, each thread its own block of
  // rows; the second goes back to front over the same blocks, so that it starts on the rows the
  // caches still hold and a tensor larger than the caches is read from memory once plus the part
  // the caches could not keep, instead of twice.
  const bool backward = detail::has_first_pass(f);
  call.plan.rows_backward = backward;
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  detail::for_rows_in_team(rows, backward, omp_get_thread_num(), omp_get_num_threads(), [&](int64_t r) {
    // In place is safe: each group's statistics are taken before its outputs are written.
    const float* x = in + r * cols;
    HWY_DYNAMIC_DISPATCH(FakeQuantRow)(x, out + r * cols, static_cast<size_t>(cols), call.plan,
                                       counters.of(r, cols), nullptr, nullptr, call.group_amax_of(r));
  });
}

}  // namespace lowbit
#endif  // HWY_ONCE

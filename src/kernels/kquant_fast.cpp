// The K-quants' sub-block fits across vector lanes (kquant_fast.hpp), per Highway target. ggml's
// searches (kquant.cpp fit_scale_min, fit_symmetric_scale, fit_q3_scale) try ~20 candidate scales
// per sub-block of 16 or 32 values, each a pass of dependent sums over the sub-block; the passes of
// different sub-blocks are independent. So lane j runs sub-block j (N sub-blocks per vector: on
// AVX-512 one q6_k/q3_k/q2_k super-block, or two q4_k/q5_k super-blocks) through exactly the
// scalar sequence of float operations: element e of every sub-block is one vector (a transpose of
// the batch, in L1), the sums run in the scalar order, a branch of the scalar code becomes a
// per-lane select, and a loop that the scalar code leaves early runs on while any lane needs it
// (the lanes that left change nothing: their conditions stay false). Division and sqrt are IEEE
// correctly rounded in both, and the build has no FMA contraction (-ffp-contract=off,
// CMakeLists.txt), so every lane's result is the reference's bit for bit
// (tests/kernels/test_kquant_fast.cpp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/kquant_fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "src/kernels/kquant_fast.hpp"
#include "src/kernels/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace {

constexpr size_t kMaxLanes = hn::MaxLanes(DF());
constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS (kquant.cpp)

// kquant.cpp ggml_nearest_int on lanes: the integer lands in the low mantissa bits of v + 1.5 * 2^23.
HWY_INLINE VI GgmlNearestInt(VF v) {
  const DI di;
  const VF t = hn::Add(v, hn::Set(DF(), 12582912.0f));
  return hn::Sub(hn::And(hn::BitCast(di, t), hn::Set(di, 0x007fffff)), hn::Set(di, 0x00400000));
}

// max(lo, min(hi, nearest_int(v))) as a float (the scalar code's clamped code, converted).
HWY_INLINE VF ClampedCode(VF v, VI lo, VI hi) { return hn::ConvertTo(DF(), hn::Min(hn::Max(GgmlNearestInt(v), lo), hi)); }

// The batch layout: W = K * N sub-blocks (K vectors of N lanes, independent chains that hide
// each other's latency), element e of sub-block j at xt[e * W + j]; vector k of element e is at
// xt + e * W + k * N. xt[e * W + j] = x[kSub * j + e] for the `lanes` sub-blocks at x (the lanes
// beyond: 0, a flat sub-block whose results are dropped).
template <size_t kSub>
HWY_INLINE void TransposeIn(const float* HWY_RESTRICT x, size_t lanes, size_t W, float* HWY_RESTRICT xt) {
  if (lanes < W)
    for (size_t i = 0; i < kSub * W; ++i) xt[i] = 0.0f;
  for (size_t j = 0; j < lanes; ++j)
    for (size_t e = 0; e < kSub; ++e) xt[e * W + j] = x[kSub * j + e];
}

// L[kSub * j + e] = codes[e * W + j] for the `lanes` sub-blocks.
template <size_t kSub>
HWY_INLINE void TransposeOut(const int32_t* HWY_RESTRICT codes, size_t lanes, size_t W, uint8_t* HWY_RESTRICT L) {
  for (size_t j = 0; j < lanes; ++j)
    for (size_t e = 0; e < kSub; ++e) L[kSub * j + e] = static_cast<uint8_t>(codes[e * W + j]);
}

using MF = hn::Mask<DF>;

template <size_t K>
HWY_INLINE bool AnyTrue(const MF (&m)[K]) {
  bool any = false;
  for (size_t k = 0; k < K; ++k) any |= !hn::AllFalse(DF(), m[k]);
  return any;
}

// The lanes' value of largest magnitude (the first of equal magnitudes, with its sign) and that
// magnitude: kquant.cpp signed_max, on the K vectors of a batch of kSub elements.
template <size_t kSub, size_t K>
HWY_INLINE void SignedMax(const float* HWY_RESTRICT xt, size_t N, VF (&max)[K], VF (&amax)[K]) {
  const DF df;
  for (size_t k = 0; k < K; ++k) max[k] = amax[k] = hn::Zero(df);
  for (size_t e = 0; e < kSub; ++e)
    for (size_t k = 0; k < K; ++k) {
      const VF xe = hn::Load(df, xt + (e * K + k) * N);
      const VF ax = hn::Abs(xe);
      const MF larger = hn::Gt(ax, amax[k]);
      amax[k] = hn::IfThenElse(larger, ax, amax[k]);
      max[k] = hn::IfThenElse(larger, xe, max[k]);
    }
}

// kquant.cpp fit_with_min_ref's weights and fit_scale_min (make_qkx2_quants) on K * N
// sub-blocks of kSub at once.
// The candidate codes aux_l take the place of best_l in the lanes where `better` holds (the sub-block
// k's values e at [e * K + k] * N).
template <size_t kSub, size_t K>
HWY_INLINE void BlendBest(MF better, size_t k, size_t N, const float* HWY_RESTRICT aux_l, float* HWY_RESTRICT best_l) {
  const DF df;
  for (size_t e = 0; e < kSub; ++e) {
    const size_t at = (e * K + k) * N;
    hn::Store(hn::IfThenElse(better, hn::Load(df, aux_l + at), hn::Load(df, best_l + at)), df, best_l + at);
  }
}

template <size_t kSub, size_t K>
void FitScaleMinT(const float* HWY_RESTRICT x, size_t count, int nmax, float rmin, float rdelta, int nstep, bool use_mad,
                  float* HWY_RESTRICT scales, float* HWY_RESTRICT the_mins, uint8_t* HWY_RESTRICT L) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df), W = K * N;
  constexpr size_t kMaxW = K * kMaxLanes;
  HWY_ALIGN float xt[kSub * kMaxW], wt[kSub * kMaxW], best_l[kSub * kMaxW], aux_l[kSub * kMaxW];
  HWY_ALIGN int32_t codes[kSub * kMaxW];
  HWY_ALIGN float scale_out[kMaxW], min_out[kMaxW];
  const VF zero = hn::Zero(df);
  const VI lo = hn::Zero(di), hi = hn::Set(di, nmax);
  const auto error_of = [use_mad](VF diff) { return use_mad ? hn::Abs(diff) : hn::Mul(diff, diff); };
  const auto at = [N](size_t e, size_t k) { return (e * K + k) * N; };
  for (size_t j0 = 0; j0 < count; j0 += W) {
    const size_t lanes = std::min(W, count - j0);
    TransposeIn<kSub>(x + kSub * j0, lanes, W, xt);
    if (use_mad) {  // q2_k: w = |x|
      for (size_t i = 0; i < kSub * W; i += N) hn::Store(hn::Abs(hn::Load(df, xt + i)), df, wt + i);
    } else {  // w = sqrt(sum x^2 / kSub) + |x|
      for (size_t k = 0; k < K; ++k) {
        VF sum_x2 = zero;
        for (size_t e = 0; e < kSub; ++e) {
          const VF xe = hn::Load(df, xt + at(e, k));
          sum_x2 = hn::Add(sum_x2, hn::Mul(xe, xe));
        }
        const VF av_x = hn::Sqrt(hn::Div(sum_x2, hn::Set(df, static_cast<float>(kSub))));
        for (size_t e = 0; e < kSub; ++e) hn::Store(hn::Add(av_x, hn::Abs(hn::Load(df, xt + at(e, k)))), df, wt + at(e, k));
      }
    }
    VF min[K], max[K], sum_w[K], sum_x[K], flat_min[K], scale[K], best_error[K];
    MF flat[K];
    for (size_t k = 0; k < K; ++k) {
      const VF x0 = hn::Load(df, xt + at(0, k));
      min[k] = max[k] = x0;
      sum_w[k] = hn::Load(df, wt + at(0, k));
      sum_x[k] = hn::Mul(sum_w[k], x0);
    }
    for (size_t e = 1; e < kSub; ++e)
      for (size_t k = 0; k < K; ++k) {
        const VF xe = hn::Load(df, xt + at(e, k)), we = hn::Load(df, wt + at(e, k));
        min[k] = hn::IfThenElse(hn::Lt(xe, min[k]), xe, min[k]);
        max[k] = hn::IfThenElse(hn::Gt(xe, max[k]), xe, max[k]);
        sum_w[k] = hn::Add(sum_w[k], we);
        sum_x[k] = hn::Add(sum_x[k], hn::Mul(we, xe));
      }
    for (size_t k = 0; k < K; ++k) {
      min[k] = hn::IfThenElse(hn::Gt(min[k], zero), zero, min[k]);
      flat[k] = hn::Eq(max[k], min[k]);  // the scalar code returns scale 0, codes 0 here
      flat_min[k] = min[k];
      const VF iscale = hn::Div(hn::Set(df, static_cast<float>(nmax)), hn::Sub(max[k], min[k]));
      scale[k] = hn::Div(hn::Set(df, 1.0f), iscale);
      best_error[k] = zero;
      for (size_t e = 0; e < kSub; ++e) {
        const VF xe = hn::Load(df, xt + at(e, k)), we = hn::Load(df, wt + at(e, k));
        const VF lf = ClampedCode(hn::Mul(iscale, hn::Sub(xe, min[k])), lo, hi);
        hn::Store(lf, df, best_l + at(e, k));
        const VF diff = hn::Sub(hn::Add(hn::Mul(scale[k], lf), min[k]), xe);
        best_error[k] = hn::Add(best_error[k], hn::Mul(we, error_of(diff)));
      }
    }
    for (int is = 0; is <= nstep; ++is) {
      // (max - min): min moves when a candidate wins, as in the scalar loop.
      const VF num = hn::Set(df, rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax));
      VF iscale[K], sum_l[K], sum_l2[K], sum_xl[K];
      for (size_t k = 0; k < K; ++k) {
        iscale[k] = hn::Div(num, hn::Sub(max[k], min[k]));
        sum_l[k] = sum_l2[k] = sum_xl[k] = zero;
      }
      for (size_t e = 0; e < kSub; ++e)
        for (size_t k = 0; k < K; ++k) {
          const VF xe = hn::Load(df, xt + at(e, k)), we = hn::Load(df, wt + at(e, k));
          const VF lf = ClampedCode(hn::Mul(iscale[k], hn::Sub(xe, min[k])), lo, hi);
          hn::Store(lf, df, aux_l + at(e, k));
          const VF wl = hn::Mul(we, lf);
          sum_l[k] = hn::Add(sum_l[k], wl);
          sum_l2[k] = hn::Add(sum_l2[k], hn::Mul(wl, lf));
          sum_xl[k] = hn::Add(sum_xl[k], hn::Mul(wl, xe));
        }
      VF D[K], this_scale[K], this_min[K], cur_error[K];
      MF positive_d[K];
      for (size_t k = 0; k < K; ++k) {
        D[k] = hn::Sub(hn::Mul(sum_w[k], sum_l2[k]), hn::Mul(sum_l[k], sum_l[k]));
        positive_d[k] = hn::Gt(D[k], zero);
      }
      if (!AnyTrue(positive_d)) continue;
      for (size_t k = 0; k < K; ++k) {
        this_scale[k] = hn::Div(hn::Sub(hn::Mul(sum_w[k], sum_xl[k]), hn::Mul(sum_x[k], sum_l[k])), D[k]);
        this_min[k] = hn::Div(hn::Sub(hn::Mul(sum_l2[k], sum_x[k]), hn::Mul(sum_l[k], sum_xl[k])), D[k]);
        const MF positive_min = hn::Gt(this_min[k], zero);
        this_scale[k] = hn::IfThenElse(positive_min, hn::Div(sum_xl[k], sum_l2[k]), this_scale[k]);
        this_min[k] = hn::IfThenElse(positive_min, zero, this_min[k]);
        cur_error[k] = zero;
      }
      for (size_t e = 0; e < kSub; ++e)
        for (size_t k = 0; k < K; ++k) {
          const VF xe = hn::Load(df, xt + at(e, k)), we = hn::Load(df, wt + at(e, k));
          const VF diff = hn::Sub(hn::Add(hn::Mul(this_scale[k], hn::Load(df, aux_l + at(e, k))), this_min[k]), xe);
          cur_error[k] = hn::Add(cur_error[k], hn::Mul(we, error_of(diff)));
        }
      MF better[K];
      for (size_t k = 0; k < K; ++k) better[k] = hn::And(positive_d[k], hn::Lt(cur_error[k], best_error[k]));
      if (!AnyTrue(better)) continue;
      for (size_t k = 0; k < K; ++k) {
        if (hn::AllFalse(df, better[k])) continue;
        BlendBest<kSub, K>(better[k], k, N, aux_l, best_l);
        best_error[k] = hn::IfThenElse(better[k], cur_error[k], best_error[k]);
        scale[k] = hn::IfThenElse(better[k], this_scale[k], scale[k]);
        min[k] = hn::IfThenElse(better[k], this_min[k], min[k]);
      }
    }
    for (size_t k = 0; k < K; ++k) {
      hn::Store(hn::IfThenElse(flat[k], zero, scale[k]), df, scale_out + k * N);
      hn::Store(hn::Neg(hn::IfThenElse(flat[k], flat_min[k], min[k])), df, min_out + k * N);
      for (size_t e = 0; e < kSub; ++e)
        hn::Store(hn::ConvertTo(di, hn::IfThenElse(flat[k], zero, hn::Load(df, best_l + at(e, k)))), di, codes + at(e, k));
    }
    for (size_t j = 0; j < lanes; ++j) {
      scales[j0 + j] = scale_out[j];
      the_mins[j0 + j] = min_out[j];
    }
    TransposeOut<kSub>(codes, lanes, W, L + kSub * j0);
  }
}

// K: independent vectors per step. Measured on the development machine (AVX2, thread CPU time):
// the fits with a min are fastest at K = 2 (K = 1 and 3 slower by 10-20%), the symmetric fit at
// 2, q3_k's sweeps (one dependent chain per sub-block through a division) at 4.
constexpr size_t kFitMinVectors = 2, kSymmetricVectors = 2, kQ3Vectors = 4;

void FitScaleMin(const float* HWY_RESTRICT x, size_t count, int sub, int nmax, float rmin, float rdelta, int nstep,
                 bool use_mad, float* HWY_RESTRICT scales, float* HWY_RESTRICT the_mins, uint8_t* HWY_RESTRICT L) {
  if (sub == 16) FitScaleMinT<16, kFitMinVectors>(x, count, nmax, rmin, rdelta, nstep, use_mad, scales, the_mins, L);
  else FitScaleMinT<32, kFitMinVectors>(x, count, nmax, rmin, rdelta, nstep, use_mad, scales, the_mins, L);
}

constexpr size_t kSymSub = 16;  // q3_k and q6_k sub-blocks

// The end of a symmetric fit (FitSymmetricT, FitQ3T) of K * N sub-blocks of kSymSub: a sub-block
// whose amax is below kGroupMaxEps gets scale 0 and codes 0 (kquant.cpp's early return), the others
// their scale and their codes l + z (l the fitted levels, [e * K + k] * N + lane); then the
// `lanes` sub-blocks' scales and codes go out in sub-block order.
template <size_t K>
HWY_INLINE void StoreSymmetricFit(const VF (&amax)[K], const VF (&scale)[K], const float* HWY_RESTRICT l, VI z, size_t N,
                                  size_t lanes, size_t W, float* HWY_RESTRICT scale_out, int32_t* HWY_RESTRICT codes,
                                  float* HWY_RESTRICT scales, uint8_t* HWY_RESTRICT L) {
  const DF df;
  const DI di;
  for (size_t k = 0; k < K; ++k) {
    const MF small = hn::Lt(amax[k], hn::Set(df, kGroupMaxEps));
    hn::Store(hn::IfThenZeroElse(small, scale[k]), df, scale_out + k * N);
    for (size_t e = 0; e < kSymSub; ++e) {
      const size_t at = (e * K + k) * N;
      hn::Store(hn::IfThenZeroElse(hn::RebindMask(di, small), hn::Add(hn::ConvertTo(di, hn::Load(df, l + at)), z)), di,
                codes + at);
    }
  }
  for (size_t j = 0; j < lanes; ++j) scales[j] = scale_out[j];
  TransposeOut<kSymSub>(codes, lanes, W, L);
}

// The first fit of the K * N symmetric sub-blocks in xt (kSymSub values each, transposed): the
// codes l = clamp(nearest(-nmax / max * x)) into l_out, the weights w = x^2 and w * x (the scalar
// code's w * x[i] * l) into wt and wxt, and each sub-block's sums of w x l and w l^2 in order of
// its values (as kquant.cpp's make_qx_quants / make_q3_quants start).
template <size_t K>
HWY_INLINE void FirstSymmetricFit(const float* HWY_RESTRICT xt, size_t N, int nmax, const VF (&max)[K], VI lo, VI hi,
                                  float* HWY_RESTRICT l_out, float* HWY_RESTRICT wt, float* HWY_RESTRICT wxt,
                                  VF (&sumlx)[K], VF (&suml2)[K]) {
  const DF df;
  for (size_t k = 0; k < K; ++k) {
    const VF iscale = hn::Div(hn::Set(df, static_cast<float>(-nmax)), max[k]);
    sumlx[k] = suml2[k] = hn::Zero(df);
    for (size_t e = 0; e < kSymSub; ++e) {
      const size_t at = (e * K + k) * N;
      const VF xe = hn::Load(df, xt + at);
      const VF lf = ClampedCode(hn::Mul(iscale, xe), lo, hi);
      hn::Store(lf, df, l_out + at);
      const VF w = hn::Mul(xe, xe), wx = hn::Mul(w, xe);
      hn::Store(w, df, wt + at);
      hn::Store(wx, df, wxt + at);
      sumlx[k] = hn::Add(sumlx[k], hn::Mul(wx, lf));
      suml2[k] = hn::Add(suml2[k], hn::Mul(hn::Mul(w, lf), lf));
    }
  }
}

// kquant.cpp fit_symmetric_scale (make_qx_quants, rmse_type 1) on K * N sub-blocks of 16 at once.
template <size_t K>
void FitSymmetricT(const float* HWY_RESTRICT x, size_t count, int nmax, float* HWY_RESTRICT scales, uint8_t* HWY_RESTRICT L) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df), W = K * N;
  constexpr size_t kMaxW = K * kMaxLanes;
  HWY_ALIGN float xt[kSymSub * kMaxW], wt[kSymSub * kMaxW], wxt[kSymSub * kMaxW];
  HWY_ALIGN float best_l[kSymSub * kMaxW], aux_l[kSymSub * kMaxW];
  HWY_ALIGN int32_t codes[kSymSub * kMaxW];
  HWY_ALIGN float scale_out[kMaxW];
  const VF zero = hn::Zero(df);
  const VI lo = hn::Set(di, -nmax), hi = hn::Set(di, nmax - 1), z = hn::Set(di, nmax);
  const auto at = [N](size_t e, size_t k) { return (e * K + k) * N; };
  for (size_t j0 = 0; j0 < count; j0 += W) {
    const size_t lanes = std::min(W, count - j0);
    TransposeIn<kSymSub>(x + kSymSub * j0, lanes, W, xt);
    VF max[K], amax[K], sumlx[K], suml2[K], scale[K], best[K];
    SignedMax<kSymSub, K>(xt, N, max, amax);
    FirstSymmetricFit<K>(xt, N, nmax, max, lo, hi, best_l, wt, wxt, sumlx, suml2);
    for (size_t k = 0; k < K; ++k) {
      scale[k] = hn::IfThenElse(hn::Ne(suml2[k], zero), hn::Div(sumlx[k], suml2[k]), zero);
      best[k] = hn::Mul(scale[k], sumlx[k]);
    }
    for (int is = -9; is <= 9; ++is) {
      if (is == 0) continue;
      const VF num = hn::Set(df, -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)));
      VF iscale[K];
      for (size_t k = 0; k < K; ++k) {
        iscale[k] = hn::Div(num, max[k]);
        sumlx[k] = suml2[k] = zero;
      }
      for (size_t e = 0; e < kSymSub; ++e)
        for (size_t k = 0; k < K; ++k) {
          const VF lf = ClampedCode(hn::Mul(iscale[k], hn::Load(df, xt + at(e, k))), lo, hi);
          hn::Store(lf, df, aux_l + at(e, k));
          sumlx[k] = hn::Add(sumlx[k], hn::Mul(hn::Load(df, wxt + at(e, k)), lf));
          suml2[k] = hn::Add(suml2[k], hn::Mul(hn::Mul(hn::Load(df, wt + at(e, k)), lf), lf));
        }
      MF better[K];
      for (size_t k = 0; k < K; ++k)
        better[k] = hn::And(hn::Gt(suml2[k], zero), hn::Gt(hn::Mul(sumlx[k], sumlx[k]), hn::Mul(best[k], suml2[k])));
      if (!AnyTrue(better)) continue;
      for (size_t k = 0; k < K; ++k) {
        if (hn::AllFalse(df, better[k])) continue;
        BlendBest<kSymSub, K>(better[k], k, N, aux_l, best_l);
        const VF new_scale = hn::Div(sumlx[k], suml2[k]);
        scale[k] = hn::IfThenElse(better[k], new_scale, scale[k]);
        best[k] = hn::IfThenElse(better[k], hn::Mul(new_scale, sumlx[k]), best[k]);
      }
    }
    StoreSymmetricFit<K>(amax, scale, best_l, z, N, lanes, W, scale_out, codes, scales + j0, L + kSymSub * j0);
  }
}

void FitSymmetric(const float* HWY_RESTRICT x, size_t count, int nmax, float* HWY_RESTRICT scales, uint8_t* HWY_RESTRICT L) {
  FitSymmetricT<kSymmetricVectors>(x, count, nmax, scales, L);
}

// kquant.cpp fit_q3_scale (make_q3_quants with do_rmse) on K * N sub-blocks of 16 at once. Its
// sweeps are one dependent chain per sub-block (each code's move changes the sums the next one
// reads): the K vectors are what runs in parallel.
template <size_t K>
void FitQ3T(const float* HWY_RESTRICT x, size_t count, int nmax, float* HWY_RESTRICT scales, uint8_t* HWY_RESTRICT L) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df), W = K * N;
  constexpr size_t kMaxW = K * kMaxLanes;
  HWY_ALIGN float xt[kSymSub * kMaxW], wt[kSymSub * kMaxW], wxt[kSymSub * kMaxW], l_of[kSymSub * kMaxW];
  HWY_ALIGN int32_t codes[kSymSub * kMaxW];
  HWY_ALIGN float scale_out[kMaxW];
  const VF zero = hn::Zero(df);
  const VI lo = hn::Set(di, -nmax), hi = hn::Set(di, nmax - 1), z = hn::Set(di, nmax);
  const auto at = [N](size_t e, size_t k) { return (e * K + k) * N; };
  for (size_t j0 = 0; j0 < count; j0 += W) {
    const size_t lanes = std::min(W, count - j0);
    TransposeIn<kSymSub>(x + kSymSub * j0, lanes, W, xt);
    VF max[K], amax[K], sumlx[K], suml2[K];
    SignedMax<kSymSub, K>(xt, N, max, amax);
    FirstSymmetricFit<K>(xt, N, nmax, max, lo, hi, l_of, wt, wxt, sumlx, suml2);
    // A sweep that changes no code leaves the state as it was, so a lane whose scalar loop has
    // stopped changes nothing in the sweeps the other lanes still need.
    for (int itry = 0; itry < 5; ++itry) {
      MF changed[K];
      for (size_t k = 0; k < K; ++k) changed[k] = hn::Lt(zero, zero);  // none
      for (size_t e = 0; e < kSymSub; ++e)
        for (size_t k = 0; k < K; ++k) {
          const VF xe = hn::Load(df, xt + at(e, k)), w = hn::Load(df, wt + at(e, k)), wx = hn::Load(df, wxt + at(e, k));
          const VF li = hn::Load(df, l_of + at(e, k));
          VF slx = hn::Sub(sumlx[k], hn::Mul(wx, li));
          const MF positive = hn::Gt(slx, zero);
          VF sl2 = hn::Sub(suml2[k], hn::Mul(hn::Mul(w, li), li));
          const VF nl = ClampedCode(hn::Div(hn::Mul(xe, sl2), slx), lo, hi);
          const MF moved = hn::And(positive, hn::Ne(nl, li));
          slx = hn::Add(slx, hn::Mul(wx, nl));
          sl2 = hn::Add(sl2, hn::Mul(hn::Mul(w, nl), nl));
          const MF take = hn::And(moved, hn::And(hn::Gt(sl2, zero), hn::Gt(hn::Mul(hn::Mul(slx, slx), suml2[k]),
                                                                             hn::Mul(hn::Mul(sumlx[k], sumlx[k]), sl2))));
          hn::Store(hn::IfThenElse(take, nl, li), df, l_of + at(e, k));
          sumlx[k] = hn::IfThenElse(take, slx, sumlx[k]);
          suml2[k] = hn::IfThenElse(take, sl2, suml2[k]);
          changed[k] = hn::Or(changed[k], take);
        }
      if (!AnyTrue(changed)) break;
    }
    VF scale[K];
    for (size_t k = 0; k < K; ++k)
      scale[k] = hn::IfThenElse(hn::Not(hn::Gt(suml2[k], zero)), zero, hn::Div(sumlx[k], suml2[k]));
    StoreSymmetricFit<K>(amax, scale, l_of, z, N, lanes, W, scale_out, codes, scales + j0, L + kSymSub * j0);
  }
}

void FitQ3(const float* HWY_RESTRICT x, size_t count, int nmax, float* HWY_RESTRICT scales, uint8_t* HWY_RESTRICT L) {
  FitQ3T<kQ3Vectors>(x, count, nmax, scales, L);
}

// kquant.cpp requantize's loop, along each sub-block (elementwise: any lane order is exact).
void Requantize(const float* HWY_RESTRICT x, int subs, int sub, const float* HWY_RESTRICT d, const float* HWY_RESTRICT dm,
                int lo, int hi, int z, uint8_t* HWY_RESTRICT q) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VI vlo = hn::Set(di, lo), vhi = hn::Set(di, hi), vz = hn::Set(di, z);
  HWY_ALIGN int32_t l[kMaxLanes];
  for (int j = 0; j < subs; ++j) {
    if (d[j] == 0) continue;
    const VF vd = hn::Set(df, d[j]);
    const VF vdm = hn::Set(df, dm ? dm[j] : 0.0f);
    const float* xs = x + sub * j;
    uint8_t* qs = q + sub * j;
    size_t i = 0;
    for (; i + N <= static_cast<size_t>(sub); i += N) {
      const VF v = hn::LoadU(df, xs + i);
      const VF t = dm ? hn::Div(hn::Add(v, vdm), vd) : hn::Div(v, vd);
      const VI code = hn::Add(hn::Min(hn::Max(GgmlNearestInt(t), vlo), vhi), vz);  // 0..63
#if HWY_TARGET == HWY_SCALAR
      hn::Store(code, di, l);
      for (size_t k = 0; k < N; ++k) qs[i + k] = static_cast<uint8_t>(l[k]);
#else
      const hn::Rebind<uint8_t, DI> d8;
      hn::StoreU(hn::DemoteTo(d8, code), d8, qs + i);
#endif
    }
    for (; i < static_cast<size_t>(sub); ++i) {  // no target has lanes that do not divide 16
      const VF v = hn::Set(df, xs[i]);
      const VF t = dm ? hn::Div(hn::Add(v, vdm), vd) : hn::Div(v, vd);
      qs[i] = static_cast<uint8_t>(hn::GetLane(hn::Add(hn::Min(hn::Max(GgmlNearestInt(t), vlo), vhi), vz)));
    }
  }
}

}  // namespace
}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {
HWY_EXPORT(FitScaleMin);
HWY_EXPORT(FitSymmetric);
HWY_EXPORT(FitQ3);
HWY_EXPORT(Requantize);

namespace detail {

void kquant_fit_scale_min_fast(const float* x, size_t count, int sub, int nmax, float rmin, float rdelta, int nstep,
                               bool use_mad, float* scales, float* the_mins, uint8_t* L) {
  HWY_DYNAMIC_DISPATCH(FitScaleMin)(x, count, sub, nmax, rmin, rdelta, nstep, use_mad, scales, the_mins, L);
}

void kquant_fit_symmetric_fast(const float* x, size_t count, int nmax, float* scales, uint8_t* L) {
  HWY_DYNAMIC_DISPATCH(FitSymmetric)(x, count, nmax, scales, L);
}

void kquant_fit_q3_fast(const float* x, size_t count, int nmax, float* scales, uint8_t* L) {
  HWY_DYNAMIC_DISPATCH(FitQ3)(x, count, nmax, scales, L);
}

void kquant_requantize_fast(const float* x, int subs, int sub, const float* d, const float* dm, int lo, int hi, int z,
                            uint8_t* q) {
  HWY_DYNAMIC_DISPATCH(Requantize)(x, subs, sub, d, dm, lo, hi, z, q);
}

}  // namespace detail
}  // namespace lowbit
#endif  // HWY_ONCE

// Flexpoint flexN+E fake quantization (kernels/flexpoint.hpp; Koster et al. 2017, arXiv
// 1711.02213): the scalar specification flexpoint_fake_quantize_ref and the fast kernel
// flexpoint_fake_quantize (Highway SIMD with dynamic dispatch, OpenMP over blocks of the tensor),
// equal bit for bit (tests/kernels/test_flexpoint_shiftquant.cpp).
//
// Why float32 lanes give the reference's double arithmetic exactly (the fast path needs
// N <= 24, so that qmax = 2^(N-1) - 1 is a float, and -126 <= k <= 126, so that 2^k and 2^-k are
// normal floats; other parameters run the reference on each block):
//   y = x * 2^-k   exact in float unless |y| leaves the normal range: an overflow gives +-Inf,
//                  which clamps to +-qmax like the reference's huge finite mantissa; an underflow
//                  has |y| < 2^-126, which rounds to +-0 either way
//   m = round(y)   roundps (ties to even); the sign is copied back from y because Highway's
//                  SSSE3 emulation (x + 2^23) - 2^23 turns -0.3 into +0 where nearbyint gives -0
//   m * 2^k        |m| <= qmax < 2^24: the product is exact before its one rounding, in float as
//                  in the reference's double-then-float (both round the same exact value once)
//   Gamma          max_i |round(x_i 2^-k)| = round(max_i |x_i| 2^-k) (rounding and scaling by a
//                  power of two are monotonic and odd), so the lanes only track the finite
//                  amax as int32 bit patterns and Gamma is one scalar nearbyint per call.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/flexpoint.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <omp.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/flexpoint.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/threads.hpp"

#ifndef LOWBIT_FLEXPOINT_ONCE
#define LOWBIT_FLEXPOINT_ONCE
namespace lowbit::detail {

// What one SIMD span reports: the finite amax as a float32 bit pattern and two counts.
struct flex_span_stats {
  uint32_t amax_bits = 0;
  int64_t nonfinite = 0, saturated = 0;
};

}  // namespace lowbit::detail
#endif  // LOWBIT_FLEXPOINT_ONCE

#include "src/kernels/simd_common-inl.hpp"  // DF, DI, VF, VI

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// n <= 2^24 values (the int32 lane counters cannot overflow); in == out is allowed (each vector
// is loaded before it is stored, so no restrict).
void FlexSpan(const float* in, float* out, size_t n, float inv, float kappa, float qmax,
              detail::flex_span_stats* st) {
  const DF df;
  const DI di;
  const VF vinv = hn::Set(df, inv), vkappa = hn::Set(df, kappa), vq = hn::Set(df, qmax), vnq = hn::Neg(vq);
  const VI abs_mask = hn::Set(di, 0x7fffffff), inf_bits = hn::Set(di, 0x7f800000);
  VI amax = hn::Zero(di), nonfinite = hn::Zero(di), saturated = hn::Zero(di);
  auto one = [&](VF x) HWY_ATTR {
    const VI ab = hn::And(hn::BitCast(di, x), abs_mask);
    const auto finite = hn::Lt(ab, inf_bits);
    amax = hn::Max(amax, hn::IfThenElseZero(finite, ab));
    nonfinite = hn::Sub(nonfinite, hn::VecFromMask(di, hn::Not(finite)));  // a true mask is -1
    const VF y = hn::Mul(x, vinv);
    const VF m = hn::CopySign(hn::Round(y), y);
    saturated = hn::Sub(saturated, hn::VecFromMask(di, hn::And(finite, hn::RebindMask(di, hn::Gt(hn::Abs(m), vq)))));
    const VF r = hn::Mul(hn::Min(hn::Max(m, vnq), vq), vkappa);  // +-Inf clamps to +-qmax too
    return hn::IfThenElse(hn::IsNaN(x), x, r);                    // NaN: the input, payload kept
  };
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(one(hn::LoadU(df, in + i)), df, out + i);
  // The tail's lanes past the end read 0: finite, below every qmax, nothing added to the statistics.
  if (i < n) StoreTail(df, one(LoadTail(df, in + i, n - i)), out + i, n - i);
  st->amax_bits = std::max(st->amax_bits, static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, amax))));
  st->nonfinite += hn::GetLane(hn::SumOfLanes(di, nonfinite));
  st->saturated += hn::GetLane(hn::SumOfLanes(di, saturated));
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(FlexSpan);

namespace {

// Below kParallelMinElements (threads.hpp) the kernel runs on the calling thread (serial_scope):
// waking a team costs more than the work.
// Values per SIMD call: bounds the int32 lane counters (2^24 / lanes per lane).
constexpr int64_t kSpan = int64_t{1} << 24;

void check_flex_args(int mantissa_bits, int exponent) {
  if (mantissa_bits < 2 || mantissa_bits > 32)
    throw error("flexpoint: " + std::to_string(mantissa_bits) + " mantissa bits (expected 2..32)");
  if (exponent < -512 || exponent > 511)
    throw error("flexpoint: exponent " + std::to_string(exponent) + " (expected -512..511, E <= 10 bits)");
}

// The specification on [b, e): one element at a time in double, where every step is exact
// (|x| 2^-k lies within double's normal range for |k| <= 512) but the final float conversion.
flex_stats flex_block_ref(const float* in, float* out, int64_t b, int64_t e, int mantissa_bits, int exponent) {
  const double qmax = std::ldexp(1.0, mantissa_bits - 1) - 1;
  const double inv = std::ldexp(1.0, -exponent), kappa = std::ldexp(1.0, exponent);
  flex_stats st;
  for (int64_t i = b; i < e; ++i) {
    const float x = in[i];
    if (!std::isfinite(x)) {  // Inf saturates (no code for it), NaN stays NaN (docs/conventions.md §4)
      ++st.nonfinite;
      st.gamma = std::max(st.gamma, qmax + 1);
      out[i] = std::isnan(x) ? x : static_cast<float>(std::copysign(qmax * kappa, x));
      continue;
    }
    st.amax = std::max(st.amax, std::fabs(x));
    const double m = std::nearbyint(double(x) * inv);  // ties to even (the default rounding mode)
    st.gamma = std::max(st.gamma, std::fabs(m));
    if (std::fabs(m) > qmax) ++st.saturated;
    out[i] = static_cast<float>(std::clamp(m, -qmax, qmax) * kappa);
  }
  return st;
}

void merge(flex_stats& into, const flex_stats& part) {
  into.gamma = std::max(into.gamma, part.gamma);
  into.amax = std::max(into.amax, part.amax);
  into.nonfinite += part.nonfinite;
  into.saturated += part.saturated;
}

}  // namespace

flex_stats flexpoint_fake_quantize_ref(const float* in, float* out, int64_t n, int mantissa_bits, int exponent) {
  check_flex_args(mantissa_bits, exponent);
  return flex_block_ref(in, out, 0, n, mantissa_bits, exponent);
}

flex_stats flexpoint_fake_quantize(const float* in, float* out, int64_t n, int mantissa_bits, int exponent) {
  check_flex_args(mantissa_bits, exponent);
  if (use_ref()) return flexpoint_fake_quantize_ref(in, out, n, mantissa_bits, exponent);
  const bool simd = mantissa_bits <= 24 && exponent >= -126 && exponent <= 126;
  const double qmax = std::ldexp(1.0, mantissa_bits - 1) - 1;
  const serial_scope serial(n < kParallelMinElements);
  const int max_threads = omp_get_max_threads();
  std::vector<flex_stats> part(static_cast<size_t>(max_threads));
  std::vector<detail::flex_span_stats> span_part(static_cast<size_t>(max_threads));
#pragma omp parallel num_threads(max_threads)
  {
    // One contiguous block per thread, a multiple of 16 floats (whole cache lines) but the last.
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per = ((n + nt - 1) / nt + 15) / 16 * 16;
    const int64_t b = std::min(n, t * per), e = std::min(n, b + per);
    if (!simd) {
      part[static_cast<size_t>(t)] = flex_block_ref(in, out, b, e, mantissa_bits, exponent);
    } else {
      detail::flex_span_stats s;
      for (int64_t i = b; i < e; i += kSpan)
        HWY_DYNAMIC_DISPATCH(FlexSpan)(in + i, out + i, static_cast<size_t>(std::min(e, i + kSpan) - i),
                                       std::ldexp(1.0f, -exponent), std::ldexp(1.0f, exponent),
                                       static_cast<float>(qmax), &s);
      span_part[static_cast<size_t>(t)] = s;
    }
  }
  flex_stats st;
  for (const auto& p : part) merge(st, p);
  if (simd) {
    uint32_t amax_bits = 0;
    for (const auto& s : span_part) {
      amax_bits = std::max(amax_bits, s.amax_bits);
      st.nonfinite += s.nonfinite;
      st.saturated += s.saturated;
    }
    st.amax = std::bit_cast<float>(amax_bits);
    st.gamma = std::nearbyint(double(st.amax) * std::ldexp(1.0, -exponent));
    if (st.nonfinite > 0) st.gamma = std::max(st.gamma, qmax + 1);
  }
  return st;
}

}  // namespace lowbit
#endif  // HWY_ONCE

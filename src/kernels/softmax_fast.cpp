// Log-sum-exp kernels (include/lowbit/kernels/softmax.hpp): Highway SIMD float64, per target, with
// the scalar _ref twins.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/softmax_fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/softmax.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The top of the range where Highway's float64 Exp is valid (contrib/math/math-inl.h).
constexpr double kExpHigh = 706.0;

float MaxOf(const float* HWY_RESTRICT z, int64_t n) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  const auto neg_inf = hn::Set(df, -std::numeric_limits<float>::infinity());
  auto m0 = neg_inf, m1 = neg_inf;
  size_t i = 0;
  const size_t count = static_cast<size_t>(n);
  // NaN lanes are replaced by -inf, so that they take no part (the _ref's comparisons skip them).
  auto clean = [&](auto v) { return hn::IfThenElse(hn::IsNaN(v), neg_inf, v); };
  for (; i + 2 * N <= count; i += 2 * N) {
    m0 = hn::Max(m0, clean(hn::LoadU(df, z + i)));
    m1 = hn::Max(m1, clean(hn::LoadU(df, z + i + N)));
  }
  for (; i + N <= count; i += N) m0 = hn::Max(m0, clean(hn::LoadU(df, z + i)));
  float m = hn::GetLane(hn::MaxOfLanes(df, hn::Max(m0, m1)));
  for (; i < count; ++i)
    if (z[i] > m) m = z[i];
  return m;
}

double SumExpShifted(const float* HWY_RESTRICT z, int64_t n, double shift) {
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;  // as many floats as dd has doubles
  const size_t N = hn::Lanes(dd);
  const auto s = hn::Set(dd, shift);
  const auto hi = hn::Set(dd, kExpHigh);
  auto a0 = hn::Zero(dd), a1 = hn::Zero(dd);
  auto outside = hn::Lt(a0, a0);  // all false
  size_t i = 0;
  const size_t count = static_cast<size_t>(n);
  for (; i + 2 * N <= count; i += 2 * N) {
    const auto x0 = hn::Sub(hn::PromoteTo(dd, hn::LoadU(df, z + i)), s);
    const auto x1 = hn::Sub(hn::PromoteTo(dd, hn::LoadU(df, z + i + N)), s);
    outside = hn::Or(outside, hn::Or(hn::Not(hn::Le(x0, hi)), hn::Not(hn::Le(x1, hi))));
    a0 = hn::Add(a0, hn::Exp(dd, x0));
    a1 = hn::Add(a1, hn::Exp(dd, x1));
  }
  // Highway's Exp gives 0 for a NaN and is valid up to 706: such a row takes the scalar loop.
  if (!hn::AllFalse(dd, outside)) return lowbit::sum_exp_shifted_ref(z, n, shift);
  double sum = hn::GetLane(hn::SumOfLanes(dd, hn::Add(a0, a1)));
  for (; i < count; ++i) sum += std::exp(double(z[i]) - shift);
  return sum;
}

void ExpShiftedScaled(const float* HWY_RESTRICT z, int64_t n, double shift, double scale, float* HWY_RESTRICT out) {
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;
  const size_t N = hn::Lanes(dd);
  const auto s = hn::Set(dd, shift), k = hn::Set(dd, scale);
  size_t i = 0;
  const size_t count = static_cast<size_t>(n);
  const auto hi = hn::Set(dd, kExpHigh);
  for (; i + N <= count; i += N) {
    const auto x = hn::Sub(hn::PromoteTo(dd, hn::LoadU(df, z + i)), s);
    if (HWY_UNLIKELY(!hn::AllTrue(dd, hn::Le(x, hi)))) {  // NaN or beyond Exp's range: scalar
      for (size_t j = i; j < i + N; ++j) out[j] = static_cast<float>(std::exp(double(z[j]) - shift) * scale);
      continue;
    }
    hn::StoreU(hn::DemoteTo(df, hn::Mul(hn::Exp(dd, x), k)), df, out + i);
  }
  for (; i < count; ++i) out[i] = static_cast<float>(std::exp(double(z[i]) - shift) * scale);
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(MaxOf);
HWY_EXPORT(SumExpShifted);
HWY_EXPORT(ExpShiftedScaled);

float max_of_ref(const float* z, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i)
    if (z[i] > m) m = z[i];
  return m;
}

double sum_exp_shifted_ref(const float* z, int64_t n, double shift) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(z[i]) - shift);
  return sum;
}

double log_sum_exp_ref(const float* z, int64_t n) {
  const double m = max_of_ref(z, n);
  return m + std::log(sum_exp_shifted_ref(z, n, m));
}

void exp_shifted_scaled_ref(const float* z, int64_t n, double shift, double scale, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(std::exp(double(z[i]) - shift) * scale);
}

float max_of(const float* z, int64_t n) {
  if (use_ref() || n <= 0) return max_of_ref(z, n);
  return HWY_DYNAMIC_DISPATCH(MaxOf)(z, n);
}

double sum_exp_shifted(const float* z, int64_t n, double shift) {
  if (use_ref() || n <= 0) return lowbit::sum_exp_shifted_ref(z, n, shift);
  return HWY_DYNAMIC_DISPATCH(SumExpShifted)(z, n, shift);
}

double log_sum_exp(const float* z, int64_t n) {
  if (use_ref()) return log_sum_exp_ref(z, n);
  const double m = max_of(z, n);
  return m + std::log(sum_exp_shifted(z, n, m));
}

void exp_shifted_scaled(const float* z, int64_t n, double shift, double scale, float* out) {
  if (use_ref() || n <= 0) return exp_shifted_scaled_ref(z, n, shift, scale, out);
  HWY_DYNAMIC_DISPATCH(ExpShiftedScaled)(z, n, shift, scale, out);
}

}  // namespace lowbit
#endif  // HWY_ONCE

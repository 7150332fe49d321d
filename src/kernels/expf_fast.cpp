// float32 exp with the C library's bits (include/lowbit/kernels/expf.hpp): glibc's expf (glibc >= 2.28,
// Szabolcs Nagy's algorithm from ARM's optimized-routines) evaluated in Highway float64 lanes.
//   x*32/ln2 = k + r (k the nearest integer, |r| <= 1/2), exp(x) = 2^(k/32) * 2^(r/32),
//   2^(k/32) = T[k mod 32] with k/32's integer part added to its exponent bits,
//   2^(r/32) ~= 1 + C2 r + (C1 + C0 r) r^2, rounded once to float.
// The steps are glibc's FMA build (its x86-64 dispatcher's choice where FMA exists): k through one
// fused multiply-add with the 1.5 * 2^52 shift, r = fma(32/ln2, x, -k), and the polynomial in three
// fused multiply-adds (the operations of __expf_fma in libm.so.6, glibc 2.36, read from its
// disassembly). So only targets with a native FMA take the SIMD path; the others, and other C
// libraries, call the _ref loops. Checked against std::exp on all 2^32 float inputs (expf.hpp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/expf_fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <cmath>
#include <cstdint>

#include "lowbit/kernels/expf.hpp"
#include "lowbit/kernels/quantize.hpp"

#ifndef LOWBIT_EXPF_TABLE
#define LOWBIT_EXPF_TABLE
namespace lowbit::expf_detail {
// The SIMD path reproduces glibc's expf only; elsewhere std::exp is another function.
#if defined(__GLIBC__) && defined(__x86_64__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 28))
inline constexpr bool kLibraryMatches = true;
#else
inline constexpr bool kLibraryMatches = false;
#endif
// glibc's __exp2f_data (sysdeps/ieee754/flt-32/e_exp2f_data.c there): tab[i] = bits of 2^(i/32) less
// i << 47 (so that adding k << 47 puts k/32 into the exponent); invln2_scaled = 32/ln2;
// poly_scaled = C0..C2 (a degree-3 fit of 2^(r/32) - 1, scaled); shift = 1.5 * 2^52.
alignas(64) inline constexpr uint64_t kTable[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540};
inline constexpr uint64_t kInvLn2N = 0x40471547652b82fe;
inline constexpr uint64_t kC0 = 0x3ebc6af84b912394, kC1 = 0x3f2ebfce50fac4f3, kC2 = 0x3f962e42ff0c52d6;
inline constexpr uint64_t kShift = 0x4338000000000000;
// glibc's special cases, decided on x: above kOverflow +inf; below kUnderflow 0; from kUnderflow up
// to kMayUnderflow the smallest subnormal, 2^-149 (its __math_may_uflowf, with errno); the main
// formula from there up. |x| >= 88 and NaN are the inputs that glibc checks against them.
inline constexpr uint32_t kOverflow = 0x42b17217;      //  0x1.62e42ep6f, ln(2^128)
inline constexpr uint32_t kUnderflow = 0xc2cff1b4;     // -0x1.9fe368p6f, ln(2^-150)
inline constexpr uint32_t kMayUnderflow = 0xc2ce8ecf;  // -0x1.9d1d9ep6f, ln(2^-149)
}  // namespace lowbit::expf_detail
#endif

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_NATIVE_FMA
constexpr bool kFast = expf_detail::kLibraryMatches;

// exp(x) of Lanes(dd) floats, as glibc computes each (the operations of the file comment).
template <class DD, class DF>
HWY_INLINE hn::Vec<DF> ExpF(DD dd, DF df, hn::Vec<DF> x) {
  namespace e = expf_detail;
  const hn::RebindToUnsigned<DD> du;
  const hn::RebindToSigned<DD> di;
  const auto f64 = [&](uint64_t bits) { return hn::BitCast(dd, hn::Set(du, bits)); };
  const auto f32 = [&](uint32_t bits) { return hn::BitCast(df, hn::Set(hn::RebindToUnsigned<DF>(), bits)); };
  const auto inv_ln2n = f64(e::kInvLn2N), shift = f64(e::kShift);
  const auto xd = hn::PromoteTo(dd, x);
  const auto kd_shifted = hn::MulAdd(inv_ln2n, xd, shift);  // the nearest integer in the low bits
  const auto ki = hn::BitCast(du, kd_shifted);
  const auto kd = hn::Sub(kd_shifted, shift);
  const auto r = hn::MulSub(inv_ln2n, xd, kd);
  const auto index = hn::BitCast(di, hn::And(ki, hn::Set(du, 31)));
  const auto t = hn::Add(hn::GatherIndex(du, e::kTable, index), hn::ShiftLeft<47>(ki));
  const auto s = hn::BitCast(dd, t);
  const auto z = hn::MulAdd(f64(e::kC0), r, f64(e::kC1));
  const auto r2 = hn::Mul(r, r);
  auto y = hn::MulAdd(f64(e::kC2), r, hn::Set(dd, 1.0));
  y = hn::MulAdd(z, r2, y);
  auto out = hn::DemoteTo(df, hn::Mul(y, s));
  // The special cases (x against glibc's thresholds; NaN: x + x, a quiet NaN as glibc returns).
  if (HWY_UNLIKELY(!hn::AllTrue(df, hn::Lt(hn::Abs(x), hn::Set(df, 88.0f))))) {
    out = hn::IfThenElse(hn::Lt(x, f32(e::kMayUnderflow)), f32(0x00000001u), out);  // 2^-149
    out = hn::IfThenZeroElse(hn::Lt(x, f32(e::kUnderflow)), out);                     // and -inf
    out = hn::IfThenElse(hn::Gt(x, f32(e::kOverflow)), hn::Set(df, HUGE_VALF), out);
    out = hn::IfThenElse(hn::IsNaN(x), hn::Add(x, x), out);
  }
  return out;
}

void ExpShiftedF32(const float* x, int64_t n, float shift, float* out) {
  if constexpr (!kFast) return exp_shifted_f32_ref(x, n, shift, out);
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;
  const size_t N = hn::Lanes(dd);
  const auto sh = hn::Set(df, shift);
  size_t i = 0;
  const size_t count = static_cast<size_t>(n);
  for (; i + N <= count; i += N) hn::StoreU(ExpF(dd, df, hn::Sub(hn::LoadU(df, x + i), sh)), df, out + i);
  for (; i < count; ++i) out[i] = std::exp(x[i] - shift);
}

void SwigluF32(const float* gate, const float* up, int64_t n, float* out) {
  if constexpr (!kFast) return swiglu_f32_ref(gate, up, n, out);
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;
  const size_t N = hn::Lanes(dd);
  const auto one = hn::Set(df, 1.0f);
  size_t i = 0;
  const size_t count = static_cast<size_t>(n);
  for (; i + N <= count; i += N) {
    const auto g = hn::LoadU(df, gate + i);
    const auto silu = hn::Div(g, hn::Add(one, ExpF(dd, df, hn::Neg(g))));
    hn::StoreU(hn::Mul(silu, hn::LoadU(df, up + i)), df, out + i);
  }
  for (; i < count; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}
#else
constexpr bool kFast = false;
void ExpShiftedF32(const float* x, int64_t n, float shift, float* out) { exp_shifted_f32_ref(x, n, shift, out); }
void SwigluF32(const float* gate, const float* up, int64_t n, float* out) { swiglu_f32_ref(gate, up, n, out); }
#endif

bool FastExpF() { return kFast; }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(ExpShiftedF32);
HWY_EXPORT(SwigluF32);
HWY_EXPORT(FastExpF);

void exp_shifted_f32_ref(const float* x, int64_t n, float shift, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i] - shift);
}

void swiglu_f32_ref(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

bool expf_simd_available() { return !use_ref() && HWY_DYNAMIC_DISPATCH(FastExpF)(); }

void exp_shifted_f32(const float* x, int64_t n, float shift, float* out) {
  if (use_ref() || n <= 0) return exp_shifted_f32_ref(x, n, shift, out);
  HWY_DYNAMIC_DISPATCH(ExpShiftedF32)(x, n, shift, out);
}

void swiglu_f32(const float* gate, const float* up, int64_t n, float* out) {
  if (use_ref() || n <= 0) return swiglu_f32_ref(gate, up, n, out);
  HWY_DYNAMIC_DISPATCH(SwigluF32)(gate, up, n, out);
}

}  // namespace lowbit
#endif  // HWY_ONCE

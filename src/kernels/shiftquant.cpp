// ShiftQuant gradient fake quantization (kernels/shiftquant.hpp; Guo, Liu et al. 2024, arXiv
// 2411.10948): the scalar specification shiftquant_fake_quantize_ref and the fast kernel
// shiftquant_fake_quantize (Highway SIMD with dynamic dispatch, OpenMP over rows), equal bit for
// bit (tests/kernels/test_flexpoint_shiftquant.cpp).
//
// The fast row kernel, [cols] values per call:
//   pass 1  the amax of every group as float32 bit patterns (SIMD max of |x|), the row's amax
//           their max; a pattern >= 0x7f800000 is NaN/Inf (the row becomes NaN)
//   shift   k_g from the two amax bit patterns (exponents and significands, no division or libm)
//   pass 2  the reference's double arithmetic on double lanes (half as many as float lanes):
//           v = x / s_g is a true division (a reciprocal would round differently), q the
//           roundpd of v or, stochastically, floor(v) + (u < float(v - floor(v))); then the
//           clamp, q * s_g in double and one rounding to float, as the reference writes it.
//           Round and Floor get v's sign copied back: Highway's SSSE3 emulation loses -0.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/shiftquant.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <omp.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/shiftquant.hpp"
#include "lowbit/kernels/threads.hpp"

#ifndef LOWBIT_SHIFTQUANT_ONCE
#define LOWBIT_SHIFTQUANT_ONCE
namespace lowbit::detail {

// x = (1 + m 2^-23) 2^e for a positive finite float given as its bits (subnormals normalised).
inline void split_positive_float(uint32_t bits, int* e, uint32_t* m) {
  const uint32_t field = bits >> 23, mant = bits & 0x7fffffu;
  if (field != 0) {
    *e = static_cast<int>(field) - 127;
    *m = mant;
    return;
  }
  const int shift = std::countl_zero(mant) - 8;  // moves the leading 1 to bit 23
  *e = -126 - shift;
  *m = (mant << shift) & 0x7fffffu;
}

// min(max_shift, floor(log2(a / b))) for finite a >= b >= 0 given as bits (b = 0: max_shift).
// a / b = (1.ma / 1.mb) 2^(ea - eb) with the significand ratio in (1/2, 2).
inline int group_shift_bits(uint32_t a_bits, uint32_t b_bits, int max_shift) {
  if (b_bits == 0) return max_shift;
  int ea, eb;
  uint32_t ma, mb;
  split_positive_float(a_bits, &ea, &ma);
  split_positive_float(b_bits, &eb, &mb);
  return std::min(max_shift, ea - eb - (ma < mb ? 1 : 0));
}

// 2^-k as a double (0 <= k <= 30).
inline double pow2_neg(int k) { return std::bit_cast<double>(static_cast<uint64_t>(1023 - k) << 52); }

}  // namespace lowbit::detail
#endif  // LOWBIT_SHIFTQUANT_ONCE

#include "src/kernels/simd_common-inl.hpp"  // DF, DI, LoadTail, StoreTail

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DD = hn::ScalableTag<double>;
using DFH = hn::Rebind<float, DD>;  // as many float lanes as double lanes
using DIH = hn::Rebind<int32_t, DD>;
using DUH = hn::Rebind<uint32_t, DD>;

// Pass 1: group_amax[g] = max |x| of group g as float bits (NaN/Inf give >= 0x7f800000); returns
// the row's (their max).
uint32_t ShiftQuantGroupAmax(const float* x, size_t cols, size_t group, uint32_t* group_amax) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const auto abs_mask = hn::Set(di, 0x7fffffff);
  uint32_t row = 0;
  for (size_t c0 = 0, g = 0; c0 < cols; c0 += group, ++g) {
    const size_t c1 = std::min(cols, c0 + group);
    auto m = hn::Zero(di);
    size_t c = c0;
    for (; c + N <= c1; c += N) m = hn::Max(m, hn::And(hn::BitCast(di, hn::LoadU(df, x + c)), abs_mask));
    if (c < c1) m = hn::Max(m, hn::And(hn::BitCast(di, LoadTail(df, x + c, c1 - c)), abs_mask));
    const uint32_t a = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, m)));  // |x| bits are >= 0 as int32
    group_amax[g] = a;
    row = std::max(row, a);
  }
  return row;
}

// Pass 2 on a finite row with amax_row > 0; `words` (cols Philox words) when stochastic.
void ShiftQuantApply(const float* x, float* y, size_t cols, size_t group, const uint32_t* group_amax,
                     uint32_t row_bits, double qmax, int max_shift, const uint32_t* words) {
  const DD dd;
  const DFH dfh;
  const DIH dih;
  const DUH duh;
  const size_t N = hn::Lanes(dd);
  const double s_row = static_cast<double>(std::bit_cast<float>(row_bits)) / qmax;
  const auto vq = hn::Set(dd, qmax), vnq = hn::Set(dd, -qmax), one = hn::Set(dd, 1.0);
  const auto u_scale = hn::Set(dd, 0x1p-24);
  for (size_t c0 = 0, g = 0; c0 < cols; c0 += group, ++g) {
    const size_t c1 = std::min(cols, c0 + group);
    const double s = s_row * detail::pow2_neg(detail::group_shift_bits(row_bits, group_amax[g], max_shift));
    const auto vs = hn::Set(dd, s);
    // One vector of values (and, stochastically, their words) to one vector of outputs.
    auto quant = [&](hn::Vec<DFH> xf, hn::Vec<DUH> w) HWY_ATTR {
      const auto v = hn::Div(hn::PromoteTo(dd, xf), vs);
      hn::Vec<DD> q;
      if (words) {
        const auto lo = hn::CopySign(hn::Floor(v), v);
        const auto t = hn::PromoteTo(dd, hn::DemoteTo(dfh, hn::Sub(v, lo)));  // float(v - lo), exactly
        const auto u = hn::Mul(hn::PromoteTo(dd, hn::BitCast(dih, hn::ShiftRight<8>(w))), u_scale);
        q = hn::IfThenElse(hn::Lt(u, t), hn::Add(lo, one), lo);
      } else {
        q = hn::CopySign(hn::Round(v), v);
      }
      return hn::DemoteTo(dfh, hn::Mul(hn::Min(hn::Max(q, vnq), vq), vs));
    };
    size_t c = c0;
    for (; c + N <= c1; c += N)
      hn::StoreU(quant(hn::LoadU(dfh, x + c), words ? hn::LoadU(duh, words + c) : hn::Zero(duh)), dfh, y + c);
    if (c < c1) {
      const size_t k = c1 - c;
      StoreTail(dfh, quant(LoadTail(dfh, x + c, k), words ? LoadTail(duh, words + c, k) : hn::Zero(duh)), y + c, k);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(ShiftQuantGroupAmax);
HWY_EXPORT(ShiftQuantApply);

namespace {

// Below kParallelMinElements (threads.hpp) the kernel runs on the calling thread (serial_scope):
// waking a team costs more than the work.

void check_shiftquant_args(int bits, int group, int max_shift) {
  if (bits < 2 || bits > 16) throw error("shiftquant: " + std::to_string(bits) + " bits (expected 2..16)");
  if (group <= 0) throw error("shiftquant: group " + std::to_string(group) + " (expected > 0)");
  if (max_shift < 0 || max_shift > 30)
    throw error("shiftquant: max shift " + std::to_string(max_shift) + " (expected 0..30)");
}

}  // namespace

int shiftquant_group_shift_ref(float amax_row, float amax_group, int max_shift) {
  const double a = amax_row, b = amax_group;
  return b == 0 ? max_shift : std::min(max_shift, static_cast<int>(std::floor(std::log2(a / b))));
}

int shiftquant_group_shift(float amax_row, float amax_group, int max_shift) {
  return detail::group_shift_bits(std::bit_cast<uint32_t>(std::fabs(amax_row)),
                                  std::bit_cast<uint32_t>(std::fabs(amax_group)), max_shift);
}

void shiftquant_fake_quantize_ref(const float* in, float* out, int64_t rows, int64_t cols, int bits, int group,
                                  int max_shift, bool stochastic, uint64_t seed, uint64_t tensor_id) {
  check_shiftquant_args(bits, group, max_shift);
  const double qmax = std::ldexp(1.0, bits - 1) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = in + r * cols;
    float* y = out + r * cols;
    double amax_row = 0;
    bool finite = true;
    for (int64_t c = 0; c < cols; ++c) {
      if (!std::isfinite(x[c])) finite = false;
      amax_row = std::max(amax_row, std::fabs(double(x[c])));
    }
    if (!finite) {  // docs/conventions.md §4: a group holding NaN/Inf is NaN (here the whole row)
      std::fill(y, y + cols, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    if (amax_row == 0) {
      std::fill(y, y + cols, 0.0f);
      continue;
    }
    const double s_row = amax_row / qmax;
    for (int64_t c0 = 0; c0 < cols; c0 += group) {
      const int64_t c1 = std::min(cols, c0 + group);
      double amax = 0;
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(double(x[c])));
      // k_g = min(S, floor(log2(amax_row / amax_g))): the group's values still fit in qmax.
      const int k = shiftquant_group_shift_ref(static_cast<float>(amax_row), static_cast<float>(amax), max_shift);
      const double s = std::ldexp(s_row, -k);
      for (int64_t c = c0; c < c1; ++c) {
        const double v = double(x[c]) / s;
        double q;
        if (stochastic) {
          const double lo = std::floor(v);
          const float t = static_cast<float>(v - lo);
          const float u = uniform_from_word(random_word(seed, tensor_id, uint64_t(r * cols + c)));
          q = u < t ? lo + 1 : lo;
        } else {
          q = std::nearbyint(v);  // ties to even (the default rounding mode)
        }
        y[c] = static_cast<float>(std::clamp(q, -qmax, qmax) * s);
      }
    }
  }
}

void shiftquant_fake_quantize(const float* in, float* out, int64_t rows, int64_t cols, int bits, int group,
                              int max_shift, bool stochastic, uint64_t seed, uint64_t tensor_id) {
  check_shiftquant_args(bits, group, max_shift);
  if (use_ref())
    return shiftquant_fake_quantize_ref(in, out, rows, cols, bits, group, max_shift, stochastic, seed, tensor_id);
  const double qmax = std::ldexp(1.0, bits - 1) - 1;
  const int64_t groups = (cols + group - 1) / group;
  const serial_scope serial(rows * cols < kParallelMinElements);
#pragma omp parallel
  {
    std::vector<uint32_t> group_amax(static_cast<size_t>(groups));
    std::vector<uint32_t> words(stochastic ? static_cast<size_t>(cols) : 0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* x = in + r * cols;
      float* y = out + r * cols;
      const uint32_t row_bits = HWY_DYNAMIC_DISPATCH(ShiftQuantGroupAmax)(
          x, static_cast<size_t>(cols), static_cast<size_t>(group), group_amax.data());
      if (row_bits >= 0x7f800000u) {  // NaN/Inf in the row
        std::fill(y, y + cols, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      if (row_bits == 0) {
        std::fill(y, y + cols, 0.0f);
        continue;
      }
      if (stochastic) random_words(seed, tensor_id, uint64_t(r * cols), static_cast<size_t>(cols), words.data());
      HWY_DYNAMIC_DISPATCH(ShiftQuantApply)(x, y, static_cast<size_t>(cols), static_cast<size_t>(group),
                                            group_amax.data(), row_bits, qmax, max_shift,
                                            stochastic ? words.data() : nullptr);
    }
  }
}

}  // namespace lowbit
#endif  // HWY_ONCE

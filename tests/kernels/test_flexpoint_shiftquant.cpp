// Flexpoint (kernels/flexpoint.hpp) and ShiftQuant (kernels/shiftquant.hpp) kernels:
//  * differential: the fast kernels equal their _ref twins bit for bit (outputs and Flexpoint's
//    statistics) on every compiled SIMD target and several thread counts, on sizes above the
//    parallel threshold (2^15 elements) and with odd tails, misaligned and in place, on data that
//    mixes Gaussian values of many magnitudes, exact ties, the largest representable value and
//    its neighbours, +-0, float32 subnormals, huge values, NaN and +-Inf;
//  * the _ref against hand-computed cases (exact arithmetic): ties to even, the max representable,
//    saturation, the shift chosen for a known group max, stochastic rounding against the Philox
//    word itself.
// A failure prints the whole parameter tuple and the first differing element.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/flexpoint.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/shiftquant.hpp"
#include "lowbit/kernels/simd.hpp"

using namespace lowbit;

namespace lowbit {
// How GoogleTest prints flex_stats in a failed comparison.
void PrintTo(const flex_stats& s, std::ostream* os) {
  *os << "{gamma=" << s.gamma << " amax=" << s.amax << " nonfinite=" << s.nonfinite << " saturated=" << s.saturated
      << "}";
}
}  // namespace lowbit

namespace {

uint32_t bits_of(float v) { return std::bit_cast<uint32_t>(v); }

// LOWBIT_TEST_SEED=K runs the randomised cases with other data (as test_differential.cpp).
unsigned seed(unsigned base) {
  const char* env = std::getenv("LOWBIT_TEST_SEED");
  return base + (env ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) * 1000u : 0u);
}

// Index of the first element whose bits differ, or -1.
int64_t first_difference(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (bits_of(a[i]) != bits_of(b[i])) return i;
  return -1;
}

std::string hex(float v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", bits_of(v));
  return buf;
}

// Runs fn once per compiled SIMD target and thread count, restoring both afterwards.
template <class Fn>
void for_targets_and_threads(Fn&& fn) {
  const int saved = omp_get_max_threads();
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      fn(t.second, threads);
    }
  }
  omp_set_num_threads(saved);
  force_simd_target(0);
}

// A specials mix: NaN (with a payload and a sign), +-Inf, +-0, float32 subnormals, huge values.
float special(std::mt19937& gen) {
  switch (gen() % 9) {
    case 0: return std::bit_cast<float>(0xffc12345u);  // -NaN with a payload
    case 1: return NAN;
    case 2: return INFINITY;
    case 3: return -INFINITY;
    case 4: return -0.0f;
    case 5: return 0.0f;
    case 6: return std::ldexp(static_cast<float>(gen() % 1000 + 1), -149);  // subnormal
    case 7: return -std::numeric_limits<float>::denorm_min();
    default: return (gen() % 2 ? 1 : -1) * std::ldexp(1.0f, 100 + static_cast<int>(gen() % 28));  // huge
  }
}

// ---- Flexpoint data ----------------------------------------------------------------------------

// n values for flexN+E under exponent k: mantissas that land exactly on ties (m + 1/2) 2^k, the
// largest representable qmax 2^k and its float neighbours, (qmax + 1/2) 2^k (a tie that rounds
// up into saturation), Gaussians over many binades around 2^k, and (when `specials`) the
// specials mix.
std::vector<float> flex_values(std::mt19937& gen, int64_t n, int mantissa_bits, int exponent, bool specials) {
  const double qmax = std::ldexp(1.0, mantissa_bits - 1) - 1;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) {
    const int pick = static_cast<int>(gen() % 16);
    const double sign = gen() % 2 ? 1.0 : -1.0;
    // an integer mantissa in [0, qmax], of any magnitude
    const double frac = std::ldexp(static_cast<double>(gen() % 4096) / 4096, -static_cast<int>(gen() % mantissa_bits));
    const double m = std::floor(frac * qmax);
    switch (pick) {
      case 0: v = static_cast<float>(sign * std::ldexp(m + 0.5, exponent)); break;  // a tie
      case 1: v = static_cast<float>(sign * std::ldexp(qmax, exponent)); break;
      case 2: v = std::nextafter(static_cast<float>(sign * std::ldexp(qmax, exponent)), INFINITY); break;
      case 3: v = std::nextafter(static_cast<float>(sign * std::ldexp(qmax, exponent)), -INFINITY); break;
      case 4: v = static_cast<float>(sign * std::ldexp(qmax + 0.5, exponent)); break;
      case 5: v = static_cast<float>(sign * std::ldexp(m, exponent)); break;  // on the grid
      default:
        v = normal(gen) * std::ldexp(1.0f, std::clamp(exponent + static_cast<int>(gen() % (mantissa_bits + 8)) - 4,
                                                      -140, 120));
    }
    if (specials && gen() % 32 == 0) v = special(gen);
  }
  return x;
}

struct flex_case {
  int64_t n;
  int mantissa_bits, exponent;
  bool specials;
  size_t misalign;
};

std::string describe(const flex_case& c, const std::string& target, int threads) {
  return "flex" + std::to_string(c.mantissa_bits) + " k=" + std::to_string(c.exponent) + " n=" + std::to_string(c.n) +
         " specials=" + std::to_string(c.specials) + " misalign=" + std::to_string(c.misalign) + " target=" + target +
         " threads=" + std::to_string(threads);
}

// One Flexpoint case on the current target and thread count against the reference's output and
// statistics: out of place (misaligned) and in place.
void check_flex(const flex_case& c, const std::vector<float>& x, const std::vector<float>& ref, const flex_stats& sr,
                const std::string& target, int threads) {
  std::vector<float> fast_buf(x.size() + 8), in_buf(x.size() + 8);
  float* in = in_buf.data() + c.misalign;
  float* fast = fast_buf.data() + c.misalign;
  std::memcpy(in, x.data(), x.size() * sizeof(float));
  const flex_stats sf = flexpoint_fake_quantize(in, fast, c.n, c.mantissa_bits, c.exponent);
  const int64_t i = first_difference(ref.data(), fast, c.n);
  ASSERT_EQ(i, -1) << describe(c, target, threads) << " index " << i << " input " << hex(x[size_t(i)]) << " ref "
                   << hex(ref[size_t(i)]) << " fast " << hex(fast[i]);
  ASSERT_EQ(sr, sf) << describe(c, target, threads);
  std::vector<float> inplace(x);
  const flex_stats si = flexpoint_fake_quantize(inplace.data(), inplace.data(), c.n, c.mantissa_bits, c.exponent);
  ASSERT_EQ(first_difference(ref.data(), inplace.data(), c.n), -1) << "in place " << describe(c, target, threads);
  ASSERT_EQ(sr, si) << "in place " << describe(c, target, threads);
}

// ---- ShiftQuant data ---------------------------------------------------------------------------

// [rows, cols] with groups of very different magnitudes (so that every shift 0..30 and the cap
// occur), group maxima exactly 2^-j of the row's (a power-of-two ratio: the shift boundary) and
// one float below it, rows of exact ties, and rows that are all zero, hold a NaN or an Inf, or
// live among float32 subnormals.
std::vector<float> shiftquant_values(std::mt19937& gen, int64_t rows, int64_t cols, int group, int bits,
                                     bool specials) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  const int qmax = (1 << (bits - 1)) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x.data() + r * cols;
    const int row_kind = static_cast<int>(gen() % 16);
    const int row_scale = static_cast<int>(gen() % 40) - 20;
    if (row_kind >= 12) {
      // Ties: the row's amax qmax 2^R makes s_row = 2^R exactly; a group whose first value is
      // qmax 2^(R-d) gets shift d (d <= 7, below every max_shift tested but 0..3, which cap it)
      // and scale 2^(R-d), so (m + 1/2) 2^(R-d) is a tie of the group's grid.
      for (int64_t c0 = 0; c0 < cols; c0 += group) {
        const int64_t c1 = std::min(cols, c0 + group);
        const int d = c0 == 0 ? 0 : static_cast<int>(gen() % 8);
        row[c0] = static_cast<float>(std::ldexp(double(qmax), row_scale - d));
        for (int64_t c = c0 + 1; c < c1; ++c)
          row[c] = (gen() % 2 ? 1 : -1) *
                   static_cast<float>(std::ldexp(double(gen() % static_cast<unsigned>(qmax)) + 0.5, row_scale - d));
      }
      continue;
    }
    for (int64_t c0 = 0; c0 < cols; c0 += group) {
      const int64_t c1 = std::min(cols, c0 + group);
      const int drop = static_cast<int>(gen() % 36);  // this group ~2^-drop of the row
      for (int64_t c = c0; c < c1; ++c)
        row[c] = normal(gen) * std::ldexp(1.0f, std::max(-140, row_scale - drop));
      const int64_t at = c0 + static_cast<int64_t>(gen() % static_cast<unsigned>(c1 - c0));
      switch (gen() % 6) {
        case 0: row[at] = std::ldexp(1.0f, row_scale - drop % 8); break;  // amax_g = 2^-j amax_row below
        case 1: row[at] = std::nextafter(std::ldexp(1.0f, row_scale - drop % 8), 0.0f); break;
        case 2: row[at] = -std::ldexp(1.5f, row_scale - drop % 8); break;
        default: break;
      }
    }
    row[static_cast<int64_t>(gen() % static_cast<unsigned>(cols))] = std::ldexp(1.0f, row_scale);  // the row's amax
    if (!specials) continue;
    if (row_kind == 0) std::fill(row, row + cols, 0.0f);
    if (row_kind == 1) row[gen() % static_cast<unsigned>(cols)] = NAN;
    if (row_kind == 2) row[gen() % static_cast<unsigned>(cols)] = -INFINITY;
    if (row_kind == 3)
      for (int64_t c = 0; c < cols; ++c)
        row[c] = std::ldexp(static_cast<float>(static_cast<int>(gen() % 2001) - 1000), -149);
    if (row_kind == 4)
      for (int64_t c = 0; c < cols; ++c)
        if (gen() % 4 == 0) row[c] = gen() % 2 ? -0.0f : 0.0f;
    if (row_kind == 5) row[gen() % static_cast<unsigned>(cols)] = std::numeric_limits<float>::max();
  }
  return x;
}

struct shiftquant_case {
  int64_t rows, cols;
  int bits, group, max_shift;
  bool stochastic;
};

std::string describe(const shiftquant_case& c, const std::string& target, int threads) {
  return "shiftquant int" + std::to_string(c.bits) + " g" + std::to_string(c.group) + " shift=" +
         std::to_string(c.max_shift) + (c.stochastic ? " sr" : " rne") + " shape=[" + std::to_string(c.rows) + "," +
         std::to_string(c.cols) + "] target=" + target + " threads=" + std::to_string(threads);
}

// One ShiftQuant case on the current target and thread count against the reference's output:
// out of place (misaligned) and in place.
void check_shiftquant(const shiftquant_case& c, const std::vector<float>& x, const std::vector<float>& ref,
                      const std::string& target, int threads) {
  const int64_t n = c.rows * c.cols;
  std::vector<float> fast(x.size() + 8), in_buf(x.size() + 8);
  float* in = in_buf.data() + 1;  // misaligned
  std::memcpy(in, x.data(), x.size() * sizeof(float));
  shiftquant_fake_quantize(in, fast.data() + 3, c.rows, c.cols, c.bits, c.group, c.max_shift, c.stochastic, 5, 77);
  const int64_t i = first_difference(ref.data(), fast.data() + 3, n);
  ASSERT_EQ(i, -1) << describe(c, target, threads) << " index " << i << " [" << i / c.cols << "," << i % c.cols
                   << "] input " << hex(x[size_t(i)]) << " ref " << hex(ref[size_t(i)]) << " fast "
                   << hex(fast[size_t(i) + 3]);
  std::vector<float> inplace(x);
  shiftquant_fake_quantize(inplace.data(), inplace.data(), c.rows, c.cols, c.bits, c.group, c.max_shift, c.stochastic,
                           5, 77);
  ASSERT_EQ(first_difference(ref.data(), inplace.data(), n), -1) << "in place " << describe(c, target, threads);
}

}  // namespace

// ---- differential: fast == _ref ---------------------------------------------------------------

TEST(FlexpointDifferential, FastEqualsRefEveryTargetAndThreadCount) {
  std::mt19937 gen(seed(101));
  int cases = 0;
  // Sizes: tiny, odd tails, just above the parallel threshold (2^15) and a larger odd one.
  const int64_t sizes[] = {1, 3, 17, 1031, (int64_t{1} << 15) + 3, (int64_t{1} << 16) + 1};
  // flex16+5's whole exponent range ends, flex8, the widest SIMD mantissa (24), and parameters
  // the fast kernel hands to the reference (N = 25, 32; |k| > 126).
  const std::pair<int, int> params[] = {{16, -16}, {16, -4}, {16, 0}, {16, 15}, {8, -8}, {8, 7}, {24, 3},
                                        {16, -126}, {16, 126}, {25, 0}, {32, -5}, {16, -300}, {16, 200}};
  std::vector<std::vector<float>> data, refs;
  std::vector<flex_stats> ref_stats;
  std::vector<flex_case> all;
  for (int64_t n : sizes)
    for (const auto& [bits, k] : params)
      for (bool specials : {false, true}) {
        all.push_back({n, bits, k, specials, static_cast<size_t>(n % 3)});
        data.push_back(flex_values(gen, n, bits, k, specials));
        refs.emplace_back(static_cast<size_t>(n));
        ref_stats.push_back(flexpoint_fake_quantize_ref(data.back().data(), refs.back().data(), n, bits, k));
      }
  for_targets_and_threads([&](const std::string& target, int threads) {
    for (size_t j = 0; j < all.size(); ++j) {
      check_flex(all[j], data[j], refs[j], ref_stats[j], target, threads);
      if (::testing::Test::HasFatalFailure()) return;
      ++cases;
    }
  });
  EXPECT_GT(cases, 300);
}

TEST(ShiftQuantDifferential, FastEqualsRefEveryTargetAndThreadCount) {
  std::mt19937 gen(seed(102));
  int cases = 0;
  // Shapes with odd columns (tails of every length), rows x cols above 2^15 for the larger ones,
  // groups of 1, odd, the recipe's 32, wider than the row.
  const shiftquant_case shapes[] = {
      {1, 1, 4, 1, 7, false},      {3, 5, 4, 2, 7, true},        {7, 33, 4, 32, 7, false},
      {7, 33, 4, 32, 7, true},     {5, 100, 2, 3, 0, false},     {5, 100, 8, 7, 30, true},
      {9, 4099, 4, 32, 7, false},  {9, 4099, 4, 32, 7, true},    {37, 1031, 16, 128, 30, false},
      {37, 1031, 6, 17, 3, true},  {300, 129, 4, 32, 7, true},   {300, 129, 8, 200, 7, false},
      {65, 515, 4, 64, 30, false}, {65, 515, 3, 9, 2, true}};
  std::vector<std::vector<float>> data, refs;
  std::vector<shiftquant_case> all;
  for (const auto& s : shapes)
    for (bool specials : {false, true}) {
      all.push_back(s);
      data.push_back(shiftquant_values(gen, s.rows, s.cols, s.group, s.bits, specials));
      refs.emplace_back(data.back().size());
      shiftquant_fake_quantize_ref(data.back().data(), refs.back().data(), s.rows, s.cols, s.bits, s.group, s.max_shift,
                                   s.stochastic, 5, 77);
    }
  for_targets_and_threads([&](const std::string& target, int threads) {
    for (size_t j = 0; j < all.size(); ++j) {
      check_shiftquant(all[j], data[j], refs[j], target, threads);
      if (::testing::Test::HasFatalFailure()) return;
      ++cases;
    }
  });
  EXPECT_GT(cases, 80);
}

// Stochastic rounding on its decision boundary: in int4 rows whose groups each start with 7 (so
// s = 1 and v = x), every other value is placed so that its fraction t = v - floor(v) is the
// element's own uniform draw u (Philox word of counter r * cols + c) or one step 2^-24 either
// side of it. The reference rounds up iff u < t (checked here), and the fast kernel must agree
// on every one: an off-by-one in the comparison or in u or t shows at once.
TEST(ShiftQuantDifferential, StochasticDrawsOnTheRoundingBoundary) {
  const int64_t rows = 64, cols = 515;  // 2^15 < 64 x 515: the parallel path
  const int group = 8;
  const uint64_t sr_seed = 5, tensor = 77;
  std::vector<float> x(static_cast<size_t>(rows * cols)), expect(x.size());
  int64_t placed = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = static_cast<size_t>(r * cols + c);
      if (c % group == 0) {
        x[i] = expect[i] = 7.0f;
        continue;
      }
      const double u = double(random_word(sr_seed, tensor, uint64_t(r * cols + c)) >> 8) * 0x1p-24;
      const double t = u + double(static_cast<int>(c % 3) - 1) * 0x1p-24;  // u - 2^-24, u, u + 2^-24
      if (!(t > 0 && t < 1)) {
        x[i] = expect[i] = 0.0f;
        continue;
      }
      // Positive x = t (floor 0); negative x = t - 1 (floor -1, fraction t). Both exact in float.
      const bool negative = (r + c / 3) % 2 == 1;
      x[i] = static_cast<float>(negative ? t - 1 : t);
      expect[i] = static_cast<float>(negative ? (u < t ? 0.0 : -1.0) : (u < t ? 1.0 : 0.0));
      ++placed;
    }
  std::vector<float> ref(x.size());
  shiftquant_fake_quantize_ref(x.data(), ref.data(), rows, cols, 4, group, 7, true, sr_seed, tensor);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(ref[i], expect[i]) << "reference at " << i << " input " << x[i];
  for_targets_and_threads([&](const std::string& target, int threads) {
    std::vector<float> fast(x.size());
    shiftquant_fake_quantize(x.data(), fast.data(), rows, cols, 4, group, 7, true, sr_seed, tensor);
    const int64_t i = first_difference(ref.data(), fast.data(), rows * cols);
    ASSERT_EQ(i, -1) << "target=" << target << " threads=" << threads << " index " << i << " input "
                     << hex(x[size_t(i)]) << " ref " << hex(ref[size_t(i)]) << " fast " << hex(fast[size_t(i)]);
  });
  EXPECT_GT(placed, 20000);
}

// The shift from the float bits equals the double ratio through libm's log2 on pairs that sit on
// and next to every power-of-two ratio, subnormals included, and random pairs.
TEST(ShiftQuantDifferential, GroupShiftFromBitsEqualsLog2OfTheRatio) {
  std::mt19937 gen(seed(103));
  std::uniform_real_distribution<float> uni(1.0f, 2.0f);
  int64_t cases = 0;
  auto check = [&](float a, float b, int s) {
    if (!(b <= a)) std::swap(a, b);
    ASSERT_EQ(shiftquant_group_shift(a, b, s), shiftquant_group_shift_ref(a, b, s))
        << "amax_row " << hex(a) << " amax_group " << hex(b) << " max_shift " << s;
    ++cases;
  };
  for (int ea = -149; ea <= 127; ea += 3)
    for (int j = 0; j <= 40 && ea - j >= -149; ++j) {
      const float a = std::ldexp(1.0f, ea), b = std::ldexp(1.0f, ea - j);
      for (float bb : {b, std::nextafter(b, 0.0f), std::nextafter(b, INFINITY)})
        for (float aa : {a, std::nextafter(a, INFINITY), std::nextafter(a, 0.0f)})
          for (int s : {0, 7, 30}) check(aa, bb, s);
    }
  for (int i = 0; i < 200000; ++i) {
    const float a = uni(gen) * std::ldexp(1.0f, static_cast<int>(gen() % 270) - 149);
    const float b = uni(gen) * std::ldexp(1.0f, static_cast<int>(gen() % 270) - 149);
    check(a, b, static_cast<int>(gen() % 31));
    check(a, 0.0f, static_cast<int>(gen() % 31));
  }
  EXPECT_GT(cases, 400000);
}

// ---- the _ref against hand-computed cases ------------------------------------------------------

// flex16+5 at k = -4 (kappa = 1/16, qmax = 32767): every expectation by hand in exact arithmetic.
TEST(FlexpointRef, HandComputedTiesMaxAndSaturation) {
  const float payload_nan = std::bit_cast<float>(0xffc12345u);
  const std::vector<float> x = {
      2.5f / 16,          // mantissa 2.5, a tie: to even 2 -> 0.125
      3.5f / 16,          // 3.5 -> 4 -> 0.25
      -2.5f / 16,         // -2.5 -> -2 -> -0.125
      32767.0f / 16,      // the max representable, 2047.9375: kept
      32767.5f / 16,      // 32767.5, a tie: to even 32768 > qmax: saturates to 2047.9375
      2048.0f,            // 32768: saturates
      -0.01f,             // -0.16 -> -0: the sign stays
      1e-45f,             // a subnormal: +0
      INFINITY, -INFINITY, payload_nan,
      1e30f,              // a finite huge value: Gamma = 1.6e31 exactly, saturates
  };
  std::vector<float> y(x.size());
  const flex_stats st = flexpoint_fake_quantize_ref(x.data(), y.data(), int64_t(x.size()), 16, -4);
  EXPECT_EQ(y[0], 0.125f);
  EXPECT_EQ(y[1], 0.25f);
  EXPECT_EQ(y[2], -0.125f);
  EXPECT_EQ(y[3], 2047.9375f);
  EXPECT_EQ(y[4], 2047.9375f);
  EXPECT_EQ(y[5], 2047.9375f);
  EXPECT_EQ(bits_of(y[6]), bits_of(-0.0f));
  EXPECT_EQ(bits_of(y[7]), bits_of(0.0f));
  EXPECT_EQ(y[8], 2047.9375f);
  EXPECT_EQ(y[9], -2047.9375f);
  EXPECT_EQ(bits_of(y[10]), 0xffc12345u);  // NaN passes through, payload and sign
  EXPECT_EQ(y[11], 2047.9375f);
  EXPECT_EQ(st.gamma, double(1e30f) * 16);  // the largest finite mantissa, unclamped
  EXPECT_EQ(st.amax, 1e30f);
  EXPECT_EQ(st.nonfinite, 3);
  EXPECT_EQ(st.saturated, 3);  // 32767.5/16, 2048 and 1e30 (Inf counts as nonfinite)
  // Only NaN/Inf beyond the grid: Gamma reads as an overflow, qmax + 1.
  const float inf_only[] = {INFINITY, 1.0f};
  float out2[2];
  EXPECT_EQ(flexpoint_fake_quantize_ref(inf_only, out2, 2, 16, 0).gamma, 32768.0);
  // flex8 at k = 0 (qmax = 127): 126.5 -> 126 (even), 127.5 -> 128 -> saturated at 127.
  const float small[] = {126.5f, 127.5f, -127.5f, 0.5f, 1.5f};
  float out[5];
  const flex_stats s8 = flexpoint_fake_quantize_ref(small, out, 5, 8, 0);
  EXPECT_EQ(out[0], 126.0f);
  EXPECT_EQ(out[1], 127.0f);
  EXPECT_EQ(out[2], -127.0f);
  EXPECT_EQ(bits_of(out[3]), bits_of(0.0f));
  EXPECT_EQ(out[4], 2.0f);
  EXPECT_EQ(s8.gamma, 128.0);
  EXPECT_EQ(s8.saturated, 2);
  EXPECT_THROW(flexpoint_fake_quantize_ref(small, out, 5, 1, 0), error);
  EXPECT_THROW(flexpoint_fake_quantize(small, out, 5, 16, 600), error);
}

// int4 (qmax = 7), groups of 4: the row amax 7 gives s_row = 1, and each group's shift and scale
// are worked out by hand.
TEST(ShiftQuantRef, HandComputedShiftsAndTies) {
  const std::vector<float> x = {
      7.0f, 2.5f, 3.5f, -0.5f,        // amax 7: k = 0, s = 1; 2.5 -> 2, 3.5 -> 4 (ties to even), -0.5 -> -0
      1.75f, 0.375f, -0.625f, 0.0f,   // amax 1.75: 7 / 1.75 = 4, k = 2, s = 1/4; 1.5 -> 2, -2.5 -> -2
      0.8f, 0.0625f, 0.1f, -0.8f,     // amax 0.8: log2(8.75) = 3.13, k = 3, s = 1/8; 0.5 -> 0, 0.8 -> 0.75
      0.0f, -0.0f, 0.0f, 0.0f,        // all zero: k = max_shift, values stay +-0
      3.5f, 1.25f, -3.5f, 0.0f,       // amax 3.5: ratio exactly 2, k = 1, s = 1/2; 2.5 -> 2 -> 1.0
  };
  std::vector<float> y(x.size());
  shiftquant_fake_quantize_ref(x.data(), y.data(), 1, int64_t(x.size()), 4, 4, 7, false, 0, 0);
  const std::vector<float> expect = {7.0f,   2.0f,    4.0f,  -0.0f,   1.75f, 0.5f,  -0.5f,  0.0f, 0.75f, 0.0f,
                                     0.125f, -0.75f,  0.0f,  -0.0f,   0.0f,  0.0f,  3.5f,   1.0f, -3.5f, 0.0f};
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(bits_of(y[i]), bits_of(expect[i])) << i << " " << y[i];
  // The cap: with max_shift 1 the 0.8-group gets s = 1/2 (0.8 -> 1.6 -> 2 -> 1.0).
  shiftquant_fake_quantize_ref(x.data(), y.data(), 1, int64_t(x.size()), 4, 4, 1, false, 0, 0);
  EXPECT_EQ(y[8], 1.0f);
  EXPECT_EQ(y[4], 2.0f);  // 1.75 / 0.5 = 3.5 -> 4 (tie to even) -> 2.0

  // The shift for known group maxima (exact ratios and one float either side of them).
  EXPECT_EQ(shiftquant_group_shift_ref(7.0f, 1.75f, 7), 2);
  EXPECT_EQ(shiftquant_group_shift_ref(7.0f, std::nextafter(1.75f, 2.0f), 7), 1);  // ratio just below 4
  EXPECT_EQ(shiftquant_group_shift_ref(7.0f, std::nextafter(1.75f, 0.0f), 7), 2);
  EXPECT_EQ(shiftquant_group_shift_ref(1.0f, 1.0f, 7), 0);
  EXPECT_EQ(shiftquant_group_shift_ref(1.0f, 0.0f, 5), 5);
  EXPECT_EQ(shiftquant_group_shift_ref(1.0f, std::ldexp(1.0f, -149), 30), 30);           // capped
  EXPECT_EQ(shiftquant_group_shift_ref(std::ldexp(1.0f, -126), std::ldexp(1.0f, -149), 30), 23);  // subnormal
  EXPECT_EQ(shiftquant_group_shift(std::ldexp(1.0f, -126), std::ldexp(1.5f, -148), 30), 21);

  // Max representable: a row [qmax * s, ...] keeps its max exactly, and -max.
  const float row[] = {-7.0f, 7.0f, 6.5f, 5.5f};  // 6.5 -> 6, 5.5 -> 6 (ties to even)
  float out[4];
  shiftquant_fake_quantize_ref(row, out, 1, 4, 4, 4, 7, false, 0, 0);
  EXPECT_EQ(out[0], -7.0f);
  EXPECT_EQ(out[1], 7.0f);
  EXPECT_EQ(out[2], 6.0f);
  EXPECT_EQ(out[3], 6.0f);

  // NaN/Inf rows are NaN, all-zero rows +0.
  const float bad[] = {1.0f, NAN, 0.0f, -0.0f, INFINITY, 2.0f};
  float out3[6];
  shiftquant_fake_quantize_ref(bad, out3, 3, 2, 4, 32, 7, false, 0, 0);
  EXPECT_TRUE(std::isnan(out3[0]) && std::isnan(out3[1]));
  EXPECT_EQ(bits_of(out3[2]), 0u);
  EXPECT_EQ(bits_of(out3[3]), 0u);
  EXPECT_TRUE(std::isnan(out3[4]) && std::isnan(out3[5]));
  EXPECT_THROW(shiftquant_fake_quantize_ref(row, out, 1, 4, 4, 4, 31, false, 0, 0), error);
  EXPECT_THROW(shiftquant_fake_quantize(row, out, 1, 4, 17, 4, 7, false, 0, 0), error);
}

// Stochastic rounding against the Philox word of each element: [7, 0.25, -0.25, 2.75] has s = 1,
// so element c rounds up from floor(x) iff u_c < x - floor(x), u_c = (word >> 8) 2^-24 of
// counter c (row 0).
TEST(ShiftQuantRef, StochasticRoundingFollowsThePhiloxWord) {
  const float x[] = {7.0f, 0.25f, -0.25f, 2.75f};
  for (uint64_t tensor = 0; tensor < 64; ++tensor) {
    float y[4];
    shiftquant_fake_quantize_ref(x, y, 1, 4, 4, 4, 7, true, 9, tensor);
    EXPECT_EQ(y[0], 7.0f);
    const double frac[] = {0, 0.25, 0.75, 0.75}, lo[] = {7, 0, -1, 2};
    for (int c = 1; c < 4; ++c) {
      const double u = double(random_word(9, tensor, uint64_t(c)) >> 8) * 0x1p-24;
      EXPECT_EQ(y[c], float(u < frac[c] ? lo[c] + 1 : lo[c])) << tensor << " " << c;
    }
  }
}

// ---- speed (not run by default: --gtest_also_run_disabled_tests) -------------------------------

// Prints fast / ref throughput on 4M floats (no assertion: timings depend on the machine).
TEST(FlexShiftQuantSpeed, DISABLED_PrintsFastOverRef) {
  const int64_t rows = 1024, cols = 4096, n = rows * cols;
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n)), y(x.size());
  for (auto& v : x) v = normal(gen);
  auto time = [&](auto&& fn) {
    fn();  // warm
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  const int saved = omp_get_max_threads();
  for (int threads : {1, saved}) {
    omp_set_num_threads(threads);
    const double fr = time([&] { flexpoint_fake_quantize_ref(x.data(), y.data(), n, 16, -12); });
    const double ff = time([&] { flexpoint_fake_quantize(x.data(), y.data(), n, 16, -12); });
    const double sr =
        time([&] { shiftquant_fake_quantize_ref(x.data(), y.data(), rows, cols, 4, 32, 7, false, 1, 2); });
    const double sf = time([&] { shiftquant_fake_quantize(x.data(), y.data(), rows, cols, 4, 32, 7, false, 1, 2); });
    const double qr = time([&] { shiftquant_fake_quantize_ref(x.data(), y.data(), rows, cols, 4, 32, 7, true, 1, 2); });
    const double qf = time([&] { shiftquant_fake_quantize(x.data(), y.data(), rows, cols, 4, 32, 7, true, 1, 2); });
    std::printf("threads=%d [%lld floats]\n", threads, static_cast<long long>(n));
    auto line = [](const char* what, double ref, double fast) {
      std::printf("  %-18s ref %8.2f ms  fast %7.2f ms  fast/ref speed %5.1fx\n", what, ref * 1e3, fast * 1e3,
                  ref / fast);
    };
    line("flex16 k=-12", fr, ff);
    line("shiftquant g32", sr, sf);
    line("shiftquant g32~sr", qr, qf);
  }
  omp_set_num_threads(saved);
}

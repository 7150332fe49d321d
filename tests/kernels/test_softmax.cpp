// The log-sum-exp kernels (include/lowbit/kernels/softmax.hpp) against an independent long-double
// computation and their scalar _ref twins: the SIMD float64 Exp is within 1 ulp and the sum runs
// in lanes, so each result must lie within a few 1e-15 (relative) of the exact value; NaN rows
// stay NaN, -inf entries take no part.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "lowbit/kernels/softmax.hpp"

namespace lowbit {
namespace {

long double exact_sum_exp(const std::vector<float>& z, long double shift) {
  long double s = 0;
  for (float v : z) s += std::exp(static_cast<long double>(v) - shift);
  return s;
}

std::vector<float> random_logits(size_t n, float spread, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, spread);
  std::vector<float> z(n);
  for (float& v : z) v = d(rng);
  return z;
}

TEST(Softmax, SumsMatchLongDoubleOnEveryLength) {
  // Lengths around the vector widths (tails) and a vocabulary's (32,000).
  for (size_t n : {1u, 2u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 33u, 100u, 4097u, 32000u}) {
    for (float spread : {0.1f, 3.0f, 30.0f}) {
      const std::vector<float> z = random_logits(n, spread, static_cast<uint32_t>(n * 7 + spread));
      const float m = max_of(z.data(), static_cast<int64_t>(n));
      EXPECT_EQ(m, max_of_ref(z.data(), static_cast<int64_t>(n)));
      const long double exact = exact_sum_exp(z, m);
      const double fast = sum_exp_shifted(z.data(), static_cast<int64_t>(n), m);
      EXPECT_LE(std::fabs((fast - exact) / exact), 4e-15L) << "n " << n << " spread " << spread;
      const double lse = log_sum_exp(z.data(), static_cast<int64_t>(n));
      const long double lse_exact = m + std::log(exact);
      EXPECT_LE(std::fabs(lse - lse_exact), 4e-15L * std::max(1.0L, std::fabs(lse_exact))) << n;
      EXPECT_NEAR(lse, log_sum_exp_ref(z.data(), static_cast<int64_t>(n)), 4e-15 * std::max(1.0, std::fabs(lse)));
    }
  }
}

TEST(Softmax, ProbabilitiesAreTheCorrectlyRoundedFloatsOrOneUlpOff) {
  const std::vector<float> z = random_logits(1001, 5.0f, 3);
  const float m = max_of(z.data(), 1001);
  const double inv = 1.0 / sum_exp_shifted(z.data(), 1001, m);
  std::vector<float> p(z.size()), p_ref(z.size());
  exp_shifted_scaled(z.data(), 1001, m, inv, p.data());
  exp_shifted_scaled_ref(z.data(), 1001, m, inv, p_ref.data());
  double total = 0;
  for (size_t i = 0; i < z.size(); ++i) {
    const long double exact = std::exp(static_cast<long double>(z[i]) - m) * inv;
    // One float ulp at most: the double product is within 2 double ulps of exact, then rounded.
    EXPECT_LE(std::fabs(p[i] - exact), std::nextafter(p[i], INFINITY) - p[i]) << i;
    EXPECT_LE(std::fabs(p[i] - p_ref[i]), std::nextafter(p_ref[i], INFINITY) - p_ref[i]) << i;
    total += p[i];
  }
  EXPECT_NEAR(total, 1.0, 1e-5);
}

TEST(Softmax, NaNMakesTheSumNaNAndMinusInfinityTakesNoPart) {
  std::vector<float> z = random_logits(100, 2.0f, 5);
  const float m = max_of(z.data(), 100);
  const double base = sum_exp_shifted(z.data(), 100, m);
  // -inf entries (masked logits) add exp(-inf) = 0.
  std::vector<float> masked = z;
  masked.insert(masked.begin() + 40, 10, -std::numeric_limits<float>::infinity());
  EXPECT_EQ(max_of(masked.data(), 110), m);
  EXPECT_NEAR(sum_exp_shifted(masked.data(), 110, m), base, 1e-14 * base);
  // A NaN anywhere (in the vector body or the tail) makes the sum NaN, as std::exp does, and the
  // max skips it.
  for (size_t at : {0u, 5u, 64u, 99u}) {
    std::vector<float> bad = z;
    bad[at] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_TRUE(std::isnan(sum_exp_shifted(bad.data(), 100, m))) << at;
    EXPECT_TRUE(std::isnan(log_sum_exp(bad.data(), 100))) << at;
    EXPECT_FALSE(std::isnan(max_of(bad.data(), 100))) << at;
    std::vector<float> p(100);
    exp_shifted_scaled(bad.data(), 100, m, 1.0, p.data());
    EXPECT_TRUE(std::isnan(p[at])) << at;
  }
  // All -inf: the max is -inf and every shifted entry NaN (-inf - -inf), as in the reference.
  const std::vector<float> none(20, -std::numeric_limits<float>::infinity());
  EXPECT_EQ(max_of(none.data(), 20), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(log_sum_exp(none.data(), 20)));
  EXPECT_TRUE(std::isnan(log_sum_exp_ref(none.data(), 20)));
}

TEST(Softmax, ShiftsBeyondTheVectorExpRangeFallBackExactly) {
  // A shift far below the entries puts exp's argument past 706 (Highway's Exp range): the scalar
  // path takes over and overflows to +inf like std::exp.
  const std::vector<float> z(40, 1.0f);
  EXPECT_EQ(sum_exp_shifted(z.data(), 40, -800.0), sum_exp_shifted_ref(z.data(), 40, -800.0));
  EXPECT_TRUE(std::isinf(sum_exp_shifted(z.data(), 40, -800.0)));
  // Large negative arguments underflow to 0 in both.
  EXPECT_EQ(sum_exp_shifted(z.data(), 40, 2000.0), 0.0);
}

}  // namespace
}  // namespace lowbit

// Autoflex (Koster et al. 2017, arXiv 1711.02213; docs/formats.md §1.5): hand-computed exponents and the
// paper's behavioural checks, run against a simulated tensor stream. The simulated kernel knows
// the true floating-point maximum m of each use and returns what a saturating flexN+E kernel
// would: Gamma = min(round(m / kappa), 2^(N-1) - 1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "lowbit/base/error.hpp"
#include "lowbit/train/autoflex.hpp"

namespace lowbit {
namespace {

double mantissa_max(int n) { return std::ldexp(1.0, n - 1) - 1.0; }

// The kernel's report for a use whose true maximum is `true_max`, under the current exponent.
double kernel_gamma(const autoflex& af, int n, double true_max) {
  return std::min(std::round(true_max / af.kappa()), mantissa_max(n));
}

// flexN+E with the paper's hyper-parameters; gamma (additive headroom, in mantissa units) keeps
// the paper's share of the mantissa range, 100 / 32767 of M, so that narrow mantissas stay valid
// (alpha * gamma < M), but at least one mantissa unit: Gamma is rounded, so phi = Gamma * kappa
// can be half a unit below the true maximum, and with alpha = 2 a 2x growth fits only when
// gamma > 3/4 covers that.
autoflex_config flex(int n, int e) {
  autoflex_config cfg;
  cfg.mantissa_bits = n;
  cfg.exponent_bits = e;
  cfg.gamma = std::max(1.0, 100 * mantissa_max(n) / mantissa_max(16));
  return cfg;
}

// Algorithm 1 driven to acceptance; returns the number of trials (ops run), or -1 if it did not
// accept within `max_trials`.
int run_initialisation(autoflex& af, int n, double true_max, int max_trials = 64) {
  for (int t = 1; t <= max_trials; ++t) {
    if (af.initialize_step(kernel_gamma(af, n, true_max))) return t;
  }
  return -1;
}

// Log-spaced maxima over [lo, hi], `count` of them.
std::vector<double> log_spaced(double lo, double hi, int count) {
  std::vector<double> v;
  for (int i = 0; i < count; ++i) {
    v.push_back(lo * std::pow(hi / lo, double(i) / double(count - 1)));
  }
  return v;
}

// ---- configuration ------------------------------------------------------------------------------

TEST(AutoflexConfig, DefaultsAreFlex16p5WithPaperHyperParameters) {
  const autoflex af;
  EXPECT_EQ(af.exponent(), 0);
  EXPECT_EQ(af.kappa(), 1.0);
  EXPECT_FALSE(af.last_overflowed());
  EXPECT_TRUE(af.history().empty());
  const autoflex_config cfg;
  EXPECT_EQ(cfg.mantissa_bits, 16);
  EXPECT_EQ(cfg.exponent_bits, 5);
  EXPECT_EQ(cfg.alpha, 2);
  EXPECT_EQ(cfg.beta, 3);
  EXPECT_EQ(cfg.gamma, 100);
  EXPECT_EQ(cfg.window, 16);
}

TEST(AutoflexConfig, RejectsImpossibleParameters) {
  EXPECT_THROW(autoflex(flex(2, 5)), format_error);
  EXPECT_THROW(autoflex(flex(33, 5)), format_error);
  EXPECT_THROW(autoflex(flex(16, 0)), format_error);
  EXPECT_THROW(autoflex(flex(16, 11)), format_error);
  autoflex_config cfg;
  cfg.alpha = 0.5;
  EXPECT_THROW(autoflex{cfg}, error);
  cfg = {};
  cfg.beta = -1;
  EXPECT_THROW(autoflex{cfg}, error);
  cfg = {};
  cfg.gamma = NAN;
  EXPECT_THROW(autoflex{cfg}, error);
  cfg = {};
  cfg.window = 0;
  EXPECT_THROW(autoflex{cfg}, error);
  // alpha * gamma >= M: the additive headroom alone would push the exponent up on every update.
  cfg = {};
  cfg.mantissa_bits = 8;  // M = 127 < 2 * 100
  EXPECT_THROW(autoflex{cfg}, error);
  cfg.gamma = 63;
  EXPECT_NO_THROW(autoflex{cfg});
}

TEST(AutoflexConfig, RejectsGammaThatIsNotAMagnitude) {
  autoflex af;
  EXPECT_THROW(af.update(-1), error);
  EXPECT_THROW(af.update(NAN), error);
  EXPECT_THROW(af.update(INFINITY), error);
  EXPECT_THROW(af.initialize_step(-1), error);
  EXPECT_TRUE(af.history().empty());
  EXPECT_EQ(af.exponent(), 0);
}

// ---- exponent_for_max ---------------------------------------------------------------------------

TEST(AutoflexExponentForMax, HandComputedFlex16p5) {
  const autoflex af;  // N = 16: M = 32767; E = 5: k in [-16, 15]
  EXPECT_EQ(af.exponent_for_max(32767), 0);
  EXPECT_EQ(af.exponent_for_max(32766.5), 0);
  EXPECT_EQ(af.exponent_for_max(65534), 1);      // 2 * M: exactly M at k = 1
  EXPECT_EQ(af.exponent_for_max(65535), 2);
  EXPECT_EQ(af.exponent_for_max(1), -14);        // 1 <= M * 2^-14 = 1.99994, > M * 2^-15
  EXPECT_EQ(af.exponent_for_max(2), -13);        // M * 2^-14 = 1.99994 < 2
  EXPECT_EQ(af.exponent_for_max(0.5), -15);
  EXPECT_EQ(af.exponent_for_max(1e6), 5);        // 1e6 / 32 = 31250 <= M < 1e6 / 16
}

// ceil(log2(chi)) - (N - 1) would answer 0 for chi in (32767, 32768], where chi / 1 rounds to
// 32768 > M: the implementation uses the safe k = ceil(log2(chi / M)).
TEST(AutoflexExponentForMax, PowerOfTwoBoundaryDoesNotOverflow) {
  const autoflex af;
  EXPECT_EQ(af.exponent_for_max(32768), 1);
  EXPECT_EQ(af.exponent_for_max(32767.5), 1);
  const autoflex af8(flex(8, 4));  // M = 127, k in [-8, 7]
  EXPECT_EQ(af8.exponent_for_max(127), 0);
  EXPECT_EQ(af8.exponent_for_max(128), 1);
  EXPECT_EQ(af8.exponent_for_max(254), 1);
  EXPECT_EQ(af8.exponent_for_max(255), 2);
  EXPECT_EQ(af8.exponent_for_max(256), 2);
}

TEST(AutoflexExponentForMax, ClampsToTheExponentRange) {
  const autoflex af;  // k in [-16, 15]
  EXPECT_EQ(af.exponent_for_max(1e-9), -16);
  EXPECT_EQ(af.exponent_for_max(0), -16);
  EXPECT_EQ(af.exponent_for_max(1e12), 15);
  EXPECT_EQ(af.exponent_for_max(INFINITY), 15);
  const autoflex af1(flex(16, 1));  // k in [-1, 0]
  EXPECT_EQ(af1.exponent_for_max(1), -1);
  EXPECT_EQ(af1.exponent_for_max(1e9), 0);
}

// For every chi inside the representable range: chi fits (chi <= M * 2^k) and one exponent lower
// it would not (the smallest such k), including at exact multiples M * 2^j and powers of two.
TEST(AutoflexExponentForMax, IsTheSmallestExponentThatFits) {
  for (int n : {3, 8, 12, 16, 24, 32}) {
    const autoflex af(flex(n, 8));  // k in [-128, 127]
    const double m = mantissa_max(n);
    std::vector<double> chis;
    std::mt19937_64 rng(n);
    std::uniform_real_distribution<double> log_u(-60, 60);
    for (int i = 0; i < 2000; ++i) chis.push_back(std::exp2(log_u(rng)));
    for (int j = -60; j <= 60; ++j) {
      chis.push_back(std::ldexp(1.0, j));
      chis.push_back(std::ldexp(m, j));
      chis.push_back(std::nextafter(std::ldexp(m, j), INFINITY));
    }
    for (double chi : chis) {
      const int k = af.exponent_for_max(chi);
      ASSERT_LE(chi, std::ldexp(m, k)) << "N=" << n << " chi=" << chi;
      ASSERT_GT(chi, std::ldexp(m, k - 1)) << "N=" << n << " chi=" << chi;
    }
  }
}

// ---- Algorithm 1: initialisation ----------------------------------------------------------------

TEST(AutoflexInit, HandTracedSteps) {
  {
    autoflex af;  // flex16+5
    EXPECT_FALSE(af.initialize_step(32767));  // overflow: k += N/2
    EXPECT_EQ(af.exponent(), 8);
  }
  {
    autoflex af;
    EXPECT_TRUE(af.initialize_step(20000));  // upper half: accept as is
    EXPECT_EQ(af.exponent(), 0);
  }
  {
    autoflex af;
    // Under-use, reliable (1000 > 2^7): target (1000 + 1) * 1 <= M * 2^-5 = 1023.97, accept.
    EXPECT_TRUE(af.initialize_step(1000));
    EXPECT_EQ(af.exponent(), -5);
  }
  {
    autoflex af;
    // Under-use, unreliable (100 <= 2^7): target 101 <= M * 2^-8 = 127.99, retry.
    EXPECT_FALSE(af.initialize_step(100));
    EXPECT_EQ(af.exponent(), -8);
  }
  {
    autoflex af;
    EXPECT_TRUE(af.initialize_step(16385));  // just above 2^(N-2): accept
    autoflex af2;
    EXPECT_TRUE(af2.initialize_step(16384));  // 2^(N-2): under-use, but already on target
    EXPECT_EQ(af2.exponent(), 0);
  }
}

TEST(AutoflexInit, ZeroMovesDownAndTerminatesAtTheBottom) {
  autoflex af;  // k in [-16, 15]
  EXPECT_FALSE(af.initialize_step(0));
  EXPECT_EQ(af.exponent(), -15);  // k -= N - 1
  EXPECT_FALSE(af.initialize_step(0));
  EXPECT_EQ(af.exponent(), -16);  // clamped
  EXPECT_TRUE(af.initialize_step(0));  // nothing left to try: accept an all-zero tensor
  EXPECT_EQ(af.exponent(), -16);
}

TEST(AutoflexInit, TerminatesAtTheTopOfTheRange) {
  autoflex af;  // k in [-16, 15]; a maximum of 1e12 cannot be represented
  const int trials = run_initialisation(af, 16, 1e12);
  EXPECT_GT(trials, 0);
  EXPECT_LE(trials, 4);
  EXPECT_EQ(af.exponent(), 15);
}

// From kappa = 1, maxima over 1e-4..1e4 (an 8-bit exponent, so the range never clamps) settle in
// a few trials; at the accepted exponent the max mantissa is in the upper half (up to the
// rounding error of a reliable jump, 2^(N-2) * 3 * 2^(-N/2)) and does not overflow.
TEST(AutoflexInit, ConvergesFromKappaOneAcrossEightDecades) {
  for (int n : {8, 12, 16}) {
    const double m = mantissa_max(n);
    const double upper_half = std::ldexp(1.0, n - 2) * (1 - 3 * std::ldexp(1.0, -(n / 2)));
    for (double true_max : log_spaced(1e-4, 1e4, 161)) {
      autoflex af(flex(n, 8));
      ASSERT_EQ(af.exponent(), 0);
      const int trials = run_initialisation(af, n, true_max);
      ASSERT_GT(trials, 0) << "N=" << n << " max=" << true_max;
      EXPECT_LE(trials, 5) << "N=" << n << " max=" << true_max;
      const double g = kernel_gamma(af, n, true_max);
      EXPECT_LT(g, m) << "N=" << n << " max=" << true_max;
      EXPECT_GE(g, upper_half) << "N=" << n << " max=" << true_max;
    }
  }
}

// flex16+5 cannot put a maximum below 2^14 * 2^-16 = 0.25 into the upper half: the exponent stops
// at the bottom of its range and initialisation still ends.
TEST(AutoflexInit, SmallMaximaStopAtTheBottomOfAFiveBitRange) {
  for (double true_max : {1e-4, 1e-2, 0.1}) {
    autoflex af;
    const int trials = run_initialisation(af, 16, true_max);
    ASSERT_GT(trials, 0) << true_max;
    EXPECT_LE(trials, 5) << true_max;
    EXPECT_EQ(af.exponent(), -16) << true_max;
  }
}

// ---- Algorithm 2: prediction --------------------------------------------------------------------

TEST(AutoflexPredict, HandComputedSteps) {
  autoflex af;  // flex16+5, alpha 2, beta 3, gamma 100
  // f = [1000]: chi = 2 * (1000 + 0 + 100) = 2200 <= M * 2^-3 = 4095.9, > M * 2^-4 = 2047.9.
  EXPECT_EQ(af.update(1000), -3);
  EXPECT_FALSE(af.last_overflowed());
  ASSERT_EQ(af.history().size(), 1u);
  EXPECT_EQ(af.history()[0], 1000);
  // Gamma = 16000 at kappa 1/8: f = [1000, 2000], mean 1500, std 500;
  // chi = 2 * (2000 + 1500 + 12.5) = 7025 <= M * 2^-2 = 8191.75, > 4095.9.
  EXPECT_EQ(af.update(16000), -2);
  ASSERT_EQ(af.history().size(), 2u);
  EXPECT_EQ(af.history()[1], 2000);
  // Overflow at kappa 1/4: f = [2 * M / 4] = [16383.5], chi = 2 * (16383.5 + 25) = 32817 -> k = 1.
  EXPECT_EQ(af.update(32767), 1);
  EXPECT_TRUE(af.last_overflowed());
  ASSERT_EQ(af.history().size(), 1u);
  EXPECT_EQ(af.history()[0], 16383.5);
  af.update(5000);
  EXPECT_FALSE(af.last_overflowed());
}

TEST(AutoflexPredict, HistoryKeepsAtMostWindowEntries) {
  for (int window : {1, 4, 16}) {
    autoflex_config cfg;
    cfg.window = window;
    autoflex af(cfg);
    for (int i = 0; i < 3 * window + 5; ++i) {
      af.update(kernel_gamma(af, 16, 100.0 + i));
      ASSERT_LE(static_cast<int>(af.history().size()), window);
    }
    EXPECT_EQ(static_cast<int>(af.history().size()), window);
    // The newest entry is the last maximum seen (up to the kernel's rounding).
    EXPECT_NEAR(af.history().back(), 100.0 + 3 * window + 4, af.kappa());
  }
}

// Paper check: with a stationary input, kappa stops changing after at most l steps, whether the
// stream starts from an initialised exponent or cold from kappa = 1 (overflows included). Cold
// starts are checked for the paper's flex16 only: with a narrow mantissa the rounding of Gamma at
// two neighbouring exponents can feed std(f) enough to make the exponent alternate between them.
TEST(AutoflexPredict, StationaryInputSettlesWithinTheWindow) {
  for (int n : {8, 12, 16}) {
    for (bool initialise : {true, false}) {
      if (!initialise && n != 16) continue;
      for (double true_max : log_spaced(1e-3, 1e5, 97)) {
        autoflex_config cfg = flex(n, 8);
        autoflex af(cfg);
        if (initialise) {
          ASSERT_GT(run_initialisation(af, n, true_max), 0);
        }
        int last_change = 0;   // the update after which the exponent last changed
        int last_overflow = 0;
        for (int step = 1; step <= 5 * cfg.window; ++step) {
          const int before = af.exponent();
          af.update(kernel_gamma(af, n, true_max));
          if (af.last_overflowed()) last_overflow = step;
          if (af.exponent() != before) last_change = step;
        }
        if (initialise) {
          EXPECT_EQ(last_overflow, 0) << "N=" << n << " max=" << true_max;
          EXPECT_LE(last_change, cfg.window) << "N=" << n << " max=" << true_max;
        } else {
          // A cold start measures its first maxima with a coarse (or overflowing) kappa; those
          // entries keep influencing std(f) until they leave the window, so the exponent can
          // move once more about l steps after the last such change. It still settles.
          EXPECT_LE(last_change, last_overflow + 2 * cfg.window)
              << "N=" << n << " max=" << true_max;
        }
      }
    }
  }
}

// Paper check: once the history is steady (std(f) small), a maximum that doubles in one step does
// not overflow, thanks to the multiplicative headroom alpha = 2.
TEST(AutoflexPredict, TwoTimesGrowthDoesNotOverflow) {
  for (int n : {8, 16}) {
    const double m = mantissa_max(n);
    for (double true_max : log_spaced(1e-3, 1e5, 193)) {
      autoflex af(flex(n, 8));
      ASSERT_GT(run_initialisation(af, n, true_max), 0);
      for (int step = 0; step < 2 * 16; ++step) af.update(kernel_gamma(af, n, true_max));
      const double g = kernel_gamma(af, n, 2 * true_max);
      EXPECT_LT(g, m) << "N=" << n << " max=" << true_max;
      af.update(g);
      EXPECT_FALSE(af.last_overflowed()) << "N=" << n << " max=" << true_max;
    }
  }
}

// Paper check: after an overflow the history is cleared (it holds only the new, doubled estimate)
// and the exponent rises by at least one.
TEST(AutoflexPredict, OverflowClearsHistoryAndRaisesExponent) {
  for (double growth : {8.0, 10.0, 1e3}) {
    // flex16+5 spans maxima of about 0.25 (2^14 * 2^-16) to 1e9 (M * 2^15) without clamping.
    for (double true_max : log_spaced(1.0, 1e3, 31)) {
      autoflex af;
      ASSERT_GT(run_initialisation(af, 16, true_max), 0);
      for (int step = 0; step < 20; ++step) af.update(kernel_gamma(af, 16, true_max));
      ASSERT_EQ(af.history().size(), 16u);
      const int k_before = af.exponent();
      const double kappa_before = af.kappa();
      const double g = kernel_gamma(af, 16, growth * true_max);
      ASSERT_EQ(g, 32767) << "the jump must saturate the simulated kernel";
      af.update(g);
      EXPECT_TRUE(af.last_overflowed());
      ASSERT_EQ(af.history().size(), 1u);
      EXPECT_EQ(af.history()[0], 2 * 32767 * kappa_before);
      EXPECT_GE(af.exponent(), k_before + 1) << "growth=" << growth << " max=" << true_max;
      // Repeated uses climb until the maximum fits again.
      int steps = 0;
      do {
        af.update(kernel_gamma(af, 16, growth * true_max));
      } while (af.last_overflowed() && ++steps < 32);
      EXPECT_FALSE(af.last_overflowed()) << "growth=" << growth << " max=" << true_max;
    }
  }
}

// Paper check: every scale is a power of two inside the E-bit range, on a wild stream (zeros,
// tiny and huge maxima, overflows) and with small exponent fields that clamp often.
TEST(AutoflexPredict, ScalesArePowersOfTwoInsideTheExponentRange) {
  for (int e : {1, 3, 5, 8}) {
    for (int n : {4, 16}) {
      autoflex af(flex(n, e));
      const int kmin = -(1 << (e - 1)), kmax = (1 << (e - 1)) - 1;
      std::mt19937_64 rng(1000 * e + n);
      std::uniform_real_distribution<double> log_u(-40, 40);
      std::bernoulli_distribution zero(0.05);
      auto check = [&] {
        const int k = af.exponent();
        ASSERT_GE(k, kmin);
        ASSERT_LE(k, kmax);
        int exp2 = 0;
        ASSERT_EQ(std::frexp(af.kappa(), &exp2), 0.5);  // kappa = 2^(exp2 - 1) exactly
        ASSERT_EQ(exp2 - 1, k);
      };
      for (int t = 0; t < 8 && !af.initialize_step(kernel_gamma(af, n, 3.0)); ++t) check();
      check();
      for (int step = 0; step < 2000; ++step) {
        const double true_max = zero(rng) ? 0.0 : std::exp2(log_u(rng));
        const int k = af.update(kernel_gamma(af, n, true_max));
        ASSERT_EQ(k, af.exponent());
        check();
        ASSERT_LE(static_cast<int>(af.history().size()), 16);
      }
    }
  }
}

}  // namespace
}  // namespace lowbit

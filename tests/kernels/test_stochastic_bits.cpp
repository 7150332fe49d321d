// Stochastic rounding's draws, pinned from outside the kernels:
//   - the exact mode ~sr (docs/conventions.md §10, §33) against Random123's known answer for
//     Philox4x32-10 and against philox4x32_10 (itself pinned by that known answer in
//     test_reference.cpp) with the counter layout written out here, at the draw's resolution:
//     x = u goes down, x = u + 2^-24 goes up;
//   - the R-bit mode ~srR (docs/conventions.md §43) likewise, from the bytes / halfwords of the
//     Philox output;
//   - the bias bound of ~srR: the probability of rounding up, P_R(t) = #{k < 2^R : (k + 1/2) 2^-R < t} 2^-R
//     counted here, is within 2^-(R+1) of t on a fine grid of t, and the mean of many stochastic
//     roundings of fixed values equals P_R(t) within a stated sampling tolerance;
//   - the fast kernels' one-rounding decision of ~sr8 / ~sr16 (RoundSrHoisted's kCoarseDraw,
//     src/kernels/simd_round-inl.hpp) at the values where its proof is tight.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/simd.hpp"

using namespace lowbit;

namespace {

// The four output words of Philox block b of the stream (seed, tensor id), §33's layout spelled
// out: key = low halves of (seed, tensor id), counter = (b low, b high, seed high, tensor id high).
std::vector<uint32_t> block_words(uint64_t seed, uint64_t tensor_id, uint64_t b) {
  const uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(tensor_id)};
  const uint32_t ctr[4] = {static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), static_cast<uint32_t>(seed >> 32),
                           static_cast<uint32_t>(tensor_id >> 32)};
  uint32_t out[4];
  philox4x32_10(ctr, key, out);
  return {out[0], out[1], out[2], out[3]};
}

// The exact draw of element i: word i mod 4 of block i / 4, top 24 bits, as a multiple of 2^-24.
double exact_u(uint64_t seed, uint64_t tensor_id, uint64_t i) {
  return std::ldexp(static_cast<double>(block_words(seed, tensor_id, i / 4)[i % 4] >> 8), -24);
}

// The R-bit draw k of element i: the Philox output of block i / (128 / R) as a 128-bit
// little-endian number, bits [R j, R j + R) with j = i mod (128 / R).
uint32_t rbit_k(uint64_t seed, uint64_t tensor_id, uint64_t i, int bits) {
  const uint64_t per = 128 / static_cast<uint64_t>(bits);
  const std::vector<uint32_t> w = block_words(seed, tensor_id, i / per);
  const uint64_t bit = static_cast<uint64_t>(bits) * (i % per);
  return static_cast<uint32_t>((w[bit / 32] >> (bit % 32)) & ((uint64_t{1} << bits) - 1));
}

// Runs the spec (a plain cast onto the integers: lo = floor, hi = lo + 1) through the fast kernel, its
// _ref twin and quantize/dequantize, and returns the fast result after checking they agree.
std::vector<float> round_all_ways(const std::vector<float>& x, const std::string& spec, uint64_t tensor_id) {
  const format f = parse_format(spec);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> fast(x.size()), ref(x.size()), deq(x.size());
  fake_quantize(x.data(), fast.data(), 1, n, f, tensor_id);
  fake_quantize_ref(x.data(), ref.data(), 1, n, f, tensor_id);
  dequantize(quantize(x.data(), 1, n, f, tensor_id), deq.data());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(fast[i]), std::bit_cast<uint32_t>(ref[i])) << spec << " element " << i;
    EXPECT_EQ(std::bit_cast<uint32_t>(fast[i]), std::bit_cast<uint32_t>(deq[i])) << spec << " element " << i;
  }
  return fast;
}

}  // namespace

// Random123's known answer (counter 0, key 0) is the first block of the stream with seed 0 and
// tensor id 0: elements 0..3 draw u = (word >> 8) 2^-24 of 0x6627e8d5, 0xe169c58d, 0xbc57ac4c,
// 0x9b00dbd8. A value exactly at u stays down, one 2^-24 above goes up.
TEST(StochasticDraws, ExactModeFollowsPhiloxKnownAnswer) {
  const uint32_t kat[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  std::vector<float> at(4), above(4);
  for (int i = 0; i < 4; ++i) {
    at[static_cast<size_t>(i)] = std::ldexp(static_cast<float>(kat[i] >> 8), -24);
    above[static_cast<size_t>(i)] = at[static_cast<size_t>(i)] + 0x1p-24f;
  }
  for (float v : round_all_ways(at, "int8~sr", 0)) EXPECT_EQ(v, 0.0f);
  for (float v : round_all_ways(above, "int8~sr", 0)) EXPECT_EQ(v, 1.0f);
}

// 4096 elements of a stream whose seed and tensor id have high halves (the counter's words 2 and
// 3), positive and negative, on a row of the fast path and at an offset into the stream.
TEST(StochasticDraws, ExactModeIsTheDocumentedStream) {
  const uint64_t seed = 0x0000000500000003ull, tensor_id = 0x000000070000000bull;
  const size_t n = 4096;
  std::vector<float> x(n);
  std::vector<float> want(n);
  for (size_t i = 0; i < n; ++i) {
    const double u = exact_u(seed, tensor_id, i);
    // i mod 4: at u (down), u + 2^-24 (up), u - 1 (to -1: u < u fails), u - 1 + 2^-24 (to 0).
    switch (i % 4) {
      case 0: x[i] = static_cast<float>(u), want[i] = 0; break;
      case 1: x[i] = static_cast<float>(u + 0x1p-24), want[i] = 1; break;
      case 2: x[i] = static_cast<float>(u - 1), want[i] = -1; break;
      default: x[i] = static_cast<float>(u - 1 + 0x1p-24), want[i] = 0; break;
    }
  }
  const std::vector<float> got = round_all_ways(x, "int8~sr:" + std::to_string(seed), tensor_id);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i]) << "element " << i << " x " << x[i];
}

// ~sr8 on the same known answer: element i of block 0 takes byte i of the words, least significant
// byte first: d5 e8 27 66  8d c5 69 e1  4c ac 57 bc  d8 db 00 9b; u = (k + 1/2) / 256.
TEST(StochasticDraws, RBitModeFollowsPhiloxKnownAnswer) {
  const uint32_t bytes[16] = {0xd5, 0xe8, 0x27, 0x66, 0x8d, 0xc5, 0x69, 0xe1, 0x4c, 0xac, 0x57, 0xbc, 0xd8, 0xdb, 0x00, 0x9b};
  std::vector<float> at(16), above(16);
  for (int i = 0; i < 16; ++i) {
    at[static_cast<size_t>(i)] = (static_cast<float>(bytes[i]) + 0.5f) / 256.0f;
    above[static_cast<size_t>(i)] = at[static_cast<size_t>(i)] + 0x1p-24f;
  }
  for (float v : round_all_ways(at, "int8~sr8", 0)) EXPECT_EQ(v, 0.0f);
  for (float v : round_all_ways(above, "int8~sr8", 0)) EXPECT_EQ(v, 1.0f);
  // The draw words themselves: (2k + 1) << 23.
  std::vector<uint32_t> words(16);
  random_words(0, 0, 0, 16, words.data(), 8);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(words[static_cast<size_t>(i)], (2 * bytes[i] + 1) << 23) << i;
}

// Every R: 3000 elements from an odd offset of the stream, the draw recomputed from philox4x32_10.
TEST(StochasticDraws, RBitModeIsTheDocumentedStream) {
  const uint64_t seed = 0x0000000900000011ull, tensor_id = 0x0000000d00000002ull;
  for (int bits : {1, 2, 4, 8, 16}) {
    const size_t n = 3000;
    const uint64_t first = 77;
    std::vector<uint32_t> ref(n), fast(n);
    random_words_ref(seed, tensor_id, first, n, ref.data(), bits);
    random_words(seed, tensor_id, first, n, fast.data(), bits);
    std::vector<float> x(n), want(n);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t k = rbit_k(seed, tensor_id, first + i, bits);
      ASSERT_EQ(ref[i], (2 * k + 1) << (31 - bits)) << bits << " bits, element " << i;
      ASSERT_EQ(fast[i], ref[i]) << bits << " bits, element " << i;
    }
    // The kernels' element index starts at 0: x = u (down) or u + 2^-24 (up).
    for (size_t i = 0; i < n; ++i) {
      const double u = (rbit_k(seed, tensor_id, i, bits) + 0.5) * std::ldexp(1.0, -bits);
      x[i] = static_cast<float>(i % 2 ? u + 0x1p-24 : u);
      want[i] = i % 2 ? 1.0f : 0.0f;
    }
    const std::vector<float> got =
        round_all_ways(x, "int8~sr" + std::to_string(bits) + ":" + std::to_string(seed), tensor_id);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i]) << bits << " bits, element " << i;
  }
  EXPECT_THROW(random_words(1, 2, 0, 4, std::vector<uint32_t>(4).data(), 3), error);
}

namespace {

// P_R(t): the probability that the R-bit draw rounds a value at t in (0, 1) of its gap up, counted
// over the 2^R equally likely k: u = (k + 1/2) 2^-R < t.
double prob_up(int bits, double t) {
  const uint32_t m = 1u << bits;
  uint32_t up = 0;
  for (uint32_t k = 0; k < m; ++k) up += (k + 0.5) / m < t;
  return static_cast<double>(up) / m;
}

}  // namespace

// The bound of §43: |P_R(t) - t| <= 2^-(R+1) for every t (here every float multiple of 2^-20 in
// [0, 1), and the worst cases just above the draws' half-way points), and P_R(0) = 0 (values on
// the grid stay there); the exact mode's |P - t| < 2^-24 for comparison.
TEST(StochasticDraws, RBitBiasBound) {
  for (int bits : {1, 2, 4, 8}) {
    const double bound = std::ldexp(1.0, -(bits + 1));
    double worst = 0;
    for (uint32_t j = 0; j < (1u << 20); j += 7) {
      const double t = std::ldexp(static_cast<double>(j), -20);
      worst = std::max(worst, std::fabs(prob_up(bits, t) - t));
    }
    for (uint32_t k = 0; k < (1u << bits); ++k) {  // just above (k + 1/2) 2^-R: P jumps to (k + 1) 2^-R
      const double t = (k + 0.5) * std::ldexp(1.0, -bits) + 0x1p-24;
      worst = std::max(worst, std::fabs(prob_up(bits, t) - t));
    }
    EXPECT_LE(worst, bound) << bits;
    EXPECT_GT(worst, 0.99 * bound) << bits << ": the bound is attained";
    EXPECT_EQ(prob_up(bits, 0.0), 0.0);
  }
  EXPECT_LE(std::fabs(prob_up(16, 0.3) - 0.3), std::ldexp(1.0, -17));
}

// The mean of n = 2^19 stochastic roundings of a fixed value (2^17 elements under each of 4
// seeds; int8 grid, so the result is lo or lo + 1) against P_R(t) and t. The sampling tolerance
// is 5 standard deviations of the mean, 5 sqrt(P (1 - P) / n) <= 0.0035; a wrong draw layout,
// a 24-bit u or k/2^R instead of (k + 1/2)/2^R moves the mean by more for R <= 4.
TEST(StochasticDraws, RBitMeanRoundingWithinTheBound) {
  const int64_t per_seed = int64_t{1} << 17;
  const int seeds = 4;
  const double n = static_cast<double>(per_seed * seeds);
  for (int bits : {0, 2, 4, 8, 16}) {
    const double bound = bits ? std::ldexp(1.0, -(bits + 1)) : std::ldexp(1.0, -24);
    for (const double t0 : {0.0, 0.1, 1.0 / 3, 0.5, 0.53125 + 0x1p-20, 0.78125 + 0x1p-20, 0.999}) {
      for (double sign : {1.0, -1.0}) {
        double t = t0;
        const float value = static_cast<float>(sign * (2 + t0));  // lo = 2, hi = 3 (or -3, -2)
        t = std::fabs(static_cast<double>(value)) - 2;  // the t the kernel sees (2 + 1/3 is rounded)
        double sum = 0;
        for (int s = 0; s < seeds; ++s) {
          const std::string spec = "int8~sr" + (bits ? std::to_string(bits) : std::string()) + ":" + std::to_string(s + 1);
          const std::vector<float> x(static_cast<size_t>(per_seed), value);
          std::vector<float> y(x.size());
          fake_quantize(x.data(), y.data(), 1, per_seed, parse_format(spec), 3);
          for (float v : y) {
            ASSERT_TRUE(v == std::trunc(value) || v == std::trunc(value) + static_cast<float>(sign)) << v;
            sum += std::fabs(v) - 2;
          }
        }
        const double mean = sum / n;  // the frequency of moving away from zero
        // Away from zero with probability P(t) (for x < 0 the draw is compared with 1 - t, §33).
        const double p = bits ? (sign > 0 ? prob_up(bits, t) : 1 - prob_up(bits, 1 - t)) : t;
        const double tol = 5 * std::sqrt(std::max(p * (1 - p), 1e-12) / n) + 1e-12;
        SCOPED_TRACE("bits " + std::to_string(bits) + " t " + std::to_string(t) + " sign " + std::to_string(sign));
        EXPECT_LE(std::fabs(mean - p), bits ? tol : tol + bound);
        EXPECT_LE(std::fabs(mean - t), bound + tol);
        if (t == 0.0) {
          EXPECT_EQ(mean, 0.0);  // on the grid: never moves
        }
      }
    }
  }
}

// The ~sr8 / ~sr16 kernels decide up or down with one rounding of u -+ q (q = |y| / step; proof at
// RoundSrHoisted in src/kernels/simd_round-inl.hpp). Its edges, each element at its own draw u
// and on every SIMD target, positive and negative, against the reference: t = u (stays down),
// t = u +- ulp(q), 1 - t = u +- ulp(q) (the negative side's tie), q < 1/2 around 1 - u - 2^-25
// (where the reference's 1 - q rounds), tiny q, and q at the top of each binade; on a plain cast
// (the span kernel), under groups of 32 with power-of-two scales (the batch kernel; the group's
// first element 6 makes its scale 1), per channel (a row of 4096 with amax 127 or 448).
TEST(StochasticDraws, RBitCoarseDecisionAtTheBoundaries) {
  struct grid {
    const char* spec;
    int mbits, emin;  // minifloat (mbits >= 0) or integer (mbits < 0, codes below imax)
    int imax;
  };
  const grid grids[] = {{"e2m1~sr8", 1, 0, 0},       {"e4m3fn~sr8", 3, -6, 0},     {"e5m2~sr8", 2, -14, 0},
                        {"e3m2~sr8", 2, -2, 0},      {"int8~sr8", -1, 0, 127},     {"int4~sr8", -1, 0, 7},
                        {"e2m1~sr16", 1, 0, 0},      {"e4m3fn~sr16", 3, -6, 0},    {"int8~sr16", -1, 0, 127},
                        {"e2m1/g32:e8m0~sr8", 1, 0, 0}, {"int8/c~sr8", -1, 0, 127}, {"e4m3fn/c~sr8", 3, -6, 0}};
  const uint64_t seed = 5, tensor_id = 9;
  for (const auto& target : simd_targets()) {
    force_simd_target(target.first);
    SCOPED_TRACE(target.second);
    for (const grid& g : grids) {
      const std::string spec = std::string(g.spec) + ":" + std::to_string(seed);
      const int bits = parse_format(spec).sr_bits;
      const bool groups = spec.find("/g32") != std::string::npos, channel = spec.find("/c") != std::string::npos;
      const size_t n = 4096 * 3;
      std::vector<float> x(n);
      for (size_t i = 0; i < n; ++i) {
        const double u = (rbit_k(seed, tensor_id, i, bits) + 0.5) * std::ldexp(1.0, -bits);
        const size_t pick = (i * 7919) % 97;  // which case, and the binade, from the index
        double step = 1, lo = static_cast<double>(pick % static_cast<size_t>(std::max(g.imax, 1)));
        int e = 0;
        if (g.mbits >= 0) {  // binade e (emin - 1: below emin, the subnormal step)
          e = g.emin - 1 + static_cast<int>(pick % 4);
          const double m = std::ldexp(1.0, g.mbits);
          if (e < g.emin) step = std::ldexp(1.0, g.emin - g.mbits), lo = static_cast<double>(pick % static_cast<size_t>(m));
          else step = std::ldexp(1.0, e - g.mbits), lo = m + static_cast<double>(pick % static_cast<size_t>(m));
        }
        if (pick % 13 == 12) lo = g.mbits >= 0 ? 2 * std::ldexp(1.0, g.mbits) - 1 : g.imax - 1;  // a binade's top
        const double ulp_q = std::ldexp(1.0, std::ilogb(std::max(lo, 1.0)) - 23);
        double t = 0;
        switch (pick % 9) {
          case 0: t = u; break;
          case 1: t = u + ulp_q; break;
          case 2: t = u - ulp_q; break;
          case 3: t = 1 - u; break;
          case 4: t = 1 - u + ulp_q; break;
          case 5: t = 1 - u - ulp_q; break;
          case 6:  // q < 1/2 around 1 - u - 2^-25 (and 2^-25, 2^-26 off it)
            lo = 0, t = 1 - u - 0x1p-25 + static_cast<double>(static_cast<int>(pick % 3) - 1) * std::ldexp(1.0, -25 - static_cast<int>(pick % 2));
            break;
          case 7: lo = 0, t = std::ldexp(1.0 + static_cast<double>(pick), -40 - static_cast<int>(pick % 50)); break;
          default: t = std::ldexp(static_cast<double>((i * 2654435761u) % (1u << 20)), -20); break;
        }
        if (t < 0 || t >= 1) t = 0.5;
        if (lo == 0 && g.mbits >= 0) step = std::ldexp(1.0, g.emin - g.mbits);  // q < 1: below emin
        const double sign = (i / 9) % 2 ? -1.0 : 1.0;
        x[i] = static_cast<float>(sign * (lo + t) * step);
        if (groups && i % 32 == 0) x[i] = 6.0f;
        if (channel && i % 4096 == 0) x[i] = g.imax ? 127.0f : 448.0f;
      }
      SCOPED_TRACE(spec);
      if (channel) {  // 3 rows of 4096
        const format f = parse_format(spec);
        std::vector<float> fast(n), ref(n);
        fake_quantize(x.data(), fast.data(), 3, 4096, f, tensor_id);
        fake_quantize_ref(x.data(), ref.data(), 3, 4096, f, tensor_id);
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(std::bit_cast<uint32_t>(fast[i]), std::bit_cast<uint32_t>(ref[i])) << "element " << i;
      } else {
        round_all_ways(x, spec, tensor_id);
      }
    }
  }
  force_simd_target(0);
}

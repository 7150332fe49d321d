// The SIMD float32 exp kernels (include/lowbit/kernels/expf.hpp) against their _ref twins, bit for
// bit on every compiled SIMD target: a sweep over the whole float range (every 4093rd bit pattern,
// both signs, NaNs and infinities included), glibc's special-case thresholds and their neighbours,
// random arguments of attention scores and gate values, and every length around the vector widths
// (tails) with aliasing in place. (All 2^32 inputs were checked once, off the suite: no difference.)
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lowbit/kernels/expf.hpp"
#include "lowbit/kernels/simd.hpp"
#include "tests/kernels/bits.hpp"

namespace lowbit {
namespace {

using test::same;

std::vector<float> sweep_inputs() {
  std::vector<float> x;
  for (uint64_t b = 0; b < (uint64_t(1) << 32); b += 4093) x.push_back(std::bit_cast<float>(uint32_t(b)));
  // glibc's thresholds (src/kernels/expf_fast.cpp) and the floats next to them.
  for (uint32_t t : {0x42b17217u, 0xc2cff1b4u, 0xc2ce8ecfu, 0x42b00000u, 0xc2b00000u})
    for (int d = -3; d <= 3; ++d) x.push_back(std::bit_cast<float>(t + uint32_t(d)));
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(),
                  -std::numeric_limits<float>::denorm_min(), 1.0f, -1.0f, 88.0f, -88.0f, 103.5f, -103.5f})
    x.push_back(v);
  std::mt19937 gen(test::seed(17));
  std::normal_distribution<float> scores(0.0f, 4.0f);
  for (int i = 0; i < 100000; ++i) x.push_back(scores(gen));
  return x;
}

void expect_same(const std::vector<float>& fast, const std::vector<float>& ref, const std::vector<float>& x,
                 const std::string& what) {
  ASSERT_EQ(fast.size(), ref.size());
  int bad = 0;
  for (size_t i = 0; i < fast.size() && bad < 5; ++i)
    if (!same(fast[i], ref[i])) {
      ++bad;
      ADD_FAILURE() << what << ": x = " << std::hexfloat << x[i] << " gives " << fast[i] << ", reference " << ref[i];
    }
}

TEST(Expf, ExpAndSwigluEqualTheReferenceOnEveryTarget) {
  const std::vector<float> x = sweep_inputs();
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> up(x.size());
  std::mt19937 gen(test::seed(18));
  std::normal_distribution<float> u(0.0f, 1.0f);
  for (float& v : up) v = u(gen);
  int targets = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    ++targets;
    for (float shift : {0.0f, 3.25f, -7.5f}) {
      std::vector<float> fast(x.size()), ref(x.size());
      exp_shifted_f32(x.data(), n, shift, fast.data());
      exp_shifted_f32_ref(x.data(), n, shift, ref.data());
      expect_same(fast, ref, x, t.second + " exp, shift " + std::to_string(shift));
    }
    std::vector<float> fast(x.size()), ref(x.size());
    swiglu_f32(x.data(), up.data(), n, fast.data());
    swiglu_f32_ref(x.data(), up.data(), n, ref.data());
    expect_same(fast, ref, x, t.second + " swiglu");
  }
  force_simd_target(0);
  EXPECT_GT(targets, 0);
}

TEST(Expf, EveryLengthAndInPlace) {
  std::mt19937 gen(test::seed(19));
  std::normal_distribution<float> d(0.0f, 6.0f);
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (int64_t n = 0; n <= 40; ++n) {
      std::vector<float> x(n), g(n), up(n);
      for (int64_t i = 0; i < n; ++i) x[i] = d(gen), g[i] = d(gen), up[i] = d(gen);
      std::vector<float> ref(n), in_place = x;
      exp_shifted_f32_ref(x.data(), n, 1.5f, ref.data());
      exp_shifted_f32(in_place.data(), n, 1.5f, in_place.data());  // out aliases x (the softmax's use)
      expect_same(in_place, ref, x, t.second + " exp n " + std::to_string(n));
      std::vector<float> gate = g;
      swiglu_f32_ref(g.data(), up.data(), n, ref.data());
      swiglu_f32(gate.data(), up.data(), n, gate.data());  // out aliases gate
      expect_same(gate, ref, g, t.second + " swiglu n " + std::to_string(n));
    }
  }
  force_simd_target(0);
}

// The SIMD path is the one that runs where it can: on glibc x86-64 with FMA (the targets whose steps
// are glibc's) the fast == ref checks above would otherwise pass on two copies of the _ref loop.
TEST(Expf, SimdPathRunsOnGlibcX86WithFma) {
#if defined(__GLIBC__) && defined(__x86_64__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 28))
  if (!__builtin_cpu_supports("fma") || !__builtin_cpu_supports("avx2")) GTEST_SKIP() << "no AVX2 + FMA target here";
  EXPECT_TRUE(expf_simd_available());
#else
  GTEST_SKIP() << "std::exp is not glibc's x86-64 expf here: the _ref loop is the kernel";
#endif
}

}  // namespace
}  // namespace lowbit

// Seeded random tensors shared by the PTQ tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace lowbit::test {

// n values of N(0, sigma^2) from mt19937_64(seed) (the standard fixes its output).
inline std::vector<float> normal(int64_t n, uint64_t seed, float sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

}  // namespace lowbit::test

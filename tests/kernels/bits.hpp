// Helpers shared by the kernels' differential tests.
#pragma once

#include <bit>
#include <cstdint>
#include <cstdlib>

namespace lowbit::test {

// Equal as float32 bit patterns (NaN payloads and the sign of zero included): the fast kernels
// must give the reference's bits, not just equal values.
inline bool same(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

// The data seed of a randomised case: `base`, moved by LOWBIT_TEST_SEED=K (K * 1000) for longer
// fuzzing runs with other data (ctest label `long`).
inline unsigned seed(unsigned base) {
  const char* env = std::getenv("LOWBIT_TEST_SEED");
  return base + (env ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) * 1000u : 0u);
}

}  // namespace lowbit::test

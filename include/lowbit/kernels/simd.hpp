// SIMD plumbing shared by the fast kernels and their tests: group statistics as the SIMD code
// returns them, and control over which compiled Highway target runs (for per-target tests).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

struct simd_stats {
  uint32_t amax_bits = 0;  // max of |x| as float32 bit patterns
  float min = 0, max = 0;  // min(min x, 0) and max(max x, 0)
};

// The compiled SIMD targets this CPU supports, as (Highway target bit, name).
std::vector<std::pair<int64_t, std::string>> simd_targets();
// Makes the fast kernels dispatch to one target (0 = back to the best available).
void force_simd_target(int64_t target);

}  // namespace lowbit

#pragma once
// Portable uniform draws for files that must be the same on every machine (task files, prompt
// formats, item orders): std::uniform_int_distribution and std::shuffle differ between standard
// libraries, std::mt19937_64's raw output does not.
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace lowbit {

// A uniform integer in [0, n), n >= 1, by rejection of the top partial range.
inline uint64_t draw_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do r = rng(); while (r >= limit);
  return r % n;
}

// Fisher-Yates: a uniform permutation of v.
template <class T>
void shuffle_in_place(std::vector<T>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[draw_below(rng, i)]);
}

}  // namespace lowbit

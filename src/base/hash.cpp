#include "lowbit/base/hash.hpp"

#include <fmt/format.h>

namespace lowbit {

void fnv1a64::add(const void* bytes, uint64_t n) {
  const auto* b = static_cast<const uint8_t*>(bytes);
  uint64_t h = h_;
  for (uint64_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;  // the 64-bit FNV prime
  h_ = h;
}

std::string fnv1a64::hex() const { return fmt::format("{:016x}", h_); }

}  // namespace lowbit

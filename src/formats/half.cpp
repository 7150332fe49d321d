#include "lowbit/formats/half.hpp"

#include <bit>
#include <cstring>

namespace lowbit {

float fp16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0x1f) {
    bits = sign | 0x7f800000u | (m << 13);  // Inf, or NaN with its payload
  } else if (e != 0) {
    bits = sign | ((e + 112u) << 23) | (m << 13);  // normal: rebias 15 -> 127
  } else if (m == 0) {
    bits = sign;  // +-0
  } else {
    // subnormal m * 2^-24: shift the leading one up to the implicit position
    int ex = 1;
    while ((m & 0x400u) == 0) {
      m <<= 1;
      --ex;
    }
    bits = sign | (static_cast<uint32_t>(ex + 112) << 23) | ((m & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t f32_to_fp16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t a = bits & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7e00u;                     // NaN: canonical quiet NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;             // >= 65520 (the tie above 65504) and Inf
  if (a >= 0x38800000u) {                                  // normal half (>= 2^-14)
    uint32_t h = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu);
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
    return static_cast<uint16_t>(sign | h);
  }
  if (a <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (the tie 2^-25 goes to even 0)
  // subnormal half: value = m * 2^(E-150) = (m >> shift) units of 2^-24 with shift = 126 - E
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const int shift = 126 - static_cast<int>(a >> 23);  // 14..24
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // may become 0x400, the smallest normal
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_bf16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;  // NaN: canonical quiet NaN
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace lowbit

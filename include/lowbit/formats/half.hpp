// IEEE binary16 and bfloat16 bit conversions, exact, without the SIMD library (whose demotions
// truncate or differ between targets): the file readers and writers and the formats' own codecs
// share them.
#pragma once

#include <cstdint>

namespace lowbit {

// IEEE binary16 and bfloat16 <-> float32. The decoders are exact (NaN payloads kept); the
// encoders round to nearest even, overflow to Inf, and write every NaN as the canonical quiet
// NaN (0x7e00 / 0x7fc0).
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float x);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float x);

}  // namespace lowbit

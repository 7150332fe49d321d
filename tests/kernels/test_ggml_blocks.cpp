// ggml's blocks of 32 beside q4_0 / q8_0: q5_0 (value (q - 16) * d), q4_1 and q5_1 (value
// q * d + m with the block's fp16 min m). The decode of every code in every position against the
// formula of dequantize_row_* (the bytes packed here from ggml-common.h's block_q5_0 / block_q4_1
// / block_q5_1 description, not by the code under test), the layout in quantized_tensor, the
// quantizer's properties (the block's extremes land on the end codes, error within half a step,
// ggml's signed zero of the min, NaN/Inf) and the GGUF blocks. ggml's own bytes as known answers
// are in test_ggml_known_answers.cpp.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "tests/kernels/bits.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/io/safetensors.hpp"  // fp16 conversions
#include "lowbit/kernels/quantize.hpp"
#include "tests/ptq/random_inputs.hpp"

using namespace lowbit;

namespace {

using lowbit::test::same;

// One block of 32 as ggml-common.h lays it out: fp16 d, then (q4_1, q5_1) fp16 m, then (q5_0,
// q5_1) the little-endian u32 qh whose bit j is bit 4 of code j, then 16 bytes whose byte j holds
// the low 4 bits of code j (low nibble) and code j + 16 (high nibble).
std::vector<uint8_t> block32(uint16_t d, const uint16_t* m, bool five_bits, const int* q) {
  std::vector<uint8_t> b;
  b.push_back(static_cast<uint8_t>(d & 0xff));
  b.push_back(static_cast<uint8_t>(d >> 8));
  if (m) {
    b.push_back(static_cast<uint8_t>(*m & 0xff));
    b.push_back(static_cast<uint8_t>(*m >> 8));
  }
  if (five_bits) {
    uint32_t qh = 0;
    for (int j = 0; j < 32; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    for (int k = 0; k < 4; ++k) b.push_back(static_cast<uint8_t>(qh >> (8 * k)));
  }
  for (int j = 0; j < 16; ++j) b.push_back(static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4)));
  return b;
}

std::vector<float> decoded(const std::vector<uint8_t>& bytes, int64_t rows, ggml_type t) {
  const quantized_tensor q = decode_ggml_blocks(bytes.data(), rows, 32, t);
  std::vector<float> y(static_cast<size_t>(rows * 32)), yr(y.size());
  dequantize(q, y.data());
  dequantize_ref(q, yr.data());
  for (size_t i = 0; i < y.size(); ++i) EXPECT_TRUE(same(y[i], yr[i])) << i;
  EXPECT_EQ(encode_ggml_blocks(q, t), bytes);  // and back
  return y;
}

ggml_type type_of(const format& f) {
  switch (f.named) {
    case preset::q4_1: return ggml_type::q4_1;
    case preset::q5_0: return ggml_type::q5_0;
    default: return ggml_type::q5_1;
  }
}

const char* const kBlocks[] = {"q4_1", "q5_0", "q5_1"};

}  // namespace

TEST(GgmlBlocks, PresetNamesBitsAndLayout) {
  const std::pair<const char*, int> bytes[] = {{"q4_1", 20}, {"q5_0", 22}, {"q5_1", 24}};
  for (const auto& [name, b] : bytes) {
    const format f = parse_format(name);
    EXPECT_EQ(format_name(f), name);
    EXPECT_EQ(parse_format(format_name(f)), f);
    EXPECT_EQ(f.group_size, 32);
    bool listed = false;
    for (const auto& n : named_formats()) listed |= n.name == name;
    EXPECT_TRUE(listed) << name;
    EXPECT_THROW(parse_format(std::string(name) + "~sr"), format_error);
    EXPECT_THROW(parse_format(std::string(name) + "/g64"), format_error);
    EXPECT_DOUBLE_EQ(bits_per_element(f), b * 8.0 / 32) << name;
    EXPECT_EQ(ggml_block_bytes(type_of(f)), b) << name;
    const quantized_tensor q = quantized_tensor::allocate(f, 3, 64);
    EXPECT_EQ(q.storage_bytes(), 3u * 2 * b) << name;
    // q5_0 keeps its fixed zero point 16 per block; q4_1 / q5_1 their fp16 min per block.
    EXPECT_EQ(q.zero_points.size(), f.named == preset::q5_0 ? 6u : 0u) << name;
    EXPECT_EQ(q.super_scales.size(), f.named == preset::q5_0 ? 0u : 6u) << name;
  }
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("q4_1")), 5.0);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("q5_0")), 5.5);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("q5_1")), 6.0);
}

// Every 5-bit code at every position of the block (both halves of qh and of the nibble pairs):
// dequantize_row_q5_0, y = (q - 16) * d.
TEST(GgmlBlocks, Q50DecodesEveryCodeEverywhere) {
  const uint16_t d_bits = 0xA0CD;  // fp16 -0.00850 (ggml's d = max / -16 is negative for a positive max)
  const float d = fp16_to_f32(d_bits);
  std::vector<uint8_t> bytes;
  std::vector<float> expect;
  const int64_t rows = 32;
  for (int64_t r = 0; r < rows; ++r) {
    int q[32];
    for (int j = 0; j < 32; ++j) q[j] = (j + static_cast<int>(r)) % 32;  // code c at position (c - r) mod 32
    const auto b = block32(d_bits, nullptr, true, q);
    bytes.insert(bytes.end(), b.begin(), b.end());
    for (int j = 0; j < 32; ++j) expect.push_back(static_cast<float>(q[j] - 16) * d);
  }
  const std::vector<float> y = decoded(bytes, rows, ggml_type::q5_0);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(same(y[i], expect[i])) << i << ": " << y[i] << " vs " << expect[i];
}

// Every code at every position with a negative, a positive and a negative-zero min:
// dequantize_row_q4_1 / _q5_1, y = q * d + m.
TEST(GgmlBlocks, Q41AndQ51DecodeEveryCodeEverywhere) {
  const uint16_t d_bits = 0x2E66;  // fp16 0.0999
  const float d = fp16_to_f32(d_bits);
  for (const ggml_type t : {ggml_type::q4_1, ggml_type::q5_1}) {
    const int levels = t == ggml_type::q4_1 ? 16 : 32;
    std::vector<uint8_t> bytes;
    std::vector<float> expect;
    int64_t rows = 0;
    for (const uint16_t m_bits : {uint16_t{0xC580}, uint16_t{0x3C00}, uint16_t{0x8000}}) {  // -5.5, 1, -0
      const float m = fp16_to_f32(m_bits);
      for (int r = 0; r < levels; ++r, ++rows) {
        int q[32];
        for (int j = 0; j < 32; ++j) q[j] = (j + r) % levels;
        const auto b = block32(d_bits, &m_bits, t == ggml_type::q5_1, q);
        bytes.insert(bytes.end(), b.begin(), b.end());
        for (int j = 0; j < 32; ++j) expect.push_back(static_cast<float>(q[j]) * d + m);
      }
    }
    const std::vector<float> y = decoded(bytes, rows, t);
    for (size_t i = 0; i < y.size(); ++i)
      ASSERT_TRUE(same(y[i], expect[i])) << ggml_type_name(t) << " " << i << ": " << y[i] << " vs " << expect[i];
  }
}

// q4_1 / q5_1 count up from the block's min: the min gets code 0 and the value m = fp16(min),
// the max the top code; every value lies within half a step (q5_0: one step) plus the fp16
// roundings of d and m of its input. q5_0's value of largest magnitude gets code 0, the value -16 * d = fp16(max).
TEST(GgmlBlocks, TheBlockExtremesLandOnTheEndCodes) {
  const int64_t rows = 8, cols = 256;
  std::vector<float> x = lowbit::test::normal(rows * cols, 11, 0.5f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) x[static_cast<size_t>(r * cols + c)] += static_cast<float>(r) - 3.0f;  // shifted blocks
  const element_format half = make_minifloat(5, 10, float_variant::ieee);
  auto fp16 = [&](float v) { return decode_ref(half, encode_ref(half, v, rounding_mode::rne)); };
  for (const char* name : kBlocks) {
    const format f = parse_format(name);
    const quantized_tensor q = quantize_ref(x.data(), rows, cols, f);
    std::vector<float> y(x.size());
    dequantize_ref(q, y.data());
    const uint32_t top = (1u << f.element.bits) - 1;
    for (int64_t g = 0; g < rows * cols / 32; ++g) {
      const int64_t r = g / (cols / 32), c0 = (g % (cols / 32)) * 32;
      const float* xb = x.data() + r * cols + c0;
      int lo = 0, hi = 0, big = 0;
      for (int j = 1; j < 32; ++j) {
        if (xb[j] < xb[lo]) lo = j;
        if (xb[j] > xb[hi]) hi = j;
        if (std::fabs(xb[j]) > std::fabs(xb[big])) big = j;
      }
      const float d = q.scales[static_cast<size_t>(g)];
      if (f.named == preset::q5_0) {
        EXPECT_EQ(q.code(r, c0 + big), 0u) << name << " block " << g;
        EXPECT_EQ(q.zero_points[static_cast<size_t>(g)], 16);
        EXPECT_TRUE(same(y[static_cast<size_t>(r * cols + c0 + big)], -16.0f * d)) << name << " block " << g;
        EXPECT_TRUE(same(d, fp16(xb[big] / -16.0f))) << name << " block " << g;
      } else {
        EXPECT_EQ(q.code(r, c0 + lo), 0u) << name << " block " << g;
        EXPECT_EQ(q.code(r, c0 + hi), top) << name << " block " << g;
        EXPECT_TRUE(same(q.super_scales[static_cast<size_t>(g)], fp16(xb[lo]))) << name << " block " << g;
        EXPECT_TRUE(same(y[static_cast<size_t>(r * cols + c0 + lo)], fp16(xb[lo]))) << name << " block " << g;
        EXPECT_TRUE(same(d, fp16((xb[hi] - xb[lo]) / static_cast<float>(top)))) << name << " block " << g;
      }
      // Half a step (q5_0: a whole step near -max, where ggml's MIN(31, ...) clips code 32), the
      // fp16 rounding of m (relative 2^-11) and of d times the top code.
      const float step_share = f.named == preset::q5_0 ? 1.0f : 0.5f;
      const float slack = std::fabs(d) * step_share + std::fabs(xb[lo]) * 0x1p-11f + std::fabs(d) * static_cast<float>(top) * 0x1p-11f;
      for (int j = 0; j < 32; ++j)
        EXPECT_LE(std::fabs(y[static_cast<size_t>(r * cols + c0 + j)] - xb[j]), slack * 1.01f) << name << " block " << g << " " << j;
    }
    const error_metrics e = compare(x.data(), y.data(), static_cast<int64_t>(x.size()));
    // (Measured: q4_1 35.9, q5_0 32.3, q5_1 42.1 dB.)
    EXPECT_GT(e.sqnr_db, f.named == preset::q4_1 ? 34.0 : f.named == preset::q5_0 ? 30.0 : 40.0) << name;
  }
}

// ggml scans a block's min from FLT_MAX with a strict comparison, so among zeros the first one's
// sign wins: a block of -0, +0, ... stores m = -0 (fp16 0x8000), one of +0, -0, ... m = +0.
TEST(GgmlBlocks, TheMinOfZerosIsGgmlsFirstZero) {
  for (const char* name : {"q4_1", "q5_1"}) {
    const format f = parse_format(name);
    for (const float first : {-0.0f, 0.0f}) {
      std::vector<float> x(32, 0.0f);
      x[0] = first;
      x[1] = -first;
      const quantized_tensor q = quantize_ref(x.data(), 1, 32, f);
      EXPECT_TRUE(same(q.super_scales[0], first)) << name;
      EXPECT_TRUE(q == quantize(x.data(), 1, 32, f)) << name;
      const std::vector<uint8_t> b = encode_ggml_blocks(q, type_of(f));
      EXPECT_EQ(b[3], std::signbit(first) ? 0x80 : 0x00) << name;  // m's high byte
      std::vector<float> y(32);
      dequantize(q, y.data());
      for (float v : y) EXPECT_TRUE(same(v, 0.0f)) << name;  // 0 * d + -0 = +0
    }
  }
}

// docs/conventions.md §4: a NaN or Inf makes its block of 32 NaN (d = NaN, q4_1/q5_1's m NaN,
// codes 0); the other blocks are untouched; GGUF stores fp16 NaN and reads NaN back.
TEST(GgmlBlocks, NanAndInfPoisonTheirBlockOnly) {
  const std::vector<float> clean = lowbit::test::normal(128, 12);
  for (const char* name : kBlocks) {
    const format f = parse_format(name);
    for (const float bad : {NAN, INFINITY, -INFINITY}) {
      std::vector<float> x = clean;
      x[70] = bad;
      std::vector<float> y(128), yc(128), fast(128);
      fake_quantize_ref(x.data(), y.data(), 1, 128, f);
      fake_quantize(x.data(), fast.data(), 1, 128, f);
      fake_quantize_ref(clean.data(), yc.data(), 1, 128, f);
      for (int i = 0; i < 128; ++i) {
        if (i / 32 == 2) EXPECT_TRUE(std::isnan(y[i])) << name << " " << i;
        else EXPECT_TRUE(same(y[i], yc[i])) << name << " " << i;
        EXPECT_TRUE(same(y[i], fast[i])) << name << " " << i;
      }
      const quantized_tensor q = quantize_ref(x.data(), 1, 128, f);
      EXPECT_TRUE(std::isnan(q.scales[2])) << name;
      if (f.named != preset::q5_0) {
        EXPECT_TRUE(std::isnan(q.super_scales[2])) << name;
      }
      for (int64_t c = 64; c < 96; ++c) EXPECT_EQ(q.code(0, c), 0u) << name;
      const auto bytes = encode_ggml_blocks(q, type_of(f));
      std::vector<float> back(128);
      dequantize(decode_ggml_blocks(bytes.data(), 1, 128, type_of(f)), back.data());
      for (int i = 0; i < 128; ++i) EXPECT_TRUE(i / 32 == 2 ? std::isnan(back[i]) : same(back[i], yc[i])) << name << " " << i;
    }
  }
}

// Beyond ggml's domain (its C is undefined there): float32 subnormals make 1/d Inf. lowbit
// clamps the codes to their range and maps NaN (0 * Inf) to the value 0; d rounds to fp16 0, so
// every value is m (q4_1/q5_1, here 0) or 0, finite.
TEST(GgmlBlocks, SubnormalBlocksStayFinite) {
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i % 7 - 3) * 1e-41f;
  for (const char* name : {"q4_0", "q5_0", "q4_1", "q5_1", "q8_0"}) {
    const format f = parse_format(name);
    std::vector<float> y(64), fast(64);
    fake_quantize_ref(x.data(), y.data(), 1, 64, f);
    fake_quantize(x.data(), fast.data(), 1, 64, f);
    for (int i = 0; i < 64; ++i) {
      EXPECT_EQ(y[i], 0.0f) << name << " " << i;
      EXPECT_TRUE(same(y[i], fast[i])) << name << " " << i;
    }
    const quantized_tensor q = quantize_ref(x.data(), 1, 64, f);
    for (int64_t c = 0; c < 64; ++c) EXPECT_LT(q.code(0, c), 1u << f.element.bits) << name;
  }
}

// Rows that are not a multiple of 32 end in a partial block (lowbit's groups); GGUF cannot hold
// one, and a tensor in another layout is refused.
TEST(GgmlBlocks, GgufRefusesPartialBlocksAndOtherLayouts) {
  const std::vector<float> x = lowbit::test::normal(2 * 40, 13);
  for (const char* name : kBlocks) {
    const format f = parse_format(name);
    EXPECT_THROW(encode_ggml_blocks(quantize(x.data(), 2, 40, f), type_of(f)), shape_error) << name;
    EXPECT_THROW(decode_ggml_blocks(nullptr, 1, 40, type_of(f)), shape_error) << name;
  }
  const quantized_tensor q41 = quantize(x.data(), 1, 64, parse_format("q4_1"));
  EXPECT_THROW(encode_ggml_blocks(q41, ggml_type::q4_0), error);
  EXPECT_THROW(encode_ggml_blocks(q41, ggml_type::q5_1), error);
  quantized_tensor bad = quantize(x.data(), 1, 64, parse_format("q5_0"));
  bad.zero_points[1] = 15;  // q5_0 fixes its zero point at 16
  EXPECT_THROW(encode_ggml_blocks(bad, ggml_type::q5_0), error);
  quantized_tensor off = q41;
  off.super_scales[0] = 0.1f;  // not an fp16 value
  EXPECT_THROW(encode_ggml_blocks(off, ggml_type::q4_1), error);
}

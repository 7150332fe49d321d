// ggml's K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (kernels/kquant.hpp): the preset names, the
// decode of every scale / min / code value against the formula of ggml's block layout written out
// here (the bytes are packed by this file from ggml-common.h's block_q*_K description, not by the
// code under test), the properties of the quantizer (zeros, constant rows, error bounds, NaN/Inf,
// partial super-blocks) and the GGUF blocks. ggml's own bytes as known answers are in
// test_ggml_known_answers.cpp.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "tests/kernels/bits.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/io/safetensors.hpp"  // fp16 conversions
#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "tests/ptq/random_inputs.hpp"

using namespace lowbit;

namespace {

using lowbit::test::same;

// block_q4_K (144 bytes): fp16 d, fp16 dmin, scales[12], qs[128]. Sub-block j < 4: sc = scales[j]
// low 6 bits, m = scales[j + 4] low 6 bits; j >= 4: sc = low nibble of scales[j + 4] | (top 2
// bits of scales[j - 4]) << 4, m = high nibble of scales[j + 4] | (top 2 bits of scales[j]) << 4.
// qs: per 64 values, byte l holds value l (low nibble) and value l + 32 (high nibble).
std::vector<uint8_t> q4_k_block(uint16_t d, uint16_t dmin, const int* sc, const int* m, const int* q) {
  std::vector<uint8_t> b(144, 0);
  std::memcpy(b.data(), &d, 2);
  std::memcpy(b.data() + 2, &dmin, 2);
  uint8_t* s = b.data() + 4;
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] = static_cast<uint8_t>(s[j] | sc[j]);
      s[j + 4] = static_cast<uint8_t>(s[j + 4] | m[j]);
    } else {
      s[j + 4] = static_cast<uint8_t>((sc[j] & 15) | ((m[j] & 15) << 4));
      s[j - 4] = static_cast<uint8_t>(s[j - 4] | ((sc[j] >> 4) << 6));
      s[j] = static_cast<uint8_t>(s[j] | ((m[j] >> 4) << 6));
    }
  }
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) b[16 + 32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + l + 32] << 4));
  return b;
}

// block_q6_K (210 bytes): ql[128], qh[64], int8 scales[16], fp16 d. Per 128 values (ql += 64,
// qh += 32): value l + 32k (k = 0..3) has low 4 bits in ql[l + 32 (k & 1)] (low nibble for k < 2,
// high for k >= 2) and high 2 bits in qh[l] bits 2k..2k+1.
std::vector<uint8_t> q6_k_block(uint16_t d, const int* sc, const int* q) {
  std::vector<uint8_t> b(210, 0);
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l)
      for (int k = 0; k < 4; ++k) {
        const int v = q[128 * h + l + 32 * k];
        b[64 * h + l + 32 * (k & 1)] |= static_cast<uint8_t>((v & 15) << (k >= 2 ? 4 : 0));
        b[128 + 32 * h + l] |= static_cast<uint8_t>((v >> 4) << (2 * k));
      }
  for (int j = 0; j < 16; ++j) b[192 + j] = static_cast<uint8_t>(static_cast<int8_t>(sc[j]));
  std::memcpy(b.data() + 208, &d, 2);
  return b;
}

// block_q5_K (176 bytes): fp16 d, fp16 dmin, scales[12] (as block_q4_K), qh[32], qs[128]. Per
// 64 values (chunk c): byte l of qs holds the low 4 bits of value l (low nibble) and l + 32
// (high); bit 2c of qh[l] is bit 4 of value l, bit 2c + 1 that of value l + 32.
std::vector<uint8_t> q5_k_block(uint16_t d, uint16_t dmin, const int* sc, const int* m, const int* q) {
  int low[256];
  for (int i = 0; i < 256; ++i) low[i] = q[i] & 15;
  const std::vector<uint8_t> as_q4 = q4_k_block(d, dmin, sc, m, low);
  std::vector<uint8_t> b(176, 0);
  std::copy_n(as_q4.begin(), 16, b.begin());  // d, dmin, scales
  std::copy_n(as_q4.begin() + 16, 128, b.begin() + 48);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      b[16 + l] |= static_cast<uint8_t>(((q[64 * c + l] >> 4) << (2 * c)) | ((q[64 * c + l + 32] >> 4) << (2 * c + 1)));
  return b;
}

// block_q2_K (84 bytes): scales[16] (sub-block j: sc low nibble, m high nibble), qs[64], fp16 d,
// fp16 dmin. Per 128 values (qs += 32): value l + 32k (k = 0..3) at bits 2k of qs[l].
std::vector<uint8_t> q2_k_block(uint16_t d, uint16_t dmin, const int* sc, const int* m, const int* q) {
  std::vector<uint8_t> b(84, 0);
  for (int j = 0; j < 16; ++j) b[j] = static_cast<uint8_t>(sc[j] | (m[j] << 4));
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l)
      for (int k = 0; k < 4; ++k) b[16 + 32 * h + l] |= static_cast<uint8_t>(q[128 * h + l + 32 * k] << (2 * k));
  std::memcpy(b.data() + 80, &d, 2);
  std::memcpy(b.data() + 82, &dmin, 2);
  return b;
}

// block_q3_K (110 bytes): hmask[32], qs[64], scales[12], fp16 d. Value i's 3-bit q: bits 0..1
// packed in qs as block_q2_K's, bit 2 at bit i / 32 of hmask[i % 32]. Sub-block j's 6-bit code
// l = sc + 32: low 4 bits in scales[j % 8] (low nibble for j < 8, high for j >= 8), top 2 bits at
// bits 2 (j / 4) of scales[8 + j % 4].
std::vector<uint8_t> q3_k_block(uint16_t d, const int* sc, const int* q) {
  std::vector<uint8_t> b(110, 0);
  for (int i = 0; i < 256; ++i) {
    if (q[i] & 4) b[i % 32] |= static_cast<uint8_t>(1 << (i / 32));
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    b[32 + 32 * h + l] |= static_cast<uint8_t>((q[i] & 3) << (2 * k));
  }
  for (int j = 0; j < 16; ++j) {
    const int l = sc[j] + 32;
    b[96 + j % 8] |= static_cast<uint8_t>((l & 15) << (j < 8 ? 0 : 4));
    b[96 + 8 + j % 4] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
  }
  std::memcpy(b.data() + 108, &d, 2);
  return b;
}

std::vector<float> decode_gguf(const std::vector<uint8_t>& bytes, int64_t rows, ggml_type t) {
  const quantized_tensor q = decode_ggml_blocks(bytes.data(), rows, 256, t);
  std::vector<float> y(static_cast<size_t>(rows * 256));
  dequantize(q, y.data());
  // The reference dequantize agrees.
  std::vector<float> yr(y.size());
  dequantize_ref(q, yr.data());
  for (size_t i = 0; i < y.size(); ++i) EXPECT_TRUE(same(y[i], yr[i])) << i;
  // Encoding the decoded tensor gives the bytes back.
  EXPECT_EQ(encode_ggml_blocks(q, t), bytes);
  return y;
}

std::vector<float> gaussian(size_t n, unsigned seed, float sigma = 1.0f) {
  return lowbit::test::normal(static_cast<int64_t>(n), seed, sigma);
}

const char* const kKQuants[] = {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k"};

ggml_type type_of(const format& f) {
  switch (f.named) {
    case preset::q2_k: return ggml_type::q2_k;
    case preset::q3_k: return ggml_type::q3_k;
    case preset::q4_k: return ggml_type::q4_k;
    case preset::q5_k: return ggml_type::q5_k;
    default: return ggml_type::q6_k;
  }
}

}  // namespace

TEST(KQuant, PresetNamesAndBits) {
  for (const char* name : kKQuants) {
    const format f = parse_format(name);
    EXPECT_EQ(format_name(f), name);
    EXPECT_EQ(parse_format(format_name(f)), f);
    EXPECT_TRUE(is_kquant(f));
    bool listed = false;
    for (const auto& n : named_formats()) listed |= n.name == name;
    EXPECT_TRUE(listed) << name;
    EXPECT_THROW(parse_format(std::string(name) + "~rtz"), format_error);
    EXPECT_THROW(parse_format(std::string(name) + "/g64"), format_error);
  }
  EXPECT_FALSE(is_kquant(parse_format("q4_0")));
  EXPECT_FALSE(is_kquant(parse_format("q5_1")));
  // Bits per weight with the scale overhead: ggml's 84, 110, 144, 176 and 210 bytes per 256 values.
  const std::pair<const char*, int> bytes[] = {{"q2_k", 84}, {"q3_k", 110}, {"q4_k", 144}, {"q5_k", 176}, {"q6_k", 210}};
  for (const auto& [name, b] : bytes) {
    EXPECT_DOUBLE_EQ(bits_per_element(parse_format(name)), b * 8.0 / 256) << name;
    EXPECT_EQ(quantized_tensor::allocate(parse_format(name), 3, 512).storage_bytes(), 3u * 2 * b) << name;
    EXPECT_EQ(ggml_block_bytes(type_of(parse_format(name))), b) << name;
  }
  EXPECT_EQ(bits_description(parse_format("q2_k")), "2.625");
  EXPECT_EQ(bits_description(parse_format("q3_k")), "3.4375");
  EXPECT_EQ(bits_description(parse_format("q4_k")), "4.5");
  EXPECT_EQ(bits_description(parse_format("q5_k")), "5.5");
  EXPECT_EQ(bits_description(parse_format("q6_k")), "6.5625");
}

// Every (sc, m) pair of 6-bit codes with every 4-bit q: 4096 sub-blocks, 8 per super-block, so
// both packing paths of get_scale_min_k4 (j < 4 and j >= 4) see every code.
TEST(KQuant, Q4KDecodesEveryScaleMinAndCode) {
  const uint16_t d_bits = 0x2E66, dmin_bits = 0x2A3D;  // fp16 0.0999 and 0.0450
  const float d = fp16_to_f32(d_bits), dmin = fp16_to_f32(dmin_bits);
  const int64_t rows = 64 * 64 / 8;
  std::vector<uint8_t> bytes;
  std::vector<float> expect;
  int pair = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int sc[8], m[8], q[256];
    for (int j = 0; j < 8; ++j, ++pair) {
      sc[j] = pair % 64;
      m[j] = (pair / 64 + j) % 64;  // shifted so that j >= 4 sees large m with small sc
    }
    for (int i = 0; i < 256; ++i) q[i] = (i * 7 + static_cast<int>(r)) % 16;
    const auto b = q4_k_block(d_bits, dmin_bits, sc, m, q);
    bytes.insert(bytes.end(), b.begin(), b.end());
    for (int i = 0; i < 256; ++i) {
      const int j = i / 32;
      const float d1 = d * static_cast<float>(sc[j]), m1 = dmin * static_cast<float>(m[j]);
      expect.push_back(d1 * static_cast<float>(q[i]) - m1);  // dequantize_row_q4_K
    }
  }
  const std::vector<float> y = decode_gguf(bytes, rows, ggml_type::q4_k);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(same(y[i], expect[i])) << i << ": " << y[i] << " vs " << expect[i];
  // Every pair (sc, m) was seen: 4096 sub-blocks with distinct (pair % 64, pair / 64 + j).
  EXPECT_EQ(pair, 4096);
}

// Every int8 scale with every 6-bit q (value q - 32): 256 scales x 64 codes.
TEST(KQuant, Q6KDecodesEveryScaleAndCode) {
  const uint16_t d_bits = 0xA0CD;  // fp16 -0.00850 (ggml's d is negative: -max/128)
  const float d = fp16_to_f32(d_bits);
  const int64_t rows = 256 * 64 / 256;
  std::vector<uint8_t> bytes;
  std::vector<float> expect;
  for (int64_t r = 0; r < rows; ++r) {
    int sc[16], q[256];
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<int>((r * 16 + j) / 4) - 128;  // 4 sub-blocks per scale
    for (int i = 0; i < 256; ++i) q[i] = (i / 16 % 4) * 16 + i % 16;  // 64 codes over 4 sub-blocks
    const auto b = q6_k_block(d_bits, sc, q);
    bytes.insert(bytes.end(), b.begin(), b.end());
    for (int i = 0; i < 256; ++i)  // dequantize_row_q6_K: d * sc * (q - 32), left to right
      expect.push_back(d * static_cast<float>(sc[i / 16]) * static_cast<float>(q[i] - 32));
  }
  const std::vector<float> y = decode_gguf(bytes, rows, ggml_type::q6_k);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(same(y[i], expect[i])) << i << ": " << y[i] << " vs " << expect[i];
}

// Every (sc, m) pair of 6-bit codes with every 5-bit q, so bit 4 of q is set in each qh position
// and chunk: q5_k as q4_k above.
TEST(KQuant, Q5KDecodesEveryScaleMinAndCode) {
  const uint16_t d_bits = 0x2E66, dmin_bits = 0x2A3D;
  const float d = fp16_to_f32(d_bits), dmin = fp16_to_f32(dmin_bits);
  const int64_t rows = 64 * 64 / 8;
  std::vector<uint8_t> bytes;
  std::vector<float> expect;
  int pair = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int sc[8], m[8], q[256];
    for (int j = 0; j < 8; ++j, ++pair) {
      sc[j] = pair % 64;
      m[j] = (pair / 64 + j) % 64;
    }
    for (int i = 0; i < 256; ++i) q[i] = (i * 7 + static_cast<int>(r)) % 32;
    const auto b = q5_k_block(d_bits, dmin_bits, sc, m, q);
    bytes.insert(bytes.end(), b.begin(), b.end());
    for (int i = 0; i < 256; ++i) {  // dequantize_row_q5_K: d1 * q - m1
      const float d1 = d * static_cast<float>(sc[i / 32]), m1 = dmin * static_cast<float>(m[i / 32]);
      expect.push_back(d1 * static_cast<float>(q[i]) - m1);
    }
  }
  const std::vector<float> y = decode_gguf(bytes, rows, ggml_type::q5_k);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(same(y[i], expect[i])) << i << ": " << y[i] << " vs " << expect[i];
}

// Every (sc, m) pair of 4-bit codes with every 2-bit q: 256 pairs over 16 rows of 16 sub-blocks.
TEST(KQuant, Q2KDecodesEveryScaleMinAndCode) {
  const uint16_t d_bits = 0x2E66, dmin_bits = 0x2A3D;
  const float d = fp16_to_f32(d_bits), dmin = fp16_to_f32(dmin_bits);
  const int64_t rows = 16;
  std::vector<uint8_t> bytes;
  std::vector<float> expect;
  for (int64_t r = 0; r < rows; ++r) {
    int sc[16], m[16], q[256];
    for (int j = 0; j < 16; ++j) {
      sc[j] = j;
      m[j] = static_cast<int>(r + j) % 16;
    }
    for (int i = 0; i < 256; ++i) q[i] = (i * 3 + i / 16 + static_cast<int>(r)) % 4;
    const auto b = q2_k_block(d_bits, dmin_bits, sc, m, q);
    bytes.insert(bytes.end(), b.begin(), b.end());
    for (int i = 0; i < 256; ++i) {  // dequantize_row_q2_K: dl * q - ml
      const float dl = d * static_cast<float>(sc[i / 16]), ml = dmin * static_cast<float>(m[i / 16]);
      expect.push_back(dl * static_cast<float>(q[i]) - ml);
    }
  }
  const std::vector<float> y = decode_gguf(bytes, rows, ggml_type::q2_k);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(same(y[i], expect[i])) << i << ": " << y[i] << " vs " << expect[i];
}

// Every 6-bit signed scale -32..31 with every 3-bit q (value q - 4): 64 scales x 8 codes.
TEST(KQuant, Q3KDecodesEveryScaleAndCode) {
  const uint16_t d_bits = 0xA0CD;  // fp16 -0.00850 (ggml's d is negative: -max/32)
  const float d = fp16_to_f32(d_bits);
  const int64_t rows = 4;
  std::vector<uint8_t> bytes;
  std::vector<float> expect;
  for (int64_t r = 0; r < rows; ++r) {
    int sc[16], q[256];
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<int>(r * 16 + j) - 32;
    for (int i = 0; i < 256; ++i) q[i] = (i + i / 16 + static_cast<int>(r)) % 8;
    const auto b = q3_k_block(d_bits, sc, q);
    bytes.insert(bytes.end(), b.begin(), b.end());
    for (int i = 0; i < 256; ++i)  // dequantize_row_q3_K: dl * (q - 4), dl = d * sc
      expect.push_back(d * static_cast<float>(sc[i / 16]) * static_cast<float>(q[i] - 4));
  }
  const std::vector<float> y = decode_gguf(bytes, rows, ggml_type::q3_k);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(same(y[i], expect[i])) << i << ": " << y[i] << " vs " << expect[i];
}

TEST(KQuant, ZerosAndConstantRows) {
  for (const char* name : kKQuants) {
    const format f = parse_format(name);
    std::vector<float> zeros(512, 0.0f), y(512);
    fake_quantize_ref(zeros.data(), y.data(), 2, 256, f);
    for (float v : y) EXPECT_EQ(v, 0.0f) << name;
    const quantized_tensor qz = quantize_ref(zeros.data(), 2, 256, f);
    for (float s : qz.super_scales) EXPECT_EQ(s, 0.0f) << name;
    for (float c : {1.0f, -3.5f, 1e-3f, 250.0f}) {
      std::vector<float> x(256, c), q(256);
      fake_quantize_ref(x.data(), q.data(), 1, 256, f);
      // One fp16 rounding of d (of dmin for the negative constants of the types with a min) at
      // most: relative 2^-11 for normal d, 2^-25 absolute (subnormal fp16) times the largest
      // codes 63 x 32.
      for (float v : q) EXPECT_NEAR(v, c, std::fabs(c) * 0x1p-9f + 63 * 32 * 0x1p-25f) << name << " constant " << c;
      // q6_k on 1 and -3.5 is exact: ggml's first fit (l = -32, scale -c/32) has exact float32
      // sums and no trial beats it, sc = -128, d = c/4096 is an fp16 value, and d * sc * -32 = c.
      if (f.named == preset::q6_k && (c == 1.0f || c == -3.5f)) {
        for (float v : q) EXPECT_EQ(v, c) << name << " constant " << c;
      }
    }
  }
}

// Error bounds on Gaussian rows: every reconstructed value within a few steps of the sub-block's
// grid, the SQNR each format's bits allow, and the sub-block scale codes in their ranges.
TEST(KQuant, ReconstructionErrorIsBounded) {
  const int64_t rows = 16, cols = 1024;
  const std::vector<float> x = gaussian(static_cast<size_t>(rows * cols), 5, 0.02f);
  struct expectation {
    const char* name;
    double min_sqnr_db;
    int sc_lo, sc_hi;
  };
  // (Measured: 10.7, 16.4, 23.0, 29.0 and 34.9 dB; about 6 dB per bit.)
  for (const expectation& k : {expectation{"q2_k", 9.5, 0, 15}, expectation{"q3_k", 15.0, -32, 31},
                               expectation{"q4_k", 21.0, 0, 63}, expectation{"q5_k", 27.0, 0, 63},
                               expectation{"q6_k", 33.0, -128, 127}}) {
    const format f = parse_format(k.name);
    const quantized_tensor q = quantize_ref(x.data(), rows, cols, f);
    std::vector<float> y(x.size());
    dequantize_ref(q, y.data());
    const int nss = kquant_super_scale_count(f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const size_t i = static_cast<size_t>(r * cols + c);
        const float d = q.super_scales[static_cast<size_t>((r * (cols / 256) + c / 256) * nss)];
        const float step = d * q.scale_at(r, c);
        // Values inside the sub-block's range round to the nearest code; the fit may clip the
        // extremes by a few steps.
        EXPECT_LE(std::fabs(y[i] - x[i]), std::fabs(step) * 3.0f + 1e-6f) << k.name << " [" << r << "," << c << "]";
      }
    const error_metrics e = compare(x.data(), y.data(), static_cast<int64_t>(x.size()));
    EXPECT_GT(e.sqnr_db, k.min_sqnr_db) << k.name;
    for (float s : q.scales) EXPECT_TRUE(s >= k.sc_lo && s <= k.sc_hi) << k.name << " " << s;
    for (int32_t m : q.zero_points) EXPECT_TRUE(m >= 0 && m <= k.sc_hi) << k.name << " " << m;
  }
}

// docs/conventions.md §4: a NaN or Inf makes its super-block NaN (d = dmin = NaN, codes 0); the other
// super-blocks of the row are untouched.
TEST(KQuant, NanAndInfPoisonTheirSuperBlockOnly) {
  std::vector<float> x = gaussian(512, 6);
  const std::vector<float> clean = x;
  for (const char* name : kKQuants) {
    for (float bad : {NAN, INFINITY, -INFINITY}) {
      x = clean;
      x[300] = bad;
      const format f = parse_format(name);
      std::vector<float> y(512), yc(512);
      fake_quantize_ref(x.data(), y.data(), 1, 512, f);
      fake_quantize_ref(clean.data(), yc.data(), 1, 512, f);
      for (int i = 0; i < 256; ++i) EXPECT_TRUE(same(y[i], yc[i])) << name << " " << i;
      for (int i = 256; i < 512; ++i) EXPECT_TRUE(std::isnan(y[i])) << name << " " << i;
      const quantized_tensor q = quantize_ref(x.data(), 1, 512, f);
      EXPECT_TRUE(std::isnan(q.super_scales[static_cast<size_t>(kquant_super_scale_count(f))]));
      for (int64_t c = 256; c < 512; ++c) EXPECT_EQ(q.code(0, c), 0u);
      // GGUF stores the NaN super-scale as fp16 NaN and reads NaN back.
      const std::vector<float> back = [&] {
        const auto bytes = encode_ggml_blocks(q, type_of(f));
        const quantized_tensor d = decode_ggml_blocks(bytes.data(), 1, 512, type_of(f));
        std::vector<float> v(512);
        dequantize(d, v.data());
        return v;
      }();
      for (int i = 256; i < 512; ++i) EXPECT_TRUE(std::isnan(back[i]));
    }
  }
}

// A row that is not a multiple of 256 ends in a partial super-block quantized as if zero-padded.
TEST(KQuant, PartialSuperBlockIsZeroPadded) {
  const int64_t cols = 300, padded = 512;
  const std::vector<float> x = gaussian(static_cast<size_t>(2 * cols), 7);
  std::vector<float> xp(static_cast<size_t>(2 * padded), 0.0f);
  for (int64_t r = 0; r < 2; ++r) std::copy_n(x.begin() + r * cols, cols, xp.begin() + r * padded);
  for (const char* name : kKQuants) {
    const format f = parse_format(name);
    std::vector<float> y(x.size()), yp(xp.size());
    fake_quantize_ref(x.data(), y.data(), 2, cols, f);
    fake_quantize_ref(xp.data(), yp.data(), 2, padded, f);
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t c = 0; c < cols; ++c)
        EXPECT_TRUE(same(y[static_cast<size_t>(r * cols + c)], yp[static_cast<size_t>(r * padded + c)])) << name << " " << c;
    const quantized_tensor q = quantize_ref(x.data(), 2, cols, f);
    EXPECT_EQ(q.groups_per_row(), (cols + f.group_size - 1) / f.group_size);
    EXPECT_EQ(q.super_scales.size(), size_t(2 * 2 * kquant_super_scale_count(f)));
    // GGUF cannot hold it: the export falls back (docs/conventions.md §22).
    EXPECT_THROW(encode_ggml_blocks(q, type_of(f)), shape_error);
  }
}

// ggml's nearest_int: ties to even through 1.5 * 2^23.
TEST(KQuant, NearestIntIsGgmlsBitTrick) {
  EXPECT_EQ(ggml_nearest_int(0.5f), 0);
  EXPECT_EQ(ggml_nearest_int(1.5f), 2);
  EXPECT_EQ(ggml_nearest_int(-2.5f), -2);
  EXPECT_EQ(ggml_nearest_int(-0.49f), 0);
  EXPECT_EQ(ggml_nearest_int(4194303.0f), 4194303);
  EXPECT_EQ(ggml_nearest_int(-4194303.0f), -4194303);
  EXPECT_EQ(ggml_nearest_int(NAN), 0);  // the bits of 1.5 * 2^23 + NaN: the canonical NaN
}

// GPTQ's scale-on-entry and RTN share the per-value rule: with the scales fixed by RTN,
// quantize_value_ref reproduces ggml's codes (a sub-block with scale 0 aside).
TEST(KQuant, SubBlockScaleReproducesTheCodes) {
  const std::vector<float> x = gaussian(4 * 512, 8);
  for (const char* name : kKQuants) {
    const format f = parse_format(name);
    const quantized_tensor q = quantize_ref(x.data(), 4, 512, f);
    const int nss = kquant_super_scale_count(f);
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t c = 0; c < 512; ++c) {
        const float* ss = q.super_scales.data() + (r * 2 + c / 256) * nss;
        const group_scale gs = kquant_sub_scale(f, ss[0], nss > 1 ? ss[1] : 0.0f, static_cast<int32_t>(q.scale_at(r, c)),
                                                q.zero_point_at(r, c));
        if (gs.scale == 0) continue;
        ASSERT_EQ(quantize_value_ref(f, x[static_cast<size_t>(r * 512 + c)], gs, 0.0f), q.code(r, c)) << name << " " << c;
      }
  }
}

// The reference kernels against the published facts of docs/formats.md (OCP MX worked examples,
// NVFP4 two-level scaling, NF4, ggml's block formats, scale rules, stochastic rounding), each
// expected value computed here from the paper's formula, not by the code under test.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"

using namespace lowbit;

namespace {

std::vector<float> fq(const std::string& spec, std::vector<float> x, int64_t rows = 1) {
  std::vector<float> y(x.size());
  fake_quantize_ref(x.data(), y.data(), rows, static_cast<int64_t>(x.size()) / rows, parse_format(spec));
  return y;
}

}  // namespace

TEST(Reference, PlainCastHasNoScale) {  // docs/conventions.md §1
  EXPECT_EQ(fq("e2m1", {2.5f})[0], 2.0f);
  EXPECT_EQ(fq("e2m1", {2.75f})[0], 3.0f);
  EXPECT_EQ(fq("e2m1", {7.0f})[0], 6.0f);   // saturate (docs/conventions.md §3)
  EXPECT_EQ(fq("e4m3fn", {464.0f})[0], 448.0f);  // tie between 448 (even) and 480
  EXPECT_EQ(fq("e4m3fn", {-1e9f})[0], -448.0f);
  EXPECT_TRUE(std::isnan(fq("e2m1", {NAN})[0]));  // NaN maps to NaN even without a NaN code
  EXPECT_EQ(fq("e2m1", {INFINITY})[0], 6.0f);
  EXPECT_EQ(fq("e5m2(overflow=inf)", {INFINITY})[0], INFINITY);
  EXPECT_EQ(fq("e5m2(overflow=inf)", {61440.0f})[0], INFINITY);  // 57344 + half ulp rounds up
  EXPECT_EQ(fq("e5m2(overflow=inf)~rtz", {1e6f})[0], 57344.0f);  // toward zero never overflows
  EXPECT_TRUE(std::isnan(fq("e4m3fn(overflow=nan)", {465.0f})[0]));
  EXPECT_EQ(fq("int4", {2.5f, 3.5f, -9.0f})[1], 4.0f);
  EXPECT_EQ(fq("int4", {2.5f})[0], 2.0f);
  EXPECT_EQ(fq("int4", {-9.0f})[0], -7.0f);
  EXPECT_EQ(fq("int4~rna", {2.5f})[0], 3.0f);
  EXPECT_EQ(fq("uint4", {-3.0f, 20.0f, 7.5f})[2], 8.0f);
  EXPECT_EQ(fq("uint4", {-3.0f})[0], 0.0f);
  // Signed zero: kept by formats that have -0, not by fnuz or integers.
  EXPECT_TRUE(std::signbit(fq("e4m3fn", {-1e-9f})[0]));
  EXPECT_FALSE(std::signbit(fq("e4m3fnuz", {-1e-9f})[0]));
  EXPECT_FALSE(std::signbit(fq("int8", {-0.1f})[0]));
}

TEST(Reference, DirectedRoundings) {
  // e2m1 grid ... 1, 1.5, 2 ...
  EXPECT_EQ(fq("e2m1~up", {1.1f})[0], 1.5f);
  EXPECT_EQ(fq("e2m1~up", {-1.1f})[0], -1.0f);
  EXPECT_EQ(fq("e2m1~down", {1.1f})[0], 1.0f);
  EXPECT_EQ(fq("e2m1~down", {-1.1f})[0], -1.5f);
  EXPECT_EQ(fq("e2m1~rtz", {-1.4f})[0], -1.0f);
  EXPECT_EQ(fq("e2m1~rna", {1.25f})[0], 1.5f);
  EXPECT_EQ(fq("e2m1", {1.25f})[0], 1.0f);   // tie to the even code (1.0 = 0b010)
  EXPECT_EQ(fq("e2m1", {1.75f})[0], 2.0f);   // tie: 1.5 = 0b011 is odd
  EXPECT_EQ(fq("e2m1~odd", {1.1f})[0], 1.5f);  // 1.5 has the odd code
  EXPECT_EQ(fq("e2m1~odd", {1.6f})[0], 1.5f);
  EXPECT_EQ(fq("e2m1~odd", {1.5f})[0], 1.5f);  // exact stays
}

TEST(Reference, MxWorkedExamples) {  // docs/formats.md §1.2
  // MXFP4 block with amax 7: shared_exp = floor(log2 7) - 2 = 0, X = 1, 7 saturates to 6.
  std::vector<float> x(32, 0.0f);
  x[0] = 7.0f;
  x[1] = 0.7f;
  auto y = fq("mxfp4", x);
  EXPECT_EQ(y[0], 6.0f);
  EXPECT_EQ(y[1], 0.5f);
  const quantized_tensor q = quantize_ref(x.data(), 1, 32, parse_format("mxfp4"));
  EXPECT_EQ(q.scales[0], 1.0f);
  // MXFP8-E4M3 block with amax 1.99: shared_exp = 0 - 8 = -8, 1.99 * 256 = 509.4 -> 448 -> 1.75.
  std::fill(x.begin(), x.end(), 0.0f);
  x[0] = 1.99f;
  y = fq("mxfp8_e4m3", x);
  EXPECT_EQ(y[0], 1.75f);
  EXPECT_EQ(quantize_ref(x.data(), 1, 32, parse_format("mxfp8_e4m3")).scales[0], std::ldexp(1.0f, -8));
  // All zeros -> zeros; a NaN makes the whole block NaN (docs/conventions.md §4), the next block is untouched.
  std::vector<float> z(64, 0.0f);
  z[40] = NAN;
  z[1] = 1.0f;
  y = fq("mxfp4", z);
  EXPECT_EQ(y[1], 1.0f);
  EXPECT_EQ(y[0], 0.0f);
  for (int i = 32; i < 64; ++i) EXPECT_TRUE(std::isnan(y[i]));
  z[40] = INFINITY;
  y = fq("mxfp4", z);
  for (int i = 32; i < 64; ++i) EXPECT_TRUE(std::isnan(y[i]));
  // A trailing partial block is its own block.
  std::vector<float> t(40, 0.0f);
  t[33] = 0.75f;
  y = fq("mxfp4", t);
  EXPECT_EQ(y[33], 0.75f);
}

TEST(Reference, MxScaleExponentRules) {  // docs/formats.md §1.2 variants
  std::vector<float> x(32, 0.0f);
  x[0] = 7.0f;  // amax 7, elem max 6, emax 2
  auto scale_of = [&](const std::string& spec) { return quantize_ref(x.data(), 1, 32, parse_format(spec)).scales[0]; };
  EXPECT_EQ(scale_of("e2m1/g32:e8m0@ocp"), 1.0f);    // 2^(floor(log2 7) - 2) = 2^0
  EXPECT_EQ(scale_of("e2m1/g32:e8m0@ceil"), 2.0f);   // 2^(ceil(log2 7) - 2) = 2^1
  EXPECT_EQ(scale_of("e2m1/g32:e8m0@rceil"), 2.0f);  // 2^ceil(log2(7/6)) = 2^1
  EXPECT_EQ(scale_of("e2m1/g32:e8m0@even"), 1.0f);   // 2^round(log2(7/6) = 0.22) = 1
  x[0] = 11.0f;                                       // 11/6 = 1.83 -> log2 0.87 -> round 1
  EXPECT_EQ(scale_of("e2m1/g32:e8m0@even"), 2.0f);
  x[0] = 6.0f;  // exactly representable at scale 1 under rceil
  EXPECT_EQ(scale_of("e2m1/g32:e8m0@rceil"), 1.0f);
  EXPECT_EQ(scale_of("e2m1/g32:e8m0@ceil"), 2.0f);  // ceil(log2 6) = 3
  // e8m0 range: an amax of 2^-140 clamps to 2^-127.
  x[0] = std::ldexp(1.0f, -140);
  EXPECT_EQ(scale_of("e2m1/g32:e8m0"), std::ldexp(1.0f, -127));
}

TEST(Reference, MxInt8IsSymmetricFixedPoint) {  // docs/conventions.md §8
  std::vector<float> x(32, 0.0f);
  x[0] = 1.0f;      // shared_exp = 0 - 0 = 0: elements are k/64
  x[1] = -1.0f;
  x[2] = 0.5078125f;  // 32.5/64: tie -> 32/64 (even)
  x[3] = 0.01171875f; // 0.75/64 -> 1/64
  auto y = fq("mxint8", x);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -1.0f);
  EXPECT_EQ(y[2], 0.5f);
  EXPECT_EQ(y[3], 1.0f / 64);
  x[0] = 1.999f;  // 127.9/64 saturates at 127/64 (never -128)
  x[1] = -1.999f;
  y = fq("mxint8", x);
  EXPECT_EQ(y[0], 127.0f / 64);
  EXPECT_EQ(y[1], -127.0f / 64);
}

TEST(Reference, Nvfp4TwoLevelScaling) {  // docs/formats.md §1.3
  std::vector<float> x(32);
  std::mt19937 gen(5);
  std::normal_distribution<float> d(0, 1);
  for (auto& v : x) v = d(gen);
  x[3] = 10.0f;  // the tensor amax lives in block 0
  const format f = parse_format("nvfp4");
  const quantized_tensor q = quantize_ref(x.data(), 1, 32, f);
  EXPECT_EQ(q.tensor_scale, 10.0f / (448.0f * 6.0f));
  EXPECT_EQ(q.scales[0], 448.0f);  // a block with amax = tensor amax gets s_blk_q = 448
  // A block whose values are {6, 3, 1.5, 0} x 2^k is reproduced exactly (with that block as the
  // tensor amax, s = s_tensor * 448 = 2^k).
  for (int k : {-3, 0, 5}) {
    std::vector<float> b(16, 0.0f);
    const float s = std::ldexp(1.0f, k);
    b[0] = 6 * s;
    b[1] = -3 * s;
    b[2] = 1.5f * s;
    b[5] = -6 * s;
    const auto y = fq("nvfp4", b);
    for (int i = 0; i < 16; ++i) EXPECT_EQ(y[i], b[i]) << k << " " << i;
  }
  // Block scale clamps at 2^-6 of the tensor scale: a tiny block next to a large one.
  std::vector<float> c(32, 0.0f);
  c[0] = 1000.0f;
  c[16] = 1e-6f;
  const quantized_tensor qc = quantize_ref(c.data(), 1, 32, f);
  EXPECT_EQ(qc.scales[1], std::ldexp(1.0f, -6));
}

TEST(Reference, Nf4CodeBookAndBlocks) {  // docs/formats.md §1.4
  const float want[16] = {-1,         -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734,
                          -0.0910500, 0,          0.0795803,  0.1609302,  0.2461123,  0.3379152,
                          0.4407098,  0.5626170,  0.7229568,  1};
  const auto& t = nf4_table();
  ASSERT_EQ(t.size(), 16u);
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(t[i], want[i], 1e-6) << i;
  int pos = 0, neg = 0, zero = 0;
  for (float v : t) (v > 0 ? pos : v < 0 ? neg : zero)++;
  EXPECT_EQ(pos, 8);
  EXPECT_EQ(neg, 7);
  EXPECT_EQ(zero, 1);
  // Blocks of 64 with an fp32 absmax: value = code * absmax.
  std::vector<float> x(128);
  for (int i = 0; i < 128; ++i) x[i] = std::sin(0.37f * i) * (i < 64 ? 2.0f : 0.5f);
  const quantized_tensor q = quantize_ref(x.data(), 1, 128, parse_format("nf4"));
  ASSERT_EQ(q.scales.size(), 2u);
  float amax0 = 0;
  for (int i = 0; i < 64; ++i) amax0 = std::max(amax0, std::fabs(x[i]));
  EXPECT_EQ(q.scales[0], amax0);
  std::vector<float> y(128);
  dequantize_ref(q, y.data());
  for (int i = 0; i < 64; ++i) {
    // nearest code book entry to x/absmax, computed here by brute force
    const float r = x[i] / amax0;
    int best = 0;
    for (int k = 1; k < 16; ++k)
      if (std::fabs(r - t[k]) < std::fabs(r - t[best])) best = k;
    EXPECT_EQ(y[i], t[best] * amax0) << i;
  }
  // Double-quantization overhead arithmetic of QLoRA: 8/64 + 32/(64*256) = 0.127 bit.
  EXPECT_NEAR(8.0 / 64 + 32.0 / (64 * 256), 0.127, 5e-4);
}

TEST(Reference, IntegerScales) {  // docs/conventions.md §5, docs/formats.md §0.2
  std::vector<float> x = {0.5f, -2.54f, 1.0f, 0.01f};
  auto y = fq("int8/c", x);
  const float s = 2.54f / 127.0f;
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], std::nearbyint(x[i] / s) * s) << i;
  // Asymmetric min-max (GPTQ): range contains 0, z = round(-min/s).
  std::vector<float> a = {0.2f, 0.9f, 0.5f, 0.35f};
  y = fq("uint4/c", a);
  const float sa = (0.9f - 0.0f) / 15.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    const float q = std::clamp(std::nearbyint(a[i] / sa) + 0.0f, 0.0f, 15.0f);
    EXPECT_EQ(y[i], q * sa) << i;
  }
  std::vector<float> b = {-1.0f, 3.0f, 0.1f};
  const quantized_tensor qb = quantize_ref(b.data(), 1, 3, parse_format("uint4/c"));
  const float sb = 4.0f / 15.0f;
  EXPECT_EQ(qb.scales[0], sb);
  EXPECT_EQ(qb.zero_points[0], static_cast<int>(std::nearbyint(1.0f / sb)));
  // All zeros: GPTQ's [-1, 1] range.
  std::vector<float> zz(4, 0.0f);
  const quantized_tensor qz = quantize_ref(zz.data(), 1, 4, parse_format("uint8/c"));
  EXPECT_EQ(qz.scales[0], 2.0f / 255.0f);
}

TEST(Reference, GgmlBlockFormats) {
  // Q8_0: d = amax/127 stored as fp16, q = roundf(x / d) with the unrounded d, value q * fp16(d).
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = std::cos(0.9f * i) * 3.3f;
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  const float d = amax / 127.0f, id = 1.0f / d;
  const float d16 = static_cast<float>(static_cast<_Float16>(d));  // the compiler's RNE half conversion
  auto y = fq("q8_0", x);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], std::round(x[i] * id) * d16) << i;
  // Q4_0: d = max/-8 (signed value of largest magnitude), q = min(15, (int8)(x/d + 8.5)).
  float vmax = 0, am = 0;
  for (float v : x)
    if (am < std::fabs(v)) {
      am = std::fabs(v);
      vmax = v;
    }
  const float d4 = vmax / -8.0f, id4 = 1.0f / d4;
  const float d4h = static_cast<float>(static_cast<_Float16>(d4));
  y = fq("q4_0", x);
  for (int i = 0; i < 32; ++i) {
    const int q = std::min(15, static_cast<int>(static_cast<int8_t>(x[i] * id4 + 8.5f)));
    EXPECT_EQ(y[i], static_cast<float>(q - 8) * d4h) << i;
  }
}

TEST(Reference, FlexpointSharesOneExponent) {
  std::vector<float> x = {1.0f, -0.3f, 0.001f, 2.9f};
  const quantized_tensor q = quantize_ref(x.data(), 1, 4, parse_format("flex16+5"));
  // kappa = 2^ceil(log2(2.9 / 32767)) = 2^-13: the max mantissa 2.9 * 2^13 = 23757 < 32767.
  EXPECT_EQ(q.scales[0], std::ldexp(1.0f, -13));
  auto y = fq("flex16+5", x);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], std::nearbyint(std::ldexp(x[i], 13)) * std::ldexp(1.0f, -13));
}

TEST(Reference, PowerMapWithAOneIsUniform) {  // docs/ptq.md §4.7 check
  std::vector<float> x(64);
  std::mt19937 gen(9);
  std::normal_distribution<float> d(0, 1);
  for (auto& v : x) v = d(gen);
  const auto a = fq("pow1(int4/g32)", x), b = fq("int4/g32", x);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5f * std::fabs(b[i]) + 1e-7f) << i;
  // A < 1 puts more levels near 0: smaller error on small values, and the map is odd.
  // With a power-of-two scale the normalised grid's emax is 0: amax 1 gives scale 1, and
  // pow1 is then int4 on [-1, 1] (values k/7).
  const auto p = fq("pow1(int4/g4:e8m0)", {1.0f, 0.5f, 0.25f, 0.1f});
  EXPECT_EQ(p[0], 1.0f);  // value = (q / 7)^(1/1) * 1, exactly as float32 computes it
  EXPECT_EQ(p[1], 4.0f / 7.0f);
  EXPECT_EQ(p[2], 2.0f / 7.0f);
  EXPECT_EQ(p[3], 1.0f / 7.0f);
  const auto c = fq("pow0.5(int4/g32)", x);
  std::vector<float> nx(x.size());
  for (size_t i = 0; i < x.size(); ++i) nx[i] = -x[i];
  const auto cn = fq("pow0.5(int4/g32)", nx);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(cn[i], -c[i]);
}

TEST(Reference, ScaleRulesMseAndPercentile) {
  // An outlier: the mse rule clips it, lowering the total error below the max rule's.
  std::vector<float> x(128);
  std::mt19937 gen(3);
  std::normal_distribution<float> d(0, 1);
  for (auto& v : x) v = d(gen);
  x[7] = 5.0f;  // a moderate outlier: clipping it lowers the error of the other 127 values more
  auto err = [&](const std::string& spec) {
    const auto y = fq(spec, x);
    double e = 0;
    for (size_t i = 0; i < x.size(); ++i) e += (x[i] - y[i]) * (x[i] - y[i]);
    return e;
  };
  EXPECT_LT(err("int4/t@mse"), err("int4/t"));
  EXPECT_LE(err("int4/t@mse"), err("int4/t@p99"));  // mse minimises exactly this error over its candidates
  // p100 is the max rule.
  EXPECT_EQ(fq("int4/t@p100", x), fq("int4/t", x));
}

TEST(Reference, PhiloxKnownAnswers) {
  // Random123 known-answer vectors for Philox4x32-10.
  uint32_t out[4];
  {
    const uint32_t ctr[4] = {0, 0, 0, 0}, key[2] = {0, 0};
    philox4x32_10(ctr, key, out);
    EXPECT_EQ(out[0], 0x6627e8d5u);
    EXPECT_EQ(out[1], 0xe169c58du);
    EXPECT_EQ(out[2], 0xbc57ac4cu);
    EXPECT_EQ(out[3], 0x9b00dbd8u);
  }
  {
    const uint32_t ctr[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, key[2] = {0xffffffffu, 0xffffffffu};
    philox4x32_10(ctr, key, out);
    EXPECT_EQ(out[0], 0x408f276du);
    EXPECT_EQ(out[1], 0x41c83b0eu);
    EXPECT_EQ(out[2], 0xa20bc7c6u);
    EXPECT_EQ(out[3], 0x6d5451fdu);
  }
  {
    const uint32_t ctr[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, key[2] = {0xa4093822u, 0x299f31d0u};
    philox4x32_10(ctr, key, out);
    EXPECT_EQ(out[0], 0xd16cfe09u);
    EXPECT_EQ(out[1], 0x94fdccebu);
    EXPECT_EQ(out[2], 0x5001e420u);
    EXPECT_EQ(out[3], 0x24126ea1u);
  }
}

TEST(Reference, StochasticRoundingIsUnbiasedAndSeeded) {
  // 0.3 on the int grid: rounds up with probability 0.3 (docs/conventions.md §10).
  const int n = 200000;
  std::vector<float> x(n, 0.3f), y(n);
  fake_quantize_ref(x.data(), y.data(), 1, n, parse_format("int4~sr:11"));
  const double mean = std::accumulate(y.begin(), y.end(), 0.0) / n;
  EXPECT_NEAR(mean, 0.3, 4 * std::sqrt(0.3 * 0.7 / n));
  for (float v : y) EXPECT_TRUE(v == 0.0f || v == 1.0f);
  std::vector<float> y2(n);
  fake_quantize_ref(x.data(), y2.data(), 1, n, parse_format("int4~sr:11"));
  EXPECT_EQ(y, y2);  // same seed, same result
  fake_quantize_ref(x.data(), y2.data(), 1, n, parse_format("int4~sr:12"));
  EXPECT_NE(y, y2);
  // The draw depends on the element's row-major index only: a [2, n/2] view gives the same result.
  std::vector<float> y3(n);
  fake_quantize_ref(x.data(), y3.data(), 2, n / 2, parse_format("int4~sr:11"));
  EXPECT_EQ(y, y3);
  // docs/conventions.md §10 is on the signed value: with e2m1's neighbours 0 and 0.5, 0.125 goes up iff
  // u < 0.25; -0.125 has signed neighbours -0.5 and 0, t = (-0.125 + 0.5) / 0.5 = 0.75, and goes
  // to 0 iff u < 0.75 (not the mirror image of 0.125). Checked against the draw itself.
  for (uint64_t seed = 1; seed <= 64; ++seed) {
    const float u = uniform_from_word(random_word(seed, 0, 0));
    const std::string spec = "e2m1~sr:" + std::to_string(seed);
    EXPECT_EQ(fq(spec, {0.125f})[0], u < 0.25f ? 0.5f : 0.0f) << seed;
    EXPECT_EQ(fq(spec, {-0.125f})[0], u < 0.75f ? 0.0f : -0.5f) << seed;
    EXPECT_EQ(fq(spec, {-0.375f})[0], u < 0.25f ? 0.0f : -0.5f) << seed;  // t = (-0.375 + 0.5) / 0.5
  }
  // Exact values never move.
  std::vector<float> e(1000, 1.5f), ey(1000);
  fake_quantize_ref(e.data(), ey.data(), 1, 1000, parse_format("e2m1~sr"));
  for (float v : ey) EXPECT_EQ(v, 1.5f);
}

TEST(Reference, QuantizeRefusesNanWithoutCode) {
  std::vector<float> x = {1.0f, NAN};
  EXPECT_THROW(quantize_ref(x.data(), 1, 2, parse_format("e2m1")), lowbit::error);
  // With a NaN code, or with a scale, it stores the NaN.
  const quantized_tensor q = quantize_ref(x.data(), 1, 2, parse_format("e4m3fn"));
  std::vector<float> y(2);
  dequantize_ref(q, y.data());
  EXPECT_TRUE(std::isnan(y[1]));
  const quantized_tensor q2 = quantize_ref(x.data(), 1, 2, parse_format("e2m1/g2"));
  dequantize_ref(q2, y.data());
  EXPECT_TRUE(std::isnan(y[0]) && std::isnan(y[1]));
}

TEST(Reference, Metrics) {
  std::vector<float> x = {1, 2, 3, 4}, q = {1, 2, 3, 5};
  const error_metrics m = compare(x.data(), q.data(), 4);
  EXPECT_DOUBLE_EQ(m.mse, 0.25);
  EXPECT_DOUBLE_EQ(m.max_abs, 1.0);
  EXPECT_NEAR(m.sqnr_db, 10 * std::log10(30.0 / 1.0), 1e-12);
  std::vector<float> p = {0.5f, 0.5f}, r = {0.25f, 0.75f};
  EXPECT_NEAR(kl_divergence(p.data(), r.data(), 2), 0.5 * std::log(2.0) + 0.5 * std::log(0.5 / 0.75), 1e-7);
}

// quantize / dequantize to packed codes (src/kernels/codes_fast.cpp) == quantize_ref /
// dequantize_ref bit for bit, on the paths the differential suite's short rows do not reach: rows
// longer than the fast path's chunk of ~2048 values (several chunks and a tail, group counts that
// are not multiples of the 16-group batches), NaN/Inf groups in the middle of a chunk, non-finite
// and subnormal scales, every code of the formats of at most 8 bits, and many threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <omp.h>

#include "tests/kernels/bits.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/simd.hpp"
#include "lowbit/kernels/threads.hpp"

using namespace lowbit;

namespace {

using lowbit::test::same;

using lowbit::test::seed;

// Gaussian values of mixed magnitudes; with `specials`, a few NaN/Inf (each makes its group's
// scale NaN), zeros, float32 subnormals and huge values, placed at random.
std::vector<float> mixed_values(std::mt19937& gen, size_t n, bool specials) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(gen) * std::ldexp(1.0f, static_cast<int>(gen() % 9) - 4);
  if (specials)
    for (size_t i = 0; i < n; ++i) {
      const uint32_t s = gen() % 1024;
      if (s == 0) x[i] = NAN;
      else if (s == 1) x[i] = INFINITY;
      else if (s == 2) x[i] = -INFINITY;
      else if (s == 3) x[i] = 0.0f;
      else if (s == 4) x[i] = -0.0f;
      else if (s == 5) x[i] = 1e-42f;
      else if (s == 6) x[i] = 3e38f;
    }
  return x;
}

// quantize == quantize_ref (codes, scales, zero points, mins, tensor scale) and dequantize ==
// dequantize_ref on x [rows, cols]; a failure names the first differing code.
void expect_codes_equal(const std::string& what, const float* x, int64_t rows, int64_t cols, const format& f) {
  const quantized_tensor qr = quantize_ref(x, rows, cols, f, 7);
  const quantized_tensor qf = quantize(x, rows, cols, f, 7);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (qr.code(r, c) != qf.code(r, c))
        FAIL() << what << " code [" << r << "," << c << "] input " << x[r * cols + c] << " ref 0x" << std::hex
               << qr.code(r, c) << " fast 0x" << qf.code(r, c);
  ASSERT_TRUE(qr == qf) << what << ": scales, zero points or the bytes past the last code differ";
  std::vector<float> dr(static_cast<size_t>(rows * cols)), df(dr.size());
  dequantize_ref(qr, dr.data());
  dequantize(qf, df.data());
  for (size_t i = 0; i < dr.size(); ++i)
    if (!same(dr[i], df[i])) FAIL() << what << " dequantize index " << i << " ref " << dr[i] << " fast " << df[i];
}

}  // namespace

// Rows of several chunks plus a tail: 2048-value chunks for /t and plain casts, 16 * k * m for
// groups of k (k = 9: 2016, a chunk that is not a power of two), the row for /c; odd column counts
// leave a half byte at the end of 4-bit rows; NaN/Inf groups inside chunks send that chunk to the
// group-by-group encoder while the next ones take the SIMD one again. Every SIMD target.
TEST(CodesFast, LongRowsAcrossChunksEqualTheReference) {
  std::mt19937 gen(seed(31));
  const std::vector<std::string> specs = {
      "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4", "nvfp4", "int4/g32", "int8/c", "e4m3fn/t", "int4/g9",
      "uint4/g16", "e2m1/g16:e4m3", "mxfp6_e3m2", "mxfp8", "int2/g32", "e5m2/g32", "e4m3fn", "e2m1", "bf16",
      "e5m2(overflow=inf)", "e4m3fnuz/g32", "int8/t", "uint8/c", "nf4", "mxfp4~sr:3", "int4/g32~sr8"};
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{2, 5001}, {3, 4096}, {2, 2049}, {1, 6143}};
  int cases = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const auto& spec : specs) {
      const format f = parse_format(spec);
      for (const auto& [rows, cols] : shapes) {
        for (bool specials : {false, true}) {
          // A plain cast without a NaN code cannot store NaN (quantize refuses it, as the reference).
          if (specials && f.gran == granularity::none && !has_nan_code(f.element)) continue;
          const std::vector<float> x = mixed_values(gen, static_cast<size_t>(rows * cols), specials);
          expect_codes_equal(spec + " [" + std::to_string(rows) + "," + std::to_string(cols) + "] on " + t.second +
                                 (specials ? " with NaN/Inf" : ""),
                             x.data(), rows, cols, f);
          if (HasFatalFailure()) {
            force_simd_target(0);
            return;
          }
          ++cases;
        }
      }
    }
  }
  force_simd_target(0);
  EXPECT_GT(cases, 100);
}

// Every code of each element format of at most 8 bits, as the values of a plain cast and of a
// scaled format whose group scale is 1 (the group's amax is the element's max, one group per
// row): the fast code decodes to the value it came from (an independent round trip through
// decode_ref), equals the reference's, and dequantizes to the same value. Every SIMD target.
TEST(CodesFast, EveryCodeOfSmallFormatsThroughTheFastPath) {
  int checked = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    SCOPED_TRACE(t.second);
    for (const char* e : {"e2m1", "e3m2", "e2m3", "e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz", "e4m3finite", "e1m0", "e1m2",
                          "e2m0", "e3m0fnuz", "e5m2(overflow=inf)", "e3m2ieee(subnormals=off)",
                          "e4m3fn(bias=4,subnormals=off)", "e2m1(bias=0)", "int2", "int3", "int4", "int8", "uint4", "uint8",
                          "nf4", "lut(-1.5,-0.5,0,0.25,2)"}) {
      const element_format el = parse_format(e).element;
      // Every finite value of a code inside the format's range (symmetric integers leave out the
      // two's complement -2^(b-1), which quantizes to -(2^(b-1) - 1)).
      const element_limits lim = limits_of(el);
      std::vector<float> values;
      for (uint32_t c = 0; c < code_count(el); ++c) {
        const float v = decode_ref(el, c);
        if (std::isfinite(v) && v >= lim.min && v <= lim.max) values.push_back(v);
      }
      const int64_t n = static_cast<int64_t>(values.size());
      // Plain cast, the row repeated so that it spans whole vectors and a tail.
      std::vector<float> x;
      for (int rep = 0; rep < 5; ++rep) x.insert(x.end(), values.begin(), values.end());
      const format plain = parse_format(e);
      const quantized_tensor q = quantize(x.data(), 5, n, plain);
      for (int64_t r = 0; r < 5; ++r)
        for (int64_t c = 0; c < n; ++c) {
          const float back = decode_ref(el, q.code(r, c));
          // Formats without -0 store 0 for -0 (the value compares equal).
          ASSERT_TRUE(same(back, values[static_cast<size_t>(c)]) || (back == 0.0f && values[static_cast<size_t>(c)] == 0.0f))
              << e << " value " << values[static_cast<size_t>(c)] << " got code 0x" << std::hex << q.code(r, c)
              << " which decodes to " << back;
          ++checked;
        }
      expect_codes_equal(std::string(e) + " plain", x.data(), 5, n, plain);
      // Scaled per row (fp32 scale = amax / max): the element grid scaled by 1 where the row's amax
      // is the element's max.
      const std::string scaled = std::string(e) + "/c";
      if (el.kind != element_kind::uint_asym) expect_codes_equal(scaled, x.data(), 5, n, parse_format(scaled));
      if (HasFatalFailure()) break;
    }
  }
  force_simd_target(0);
  EXPECT_GT(checked, 5000);
}

// Groups whose scale is not finite or not normal: a NaN or Inf in the group (NaN scale, codes 0,
// dequantized to NaN), all zeros, float32 subnormal amax (subnormal or zero scales, q8_0's and
// q4_0's 1/d = Inf), amax near float32's max (scale formats that overflow); in odd group counts
// (rows of 23 groups of 32 and a tail of 5).
TEST(CodesFast, NonFiniteAndTinyScales) {
  const int64_t rows = 6, cols = 23 * 32 + 5;
  std::vector<float> x(static_cast<size_t>(rows * cols));
  std::mt19937 gen(seed(33));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& v : x) v = normal(gen);
  auto group = [&](int64_t r, int64_t g) { return x.data() + r * cols + g * 32; };
  group(0, 3)[7] = NAN;
  group(0, 17)[0] = INFINITY;
  group(1, 0)[31] = -INFINITY;
  for (int i = 0; i < 32; ++i) group(1, 5)[i] = 0.0f;
  for (int i = 0; i < 32; ++i) group(2, 9)[i] = std::bit_cast<float>(static_cast<uint32_t>(1 + 3 * i));  // subnormal
  for (int i = 0; i < 32; ++i) group(3, 22)[i] = (i % 2 ? -1.0f : 1.0f) * 3.3e38f;
  for (int i = 0; i < 32; ++i) group(4, 11)[i] = 1e-40f * static_cast<float>(i - 16);
  x[static_cast<size_t>(5 * cols + cols - 2)] = NAN;  // in the tail group
  for (const char* spec : {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4", "nvfp4", "int4/g32", "int8/g32",
                           "e4m3fn/g32", "e2m1/g32:e8m0@rceil", "int4/g32:fp16", "uint4/g32", "e5m2/g32:bf16", "mxint8"}) {
    const format f = parse_format(spec);
    expect_codes_equal(spec, x.data(), rows, cols, f);
    // The conventions' NaN group (docs/conventions.md §4): a NaN scale, every code 0.
    const quantized_tensor q = quantize(x.data(), rows, cols, f);
    const int64_t gpr = q.groups_per_row();
    const int64_t per = f.group_size;
    // (row, column) of each NaN/Inf placed above; the group holding it (groups of 32, or 16).
    for (const auto& [r, col] : std::vector<std::pair<int64_t, int64_t>>{{0, 3 * 32 + 7}, {0, 17 * 32}, {1, 31}, {5, cols - 2}}) {
      const int64_t g = col / per;
      EXPECT_TRUE(std::isnan(q.scales[static_cast<size_t>(r * gpr + g)])) << spec << " row " << r << " group " << g;
      for (int64_t c = g * per; c < std::min(cols, (g + 1) * per); ++c)
        EXPECT_EQ(q.code(r, c), 0u) << spec << " [" << r << "," << c << "]";
    }
  }
}

// The same codes and values from every thread count (above kParallelMinElements, rows split
// unevenly), the load-following team switched off so that the threaded branches do run.
TEST(CodesFast, ThreadCountInvariant) {
  std::mt19937 gen(seed(34));
  constexpr int64_t rows = 37, cols = 2100;
  static_assert(rows * cols >= kParallelMinElements, "the tensor must take the threaded path");
  const std::vector<float> x = mixed_values(gen, static_cast<size_t>(rows * cols), true);
  const int saved = omp_get_max_threads();
  set_threads_follow_load(false);
  for (const char* spec : {"q4_0", "q8_0", "q5_1", "mxfp4", "nvfp4", "int4/g32", "int8/c", "e4m3fn/t", "uint4/g64",
                           "e2m1/g32~sr:5"}) {
    const format f = parse_format(spec);
    const quantized_tensor ref = quantize_ref(x.data(), rows, cols, f, 3);
    std::vector<float> values_ref(x.size());
    dequantize_ref(ref, values_ref.data());
    for (int threads : {1, 2, 3, 8}) {
      omp_set_num_threads(threads);
      const quantized_tensor q = quantize(x.data(), rows, cols, f, 3);
      EXPECT_TRUE(q == ref) << spec << " with " << threads << " threads";
      std::vector<float> values(x.size());
      dequantize(q, values.data());
      size_t differ = 0;
      for (size_t i = 0; i < x.size(); ++i) differ += !same(values[i], values_ref[i]);
      EXPECT_EQ(differ, 0u) << spec << " dequantize with " << threads << " threads";
    }
  }
  set_threads_follow_load(true);
  omp_set_num_threads(saved);
}

// dequantize == dequantize_ref on every code of each format (codes written over a quantized
// tensor, so that NaN codes and the two's complement -2^(b-1), which quantize never emits, are
// decoded too): the table lookups, the lane-permute tables of <= 4-bit elements, the sign
// extension of symmetric integers, zero points and mins. Every SIMD target.
TEST(CodesFast, DequantizeEveryCode) {
  std::mt19937 gen(seed(35));
  int cases = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const char* spec : {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4", "nvfp4", "int8/c", "int4/g32", "int2/g16",
                             "int16/c", "mxint8", "e4m3fn/t", "e5m2/g32", "mxfp8", "mxfp6_e2m3", "uint4/g16", "e2m1",
                             "e4m3fn", "nf4", "fp16"}) {
      const format f = parse_format(spec);
      const int64_t count = static_cast<int64_t>(code_count(f.element));
      const int64_t rows = 3, cols = std::min<int64_t>(count, 4096) + 37;
      const std::vector<float> x = mixed_values(gen, static_cast<size_t>(rows * cols), false);
      quantized_tensor q = quantize(x.data(), rows, cols, f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) q.set_code(r, c, static_cast<uint32_t>((r * cols + c) * 7 % count));
      std::vector<float> dr(x.size()), df(x.size());
      dequantize_ref(q, dr.data());
      dequantize(q, df.data());
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_TRUE(same(dr[i], df[i])) << spec << " on " << t.second << " index " << i << " code 0x" << std::hex
                                        << q.code(static_cast<int64_t>(i) / cols, static_cast<int64_t>(i) % cols)
                                        << std::dec << " ref " << dr[i] << " fast " << df[i];
      ++cases;
    }
  }
  force_simd_target(0);
  EXPECT_EQ(cases, 21 * static_cast<int>(simd_targets().size()));
}

// Fast kernels == reference kernels, bit for bit: every format family x rounding x group size
// (including non-powers of two) x odd lengths x misaligned pointers x every compiled SIMD target,
// on data that mixes Gaussian values, exact grid points and midpoints (ties), subnormals, huge
// values, +-0, NaN and Inf (docs/architecture.md §8). A failure prints the whole parameter tuple.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <omp.h>

#include "tests/kernels/bits.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/simd.hpp"
#include "lowbit/kernels/threads.hpp"

using namespace lowbit;

namespace {

using lowbit::test::same;

using lowbit::test::seed;

// n standard normal values.
std::vector<float> gaussian(std::mt19937& gen, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  std::normal_distribution<float> d(0, 1);
  for (auto& v : x) v = d(gen);
  return x;
}

// Values that stress the rounding of element e under scale ~1: its grid points, midpoints and
// their float neighbours, plus specials.
std::vector<float> stress_values(const format& f, std::mt19937& gen, size_t n, bool specials) {
  std::vector<float> grid;
  const element_format& e = f.element;
  if (e.bits <= 10) {
    for (uint32_t c = 0; c < code_count(e); ++c) {
      const float v = decode_ref(e, c);
      if (std::isfinite(v)) grid.push_back(v);
    }
  }
  std::sort(grid.begin(), grid.end());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t pick = gen() % 16;
    float v;
    if (pick < 6 || grid.size() < 2) {
      v = normal(gen) * std::ldexp(1.0f, static_cast<int>(gen() % 9) - 4);
    } else {
      const size_t k = gen() % (grid.size() - 1);
      const float lo = grid[k], hi = grid[k + 1];
      const float mid = lo + (hi - lo) / 2;
      switch (pick) {
        case 6: v = lo; break;
        case 7: case 8: v = mid; break;
        case 9: v = std::nextafter(mid, INFINITY); break;
        case 10: v = std::nextafter(mid, -INFINITY); break;
        case 11: v = lo + (hi - lo) * uni(gen); break;
        default: v = lo + (hi - lo) * uni(gen); break;
      }
    }
    if (specials) {
      const uint32_t s = gen() % 64;
      if (s == 0) v = NAN;
      else if (s == 1) v = INFINITY;
      else if (s == 2) v = -INFINITY;
      else if (s == 3) v = -0.0f;
      else if (s == 4) v = std::ldexp(1.0f, -140) * uni(gen);  // float32 subnormal
      else if (s == 5) v = 1e30f * normal(gen);
      else if (s == 6) v = 0.0f;
    }
    out[i] = v;
  }
  return out;
}

struct diff_case {
  std::string spec;
  int64_t rows, cols;
  int target;
  std::string target_name;
  size_t misalign;
};

std::string describe(const diff_case& c) {
  return "format=" + c.spec + " shape=[" + std::to_string(c.rows) + "," + std::to_string(c.cols) +
         "] target=" + c.target_name + " misalign=" + std::to_string(c.misalign);
}

void check_case(const diff_case& c, std::mt19937& gen, bool specials) {
  const format f = parse_format(c.spec);
  const int64_t n = c.rows * c.cols;
  // Misaligned storage: the data starts `misalign` floats into the buffer.
  std::vector<float> in_buf(static_cast<size_t>(n) + 8), out_fast(static_cast<size_t>(n) + 8),
      out_ref(static_cast<size_t>(n));
  std::vector<float> vals = stress_values(f, gen, static_cast<size_t>(n), specials);
  float* in = in_buf.data() + c.misalign;
  std::memcpy(in, vals.data(), vals.size() * sizeof(float));
  float* fast = out_fast.data() + c.misalign;

  fake_quantize_ref(in, out_ref.data(), c.rows, c.cols, f, 17);
  fake_quantize(in, fast, c.rows, c.cols, f, 17);
  for (int64_t i = 0; i < n; ++i)
    if (!same(fast[i], out_ref[static_cast<size_t>(i)])) {
      FAIL() << "fake_quantize " << describe(c) << " index " << i << " input " << in[i] << " (0x" << std::hex
             << std::bit_cast<uint32_t>(in[i]) << std::dec << ") ref " << out_ref[static_cast<size_t>(i)] << " fast "
             << fast[i];
    }
  // In place gives the same.
  std::vector<float> inplace(vals);
  fake_quantize(inplace.data(), inplace.data(), c.rows, c.cols, f, 17);
  for (int64_t i = 0; i < n; ++i)
    if (!same(inplace[static_cast<size_t>(i)], out_ref[static_cast<size_t>(i)]))
      FAIL() << "in-place " << describe(c) << " index " << i;

  // Packed codes (skip inputs the format cannot store: NaN in an unscaled format without NaN code).
  bool storable = true;
  if (f.gran == granularity::none && !has_nan_code(f.element))
    for (float v : vals) storable &= !std::isnan(v);
  if (!storable) return;
  const quantized_tensor qr = quantize_ref(in, c.rows, c.cols, f, 17);
  const quantized_tensor qf = quantize(in, c.rows, c.cols, f, 17);
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t k = 0; k < c.cols; ++k)
      if (qr.code(r, k) != qf.code(r, k))
        FAIL() << "quantize codes " << describe(c) << " at [" << r << "," << k << "] input " << in[r * c.cols + k]
               << " ref 0x" << std::hex << qr.code(r, k) << " fast 0x" << qf.code(r, k);
  ASSERT_TRUE(qr == qf) << "scales/zero points " << describe(c);
  std::vector<float> dr(static_cast<size_t>(n)), df(static_cast<size_t>(n));
  dequantize_ref(qr, dr.data());
  dequantize(qf, df.data());
  for (int64_t i = 0; i < n; ++i) {
    if (!same(dr[static_cast<size_t>(i)], df[static_cast<size_t>(i)])) FAIL() << "dequantize " << describe(c) << " " << i;
    // quantize + dequantize is fake_quantize.
    if (!same(dr[static_cast<size_t>(i)], out_ref[static_cast<size_t>(i)]))
      FAIL() << "dequantize(quantize) != fake_quantize " << describe(c) << " index " << i << " input " << in[i];
  }
}

const std::vector<std::string>& element_specs() {
  static const std::vector<std::string> v = {
      "e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz", "e3m2", "e2m3", "e2m1", "e4m3finite", "e1m0", "e1m2",
      "e2m0", "e3m0fnuz", "e5m2(overflow=inf)", "e4m3fn(overflow=nan)", "e3m2ieee(subnormals=off)",
      "e4m3fn(bias=4,subnormals=off)", "e2m1(bias=0)", "e5m3(bias=20)", "bf16", "fp16", "tf32",
      "e6m5ieee(overflow=nan)", "fp32", "int2", "int4", "int8", "int16", "uint3", "uint8", "nf4/c",
      "lut(-1.5,-0.5,0,0.25,2)"};
  return v;
}

}  // namespace

// The LUT elements ("nf4/c", "lut(...)") in the directed and stochastic roundings run the
// reference's per-row code on the fast path by construction (simd_covers, src/kernels/fast_plan.hpp):
// for them this checks the dispatch only, the values being the reference's own.
TEST(Differential, PlainCastsEveryRounding) {
  std::mt19937 gen(seed(1));
  const char* modes[] = {"", "~rna", "~rtz", "~up", "~down", "~odd", "~sr:3", "~sr8:3", "~sr16:3", "~sr2"};
  int cases = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const auto& e : element_specs()) {
      if (e == "e8m0/t") continue;
      for (const char* m : modes) {
        for (int64_t cols : {1, 2, 3, 5, 7, 15, 17, 31, 33, 63, 127, 129}) {
          check_case({e + m, 3, cols, static_cast<int>(t.first), t.second, static_cast<size_t>(cols % 3)}, gen, true);
          ++cases;
        }
      }
    }
  }
  force_simd_target(0);
  EXPECT_GT(cases, 500);
}

// Formats the SIMD path does not cover (simd_covers in src/kernels/fast_plan.hpp: power maps "pow...",
// the @mse and @p99 scale rules, LUT elements with directed or stochastic rounding, here
// "int4/g32:fp16@mse", "e2m1/g32@p99", "uint4/g32@mse", "pow0.5(int4/g32)", "pow0.75(...)",
// "nf4/g64:fp16~sr", "lut(...)/g5~up") run the reference's own per-row code on the fast path by
// construction: for them this checks only the fast path's dispatch, row blocks and in-place use.
// test_reference.cpp checks the power maps and the mse/p99 rules against their definitions.
TEST(Differential, ScaledFormats) {
  std::mt19937 gen(seed(2));
  const std::vector<std::string> specs = {
      "mxfp4", "mxfp8", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxint8", "nvfp4", "nf4", "q4_0", "q8_0",
      "q4_1", "q5_0", "q5_1", "flex16+5", "flex8+4", "int8/c", "int4/g128", "int4/g9", "uint4/g16", "uint8/c:fp16", "uint3/t",
      "e4m3fn/t", "e4m3fn/c", "e2m1/g32~sr", "e2m1/g16:e4m3", "int4/g32:fp16", "e4m3fn/g32:e4m3~sr", "e2m1/g32:e8m0@rceil", "e2m1/g32:e8m0@ceil",
      "e2m1/g32:e8m0@even", "e3m2/g7:bf16~rtz", "int4/g32:pow2", "int4/g32:fp16@mse", "e2m1/g32@p99",
      "uint4/g32@mse", "pow0.5(int4/g32)", "pow0.75(e2m1/g16:e8m0)", "nf4/g64:fp16~sr", "lut(-1,0,0.5,1)/g5~up",
      "mxfp4~sr:9", "nvfp4~sr", "int8/t~odd", "e4m3fn/g17:e8m0~down", "e5m2/c~rna", "e2m1/g32~sr8",
      "mxfp4~sr8:9", "nvfp4~sr8", "e4m3fn/t~sr16", "int8/c~sr8", "e4m3fn/g32:e4m3~sr4", "nf4/g64:fp16~sr8"};
  int cases = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const auto& s : specs) {
      for (int64_t cols : {1, 7, 15, 17, 31, 33, 63, 127, 129, 1023}) {
        for (bool specials : {false, true}) {
          check_case({s, 3, cols, static_cast<int>(t.first), t.second, static_cast<size_t>(1 + cols % 2)}, gen, specials);
          ++cases;
        }
      }
    }
  }
  force_simd_target(0);
  EXPECT_GT(cases, 300);
}

// Scales near the top of float32 in a wide scale format (bf16, tf32): the fast scale rounding's
// (|v| + C) - C needs C = 2^(L+23) finite, which fails from amax ~ 2^112 up; there it rounds a
// scaled-down copy. Before, such a group kept its unrounded fp32 scale (3e38 in e5m2/g16:bf16
// came back as 3e38 instead of 57344 * bf16(3e38 / 57344)).
TEST(Differential, WideScaleFormatsAtTheTopOfTheRange) {
  std::mt19937 gen(seed(7));
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  int cases = 0;
  for (const char* spec : {"e5m2/g16:bf16", "e4m3fn/c:bf16", "int8/g16:bf16", "e2m1/g16:bf16~rtz", "e5m2/t:bf16",
                           "int4/g32:tf32", "e3m2/g7:bf16~sr"}) {
    const format f = parse_format(spec);
    for (float top : {0x1p100f, 0x1p111f, 0x1.fffffep111f, 0x1p112f, 3.0e38f, 3.3e38f, 3.4028235e38f}) {
      const int64_t rows = 4, cols = 64;
      std::vector<float> x(rows * cols), a(rows * cols), b(rows * cols);
      for (auto& v : x) v = unit(gen) * top;
      for (int64_t r = 0; r < rows; ++r) x[r * cols + r * 5] = r % 2 ? top : -top;  // amax = top exactly
      fake_quantize_ref(x.data(), a.data(), rows, cols, f, 3);
      fake_quantize(x.data(), b.data(), rows, cols, f, 3);
      for (int64_t i = 0; i < rows * cols; ++i)
        ASSERT_TRUE(same(a[i], b[i])) << spec << " amax " << top << " index " << i << " input " << x[i] << " ref "
                                      << a[i] << " fast " << b[i];
      ASSERT_TRUE(quantize_ref(x.data(), rows, cols, f, 3) == quantize(x.data(), rows, cols, f, 3)) << spec << " " << top;
      ++cases;
    }
  }
  EXPECT_EQ(cases, 49);
}

// Elements whose smallest normal lies below float32's (emin < -126: e8 with bias 128 as the fnuz
// variants have it, larger biases) see float32 subnormal inputs inside their normal or subnormal
// range; the fast path once took every float32 subnormal for 2^-126's binade and rounded 2^-130,
// e8m3fnuz's smallest subnormal, to 2^-129 (fuzz_spec found it, docs/robustness.md). Every rounding,
// every SIMD target, values from 2^-149 to 2^-100: fast equals the reference bit for bit, and the
// grid's own points (k 2^-130 for e8m3fnuz) come back unchanged in every mode.
TEST(Differential, ElementsBelowFloat32sNormalRange) {
  std::mt19937 gen(seed(11));
  std::uniform_int_distribution<uint32_t> subnormal(1, 0x7fffff);
  std::uniform_int_distribution<int> binade(-149, -100);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::vector<float> x;
  for (uint32_t m = 1; m < 64; ++m) x.push_back(std::bit_cast<float>(m));
  for (int k = 0; k < 23; ++k) for (uint32_t d : {0u, 1u}) x.push_back(std::bit_cast<float>((1u << k) | d));
  for (int i = 0; i < 400; ++i) x.push_back(std::bit_cast<float>(subnormal(gen)));
  for (int i = 0; i < 400; ++i) x.push_back(std::ldexp(mant(gen), binade(gen)));
  for (int k = -131; k <= -120; ++k) for (float f : {1.0f, 1.125f, 1.5f, 1.875f}) x.push_back(std::ldexp(f, k));
  const size_t n_pos = x.size();
  for (size_t i = 0; i < n_pos; ++i) x.push_back(-x[i]);
  for (float v : {0.0f, -0.0f, INFINITY, -INFINITY, NAN}) x.push_back(v);
  const int64_t cols = static_cast<int64_t>(x.size());
  const char* modes[] = {"", "~rna", "~rtz", "~up", "~down", "~odd", "~sr:5"};
  int cases = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const char* e : {"e8m3fnuz", "e8m0fnuz", "e8m2fnuz", "e8m3(bias=129)", "e8m1(bias=130,subnormals=off)",
                          "e5m2(bias=140)", "e8m3fnuz/g88:pow2", "e8m3fnuz/g88"}) {
      for (const char* m : modes) {
        const std::string spec = std::string(e) + m;
        const format f = parse_format(spec);
        std::vector<float> a(x.size()), b(x.size());
        fake_quantize_ref(x.data(), a.data(), 1, cols, f, 3);
        fake_quantize(x.data(), b.data(), 1, cols, f, 3);
        for (int64_t i = 0; i < cols; ++i)
          ASSERT_TRUE(same(a[i], b[i])) << spec << " on " << t.second << ": input " << x[i] << " ref " << a[i]
                                        << " fast " << b[i];
        ASSERT_TRUE(quantize_ref(x.data(), 1, cols, f, 3) == quantize(x.data(), 1, cols, f, 3)) << spec;
        ++cases;
      }
    }
    // k 2^-130, k = 1..15 (e8m3fnuz's subnormals and first normals) are on the grid: unchanged.
    for (const char* m : modes) {
      const format f = parse_format(std::string("e8m3fnuz") + m);
      std::vector<float> g, out(15);
      for (int k = 1; k <= 15; ++k) g.push_back(std::ldexp(static_cast<float>(k), -130));
      fake_quantize(g.data(), out.data(), 1, 15, f, 3);
      for (int k = 0; k < 15; ++k) ASSERT_TRUE(same(out[k], g[k])) << m << " moved " << g[k] << " to " << out[k];
    }
  }
  force_simd_target(0);
  EXPECT_EQ(cases, 56 * static_cast<int>(simd_targets().size()));
}

// fake_quantize_columns (groups along rows, the training's token-grouped operands) equals its
// reference, the transposed fake_quantize_ref, bit for bit: tiles of whole vectors, partial
// column blocks and row groups, groups the tile path hands to the gathered path (zero, subnormal,
// NaN/Inf amax), stochastic rounding's transposed counters, in place, every SIMD target. And it
// equals fake_quantize on an explicit transpose, which checks the formats whose fast columns are
// the reference by construction (those the SIMD path does not cover: power maps, mse) against
// the fast row kernels. For K-quants, whose fast columns are fake_quantize on a transpose by
// construction, the independent check is the first one (the reference).
TEST(Differential, ColumnGroupsEqualTheTransposedReference) {
  std::mt19937 gen(seed(7));
  const std::vector<std::string> specs = {
      "mxfp4", "mxfp8_e5m2", "mxint8", "nvfp4", "nf4", "q8_0", "q4_0", "int8/c", "int4/g128", "int4/g9",
      "uint4/g16", "e4m3fn/t", "e4m3fn/c", "e5m2/g32", "e4m3fn/g32", "e2m1/g32~sr", "e2m1/g16:e4m3",
      "int4/g32:fp16", "e2m1/g32:e8m0@rceil", "e3m2/g7:bf16~rtz", "int4/g32:pow2", "uint4/g32@mse",
      "pow0.5(int4/g32)", "nvfp4~sr", "e4m3fn/g17:e8m0~down", "e5m2/c~rna", "bf16", "e4m3fn~odd", "q4_k", "q6_k",
      "q2_k", "q3_k", "q5_k", "q4_1", "q5_0", "q5_1", "mxfp4~sr:9", "e4m3fn/c~sr", "int8/t~sr", "e2m1~sr:2",
      "mxfp4~sr8:9", "e4m3fn/c~sr16", "int8/t~sr8", "e2m1~sr8:2", "nvfp4~sr8"};
  int cases = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const auto& s : specs) {
      const format f = parse_format(s);
      for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
               {64, 32}, {33, 17}, {7, 48}, {100, 3}, {1, 16}, {40, 1}}) {
        for (bool specials : {false, true}) {
          const int64_t n = rows * cols;
          std::vector<float> x = stress_values(f, gen, static_cast<size_t>(n), specials);
          if (specials && n > 40)  // a zero column group and a subnormal one
            for (int64_t r = 0; r < std::min<int64_t>(rows, 9); ++r) {
              x[static_cast<size_t>(r * cols)] = 0.0f;
              if (cols > 1) x[static_cast<size_t>(r * cols + 1)] = 1e-41f * static_cast<float>(r);
            }
          std::vector<float> ref(x.size()), fast(x.size()), inplace(x), xt(x.size()), rows_of_xt(x.size());
          fake_quantize_columns_ref(x.data(), ref.data(), rows, cols, f, 23);
          fake_quantize_columns(x.data(), fast.data(), rows, cols, f, 23);
          fake_quantize_columns(inplace.data(), inplace.data(), rows, cols, f, 23);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) xt[static_cast<size_t>(c * rows + r)] = x[static_cast<size_t>(r * cols + c)];
          fake_quantize(xt.data(), rows_of_xt.data(), cols, rows, f, 23);
          for (size_t i = 0; i < x.size(); ++i) {
            if (!same(ref[i], fast[i]))
              FAIL() << s << " [" << rows << "," << cols << "] target " << t.second << " index " << i << " input "
                     << x[i] << " ref " << ref[i] << " fast " << fast[i];
            if (!same(ref[i], inplace[i])) FAIL() << s << " in place, index " << i;
            const size_t r = i / static_cast<size_t>(cols), c = i % static_cast<size_t>(cols);
            const float row_kernel = rows_of_xt[c * static_cast<size_t>(rows) + r];
            if (!same(fast[i], row_kernel))
              FAIL() << s << " [" << rows << "," << cols << "] target " << t.second << " index " << i << " input "
                     << x[i] << " columns " << fast[i] << " fake_quantize of the transpose " << row_kernel;
          }
          ++cases;
        }
      }
    }
  }
  force_simd_target(0);
  EXPECT_GT(cases, 300);
}

// The columns reference is the row kernel's transpose: a column group of one column is a row
// group of the transposed tensor (checked here against fake_quantize on an explicit transpose).
TEST(Differential, ColumnGroupsAreTheTransposedRows) {
  std::mt19937 gen(seed(8));
  const int64_t rows = 96, cols = 40;
  std::vector<float> x(static_cast<size_t>(rows * cols)), xt(x.size());
  std::normal_distribution<float> d(0, 1);
  for (auto& v : x) v = d(gen);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) xt[static_cast<size_t>(c * rows + r)] = x[static_cast<size_t>(r * cols + c)];
  for (const char* spec : {"e4m3fn/g32", "mxfp4", "e2m1/g32~sr:4"}) {
    const format f = parse_format(spec);
    std::vector<float> col(x.size()), rowt(x.size());
    fake_quantize_columns(x.data(), col.data(), rows, cols, f, 5);
    fake_quantize(xt.data(), rowt.data(), cols, rows, f, 5);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_TRUE(same(col[static_cast<size_t>(r * cols + c)], rowt[static_cast<size_t>(c * rows + r)])) << spec;
    // and it differs from grouping along the rows (the test would see a mix-up of the axes)
    std::vector<float> rows_grouped(x.size());
    fake_quantize(x.data(), rows_grouped.data(), rows, cols, f, 5);
    EXPECT_NE(std::memcmp(col.data(), rows_grouped.data(), x.size() * 4), 0) << spec;
  }
}

// A shard of rows with its counters (data-parallel training's share of the tokens) draws what the
// whole tensor draws: fake_quantize of rows [r0, r1) with base r0 * cols, and
// fake_quantize_columns of rows [r0, r1) (r0 on a group boundary) with base r0 and stride rows,
// equal those rows of the whole tensor's result — fast and reference, every SIMD target.
TEST(Differential, RowShardsDrawWhatTheWholeTensorDraws) {
  std::mt19937 gen(seed(9));
  const int64_t rows = 96, cols = 40, r0 = 32, r1 = 96;
  const std::vector<float> x = gaussian(gen, rows * cols);
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const char* spec : {"e2m1/g32~sr:4", "mxfp4~sr", "int8/c~sr", "e4m3fn/g16:e4m3~sr", "pow0.5(int4/g32~sr)",
                             "e2m1/g32~sr8:4", "mxfp4~sr16", "int8/c~sr8", "pow0.5(int4/g32~sr8)"}) {
      const format f = parse_format(spec);
      std::vector<float> whole(x.size()), whole_cols(x.size()), part((r1 - r0) * cols), part_cols(part.size());
      fake_quantize(x.data(), whole.data(), rows, cols, f, 5);
      fake_quantize_columns(x.data(), whole_cols.data(), rows, cols, f, 5);
      const float* xs = x.data() + r0 * cols;
      for (bool ref : {false, true}) {
        if (ref) {
          fake_quantize_ref(xs, part.data(), r1 - r0, cols, f, 5, {uint64_t(r0 * cols), sr_counters::kOwnRowLength});
          fake_quantize_columns_ref(xs, part_cols.data(), r1 - r0, cols, f, 5, {uint64_t(r0), rows});
        } else {
          fake_quantize(xs, part.data(), r1 - r0, cols, f, 5, {uint64_t(r0 * cols), sr_counters::kOwnRowLength});
          fake_quantize_columns(xs, part_cols.data(), r1 - r0, cols, f, 5, {uint64_t(r0), rows});
        }
        for (size_t i = 0; i < part.size(); ++i) {
          ASSERT_TRUE(same(part[i], whole[r0 * cols + i])) << spec << " rows, ref " << ref << " target " << t.second;
          // (a per-channel group along the rows spans every shard: only row groups can be sharded)
          if (f.gran == granularity::group) {
            ASSERT_TRUE(same(part_cols[i], whole_cols[r0 * cols + i])) << spec << " columns, ref " << ref << " target " << t.second;
          }
        }
      }
      // and without the counters the shard draws other noise
      fake_quantize(xs, part.data(), r1 - r0, cols, f, 5);
      EXPECT_NE(std::memcmp(part.data(), whole.data() + r0 * cols, part.size() * 4), 0) << spec;
    }
  }
  force_simd_target(0);
}

// Counters whose block index crosses 2^32 (word 1 of the Philox counter carries) inside a span:
// PhiloxBlocks takes its scalar path there; fast == reference on every target.
TEST(Differential, StochasticCountersCarryIntoTheHighWord) {
  std::mt19937 gen(seed(10));
  const int64_t rows = 4, cols = 256;
  const std::vector<float> x = gaussian(gen, rows * cols);
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const char* spec : {"e2m1/g32~sr:3", "e4m3fn/g64~sr", "int4/g32~sr", "e2m1/g32~sr8:3", "int4/g32~sr16"}) {
      const format f = parse_format(spec);
      // Block 2^32 starts at element 2^32 * (elements per block): 4 (~sr), 128/R (~srR).
      const int per_block = f.sr_bits ? 128 / f.sr_bits : 4;
      const uint64_t carry = (uint64_t{1} << 32) * static_cast<uint64_t>(per_block);
      for (uint64_t base : {carry - 48, carry - 300, 7 * carry - 4, carry - 1}) {
        std::vector<float> ref(x.size()), fast(x.size());
        fake_quantize_ref(x.data(), ref.data(), rows, cols, f, 11, {base, sr_counters::kOwnRowLength});
        fake_quantize(x.data(), fast.data(), rows, cols, f, 11, {base, sr_counters::kOwnRowLength});
        for (size_t i = 0; i < x.size(); ++i)
          ASSERT_TRUE(same(ref[i], fast[i])) << spec << " base " << base << " index " << i << " target " << t.second;
      }
    }
  }
  force_simd_target(0);
}

// ~srR (docs/conventions.md §43) on every code of the elements of up to 16 bits: each finite value,
// and points a quarter, a half and nine tenths into the gap above it (both signs, as the codes
// are), fast == reference on every target, as values and as codes. The exact ~sr on the same
// inputs, for the same coverage of the path both modes share.
TEST(Differential, StochasticRBitsOnEveryCodeOfSmallFormats) {
  int cases = 0;
  for (const char* e : {"e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz", "e3m2", "e2m3", "e2m1", "int8", "int4", "uint8",
                        "int16", "fp16", "bf16", "e5m2(overflow=inf)"}) {
    const element_format el = parse_format(e).element;
    std::vector<float> grid;
    for (uint32_t c = 0; c < code_count(el); ++c)
      if (const float v = decode_ref(el, c); std::isfinite(v)) grid.push_back(v);
    std::sort(grid.begin(), grid.end());
    grid.erase(std::unique(grid.begin(), grid.end()), grid.end());
    std::vector<float> x;
    for (size_t k = 0; k + 1 < grid.size(); ++k) {
      const float lo = grid[k], gap = grid[k + 1] - grid[k];
      for (float frac : {0.0f, 0.25f, 0.5f, 0.9f}) x.push_back(lo + gap * frac);
    }
    x.push_back(grid.back());
    const int64_t n = static_cast<int64_t>(x.size());
    for (const char* mode : {"~sr8:5", "~sr16:6", "~sr4", "~sr:7"}) {
      const format f = parse_format(std::string(e) + mode);
      std::vector<float> ref(x.size()), fast(x.size());
      fake_quantize_ref(x.data(), ref.data(), 1, n, f, 21);
      const quantized_tensor qr = quantize_ref(x.data(), 1, n, f, 21);
      for (const auto& t : simd_targets()) {
        force_simd_target(t.first);
        fake_quantize(x.data(), fast.data(), 1, n, f, 21);
        for (int64_t i = 0; i < n; ++i)
          ASSERT_TRUE(same(ref[static_cast<size_t>(i)], fast[static_cast<size_t>(i)]))
              << e << mode << " target " << t.second << " input " << x[static_cast<size_t>(i)];
        ASSERT_TRUE(quantize(x.data(), 1, n, f, 21) == qr) << e << mode << " codes, target " << t.second;
        ++cases;
      }
      force_simd_target(0);
    }
  }
  EXPECT_GE(cases, 14 * 4);
}

// ggml's q4_0/q5_0/q4_1/q5_1, whose fast kernels take N blocks' scales at once (BatchGgmlScales)
// and fall back to the scalar scan: batches of blocks where max = -min (which comes first
// decides q4_0's sign: both orders), a zero min or max of either sign (q4_1), all-zero and
// -0-only blocks, one NaN or Inf, magnitudes beyond fp16 and below its subnormals, next to
// ordinary Gaussian blocks; fast == reference, values and codes, every target.
TEST(Differential, GgmlBlockScalesInBatches) {
  std::mt19937 gen(seed(12));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t cols = 32 * 40 + 7;  // whole batches of every width, then a partial block
  const int patterns = 12;
  std::vector<float> x(static_cast<size_t>(patterns * cols));
  for (int p = 0; p < patterns; ++p) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t b = c / 32, i = c % 32;  // block b, element i
      float v = normal(gen);
      if (b % patterns == p) {  // block b of row p carries pattern p; the others stay Gaussian
        switch (p) {
          case 0: v = i == 3 ? 2.5f : (i == 9 ? -2.5f : 0.5f * v); break;   // max = -min, + first
          case 1: v = i == 3 ? -2.5f : (i == 9 ? 2.5f : 0.5f * v); break;   // max = -min, - first
          case 2: v = std::fabs(v) + (i == 5 ? -std::fabs(v) : 0.0f); break; // min 0 (q4_1)
          case 3: v = i == 5 ? -0.0f : std::fabs(v) + 0.1f; break;           // min -0
          case 4: v = i == 7 ? 0.0f : -std::fabs(v) - 0.1f; break;           // max +0
          case 5: v = i % 2 ? 0.0f : -0.0f; break;                            // all zeros
          case 6: v = i == 11 ? NAN : v; break;
          case 7: v = i == 0 ? -INFINITY : v; break;
          case 8: v = v * 1e6f; break;                                        // d beyond fp16
          case 9: v = v * 1e-9f; break;                                       // subnormal fp16 d
          case 10: v = v * 1e-30f; break;                                     // 1/d = Inf
          default: v = -std::fabs(v); break;                                  // all negative
        }
      }
      x[static_cast<size_t>(p * cols + c)] = v;
    }
  }
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const char* spec : {"q4_0", "q5_0", "q4_1", "q5_1"}) {
      const format f = parse_format(spec);
      std::vector<float> ref(x.size()), fast(x.size());
      fake_quantize_ref(x.data(), ref.data(), patterns, cols, f);
      fake_quantize(x.data(), fast.data(), patterns, cols, f);
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_TRUE(same(ref[i], fast[i])) << spec << " target " << t.second << " row " << i / cols << " col "
                                           << i % cols << " input " << x[i];
      ASSERT_TRUE(quantize(x.data(), patterns, cols, f) == quantize_ref(x.data(), patterns, cols, f))
          << spec << " codes, target " << t.second;
    }
  }
  force_simd_target(0);
}

// The draws themselves: random_words (Philox on SIMD lanes, whole steps, a buffered last step,
// partial blocks at either end, counters carrying into word 1) == random_words_ref on every target,
// for seeds and tensor ids whose high halves are the counter's words 2 and 3.
TEST(Differential, RandomWordsEqualTheScalarPhilox) {
  const uint64_t carry = uint64_t{1} << 34;  // element index of Philox block 2^32
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const auto& [seed_value, tensor_id] : {std::pair<uint64_t, uint64_t>{0, 0}, {3, 11},
                                                {0x123456789abcdefull, 0xfedcba9876543210ull}}) {
      for (uint64_t first : {uint64_t{0}, uint64_t{1}, uint64_t{3}, uint64_t{4}, uint64_t{4097}, carry - 130,
                             carry - 3, carry + 1}) {
        for (size_t count : {size_t{0}, size_t{1}, size_t{3}, size_t{5}, size_t{127}, size_t{128}, size_t{129},
                             size_t{1000}, size_t{4099}}) {
          std::vector<uint32_t> ref(count + 1, 0xdeadbeefu), fast(count + 1, 0xdeadbeefu);
          random_words_ref(seed_value, tensor_id, first, count, ref.data());
          random_words(seed_value, tensor_id, first, count, fast.data());
          ASSERT_EQ(ref, fast) << "first " << first << " count " << count << " target " << t.second;  // incl. the guard word
          // The R-bit draws (docs/conventions.md §43), around their own carry (block 2^32).
          for (int bits : {1, 2, 4, 8, 16}) {
            const uint64_t at = first < carry - 200 ? first : first - carry + (uint64_t{1} << 32) * (128 / bits);
            std::fill(ref.begin(), ref.end(), 0xdeadbeefu);
            std::fill(fast.begin(), fast.end(), 0xdeadbeefu);
            random_words_ref(seed_value, tensor_id, at, count, ref.data(), bits);
            random_words(seed_value, tensor_id, at, count, fast.data(), bits);
            ASSERT_EQ(ref, fast) << bits << " bits, first " << at << " count " << count << " target " << t.second;
          }
        }
      }
    }
  }
  force_simd_target(0);
}

// The R-bit draws' SIMD expansion (philox_fast.cpp: bytes / halfwords widened, R = 1, 2, 4 shifted
// out of words from an element that is a multiple of the vector's lanes): every start modulo 32
// (scalar heads of every length, vectors starting inside a word), lengths that are not a
// multiple of the lanes, and runs over several of random_words' stacks of 64 Philox blocks
// (8192 elements at R = 1) == random_words_ref, on every target.
TEST(Differential, RBitDrawsAtEveryAlignmentAndAcrossBlockStacks) {
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (int bits : {1, 2, 4, 8, 16}) {
      for (uint64_t first = 0; first < 34; ++first) {
        for (size_t count : {size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{47}, size_t{129},
                             first % 8 == 0 ? size_t{17000} : size_t{300}}) {
          std::vector<uint32_t> ref(count + 1, 0xdeadbeefu), fast(count + 1, 0xdeadbeefu);
          random_words_ref(5, 9, first, count, ref.data(), bits);
          random_words(5, 9, first, count, fast.data(), bits);
          ASSERT_EQ(ref, fast) << bits << " bits, first " << first << " count " << count << " target " << t.second;
        }
      }
    }
  }
  force_simd_target(0);
}

// The fast path runs ggml's sub-block searches on vector lanes (kquant_quantize_super_blocks,
// src/kernels/kquant_fast.cpp; its corner cases per super-block are in test_kquant_fast.cpp): this
// checks it with its own parts (values straight from the block, rows in parallel, packing) against
// the reference. The reference search itself is checked in test_kquant.cpp (ggml's formulas) and
// test_ggml_known_answers.cpp (ggml's own bytes).
// ggml's K-quants (q2_k ... q6_k): the fast path (rows in parallel) equals the reference on odd row counts,
// partial super-blocks, NaN/Inf/zeros/subnormals, and tensors scaled to tiny and huge magnitudes
// (fp16 super-scales that underflow to subnormals or overflow to Inf).
TEST(Differential, KQuants) {
  std::mt19937 gen(seed(7));
  int cases = 0;
  for (const char* s : {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k"}) {
    for (int64_t rows : {1, 3, 5}) {
      for (int64_t cols : {1, 17, 255, 256, 300, 512, 1023}) {
        for (bool specials : {false, true}) {
          check_case({s, rows, cols, 0, "default", static_cast<size_t>(1 + cols % 2)}, gen, specials);
          ++cases;
        }
      }
    }
    const format f = parse_format(s);
    const int64_t rows = 7, cols = 768;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float magnitude : {0.0f, 1e-38f, 1e-30f, 1e-8f, 1e-5f, 1e4f, 1e6f, 1e20f, 1e37f, 3e38f}) {
      std::vector<float> x(static_cast<size_t>(rows * cols));
      for (auto& v : x) v = normal(gen) * magnitude;
      x[5] = magnitude;  // a constant-ish run and exact zeros
      for (int i = 256; i < 300; ++i) x[static_cast<size_t>(i)] = 0.0f;
      const quantized_tensor qr = quantize_ref(x.data(), rows, cols, f), qf = quantize(x.data(), rows, cols, f);
      ASSERT_TRUE(qr == qf) << s << " magnitude " << magnitude;
      std::vector<float> ref(x.size()), fast(x.size()), deq(x.size());
      fake_quantize_ref(x.data(), ref.data(), rows, cols, f);
      fake_quantize(x.data(), fast.data(), rows, cols, f);
      dequantize(qf, deq.data());
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_TRUE(same(ref[i], fast[i])) << s << " magnitude " << magnitude << " index " << i;
        ASSERT_TRUE(same(ref[i], deq[i])) << s << " magnitude " << magnitude << " index " << i;
      }
      ++cases;
    }
    // Above the threading threshold: rows on both threads.
    std::vector<float> big(static_cast<size_t>(65 * 1024));
    for (auto& v : big) v = normal(gen);
    big[4000] = NAN;
    const quantized_tensor br = quantize_ref(big.data(), 65, 1024, f), bf = quantize(big.data(), 65, 1024, f);
    EXPECT_TRUE(br == bf) << s;
    std::vector<float> a(big.size()), b(big.size());
    fake_quantize_ref(big.data(), a.data(), 65, 1024, f);
    fake_quantize(big.data(), b.data(), 65, 1024, f);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << s;
  }
  EXPECT_GT(cases, 200);
}

// Tensors above the streaming threshold (8 MiB): non-temporal stores, prefetch and the batched
// group scales run on whole rows; the result is still the reference's, bit for bit.
TEST(Differential, LargeTensorsStreamAndBatch) {
  std::mt19937 gen(seed(6));
  const int64_t rows = 520, cols = 4096;  // 8.1 MiB of float32
  std::vector<float> x(static_cast<size_t>(rows * cols));
  std::normal_distribution<float> d(0, 1);
  for (auto& v : x) v = d(gen) * (gen() % 64 == 0 ? 100.0f : 1.0f);
  x[12345] = NAN;  // one group turns NaN, the rest of its batch takes the per-group path
  x[777777] = 0.0f;
  // A group of float32 subnormals and zeros: q8_0's 1/d is Inf, q4_0's too.
  for (int64_t i = 4096 * 7; i < 4096 * 7 + 64; ++i) x[static_cast<size_t>(i)] = (i % 3) ? 1e-40f * static_cast<float>(i % 5) : 0.0f;
  std::vector<float> ref(x.size()), fast(x.size());
  for (const char* spec : {"mxfp4", "nvfp4", "q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "nf4", "int8/c", "e4m3fn/c", "int4/g128",
                           "e2m1/g32~sr", "e2m1/g32~sr8", "mxfp8", "e3m2/g32:e8m0", "bf16"}) {
    const format f = parse_format(spec);
    fake_quantize_ref(x.data(), ref.data(), rows, cols, f, 9);
    fake_quantize(x.data(), fast.data(), rows, cols, f, 9);
    size_t bad = 0;
    for (size_t i = 0; i < x.size(); ++i)
      if (!same(ref[i], fast[i]) && bad++ < 3)
        ADD_FAILURE() << spec << " index " << i << " input " << x[i] << " ref " << ref[i] << " fast " << fast[i];
    EXPECT_EQ(bad, 0u) << spec;
  }
}

// The result is the same for every thread count (stochastic rounding included). The tensor is
// above kParallelMinElements, so the runs with 2 and 3 threads take the threaded branches (rows
// split unevenly: 67 rows); below it every run would be the serial path and the test could not fail.
TEST(Differential, ThreadCountInvariant) {
  std::mt19937 gen(seed(4));
  constexpr int64_t rows = 67, cols = 515;
  static_assert(rows * cols >= kParallelMinElements, "the tensor must take the threaded path");
  const std::vector<float> x = gaussian(gen, rows * cols);
  const int saved = omp_get_max_threads();
  for (const char* spec : {"e2m1/g32~sr:5", "nvfp4~sr", "int4/t", "mxfp4", "uint4/g64", "q4_k", "q6_k", "q2_k", "q3_k",
                           "q5_k", "q5_1",
                           "pow0.5(int4/g32)", "int4/g32@mse"}) {
    const format f = parse_format(spec);
    std::vector<float> one(x.size());
    omp_set_num_threads(1);
    fake_quantize(x.data(), one.data(), rows, cols, f, 3);
    for (int threads : {2, 3}) {
      std::vector<float> many(x.size());
      omp_set_num_threads(threads);
      fake_quantize(x.data(), many.data(), rows, cols, f, 3);
      size_t differ = 0;
      for (size_t i = 0; i < x.size(); ++i) differ += !same(one[i], many[i]);
      EXPECT_EQ(differ, 0u) << spec << ": " << threads << " threads vs 1";
    }
  }
  omp_set_num_threads(saved);
}

// /t and nvfp4 (whole groups of 16 per row) take their second pass over the rows laid end to end
// (src/kernels/fake_quantize_rows.cpp, FakeQuantTensorSpan: a span per thread, two streams back
// to front, nvfp4's group amax from the data): on every SIMD target, heads and tails of every
// length (outputs 0-3 floats past a 64-byte boundary), nvfp4 batches with and without a NaN/Inf
// group, in place, and 1-3 threads, the result is the reference's bit for bit. A tensor above
// the streaming threshold (8 MiB) below.
TEST(Differential, TensorSpansEqualTheReference) {
  std::mt19937 gen(seed(7));
  const std::vector<std::string> specs = {"e4m3fn/t", "int8/t", "uint8/t", "e5m2/t~rtz", "e2m1/t", "nf4/t", "bf16/t",
                                          "e3m2ieee(subnormals=off)/t", "int4/t~rna", "nvfp4", "nvfp4~rtz", "nvfp4~rna"};
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 16}, {2, 48}, {5, 272}, {3, 1024}, {67, 528}, {9, 33}};
  const int saved = omp_get_max_threads();
  int cases = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const auto& spec : specs) {
      const format f = parse_format(spec);
      for (const auto& [rows, cols] : shapes) {
        const size_t n = static_cast<size_t>(rows * cols);
        for (int variant = 0; variant < 5; ++variant) {
          // 0: finite values; 1: a NaN, an Inf and a -Inf in a few groups; 2: stress values with
          // specials; 3: values near 2^-128 (scales below float32's normal range); 4: zeros
          std::vector<float> x = variant == 2 ? stress_values(f, gen, n, true) : gaussian(gen, rows * cols);
          if (variant == 1)
            for (size_t i : {n / 3, n / 2 + 5, n - 1}) x[i] = i == n - 1 ? -INFINITY : i == n / 3 ? NAN : INFINITY;
          if (variant == 3)
            for (float& v : x) v = std::ldexp(v, -128);
          if (variant == 4) std::fill(x.begin(), x.end(), 0.0f);
          std::vector<float> ref(n);
          fake_quantize_ref(x.data(), ref.data(), rows, cols, f, 5);
          // Outputs 0-3 floats past a 64-byte boundary.
          std::vector<float> buf(n + 32);
          const size_t to64 = (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64 / sizeof(float);
          for (size_t shift : {size_t{0}, size_t{1}, size_t{3}}) {
            float* out = buf.data() + to64 + shift;
            for (int threads : {1, 3}) {
              omp_set_num_threads(threads);
              fake_quantize(x.data(), out, rows, cols, f, 5);
              for (size_t i = 0; i < n; ++i)
                if (!same(out[i], ref[i]))
                  FAIL() << spec << " target " << t.second << " [" << rows << "," << cols << "] variant " << variant
                         << " shift " << shift << " threads " << threads << " index " << i << " input " << x[i]
                         << " ref " << ref[i] << " fast " << out[i];
              ++cases;
            }
          }
          std::vector<float> inplace(x);
          omp_set_num_threads(2);
          fake_quantize(inplace.data(), inplace.data(), rows, cols, f, 5);
          for (size_t i = 0; i < n; ++i)
            if (!same(inplace[i], ref[i])) FAIL() << spec << " in place, target " << t.second << " index " << i;
        }
      }
    }
  }
  force_simd_target(0);
  omp_set_num_threads(saved);
  EXPECT_GT(cases, 1000);

  // Streaming stores (out of place, >= 8 MiB), the output on and off a 64-byte boundary.
  const int64_t rows = 520, cols = 4096;
  std::vector<float> x = gaussian(gen, rows * cols);
  x[4096 * 100 + 17] = NAN;  // nvfp4: one group's batch takes the per-group path
  const size_t n = x.size();
  std::vector<float> ref(n), buf(n + 32);
  const size_t to64 = (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64 / sizeof(float);
  for (const char* spec : {"e4m3fn/t", "uint8/t", "nvfp4"}) {
    const format f = parse_format(spec);
    fake_quantize_ref(x.data(), ref.data(), rows, cols, f, 5);
    for (size_t shift : {size_t{0}, size_t{1}})
      for (int threads : {1, 2}) {
        omp_set_num_threads(threads);
        float* out = buf.data() + to64 + shift;
        fake_quantize(x.data(), out, rows, cols, f, 5);
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) bad += !same(out[i], ref[i]);
        EXPECT_EQ(bad, 0u) << spec << " shift " << shift << " threads " << threads;
      }
  }
  omp_set_num_threads(saved);
}

// ~srR in the row kernel: rows longer than its chunk of draws (1024 elements, 4096 for ~sr8 and
// ~sr16), so a row takes several chunks and the last is short; odd row lengths, so rows start inside a Philox block (and
// ~sr8 / ~sr16 read the Philox output from an odd byte); groups of 17 (batches that are not a
// multiple of the lanes) and whole-row groups; 1 and 3 threads (above kParallelMinElements): ==
// fake_quantize_ref bit for bit on every target. And random_blocks == random_blocks_ref.
TEST(Differential, RBitRowKernelAcrossDrawChunksAndThreads) {
  std::mt19937 gen(seed(12));
  constexpr int64_t rows = 9, cols = 4099;
  static_assert(rows * cols >= kParallelMinElements, "the tensor must take the threaded path");
  const std::vector<float> x = gaussian(gen, rows * cols);
  const int saved = omp_get_max_threads();
  for (const char* spec : {"e2m1/g32~sr8:3", "e2m1/g32~sr16", "e2m1/g17~sr8:5", "int8/c~sr8", "e4m3~sr16:2",
                           "mxfp4~sr8:7", "e2m1/g32~sr4", "e2m1/g17~sr2:9", "int4/g32~sr1"}) {
    const format f = parse_format(spec);
    std::vector<float> ref(x.size());
    fake_quantize_ref(x.data(), ref.data(), rows, cols, f, 6);
    for (const auto& t : simd_targets()) {
      force_simd_target(t.first);
      for (int threads : {1, 3}) {
        omp_set_num_threads(threads);
        std::vector<float> fast(x.size());
        fake_quantize(x.data(), fast.data(), rows, cols, f, 6);
        size_t differ = 0;
        for (size_t i = 0; i < x.size(); ++i) differ += !same(ref[i], fast[i]);
        EXPECT_EQ(differ, 0u) << spec << ", " << threads << " threads, target " << t.second;
      }
    }
  }
  omp_set_num_threads(saved);
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (uint64_t block0 : {uint64_t{0}, uint64_t{5}, (uint64_t{1} << 32) - 7}) {  // (the last: the counter carries)
      for (size_t count : {size_t{1}, size_t{7}, size_t{8}, size_t{33}, size_t{100}}) {
        std::vector<uint32_t> want(4 * count + 1, 0xdeadbeefu), got(4 * count + 1, 0xdeadbeefu);
        random_blocks_ref(0x0000000700000003ull, 0x0000000b00000001ull, block0, count, want.data());
        random_blocks(0x0000000700000003ull, 0x0000000b00000001ull, block0, count, got.data());
        ASSERT_EQ(want, got) << "block " << block0 << " count " << count << " target " << t.second;
      }
    }
  }
  force_simd_target(0);
}

// Stochastic rounding where a span's inputs are known finite (its group's amax was) leaves out
// the canonical-NaN select (fake_quantize_rows.cpp, ApplyScaleT), and ~sr8 / ~sr16 round on the
// signed value (RoundSrHoisted): rows of /c formats with a NaN, an Inf, -0, float32 subnormals,
// an all-zero row and plain finite rows, formats with and without -0, the plain cast (no amax),
// and MX / g32 batches with one non-finite group: == fake_quantize_ref bit for bit on every target.
TEST(Differential, StochasticSpansWithAndWithoutNonFiniteInputs) {
  std::mt19937 gen(seed(13));
  constexpr int64_t rows = 6, cols = 300;
  std::vector<float> x = gaussian(gen, rows * cols);
  x[0 * cols + 17] = NAN;
  x[1 * cols + 5] = -INFINITY;
  x[2 * cols + 0] = -0.0f;
  x[2 * cols + 1] = 1e-41f;
  x[2 * cols + 2] = -3e-39f;
  std::fill(x.begin() + 3 * cols, x.begin() + 4 * cols, 0.0f);
  x[5 * cols + 299] = INFINITY;
  for (const char* spec : {"int8/c~sr8:2", "e4m3fn/c~sr8", "e2m1/c~sr16:4", "e5m2/c~sr8:3", "int4/c~sr16", "e4m3~sr8:5",
                           "int8~sr16", "e2m1/g32~sr8:6", "mxfp4~sr8", "e4m3fn/g16~sr16", "int8/g64~sr8", "e4m3fn/c~sr"}) {
    const format f = parse_format(spec);
    std::vector<float> ref(x.size());
    fake_quantize_ref(x.data(), ref.data(), rows, cols, f, 3);
    for (const auto& t : simd_targets()) {
      force_simd_target(t.first);
      std::vector<float> fast(x.size());
      fake_quantize(x.data(), fast.data(), rows, cols, f, 3);
      size_t differ = 0;
      for (size_t i = 0; i < x.size(); ++i) differ += !same(ref[i], fast[i]);
      EXPECT_EQ(differ, 0u) << spec << ", target " << t.second;
    }
  }
  force_simd_target(0);
}

// Table elements (RNE, up to 16 entries) take their entry by a binary search over the thresholds
// between entries on the SIMD targets (src/kernels/simd_round-inl.hpp, RoundToTable: permutes
// of 16 lanes, or of 8 on 8-lane targets with fast_plan.hpp's de-interleaved tables): on every
// target, every float within 8 ulps of every midpoint and within 4 ulps of every entry, +-0,
// +-Inf, NaN and values beyond the ends, as plain casts of tables of 2 to 16 entries (exact
// midpoints that tie up and down included), and NF4's table under nf4's own group scale (each
// group of 64 holds a +-1, so its scale is 1 and y = x): == the reference bit for bit.
TEST(Differential, TableSearchAroundEveryThreshold) {
  std::vector<std::vector<float>> tables = {make_nf4().table, {-1.0f, 1.0f}, {-1.5f, -0.5f, 0.0f, 0.25f, 2.0f},
                                            {-4, -3, -2, -1, 0, 1, 2, 3, 4}, {}, {}};
  for (int v = -8; v <= 7; ++v) tables[4].push_back(static_cast<float>(v));  // 16 entries, every midpoint a tie
  for (int v = 0; v < 15; ++v) tables[5].push_back(std::ldexp(1.0f + 0x1p-23f * static_cast<float>(v), v - 7));
  for (const auto& table : tables) {
    std::vector<float> x = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 2 * table.front() - 1, 2 * table.back() + 1};
    for (size_t i = 0; i < table.size(); ++i) {
      float v = table[i];
      for (int k = 0; k < 4; ++k) v = std::nextafter(v, -INFINITY);
      for (int k = 0; k < 9; ++k, v = std::nextafter(v, INFINITY)) x.push_back(v);
      if (i + 1 == table.size()) break;
      float m = static_cast<float>((static_cast<long double>(table[i]) + table[i + 1]) / 2);
      for (int k = 0; k < 8; ++k) m = std::nextafter(m, -INFINITY);
      for (int k = 0; k < 17; ++k, m = std::nextafter(m, INFINITY)) x.push_back(m);
    }
    format f = parse_format("lut(-1,1)");
    f.element = make_lut(table);
    const bool nf4 = table == make_nf4().table;
    for (const auto& t : simd_targets()) {
      force_simd_target(t.first);
      for (int64_t cols : {static_cast<int64_t>(x.size()), int64_t{1}, int64_t{3}, int64_t{8}, int64_t{17}}) {
        const int64_t rows = (static_cast<int64_t>(x.size()) + cols - 1) / cols;
        std::vector<float> in(static_cast<size_t>(rows * cols), 0.5f), ref(in.size()), fast(in.size());
        std::copy(x.begin(), x.end(), in.begin());
        fake_quantize_ref(in.data(), ref.data(), rows, cols, f);
        fake_quantize(in.data(), fast.data(), rows, cols, f);
        for (size_t i = 0; i < in.size(); ++i)
          if (!same(fast[i], ref[i]))
            FAIL() << "table of " << table.size() << " target " << t.second << " cols " << cols << " input "
                   << in[i] << " (0x" << std::hex << std::bit_cast<uint32_t>(in[i]) << ") ref " << ref[i]
                   << " fast " << fast[i];
      }
      if (!nf4) continue;
      // nf4 (groups of 64, fp32 absmax scale): a +-1 first in each group, then 63 finite values of |v| <= 1.
      std::vector<float> g;
      for (float v : x) {
        if (!(std::fabs(v) <= 1.0f)) continue;
        if (g.size() % 64 == 0) g.push_back(g.size() % 128 ? -1.0f : 1.0f);
        g.push_back(v);
      }
      while (g.size() % 64) g.push_back(0.0f);
      const format q = parse_format("nf4");
      for (int64_t cols : {int64_t{64}, int64_t{1024}}) {
        const int64_t rows = (static_cast<int64_t>(g.size()) + cols - 1) / cols;
        std::vector<float> in(static_cast<size_t>(rows * cols), 0.0f), ref(in.size()), fast(in.size());
        std::copy(g.begin(), g.end(), in.begin());
        fake_quantize_ref(in.data(), ref.data(), rows, cols, q);
        fake_quantize(in.data(), fast.data(), rows, cols, q);
        for (size_t i = 0; i < in.size(); ++i)
          if (!same(fast[i], ref[i]))
            FAIL() << "nf4 target " << t.second << " cols " << cols << " input " << in[i] << " ref " << ref[i]
                   << " fast " << fast[i];
      }
    }
  }
  force_simd_target(0);
}

TEST(Differential, SimdTargetsArePresent) {
  const auto targets = simd_targets();
  ASSERT_FALSE(targets.empty());
  std::string names;
  for (const auto& t : targets) names += t.second + " ";
  std::cout << "[ compiled + supported SIMD targets: " << names << "]\n";
}

// Packed low-bit products (kernels/packed_matmul.hpp) against independent references:
//   - the packed weight's values against dequantize_ref of the same codes (bit for bit);
//   - the reference product against dequantize + lane_ordered_matmul_ref, the pinned order on
//     float weights (bit for bit), and the fast kernel against the reference (bit for bit);
//   - every result against the exact product in double, within the bound of the pinned order:
//     each term w*x is rounded once and passes through at most cols/16 additions in its lane and
//     4 in the halving tree, so |y - exact| <= gamma_bound(cols/16 + 5) * sum |w||x|,
//     gamma_bound(m) = m u / (1 - m u), u = 2^-24 (Higham 2002, §3.1);
//   - integer activations: the int32 dots of the fast (VNNI, AVX2) kernels equal the reference's,
//     and sum_g sw sx dot_g is the product of the dequantized operands within gamma_bound(groups + 2).
// Every fast-against-reference check runs on each kernel this CPU has (for_each_packed_target:
// AVX-512, AVX2, scalar), so an AVX-512 machine tests the AVX2 kernels too.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/packed_matmul.hpp"
#include "lowbit/kernels/quantize.hpp"

using namespace lowbit;

namespace {

std::vector<float> randn(size_t n, uint64_t seed, float sd = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Bit for bit where the reference is a number (the sign of zero included), NaN where it is NaN.
// Which NaN is not pinned: where two NaNs of opposite signs meet (NaN scale: +NaN; Inf * 0:
// x86's default NaN, -NaN) x86 returns the first operand's, and the compiler may put a C++
// reference's `acc += term` either way round (docs/conventions.md §44).
bool same_bits_or_nan(const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (std::isnan(a[i]) ? !std::isnan(b[i]) : std::memcmp(a + i, b + i, sizeof(float)) != 0) return false;
  return true;
}
bool same_bits_or_nan(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && same_bits_or_nan(a.data(), b.data(), a.size());
}

double gamma_bound(double m) {
  const double u = std::ldexp(1.0, -24);
  return m * u / (1 - m * u);
}

// Runs body() once per packed kernel this CPU runs (packed_kernel_targets), the products
// forced onto it, as the Highway kernels' tests run every compiled SIMD target.
template <class Body>
void for_each_packed_target(Body&& body) {
  for (const std::string& target : packed_kernel_targets()) {
    force_packed_kernel_target(target);
    SCOPED_TRACE("packed kernel " + target);
    body();
  }
  force_packed_kernel_target("");
}

const char* const kFormats[] = {"q8_0", "q4_0", "int4/g32", "mxfp4", "nvfp4", "int8/c", "e2m1/g16:e4m3", "int8/g32"};


// Integer activation codes [n, cols] in groups of 32 with both int8 extremes (position i: -128 when
// i % period == 0, 127 when i % period == 1, else spread over the range) and scales 0.01, 0.02, ...
int8_activations extreme_activations(int64_t n, int64_t cols, int period) {
  int8_activations a;
  a.n = n, a.cols = cols, a.group = 32;
  for (int64_t i = 0; i < n * cols; ++i)
    a.q.push_back(int8_t(i % period == 0 ? -128 : i % period == 1 ? 127 : int(i * 37 % 255) - 127));
  for (int64_t i = 0; i < n * cols / 32; ++i) a.scale.push_back(0.01f * float(i + 1));
  return a;
}

// packed_matmul_int(p, a) equals packed_matmul_int_ref(p, a) bit for bit.
::testing::AssertionResult IntProductEqualsRef(const packed_matrix& p, const int8_activations& a) {
  std::vector<float> ref(size_t(a.n * p.rows)), fast(size_t(a.n * p.rows), -1.0f);
  packed_matmul_int_ref(p, a, ref.data());
  packed_matmul_int(p, a, fast.data());
  if (same_bits(ref, fast)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "packed_matmul_int differs from the reference";
}

}  // namespace

TEST(PackedMatmul, ValuesAreDequantizeRefBitForBit) {
  for (const char* spec : kFormats) {
    const int64_t rows = 21, cols = 96;
    const auto w = randn(rows * cols, 1, 0.05f);
    const quantized_tensor q = quantize_ref(w.data(), rows, cols, parse_format(spec));
    const packed_matrix p = pack_matrix(q);
    std::vector<float> a(rows * cols), b(rows * cols);
    dequantize_ref(q, a.data());
    dequantize_packed(p, b.data());
    EXPECT_TRUE(same_bits(a, b)) << spec;
    EXPECT_LT(p.bytes(), size_t(rows * cols * 4) / 3) << spec;  // codes + fp32 scales, far below float32
  }
}

TEST(PackedMatmul, FloatActivationsPinnedOrderBitExactAndBounded) {
  for_each_packed_target([&] {
    for (const char* spec : kFormats) {
      for (const int64_t cols : {32, 288, 768}) {
        const int64_t rows = 19;
        const auto w = randn(rows * cols, 2, 0.05f);
        const quantized_tensor q = quantize(w.data(), rows, cols, parse_format(spec));
        const packed_matrix p = pack_matrix(q);
        std::vector<float> wd(rows * cols);
        dequantize_ref(q, wd.data());
        for (const int64_t n : {1, 3, 4, 9}) {
          const auto x = randn(n * cols, 3 + n);
          std::vector<float> spec_y(n * rows), ref_y(n * rows), fast_y(n * rows);
          lane_ordered_matmul_ref(wd.data(), rows, cols, x.data(), n, spec_y.data());
          packed_matmul_ref(p, x.data(), n, ref_y.data());
          packed_matmul(p, x.data(), n, fast_y.data());
          EXPECT_TRUE(same_bits(spec_y, ref_y)) << spec << " cols " << cols << " n " << n;
          EXPECT_TRUE(same_bits(ref_y, fast_y)) << spec << " cols " << cols << " n " << n << " ("
                                                << packed_kernel_target(false) << ")";
          // GEMM rows equal GEMV of each token (same order whatever the batch).
          std::vector<float> one(rows);
          packed_matmul(p, x.data() + (n - 1) * cols, 1, one.data());
          EXPECT_EQ(0, std::memcmp(one.data(), fast_y.data() + (n - 1) * rows, rows * sizeof(float))) << spec;
          const double bound = gamma_bound(double(cols) / 16 + 5);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t o = 0; o < rows; ++o) {
              double exact = 0, mag = 0;
              for (int64_t c = 0; c < cols; ++c) {
                exact += double(wd[o * cols + c]) * x[t * cols + c];
                mag += std::fabs(double(wd[o * cols + c]) * x[t * cols + c]);
              }
              ASSERT_LE(std::fabs(fast_y[t * rows + o] - exact), bound * mag) << spec << " [" << t << ", " << o << "]";
            }
        }
      }
    }
  });
}

TEST(PackedMatmul, FloatWeightsFastEqualsRef) {
  for_each_packed_target([&] {
    for (const int64_t cols : {16, 37, 288, 301}) {
      const int64_t rows = 13, n = 2;
      const auto w = randn(rows * cols, 9), x = randn(n * cols, 10);
      std::vector<float> ref(n * rows), fast(n * rows);
      lane_ordered_matmul_ref(w.data(), rows, cols, x.data(), n, ref.data());
      lane_ordered_matmul(w.data(), rows, cols, x.data(), n, fast.data());
      EXPECT_TRUE(same_bits(ref, fast)) << cols;
    }
  });
}

TEST(PackedMatmul, IntegerActivationsExactDots) {
  for_each_packed_target([&] {
    for (const char* spec : {"q8_0", "q4_0", "int4/g32", "int8/c", "int8/g32"}) {
      const int64_t rows = 23, cols = 256, n = 5;
      const auto w = randn(rows * cols, 4, 0.05f);
      const quantized_tensor q = quantize(w.data(), rows, cols, parse_format(spec));
      const packed_matrix p = pack_matrix(q);
      ASSERT_TRUE(p.integer_values) << spec;
      const auto x = randn(n * cols, 5);
      const int8_activations a = quantize_activations(x.data(), n, cols, p.group);
      const int64_t gpr = cols / p.group;
      std::vector<int32_t> ref(n * rows * gpr);
      packed_int_dots_ref(p, a, ref.data());
      // The dots from the definition: integer codes of W (dequantized value / scale) and x.
      std::vector<float> wd(rows * cols);
      dequantize_ref(q, wd.data());
      for (int64_t t = 0; t < n; ++t)
        for (int64_t o = 0; o < rows; ++o)
          for (int64_t g = 0; g < gpr; ++g) {
            int64_t s = 0;
            for (int64_t c = g * p.group; c < (g + 1) * p.group; ++c)
              s += std::llround(wd[o * cols + c] / p.scale(o, c)) * a.q[t * cols + c];
            ASSERT_EQ(s, ref[(t * rows + o) * gpr + g]) << spec;
          }
      std::vector<float> y_ref(n * rows), y_fast(n * rows);
      packed_matmul_int_ref(p, a, y_ref.data());
      packed_matmul_int(p, a, y_fast.data());
      EXPECT_TRUE(same_bits(y_ref, y_fast)) << spec << " (" << packed_kernel_target(true) << ")";
      // The combine against the dequantized operands' product in double.
      for (int64_t t = 0; t < n; ++t)
        for (int64_t o = 0; o < rows; ++o) {
          double exact = 0, mag = 0;
          for (int64_t c = 0; c < cols; ++c) {
            const double xv = double(a.q[t * cols + c]) * a.scale[t * gpr + c / p.group];
            exact += double(wd[o * cols + c]) * xv;
            mag += std::fabs(double(wd[o * cols + c]) * xv);
          }
          ASSERT_LE(std::fabs(y_ref[t * rows + o] - exact), gamma_bound(double(gpr) + 3) * mag) << spec;
        }
    }
  });
}

TEST(PackedMatmul, QuantizedActivationsAreLowbitsFormats) {
  const int64_t n = 3, cols = 64;
  const auto x = randn(n * cols, 6);
  const int8_activations a = quantize_activations(x.data(), n, cols, 32);
  std::vector<float> expect(n * cols);
  fake_quantize_ref(x.data(), expect.data(), n, cols, parse_format("q8_0"));
  for (int64_t i = 0; i < n * cols; ++i) ASSERT_EQ(expect[i], float(a.q[i]) * a.scale[i / 32]);
  EXPECT_THROW(quantize_activations(x.data(), n, cols, 48), error);
}

TEST(PackedMatmul, RefusesFormatsWithoutAKernel) {
  std::string why;
  for (const char* spec : {"e4m3fn/g32", "uint4/g32", "q4_k", "int4/t", "e2m1", "q5_0", "int4/g8"}) {
    EXPECT_FALSE(has_packed_kernel(parse_format(spec), &why)) << spec;
    EXPECT_FALSE(why.empty());
    const auto w = randn(4 * 256, 7);
    const quantized_tensor q = quantize_ref(w.data(), 4, 256, parse_format(spec));
    EXPECT_THROW(pack_matrix(q), error) << spec;
  }
  const auto w = randn(4 * 40, 8);  // 40 columns: not whole chunks of 16
  EXPECT_THROW(pack_matrix(quantize_ref(w.data(), 4, 40, parse_format("int8/c"))), error);
}

// An exact int32 dot of int8 values holds groups of at most kMaxIntDotGroup columns: all +127
// against +127 over 131,072 columns would be 2^31 (past int32), so such /c rows are refused with
// a message, not wrapped; one column fewer is computed exactly.
TEST(PackedMatmul, IntegerDotsRefuseGroupsPastInt32) {
  for (const int64_t cols : {kMaxIntDotGroup + 1, int64_t{131056}}) {
    std::vector<float> w(static_cast<size_t>(cols), 1.0f), x(static_cast<size_t>(cols), 1.0f);
    const packed_matrix p = pack_matrix(quantize(w.data(), 1, cols, parse_format("int8/c")));
    const int8_activations a = quantize_activations(x.data(), 1, cols, cols);
    float y = 0;
    std::vector<int32_t> dots(1);
    if (cols > kMaxIntDotGroup) {
      EXPECT_THROW(packed_matmul_int(p, a, &y), error);
      EXPECT_THROW(packed_int_dots_ref(p, a, dots.data()), error);
    } else {
      packed_int_dots_ref(p, a, dots.data());
      EXPECT_EQ(dots[0], 127 * 127 * static_cast<int32_t>(cols));
      packed_matmul_int(p, a, &y);
      EXPECT_NEAR(y, static_cast<float>(cols), 1e-6 * static_cast<float>(cols));  // (s_w s_x) * 127^2 * cols
    }
  }
}

// The GEMV kernels (n == 1: one row or a pair of rows at a time with prefetch; integer
// activations: 16 rows per block, 64 columns per step) at the edges of their blocks: row counts
// around 1, 2, 16 and 64 (the GEMV's chunk), columns with a last step of 32 (integer) or 16
// (float), groups spanning steps. Each against the reference bit for bit, and the GEMV of each
// token against the same token's row of a batch (n > 1 takes other tiles).
TEST(PackedMatmul, GemvEdgesEqualReferenceAndBatch) {
  for_each_packed_target([&] {
    for (const char* spec : {"q4_0", "q8_0", "int4/g32", "nvfp4", "int8/c", "int8/g64", "mxfp4"}) {
      const format f = parse_format(spec);
      for (const int64_t cols : {64, 96, 288, 320}) {
        if (f.gran == granularity::group && cols % f.group_size != 0) continue;  // whole groups only
        for (const int64_t rows : {1, 2, 3, 15, 16, 17, 33, 65, 70}) {
          const auto w = randn(rows * cols, 11 + rows, 0.05f);
          const packed_matrix p = pack_matrix(quantize(w.data(), rows, cols, f));
          const int64_t n = 3;
          const auto x = randn(n * cols, 12 + cols);
          std::vector<float> ref(n * rows), batch(n * rows), one(rows);
          packed_matmul_ref(p, x.data(), n, ref.data());
          packed_matmul(p, x.data(), n, batch.data());
          ASSERT_TRUE(same_bits(ref, batch)) << spec << " " << rows << "x" << cols;
          for (int64_t t = 0; t < n; ++t) {
            packed_matmul(p, x.data() + t * cols, 1, one.data());
            ASSERT_EQ(0, std::memcmp(one.data(), ref.data() + t * rows, rows * sizeof(float))) << spec << " " << rows << "x" << cols;
          }
          if (!p.integer_values || p.group % 32 != 0) continue;
          const int8_activations a = quantize_activations(x.data(), n, cols, p.group);
          std::vector<float> iref(n * rows), ifast(n * rows, -1.0f);
          packed_matmul_int_ref(p, a, iref.data());
          packed_matmul_int(p, a, ifast.data());
          ASSERT_TRUE(same_bits(iref, ifast)) << spec << " " << rows << "x" << cols << " (" << packed_kernel_target(true) << ")";
          for (int64_t t = 0; t < n; ++t) {
            int8_activations at;
            at.n = 1, at.cols = cols, at.group = a.group;
            at.q.assign(a.q.begin() + t * cols, a.q.begin() + (t + 1) * cols);
            at.scale.assign(a.scale.begin() + t * (cols / a.group), a.scale.begin() + (t + 1) * (cols / a.group));
            packed_matmul_int(p, at, one.data());
            ASSERT_EQ(0, std::memcmp(one.data(), iref.data() + t * rows, rows * sizeof(float))) << spec << " " << rows << "x" << cols;
          }
        }
      }
    }
  });
}

// The float32 GEMV (one row at a time, prefetching rows ahead, the last rows without) at row
// counts around its chunk of 64 and columns with a masked tail, against the reference.
TEST(PackedMatmul, FloatGemvEdgesEqualReference) {
  for_each_packed_target([&] {
    for (const int64_t cols : {16, 37, 288, 301})
      for (const int64_t rows : {1, 4, 5, 63, 64, 65, 129}) {
        const auto w = randn(rows * cols, 21 + rows), x = randn(cols, 22 + cols);
        std::vector<float> ref(rows), fast(rows, -1.0f);
        lane_ordered_matmul_ref(w.data(), rows, cols, x.data(), 1, ref.data());
        lane_ordered_matmul(w.data(), rows, cols, x.data(), 1, fast.data());
        ASSERT_TRUE(same_bits(ref, fast)) << rows << "x" << cols;
      }
  });
}

// Integer codes -128 in x (not from quantize_activations: amax / 127 scales give [-127, 127]):
// the product's kernel takes x as dpbusd's signed operand, so -128 is an ordinary value; and
// weights at the ends of their ranges (q8_0 codes -127 and 127, q4_0 codes 0 and 15).
TEST(PackedMatmul, IntegerProductTakesEveryCode) {
  for_each_packed_target([&] {
    for (const char* spec : {"q8_0", "q4_0", "int4/g32"}) {
      const int64_t rows = 19, cols = 96, n = 2;
      auto w = randn(rows * cols, 31, 0.05f);
      for (int64_t c = 0; c < cols; c += 5) w[c] = 1.0f, w[cols + c] = -1.0f;  // each block's amax at both signs
      const packed_matrix p = pack_matrix(quantize(w.data(), rows, cols, parse_format(spec)));
      EXPECT_TRUE(IntProductEqualsRef(p, extreme_activations(n, cols, 7))) << spec;
    }
  });
}

// 4-bit tables of integer values other than q4_0's code - 8, with x at both int8 extremes: the AVX2
// kernel's unsigned-code path (maddubs_epi16: u = lut[code] - min(lut), values spanning <= 127,
// pair sums up to 2 * 127 * 128 at the edge of int16) and its int16 path (span > 127).
TEST(PackedMatmul, IntegerProductFourBitTables) {
  const std::vector<std::array<float, 16>> tables = {
      {-60, -52, -44, -36, -28, -20, -12, -4, 4, 12, 20, 28, 36, 44, 52, 60},          // span 120
      {64, -63, 0, 5, -7, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12},                           // span 127, min not code 0
      {-7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 0},                           // int4-like, no -8
      {-127, 127, -100, 100, -50, 50, 0, 1, -1, 2, -2, 3, -3, 4, -4, 126},               // span 254: int16 path
  };
  for_each_packed_target([&] {
    for (const auto& lut : tables) {
      const int64_t rows = 19, cols = 128, n = 3;
      const auto w = randn(rows * cols, 33, 0.05f);
      packed_matrix p = pack_matrix(quantize(w.data(), rows, cols, parse_format("q4_0")));
      p.lut = lut;
      EXPECT_TRUE(IntProductEqualsRef(p, extreme_activations(n, cols, 5))) << lut[0] << " " << lut[1];
    }
  });
}

// Threads (large products split their rows over OpenMP threads): the same bits as one thread.
TEST(PackedMatmul, ThreadsGiveTheSameBits) {
  const int64_t rows = 2100, cols = 2048;  // rows x cols > 4e6: threaded when threads exist
  const auto w = randn(rows * cols, 41, 0.05f), x = randn(cols, 42);
  const std::vector<const char*> specs = {"q4_0", "q8_0"};
  std::vector<packed_matrix> packed;  // made once, used by every kernel
  for (const char* spec : specs) packed.push_back(pack_matrix(quantize(w.data(), rows, cols, parse_format(spec))));
  for_each_packed_target([&] {
    const int before = omp_get_max_threads();
    for (size_t s = 0; s < specs.size(); ++s) {
      const char* spec = specs[s];
      const packed_matrix& p = packed[s];
      const int8_activations a = quantize_activations(x.data(), 1, cols, p.group);
      std::vector<float> f1(rows), f2(rows), i1(rows), i2(rows), l1(rows), l2(rows);
      omp_set_num_threads(1);
      packed_matmul(p, x.data(), 1, f1.data());
      packed_matmul_int(p, a, i1.data());
      lane_ordered_matmul(w.data(), rows, cols, x.data(), 1, l1.data());
      omp_set_num_threads(3);
      packed_matmul(p, x.data(), 1, f2.data());
      packed_matmul_int(p, a, i2.data());
      lane_ordered_matmul(w.data(), rows, cols, x.data(), 1, l2.data());
      omp_set_num_threads(before);
      EXPECT_TRUE(same_bits(f1, f2)) << spec;
      EXPECT_TRUE(same_bits(i1, i2)) << spec;
      EXPECT_TRUE(same_bits(l1, l2)) << spec;
      std::vector<float> ref(rows);
      packed_matmul_int_ref(p, a, ref.data());
      EXPECT_TRUE(same_bits(ref, i2)) << spec;
    }
  });
}

// The kernels this CPU runs: the best first, the scalar references last, AVX2 on every x86 CPU
// that has it (AVX-512 ones included); forcing one makes packed_kernel_target name it.
TEST(PackedMatmul, KernelTargetsListThisCpusKernels) {
  const std::vector<std::string> targets = packed_kernel_targets();
  ASSERT_FALSE(targets.empty());
  EXPECT_EQ(targets.back(), "scalar");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) {
    EXPECT_NE(std::find(targets.begin(), targets.end(), "avx2"), targets.end());
  }
#endif
  for (const std::string& t : targets) {
    force_packed_kernel_target(t);
    EXPECT_EQ(packed_kernel_target(false), t);
    const std::string integer = packed_kernel_target(true);
    EXPECT_TRUE(t == "avx512" ? integer == "avx512-vnni" || integer == "avx2" : integer == t) << t << " " << integer;
  }
  force_packed_kernel_target("");
  EXPECT_EQ(packed_kernel_target(false), targets.front());
  EXPECT_THROW(force_packed_kernel_target("sse9"), error);
}

namespace {

// Scales a vector kernel can get wrong: NaN, infinities, signed zeros, negative, subnormal.
const float kOddScales[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), 0.0f, -0.0f, -1.5f, 1e-40f};

// x [n, cols]: normal values with -0 in every fifth column; token 1 all -0; token 3 an infinity.
std::vector<float> edge_x(int64_t n, int64_t cols, uint64_t seed) {
  auto x = randn(size_t(n * cols), seed);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < cols; ++c)
      if (t == 1 || c % 5 == 2) x[size_t(t * cols + c)] = -0.0f;
  if (n > 3) x[size_t(3 * cols + cols / 2)] = std::numeric_limits<float>::infinity();
  return x;
}

}  // namespace

// Every kernel against the references where a vector kernel could slip: every code (random
// bytes: int8 -128, each 4-bit code), each kind of 4-bit table (q4_0's code - 8, E2M1 with E8M0,
// nvfp4 with its FP32 tensor scale, NF4, int4 with row scales), columns not a multiple of 64,
// rows not a multiple of any tile (8, 16, 64), 1..9 tokens, NaN / infinite / signed-zero /
// negative / subnormal scales, an all-zero row, x with -0 (a token of only -0) and an infinity.
// Float activations and, for integer codes, integer ones (x codes from -128 to 127, odd x
// scales); the GEMV of each token equals its row of the batch. Bit for bit, NaN for NaN.
TEST(PackedMatmul, EveryKernelEqualsReferenceAtTheEdges) {
  const char* const specs[] = {"q4_0", "mxfp4", "nvfp4", "nf4/g64", "int4/c", "int4/g32", "e2m1/g16:e4m3", "q8_0", "int8/c", "int8/g64"};
  int cases = 0;
  for_each_packed_target([&] {
    for (const char* spec : specs) {
      const format f = parse_format(spec);
      for (const int64_t cols : {16, 32, 80, 96, 160, 320}) {
        if (f.gran == granularity::group && cols % f.group_size != 0) continue;
        for (const int64_t rows : {1, 7, 9, 19, 67}) {
          auto w = randn(size_t(rows * cols), uint64_t(50 + rows + cols), 0.05f);
          std::fill(w.begin(), w.begin() + cols, 0.0f);  // row 0: all zeros
          packed_matrix p = pack_matrix(quantize(w.data(), rows, cols, f));
          std::mt19937_64 rng(uint64_t(rows * 1000 + cols));
          for (size_t i = size_t(2 * p.row_bytes); i < p.codes.size(); ++i) p.codes[i] = uint8_t(rng());  // rows 2..: any code
          const int64_t gpr = p.groups_per_row();
          for (int64_t o = 2; o < rows; o += 3)  // every third row from row 2: one odd scale, cycling
            p.scales[size_t(o * gpr + o % gpr)] = kOddScales[size_t(o / 3) % std::size(kOddScales)];
          const int64_t n_max = 9;
          const auto x = edge_x(n_max, cols, uint64_t(60 + cols));
          for (int64_t n = 1; n <= n_max; ++n) {
            std::vector<float> ref(size_t(n * rows)), fast(size_t(n * rows), -1.0f), one(size_t(rows), -1.0f);
            packed_matmul_ref(p, x.data(), n, ref.data());
            packed_matmul(p, x.data(), n, fast.data());
            ASSERT_TRUE(same_bits_or_nan(ref, fast)) << spec << " " << rows << "x" << cols << " n " << n;
            packed_matmul(p, x.data() + (n - 1) * cols, 1, one.data());
            ASSERT_TRUE(same_bits_or_nan(ref.data() + (n - 1) * rows, one.data(), size_t(rows)))
                << spec << " " << rows << "x" << cols << " token " << n - 1;
            ++cases;
          }
          if (!p.integer_values) continue;
          int8_activations a = quantize_activations(x.data(), n_max, cols, p.group);
          for (int64_t t = 0; t < n_max; t += 2)  // even tokens: any int8 code, -128 included
            for (int64_t c = 0; c < cols; ++c) a.q[size_t(t * cols + c)] = int8_t(rng());
          for (size_t i = 3; i < a.scale.size(); i += 5) a.scale[i] = kOddScales[(i / 5) % std::size(kOddScales)];
          for (int64_t n = 1; n <= n_max; ++n) {
            int8_activations an = a;
            an.n = n;
            an.q.resize(size_t(n * cols)), an.scale.resize(size_t(n * gpr));
            std::vector<float> ref(size_t(n * rows)), fast(size_t(n * rows), -1.0f), one(size_t(rows), -1.0f);
            packed_matmul_int_ref(p, an, ref.data());
            packed_matmul_int(p, an, fast.data());
            ASSERT_TRUE(same_bits_or_nan(ref, fast)) << spec << " int " << rows << "x" << cols << " n " << n;
            int8_activations last;
            last.n = 1, last.cols = cols, last.group = a.group;
            last.q.assign(an.q.end() - cols, an.q.end());
            last.scale.assign(an.scale.end() - gpr, an.scale.end());
            packed_matmul_int(p, last, one.data());
            ASSERT_TRUE(same_bits_or_nan(ref.data() + (n - 1) * rows, one.data(), size_t(rows)))
                << spec << " int " << rows << "x" << cols << " token " << n - 1;
            ++cases;
          }
        }
      }
    }
  });
  EXPECT_GT(cases, 0);
}

// The float GEMV and GEMM (lane_ordered_matmul) on every kernel where cols is not a multiple of
// 16: the lanes past the last column keep their sums exactly (+0 stays +0 where -0 + +0 would
// not), with zero, -0 and non-finite weights and x with -0.
TEST(PackedMatmul, FloatWeightsEveryKernelAtTheEdges) {
  for_each_packed_target([&] {
    for (const int64_t cols : {1, 7, 8, 9, 15, 16, 17, 31, 33, 100, 301})
      for (const int64_t rows : {1, 3, 4, 5, 7, 65}) {
        auto w = randn(size_t(rows * cols), uint64_t(70 + rows + cols));
        for (int64_t c = 0; c < cols; ++c) w[size_t(c)] = 0.0f;  // row 0: +0
        if (rows > 1)
          for (int64_t c = 0; c < cols; ++c) w[size_t(cols + c)] = -0.0f;  // row 1: -0
        if (rows > 2) w[size_t(2 * cols + cols / 2)] = std::numeric_limits<float>::infinity();
        if (rows > 3) w[size_t(3 * cols)] = std::numeric_limits<float>::quiet_NaN();
        const auto x = edge_x(5, cols, uint64_t(80 + cols));
        for (const int64_t n : {1, 2, 3, 5}) {
          std::vector<float> ref(size_t(n * rows)), fast(size_t(n * rows), -1.0f), one(size_t(rows), -1.0f);
          lane_ordered_matmul_ref(w.data(), rows, cols, x.data(), n, ref.data());
          lane_ordered_matmul(w.data(), rows, cols, x.data(), n, fast.data());
          ASSERT_TRUE(same_bits_or_nan(ref, fast)) << rows << "x" << cols << " n " << n;
          lane_ordered_matmul(w.data(), rows, cols, x.data() + (n - 1) * cols, 1, one.data());
          ASSERT_TRUE(same_bits_or_nan(ref.data() + (n - 1) * rows, one.data(), size_t(rows))) << rows << "x" << cols;
        }
      }
  });
}

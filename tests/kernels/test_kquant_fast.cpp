// The K-quants' fast path (kquant_quantize_super_blocks: the sub-block fits on vector lanes,
// src/kernels/kquant_fast.cpp) == the scalar reference kquant_quantize_block_ref, bit for bit, on
// every compiled SIMD target: d, dmin, every scale / min code and every code of every
// super-block. The inputs are built to reach the corners of ggml's searches: zero, constant and
// two-valued sub-blocks (the flat and degenerate fits), positive-only and negative-only ones (the
// min clamped to 0), values on a quantization grid and on half-integers of it (ties, candidates
// of equal error), one value in a sub-block (first or last position), -0.0, float32 subnormals,
// magnitudes whose squares overflow to Inf, sub-blocks of very different magnitudes in one
// super-block, NaN/Inf super-blocks among finite ones, partial last super-blocks, and runs
// shorter and longer than the fast path's batch of 16 super-blocks. Then the public quantize /
// fake_quantize / dequantize against their references on such rows with 1-3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <omp.h>

#include "tests/kernels/bits.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/simd.hpp"
#include "lowbit/kernels/threads.hpp"

using namespace lowbit;

namespace {

using lowbit::test::same;
using lowbit::test::seed;

const char* const kFormats[] = {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k"};
constexpr int kKinds = 18;

// Super-block x[256] of kind `kind` (0..kKinds-1), drawn from gen.
void adversarial_block(std::mt19937& gen, int kind, float* x) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float s = std::ldexp(1.0f, static_cast<int>(gen() % 41) - 20);  // a power of two, 2^-20..2^20
  switch (kind) {
    case 0:  // gaussian
      for (int i = 0; i < 256; ++i) x[i] = normal(gen) * s;
      break;
    case 1:  // positive only: every sub-block's min clamps to 0
      for (int i = 0; i < 256; ++i) x[i] = (1.0f + unit(gen)) * s;
      break;
    case 2:  // negative only
      for (int i = 0; i < 256; ++i) x[i] = -(0.5f + unit(gen)) * s;
      break;
    case 3:  // zeros
      for (int i = 0; i < 256; ++i) x[i] = 0.0f;
      break;
    case 4: {  // one constant
      const float c = (gen() % 2 ? 1.0f : -1.0f) * unit(gen) * s;
      for (int i = 0; i < 256; ++i) x[i] = c;
      break;
    }
    case 5:  // a constant per sub-block of 16 (some zero, some of either sign)
      for (int j = 0; j < 16; ++j) {
        const float c = j % 5 == 0 ? 0.0f : normal(gen) * s;
        for (int i = 0; i < 16; ++i) x[16 * j + i] = c;
      }
      break;
    case 6:  // sparse: zeros and a few outliers
      for (int i = 0; i < 256; ++i) x[i] = gen() % 23 == 0 ? normal(gen) * 100.0f * s : 0.0f;
      break;
    case 7:  // heavy tails
      for (int i = 0; i < 256; ++i) {
        const float g = normal(gen);
        x[i] = g * g * g * s;
      }
      break;
    case 8:  // half-integers of a power-of-two step: nearest_int ties everywhere
      for (int i = 0; i < 256; ++i) x[i] = (static_cast<float>(static_cast<int>(gen() % 64) - 32) + 0.5f) * s;
      break;
    case 9:  // on a grid d * k - m per sub-block: many candidates fit exactly (equal errors)
      for (int j = 0; j < 16; ++j) {
        const float d = s * (1.0f + static_cast<float>(gen() % 7)), m = d * static_cast<float>(gen() % 4);
        for (int i = 0; i < 16; ++i) x[16 * j + i] = d * static_cast<float>(gen() % 16) - m;
      }
      break;
    case 10:  // float32 subnormals and tiny normals
      for (int i = 0; i < 256; ++i) x[i] = normal(gen) * (gen() % 2 ? 1e-40f : 1e-37f);
      break;
    case 11:  // huge: x^2 overflows to Inf in the weights and sums
      for (int i = 0; i < 256; ++i) x[i] = normal(gen) * (gen() % 2 ? 1e20f : 1e37f);
      break;
    case 12:  // signed zeros and a few small values
      for (int i = 0; i < 256; ++i) x[i] = gen() % 7 == 0 ? normal(gen) * s : (gen() % 2 ? -0.0f : 0.0f);
      break;
    case 13:  // sub-blocks of very different magnitudes in one super-block
      for (int i = 0; i < 256; ++i) x[i] = normal(gen) * std::ldexp(1.0f, static_cast<int>((i / 16) * 5 % 61) - 30);
      break;
    case 14:  // two values per sub-block
      for (int j = 0; j < 16; ++j) {
        const float a = normal(gen) * s, b = normal(gen) * s;
        for (int i = 0; i < 16; ++i) x[16 * j + i] = gen() % 2 ? a : b;
      }
      break;
    case 15:  // one nonzero per sub-block of 16, first or last or anywhere
      for (int j = 0; j < 16; ++j) {
        for (int i = 0; i < 16; ++i) x[16 * j + i] = 0.0f;
        const int at = j % 3 == 0 ? 0 : j % 3 == 1 ? 15 : static_cast<int>(gen() % 16);
        x[16 * j + at] = normal(gen) * s;
      }
      break;
    case 16:  // small integers (scales land on exact values)
      for (int i = 0; i < 256; ++i) x[i] = static_cast<float>(static_cast<int>(gen() % 9) - 4);
      break;
    default:  // uniform, one sign per sub-block of 32
      for (int i = 0; i < 256; ++i) x[i] = ((i / 32) % 2 ? 1.0f : -1.0f) * unit(gen) * s + ((i / 32) % 3 == 0 ? s : 0.0f);
      break;
  }
}

// `blocks` super-blocks of mixed kinds, one of them NaN and one with an Inf where specials.
std::vector<float> adversarial_run(std::mt19937& gen, int64_t blocks, bool specials) {
  std::vector<float> x(static_cast<size_t>(blocks * 256));
  for (int64_t b = 0; b < blocks; ++b) adversarial_block(gen, static_cast<int>(gen() % kKinds), x.data() + b * 256);
  if (specials && blocks > 2) {
    x[static_cast<size_t>(gen() % 256)] = NAN;
    x[static_cast<size_t>(256 * (blocks - 2) + gen() % 256)] = -INFINITY;
  }
  return x;
}

::testing::AssertionResult blocks_equal(const kquant_block& ref, const kquant_block& fast) {
  if (!same(ref.d, fast.d) || !same(ref.dmin, fast.dmin))
    return ::testing::AssertionFailure() << "d " << ref.d << " / " << fast.d << ", dmin " << ref.dmin << " / " << fast.dmin;
  for (int j = 0; j < 16; ++j)
    if (ref.sc[j] != fast.sc[j] || ref.m[j] != fast.m[j])
      return ::testing::AssertionFailure() << "sub-block " << j << ": sc " << ref.sc[j] << " / " << fast.sc[j] << ", m "
                                           << ref.m[j] << " / " << fast.m[j];
  for (int i = 0; i < kSuperBlock; ++i)
    if (ref.q[i] != fast.q[i])
      return ::testing::AssertionFailure() << "code " << i << ": " << int{ref.q[i]} << " / " << int{fast.q[i]};
  return ::testing::AssertionSuccess();
}

// Every super-block of kquant_quantize_super_blocks(x[0, n)) against kquant_quantize_block_ref.
void expect_run_equal(const format& f, const std::vector<float>& x, int64_t n, const std::string& what) {
  const int64_t nsb = kquant_super_blocks_per_row(n);
  std::vector<kquant_block> fast(static_cast<size_t>(nsb));
  kquant_quantize_super_blocks(f, x.data(), n, fast.data());
  for (int64_t s = 0; s < nsb; ++s) {
    kquant_block ref;
    kquant_quantize_block_ref(f, x.data() + s * 256, std::min<int64_t>(256, n - s * 256), &ref);
    ASSERT_TRUE(blocks_equal(ref, fast[static_cast<size_t>(s)])) << what << ", super-block " << s;
  }
}

}  // namespace

// Every kind of super-block on its own (a whole batch of it: every lane that kind) and mixed in
// runs of 1..37 super-blocks with partial ends, on every SIMD target.
TEST(KQuantFast, SuperBlocksEqualReferenceOnEveryTarget) {
  std::mt19937 gen(seed(17));
  int cases = 0;
  for (const auto& t : simd_targets()) {
    force_simd_target(t.first);
    for (const char* spec : kFormats) {
      const format f = parse_format(spec);
      for (int kind = 0; kind < kKinds; ++kind) {
        std::vector<float> x(16 * 256);
        for (int b = 0; b < 16; ++b) adversarial_block(gen, kind, x.data() + b * 256);
        expect_run_equal(f, x, 16 * 256, fmt::format("{} on {}, kind {}", spec, t.second, kind));
        if (HasFatalFailure()) return force_simd_target(0);
        ++cases;
      }
      for (int64_t n : {int64_t{1}, int64_t{100}, int64_t{256}, int64_t{3 * 256 + 17}, int64_t{16 * 256}, int64_t{17 * 256 - 1},
                        int64_t{37 * 256}}) {
        for (bool specials : {false, true}) {
          const std::vector<float> x = adversarial_run(gen, kquant_super_blocks_per_row(n), specials);
          expect_run_equal(f, x, n, fmt::format("{} on {}, {} values{}", spec, t.second, n, specials ? " with NaN/Inf" : ""));
          if (HasFatalFailure()) return force_simd_target(0);
          ++cases;
        }
      }
    }
  }
  force_simd_target(0);
  EXPECT_GT(cases, 150);
}

// Many random super-blocks (every kind, fresh draws) on the dispatched target: the long tail of
// the searches' branches (which candidate wins, q3_k's sweeps).
TEST(KQuantFast, ManyRandomSuperBlocks) {
  std::mt19937 gen(seed(18));
  for (const char* spec : kFormats) {
    const format f = parse_format(spec);
    const std::vector<float> x = adversarial_run(gen, 1500, false);
    expect_run_equal(f, x, static_cast<int64_t>(x.size()), spec);
    if (HasFatalFailure()) return;
  }
}

// kquant_quantize_block (what GPTQ calls) is the fast path, and the reference under use_ref().
TEST(KQuantFast, QuantizeBlockEqualsReference) {
  std::mt19937 gen(seed(19));
  for (const char* spec : kFormats) {
    const format f = parse_format(spec);
    for (int64_t n : {0, 1, 31, 200, 256}) {
      const std::vector<float> x = adversarial_run(gen, 1, false);
      kquant_block ref, fast, forced;
      kquant_quantize_block_ref(f, x.data(), n, &ref);
      kquant_quantize_block(f, x.data(), n, &fast);
      set_use_ref(true);
      kquant_quantize_block(f, x.data(), n, &forced);
      set_use_ref(false);
      EXPECT_TRUE(blocks_equal(ref, fast)) << spec << " " << n;
      EXPECT_TRUE(blocks_equal(ref, forced)) << spec << " " << n;
    }
  }
}

// The public API on adversarial rows: quantize (to packed codes, lowbit bench --codes) ==
// quantize_ref, fake_quantize == fake_quantize_ref, dequantize of the fast codes == the same
// values; above the threading threshold with 1, 2 and 3 threads (rows split unevenly), and rows
// of 1..3 super-blocks with partial ends.
TEST(KQuantFast, PublicApiEqualsReferenceThreaded) {
  std::mt19937 gen(seed(20));
  const int saved = omp_get_max_threads();
  struct shape {
    int64_t rows, cols;
  };
  for (const shape& sh : {shape{45, 1024 + 256}, shape{67, 515}, shape{5, 256}, shape{3, 700}}) {
    const std::vector<float> x = adversarial_run(gen, kquant_super_blocks_per_row(sh.rows * sh.cols), true);
    for (const char* spec : kFormats) {
      const format f = parse_format(spec);
      const quantized_tensor qr = quantize_ref(x.data(), sh.rows, sh.cols, f);
      std::vector<float> ref(static_cast<size_t>(sh.rows * sh.cols));
      fake_quantize_ref(x.data(), ref.data(), sh.rows, sh.cols, f);
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        const std::string what = fmt::format("{} [{}, {}], {} threads", spec, sh.rows, sh.cols, threads);
        const quantized_tensor qf = quantize(x.data(), sh.rows, sh.cols, f);
        EXPECT_TRUE(qr == qf) << what;
        std::vector<float> fake(ref.size()), deq(ref.size());
        fake_quantize(x.data(), fake.data(), sh.rows, sh.cols, f);
        dequantize(qf, deq.data());
        size_t bad = 0;
        for (size_t i = 0; i < ref.size(); ++i)
          if ((!same(ref[i], fake[i]) || !same(ref[i], deq[i])) && bad++ < 3)
            ADD_FAILURE() << what << " index " << i << ": ref " << ref[i] << " fake " << fake[i] << " dequantized " << deq[i];
        // In place (in == out).
        std::vector<float> inplace = x;
        inplace.resize(ref.size());
        fake_quantize(inplace.data(), inplace.data(), sh.rows, sh.cols, f);
        EXPECT_EQ(std::memcmp(inplace.data(), ref.data(), ref.size() * sizeof(float)), 0) << what << " in place";
      }
    }
  }
  omp_set_num_threads(saved);
}

// PowerQuant's exponent search and importance-weighted RTN (search.hpp).
#include <gtest/gtest.h>

#include "tests/ptq/random_inputs.hpp"

#include <cmath>
#include <random>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/ptq/search.hpp"

using namespace lowbit;

namespace {

std::vector<float> gaussian(int64_t n, uint64_t seed, float sigma = 0.02f) { return test::normal(n, seed, sigma); }

double weighted_error(const std::vector<float>& W, const std::vector<float>& Q, const std::vector<float>& imp,
                      int64_t in) {
  double e = 0;
  for (size_t i = 0; i < W.size(); ++i) e += imp[i % in] * double(W[i] - Q[i]) * double(W[i] - Q[i]);
  return e;
}

}  // namespace

// docs/ptq.md §4.7 checks: a = 1 is the uniform grid; on Gaussian weights a < 1 (more levels near 0)
// reconstructs better, and the search finds it.
TEST(PowerQuant, SearchBeatsUniformOnGaussianWeights) {
  const int64_t out = 64, in = 256;
  const auto W = gaussian(out * in, 1);
  const format base = parse_format("int4/c");
  const auto r = ptq::powerquant_search(W.data(), out, in, base);
  std::vector<float> uniform(W.size());
  fake_quantize_ref(W.data(), uniform.data(), out, in, base);
  double mse_u = 0;
  for (size_t i = 0; i < W.size(); ++i) mse_u += double(W[i] - uniform[i]) * (W[i] - uniform[i]);
  EXPECT_NEAR(r.mse_uniform, mse_u / W.size(), 1e-15);
  EXPECT_LT(r.exponent, 1.0);
  EXPECT_GT(r.exponent, 0.2);
  EXPECT_LT(r.mse, 0.95 * r.mse_uniform);
  // The weights are values of pow<a>(int4/c): quantizing them again changes nothing.
  format f = base;
  f.power = r.exponent;
  std::vector<float> again(W.size());
  fake_quantize_ref(r.weights.data(), again.data(), out, in, f);
  EXPECT_EQ(again, r.weights);
  EXPECT_THROW(ptq::powerquant_search(W.data(), out, in, f), error);
  // Named presets fix their grids (the grammar refuses pow(q4_k) too).
  for (const char* preset : {"q4_k", "q6_k", "q4_0", "nvfp4"})
    EXPECT_THROW(ptq::powerquant_search(W.data(), out, in, parse_format(preset)), error) << preset;
}

TEST(ImportanceRtn, NoShrinkIsRtnAndTheSearchNeverLoses) {
  const int64_t out = 32, in = 128;
  const auto W = gaussian(out * in, 2);
  std::vector<float> imp(in);
  std::mt19937_64 rng(3);
  for (auto& v : imp) v = std::exponential_distribution<float>(1.0f)(rng);
  for (const std::string spec : {"int4/g32", "int3/g32", "e2m1/g32", "mxfp4", "nvfp4", "int4/c"}) {
    const format f = parse_format(spec);
    std::vector<float> rtn(W.size());
    fake_quantize_ref(W.data(), rtn.data(), out, in, f);
    const auto same = ptq::importance_rtn(W.data(), out, in, f, imp.data(), 20, 0.0);
    EXPECT_EQ(same, rtn) << spec;
    const auto best = ptq::importance_rtn(W.data(), out, in, f, imp.data());
    EXPECT_LE(weighted_error(W, best, imp, in), weighted_error(W, rtn, imp, in)) << spec;
  }
  // At 3 bits the clipping search finds a real gain.
  const format f3 = parse_format("int3/g32");
  std::vector<float> rtn(W.size());
  fake_quantize_ref(W.data(), rtn.data(), out, in, f3);
  const auto best = ptq::importance_rtn(W.data(), out, in, f3, imp.data());
  EXPECT_LT(weighted_error(W, best, imp, in), 0.95 * weighted_error(W, rtn, imp, in));
}

// ZeroQuant-FP (Wu, Yao, He 2023; docs/ptq.md §4.5): FP4 weights whose scales are powers of two cast
// to FP8 E4M3 by an exponent shift — every value of e2m1 x 2^k is an E4M3 value while 2^k stays in
// E4M3's range — so W4A8 can run on FP8 arithmetic. With a free fp32 scale they do not.
TEST(ZeroQuantFp, PowerOfTwoScaledFp4CastsToFp8Exactly) {
  const int64_t out = 64, in = 256;
  const auto W = gaussian(out * in, 4, 0.05f);
  const format e4m3 = parse_format("e4m3fn");
  for (const std::string spec : {"e2m1/c:pow2", "e2m1/g32:pow2", "e2m1/g32:pow2@ceil"}) {
    std::vector<float> q(W.size()), cast(W.size());
    fake_quantize_ref(W.data(), q.data(), out, in, parse_format(spec));
    fake_quantize_ref(q.data(), cast.data(), 1, int64_t(q.size()), e4m3);
    EXPECT_EQ(cast, q) << spec;
  }
  std::vector<float> q(W.size()), cast(W.size());
  fake_quantize_ref(W.data(), q.data(), out, in, parse_format("e2m1/g32"));
  fake_quantize_ref(q.data(), cast.data(), 1, int64_t(q.size()), e4m3);
  EXPECT_NE(cast, q);
}

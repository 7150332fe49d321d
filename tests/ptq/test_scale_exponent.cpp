// ZeroQuant-FP's second scale constraint (docs/ptq.md §4.5): every group scale is its row's shared
// maximum times 2^-k, exactly; and NUPES's learned exponent (§4.7): its calibration output error
// is at most that of the fixed exponents it is compared with.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/ptq/ptq.hpp"
#include "lowbit/ptq/search.hpp"
#include "tests/ptq/random_inputs.hpp"

using namespace lowbit;
using namespace lowbit::ptq;

namespace {

using vecf = std::vector<float>;
using lowbit::test::normal;

TEST(SharedPow2Scales, EveryGroupScaleIsTheRowMaximumTimesAPowerOfTwo) {
  const int64_t out = 16, in = 256;
  vecf W = normal(out * in, 21, 0.05f);
  for (int64_t r = 0; r < out; ++r) W[r * in + 7 * r] = 0.4f;  // one loud group per row
  for (int64_t c = 64; c < 96; ++c) W[3 * in + c] = 0.0f;       // a group of zeros
  for (const char* spec : {"e2m1/g32", "int4/g32", "e2m1/g16", "e3m2/g32:bf16"}) {
    const format f = parse_format(spec);
    const shared_pow2_result s = shared_pow2_quantize(W.data(), out, in, f);
    const quantized_tensor own = quantize(W.data(), out, in, f);  // the format's own scales (RTN)
    const int64_t groups = groups_per_row(f, in);
    int64_t shifted = 0;
    for (int64_t r = 0; r < out; ++r) {
      float S = 0;
      for (int64_t g = 0; g < groups; ++g) S = std::max(S, s.packed.scales[r * groups + g]);
      ASSERT_GT(S, 0.0f) << spec;
      for (int64_t g = 0; g < groups; ++g) {
        const float sg = s.packed.scales[r * groups + g];
        int e = 0;
        const double m = std::frexp(double(S) / double(sg), &e);  // S / s_g = 2^k exactly: mantissa 1/2
        EXPECT_EQ(m, 0.5) << spec << " row " << r << " group " << g << ": " << S << " / " << sg;
        const int k = e - 1;
        EXPECT_GE(k, 0) << spec;
        EXPECT_EQ(std::ldexp(S, -k), sg) << spec;
        shifted += k > 0;
        float amax = 0;
        for (int64_t c = g * f.group_size; c < (g + 1) * f.group_size; ++c) amax = std::max(amax, std::fabs(W[r * in + c]));
        if (amax == 0) {
          EXPECT_EQ(sg, S) << spec;  // a group of zeros: the shared maximum itself
          continue;
        }
        // The format's own scale rounded up to the next S 2^-k: no value of the group clips more.
        EXPECT_GE(sg, own.scales[r * groups + g]) << spec;
        EXPECT_LT(sg, 2 * own.scales[r * groups + g]) << spec;
      }
    }
    EXPECT_GT(shifted, out * groups / 2) << spec;  // the constraint is not the trivial one scale per row
    // The values are the codes' under those scales.
    vecf back(out * in);
    dequantize(s.packed, back.data());
    EXPECT_EQ(std::memcmp(back.data(), s.weights.data(), back.size() * sizeof(float)), 0) << spec;
    // Its cost: the weight error is at least RTN's with free scales, and within a factor of a few.
    const vecf rtn = rtn_quantize(W.data(), out, in, f);
    double e_rtn = 0, e_c = 0;
    for (int64_t i = 0; i < out * in; ++i)
      e_rtn += double(W[i] - rtn[i]) * (W[i] - rtn[i]), e_c += double(W[i] - s.weights[i]) * (W[i] - s.weights[i]);
    EXPECT_LT(e_c, 4 * e_rtn) << spec;
  }
  // With AdaRound, the constrained scales are the ones its result is stored with.
  const format f = parse_format("e2m1/g32");
  std::vector<double> C(in * in, 0.0);
  for (int64_t i = 0; i < in; ++i) C[i * in + i] = 1.0;
  adaround_options o;
  o.iters = 20;
  o.shared_pow2_scales = true;
  const adaround_result a = adaround_quantize(W.data(), out, in, C.data(), f, o);
  ASSERT_TRUE(a.packed);
  EXPECT_EQ(a.packed->scales, shared_pow2_quantize(W.data(), out, in, f).packed.scales);
}

TEST(SharedPow2Scales, RefusesFormatsItCannotApplyTo) {
  const vecf W = normal(64, 3);
  for (const char* spec : {"e2m1/c", "mxfp4", "q4_0", "uint4/g32", "e2m1/g32~sr", "pow0.5(int4/g32)"}) {
    try {
      shared_pow2_quantize(W.data(), 2, 32, parse_format(spec));
      ADD_FAILURE() << spec;
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find("--shared-pow2-scales"), std::string::npos) << e.what();
    }
  }
}

// The output error ||X (W - Q)^T||^2 / n, computed from X directly (not from C).
double output_error_of(const vecf& X, int64_t n, int64_t in, const vecf& W, const vecf& Q, int64_t out) {
  double e = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < out; ++r) {
      double y = 0;
      for (int64_t j = 0; j < in; ++j) y += double(X[t * in + j]) * (double(W[r * in + j]) - Q[r * in + j]);
      e += y * y;
    }
  return e / double(n);
}

TEST(Nupes, LearnedExponentIsAtLeastAsGoodAsTheFixedOnes) {
  const int64_t out = 24, in = 64, n = 256;
  // Heavy-tailed weights (a power map's case) and inputs with a few loud channels.
  vecf W = normal(out * in, 31, 0.05f);
  for (size_t i = 0; i < W.size(); i += 17) W[i] *= 6.0f;
  vecf X = normal(n * in, 32);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < in; j += 9) X[t * in + j] *= 5.0f;
  std::vector<double> C(in * in, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t j = 0; j < in; ++j) C[i * in + j] += double(X[t * in + i]) * X[t * in + j] / double(n);
  for (const char* spec : {"int4/g32", "int3/c", "e2m1/g32"}) {
    const format base = parse_format(spec);
    const power_search_result learned = nupes_search(W.data(), out, in, base, C.data());
    const double e_learned = output_error_of(X, n, in, W, learned.weights, out);
    EXPECT_NEAR(learned.loss, e_learned, 1e-3 * e_learned) << spec;
    // The fixed exponents: uniform (a = 1) and PowerQuant's data-free choice.
    const double a_powerquant = powerquant_search(W.data(), out, in, base).exponent;
    for (const double a : {1.0, a_powerquant}) {
      format f = base;
      f.power = a == 1.0 ? 0.0 : a;
      const vecf q = rtn_quantize(W.data(), out, in, f);
      EXPECT_LE(e_learned, output_error_of(X, n, in, W, q, out) * (1 + 1e-6)) << spec << " a = " << a;
    }
    EXPECT_GE(learned.exponent, 0.2) << spec;
    EXPECT_LE(learned.exponent, 1.0) << spec;
  }
}

}  // namespace

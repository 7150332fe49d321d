// Post-training quantization (docs/ptq.md §4): GPTQ against an independent float64 column-by-column
// OBS reference (explicit inverse-Hessian downdates, no Cholesky, no lazy batching) and against
// RTN; SmoothQuant and AWQ scale transforms are output-preserving; AWQ's clipping search against
// a direct re-implementation of auto_clip; LoRC's Eckart-Young residual; bias correction.
#include <gtest/gtest.h>

#include "tests/ptq/random_inputs.hpp"
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/ptq/ptq.hpp"

using namespace lowbit;
using namespace lowbit::ptq;

namespace {

using vecf = std::vector<float>;
using vecd = std::vector<double>;

using lowbit::test::normal;

// X = Z A with Z [n, in] ~ N(0, 1) and A [in, in] = I + N(0, 1/in): inputs with correlated
// channels (the setting where GPTQ's error feedback pays), plus a per-channel spread of scales.
// `seed` fixes the distribution (A), `sample` the draw of Z (sample 1: held-out data).
vecf correlated_inputs(int64_t n, int64_t in, uint64_t seed, uint64_t sample = 0) {
  const vecf Z = normal(n * in, seed + 7919 * sample);
  vecf A = normal(in * in, seed + 1, 1.0f / std::sqrt(static_cast<float>(in)));
  for (int64_t i = 0; i < in; ++i) A[static_cast<size_t>(i * in + i)] += 1.0f;
  std::mt19937_64 rng(seed + 2);
  std::uniform_real_distribution<float> u(0.3f, 2.0f);
  for (int64_t j = 0; j < in; ++j) {
    const float c = u(rng);
    for (int64_t i = 0; i < in; ++i) A[static_cast<size_t>(i * in + j)] *= c;
  }
  vecf X(static_cast<size_t>(n * in), 0.0f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < in; ++k) {
      const float z = Z[static_cast<size_t>(t * in + k)];
      for (int64_t j = 0; j < in; ++j) X[static_cast<size_t>(t * in + j)] += z * A[static_cast<size_t>(k * in + j)];
    }
  return X;
}

vecd hessian_of(const vecf& X, int64_t n, int64_t in) {
  hessian_accumulator h(in);
  h.add(X.data(), n);
  return h.matrix();
}

// ||X W^T - X Q^T||_F^2 in float64, straight from the definition.
double output_error_ref(const vecf& X, int64_t n, int64_t in, const float* W, const float* Q, int64_t out) {
  double sse = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double e = 0;
      for (int64_t j = 0; j < in; ++j)
        e += static_cast<double>(X[static_cast<size_t>(t * in + j)]) * (static_cast<double>(W[o * in + j]) - Q[o * in + j]);
      sse += e * e;
    }
  return sse;
}

// Inverse of a symmetric positive definite matrix by Gauss-Jordan elimination (float64).
vecd inverse_ref(vecd A, int64_t n) {
  vecd I(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) I[static_cast<size_t>(i * n + i)] = 1;
  for (int64_t c = 0; c < n; ++c) {
    int64_t p = c;
    for (int64_t r = c + 1; r < n; ++r)
      if (std::fabs(A[static_cast<size_t>(r * n + c)]) > std::fabs(A[static_cast<size_t>(p * n + c)])) p = r;
    for (int64_t k = 0; k < n; ++k) {
      std::swap(A[static_cast<size_t>(c * n + k)], A[static_cast<size_t>(p * n + k)]);
      std::swap(I[static_cast<size_t>(c * n + k)], I[static_cast<size_t>(p * n + k)]);
    }
    const double d = A[static_cast<size_t>(c * n + c)];
    for (int64_t k = 0; k < n; ++k) {
      A[static_cast<size_t>(c * n + k)] /= d;
      I[static_cast<size_t>(c * n + k)] /= d;
    }
    for (int64_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double m = A[static_cast<size_t>(r * n + c)];
      if (m == 0) continue;
      for (int64_t k = 0; k < n; ++k) {
        A[static_cast<size_t>(r * n + k)] -= m * A[static_cast<size_t>(c * n + k)];
        I[static_cast<size_t>(r * n + k)] -= m * I[static_cast<size_t>(c * n + k)];
      }
    }
  }
  return I;
}

struct ref_result {
  vecf q;
  double loss = 0;
};

// GPTQ written from the paper's OBS form (Frantar et al. Eq. 2-4, docs/ptq.md §4.1 Checks), one
// column at a time in float64 with no Cholesky and no lazy batching: quantize column i, move the
// columns right of it by -(w_i - q) / [H_F^-1]_ii [H_F^-1]_{i,F}, then remove i from H_F^-1 by
// the Gaussian-elimination downdate. A group's scale comes from its current weights at its first
// column, per-row and per-tensor scales from the original weight; the quantizer is the format's
// scalar reference.
ref_result gptq_ref(const vecf& W, int64_t out, int64_t in, vecd H, const format& f, double percdamp) {
  vecd w(W.begin(), W.end());
  for (int64_t i = 0; i < in; ++i)
    if (H[static_cast<size_t>(i * in + i)] == 0) {
      H[static_cast<size_t>(i * in + i)] = 1;
      for (int64_t r = 0; r < out; ++r) w[static_cast<size_t>(r * in + i)] = 0;
    }
  double mean = 0;
  for (int64_t i = 0; i < in; ++i) mean += H[static_cast<size_t>(i * in + i)];
  mean /= static_cast<double>(in);
  for (int64_t i = 0; i < in; ++i) H[static_cast<size_t>(i * in + i)] += percdamp * mean;
  vecd Hinv = inverse_ref(H, in);

  const scale_context ctx = make_scale_context(f);
  vecf w0(w.begin(), w.end());
  float tensor_scale = 1;
  if (f.named == preset::nvfp4) {
    float amax = 0;
    for (const float v : w0) amax = std::max(amax, std::fabs(v));
    tensor_scale = nvfp4_tensor_scale(amax);
  }
  std::vector<group_scale> gs(static_cast<size_t>(out));
  for (int64_t r = 0; r < out; ++r) {
    if (f.gran == granularity::row) gs[static_cast<size_t>(r)] = choose_scale(ctx, group_stats_ref(&w0[static_cast<size_t>(r * in)], in), &w0[static_cast<size_t>(r * in)], in, tensor_scale);
    if (f.gran == granularity::tensor) gs[static_cast<size_t>(r)] = choose_scale(ctx, group_stats_ref(w0.data(), out * in), w0.data(), out * in, tensor_scale);
  }
  ref_result res;
  res.q.assign(static_cast<size_t>(out * in), 0.0f);
  for (int64_t i = 0; i < in; ++i) {
    const double d = Hinv[static_cast<size_t>(i * in + i)];
    for (int64_t r = 0; r < out; ++r) {
      double* row = &w[static_cast<size_t>(r * in)];
      if (f.gran == granularity::group && i % f.group_size == 0) {
        const int64_t n = std::min<int64_t>(f.group_size, in - i);
        vecf g(row + i, row + i + n);
        gs[static_cast<size_t>(r)] = choose_scale(ctx, group_stats_ref(g.data(), n), g.data(), n, tensor_scale);
      }
      const float q = fake_quantize_value_ref(f, static_cast<float>(row[i]), gs[static_cast<size_t>(r)], 0.0f, f.rounding);
      res.q[static_cast<size_t>(r * in + i)] = q;
      const double delta = row[i] - q;
      res.loss += delta * delta / d / 2;
      for (int64_t j = i + 1; j < in; ++j) row[j] -= delta / d * Hinv[static_cast<size_t>(i * in + j)];
    }
    for (int64_t j = i + 1; j < in; ++j)
      for (int64_t k = i + 1; k < in; ++k)
        Hinv[static_cast<size_t>(j * in + k)] -= Hinv[static_cast<size_t>(j * in + i)] * Hinv[static_cast<size_t>(i * in + k)] / d;
  }
  return res;
}

// Stable descending order of diag(H) (the implementation's act-order).
std::vector<int64_t> act_order_perm(const vecd& H, int64_t in) {
  std::vector<int64_t> p(static_cast<size_t>(in));
  std::iota(p.begin(), p.end(), int64_t{0});
  std::stable_sort(p.begin(), p.end(), [&](int64_t a, int64_t b) {
    return H[static_cast<size_t>(a * in + a)] > H[static_cast<size_t>(b * in + b)];
  });
  return p;
}

int64_t count_mismatches(const vecf& a, const vecf& b, double tol) {
  int64_t m = 0;
  for (size_t i = 0; i < a.size(); ++i) m += std::fabs(static_cast<double>(a[i]) - b[i]) > tol;
  return m;
}

bool bit_equal(const vecf& a, const vecf& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) return false;
  return true;
}

}  // namespace

// ---- Hessian -------------------------------------------------------------------------------------

TEST(Hessian, RunningAverageEqualsTwoOverNXtX) {
  const int64_t in = 40, n = 1500;
  const vecf X = normal(n * in, 7);
  hessian_accumulator h(in);
  h.add(X.data(), 1);  // uneven batches, one larger than the internal chunk
  h.add(X.data() + in, 1200);
  h.add(X.data() + 1201 * in, n - 1201);
  EXPECT_EQ(h.count, n);
  const vecd H = h.matrix();
  double max_rel = 0;
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < in; ++j) {
      double s = 0;
      for (int64_t t = 0; t < n; ++t) s += static_cast<double>(X[static_cast<size_t>(t * in + i)]) * X[static_cast<size_t>(t * in + j)];
      s *= 2.0 / n;
      max_rel = std::max(max_rel, std::fabs(H[static_cast<size_t>(i * in + j)] - s) / 2.0);
    }
  // Each chunk's X^T X is summed in float32 (as gptq.py keeps H), the chunks in float64: the
  // error is float32 rounding over one chunk's rows, ~sqrt(rows) * 2^-24 relative.
  EXPECT_LT(max_rel, 2e-6);
}

// ---- GPTQ ----------------------------------------------------------------------------------------

TEST(Gptq, IdentityFormatReturnsWeightBitExactly) {
  const int64_t out = 48, in = 200, n = 400;
  const vecf X = correlated_inputs(n, in, 11);
  const vecd H = hessian_of(X, n, in);
  const vecf W = normal(out * in, 12);
  for (const bool act : {false, true})
    for (const bool f64 : {false, true}) {
      gptq_options o;
      o.act_order = act;
      o.float64 = f64;
      o.block_size = 64;
      const gptq_result r = gptq_quantize(W.data(), out, in, H.data(), parse_format("fp32"), o);
      EXPECT_TRUE(bit_equal(r.weights, W)) << "act_order " << act << " float64 " << f64;
      EXPECT_EQ(r.loss, 0.0);
    }
}

// The blocked, Cholesky-based implementation against the column-by-column OBS reference.
TEST(Gptq, MatchesColumnByColumnObsReference) {
  const int64_t out = 24, in = 160, n = 600;
  const vecf X = correlated_inputs(n, in, 21);
  const vecd H = hessian_of(X, n, in);
  const vecf W = normal(out * in, 22, 0.05f);
  for (const char* spec : {"int4/g32", "uint3/g32", "e2m1/g16", "nvfp4", "int4/c", "int8/t", "e4m3fn"}) {
    const format f = parse_format(spec);
    const ref_result ref = gptq_ref(W, out, in, H, f, 0.01);
    float amax = 0;
    for (const float v : W) amax = std::max(amax, std::fabs(v));
    for (const bool f64 : {true, false}) {
      gptq_options o;
      o.block_size = 64;  // three blocks (64, 64, 32): the lazy updates are exercised
      o.float64 = f64;
      const gptq_result r = gptq_quantize(W.data(), out, in, H.data(), f, o);
      const int64_t mism = count_mismatches(r.weights, ref.q, 1e-6 * amax);
      const double e_impl = output_error_ref(X, n, in, W.data(), r.weights.data(), out);
      const double e_ref = output_error_ref(X, n, in, W.data(), ref.q.data(), out);
      std::printf("  %-10s float%s: %lld / %lld values differ from the reference; output error %.6g vs %.6g\n", spec,
                  f64 ? "64" : "32", static_cast<long long>(mism), static_cast<long long>(out * in), e_impl, e_ref);
      if (f64) {
        // Same arithmetic up to summation order: no rounding decision may differ.
        EXPECT_EQ(mism, 0) << spec;
        EXPECT_NEAR(r.loss, ref.loss, 1e-9 * ref.loss) << spec;
      } else {
        // float32 updates (as gptq.py): rare flips at rounding boundaries, each one feeding the
        // row's later columns; the result must be as good.
        EXPECT_LE(mism, out * in / 20) << spec;
        EXPECT_NEAR(e_impl, e_ref, 0.02 * e_ref) << spec;
      }
    }
  }
}

TEST(Gptq, ActOrderMatchesReferenceOnPermutedProblem) {
  const int64_t out = 16, in = 96, n = 400;
  const vecf X = correlated_inputs(n, in, 31);
  const vecd H = hessian_of(X, n, in);
  const vecf W = normal(out * in, 32, 0.05f);
  const std::vector<int64_t> p = act_order_perm(H, in);
  vecf Wp(W.size());
  vecd Hp(H.size());
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t r = 0; r < out; ++r) Wp[static_cast<size_t>(r * in + i)] = W[static_cast<size_t>(r * in + p[static_cast<size_t>(i)])];
    for (int64_t j = 0; j < in; ++j) Hp[static_cast<size_t>(i * in + j)] = H[static_cast<size_t>(p[static_cast<size_t>(i)] * in + p[static_cast<size_t>(j)])];
  }
  const format f = parse_format("int4/g32");
  const ref_result ref = gptq_ref(Wp, out, in, Hp, f, 0.01);
  gptq_options o;
  o.act_order = true;
  o.float64 = true;
  o.block_size = 32;
  const gptq_result r = gptq_quantize(W.data(), out, in, H.data(), f, o);
  vecf back(W.size());
  for (int64_t i = 0; i < in; ++i)
    for (int64_t rr = 0; rr < out; ++rr) back[static_cast<size_t>(rr * in + p[static_cast<size_t>(i)])] = ref.q[static_cast<size_t>(rr * in + i)];
  EXPECT_EQ(count_mismatches(r.weights, back, 1e-8), 0);
  EXPECT_NEAR(r.loss, ref.loss, 1e-9 * ref.loss);
  EXPECT_FALSE(r.packed.has_value());  // groups in act order are not groups of the layout
}

class GptqFormats : public ::testing::TestWithParam<const char*> {};

TEST_P(GptqFormats, BeatsRtnOnCorrelatedInputs) {
  const int64_t out = 128, in = 256, n = 1024;
  const vecf X = correlated_inputs(n, in, 41);
  const vecf Xtest = correlated_inputs(n, in, 41, 1);  // held out, same distribution
  const vecd H = hessian_of(X, n, in);
  const vecf W = normal(out * in, 42, 0.05f);
  const format f = parse_format(GetParam());
  const vecf Q_rtn = rtn_quantize(W.data(), out, in, f);
  const double e_rtn = output_error(X.data(), n, in, W.data(), Q_rtn.data(), out);
  const double e_rtn_test = output_error(Xtest.data(), n, in, W.data(), Q_rtn.data(), out);
  struct variant {
    const char* name;
    bool act, stat;
  };
  for (const variant v : {variant{"plain", false, false}, variant{"act-order", true, false},
                          variant{"static", false, true}, variant{"act+static", true, true}}) {
    if (f.gran != granularity::group && v.stat) continue;
    gptq_options o;
    o.act_order = v.act;
    o.static_groups = v.stat;
    const gptq_result r = gptq_quantize(W.data(), out, in, H.data(), f, o);
    const double e = output_error(X.data(), n, in, W.data(), r.weights.data(), out);
    const double e_test = output_error(Xtest.data(), n, in, W.data(), r.weights.data(), out);
    std::printf("  %-12s %-10s GPTQ/RTN output error %.4f calibration, %.4f held out\n", GetParam(), v.name,
                e / e_rtn, e_test / e_rtn_test);
    EXPECT_LT(e, 0.95 * e_rtn) << GetParam() << " " << v.name;
    EXPECT_LT(e_test, e_rtn_test) << GetParam() << " " << v.name;
    // Every value is a value of the format: re-quantizing with the stored scales is exact.
    if (r.packed) {
      vecf deq(W.size());
      dequantize(*r.packed, deq.data());
      EXPECT_TRUE(bit_equal(deq, r.weights)) << GetParam() << " " << v.name;
    } else {
      EXPECT_TRUE(v.act && !v.stat && f.gran == granularity::group);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, GptqFormats,
                         ::testing::Values("int4/g32", "int3/g32", "e2m1/g32", "mxfp4", "nvfp4", "uint4/g32",
                                           "int4/c", "int4/g32@mse", "q4_0", "q4_k", "q6_k", "q5_0", "q4_1",
                                           "q5_1", "q2_k", "q3_k", "q5_k"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

TEST(Gptq, DeadColumnsAreZeroed) {
  const int64_t out = 32, in = 128, n = 512;
  vecf X = correlated_inputs(n, in, 51);
  for (const int64_t dead : {3, 64, 127})
    for (int64_t t = 0; t < n; ++t) X[static_cast<size_t>(t * in + dead)] = 0;
  const vecd H = hessian_of(X, n, in);
  const vecf W = normal(out * in, 52, 0.05f);
  const format f = parse_format("int4/g32");
  for (const bool act : {false, true}) {
    gptq_options o;
    o.act_order = act;
    const gptq_result r = gptq_quantize(W.data(), out, in, H.data(), f, o);
    EXPECT_EQ(r.dead_columns, 3);
    for (int64_t rr = 0; rr < out; ++rr)
      for (const int64_t dead : {3, 64, 127}) EXPECT_EQ(r.weights[static_cast<size_t>(rr * in + dead)], 0.0f);
    for (const float v : r.weights) ASSERT_TRUE(std::isfinite(v));
    const vecf Q_rtn = rtn_quantize(W.data(), out, in, f);
    EXPECT_LT(output_error(X.data(), n, in, W.data(), r.weights.data(), out),
              output_error(X.data(), n, in, W.data(), Q_rtn.data(), out));
  }
}

// sum of the reported losses = (1/2) tr(E H_damp E^T) = ||X E^T||^2 / n + (lambda / 2) ||E||^2
// for E = W - Q: the OBS increments add up to the final quadratic error.
TEST(Gptq, ReportedLossPredictsOutputError) {
  const int64_t out = 64, in = 192, n = 800;
  const vecf X = correlated_inputs(n, in, 61);
  const vecd H = hessian_of(X, n, in);
  const vecf W = normal(out * in, 62, 0.05f);
  double mean_diag = 0;
  for (int64_t i = 0; i < in; ++i) mean_diag += H[static_cast<size_t>(i * in + i)];
  mean_diag /= static_cast<double>(in);
  for (const char* spec : {"int3/g32", "mxfp4"})
    for (const bool f64 : {true, false}) {
      gptq_options o;
      o.float64 = f64;
      const gptq_result r = gptq_quantize(W.data(), out, in, H.data(), parse_format(spec), o);
      double e2 = 0;
      for (size_t i = 0; i < W.size(); ++i) e2 += (static_cast<double>(W[i]) - r.weights[i]) * (W[i] - r.weights[i]);
      const double predicted = output_error_ref(X, n, in, W.data(), r.weights.data(), out) / n + o.percdamp * mean_diag / 2 * e2;
      std::printf("  %-8s float%s: reported loss %.6g, (1/2) tr(E H E^T) %.6g\n", spec, f64 ? "64" : "32", r.loss, predicted);
      EXPECT_NEAR(r.loss, predicted, (f64 ? 1e-6 : 1e-3) * predicted) << spec;
    }
}

TEST(Gptq, PackedCodesDequantizeToTheWeights) {
  const int64_t out = 20, in = 100, n = 300;  // 100 columns: a short last group
  const vecf X = correlated_inputs(n, in, 71);
  const vecd H = hessian_of(X, n, in);
  const vecf W = normal(out * in, 72, 0.05f);
  for (const char* spec : {"int4/g32", "uint4/g32", "nvfp4", "mxfp4", "int8/c", "int4/t", "e4m3fn", "q4_0", "e2m1/g32~sr",
                           "q4_k", "q6_k", "q5_0", "q4_1", "q5_1", "q2_k", "q3_k", "q5_k"})
    for (const bool stat : {false, true}) {
      gptq_options o;
      o.static_groups = stat;
      o.act_order = stat;
      const gptq_result r = gptq_quantize(W.data(), out, in, H.data(), parse_format(spec), o);
      ASSERT_TRUE(r.packed.has_value()) << spec;
      vecf deq(W.size());
      dequantize_ref(*r.packed, deq.data());
      EXPECT_TRUE(bit_equal(deq, r.weights)) << spec << " static " << stat;
    }
}

TEST(Gptq, RejectsBadInput) {
  const int64_t out = 4, in = 8;
  vecf W = normal(out * in, 81);
  vecd H(static_cast<size_t>(in * in), 0.0);
  for (int64_t i = 0; i < in; ++i) H[static_cast<size_t>(i * in + i)] = 1;
  H[1] = H[static_cast<size_t>(in)] = 2;  // indefinite
  gptq_options o;
  o.percdamp = 0;
  EXPECT_THROW(gptq_quantize(W.data(), out, in, H.data(), parse_format("int4/g8"), o), lowbit::error);
  H[1] = H[static_cast<size_t>(in)] = 0;
  W[5] = NAN;
  EXPECT_THROW(gptq_quantize(W.data(), out, in, H.data(), parse_format("int4/g8"), o), lowbit::error);
}

// Rows are independent inside a block, the float products are tiles fixed by their shape
// (kernels/gemm.hpp, conventions §47) and OpenBLAS splits the double factorisation's level-3 work
// by rows/columns (each dot product summed in one order): the threaded run (a layer above
// gptq.cpp's serial size 1 << 17, blocks above the column loop's threading size) gives the
// one-thread result bit for bit.
TEST(Gptq, ThreadedEqualsOneThread) {
  const int64_t out = 384, in = 384, n = 768;
  static_assert(out * in > (int64_t{1} << 17), "the layer must take the threaded path");
  const vecf X = correlated_inputs(n, in, 85);
  const vecd H = hessian_of(X, n, in);
  const vecf W = normal(out * in, 86, 0.05f);
  const format f = parse_format("int4/g32");
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const gptq_result one = gptq_quantize(W.data(), out, in, H.data(), f);
  for (int threads : {2, 3}) {
    omp_set_num_threads(threads);
    const gptq_result many = gptq_quantize(W.data(), out, in, H.data(), f);
    EXPECT_TRUE(bit_equal(many.weights, one.weights))
        << threads << " threads vs 1: " << count_mismatches(many.weights, one.weights, 0.0) << " values differ";
    EXPECT_EQ(many.loss, one.loss) << threads << " threads vs 1";
  }
  omp_set_num_threads(saved);
}

// GPTQ's cost next to one sgemm of the layer's shape is a benchmark, not a test: build/bench_gptq
// (e.g. `build/bench_gptq 1024 2048`).

// ---- SmoothQuant ---------------------------------------------------------------------------------

namespace {

// Activations with a few outlier channels, as in LLMs (SmoothQuant Fig. 4, AWQ Sec. 3); `seed`
// fixes the channel scales, `sample` the draw (sample 1: held-out data).
vecf outlier_inputs(int64_t n, int64_t in, uint64_t seed, uint64_t sample = 0) {
  const std::vector<int64_t> outliers = {5, 17, 40, 77};
  vecf X = normal(n * in, seed + 7919 * sample);
  std::mt19937_64 rng(seed + 3);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  for (int64_t j = 0; j < in; ++j) {
    float c = u(rng);
    if (std::find(outliers.begin(), outliers.end(), j) != outliers.end()) c *= 30.0f;
    for (int64_t t = 0; t < n; ++t) X[static_cast<size_t>(t * in + j)] = X[static_cast<size_t>(t * in + j)] * c + 0.1f * c;
  }
  return X;
}

// Max over (t, o) of |sum_j x'_tj w'_oj - sum_j x_tj w_oj| / sum_j |x_tj w_oj| (float64 dots).
double max_relative_output_change(const vecf& X, const vecf& W, const vecf& Xs, const vecf& Ws, int64_t n,
                                  int64_t in, int64_t out) {
  double worst = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double y = 0, ys = 0, mag = 0;
      for (int64_t j = 0; j < in; ++j) {
        const size_t a = static_cast<size_t>(t * in + j), b = static_cast<size_t>(o * in + j);
        y += static_cast<double>(X[a]) * W[b];
        ys += static_cast<double>(Xs[a]) * Ws[b];
        mag += std::fabs(static_cast<double>(X[a]) * W[b]);
      }
      worst = std::max(worst, std::fabs(ys - y) / mag);
    }
  return worst;
}

}  // namespace

TEST(SmoothQuant, ScalesFollowTheFormulaAndBalanceMaxima) {
  const int64_t n = 256, in = 96, o1 = 32, o2 = 48;
  const vecf X = outlier_inputs(n, in, 101);
  const vecf W1 = normal(o1 * in, 102), W2 = normal(o2 * in, 103, 2.0f);
  channel_stats st(in);
  st.add(X.data(), n);
  const std::vector<linear_weight> layers = {{W1.data(), o1}, {W2.data(), o2}};
  for (const double alpha : {0.5, 0.8}) {
    const vecf s = smoothquant_scales(st.absmax.data(), in, layers, alpha);
    for (int64_t j = 0; j < in; ++j) {
      double a = 0, w = 0;
      for (int64_t t = 0; t < n; ++t) a = std::max(a, static_cast<double>(std::fabs(X[static_cast<size_t>(t * in + j)])));
      for (int64_t o = 0; o < o1; ++o) w = std::max(w, static_cast<double>(std::fabs(W1[static_cast<size_t>(o * in + j)])));
      for (int64_t o = 0; o < o2; ++o) w = std::max(w, static_cast<double>(std::fabs(W2[static_cast<size_t>(o * in + j)])));
      const double expect = std::pow(a, alpha) / std::pow(w, 1 - alpha);
      EXPECT_NEAR(s[static_cast<size_t>(j)], expect, 1e-6 * expect);
      if (alpha == 0.5) {  // max|X_j| / s_j = max|W_j| s_j = sqrt(max|X_j| max|W_j|)
        EXPECT_NEAR(a / s[static_cast<size_t>(j)], std::sqrt(a * w), 1e-6 * std::sqrt(a * w));
        EXPECT_NEAR(w * s[static_cast<size_t>(j)], std::sqrt(a * w), 1e-6 * std::sqrt(a * w));
      }
    }
  }
  // A channel that never fires: s = 1e-5 (smooth.py's clamp), never 0 or NaN.
  vecf amax = st.absmax;
  amax[3] = 0;
  EXPECT_EQ(smoothquant_scales(amax.data(), in, layers)[3], 1e-5f);
}

TEST(SmoothQuant, TransformPreservesOutputs) {
  const int64_t n = 64, in = 128, out = 48;
  const vecf X = outlier_inputs(n, in, 111);
  const vecf W = normal(out * in, 112);
  channel_stats st(in);
  st.add(X.data(), n);
  const vecf s = smoothquant_scales(st.absmax.data(), in, {{W.data(), out}});
  // float64: X diag(1/s) (W diag(s))^T == X W^T to 1e-12 relative.
  double worst64 = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double y = 0, ys = 0, mag = 0;
      for (int64_t j = 0; j < in; ++j) {
        const double x = X[static_cast<size_t>(t * in + j)], w = W[static_cast<size_t>(o * in + j)], sj = s[static_cast<size_t>(j)];
        y += x * w;
        ys += (x / sj) * (w * sj);
        mag += std::fabs(x * w);
      }
      worst64 = std::max(worst64, std::fabs(ys - y) / mag);
    }
  EXPECT_LT(worst64, 1e-12);
  // float32 operands (what the engine stores): each product off by at most ~2 roundings.
  vecf Xs = X, Ws = W;
  divide_columns(Xs.data(), n, in, s.data());
  scale_columns(Ws.data(), out, in, s.data());
  const double worst32 = max_relative_output_change(X, W, Xs, Ws, n, in, out);
  std::printf("  max relative output change: float64 %.3g, float32 operands %.3g (2^-23 = %.3g)\n", worst64, worst32,
              std::ldexp(1.0, -23));
  EXPECT_LT(worst32, 4 * std::ldexp(1.0, -24));
  // The norm weight absorbs 1/s: norm_w' = norm_w / s, a one-row divide_columns.
  vecf norm_w(static_cast<size_t>(in), 1.0f);
  divide_columns(norm_w.data(), 1, in, s.data());
  for (int64_t j = 0; j < in; ++j) EXPECT_EQ(norm_w[static_cast<size_t>(j)], 1.0f / s[static_cast<size_t>(j)]);
}

// ---- AWQ -----------------------------------------------------------------------------------------

TEST(Awq, ScalesAloneArePreservingAndRatioZeroIsRtn) {
  const int64_t n = 256, in = 128, out = 64;
  const vecf X = outlier_inputs(n, in, 121);
  const vecf W = normal(out * in, 122);
  const format f = parse_format("int4/g32");
  const awq_result r = awq_search_scale(X.data(), n, in, {{W.data(), out}}, f);
  ASSERT_EQ(r.ratio_loss.size(), 20u);
  EXPECT_GT(r.ratio, 0.0);  // outlier channels: some protection pays
  vecf Xs = X, Ws = W;
  divide_columns(Xs.data(), n, in, r.scales.data());
  scale_columns(Ws.data(), out, in, r.scales.data());
  EXPECT_LT(max_relative_output_change(X, W, Xs, Ws, n, in, out), 4 * std::ldexp(1.0, -24));
  // s normalised so that max(s) min(s) = 1.
  const auto [mn, mx] = std::minmax_element(r.scales.begin(), r.scales.end());
  EXPECT_NEAR(static_cast<double>(*mn) * *mx, 1.0, 1e-6);
  // n_grid 1 tries only r = 0: s = 1, and without clipping AWQ is RTN bit for bit.
  awq_options o;
  o.n_grid = 1;
  o.clip = false;
  const awq_result r0 = awq_quantize(X.data(), n, in, {{W.data(), out}}, f, o);
  EXPECT_EQ(r0.ratio, 0.0);
  for (const float v : r0.scales) EXPECT_EQ(v, 1.0f);
  EXPECT_TRUE(bit_equal(r0.layers[0].weights, rtn_quantize(W.data(), out, in, f)));
  // The loss of r = 0 is RTN's mean squared output error.
  const vecf Q = rtn_quantize(W.data(), out, in, f);
  EXPECT_NEAR(r.ratio_loss[0], output_error_ref(X, n, in, W.data(), Q.data(), out) / (n * out), 1e-4 * r.ratio_loss[0]);
}

// auto_clip written out directly: for every candidate, clamp, fake-quantize the whole weight, and
// each group's share of the output over every stride-th token, in float64. Our choice must be a
// minimiser of this error (ties and float32 sums allow a hair).
TEST(Awq, ClipSearchMatchesDirectReference) {
  struct config {
    const char* spec;
    int64_t n;  // 600 tokens: every token (stride 1) with Gram matrices; 100: direct path for /c
  };
  for (const config c : {config{"int4/g32", 600}, config{"int3/g32", 1100}, config{"int4/c", 100}}) {
    const int64_t in = 128, out = 16;
    const format f = parse_format(c.spec);
    const vecf X = outlier_inputs(c.n, in, 131);
    const vecf W = normal(out * in, 132);
    awq_options o;
    const vecf best = awq_search_clip(X.data(), c.n, W.data(), out, in, f, o);
    const int64_t K = f.gran == granularity::group ? f.group_size : in, gpr = in / K;
    const int64_t stride = std::max<int64_t>(1, c.n / 512);
    ASSERT_EQ(best.size(), static_cast<size_t>(out * gpr));
    vecd amax(static_cast<size_t>(out * gpr), 0.0);
    for (int64_t r = 0; r < out; ++r)
      for (int64_t j = 0; j < in; ++j)
        amax[static_cast<size_t>(r * gpr + j / K)] = std::max(amax[static_cast<size_t>(r * gpr + j / K)], static_cast<double>(std::fabs(W[static_cast<size_t>(r * in + j)])));
    // err[cand][r, g]
    std::vector<vecd> err;
    std::vector<vecf> maxv;
    for (int i = 0; i < 10; ++i) {
      vecf mv(static_cast<size_t>(out * gpr)), cur(W.size()), q(W.size());
      for (size_t k = 0; k < mv.size(); ++k) mv[k] = static_cast<float>(amax[k]) * static_cast<float>(1.0 - i / 20.0);
      for (int64_t r = 0; r < out; ++r)
        for (int64_t j = 0; j < in; ++j) {
          const float m = mv[static_cast<size_t>(r * gpr + j / K)];
          cur[static_cast<size_t>(r * in + j)] = std::clamp(W[static_cast<size_t>(r * in + j)], -m, m);
        }
      fake_quantize_ref(cur.data(), q.data(), out, in, f);
      vecd e(static_cast<size_t>(out * gpr), 0.0);
      int64_t ns = 0;
      for (int64_t t = 0; t < c.n; t += stride, ++ns)
        for (int64_t r = 0; r < out; ++r)
          for (int64_t g = 0; g < gpr; ++g) {
            double d = 0;
            for (int64_t j = g * K; j < (g + 1) * K; ++j)
              d += static_cast<double>(X[static_cast<size_t>(t * in + j)]) * (static_cast<double>(q[static_cast<size_t>(r * in + j)]) - W[static_cast<size_t>(r * in + j)]);
            e[static_cast<size_t>(r * gpr + g)] += d * d;
          }
      for (double& v : e) v /= static_cast<double>(ns);
      err.push_back(e);
      maxv.push_back(mv);
    }
    int64_t exact = 0;
    for (size_t k = 0; k < best.size(); ++k) {
      double emin = INFINITY, echosen = INFINITY;
      size_t imin = 0;
      for (size_t i = 0; i < err.size(); ++i) {
        if (err[i][k] < emin) {
          emin = err[i][k];
          imin = i;
        }
        if (maxv[i][k] == best[k]) echosen = std::min(echosen, err[i][k]);
      }
      ASSERT_TRUE(std::isfinite(echosen)) << c.spec << ": the chosen max_val is not a candidate";
      EXPECT_LE(echosen, emin * (1 + 1e-4) + 1e-12) << c.spec << " row/group " << k;
      exact += maxv[imin][k] == best[k];
    }
    std::printf("  %-9s clip search: %lld / %zu choices identical to the direct reference\n", c.spec,
                static_cast<long long>(exact), best.size());
  }
}

TEST(Awq, BeatsRtnWithOutlierChannels) {
  const int64_t n = 512, in = 256, o1 = 96, o2 = 64;
  const vecf X = outlier_inputs(n, in, 141);
  const vecf Xtest = outlier_inputs(n, in, 141, 1);  // held out, same distribution
  const vecf W1 = normal(o1 * in, 142), W2 = normal(o2 * in, 143);
  const std::vector<linear_weight> layers = {{W1.data(), o1}, {W2.data(), o2}};
  for (const char* spec : {"int4/g32", "int3/g32", "e2m1/g32"}) {
    const format f = parse_format(spec);
    for (const bool clip : {false, true}) {
      awq_options o;
      o.clip = clip;
      const awq_result r = awq_quantize(X.data(), n, in, layers, f, o);
      double e_awq[2] = {0, 0}, e_rtn[2] = {0, 0};  // calibration, held out
      for (int d = 0; d < 2; ++d) {
        const vecf& Xd = d == 0 ? X : Xtest;
        vecf Xs = Xd;
        divide_columns(Xs.data(), n, in, r.scales.data());
        for (size_t l = 0; l < layers.size(); ++l) {
          const int64_t out = layers[l].out;
          // (X / s) Q^T against X W^T
          vecf Y(static_cast<size_t>(n * out)), Yq(Y.size());
          matmul_nt(Xd.data(), layers[l].w, Y.data(), n, in, out);
          matmul_nt(Xs.data(), r.layers[l].weights.data(), Yq.data(), n, in, out);
          for (size_t i = 0; i < Y.size(); ++i) e_awq[d] += (static_cast<double>(Y[i]) - Yq[i]) * (static_cast<double>(Y[i]) - Yq[i]);
          const vecf Q = rtn_quantize(layers[l].w, out, in, f);
          e_rtn[d] += output_error(Xd.data(), n, in, layers[l].w, Q.data(), out);
        }
      }
      std::printf("  %-9s clip %d: AWQ/RTN output error %.4f calibration, %.4f held out (ratio r = %.2f)\n", spec, clip,
                  e_awq[0] / e_rtn[0], e_awq[1] / e_rtn[1], r.ratio);
      EXPECT_LE(e_awq[0], e_rtn[0]) << spec << " clip " << clip;
      EXPECT_LT(e_awq[1], e_rtn[1]) << spec << " clip " << clip;
    }
  }
}

// ---- LoRC ----------------------------------------------------------------------------------------

TEST(Lorc, FullRankReproducesWeightAndErrorFallsWithRank) {
  const int64_t out = 48, in = 64;
  const vecf W = normal(out * in, 151);
  const format f = parse_format("int3/g32");
  const vecf Q = rtn_quantize(W.data(), out, in, f);
  double e2 = 0, wmax = 0;
  for (size_t i = 0; i < W.size(); ++i) {
    e2 += (static_cast<double>(W[i]) - Q[i]) * (W[i] - Q[i]);
    wmax = std::max(wmax, static_cast<double>(std::fabs(W[i])));
  }
  const lorc_result full = lorc_compensate(W.data(), Q.data(), out, in, out);
  double maxdiff = 0;
  for (size_t i = 0; i < W.size(); ++i) maxdiff = std::max(maxdiff, std::fabs(static_cast<double>(full.weights[i]) - W[i]));
  EXPECT_LT(maxdiff, 1e-6 * wmax);
  double sv2 = 0;
  for (const double s : full.singular_values) sv2 += s * s;
  EXPECT_NEAR(sv2, e2, 1e-10 * e2);  // ||E||_F^2 = sum sigma^2
  double prev = INFINITY, prev_q = INFINITY;
  for (const int64_t k : {0, 1, 2, 4, 8, 16, 32, 48}) {
    const lorc_result r = lorc_compensate(W.data(), Q.data(), out, in, k);
    double res = 0;
    for (size_t i = 0; i < W.size(); ++i) res += (static_cast<double>(W[i]) - r.weights[i]) * (W[i] - r.weights[i]);
    double tail = 0;  // Eckart-Young: ||E - U_k V_k||_F^2 = sum_{i >= k} sigma_i^2
    for (size_t i = static_cast<size_t>(k); i < full.singular_values.size(); ++i) tail += full.singular_values[i] * full.singular_values[i];
    EXPECT_NEAR(res, tail, 1e-5 * e2) << "rank " << k;
    EXPECT_LT(res, prev) << "rank " << k;
    prev = res;
    // int8 factors: still a steady gain
    lorc_options oq;
    oq.factor_format = parse_format("int8/c");
    const lorc_result rq = lorc_compensate(W.data(), Q.data(), out, in, k, oq);
    double res_q = 0;
    for (size_t i = 0; i < W.size(); ++i) res_q += (static_cast<double>(W[i]) - rq.weights[i]) * (W[i] - rq.weights[i]);
    if (k > 0 && k <= 16) {
      EXPECT_LT(res_q, prev_q) << "rank " << k;
    }
    prev_q = res_q;
    if (k == 8) {
      std::printf("  rank 8 of [%lld, %lld]: ||E||^2 %.4g -> %.4g (float factors), %.4g (int8/c factors)\n",
                  static_cast<long long>(out), static_cast<long long>(in), e2, res, res_q);
    }
  }
}

// The randomized SVD (subspace iteration) against the exact one: it captures nearly all of the
// energy the best rank-k approximation captures.
TEST(Lorc, RandomizedSvdIsNearlyOptimal) {
  const int64_t out = 200, in = 320;
  const vecf W = normal(out * in, 171);
  const vecf Q = rtn_quantize(W.data(), out, in, parse_format("int3/g32"));
  lorc_options ex, rnd;
  ex.svd = lorc_svd::exact;
  rnd.svd = lorc_svd::randomized;
  for (const int64_t k : {4, 16}) {
    const lorc_result a = lorc_compensate(W.data(), Q.data(), out, in, k, ex);
    const lorc_result b = lorc_compensate(W.data(), Q.data(), out, in, k, rnd);
    EXPECT_FALSE(a.randomized);
    EXPECT_TRUE(b.randomized);
    ASSERT_EQ(b.singular_values.size(), static_cast<size_t>(k + 16));
    double e2 = 0, ra = 0, rb = 0;
    for (size_t i = 0; i < W.size(); ++i) {
      e2 += (static_cast<double>(W[i]) - Q[i]) * (W[i] - Q[i]);
      ra += (static_cast<double>(W[i]) - a.weights[i]) * (W[i] - a.weights[i]);
      rb += (static_cast<double>(W[i]) - b.weights[i]) * (W[i] - b.weights[i]);
    }
    const double captured_a = e2 - ra, captured_b = e2 - rb;
    std::printf("  rank %lld of [%lld, %lld]: energy captured exact %.5g, randomized %.5g (%.2f%%); sigma_1 %.5g vs %.5g\n",
                static_cast<long long>(k), static_cast<long long>(out), static_cast<long long>(in), captured_a,
                captured_b, 100 * captured_b / captured_a, a.singular_values[0], b.singular_values[0]);
    EXPECT_GT(captured_b, 0.97 * captured_a);
    EXPECT_LE(captured_b, captured_a * (1 + 1e-9));
    EXPECT_NEAR(b.singular_values[0], a.singular_values[0], 0.01 * a.singular_values[0]);
  }
}

// ---- bias correction -----------------------------------------------------------------------------

TEST(BiasCorrection, RemovesMeanOutputError) {
  const int64_t n = 300, in = 64, out = 40;
  vecf X = normal(n * in, 161);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < in; ++j) X[static_cast<size_t>(t * in + j)] += 0.5f + 0.02f * j;  // a non-zero mean
  const vecf W = normal(out * in, 162), b = normal(out, 163);
  const vecf Q = rtn_quantize(W.data(), out, in, parse_format("int3/g32"));
  const vecf b2 = bias_correction(X.data(), n, in, W.data(), Q.data(), out, b.data());
  double before = 0, after = 0;
  for (int64_t o = 0; o < out; ++o) {
    double m0 = 0, m1 = 0;  // mean over tokens of y_float - y_quant
    for (int64_t t = 0; t < n; ++t) {
      double y = b[static_cast<size_t>(o)], yq0 = b[static_cast<size_t>(o)], yq1 = b2[static_cast<size_t>(o)];
      for (int64_t j = 0; j < in; ++j) {
        y += static_cast<double>(X[static_cast<size_t>(t * in + j)]) * W[static_cast<size_t>(o * in + j)];
        yq0 += static_cast<double>(X[static_cast<size_t>(t * in + j)]) * Q[static_cast<size_t>(o * in + j)];
      }
      yq1 += yq0 - b[static_cast<size_t>(o)];
      m0 += y - yq0;
      m1 += y - yq1;
    }
    before = std::max(before, std::fabs(m0 / n));
    after = std::max(after, std::fabs(m1 / n));
  }
  std::printf("  max |mean output error|: %.4g before, %.4g after\n", before, after);
  EXPECT_LT(after, 1e-5 * before + 1e-6);
}

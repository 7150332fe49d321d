// AdaRound (docs/ptq.md §4.4): the grid neighbours of every format, the relaxed problem's optimum
// against an independent box-constrained QP solve (lambda = 0), hardening onto the format's grid,
// and the reconstruction loss against RTN's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/ptq/ptq.hpp"
#include "tests/ptq/random_inputs.hpp"

using namespace lowbit;
using namespace lowbit::ptq;

namespace {

using vecf = std::vector<float>;
using vecd = std::vector<double>;
using lowbit::test::normal;

// C = X^T X / n in float64 for X = Z A (correlated channels, A = I + N(0, mix^2 / in)).
vecd second_moment(int64_t n, int64_t in, uint64_t seed, float mix = 0.7f) {
  const vecf Z = normal(n * in, seed);
  vecf A = normal(in * in, seed + 1, mix / std::sqrt(float(in)));
  for (int64_t i = 0; i < in; ++i) A[i * in + i] += 1.0f;
  vecd X(n * in, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < in; ++k)
      for (int64_t j = 0; j < in; ++j) X[t * in + j] += double(Z[t * in + k]) * A[k * in + j];
  vecd C(in * in, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t j = 0; j < in; ++j) C[i * in + j] += X[t * in + i] * X[t * in + j] / double(n);
  return C;
}

// x = A^-1 b for a small dense A [k, k] (Gaussian elimination with partial pivoting, float64).
vecd solve(vecd A, vecd b) {
  const int64_t k = int64_t(b.size());
  for (int64_t c = 0; c < k; ++c) {
    int64_t p = c;
    for (int64_t r = c + 1; r < k; ++r)
      if (std::fabs(A[r * k + c]) > std::fabs(A[p * k + c])) p = r;
    for (int64_t j = 0; j < k; ++j) std::swap(A[c * k + j], A[p * k + j]);
    std::swap(b[c], b[p]);
    for (int64_t r = c + 1; r < k; ++r) {
      const double m = A[r * k + c] / A[c * k + c];
      for (int64_t j = c; j < k; ++j) A[r * k + j] -= m * A[c * k + j];
      b[r] -= m * b[c];
    }
  }
  vecd x(k);
  for (int64_t r = k - 1; r >= 0; --r) {
    double v = b[r];
    for (int64_t j = r + 1; j < k; ++j) v -= A[r * k + j] * x[j];
    x[r] = v / A[r * k + r];
  }
  return x;
}

double trace_loss(const vecf& W, const vecf& Q, const vecd& C, int64_t out, int64_t in) {
  double l = 0;
  for (int64_t r = 0; r < out; ++r)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t j = 0; j < in; ++j)
        l += (double(W[r * in + i]) - Q[r * in + i]) * C[i * in + j] * (double(W[r * in + j]) - Q[r * in + j]);
  return l;
}

// The exact minimiser of (r - diag(d) h)^T C (r - diag(d) h) over h in [0, 1]^n (a convex QP):
// every assignment of each coordinate to {free, 0, 1}, the free ones from the stationarity
// equations, the feasible candidate with the least objective (the optimum is one of them).
vecd box_qp(const vecd& r, const vecd& d, const vecd& C) {
  const int n = int(r.size());
  vecd P(n * n), q(n, 0.0);  // objective h^T P h - 2 q^T h + const
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) P[i * n + j] = d[i] * C[i * n + j] * d[j], q[i] += d[i] * C[i * n + j] * r[j];
  auto objective = [&](const vecd& h) {
    double f = 0;
    for (int i = 0; i < n; ++i) {
      f -= 2 * q[i] * h[i];
      for (int j = 0; j < n; ++j) f += h[i] * P[i * n + j] * h[j];
    }
    return f;
  };
  vecd best;
  double best_f = INFINITY;
  int total = 1;
  for (int i = 0; i < n; ++i) total *= 3;
  for (int code = 0; code < total; ++code) {
    std::vector<int> state(n), free;
    vecd h(n, 0.0);
    bool skip = false;
    for (int i = 0, c = code; i < n; ++i, c /= 3) {
      state[i] = c % 3;
      if (d[i] == 0 && state[i] != 1) skip = true;  // a fixed weight: h = 0, no variable
      if (state[i] == 0) free.push_back(i);
      else h[i] = state[i] == 2 ? 1.0 : 0.0;
    }
    if (skip) continue;
    if (!free.empty()) {
      const int k = int(free.size());
      vecd A(k * k), b(k);
      for (int a = 0; a < k; ++a) {
        b[a] = q[free[a]];
        for (int i = 0; i < n; ++i)
          if (state[i] != 0) b[a] -= P[free[a] * n + i] * h[i];
        for (int c = 0; c < k; ++c) A[a * k + c] = P[free[a] * n + free[c]];
      }
      const vecd x = solve(A, b);
      bool feasible = true;
      for (int a = 0; a < k; ++a) feasible = feasible && x[a] >= 0 && x[a] <= 1, h[free[a]] = x[a];
      if (!feasible) continue;
    }
    const double f = objective(h);
    if (f < best_f) best_f = f, best = h;
  }
  return best;
}

TEST(AdaRound, GridNeighboursEncloseTheWeightInEveryFormat) {
  const int64_t out = 8, in = 256;
  const vecf W = normal(out * in, 11, 0.05f);
  for (const char* spec : {"int4/g32", "int3/g32", "e2m1/g32", "mxfp4", "nvfp4", "uint4/g32", "pow0.5(int4/g32)",
                           "e4m3fn", "int8/c", "q4_0", "q4_1", "q5_0", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"}) {
    const format f = parse_format(spec);
    const quantized_tensor q = quantize(W.data(), out, in, f);
    vecf rtn(out * in);
    dequantize(q, rtn.data());
    int64_t enclosed = 0;
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c = 0; c < in; ++c) {
        const float w = W[r * in + c];
        const group_scale gs = f.gran == granularity::none ? group_scale{} : stored_group_scale(q, r, c);
        const grid_pair p = grid_neighbours(f, w, gs, q.code(r, c));
        // Both are values of the format under the group's scale, with these codes.
        EXPECT_EQ(dequantize_value_ref(f, p.code_down, gs), p.down) << spec;
        EXPECT_EQ(dequantize_value_ref(f, p.code_up, gs), p.up) << spec;
        // RTN's value is one of them.
        EXPECT_TRUE(rtn[r * in + c] == p.down || rtn[r * in + c] == p.up) << spec << " " << w;
        if (p.down < p.up) {
          ++enclosed;
          EXPECT_LE(p.down, w) << spec;
          EXPECT_GE(p.up, w) << spec;
          // No value of the format between them: every code's value lies outside (down, up).
          if (f.element.bits <= 8)
            for (uint32_t code = 0; code < (1u << f.element.bits); ++code) {
              const float v = dequantize_value_ref(f, code, gs);
              EXPECT_FALSE(v > p.down && v < p.up) << spec << ": code " << code << " = " << v << " in (" << p.down
                                                   << ", " << p.up << ")";
            }
        }
      }
    EXPECT_GT(enclosed, out * in / 2) << spec;  // most weights lie strictly between two values
  }
}

// lambda = 0: AdaRound's h(V) descends the relaxed reconstruction loss alone, so it ends at the
// relaxed problem's optimum, a box-constrained QP per row solved here exactly by enumeration.
// Without clipping that optimum is W itself (h = the rest of the rounding, where AdaRound starts);
// a percentile scale clips the largest weights of each row onto the grid's end (fixed), and the
// others then move to compensate their error through the correlated inputs, some to a bound.
TEST(AdaRound, WithoutRegulariserReachesTheRelaxedOptimum) {
  const int64_t out = 8, in = 5;
  const format f = parse_format("int3/c@p60");
  int interior = 0, bound = 0;
  const vecd C = second_moment(64, in, 5, 1.5f);
  const vecf W = normal(out * in, 6, 1.0f);
  adaround_options o;
  o.lambda = 0;
  o.iters = 4000;
  o.lr = 3e-3;
  const adaround_result a = adaround_quantize(W.data(), out, in, C.data(), f, o);
  const quantized_tensor q = quantize(W.data(), out, in, f);
  int64_t fixed = 0;
  for (int64_t r = 0; r < out; ++r) {
    vecd res(in), d(in);
    for (int64_t c = 0; c < in; ++c) {
      const grid_pair p = grid_neighbours(f, W[r * in + c], stored_group_scale(q, r, c), q.code(r, c));
      res[c] = double(W[r * in + c]) - p.down;
      d[c] = double(p.up) - p.down;
      fixed += d[c] == 0;
    }
    const vecd h = box_qp(res, d, C);
    for (int64_t c = 0; c < in; ++c) {
      if (d[c] == 0) continue;
      EXPECT_NEAR(a.soft[r * in + c], h[c], 0.02) << "row " << r << " column " << c;
      (h[c] > 1e-6 && h[c] < 1 - 1e-6 ? interior : bound)++;
    }
  }
  EXPECT_GT(fixed, 0);
  EXPECT_GT(interior, 0);  // the case covers both kinds of optimum
  EXPECT_GT(bound, 0);
  // The relaxed loss is at most RTN's (RTN is a point of the box).
  EXPECT_LE(a.soft_loss, a.rtn_loss);
}

// With the regulariser, the result is hard: every weight a value of the format under RTN's scales
// (the codes give it back bit for bit; with the max rule, fake_quantize keeps it), and the
// reconstruction loss it optimises is below RTN's.
TEST(AdaRound, HardensOntoTheGridAndBeatsRoundToNearest) {
  const int64_t out = 32, in = 128;
  const vecd C = second_moment(512, in, 9);
  const vecf W = normal(out * in, 10, 0.05f);
  for (const char* spec : {"int4/g32", "int3/g32", "e2m1/g32", "mxfp4", "q4_0", "q4_k", "pow0.5(int4/g32)"}) {
    const format f = parse_format(spec);
    adaround_options o;
    o.iters = 1000;
    const adaround_result a = adaround_quantize(W.data(), out, in, C.data(), f, o);
    ASSERT_TRUE(a.packed) << spec;
    vecf back(out * in);
    dequantize(*a.packed, back.data());
    EXPECT_EQ(std::memcmp(back.data(), a.weights.data(), back.size() * sizeof(float)), 0) << spec;
    if (std::string(spec) == "int4/g32" || std::string(spec) == "int3/g32" || std::string(spec) == "e2m1/g32" ||
        std::string(spec) == "mxfp4") {
      vecf again(out * in);
      fake_quantize(a.weights.data(), again.data(), out, in, f);
      EXPECT_EQ(std::memcmp(again.data(), a.weights.data(), again.size() * sizeof(float)), 0) << spec;
    }
    // The losses it reports are the trace form, recomputed here in float64.
    const vecf rtn = rtn_quantize(W.data(), out, in, f);
    EXPECT_NEAR(a.rtn_loss, trace_loss(W, rtn, C, out, in), 1e-4 * a.rtn_loss) << spec;
    EXPECT_NEAR(a.loss, trace_loss(W, a.weights, C, out, in), 1e-4 * a.rtn_loss) << spec;
    EXPECT_LT(a.loss, 0.9 * a.rtn_loss) << spec;
    EXPECT_GT(a.flipped, 0) << spec;
    // Hard: the relaxed variables ended (nearly) at 0 or 1.
    int64_t undecided = 0;
    for (const float h : a.soft) undecided += h > 0.1f && h < 0.9f;
    EXPECT_LT(undecided, out * in / 50) << spec;
  }
}

TEST(AdaRound, BadOptionsAreRefused) {
  const vecf W = normal(8, 1);
  const vecd C = {1, 0, 0, 1};
  adaround_options o;
  o.iters = -1;
  EXPECT_THROW(adaround_quantize(W.data(), 4, 2, C.data(), parse_format("int4/c"), o), error);
  o = {};
  o.lambda = -1;
  try {
    adaround_quantize(W.data(), 4, 2, C.data(), parse_format("int4/c"), o);
    FAIL();
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("--adaround-lambda"), std::string::npos) << e.what();
  }
  const vecd bad = {1, NAN, 0, 1};
  EXPECT_THROW(adaround_quantize(W.data(), 4, 2, bad.data(), parse_format("int4/c"), {}), error);
}

}  // namespace

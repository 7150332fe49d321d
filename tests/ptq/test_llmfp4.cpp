// LLM-FP4 (docs/ptq.md §4.6): the joint split + clip search never loses to RTN of the user's format on
// its objective, picks more exponent bits for heavy-tailed weights, returns exact values of a
// format that parses and round-trips; the pre-shifted exponent bias folds into the weights
// without changing the float function (powers of two: bit for bit).
#include <gtest/gtest.h>

#include "tests/ptq/random_inputs.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/ptq/ptq.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"
#include "tests/data.hpp"

using namespace lowbit;
using namespace lowbit::ptq;

namespace {

using vecf = std::vector<float>;

using lowbit::test::normal;

vecf student_t(int64_t n, uint64_t seed, float dof, float sigma) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> d(dof);
  vecf v(static_cast<size_t>(n));
  for (float& x : v) x = sigma * d(rng);
  return v;
}

vecf uniform(int64_t n, uint64_t seed, float a) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-a, a);
  vecf v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// Inputs with a per-channel spread of scales (0.25 .. 4).
vecf inputs(int64_t n, int64_t in, uint64_t seed) {
  vecf X = normal(n * in, seed);
  std::mt19937_64 rng(seed + 1);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (int64_t j = 0; j < in; ++j) {
    const float c = std::exp2(u(rng));
    for (int64_t t = 0; t < n; ++t) X[static_cast<size_t>(t * in + j)] *= c;
  }
  return X;
}

void expect_valid(const llmfp4_result& r, const vecf& W, int64_t out, int64_t in) {
  // The spec parses, names the same format, and prints canonically.
  const format back = parse_format(r.format);
  EXPECT_EQ(back, r.fmt) << r.format;
  EXPECT_EQ(format_name(back), r.format);
  // The weights are the format's values: the codes and scales say so bit for bit.
  ASSERT_EQ(r.packed.fmt, r.fmt) << r.format;
  vecf deq(static_cast<size_t>(out * in));
  dequantize(r.packed, deq.data());
  for (size_t i = 0; i < deq.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint32_t>(deq[i]), std::bit_cast<uint32_t>(r.weights[i])) << r.format << " @" << i;
  // A clipped row is exactly the kernel's RTN of the clamped row (AWQ's apply_clip + fake_quantize),
  // for row scales with the max rule.
  if (r.fmt.gran == granularity::row && r.fmt.rule == scale_rule::max && !r.rtn) {
    vecf w = W, q(W.size());
    std::vector<bool> clipped(static_cast<size_t>(out), false);
    for (int64_t row = 0; row < out; ++row) {
      const float m = r.clip_max[static_cast<size_t>(row)];
      float amax = 0;
      for (int64_t c = 0; c < in; ++c) amax = std::max(amax, std::fabs(W[static_cast<size_t>(row * in + c)]));
      if (!(m <= amax)) continue;
      clipped[static_cast<size_t>(row)] = true;
      for (int64_t c = 0; c < in; ++c) w[static_cast<size_t>(row * in + c)] = std::clamp(w[static_cast<size_t>(row * in + c)], -m, m);
    }
    fake_quantize(w.data(), q.data(), out, in, r.fmt);  // tensor id 0, as llmfp4_options
    for (int64_t row = 0; row < out; ++row) {
      if (!clipped[static_cast<size_t>(row)]) continue;
      for (int64_t c = 0; c < in; ++c)
        ASSERT_EQ(q[static_cast<size_t>(row * in + c)], r.weights[static_cast<size_t>(row * in + c)]) << row;
    }
  }
}

}  // namespace

TEST(LlmFp4, SplitCandidates) {
  EXPECT_EQ(llmfp4_splits(parse_format("e2m1/c")), (std::vector<std::string>{"e2m1/c", "e1m2/c", "e3m0/c"}));
  // 8 bit: the user's e4m3fn first, then every split the engine accepts (all-finite variants).
  const auto s8 = llmfp4_splits(parse_format("e4m3/c"));
  EXPECT_EQ(s8, (std::vector<std::string>{"e4m3fn/c", "e1m6/c", "e2m5/c", "e3m4/c", "e4m3finite/c", "e5m2finite/c",
                                          "e6m1/c", "e7m0/c"}));
  const auto p8 = llmfp4_splits(parse_format("e4m3/c"), true);  // the repo: M in 2..6
  EXPECT_EQ(p8, (std::vector<std::string>{"e4m3fn/c", "e1m6/c", "e2m5/c", "e3m4/c", "e4m3finite/c", "e5m2finite/c"}));
  EXPECT_EQ(llmfp4_splits(parse_format("e2m1/g32:e8m0")),
            (std::vector<std::string>{"e2m1/g32:e8m0", "e1m2/g32:e8m0", "e3m0/g32:e8m0"}));
  for (const auto& s : s8) EXPECT_EQ(format_name(parse_format(s)), s);
  for (const char* bad : {"int4/c", "nvfp4", "nf4", "pow0.5(e2m1/c)"})
    EXPECT_THROW(llmfp4_splits(parse_format(bad)), error) << bad;
}

// The objective of the search is never worse than RTN of the user's format (RTN is a candidate),
// on every granularity and scale kind; the result is a set of values of a real format.
TEST(LlmFp4, NeverWorseThanRtn) {
  const int64_t out = 48, in = 128;
  const vecf W = normal(out * in, 11, 0.02f);
  struct layer {
    const char* fmt;
    int64_t n;
  };
  for (const layer& L : {layer{"e2m1/c", 256}, layer{"e2m1/c", 96}, layer{"e2m1/g32:e8m0", 256},
                         layer{"e2m1/g16:e4m3", 256}, layer{"e2m1/g48", 256},
                         layer{"e2m1/c~sr:7", 256}, layer{"e2m1/c@mse", 256}, layer{"e2m1/t", 256},
                         layer{"e2m1", 256}, layer{"e3m2/c", 256}, layer{"e4m3/c", 256}}) {
    const vecf X = inputs(L.n, in, 5);
    const format f = parse_format(L.fmt);
    const llmfp4_result r = llmfp4_quantize(X.data(), L.n, in, W.data(), out, f);
    const vecf rtn = rtn_quantize(W.data(), out, in, f);
    const double e_rtn = output_error(X.data(), L.n, in, W.data(), rtn.data(), out);
    // The same output_error of the same operands, bit for bit: its products are tiles fixed by the
    // shape (conventions §47), so neither the thread count nor the load moves them.
    EXPECT_EQ(r.rtn_error, e_rtn) << L.fmt;
    EXPECT_LE(r.error, e_rtn) << L.fmt;
    EXPECT_EQ(r.error, output_error(X.data(), L.n, in, W.data(), r.weights.data(), out)) << L.fmt;
    std::printf("[llmfp4] %-14s n=%3lld  chosen %-16s  error/RTN = %.4f\n", L.fmt, static_cast<long long>(L.n),
                r.format.c_str(), r.error / e_rtn);
    expect_valid(r, W, out, in);
  }
}

// Heavy tails want range (exponent bits), near-uniform weights want resolution (mantissa bits).
TEST(LlmFp4, HeavyTailsGetMoreExponentBits) {
  const int64_t out = 48, in = 128, n = 256;
  const vecf X = inputs(n, in, 21);
  const format f = parse_format("e2m1/c");
  const vecf heavy = student_t(out * in, 31, 2.0f, 0.02f), flat = uniform(out * in, 32, 0.03f);
  const llmfp4_result rh = llmfp4_quantize(X.data(), n, in, heavy.data(), out, f);
  const llmfp4_result rf = llmfp4_quantize(X.data(), n, in, flat.data(), out, f);
  for (const auto* r : {&rh, &rf}) {
    std::printf("[llmfp4] %s weights -> %s (error/RTN %.4f);", r == &rh ? "Student-t(2)" : "uniform", r->format.c_str(),
                r->error / r->rtn_error);
    for (const auto& s : r->splits) std::printf(" %s %.4g", s.format.c_str(), s.error);
    std::printf("\n");
  }
  EXPECT_GT(rh.fmt.element.ebits, rf.fmt.element.ebits);
  EXPECT_EQ(rh.format, "e3m0/c");
  EXPECT_EQ(rf.format, "e1m2/c");
  EXPECT_LT(rh.error, rh.rtn_error);
  EXPECT_LT(rf.error, rf.rtn_error);
}

// Without a scale (a plain cast) the search is over integer exponent biases, written in the spec.
TEST(LlmFp4, PlainCastSearchesTheBias) {
  const int64_t out = 32, in = 64, n = 128;
  const vecf W = normal(out * in, 41, 0.02f), X = inputs(n, in, 42);
  const llmfp4_result r = llmfp4_quantize(X.data(), n, in, W.data(), out, parse_format("e2m1"));
  EXPECT_NE(r.format.find("bias="), std::string::npos) << r.format;  // 0.02-scale weights: not bias 1
  EXPECT_LT(r.error, 0.1 * r.rtn_error);  // e2m1's own grid (0.5 .. 6) flushes them all to 0
  expect_valid(r, W, out, in);
  vecf q(W.size());
  fake_quantize(W.data(), q.data(), out, in, r.fmt);
  EXPECT_EQ(q, r.weights);
}

TEST(LlmFp4, PreshiftRhoAndExactFold) {
  // rho_j = clamp(round(b_j) - round(b_t), 0, 2^E - 1) with b_j = 2^E - log2(m_j) + log2(2 - 2^-M) - 1.
  const vecf absmax = {8.0f, 4.0f, 1.0f, 0.5f, 0.01f, 0.0f, 6.0f};
  const auto p = llmfp4_preshift(absmax.data(), int64_t(absmax.size()), parse_format("e2m1").element);
  const double c = 4 + std::log2(1.5) - 1;
  EXPECT_DOUBLE_EQ(p.tensor_bias, c - 3);
  // b = c - log2 m: 0.585, 1.585, 3.585, 4.585, 10.23, -, 1.0 -> round 1, 2, 4, 5, 10, -, 1; b_t = 0.585
  EXPECT_EQ(p.rho, (std::vector<int>{0, 1, 3, 3, 3, 0, 0}));
  for (size_t j = 0; j < absmax.size(); ++j) EXPECT_EQ(p.scales[j], std::ldexp(1.0f, -p.rho[j]));
  EXPECT_TRUE(std::isnan(p.channel_bias[5]));

  // The fold W[:, j] *= 2^-rho_j, X[:, j] /= 2^-rho_j is exact: the same float32 outputs bit for bit.
  const int64_t n = 64, in = 96, out = 40;
  vecf X = inputs(n, in, 51);
  const vecf W = normal(out * in, 52, 0.05f);
  channel_stats st(in);
  st.add(X.data(), n);
  const auto q = llmfp4_preshift(st.absmax.data(), in, parse_format("e2m1").element);
  EXPECT_GT(*std::max_element(q.rho.begin(), q.rho.end()), 0);
  vecf Ws = W, Xs = X;
  scale_columns(Ws.data(), out, in, q.scales.data());
  divide_columns(Xs.data(), n, in, q.scales.data());
  vecf Y(n * out), Ys(n * out);
  matmul_nt(X.data(), W.data(), Y.data(), n, in, out);
  matmul_nt(Xs.data(), Ws.data(), Ys.data(), n, in, out);
  for (size_t i = 0; i < Y.size(); ++i) ASSERT_EQ(std::bit_cast<uint32_t>(Y[i]), std::bit_cast<uint32_t>(Ys[i])) << i;
  // After the shift every channel not at the clamp has its max within a factor 2 of the largest
  // channel's: |b_j - b_t - rho_j| < 1.
  channel_stats st2(in);
  st2.add(Xs.data(), n);
  const float top = *std::max_element(st.absmax.begin(), st.absmax.end());
  for (int64_t j = 0; j < in; ++j)
    if (q.rho[j] < 3) {
      EXPECT_GT(st2.absmax[j], top / 2) << j;
      EXPECT_LT(st2.absmax[j], top * 2) << j;
    }
}

// The pipeline: method "llmfp4" searches every layer, pre-shifts the norm-fed groups (the norms
// change, the float function does not: fp32 weights keep the logits bit for bit) and beats RTN.
TEST(LlmFp4, PipelineOnStories260K) {
  EXPECT_EQ(parse_method("llmfp4"), method::llmfp4);
  EXPECT_STREQ(method_name(method::llmfp4), "llmfp4");
  const std::string dir = lowbit_test::data_dir();
  const model base = load_llama2c(dir + "/llama2c/stories260K.bin");
  std::ifstream tin(dir + "/text/tinystories_val_sample.txt");
  std::stringstream ss;
  ss << tin.rdbuf();
  auto ids = encode_documents(*load_llama2c_tokenizer(dir + "/llama2c/tok512.bin"), ss.str());
  ids.resize(40000);
  auto logits = [&](const model& m) {
    forward_session s(m, {}, 64);
    return s.forward(ids.data(), 64);
  };
  quantize_options o;
  o.how = method::llmfp4;
  o.calib_samples = 8;
  o.calib_ctx = 128;
  o.llmfp4_preshift = true;

  o.weights = parse_format("fp32");
  model m32 = base;
  quantize_model(m32, ids, o);
  EXPECT_NE(m32.get("blk.0.attn_norm.weight").data, base.get("blk.0.attn_norm.weight").data);
  EXPECT_NE(m32.get("blk.0.ffn_norm.weight").data, base.get("blk.0.ffn_norm.weight").data);
  EXPECT_EQ(m32.get("blk.0.ffn_down.weight").data, base.get("blk.0.ffn_down.weight").data);
  const vecf a = logits(base), b = logits(m32);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;

  o.weights = parse_format("e2m1/c");
  model m4 = base;
  const auto rep = quantize_model(m4, ids, o);
  ASSERT_EQ(rep.layers.size(), 35u);
  double err = 0, rtn_err = 0;
  for (const auto& l : rep.layers) err += l.error, rtn_err += l.rtn_error;
  std::printf("[llmfp4] stories260K e2m1/c: sum of layer errors / RTN = %.4f\n", err / rtn_err);
  EXPECT_LT(err, rtn_err);
  EXPECT_EQ(rep.packed.size(), 35u);
  for (const auto& [name, q] : rep.packed) {
    vecf back(q.rows * q.cols);
    dequantize(q, back.data());
    EXPECT_EQ(back, m4.get(name).data) << name;
  }
}

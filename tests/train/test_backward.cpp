// Gradient checks: the trainer's float32 backward against central finite differences of an
// independent float64 forward written here (Llama: RMSNorm or L1 norm, interleaved RoPE,
// grouped-query causal attention, SwiGLU; GPT-2: LayerNorm, learned positions, fused qkv, GELU
// tanh, biases on every linear; tied or separate classifier, mean cross-entropy), for every
// parameter tensor of every layer; and the element-wise layers one by one.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include "tests/cli_run.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/train.hpp"
#include "lowbit/io/model_io.hpp"
#include "src/engine/layers.hpp"

namespace lowbit {
namespace {

// ---- an independent float64 reference ----------------------------------------------------------

struct ref_model {
  model_config c;
  bool l1 = false;
  std::map<std::string, std::vector<double>> w;
  const std::vector<double>& at(const std::string& n) const { return w.at(n); }
};

ref_model to_ref(const train_model& m, bool l1) {
  ref_model r;
  r.c = m.config();
  r.l1 = l1;
  for (const auto& v : m.views())
    r.w[v.name] = std::vector<double>(m.params().begin() + v.offset, m.params().begin() + v.offset + v.size);
  return r;
}

std::vector<double> ref_norm(const std::vector<double>& x, const std::vector<double>& g, int n, int d,
                             double eps, bool l1) {
  std::vector<double> y(x.size());
  for (int i = 0; i < n; ++i) {
    double s = 0;
    for (int j = 0; j < d; ++j) s += l1 ? std::fabs(x[i * d + j]) : x[i * d + j] * x[i * d + j];
    const double inv = l1 ? 1.0 / (std::sqrt(M_PI / 2) * s / d + eps) : 1.0 / std::sqrt(s / d + eps);
    for (int j = 0; j < d; ++j) y[i * d + j] = g[j] * x[i * d + j] * inv;
  }
  return y;
}

// LayerNorm: (x - mean) / sqrt(var + eps) * g + b per row.
std::vector<double> ref_layernorm(const std::vector<double>& x, const std::vector<double>& g,
                                  const std::vector<double>& b, int n, int d, double eps) {
  std::vector<double> y(x.size());
  for (int i = 0; i < n; ++i) {
    double mean = 0, var = 0;
    for (int j = 0; j < d; ++j) mean += x[i * d + j];
    mean /= d;
    for (int j = 0; j < d; ++j) var += (x[i * d + j] - mean) * (x[i * d + j] - mean);
    const double inv = 1.0 / std::sqrt(var / d + eps);
    for (int j = 0; j < d; ++j) y[i * d + j] = (x[i * d + j] - mean) * inv * g[j] + b[j];
  }
  return y;
}

double ref_gelu(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

// y[n, out] = x[n, in] W[out, in]^T (+ bias[out])
std::vector<double> ref_linear(const std::vector<double>& x, const std::vector<double>& W, int n, int in,
                               int out, const std::vector<double>* bias = nullptr) {
  std::vector<double> y(size_t(n) * out);
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < out; ++o) {
      double s = bias ? (*bias)[o] : 0.0;
      for (int k = 0; k < in; ++k) s += x[i * in + k] * W[size_t(o) * in + k];
      y[i * out + o] = s;
    }
  return y;
}

// Mean cross-entropy over batch x ctx tokens.
double ref_loss(const ref_model& m, const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int B,
                int T) {
  const auto& c = m.c;
  const int D = c.dim, H = c.n_heads, hd = D / H, nkv = c.n_kv_heads, KV = nkv * hd, F = c.hidden_dim,
            V = c.vocab_size, N = B * T;
  const bool gpt2 = c.arch == architecture::gpt2;
  auto norm = [&](const std::vector<double>& x, const std::string& name) {
    return gpt2 ? ref_layernorm(x, m.at(name + ".weight"), m.at(name + ".bias"), N, D, c.norm_eps)
                : ref_norm(x, m.at(name + ".weight"), N, D, c.norm_eps, m.l1);
  };
  auto bias = [&](const std::string& name) { return gpt2 ? &m.at(name) : nullptr; };
  std::vector<double> x(size_t(N) * D);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < D; ++j)
      x[i * D + j] = m.at("token_embd.weight")[size_t(in[i]) * D + j] +
                     (gpt2 ? m.at("position_embd.weight")[size_t(i % T) * D + j] : 0.0);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    auto n1 = norm(x, b + "attn_norm");
    std::vector<double> q, k, v;
    if (gpt2) {
      auto qkv = ref_linear(n1, m.at(b + "attn_qkv.weight"), N, D, 3 * D, bias(b + "attn_qkv.bias"));
      q.resize(size_t(N) * D), k.resize(size_t(N) * D), v.resize(size_t(N) * D);
      for (int i = 0; i < N; ++i)
        for (int j = 0; j < D; ++j) {
          q[i * D + j] = qkv[size_t(i) * 3 * D + j];
          k[i * D + j] = qkv[size_t(i) * 3 * D + D + j];
          v[i * D + j] = qkv[size_t(i) * 3 * D + 2 * D + j];
        }
    } else {
      q = ref_linear(n1, m.at(b + "attn_q.weight"), N, D, D);
      k = ref_linear(n1, m.at(b + "attn_k.weight"), N, D, KV);
      v = ref_linear(n1, m.at(b + "attn_v.weight"), N, D, KV);
    }
    auto rot = [&](std::vector<double>& t, int heads, int stride) {
      for (int i = 0; i < N; ++i) {
        const int pos = i % T;
        for (int h = 0; h < heads; ++h)
          for (int p = 0; p < hd / 2; ++p) {
            const double a = pos * std::pow(double(c.rope_theta), -2.0 * p / hd);
            double& u = t[i * stride + h * hd + 2 * p];
            double& w = t[i * stride + h * hd + 2 * p + 1];
            const double u0 = u, w0 = w;
            u = u0 * std::cos(a) - w0 * std::sin(a);
            w = u0 * std::sin(a) + w0 * std::cos(a);
          }
      }
    };
    if (!gpt2) rot(q, H, D), rot(k, nkv, KV);
    std::vector<double> o(size_t(N) * D, 0.0);
    for (int bi = 0; bi < B; ++bi)
      for (int h = 0; h < H; ++h) {
        const int kh = h / (H / nkv);
        for (int i = 0; i < T; ++i) {
          std::vector<double> s(i + 1);
          double mx = -1e300;
          for (int t = 0; t <= i; ++t) {
            double d = 0;
            for (int e = 0; e < hd; ++e)
              d += q[(bi * T + i) * D + h * hd + e] * k[(bi * T + t) * KV + kh * hd + e];
            s[t] = d / std::sqrt(double(hd));
            mx = std::max(mx, s[t]);
          }
          double sum = 0;
          for (auto& e : s) sum += (e = std::exp(e - mx));
          for (int t = 0; t <= i; ++t)
            for (int e = 0; e < hd; ++e)
              o[(bi * T + i) * D + h * hd + e] += s[t] / sum * v[(bi * T + t) * KV + kh * hd + e];
        }
      }
    auto y = ref_linear(o, m.at(b + "attn_output.weight"), N, D, D, bias(b + "attn_output.bias"));
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    auto n2 = norm(x, b + "ffn_norm");
    std::vector<double> g;
    if (gpt2) {
      g = ref_linear(n2, m.at(b + "ffn_up.weight"), N, D, F, bias(b + "ffn_up.bias"));
      for (auto& e : g) e = ref_gelu(e);
    } else {
      g = ref_linear(n2, m.at(b + "ffn_gate.weight"), N, D, F);
      auto u = ref_linear(n2, m.at(b + "ffn_up.weight"), N, D, F);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
    }
    auto f = ref_linear(g, m.at(b + "ffn_down.weight"), N, F, D, bias(b + "ffn_down.bias"));
    for (size_t i = 0; i < x.size(); ++i) x[i] += f[i];
  }
  auto nf = norm(x, "output_norm");
  auto z = ref_linear(nf, c.tied_classifier ? m.at("token_embd.weight") : m.at("output.weight"), N, D, V);
  double loss = 0;
  for (int i = 0; i < N; ++i) {
    double mx = -1e300, sum = 0;
    for (int j = 0; j < V; ++j) mx = std::max(mx, z[i * V + j]);
    for (int j = 0; j < V; ++j) sum += std::exp(z[i * V + j] - mx);
    loss += std::log(sum) + mx - z[i * V + tg[i]];
  }
  return loss / N;
}

model_config tiny(bool tied) {
  model_config c;
  c.arch = architecture::llama;
  c.dim = 16, c.hidden_dim = 24, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 13;
  c.max_seq_len = 8, c.tied_classifier = tied;
  return c;
}

// GPT-2 of the same size (n_kv_heads == n_heads, hidden 4 dim as the trainer's default).
model_config tiny_gpt2(bool tied) {
  model_config c = tiny(tied);
  c.arch = architecture::gpt2;
  c.n_kv_heads = c.n_heads, c.hidden_dim = 4 * c.dim;
  return c;
}

struct check_result {
  std::map<std::string, double> rel_err;  // per tensor: max |analytic - fd| / max |fd|
};

// Central differences (h = 1e-5 in float64) of the reference loss against the trainer's gradient.
check_result gradient_check(model_config c, bool l1, uint64_t seed) {
  c.l1_norm = l1;
  train_model m(c, seed);
  // Larger than the init's 0.02 so every path carries signal.
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  // (Norm gains near 1, everything else, biases included, N(0, 0.3).)
  for (const auto& v : m.views()) {
    const bool gain = v.shape.size() == 1 && v.name.find(".bias") == std::string::npos;
    for (int64_t i = v.offset; i < v.offset + v.size; ++i)
      m.params()[i] = gain ? 1.0f + 0.2f * nd(rng) : nd(rng);
  }
  const int B = 2, T = 5;
  std::vector<int32_t> in(B * T), tg(B * T);
  for (auto& t : in) t = rng() % c.vocab_size;
  for (auto& t : tg) t = rng() % c.vocab_size;
  const double loss = m.forward_backward(in.data(), tg.data(), B, T, B * T, nullptr, 0) / (B * T);
  ref_model r = to_ref(m, l1);
  EXPECT_NEAR(loss, ref_loss(r, in, tg, B, T), 1e-5);
  check_result out;
  for (const auto& v : m.views()) {
    double max_fd = 0, max_diff = 0;
    for (int64_t i = 0; i < v.size; ++i) {
      auto& w = r.w[v.name][i];
      const double w0 = w, h = 1e-5;
      w = w0 + h;
      const double lp = ref_loss(r, in, tg, B, T);
      w = w0 - h;
      const double lm = ref_loss(r, in, tg, B, T);
      w = w0;
      const double fd = (lp - lm) / (2 * h);
      max_fd = std::max(max_fd, std::fabs(fd));
      max_diff = std::max(max_diff, std::fabs(fd - m.grads()[v.offset + i]));
    }
    out.rel_err[v.name] = max_diff / std::max(max_fd, 1e-12);
  }
  return out;
}

// Every checked tensor's relative error under 2e-3.
void expect_close(const check_result& res) {
  for (const auto& [name, err] : res.rel_err) EXPECT_LT(err, 2e-3) << name;
}

TEST(GradientCheck, EveryParameterOfEveryLayerTiedClassifier) {
  auto res = gradient_check(tiny(true), false, 1);
  EXPECT_EQ(res.rel_err.size(), 1u + 2 * 9 + 1);
  expect_close(res);
}

TEST(GradientCheck, SeparateClassifier) {
  auto res = gradient_check(tiny(false), false, 2);
  EXPECT_TRUE(res.rel_err.count("output.weight"));
  expect_close(res);
}

TEST(GradientCheck, L1Normalization) {
  auto res = gradient_check(tiny(true), true, 3);
  expect_close(res);
}

TEST(GradientCheck, Gpt2EveryParameterOfEveryLayerTiedClassifier) {
  auto res = gradient_check(tiny_gpt2(true), false, 4);
  // token_embd, position_embd, 12 per block, output_norm weight and bias
  EXPECT_EQ(res.rel_err.size(), 2u + 2 * 12 + 2);
  expect_close(res);
}

TEST(GradientCheck, Gpt2SeparateClassifier) {
  auto res = gradient_check(tiny_gpt2(false), false, 5);
  EXPECT_TRUE(res.rel_err.count("output.weight"));
  EXPECT_TRUE(res.rel_err.count("blk.1.attn_qkv.bias"));
  expect_close(res);
}

// GPT-2's parameters: biases and norms are not decayed, init biases 0 and LayerNorm gains 1.
TEST(TrainModel, Gpt2ParametersAndInit) {
  train_model m(tiny_gpt2(true), 3);
  for (const auto& v : m.views()) {
    const bool vec = v.shape.size() == 1;
    EXPECT_EQ(v.decay, !vec) << v.name;
    if (!vec) continue;
    const float want = v.name.find(".bias") != std::string::npos ? 0.0f : 1.0f;
    for (int64_t i = v.offset; i < v.offset + v.size; ++i) ASSERT_EQ(m.params()[i], want) << v.name;
  }
  EXPECT_NO_THROW(m.to_model().validate());
  EXPECT_EQ(int64_t(m.params().size()), m.config().parameter_count());
}

// ---- element-wise layers one by one --------------------------------------------------------------

template <class Fwd>
double fd_dx(Fwd f, std::vector<double> x, const std::vector<double>& dy, int i) {
  const double h = 1e-6;
  x[i] += h;
  auto yp = f(x);
  x[i] -= 2 * h;
  auto ym = f(x);
  double s = 0;
  for (size_t k = 0; k < dy.size(); ++k) s += dy[k] * (yp[k] - ym[k]) / (2 * h);
  return s;
}

TEST(GradientCheck, NormLayersAgainstFiniteDifferences) {
  const int n = 3, d = 8;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> x(n * d), w(d), dy(n * d);
  for (auto& v : x) v = nd(rng);
  for (auto& v : w) v = 1 + 0.3f * nd(rng);
  for (auto& v : dy) v = nd(rng);
  for (bool l1 : {false, true}) {
    std::vector<float> y(n * d), inv(n), dx(n * d, 0.0f);
    std::vector<double> dw(d, 0.0);
    const auto kind = l1 ? layers::norm_kind::l1 : layers::norm_kind::rms;
    layers::normalize(kind, x.data(), w.data(), y.data(), n, d, 1e-5f, inv.data());
    layers::normalize_backward(kind, x.data(), w.data(), inv.data(), dy.data(), dx.data(), dw.data(), n, d);
    std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), dyd(dy.begin(), dy.end());
    for (int i = 0; i < n * d; ++i) {
      const double fd = fd_dx([&](const std::vector<double>& xx) { return ref_norm(xx, wd, n, d, 1e-5, l1); },
                              xd, dyd, i);
      EXPECT_NEAR(dx[i], fd, 1e-4 * (1 + std::fabs(fd))) << (l1 ? "l1 " : "rms ") << i;
    }
    for (int j = 0; j < d; ++j) {
      const double fd = fd_dx([&](const std::vector<double>& ww) { return ref_norm(xd, ww, n, d, 1e-5, l1); },
                              wd, dyd, j);
      EXPECT_NEAR(dw[j], fd, 1e-4 * (1 + std::fabs(fd))) << j;
    }
  }
}

TEST(GradientCheck, LayerNormAndGeluAgainstFiniteDifferences) {
  const int n = 3, d = 8;
  std::mt19937 rng(6);
  std::normal_distribution<float> nd;
  std::vector<float> x(n * d), w(d), bb(d), dy(n * d);
  for (auto& v : x) v = 0.5f + nd(rng);
  for (auto& v : w) v = 1 + 0.3f * nd(rng);
  for (auto& v : bb) v = 0.3f * nd(rng);
  for (auto& v : dy) v = nd(rng);
  std::vector<float> y(n * d), mean(n), inv(n), dx(n * d, 0.0f);
  std::vector<double> dw(d, 0.0), db(d, 0.0);
  layers::layernorm(x.data(), w.data(), bb.data(), y.data(), n, d, 1e-5f, mean.data(), inv.data());
  layers::layernorm_backward(x.data(), w.data(), mean.data(), inv.data(), dy.data(), dx.data(), dw.data(),
                             db.data(), n, d);
  std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), bd(bb.begin(), bb.end()),
      dyd(dy.begin(), dy.end());
  const auto yr = ref_layernorm(xd, wd, bd, n, d, 1e-5);
  for (int i = 0; i < n * d; ++i) EXPECT_NEAR(y[i], yr[i], 1e-5 * (1 + std::fabs(yr[i])));
  for (int i = 0; i < n * d; ++i) {
    const double fd = fd_dx([&](const std::vector<double>& xx) { return ref_layernorm(xx, wd, bd, n, d, 1e-5); },
                            xd, dyd, i);
    EXPECT_NEAR(dx[i], fd, 1e-4 * (1 + std::fabs(fd))) << i;
  }
  for (int j = 0; j < d; ++j) {
    const double fw = fd_dx([&](const std::vector<double>& ww) { return ref_layernorm(xd, ww, bd, n, d, 1e-5); },
                            wd, dyd, j);
    const double fb = fd_dx([&](const std::vector<double>& b2) { return ref_layernorm(xd, wd, b2, n, d, 1e-5); },
                            bd, dyd, j);
    EXPECT_NEAR(dw[j], fw, 1e-4 * (1 + std::fabs(fw))) << j;
    EXPECT_NEAR(db[j], fb, 1e-4 * (1 + std::fabs(fb))) << j;
  }
  for (float v : {-4.0f, -1.3f, -0.2f, 0.0f, 0.4f, 1.1f, 3.5f}) {
    const double h = 1e-5, fd = (ref_gelu(v + h) - ref_gelu(v - h)) / (2 * h);
    EXPECT_NEAR(layers::gelu_tanh(v), ref_gelu(v), 1e-6) << v;
    EXPECT_NEAR(layers::gelu_tanh_grad(v), fd, 1e-5) << v;
  }
}

TEST(GradientCheck, RopeInverseIsTheTranspose) {
  // rope is orthogonal: <R x, y> = <x, R^-1 y> for every x, y.
  const int n = 6, heads = 2, hd = 8, stride = heads * hd;
  layers::rope_table t(n, hd, 10000.0f);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> x(n * stride), y(n * stride);
  for (auto& v : x) v = nd(rng);
  for (auto& v : y) v = nd(rng);
  auto rx = x, ry = y;
  layers::rope(rx.data(), n, heads, stride, 0, 3, t);
  layers::rope(ry.data(), n, heads, stride, 0, 3, t, true);
  double a = 0, b = 0;
  for (int i = 0; i < n * stride; ++i) a += double(rx[i]) * y[i], b += double(x[i]) * ry[i];
  EXPECT_NEAR(a, b, 1e-4);
  EXPECT_GT(std::fabs(a - [&] { double s = 0; for (int i = 0; i < n * stride; ++i) s += double(x[i]) * y[i]; return s; }()), 1e-3);
}

// The training forward is the inference forward: a sequence's logits equal forward_session's
// (Llama with RMS and L1 normalisation, GPT-2 tied and untied; the L1 flag survives a safetensors
// round trip, and so does a GPT-2).
TEST(TrainModel, ForwardMatchesTheInferenceEngine) {
 for (int variant = 0; variant < 4; ++variant) {
  const bool l1 = variant == 1, gpt2 = variant >= 2;
  model_config c = gpt2 ? tiny_gpt2(variant == 2) : tiny(true);
  c.l1_norm = l1;
  c.dim = 32, c.hidden_dim = 64, c.vocab_size = 40, c.max_seq_len = 16;
  train_model m(c, 9);
  if (gpt2) {  // biases and norms away from their init, so the comparison sees them
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 0.1f);
    for (const auto& v : m.views())
      if (v.shape.size() == 1)
        for (int64_t i = v.offset; i < v.offset + v.size; ++i) m.params()[i] += nd(rng);
  }
  std::vector<int32_t> in(2 * 16), tg(2 * 16);
  for (size_t i = 0; i < in.size(); ++i) in[i] = int32_t((i * 7 + 3) % 40), tg[i] = int32_t(i % 40);
  m.forward_loss(in.data(), tg.data(), 2, 16, nullptr, 0);
  const model mm = m.to_model();
  forward_session s(mm, quant_plan{}, 16);
  const auto& ref = s.forward(in.data() + 16, 16);  // the second sequence
  double max_diff = 0, max_ref = 0;
  for (int i = 0; i < 16 * 40; ++i) {
    max_diff = std::max(max_diff, double(std::fabs(ref[i] - m.logits()[16 * 40 + i])));
    max_ref = std::max(max_ref, double(std::fabs(ref[i])));
  }
  EXPECT_LT(max_diff, 1e-5 * max_ref + 1e-6) << variant;
  if (l1 || gpt2) {
    const auto dir = lowbit::testing::scratch_path("lowbit_l1_model");
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    save_safetensors_model(mm, (dir / "model.safetensors").string());
    const model back = load_model((dir / "model.safetensors").string());
    EXPECT_EQ(back.config.l1_norm, l1);
    EXPECT_EQ(back.config.arch, c.arch);
    if (gpt2) {  // the reloaded GPT-2 gives the same logits
      forward_session s2(back, quant_plan{}, 16);
      const auto& r2 = s2.forward(in.data() + 16, 16);
      for (int i = 0; i < 16 * 40; ++i) ASSERT_NEAR(r2[i], ref[i], 1e-5 * max_ref + 1e-6) << i;
    }
    std::filesystem::remove_all(dir);
  }
 }
}

}  // namespace
}  // namespace lowbit

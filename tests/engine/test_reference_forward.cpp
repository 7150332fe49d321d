// An independent float64 forward pass, written from llama2.c's run.c (Llama) and the GPT-2 paper /
// llm.c (GPT-2), one token at a time with a plain KV cache: the specification that lowbit's
// batched float32 forward (OpenBLAS, OpenMP) is checked against. Logits match when
// max|diff| <= 1e-4 * max|logit| (docs/conventions.md §16); intermediates use the same scheme relative to
// their own largest magnitude.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/text/tokenizer.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"
#include "tests/data.hpp"

namespace {

using vec = std::vector<double>;

// docs/conventions.md §16: float32 vs float64 differ only by accumulation order and rounding.
constexpr double kRelTol = 1e-4;

using lowbit_test::data_dir;

// ---- the float64 reference ------------------------------------------------------------------

// y = W x (+ b), W row-major [out, in].
vec linear(const lowbit::tensor& w, const vec& x, const lowbit::tensor* b = nullptr) {
  const int64_t out = w.rows(), in = w.cols();
  EXPECT_EQ(in, static_cast<int64_t>(x.size()));
  vec y(out);
  for (int64_t r = 0; r < out; ++r) {
    double acc = b ? b->data[r] : 0.0;
    const float* row = w.data.data() + r * in;
    for (int64_t c = 0; c < in; ++c) acc += static_cast<double>(row[c]) * x[c];
    y[r] = acc;
  }
  return y;
}

// llama2.c: x / sqrt(mean(x^2) + eps) * w.
vec rmsnorm(const vec& x, const lowbit::tensor& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w.data[i];
  return y;
}

// (x - mean) / sqrt(var + eps) * w + b, population variance.
vec layernorm(const vec& x, const lowbit::tensor& w, const lowbit::tensor& b, double eps) {
  double mean = 0;
  for (double v : x) mean += v;
  mean /= x.size();
  double var = 0;
  for (double v : x) var += (v - mean) * (v - mean);
  var /= x.size();
  const double inv = 1.0 / std::sqrt(var + eps);
  vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mean) * inv * w.data[i] + b.data[i];
  return y;
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

double gelu_tanh(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

// Interleaved RoPE (llama2.c, GGUF): in each head, the pair (2i, 2i+1) turns by
// pos * theta^(-2i/head_dim).
void rope(vec& v, int n_heads, int head_dim, int pos, double theta) {
  for (int h = 0; h < n_heads; ++h) {
    for (int i = 0; i < head_dim / 2; ++i) {
      const double freq = std::pow(theta, -2.0 * i / head_dim);
      const double a = pos * freq, c = std::cos(a), s = std::sin(a);
      double& x0 = v[h * head_dim + 2 * i];
      double& x1 = v[h * head_dim + 2 * i + 1];
      const double r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
      x0 = r0;
      x1 = r1;
    }
  }
}

struct reference_output {
  std::vector<vec> logits;                        // [n][vocab]
  std::map<std::string, std::vector<vec>> dumps;  // the forward.hpp names, [n][cols]
};

// Runs tokens at positions 0..n-1, one at a time, attending over the cache of earlier positions.
reference_output reference_forward(const lowbit::model& m, const std::vector<int32_t>& tokens) {
  const lowbit::model_config& c = m.config;
  const bool llama = c.arch == lowbit::architecture::llama;
  const int dim = c.dim, nh = c.n_heads, nkv = c.n_kv_heads, hd = dim / nh;
  const int group = nh / nkv;
  const double eps = c.norm_eps;
  const lowbit::tensor& embd = m.get("token_embd.weight");
  const lowbit::tensor& cls = c.tied_classifier ? embd : m.get("output.weight");

  reference_output out;
  auto record = [&](const std::string& name, const vec& v) { out.dumps[name].push_back(v); };
  auto norm = [&](const vec& x, const std::string& prefix) {
    return llama ? rmsnorm(x, m.get(prefix + ".weight"), eps)
                 : layernorm(x, m.get(prefix + ".weight"), m.get(prefix + ".bias"), eps);
  };
  std::vector<std::vector<vec>> k_cache(c.n_layers), v_cache(c.n_layers);  // [layer][pos]

  for (size_t t = 0; t < tokens.size(); ++t) {
    const int pos = static_cast<int>(t);
    vec x(embd.data.begin() + int64_t(tokens[t]) * dim, embd.data.begin() + int64_t(tokens[t] + 1) * dim);
    if (!llama) {
      const lowbit::tensor& wpe = m.get("position_embd.weight");
      for (int i = 0; i < dim; ++i) x[i] += wpe.data[int64_t(pos) * dim + i];
    }
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      const vec xb = norm(x, p + "attn_norm");
      record(p + "attn_norm", xb);

      vec q, k, v;
      if (llama) {
        q = linear(m.get(p + "attn_q.weight"), xb);
        k = linear(m.get(p + "attn_k.weight"), xb);
        v = linear(m.get(p + "attn_v.weight"), xb);
        rope(q, nh, hd, pos, c.rope_theta);
        rope(k, nkv, hd, pos, c.rope_theta);
      } else {
        const vec qkv = linear(m.get(p + "attn_qkv.weight"), xb, m.find(p + "attn_qkv.bias"));
        q.assign(qkv.begin(), qkv.begin() + dim);
        k.assign(qkv.begin() + dim, qkv.begin() + 2 * dim);
        v.assign(qkv.begin() + 2 * dim, qkv.begin() + 3 * dim);
      }
      record(p + "q", q);
      record(p + "k", k);
      record(p + "v", v);
      k_cache[l].push_back(k);
      v_cache[l].push_back(v);

      // Causal attention; query head h reads kv head h / (n_heads / n_kv_heads).
      vec att(nh * hd, 0.0);
      for (int h = 0; h < nh; ++h) {
        const int kh = h / group;
        vec score(pos + 1);
        for (int s = 0; s <= pos; ++s) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[h * hd + i] * k_cache[l][s][kh * hd + i];
          score[s] = d / std::sqrt(static_cast<double>(hd));
        }
        const double mx = *std::max_element(score.begin(), score.end());
        double sum = 0;
        for (double& s : score) sum += (s = std::exp(s - mx));
        for (int s = 0; s <= pos; ++s)
          for (int i = 0; i < hd; ++i) att[h * hd + i] += score[s] / sum * v_cache[l][s][kh * hd + i];
      }
      record(p + "attn", att);
      const vec o = linear(m.get(p + "attn_output.weight"), att, m.find(p + "attn_output.bias"));
      record(p + "attn_out", o);
      for (int i = 0; i < dim; ++i) x[i] += o[i];

      const vec xf = norm(x, p + "ffn_norm");
      record(p + "ffn_norm", xf);
      vec act;
      if (llama) {
        const vec g = linear(m.get(p + "ffn_gate.weight"), xf);
        const vec u = linear(m.get(p + "ffn_up.weight"), xf);
        act.resize(g.size());
        for (size_t i = 0; i < g.size(); ++i) act[i] = silu(g[i]) * u[i];
      } else {
        act = linear(m.get(p + "ffn_up.weight"), xf, m.find(p + "ffn_up.bias"));
        for (double& a : act) a = gelu_tanh(a);
      }
      record(p + "ffn_act", act);
      const vec f = linear(m.get(p + "ffn_down.weight"), act, m.find(p + "ffn_down.bias"));
      record(p + "ffn_out", f);
      for (int i = 0; i < dim; ++i) x[i] += f[i];
      record(p + "out", x);
    }
    const vec xn = norm(x, "output_norm");
    record("output_norm", xn);
    out.logits.push_back(linear(cls, xn));
    record("logits", out.logits.back());
  }
  return out;
}

// ---- comparison ---------------------------------------------------------------------------------

struct diff_stats {
  double max_diff = 0, max_ref = 0;
  double rel() const { return max_diff / max_ref; }
};

// got: row-major [want.size(), cols]. A NaN in got counts as an infinite difference.
diff_stats compare(const float* got, const std::vector<vec>& want) {
  diff_stats d;
  size_t k = 0;
  for (const vec& row : want) {
    for (double w : row) {
      const double diff = std::fabs(static_cast<double>(got[k++]) - w);
      d.max_diff = std::isnan(diff) ? INFINITY : std::max(d.max_diff, diff);
      d.max_ref = std::max(d.max_ref, std::fabs(w));
    }
  }
  return d;
}

void expect_match(const char* what, const diff_stats& d) {
  std::printf("  %-44s max|diff| = %.3g, max|ref| = %.3g, relative %.3g\n", what, d.max_diff,
              d.max_ref, d.rel());
  EXPECT_GT(d.max_ref, 0) << what;
  EXPECT_LE(d.max_diff, kRelTol * d.max_ref) << what;
}

// lowbit's logits for `tokens` run as consecutive chunks of the given sizes through one session.
std::vector<float> run_chunks(const lowbit::model& m, const std::vector<int32_t>& tokens,
                              const std::vector<int>& chunks) {
  lowbit::forward_session s(m, lowbit::quant_plan{}, static_cast<int>(tokens.size()));
  std::vector<float> logits;
  int at = 0;
  for (int n : chunks) {
    EXPECT_EQ(s.pos(), at);
    const std::vector<float>& l = s.forward(tokens.data() + at, n);
    EXPECT_EQ(l.size(), size_t(n) * m.config.vocab_size);
    logits.insert(logits.end(), l.begin(), l.begin() + size_t(n) * m.config.vocab_size);
    at += n;
  }
  EXPECT_EQ(at, static_cast<int>(tokens.size()));
  return logits;
}

// Prefill, two uneven chunks (a batch that starts at pos > 0) and one token at a time must all
// give the reference's logits.
void check_model_logits(const lowbit::model& m, const std::vector<int32_t>& tokens,
                        const std::string& label) {
  const int n = static_cast<int>(tokens.size());
  const reference_output ref = reference_forward(m, tokens);
  expect_match((label + " prefill logits").c_str(), compare(run_chunks(m, tokens, {n}).data(), ref.logits));
  expect_match((label + " chunks 13+rest logits").c_str(),
               compare(run_chunks(m, tokens, {13, n - 13}).data(), ref.logits));
  expect_match((label + " one-by-one logits").c_str(),
               compare(run_chunks(m, tokens, std::vector<int>(n, 1)).data(), ref.logits));
}

std::string eval_vector_path() { return data_dir() + "/vectors/stories260K_eval.json"; }

nlohmann::json eval_vector() {
  std::ifstream in(eval_vector_path());
  return in ? nlohmann::json::parse(in) : nlohmann::json();
}

std::string stories_path() { return data_dir() + "/llama2c/stories260K.bin"; }

// BOS then the first document's llama2.c token ids, 64 tokens in all.
std::vector<int32_t> stories_window() {
  const nlohmann::json j = eval_vector();
  std::vector<int32_t> ids = j.at("first_documents_token_ids").at(0).get<std::vector<int32_t>>();
  EXPECT_EQ(ids.at(0), 1);  // BOS
  ids.resize(64);
  return ids;
}

// Random models have N(0, 0.02) weights, unit norms and (maybe) zero biases: attention is then
// almost uniform and a wrong bias or norm weight invisible. Sharpen q/k and randomize every norm
// weight and bias so that such errors show in the logits.
void perturb(lowbit::model& m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.2f);
  const int dim = m.config.dim;
  for (auto& [name, t] : m.tensors) {
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_norm || is_bias)
      for (float& v : t.data) v += noise(rng);
    if (name.find("attn_q.weight") != std::string::npos || name.find("attn_k.weight") != std::string::npos)
      for (float& v : t.data) v *= 8.0f;
    if (name.find("attn_qkv.weight") != std::string::npos)  // q and k rows: 0 .. 2*dim
      for (int64_t i = 0; i < int64_t(2) * dim * dim; ++i) t.data[i] *= 8.0f;
  }
}

// Bytes of a sentence after BOS (256): the byte tokenizer of random models (docs/conventions.md §19).
std::vector<int32_t> byte_tokens(int n) {
  const std::string text = "Once upon a time, a small robot found a red ball in the park. It rolled away!";
  std::vector<int32_t> ids{256};
  for (size_t i = 0; static_cast<int>(ids.size()) < n; ++i) ids.push_back(static_cast<unsigned char>(text[i % text.size()]));
  return ids;
}

// A synthetic model of the byte tokenizer's vocabulary (258), one layer-count and head layout per
// test, its norms, biases and q/k sharpened by perturb.
lowbit::model random_model(lowbit::architecture arch, int dim, int hidden, int layers, int heads, int kv_heads,
                           int max_seq, bool tied, uint64_t seed) {
  lowbit::model_config c;
  c.arch = arch;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = 258;
  c.max_seq_len = max_seq;
  c.tied_classifier = tied;
  lowbit::model m = lowbit::synthesize_model(c, seed);
  perturb(m, seed + 4);
  return m;
}

}  // namespace

// ---- 1. stories260K: lowbit's float32 forward = the float64 reference ----------------------------

TEST(ReferenceForward, Stories260KLogits) {
  // Missing data fails, naming the file and how to get it (tests/data.hpp).
  ASSERT_TRUE(lowbit_test::have_data(stories_path()));
  ASSERT_TRUE(lowbit_test::have_data(eval_vector_path()));  // stories_window()'s tokens
  const lowbit::model m = lowbit::load_llama2c(stories_path());
  ASSERT_EQ(m.config.arch, lowbit::architecture::llama);
  ASSERT_EQ(m.config.vocab_size, 512);
  check_model_logits(m, stories_window(), "stories260K");
}

// ---- 2. random GPT-2 and random grouped-query Llama with an untied classifier ---------------------

TEST(ReferenceForward, RandomGpt2Logits) {
  const lowbit::model m = random_model(lowbit::architecture::gpt2, 64, 256, 2, 4, 4, 64, true, 7);
  ASSERT_EQ(m.config.arch, lowbit::architecture::gpt2);
  check_model_logits(m, byte_tokens(48), "random gpt2");
}

TEST(ReferenceForward, RandomGqaLlamaUntiedLogits) {
  const lowbit::model m = random_model(lowbit::architecture::llama, 64, 160, 2, 8, 2, 64, false, 9);
  ASSERT_FALSE(m.config.tied_classifier);
  ASSERT_NE(m.find("output.weight"), nullptr);
  check_model_logits(m, byte_tokens(48), "random llama gqa 8/2");
}

// 300 tokens: the prefill's causal attention runs in query blocks of 128 (128, 128, 44), each
// block over the keys it can see; the chunked run adds blocks that start at pos > 0.
TEST(ReferenceForward, LongPrefillAttentionBlocks) {
  const lowbit::model m = random_model(lowbit::architecture::llama, 32, 64, 1, 4, 2, 320, true, 5);
  check_model_logits(m, byte_tokens(300), "random llama, 300 tokens");
}

// ---- 3. the dump hook: names, shapes [n, cols], values ------------------------------------------

TEST(ReferenceForward, Stories260KDumpHook) {
  // Missing data fails, naming the file and how to get it (tests/data.hpp).
  ASSERT_TRUE(lowbit_test::have_data(stories_path()));
  ASSERT_TRUE(lowbit_test::have_data(eval_vector_path()));  // stories_window()'s tokens
  const lowbit::model m = lowbit::load_llama2c(stories_path());
  const lowbit::model_config& c = m.config;
  const std::vector<int32_t> tokens = stories_window();
  const int n = static_cast<int>(tokens.size());

  struct dumped {
    int64_t rows, cols;
    std::vector<float> data;
  };
  std::map<std::string, dumped> got;
  lowbit::forward_session s(m, lowbit::quant_plan{}, n);
  s.set_dump([&](const std::string& name, const float* data, int64_t rows, int64_t cols) {
    got[name] = dumped{rows, cols, std::vector<float>(data, data + rows * cols)};
  });
  s.forward(tokens.data(), n);

  const int hd = c.dim / c.n_heads;
  std::map<std::string, int64_t> want_cols{{"output_norm", c.dim}, {"logits", c.vocab_size}};
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    for (const auto& [name, cols] : std::map<std::string, int64_t>{
             {"attn_norm", c.dim}, {"q", c.n_heads * hd}, {"k", c.n_kv_heads * hd},
             {"v", c.n_kv_heads * hd}, {"attn", c.n_heads * hd}, {"attn_out", c.dim},
             {"ffn_norm", c.dim}, {"ffn_act", c.hidden_dim}, {"ffn_out", c.dim}, {"out", c.dim}})
      want_cols[p + name] = cols;
  }
  for (const auto& [name, cols] : want_cols) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << "dump hook never called with " << name;
    EXPECT_EQ(it->second.rows, n) << name;
    EXPECT_EQ(it->second.cols, cols) << name;
  }

  // Values: the ones whose meaning the header fixes (k after RoPE; v; the attention heads
  // concatenated; the input of ffn_down; the residual stream after the block).
  const reference_output ref = reference_forward(m, tokens);
  for (const std::string name : {"blk.0.attn_norm", "blk.0.k", "blk.0.v", "blk.0.attn", "blk.0.ffn_act",
                                 "blk.0.out", "blk.4.k", "blk.4.out", "output_norm", "logits"}) {
    const dumped& d = got.at(name);
    ASSERT_EQ(d.data.size(), ref.dumps.at(name).size() * ref.dumps.at(name).at(0).size()) << name;
    expect_match(("stories260K dump " + name).c_str(), compare(d.data.data(), ref.dumps.at(name)));
  }
}

// ---- 4. the evaluation protocol against the shipped vector ---------------------------------------

TEST(ReferenceForward, Stories260KEvalVector) {
  const std::string text_path = data_dir() + "/text/tinystories_val_sample.txt";
  for (const std::string& p : {eval_vector_path(), stories_path(), text_path, data_dir() + "/llama2c/tok512.bin"})
    ASSERT_TRUE(lowbit_test::have_data(p));
  const nlohmann::json j = eval_vector();
  ASSERT_FALSE(j.is_null()) << "cannot read " << eval_vector_path();
  const int ctx = j.at("ctx").get<int>();
  const int64_t max_tokens = j.at("max_tokens").get<int64_t>();
  const int64_t want_scored = j.at("tokens_scored").get<int64_t>();
  const double want_nll = j.at("mean_nll").get<double>();
  ASSERT_EQ(ctx, 128);
  ASSERT_EQ(max_tokens, 1024);
  ASSERT_EQ(want_scored, 1016);  // 8 windows of 128, 127 predictions each

  const lowbit::model m = lowbit::load_llama2c(stories_path());
  const auto tok = lowbit::load_llama2c_tokenizer(data_dir() + "/llama2c/tok512.bin");
  std::ifstream in(text_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::vector<int32_t> ids = lowbit::encode_documents(*tok, ss.str());
  ASSERT_GE(static_cast<int64_t>(ids.size()), max_tokens);
  // The stream starts with the vector's documents (a tokenizer failure shows here, not as an NLL).
  size_t at = 0;
  for (const auto& doc : j.at("first_documents_token_ids"))
    for (int32_t id : doc.get<std::vector<int32_t>>()) {
      ASSERT_LT(at, ids.size());
      ASSERT_EQ(ids[at], id) << "token " << at;
      ++at;
    }

  // lowbit's evaluate. Tolerance 2e-5: the vector prints 6 decimals (+-5e-7), and lowbit's float32
  // logits differ from float64 ones by ~1e-6 relative, which moves a mean NLL by a few 1e-6.
  lowbit::eval_options opt;
  opt.ctx = ctx;
  opt.max_tokens = max_tokens;
  const lowbit::eval_result r = lowbit::evaluate(m, lowbit::quant_plan{}, ids, opt);
  std::printf("  lowbit evaluate: tokens_scored %lld, windows %lld, mean NLL %.9f (vector %.6f)\n",
              static_cast<long long>(r.tokens_scored), static_cast<long long>(r.windows), r.mean_nll,
              want_nll);
  EXPECT_EQ(r.tokens_scored, want_scored);
  EXPECT_EQ(r.windows, 8);
  EXPECT_NEAR(r.mean_nll, want_nll, 2e-5);

  // The float64 reference over the same windows checks the vector independently of lowbit's
  // forward. Tolerance 1e-6: the 6-decimal rounding of the vector (5e-7) plus float64 noise.
  double nll_sum = 0;
  int64_t scored = 0;
  for (int64_t start = 0; start < max_tokens; start += ctx) {
    const int64_t len = std::min<int64_t>(ctx, max_tokens - start);
    if (len < 2) break;
    const std::vector<int32_t> window(ids.begin() + start, ids.begin() + start + len);
    const reference_output ref = reference_forward(m, window);
    for (int64_t i = 0; i + 1 < len; ++i) {
      const vec& l = ref.logits[i];
      const double mx = *std::max_element(l.begin(), l.end());
      double z = 0;
      for (double v : l) z += std::exp(v - mx);
      nll_sum += mx + std::log(z) - l[window[i + 1]];
      ++scored;
    }
  }
  const double ref_nll = nll_sum / scored;
  std::printf("  float64 reference: tokens_scored %lld, mean NLL %.9f\n", static_cast<long long>(scored),
              ref_nll);
  EXPECT_EQ(scored, want_scored);
  EXPECT_NEAR(ref_nll, want_nll, 1e-6);
  EXPECT_NEAR(r.mean_nll, ref_nll, 2e-5);
}

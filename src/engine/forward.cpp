// Llama and GPT-2 forward passes in float32 (shapes in forward.hpp). Linear layers and the
// attention products run through OpenBLAS sgemm; element-wise work through OpenMP. The plan's
// activation formats fake-quantize each linear layer's input per token, its KV format the cache
// rows (one token and head each) after RoPE (docs/conventions.md §17).
#include "lowbit/engine/forward.hpp"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <new>
#include <cmath>

#include <fmt/format.h>
#include <omp.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/threads.hpp"
#include "src/engine/layers.hpp"

namespace lowbit {

namespace {


// y[n, out] = x[n, in] W[out, in]^T (+ bias[out])
void linear(const float* x, int n, int in, const tensor& w, const tensor* bias, float* y) {
  const int out = static_cast<int>(w.shape[0]);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w.data.data(), in,
              0.0f, y, out);
  if (bias) {
    const float* b = bias->data.data();
    #pragma omp parallel for schedule(static) if (int64_t(n) * out > 65536)
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < out; ++j) y[int64_t(i) * out + j] += b[j];
  }
}

}  // namespace


bool forward_prefers_one_thread(int64_t tokens, int dim) {
  return tokens * dim * dim < (int64_t(1) << 24);
}

namespace {


}  // namespace

forward_session::forward_session(const model& m, const quant_plan& plan, int max_tokens)
    : m_(m), plan_(plan), max_tokens_(max_tokens) {
  m_.config.validate();
  if (max_tokens <= 0) throw error(fmt::format("forward: max_tokens = {} (expected > 0)", max_tokens));
  if (m_.config.arch == architecture::gpt2 && max_tokens > m_.config.max_seq_len)
    throw error(fmt::format("forward: {} tokens exceed GPT-2's {} learned positions", max_tokens,
                            m_.config.max_seq_len));
  if (m_.config.arch == architecture::llama)
    rope_ = std::make_shared<layers::rope_table>(max_tokens, m_.config.head_dim(), m_.config.rope_theta);
  const int64_t kv_dim = int64_t(m_.config.n_kv_heads) * m_.config.head_dim();
  const int64_t cache = int64_t(m_.config.n_layers) * max_tokens * kv_dim;
  try {
    k_cache_.resize(cache);
    v_cache_.resize(cache);
  } catch (const std::bad_alloc&) {
    throw error(fmt::format("forward: a KV cache of {} layers x {} tokens x {} needs {:.1f} GiB; use a "
                            "shorter context", m_.config.n_layers, max_tokens, kv_dim, 8.0 * cache / (1 << 30)));
  }
}

void forward_session::reset() { pos_ = 0; }

void forward_session::check_tokens(const int32_t* tokens, int n) const {
  if (n <= 0) throw error("forward: no tokens");
  if (pos_ + n > max_tokens_)
    throw error(fmt::format("forward: position {} + {} tokens exceeds the session's {} tokens",
                            pos_, n, max_tokens_));
  for (int i = 0; tokens && i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= m_.config.vocab_size)
      throw error(fmt::format("forward: token id {} outside the vocabulary (0..{})", tokens[i],
                              m_.config.vocab_size - 1));
}

void forward_session::embed(const int32_t* tokens, int n, float* x) const {
  check_tokens(tokens, n);
  const int dim = m_.config.dim;
  const float* emb = m_.get("token_embd.weight").data.data();
  for (int i = 0; i < n; ++i) std::copy_n(emb + int64_t(tokens[i]) * dim, dim, x + int64_t(i) * dim);
  if (m_.config.arch == architecture::gpt2) {
    const float* wpe = m_.get("position_embd.weight").data.data();
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < dim; ++j) x[int64_t(i) * dim + j] += wpe[int64_t(pos_ + i) * dim + j];
  }
}

const std::vector<float>& forward_session::forward(const int32_t* tokens, int n) {
  check_tokens(tokens, n);
  std::vector<float> x(int64_t(n) * m_.config.dim);
  embed(tokens, n, x.data());
  run(x.data(), n, 0, m_.config.n_layers, true);
  pos_ += n;
  return logits_;
}

void forward_session::forward_blocks(float* x, int n, int first, int last) {
  check_tokens(nullptr, n);
  if (first < 0 || last > m_.config.n_layers || first > last)
    throw error(fmt::format("forward: blocks [{}, {}) outside 0..{}", first, last, m_.config.n_layers));
  run(x, n, first, last, false);
}

// Blocks [first, last) on the residual stream x[n, dim] at positions pos_..pos_+n, then (head)
// the final norm and classifier into logits_.
void forward_session::run(float* x_io, int n, int first, int last, bool head) {
  const model_config& c = m_.config;
  const bool llama = c.arch == architecture::llama;
  const int dim = c.dim, hd = c.head_dim(), nh = c.n_heads, nkv = c.n_kv_heads;
  const int qdim = nh * hd, kv_dim = nkv * hd, hidden = c.hidden_dim, V = c.vocab_size;
  const int T = pos_ + n;  // keys visible to the last query
  const layers::thread_scope threads(n, c.dim);
  const layers::norm_kind norm = c.l1_norm ? layers::norm_kind::l1 : layers::norm_kind::rms;
  double flops = 0;

  float* x = x_io;
  std::vector<float> xb(int64_t(n) * dim), q(int64_t(n) * qdim);
  std::vector<float> kv_new(int64_t(n) * kv_dim * 2), att(int64_t(n) * qdim), tmp(int64_t(n) * dim);
  std::vector<float> h1(int64_t(n) * hidden), h2(llama ? int64_t(n) * hidden : 0);
  std::vector<float> qkv(llama ? 0 : int64_t(n) * 3 * dim);
  std::vector<float> scores(int64_t(n) * T);

  auto dump = [&](const std::string& name, const float* data, int64_t cols) {
    if (dump_) dump_(name, data, n, cols);
  };
  // The input of a linear layer, fake-quantized in place per token when the plan says so.
  auto quantize_input = [&](float* data, int64_t cols, const std::optional<format>& f) {
    if (f) fake_quantize(data, data, n, cols, *f, ++call_);
  };
  auto mm = [&](const float* in, int in_dim, const tensor& w, const tensor* b, float* out) {
    linear(in, n, in_dim, w, b, out);
    flops += 2.0 * n * in_dim * double(w.shape[0]);
  };

  const float inv_sqrt_hd = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int l = first; l < last; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    auto W = [&](const char* name) -> const tensor& { return m_.get(b + name); };
    auto B = [&](const char* name) -> const tensor* { return m_.find(b + name); };
    float* kc = k_cache_.data() + int64_t(l) * max_tokens_ * kv_dim;
    float* vc = v_cache_.data() + int64_t(l) * max_tokens_ * kv_dim;
    float* k_new = kv_new.data();
    float* v_new = kv_new.data() + int64_t(n) * kv_dim;

    // ---- attention ----
    if (llama) layers::normalize(norm, x, W("attn_norm.weight").data.data(), xb.data(), n, dim, c.norm_eps);
    else layers::layernorm(x, W("attn_norm.weight").data.data(), W("attn_norm.bias").data.data(),
                   xb.data(), n, dim, c.norm_eps);
    dump(b + "attn_norm", xb.data(), dim);
    quantize_input(xb.data(), dim, plan_.acts);
    if (llama) {
      mm(xb.data(), dim, W("attn_q.weight"), nullptr, q.data());
      mm(xb.data(), dim, W("attn_k.weight"), nullptr, k_new);
      mm(xb.data(), dim, W("attn_v.weight"), nullptr, v_new);
      layers::rope(q.data(), n, nh, qdim, pos_, 0, *rope_);
      layers::rope(k_new, n, nkv, kv_dim, pos_, 0, *rope_);
    } else {
      mm(xb.data(), dim, W("attn_qkv.weight"), B("attn_qkv.bias"), qkv.data());
      for (int i = 0; i < n; ++i) {
        const float* r = qkv.data() + int64_t(i) * 3 * dim;
        std::copy_n(r, dim, q.data() + int64_t(i) * qdim);
        std::copy_n(r + dim, dim, k_new + int64_t(i) * kv_dim);
        std::copy_n(r + 2 * dim, dim, v_new + int64_t(i) * kv_dim);
      }
    }
    dump(b + "q", q.data(), qdim);
    dump(b + "k", k_new, kv_dim);
    dump(b + "v", v_new, kv_dim);
    if (plan_.kv) {  // rows = (token, kv head), groups along the head dimension
      fake_quantize(k_new, k_new, int64_t(n) * nkv, hd, *plan_.kv, ++call_);
      fake_quantize(v_new, v_new, int64_t(n) * nkv, hd, *plan_.kv, ++call_);
    }
    std::copy_n(k_new, int64_t(n) * kv_dim, kc + int64_t(pos_) * kv_dim);
    std::copy_n(v_new, int64_t(n) * kv_dim, vc + int64_t(pos_) * kv_dim);

    // Causal attention per head: S = Q_h K_h^T / sqrt(hd) [n, T], softmax over keys <= pos,
    // A_h = P V_h [n, hd]. Query head h reads kv head h / (nh / nkv) (grouped-query attention).
    // Queries go in blocks of kQueryBlock: block [i0, i1) sees keys [0, pos + i1) only, so a
    // prefill computes about half of the n x T square (keys past a row's position get weight 0).
    constexpr int kQueryBlock = 128;
    for (int h = 0; h < nh; ++h) {
      const int kvh = h / (nh / nkv);
      for (int i0 = 0; i0 < n; i0 += kQueryBlock) {
        const int rows = std::min(kQueryBlock, n - i0), keys = pos_ + i0 + rows;
        float* s = scores.data() + int64_t(i0) * T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, inv_sqrt_hd,
                    q.data() + int64_t(i0) * qdim + h * hd, qdim, kc + kvh * hd, kv_dim, 0.0f, s, T);
        #pragma omp parallel for schedule(static) if (int64_t(rows) * keys > 16384)
        for (int i = 0; i < rows; ++i) layers::causal_softmax(s + int64_t(i) * T, pos_ + i0 + i + 1, keys);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, s, T, vc + kvh * hd, kv_dim,
                    0.0f, att.data() + int64_t(i0) * qdim + h * hd, qdim);
        flops += 4.0 * rows * double(keys) * hd;
      }
    }
    dump(b + "attn", att.data(), qdim);
    quantize_input(att.data(), qdim, plan_.acts);
    mm(att.data(), qdim, W("attn_output.weight"), B("attn_output.bias"), tmp.data());
    dump(b + "attn_out", tmp.data(), dim);
    for (int64_t i = 0; i < int64_t(n) * dim; ++i) x[i] += tmp[i];

    // ---- MLP ----
    if (llama) layers::normalize(norm, x, W("ffn_norm.weight").data.data(), xb.data(), n, dim, c.norm_eps);
    else layers::layernorm(x, W("ffn_norm.weight").data.data(), W("ffn_norm.bias").data.data(),
                   xb.data(), n, dim, c.norm_eps);
    dump(b + "ffn_norm", xb.data(), dim);
    quantize_input(xb.data(), dim, plan_.acts);
    if (llama) {
      mm(xb.data(), dim, W("ffn_gate.weight"), nullptr, h1.data());
      mm(xb.data(), dim, W("ffn_up.weight"), nullptr, h2.data());
      #pragma omp parallel for schedule(static) if (int64_t(n) * hidden > 65536)
      for (int64_t i = 0; i < int64_t(n) * hidden; ++i) {
        const float g = h1[i];
        h1[i] = layers::silu(g) * h2[i];  // SwiGLU (Shazeer 2020): silu(gate) * up
      }
    } else {
      mm(xb.data(), dim, W("ffn_up.weight"), B("ffn_up.bias"), h1.data());
      #pragma omp parallel for schedule(static) if (int64_t(n) * hidden > 65536)
      for (int64_t i = 0; i < int64_t(n) * hidden; ++i) h1[i] = layers::gelu_tanh(h1[i]);
    }
    dump(b + "ffn_act", h1.data(), hidden);
    quantize_input(h1.data(), hidden, plan_.acts);
    mm(h1.data(), hidden, W("ffn_down.weight"), B("ffn_down.bias"), tmp.data());
    dump(b + "ffn_out", tmp.data(), dim);
    for (int64_t i = 0; i < int64_t(n) * dim; ++i) x[i] += tmp[i];
    dump(b + "out", x, dim);
  }

  if (head) {
    if (llama) layers::normalize(norm, x, m_.get("output_norm.weight").data.data(), xb.data(), n, dim, c.norm_eps);
    else layers::layernorm(x, m_.get("output_norm.weight").data.data(),
                   m_.get("output_norm.bias").data.data(), xb.data(), n, dim, c.norm_eps);
    dump("output_norm", xb.data(), dim);
    quantize_input(xb.data(), dim, plan_.classifier_acts);
    logits_.resize(int64_t(n) * V);
    mm(xb.data(), dim, m_.classifier(), nullptr, logits_.data());
    dump("logits", logits_.data(), V);
  }
  last_flops_ = flops;
}

double sgemm_gflops(int m, int n, int k, int reps) {
  std::vector<float> a(int64_t(m) * k), b(int64_t(n) * k), c(int64_t(m) * n);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 104729) % 1000) * 1e-3f - 0.5f;
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {  // the first run warms caches and threads
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k,
                0.0f, c.data(), n);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r) t.push_back(dt);
  }
  std::sort(t.begin(), t.end());
  return 2.0 * m * n * double(k) / t[t.size() / 2] * 1e-9;
}

}  // namespace lowbit

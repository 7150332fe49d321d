// An independent float64 forward of every model family, written in the test from the families'
// published definitions (Hugging Face transformers' modeling_llama, modeling_mistral,
// modeling_qwen2, modeling_gpt2, modeling_gpt_neox, modeling_opt; Meta's Llama 3.1 RoPE scaling),
// on the checkpoint as Hugging Face stores it: its tensor names and layouts (rotate-half q/k rows,
// GPT-2's Conv1D [in, out] matrices, GPT-NeoX's per-head fused [q_h; k_h; v_h] rows, OPT's
// position table offset by 2) and its config.json, read here field by field. It shares nothing
// with lowbit's readers or decoder: test_families checks lowbit's logits against it, and the
// training test its gradients against central differences of its loss.
//
// Also here: random checkpoints of each family in that layout, and llama.cpp's GGUF layout of
// them (convert_hf_to_gguf.py's tensor names, q/k permutation of llama, qkv regrouping of
// gptneox, Conv1D transposes of gpt2, metadata keys), written by the test itself.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/io/gguf.hpp"
#include "lowbit/io/safetensors.hpp"

namespace family_test {

using vec = std::vector<double>;

struct hf_tensor {
  std::vector<int64_t> shape;
  vec v;
};

// A Hugging Face checkpoint: config.json and the tensors under their checkpoint names.
struct hf_checkpoint {
  nlohmann::json config;
  std::map<std::string, hf_tensor> t;
  const vec& at(const std::string& n) const { return t.at(n).v; }
  bool has(const std::string& n) const { return t.count(n) > 0; }
};

// ---- config.json, read as Hugging Face's config classes default it ---------------------------------

inline std::string model_type(const nlohmann::json& c) { return c.at("model_type").get<std::string>(); }
inline bool llama_like(const nlohmann::json& c) {
  const std::string t = model_type(c);
  return t == "llama" || t == "mistral" || t == "qwen2";
}
template <class T>
T get_or(const nlohmann::json& c, const char* key, T fallback) {
  return c.contains(key) && !c[key].is_null() ? c[key].get<T>() : fallback;
}

struct dims {
  int D, H, KV_heads, hd, F, V, L, P;
};
inline dims dims_of(const nlohmann::json& c) {
  const std::string t = model_type(c);
  dims d{};
  if (t == "gpt2") {
    d.D = c.at("n_embd"), d.H = c.at("n_head"), d.L = c.at("n_layer"), d.P = c.at("n_positions");
    d.F = get_or<int>(c, "n_inner", 4 * d.D);
  } else {
    d.D = c.at("hidden_size"), d.H = c.at("num_attention_heads"), d.L = c.at("num_hidden_layers");
    d.P = c.at("max_position_embeddings");
    d.F = t == "opt" ? c.at("ffn_dim").get<int>() : c.at("intermediate_size").get<int>();
  }
  d.KV_heads = llama_like(c) ? get_or<int>(c, "num_key_value_heads", d.H) : d.H;
  d.hd = d.D / d.H;
  d.V = c.at("vocab_size");
  return d;
}

inline bool tied(const nlohmann::json& c) {
  const std::string t = model_type(c);
  return get_or<bool>(c, "tie_word_embeddings", t == "gpt2" || t == "opt");
}

// ---- the checkpoint's tensors ----------------------------------------------------------------------

inline std::vector<std::pair<std::string, std::vector<int64_t>>> hf_shapes(const nlohmann::json& c) {
  const std::string t = model_type(c);
  const dims d = dims_of(c);
  const int64_t D = d.D, F = d.F, V = d.V, KV = int64_t(d.KV_heads) * d.hd;
  std::vector<std::pair<std::string, std::vector<int64_t>>> s;
  auto add = [&](const std::string& n, std::vector<int64_t> shape) { s.push_back({n, std::move(shape)}); };
  if (llama_like(c)) {
    const bool qkv_b = t == "qwen2" || get_or<bool>(c, "attention_bias", false);
    const bool o_b = t == "llama" && get_or<bool>(c, "attention_bias", false);
    const bool mlp_b = get_or<bool>(c, "mlp_bias", false);
    add("model.embed_tokens.weight", {V, D});
    for (int l = 0; l < d.L; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {D});
      add(p + "self_attn.q_proj.weight", {D, D});
      add(p + "self_attn.k_proj.weight", {KV, D});
      add(p + "self_attn.v_proj.weight", {KV, D});
      if (qkv_b) add(p + "self_attn.q_proj.bias", {D}), add(p + "self_attn.k_proj.bias", {KV}), add(p + "self_attn.v_proj.bias", {KV});
      add(p + "self_attn.o_proj.weight", {D, D});
      if (o_b) add(p + "self_attn.o_proj.bias", {D});
      add(p + "post_attention_layernorm.weight", {D});
      add(p + "mlp.gate_proj.weight", {F, D});
      add(p + "mlp.up_proj.weight", {F, D});
      add(p + "mlp.down_proj.weight", {D, F});
      if (mlp_b) add(p + "mlp.gate_proj.bias", {F}), add(p + "mlp.up_proj.bias", {F}), add(p + "mlp.down_proj.bias", {D});
    }
    add("model.norm.weight", {D});
  } else if (t == "gpt2") {
    add("transformer.wte.weight", {V, D});
    add("transformer.wpe.weight", {d.P, D});
    for (int l = 0; l < d.L; ++l) {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      for (const char* ln : {"ln_1", "ln_2"}) add(p + ln + ".weight", {D}), add(p + ln + ".bias", {D});
      add(p + "attn.c_attn.weight", {D, 3 * D}), add(p + "attn.c_attn.bias", {3 * D});  // Conv1D: [in, out]
      add(p + "attn.c_proj.weight", {D, D}), add(p + "attn.c_proj.bias", {D});
      add(p + "mlp.c_fc.weight", {D, F}), add(p + "mlp.c_fc.bias", {F});
      add(p + "mlp.c_proj.weight", {F, D}), add(p + "mlp.c_proj.bias", {D});
    }
    add("transformer.ln_f.weight", {D}), add("transformer.ln_f.bias", {D});
  } else if (t == "gpt_neox") {
    const bool attn_b = get_or<bool>(c, "attention_bias", true);
    add("gpt_neox.embed_in.weight", {V, D});
    for (int l = 0; l < d.L; ++l) {
      const std::string p = "gpt_neox.layers." + std::to_string(l) + ".";
      for (const char* ln : {"input_layernorm", "post_attention_layernorm"})
        add(p + ln + ".weight", {D}), add(p + ln + ".bias", {D});
      add(p + "attention.query_key_value.weight", {3 * D, D});
      if (attn_b) add(p + "attention.query_key_value.bias", {3 * D});
      add(p + "attention.dense.weight", {D, D});
      if (attn_b) add(p + "attention.dense.bias", {D});
      add(p + "mlp.dense_h_to_4h.weight", {F, D}), add(p + "mlp.dense_h_to_4h.bias", {F});
      add(p + "mlp.dense_4h_to_h.weight", {D, F}), add(p + "mlp.dense_4h_to_h.bias", {D});
    }
    add("gpt_neox.final_layer_norm.weight", {D}), add("gpt_neox.final_layer_norm.bias", {D});
  } else {  // opt
    const bool b = get_or<bool>(c, "enable_bias", true);
    add("model.decoder.embed_tokens.weight", {V, D});
    add("model.decoder.embed_positions.weight", {d.P + 2, D});
    for (int l = 0; l < d.L; ++l) {
      const std::string p = "model.decoder.layers." + std::to_string(l) + ".";
      for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
        add(p + "self_attn." + proj + ".weight", {D, D});
        if (b) add(p + "self_attn." + proj + ".bias", {D});
      }
      for (const char* ln : {"self_attn_layer_norm", "final_layer_norm"})
        add(p + ln + ".weight", {D}), add(p + ln + ".bias", {D});
      add(p + "fc1.weight", {F, D}), add(p + "fc2.weight", {D, F});
      if (b) add(p + "fc1.bias", {F}), add(p + "fc2.bias", {D});
    }
    if (get_or<bool>(c, "do_layer_norm_before", true))
      add("model.decoder.final_layer_norm.weight", {D}), add("model.decoder.final_layer_norm.bias", {D});
  }
  // OPT checkpoints store lm_head.weight even when it is tied (Hugging Face then ignores it): the
  // test stores one with other values, so a reader that used it would show.
  if (!tied(c) || t == "opt") add(t == "gpt_neox" ? "embed_out.weight" : "lm_head.weight", {V, D});
  return s;
}

// Random weights: matrices N(0, 0.2) (q and k N(0, 0.5), so attention is far from uniform), norm
// gains 1 + N(0, 0.2), biases N(0, 0.2).
inline hf_checkpoint random_checkpoint(const nlohmann::json& config, uint64_t seed) {
  hf_checkpoint m;
  m.config = config;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (const auto& [name, shape] : hf_shapes(config)) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    hf_tensor t{shape, vec(n)};
    const bool norm = name.find("norm") != std::string::npos;
    const bool qk = name.find("q_proj") != std::string::npos || name.find("k_proj") != std::string::npos ||
                    name.find("query_key_value") != std::string::npos || name.find("c_attn") != std::string::npos;
    for (double& x : t.v) {
      // (rounded to float: the file holds float32, the reference reads what the file holds)
      const double r = norm && shape.size() == 1 && name.ends_with(".weight") ? 1.0 + 0.2 * nd(rng)
                       : qk                                                   ? 0.5 * nd(rng)
                                                                              : 0.2 * nd(rng);
      x = static_cast<float>(r);
    }
    m.t[name] = std::move(t);
  }
  return m;
}

// ---- the float64 forward -------------------------------------------------------------------------

// y = W x (+ b), W [out, in] (nn.Linear).
inline vec linear(const vec& W, const vec& x, int64_t out, const vec* b = nullptr) {
  const int64_t in = static_cast<int64_t>(x.size());
  vec y(out);
  for (int64_t r = 0; r < out; ++r) {
    double acc = b ? (*b)[r] : 0.0;
    for (int64_t c = 0; c < in; ++c) acc += W[r * in + c] * x[c];
    y[r] = acc;
  }
  return y;
}
// y = x W (+ b), W [in, out] (GPT-2's Conv1D).
inline vec conv1d(const vec& W, const vec& x, int64_t out, const vec* b = nullptr) {
  const int64_t in = static_cast<int64_t>(x.size());
  vec y(out);
  for (int64_t o = 0; o < out; ++o) {
    double acc = b ? (*b)[o] : 0.0;
    for (int64_t c = 0; c < in; ++c) acc += x[c] * W[c * out + o];
    y[o] = acc;
  }
  return y;
}
// LlamaRMSNorm: w * x / sqrt(mean(x^2) + eps).
inline vec rms_norm(const vec& x, const vec& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * (x[i] * inv);
  return y;
}
// nn.LayerNorm: (x - mean) / sqrt(var + eps) * w + b (biased variance).
inline vec layer_norm(const vec& x, const vec& w, const vec& b, double eps) {
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= x.size();
  for (double v : x) var += (v - mean) * (v - mean);
  var /= x.size();
  const double inv = 1.0 / std::sqrt(var + eps);
  vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mean) * inv * w[i] + b[i];
  return y;
}
// transformers' ACT2FN.
inline double act(const std::string& name, double x) {
  if (name == "silu") return x / (1.0 + std::exp(-x));
  if (name == "gelu") return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
  if (name == "gelu_new" || name == "gelu_pytorch_tanh")
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
  if (name == "relu") return x > 0 ? x : 0.0;
  throw std::runtime_error("family_reference: activation " + name);
}

// modeling_rope_utils: the inverse frequencies of the `dim` rotated dims (default, linear, llama3).
inline vec inv_freq(const nlohmann::json& c, double base, int dim) {
  vec f(dim / 2);
  for (int i = 0; i < dim / 2; ++i) f[i] = 1.0 / std::pow(base, double(2 * i) / dim);
  if (!c.contains("rope_scaling") || c["rope_scaling"].is_null()) return f;
  const nlohmann::json& s = c["rope_scaling"];
  const std::string type = s.contains("rope_type") ? s["rope_type"].get<std::string>() : s["type"].get<std::string>();
  const double factor = s.at("factor").get<double>();
  if (type == "linear") {
    for (double& v : f) v /= factor;
  } else if (type == "llama3") {  // _compute_llama3_parameters (Meta's apply_scaling)
    const double low = s.at("low_freq_factor"), high = s.at("high_freq_factor");
    const double old_len = s.at("original_max_position_embeddings");
    const double low_wavelen = old_len / low, high_wavelen = old_len / high;
    for (double& v : f) {
      const double wavelen = 2 * M_PI / v;
      const double scaled = wavelen > low_wavelen ? v / factor : v;
      const double smooth = (old_len / wavelen - low) / (high - low);
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      v = medium ? (1 - smooth) * scaled / factor + smooth * scaled : scaled;
    }
  }
  return f;
}

// apply_rotary_pos_emb with rotate_half on the first `dim` dims of one head (the rest pass).
inline void rotate_half_rope(double* x, int dim, const vec& freq, int pos) {
  const int h = dim / 2;
  for (int i = 0; i < h; ++i) {
    const double a = pos * freq[i], c = std::cos(a), s = std::sin(a);
    const double x1 = x[i], x2 = x[i + h];
    x[i] = x1 * c - x2 * s;
    x[i + h] = x2 * c + x1 * s;
  }
}

// Logits [T][V] of one sequence at positions 0..T-1.
inline std::vector<vec> reference_logits(const hf_checkpoint& m, const std::vector<int32_t>& tokens) {
  const nlohmann::json& c = m.config;
  const std::string t = model_type(c);
  const dims d = dims_of(c);
  const int T = static_cast<int>(tokens.size()), D = d.D, H = d.H, hd = d.hd, KVH = d.KV_heads;
  const int group = H / KVH;
  auto row = [&](const std::string& name, int r) {
    return vec(m.at(name).begin() + int64_t(r) * D, m.at(name).begin() + int64_t(r + 1) * D);
  };
  auto opt_bias = [&](const std::string& name) { return m.has(name) ? &m.at(name) : nullptr; };
  // hidden states [T][D]
  std::vector<vec> x(T);
  std::string emb;
  if (llama_like(c)) emb = "model.embed_tokens.weight";
  else if (t == "gpt2") emb = "transformer.wte.weight";
  else if (t == "gpt_neox") emb = "gpt_neox.embed_in.weight";
  else emb = "model.decoder.embed_tokens.weight";
  for (int i = 0; i < T; ++i) {
    x[i] = row(emb, tokens[i]);
    if (t == "gpt2" || t == "opt") {  // learned positions; OPT's start at row 2
      const vec p = t == "gpt2" ? row("transformer.wpe.weight", i) : row("model.decoder.embed_positions.weight", i + 2);
      for (int j = 0; j < D; ++j) x[i][j] += p[j];
    }
  }
  // RoPE
  int rot = 0;
  double base = 10000;
  if (llama_like(c)) rot = hd, base = get_or<double>(c, "rope_theta", 10000.0);
  if (t == "gpt_neox") {
    rot = static_cast<int>(hd * get_or<double>(c, "rotary_pct", 0.25));
    base = get_or<double>(c, "rotary_emb_base", 10000.0);
  }
  const vec freq = rot ? inv_freq(c, base, rot) : vec{};
  const int window = t == "mistral" ? get_or<int>(c, "sliding_window", 0) : 0;
  const bool post_ln = t == "opt" && !get_or<bool>(c, "do_layer_norm_before", true);
  const bool parallel = t == "gpt_neox" && get_or<bool>(c, "use_parallel_residual", true);
  std::string act_name = "silu";
  if (t == "gpt2") act_name = get_or<std::string>(c, "activation_function", "gelu_new");
  if (t == "gpt_neox") act_name = get_or<std::string>(c, "hidden_act", "gelu");
  if (t == "opt") act_name = get_or<std::string>(c, "activation_function", "relu");
  const double eps = llama_like(c) ? get_or<double>(c, "rms_norm_eps", 1e-6)
                     : t == "gpt2"  ? get_or<double>(c, "layer_norm_epsilon", 1e-5)
                     : t == "gpt_neox" ? get_or<double>(c, "layer_norm_eps", 1e-5)
                                       : 1e-5;

  // Causal (sliding-window) attention of q [T][H*hd] over k, v [T][KVH*hd].
  auto attention = [&](const std::vector<vec>& q, const std::vector<vec>& k, const std::vector<vec>& v) {
    std::vector<vec> o(T, vec(D, 0.0));
    for (int i = 0; i < T; ++i)
      for (int h = 0; h < H; ++h) {
        const int kh = h / group;  // repeat_kv
        vec s(T, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          if (window && !(j > i - window)) continue;  // sliding_window_overlay: kv_idx > q_idx - W
          double dot = 0;
          for (int e = 0; e < hd; ++e) dot += q[i][h * hd + e] * k[j][kh * hd + e];
          s[j] = dot / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j <= i; ++j)
          if (std::isfinite(s[j])) sum += std::exp(s[j] - mx);
        for (int j = 0; j <= i; ++j)
          if (std::isfinite(s[j]))
            for (int e = 0; e < hd; ++e) o[i][h * hd + e] += std::exp(s[j] - mx) / sum * v[j][kh * hd + e];
      }
    return o;
  };

  for (int l = 0; l < d.L; ++l) {
    std::vector<vec> q(T), k(T), v(T), attn_in(T), mlp_in(T);
    std::vector<vec> attn_out(T), mlp_out(T);
    if (llama_like(c)) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      for (int i = 0; i < T; ++i) {
        const vec n1 = rms_norm(x[i], m.at(p + "input_layernorm.weight"), eps);
        q[i] = linear(m.at(p + "self_attn.q_proj.weight"), n1, D, opt_bias(p + "self_attn.q_proj.bias"));
        k[i] = linear(m.at(p + "self_attn.k_proj.weight"), n1, KVH * hd, opt_bias(p + "self_attn.k_proj.bias"));
        v[i] = linear(m.at(p + "self_attn.v_proj.weight"), n1, KVH * hd, opt_bias(p + "self_attn.v_proj.bias"));
        for (int h = 0; h < H; ++h) rotate_half_rope(q[i].data() + h * hd, rot, freq, i);
        for (int h = 0; h < KVH; ++h) rotate_half_rope(k[i].data() + h * hd, rot, freq, i);
      }
      const std::vector<vec> o = attention(q, k, v);
      for (int i = 0; i < T; ++i) {
        const vec y = linear(m.at(p + "self_attn.o_proj.weight"), o[i], D, opt_bias(p + "self_attn.o_proj.bias"));
        for (int j = 0; j < D; ++j) x[i][j] += y[j];
        const vec n2 = rms_norm(x[i], m.at(p + "post_attention_layernorm.weight"), eps);
        const vec g = linear(m.at(p + "mlp.gate_proj.weight"), n2, d.F, opt_bias(p + "mlp.gate_proj.bias"));
        const vec u = linear(m.at(p + "mlp.up_proj.weight"), n2, d.F, opt_bias(p + "mlp.up_proj.bias"));
        vec a(d.F);
        for (int j = 0; j < d.F; ++j) a[j] = act("silu", g[j]) * u[j];
        const vec f = linear(m.at(p + "mlp.down_proj.weight"), a, D, opt_bias(p + "mlp.down_proj.bias"));
        for (int j = 0; j < D; ++j) x[i][j] += f[j];
      }
    } else if (t == "gpt2") {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      for (int i = 0; i < T; ++i) {
        const vec n1 = layer_norm(x[i], m.at(p + "ln_1.weight"), m.at(p + "ln_1.bias"), eps);
        const vec qkv = conv1d(m.at(p + "attn.c_attn.weight"), n1, 3 * D, &m.at(p + "attn.c_attn.bias"));
        q[i].assign(qkv.begin(), qkv.begin() + D);
        k[i].assign(qkv.begin() + D, qkv.begin() + 2 * D);
        v[i].assign(qkv.begin() + 2 * D, qkv.end());
      }
      const std::vector<vec> o = attention(q, k, v);
      for (int i = 0; i < T; ++i) {
        const vec y = conv1d(m.at(p + "attn.c_proj.weight"), o[i], D, &m.at(p + "attn.c_proj.bias"));
        for (int j = 0; j < D; ++j) x[i][j] += y[j];
        const vec n2 = layer_norm(x[i], m.at(p + "ln_2.weight"), m.at(p + "ln_2.bias"), eps);
        vec a = conv1d(m.at(p + "mlp.c_fc.weight"), n2, d.F, &m.at(p + "mlp.c_fc.bias"));
        for (double& e : a) e = act(act_name, e);
        const vec f = conv1d(m.at(p + "mlp.c_proj.weight"), a, D, &m.at(p + "mlp.c_proj.bias"));
        for (int j = 0; j < D; ++j) x[i][j] += f[j];
      }
    } else if (t == "gpt_neox") {
      const std::string p = "gpt_neox.layers." + std::to_string(l) + ".";
      for (int i = 0; i < T; ++i) {
        const vec n1 = layer_norm(x[i], m.at(p + "input_layernorm.weight"), m.at(p + "input_layernorm.bias"), eps);
        const vec qkv = linear(m.at(p + "attention.query_key_value.weight"), n1, 3 * D,
                               opt_bias(p + "attention.query_key_value.bias"));
        // view(heads, 3 * hd): head h's q, k, v are consecutive
        q[i].resize(D), k[i].resize(D), v[i].resize(D);
        for (int h = 0; h < H; ++h)
          for (int e = 0; e < hd; ++e) {
            q[i][h * hd + e] = qkv[h * 3 * hd + e];
            k[i][h * hd + e] = qkv[h * 3 * hd + hd + e];
            v[i][h * hd + e] = qkv[h * 3 * hd + 2 * hd + e];
          }
        for (int h = 0; h < H; ++h) rotate_half_rope(q[i].data() + h * hd, rot, freq, i);
        for (int h = 0; h < H; ++h) rotate_half_rope(k[i].data() + h * hd, rot, freq, i);
      }
      const std::vector<vec> o = attention(q, k, v);
      for (int i = 0; i < T; ++i) {
        const vec y = linear(m.at(p + "attention.dense.weight"), o[i], D, opt_bias(p + "attention.dense.bias"));
        auto mlp = [&](const vec& in) {
          const vec n2 = layer_norm(in, m.at(p + "post_attention_layernorm.weight"),
                                    m.at(p + "post_attention_layernorm.bias"), eps);
          vec a = linear(m.at(p + "mlp.dense_h_to_4h.weight"), n2, d.F, &m.at(p + "mlp.dense_h_to_4h.bias"));
          for (double& e : a) e = act(act_name, e);
          return linear(m.at(p + "mlp.dense_4h_to_h.weight"), a, D, &m.at(p + "mlp.dense_4h_to_h.bias"));
        };
        if (parallel) {  // x + attn(ln1(x)) + mlp(ln2(x))
          const vec f = mlp(x[i]);
          for (int j = 0; j < D; ++j) x[i][j] += y[j] + f[j];
        } else {
          for (int j = 0; j < D; ++j) x[i][j] += y[j];
          const vec f = mlp(x[i]);
          for (int j = 0; j < D; ++j) x[i][j] += f[j];
        }
      }
    } else {  // opt
      const std::string p = "model.decoder.layers." + std::to_string(l) + ".";
      auto ln = [&](const vec& in, const char* which) {
        return layer_norm(in, m.at(p + which + ".weight"), m.at(p + which + ".bias"), eps);
      };
      for (int i = 0; i < T; ++i) {
        const vec h = post_ln ? x[i] : ln(x[i], "self_attn_layer_norm");
        // OPTAttention scales q by head_dim^-0.5 before q k^T: the same scores
        q[i] = linear(m.at(p + "self_attn.q_proj.weight"), h, D, opt_bias(p + "self_attn.q_proj.bias"));
        k[i] = linear(m.at(p + "self_attn.k_proj.weight"), h, D, opt_bias(p + "self_attn.k_proj.bias"));
        v[i] = linear(m.at(p + "self_attn.v_proj.weight"), h, D, opt_bias(p + "self_attn.v_proj.bias"));
      }
      const std::vector<vec> o = attention(q, k, v);
      for (int i = 0; i < T; ++i) {
        const vec y = linear(m.at(p + "self_attn.out_proj.weight"), o[i], D, opt_bias(p + "self_attn.out_proj.bias"));
        for (int j = 0; j < D; ++j) x[i][j] += y[j];
        if (post_ln) x[i] = ln(x[i], "self_attn_layer_norm");
        const vec h = post_ln ? x[i] : ln(x[i], "final_layer_norm");
        vec a = linear(m.at(p + "fc1.weight"), h, d.F, opt_bias(p + "fc1.bias"));
        for (double& e : a) e = act(act_name, e);
        const vec f = linear(m.at(p + "fc2.weight"), a, D, opt_bias(p + "fc2.bias"));
        for (int j = 0; j < D; ++j) x[i][j] += f[j];
        if (post_ln) x[i] = ln(x[i], "final_layer_norm");
      }
    }
  }
  // final norm and classifier
  std::string cls;
  if (llama_like(c)) cls = tied(c) ? "model.embed_tokens.weight" : "lm_head.weight";
  else if (t == "gpt2") cls = tied(c) ? "transformer.wte.weight" : "lm_head.weight";
  else if (t == "gpt_neox") cls = tied(c) ? "gpt_neox.embed_in.weight" : "embed_out.weight";
  else cls = tied(c) ? "model.decoder.embed_tokens.weight" : "lm_head.weight";
  std::vector<vec> logits(T);
  for (int i = 0; i < T; ++i) {
    vec xf = x[i];
    if (llama_like(c)) xf = rms_norm(xf, m.at("model.norm.weight"), eps);
    else if (t == "gpt2") xf = layer_norm(xf, m.at("transformer.ln_f.weight"), m.at("transformer.ln_f.bias"), eps);
    else if (t == "gpt_neox")
      xf = layer_norm(xf, m.at("gpt_neox.final_layer_norm.weight"), m.at("gpt_neox.final_layer_norm.bias"), eps);
    else if (!post_ln)
      xf = layer_norm(xf, m.at("model.decoder.final_layer_norm.weight"), m.at("model.decoder.final_layer_norm.bias"),
                      eps);
    logits[i] = linear(m.at(cls), xf, d.V);
  }
  return logits;
}

// ---- files ------------------------------------------------------------------------------------------

// model.safetensors (F32, Hugging Face names) and config.json in `dir`; with shards > 1 instead
// model-0000k-of-0000n.safetensors and model.safetensors.index.json (tensors dealt round-robin).
inline void write_hf(const hf_checkpoint& m, const std::string& dir, int shards = 1) {
  std::vector<std::vector<float>> data;
  for (const auto& [name, t] : m.t) data.emplace_back(t.v.begin(), t.v.end());
  std::vector<std::vector<lowbit::st_write_tensor>> parts(shards);
  nlohmann::json weight_map = nlohmann::json::object();
  size_t i = 0;
  auto shard_name = [&](int s) {
    char b[64];
    std::snprintf(b, sizeof b, "model-%05d-of-%05d.safetensors", s + 1, shards);
    return std::string(b);
  };
  for (const auto& [name, t] : m.t) {
    const int s = static_cast<int>(i % shards);
    parts[s].push_back({name, lowbit::st_dtype::f32, t.shape, data[i].data()});
    weight_map[name] = shard_name(s);
    ++i;
  }
  if (shards == 1) {
    lowbit::write_safetensors(dir + "/model.safetensors", parts[0], {{"format", "pt"}});
  } else {
    for (int s = 0; s < shards; ++s) lowbit::write_safetensors(dir + "/" + shard_name(s), parts[s], {{"format", "pt"}});
    std::ofstream(dir + "/model.safetensors.index.json") << nlohmann::json{{"metadata", {{"total_size", 0}}},
                                                                          {"weight_map", weight_map}}.dump(2);
  }
  std::ofstream(dir + "/config.json") << m.config.dump(2);
}

// llama.cpp's GGUF of the checkpoint (convert_hf_to_gguf.py: LlamaModel (llama, mistral),
// Qwen2Model, GPT2Model, GPTNeoXModel), F32, with its tensor names, layouts and metadata keys. A
// Mistral's sliding window goes as llama.attention.sliding_window (lowbit's key: llama.cpp's
// convert drops it). Returns false for OPT (no llama.cpp architecture).
inline bool write_llama_cpp_gguf(const hf_checkpoint& m, const std::string& path) {
  const nlohmann::json& c = m.config;
  const std::string t = model_type(c);
  const dims d = dims_of(c);
  if (t == "opt") return false;
  const std::string a = t == "mistral" ? "llama" : t == "gpt_neox" ? "gptneox" : t;
  lowbit::gguf_writer w;
  w.add_string("general.architecture", a);
  w.add_u32(a + ".block_count", d.L);
  w.add_u32(a + ".context_length", d.P);
  w.add_u32(a + ".embedding_length", d.D);
  w.add_u32(a + ".feed_forward_length", d.F);
  w.add_u32(a + ".attention.head_count", d.H);
  std::vector<std::vector<float>> keep;  // tensor data outliving the writer's pointers
  auto put = [&](const std::string& name, const std::vector<int64_t>& shape, const vec& v) {
    keep.emplace_back(v.begin(), v.end());
    w.add_tensor(name, shape, keep.back().data(), lowbit::ggml_type::f32);
  };
  auto put_hf = [&](const std::string& gguf, const std::string& hf) { put(gguf, m.t.at(hf).shape, m.at(hf)); };
  if (llama_like(c)) {
    w.add_u32(a + ".attention.head_count_kv", d.KV_heads);
    if (c.contains("rope_theta")) w.add_f32(a + ".rope.freq_base", c["rope_theta"].get<float>());
    w.add_f32(a + ".attention.layer_norm_rms_epsilon", get_or<float>(c, "rms_norm_eps", 1e-6f));
    if (t != "qwen2") {
      w.add_u32(a + ".vocab_size", d.V);
      w.add_u32(a + ".rope.dimension_count", d.hd);
    }
    if (t == "mistral" && get_or<int>(c, "sliding_window", 0)) w.add_u32(a + ".attention.sliding_window", c["sliding_window"]);
    // LlamaModel.permute: rows (n_head, 2, hd/2) -> (n_head, hd/2, 2), on q and k (weights and biases)
    auto permute = [&](const std::string& hf, int heads) {
      const hf_tensor& src = m.t.at(hf);
      const int64_t rows = src.shape[0], cols = src.shape.size() == 2 ? src.shape[1] : 1, per = rows / heads;
      vec out(src.v.size());
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t two = 0; two < 2; ++two)
          for (int64_t i = 0; i < per / 2; ++i)
            for (int64_t col = 0; col < cols; ++col)
              out[((h * per) + i * 2 + two) * cols + col] = src.v[((h * per) + two * (per / 2) + i) * cols + col];
      return out;
    };
    if (c.contains("rope_scaling") && !c["rope_scaling"].is_null() && c["rope_scaling"].value("rope_type", "") == "llama3") {
      // generate_extra_tensors: rope_freqs.weight, the per-frequency divisors
      const nlohmann::json& s = c["rope_scaling"];
      const double base = get_or<double>(c, "rope_theta", 10000.0), factor = s["factor"], low = s["low_freq_factor"],
                   high = s["high_freq_factor"], old_len = s["original_max_position_embeddings"];
      vec factors;
      for (int i = 0; i < d.hd / 2; ++i) {
        const double freq = 1.0 / std::pow(base, double(2 * i) / d.hd), wavelen = 2 * M_PI / freq;
        if (wavelen < old_len / high) factors.push_back(1);
        else if (wavelen > old_len / low) factors.push_back(factor);
        else {
          const double smooth = (old_len / wavelen - low) / (high - low);
          factors.push_back(1 / ((1 - smooth) / factor + smooth));
        }
      }
      put("rope_freqs.weight", {int64_t(factors.size())}, factors);
    } else if (c.contains("rope_scaling") && !c["rope_scaling"].is_null()) {
      w.add_string(a + ".rope.scaling.type", "linear");
      w.add_f32(a + ".rope.scaling.factor", c["rope_scaling"]["factor"].get<float>());
    }
    put_hf("token_embd.weight", "model.embed_tokens.weight");
    for (int l = 0; l < d.L; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".", b = "blk." + std::to_string(l) + ".";
      put_hf(b + "attn_norm.weight", p + "input_layernorm.weight");
      for (const char* s : {"weight", "bias"}) {
        const std::string qn = p + "self_attn.q_proj." + s, kn = p + "self_attn.k_proj." + s;
        if (!m.has(qn)) continue;
        if (t == "qwen2") put_hf(b + "attn_q." + s, qn), put_hf(b + "attn_k." + s, kn);
        else put(b + "attn_q." + s, m.t.at(qn).shape, permute(qn, d.H)), put(b + "attn_k." + s, m.t.at(kn).shape, permute(kn, d.KV_heads));
        put_hf(b + "attn_v." + s, p + "self_attn.v_proj." + s);
      }
      put_hf(b + "attn_output.weight", p + "self_attn.o_proj.weight");
      if (m.has(p + "self_attn.o_proj.bias")) put_hf(b + "attn_output.bias", p + "self_attn.o_proj.bias");
      put_hf(b + "ffn_norm.weight", p + "post_attention_layernorm.weight");
      for (const auto& [hf, g] : {std::pair<const char*, const char*>{"gate_proj", "ffn_gate"}, {"up_proj", "ffn_up"},
                                  {"down_proj", "ffn_down"}}) {
        put_hf(b + g + ".weight", p + "mlp." + hf + ".weight");
        if (m.has(p + "mlp." + hf + ".bias")) put_hf(b + g + ".bias", p + "mlp." + hf + ".bias");
      }
    }
    put_hf("output_norm.weight", "model.norm.weight");
    if (!tied(c)) put_hf("output.weight", "lm_head.weight");
  } else if (t == "gpt2") {
    w.add_f32(a + ".attention.layer_norm_epsilon", get_or<float>(c, "layer_norm_epsilon", 1e-5f));
    // GPT2Model.modify_tensors: Conv1D weights transposed to [out, in]
    auto put_t = [&](const std::string& gguf, const std::string& hf) {
      const hf_tensor& src = m.t.at(hf);
      const int64_t in = src.shape[0], out = src.shape[1];
      vec v(src.v.size());
      for (int64_t r = 0; r < in; ++r)
        for (int64_t col = 0; col < out; ++col) v[col * in + r] = src.v[r * out + col];
      put(gguf, {out, in}, v);
    };
    put_hf("token_embd.weight", "transformer.wte.weight");
    put_hf("position_embd.weight", "transformer.wpe.weight");
    for (int l = 0; l < d.L; ++l) {
      const std::string p = "transformer.h." + std::to_string(l) + ".", b = "blk." + std::to_string(l) + ".";
      for (const char* s : {"weight", "bias"}) {
        put_hf(b + "attn_norm." + s, p + "ln_1." + s);
        put_hf(b + "ffn_norm." + s, p + "ln_2." + s);
      }
      put_t(b + "attn_qkv.weight", p + "attn.c_attn.weight"), put_hf(b + "attn_qkv.bias", p + "attn.c_attn.bias");
      put_t(b + "attn_output.weight", p + "attn.c_proj.weight"), put_hf(b + "attn_output.bias", p + "attn.c_proj.bias");
      put_t(b + "ffn_up.weight", p + "mlp.c_fc.weight"), put_hf(b + "ffn_up.bias", p + "mlp.c_fc.bias");
      put_t(b + "ffn_down.weight", p + "mlp.c_proj.weight"), put_hf(b + "ffn_down.bias", p + "mlp.c_proj.bias");
    }
    put_hf("output_norm.weight", "transformer.ln_f.weight");
    put_hf("output_norm.bias", "transformer.ln_f.bias");
    if (!tied(c)) put_hf("output.weight", "lm_head.weight");
  } else {  // gpt_neox
    w.add_u32(a + ".rope.dimension_count", static_cast<uint32_t>(get_or<double>(c, "rotary_pct", 0.25) * d.hd));
    w.add_bool(a + ".use_parallel_residual", get_or<bool>(c, "use_parallel_residual", true));
    w.add_f32(a + ".attention.layer_norm_epsilon", get_or<float>(c, "layer_norm_eps", 1e-5f));
    if (c.contains("rotary_emb_base")) w.add_f32(a + ".rope.freq_base", c["rotary_emb_base"].get<float>());
    // GPTNeoXModel.modify_tensors: qkv rows (n_head, 3, hd) regrouped to (3, n_head, hd)
    auto regroup = [&](const std::string& hf) {
      const hf_tensor& src = m.t.at(hf);
      const int64_t cols = src.shape.size() == 2 ? src.shape[1] : 1;
      vec out(src.v.size());
      for (int h = 0; h < d.H; ++h)
        for (int part = 0; part < 3; ++part)
          for (int e = 0; e < d.hd; ++e)
            for (int64_t col = 0; col < cols; ++col)
              out[((int64_t(part) * d.H + h) * d.hd + e) * cols + col] = src.v[((int64_t(h) * 3 + part) * d.hd + e) * cols + col];
      return out;
    };
    put_hf("token_embd.weight", "gpt_neox.embed_in.weight");
    for (int l = 0; l < d.L; ++l) {
      const std::string p = "gpt_neox.layers." + std::to_string(l) + ".", b = "blk." + std::to_string(l) + ".";
      for (const char* s : {"weight", "bias"}) {
        put_hf(b + "attn_norm." + s, p + "input_layernorm." + s);
        put_hf(b + "ffn_norm." + s, p + "post_attention_layernorm." + s);
        if (m.has(p + "attention.query_key_value." + s))
          put(b + "attn_qkv." + s, m.t.at(p + "attention.query_key_value." + s).shape,
              regroup(p + "attention.query_key_value." + s));
        if (m.has(p + "attention.dense." + s)) put_hf(b + "attn_output." + s, p + "attention.dense." + s);
        put_hf(b + "ffn_up." + s, p + "mlp.dense_h_to_4h." + s);
        put_hf(b + "ffn_down." + s, p + "mlp.dense_4h_to_h." + s);
      }
    }
    put_hf("output_norm.weight", "gpt_neox.final_layer_norm.weight");
    put_hf("output_norm.bias", "gpt_neox.final_layer_norm.bias");
    if (!tied(c)) put_hf("output.weight", "embed_out.weight");
  }
  w.write(path);
  return true;
}

}  // namespace family_test

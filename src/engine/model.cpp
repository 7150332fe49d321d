// The in-memory model: configuration checks, canonical tensor names, the llama2.c reader and
// random models for benchmarks.
#include "lowbit/engine/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lowbit/base/hash.hpp"
#include "lowbit/formats/half.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/kernels/scale.hpp"
#include "src/engine/decoder.hpp"

namespace lowbit {

int64_t tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
int64_t tensor::rows() const { return shape.empty() ? 1 : numel() / shape.back(); }
int64_t tensor::cols() const { return shape.empty() ? 1 : shape.back(); }

namespace {

struct family_name {
  architecture arch;
  const char* name;
};
constexpr family_name kFamilies[] = {{architecture::llama, "llama"},     {architecture::gpt2, "gpt2"},
                                     {architecture::mistral, "mistral"}, {architecture::qwen2, "qwen2"},
                                     {architecture::gptneox, "gptneox"}, {architecture::opt, "opt"}};

bool llama_family(architecture a) {
  return a == architecture::llama || a == architecture::mistral || a == architecture::qwen2;
}

}  // namespace

const char* architecture_name(architecture a) {
  for (const family_name& f : kFamilies)
    if (f.arch == a) return f.name;
  return "?";
}

architecture parse_architecture(const std::string& name) {
  for (const family_name& f : kFamilies)
    if (name == f.name) return f.arch;
  throw error(fmt::format("unknown architecture '{}': expected llama, gpt2, mistral, qwen2, gptneox or opt", name));
}

std::vector<architecture> all_architectures() {
  std::vector<architecture> v;
  for (const family_name& f : kFamilies) v.push_back(f.arch);
  return v;
}

const char* activation_name(activation a) {
  switch (a) {
    case activation::silu: return "silu";
    case activation::gelu_tanh: return "gelu_tanh";
    case activation::gelu: return "gelu";
    case activation::relu: return "relu";
  }
  return "?";
}

// ---- the families' layer sets (docs/evaluation.md "Model families") ------------------------------

bool model_config::layer_norm() const {
  return arch == architecture::gpt2 || arch == architecture::gptneox || arch == architecture::opt;
}
bool model_config::gated_mlp() const { return llama_family(arch); }
bool model_config::uses_rope() const { return llama_family(arch) || arch == architecture::gptneox; }
bool model_config::learned_positions() const { return arch == architecture::gpt2 || arch == architecture::opt; }
int model_config::position_offset() const { return arch == architecture::opt ? 2 : 0; }
bool model_config::fused_qkv() const { return arch == architecture::gpt2 || arch == architecture::gptneox; }

activation model_config::mlp_activation() const {
  if (act) return *act;
  switch (arch) {
    case architecture::gpt2: return activation::gelu_tanh;  // gelu_new
    case architecture::gptneox: return activation::gelu;    // Pythia's hidden_act "gelu"
    case architecture::opt: return activation::relu;
    default: return activation::silu;
  }
}
// Hugging Face's defaults: GPT-2 always has biases, GPT-NeoX's attention_bias and OPT's
// enable_bias default to true, Llama's attention_bias and mlp_bias to false; Qwen2 has biases on
// q, k, v only.
bool model_config::qkv_bias() const {
  if (arch == architecture::gpt2 || arch == architecture::qwen2) return true;
  return attn_bias.value_or(arch == architecture::gptneox || arch == architecture::opt);
}
bool model_config::out_bias() const {
  if (arch == architecture::gpt2) return true;
  if (arch == architecture::qwen2) return false;
  return attn_bias.value_or(arch == architecture::gptneox || arch == architecture::opt);
}
bool model_config::has_mlp_bias() const {
  if (arch == architecture::gpt2 || arch == architecture::gptneox) return true;
  return mlp_bias.value_or(arch == architecture::opt);
}
bool model_config::has_parallel_residual() const {
  return parallel_residual.value_or(arch == architecture::gptneox);
}
int model_config::rotary_dim() const {
  if (!uses_rope() || n_heads <= 0) return 0;
  if (rope_dim) return *rope_dim;
  // GPT-NeoX's rotary_pct defaults to 0.25 (Hugging Face's GPTNeoXConfig): int(head_dim * 0.25).
  return arch == architecture::gptneox ? head_dim() / 4 : head_dim();
}

std::string model_config::variant_string() const {
  std::string s;
  auto add = [&](const std::string& part) { s += (s.empty() ? "" : " ") + part; };
  if (act) add(fmt::format("act={}", activation_name(*act)));
  if (attn_bias) add(fmt::format("attn_bias={}", *attn_bias));
  if (mlp_bias) add(fmt::format("mlp_bias={}", *mlp_bias));
  if (parallel_residual) add(fmt::format("parallel_residual={}", *parallel_residual));
  if (rope_dim) add(fmt::format("rope_dim={}", *rope_dim));
  if (!norm_before) add("post_ln");
  if (sliding_window) add(fmt::format("sliding_window={}", sliding_window));
  if (rope_scaling.type != rope_scaling_type::none)
    add(fmt::format("rope_scaling={}:{}:{}:{}:{}", rope_scaling.type == rope_scaling_type::linear ? "linear" : "llama3",
                    rope_scaling.factor, rope_scaling.low_freq_factor, rope_scaling.high_freq_factor,
                    rope_scaling.original_max_position_embeddings));
  if (!rope_freq_factors.empty()) add(fmt::format("rope_freqs={}", fmt::join(rope_freq_factors, ",")));
  return s;
}

void model_config::validate() const {
  auto need = [](bool ok, const char* field, int v, const char* expected) {
    if (!ok) throw error(fmt::format("model config: {} = {} ({})", field, v, expected));
  };
  // Bounds keep a lying header from asking for terabytes before any data is read.
  need(dim > 0 && dim <= 65536, "dim", dim, "expected 1..65536");
  need(hidden_dim > 0 && hidden_dim <= 262144, "hidden_dim", hidden_dim, "expected 1..262144");
  need(n_layers > 0 && n_layers <= 1024, "n_layers", n_layers, "expected 1..1024");
  need(n_heads > 0 && dim % n_heads == 0, "n_heads", n_heads, "expected a divisor of dim");
  need(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "n_kv_heads", n_kv_heads,
       "expected a divisor of n_heads");
  need(vocab_size > 0 && vocab_size <= 1 << 22, "vocab_size", vocab_size, "expected 1..4194304");
  need(max_seq_len > 0 && max_seq_len <= 1 << 20, "max_seq_len", max_seq_len, "expected 1..1048576");
  need(!llama_family(arch) || head_dim() % 2 == 0, "head_dim", head_dim(), "RoPE needs an even head dimension");
  const char* name = architecture_name(arch);
  if (fused_qkv() && n_kv_heads != n_heads)
    throw error(fmt::format("model config: n_kv_heads = {} ({} has one kv head per query head)", n_kv_heads,
                            arch == architecture::gpt2 ? "GPT-2" : name));
  if (!(norm_eps > 0) || !std::isfinite(norm_eps))
    throw error(fmt::format("model config: norm_eps = {} (expected a positive number)", norm_eps));
  // RoPE's base: angles pos * base^(-2i/d) are NaN or meaningless for a base that is NaN, 0 or
  // negative (the families without RoPE do not use it, and keep the default).
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    throw error(fmt::format("model config: rope_theta = {} (expected a positive number)", rope_theta));
  // What each family can hold (the variants its Hugging Face config has; docs/evaluation.md).
  auto refuse = [&](const std::string& what) {
    throw error(fmt::format("model config: {} cannot have {}", name, what));
  };
  if (l1_norm && arch != architecture::llama) refuse("the L1 norm (lowbit_norm l1: Llama's RMSNorm variant)");
  const activation f = mlp_activation();
  if (gated_mlp() && f != activation::silu)
    refuse(fmt::format("hidden_act {} (its MLP is SwiGLU: silu only)", activation_name(f)));
  if (!gated_mlp() && f == activation::silu) refuse("an ungated silu MLP");
  if (attn_bias && (arch == architecture::mistral || arch == architecture::qwen2 || arch == architecture::gpt2) &&
      *attn_bias != (arch == architecture::gpt2))
    refuse(fmt::format("attention biases {} (fixed by the family)", *attn_bias ? "on" : "off"));
  if (mlp_bias && arch != architecture::llama && arch != architecture::opt &&
      *mlp_bias != (arch == architecture::gpt2 || arch == architecture::gptneox))
    refuse(fmt::format("MLP biases {} (fixed by the family)", *mlp_bias ? "on" : "off"));
  if (arch == architecture::opt && attn_bias.value_or(true) != mlp_bias.value_or(true))
    refuse("biases on attention and not on the MLP or the reverse (enable_bias sets both)");
  if (parallel_residual && arch != architecture::gptneox && *parallel_residual) refuse("a parallel residual");
  if (!norm_before && arch != architecture::opt) refuse("post-LayerNorm blocks");
  if (sliding_window < 0) throw error(fmt::format("model config: sliding_window = {} (expected >= 0)", sliding_window));
  if (sliding_window && arch != architecture::mistral) refuse("a sliding window");
  if (!uses_rope()) {
    if (rope_dim) refuse("a rotary dimension (no RoPE)");
    if (rope_scaling.type != rope_scaling_type::none || !rope_freq_factors.empty()) refuse("RoPE scaling (no RoPE)");
  } else {
    const int r = rotary_dim();
    if (r <= 0 || r > head_dim() || r % 2)
      throw error(fmt::format("model config: rotary dimension {} (expected an even number in 2..head_dim {})", r,
                              head_dim()));
    if (r != head_dim() && arch != architecture::gptneox) refuse("a partial rotary dimension");
    if (!rope_freq_factors.empty()) {
      if (int(rope_freq_factors.size()) != r / 2)
        throw error(fmt::format("model config: {} RoPE frequency factors for {} rotated pairs",
                                rope_freq_factors.size(), r / 2));
      for (float v : rope_freq_factors)
        if (!(v > 0) || !std::isfinite(v))
          throw error(fmt::format("model config: RoPE frequency factor {} (expected a positive number)", v));
    }
    const rope_scale& rs = rope_scaling;
    if (rs.type != rope_scaling_type::none && !(rs.factor >= 1 && std::isfinite(rs.factor)))
      throw error(fmt::format("model config: rope_scaling factor {} (expected a number >= 1)", rs.factor));
    if (rs.type == rope_scaling_type::llama3 &&
        !(rs.low_freq_factor > 0 && rs.high_freq_factor > rs.low_freq_factor && std::isfinite(rs.high_freq_factor) &&
          rs.original_max_position_embeddings > 0))
      throw error(fmt::format("model config: llama3 rope_scaling low_freq_factor {}, high_freq_factor {}, "
                              "original_max_position_embeddings {} (expected 0 < low < high and a positive length)",
                              rs.low_freq_factor, rs.high_freq_factor, rs.original_max_position_embeddings));
  }
}

int64_t model_config::parameter_count() const {
  int64_t n = 0;
  decoder::model_params layout;
  decoder::for_each_view(*this, layout, [&](const std::string&, const float*&, const std::vector<int64_t>& shape) {
    int64_t k = 1;
    for (int64_t d : shape) k *= d;
    n += k;
  });
  return n;
}

std::vector<double> rope_frequencies(const model_config& c) {
  const int r = c.rotary_dim();
  std::vector<double> f(r / 2);
  for (int p = 0; p < r / 2; ++p) f[p] = std::pow(double(c.rope_theta), -2.0 * p / r);
  if (!c.rope_freq_factors.empty()) {  // llama.cpp's ggml_rope_ext: theta_i / freq_factors[i]
    for (int p = 0; p < r / 2; ++p) f[p] /= c.rope_freq_factors[p];
    return f;
  }
  const rope_scale& s = c.rope_scaling;
  if (s.type == rope_scaling_type::linear) {
    for (double& v : f) v /= s.factor;
  } else if (s.type == rope_scaling_type::llama3) {
    // Meta's Llama 3.1 reference (apply_scaling; Hugging Face's _compute_llama3_parameters):
    // wavelengths 2 pi / f above old_len / low_freq_factor are divided by factor, those below
    // old_len / high_freq_factor kept, and in between blended by
    // smooth = (old_len / wavelength - low) / (high - low).
    const double old_len = s.original_max_position_embeddings;
    const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
    for (double& v : f) {
      const double wavelen = 2 * M_PI / v;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        v /= s.factor;
      } else {
        const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        v = (1 - smooth) * v / s.factor + smooth * v;
      }
    }
  }
  return f;
}

int default_hidden_dim(architecture a, int dim) {
  return llama_family(a) ? (8 * dim / 3 + 31) / 32 * 32 : 4 * dim;
}

const tensor& model::get(const std::string& name) const {
  if (const tensor* t = find(name)) return *t;
  throw error(fmt::format("model {}: tensor '{}' is missing", source_path, name));
}
tensor& model::get_mut(const std::string& name) {
  if (tensor* t = find(name)) return *t;
  throw error(fmt::format("model {}: tensor '{}' is missing", source_path, name));
}
tensor* model::find(const std::string& name) {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}
const tensor* model::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}
const tensor& model::classifier() const {
  return config.tied_classifier ? get("token_embd.weight") : get("output.weight");
}

// The decoder's views (src/engine/decoder.hpp), in their order.
std::vector<std::pair<std::string, std::vector<int64_t>>> model_tensor_shapes(const model_config& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> e;
  decoder::model_params layout;
  decoder::for_each_view(c, layout, [&](const std::string& name, const float*&, const std::vector<int64_t>& shape) {
    e.push_back({name, shape});
  });
  return e;
}

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

void model::validate_shapes() const {
  config.validate();
  for (const auto& [name, shape] : model_tensor_shapes(config)) {
    const tensor& t = get(name);
    if (t.shape != shape) {
      const model_config& c = config;
      throw shape_error(fmt::format("model {}: tensor '{}' has shape {}, the config (dim {}, hidden_dim {}, "
                                    "n_heads {}, n_kv_heads {}, vocab_size {}, max_seq_len {}) gives it {}",
                                    source_path, name, shape_str(t.shape), c.dim, c.hidden_dim, c.n_heads,
                                    c.n_kv_heads, c.vocab_size, c.max_seq_len, shape_str(shape)));
    }
  }
}

void model::validate() const {
  validate_shapes();
  for (const auto& [name, t] : tensors) {
    if (const auto it = packed.find(name); it != packed.end()) {  // codes instead of values
      if (!it->second || it->second->rows != t.rows() || it->second->cols != t.cols() || !t.data.empty())
        throw shape_error(fmt::format("model {}: packed tensor '{}' does not match its shape {}", source_path, name,
                                      shape_str(t.shape)));
      continue;
    }
    if (static_cast<int64_t>(t.data.size()) != t.numel())
      throw shape_error(fmt::format("model {}: tensor '{}' holds {} values for shape {}",
                                    source_path, name, t.data.size(), shape_str(t.shape)));
  }
}

tensor tensor_reader::read(const std::string& name) const {
  const tensor* expected = header.find(name);
  if (!expected) throw error(fmt::format("{}: no tensor '{}'", header.source_path, name));
  tensor t = load(name);
  if (t.shape != expected->shape || static_cast<int64_t>(t.data.size()) != expected->numel())
    throw shape_error(fmt::format("{}: tensor '{}' read as {} values of shape {}; the header says {}",
                                  header.source_path, name, t.data.size(), shape_str(t.shape),
                                  shape_str(expected->shape)));
  return t;
}

codes_layout layout_of(const quantized_tensor& q) {
  return {q.fmt, q.rows, q.cols, q.row_bytes, int64_t(q.scales.size()), int64_t(q.zero_points.size()),
          int64_t(q.super_scales.size()), q.tensor_scale != 1.0f};
}

namespace {

class in_memory_reader final : public tensor_reader {
 public:
  in_memory_reader(const model& m, const std::map<std::string, quantized_tensor>* codes) : m_(m), codes_(codes) {
    header.config = m.config;
    header.tokenizer = m.tokenizer;
    header.source_path = m.source_path;
    header.provenance = m.provenance;
    for (const auto& [name, t] : m.tensors) header.tensors[name].shape = t.shape;
  }
  tensor load(const std::string& name) const override { return m_.get(name); }
  const tensor* peek(const std::string& name) const override { return m_.find(name); }
  const quantized_tensor* peek_codes(const std::string& name) const override {
    if (!codes_) return nullptr;
    const auto it = codes_->find(name);
    return it == codes_->end() ? nullptr : &it->second;
  }
  void hash_contents(fnv1a64& h) const override {  // the values where they are, not copies
    for (const auto& [name, t] : m_.tensors) h.add(name), h.add(t.data.data(), t.data.size() * sizeof(float));
  }
  std::vector<std::string> coded_names() const override {
    std::vector<std::string> names;
    if (codes_)
      for (const auto& [name, q] : *codes_) names.push_back(name);
    return names;
  }
  quantized_tensor read_codes(const std::string& name) const override {
    if (codes_)
      if (auto it = codes_->find(name); it != codes_->end()) return it->second;
    return tensor_reader::read_codes(name);
  }

 private:
  const model& m_;
  const std::map<std::string, quantized_tensor>* codes_;
};

}  // namespace

void tensor_reader::hash_contents(fnv1a64& h) const {
  for (const auto& [name, shape_only] : header.tensors) {
    const tensor t = read(name);
    h.add(name), h.add(t.data.data(), t.data.size() * sizeof(float));
  }
}

quantized_tensor tensor_reader::read_codes(const std::string& name) const {
  throw error(fmt::format("{}: tensor '{}' has no codes", header.source_path, name));
}

codes_layout tensor_reader::read_codes_layout(const std::string& name) const {
  return layout_of(read_codes(name));
}

std::unique_ptr<tensor_reader> reader_of(const model& m, const std::map<std::string, quantized_tensor>* codes) {
  return std::make_unique<in_memory_reader>(m, codes);
}

model read_whole_model(const tensor_reader& r) {
  model m;
  m.config = r.header.config;
  m.tokenizer = r.header.tokenizer;
  m.source_path = r.header.source_path;
  m.provenance = r.header.provenance;
  for (const auto& [name, shape_only] : r.header.tensors) m.tensors[name] = r.read(name);
  m.validate();
  return m;
}

static_assert(decoder::linears_per_block == 7);

int model::linear_number(const model_config& c, const std::string& name) {
  int l = 0;
  char part[32] = {};
  if (std::sscanf(name.c_str(), "blk.%d.%31[a-z_].weight", &l, part) != 2 || l < 0 || l >= c.n_layers) return -1;
  if (name != fmt::format("blk.{}.{}.weight", l, part)) return -1;
  static const std::pair<const char*, int> parts[] = {{"attn_qkv", 0}, {"attn_q", 0}, {"attn_k", 1}, {"attn_v", 2},
                                                      {"attn_output", 3}, {"ffn_gate", 4}, {"ffn_up", 5},
                                                      {"ffn_down", 6}};
  for (const auto& [p, j] : parts)
    if (std::string(part) == p) return l * 7 + j;
  return -1;
}

std::vector<std::string> model::linear_weight_names() const {
  std::vector<std::string> names;
  const model_config& c = config;
  for (int l = 0; l < c.n_layers; ++l) {
    std::vector<const char*> parts;
    if (c.fused_qkv()) parts = {"attn_qkv"};
    else parts = {"attn_q", "attn_k", "attn_v"};
    parts.push_back("attn_output");
    if (c.gated_mlp()) parts.push_back("ffn_gate");
    parts.push_back("ffn_up");
    parts.push_back("ffn_down");
    for (const char* n : parts) names.push_back(fmt::format("blk.{}.{}.weight", l, n));
  }
  return names;
}

// ---- random models ------------------------------------------------------------------------------
model synthesize_model(const model_config& c, uint64_t seed) {
  c.validate();
  model m;
  m.config = c;
  m.source_path = "synth";
  m.tokenizer.kind = "bytes";
  uint64_t id = 0;
  for (const auto& [name, shape] : model_tensor_shapes(c)) {
    tensor t{shape, {}};
    t.data.resize(t.numel());
    const bool norm_weight = name.find("_norm.weight") != std::string::npos;
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (norm_weight) {
      std::fill(t.data.begin(), t.data.end(), 1.0f);
    } else if (bias) {
      std::fill(t.data.begin(), t.data.end(), 0.0f);
    } else {
      // N(0, 0.02) (GPT-2's initialisation) from the project's counter-based generator, so a
      // seed gives the same model on every machine; Box-Muller on pairs of words.
      const double sigma = 0.02;
      const uint64_t tid = ++id;
      #pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < t.numel(); i += 2) {
        const double u1 = (random_word(seed, tid, i) + 1.0) * 0x1p-32;
        const double u2 = random_word(seed, tid, i + 1) * 0x1p-32;
        const double r = std::sqrt(-2.0 * std::log(u1)) * sigma;
        t.data[i] = static_cast<float>(r * std::cos(2 * M_PI * u2));
        if (i + 1 < t.numel()) t.data[i + 1] = static_cast<float>(r * std::sin(2 * M_PI * u2));
      }
    }
    m.tensors[name] = std::move(t);
  }
  m.validate();
  return m;
}

}  // namespace lowbit

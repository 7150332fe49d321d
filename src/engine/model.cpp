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

#include "lowbit/base/hash.hpp"
#include "lowbit/formats/half.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/kernels/scale.hpp"

namespace lowbit {

int64_t tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
int64_t tensor::rows() const { return shape.empty() ? 1 : numel() / shape.back(); }
int64_t tensor::cols() const { return shape.empty() ? 1 : shape.back(); }

const char* architecture_name(architecture a) { return a == architecture::llama ? "llama" : "gpt2"; }

architecture parse_architecture(const std::string& name) {
  if (name == "llama") return architecture::llama;
  if (name == "gpt2") return architecture::gpt2;
  throw error(fmt::format("unknown architecture '{}': expected llama or gpt2", name));
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
  need(arch != architecture::llama || head_dim() % 2 == 0, "head_dim", head_dim(),
       "RoPE needs an even head dimension");
  need(arch != architecture::gpt2 || n_kv_heads == n_heads, "n_kv_heads", n_kv_heads,
       "GPT-2 has one kv head per query head");
  if (!(norm_eps > 0) || !std::isfinite(norm_eps))
    throw error(fmt::format("model config: norm_eps = {} (expected a positive number)", norm_eps));
  // RoPE's base: angles pos * base^(-2i/d) are NaN or meaningless for a base that is NaN, 0 or
  // negative (GPT-2 does not use it, and keeps the default).
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    throw error(fmt::format("model config: rope_theta = {} (expected a positive number)", rope_theta));
}

int64_t model_config::parameter_count() const {
  const int64_t d = dim, h = hidden_dim, hd = head_dim(), kv = int64_t(n_kv_heads) * hd;
  int64_t per_layer = 0, rest = int64_t(vocab_size) * d;
  if (arch == architecture::llama) {
    per_layer = 2 * d + d * d * 2 + 2 * d * kv + 3 * d * h;
    rest += d;
  } else {
    per_layer = 4 * d + 3 * d * d + 3 * d + d * d + d + 2 * d * h + h + d;
    rest += int64_t(max_seq_len) * d + 2 * d;
  }
  if (!tied_classifier) rest += int64_t(vocab_size) * d;
  return rest + per_layer * n_layers;
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

namespace {

// name -> expected shape, for every tensor the architecture reads.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const model_config& c) {
  const int64_t d = c.dim, h = c.hidden_dim, hd = c.head_dim(), kv = int64_t(c.n_kv_heads) * hd;
  const int64_t q = int64_t(c.n_heads) * hd;
  std::vector<std::pair<std::string, std::vector<int64_t>>> e;
  e.push_back({"token_embd.weight", {c.vocab_size, d}});
  if (c.arch == architecture::gpt2) e.push_back({"position_embd.weight", {c.max_seq_len, d}});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    e.push_back({b + "attn_norm.weight", {d}});
    e.push_back({b + "ffn_norm.weight", {d}});
    if (c.arch == architecture::llama) {
      e.push_back({b + "attn_q.weight", {q, d}});
      e.push_back({b + "attn_k.weight", {kv, d}});
      e.push_back({b + "attn_v.weight", {kv, d}});
      e.push_back({b + "attn_output.weight", {d, q}});
      e.push_back({b + "ffn_gate.weight", {h, d}});
      e.push_back({b + "ffn_up.weight", {h, d}});
      e.push_back({b + "ffn_down.weight", {d, h}});
    } else {
      e.push_back({b + "attn_norm.bias", {d}});
      e.push_back({b + "ffn_norm.bias", {d}});
      e.push_back({b + "attn_qkv.weight", {3 * d, d}});
      e.push_back({b + "attn_qkv.bias", {3 * d}});
      e.push_back({b + "attn_output.weight", {d, d}});
      e.push_back({b + "attn_output.bias", {d}});
      e.push_back({b + "ffn_up.weight", {h, d}});
      e.push_back({b + "ffn_up.bias", {h}});
      e.push_back({b + "ffn_down.weight", {d, h}});
      e.push_back({b + "ffn_down.bias", {d}});
    }
  }
  e.push_back({"output_norm.weight", {d}});
  if (c.arch == architecture::gpt2) e.push_back({"output_norm.bias", {d}});
  if (!c.tied_classifier) e.push_back({"output.weight", {c.vocab_size, d}});
  return e;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

void model::validate_shapes() const {
  config.validate();
  for (const auto& [name, shape] : expected_tensors(config)) {
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
  for (const auto& [name, t] : tensors)
    if (static_cast<int64_t>(t.data.size()) != t.numel())
      throw shape_error(fmt::format("model {}: tensor '{}' holds {} values for shape {}",
                                    source_path, name, t.data.size(), shape_str(t.shape)));
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

std::vector<std::string> model::linear_weight_names() const {
  std::vector<std::string> names;
  const char* llama[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  const char* gpt2[] = {"attn_qkv", "attn_output", "ffn_up", "ffn_down"};
  for (int l = 0; l < config.n_layers; ++l) {
    if (config.arch == architecture::llama)
      for (const char* n : llama) names.push_back(fmt::format("blk.{}.{}.weight", l, n));
    else
      for (const char* n : gpt2) names.push_back(fmt::format("blk.{}.{}.weight", l, n));
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
  for (const auto& [name, shape] : expected_tensors(c)) {
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

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

#include "lowbit/engine/safetensors.hpp"
#include "lowbit/error.hpp"
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

// ---- llama2.c .bin ---------------------------------------------------------------------------
namespace {

// The file memory-mapped; each tensor's offset computed from the header.
class llama2c_reader final : public tensor_reader {
 public:
  explicit llama2c_reader(const std::string& path) : file_(path) {
    const int64_t file_size = static_cast<int64_t>(file_.size());
    int32_t h[7];
    if (file_size < static_cast<int64_t>(sizeof h))
      throw error(fmt::format("{}: not a llama2.c model: {} bytes, the header alone needs 28", path, file_size));
    std::memcpy(h, file_.data(), sizeof h);
    model& m = header;
    m.source_path = path;
    model_config& c = m.config;
    c.arch = architecture::llama;
    c.dim = h[0], c.hidden_dim = h[1], c.n_layers = h[2], c.n_heads = h[3], c.n_kv_heads = h[4];
    c.tied_classifier = h[5] > 0;
    c.vocab_size = h[5] == INT32_MIN ? 0 : std::abs(h[5]);
    c.max_seq_len = h[6];
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    try {
      c.validate();
    } catch (const error& e) {
      throw error(fmt::format("{}: llama2.c header: {}", path, e.what()));
    }
    const int64_t d = c.dim, L = c.n_layers, hd = c.head_dim(), kv = int64_t(c.n_kv_heads) * hd;
    const int64_t hid = c.hidden_dim, V = c.vocab_size;
    const int64_t floats = V * d + L * d + L * d * d + 2 * L * kv * d + L * d * d + L * d +
                           3 * L * hid * d + d + int64_t(c.max_seq_len) * hd +
                           (c.tied_classifier ? 0 : V * d);
    const int64_t expected = 28 + floats * 4;
    if (file_size != expected)
      throw error(fmt::format("{}: llama2.c file is {} bytes; its header (dim {}, hidden {}, layers {}, "
                              "heads {}/{}, vocab {}, seq_len {}) needs {}", path, file_size, d, hid, L,
                              c.n_heads, c.n_kv_heads, V, c.max_seq_len, expected));
    uint64_t offset = 28;
    auto place = [&](const std::string& name, std::vector<int64_t> shape) {
      tensor& t = m.tensors[name];
      t.shape = std::move(shape);
      offsets_[name] = offset;
      offset += uint64_t(t.numel()) * 4;
    };
    auto stacked = [&](const char* name, std::vector<int64_t> shape) {
      for (int64_t l = 0; l < L; ++l) place(fmt::format("blk.{}.{}.weight", l, name), shape);
    };
    place("token_embd.weight", {V, d});
    stacked("attn_norm", {d});
    stacked("attn_q", {int64_t(c.n_heads) * hd, d});
    stacked("attn_k", {kv, d});
    stacked("attn_v", {kv, d});
    stacked("attn_output", {d, int64_t(c.n_heads) * hd});
    stacked("ffn_norm", {d});
    stacked("ffn_gate", {hid, d});
    stacked("ffn_down", {d, hid});
    stacked("ffn_up", {hid, d});
    place("output_norm.weight", {d});
    offset += uint64_t(c.max_seq_len) * hd * 4;  // RoPE tables: recomputed
    if (!c.tied_classifier) place("output.weight", {V, d});
  }

  tensor load(const std::string& name) const override {
    const auto it = offsets_.find(name);
    if (it == offsets_.end()) throw error(fmt::format("{}: no tensor '{}'", header.source_path, name));
    tensor t{header.get(name).shape, {}};
    t.data.resize(t.numel());
    // Chunk by chunk, each chunk's pages released once copied (the tensor, not it twice).
    auto* dst = reinterpret_cast<uint8_t*>(t.data.data());
    const uint8_t* src = file_.data() + it->second;
    read_mapped(src, 4 * t.data.size(), [&](const uint8_t* p, uint64_t n) { std::memcpy(dst + (p - src), p, n); }, 4);
    return t;
  }

  void hash_contents(fnv1a64& h) const override {  // the whole file (header and tensors), as it is
    read_mapped(file_.data(), file_.size(), [&h](const uint8_t* p, uint64_t n) { h.add(p, n); });
  }

 private:
  mapped_file file_;
  std::map<std::string, uint64_t> offsets_;  // byte offset of each tensor in the file
};

}  // namespace

// Legacy (v0) layout of karpathy/llama2.c run.c: seven int32 (dim, hidden_dim, n_layers,
// n_heads, n_kv_heads, vocab_size — negative when the classifier is separate —, seq_len), then
// float32 arrays: token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim],
// wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim],
// w1 [L, hidden, dim] (gate), w2 [L, dim, hidden] (down), w3 [L, hidden, dim] (up),
// rms_final [dim], freq_cis_real/imag [seq_len, head_size/2] each (unused), wcls [vocab, dim].
std::unique_ptr<tensor_reader> open_llama2c_reader(const std::string& path) {
  return std::make_unique<llama2c_reader>(path);
}

model load_llama2c(const std::string& path) { return read_whole_model(*open_llama2c_reader(path)); }

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

// llama2.c model files (karpathy/llama2.c's legacy v0 .bin layout), memory-mapped and read one
// tensor at a time.
#include <cstring>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/io/safetensors.hpp"

namespace lowbit {

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

}  // namespace lowbit

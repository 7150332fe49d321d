// A model in memory: its architecture and its float32 tensors under one canonical naming scheme,
// GGUF's (docs/conventions.md §18), whatever file it came from.
//
//   llama: token_embd.weight [vocab, dim]            output_norm.weight [dim]
//          output.weight [vocab, dim] (absent when the classifier is tied to token_embd)
//          blk.N.attn_norm.weight [dim]              blk.N.ffn_norm.weight [dim]
//          blk.N.attn_q.weight [n_heads*hd, dim]     blk.N.attn_k.weight / attn_v.weight [n_kv*hd, dim]
//          blk.N.attn_output.weight [dim, n_heads*hd]
//          blk.N.ffn_gate.weight / ffn_up.weight [hidden, dim]    blk.N.ffn_down.weight [dim, hidden]
//   gpt2:  token_embd.weight [vocab, dim]   position_embd.weight [n_ctx, dim]
//          output_norm.weight / .bias [dim] output.weight (absent when tied)
//          blk.N.attn_norm.weight / .bias [dim]       blk.N.ffn_norm.weight / .bias [dim]
//          blk.N.attn_qkv.weight [3*dim, dim] (+ .bias [3*dim])   blk.N.attn_output.weight [dim, dim] (+ .bias)
//          blk.N.ffn_up.weight [hidden, dim] (+ .bias)            blk.N.ffn_down.weight [dim, hidden] (+ .bias)
//
// Matrices are row-major [out, in] (a linear layer computes y = x W^T + b). q/k rows use the
// interleaved RoPE pairing of llama2.c and GGUF (pairs (2i, 2i+1) of a head); readers of
// Hugging Face files permute rotate-half rows into it (docs/conventions.md §18).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit {

class fnv1a64;

struct tensor {
  std::vector<int64_t> shape;  // row-major, outermost first
  std::vector<float> data;

  int64_t numel() const;
  int64_t rows() const;  // product of all but the last dimension (1 for a vector)
  int64_t cols() const;  // the last dimension
};

enum class architecture { llama, gpt2 };
const char* architecture_name(architecture a);
architecture parse_architecture(const std::string& name);

struct model_config {
  architecture arch = architecture::llama;
  int dim = 0;          // residual width
  int hidden_dim = 0;   // MLP width
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;   // grouped-query attention: n_heads % n_kv_heads == 0
  int vocab_size = 0;
  int max_seq_len = 0;  // context length the model was trained for
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;  // llama only
  bool tied_classifier = true;  // output.weight absent, token_embd.weight used
  // llama only: normalise by the L1 statistic sqrt(pi/2) mean|x| instead of the RMS (models
  // trained with lowbit's ShiftQuant recipe, docs/training.md §3.3); stored as "lowbit_norm": "l1".
  bool l1_norm = false;

  int head_dim() const { return dim / n_heads; }
  // Throws lowbit::error naming the field when the numbers cannot describe a model.
  void validate() const;
  int64_t parameter_count() const;
};

// Where a model's tokenizer lives, when the file says so.
struct tokenizer_source {
  std::string kind;  // "", "llama2c", "gpt2", "sentencepiece", "bytes", "gguf"
  std::string path;  // a file next to the model, when kind names one
};

struct model {
  model_config config;
  std::map<std::string, tensor> tensors;
  tokenizer_source tokenizer;
  std::string source_path;
  std::string provenance;  // JSON: how the weights were made (lowbit quantize), "" for originals

  const tensor& get(const std::string& name) const;  // throws naming the missing tensor
  tensor& get_mut(const std::string& name);  // throws naming the missing tensor
  tensor* find(const std::string& name);
  const tensor* find(const std::string& name) const;
  // The classifier matrix: output.weight, or token_embd.weight when tied.
  const tensor& classifier() const;
  // Checks that the config is sound and every tensor the architecture needs is present with the
  // shape the config gives it (shapes only: a tensor_reader's header passes it); throws a
  // shape_error naming source_path, the tensor and the config's numbers.
  void validate_shapes() const;
  // validate_shapes, and every tensor holds the values its shape needs.
  void validate() const;
  // Names of the linear weights of attention and MLP (the default targets of a weight format).
  std::vector<std::string> linear_weight_names() const;
};

// How a coded tensor is stored, without its codes: what a packed writer describes before it
// writes them (quantized_tensor's sizes; tensor_scale: whether it is not 1, so stored).
struct codes_layout {
  format fmt;
  int64_t rows = 0, cols = 0, row_bytes = 0, n_scales = 0, n_zero_points = 0, n_super_scales = 0;
  bool tensor_scale = false;
};
codes_layout layout_of(const quantized_tensor& q);

// A model read one tensor at a time, for work on models larger than memory (streaming
// quantization, the writers): the header up front, each tensor's float32 values on request. The
// file readers memory-map the file, convert one tensor per read() (dequantize, transpose, permute)
// and release the pages they touched, so a reader holds about the tensor it returns (the GGUF
// reader converts a tensor whole before releasing its pages: its mapped bytes are resident too
// while it is read).
class tensor_reader {
 public:
  virtual ~tensor_reader() = default;
  // The model without values: config, tokenizer, source_path, provenance, and every tensor's
  // shape in `tensors` (data empty). Writers take the tokenizer and provenance from here.
  model header;
  // Tensor `name` as the header describes it: throws naming the source and the tensor when the
  // header has no such tensor or the values read are not of its shape.
  tensor read(const std::string& name) const;
  // The tensors the source also holds as exact codes and scales (PTQ's shards, GPTQ's codes),
  // sorted; packed writers store those instead of re-encoding the values.
  virtual std::vector<std::string> coded_names() const { return {}; }
  virtual quantized_tensor read_codes(const std::string& name) const;  // throws for another name
  // read_codes(name)'s layout; by default from read_codes itself, cheaper where a reader can tell
  // it from a header (the shards' reader).
  virtual codes_layout read_codes_layout(const std::string& name) const;
  // Feeds `h` what the tensors' values are made from, for a content fingerprint (PTQ's run
  // fingerprint; the header is hashed by the caller): by default each tensor's name and values as
  // read() gives them. The file readers hash the raw bytes of the file's tensors and what their
  // conversion reads besides (metadata), without converting: the same changes show, for the
  // price of reading the file once.
  virtual void hash_contents(fnv1a64& h) const;
  // Tensor `name` (its codes) where it already is in memory — an in-memory reader's model —, else
  // null: the writers write from it in place instead of from a copy read().
  virtual const tensor* peek(const std::string& name) const { return nullptr; }
  virtual const quantized_tensor* peek_codes(const std::string& name) const { return nullptr; }

 protected:
  virtual tensor load(const std::string& name) const = 0;  // read()'s values, unchecked
};

// A reader of m (which must outlive it); `codes` (may be null) are its coded tensors.
std::unique_ptr<tensor_reader> reader_of(const model& m, const std::map<std::string, quantized_tensor>* codes = nullptr);
// Every tensor of r in memory, validated.
model read_whole_model(const tensor_reader& r);

// A random model of the given shape (lowbit synth): N(0, 0.02) weights, unit norms, byte
// tokenizer (docs/conventions.md §19: vocab 258 = 256 bytes + BOS + EOS unless given).
model synthesize_model(const model_config& c, uint64_t seed);

}  // namespace lowbit

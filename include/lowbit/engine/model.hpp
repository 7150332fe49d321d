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
//   mistral, qwen2: llama's tensors; qwen2 adds blk.N.attn_q.bias [n_heads*hd], attn_k.bias and
//          attn_v.bias [n_kv*hd] (llama's attention_bias adds them and attn_output.bias [dim];
//          its mlp_bias ffn_gate.bias, ffn_up.bias [hidden] and ffn_down.bias [dim]).
//   gptneox: gpt2's tensors without position_embd (RoPE instead); attn_qkv's rows are [q; k; v]
//          (GGUF's order: Hugging Face's per-head [q_h, k_h, v_h] rows are regrouped), biases
//          on qkv and attn_output unless attention_bias is false.
//   opt:   llama's separate attn_q/k/v with biases on every linear (unless enable_bias is false),
//          LayerNorms with biases, ffn_up/ffn_down (no gate), position_embd.weight
//          [n_ctx + 2, dim] (OPT's learned positions start at row 2), output_norm only when the
//          LayerNorm comes before each sublayer (do_layer_norm_before).
//
// Matrices are row-major [out, in] (a linear layer computes y = x W^T + b). q/k rows (and their
// biases) use the interleaved RoPE pairing of llama2.c and GGUF's llama (pairs (2i, 2i+1) of a
// head's first rotary_dim() rows); readers of files in the rotate-half order (Hugging Face,
// GGUF's qwen2 and gptneox) permute the rows into it (docs/conventions.md §18).
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
#include "lowbit/kernels/packed_matmul.hpp"
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

// The model families (Hugging Face model_type; GGUF's general.architecture where llama.cpp has
// one: mistral is written as llama, opt has none). docs/evaluation.md "Model families".
enum class architecture { llama, gpt2, mistral, qwen2, gptneox, opt };
const char* architecture_name(architecture a);  // "llama", "gpt2", "mistral", "qwen2", "gptneox", "opt"
architecture parse_architecture(const std::string& name);  // throws naming the known ones
std::vector<architecture> all_architectures();

// The MLP's nonlinearity: silu is the gate of the Llama family's SwiGLU; the others act on the up
// projection (gelu_tanh: GPT-2's tanh approximation, gelu: the exact erf form, relu).
enum class activation { silu, gelu_tanh, gelu, relu };
const char* activation_name(activation a);  // "silu", "gelu_tanh", "gelu", "relu"

// RoPE frequency scaling (Hugging Face's rope_scaling): linear divides every frequency by
// factor; llama3 is Meta's Llama 3.1 remapping (long wavelengths divided by factor, short ones
// kept, a smooth blend between original_max_position_embeddings / low_freq_factor and
// / high_freq_factor).
enum class rope_scaling_type { none, linear, llama3 };
struct rope_scale {
  rope_scaling_type type = rope_scaling_type::none;
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
  bool operator==(const rope_scale&) const = default;
};

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

  // Variants within a family, as its Hugging Face config sets them. Unset (std::nullopt): the
  // family's default (the resolved values below); a value the family cannot hold is refused by
  // validate().
  std::optional<activation> act;          // hidden_act / activation_function
  std::optional<bool> attn_bias;          // biases of q, k, v and the attention output (llama
                                          // attention_bias; gptneox attention_bias; opt enable_bias)
  std::optional<bool> mlp_bias;           // llama mlp_bias; opt enable_bias
  std::optional<bool> parallel_residual;  // gptneox use_parallel_residual: x + attn(ln1 x) + mlp(ln2 x)
  std::optional<int> rope_dim;            // rotated dims of each head (gptneox rotary_pct)
  bool norm_before = true;                // opt do_layer_norm_before = false: post-LN blocks, no final norm
  int sliding_window = 0;                 // mistral: attend to the last W positions only; 0: all
  rope_scale rope_scaling;                // rope families
  // llama.cpp's rope_freqs.weight (a GGUF of Llama 3.1): frequency i divided by factor i
  // [rotary_dim() / 2]; empty: none (then rope_scaling applies).
  std::vector<float> rope_freq_factors;

  int head_dim() const { return dim / n_heads; }
  // The family's layer set.
  bool layer_norm() const;         // LayerNorm with bias (gpt2, gptneox, opt); else RMSNorm
  bool gated_mlp() const;          // SwiGLU (the Llama family)
  bool uses_rope() const;          // llama, mistral, qwen2, gptneox
  bool learned_positions() const;  // gpt2, opt
  int position_offset() const;     // opt: 2 (position p reads position_embd row p + 2)
  bool fused_qkv() const;          // one attn_qkv matrix (gpt2, gptneox)
  bool final_norm() const { return norm_before; }
  // The variants, resolved.
  activation mlp_activation() const;
  bool qkv_bias() const;
  bool out_bias() const;
  bool has_mlp_bias() const;
  bool has_parallel_residual() const;
  int rotary_dim() const;  // 0 without RoPE
  // The config as one line of its non-default fields (fingerprints, messages); "" for a Llama or
  // GPT-2 with every variant at its default.
  std::string variant_string() const;
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
  // Packed inference (`--packed`, io's load_packed_model): linear weights kept as their codes,
  // under their canonical names; such a tensor keeps its shape in `tensors` but no data, and the
  // forward computes it with packed_matmul (kernels/packed_matmul.hpp). Empty: every weight float.
  std::map<std::string, std::shared_ptr<const packed_matrix>> packed;

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
  // The linear layer number (decoder.hpp's numbering: block l's q, k, v, o, gate, up, down at
  // l * 7 + 0..6, fused qkv 0) of each linear weight name.
  static int linear_number(const model_config& c, const std::string& name);  // -1 when none
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

// Every tensor a model of config c reads, with its shape, in the decoder's order (the
// embeddings, each block's, the final norm, a separate classifier).
std::vector<std::pair<std::string, std::vector<int64_t>>> model_tensor_shapes(const model_config& c);

// A reader of m (which must outlive it); `codes` (may be null) are its coded tensors.
std::unique_ptr<tensor_reader> reader_of(const model& m, const std::map<std::string, quantized_tensor>* codes = nullptr);
// Every tensor of r in memory, validated.
model read_whole_model(const tensor_reader& r);

// A random model of the given shape (lowbit synth): N(0, 0.02) weights, unit norms, byte
// tokenizer (docs/conventions.md §19: vocab 258 = 256 bytes + BOS + EOS unless given).
model synthesize_model(const model_config& c, uint64_t seed);

// RoPE's angular frequency of each rotated pair i < rotary_dim() / 2 (angle = position x
// frequency): theta^(-2i / rotary_dim()) (Su et al. 2021), divided by rope_freq_factors[i] when
// the config has them, else scaled by rope_scaling (linear: / factor; llama3: Meta's Llama 3.1
// apply_scaling). Computed in double; empty without RoPE.
std::vector<double> rope_frequencies(const model_config& c);

// The family's usual MLP width for a residual width `dim`: the Llama family's SwiGLU 2/3 of 4 dim
// rounded up to a multiple of 32 (llama2.c), the others 4 dim.
int default_hidden_dim(architecture a, int dim);

}  // namespace lowbit

// A model in memory: its architecture and its float32 tensors under one canonical naming scheme,
// GGUF's (CONVENTIONS 18), whatever file it came from.
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
// Hugging Face files permute rotate-half rows into it (CONVENTIONS 18).
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

class safetensors_file;
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
  // trained with lowbit's ShiftQuant recipe, METHODS 3.3); stored as "lowbit_norm": "l1".
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

// The reader for a model file (what load_model reads): its header validated (validate_shapes),
// each tensor checked as it is read.
std::unique_ptr<tensor_reader> open_model_reader(const std::string& path);
// A reader of m (which must outlive it); `codes` (may be null) are its coded tensors.
std::unique_ptr<tensor_reader> reader_of(const model& m, const std::map<std::string, quantized_tensor>* codes = nullptr);
// Every tensor of r in memory, validated.
model read_whole_model(const tensor_reader& r);

// Loads .bin (llama2.c), .safetensors (with config.json beside it, or lowbit metadata) or .gguf,
// by extension (and magic). Throws lowbit::error naming the file and the field on bad input.
model load_model(const std::string& path);
model load_llama2c(const std::string& path);
std::unique_ptr<tensor_reader> open_llama2c_reader(const std::string& path);
model load_safetensors_model(const std::string& path);
model load_gguf_model(const std::string& path);

// Writers (atomic: temp file + rename). Safetensors uses Hugging Face names (LlamaForCausalLM /
// GPT2LMHeadModel) and writes config.json beside the file; GGUF uses the canonical names.
// dtype: "F32", "F16" or "BF16" (round to nearest even) for every tensor.
// packed: tensors stored as their codes and scales instead (lowbit's quantized_tensor layout,
// under the canonical name: NAME.codes U8 [rows, row_bytes], NAME.scales F32 [groups of the
// tensor, row-major], NAME.zero_points I32 and NAME.tensor_scale F32 [1] when the format has
// them), described in the
// metadata "lowbit.packed" = {NAME: {"format": canonical spec, "shape": [rows, cols]}}; the
// reader dequantizes them. Such a file is for lowbit (and anything reading that description).
void save_safetensors_model(const model& m, const std::string& path, const std::string& dtype = "F32",
                            const std::map<std::string, quantized_tensor>& packed = {});
// The same from a reader, one tensor in memory at a time; with_codes: r's coded tensors packed.
void save_safetensors_model(const tensor_reader& r, const std::string& path, const std::string& dtype,
                            bool with_codes);
// The codes and scales of a packed safetensors file (empty when it has none).
std::map<std::string, quantized_tensor> load_packed_tensors(const std::string& path);
// Its "lowbit.packed" metadata: {NAME: {"format", "shape"}} (an empty object when absent); throws
// naming the file when it is not a JSON object.
nlohmann::json packed_description(const safetensors_file& f);
// Packed tensor `name`'s layout from f's header alone (d: its packed_description entry), without
// reading its codes; throws naming the file and the tensor when its parts do not fit.
codes_layout read_packed_layout(const safetensors_file& f, const std::string& name, const nlohmann::json& d);
// GGUF export: per-tensor ggml types (others F32) and, for quantized types, the exact codes and
// scales when the caller has them (GPTQ's); otherwise a tensor is re-encoded from its values and
// refused unless that reproduces them bit for bit. The tokenizer (when the model's is a llama2.c
// or SentencePiece vocabulary) is written as tokenizer.ggml.* so llama.cpp can run the file.
struct gguf_export {
  std::map<std::string, uint32_t> types;                   // tensor -> ggml_type number
  std::map<std::string, quantized_tensor> packed;   // tensor -> codes + scales
};
void save_gguf_model(const model& m, const std::string& path, const gguf_export& ex);
void save_gguf_model(const model& m, const std::string& path);  // every tensor F32
// The same from a reader, one tensor in memory at a time: types as gguf_export's, r's coded
// tensors as its packed codes.
// `rounded` (gguf_export_types' fallbacks) are rounded onto their type as they are written, as
// plan_gguf_export rounds a model in memory, so both paths write the same bytes.
void save_gguf_model(const tensor_reader& r, const std::string& path, const std::map<std::string, uint32_t>& types,
                     const std::set<std::string>& rounded = {});

// llama.cpp's tensor type (ggml_type number) for a weight format: q4_0, q8_0, q4_k, q6_k, mxfp4,
// bf16, fp16; throws naming those for any other.
uint32_t ggml_type_for_format(const format& f);
// The types of a GGUF export of m's linear weights in `type` (CONVENTIONS 22): a weight whose
// rows do not divide the type's block falls back to the nearest wider type that fits — Q8_0
// (rows a multiple of 32; for q4_k/q6_k, whose block is 256), then F16 — and m's values are
// rounded onto that type the same way (fake-quantized from the values `type` gave them), so the
// file and the model in memory agree. Returns the names that fell back, as "name (type)".
std::vector<std::string> plan_gguf_export(model& m, uint32_t type, gguf_export& ex);
// The types alone, from the shapes of `header`'s linear weights (a tensor_reader's header).
// (CONVENTIONS 22's fallbacks as plan_gguf_export's, described the same way; `rounded`, when
// given, receives their names.)
std::vector<std::string> gguf_export_types(const model& header, uint32_t type, std::map<std::string, uint32_t>& types,
                                           std::set<std::string>* rounded = nullptr);
// t's values rounded onto ggml type `type` (a ggml_type number; fake-quantized in its format, F32
// leaves them).
void round_onto_ggml_type(tensor& t, uint32_t type);
// The one rule by which codes hold values (the writers' "re-encode and check": the codes a packed
// safetensors file or a GGUF stores): dequantize(q) equals `values` element by element as floats,
// and a NaN matches any NaN. CONVENTIONS 4: a NaN or Inf in a scaled group makes the group's
// scale and every output NaN, so NaN is a value the codes hold whatever its payload (and -0
// matches +0, as floats compare). Returns -1 when they hold them, else the first element that
// differs (`got`, when given, receives its dequantized value). `bit_exact`, when given, is set
// to whether the codes give back every value bit for bit (NaN payloads and zero signs too).
int64_t codes_mismatch(const quantized_tensor& q, const float* values, float* got = nullptr, bool* bit_exact = nullptr);
// The codes a file stores for a tensor t in format f: `known` (a method's own codes, GPTQ's say,
// or LLM-FP4's in the element format it chose) when given, else t's values re-encoded in f;
// nullopt when they do not hold t's values (codes_mismatch): t stays float (not values of f
// alone, e.g. LoRC's Q + U V).
// bit_exact: as codes_mismatch's.
std::optional<quantized_tensor> linear_weight_codes(const tensor& t, const format& f, const quantized_tensor* known,
                                                    bool* bit_exact = nullptr);
// linear_weight_codes of each of m's linear weights (known: name -> the method's codes) into
// `packed`, for a packed safetensors file. Returns the names that stay float.
std::vector<std::string> pack_linear_weights(const model& m, const format& f,
                                             const std::map<std::string, quantized_tensor>& known,
                                             std::map<std::string, quantized_tensor>& packed);

// A set of canonical tensors, with the exact codes of some, as one safetensors file (the
// per-block shards of streaming quantization): float values F32 under their names, the codes in
// the packed layout, and a checksum of the data in the metadata. A coded tensor whose values are
// dequantize(codes) bit for bit is stored as its codes alone (a 4-bit weight in about 1/7 of the
// bytes of its floats): it is in `codes` and not in `tensors`, and values() rebuilds it. Saved
// atomically; loading refuses, naming the file, one that is truncated, corrupted or not a shard.
struct tensor_shard {
  std::map<std::string, tensor> tensors;          // float values (not those rebuilt from codes)
  std::map<std::string, quantized_tensor> codes;
  std::map<std::string, std::string> metadata;  // the caller's own keys

  bool has(const std::string& name) const { return tensors.count(name) || codes.count(name); }
  // Tensor `name`'s values: its floats, else dequantize(its codes) as a [rows, cols] matrix;
  // throws naming the tensor when the shard has neither.
  tensor values(const std::string& name) const;
};
void save_tensor_shard(const std::string& path, const tensor_shard& shard);
tensor_shard load_tensor_shard(const std::string& path);

// A random model of the given shape (lowbit synth): N(0, 0.02) weights, unit norms, byte
// tokenizer (CONVENTIONS 19: vocab 258 = 256 bytes + BOS + EOS unless given).
model synthesize_model(const model_config& c, uint64_t seed);

}  // namespace lowbit

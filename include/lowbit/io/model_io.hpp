// Model files: readers and writers of llama2.c .bin, Hugging Face safetensors (plain and packed
// codes) and GGUF, the per-block shards of streaming quantization, and the one place that finds a
// model's tokenizer. Every reader validates what it reads and throws lowbit::error naming the
// file and the field; every writer is atomic (temp file + rename).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/text/tokenizer.hpp"

namespace lowbit {

class safetensors_file;

// The reader for a model file (what load_model reads): its header validated (validate_shapes),
// each tensor checked as it is read.
std::unique_ptr<tensor_reader> open_model_reader(const std::string& path);

// Loads .bin (llama2.c), .safetensors (with config.json beside it, or lowbit metadata), a sharded
// Hugging Face checkpoint (its model.safetensors.index.json, config.json beside it), a directory
// holding model.safetensors.index.json or model.safetensors, or .gguf, by extension (and magic).
// Throws lowbit::error naming the file and the field on bad input.
model load_model(const std::string& path);

// A model for packed inference (`eval --packed`, `generate --packed`; docs/architecture.md
// "Packed inference"): each linear weight kept as its codes (model::packed, computed by
// kernels/packed_matmul.hpp), every other tensor float32. A linear weight's codes are its values
// quantized in the plan's weight format (quantize with apply_weight_plan's tensor id, so the
// packed weights hold apply_weight_plan's values), else the file's own codes (a GGUF's block
// types, lowbit's packed safetensors). Other tensors the plan names are fake-quantized as
// apply_weight_plan does. Throws naming the tensor when a linear weight has no codes (a float file
// without a weight format) or its format has no packed kernel.
struct packed_load_report {
  size_t packed_bytes = 0, float_bytes = 0;  // the packed weights; the float tensors
  std::set<std::string> formats;             // canonical names of the packed formats
};
model load_packed_model(const std::string& path, const quant_plan& plan, packed_load_report* report = nullptr);
model load_llama2c(const std::string& path);
std::unique_ptr<tensor_reader> open_llama2c_reader(const std::string& path);
model load_safetensors_model(const std::string& path);
model load_gguf_model(const std::string& path);

// Hugging Face's config.json (docs/evaluation.md "Model families"). Every key of a config is one
// the family's table knows: read (implemented), ignored (no effect on the logits: dropout,
// initialisation, generation settings, metadata) or refused (a value that changes the
// computation in a way lowbit does not implement; `note` lists the values accepted, "|"-separated
// JSON). A key not in the table is refused too, naming it.
enum class hf_key_use { read, ignored, refused };
struct hf_config_key {
  std::string key;
  hf_key_use use;
  std::string note;  // read / ignored: what it means; refused: the accepted values
};
std::vector<hf_config_key> hf_config_keys(architecture a);
// Throws lowbit::error naming the file and the key for a key or value lowbit does not compute.
model_config config_from_hf_json(const nlohmann::json& j, const std::string& file);
// The config.json of c (its family's model_type and class); throws for a config Hugging Face
// cannot express (llama.cpp's bare RoPE frequency factors).
nlohmann::json config_to_hf_json(const model_config& c);

// Writers (atomic: temp file + rename). Safetensors uses Hugging Face names (LlamaForCausalLM,
// MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel, GPTNeoXForCausalLM, OPTForCausalLM) and
// writes config.json beside the file (one file: sharded checkpoints are read, not written);
// GGUF uses the canonical names in llama.cpp's layout of the family (qwen2's and gptneox's q/k
// rows in rotate-half order; Mistral as llama, its sliding window as
// llama.attention.sliding_window; Llama 3.1's RoPE scaling as rope_freqs.weight) and refuses OPT
// (no llama.cpp architecture).
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

// llama.cpp's tensor type (ggml_type number) for a weight format: ggml's q4_0, q4_1, q5_0, q5_1,
// q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, mxfp4, bf16, fp16; throws naming those for any other.
uint32_t ggml_type_for_format(const format& f);
// The type a weight of ggml type `type` falls back to when its rows do not divide the type's
// block, as llama.cpp's quantizer chooses it (docs/conventions.md §22): Q2_K, Q3_K -> Q4_0, Q4_K
// -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0 (rows a multiple of 32), else F16.
uint32_t ggml_fallback_type(uint32_t type, int64_t cols);
// The types of a GGUF export of m's linear weights in `type` (docs/conventions.md §22): a weight whose
// rows do not divide the type's block falls back (ggml_fallback_type). Unless its values already
// are values of the fallback type (`quantized_in_fallbacks`: the PTQ method quantized it in that
// type's format, ptq::quantize_options::gguf_fallbacks; never for F16), m's values are rounded
// onto that type (fake-quantized from the values `type` gave them), so the file and the model in
// memory agree. Returns the names that fell back, as "name (type)".
std::vector<std::string> plan_gguf_export(model& m, uint32_t type, gguf_export& ex, bool quantized_in_fallbacks = false);
// The types alone, from the shapes of `header`'s linear weights (a tensor_reader's header).
// (docs/conventions.md §22's fallbacks as plan_gguf_export's, described the same way; `rounded`, when
// given, receives the names whose values are to be rounded onto their type.)
std::vector<std::string> gguf_export_types(const model& header, uint32_t type, std::map<std::string, uint32_t>& types,
                                           std::set<std::string>* rounded = nullptr, bool quantized_in_fallbacks = false);
// t's values rounded onto ggml type `type` (a ggml_type number; fake-quantized in its format, F32
// leaves them).
void round_onto_ggml_type(tensor& t, uint32_t type);
// The one rule by which codes hold values (the writers' "re-encode and check": the codes a packed
// safetensors file or a GGUF stores): dequantize(q) equals `values` element by element as floats,
// and a NaN matches any NaN. docs/conventions.md §4: a NaN or Inf in a scaled group makes the group's
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

// The tokenizer for a model: `path` when given (see load_tokenizer), else what the model file
// names (GGUF tokenizer.ggml.* metadata, lowbit's "bytes"), else tokenizer.bin / tok<vocab>.bin
// beside a llama2.c model. Throws when none is found or its vocabulary is larger than the model's.
std::unique_ptr<tokenizer> tokenizer_for_model(const model& m, const std::string& path = "");
class gguf_file;
// Whether a GGUF's tokenizer.ggml.* is the byte tokenizer's export (is_byte_tokenizer_vocabulary):
// such a file's model reads back with the tokenizer "bytes".
bool gguf_holds_byte_tokenizer(const gguf_file& f);
// Where tokenizer_for_model(m) (no path) finds m's tokenizer, as a model written from m carries it
// (the writers' lowbit.tokenizer metadata), so the written file finds the same one: the GGUF
// file's own vocabulary, "bytes", the file m names, else {"file", the absolute path of the file
// beside it}. Throws as tokenizer_for_model does when there is none.
tokenizer_source model_tokenizer_source(const model& m);
// The tokenizer file beside a model file, as tokenizer_for_model looks for it: tokenizer.bin,
// tok<vocab>.bin, tokenizer.model; "" when there is none.
std::string tokenizer_file_beside(const std::string& model_path, int vocab_size);


}  // namespace lowbit

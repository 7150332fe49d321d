// Model files <-> the canonical in-memory model (docs/conventions.md §18): Hugging Face safetensors
// (one file or a sharded checkpoint) with config.json (hf_config.cpp) for every family of
// model.hpp, and GGUF in llama.cpp's architectures (llama, qwen2, gpt2, gptneox).
#include <algorithm>
#include <limits>
#include <tuple>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <type_traits>
#include <utility>
#include <span>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "lowbit/base/files.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/io/model_io.hpp"
#include "src/io/hf_config.hpp"

namespace fs = std::filesystem;

namespace lowbit {

nlohmann::json packed_description(const safetensors_file& f) {
  nlohmann::json packed = nlohmann::json::object();
  if (auto it = f.metadata().find("lowbit.packed"); it != f.metadata().end()) {
    packed = nlohmann::json::parse(it->second, nullptr, false);
    if (!packed.is_object()) throw error(fmt::format("{}: lowbit.packed is not a JSON object", f.path()));
  }
  return packed;
}

namespace {

// ---- the packed layout of a coded tensor ----------------------------------------------------------
// The parts of a coded tensor NAME as safetensors files store them (packed model files and the
// PTQ shards): the one description of the layout every writer and reader here uses.
//   NAME.codes         U8  [rows, row_bytes]  quantized_tensor::codes (rows start on a byte)
//   NAME.scales        F32 [n_scales]         one per group, row-major (row, group)
//   NAME.zero_points   I32 [n_zero_points]    when the format has them (uint, q4_0/q5_0, the K-quants' mins)
//   NAME.super_scales  F32 [n_super_scales]   the K-quants: the fp16 scales of each super-block;
//                                             q4_1/q5_1: each block's fp16 min
//   NAME.tensor_scale  F32 [1]                nvfp4's second-level scale; model files store it
//                                             when it is not 1, shards always
// The file's metadata "lowbit.packed" describes NAME as {"format": canonical spec, "shape": [rows,
// cols]} (packed_entry).
enum class packed_part { codes, scales, zero_points, super_scales, tensor_scale };
struct packed_part_spec {
  packed_part part;
  const char* suffix;
  st_dtype dtype;
};
constexpr packed_part_spec kPackedParts[] = {{packed_part::codes, ".codes", st_dtype::u8},
                                             {packed_part::scales, ".scales", st_dtype::f32},
                                             {packed_part::zero_points, ".zero_points", st_dtype::i32},
                                             {packed_part::super_scales, ".super_scales", st_dtype::f32},
                                             {packed_part::tensor_scale, ".tensor_scale", st_dtype::f32}};

// Part p's shape in a tensor of layout l; empty when the part is not stored.
std::vector<int64_t> part_shape(const codes_layout& l, packed_part p, bool always_tensor_scale) {
  switch (p) {
    case packed_part::codes: return {l.rows, l.row_bytes};
    case packed_part::scales: return {l.n_scales};
    case packed_part::zero_points: return l.n_zero_points > 0 ? std::vector<int64_t>{l.n_zero_points} : std::vector<int64_t>{};
    case packed_part::super_scales:
      return l.n_super_scales > 0 ? std::vector<int64_t>{l.n_super_scales} : std::vector<int64_t>{};
    case packed_part::tensor_scale: return l.tensor_scale || always_tensor_scale ? std::vector<int64_t>{1} : std::vector<int64_t>{};
  }
  return {};
}

// Part p's bytes in q (in memory, as the file stores them).
template <class Q>
auto part_bytes(Q& q, packed_part p) {
  using byte = std::conditional_t<std::is_const_v<Q>, const uint8_t, uint8_t>;
  auto span_of = [](auto& v) { return std::span<byte>(reinterpret_cast<byte*>(v.data()), v.size() * sizeof(v[0])); };
  switch (p) {
    case packed_part::codes: return span_of(q.codes);
    case packed_part::scales: return span_of(q.scales);
    case packed_part::zero_points: return span_of(q.zero_points);
    case packed_part::super_scales: return span_of(q.super_scales);
    case packed_part::tensor_scale: break;
  }
  return std::span<byte>(reinterpret_cast<byte*>(&q.tensor_scale), sizeof q.tensor_scale);
}

nlohmann::json packed_entry(const codes_layout& l) {
  return {{"format", format_name(l.fmt)}, {"shape", {l.rows, l.cols}}};
}

// Rows of a tensor: a matrix's first dimension, a vector's elements (a bias is a column of rows).
int64_t row_count(const tensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }
int64_t row_length(const tensor& t) { return t.shape.size() >= 2 ? t.numel() / t.shape[0] : 1; }

// Hugging Face (and GGUF's qwen2 and gptneox) store q/k rows of each head in rotate-half order:
// of the head's first `rotary` rows (all of them but in GPT-NeoX's partial rotary), first the
// rotary/2 "real" rows, then the rotary/2 "imaginary" ones; llama2.c and GGUF's llama interleave
// the pairs. Interleaved row 2i+t of a head is rotate-half row t*rotary/2 + i; rows past `rotary`
// stay. Works on matrices [heads*hd, in] and biases [heads*hd] alike.
tensor rotate_half_to_interleaved(const tensor& hf, int heads, int rotary, bool inverse) {
  tensor out = hf;
  const int64_t rows = row_count(hf), cols = row_length(hf), hd = rows / heads;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < rotary / 2; ++i)
      for (int t = 0; t < 2; ++t) {
        const int64_t inter = h * hd + 2 * i + t, half = h * hd + t * (rotary / 2) + i;
        const int64_t dst = inverse ? half : inter, src = inverse ? inter : half;
        std::copy_n(hf.data.data() + src * cols, cols, out.data.data() + dst * cols);
      }
  return out;
}

// rotate_half_to_interleaved on the q and k blocks of a fused [q; k; v] tensor ([3D, in] or [3D]).
tensor qkv_rotate_half_to_interleaved(const tensor& t, int heads, int rotary, bool inverse) {
  const int64_t rows = row_count(t), cols = row_length(t), D = rows / 3;
  tensor out = t;
  for (int part = 0; part < 2; ++part) {
    const auto first = t.data.begin() + part * D * cols;
    tensor block{{D, cols}, std::vector<float>(first, first + D * cols)};
    block = rotate_half_to_interleaved(block, heads, rotary, inverse);
    std::copy(block.data.begin(), block.data.end(), out.data.begin() + part * D * cols);
  }
  return out;
}

// GPT-NeoX's query_key_value [3D, D] (and its bias [3D]) holds each head's q, k and v rows
// together ([q_h; k_h; v_h], Hugging Face's modeling_gpt_neox views it as [heads, 3 hd]); lowbit
// and GGUF regroup them into [q; k; v] (llama.cpp's convert_hf_to_gguf does the same), and q's and
// k's rotary rows go from rotate-half to interleaved. inverse: lowbit's layout back to Hugging Face's.
tensor neox_qkv_to_canonical(const tensor& t, int heads, int rotary, bool inverse) {
  const int64_t rows = row_count(t), cols = row_length(t), D = rows / 3, hd = D / heads;
  const tensor src = inverse ? qkv_rotate_half_to_interleaved(t, heads, rotary, true) : t;
  tensor out = src;
  for (int64_t h = 0; h < heads; ++h)
    for (int part = 0; part < 3; ++part)
      for (int64_t i = 0; i < hd; ++i) {
        const int64_t grouped = part * D + h * hd + i, per_head = h * 3 * hd + part * hd + i;
        const int64_t dst = inverse ? per_head : grouped, from = inverse ? grouped : per_head;
        std::copy_n(src.data.data() + from * cols, cols, out.data.data() + dst * cols);
      }
  return inverse ? out : qkv_rotate_half_to_interleaved(out, heads, rotary, false);
}

tensor transposed(const tensor& t) {
  tensor out{{t.shape[1], t.shape[0]}, std::vector<float>(t.data.size())};
  for (int64_t r = 0; r < t.shape[0]; ++r)
    for (int64_t c = 0; c < t.shape[1]; ++c) out.data[c * t.shape[0] + r] = t.data[r * t.shape[1] + c];
  return out;
}

// How a file's tensor becomes the canonical one: as it is, transposed (GPT-2's Conv1D), q/k rows
// from rotate-half to interleaved (rope; qkv_rope: in the q and k blocks of a [q; k; v] tensor,
// GGUF's gptneox), or GPT-NeoX's per-head fused qkv regrouped (neox_qkv).
enum class hf_layout { plain, transpose, rope, qkv_rope, neox_qkv };

// (Hugging Face name, canonical name, layout; heads and rotary rows for rope / neox_qkv)
struct name_map {
  std::string hf, canonical;
  hf_layout layout = hf_layout::plain;
  int heads = 0, rotary = 0;
};

// A canonical tensor made from the file's (inverse: the file's from the canonical one).
tensor convert_layout(const tensor& t, const name_map& n, bool inverse, const std::string& path) {
  switch (n.layout) {
    case hf_layout::plain: return t;
    case hf_layout::transpose:
      if (t.shape.size() != 2) throw shape_error(fmt::format("{}: tensor '{}' should be a matrix", path, n.hf));
      return transposed(t);
    case hf_layout::rope:
      if (t.shape.empty() || t.shape.size() > 2 || row_count(t) % n.heads != 0)
        throw shape_error(fmt::format("{}: tensor '{}' has {} rows for {} heads", path, n.hf, row_count(t), n.heads));
      return rotate_half_to_interleaved(t, n.heads, n.rotary, inverse);
    case hf_layout::qkv_rope:
    case hf_layout::neox_qkv:
      if (t.shape.empty() || t.shape.size() > 2 || row_count(t) % (3 * n.heads) != 0)
        throw shape_error(fmt::format("{}: tensor '{}' has {} rows for q, k and v of {} heads", path, n.hf,
                                      row_count(t), n.heads));
      return n.layout == hf_layout::neox_qkv ? neox_qkv_to_canonical(t, n.heads, n.rotary, inverse)
                                             : qkv_rotate_half_to_interleaved(t, n.heads, n.rotary, inverse);
  }
  return t;
}

// q's codes with their rows moved as convert_layout(inverse) moves a tensor's rows (the
// permutation read off a tensor of row numbers): each row's codes, and its share of the scales,
// zero points and super-scales (all stored row by row), go with it.
quantized_tensor permuted_rows(const quantized_tensor& q, const name_map& n, const std::string& path) {
  tensor ids{{q.rows, 1}, std::vector<float>(size_t(q.rows))};
  for (int64_t r = 0; r < q.rows; ++r) ids.data[r] = static_cast<float>(r);
  const tensor from = convert_layout(ids, n, true, path);  // row r of the result comes from row from[r]
  quantized_tensor out = q;
  auto move_rows = [&](const auto& src, auto& dst) {
    if (src.empty()) return;
    if (src.size() % size_t(q.rows))
      throw error(fmt::format("{}: tensor '{}': {} values do not split into its {} rows", path, n.canonical,
                              src.size(), q.rows));
    const size_t per = src.size() / size_t(q.rows);
    for (int64_t r = 0; r < q.rows; ++r)
      std::copy_n(src.begin() + size_t(from.data[r]) * per, per, dst.begin() + size_t(r) * per);
  };
  move_rows(q.codes, out.codes);
  if (q.scales.size() > 1) move_rows(q.scales, out.scales);  // (one scale per tensor stays)
  if (q.zero_points.size() > 1) move_rows(q.zero_points, out.zero_points);
  move_rows(q.super_scales, out.super_scales);
  return out;
}

// The Hugging Face checkpoint names of each family's tensors (modeling_llama, modeling_mistral,
// modeling_qwen2, modeling_gpt2, modeling_gpt_neox, modeling_opt), under `prefix` (the base
// model's: "model." for the Llama family, "transformer." or "" for GPT-2, "gpt_neox." or "",
// "model.decoder." or "decoder." for OPT).
using name_pairs = std::initializer_list<std::pair<const char*, const char*>>;

std::vector<name_map> hf_names(const model_config& c, const std::string& prefix) {
  std::vector<name_map> v;
  const std::string& p = prefix;
  const int rot = c.rotary_dim();
  const bool qkv_b = c.qkv_bias(), out_b = c.out_bias(), mlp_b = c.has_mlp_bias();
  if (c.gated_mlp()) {  // llama, mistral, qwen2
    v.push_back({p + "embed_tokens.weight", "token_embd.weight"});
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string h = fmt::format("{}layers.{}.", p, l), b = fmt::format("blk.{}.", l);
      v.push_back({h + "input_layernorm.weight", b + "attn_norm.weight"});
      for (const char* s : {"weight", "bias"}) {
        if (std::string(s) == "bias" && !qkv_b) continue;
        v.push_back({h + "self_attn.q_proj." + s, b + "attn_q." + s, hf_layout::rope, c.n_heads, rot});
        v.push_back({h + "self_attn.k_proj." + s, b + "attn_k." + s, hf_layout::rope, c.n_kv_heads, rot});
        v.push_back({h + "self_attn.v_proj." + s, b + "attn_v." + s});
      }
      v.push_back({h + "self_attn.o_proj.weight", b + "attn_output.weight"});
      if (out_b) v.push_back({h + "self_attn.o_proj.bias", b + "attn_output.bias"});
      v.push_back({h + "post_attention_layernorm.weight", b + "ffn_norm.weight"});
      for (const auto& [hf, canonical] : name_pairs{{"gate_proj", "ffn_gate"}, {"up_proj", "ffn_up"}, {"down_proj", "ffn_down"}}) {
        v.push_back({h + "mlp." + hf + ".weight", b + canonical + ".weight"});
        if (mlp_b) v.push_back({h + "mlp." + hf + ".bias", b + canonical + ".bias"});
      }
    }
    v.push_back({p + "norm.weight", "output_norm.weight"});
  } else if (c.arch == architecture::gpt2) {
    v.push_back({p + "wte.weight", "token_embd.weight"});
    v.push_back({p + "wpe.weight", "position_embd.weight"});
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string h = fmt::format("{}h.{}.", p, l), b = fmt::format("blk.{}.", l);
      for (const char* s : {"weight", "bias"}) {
        v.push_back({h + "ln_1." + s, b + "attn_norm." + s});
        v.push_back({h + "ln_2." + s, b + "ffn_norm." + s});
      }
      v.push_back({h + "attn.c_attn.weight", b + "attn_qkv.weight", hf_layout::transpose});
      v.push_back({h + "attn.c_attn.bias", b + "attn_qkv.bias"});
      v.push_back({h + "attn.c_proj.weight", b + "attn_output.weight", hf_layout::transpose});
      v.push_back({h + "attn.c_proj.bias", b + "attn_output.bias"});
      v.push_back({h + "mlp.c_fc.weight", b + "ffn_up.weight", hf_layout::transpose});
      v.push_back({h + "mlp.c_fc.bias", b + "ffn_up.bias"});
      v.push_back({h + "mlp.c_proj.weight", b + "ffn_down.weight", hf_layout::transpose});
      v.push_back({h + "mlp.c_proj.bias", b + "ffn_down.bias"});
    }
    v.push_back({p + "ln_f.weight", "output_norm.weight"});
    v.push_back({p + "ln_f.bias", "output_norm.bias"});
  } else if (c.arch == architecture::gptneox) {
    v.push_back({p + "embed_in.weight", "token_embd.weight"});
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string h = fmt::format("{}layers.{}.", p, l), b = fmt::format("blk.{}.", l);
      for (const char* s : {"weight", "bias"}) {
        v.push_back({h + "input_layernorm." + s, b + "attn_norm." + s});
        v.push_back({h + "post_attention_layernorm." + s, b + "ffn_norm." + s});
      }
      v.push_back({h + "attention.query_key_value.weight", b + "attn_qkv.weight", hf_layout::neox_qkv, c.n_heads, rot});
      if (qkv_b)
        v.push_back({h + "attention.query_key_value.bias", b + "attn_qkv.bias", hf_layout::neox_qkv, c.n_heads, rot});
      v.push_back({h + "attention.dense.weight", b + "attn_output.weight"});
      if (out_b) v.push_back({h + "attention.dense.bias", b + "attn_output.bias"});
      for (const char* s : {"weight", "bias"}) {
        v.push_back({h + "mlp.dense_h_to_4h." + s, b + "ffn_up." + s});
        v.push_back({h + "mlp.dense_4h_to_h." + s, b + "ffn_down." + s});
      }
    }
    v.push_back({p + "final_layer_norm.weight", "output_norm.weight"});
    v.push_back({p + "final_layer_norm.bias", "output_norm.bias"});
  } else {  // opt
    v.push_back({p + "embed_tokens.weight", "token_embd.weight"});
    v.push_back({p + "embed_positions.weight", "position_embd.weight"});
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string h = fmt::format("{}layers.{}.", p, l), b = fmt::format("blk.{}.", l);
      for (const char* s : {"weight", "bias"}) {
        v.push_back({h + "self_attn_layer_norm." + s, b + "attn_norm." + s});
        v.push_back({h + "final_layer_norm." + s, b + "ffn_norm." + s});
      }
      for (const auto& [hf, canonical] :
           name_pairs{{"q_proj", "attn_q"}, {"k_proj", "attn_k"}, {"v_proj", "attn_v"}, {"out_proj", "attn_output"}}) {
        v.push_back({h + "self_attn." + hf + ".weight", b + canonical + ".weight"});
        if (qkv_b) v.push_back({h + "self_attn." + hf + ".bias", b + canonical + ".bias"});
      }
      for (const auto& [hf, canonical] : name_pairs{{"fc1", "ffn_up"}, {"fc2", "ffn_down"}}) {
        v.push_back({h + hf + ".weight", b + canonical + ".weight"});
        if (mlp_b) v.push_back({h + hf + ".bias", b + canonical + ".bias"});
      }
    }
    if (c.final_norm()) {
      v.push_back({p + "final_layer_norm.weight", "output_norm.weight"});
      v.push_back({p + "final_layer_norm.bias", "output_norm.bias"});
    }
  }
  if (!c.tied_classifier)
    v.push_back({c.arch == architecture::gptneox ? "embed_out.weight" : "lm_head.weight", "output.weight"});
  return v;
}

// llama.cpp's architecture (GGUF's general.architecture) for a family: Mistral is llama's (as
// llama.cpp's convert_hf_to_gguf writes it), OPT has none ("").
const char* gguf_arch_name(architecture a) {
  switch (a) {
    case architecture::llama:
    case architecture::mistral: return "llama";
    case architecture::qwen2: return "qwen2";
    case architecture::gpt2: return "gpt2";
    case architecture::gptneox: return "gptneox";
    case architecture::opt: return "";
  }
  return "";
}

// How GGUF stores canonical tensor `name` when not as lowbit holds it: llama.cpp runs qwen2 and
// gptneox with the rotate-half (NEOX) RoPE, on Hugging Face's q/k row order (convert_hf_to_gguf
// permutes only llama's rows); gptneox's qkv rows are already grouped [q; k; v]. nullopt: as is.
std::optional<name_map> gguf_layout(const model_config& c, const std::string& name) {
  if (c.arch == architecture::qwen2) {
    for (const char* s : {".attn_q.weight", ".attn_q.bias", ".attn_k.weight", ".attn_k.bias"})
      if (name.ends_with(s))
        return name_map{name, name, hf_layout::rope, name.find(".attn_q.") != std::string::npos ? c.n_heads : c.n_kv_heads,
                        c.rotary_dim()};
  } else if (c.arch == architecture::gptneox) {
    if (name.ends_with(".attn_qkv.weight") || name.ends_with(".attn_qkv.bias"))
      return name_map{name, name, hf_layout::qkv_rope, c.n_heads, c.rotary_dim()};
  }
  return std::nullopt;
}

// The base-model prefixes a family's checkpoints use, the causal LM's first (what lowbit
// writes; GPT-2's files have always been written without one).
std::vector<std::string> hf_prefixes(architecture a) {
  switch (a) {
    case architecture::gpt2: return {"", "transformer."};
    case architecture::gptneox: return {"gpt_neox.", ""};
    case architecture::opt: return {"model.decoder.", "decoder."};
    default: return {"model."};
  }
}

// A tensor stored as codes and scales (save_safetensors_model's packed layout).
quantized_tensor read_packed_codes(const safetensors_file& f, const std::string& name, const nlohmann::json& d) {
  const std::string where = fmt::format("{}: packed tensor '{}'", f.path(), name);
  if (!d.is_object() || !d.contains("format") || !d["format"].is_string() || !d.contains("shape") ||
      !d["shape"].is_array() || d["shape"].size() != 2 || !d["shape"][0].is_number_integer() ||
      !d["shape"][1].is_number_integer())
    throw error(where + ": expected {\"format\": spec, \"shape\": [rows, cols]}");
  const int64_t rows = d["shape"][0], cols = d["shape"][1];
  if (rows <= 0 || cols <= 0 || rows > (int64_t(1) << 31) || cols > (int64_t(1) << 31))
    throw error(fmt::format("{}: shape [{}, {}] is not a matrix lowbit can hold", where, rows, cols));
  format fmt_;
  try {
    fmt_ = parse_format(d["format"].get<std::string>());
  } catch (const error& e) {
    throw error(where + ": " + e.what());
  }
  // The codes' size pins rows x cols down before anything is allocated for them.
  const st_tensor_info* codes = f.find(name + ".codes");
  const int64_t row_bytes = (cols * fmt_.element.bits + 7) / 8;
  if (!codes || codes->end - codes->begin != uint64_t(rows) * uint64_t(row_bytes))
    throw error(fmt::format("{}: '{}.codes' does not hold {} rows of {} bytes for shape [{}, {}] in {}", where, name,
                            rows, row_bytes, rows, cols, d["format"].get<std::string>()));
  quantized_tensor q = quantized_tensor::allocate(fmt_, rows, cols);
  // Every part the format has (allocate sized them), the tensor scale when stored.
  for (const packed_part_spec& part : kPackedParts) {
    const std::span<uint8_t> dst = part_bytes(q, part.part);
    if (dst.empty()) continue;
    const std::string part_name = name + part.suffix;
    const st_tensor_info* t = f.find(part_name);
    if (!t) {
      if (part.part == packed_part::tensor_scale) continue;  // 1
      throw error(fmt::format("{}: '{}' is missing", where, part_name));
    }
    if (t->dtype != part.dtype || t->end - t->begin != dst.size())
      throw error(fmt::format("{}: '{}' is {} with {} bytes, expected {} with {}", where, part_name,
                              st_dtype_name(t->dtype), t->end - t->begin, st_dtype_name(part.dtype), dst.size()));
    std::memcpy(dst.data(), f.raw(*t), dst.size());
  }
  // A K-quant's sub-block scale and min codes are small integers that decoding takes as int32.
  kquant_check_stored_codes(q, where);
  return q;
}

}  // namespace

codes_layout read_packed_layout(const safetensors_file& f, const std::string& name, const nlohmann::json& d) {
  const st_tensor_info* codes = f.find(name + ".codes");
  const st_tensor_info* scales = f.find(name + ".scales");
  const st_tensor_info* tensor_scale = f.find(name + ".tensor_scale");
  if (!d.is_object() || !d.contains("format") || !d["format"].is_string() || !d.contains("shape") ||
      !d["shape"].is_array() || d["shape"].size() != 2 || !d["shape"][1].is_number_integer() || !codes ||
      codes->shape.size() != 2 || !scales || (tensor_scale && tensor_scale->end - tensor_scale->begin != 4))
    throw error(fmt::format("{}: packed tensor '{}' is not laid out as lowbit.packed says", f.path(), name));
  codes_layout q;
  q.fmt = parse_format(d["format"].get<std::string>());
  q.rows = codes->shape[0], q.row_bytes = codes->shape[1], q.cols = d["shape"][1].get<int64_t>();
  for (const packed_part_spec& part : kPackedParts) {
    const st_tensor_info* t = f.find(name + part.suffix);
    if (!t) continue;
    if (part.part == packed_part::scales) q.n_scales = t->numel();
    if (part.part == packed_part::zero_points) q.n_zero_points = t->numel();
    if (part.part == packed_part::super_scales) q.n_super_scales = t->numel();
  }
  float s = 1;
  if (tensor_scale) std::memcpy(&s, f.raw(*tensor_scale), 4);
  q.tensor_scale = s != 1.0f;
  return q;
}

namespace {

tensor read_packed(const safetensors_file& f, const std::string& name, const nlohmann::json& d) {
  const quantized_tensor q = read_packed_codes(f, name, d);
  tensor out{{q.rows, q.cols}, std::vector<float>(q.rows * q.cols)};
  dequantize(q, out.data.data());
  return out;
}


// Hugging Face / lowbit safetensors, read one canonical tensor at a time: one file, or the shards
// of a Hugging Face sharded checkpoint (model.safetensors.index.json: {"metadata": {...},
// "weight_map": {tensor name: shard file}}, the shards in the index's directory).
class safetensors_reader final : public tensor_reader {
 public:
  // path: a .safetensors file or a sharded checkpoint's index (.json).
  explicit safetensors_reader(const std::string& path) {
    const bool sharded = path.ends_with(".json");
    if (sharded) open_shards(path);
    else files_.push_back(std::make_unique<safetensors_file>(path));
    const safetensors_file& first = *files_.front();
    // config.json beside the file (or the index), or the copy lowbit writes into the metadata.
    const fs::path cfg_path = fs::path(path).parent_path() / "config.json";
    nlohmann::json cfg;
    std::string cfg_name;
    if (auto it = first.metadata().find("lowbit.config"); !sharded && it != first.metadata().end()) {
      cfg_name = path + " (metadata lowbit.config)";
      cfg = nlohmann::json::parse(it->second, nullptr, false);
      if (cfg.is_discarded()) throw error(fmt::format("{}: lowbit.config is not valid JSON", path));
    } else if (fs::exists(cfg_path)) {
      cfg_name = cfg_path.string();
      require_regular_file(cfg_name, "config.json");
      std::ifstream in(cfg_path);
      cfg = nlohmann::json::parse(in, nullptr, false);
      if (cfg.is_discarded()) throw error(fmt::format("{}: not valid JSON", cfg_name));
    } else {
      throw error(fmt::format("{}: no config.json beside it{}", path, sharded ? "" : " and no lowbit.config metadata"));
    }
    model& m = header;
    m.source_path = path;
    m.config = config_from_hf_json(cfg, cfg_name);
    // Llama: a separate classifier is present when the file has lm_head.weight, whatever the flag
    // says. (The other families follow Hugging Face: tied means the embedding, a stored lm_head
    // aside.)
    if (m.config.tied_classifier && find_hf("lm_head.weight") && m.config.arch == architecture::llama)
      m.config.tied_classifier = false;
    // The base model's prefix: the first of the family's that names the token embedding.
    const std::vector<std::string> prefixes = hf_prefixes(m.config.arch);
    std::string prefix = prefixes.front();
    for (const std::string& p : prefixes)
      if (find_hf(hf_names(m.config, p).front().hf)) {
        prefix = p;
        break;
      }
    if (!sharded) packed_ = packed_description(first);
    for (const name_map& n : hf_names(m.config, prefix)) {
      names_[n.canonical] = n;
      tensor& t = m.tensors[n.canonical];
      if (packed_.contains(n.canonical)) {
        const nlohmann::json& d = packed_[n.canonical];
        if (d.is_object() && d.contains("shape") && d["shape"].is_array())
          for (const auto& v : d["shape"]) t.shape.push_back(v.is_number_integer() ? v.get<int64_t>() : -1);
        continue;
      }
      t.shape = file_of(n.hf).get(n.hf).shape;
      if (n.layout == hf_layout::transpose && t.shape.size() == 2) std::swap(t.shape[0], t.shape[1]);
    }
    if (auto it = first.metadata().find("lowbit.tokenizer"); it != first.metadata().end()) m.tokenizer.kind = it->second;
    if (auto it = first.metadata().find("lowbit.tokenizer_path"); it != first.metadata().end())
      m.tokenizer.path = it->second;
    if (auto it = first.metadata().find("lowbit.provenance"); it != first.metadata().end()) m.provenance = it->second;
  }

  tensor load(const std::string& name) const override {
    const auto it = names_.find(name);
    if (it == names_.end()) throw error(fmt::format("{}: no tensor '{}'", header.source_path, name));
    const name_map& n = it->second;
    if (packed_.contains(n.canonical)) {
      const safetensors_file& f = *files_.front();
      tensor t = read_packed(f, n.canonical, packed_[n.canonical]);
      for (const packed_part_spec& part : kPackedParts)
        if (const st_tensor_info* stored = f.find(n.canonical + part.suffix)) release(f, *stored);
      return t;
    }
    const safetensors_file& f = file_of(n.hf);
    const st_tensor_info& info = f.get(n.hf);
    const tensor t{info.shape, f.read_f32(n.hf)};  // releases the pages it reads
    return convert_layout(t, n, false, f.path());
  }

  void hash_contents(fnv1a64& h) const override {
    for (const auto& file : files_) {
      const safetensors_file& f = *file;
      for (const auto& [k, v] : f.metadata()) h.add(k), h.add(v);  // lowbit.packed, lowbit.config
      for (const st_tensor_info& t : f.tensors()) {
        h.add(fmt::format("{} {} [{}]", t.name, st_dtype_name(t.dtype), fmt::join(t.shape, ",")));
        read_mapped(f.raw(t), t.end - t.begin, [&h](const uint8_t* p, uint64_t n) { h.add(p, n); });
      }
    }
  }

 private:
  // The index's weight_map, each shard opened once and checked to hold what the index puts in it.
  void open_shards(const std::string& index_path) {
    require_regular_file(index_path, "the shard index");
    std::ifstream in(index_path);
    if (!in) throw error(fmt::format("{}: cannot read the shard index", index_path));
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw error(fmt::format("{}: not a JSON object", index_path));
    if (!j.contains("weight_map") || !j["weight_map"].is_object() || j["weight_map"].empty())
      throw error(fmt::format("{}: no weight_map (expected {{\"weight_map\": {{tensor: shard file}}}})", index_path));
    std::map<std::string, const safetensors_file*> opened;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string())
        throw error(fmt::format("{}: weight_map['{}'] is {}; expected a file name", index_path, name, file.dump()));
      const std::string shard = file.get<std::string>();
      // A shard is a file beside the index: no directories, no way out of it.
      if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos ||
          shard == "." || shard == "..")
        throw error(fmt::format("{}: weight_map['{}'] = '{}' is not a file name beside the index", index_path, name,
                                shard));
      auto it = opened.find(shard);
      if (it == opened.end()) {
        const std::string shard_path = (fs::path(index_path).parent_path() / shard).string();
        if (!fs::exists(shard_path))
          throw error(fmt::format("{}: shard '{}' (of tensor '{}') is missing", index_path, shard_path, name));
        files_.push_back(std::make_unique<safetensors_file>(shard_path));
        it = opened.emplace(shard, files_.back().get()).first;
      }
      if (!it->second->find(name))
        throw error(fmt::format("{}: the index puts tensor '{}' in {}, which has no such tensor", index_path, name,
                                it->second->path()));
      where_[name] = it->second;
    }
  }
  // The file holding Hugging Face tensor `hf` (null: none).
  const st_tensor_info* find_hf(const std::string& hf) const {
    if (where_.empty()) return files_.front()->find(hf);
    const auto it = where_.find(hf);
    return it == where_.end() ? nullptr : it->second->find(hf);
  }
  const safetensors_file& file_of(const std::string& hf) const {
    if (where_.empty()) return *files_.front();
    const auto it = where_.find(hf);
    if (it == where_.end())
      throw error(fmt::format("{}: tensor '{}' is missing (not in the index's weight_map)", header.source_path, hf));
    return *it->second;
  }
  static void release(const safetensors_file& f, const st_tensor_info& t) {
    read_mapped(f.raw(t), t.end - t.begin, nullptr);
  }
  std::vector<std::unique_ptr<safetensors_file>> files_;     // one, or the shards in the index's order
  std::map<std::string, const safetensors_file*> where_;     // sharded: Hugging Face name -> shard
  nlohmann::json packed_;
  std::map<std::string, name_map> names_;  // canonical -> file name and conversion
};

bool is_block_type(ggml_type t) {
  return t != ggml_type::f32 && t != ggml_type::f16 && t != ggml_type::bf16;
}

// GGUF, read (dequantized) one tensor at a time: llama.cpp's architectures llama (Mistral
// included: a sliding window makes it one), qwen2, gpt2 and gptneox, their metadata keys (every
// `<arch>.` key is one lowbit reads, or the file is refused naming it) and tensor layouts. The
// biases a family may have are read when present (llama.cpp loads them so).
class gguf_reader final : public tensor_reader {
 public:
  explicit gguf_reader(const std::string& path) : f_(path) {
    gguf_file& f = f_;
    model& m = header;
    m.source_path = path;
    const std::string arch = f.get_string("general.architecture");
    model_config& c = m.config;
    if (arch == "llama") c.arch = architecture::llama;
    else if (arch == "qwen2") c.arch = architecture::qwen2;
    else if (arch == "gpt2") c.arch = architecture::gpt2;
    else if (arch == "gptneox") c.arch = architecture::gptneox;
    else
      throw error(fmt::format("{}: general.architecture '{}' is not one lowbit reads (llama, qwen2, gpt2, gptneox; "
                              "OPT has no llama.cpp architecture)",
                              path, arch));
    // The metadata keys of the architecture lowbit reads (llama.cpp's llama-arch.cpp names).
    std::set<std::string> known = {"context_length", "embedding_length", "feed_forward_length", "block_count",
                                   "attention.head_count", "attention.head_count_kv", "vocab_size",
                                   "attention.key_length", "attention.value_length", "rope.freq_base",
                                   "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor",
                                   // original_context_length and finetuned: yarn's and metadata
                                   "rope.scaling.original_context_length", "rope.scaling.finetuned",
                                   // 0 in dense models' files (mixtures of experts are refused below)
                                   "expert_count", "expert_used_count"};
    if (c.layer_norm()) known.insert("attention.layer_norm_epsilon");
    else known.insert("attention.layer_norm_rms_epsilon");
    if (c.arch == architecture::gptneox) known.insert("use_parallel_residual");
    if (c.arch == architecture::llama) known.insert("attention.sliding_window");
    if (c.arch == architecture::gpt2) {
      for (const char* k : {"rope.freq_base", "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor",
                            "attention.head_count_kv"})
        known.erase(k);
    }
    for (const gguf_kv& kv : f.metadata())
      if (kv.key.rfind(arch + ".", 0) == 0 && !known.count(kv.key.substr(arch.size() + 1)))
        throw error(fmt::format("{}: metadata key '{}' (= {}) is not one lowbit reads for {}; lowbit refuses what it "
                                "cannot tell leaves the computation unchanged",
                                path, kv.key, kv.value.dump(), arch));
    for (const char* k : {"expert_count", "expert_used_count"})
      if (f.find_kv(arch + "." + k) && f.get_int(arch + "." + k) != 0)
        throw error(fmt::format("{}: {}.{} = {}: mixtures of experts are not implemented by lowbit", path, arch, k,
                                f.get_int(arch + "." + k)));
    if (f.find_kv("split.count") && f.get_int("split.count") > 1)
      throw error(fmt::format("{}: a split GGUF ({} files); merge it first (llama-gguf-split --merge)", path,
                              f.get_int("split.count")));
    auto key = [&](const char* k) { return arch + "." + k; };
    auto int_key = [&](const char* k) -> int {
      const int64_t v = f.get_int(key(k));
      if (v < 0 || v > (int64_t(1) << 30)) throw error(fmt::format("{}: {} = {} is out of range", path, key(k), v));
      return static_cast<int>(v);
    };
    c.dim = int_key("embedding_length");
    c.hidden_dim = int_key("feed_forward_length");
    c.n_layers = int_key("block_count");
    c.n_heads = int_key("attention.head_count");
    c.n_kv_heads = f.find_kv(key("attention.head_count_kv")) ? int_key("attention.head_count_kv") : c.n_heads;
    c.max_seq_len = int_key("context_length");
    if (!c.layer_norm()) {
      c.norm_eps = static_cast<float>(f.get_float(key("attention.layer_norm_rms_epsilon")));
    } else {
      c.norm_eps = static_cast<float>(f.get_float(key("attention.layer_norm_epsilon")));
    }
    if (f.find_kv(key("rope.freq_base"))) c.rope_theta = static_cast<float>(f.get_float(key("rope.freq_base")));
    const int hd = c.n_heads > 0 && c.dim % c.n_heads == 0 ? c.dim / c.n_heads : 0;
    for (const char* k : {"attention.key_length", "attention.value_length"})
      if (f.find_kv(key(k)) && f.get_int(key(k)) != hd)
        throw error(fmt::format("{}: {} = {} is not implemented (lowbit's head dimension is embedding_length / "
                                "head_count = {})",
                                path, key(k), f.get_int(key(k)), hd));
    if (f.find_kv(key("rope.dimension_count"))) {
      const int r = int_key("rope.dimension_count");
      if (c.arch == architecture::gptneox) {
        if (r != hd / 4) c.rope_dim = r;  // (hd / 4: the family's default)
      }
      else if (r != hd)
        throw error(fmt::format("{}: {} = {} with head dimension {}: partial RoPE is implemented for gptneox only",
                                path, key("rope.dimension_count"), r, hd));
    } else if (c.arch == architecture::gptneox && hd != hd / 4) {
      c.rope_dim = hd;  // llama.cpp's default n_rot: the head dimension
    }
    if (c.arch == architecture::gptneox && f.find_kv(key("use_parallel_residual"))) {
      const gguf_kv& kv = *f.find_kv(key("use_parallel_residual"));
      if (!kv.value.is_boolean()) throw error(fmt::format("{}: {} is not a bool", path, kv.key));
      if (!kv.value.get<bool>()) c.parallel_residual = false;
    }
    if (c.arch == architecture::llama && f.find_kv(key("attention.sliding_window"))) {
      c.arch = architecture::mistral;  // llama.cpp's llama ignores it; lowbit computes it (Mistral)
      c.sliding_window = int_key("attention.sliding_window");
    }
    if (f.find_kv(key("rope.scaling.type"))) {
      const std::string type = f.get_string(key("rope.scaling.type"));
      if (type == "linear") {
        c.rope_scaling.type = rope_scaling_type::linear;
        c.rope_scaling.factor = f.get_float(key("rope.scaling.factor"));
      } else if (type != "none") {
        throw error(fmt::format("{}: {} '{}' is not implemented by lowbit (none, linear; Llama 3.1's scaling comes as "
                                "rope_freqs.weight)",
                                path, key("rope.scaling.type"), type));
      }
    }
    // Llama 3.1: lowbit's files carry the scaling's parameters, llama.cpp's the per-frequency
    // factors they give (rope_freqs.weight, [rotary dims / 2]).
    if (f.find_kv("lowbit.rope_scaling")) {
      const nlohmann::json j = {{"rope_scaling", nlohmann::json::parse(f.get_string("lowbit.rope_scaling"), nullptr, false)}};
      c.rope_scaling = rope_scaling_from_json(j, path + " (lowbit.rope_scaling)");
      if (c.rope_scaling.type != rope_scaling_type::llama3)
        throw error(fmt::format("{}: lowbit.rope_scaling is not a llama3 rope_scaling", path));
    } else if (const gguf_tensor_info* t = f.find("rope_freqs.weight")) {
      if (t->ne.size() != 1 || t->ne[0] > 65536)
        throw error(fmt::format("{}: rope_freqs.weight should be a vector of the rotated pairs", path));
      c.rope_freq_factors = f.read_f32("rope_freqs.weight");
    }
    const gguf_tensor_info& emb = f.get("token_embd.weight");
    if (emb.ne.size() != 2) throw error(fmt::format("{}: token_embd.weight should be 2-D", path));
    c.vocab_size = static_cast<int>(emb.ne[1]);
    if (f.find_kv(key("vocab_size")) && f.get_int(key("vocab_size")) != c.vocab_size)
      throw error(fmt::format("{}: {} = {} but token_embd.weight has {} rows", path, key("vocab_size"),
                              f.get_int(key("vocab_size")), c.vocab_size));
    c.tied_classifier = f.find("output.weight") == nullptr;
    // Biases the family may or may not have (llama.cpp loads them when present).
    if (c.arch == architecture::llama) {
      if (f.find("blk.0.attn_q.bias") || f.find("blk.0.attn_output.bias")) c.attn_bias = true;
      if (f.find("blk.0.ffn_up.bias")) c.mlp_bias = true;
    }
    if (c.arch == architecture::gptneox && !f.find("blk.0.attn_qkv.bias")) c.attn_bias = false;
    try {
      c.validate();
    } catch (const error& e) {
      throw error(fmt::format("{}: {}", path, e.what()));
    }
    // Tensors beyond the family's pass through (a GGUF output of lowbit carries them on); the
    // RoPE factors are the config's.
    for (const gguf_tensor_info& t : f.tensors())
      if (t.name != "rope_freqs.weight") m.tensors[t.name].shape = t.shape();
    // The byte tokenizer's export (a byte-tokenizer model written by lowbit) is that tokenizer again.
    if (gguf_holds_byte_tokenizer(f)) m.tokenizer = {"bytes", ""};
    else if (f.find_kv("tokenizer.ggml.tokens")) m.tokenizer = {"gguf", path};
    else if (f.find_kv("lowbit.tokenizer")) m.tokenizer.kind = f.get_string("lowbit.tokenizer");
    if (f.find_kv("lowbit.tokenizer_path")) m.tokenizer.path = f.get_string("lowbit.tokenizer_path");
    if (f.find_kv("lowbit.provenance")) m.provenance = f.get_string("lowbit.provenance");
  }

  tensor load(const std::string& name) const override {
    const gguf_tensor_info& info = f_.get(name);
    tensor t;
    if (info.type == ggml_type::f32 && info.bytes == uint64_t(info.numel()) * 4) {
      // F32: copied chunk by chunk as the llama2.c reader does, each chunk's pages released once
      // copied, so the float copy and the mapped bytes are not both resident (a stories15M
      // GGUF's 37 MiB token_embd: peak RSS 96 -> 62 MiB for `generate --packed` of its q4_0 file).
      t = tensor{info.shape(), std::vector<float>(size_t(info.numel()))};
      const uint8_t* src = f_.raw(info);
      uint8_t* dst = reinterpret_cast<uint8_t*>(t.data.data());
      read_mapped(src, info.bytes, [&](const uint8_t* p, uint64_t n) { std::memcpy(dst + (p - src), p, n); }, 4);
    } else {
      // Converted whole, then its pages released: while it is read, the tensor's mapped bytes and
      // its floats are both resident.
      t = tensor{info.shape(), f_.read_f32(name)};
      read_mapped(f_.raw(info), info.bytes, nullptr);
    }
    if (const std::optional<name_map> n = gguf_layout(header.config, name)) return convert_layout(t, *n, false, f_.path());
    return t;
  }

  // The block-quantized tensors (q4_0 ... q6_k, mxfp4) as their codes and scales (packed
  // inference, load_packed_model), those stored in lowbit's canonical layout (not qwen2's and
  // gptneox's q/k rows). Not the reader's coded_names: writers re-encode a GGUF's values as before.
  std::vector<std::string> block_coded_names() const {
    std::vector<std::string> names;
    for (const gguf_tensor_info& t : f_.tensors())
      if (is_block_type(t.type) && header.find(t.name) && !gguf_layout(header.config, t.name)) names.push_back(t.name);
    std::sort(names.begin(), names.end());
    return names;
  }
  quantized_tensor block_codes(const std::string& name) const {
    const gguf_tensor_info* t = f_.find(name);
    if (!t || !is_block_type(t->type) || !header.find(name) || gguf_layout(header.config, name))
      return tensor_reader::read_codes(name);
    const tensor& shape = header.get(name);
    quantized_tensor q = decode_ggml_blocks(f_.raw(*t), shape.rows(), shape.cols(), t->type);
    read_mapped(f_.raw(*t), t->bytes, nullptr);  // its pages released, as load()
    return q;
  }

  void hash_contents(fnv1a64& h) const override {
    for (const gguf_tensor_info& t : f_.tensors()) {
      h.add(fmt::format("{} {} [{}]", t.name, static_cast<uint32_t>(t.type), fmt::join(t.ne, ",")));
      read_mapped(f_.raw(t), t.bytes, [&h](const uint8_t* p, uint64_t n) { h.add(p, n); });
    }
  }

 private:
  gguf_file f_;
};

}  // namespace

model load_safetensors_model(const std::string& path) { return read_whole_model(safetensors_reader(path)); }

void save_safetensors_model(const model& m, const std::string& path, const std::string& dtype,
                            const std::map<std::string, quantized_tensor>& packed) {
  m.validate();
  // (the reader-based writer checks each packed tensor's shape against its tensor)
  save_safetensors_model(*reader_of(m, &packed), path, dtype, !packed.empty());
}

void save_safetensors_model(const tensor_reader& r, const std::string& path, const std::string& dtype,
                            bool with_codes) {
  const model& m = r.header;
  const st_dtype type = dtype == "F32" ? st_dtype::f32 : dtype == "F16" ? st_dtype::f16
                        : dtype == "BF16" ? st_dtype::bf16
                        : throw error(fmt::format("{}: dtype '{}' (expected F32, F16 or BF16)", path, dtype));
  const std::vector<std::string> coded = with_codes ? r.coded_names() : std::vector<std::string>{};
  const std::set<std::string> packed(coded.begin(), coded.end());
  std::vector<st_write_tensor> out;
  // Each tensor is read when the writer reaches it; the parts of a packed tensor share one read
  // (the description below needs the layouts only).
  auto last = std::make_shared<std::pair<std::string, quantized_tensor>>();
  auto codes_of = [&r, last](const std::string& name) -> const quantized_tensor& {
    if (last->first != name) *last = {name, r.read_codes(name)};
    return last->second;
  };
  const std::string cfg = config_to_hf_json(m.config).dump(2);  // (throws for what Hugging Face cannot say)
  for (const name_map& n : hf_names(m.config, hf_prefixes(m.config.arch).front())) {
    if (packed.count(n.canonical)) continue;
    std::vector<int64_t> shape = m.get(n.canonical).shape;
    if (n.layout == hf_layout::transpose && shape.size() == 2) std::swap(shape[0], shape[1]);
    st_write_tensor t{n.hf, type, shape};
    if (const tensor* in_memory = r.peek(n.canonical); in_memory && n.layout == hf_layout::plain) {
      t.data = in_memory->data.data();  // written from where it is
      out.push_back(std::move(t));
      continue;
    }
    t.load_values = [&r, n, path] { return convert_layout(r.read(n.canonical), n, true, path).data; };
    out.push_back(std::move(t));
  }
  // Packed tensors keep the canonical name and orientation (their rows are the format's rows).
  nlohmann::json description = nlohmann::json::object();
  for (const std::string& name : coded) {
    const codes_layout q = r.read_codes_layout(name);
    const tensor& t = m.get(name);
    if (q.rows != t.rows() || q.cols != t.cols())
      throw shape_error(fmt::format("{}: packed '{}' is [{}, {}], the tensor [{}, {}]", path, name, q.rows, q.cols,
                                    t.rows(), t.cols()));
    description[name] = packed_entry(q);
    for (const packed_part_spec& part : kPackedParts) {
      std::vector<int64_t> shape = part_shape(q, part.part, false);
      if (shape.empty()) continue;
      st_write_tensor w{name + part.suffix, part.dtype, std::move(shape)};
      if (const quantized_tensor* in_memory = r.peek_codes(name)) {
        w.raw = part_bytes(*in_memory, part.part).data();  // written from where they are
        out.push_back(std::move(w));
        continue;
      }
      w.load_bytes = [codes_of, name, p = part.part] {
        const std::span<const uint8_t> bytes = part_bytes(std::as_const(codes_of(name)), p);
        return std::vector<uint8_t>(bytes.begin(), bytes.end());
      };
      out.push_back(std::move(w));
    }
  }
  std::map<std::string, std::string> meta{{"format", "pt"}, {"lowbit.config", cfg}};
  if (!m.tokenizer.kind.empty()) meta["lowbit.tokenizer"] = m.tokenizer.kind;
  if (!m.tokenizer.path.empty()) meta["lowbit.tokenizer_path"] = m.tokenizer.path;
  if (!m.provenance.empty()) meta["lowbit.provenance"] = m.provenance;
  if (!packed.empty()) meta["lowbit.packed"] = description.dump();
  write_safetensors(path, out, meta);
  // config.json for Hugging Face tools, unless the directory already has one of another model
  // (the source's, say): lowbit reads the copy in the file's metadata first anyway.
  const fs::path cfg_path = fs::path(path).parent_path() / "config.json";
  bool write_cfg = !fs::exists(cfg_path);
  if (!write_cfg) {
    std::ifstream in(cfg_path);
    const nlohmann::json existing = nlohmann::json::parse(in, nullptr, false);
    write_cfg = !existing.is_discarded() && existing == config_to_hf_json(m.config);
  }
  if (write_cfg) write_text_file_atomic(cfg_path.string(), cfg + "\n");
}

// ---- GGUF -----------------------------------------------------------------------------------
std::map<std::string, quantized_tensor> load_packed_tensors(const std::string& path) {
  safetensors_file f(path);
  std::map<std::string, quantized_tensor> out;
  const nlohmann::json packed = packed_description(f);
  for (auto it = packed.begin(); it != packed.end(); ++it) out[it.key()] = read_packed_codes(f, it.key(), it.value());
  return out;
}

model load_gguf_model(const std::string& path) { return read_whole_model(gguf_reader(path)); }

void save_gguf_model(const model& m, const std::string& path) { save_gguf_model(m, path, gguf_export{}); }

void save_gguf_model(const model& m, const std::string& path, const gguf_export& ex) {
  m.validate();
  save_gguf_model(*reader_of(m, &ex.packed), path, ex.types);
}

void save_gguf_model(const tensor_reader& r, const std::string& path, const std::map<std::string, uint32_t>& types,
                     const std::set<std::string>& rounded) {
  const model& m = r.header;
  const model_config& c = m.config;
  if (c.l1_norm)
    throw error(fmt::format("{}: an L1-normalised model cannot be written as GGUF (llama.cpp has RMSNorm "
                            "only); write safetensors", path));
  const std::string a = gguf_arch_name(c.arch);
  if (a.empty())
    throw error(fmt::format("{}: {} has no llama.cpp architecture (GGUF's general.architecture); write safetensors",
                            path, architecture_name(c.arch)));
  // llama.cpp's GELU (ggml_gelu) stands for GPT-2's gelu_new and GPT-NeoX's gelu: another
  // activation has no key to say it.
  const activation want = c.arch == architecture::gpt2 ? activation::gelu_tanh : activation::gelu;
  if (!c.gated_mlp() && c.mlp_activation() != want)
    throw error(fmt::format("{}: {} with activation {} cannot be written as GGUF (llama.cpp's {} has {}); write "
                            "safetensors",
                            path, architecture_name(c.arch), activation_name(c.mlp_activation()), a,
                            activation_name(want)));
  // Llama 3.1's frequencies go as llama.cpp's rope_freqs.weight, which its llama alone reads.
  const bool freq_tensor = c.rope_scaling.type == rope_scaling_type::llama3 || !c.rope_freq_factors.empty();
  if (freq_tensor && a != "llama")
    throw error(fmt::format("{}: llama.cpp's {} has no per-frequency RoPE factors (rope_freqs.weight) for a llama3 "
                            "rope_scaling; write safetensors",
                            path, a));
  gguf_writer w;
  w.add_string("general.architecture", a);
  w.add_string("general.name", fs::path(m.source_path).stem().string());
  w.add_u32(a + ".context_length", c.max_seq_len);
  w.add_u32(a + ".embedding_length", c.dim);
  w.add_u32(a + ".feed_forward_length", c.hidden_dim);
  w.add_u32(a + ".block_count", c.n_layers);
  w.add_u32(a + ".attention.head_count", c.n_heads);
  if (!c.layer_norm()) {  // llama, mistral, qwen2
    w.add_u32(a + ".attention.head_count_kv", c.n_kv_heads);
    w.add_f32(a + ".attention.layer_norm_rms_epsilon", c.norm_eps);
    w.add_f32(a + ".rope.freq_base", c.rope_theta);
    w.add_u32(a + ".rope.dimension_count", c.head_dim());
  } else {
    w.add_f32(a + ".attention.layer_norm_epsilon", c.norm_eps);
  }
  if (c.arch == architecture::gptneox) {
    w.add_f32(a + ".rope.freq_base", c.rope_theta);
    w.add_u32(a + ".rope.dimension_count", c.rotary_dim());
    w.add_bool(a + ".use_parallel_residual", c.has_parallel_residual());
  }
  if (c.sliding_window) w.add_u32(a + ".attention.sliding_window", c.sliding_window);  // (llama.cpp's llama ignores it)
  if (c.rope_scaling.type == rope_scaling_type::linear) {
    w.add_string(a + ".rope.scaling.type", "linear");
    w.add_f32(a + ".rope.scaling.factor", static_cast<float>(c.rope_scaling.factor));
  }
  std::vector<float> rope_factors = c.rope_freq_factors;
  if (c.rope_scaling.type == rope_scaling_type::llama3) {
    // llama.cpp divides frequency i by rope_freqs[i]: the unscaled frequency over the scaled one;
    // lowbit's own reader takes the parameters themselves back.
    model_config plain = c;
    plain.rope_scaling = {};
    const std::vector<double> f0 = rope_frequencies(plain), f1 = rope_frequencies(c);
    for (size_t i = 0; i < f0.size(); ++i) rope_factors.push_back(static_cast<float>(f0[i] / f1[i]));
    w.add_string("lowbit.rope_scaling", rope_scaling_to_json(c.rope_scaling).dump());
  }
  if (!rope_factors.empty())
    w.add_tensor("rope_freqs.weight", {int64_t(rope_factors.size())}, rope_factors.data(), ggml_type::f32);
  // The tokenizer, as llama.cpp reads it, when it is a SentencePiece-style vocabulary.
  std::unique_ptr<tokenizer> tok;
  try {
    tok = tokenizer_for_model(m);
  } catch (const error&) {
  }
  tokenizer::spm_vocabulary v;
  std::vector<std::string> bpe_tokens, bpe_merges;
  if (tok && tok->gpt2_vocabulary(bpe_tokens, bpe_merges)) {
    std::vector<int32_t> types(bpe_tokens.size(), 1);
    types[tok->bos_id()] = types[tok->eos_id()] = 3;  // <|endoftext|> (the byte tokenizer's <s>, </s>): control
    w.add_string("tokenizer.ggml.model", "gpt2");
    // llama.cpp picks its pre-tokenizer regex by this name; without it, it falls back to a default
    // that splits text differently from GPT-2's (most documents then tokenize differently).
    w.add_string("tokenizer.ggml.pre", "gpt-2");
    w.add_string_array("tokenizer.ggml.tokens", bpe_tokens);
    w.add_i32_array("tokenizer.ggml.token_type", types);
    w.add_string_array("tokenizer.ggml.merges", bpe_merges);
    w.add_u32("tokenizer.ggml.bos_token_id", tok->bos_id());
    w.add_u32("tokenizer.ggml.eos_token_id", tok->eos_id());
    if (tok->kind() == "bytes") {  // lowbit starts every document with BOS (text/documents.cpp)
      w.add_bool("tokenizer.ggml.add_bos_token", true);
      w.add_string("lowbit.tokenizer", "bytes");
    }
  } else if (tok && tok->sentencepiece_vocabulary(v)) {
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_string_array("tokenizer.ggml.tokens", v.tokens);
    w.add_f32_array("tokenizer.ggml.scores", v.scores);
    w.add_i32_array("tokenizer.ggml.token_type", v.types);
    if (v.bos >= 0) w.add_u32("tokenizer.ggml.bos_token_id", v.bos);
    if (v.eos >= 0) w.add_u32("tokenizer.ggml.eos_token_id", v.eos);
    if (v.unk >= 0) w.add_u32("tokenizer.ggml.unknown_token_id", v.unk);
    w.add_bool("tokenizer.ggml.add_bos_token", true);
    w.add_bool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  } else {
    if (!m.tokenizer.kind.empty()) w.add_string("lowbit.tokenizer", m.tokenizer.kind);
    if (!m.tokenizer.path.empty()) w.add_string("lowbit.tokenizer_path", m.tokenizer.path);
  }
  if (!m.provenance.empty()) w.add_string("lowbit.provenance", m.provenance);
  const std::vector<std::string> coded = r.coded_names();
  const std::set<std::string> has_codes(coded.begin(), coded.end());
  // Every tensor is read and encoded when the writer reaches it: one tensor in memory at a time.
  for (const auto& entry : m.tensors) {
    const std::string& name = entry.first;  // not a structured binding: the lambda below copies it
    const auto& shape_only = entry.second;
    const auto it = types.find(name);
    const ggml_type type = it == types.end() ? ggml_type::f32 : static_cast<ggml_type>(it->second);
    const bool round = rounded.count(name) > 0;
    // qwen2's and gptneox's q/k rows go back to the rotate-half order llama.cpp reads them in.
    const std::optional<name_map> layout = gguf_layout(c, name);
    w.add_tensor_deferred(name, shape_only.shape, type, [&r, &has_codes, &path, name, type, round, layout] {
      // In place when the reader holds it in memory, else read (one tensor at a time).
      const tensor* in_memory = round || layout ? nullptr : r.peek(name);
      tensor read;
      if (!in_memory) {
        read = r.read(name);
        // docs/conventions.md §22: a fallback's values rounded onto its wider type, as plan_gguf_export
        // rounds a model in memory (a no-op on values it has rounded already).
        if (round) round_onto_ggml_type(read, static_cast<uint32_t>(type));
        if (layout) read = convert_layout(read, *layout, true, path);
      }
      const tensor& t = in_memory ? *in_memory : read;
      if (type == ggml_type::f32 || type == ggml_type::f16 || type == ggml_type::bf16)
        return encode_ggml_floats(t.data.data(), t.data.size(), type);
      const format f = ggml_type_format(type);
      std::optional<quantized_tensor> read_codes;  // the reader's codes, when they are of this type's format
      const quantized_tensor* known = has_codes.count(name) ? r.peek_codes(name) : nullptr;
      if (has_codes.count(name) && !known) known = &read_codes.emplace(r.read_codes(name));
      if (known && !(known->fmt == f)) known = nullptr;
      if (known && layout) known = &read_codes.emplace(permuted_rows(*known, *layout, path));
      const std::optional<quantized_tensor> q = linear_weight_codes(t, f, known);
      if (!q) {  // (the known or the re-encoded codes do not hold the values)
        const quantized_tensor shown = known ? *known : quantize(t.data.data(), t.rows(), t.cols(), f);  // (error path)
        float got = 0;
        const int64_t i = codes_mismatch(shown, t.data.data(), &got);
        throw error(fmt::format("{}: tensor '{}' is not exactly representable as {} (element {}: {} vs {}); "
                                "quantize it in that format first", path, name, ggml_type_name(type), i,
                                i >= 0 ? t.data[size_t(i)] : 0.0f, got));
      }
      return encode_ggml_blocks(*q, type);
    });
  }
  w.write(path);
}

uint32_t ggml_type_for_format(const format& f) {
  const std::string c = format_name(f);
  for (const ggml_type t : {ggml_type::q4_0, ggml_type::q4_1, ggml_type::q5_0, ggml_type::q5_1, ggml_type::q8_0,
                            ggml_type::q2_k, ggml_type::q3_k, ggml_type::q4_k, ggml_type::q5_k, ggml_type::q6_k,
                            ggml_type::mxfp4})
    if (c == format_name(ggml_type_format(t))) return static_cast<uint32_t>(t);
  if (c == "bf16") return static_cast<uint32_t>(ggml_type::bf16);
  if (c == "fp16") return static_cast<uint32_t>(ggml_type::f16);
  if (c == "fp32") return static_cast<uint32_t>(ggml_type::f32);  // a float GGUF, e.g. for llama.cpp's speed
  throw error(fmt::format("{} has no GGUF tensor type; GGUF export takes q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, "
                          "q4_k, q5_k, q6_k, mxfp4, bf16, fp16 or fp32 (or write .safetensors)", c));
}

uint32_t ggml_fallback_type(uint32_t type_number, int64_t cols) {
  ggml_type wider = ggml_type::f16;
  switch (static_cast<ggml_type>(type_number)) {  // llama.cpp's tensor_type_fallback (llama-quant.cpp)
    case ggml_type::q2_k:
    case ggml_type::q3_k: wider = ggml_type::q4_0; break;
    case ggml_type::q4_k: wider = ggml_type::q5_0; break;
    case ggml_type::q5_k: wider = ggml_type::q5_1; break;
    case ggml_type::q6_k: wider = ggml_type::q8_0; break;
    default: break;
  }
  if (cols % ggml_block_size(wider) != 0) wider = ggml_type::f16;
  return static_cast<uint32_t>(wider);
}

void round_onto_ggml_type(tensor& t, uint32_t type_number) {
  const ggml_type type = static_cast<ggml_type>(type_number);
  switch (type) {
    case ggml_type::f32: return;
    case ggml_type::f16: return fake_quantize(t.data.data(), t.data.data(), t.rows(), t.cols(), parse_format("fp16"));
    case ggml_type::bf16: return fake_quantize(t.data.data(), t.data.data(), t.rows(), t.cols(), parse_format("bf16"));
    default: break;
  }
  const format f = ggml_type_format(type);
  fake_quantize(t.data.data(), t.data.data(), t.rows(), t.cols(), f);
}

std::vector<std::string> gguf_export_types(const model& header, uint32_t type, std::map<std::string, uint32_t>& types,
                                           std::set<std::string>* rounded, bool quantized_in_fallbacks) {
  std::vector<std::string> fallbacks;
  const int block = ggml_block_size(static_cast<ggml_type>(type));
  for (const std::string& name : header.linear_weight_names()) {
    const int64_t cols = header.get(name).cols();
    if (cols % block == 0) {
      types[name] = type;
      continue;
    }
    const ggml_type wider = static_cast<ggml_type>(ggml_fallback_type(type, cols));
    types[name] = static_cast<uint32_t>(wider);
    if (rounded && (!quantized_in_fallbacks || wider == ggml_type::f16)) rounded->insert(name);
    fallbacks.push_back(fmt::format("{} ({})", name, ggml_type_name(wider)));
  }
  return fallbacks;
}

std::vector<std::string> plan_gguf_export(model& m, uint32_t type, gguf_export& ex, bool quantized_in_fallbacks) {
  std::set<std::string> rounded;
  const std::vector<std::string> fallbacks = gguf_export_types(m, type, ex.types, &rounded, quantized_in_fallbacks);
  for (const std::string& name : rounded) {  // the values in memory as the file will hold them
    round_onto_ggml_type(m.get_mut(name), ex.types.at(name));
    ex.packed.erase(name);
  }
  return fallbacks;
}

int64_t codes_mismatch(const quantized_tensor& q, const float* values, float* got, bool* bit_exact) {
  std::vector<float> back(static_cast<size_t>(q.rows * q.cols));
  dequantize(q, back.data());
  if (bit_exact) *bit_exact = std::memcmp(back.data(), values, back.size() * sizeof(float)) == 0;
  for (size_t i = 0; i < back.size(); ++i)
    if (back[i] != values[i] && !(std::isnan(back[i]) && std::isnan(values[i]))) {
      if (got) *got = back[i];
      return static_cast<int64_t>(i);
    }
  return -1;
}

std::optional<quantized_tensor> linear_weight_codes(const tensor& t, const format& f, const quantized_tensor* known,
                                                    bool* bit_exact) {
  std::optional<quantized_tensor> q;
  if (known) q = *known;
  else q = quantize(t.data.data(), t.rows(), t.cols(), f);
  if (q->rows != t.rows() || q->cols != t.cols() || codes_mismatch(*q, t.data.data(), nullptr, bit_exact) >= 0)
    return std::nullopt;
  return q;
}

std::vector<std::string> pack_linear_weights(const model& m, const format& f,
                                             const std::map<std::string, quantized_tensor>& known,
                                             std::map<std::string, quantized_tensor>& packed) {
  std::vector<std::string> kept_float;
  for (const std::string& name : m.linear_weight_names()) {
    const auto it = known.find(name);
    if (auto q = linear_weight_codes(m.get(name), f, it == known.end() ? nullptr : &it->second))
      packed[name] = std::move(*q);
    else
      kept_float.push_back(name);
  }
  return kept_float;
}

// ---- shards ---------------------------------------------------------------------------------
namespace {

constexpr const char* kShardChecksum = "lowbit.shard_checksum";

// FNV-1a 64 (fnv1a64), byte by byte, over a whole shard but its checksum: the metadata (every key
// and value but the checksum's), each tensor's name, dtype, shape and data offsets in file order,
// then the data in that order. A changed byte anywhere in the header or the data changes it.
class shard_checksum {
 public:
  void add(const void* p, uint64_t n) { h_.add(p, n); }
  void add_text(const std::string& s) { add(s.data(), s.size() + 1); }  // with its NUL: "ab","c" != "a","bc"
  void add_metadata(const std::map<std::string, std::string>& meta) {
    for (const auto& [k, v] : meta)
      if (k != kShardChecksum) add_text(k), add_text(v);
  }
  void add_tensor(const std::string& name, st_dtype type, const std::vector<int64_t>& shape, uint64_t begin,
                  uint64_t end) {
    add_text(fmt::format("{} {} [{}] {} {}", name, st_dtype_name(type), fmt::join(shape, ","), begin, end));
  }
  std::string hex() const { return h_.hex(); }

 private:
  fnv1a64 h_;
};

// The checksum takes a shard's tensors in file order, and among tensors that start at one
// offset (a part of zero bytes, such as the empty scales of a plain cast, next to the following
// part) shortest first, then by name: the writer and the reader then agree whatever order a sort
// leaves ties in (a GPT-2 block's fp16 shard was refused as corrupted before).
bool by_extent(const st_tensor_info& a, const st_tensor_info& b) {
  return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
}

}  // namespace

void save_tensor_shard(const std::string& path, const tensor_shard& shard) {
  std::vector<st_write_tensor> out;
  std::vector<std::pair<const void*, uint64_t>> data;
  auto add = [&](const std::string& name, st_dtype type, std::vector<int64_t> shape, const void* bytes, uint64_t n) {
    out.push_back({name, type, std::move(shape), nullptr, bytes});
    data.push_back({bytes, n});
  };
  for (const auto& [name, t] : shard.tensors) add(name, st_dtype::f32, t.shape, t.data.data(), t.data.size() * 4);
  nlohmann::json description = nlohmann::json::object();
  for (const auto& [name, q] : shard.codes) {
    const codes_layout l = layout_of(q);
    description[name] = packed_entry(l);
    for (const packed_part_spec& part : kPackedParts) {
      std::vector<int64_t> shape = part_shape(l, part.part, true);
      if (shape.empty()) continue;
      const std::span<const uint8_t> bytes = part_bytes(q, part.part);
      add(name + part.suffix, part.dtype, std::move(shape), bytes.data(), bytes.size());
    }
  }
  std::map<std::string, std::string> meta = shard.metadata;
  meta["lowbit.packed"] = description.dump();
  // The header as write_safetensors lays it out: the tensors in this order, contiguous; summed in
  // the reader's order (by_extent), which sees only the offsets.
  shard_checksum sum;
  sum.add_metadata(meta);
  std::vector<st_tensor_info> entries;
  uint64_t offset = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    entries.push_back({out[i].name, out[i].dtype, out[i].shape, offset, offset + data[i].second});
    offset += data[i].second;
  }
  std::sort(entries.begin(), entries.end(), by_extent);
  for (const st_tensor_info& e : entries) sum.add_tensor(e.name, e.dtype, e.shape, e.begin, e.end);
  for (const auto& [p, n] : data) sum.add(p, n);
  meta[kShardChecksum] = sum.hex();
  write_safetensors(path, out, meta);
}

tensor_shard load_tensor_shard(const std::string& path) {
  const safetensors_file f(path);  // refuses a truncated file: the header's extents are checked
  auto it = f.metadata().find(kShardChecksum);
  if (it == f.metadata().end()) throw error(fmt::format("{}: not a lowbit shard (no {})", path, kShardChecksum));
  std::vector<const st_tensor_info*> infos;  // file order, ties as the writer summed them
  for (const st_tensor_info& t : f.tensors()) infos.push_back(&t);
  std::sort(infos.begin(), infos.end(),
            [](const st_tensor_info* a, const st_tensor_info* b) { return by_extent(*a, *b); });
  shard_checksum sum;
  sum.add_metadata(f.metadata());
  for (const st_tensor_info* t : infos) sum.add_tensor(t->name, t->dtype, t->shape, t->begin, t->end);
  for (const st_tensor_info* t : infos) {
    // (read again below, a tensor at a time)
    read_mapped(f.raw(*t), t->end - t->begin, [&sum](const uint8_t* p, uint64_t n) { sum.add(p, n); });
  }
  if (sum.hex() != it->second)
    throw error(fmt::format("{}: the shard does not match its checksum {} (corrupted); remove it (or its "
                            "directory) to recompute", path, kShardChecksum));
  tensor_shard shard;
  const nlohmann::json packed = packed_description(f);
  std::set<std::string> code_parts;
  for (auto p = packed.begin(); p != packed.end(); ++p) {
    shard.codes[p.key()] = read_packed_codes(f, p.key(), p.value());
    for (const packed_part_spec& part : kPackedParts) code_parts.insert(p.key() + part.suffix);
  }
  for (const st_tensor_info& t : f.tensors()) {
    if (code_parts.count(t.name)) continue;
    if (t.dtype != st_dtype::f32)
      throw error(fmt::format("{}: shard tensor '{}' is {}, expected F32", path, t.name, st_dtype_name(t.dtype)));
    shard.tensors[t.name] = tensor{t.shape, f.read_f32(t.name)};
  }
  for (const auto& [k, v] : f.metadata())
    if (k != kShardChecksum && k != "lowbit.packed") shard.metadata[k] = v;
  return shard;
}

tensor tensor_shard::values(const std::string& name) const {
  if (const auto t = tensors.find(name); t != tensors.end()) return t->second;
  const auto q = codes.find(name);
  if (q == codes.end()) throw error(fmt::format("shard: no tensor '{}'", name));
  tensor out{{q->second.rows, q->second.cols}, std::vector<float>(size_t(q->second.rows * q->second.cols))};
  dequantize(q->second, out.data.data());
  return out;
}

std::unique_ptr<tensor_reader> open_model_reader(const std::string& given) {
  if (!fs::exists(given)) throw error(fmt::format("{}: no such model file", given));
  std::string path = given;
  if (fs::is_directory(path)) {  // a Hugging Face checkpoint's directory: sharded, else one file
    const fs::path index = fs::path(path) / "model.safetensors.index.json", one = fs::path(path) / "model.safetensors";
    if (fs::exists(index)) path = index.string();
    else if (fs::exists(one)) path = one.string();
    else
      throw error(fmt::format("{}: a directory without model.safetensors.index.json or model.safetensors", given));
  }
  require_regular_file(path, "model file");  // a FIFO would block the open below
  char magic[4] = {0, 0, 0, 0};
  {
    std::ifstream in(path, std::ios::binary);
    in.read(magic, 4);
  }
  std::unique_ptr<tensor_reader> r;
  if (std::string(magic, 4) == "GGUF" || path.ends_with(".gguf")) r = std::make_unique<gguf_reader>(path);
  else if (path.ends_with(".safetensors") || path.ends_with(".safetensors.index.json"))
    r = std::make_unique<safetensors_reader>(path);
  else if (path.ends_with(".bin")) r = open_llama2c_reader(path);
  else
    throw error(fmt::format("{}: unknown model file (expected .bin (llama2.c), .safetensors, a sharded checkpoint's "
                            ".safetensors.index.json or its directory, or .gguf)",
                            path));
  r->header.validate_shapes();  // a config that contradicts the tensors, before any of them is read
  return r;
}

model load_model(const std::string& path) { return read_whole_model(*open_model_reader(path)); }

model load_packed_model(const std::string& path, const quant_plan& plan, packed_load_report* report) {
  const std::unique_ptr<tensor_reader> r = open_model_reader(path);
  const auto* gguf = dynamic_cast<const gguf_reader*>(r.get());
  std::set<std::string> file_coded;  // the file's own codes
  std::map<std::string, quantized_tensor> safetensors_codes;
  if (gguf) {
    for (const std::string& n : gguf->block_coded_names()) file_coded.insert(n);
  } else if (r->header.source_path.ends_with(".safetensors")) {
    safetensors_codes = load_packed_tensors(r->header.source_path);
    for (const auto& [n, q] : safetensors_codes) file_coded.insert(n);
  }
  model m = r->header;  // shapes; values filled below
  const std::vector<std::string> linear = m.linear_weight_names();
  const std::set<std::string> linear_set(linear.begin(), linear.end());
  packed_load_report rep;
  uint64_t tensor_id = 0;  // apply_weight_plan's stream of tensor ids (the model's tensors in name order)
  for (auto& [name, t] : m.tensors) {
    ++tensor_id;
    const std::optional<format> f = plan.weight_format(r->header, name);
    if (!linear_set.count(name)) {
      t = r->read(name);
      if (f) fake_quantize(t.data.data(), t.data.data(), t.rows(), t.cols(), *f, tensor_id);
      rep.float_bytes += t.data.size() * sizeof(float);
      continue;
    }
    quantized_tensor q;
    if (f) {
      std::string why;
      if (!has_packed_kernel(*f, &why))
        throw error(fmt::format("--packed: {} (tensor '{}'); packed kernels take {}", why, name, packed_formats_help()));
      const tensor values = r->read(name);
      q = quantize(values.data.data(), values.rows(), values.cols(), *f, tensor_id);  // fake_quantize's codes
    } else if (file_coded.count(name)) {
      q = gguf ? gguf->block_codes(name) : safetensors_codes.at(name);
      std::string why;
      if (!has_packed_kernel(q.fmt, &why))
        throw error(fmt::format("--packed: {} holds tensor '{}' as {}: {}; packed kernels take {} (or give --weights "
                                "one of them to re-quantize)", path, name, format_name(q.fmt), why, packed_formats_help()));
    } else {
      throw error(fmt::format("--packed: {} holds tensor '{}' in float; give --weights FORMAT (packed kernels: {}) or "
                              "a model file with codes (a quantized GGUF, lowbit's packed safetensors)",
                              path, name, packed_formats_help()));
    }
    const std::string format_of_q = format_name(q.fmt);
    auto p = std::make_shared<const packed_matrix>(pack_matrix(std::move(q)));
    rep.packed_bytes += p->bytes();
    rep.formats.insert(format_of_q);
    m.packed[name] = std::move(p);
    t.data.clear();
    t.data.shrink_to_fit();
  }
  m.validate();
  if (report) *report = rep;
  return m;
}

}  // namespace lowbit

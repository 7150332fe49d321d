// Hugging Face config.json <-> model_config, for every family (docs/evaluation.md "Model families"):
// one table of the config keys lowbit knows, per family, each read (implemented), ignored (no
// effect on the logits) or refused (a value lowbit does not compute; the table names the values
// that are accepted). A key that is not in the table is refused too: lowbit cannot tell whether it
// changes the computation, and a model computed wrong without a word is worse than one not loaded.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/io/model_io.hpp"
#include "src/io/hf_config.hpp"

namespace lowbit {

namespace {

// ---- the table ------------------------------------------------------------------------------------

constexpr unsigned bit(architecture a) { return 1u << static_cast<unsigned>(a); }
constexpr unsigned L = bit(architecture::llama), M = bit(architecture::mistral), Q = bit(architecture::qwen2),
                   G = bit(architecture::gpt2), N = bit(architecture::gptneox), O = bit(architecture::opt);
constexpr unsigned LLAMA_FAMILY = L | M | Q, ROPE = L | M | Q | N, ALL = L | M | Q | G | N | O;

struct key_rule {
  const char* key;
  unsigned families;
  hf_key_use use;
  // refused: the values that compute what lowbit computes (JSON, "|"-separated; null is always
  // accepted); "" refuses every value but null. read / ignored: what lowbit does with it.
  const char* note;
};

using U = hf_key_use;
// clang-format off
constexpr key_rule kKeys[] = {
    // -- what the model is
    {"model_type", ALL, U::read, "the family: llama, mistral, qwen2, gpt2, gpt_neox, opt"},
    {"architectures", ALL, U::read, "the family's causal LM (or base model) class; a task head (…ForSequenceClassification) is refused"},
    // -- shapes
    {"vocab_size", ALL, U::read, "vocab_size"},
    {"hidden_size", LLAMA_FAMILY | N | O, U::read, "dim"},
    {"intermediate_size", LLAMA_FAMILY | N, U::read, "hidden_dim"},
    {"num_hidden_layers", LLAMA_FAMILY | N | O, U::read, "n_layers"},
    {"num_attention_heads", LLAMA_FAMILY | N | O, U::read, "n_heads"},
    {"num_key_value_heads", LLAMA_FAMILY, U::read, "n_kv_heads (default num_attention_heads)"},
    {"head_dim", LLAMA_FAMILY, U::read, "must be hidden_size / num_attention_heads (lowbit's head dimension)"},
    {"max_position_embeddings", LLAMA_FAMILY | N | O, U::read, "max_seq_len"},
    {"n_embd", G, U::read, "dim"},
    {"n_layer", G, U::read, "n_layers"},
    {"n_head", G, U::read, "n_heads"},
    {"n_inner", G, U::read, "hidden_dim (null: 4 n_embd)"},
    {"n_positions", G, U::read, "max_seq_len"},
    {"n_ctx", G, U::ignored, "older name of n_positions, unused by the model"},
    {"ffn_dim", O, U::read, "hidden_dim"},
    {"word_embed_proj_dim", O, U::read, "must equal hidden_size (OPT-350m's project_in/project_out are not implemented)"},
    // -- norms
    {"rms_norm_eps", LLAMA_FAMILY, U::read, "norm_eps (default 1e-6)"},
    {"layer_norm_epsilon", G, U::read, "norm_eps (default 1e-5)"},
    {"layer_norm_eps", N, U::read, "norm_eps (default 1e-5)"},
    {"lowbit_norm", L, U::read, "rms or l1 (lowbit's L1 RMSNorm, docs/training.md §3.3)"},
    {"do_layer_norm_before", O, U::read, "false: post-LN blocks, no final norm"},
    {"_remove_final_layer_norm", O, U::refused, "false"},
    {"layer_norm_elementwise_affine", O, U::refused, "true"},
    // -- attention
    {"attention_bias", L | N, U::read, "biases on q, k, v and the attention output"},
    {"mlp_bias", L, U::read, "biases on gate, up and down"},
    {"enable_bias", O, U::read, "biases on every linear layer"},
    {"sliding_window", M, U::read, "attend to the last W positions (null: all)"},
    {"sliding_window", Q, U::ignored, "used only with use_sliding_window, which is refused"},
    {"use_sliding_window", Q, U::refused, "false"},
    {"max_window_layers", Q, U::ignored, "used only with use_sliding_window"},
    {"layer_types", Q, U::read, "every entry full_attention (sliding_attention is refused)"},
    {"scale_attn_weights", G, U::refused, "true"},
    {"scale_attn_by_inverse_layer_idx", G, U::refused, "false"},
    {"reorder_and_upcast_attn", G, U::ignored, "changes fp16 numerics only; lowbit computes in float32"},
    {"use_parallel_residual", N, U::read, "x + attn(ln1 x) + mlp(ln2 x) (default true)"},
    // -- positions
    {"rope_theta", LLAMA_FAMILY | N, U::read, "RoPE base (default 10000)"},
    {"rotary_emb_base", N, U::read, "RoPE base (GPT-NeoX's name)"},
    {"rope_scaling", ROPE, U::read, "null, default, linear (factor) or llama3 (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings); other types are refused"},
    {"rotary_pct", N, U::read, "rotated fraction of each head (default 0.25)"},
    {"partial_rotary_factor", LLAMA_FAMILY, U::refused, "1 | 1.0"},
    {"partial_rotary_factor", N, U::read, "rotated fraction of each head (newer name of rotary_pct)"},
    // -- MLP
    {"hidden_act", LLAMA_FAMILY, U::read, "silu (swish): SwiGLU's gate; others are refused"},
    {"hidden_act", N, U::read, "gelu (erf), gelu_new / gelu_pytorch_tanh / gelu_fast (tanh), relu"},
    {"activation_function", G | O, U::read, "gelu (erf), gelu_new / gelu_pytorch_tanh / gelu_fast (tanh), relu"},
    {"pretraining_tp", L, U::ignored, "slices the same matmuls (the sum is the same function)"},
    // -- the classifier
    {"tie_word_embeddings", ALL, U::read, "classifier = token embedding (default: llama, mistral, qwen2, gpt_neox false; gpt2, opt true)"},
    // -- training only (dropout, initialisation)
    {"attention_dropout", LLAMA_FAMILY | N | O, U::ignored, "training only"},
    {"hidden_dropout", N, U::ignored, "training only"},
    {"classifier_dropout", N, U::ignored, "training only (classification head)"},
    {"dropout", O, U::ignored, "training only"},
    {"activation_dropout", O, U::ignored, "training only"},
    {"layerdrop", O, U::ignored, "training only"},
    {"resid_pdrop", G, U::ignored, "training only"},
    {"embd_pdrop", G, U::ignored, "training only"},
    {"attn_pdrop", G, U::ignored, "training only"},
    {"initializer_range", ALL, U::ignored, "initialisation only"},
    {"init_std", O, U::ignored, "initialisation only"},
    {"summary_type", G, U::ignored, "sequence-summary head (not the LM)"},
    {"summary_use_proj", G, U::ignored, "sequence-summary head"},
    {"summary_activation", G, U::ignored, "sequence-summary head"},
    {"summary_proj_to_labels", G, U::ignored, "sequence-summary head"},
    {"summary_first_dropout", G, U::ignored, "sequence-summary head"},
    // -- PretrainedConfig's generic keys
    {"torch_dtype", ALL, U::ignored, "the stored dtype; the file's tensors say it"},
    {"dtype", ALL, U::ignored, "the stored dtype"},
    {"transformers_version", ALL, U::ignored, "metadata"},
    {"_name_or_path", ALL, U::ignored, "metadata"},
    {"_commit_hash", ALL, U::ignored, "metadata"},
    {"_attn_implementation", ALL, U::ignored, "kernel choice (same function)"},
    {"attn_implementation", ALL, U::ignored, "kernel choice (same function)"},
    {"use_cache", ALL, U::ignored, "generation cache (same function)"},
    {"bos_token_id", ALL, U::ignored, "tokenizer (lowbit's tokenizer says it)"},
    {"eos_token_id", ALL, U::ignored, "tokenizer"},
    {"pad_token_id", ALL, U::ignored, "tokenizer"},
    {"sep_token_id", ALL, U::ignored, "tokenizer"},
    {"decoder_start_token_id", ALL, U::ignored, "encoder-decoder generation"},
    {"prefix", ALL, U::ignored, "generation prompt prefix"},
    {"tokenizer_class", ALL, U::ignored, "tokenizer"},
    {"output_attentions", ALL, U::ignored, "outputs returned"},
    {"output_hidden_states", ALL, U::ignored, "outputs returned"},
    {"return_dict", ALL, U::ignored, "outputs returned"},
    {"torchscript", ALL, U::ignored, "export"},
    {"use_bfloat16", ALL, U::ignored, "TPU dtype (obsolete)"},
    {"tf_legacy_loss", ALL, U::ignored, "TensorFlow loss"},
    {"chunk_size_feed_forward", ALL, U::ignored, "chunks the MLP over tokens (same function)"},
    {"is_decoder", ALL, U::ignored, "a decoder-only model is a decoder"},
    {"tie_encoder_decoder", ALL, U::ignored, "encoder-decoder models"},
    {"id2label", ALL, U::ignored, "classification head"},
    {"label2id", ALL, U::ignored, "classification head"},
    {"num_labels", ALL, U::ignored, "classification head"},
    {"problem_type", ALL, U::ignored, "classification head"},
    {"finetuning_task", ALL, U::ignored, "metadata"},
    {"task_specific_params", ALL, U::ignored, "generation settings"},
    {"max_length", ALL, U::ignored, "generation setting"},
    {"min_length", ALL, U::ignored, "generation setting"},
    {"do_sample", ALL, U::ignored, "generation setting"},
    {"early_stopping", ALL, U::ignored, "generation setting"},
    {"num_beams", ALL, U::ignored, "generation setting"},
    {"num_beam_groups", ALL, U::ignored, "generation setting"},
    {"diversity_penalty", ALL, U::ignored, "generation setting"},
    {"temperature", ALL, U::ignored, "generation setting"},
    {"top_k", ALL, U::ignored, "generation setting"},
    {"top_p", ALL, U::ignored, "generation setting"},
    {"typical_p", ALL, U::ignored, "generation setting"},
    {"repetition_penalty", ALL, U::ignored, "generation setting"},
    {"length_penalty", ALL, U::ignored, "generation setting"},
    {"no_repeat_ngram_size", ALL, U::ignored, "generation setting"},
    {"encoder_no_repeat_ngram_size", ALL, U::ignored, "generation setting"},
    {"bad_words_ids", ALL, U::ignored, "generation setting"},
    {"num_return_sequences", ALL, U::ignored, "generation setting"},
    {"output_scores", ALL, U::ignored, "generation setting"},
    {"return_dict_in_generate", ALL, U::ignored, "generation setting"},
    {"forced_bos_token_id", ALL, U::ignored, "generation setting"},
    {"forced_eos_token_id", ALL, U::ignored, "generation setting"},
    {"remove_invalid_values", ALL, U::ignored, "generation setting"},
    {"exponential_decay_length_penalty", ALL, U::ignored, "generation setting"},
    {"suppress_tokens", ALL, U::ignored, "generation setting"},
    {"begin_suppress_tokens", ALL, U::ignored, "generation setting"},
    {"is_encoder_decoder", ALL, U::refused, "false"},
    {"add_cross_attention", ALL, U::refused, "false"},
    {"pruned_heads", ALL, U::refused, "{}"},
    {"quantization_config", ALL, U::refused, ""},
};
// clang-format on

const key_rule* find_rule(const std::string& key, architecture a) {
  for (const key_rule& r : kKeys)
    if (key == r.key && (r.families & bit(a))) return &r;
  return nullptr;
}

// Hugging Face's model_type of each family (GGUF's name is gptneox, Hugging Face's gpt_neox).
const char* hf_model_type(architecture a) { return a == architecture::gptneox ? "gpt_neox" : architecture_name(a); }
// Its causal LM class, as config.json's architectures names it.
const char* hf_class(architecture a) {
  switch (a) {
    case architecture::llama: return "LlamaForCausalLM";
    case architecture::mistral: return "MistralForCausalLM";
    case architecture::qwen2: return "Qwen2ForCausalLM";
    case architecture::gpt2: return "GPT2LMHeadModel";
    case architecture::gptneox: return "GPTNeoXForCausalLM";
    case architecture::opt: return "OPTForCausalLM";
  }
  return "?";
}
// The class-name prefix of each family (Llama..., GPTNeoX...).
const char* hf_class_prefix(architecture a) {
  switch (a) {
    case architecture::llama: return "Llama";
    case architecture::mistral: return "Mistral";
    case architecture::qwen2: return "Qwen2";
    case architecture::gpt2: return "GPT2";
    case architecture::gptneox: return "GPTNeoX";
    case architecture::opt: return "OPT";
  }
  return "?";
}

// An ignored key does not change the computation, but a value of the wrong kind says the file is
// not what it claims to be (a corrupt or hand-edited config): token ids are non-negative integers
// (eos also a list of them), dtypes are names, n_ctx a positive integer; null is always accepted.
void check_ignored_value(const std::string& key, const nlohmann::json& value, const std::string& file) {
  if (value.is_null()) return;
  auto token_id = [](const nlohmann::json& v) {
    return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
  };
  bool ok = true;
  std::string want;
  if (key.ends_with("token_id")) {
    ok = token_id(value) || (key.ends_with("eos_token_id") && value.is_array() &&
                             std::all_of(value.begin(), value.end(), token_id));
    want = key.ends_with("eos_token_id") ? "a token id or a list of them" : "a token id (an integer >= 0)";
  } else if (key == "torch_dtype" || key == "dtype") {
    ok = value.is_string(), want = "a dtype name such as \"float32\"";
  } else if (key == "n_ctx") {
    ok = token_id(value) && value.get<uint64_t>() > 0, want = "a positive integer";
  }
  if (!ok) throw error(fmt::format("{}: config key '{}' = {}: expected {}", file, key, value.dump(), want));
}

// Refuses a key the table does not know for family a, or a refused key with a value it does not
// accept, naming the key, the value and the file.
void check_keys(const nlohmann::json& j, architecture a, const std::string& file) {
  const std::string family = hf_model_type(a);
  for (const auto& [key, value] : j.items()) {
    const key_rule* r = find_rule(key, a);
    if (!r)
      throw error(fmt::format("{}: config key '{}' (= {}) is not one lowbit knows for {}; lowbit refuses what it "
                              "cannot tell leaves the computation unchanged (the table: docs/evaluation.md)",
                              file, key, value.dump(), family));
    if (r->use == hf_key_use::ignored) check_ignored_value(key, value, file);
    if (r->use != hf_key_use::refused || value.is_null()) continue;
    bool accepted = false;
    std::string note = r->note;
    for (size_t at = 0; !note.empty() && at <= note.size();) {
      const size_t bar = std::min(note.find('|', at), note.size());
      std::string lit = note.substr(at, bar - at);
      lit.erase(0, lit.find_first_not_of(' '));
      lit.erase(lit.find_last_not_of(' ') + 1);
      const nlohmann::json want = nlohmann::json::parse(lit);
      // 1 and 1.0 are the same value (JSON's numbers compare by kind in nlohmann)
      if (value == want || (value.is_number() && want.is_number() && value.get<double>() == want.get<double>()))
        accepted = true;
      at = bar + 1;
    }
    if (!accepted)
      throw error(fmt::format("{}: config key '{}' = {} is not implemented by lowbit for {}{}", file, key,
                              value.dump(), family,
                              note.empty() ? "" : fmt::format(" (it computes {} = {} only)", key, note)));
  }
}

template <class T>
T json_field(const nlohmann::json& j, const std::string& file, const char* key) {
  if (!j.contains(key) || j[key].is_null())
    throw error(fmt::format("{}: field '{}' is missing", file, key));
  const nlohmann::json& v = j[key];
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // An integer field takes a JSON integer that fits: nlohmann's get<int> would wrap 4294967328
    // to 32 and truncate 1.5 (and true) to 1 without a word.
    const bool integer = v.is_number_integer();  // signed or unsigned, never a float or a bool
    const bool fits = integer && (v.is_number_unsigned() ? std::in_range<T>(v.get<uint64_t>())
                                                         : std::in_range<T>(v.get<int64_t>()));
    if (!fits)
      throw error(fmt::format("{}: field '{}' is {}; expected an integer{}", file, key, v.dump(),
                              integer ? fmt::format(" of at most {}", std::numeric_limits<T>::max()) : ""));
    return v.get<T>();
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw error(fmt::format("{}: field '{}' is {}; expected true or false", file, key, v.dump()));
    return v.get<bool>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) throw error(fmt::format("{}: field '{}' is {}; expected a number", file, key, v.dump()));
    return v.get<T>();
  } else {
    try {
      return v.get<T>();
    } catch (const std::exception&) {
      throw error(fmt::format("{}: field '{}' has the wrong type ({})", file, key, v.dump()));
    }
  }
}

// The field when present and not null, else `fallback`.
template <class T>
T field_or(const nlohmann::json& j, const std::string& file, const char* key, T fallback) {
  return j.contains(key) && !j[key].is_null() ? json_field<T>(j, file, key) : fallback;
}
template <class T>
std::optional<T> optional_field(const nlohmann::json& j, const std::string& file, const char* key) {
  if (j.contains(key) && !j[key].is_null()) return json_field<T>(j, file, key);
  return std::nullopt;
}

// hidden_act / activation_function: Hugging Face's ACT2FN names lowbit computes.
activation parse_activation(const nlohmann::json& j, const std::string& file, const char* key, activation fallback,
                            bool gated) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const std::string s = json_field<std::string>(j, file, key);
  if (gated) {
    if (s == "silu" || s == "swish") return activation::silu;
    throw error(fmt::format("{}: {} '{}' is not implemented for a SwiGLU MLP (lowbit: silu)", file, key, s));
  }
  if (s == "gelu") return activation::gelu;
  // gelu_fast is the tanh approximation written x (1 + 0.044715 x^2) inside the tanh: the same function.
  if (s == "gelu_new" || s == "gelu_pytorch_tanh" || s == "gelu_fast") return activation::gelu_tanh;
  if (s == "relu") return activation::relu;
  throw error(fmt::format("{}: {} '{}' is not implemented (lowbit: gelu, gelu_new / gelu_pytorch_tanh / gelu_fast, "
                          "relu)",
                          file, key, s));
}

}  // namespace

rope_scale rope_scaling_from_json(const nlohmann::json& j, const std::string& file) {
  rope_scale r;
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return r;
  const nlohmann::json& s = j["rope_scaling"];
  const std::string where = file + ": rope_scaling";
  if (!s.is_object()) throw error(fmt::format("{} is {}; expected an object or null", where, s.dump()));
  // Hugging Face names the type "rope_type" (older configs: "type").
  std::string type;
  for (const char* k : {"rope_type", "type"})
    if (s.contains(k) && !s[k].is_null()) {
      if (!s[k].is_string()) throw error(fmt::format("{}.{} is {}; expected a string", where, k, s[k].dump()));
      type = s[k].get<std::string>();
      break;
    }
  std::vector<std::string> known = {"rope_type", "type"};
  if (type == "default" || type.empty()) {
    r.type = rope_scaling_type::none;
  } else if (type == "linear") {
    r.type = rope_scaling_type::linear;
    r.factor = json_field<double>(s, where, "factor");
    known.push_back("factor");
  } else if (type == "llama3") {
    r.type = rope_scaling_type::llama3;
    r.factor = json_field<double>(s, where, "factor");
    r.low_freq_factor = json_field<double>(s, where, "low_freq_factor");
    r.high_freq_factor = json_field<double>(s, where, "high_freq_factor");
    r.original_max_position_embeddings = json_field<int>(s, where, "original_max_position_embeddings");
    known.insert(known.end(), {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
  } else {
    throw error(fmt::format("{}: rope_scaling type '{}' is not implemented by lowbit (it computes linear and llama3; "
                            "{} would be computed wrong)",
                            file, type, type));
  }
  for (const auto& [k, v] : s.items())
    if (std::find(known.begin(), known.end(), k) == known.end() && !v.is_null())
      throw error(fmt::format("{}.{} = {} is not implemented for rope type '{}'", where, k, v.dump(),
                              type.empty() ? "default" : type));
  return r;
}

nlohmann::json rope_scaling_to_json(const rope_scale& r) {
  if (r.type == rope_scaling_type::linear) return {{"rope_type", "linear"}, {"factor", r.factor}};
  return {{"rope_type", "llama3"},
          {"factor", r.factor},
          {"low_freq_factor", r.low_freq_factor},
          {"high_freq_factor", r.high_freq_factor},
          {"original_max_position_embeddings", r.original_max_position_embeddings}};
}

namespace {

// A rotated fraction of each head (rotary_pct, partial_rotary_factor) as a number of dims:
// Hugging Face's int(head_dim * fraction).
int rotary_dims(double fraction, int head_dim, const std::string& file, const char* key) {
  if (!(fraction > 0 && fraction <= 1))
    throw error(fmt::format("{}: {} = {} (expected a fraction in (0, 1])", file, key, fraction));
  return static_cast<int>(head_dim * fraction);
}

architecture family_of(const nlohmann::json& j, const std::string& file) {
  if (j.contains("model_type") && !j["model_type"].is_null()) {
    if (!j["model_type"].is_string())
      throw error(fmt::format("{}: model_type is {}; expected a string", file, j["model_type"].dump()));
    const std::string t = j["model_type"];
    for (architecture a : all_architectures())
      if (t == hf_model_type(a)) return a;
    throw error(fmt::format("{}: model_type '{}' is not supported (lowbit computes llama, mistral, qwen2, gpt2, "
                            "gpt_neox and opt)",
                            file, t));
  }
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    const std::string cls = j["architectures"][0];
    // The longest prefix wins (GPTNeoX before GPT2 is not an issue: "GPT2" is not a prefix of "GPTNeoX").
    for (architecture a : all_architectures())
      if (cls.rfind(hf_class_prefix(a), 0) == 0) return a;
    throw error(fmt::format("{}: architectures '{}' is not a family lowbit computes", file, cls));
  }
  throw error(fmt::format("{}: no model_type and no architectures: cannot tell the model family", file));
}

}  // namespace

std::vector<hf_config_key> hf_config_keys(architecture a) {
  std::vector<hf_config_key> v;
  for (const key_rule& r : kKeys)
    if (r.families & bit(a)) v.push_back({r.key, r.use, r.note});
  return v;
}

model_config config_from_hf_json(const nlohmann::json& j, const std::string& file) {
  if (!j.is_object()) throw error(fmt::format("{}: expected a JSON object", file));
  model_config c;
  c.arch = family_of(j, file);
  const architecture a = c.arch;
  check_keys(j, a, file);
  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const nlohmann::json& cls = j["architectures"];
    if (!cls.is_array()) throw error(fmt::format("{}: architectures is {}; expected a list", file, cls.dump()));
    for (const nlohmann::json& e : cls) {
      const std::string name = e.is_string() ? e.get<std::string>() : e.dump();
      const std::string prefix = hf_class_prefix(a);
      const bool lm = name.rfind(prefix, 0) == 0 &&
                      (name.ends_with("ForCausalLM") || name.ends_with("LMHeadModel") || name == prefix + "Model");
      if (!lm)
        throw error(fmt::format("{}: architectures names '{}'; lowbit reads {}'s causal language model ({})", file,
                                name, hf_model_type(a), hf_class(a)));
    }
  }
  const bool llama_like = c.gated_mlp();
  if (llama_like) {
    c.dim = json_field<int>(j, file, "hidden_size");
    c.hidden_dim = json_field<int>(j, file, "intermediate_size");
    c.n_layers = json_field<int>(j, file, "num_hidden_layers");
    c.n_heads = json_field<int>(j, file, "num_attention_heads");
    c.n_kv_heads = field_or<int>(j, file, "num_key_value_heads", c.n_heads);
    c.vocab_size = json_field<int>(j, file, "vocab_size");
    c.max_seq_len = json_field<int>(j, file, "max_position_embeddings");
    c.norm_eps = field_or<float>(j, file, "rms_norm_eps", 1e-6f);
    c.rope_theta = field_or<float>(j, file, "rope_theta", 10000.0f);
    c.tied_classifier = field_or<bool>(j, file, "tie_word_embeddings", false);
    c.act = parse_activation(j, file, "hidden_act", activation::silu, true);
    if (c.act == activation::silu) c.act.reset();  // the family's own
    if (const auto hd = optional_field<int>(j, file, "head_dim"); hd && c.n_heads > 0 && *hd * c.n_heads != c.dim)
      throw error(fmt::format("{}: head_dim {} with {} heads of hidden_size {} is not implemented (lowbit's head "
                              "dimension is hidden_size / num_attention_heads = {})",
                              file, *hd, c.n_heads, c.dim, c.dim / c.n_heads));
    if (a == architecture::llama) {
      if (const auto b = optional_field<bool>(j, file, "attention_bias"); b && *b) c.attn_bias = true;
      if (const auto b = optional_field<bool>(j, file, "mlp_bias"); b && *b) c.mlp_bias = true;
      const std::string norm = field_or<std::string>(j, file, "lowbit_norm", "rms");
      if (norm != "rms" && norm != "l1")
        throw error(fmt::format("{}: lowbit_norm '{}' (expected rms or l1)", file, norm));
      c.l1_norm = norm == "l1";
    }
    if (a == architecture::mistral) c.sliding_window = field_or<int>(j, file, "sliding_window", 0);
    if (a == architecture::qwen2 && j.contains("layer_types") && !j["layer_types"].is_null()) {
      const nlohmann::json& t = j["layer_types"];
      if (!t.is_array()) throw error(fmt::format("{}: layer_types is {}; expected a list", file, t.dump()));
      for (const nlohmann::json& e : t)
        if (e != "full_attention")
          throw error(fmt::format("{}: layer_types entry {} is not implemented (lowbit: full_attention)", file,
                                  e.dump()));
    }
    c.rope_scaling = rope_scaling_from_json(j, file);
  } else if (a == architecture::gpt2) {
    c.dim = json_field<int>(j, file, "n_embd");
    c.n_layers = json_field<int>(j, file, "n_layer");
    c.n_heads = json_field<int>(j, file, "n_head");
    c.n_kv_heads = c.n_heads;
    c.hidden_dim = field_or<int>(j, file, "n_inner", 4 * c.dim);
    c.vocab_size = json_field<int>(j, file, "vocab_size");
    c.max_seq_len = json_field<int>(j, file, "n_positions");
    c.norm_eps = field_or<float>(j, file, "layer_norm_epsilon", 1e-5f);
    c.tied_classifier = field_or<bool>(j, file, "tie_word_embeddings", true);
    c.act = parse_activation(j, file, "activation_function", activation::gelu_tanh, false);
    if (c.act == activation::gelu_tanh) c.act.reset();
  } else if (a == architecture::gptneox) {
    c.dim = json_field<int>(j, file, "hidden_size");
    c.hidden_dim = json_field<int>(j, file, "intermediate_size");
    c.n_layers = json_field<int>(j, file, "num_hidden_layers");
    c.n_heads = json_field<int>(j, file, "num_attention_heads");
    c.n_kv_heads = c.n_heads;
    c.vocab_size = json_field<int>(j, file, "vocab_size");
    c.max_seq_len = json_field<int>(j, file, "max_position_embeddings");
    c.norm_eps = field_or<float>(j, file, "layer_norm_eps", 1e-5f);
    c.tied_classifier = field_or<bool>(j, file, "tie_word_embeddings", false);
    c.act = parse_activation(j, file, "hidden_act", activation::gelu, false);
    if (c.act == activation::gelu) c.act.reset();
    if (const auto b = optional_field<bool>(j, file, "attention_bias"); b && !*b) c.attn_bias = false;
    if (const auto p = optional_field<bool>(j, file, "use_parallel_residual"); p && !*p) c.parallel_residual = false;
    // Newer transformers name the base rope_theta and the fraction partial_rotary_factor.
    c.rope_theta = field_or<float>(j, file, "rotary_emb_base", field_or<float>(j, file, "rope_theta", 10000.0f));
    const char* frac_key = j.contains("rotary_pct") && !j["rotary_pct"].is_null() ? "rotary_pct" : "partial_rotary_factor";
    const double frac = field_or<double>(j, file, frac_key, 0.25);
    if (c.n_heads > 0 && c.dim % c.n_heads == 0) {
      const int hd = c.dim / c.n_heads, r = rotary_dims(frac, hd, file, frac_key);
      if (r != hd / 4) c.rope_dim = r;  // (hd / 4: the family's default)
    }
    c.rope_scaling = rope_scaling_from_json(j, file);
  } else {  // opt
    c.dim = json_field<int>(j, file, "hidden_size");
    c.hidden_dim = json_field<int>(j, file, "ffn_dim");
    c.n_layers = json_field<int>(j, file, "num_hidden_layers");
    c.n_heads = json_field<int>(j, file, "num_attention_heads");
    c.n_kv_heads = c.n_heads;
    c.vocab_size = json_field<int>(j, file, "vocab_size");
    c.max_seq_len = json_field<int>(j, file, "max_position_embeddings");
    c.norm_eps = 1e-5f;  // torch.nn.LayerNorm's default: OPT's config has no epsilon
    c.tied_classifier = field_or<bool>(j, file, "tie_word_embeddings", true);
    c.act = parse_activation(j, file, "activation_function", activation::relu, false);
    if (c.act == activation::relu) c.act.reset();
    c.norm_before = field_or<bool>(j, file, "do_layer_norm_before", true);
    if (const auto b = optional_field<bool>(j, file, "enable_bias"); b && !*b) c.attn_bias = false, c.mlp_bias = false;
    if (const auto w = optional_field<int>(j, file, "word_embed_proj_dim"); w && *w != c.dim)
      throw error(fmt::format("{}: word_embed_proj_dim {} != hidden_size {}: OPT's project_in / project_out "
                              "(opt-350m) are not implemented by lowbit",
                              file, *w, c.dim));
  }
  try {
    c.validate();
  } catch (const error& e) {
    throw error(fmt::format("{}: {}", file, e.what()));
  }
  return c;
}

nlohmann::json config_to_hf_json(const model_config& c) {
  nlohmann::json j;
  const architecture a = c.arch;
  if (!c.rope_freq_factors.empty())
    throw error("a model with llama.cpp's per-frequency RoPE factors (rope_freqs.weight) and no rope_scaling has no "
                "Hugging Face config; write GGUF");
  auto act_name = [&](activation f) -> std::string {
    switch (f) {
      case activation::gelu_tanh: return "gelu_new";
      case activation::gelu: return "gelu";
      case activation::relu: return "relu";
      case activation::silu: return "silu";
    }
    return "?";
  };
  if (c.gated_mlp()) {
    j = {{"architectures", {hf_class(a)}}, {"model_type", hf_model_type(a)}, {"hidden_size", c.dim},
         {"intermediate_size", c.hidden_dim}, {"num_hidden_layers", c.n_layers},
         {"num_attention_heads", c.n_heads}, {"num_key_value_heads", c.n_kv_heads},
         {"vocab_size", c.vocab_size}, {"max_position_embeddings", c.max_seq_len},
         {"rms_norm_eps", c.norm_eps}, {"rope_theta", c.rope_theta},
         {"tie_word_embeddings", c.tied_classifier}, {"hidden_act", "silu"},
         {"torch_dtype", "float32"}, {"bos_token_id", 1}, {"eos_token_id", 2}};
    if (c.l1_norm) j["lowbit_norm"] = "l1";
    if (a == architecture::llama && c.out_bias()) j["attention_bias"] = true;
    if (a == architecture::llama && c.has_mlp_bias()) j["mlp_bias"] = true;
    if (a == architecture::mistral) j["sliding_window"] = c.sliding_window ? nlohmann::json(c.sliding_window) : nullptr;
    if (a == architecture::qwen2) j["use_sliding_window"] = false;
    if (c.rope_scaling.type != rope_scaling_type::none) j["rope_scaling"] = rope_scaling_to_json(c.rope_scaling);
  } else if (a == architecture::gpt2) {
    j = {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"n_embd", c.dim},
         {"n_inner", c.hidden_dim}, {"n_layer", c.n_layers}, {"n_head", c.n_heads},
         {"vocab_size", c.vocab_size}, {"n_positions", c.max_seq_len}, {"n_ctx", c.max_seq_len},
         {"layer_norm_epsilon", c.norm_eps}, {"tie_word_embeddings", c.tied_classifier},
         {"activation_function", act_name(c.mlp_activation())}, {"torch_dtype", "float32"}};
  } else if (a == architecture::gptneox) {
    const int hd = c.head_dim();
    j = {{"architectures", {hf_class(a)}}, {"model_type", hf_model_type(a)}, {"hidden_size", c.dim},
         {"intermediate_size", c.hidden_dim}, {"num_hidden_layers", c.n_layers},
         {"num_attention_heads", c.n_heads}, {"vocab_size", c.vocab_size},
         {"max_position_embeddings", c.max_seq_len}, {"layer_norm_eps", c.norm_eps},
         {"rotary_emb_base", c.rope_theta}, {"rotary_pct", double(c.rotary_dim()) / hd},
         {"use_parallel_residual", c.has_parallel_residual()}, {"attention_bias", c.qkv_bias()},
         {"hidden_act", act_name(c.mlp_activation())}, {"tie_word_embeddings", c.tied_classifier},
         {"torch_dtype", "float32"}};
    if (c.rope_scaling.type != rope_scaling_type::none) j["rope_scaling"] = rope_scaling_to_json(c.rope_scaling);
  } else {  // opt
    j = {{"architectures", {hf_class(a)}}, {"model_type", "opt"}, {"hidden_size", c.dim},
         {"word_embed_proj_dim", c.dim}, {"ffn_dim", c.hidden_dim}, {"num_hidden_layers", c.n_layers},
         {"num_attention_heads", c.n_heads}, {"vocab_size", c.vocab_size},
         {"max_position_embeddings", c.max_seq_len}, {"do_layer_norm_before", c.norm_before},
         {"enable_bias", c.out_bias()}, {"activation_function", act_name(c.mlp_activation())},
         {"tie_word_embeddings", c.tied_classifier}, {"torch_dtype", "float32"}};
  }
  return j;
}

}  // namespace lowbit

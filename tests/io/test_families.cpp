// The model families (docs/evaluation.md "Model families"): for each, a random checkpoint written
// by the test in Hugging Face's names and layout with its config.json (and, where llama.cpp has
// the architecture, in llama.cpp's GGUF layout) is loaded by lowbit and its logits compared with
// an independent float64 forward of the family's published definition (tests/family_reference.hpp):
// max|diff| <= 1e-4 max|logit| (docs/conventions.md §16). lowbit's writers must give back the
// same files' layouts. Configs with a field lowbit does not compute are refused, one test per
// class of refusal.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/io/safetensors.hpp"
#include "tests/cli_run.hpp"
#include "tests/family_reference.hpp"

namespace fs = std::filesystem;
using namespace lowbit;
using family_test::hf_checkpoint;
using family_test::vec;

namespace {

constexpr double kRelTol = 1e-4;  // docs/conventions.md §16

struct scratch {
  fs::path dir;
  explicit scratch(const std::string& name) : dir(lowbit::testing::scratch_path("lowbit_families_" + name)) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~scratch() { fs::remove_all(dir); }
  std::string operator/(const std::string& f) const { return (dir / f).string(); }
};

// ---- the families, as their config.json say them ----------------------------------------------------

struct family_case {
  std::string label;
  nlohmann::json config;
  bool gguf;  // llama.cpp has the architecture (and the activation)
};

// Small shapes: dim 32 (64 for GPT-NeoX's partial rotary of a 16-wide head), 2 layers, vocab 64.
std::vector<family_case> family_cases() {
  const nlohmann::json llama31 = {
      {"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
      {"intermediate_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
      {"head_dim", 8}, {"vocab_size", 64}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0}, {"hidden_act", "silu"}, {"tie_word_embeddings", false}, {"attention_bias", false},
      {"mlp_bias", false}, {"attention_dropout", 0.0}, {"pretraining_tp", 1}, {"initializer_range", 0.02},
      {"use_cache", true}, {"bos_token_id", 1}, {"eos_token_id", {2, 3}}, {"torch_dtype", "bfloat16"},
      {"transformers_version", "4.43.0.dev0"},
      // Llama 3.1's scaling with a short original context, so that the 4 frequencies of a head of
      // 8 are kept (wavelength 6.3 < 16), blended (63) and divided (630, 6300 > 64).
      {"rope_scaling",
       {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
        {"original_max_position_embeddings", 64}}}};
  nlohmann::json llama_bias = llama31;
  llama_bias["attention_bias"] = true, llama_bias["mlp_bias"] = true, llama_bias["tie_word_embeddings"] = true;
  llama_bias["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  llama_bias.erase("head_dim");
  const nlohmann::json mistral = {
      {"architectures", {"MistralForCausalLM"}}, {"model_type", "mistral"}, {"hidden_size", 32},
      {"intermediate_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 1},
      {"vocab_size", 64}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
      {"sliding_window", 6}, {"hidden_act", "silu"}, {"tie_word_embeddings", false}, {"torch_dtype", "bfloat16"},
      {"attention_dropout", 0.0}};
  const nlohmann::json qwen2 = {
      {"architectures", {"Qwen2ForCausalLM"}}, {"model_type", "qwen2"}, {"hidden_size", 32},
      {"intermediate_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
      {"vocab_size", 64}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0},
      {"use_sliding_window", false}, {"sliding_window", 4096}, {"max_window_layers", 21}, {"hidden_act", "silu"},
      {"tie_word_embeddings", true}, {"torch_dtype", "bfloat16"}, {"attention_dropout", 0.0}};
  const nlohmann::json gpt2 = {
      {"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"n_embd", 32}, {"n_layer", 2}, {"n_head", 4},
      {"n_inner", nullptr}, {"vocab_size", 64}, {"n_positions", 64}, {"n_ctx", 64}, {"layer_norm_epsilon", 1e-5},
      {"activation_function", "gelu_new"}, {"resid_pdrop", 0.1}, {"embd_pdrop", 0.1}, {"attn_pdrop", 0.1},
      {"summary_type", "cls_index"}, {"summary_use_proj", true}, {"summary_activation", nullptr},
      {"summary_proj_to_labels", true}, {"summary_first_dropout", 0.1}, {"scale_attn_weights", true},
      {"task_specific_params", {{"text-generation", {{"do_sample", true}, {"max_length", 50}}}}}};
  nlohmann::json gpt2_relu = gpt2;
  gpt2_relu["activation_function"] = "relu", gpt2_relu["tie_word_embeddings"] = false;
  const nlohmann::json pythia = {
      {"architectures", {"GPTNeoXForCausalLM"}}, {"model_type", "gpt_neox"}, {"hidden_size", 64},
      {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"vocab_size", 64},
      {"max_position_embeddings", 64}, {"layer_norm_eps", 1e-5}, {"rotary_pct", 0.25}, {"rotary_emb_base", 10000},
      {"use_parallel_residual", true}, {"hidden_act", "gelu"}, {"tie_word_embeddings", false},
      {"attention_dropout", 0.0}, {"hidden_dropout", 0.0}, {"classifier_dropout", 0.1}, {"bos_token_id", 0},
      {"eos_token_id", 0}, {"use_cache", true}, {"initializer_range", 0.02}, {"torch_dtype", "float16"}};
  nlohmann::json neox_seq = pythia;
  neox_seq["use_parallel_residual"] = false, neox_seq["rotary_pct"] = 0.5, neox_seq["attention_bias"] = false;
  neox_seq["tie_word_embeddings"] = true;
  const nlohmann::json opt = {
      {"architectures", {"OPTForCausalLM"}}, {"model_type", "opt"}, {"hidden_size", 32}, {"ffn_dim", 64},
      {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"vocab_size", 64}, {"max_position_embeddings", 64},
      {"word_embed_proj_dim", 32}, {"do_layer_norm_before", true}, {"_remove_final_layer_norm", false},
      {"activation_function", "relu"}, {"dropout", 0.1}, {"attention_dropout", 0.0}, {"activation_dropout", 0.0},
      {"layerdrop", 0.0}, {"init_std", 0.02}, {"enable_bias", true}, {"layer_norm_elementwise_affine", true},
      {"prefix", "</s>"}, {"pad_token_id", 1}, {"bos_token_id", 2}, {"eos_token_id", 2},
      {"torch_dtype", "float16"}, {"transformers_version", "4.21.0.dev0"}, {"use_cache", true}};
  nlohmann::json opt_post = opt;
  opt_post["do_layer_norm_before"] = false, opt_post["activation_function"] = "gelu", opt_post["enable_bias"] = false;
  return {{"llama 3.1 (GQA 4/2, llama3 rope_scaling, untied)", llama31, true},
          {"llama (attention_bias, mlp_bias, linear rope_scaling, tied)", llama_bias, true},
          {"mistral (sliding window 6, GQA 4/1)", mistral, true},
          {"qwen2 (q/k/v biases, tied)", qwen2, true},
          {"gpt2 (gelu_new, tied)", gpt2, true},
          {"gpt2 (relu, untied)", gpt2_relu, false},
          {"gpt_neox (pythia: rotary_pct 0.25, parallel residual, gelu)", pythia, true},
          {"gpt_neox (sequential, rotary_pct 0.5, no attention bias, tied)", neox_seq, true},
          {"opt (pre-LN, relu, tied with a stored lm_head)", opt, false},
          {"opt (post-LN, gelu, no biases)", opt_post, false}};
}

std::vector<int32_t> sequence(int n, int vocab, int salt) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back((i * 37 + salt * 11 + (i * i) % 7) % vocab);
  return t;
}

// lowbit's logits for `tokens` run as consecutive chunks through one session.
std::vector<float> run_chunks(const model& m, const std::vector<int32_t>& tokens, const std::vector<int>& chunks) {
  forward_session s(m, quant_plan{}, static_cast<int>(tokens.size()));
  std::vector<float> out;
  int at = 0;
  for (int n : chunks) {
    const std::vector<float>& l = s.forward(tokens.data() + at, n);
    out.insert(out.end(), l.begin(), l.begin() + int64_t(n) * m.config.vocab_size);
    at += n;
  }
  return out;
}

double rel_diff(const std::vector<float>& got, const std::vector<vec>& want) {
  double max_diff = 0, max_ref = 0;
  size_t k = 0;
  for (const vec& row : want)
    for (double w : row) {
      const double d = std::fabs(double(got.at(k++)) - w);
      max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
      max_ref = std::max(max_ref, std::fabs(w));
    }
  return max_diff / max_ref;
}

// Prefill, two chunks (the second at pos > 0, past the sliding window) and one token at a time.
void expect_logits(const model& m, const std::vector<int32_t>& tokens, const std::vector<vec>& ref,
                   const std::string& label) {
  const int n = static_cast<int>(tokens.size());
  for (const auto& [how, chunks] : std::vector<std::pair<std::string, std::vector<int>>>{
           {"prefill", {n}}, {"chunks 9+rest", {9, n - 9}}, {"one by one", std::vector<int>(n, 1)}}) {
    const double r = rel_diff(run_chunks(m, tokens, chunks), ref);
    std::printf("  %-62s %-13s relative %.3g\n", label.c_str(), how.c_str(), r);
    EXPECT_LE(r, kRelTol) << label << " " << how;
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const lowbit::error& e) {
    return e.what();
  }
  return "";
}

// A config.json (with a model beside it, of `shapes`' tensors when given) loaded: the error's
// message, "" when it loads.
std::string load_error(const nlohmann::json& config, const std::string& dir, const nlohmann::json* shapes = nullptr) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  hf_checkpoint m = family_test::random_checkpoint(shapes ? *shapes : config, 1);
  m.config = config;
  family_test::write_hf(m, dir);
  return error_of([&] { load_model(dir); });
}

}  // namespace

// ---- every family against its published definition --------------------------------------------------

TEST(Families, HuggingFaceAndGgufCheckpointsMatchTheReference) {
  scratch s("logits");
  int salt = 0;
  for (const family_case& fc : family_cases()) {
    SCOPED_TRACE(fc.label);
    ++salt;
    const hf_checkpoint hf = family_test::random_checkpoint(fc.config, 100 + salt);
    const std::string dir = s / ("case" + std::to_string(salt));
    fs::create_directories(dir);
    family_test::write_hf(hf, dir);
    const std::vector<int32_t> tokens = sequence(24, 64, salt);
    const std::vector<vec> ref = family_test::reference_logits(hf, tokens);

    // Hugging Face safetensors + config.json (the directory's model.safetensors)
    const model m = load_model(dir);
    expect_logits(m, tokens, ref, fc.label + " [hf]");

    // lowbit's safetensors writer gives back Hugging Face's names and layouts, and a config.json
    // that reads as the same config.
    const std::string out_dir = dir + "/lowbit";
    fs::create_directories(out_dir);
    save_safetensors_model(m, out_dir + "/model.safetensors");
    {
      const safetensors_file f(out_dir + "/model.safetensors");
      for (const auto& [hf_name, t] : hf.t) {
        // (GPT-2's files are written without the causal LM's "transformer." prefix, as the base
        // GPT2Model's; Hugging Face loads either)
        const std::string name = hf_name.rfind("transformer.", 0) == 0 ? hf_name.substr(12) : hf_name;
        if (!f.find(name)) {
          // (OPT's lm_head beside a tied embedding: Hugging Face ignores it, lowbit does not write it)
          EXPECT_TRUE(name == "lm_head.weight" && family_test::tied(fc.config)) << name;
          continue;
        }
        EXPECT_EQ(f.get(name).shape, t.shape) << name;
        const std::vector<float> got = f.read_f32(name);
        ASSERT_EQ(got.size(), t.v.size()) << name;
        for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(double(got[i]), t.v[i]) << name << " [" << i << "]";
      }
      std::ifstream in(out_dir + "/config.json");
      const model_config back = config_from_hf_json(nlohmann::json::parse(in), "config.json");
      EXPECT_EQ(back.variant_string(), m.config.variant_string());
      EXPECT_EQ(back.arch, m.config.arch);
      EXPECT_EQ(back.tied_classifier, m.config.tied_classifier);
      EXPECT_EQ(run_chunks(load_model(out_dir + "/model.safetensors"), tokens, {24}), run_chunks(m, tokens, {24}));
    }

    // GGUF, in llama.cpp's layout of the architecture (written by the test), and lowbit's GGUF
    // writer, which must write the same tensors.
    const std::string gguf_path = dir + "/llama_cpp.gguf";
    if (fc.gguf) {
      ASSERT_TRUE(family_test::write_llama_cpp_gguf(hf, gguf_path));
      const model g = load_model(gguf_path);
      EXPECT_EQ(g.config.arch, m.config.arch);
      expect_logits(g, tokens, ref, fc.label + " [gguf]");
      save_gguf_model(m, dir + "/lowbit.gguf");
      const gguf_file want(gguf_path), got(dir + "/lowbit.gguf");
      EXPECT_EQ(got.get_string("general.architecture"), want.get_string("general.architecture"));
      for (const gguf_tensor_info& t : want.tensors()) {
        const gguf_tensor_info* u = got.find(t.name);
        ASSERT_NE(u, nullptr) << t.name;
        EXPECT_EQ(u->ne, t.ne) << t.name;
        const std::vector<float> a = want.read_f32(t.name), b = got.read_f32(t.name);
        ASSERT_EQ(a.size(), b.size());
        for (size_t i = 0; i < a.size(); ++i)
          if (t.name == "rope_freqs.weight") EXPECT_NEAR(b[i], a[i], 1e-6 * a[i]) << i;  // f0/f1 vs the formula
          else ASSERT_EQ(a[i], b[i]) << t.name << " [" << i << "]";
      }
      EXPECT_EQ(got.tensors().size(), want.tensors().size());
      EXPECT_EQ(run_chunks(load_model(dir + "/lowbit.gguf"), tokens, {24}), run_chunks(m, tokens, {24}));
    } else {
      const std::string e = error_of([&] { save_gguf_model(m, dir + "/lowbit.gguf"); });
      EXPECT_NE(e.find("write safetensors"), std::string::npos) << e;
      EXPECT_FALSE(fs::exists(dir + "/lowbit.gguf"));
    }
  }
}

// A sharded checkpoint (model.safetensors.index.json) reads as the one-file checkpoint: through
// its directory and through its index.
TEST(Families, ShardedCheckpointsReadAsOneFile) {
  scratch s("shards");
  const family_case fc = family_cases()[0];
  const hf_checkpoint hf = family_test::random_checkpoint(fc.config, 7);
  fs::create_directories(s / "one");
  fs::create_directories(s / "three");
  family_test::write_hf(hf, s / "one");
  family_test::write_hf(hf, s / "three", 3);
  ASSERT_TRUE(fs::exists(s / "three/model-00003-of-00003.safetensors"));
  const std::vector<int32_t> tokens = sequence(16, 64, 3);
  const model one = load_model(s / "one/model.safetensors");
  for (const std::string& path : {s / "three", s / "three/model.safetensors.index.json"}) {
    const model sharded = load_model(path);
    EXPECT_EQ(sharded.tensors.size(), one.tensors.size());
    for (const auto& [name, t] : one.tensors) EXPECT_EQ(sharded.get(name).data, t.data) << name;
    EXPECT_EQ(run_chunks(sharded, tokens, {16}), run_chunks(one, tokens, {16}));
  }
  // The reader's content fingerprint covers every shard.
  fnv1a64 a, b;
  open_model_reader(s / "three")->hash_contents(a);
  open_model_reader(s / "one")->hash_contents(b);
  EXPECT_NE(a.hex(), b.hex());
}

// ---- refusals ---------------------------------------------------------------------------------------

// A key that is in no family's table, or in another family's, is refused by name.
TEST(FamilyRefusals, UnknownConfigKeys) {
  scratch s("unknown");
  const auto cases = family_cases();
  for (const auto& [base, key, value] : std::vector<std::tuple<nlohmann::json, std::string, nlohmann::json>>{
           {cases[0].config, "attn_logit_softcapping", 50.0},    // Gemma 2's: changes the scores
           {cases[0].config, "sliding_window", 4096},           // Mistral's, in a Llama config
           {cases[0].config, "use_parallel_residual", false},   // GPT-NeoX's
           {cases[6].config, "num_key_value_heads", 2},         // GPT-NeoX has none
           {cases[8].config, "rope_theta", 10000.0}}) {         // OPT has no RoPE
    nlohmann::json c = base;
    c[key] = value;
    const std::string e = load_error(c, s / "m");
    EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << key << ": " << e;
    EXPECT_NE(e.find("not one lowbit knows"), std::string::npos) << e;
  }
}

// A key lowbit knows but does not compute is refused unless its value is the one lowbit computes.
TEST(FamilyRefusals, KnownKeysWithValuesThatChangeTheComputation) {
  scratch s("refused");
  const auto cases = family_cases();
  for (const auto& [base, key, bad, good] : std::vector<std::tuple<nlohmann::json, std::string, nlohmann::json, nlohmann::json>>{
           {cases[3].config, "use_sliding_window", true, false},
           {cases[4].config, "scale_attn_weights", false, true},
           {cases[4].config, "scale_attn_by_inverse_layer_idx", true, false},
           {cases[8].config, "_remove_final_layer_norm", true, false},
           {cases[8].config, "layer_norm_elementwise_affine", false, true},
           {cases[0].config, "partial_rotary_factor", 0.5, 1.0},
           {cases[0].config, "is_encoder_decoder", true, false},
           {cases[0].config, "pruned_heads", {{"0", {1}}}, nlohmann::json::object()},
           {cases[0].config, "quantization_config", {{"quant_method", "gptq"}, {"bits", 4}}, nullptr}}) {
    nlohmann::json c = base;
    c[key] = bad;
    const std::string e = load_error(c, s / "m");
    EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << key << ": " << e;
    EXPECT_NE(e.find("not implemented"), std::string::npos) << e;
    c[key] = good;
    EXPECT_EQ(load_error(c, s / "m"), "") << key << " = " << good.dump();
  }
}

// Keys lowbit ignores still hold a value of their kind: a token id that is not a non-negative
// integer, a dtype that is not a name or an n_ctx that is not a positive integer says the config is
// corrupt, and is refused by name; null and the right kinds load.
TEST(FamilyRefusals, IgnoredKeysWithValuesOfTheWrongKind) {
  scratch s("ignored");
  const auto cases = family_cases();
  for (const auto& [base, key, bad, good] : std::vector<std::tuple<nlohmann::json, std::string, nlohmann::json, nlohmann::json>>{
           {cases[0].config, "bos_token_id", 1.5, 1},
           {cases[0].config, "bos_token_id", "NaN", nullptr},
           {cases[0].config, "eos_token_id", -1, {2, 3}},
           {cases[0].config, "eos_token_id", nlohmann::json::object(), 2},
           {cases[0].config, "pad_token_id", 4294967328.5, 0},
           {cases[0].config, "torch_dtype", -1, "bfloat16"},
           {cases[0].config, "torch_dtype", true, "float32"},
           {cases[4].config, "n_ctx", "x", 1024},
           {cases[4].config, "n_ctx", 1.5, nullptr},
           {cases[4].config, "n_ctx", -1, 64}}) {
    nlohmann::json c = base;
    c[key] = bad;
    const std::string e = load_error(c, s / "m");
    EXPECT_NE(e.find("'" + key + "' = " + bad.dump()), std::string::npos) << key << ": " << e;
    c[key] = good;
    EXPECT_EQ(load_error(c, s / "m"), "") << key << " = " << good.dump();
  }
}

// Keys lowbit reads, with a value it does not implement: each refused naming the key and value.
TEST(FamilyRefusals, UnimplementedValuesOfReadKeys) {
  scratch s("values");
  const auto cases = family_cases();
  auto with = [](nlohmann::json c, const std::string& key, const nlohmann::json& v) {
    c[key] = v;
    return c;
  };
  for (const auto& [c, what] : std::vector<std::pair<nlohmann::json, std::string>>{
           {with(cases[0].config, "rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}), "yarn"},
           {with(cases[0].config, "rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}), "dynamic"},
           {with(cases[0].config, "rope_scaling",
                 {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                  {"original_max_position_embeddings", 64}, {"attention_factor", 0.5}}),
            "attention_factor"},
           {with(cases[0].config, "hidden_act", "gelu"), "hidden_act"},
           {with(cases[6].config, "hidden_act", "quick_gelu"), "quick_gelu"},
           {with(cases[4].config, "activation_function", "gelu_10"), "gelu_10"},
           {with(cases[0].config, "head_dim", 16), "head_dim"},
           {with(cases[8].config, "word_embed_proj_dim", 16), "word_embed_proj_dim"},
           {with(cases[3].config, "layer_types", {"full_attention", "sliding_attention"}), "sliding_attention"},
           {with(cases[6].config, "rotary_pct", 0.0), "rotary_pct"},
           {with(cases[2].config, "num_key_value_heads", 3), "n_kv_heads"}}) {
    const std::string e = load_error(c, s / "m");
    EXPECT_NE(e.find(what), std::string::npos) << what << ": " << e;
  }
}

// Families lowbit does not compute, and task heads in place of the language model.
TEST(FamilyRefusals, UnknownFamiliesAndTaskHeads) {
  scratch s("families");
  nlohmann::json c = family_cases()[0].config;
  c["model_type"] = "falcon";
  EXPECT_NE(load_error(c, s / "m").find("model_type 'falcon'"), std::string::npos);
  c = family_cases()[0].config;
  c["architectures"] = {"LlamaForSequenceClassification"};
  EXPECT_NE(load_error(c, s / "m").find("LlamaForSequenceClassification"), std::string::npos);
  c.erase("model_type");
  c["architectures"] = {"FalconForCausalLM"};
  EXPECT_NE(load_error(c, s / "m", &family_cases()[0].config).find("FalconForCausalLM"), std::string::npos);
  c = family_cases()[2].config;  // Mistral's, without model_type: the class names the family
  c.erase("model_type");
  EXPECT_EQ(load_error(c, s / "m", &family_cases()[2].config), "");
}

// GGUF: metadata keys of the architecture that lowbit does not read, architectures it does not
// compute; and what its writer cannot say.
TEST(FamilyRefusals, GgufMetadataArchitecturesAndWriter) {
  scratch s("gguf");
  const auto cases = family_cases();
  const hf_checkpoint hf = family_test::random_checkpoint(cases[0].config, 3);
  const std::string good = s / "good.gguf";
  ASSERT_TRUE(family_test::write_llama_cpp_gguf(hf, good));
  EXPECT_NO_THROW(load_model(good));
  // The file rewritten with one key or tensor changed.
  const gguf_file f(good);
  std::vector<std::vector<float>> data;
  for (const gguf_tensor_info& t : f.tensors()) data.push_back(f.read_f32(t.name));
  auto rewritten = [&](const std::string& name, const std::function<void(gguf_writer&)>& extra,
                       const std::string& drop = "", const std::string& arch = "") {
    gguf_writer w;
    for (const gguf_kv& kv : f.metadata())
      if (kv.key != drop) w.add_kv(kv.key == "general.architecture" && !arch.empty() ? gguf_kv{kv.key, kv.type, kv.array_type, arch} : kv);
    size_t i = 0;
    for (const gguf_tensor_info& t : f.tensors()) w.add_tensor(t.name, t.shape(), data[i++].data(), ggml_type::f32);
    extra(w);
    const std::string path = s / (name + ".gguf");
    w.write(path);
    return error_of([&] { load_model(path); });
  };
  EXPECT_NE(rewritten("moe", [](gguf_writer& w) { w.add_u32("llama.expert_count", 8); }).find("llama.expert_count"),
            std::string::npos);
  EXPECT_EQ(rewritten("dense", [](gguf_writer& w) { w.add_u32("llama.expert_count", 0); }), "");  // (a dense file's 0)
  EXPECT_NE(rewritten("softcap", [](gguf_writer& w) { w.add_f32("llama.final_logit_softcapping", 30); })
                .find("llama.final_logit_softcapping"),
            std::string::npos);
  EXPECT_NE(rewritten("yarn", [](gguf_writer& w) { w.add_string("llama.rope.scaling.type", "yarn"); }).find("yarn"),
            std::string::npos);
  EXPECT_NE(rewritten("rotary", [](gguf_writer& w) { w.add_u32("llama.rope.dimension_count", 4); },
                      "llama.rope.dimension_count")
                .find("partial RoPE"),
            std::string::npos);
  EXPECT_NE(rewritten("keylen", [](gguf_writer& w) { w.add_u32("llama.attention.key_length", 16); })
                .find("llama.attention.key_length"),
            std::string::npos);
  EXPECT_NE(rewritten("falcon", [](gguf_writer&) {}, "", "falcon").find("'falcon'"), std::string::npos);
  EXPECT_NE(rewritten("opt", [](gguf_writer&) {}, "", "opt").find("OPT has no llama.cpp architecture"),
            std::string::npos);
  // The writer: what llama.cpp's architecture cannot hold.
  model_config c;
  c.arch = architecture::qwen2, c.dim = 32, c.hidden_dim = 48, c.n_layers = 1, c.n_heads = 4, c.n_kv_heads = 2;
  c.vocab_size = 258, c.max_seq_len = 32;
  c.rope_scaling.type = rope_scaling_type::llama3, c.rope_scaling.factor = 8, c.rope_scaling.original_max_position_embeddings = 16;
  EXPECT_NE(error_of([&] { save_gguf_model(synthesize_model(c, 1), s / "q.gguf"); }).find("rope_freqs"),
            std::string::npos);
  c = model_config{};
  c.arch = architecture::gptneox, c.dim = 32, c.hidden_dim = 64, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2;
  c.vocab_size = 258, c.max_seq_len = 32, c.act = activation::relu;
  EXPECT_NE(error_of([&] { save_gguf_model(synthesize_model(c, 1), s / "n.gguf"); }).find("activation relu"),
            std::string::npos);
}

// Sharded checkpoints whose index does not hold together.
TEST(FamilyRefusals, BadShardIndexes) {
  scratch s("badshards");
  const hf_checkpoint hf = family_test::random_checkpoint(family_cases()[2].config, 5);
  family_test::write_hf(hf, s.dir.string(), 2);
  const std::string index = s / "model.safetensors.index.json";
  std::ifstream in(index);
  const nlohmann::json good = nlohmann::json::parse(in);
  EXPECT_NO_THROW(load_model(index));
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = good;
    edit(j);
    std::ofstream(index) << j.dump();
    return error_of([&] { load_model(s.dir.string()); });
  };
  const std::string first = good["weight_map"].begin().key();
  EXPECT_NE(with([&](nlohmann::json& j) { j["weight_map"][first] = "model-00009-of-00009.safetensors"; }).find("missing"),
            std::string::npos);
  EXPECT_NE(with([&](nlohmann::json& j) { j["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors"; })
                .find("model.extra.weight"),
            std::string::npos);
  EXPECT_NE(with([&](nlohmann::json& j) { j["weight_map"][first] = "../model-00001-of-00002.safetensors"; })
                .find("not a file name beside the index"),
            std::string::npos);
  EXPECT_NE(with([&](nlohmann::json& j) { j.erase("weight_map"); }).find("no weight_map"), std::string::npos);
  EXPECT_NE(with([&](nlohmann::json& j) { j["weight_map"].erase(first); }).find(first), std::string::npos);
}

// ---- the table --------------------------------------------------------------------------------------

// What lowbit writes, it reads back: every key of config_to_hf_json is in the family's table, and
// the config comes back the same, for every family and its variants.
TEST(FamilyConfig, TableCoversWhatLowbitWrites) {
  std::vector<model_config> configs;
  for (architecture a : all_architectures()) {
    model_config c;
    c.arch = a, c.dim = 32, c.hidden_dim = 64, c.n_layers = 1, c.n_heads = 4, c.n_kv_heads = 4;
    c.vocab_size = 258, c.max_seq_len = 32;
    configs.push_back(c);
  }
  model_config v = configs[0];
  v.attn_bias = true, v.mlp_bias = true, v.rope_scaling = {rope_scaling_type::llama3, 8, 1, 4, 16};
  configs.push_back(v);
  v = configs[2];  // mistral
  v.sliding_window = 7, v.n_kv_heads = 2;
  configs.push_back(v);
  v = configs[4];  // gptneox
  v.parallel_residual = false, v.attn_bias = false, v.rope_dim = 4, v.act = activation::relu;
  v.rope_scaling = {rope_scaling_type::linear, 2};
  configs.push_back(v);
  v = configs[5];  // opt
  v.norm_before = false, v.attn_bias = false, v.mlp_bias = false, v.act = activation::gelu;
  configs.push_back(v);
  v = configs[1];  // gpt2
  v.act = activation::gelu;
  configs.push_back(v);
  for (const model_config& c : configs) {
    SCOPED_TRACE(std::string(architecture_name(c.arch)) + " " + c.variant_string());
    const nlohmann::json j = config_to_hf_json(c);
    const auto table = hf_config_keys(c.arch);
    for (const auto& [key, value] : j.items()) {  // (refused ones with the value lowbit computes: read back below)
      const auto it = std::find_if(table.begin(), table.end(), [&](const hf_config_key& k) { return k.key == key; });
      EXPECT_NE(it, table.end()) << key;
    }
    const model_config back = config_from_hf_json(j, "written");
    EXPECT_EQ(back.arch, c.arch);
    EXPECT_EQ(back.variant_string(), c.variant_string());
    EXPECT_EQ(back.parameter_count(), c.parameter_count());
    EXPECT_EQ(back.rotary_dim(), c.rotary_dim());
    EXPECT_EQ(back.mlp_activation(), c.mlp_activation());
  }
}

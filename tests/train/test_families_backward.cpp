// The trainer's backward for the layer variants of the model families (docs/evaluation.md "Model
// families"; src/engine/decoder.hpp): biases on q, k, v, the attention output and the MLP, the
// sliding window, GPT-NeoX's parallel residual and partial rotary, the exact GELU and ReLU, OPT's
// learned positions offset by 2, Llama 3.1's RoPE scaling. Each family's gradients, for every
// parameter tensor, against central differences of the independent float64 forward of
// tests/family_reference.hpp (written from the Hugging Face definitions, on the checkpoint's own
// layout). OPT's post-LN blocks have no backward: training them is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/train.hpp"
#include "lowbit/io/model_io.hpp"
#include "tests/cli_run.hpp"
#include "tests/family_reference.hpp"

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using family_test::hf_checkpoint;
using family_test::vec;

// Tiny configs: dim 16, 2 layers, vocab 11; context 6 (the sliding window 3 of Mistral bites).
std::vector<std::pair<std::string, nlohmann::json>> tiny_cases() {
  const nlohmann::json llama = {{"model_type", "llama"}, {"hidden_size", 16}, {"intermediate_size", 24},
                                {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
                                {"vocab_size", 11}, {"max_position_embeddings", 8}, {"rms_norm_eps", 1e-5},
                                {"attention_bias", true}, {"mlp_bias", true}, {"tie_word_embeddings", false},
                                {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 4.0}, {"low_freq_factor", 1.0},
                                                  {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}}};
  const nlohmann::json mistral = {{"model_type", "mistral"}, {"hidden_size", 16}, {"intermediate_size", 24},
                                  {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                                  {"vocab_size", 11}, {"max_position_embeddings", 8}, {"sliding_window", 3},
                                  {"tie_word_embeddings", true}};
  const nlohmann::json qwen2 = {{"model_type", "qwen2"}, {"hidden_size", 16}, {"intermediate_size", 24},
                                {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"num_key_value_heads", 2},
                                {"vocab_size", 11}, {"max_position_embeddings", 8}, {"rope_theta", 1000.0},
                                {"tie_word_embeddings", true}};
  const nlohmann::json pythia = {{"model_type", "gpt_neox"}, {"hidden_size", 16}, {"intermediate_size", 32},
                                 {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"vocab_size", 11},
                                 {"max_position_embeddings", 8}, {"rotary_pct", 0.25}, {"hidden_act", "gelu"},
                                 {"use_parallel_residual", true}, {"tie_word_embeddings", false}};
  nlohmann::json neox_seq = pythia;
  neox_seq["use_parallel_residual"] = false, neox_seq["hidden_act"] = "relu", neox_seq["rotary_pct"] = 1.0;
  neox_seq["attention_bias"] = false;
  const nlohmann::json opt = {{"model_type", "opt"}, {"hidden_size", 16}, {"ffn_dim", 32}, {"num_hidden_layers", 2},
                              {"num_attention_heads", 2}, {"vocab_size", 11}, {"max_position_embeddings", 8},
                              {"activation_function", "relu"}, {"tie_word_embeddings", true}};
  const nlohmann::json gpt2 = {{"model_type", "gpt2"}, {"n_embd", 16}, {"n_layer", 2}, {"n_head", 2},
                               {"vocab_size", 11}, {"n_positions", 8}, {"activation_function", "gelu"},
                               {"tie_word_embeddings", false}};
  return {{"llama (biases, llama3 rope, GQA)", llama}, {"mistral (sliding window 3)", mistral}, {"qwen2", qwen2},
          {"gpt_neox (parallel, rotary 1/4, gelu)", pythia}, {"gpt_neox (sequential, relu, no attn bias)", neox_seq},
          {"opt (relu, positions + 2)", opt}, {"gpt2 (exact gelu)", gpt2}};
}

// Mean cross-entropy of the reference over `batch` sequences of the window.
double reference_loss(const hf_checkpoint& m, const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int B,
                      int T) {
  double loss = 0;
  for (int b = 0; b < B; ++b) {
    const std::vector<int32_t> seq(in.begin() + b * T, in.begin() + (b + 1) * T);
    const std::vector<vec> z = family_test::reference_logits(m, seq);
    for (int i = 0; i < T; ++i) {
      double mx = -INFINITY, sum = 0;
      for (double v : z[i]) mx = std::max(mx, v);
      for (double v : z[i]) sum += std::exp(v - mx);
      loss += std::log(sum) + mx - z[i][tg[b * T + i]];
    }
  }
  return loss / (B * T);
}

TEST(FamilyGradients, EveryParameterAgainstTheReference) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_family_grads");
  int salt = 0;
  for (const auto& [label, config] : tiny_cases()) {
    SCOPED_TRACE(label);
    ++salt;
    fs::remove_all(dir);
    fs::create_directories(dir);
    hf_checkpoint hf = family_test::random_checkpoint(config, 40 + salt);
    family_test::write_hf(hf, dir.string());
    const model m = load_model(dir.string());
    train_model tm(m);
    // Where each canonical parameter lives in the checkpoint: the same checkpoint with every
    // value its own number (exact in float32), read by lowbit.
    hf_checkpoint ids = hf;
    std::vector<std::pair<std::string, size_t>> where{{"", 0}};  // id -> (Hugging Face name, index)
    for (auto& [name, t] : ids.t)
      for (size_t i = 0; i < t.v.size(); ++i) t.v[i] = double(where.size()), where.push_back({name, i});
    family_test::write_hf(ids, dir.string());
    const model id_model = load_model(dir.string());

    const int B = 2, T = 6;
    std::mt19937 rng(salt);
    std::vector<int32_t> in(B * T), tg(B * T);
    for (auto& t : in) t = int32_t(rng() % 11);
    for (auto& t : tg) t = int32_t(rng() % 11);
    const double loss = tm.forward_backward(in.data(), tg.data(), B, T, B * T, nullptr, 0) / (B * T);
    EXPECT_NEAR(loss, reference_loss(hf, in, tg, B, T), 1e-5);
    size_t checked = 0;
    for (const auto& v : tm.views()) {
      const tensor& id = id_model.get(v.name);
      ASSERT_EQ(int64_t(id.data.size()), v.size) << v.name;
      // At most 24 elements of each tensor, spread over it (every row and column is reached by
      // some tensor's; the whole of each is checked by test_backward's Llama and GPT-2).
      double max_fd = 0, max_diff = 0;
      const int64_t step = std::max<int64_t>(1, v.size / 24);
      for (int64_t i = (salt * 7) % step; i < v.size; i += step) {
        const auto& [name, at] = where.at(size_t(id.data[i]));
        double& w = hf.t.at(name).v.at(at);
        const double w0 = w, h = 1e-5;
        w = w0 + h;
        const double lp = reference_loss(hf, in, tg, B, T);
        w = w0 - h;
        const double lm = reference_loss(hf, in, tg, B, T);
        w = w0;
        const double fd = (lp - lm) / (2 * h);
        max_fd = std::max(max_fd, std::fabs(fd));
        max_diff = std::max(max_diff, std::fabs(fd - tm.grads()[v.offset + i]));
      }
      // (+1e-7: a gradient that is 0 exactly, as that of k's bias without RoPE — softmax does not
      // see a score added to every key — is float32 noise in the trainer)
      EXPECT_LT(max_diff, 2e-3 * max_fd + 1e-7) << v.name << " max|fd| " << max_fd << " max|diff| " << max_diff;
      ++checked;
    }
    EXPECT_EQ(checked, m.tensors.size());
  }
  fs::remove_all(dir);
}

// OPT's post-LN blocks have no backward: the trainer says so instead of computing a wrong gradient.
TEST(FamilyGradients, PostLayerNormTrainingIsRefused) {
  model_config c;
  c.arch = architecture::opt, c.dim = 16, c.hidden_dim = 32, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2;
  c.vocab_size = 11, c.max_seq_len = 8, c.norm_before = false;
  try {
    train_model m(c, 1);
    ADD_FAILURE() << "post-LN training was accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("post-LayerNorm"), std::string::npos) << e.what();
  }
  c.norm_before = true;
  EXPECT_NO_THROW(train_model(c, 1));
}

}  // namespace
}  // namespace lowbit

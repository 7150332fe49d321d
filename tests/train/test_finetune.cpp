// Fine-tuning (docs/training.md §3.5) through the train job's library calls: a pretrained model as
// the start (its architecture, weights and tokenizer), unchanged by a run at learning rate 0 and
// improved by a few steps; the settings that contradict it refused; a killed fine-tuning run
// resumed bit for bit; what the report says about the start. (The CLI, the record and QAFT's
// export: test_train_cli.cpp; the PTQ start: tests/explore/test_finetune.cpp.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"
#include "lowbit/train/job.hpp"
#include "tests/cli_run.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;

namespace lowbit {
namespace {

const std::string kModel = lowbit_test::data_path("llama2c/stories260K.bin");
const std::string kStories = lowbit_test::data_path("text/tinystories_val_sample.txt");

// A short fine-tuning run of stories260K on the TinyStories sample.
train_run_config finetune_config(const std::string& out = "") {
  train_run_config c;
  c.init = kModel, c.data_path = kStories, c.out_dir = out;
  c.ctx = 64, c.batch = 4, c.steps = 6, c.lr = 1e-3, c.val_batches = 2, c.eval_every = 3;
  return c;
}

// The message of the lowbit::error f throws ("" when it throws none).
template <class F>
std::string refusal(F&& f) {
  try {
    f();
  } catch (const error& e) {
    return e.what();
  }
  return "";
}

TEST(Finetune, TheModelIsTheStartAndLearningRateZeroKeepsItBitForBit) {
  ASSERT_TRUE(lowbit_test::have_data(kModel));
  ASSERT_TRUE(lowbit_test::have_data(kStories));
  train_run_config cfg = finetune_config();
  cfg.lr = 0, cfg.steps = 2;
  train_job job = prepare_training(cfg, false, lowbit_test::data_dir());
  // The model's architecture replaces the defaults; its tokenizer is the training tokenizer.
  EXPECT_EQ(job.config.dim, 64);
  EXPECT_EQ(job.config.n_layers, 5);
  EXPECT_EQ(job.config.n_heads, 8);
  EXPECT_EQ(job.config.n_kv_heads, 4);
  EXPECT_EQ(job.config.hidden_dim, 172);
  EXPECT_EQ(job.config.tokenizer, "");  // the model's own
  EXPECT_EQ(job.tok->vocab_size(), 512);
  EXPECT_EQ(job.tok_source.path, fs::absolute(lowbit_test::data_path("llama2c/tok512.bin")).string());
  EXPECT_EQ(job.init_fingerprint, file_fingerprint(kModel));
  const train_result r = run_training(job);
  const model original = load_model(kModel);
  EXPECT_EQ(r.trained.config.max_seq_len, 512);  // the model's context, not the training ctx
  EXPECT_EQ(r.params, original.config.parameter_count());
  for (const auto& [name, t] : original.tensors) ASSERT_EQ(r.trained.get(name).data, t.data) << name;
  // The same evaluation to the last bit.
  const auto tok = tokenizer_for_model(original);
  std::vector<int32_t> ids = encode_documents(*tok, lowbit::testing::read_file_bytes(kStories));
  eval_options eo;
  eo.max_tokens = 2048;
  EXPECT_EQ(evaluate(r.trained, quant_plan{}, ids, eo).mean_nll, evaluate(original, quant_plan{}, ids, eo).mean_nll);
  // The report says where the run started.
  const nlohmann::json j = train_job_json(job, r);
  EXPECT_EQ(j.at("init").at("model"), kModel);
  EXPECT_EQ(j.at("init").at("fingerprint"), file_fingerprint(kModel));
  EXPECT_EQ(j.at("init").at("weights"), "");
  EXPECT_TRUE(j.at("init").at("ptq").is_null());
}

TEST(Finetune, AFewStepsLowerTheLossOfTheStart) {
  // stories260K meets Shakespeare: a few steps of fine-tuning bring the validation loss down.
  train_run_config cfg = finetune_config();
  cfg.data_path = lowbit_test::data_path("text/tinyshakespeare.txt");
  cfg.steps = 12, cfg.lr = 2e-3, cfg.eval_every = 1, cfg.val_batches = 4;
  train_job job = prepare_training(cfg, false, lowbit_test::data_dir());
  const train_result r = run_training(job);
  ASSERT_EQ(r.curve.size(), 12u);
  EXPECT_LT(r.curve.back().val_loss, r.curve.front().val_loss - 0.2);
  EXPECT_LT(r.curve.back().train_loss, r.curve.front().train_loss);
  // ... from the model's loss, not a fresh model's (ln 512 = 6.2).
  EXPECT_LT(r.curve.front().val_loss, 5.0);
}

TEST(Finetune, SettingsThatContradictTheModelAreRefusedNamingThem) {
  const std::string dd = lowbit_test::data_dir();
  train_run_config cfg = finetune_config();
  cfg.dim = 32, cfg.n_layers = 3, cfg.tied_classifier = false;
  std::string m = refusal([&] { prepare_training(cfg, false, dd); });
  EXPECT_NE(m.find("dim 32 (--dim; the model's 64)"), std::string::npos) << m;
  EXPECT_NE(m.find("layers 3 (--layers; the model's 5)"), std::string::npos) << m;
  EXPECT_NE(m.find("tied false (--untied"), std::string::npos) << m;
  // A setting given explicitly counts even at its default value; one equal to the model's does not.
  cfg = finetune_config();
  train_job_options given;
  given.given = {"dim", "heads"};  // dim 64 (the model's), heads 4 (the default; the model has 8)
  m = refusal([&] { prepare_training(cfg, false, dd, given); });
  EXPECT_NE(m.find("heads 4 (--heads; the model's 8)"), std::string::npos) << m;
  EXPECT_EQ(m.find("dim"), m.find("dim 64, layers"));  // only in the model's description
  cfg.n_heads = 8;
  EXPECT_EQ(refusal([&] { prepare_training(cfg, false, dd, given); }), "");
  // The plan's L1 normalisation, a model with RMSNorm.
  cfg = finetune_config();
  cfg.plan = "shiftquant:int4,l1";
  m = refusal([&] { prepare_training(cfg, false, dd); });
  EXPECT_NE(m.find("l1_norm true"), std::string::npos) << m;
  // A window longer than the model's context.
  cfg = finetune_config();
  cfg.ctx = 1024;
  m = refusal([&] { prepare_training(cfg, false, dd); });
  EXPECT_NE(m.find("ctx 1024 exceeds the context 512"), std::string::npos) << m;
}

TEST(Finetune, ATokenizerOfAnotherVocabularyIsRefused) {
  const std::string dd = lowbit_test::data_dir();
  for (const std::string tok : {"bytes", "gpt2"}) {
    train_run_config cfg = finetune_config();
    cfg.tokenizer = tok;
    train_job_options given;
    given.given = {"tokenizer"};
    const std::string m = refusal([&] { prepare_training(cfg, false, dd, given); });
    EXPECT_NE(m.find("tokenizer '" + tok + "' has"), std::string::npos) << m;
    EXPECT_NE(m.find("keeps its vocabulary"), std::string::npos) << m;
  }
  // The model's own tokenizer file, given explicitly, is the same vocabulary.
  train_run_config cfg = finetune_config();
  cfg.tokenizer = lowbit_test::data_path("llama2c/tok512.bin");
  EXPECT_EQ(prepare_training(cfg, false, dd).tok->vocab_size(), 512);
}

TEST(Finetune, AnUnreadableModelOrAnInitWeightsWithoutItsPartsIsRefused) {
  const std::string dd = lowbit_test::data_dir();
  train_run_config cfg = finetune_config();
  cfg.init = lowbit::testing::scratch_path("no_such_model").string() + ".bin";
  EXPECT_NE(refusal([&] { prepare_training(cfg, false, dd); }).find("no such model file"), std::string::npos);
  cfg.init = kStories;  // not a model
  EXPECT_NE(refusal([&] { prepare_training(cfg, false, dd); }).find("unknown model file"), std::string::npos);
  const fs::path broken = lowbit::testing::scratch_path("broken_model").concat(".bin");
  {
    const std::string bytes = lowbit::testing::read_file_bytes(kModel);
    std::ofstream(broken, std::ios::binary) << bytes.substr(0, 4000);  // truncated
  }
  cfg.init = broken.string();
  EXPECT_NE(refusal([&] { prepare_training(cfg, false, dd); }), "");
  fs::remove(broken);
  // init_weights: a model to quantize, a plan with a weight format and the PTQ step (a floor above
  // train/ supplies it).
  cfg = finetune_config();
  cfg.init = "", cfg.init_weights = "rtn", cfg.plan = "qat:int4/g32";
  EXPECT_NE(refusal([&] { prepare_training(cfg, false, dd); }).find("give --init MODEL"), std::string::npos);
  cfg = finetune_config();
  cfg.init_weights = "rtn";
  EXPECT_NE(refusal([&] { prepare_training(cfg, false, dd); }).find("keeps the forward's weights (P2) in float"),
            std::string::npos);
  cfg.plan = "qat:int4/g32";
  EXPECT_NE(refusal([&] { prepare_training(cfg, false, dd); }).find("needs the PTQ methods"), std::string::npos);
  // The step is called with the training part's documents and the plan's weight format.
  train_job_options o;
  std::string format_seen;
  size_t ids_seen = 0;
  o.init_weights = [&](model& m, const train_run_config& c, const std::string& weights, const std::vector<int32_t>& ids) {
    format_seen = weights, ids_seen = ids.size();
    m.get_mut("blk.0.attn_q.weight").data[0] = 0.5f;
    return nlohmann::json{{"called", true}};
  };
  train_job job = prepare_training(cfg, false, dd, o);
  EXPECT_EQ(format_seen, "int4/g32");
  EXPECT_EQ(ids_seen, training_tokens(job.config, *job.tok, true).train.size());
  EXPECT_EQ(job.init->get("blk.0.attn_q.weight").data[0], 0.5f);
  EXPECT_EQ(job.init_report, (nlohmann::json{{"called", true}}));
}

TEST(Finetune, AKilledFineTuningRunResumesBitExactly) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_finetune_resume");
  fs::remove_all(dir);
  struct killed : std::exception {};
  for (const std::string plan : {"fp32", "qat:int4/g32"}) {
    train_run_config a = finetune_config((dir / "a").string()), b = finetune_config((dir / "b").string());
    a.plan = b.plan = plan;
    a.checkpoint_every = b.checkpoint_every = 3;
    train_job whole_job = prepare_training(a, false, lowbit_test::data_dir());
    const train_result whole = run_training(whole_job);
    train_job first = prepare_training(b, false, lowbit_test::data_dir());
    EXPECT_THROW(run_training(first, [](const train_point& p, int64_t) {
                   if (p.step == 5) throw killed();  // after the checkpoint at step 3
                 }),
                 killed);
    // A resumed run needs the same start; another model is another configuration.
    train_run_config other = b;
    other.init = lowbit_test::data_path("gguf/llama-2-tiny-random.gguf");
    other.ctx = 16;
    const std::string m = refusal([&] {
      train_job j = prepare_training(other, true, lowbit_test::data_dir());
      run_training(j);
    });
    EXPECT_NE(m.find("another configuration"), std::string::npos) << m;
    train_job again = prepare_training(b, true, lowbit_test::data_dir());
    const train_result resumed = run_training(again);
    EXPECT_EQ(resumed.resumed_from, 3) << plan;
    ASSERT_EQ(resumed.curve.size(), whole.curve.size());
    for (size_t i = 0; i < whole.curve.size(); ++i)
      EXPECT_EQ(resumed.curve[i].train_loss, whole.curve[i].train_loss) << plan << " step " << i + 1;
    for (const auto& [name, t] : whole.trained.tensors) ASSERT_EQ(resumed.trained.get(name).data, t.data) << name;
    // The checkpoint's configuration and the model's provenance name the start.
    const nlohmann::json prov =
        nlohmann::json::parse(load_model((dir / "b" / "model.safetensors").string()).provenance);
    EXPECT_EQ(prov.at("config").at("init"), kModel);
    EXPECT_EQ(prov.at("init").at("fingerprint"), file_fingerprint(kModel));
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace lowbit

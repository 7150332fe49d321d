// The train job (job.hpp).
#include "lowbit/train/job.hpp"

#include <filesystem>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/io/model_io.hpp"

namespace fs = std::filesystem;

namespace lowbit {

namespace {

std::string value_text(const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// The architecture settings of cfg that were given (options.given, or not the default) and
// contradict the model `mc` (docs/training.md §3.5), each as "dim 32 (--dim; the model's 64)".
// kv_heads and hidden 0 mean "the default width" and contradict nothing.
std::vector<std::string> contradictions(const train_run_config& cfg, const model_config& mc,
                                        const std::set<std::string>& given) {
  const nlohmann::json now = cfg.to_json(), defaults = train_run_config{}.to_json();
  std::vector<std::string> bad;
  auto check = [&](const char* key, const char* flag, const nlohmann::json& model_value, bool unset) {
    const nlohmann::json& v = now.at(key);
    if ((!given.count(key) && v == defaults.at(key)) || unset || v == model_value) return;
    bad.push_back(fmt::format("{} {} ({}; the model's {})", key, value_text(v), flag, value_text(model_value)));
  };
  check("arch", "--arch", architecture_name(mc.arch), false);
  check("dim", "--dim", mc.dim, false);
  check("layers", "--layers", mc.n_layers, false);
  check("heads", "--heads", mc.n_heads, false);
  check("kv_heads", "--kv-heads", mc.n_kv_heads, cfg.n_kv_heads == 0);
  check("hidden", "--hidden", mc.hidden_dim, cfg.hidden_dim == 0);
  check("tied", "--untied", mc.tied_classifier, false);
  check("l1_norm", "the plan's l1", mc.l1_norm, false);
  return bad;
}

}  // namespace

std::pair<std::unique_ptr<tokenizer>, tokenizer_source> training_tokenizer(const std::string& spec,
                                                                          const std::string& data_dir) {
  if (spec == "bytes") return {make_byte_tokenizer(), tokenizer_source{"bytes", ""}};
  std::string path = spec;
  if (spec == "llama2c") path = (fs::path(data_dir) / "llama2c" / "tok512.bin").string();
  else if (spec.rfind("llama2c:", 0) == 0) path = spec.substr(8);
  else if (spec == "gpt2") path = (fs::path(data_dir) / "tokenizers" / "gpt2").string();
  auto tok = load_tokenizer(path);
  const std::string kind = tok->kind();
  return {std::move(tok), tokenizer_source{kind, fs::absolute(path).string()}};
}

train_job prepare_training(train_run_config cfg, bool resume, const std::string& data_dir,
                           const train_job_options& options) {
  if (cfg.data_path.empty()) cfg.data_path = (fs::path(data_dir) / "text" / "tinyshakespeare.txt").string();
  train_job job;
  job.resume = resume;
  job.plan = parse_training_plan(cfg.plan);
  if (job.plan.l1_norm) cfg.l1_norm = true;
  job.quantizer = make_operand_quantizer(job.plan, cfg.seed);
  if (!cfg.out_dir.empty() && !resume && fs::exists(fs::path(cfg.out_dir) / "checkpoint.safetensors"))
    throw error(fmt::format("train: '{}' holds a checkpoint; pass --resume to continue it or choose another "
                            "--out", cfg.out_dir));
  const std::string& plan_weights = job.plan.operands[int(gemm_operand::w_fwd)];
  if (!cfg.init_weights.empty()) {  // refused before any model is read or quantized
    if (cfg.init.empty())
      throw error(fmt::format("train: init_weights '{}' quantizes the weights of the model a run starts from; "
                              "give --init MODEL", cfg.init_weights));
    if (plan_weights.empty())
      throw error(fmt::format("train: init_weights '{}' quantizes the start in the plan's weight format, but "
                              "plan '{}' keeps the forward's weights (P2) in float; use qat:FMT, sun2025:FMT or "
                              "a plan with w=FMT", cfg.init_weights, cfg.plan));
    if (!options.init_weights)
      throw error(fmt::format("train: init_weights '{}' needs the PTQ methods, which this caller did not supply "
                              "(explore/finetune.hpp's prepare_train_job does)", cfg.init_weights));
  }

  if (!cfg.init.empty()) {
    // Fine-tuning: the model's architecture, config and weights are the start (docs/training.md §3.5).
    model m = load_model(cfg.init);
    const model_config& mc = m.config;
    const std::vector<std::string> bad = contradictions(cfg, mc, options.given);
    if (!bad.empty())
      throw error(fmt::format("train: --init '{}' fixes the architecture ({}, dim {}, layers {}, heads {}, kv_heads "
                              "{}, hidden {}, {}{}); these settings contradict it: {}; leave them out",
                              cfg.init, architecture_name(mc.arch), mc.dim, mc.n_layers, mc.n_heads, mc.n_kv_heads,
                              mc.hidden_dim, mc.tied_classifier ? "tied" : "untied", mc.l1_norm ? ", l1 norm" : "",
                              fmt::join(bad, ", ")));
    cfg.arch = architecture_name(mc.arch);
    cfg.dim = mc.dim, cfg.n_layers = mc.n_layers, cfg.n_heads = mc.n_heads, cfg.n_kv_heads = mc.n_kv_heads;
    cfg.hidden_dim = mc.hidden_dim, cfg.tied_classifier = mc.tied_classifier, cfg.l1_norm = mc.l1_norm;
    if (cfg.ctx > mc.max_seq_len)
      throw error(fmt::format("train: ctx {} exceeds the context {} of the model --init '{}'", cfg.ctx,
                              mc.max_seq_len, cfg.init));
    // The tokenizer: the model's own unless one is given, which must have the model's vocabulary.
    const bool tokenizer_given =
        (options.given.count("tokenizer") || cfg.tokenizer != train_run_config{}.tokenizer) && !cfg.tokenizer.empty();
    if (tokenizer_given) {
      std::tie(job.tok, job.tok_source) = training_tokenizer(cfg.tokenizer, data_dir);
      if (job.tok->vocab_size() != mc.vocab_size)
        throw error(fmt::format("train: the tokenizer '{}' has {} tokens, the model --init '{}' {}; a fine-tuned "
                                "model keeps its vocabulary (leave --tokenizer out to use the model's own)",
                                cfg.tokenizer, job.tok->vocab_size(), cfg.init, mc.vocab_size));
    } else {
      cfg.tokenizer = "";  // the model's own
      job.tok = tokenizer_for_model(m);
      job.tok_source = model_tokenizer_source(m);
    }
    // The start quantized by a PTQ method, calibrated on the training part of the text (a resumed
    // run takes its weights from the checkpoint instead).
    if (!cfg.init_weights.empty() && !resume) {
      const token_split tokens = training_tokens(cfg, *job.tok, true);
      job.init_report = options.init_weights(m, cfg, plan_weights, tokens.train);
    }
    job.init_fingerprint = file_fingerprint(cfg.init);
    job.init = std::move(m);
  } else {
    if (cfg.tokenizer.empty()) cfg.tokenizer = "bytes";
    std::tie(job.tok, job.tok_source) = training_tokenizer(cfg.tokenizer, data_dir);
  }
  job.config = std::move(cfg);
  return job;
}

train_result run_training(train_job& job, const std::function<void(const train_point&, int64_t)>& progress) {
  return run_training(job.config, *job.tok, job.tok_source, job.quantizer.get(), job.resume, progress,
                      job.init ? &*job.init : nullptr);
}

nlohmann::json train_job_json(const train_job& job, const train_result& r) {
  nlohmann::json init = nullptr;
  if (job.init)
    init = {{"model", job.config.init}, {"fingerprint", job.init_fingerprint},
            {"weights", job.config.init_weights}, {"ptq", job.init_report}};
  return {{"plan", job.config.plan},
          {"operands", job.plan.operands},
          {"law_format", job.plan.law_format},
          {"params", r.params},
          {"tokens", r.tokens},
          {"steps", r.steps},
          {"resumed_from", r.resumed_from},
          {"train_loss", r.train_loss},
          {"val_loss", r.val_loss},
          {"seconds", r.seconds},
          {"tokens_per_s", r.tokens_per_s},
          {"out", job.config.out_dir},
          {"init", init}};
}

}  // namespace lowbit

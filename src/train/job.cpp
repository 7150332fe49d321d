// The train job (job.hpp).
#include "lowbit/train/job.hpp"

#include <filesystem>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"

namespace fs = std::filesystem;

namespace lowbit {

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

train_job prepare_training(train_run_config cfg, bool resume, const std::string& data_dir) {
  if (cfg.data_path.empty()) cfg.data_path = (fs::path(data_dir) / "text" / "tinyshakespeare.txt").string();
  train_job job;
  job.resume = resume;
  job.plan = parse_training_plan(cfg.plan);
  if (job.plan.l1_norm) cfg.l1_norm = true;
  job.quantizer = make_operand_quantizer(job.plan, cfg.seed);
  std::tie(job.tok, job.tok_source) = training_tokenizer(cfg.tokenizer, data_dir);
  if (!cfg.out_dir.empty() && !resume && fs::exists(fs::path(cfg.out_dir) / "checkpoint.safetensors"))
    throw error(fmt::format("train: '{}' holds a checkpoint; pass --resume to continue it or choose another "
                            "--out", cfg.out_dir));
  job.config = std::move(cfg);
  return job;
}

train_result run_training(train_job& job, const std::function<void(const train_point&, int64_t)>& progress) {
  return run_training(job.config, *job.tok, job.tok_source, job.quantizer.get(), job.resume, progress);
}

nlohmann::json train_job_json(const train_job& job, const train_result& r) {
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
          {"out", job.config.out_dir}};
}

}  // namespace lowbit

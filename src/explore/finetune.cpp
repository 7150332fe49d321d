// Fine-tuning from quantized weights (finetune.hpp).
#include "lowbit/explore/finetune.hpp"

#include <filesystem>

#include <fmt/format.h>

#include "lowbit/base/files.hpp"
#include "lowbit/ptq/pipeline.hpp"

namespace lowbit {

nlohmann::json ptq_init_weights(model& m, const train_run_config& cfg, const std::string& weights,
                                const std::vector<int32_t>& calibration) {
  ptq::quantize_options o;
  o.how = ptq::parse_method(cfg.init_weights);
  o.weights = parse_format(weights);
  o.calib_samples = cfg.calib_samples, o.calib_ctx = cfg.calib_ctx, o.seed = cfg.seed;
  const ptq::quantize_report r = ptq::quantize_model(m, calibration, o);
  double error = 0, rtn_error = 0;
  for (const auto& l : r.layers) error += l.error, rtn_error += l.rtn_error;
  return {{"method", ptq::method_name(o.how)}, {"weights", format_name(o.weights)},
          {"calib_samples", cfg.calib_samples}, {"calib_ctx", cfg.calib_ctx}, {"seed", cfg.seed},
          {"windows_available", r.windows_available}, {"seconds", r.seconds}, {"error", error},
          {"rtn_error", rtn_error}};
}

train_job prepare_train_job(train_run_config cfg, bool resume, const std::string& data_dir,
                            const std::set<std::string>& given) {
  train_job_options options;
  options.given = given;
  options.init_weights = ptq_init_weights;
  return prepare_training(std::move(cfg), resume, data_dir, options);
}

run_record train_run_record(const train_job& job, const train_result& r) {
  namespace fs = std::filesystem;
  const train_run_config& cfg = job.config;
  const training_plan& plan = job.plan;
  run_record rec;
  rec.kind = "train";
  // A fine-tuning run is named after its start; its tokens are not the model's training tokens,
  // so the scaling-law fits leave it out (method "finetune", law/fit.hpp).
  const bool finetune = job.init.has_value();
  rec.model = finetune ? fmt::format("finetune:{}", fs::path(cfg.init).stem().string())
                       : fmt::format("train:{}-d{}-l{}-h{}", cfg.arch, cfg.dim, cfg.n_layers, cfg.n_heads);
  rec.n_params = double(r.params);
  rec.tokens = double(r.tokens);
  rec.format = plan.law_format;
  format_parts(plan.law_format, rec);
  rec.method = finetune ? "finetune" : "train";
  rec.plan = cfg.plan;
  rec.metrics = {{"val_loss", r.val_loss}, {"train_loss", r.train_loss}, {"seconds", r.seconds},
                 {"tokens_per_s", r.tokens_per_s}};
  // Files enter the run's identity by content; their locations ride along under "paths" (left
  // out of the hash, runs_db.hpp).
  nlohmann::json conf = cfg.to_json();
  conf.erase("out");
  conf["data"] = file_fingerprint(cfg.data_path);
  conf["paths"] = {{"data", fs::absolute(cfg.data_path).string()}};
  if (!job.tok_source.path.empty()) {
    conf["tokenizer"] = file_fingerprint(job.tok_source.path);
    conf["paths"]["tokenizer"] = job.tok_source.path;
  }
  if (finetune) {  // where it started, by content
    conf["init"] = job.init_fingerprint;
    conf["paths"]["init"] = fs::absolute(cfg.init).string();
  }
  const model_config& mc = r.trained.config;
  int64_t embedding = int64_t(mc.vocab_size) * mc.dim * (mc.tied_classifier ? 1 : 2);
  if (mc.learned_positions())  // learned positions (OPT's 2 extra rows)
    embedding += (int64_t(mc.max_seq_len) + mc.position_offset()) * mc.dim;
  conf["non_embedding_params"] = r.params - embedding;
  conf["operands"] = plan.operands;
  rec.config = conf;
  rec.revision = code_revision();
  return rec;
}

}  // namespace lowbit

#include "lowbit/runs/records.hpp"

#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "lowbit/formats/format.hpp"

namespace fs = std::filesystem;

namespace lowbit {

std::string absolute_path(const std::string& path) {
  return path.empty() ? path : fs::absolute(path).lexically_normal().string();
}

std::string tokenizer_identity(const std::string& tokenizer) {
  return tokenizer.empty() || tokenizer == "bytes" ? tokenizer : file_fingerprint(tokenizer);
}

std::string tokenizer_path(const std::string& tokenizer) {
  return tokenizer == "bytes" ? tokenizer : absolute_path(tokenizer);
}

run_record model_run_record(const std::string& kind, const std::string& model_name, const model_config& config,
                            const std::string& weights, const std::string& method, const quant_plan& plan) {
  run_record rec;
  rec.kind = kind;
  rec.model = model_name;
  rec.n_params = double(config.parameter_count());
  rec.format = weights;
  format_parts(weights, rec);
  rec.method = method;
  rec.plan = plan.describe();
  return rec;
}

void add_evaluation(run_record& rec, const eval_result& r) {
  rec.tokens = double(r.tokens_scored);
  for (const auto& [name, value] : eval_metrics(r)) rec.metrics[name] = value;
}

nlohmann::json eval_result_json(const eval_result& r) {
  nlohmann::json j = {{"tokens_scored", r.tokens_scored}, {"windows", r.windows},
                      {"mean_nll", r.mean_nll}, {"nll_stderr", r.nll_stderr}, {"ppl", r.ppl},
                      {"ppl_stderr", r.ppl_stderr}, {"seconds", r.seconds},
                      {"tokens_per_second", r.tokens_per_second},
                      {"gflops_per_second", r.gflops_per_second}};
  if (r.has_kl) {
    j["kl"] = {{"mean", r.kl_mean}, {"stderr", r.kl_stderr}, {"p50", r.kl_p50}, {"p90", r.kl_p90},
               {"p99", r.kl_p99}, {"max", r.kl_max}, {"top1_agreement", r.top1_agreement},
               {"base_mean_nll", r.base_mean_nll}, {"base_ppl", r.base_ppl}};
  }
  return j;
}

std::string canonical_or_float(const std::optional<format>& f) { return f ? format_name(*f) : "fp32"; }

std::string canonical_or_float(const std::string& spec) { return canonical_or_float(parse_optional_format(spec)); }

int64_t record_run(const std::string& db_path, const run_record& rec, const std::string& who) {
  runs_db db(db_path);
  const bool had = db.has(rec.config_hash.empty() ? run_hash(rec.config) : rec.config_hash);
  const int64_t id = db.record(rec);
  std::cerr << fmt::format("{}: {} run {} in {}\n", who, had ? "already recorded as" : "recorded as", id, db_path);
  return id;
}

}  // namespace lowbit

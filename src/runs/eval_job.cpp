// The eval job (eval_job.hpp).
#include "lowbit/runs/eval_job.hpp"

#include <filesystem>
#include <fstream>
#include <optional>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/runs/records.hpp"
#include "lowbit/text/documents.hpp"

namespace fs = std::filesystem;

namespace lowbit {

namespace {

// Steps 2 (the tokenizer and the data) and 3, the plan already made. `own` is base itself when the
// caller gives it up: the plan then quantizes it in place (unless --kl-base needs the float model),
// and a plan that leaves every weight float evaluates base as it is, without a copy of the weights.
eval_job evaluate_under(const eval_job_config& c, quant_plan plan, const model& base, model* own,
                        const progress_fn& progress) {
  eval_job job;
  job.plan = std::move(plan);
  job.config = base.config;
  job.provenance = base.provenance;
  const auto tok = tokenizer_for_model(base, c.tokenizer);
  // Only the documents that hold the evaluated tokens are encoded (--max-tokens).
  const std::vector<int32_t> ids = encode_documents(*tok, read_file(c.data, "data file"), c.max_tokens);
  bool any_weight_format = false;
  for (const auto& entry : base.tensors) any_weight_format = any_weight_format || job.plan.weight_format(base, entry.first);
  std::optional<model> copy;
  const model* evaluated = &base;
  if (any_weight_format) {
    model* target = own && !c.kl_base ? own : &copy.emplace(base);
    job.reports = apply_weight_plan(*target, job.plan);
    evaluated = target;
  }
  const model& quantized = *evaluated;
  eval_options eo;
  eo.ctx = c.ctx, eo.max_tokens = c.max_tokens, eo.kl_base = c.kl_base;
  job.result = evaluate(quantized, job.plan, ids, eo, c.kl_base ? &base : nullptr, progress);
  // A NaN mean is no perplexity: it would be printed and recorded as if the model had been measured.
  if (job.result.nonfinite_tokens > 0)
    throw error(fmt::format("eval: {}: the mean NLL is {}: {} of {} scored tokens have a non-finite NLL (the first "
                            "at token {} of '{}'); the model's logits are NaN or Inf (NaN/Inf weights, or a format "
                            "that overflows), so there is no perplexity to report",
                            c.model, job.result.mean_nll, job.result.nonfinite_tokens, job.result.tokens_scored,
                            job.result.first_nonfinite_position, c.data));
  job.bits_per_weight = average_linear_bits(quantized, job.plan);
  return job;
}

// --packed: the model read with packed linear weights, evaluated as it is.
eval_job evaluate_packed(const eval_job_config& c, quant_plan plan, const progress_fn& progress) {
  if (c.kl_base)
    throw error("eval --packed: --kl-base is not available (it needs the float model beside the packed one; run "
                "eval with --kl-base without --packed: the values are the same up to the order of the sums)");
  eval_job job;
  job.plan = std::move(plan);
  packed_load_report rep;
  const model m = load_packed_model(c.model, job.plan, &rep);
  job.config = m.config;
  job.provenance = m.provenance;
  const auto tok = tokenizer_for_model(m, c.tokenizer);
  const std::vector<int32_t> ids = encode_documents(*tok, read_file(c.data, "data file"), c.max_tokens);
  eval_options eo;
  eo.ctx = c.ctx, eo.max_tokens = c.max_tokens;
  job.result = evaluate(m, job.plan, ids, eo, nullptr, progress);
  if (job.result.nonfinite_tokens > 0)
    throw error(fmt::format("eval: {}: {} of {} scored tokens have a non-finite NLL; no perplexity to report", c.model,
                            job.result.nonfinite_tokens, job.result.tokens_scored));
  int64_t numel = 0;
  for (const auto& [name, p] : m.packed) numel += p->rows * p->cols;
  job.bits_per_weight = numel ? 8.0 * double(rep.packed_bytes) / double(numel) : 32.0;
  return job;
}

}  // namespace

eval_job run_eval_job(const eval_job_config& c, const progress_fn& progress) {
  quant_plan plan = make_quant_plan(c.rules, c.weights, c.acts, c.kv, c.attn);
  if (c.packed) return evaluate_packed(c, std::move(plan), progress);
  model base = load_model(c.model);
  return evaluate_under(c, std::move(plan), base, &base, progress);
}

eval_job run_eval_job(const eval_job_config& c, const model& base, const progress_fn& progress) {
  if (c.packed) throw error("eval --packed reads the model file itself (load_packed_model), not a model in memory");
  quant_plan plan = make_quant_plan(c.rules, c.weights, c.acts, c.kv, c.attn);
  return evaluate_under(c, std::move(plan), base, nullptr, progress);
}

nlohmann::json eval_job_json(const eval_job_config& c, const eval_job& job) {
  const quant_plan& plan = job.plan;
  nlohmann::json j = eval_result_json(job.result);
  j["model"] = c.model;
  j["data"] = c.data;
  j["plan"] = plan.describe();
  j["weights"] = {{"format", c.weights}, {"canonical", plan.weights ? format_name(*plan.weights) : "fp32"}};
  j["acts"] = {{"format", c.acts}, {"canonical", plan.acts ? format_name(*plan.acts) : "fp32"}};
  j["kv"] = {{"format", c.kv}, {"canonical", plan.kv ? format_name(*plan.kv) : "fp32"}};
  if (!plan.act_rules.empty() || !plan.kv_rules.empty() || plan.attn.any()) j["rules"] = plan_json(plan);
  j["bits_per_weight"] = job.bits_per_weight;
  j["quantized_tensors"] = job.reports.size();
  if (c.packed) j["packed"] = true, j["packed_kernel"] = packed_kernel_target(false);
  return j;
}

run_record eval_run_record(const eval_job_config& c, const eval_job& job) {
  const quant_plan& plan = job.plan;
  std::string model_name = fs::path(c.model).stem().string();  // the path is in config.paths
  std::string weights = c.weights, method = plan.weights ? "rtn" : "none";
  nlohmann::json provenance;
  if (!job.provenance.empty()) {  // a model written by `lowbit quantize`: its format and method
    provenance = nlohmann::json::parse(job.provenance, nullptr, false);
    if (!plan.weights && provenance.is_object()) {
      weights = provenance.value("weights", "");
      method = provenance.value("method", "none");
      // A quantized model is its source model for reports and fits.
      if (provenance.contains("source_model"))
        model_name = fs::path(provenance.value("source_model", c.model)).stem().string();
    }
  }
  run_record rec = model_run_record("eval", model_name, job.config, weights, method, plan);
  nlohmann::json rules = nullptr;
  if (!c.rules.empty()) {
    std::ifstream in(c.rules);
    rules = nlohmann::json::parse(in, nullptr, false);
  }
  rec.config = {{"kind", "eval"}, {"model", file_fingerprint(c.model)},
                {"tokenizer", tokenizer_identity(c.tokenizer)},
                {"data", file_fingerprint(c.data)}, {"weights", canonical_or_float(plan.weights)},
                {"acts", canonical_or_float(plan.acts)}, {"kv", canonical_or_float(plan.kv)}, {"rules", rules},
                {"ctx", c.ctx}, {"max_tokens", c.max_tokens}, {"kl_base", c.kl_base},
                {"provenance", provenance.is_discarded() ? nlohmann::json(nullptr) : provenance},
                {"paths", {{"model", absolute_path(c.model)}, {"data", absolute_path(c.data)},
                           {"tokenizer", tokenizer_path(c.tokenizer)}, {"rules", absolute_path(c.rules)}}}};
  // Only when set, so the configs (and hashes) of runs without it stay as they were.
  if (!c.attn.empty()) rec.config["attn"] = c.attn;
  add_evaluation(rec, job.result);
  rec.metrics["bits_per_weight"] = job.bits_per_weight;
  if (!job.reports.empty()) rec.metrics["sqnr_db"] = mean_sqnr_db(job.reports);
  return rec;
}

}  // namespace lowbit

// Run records: the one way eval, quantize, explore, sweeps and train describe a run to the results
// store. A run's config names its files by content fingerprint, so the same model or data found
// elsewhere is the same run; the paths ride along under "paths", which the hash leaves out
// (run_hash).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/runs/runs_db.hpp"

namespace lowbit {

// A path made absolute and normal ("" stays "").
std::string absolute_path(const std::string& path);
// A tokenizer as a config names it: "" (the model's own) and "bytes" as they are, else the
// file's fingerprint; tokenizer_path is the same for "paths" (an absolute path).
std::string tokenizer_identity(const std::string& tokenizer);
std::string tokenizer_path(const std::string& tokenizer);

// The fields every record of a (quantized) model shares: kind, model name, N, the weight format
// as typed with its canonical parts, the method and the plan's description.
run_record model_run_record(const std::string& kind, const std::string& model_name, const model_config& config,
                            const std::string& weights, const std::string& method, const quant_plan& plan);

// An evaluation's token count and metrics (eval_metrics) on rec, over any of the same names.
void add_evaluation(run_record& rec, const eval_result& r);

// An evaluation as JSON, as `eval --json` and explore's outputs print it.
nlohmann::json eval_result_json(const eval_result& r);
// A format's canonical form, "fp32" for float (no format, or a spec "" or fp32).
std::string canonical_or_float(const std::optional<format>& f);
std::string canonical_or_float(const std::string& spec);

// Records rec in the database at db_path and says on stderr, as "<who>: recorded as run N in DB"
// (or "already recorded as"), which run it is. Returns the run's id.
int64_t record_run(const std::string& db_path, const run_record& rec, const std::string& who);

}  // namespace lowbit

// `lowbit explore --row ...`: one model, one token stream, a list of rows WEIGHTS[@METHOD][,ACTS[,KV]],
// each a quantized variant of the model evaluated on the same windows next to the float model
// (perplexity, its change, KL divergence and top-1 agreement). A row is one point of a sweep
// (sweep.hpp): the same row grammar, the same variant-making (quantize_variant) and the same run
// records; what explore adds is evaluating every row in one pass over the windows
// (evaluate_many, the float model's forward computed once per window) and the CSV/JSON/plot
// outputs of the demo.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/explore/sweep.hpp"
#include "lowbit/ptq/pipeline.hpp"

namespace lowbit {

// A row of explore: the sweep's plan and a method ("rtn" unless WEIGHTS@METHOD names one; the
// last '@' names a method when it is one, or when the whole is not a format, since '@' is also a
// format's own scale rule as in int4/g32@mse). Throws lowbit::error naming the row.
struct explore_row {
  std::string label;  // as written
  sweep_plan plan;
  std::string method = "rtn";
};
explore_row parse_explore_row(const std::string& row);
quant_plan quant_plan_of(const sweep_plan& p);

// Calibration of the PTQ methods (docs/conventions.md §21: windows drawn from the second half of
// the token stream).
struct calibration_settings {
  int samples = 128, ctx = 256;
  uint64_t seed = 0;
};

// `base` quantized under plan.weights by `method`: RTN applies the weight plan; a PTQ method
// calibrates on `ids`. sqnr_db (when given) receives the weight format's own round-to-nearest
// SQNR on base's weights, whatever the method did.
model quantize_variant(const model& base, const std::vector<int32_t>& ids, const quant_plan& plan,
                       const std::string& method, const calibration_settings& calib,
                       const ptq::ptq_progress& progress = {}, double* sqnr_db = nullptr);

// The same with the quantize job's options (a sweep's method object): always the PTQ pipeline
// (rtn included, for its options: LoRC, shared power-of-two scales, equalization ...);
// o.weights is set from plan.weights.
model quantize_variant(const model& base, const std::vector<int32_t>& ids, const quant_plan& plan,
                       ptq::quantize_options o, double* sqnr_db = nullptr, const ptq::ptq_progress& progress = {});

struct explore_config {
  std::string model, tokenizer, data;  // tokenizer "" = the model's own
  std::vector<std::string> rows;
  int ctx = 0;             // 0 = the model's maximum
  int64_t max_tokens = 0;  // 0 = all (the first half when a row calibrates)
  std::string db;          // record every row here when set
};

struct explore_row_result {
  explore_row row;
  double bits_per_weight = 0;
  double dppl_percent = 0;  // perplexity change against the float model, in percent
  eval_result eval;
};

struct explore_result {
  std::string model, data;
  int ctx = 0;
  int64_t max_tokens = 0;
  std::vector<explore_row_result> rows;
  int64_t recorded = 0, already_recorded = 0;  // with db
};

// The demo's rows: weight-only round-to-nearest over the formats of the literature, W8A8 in int8
// and FP8, an FP8 KV cache, and GPTQ next to RTN at int4/g32.
const std::vector<std::string>& default_explore_rows();

struct explore_progress {
  // A stage begins: "WEIGHTS@METHOD" before a PTQ row is quantized, "explore" before the evaluation.
  std::function<void(const std::string& stage)> begin;
  std::function<void(const std::string& label, int64_t done, int64_t total)> quantize;
  std::function<void(int64_t done, int64_t total)> evaluate;
  std::function<void(const std::string& message)> note;
};

// Parses every row first (fail fast), then loads, quantizes, evaluates and records.
explore_result run_explore(const explore_config& c, const explore_progress& progress = {});

// explore.csv and explore.json in out_dir, and with plot_script (scripts/plot_explore.py) the
// figures explore.png/.svg. Returns a note on the figures: where they are, or why there are none.
struct explore_files {
  std::string csv, json, plot_note;
};
nlohmann::json explore_json(const explore_result& r);
explore_files write_explore_outputs(const explore_result& r, const std::string& out_dir, const std::string& plot_script);

}  // namespace lowbit

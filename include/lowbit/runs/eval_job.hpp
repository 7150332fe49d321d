// The eval job (docs/evaluation.md): a model evaluated under a plan on a text file, with its report
// and its run record, as one library call, so `lowbit eval` and lowbit.evaluate (docs/python.md)
// compute the same numbers from the same steps:
//   1. the plan (make_quant_plan: rules file, then the weights/acts/kv specs), refused before
//      the model is read;
//   2. the model (load_model), its tokenizer (tokenizer_for_model) and the data's documents
//      (encode_documents);
//   3. the weight plan applied to a copy of the model (apply_weight_plan), then evaluate(), the
//      float model as the KL baseline with kl_base;
//   4. the report (`eval --json`'s document) and the record (`eval --db`'s run).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/runs/runs_db.hpp"

namespace lowbit {

// The job's inputs as `lowbit eval` takes them (its flags in parentheses).
struct eval_job_config {
  std::string model;      // --model: the model file (names the model in the report and the record)
  std::string tokenizer;  // --tokenizer ("": the model's)
  std::string data;       // --data: text, documents separated by blank lines
  std::string weights, acts, kv;  // --weights, --acts, --kv as typed ("": the rules' or float)
  std::string rules;      // --rules: rules.json ("": none)
  int ctx = 0;            // --ctx (0: the model's maximum)
  int64_t max_tokens = 0;  // --max-tokens (0: all)
  bool kl_base = false;   // --kl-base
  std::string attn;       // --attn: every attention operand (q, k, p, v) in this format ("": the rules')
  // --packed: the linear weights kept as codes and computed by the packed kernels
  // (load_packed_model); the report's bits_per_weight are the packed bytes per weight.
  bool packed = false;
};

struct eval_job {
  quant_plan plan;
  model_config config;     // the model's
  std::string provenance;  // the model file's (lowbit quantize's JSON; "" for an original)
  std::vector<weight_quant_report> reports;  // one per quantized weight
  eval_result result;
  double bits_per_weight = 32;  // average over the linear weights (average_linear_bits)
};

// Steps 1-3 on the model file c.model.
eval_job run_eval_job(const eval_job_config& c, const progress_fn& progress = {});
// The same on a model already in memory (`base`, the float model; c.model names the file it was
// read from, for the report and the record); step 1 comes after it was read.
eval_job run_eval_job(const eval_job_config& c, const model& base, const progress_fn& progress = {});

// `eval --json`'s document: eval_result_json's fields, with the model and data as given, the
// plan's description, each format as typed and canonical, bits_per_weight and quantized_tensors.
nlohmann::json eval_job_json(const eval_job_config& c, const eval_job& job);

// `eval --db`'s run: the config names the model, tokenizer and data by fingerprint (their paths
// ride along under "paths", outside the hash); a model written by `lowbit quantize` is recorded
// as its source model with the format and method of its provenance.
run_record eval_run_record(const eval_job_config& c, const eval_job& job);

}  // namespace lowbit

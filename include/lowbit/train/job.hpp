// The train job (docs/training.md): what `lowbit train` does around the training loop, as library
// calls, so the CLI and lowbit.train (docs/python.md) run the same job:
//   1. prepare_training: the data file's default (the shipped tinyshakespeare), the plan
//      (parse_training_plan, whose shiftquant recipe turns on the L1 norm), its operand quantizer,
//      the output directory (a checkpoint there is refused unless resuming), the start (a fresh
//      model, or with `init` a pretrained model file: its architecture, config and weights,
//      docs/training.md §3.5, with init_weights quantized first by a PTQ method) and the
//      tokenizer (bytes | llama2c[:PATH] | gpt2 | a tokenizer file; with init, the model's own
//      unless one is given): everything that can be refused is refused before training starts;
//   2. run_training (trainer.hpp) on what was prepared;
//   3. train_job_json: the report, `train --json`'s document.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/model.hpp"
#include "lowbit/text/tokenizer.hpp"
#include "lowbit/train/recipes.hpp"
#include "lowbit/train/trainer.hpp"

namespace lowbit {

struct train_job {
  train_run_config config;  // as it runs: the data file defaulted, l1_norm from the plan, init's architecture
  bool resume = false;
  training_plan plan;
  std::unique_ptr<operand_quantizer> quantizer;
  std::unique_ptr<tokenizer> tok;
  tokenizer_source tok_source;  // what checkpoints and the trained model name as their tokenizer
  // Fine-tuning (config.init set): the start, and where it came from.
  std::optional<model> init;
  std::string init_fingerprint;  // file_fingerprint(config.init)
  nlohmann::json init_report;    // init_weights' PTQ report (null when none ran: no init_weights, or resuming)
};

// The tokenizer a training run names: "bytes"; "llama2c" (data_dir/llama2c/tok512.bin) or
// "llama2c:PATH"; "gpt2" (data_dir/tokenizers/gpt2); else a path load_tokenizer reads. The
// source is its kind and absolute path ("" for bytes).
std::pair<std::unique_ptr<tokenizer>, tokenizer_source> training_tokenizer(const std::string& spec,
                                                                          const std::string& data_dir);

// init_weights' quantizer: m's linear weights quantized in place with PTQ method cfg.init_weights
// in format `weights` (canonical), calibrated on the token ids `calibration` with cfg's
// calib_samples, calib_ctx and seed; returns its report (JSON). train/ cannot see ptq/ (siblings):
// a floor above both supplies it (explore/finetune.hpp's ptq_init_weights).
using init_weights_fn = std::function<nlohmann::json(model& m, const train_run_config& cfg, const std::string& weights,
                                                     const std::vector<int32_t>& calibration)>;

struct train_job_options {
  // The settings given explicitly (train_run_config's JSON keys: flags on the command line, a
  // config file's keys, keyword arguments), besides those that differ from the defaults, which
  // count as given anyway. With init, a given architecture setting that contradicts the model
  // is refused, and the model's tokenizer is used unless "tokenizer" is given.
  std::set<std::string> given;
  init_weights_fn init_weights;  // required when cfg.init_weights is set
};

// Step 1. data_dir: the shipped data directory (shipped_data_dir).
train_job prepare_training(train_run_config cfg, bool resume, const std::string& data_dir,
                           const train_job_options& options = {});

// Step 2: run_training on the prepared job (its quantizer keeps its state: Autoflex histories).
train_result run_training(train_job& job, const std::function<void(const train_point&, int64_t)>& progress = {});

// Step 3: plan, operands, law_format, params, tokens, steps, resumed_from, train_loss, val_loss,
// seconds, tokens_per_s, out and init (null, or where the run started: model, fingerprint,
// weights and the PTQ report of init_weights).
nlohmann::json train_job_json(const train_job& job, const train_result& r);

}  // namespace lowbit

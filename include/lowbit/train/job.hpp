// The train job (docs/training.md): what `lowbit train` does around the training loop, as library
// calls, so the CLI and lowbit.train (docs/python.md) run the same job:
//   1. prepare_training: the data file's default (the shipped tinyshakespeare), the plan
//      (parse_training_plan, whose shiftquant recipe turns on the L1 norm), its operand quantizer,
//      the tokenizer (bytes | llama2c[:PATH] | gpt2 | a tokenizer file) and the output directory
//      (a checkpoint there is refused unless resuming): everything that can be refused is refused
//      before training starts;
//   2. run_training (trainer.hpp) on what was prepared;
//   3. train_job_json: the report, `train --json`'s document.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "lowbit/text/tokenizer.hpp"
#include "lowbit/train/recipes.hpp"
#include "lowbit/train/trainer.hpp"

namespace lowbit {

struct train_job {
  train_run_config config;  // as it runs: the data file defaulted, l1_norm from the plan
  bool resume = false;
  training_plan plan;
  std::unique_ptr<operand_quantizer> quantizer;
  std::unique_ptr<tokenizer> tok;
  tokenizer_source tok_source;  // what checkpoints and the trained model name as their tokenizer
};

// The tokenizer a training run names: "bytes"; "llama2c" (data_dir/llama2c/tok512.bin) or
// "llama2c:PATH"; "gpt2" (data_dir/tokenizers/gpt2); else a path load_tokenizer reads. The
// source is its kind and absolute path ("" for bytes).
std::pair<std::unique_ptr<tokenizer>, tokenizer_source> training_tokenizer(const std::string& spec,
                                                                          const std::string& data_dir);

// Step 1. data_dir: the shipped data directory (shipped_data_dir).
train_job prepare_training(train_run_config cfg, bool resume, const std::string& data_dir);

// Step 2: run_training on the prepared job (its quantizer keeps its state: Autoflex histories).
train_result run_training(train_job& job, const std::function<void(const train_point&, int64_t)>& progress = {});

// Step 3: plan, operands, law_format, params, tokens, steps, resumed_from, train_loss, val_loss,
// seconds, tokens_per_s and out.
nlohmann::json train_job_json(const train_job& job, const train_result& r);

}  // namespace lowbit

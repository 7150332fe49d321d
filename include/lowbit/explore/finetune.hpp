// Fine-tuning from quantized weights (docs/training.md §3.5, QAFT): `lowbit train --init MODEL
// --init-weights METHOD` starts the master weights from the model's linear weights quantized by a
// post-training method of ptq/ (rtn, gptq, awq, ...) in the plan's weight format. train/ and ptq/
// are siblings that may not see each other, so the composition is here: train/job.hpp takes the
// PTQ step as a function (init_weights_fn), and this floor supplies ptq::quantize_model, run in
// memory, calibrated as `lowbit quantize` calibrates (calibration_windows: calib_samples windows of
// calib_ctx tokens, drawn with the run's seed from the second half of the ids it is given, which
// prepare_training takes from the training part of the text, read as documents).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/model.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "lowbit/train/job.hpp"

namespace lowbit {

// init_weights_fn: m's linear weights quantized in place with PTQ method cfg.init_weights in
// format `weights`. Returns {method, weights, calib_samples, calib_ctx, seed, windows_available,
// seconds, error, rtn_error} (the errors summed over the layers, as the quantize job reports them).
nlohmann::json ptq_init_weights(model& m, const train_run_config& cfg, const std::string& weights,
                                const std::vector<int32_t>& calibration);

// prepare_training as the front ends (`lowbit train`, lowbit.train) run it: the settings given
// explicitly and ptq_init_weights.
train_job prepare_train_job(train_run_config cfg, bool resume, const std::string& data_dir,
                            const std::set<std::string>& given = {});

// The results-store row of a finished training run (`train --db`, the trained families of
// explore/family.hpp): kind "train", model "train:ARCH-dDIM-lLAYERS-hHEADS" (a fine-tuning run:
// "finetune:STEM", method "finetune", which the scaling-law fits leave out), N = every parameter,
// D = trained tokens, the plan's law format and its parts, metrics val_loss, train_loss, seconds,
// tokens_per_s; config = the run's settings with the data, tokenizer and start by content
// fingerprint (their paths under "paths"), non_embedding_params and the six operands' formats.
// r.trained.config must be the trained model's.
run_record train_run_record(const train_job& job, const train_result& r);

}  // namespace lowbit

// A training run's files: checkpoint.safetensors (parameters and AdamW moments as F32 vectors, the
// run's state as JSON metadata) and log.jsonl (one line per step). A checkpoint carries an FNV-1a
// checksum of its tensors' bytes and of its state, verified before a run resumes from it, so a
// flipped bit or an edited step is refused instead of silently trained on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/train/trainer.hpp"

namespace lowbit {

struct train_checkpoint {
  int64_t step = 0;          // updates done
  double seconds = 0;        // training time so far
  nlohmann::json config;     // train_run_config::to_json() of the run
  nlohmann::json quantizer;  // the operand quantizer's state (Autoflex histories), null without one
  std::vector<train_point> curve;
  std::vector<float> params, adam_m, adam_v;
};

// Written atomically. Throws lowbit::error naming the file on any I/O failure.
void save_train_checkpoint(const std::string& path, const train_checkpoint& c);
// Throws lowbit::error naming the file when it is not a checkpoint, is truncated, or its data or
// state do not match the checksum.
train_checkpoint load_train_checkpoint(const std::string& path);

// log.jsonl: one JSON object per step {"step", "train_loss", "lr", "grad_norm", "tokens_per_s"
// [, "val_loss"]} (train_point_json), one line each.
nlohmann::json train_point_json(const train_point& p);
std::string train_log_line(const train_point& p);
// The log as the curve says (a resumed run's log is rebuilt from its checkpoint's curve, so a torn
// or missing line of the killed run is not lost and no line past the checkpoint survives).
void write_train_log(const std::string& path, const std::vector<train_point>& curve);
// Appends one line and checks that it reached the file (a full disk is an error, not a silently
// shorter log).
void append_train_log(const std::string& path, const train_point& p);

}  // namespace lowbit

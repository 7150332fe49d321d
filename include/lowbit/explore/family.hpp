// A model family that lowbit trains itself (issue 16): a study's "train" section lists sizes N,
// token budgets D and training plans; `lowbit explore --config` trains every run once (resumably:
// a killed run resumes from its checkpoint, a finished one is found by its result file), keeps
// the checkpoints, records each run in the results store (kind "train", with N, D and the plan's
// format, where `lowbit fit` finds it) and then evaluates the family's post-training quantization
// on the text the runs held out. docs/studies/family.md describes the shipped family.
//
//   "train": {
//     "dir": "../studies-out/family/runs",            run directories (relative to the file)
//     "settings": {"data": ..., "tokenizer": "llama2c", "ctx": 128, "batch": 16, "lr": 3e-3,
//                  "val_batches": 16, "seed": 1},      train_run_config keys (`lowbit train --config`)
//     "members": {"d64-l2": {"dim": 64, "layers": 2, "heads": 4}, ...},
//     "grids": [{"members": [...], "steps": [...], "plans": [...], "seeds": [...],
//                "init": RUN, "settings": {...}}, ...],
//     "include": "family.json", "runs": ["d96-l3-s256-*", ...],   (instead of the above: another
//                                     study's train section, only the runs matching the patterns)
//     "ptq": [{"runs": ["*-fp32-seed1"], "formats": ["int4/g32"], "methods": ["rtn", "gptq"],
//              "max_tokens": 8192, "flatness": 3, "calibration": {"samples": 32, "ctx": 128}}]
//   }
//
// Every grid is members x steps x plans x seeds; a run is named MEMBER-sSTEPS-PLAN-seedSEED (the
// plan with every run of non-alphanumerics turned into '_') and lives in dir/NAME. Each run
// validates every steps / 2 (twice). A grid's "init" names a run of the family to start from
// (`train --init`, fine-tuning: QAFT with plan qat:FMT); its "settings" override the section's.
// The runs train in file order, one at a time, with every core. A run being trained holds a lock
// on its directory: another study training the same run at that moment is refused it (a
// failure naming the run; rerun that study later to record it).
//
// PTQ evaluation of a run (its model.safetensors): the float model and each weight format x
// method, evaluated on the run's own validation part (the last 10% of the text, tokenized as one
// plain stream as the runs from scratch read it, also for fine-tuned runs, so that a run and the
// runs started from it see the same tokens; at most max_tokens), calibrated on the second half of
// its training part (docs/conventions.md §21). Recorded as kind "explore" (model "family:NAME", N, metrics nll,
// base_nll, sqnr_db and, with "flatness": K, the flatness feature of Xu et al.'s predictor
// measured with K draws, law/predict.hpp measure_flatness).
//
// --tiny (CI): the first run from scratch of each plan (at most 8) and the first fine-tuning run
// (started from the first run), trained for 12 steps at batch 4 and ctx <= 64 in a directory
// beside the results store; PTQ keeps the first format and method of each block on 256 tokens
// with 4 calibration windows of 32 tokens and 1 flatness draw.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/runs/runs_db.hpp"
#include "lowbit/train/trainer.hpp"

namespace lowbit {

struct family_run {
  std::string name;      // MEMBER-sSTEPS-PLAN-seedSEED
  std::string member;
  std::string init_run;  // the family run it starts from ("" = a fresh model)
  train_run_config cfg;  // out_dir = the run's directory
  std::set<std::string> given;  // the settings the run gives explicitly (train_job_options::given)
};

struct family_ptq {
  std::vector<std::string> runs;  // name patterns (family_name_matches)
  std::vector<std::string> formats;
  std::vector<std::string> methods{"rtn"};
  int64_t max_tokens = 8192;
  int ctx = 0;       // 0: the run's training ctx
  int flatness = 0;  // draws of the flatness measurement (0: not measured)
  int calib_samples = 32, calib_ctx = 128;
  uint64_t calib_seed = 0;
};

struct family_config {
  std::string dir;  // run directories
  std::vector<family_run> runs;
  std::vector<family_ptq> ptq;
  std::string source;
  std::string data_dir;  // the shipped data directory (the trainer's defaults: tokenizers)
};

// Reads a "train" section (base_dir: the study file's directory); refuses unknown keys, members,
// plans (parsed as `train --plan` parses them), patterns that match no run, and an init that is
// not an earlier run.
family_config parse_family_config(const nlohmann::json& section, const std::string& base_dir,
                                  const std::string& data_dir, const std::string& source);
// CI size (see above); the runs move to work_dir/train-tiny.
void make_family_tiny(family_config& f, const std::string& work_dir);

// glob_match's wildcards ('*', '?'), but '*' does not span a '.' (START.ft-...: a fine-tuning
// run's name).
bool family_name_matches(const std::string& pattern, const std::string& name);

// Every run and every evaluation is counted once: runs = trained + found + the runs' failures,
// ptq_total = ptq_ran + ptq_found + the evaluations' failures (an evaluation of a run whose
// training failed is one: it is not done).
struct family_summary {
  int64_t trained = 0, found = 0;                    // runs trained now, runs already trained on disk
  int64_t ptq_total = 0, ptq_ran = 0, ptq_found = 0;  // PTQ evaluations in the grid, evaluated now, recorded before
  std::vector<std::string> failures;                 // "train NAME: message", "ptq NAME FMT@METHOD: message"
};

struct family_progress {
  // Before a run trains or an evaluation runs: the stage ("train NAME", "ptq NAME FMT@METHOD"),
  // how many runs and evaluations are done (or failed), and how many the family has.
  std::function<void(const std::string& stage, int64_t done, int64_t total)> begin;
  std::function<void(int64_t step, int64_t steps, double loss)> step;  // training steps of the current run
};

// Trains what is not trained, records every run in the store at db_path, then runs the PTQ
// evaluations not yet recorded. A failing run is reported in failures and the rest go on.
family_summary run_family(const family_config& f, const std::string& db_path,
                          const family_progress& progress = {});

}  // namespace lowbit

// Design-space sweeps (`lowbit explore --config sweep.json`, issue 6): the grid
//   models x formats (weights[,acts[,kv]]) x methods x eval settings,
// every point one run recorded in the results store (runs_db.hpp). Runs whose hash is already
// in the database are skipped, so a killed sweep resumes and duplicates nothing.
//
// sweep.json (paths relative to the file's directory; ${LOWBIT_DATA_DIR} and other ${VAR}s are
// expanded, LOWBIT_DATA_DIR defaulting to the shipped data directory):
//   {"models": ["${LOWBIT_DATA_DIR}/llama2c/stories260K.bin",
//               {"path": "m.safetensors", "name": "m", "tokenizer": "tok.bin"}],
//    "data": "${LOWBIT_DATA_DIR}/text/tinystories_val_sample.txt",
//    "formats": ["int4/g32", "int8/c,int8/c", "fp32,-,e4m3fn/c", {"weights": "mxfp4", "acts": "e4m3fn/c"}],
//    "methods": ["rtn", "gptq"],
//    "eval": [{"ctx": 128, "max_tokens": 8192}],
//    "kl_base": true,
//    "calibration": {"samples": 128, "ctx": 256, "seed": 0}}
// "train": {...} trains a model family first and evaluates its PTQ (explore/family.hpp); it
// runs in one process (not under mpirun; -j applies to the grid after it).
// Only "formats" is required (unless "train" is given); models and data default to stories260K and the TinyStories
// sample, methods to ["rtn"], eval to the model's context over the evaluation half.
//
// Study extensions (issue 16; studies/NAME.json are sweep files, docs/studies/README.md):
//   "formats": an object entry may name the methods it runs with, {"weights": "int4/g32",
//       "methods": ["rtn", "gptq"]} (labels among "methods"; default: every method).
//   "methods": entries may also be objects naming a method with its options, recorded under
//       "name": {"name": "rtn+lorc8", "method": "rtn", "lorc_rank": 8}. Options (`lowbit
//       quantize`'s flags): lorc_rank, lorc_format, shared_pow2_scales, equalize,
//       bias_correction, alpha, damp, act_order, adaround_iters, adaround_lambda, preshift,
//       rotate; refused where `quantize` refuses them (ptq::quantize_options_of) with the
//       weight format of each format entry that runs the method (an object no entry runs is
//       refused: its options would be neither checked nor used); and
//       "act_calibration": max | mse | llmfp4 | percentile:P — static activation scales
//       (ptq/calibrate.hpp) calibrated on the quantized model (at most 16 of the calibration
//       windows), replacing the format's dynamic ACTS, which must then be a bare intN or eEmM.
//   "tasks": [{"kind": "ending"|"lastword", "n": 300, "seed": 0, "options": 4, "max_chars": 1000,
//       "text": FILE (default: data), "name": ...}]: every run also scores each task
//       (runs/task_eval.hpp), metrics task.NAME.acc, .acc_stderr (ending: .acc_norm too).
//   "spread": {"formats": 20, "budget": 2000, "batch": 20, "seed": 0}: every run also measures
//       FormatSpread (runs/spread.hpp) on the first task: spread.NAME, .best_acc, .worst_acc,
//       .original_acc (+ _stderr).
//   "sqnr": {"formats": ["int8/c,int8/t", ...], "windows": 2, "ctx": 256,
//       "densities": ["gaussian", "laplace", "student-t:3"]}: one analysis run per model and
//       entry WEIGHTS[,ACTS] (kind "sqnr", method "sqnr"): the SQNR of every linear weight in
//       WEIGHTS (metric w_sqnr:NAME) and of every linear layer's input activation in ACTS
//       (a_sqnr:SITE; the float model's activations on `windows` windows of `ctx` tokens from the
//       start of the evaluation half, each window quantized as the engine quantizes it), their
//       excess kurtosis (w_kurt:, a_kurt:), the size-weighted means (w_sqnr_mean, a_sqnr_mean),
//       and the closed-form SQNR of each element on each density with optimal clipping
//       (closed_w:DENSITY, closed_a:DENSITY; formats/analysis.hpp).
// `--tiny` (make_tiny) shrinks a study so CI runs every studies/*.json in seconds: the first
// model, the first two formats, 256 evaluation tokens at ctx <= 128, 4 calibration windows of 64
// tokens, AdaRound at 20 steps, 8 task items, a 3-format spread on a budget of 16, one SQNR
// window of 64 tokens and the first two SQNR entries; a "train" family as make_family_tiny
// (family.hpp).
//
// Evaluation protocol of a sweep: every run is evaluated on the first half of the token stream
// at most (the second half is PTQ's calibration pool, docs/conventions.md §21), whatever its method, so
// that all runs of a sweep see the same tokens; `max_tokens` cuts that further. A calibrated
// method with float weights is not a run (nothing to quantize) and is left out of the grid.
//
// Parallelism: `jobs` > 1 forks jobs - 1 worker processes (before any OpenMP thread exists) and
// runs one job at a time in this process too; each job gets max(1, cores / jobs) OpenMP threads
// (OpenBLAS follows), so -j 2 on 2 cores runs two single-threaded jobs. Under Open MPI
// (`mpirun -np N lowbit explore --config ...`) every rank is a worker, and rank 0 also owns the
// database: it alone opens it, hands out runs and records the results the others send back;
// each rank gets max(1, cores / ranks on its node) threads.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/plan.hpp"
#include "lowbit/ptq/job.hpp"
#include "lowbit/explore/family.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "lowbit/text/tasks.hpp"

namespace lowbit {

struct sweep_model {
  std::string path;       // resolved
  std::string name;       // what runs record as `model` (default: the path as written)
  std::string tokenizer;  // resolved, "" = the model's own
};

struct sweep_plan {
  std::string weights, acts, kv;  // as written; "" = float
  // A format object's "methods": the labels of the sweep's methods this format runs with
  // (empty: all of them).
  std::vector<std::string> methods;
};

struct sweep_eval {
  int ctx = 0;             // 0 = the model's maximum
  int64_t max_tokens = 0;  // 0 = the whole evaluation half
};

struct sweep_task {
  std::string name;  // metrics task.NAME.*; default: the kind
  std::string text;  // resolved; the stories the task is built from (default: the sweep's data)
  task_build_options build;
};

struct sweep_spread {
  bool enabled = false;
  int formats = 20;
  int64_t budget = 2000, batch = 20;
  uint64_t seed = 0;
};

struct sweep_sqnr {
  std::vector<sweep_plan> formats;  // WEIGHTS[,ACTS]; empty: no SQNR runs
  int windows = 2, ctx = 256;
  std::vector<std::string> densities{"gaussian", "laplace", "student-t:3"};
};

struct sweep_config {
  std::vector<sweep_model> models;
  std::string data;
  std::vector<sweep_plan> formats;
  // Labels runs are recorded under: a method table name, or the "name" of a method object, whose
  // method and options are in method_options[label] ({"method": ..., option: value, ...}).
  std::vector<std::string> methods{"rtn"};
  std::map<std::string, nlohmann::json> method_options;
  std::vector<sweep_task> tasks;
  sweep_spread spread;
  sweep_sqnr sqnr;
  std::vector<sweep_eval> evals{sweep_eval{}};
  bool kl_base = true;
  int calib_samples = 128, calib_ctx = 256;
  uint64_t calib_seed = 0;
  std::string source;  // the file it was read from (for messages)
  // "train": a family of models trained first (explore/family.hpp); "formats" is then optional.
  std::optional<family_config> family;
};

// Reads and validates sweep.json: unknown keys, formats, methods and missing files are refused
// here (lowbit::error naming the file and the entry), before anything runs.
sweep_config load_sweep_config(const std::string& path, const std::string& data_dir);
sweep_config parse_sweep_config(const nlohmann::json& j, const std::string& base_dir,
                                const std::string& data_dir, const std::string& source);
// The quantize job's options of a method object ({"method": ..., option: value}) for `weights`.
ptq::quantize_job_config method_job_config(const nlohmann::json& method_object, const std::string& weights);

// The study at CI size (see `--tiny` above); a family's runs move to work_dir/train-tiny
// (make_family_tiny; the directory of the results store).
void make_tiny(sweep_config& c, const std::string& work_dir);

// One point of the grid, with the config it is recorded under and its hash.
struct sweep_job {
  size_t index = 0;
  std::string kind = "explore";  // "explore" (quantize + evaluate) or "sqnr" (per-layer analysis)
  sweep_model model;
  sweep_plan plan;
  std::string method;
  sweep_eval eval;
  nlohmann::json config;
  std::string hash;
};
// The grid in order (models, then formats, then methods, then eval settings), with the model,
// tokenizer and data files' fingerprints (sweep_fingerprints: path -> file_fingerprint) in each
// job's config. Under MPI rank 0 reads the files once and sends the map to the other ranks.
std::map<std::string, std::string> sweep_fingerprints(const sweep_config& c);
std::vector<sweep_job> expand_sweep(const sweep_config& c, const std::map<std::string, std::string>& fingerprints);
inline std::vector<sweep_job> expand_sweep(const sweep_config& c) { return expand_sweep(c, sweep_fingerprints(c)); }

// Runs jobs in this process; keeps the last model and token stream loaded between jobs.
class sweep_runner {
 public:
  explicit sweep_runner(const sweep_config& c);
  ~sweep_runner();
  run_record run(const sweep_job& job);
  // Recorded as the metric "sweep_worker": the MPI rank, or the worker process (1..j-1; 0 = the
  // coordinator's own thread).
  int worker_id = 0;

 private:
  struct loaded;
  run_record analyse_sqnr(const sweep_job& job);
  void score_tasks(const model& variant, const quant_plan& plan, run_record& rec);
  const sweep_config& config_;
  std::unique_ptr<loaded> cache_;
};

struct sweep_options {
  std::string db = "lowbit.db";
  int jobs = 1;
  int64_t max_runs = -1;  // stop after starting this many runs (-1: all); a resumable partial sweep
  int threads_per_job = 0;  // 0 = max(1, cores / parallel jobs)
};

struct sweep_summary {
  bool coordinator = true;  // false on MPI ranks other than 0 (they print nothing)
  int ranks = 1;
  int64_t total = 0, already = 0, ran = 0;
  std::vector<std::string> failures;  // "job: message"
  std::vector<sweep_job> jobs;        // the whole grid
};

// progress(done, total) over the runs this invocation starts; on_run sees each finished run.
using sweep_progress = std::function<void(int64_t done, int64_t total)>;
using sweep_run_seen = std::function<void(const sweep_job&, const run_record*, const std::string& error)>;

sweep_summary run_sweep(const sweep_config& c, const sweep_options& o, const sweep_progress& progress = {},
                        const sweep_run_seen& on_run = {});

// "int4/g32" / "int8/c,int8/c" / "fp32,-,e4m3fn/c": WEIGHTS[,ACTS[,KV]] ('-' or fp32 = float).
sweep_plan parse_plan_row(const std::string& row);
std::string plan_label(const sweep_plan& p);

}  // namespace lowbit

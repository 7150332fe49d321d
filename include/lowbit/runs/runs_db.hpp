// The results store: every run of eval, quantize, train and explore can record itself in one
// SQLite database (docs/architecture.md "Data flow"). WAL mode, so several
// processes may write at once; a run's config hash makes recording idempotent (a resumed sweep
// skips what is already there and duplicates nothing).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/base/files.hpp"  // file_fingerprint: how a run names its files
#include "lowbit/base/hash.hpp"   // sha256_hex: a run's config hash

namespace lowbit {

struct eval_result;

// One run. The format fields are the parts of the canonical spec that the scaling laws and the
// report need; format_parts() fills them from a spec.
struct run_record {
  int64_t id = 0;               // assigned by the store
  std::string kind;             // "eval" | "quantize" | "train" | "explore" | "synthetic" | ...
  std::string model;            // model file or a name ("train:dim64-l2")
  double n_params = 0;          // N: parameters (non-embedding where the caller says so in config)
  double tokens = 0;            // D: training tokens (train) or evaluated tokens (eval)
  std::string format;           // as the user typed it ("" = float)
  std::string canonical;        // canonical spec
  std::string element;          // element name, e.g. "e4m3fn", "int4"
  int exp_bits = 0, man_bits = 0, bits = 32;  // E, M, total element bits (INT: E=0, M=bits-1)
  int block = 0;                // group size (0 = no groups; -1 channel; -2 tensor)
  std::string scale_format;     // "fp32", "e8m0", ... ("" = none)
  std::string method;           // "rtn", "gptq", "train", ...
  std::string plan;             // weights/acts/kv or training plan as text
  std::map<std::string, double> metrics;  // "nll", "ppl", "val_loss", "sqnr_db", "seconds", ...
  nlohmann::json config;        // the full configuration of the run
  std::string config_hash;      // sha-256 hex of config.dump() unless set by the caller
  std::string revision;         // code revision (git describe) when known
  std::string time;             // ISO-8601 UTC, set by the store when empty
};

// An evaluation's metrics under the store's names: nll, nll_stderr, ppl, ppl_stderr, seconds,
// tokens_per_second, windows, and with a float baseline (has_kl) kl_mean, kl_p99,
// top1_agreement, base_nll, base_ppl, dnll. Callers add what else their run measured.
std::map<std::string, double> eval_metrics(const eval_result& r);

// Fills element/exp_bits/man_bits/bits/block/scale_format/canonical of r from a spec (float
// when empty); throws lowbit::error on an unknown format.
void format_parts(const std::string& spec, run_record& r);

// The sha-256 (hex) of a JSON document's canonical dump (sorted keys).
std::string config_hash(const nlohmann::json& config);

// The hash a run is recorded under: config_hash of `config` without its top-level "paths" object,
// where a run keeps file locations that do not change what it computes (the files themselves
// enter the config as fingerprints), so the same run from another directory is the same run.
std::string run_hash(const nlohmann::json& config);

// A run as one JSON object (the columns, "metrics" as an object with NaN as null) and back: the
// form runs travel in between processes and ranks, and that `lowbit report` writes.
nlohmann::json to_json(const run_record& r);
run_record run_from_json(const nlohmann::json& j);

// The code revision this library was built from (`git describe --always --dirty` at build time),
// or "unknown".
std::string code_revision();

class runs_db {
 public:
  static constexpr int schema_version = 1;
  // Opens or creates the database (`existing`: opens only, for commands that read: report, fit,
  // predict); throws lowbit::error naming the file when it is missing (existing), not a lowbit
  // database or has another schema version. A foreign file is refused before anything is written
  // to it (its journal mode stays as it was).
  enum class access { create, existing };
  explicit runs_db(const std::string& path, access mode = access::create);
  ~runs_db();
  runs_db(const runs_db&) = delete;
  runs_db& operator=(const runs_db&) = delete;

  // True when a run with this config hash is recorded.
  bool has(const std::string& config_hash) const;
  // Records r (config_hash = run_hash(r.config) when empty) and returns its id; a run whose
  // hash is already there is not recorded twice (its existing id is returned).
  int64_t record(run_record r);
  // Runs matching every given field (empty = any), in id order.
  struct filter {
    std::string kind, model, method;
  };
  std::vector<run_record> query(const filter& f) const;
  std::vector<run_record> all() const { return query({}); }
  // The run with this config hash, if recorded.
  std::optional<run_record> find(const std::string& config_hash) const;
  int64_t count() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* db_ = nullptr;  // sqlite3*
};

}  // namespace lowbit

// The results store (runs_db.hpp): one SQLite file, WAL mode, a busy timeout so that several
// processes (explore -j, eval/quantize/train --db at the same time) can write, and a config hash
// with a UNIQUE constraint so that recording the same run twice is a no-op.
//
// Schema version 1:
//   meta(key, value)         application = 'lowbit-runs', schema_version = '1'
//   runs(id, config_hash UNIQUE, kind, model, n_params, tokens, format, canonical, element,
//        exp_bits, man_bits, bits, block, scale_format, method, plan, config (JSON), revision, time)
//   metrics(run_id, name, value)   one row per metric, so plain SQL can filter and join on them
//                                  (a NaN metric is stored as NULL and reads back as NaN)
#include "lowbit/runs/runs_db.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <limits>
#include <map>
#include <vector>

#include <fmt/format.h>

#include "lowbit/engine/eval.hpp"
#include "lowbit/base/hash.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"

#if __has_include("lowbit_revision.hpp")
#include "lowbit_revision.hpp"
#endif
#ifndef LOWBIT_REVISION
#define LOWBIT_REVISION "unknown"
#endif

namespace lowbit {


std::string config_hash(const nlohmann::json& config) {
  // nlohmann::json keeps object keys sorted (std::map), so dump() is canonical.
  return sha256_hex(config.dump());
}

std::string run_hash(const nlohmann::json& config) {
  if (!config.is_object() || !config.contains("paths")) return config_hash(config);
  nlohmann::json identity = config;
  identity.erase("paths");
  return config_hash(identity);
}

nlohmann::json to_json(const run_record& r) {
  nlohmann::json metrics = nlohmann::json::object();
  for (const auto& [k, v] : r.metrics) metrics[k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
  return {{"id", r.id}, {"kind", r.kind}, {"model", r.model}, {"n_params", r.n_params}, {"tokens", r.tokens},
          {"format", r.format}, {"canonical", r.canonical}, {"element", r.element}, {"exp_bits", r.exp_bits},
          {"man_bits", r.man_bits}, {"bits", r.bits}, {"block", r.block}, {"scale_format", r.scale_format},
          {"method", r.method}, {"plan", r.plan}, {"metrics", metrics}, {"config", r.config},
          {"config_hash", r.config_hash}, {"revision", r.revision}, {"time", r.time}};
}

run_record run_from_json(const nlohmann::json& j) {
  run_record r;
  try {
    r.id = j.value("id", int64_t(0));
    r.kind = j.value("kind", ""), r.model = j.value("model", "");
    r.n_params = j.value("n_params", 0.0), r.tokens = j.value("tokens", 0.0);
    r.format = j.value("format", ""), r.canonical = j.value("canonical", ""), r.element = j.value("element", "");
    r.exp_bits = j.value("exp_bits", 0), r.man_bits = j.value("man_bits", 0), r.bits = j.value("bits", 32);
    r.block = j.value("block", 0), r.scale_format = j.value("scale_format", "");
    r.method = j.value("method", ""), r.plan = j.value("plan", "");
    if (j.contains("metrics"))
      for (const auto& [k, v] : j["metrics"].items())
        r.metrics[k] = v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN();
    r.config = j.value("config", nlohmann::json::object());
    r.config_hash = j.value("config_hash", ""), r.revision = j.value("revision", ""), r.time = j.value("time", "");
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("a run record that is not valid: {}", e.what()));
  }
  return r;
}

std::string code_revision() { return LOWBIT_REVISION; }

// ---- metrics and format parts -----------------------------------------------------------------------
std::map<std::string, double> eval_metrics(const eval_result& r) {
  std::map<std::string, double> m = {{"nll", r.mean_nll},          {"nll_stderr", r.nll_stderr},
                                     {"ppl", r.ppl},               {"ppl_stderr", r.ppl_stderr},
                                     {"seconds", r.seconds},       {"tokens_per_second", r.tokens_per_second},
                                     {"windows", double(r.windows)}};
  if (r.has_kl) {
    m["kl_mean"] = r.kl_mean, m["kl_p99"] = r.kl_p99, m["top1_agreement"] = r.top1_agreement;
    m["base_nll"] = r.base_mean_nll, m["base_ppl"] = r.base_ppl, m["dnll"] = r.mean_nll - r.base_mean_nll;
  }
  return m;
}

void format_parts(const std::string& spec, run_record& r) {
  if (spec.empty() || spec == "fp32" || spec == "f32" || spec == "none" || spec == "-") {
    r.canonical = "fp32", r.element = "fp32";
    r.exp_bits = 8, r.man_bits = 23, r.bits = 32, r.block = 0, r.scale_format.clear();
    return;
  }
  const format f = parse_format(spec);
  r.canonical = format_name(f);
  r.element = element_name(f.element);
  r.bits = f.element.bits;
  switch (f.element.kind) {
    case element_kind::minifloat: r.exp_bits = f.element.ebits, r.man_bits = f.element.mbits; break;
    case element_kind::int_sym:
    case element_kind::lut: r.exp_bits = 0, r.man_bits = f.element.bits - 1; break;
    case element_kind::uint_asym: r.exp_bits = 0, r.man_bits = f.element.bits; break;
  }
  switch (f.gran) {
    case granularity::none: r.block = 0; break;
    case granularity::group: r.block = f.group_size; break;
    case granularity::row: r.block = -1; break;
    case granularity::tensor: r.block = -2; break;
  }
  r.scale_format.clear();
  if (f.gran != granularity::none) {
    switch (f.scale.kind) {
      case scale_kind::e8m0: r.scale_format = "e8m0"; break;
      case scale_kind::pow2: r.scale_format = "pow2"; break;
      case scale_kind::element: r.scale_format = element_name(f.scale.element); break;
    }
  }
}

// ---- the store -----------------------------------------------------------------------------------
namespace {

sqlite3* handle(void* p) { return static_cast<sqlite3*>(p); }

// A prepared statement that finalizes itself.
class statement {
 public:
  statement(sqlite3* db, const std::string& path, const char* sql) : db_(db), path_(path) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK) fail("prepare");
  }
  ~statement() { sqlite3_finalize(st_); }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  void bind(int i, const std::string& v) {
    sqlite3_bind_text(st_, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void bind(int i, double v) {
    if (std::isnan(v)) sqlite3_bind_null(st_, i);
    else sqlite3_bind_double(st_, i, v);
  }
  void bind(int i, int64_t v) { sqlite3_bind_int64(st_, i, v); }
  void bind(int i, int v) { sqlite3_bind_int(st_, i, v); }
  // True while there is a row; false when done.
  bool step() {
    const int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("step");
  }
  void reset() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }
  std::string text(int c) const {
    const auto* t = sqlite3_column_text(st_, c);
    return t ? std::string(reinterpret_cast<const char*>(t), size_t(sqlite3_column_bytes(st_, c))) : "";
  }
  double real(int c) const {
    return sqlite3_column_type(st_, c) == SQLITE_NULL ? std::numeric_limits<double>::quiet_NaN()
                                                      : sqlite3_column_double(st_, c);
  }
  int64_t integer(int c) const { return sqlite3_column_int64(st_, c); }

 private:
  [[noreturn]] void fail(const char* what) {
    throw error(fmt::format("{}: results database: {} failed: {}", path_, what, sqlite3_errmsg(db_)));
  }
  sqlite3* db_;
  const std::string& path_;
  sqlite3_stmt* st_ = nullptr;
};

void exec(sqlite3* db, const std::string& path, const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    const std::string m = msg ? msg : sqlite3_errmsg(db);
    sqlite3_free(msg);
    throw error(fmt::format("{}: results database: {}", path, m));
  }
}

constexpr const char* k_schema = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  config_hash TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  model TEXT NOT NULL,
  n_params REAL,
  tokens REAL,
  format TEXT NOT NULL,
  canonical TEXT NOT NULL,
  element TEXT NOT NULL,
  exp_bits INTEGER NOT NULL,
  man_bits INTEGER NOT NULL,
  bits INTEGER NOT NULL,
  block INTEGER NOT NULL,
  scale_format TEXT NOT NULL,
  method TEXT NOT NULL,
  plan TEXT NOT NULL,
  config TEXT NOT NULL,
  revision TEXT NOT NULL,
  time TEXT NOT NULL);
CREATE INDEX runs_kind_model ON runs(kind, model);
CREATE TABLE metrics(
  run_id INTEGER NOT NULL REFERENCES runs(id),
  name TEXT NOT NULL,
  value REAL,
  PRIMARY KEY(run_id, name));
)sql";

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

runs_db::runs_db(const std::string& path, access mode) : path_(path) {
  if (mode == access::existing && !std::filesystem::is_regular_file(path))
    throw error(fmt::format("{}: no results database there (commands with --db record runs into one)", path));
  sqlite3* db = nullptr;
  const int flags = SQLITE_OPEN_READWRITE | (mode == access::create ? SQLITE_OPEN_CREATE : 0);
  if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
    const std::string m = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    throw error(fmt::format("{}: cannot open the results database: {}", path, m));
  }
  db_ = db;
  // The tables of the file, and (when it has any) the check that they are a lowbit results store of
  // this schema version: run on the file as found, before any pragma writes to it, and again
  // inside the write transaction that creates the schema (another writer may have made it).
  auto tables_checked = [&]() {
    std::vector<std::string> tables;
    {
      statement st(db, path_, "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name");
      while (st.step()) tables.push_back(st.text(0));
    }
    if (tables.empty()) return tables;
    std::string app, version;
    if (std::find(tables.begin(), tables.end(), "meta") != tables.end()) {
      statement st(db, path_, "SELECT key, value FROM meta WHERE key IN ('application', 'schema_version')");
      while (st.step()) (st.text(0) == "application" ? app : version) = st.text(1);
    }
    if (app != "lowbit-runs") {
      std::string names;
      for (size_t i = 0; i < tables.size() && i < 5; ++i) names += (i ? ", " : "") + tables[i];
      throw error(fmt::format("{}: an SQLite database but not a lowbit results database (tables: {}); "
                              "give --db a new file name or an existing lowbit database", path, names));
    }
    if (version != std::to_string(schema_version))
      throw error(fmt::format("{}: results database of schema version {}, but this lowbit reads schema "
                              "version {}; use a new --db file (or the lowbit that wrote it)",
                              path, version.empty() ? "(none)" : version, schema_version));
    return tables;
  };
  try {
    // Writers wait for each other (explore -j, several --db commands at once) instead of failing.
    sqlite3_busy_timeout(db, 120000);
    {
      // The first read of the header: a file that is not SQLite fails here with SQLITE_NOTADB.
      sqlite3_stmt* st = nullptr;
      int rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, nullptr);
      if (rc == SQLITE_OK) rc = sqlite3_step(st);
      sqlite3_finalize(st);
      if (rc == SQLITE_NOTADB)
        throw error(fmt::format("{}: not a lowbit results database (not an SQLite file at all); "
                                "give --db a new file name or an existing lowbit database", path));
      if (rc != SQLITE_ROW)
        throw error(fmt::format("{}: cannot read the results database: {}", path, sqlite3_errmsg(db)));
    }
    tables_checked();
    exec(db, path, "PRAGMA journal_mode=WAL");
    exec(db, path, "PRAGMA synchronous=NORMAL");  // WAL: durable at checkpoints, consistent always
    exec(db, path, "PRAGMA foreign_keys=ON");
    // One writer creates the schema; the others wait and then find it.
    exec(db, path, "BEGIN IMMEDIATE");
    try {
      if (tables_checked().empty()) {
        exec(db, path, k_schema);
        statement ins(db, path_, "INSERT INTO meta(key, value) VALUES (?1, ?2)");
        ins.bind(1, std::string("application")), ins.bind(2, std::string("lowbit-runs")), ins.step(), ins.reset();
        ins.bind(1, std::string("schema_version")), ins.bind(2, std::to_string(schema_version)), ins.step();
      }
      exec(db, path, "COMMIT");
    } catch (...) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  } catch (...) {
    sqlite3_close(db);
    db_ = nullptr;
    throw;
  }
}

runs_db::~runs_db() {
  if (db_) sqlite3_close(handle(db_));
}

bool runs_db::has(const std::string& hash) const {
  statement st(handle(db_), path_, "SELECT 1 FROM runs WHERE config_hash = ?1");
  st.bind(1, hash);
  return st.step();
}

int64_t runs_db::count() const {
  statement st(handle(db_), path_, "SELECT count(*) FROM runs");
  st.step();
  return st.integer(0);
}

int64_t runs_db::record(run_record r) {
  sqlite3* db = handle(db_);
  if (r.config_hash.empty()) r.config_hash = run_hash(r.config);  // file locations left out
  if (r.time.empty()) r.time = utc_now();
  if (r.revision.empty()) r.revision = code_revision();
  // IMMEDIATE takes the write lock up front: with WAL, a deferred transaction that reads and then
  // writes can fail with SQLITE_BUSY instead of waiting.
  exec(db, path_, "BEGIN IMMEDIATE");
  try {
    int64_t id = 0;
    {  // already recorded: the first record stands (and no id is used up)
      statement st(db, path_, "SELECT id FROM runs WHERE config_hash = ?1");
      st.bind(1, r.config_hash);
      if (st.step()) id = st.integer(0);
    }
    if (id > 0) {
      exec(db, path_, "COMMIT");
      return id;
    }
    {
      statement ins(db, path_,
                    "INSERT INTO runs(config_hash, kind, model, n_params, tokens, format, canonical, element, "
                    "exp_bits, man_bits, bits, block, scale_format, method, plan, config, revision, time) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)");
      ins.bind(1, r.config_hash), ins.bind(2, r.kind), ins.bind(3, r.model), ins.bind(4, r.n_params);
      ins.bind(5, r.tokens), ins.bind(6, r.format), ins.bind(7, r.canonical), ins.bind(8, r.element);
      ins.bind(9, r.exp_bits), ins.bind(10, r.man_bits), ins.bind(11, r.bits), ins.bind(12, r.block);
      ins.bind(13, r.scale_format), ins.bind(14, r.method), ins.bind(15, r.plan);
      ins.bind(16, r.config.dump()), ins.bind(17, r.revision), ins.bind(18, r.time);
      ins.step();
    }
    // The SELECT above ran under the write lock, so the hash is new here.
    id = sqlite3_last_insert_rowid(db);
    statement m(db, path_, "INSERT INTO metrics(run_id, name, value) VALUES (?1, ?2, ?3)");
    for (const auto& [name, value] : r.metrics) {
      m.bind(1, id), m.bind(2, name), m.bind(3, value);
      m.step();
      m.reset();
    }
    exec(db, path_, "COMMIT");
    return id;
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

namespace {

constexpr const char* k_select =
    "SELECT id, config_hash, kind, model, n_params, tokens, format, canonical, element, exp_bits, man_bits, "
    "bits, block, scale_format, method, plan, config, revision, time FROM runs ";

run_record read_row(const statement& st, const std::string& path) {
  run_record r;
  r.id = st.integer(0), r.config_hash = st.text(1), r.kind = st.text(2), r.model = st.text(3);
  r.n_params = st.real(4), r.tokens = st.real(5), r.format = st.text(6), r.canonical = st.text(7);
  r.element = st.text(8), r.exp_bits = int(st.integer(9)), r.man_bits = int(st.integer(10));
  r.bits = int(st.integer(11)), r.block = int(st.integer(12)), r.scale_format = st.text(13);
  r.method = st.text(14), r.plan = st.text(15);
  try {
    r.config = nlohmann::json::parse(st.text(16));
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("{}: run {}: config is not JSON: {}", path, r.id, e.what()));
  }
  r.revision = st.text(17), r.time = st.text(18);
  return r;
}

}  // namespace

std::vector<run_record> runs_db::query(const filter& f) const {
  sqlite3* db = handle(db_);
  std::vector<run_record> out;
  // One read transaction: the runs and their metrics come from the same snapshot.
  exec(db, path_, "BEGIN");
  try {
    {
      statement st(db, path_,
                   (std::string(k_select) +
                    "WHERE (?1 = '' OR kind = ?1) AND (?2 = '' OR model = ?2) AND (?3 = '' OR method = ?3) "
                    "ORDER BY id")
                       .c_str());
      st.bind(1, f.kind), st.bind(2, f.model), st.bind(3, f.method);
      while (st.step()) out.push_back(read_row(st, path_));
    }
    if (!out.empty()) {
      std::map<int64_t, size_t> index;
      for (size_t i = 0; i < out.size(); ++i) index[out[i].id] = i;
      statement m(db, path_, "SELECT run_id, name, value FROM metrics WHERE run_id BETWEEN ?1 AND ?2");
      m.bind(1, out.front().id), m.bind(2, out.back().id);
      while (m.step())
        if (auto it = index.find(m.integer(0)); it != index.end()) out[it->second].metrics[m.text(1)] = m.real(2);
    }
    exec(db, path_, "COMMIT");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return out;
}

std::optional<run_record> runs_db::find(const std::string& hash) const {
  sqlite3* db = handle(db_);
  run_record r;
  {
    statement st(db, path_, (std::string(k_select) + "WHERE config_hash = ?1").c_str());
    st.bind(1, hash);
    if (!st.step()) return std::nullopt;
    r = read_row(st, path_);
  }
  statement m(db, path_, "SELECT name, value FROM metrics WHERE run_id = ?1");
  m.bind(1, r.id);
  while (m.step()) r.metrics[m.text(0)] = m.real(1);
  return r;
}

}  // namespace lowbit

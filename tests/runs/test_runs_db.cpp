// The results store: SHA-256 against FIPS 180-2 vectors, format parts, idempotent recording,
// concurrent writers, and the errors for foreign or other-version files.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/runs/runs_db.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

std::string fresh_path(const std::string& name) {
  const fs::path dir = fs::path(testing::TempDir()) / "lowbit_runs_db";
  fs::create_directories(dir);
  const fs::path p = dir / name;
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(p.string() + suffix);
  return p.string();
}

run_record sample_run(int i) {
  run_record r;
  r.kind = "eval";
  r.model = "stories260K";
  r.n_params = 260000;
  r.tokens = 4096;
  r.format = "int4/g32";
  format_parts(r.format, r);
  r.method = "rtn";
  r.plan = "W=int4/g32 A=- KV=-";
  r.metrics = {{"nll", 1.5 + i * 0.01}, {"ppl", std::exp(1.5 + i * 0.01)}};
  r.config = {{"kind", "eval"}, {"i", i}, {"weights", "int4/g32"}};
  return r;
}

std::string error_of(const std::string& path) {
  try {
    runs_db db(path);
  } catch (const lowbit::error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Sha256, Fips180Vectors) {
  // FIPS 180-2 Appendix B.1 ("abc"), B.2 (the 448-bit message), B.3 (one million 'a').
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, PaddingBoundaries) {
  // Lengths around the 55/56 and 63/64 byte padding boundaries (values from Python's hashlib).
  EXPECT_EQ(sha256_hex(std::string(55, 'a')), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(sha256_hex(std::string(56, 'a')), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(sha256_hex(std::string(63, 'a')), "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34");
  EXPECT_EQ(sha256_hex(std::string(64, 'a')), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
  EXPECT_EQ(sha256_hex(std::string(119, 'a')), "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb");
  EXPECT_EQ(sha256_hex(std::string(120, 'a')), "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c");
}

TEST(ConfigHash, IndependentOfKeyOrder) {
  const nlohmann::json a = nlohmann::json::parse(R"({"b": 1, "a": [1, 2], "c": {"y": 1, "x": 2}})");
  const nlohmann::json b = nlohmann::json::parse(R"({"c": {"x": 2, "y": 1}, "a": [1, 2], "b": 1})");
  EXPECT_EQ(config_hash(a), config_hash(b));
  EXPECT_EQ(config_hash(a).size(), 64u);
  EXPECT_NE(config_hash(a), config_hash(nlohmann::json::parse(R"({"b": 2, "a": [1, 2], "c": {"y": 1, "x": 2}})")));
}

TEST(FormatParts, ElementExponentMantissaBlockScale) {
  run_record r;
  format_parts("mxfp4", r);
  EXPECT_EQ(r.canonical, "e2m1/g32:e8m0");
  EXPECT_EQ(r.element, "e2m1");
  EXPECT_EQ(r.exp_bits, 2);
  EXPECT_EQ(r.man_bits, 1);
  EXPECT_EQ(r.bits, 4);
  EXPECT_EQ(r.block, 32);
  EXPECT_EQ(r.scale_format, "e8m0");
  format_parts("fp8_e4m3/c", r);
  EXPECT_EQ(r.canonical, "e4m3fn/c");
  EXPECT_EQ(r.exp_bits, 4);
  EXPECT_EQ(r.man_bits, 3);
  EXPECT_EQ(r.block, -1);
  EXPECT_EQ(r.scale_format, "fp32");
  format_parts("int4/g128", r);
  EXPECT_EQ(r.element, "int4");
  EXPECT_EQ(r.exp_bits, 0);
  EXPECT_EQ(r.man_bits, 3);
  EXPECT_EQ(r.block, 128);
  format_parts("nvfp4", r);
  EXPECT_EQ(r.block, 16);
  EXPECT_EQ(r.scale_format, "e4m3fn");
  format_parts("e3m2", r);  // a plain cast: no groups, no scale
  EXPECT_EQ(r.block, 0);
  EXPECT_EQ(r.scale_format, "");
  format_parts("", r);
  EXPECT_EQ(r.canonical, "fp32");
  EXPECT_EQ(r.bits, 32);
  EXPECT_EQ(r.man_bits, 23);
  EXPECT_THROW(format_parts("int5x", r), lowbit::error);
}

TEST(RunsDb, RecordingIsIdempotentAndReadsBack) {
  const std::string path = fresh_path("idempotent.db");
  runs_db db(path);
  run_record r = sample_run(0);
  r.metrics["sqnr_db"] = std::nan("");  // stored as NULL, read back as NaN
  const int64_t id = db.record(r);
  EXPECT_GT(id, 0);
  EXPECT_TRUE(db.has(config_hash(r.config)));
  // The same config again: the same id, nothing added (even with other metrics).
  run_record again = sample_run(0);
  again.metrics["nll"] = 9;
  EXPECT_EQ(db.record(again), id);
  EXPECT_EQ(db.count(), 1);
  db.record(sample_run(1));
  EXPECT_EQ(db.count(), 2);
  const auto runs = db.all();
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].id, id);
  EXPECT_EQ(runs[0].canonical, "int4/g32");
  EXPECT_EQ(runs[0].block, 32);
  EXPECT_EQ(runs[0].metrics.at("nll"), 1.5);
  EXPECT_TRUE(std::isnan(runs[0].metrics.at("sqnr_db")));
  EXPECT_EQ(runs[0].config, r.config);
  EXPECT_EQ(runs[0].config_hash, config_hash(r.config));
  EXPECT_FALSE(runs[0].time.empty());
  EXPECT_FALSE(runs[0].revision.empty());
  EXPECT_EQ(db.query({"eval", "", "rtn"}).size(), 2u);
  EXPECT_EQ(db.query({"train", "", ""}).size(), 0u);
  ASSERT_TRUE(db.find(runs[1].config_hash).has_value());
  EXPECT_EQ(db.find(runs[1].config_hash)->metrics.at("nll"), 1.51);
  EXPECT_FALSE(db.find("0000").has_value());
  // A caller's own hash is kept.
  run_record own = sample_run(2);
  own.config_hash = "caller-chosen";
  db.record(own);
  EXPECT_TRUE(db.has("caller-chosen"));
}

TEST(RunsDb, ReopenedDatabaseKeepsItsRuns) {
  const std::string path = fresh_path("reopen.db");
  { runs_db db(path); db.record(sample_run(0)); }
  runs_db db(path);
  EXPECT_EQ(db.count(), 1);
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "wal");
  sqlite3_finalize(st);
  sqlite3_close(raw);
}

TEST(RunsDb, ConcurrentProcessesLoseNothing) {
  const std::string path = fresh_path("concurrent.db");
  { runs_db db(path); }  // schema exists before the writers start (they would also race safely)
  constexpr int procs = 4, per_proc = 40, shared = 10;
  std::vector<pid_t> kids;
  for (int p = 0; p < procs; ++p) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int code = 0;
      try {
        runs_db db(path);
        for (int i = 0; i < per_proc; ++i) db.record(sample_run(1000 + p * per_proc + i));  // own runs
        for (int i = 0; i < shared; ++i) db.record(sample_run(i));  // the same runs in every process
      } catch (const std::exception& e) {
        std::fprintf(stderr, "writer %d: %s\n", p, e.what());
        code = 1;
      }
      _exit(code);
    }
    kids.push_back(pid);
  }
  for (pid_t k : kids) {
    int status = 0;
    waitpid(k, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  runs_db db(path);
  EXPECT_EQ(db.count(), procs * per_proc + shared);
  const auto runs = db.all();
  std::set<std::string> hashes;
  for (const auto& r : runs) {
    hashes.insert(r.config_hash);
    EXPECT_EQ(r.metrics.size(), 2u) << r.id;
  }
  EXPECT_EQ(hashes.size(), runs.size());
}

TEST(RunsDb, OtherSchemaVersionIsAClearError) {
  const std::string path = fresh_path("version.db");
  { runs_db db(path); db.record(sample_run(0)); }
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(raw, "UPDATE meta SET value = '7' WHERE key = 'schema_version'", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(raw);
  const std::string msg = error_of(path);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("schema version 7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("version 1"), std::string::npos) << msg;
}

TEST(RunsDb, ForeignFilesAreRefusedNamingThem) {
  const std::string text = fresh_path("not_a_db.txt");
  std::ofstream(text) << "Once upon a time there was a text file that was not a database at all.\n";
  std::string msg = error_of(text);
  EXPECT_NE(msg.find(text), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a lowbit results database"), std::string::npos) << msg;
  // The file is left as it was.
  std::ifstream in(text);
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first.rfind("Once upon a time", 0), 0u);

  const std::string other = fresh_path("other_app.db");
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &raw), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(raw, "CREATE TABLE users(name TEXT)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(raw);
  msg = error_of(other);
  EXPECT_NE(msg.find(other), std::string::npos) << msg;
  EXPECT_NE(msg.find("users"), std::string::npos) << msg;

  msg = error_of("/nonexistent-dir/runs.db");
  EXPECT_NE(msg.find("/nonexistent-dir/runs.db"), std::string::npos) << msg;
}

// Another program's SQLite file is refused before lowbit writes anything to it: its journal mode
// stays as it was (before, the WAL pragma ran first and switched it); and a command that only
// reads (report, fit, predict: access::existing) refuses a missing file instead of creating one.
TEST(RunsDb, ForeignFilesKeepTheirJournalModeAndReadersCreateNothing) {
  const std::string other = fresh_path("journal_kept.db");
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &raw), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(raw, "CREATE TABLE users(name TEXT)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(raw);
  EXPECT_NE(error_of(other).find("users"), std::string::npos);
  ASSERT_EQ(sqlite3_open(other.c_str(), &raw), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "delete");
  sqlite3_finalize(st);
  sqlite3_close(raw);
  EXPECT_FALSE(fs::exists(other + "-wal"));

  const std::string missing = fresh_path("never_created.db");
  try {
    runs_db db(missing, runs_db::access::existing);
    ADD_FAILURE() << "opened a missing database";
  } catch (const lowbit::error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(missing));
  { runs_db db(missing); db.record(sample_run(1)); }  // the default creates it
  runs_db again(missing, runs_db::access::existing);
  EXPECT_EQ(again.count(), 1);
}

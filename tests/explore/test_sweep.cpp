// Sweeps: sweep.json validation before anything runs, the grid, parallel workers, and a sweep
// stopped midway that resumes with the rest and duplicates nothing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "lowbit/explore/sweep.hpp"
#include "tests/cli_run.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

// Every shipped file test_explore's tests read (tests/data.hpp): a missing one fails the run, listed.
LOWBIT_TEST_NEEDS_DATA("test_explore", {"llama2c/stories260K.bin", "llama2c/tok512.bin", "text/tinystories_val_sample.txt"});

namespace {

const std::string data_dir = lowbit_test::data_dir();

std::string fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / "lowbit_sweep" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

// A small grid on stories260K: 3 formats x rtn, 128-token windows over 512 tokens.
nlohmann::json small_sweep() {
  return nlohmann::json::parse(R"({
    "models": ["${LOWBIT_DATA_DIR}/llama2c/stories260K.bin"],
    "data": "${LOWBIT_DATA_DIR}/text/tinystories_val_sample.txt",
    "formats": ["fp32", "int4/g32", "int8/c,int8/c"],
    "eval": {"ctx": 128, "max_tokens": 512},
    "kl_base": false})");
}

std::string refusal(const nlohmann::json& j) {
  try {
    parse_sweep_config(j, "", data_dir, "sweep.json");
  } catch (const lowbit::error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// First in this file: forking workers is safest before this process has run OpenMP anywhere.
TEST(Sweep, ParallelWorkersRecordEveryRunOnce) {
  const std::string dir = fresh_dir("parallel");
  nlohmann::json j = small_sweep();
  j["formats"] = {"fp32", "int4/g32", "int8/c,int8/c", "e2m1/g32", "mxfp4"};
  const sweep_config c = parse_sweep_config(j, dir, data_dir, "sweep.json");
  sweep_options o;
  o.db = dir + "/runs.db";
  o.jobs = 3;  // two forked workers and a thread of this process
  int64_t last_done = -1, seen = 0;
  const sweep_summary s = run_sweep(
      c, o, [&](int64_t d, int64_t) { last_done = d; },
      [&](const sweep_job&, const run_record* r, const std::string& err) {
        EXPECT_NE(r, nullptr) << err;
        ++seen;
      });
  EXPECT_TRUE(s.failures.empty()) << s.failures.front();
  EXPECT_EQ(s.total, 5);
  EXPECT_EQ(s.ran, 5);
  EXPECT_EQ(seen, 5);
  EXPECT_EQ(last_done, 5);
  runs_db db(o.db);
  EXPECT_EQ(db.count(), 5);
  std::set<double> workers;  // the first runs go to the forked workers 1 and 2
  for (const auto& r : db.all()) workers.insert(r.metrics.at("sweep_worker"));
  EXPECT_TRUE(workers.count(1) && workers.count(2));
  for (const auto& job : s.jobs) {
    const auto r = db.find(job.hash);
    ASSERT_TRUE(r.has_value()) << plan_label(job.plan);
    EXPECT_EQ(r->kind, "explore");
    EXPECT_EQ(r->model, "stories260K");
    EXPECT_EQ(r->tokens, 508);  // 4 windows of 128 tokens, 127 predictions each
    EXPECT_GT(r->n_params, 2e5);
    EXPECT_GT(r->metrics.at("nll"), 1.0);
  }
  // The float run is the float model; 4-bit weights lose something.
  EXPECT_LT(db.find(s.jobs[0].hash)->metrics.at("nll"), db.find(s.jobs[1].hash)->metrics.at("nll"));
}

// -j is capped at the runs still to do (and a few per core): a one-run sweep with -j 50 forks no
// worker, so its run is this process's own (sweep_worker 0).
TEST(Sweep, WorkersAreCappedAtThePendingRuns) {
  const std::string dir = fresh_dir("capped");
  nlohmann::json j = small_sweep();
  j["formats"] = {"int4/g32"};
  const sweep_config c = parse_sweep_config(j, dir, data_dir, "sweep.json");
  sweep_options o;
  o.db = dir + "/runs.db";
  o.jobs = 50;
  const sweep_summary s = run_sweep(c, o);
  EXPECT_TRUE(s.failures.empty()) << s.failures.front();
  ASSERT_EQ(s.ran, 1);
  runs_db db(o.db);
  ASSERT_EQ(db.count(), 1);
  EXPECT_EQ(db.all().front().metrics.at("sweep_worker"), 0.0);
}

TEST(Sweep, StoppedSweepResumesWithTheRestAndNoDuplicates) {
  const std::string dir = fresh_dir("resume");
  const sweep_config c = parse_sweep_config(small_sweep(), dir, data_dir, "sweep.json");
  sweep_options o;
  o.db = dir + "/runs.db";
  o.max_runs = 2;  // as if killed after two runs
  sweep_summary s = run_sweep(c, o);
  EXPECT_EQ(s.total, 3);
  EXPECT_EQ(s.ran, 2);
  EXPECT_EQ(runs_db(o.db).count(), 2);
  o.max_runs = -1;
  s = run_sweep(c, o);
  EXPECT_EQ(s.already, 2);
  EXPECT_EQ(s.ran, 1);
  s = run_sweep(c, o);  // nothing left
  EXPECT_EQ(s.already, 3);
  EXPECT_EQ(s.ran, 0);
  runs_db db(o.db);
  const auto runs = db.all();
  ASSERT_EQ(runs.size(), 3u);
  std::set<std::string> hashes;
  for (const auto& r : runs) hashes.insert(r.config_hash);
  EXPECT_EQ(hashes.size(), 3u);
  // The grid's order: the resumed run is the third one.
  EXPECT_EQ(runs[2].config_hash, s.jobs[2].hash);
  EXPECT_EQ(runs[2].plan, "W=int8/c A=int8/c KV=-");
}

TEST(Sweep, GridSkipsCalibratedFloatAndDeduplicatesAliases) {
  nlohmann::json j = small_sweep();
  j["formats"] = {"fp32", "fp8_e4m3/c", "e4m3fn/c", {{"weights", "int4/g32"}, {"acts", "int8/c"}}};
  j["methods"] = {"rtn", "gptq"};
  j["eval"] = nlohmann::json::array({{{"ctx", 64}}, {{"ctx", 128}}});
  const sweep_config c = parse_sweep_config(j, "", data_dir, "sweep.json");
  const auto jobs = expand_sweep(c);
  // fp32: rtn only (x2 evals); fp8_e4m3/c = e4m3fn/c: one set of 2 methods x 2 evals; int4/g32,int8/c: 4.
  EXPECT_EQ(jobs.size(), 2u + 4u + 4u);
  EXPECT_EQ(jobs[2].config["weights"], "e4m3fn/c");
  EXPECT_EQ(jobs.back().config["acts"], "int8/c");
  EXPECT_TRUE(jobs.back().config.contains("calibration"));
  // Paths are not part of the identity: the same run from another directory hashes the same.
  nlohmann::json moved = jobs[0].config;
  moved["paths"]["model"] = "/somewhere/else/stories260K.bin";
  EXPECT_EQ(run_hash(moved), jobs[0].hash);
}

TEST(Sweep, BadConfigurationsAreRefusedBeforeAnythingRuns) {
  nlohmann::json j = small_sweep();
  j["formats"] = {"int4/g32", "int5x"};
  std::string msg = refusal(j);
  EXPECT_NE(msg.find("sweep.json: formats[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("int5x"), std::string::npos) << msg;
  j = small_sweep();
  j["formats"] = {"int4/g32,e4m3fn/c,int8/c,int2"};
  EXPECT_NE(refusal(j).find("formats[0]"), std::string::npos);
  j = small_sweep();
  j["methods"] = {"rtn", "gptx"};
  msg = refusal(j);
  EXPECT_NE(msg.find("methods[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gptq"), std::string::npos) << msg;  // says what would work
  j = small_sweep();
  j["format"] = {"int4/g32"};  // a typo of "formats"
  msg = refusal(j);
  EXPECT_NE(msg.find("unknown key 'format'"), std::string::npos) << msg;
  j = small_sweep();
  j["models"] = {"/nonexistent/model.bin"};
  msg = refusal(j);
  EXPECT_NE(msg.find("/nonexistent/model.bin"), std::string::npos) << msg;
  j = small_sweep();
  j.erase("formats");
  EXPECT_NE(refusal(j).find("formats"), std::string::npos);
  j = small_sweep();
  j["models"] = {"${NO_SUCH_VARIABLE_HERE}/m.bin"};
  EXPECT_NE(refusal(j).find("NO_SUCH_VARIABLE_HERE"), std::string::npos);
}

TEST(Sweep, ConfigFileResolvesPathsBesideIt) {
  const std::string dir = fresh_dir("paths");
  fs::copy_file(data_dir + "/llama2c/stories260K.bin", dir + "/m.bin");
  std::ofstream(dir + "/sweep.json") << R"({"models": [{"path": "m.bin", "name": "tiny", "tokenizer": ")" + data_dir +
                                            R"(/llama2c/tok512.bin"}], "formats": ["int4/g32"]})";
  const sweep_config c = load_sweep_config(dir + "/sweep.json", data_dir);
  ASSERT_EQ(c.models.size(), 1u);
  EXPECT_EQ(c.models[0].path, (fs::path(dir) / "m.bin").lexically_normal().string());
  EXPECT_EQ(c.models[0].name, "tiny");
  EXPECT_EQ(c.data, (fs::path(data_dir) / "text/tinystories_val_sample.txt").lexically_normal().string());
  EXPECT_EQ(c.methods, std::vector<std::string>{"rtn"});
  std::ofstream(dir + "/bad.json") << "{\"formats\": [";
  EXPECT_THROW(load_sweep_config(dir + "/bad.json", data_dir), lowbit::error);
}

// Under mpirun: rank 0 fingerprints the files once and hands out the runs; every run is recorded
// once, by one of the ranks. A missing model is refused on every rank (by the configuration's
// checks, before any message passes), with its name, not a hang.
TEST(Sweep, MpiRanksRecordEveryRunOnce) {
  const std::string dir = fresh_dir("mpi");
  nlohmann::json j = small_sweep();
  j["formats"] = {"fp32", "int4/g32", "e2m1/g32", "mxfp4"};
  std::ofstream(dir + "/sweep.json") << j.dump();
  const std::string mpirun = "LOWBIT_DATA_DIR=" + data_dir + " OMP_NUM_THREADS=1 timeout 300 mpirun --allow-run-as-root --oversubscribe -np 2 ";
  const auto r = lowbit::testing::run_command(mpirun + LOWBIT_CLI + " explore --config " + dir +
                                              "/sweep.json --db " + dir + "/runs.db");
  ASSERT_EQ(r.code, 0) << r.out;
  runs_db db(dir + "/runs.db");
  EXPECT_EQ(db.count(), 4);
  std::set<double> workers;
  for (const auto& run : db.all()) workers.insert(run.metrics.at("sweep_worker"));
  EXPECT_EQ(workers.size(), 2u);  // both ranks ran something
  j["models"] = {dir + "/missing.bin"};
  std::ofstream(dir + "/missing.json") << j.dump();
  const auto m = lowbit::testing::run_command(mpirun + LOWBIT_CLI + " explore --config " + dir +
                                              "/missing.json --db " + dir + "/runs2.db");
  EXPECT_NE(m.code, 0);
  EXPECT_NE(m.code, 124) << "timed out: a rank waited";
  EXPECT_NE(m.out.find("missing.bin"), std::string::npos) << m.out;
}

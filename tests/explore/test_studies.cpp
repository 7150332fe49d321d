// Every study (studies/*.json, docs/studies/README.md) runs at CI size (`--tiny`, make_tiny) and
// records every run of its grid, so that no study config rots; and the study extensions of the
// sweep grammar (method objects, tasks, spread, sqnr) are validated before anything runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "lowbit/base/error.hpp"
#include "lowbit/explore/sweep.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

const std::string data_dir = lowbit_test::data_dir();

std::vector<std::string> study_files() {
  std::vector<std::string> files;
  const fs::path dir = fs::path(LOWBIT_SOURCE_DIR) / "studies";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

std::string fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / "lowbit_studies" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

nlohmann::json small_study() {
  return nlohmann::json::parse(R"({
    "models": ["${LOWBIT_DATA_DIR}/llama2c/stories260K.bin"],
    "formats": ["int4/g32"],
    "eval": {"ctx": 128, "max_tokens": 256},
    "calibration": {"samples": 2, "ctx": 64}})");
}

std::string refusal(const nlohmann::json& j) {
  try {
    parse_sweep_config(j, "", data_dir, "study.json");
  } catch (const lowbit::error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

class Study : public ::testing::TestWithParam<std::string> {};

TEST_P(Study, RunsAtTinySizeAndRecordsEveryRun) {
  const std::string path = GetParam();
  sweep_config c = load_sweep_config(path, data_dir);
  const std::string dir = fresh_dir(fs::path(path).stem().string());
  make_tiny(c, dir);
  sweep_options o;
  o.db = dir + "/study.db";
  const sweep_summary s = run_sweep(c, o);
  ASSERT_TRUE(s.failures.empty()) << path << ": " << s.failures.front();
  ASSERT_GT(s.total, 0) << path << ": an empty grid";
  // Every run ran, or was found recorded: at tiny size two entries may become the same run (e.g.
  // GPTQ with 32 and with 128 calibration windows, both cut to 4), which runs once.
  EXPECT_GT(s.ran, 0) << path;
  EXPECT_EQ(s.ran + s.already, s.total) << path << ": ran " << s.ran << ", already " << s.already;
  const runs_db db(o.db);
  for (const sweep_job& j : s.jobs) {
    const auto r = db.find(j.hash);
    ASSERT_TRUE(r.has_value()) << path << ": " << j.model.name << " " << plan_label(j.plan) << " @" << j.method
                               << " not recorded";
    if (j.kind == "sqnr") {
      EXPECT_TRUE(r->metrics.count("w_sqnr_mean") || r->metrics.count("a_sqnr_mean")) << path;
      continue;
    }
    ASSERT_TRUE(r->metrics.count("nll")) << path;
    EXPECT_TRUE(std::isfinite(r->metrics.at("nll"))) << path << ": " << plan_label(j.plan) << " @" << j.method;
    for (const sweep_task& t : c.tasks) EXPECT_TRUE(r->metrics.count("task." + t.name + ".acc")) << path << " " << t.name;
  }
  // Resumable: the same study again runs nothing.
  const sweep_summary again = run_sweep(c, o);
  EXPECT_EQ(again.ran, 0);
  EXPECT_EQ(again.already, s.total);
}

INSTANTIATE_TEST_SUITE_P(Studies, Study, ::testing::ValuesIn(study_files()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = fs::path(info.param).stem().string();
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

TEST(StudyGrammar, TinyCutsAdaRoundToTwentySteps) {
  nlohmann::json j = small_study();
  j["methods"] = {"rtn", "adaround", {{"name", "ada100"}, {"method", "adaround"}, {"adaround_iters", 100}}};
  sweep_config c = parse_sweep_config(j, "", data_dir, "study.json");
  EXPECT_EQ(c.method_options.count("adaround"), 0u);
  make_tiny(c, "");
  EXPECT_EQ(c.method_options.at("adaround"), nlohmann::json({{"method", "adaround"}, {"adaround_iters", 20}}));
  EXPECT_EQ(c.method_options.at("ada100").at("adaround_iters"), 20);
  EXPECT_EQ(c.method_options.count("rtn"), 0u);
}

TEST(StudyGrammar, ThereAreStudies) { EXPECT_FALSE(study_files().empty()) << LOWBIT_SOURCE_DIR << "/studies"; }

TEST(StudyGrammar, BadExtensionsAreRefusedNamingTheEntry) {
  nlohmann::json j = small_study();
  j["methods"] = {"rtn", {{"method", "gptq"}, {"lorc_rank", 8}}};
  std::string msg = refusal(j);
  EXPECT_NE(msg.find("methods[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"name\""), std::string::npos) << msg;
  j["methods"] = {{{"name", "g"}, {"method", "gptq"}, {"lorc_rank", -1}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("--lorc-rank -1"), std::string::npos) << msg;
  j["methods"] = {{{"name", "g"}, {"method", "gptq"}, {"shared_pow2_scales", true}}};  // gptq picks its own scales
  msg = refusal(j);
  EXPECT_NE(msg.find("shared-pow2-scales"), std::string::npos) << msg;
  j["methods"] = {{{"name", "g"}, {"method", "gptq"}, {"lorc_rnak", 8}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("unknown key 'lorc_rnak'"), std::string::npos) << msg;
  j["methods"] = {{{"name", "pow2"}, {"method", "rtn"}, {"shared_pow2_scales", true}}};
  j["formats"] = {"e2m1/g32", "int8/c"};  // the constraint needs group scales: refused for int8/c, per format
  msg = refusal(j);
  EXPECT_NE(msg.find("formats[1] with method 'pow2'"), std::string::npos) << msg;
  j["formats"] = {"e2m1/g32"};
  EXPECT_EQ(refusal(j), "");
  j["methods"] = {"rtn", {{"name", "rtn"}, {"method", "rtn"}, {"lorc_rank", 4}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("a second method named 'rtn'"), std::string::npos) << msg;
  // A method object no format entry runs (float weights; an entry naming other methods).
  j["methods"] = {"rtn", {{"name", "g"}, {"method", "gptq"}, {"lorc_rank", -1}}};
  j["formats"] = {"fp32,int8", {{"weights", "int4/g32"}, {"methods", {"rtn"}}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("method 'g' runs with no format"), std::string::npos) << msg;
  j["formats"][1]["methods"] = {"rtn", "g"};
  msg = refusal(j);
  EXPECT_NE(msg.find("formats[1] with method 'g'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--lorc-rank -1"), std::string::npos) << msg;

  j = small_study();
  j["methods"] = {"rtn", "gptq"};
  j["formats"] = {"int8/c", {{"weights", "int4/g32"}, {"methods", {"gptq", "awq"}}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("formats[1]: method 'awq' is not among"), std::string::npos) << msg;
  j["formats"][1]["methods"] = {"gptq"};  // int8/c with both methods, int4/g32 with GPTQ only
  const auto grid = expand_sweep(parse_sweep_config(j, "", data_dir, "study.json"));
  ASSERT_EQ(grid.size(), 3u);
  EXPECT_EQ(grid[2].plan.weights, "int4/g32");
  EXPECT_EQ(grid[2].method, "gptq");

  j = small_study();
  j["methods"] = {{{"name", "fp4-static"}, {"method", "llmfp4"}, {"act_calibration", "median"}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("methods[0]"), std::string::npos) << msg;
  j["methods"][0]["act_calibration"] = "llmfp4";
  msg = refusal(j);  // int4/g32 has no activation format to calibrate
  EXPECT_NE(msg.find("no activation format to calibrate"), std::string::npos) << msg;
  j["formats"] = {"int4/g32,e2m1/t"};  // a dynamic per-tensor spec, not a bare element
  msg = refusal(j);
  EXPECT_NE(msg.find("act_calibration"), std::string::npos) << msg;
  j["formats"] = {"int4/g32,e2m1"};
  EXPECT_EQ(refusal(j), "");

  j = small_study();
  j["tasks"] = {{{"kind", "endings"}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("tasks[0]"), std::string::npos) << msg;
  j["tasks"] = {{{"kind", "ending"}, {"n", 0}}};
  EXPECT_NE(refusal(j).find("n >= 1"), std::string::npos);
  j = small_study();
  j["spread"] = {{"formats", 5}};
  msg = refusal(j);
  EXPECT_NE(msg.find("needs a task"), std::string::npos) << msg;

  j = small_study();
  j["sqnr"] = {{"formats", {"int8/c,int8/t,int8/c"}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("sqnr.formats[0]"), std::string::npos) << msg;
  j["sqnr"] = {{"formats", {"int8/c"}}, {"densities", {"cauchy"}}};
  msg = refusal(j);
  EXPECT_NE(msg.find("densities[0]"), std::string::npos) << msg;
  j["sqnr"] = {{"formats", {"int8/c"}}, {"window", 2}};
  msg = refusal(j);
  EXPECT_NE(msg.find("unknown key 'window'"), std::string::npos) << msg;
}

// The analysis against independent arithmetic: with the same absmax scale, a grid of 2^12 - 1
// levels has steps 2^4 (4095 / 255 ~ 16.06) times finer than int8's, so its rounding noise
// (~ step^2 / 12) is 20 log10(16.06) = 24.1 dB lower on every site and weight; weights left
// float (-) have no w_sqnr entries.
TEST(StudyGrammar, SqnrAnalysisRecordsEveryLayerAndFinerGridsWin) {
  nlohmann::json j = small_study();
  j["sqnr"] = {{"formats", {"int8/c,int8/t", "int12/c,int12/t", "-,e4m3fn/t"}}, {"windows", 1}, {"ctx", 64},
               {"densities", {"gaussian"}}};
  const sweep_config c = parse_sweep_config(j, "", data_dir, "study.json");
  const std::string dir = fresh_dir("sqnr");
  sweep_options o;
  o.db = dir + "/s.db";
  const sweep_summary s = run_sweep(c, o);
  ASSERT_TRUE(s.failures.empty()) << s.failures.front();
  const runs_db db(o.db);
  std::vector<run_record> runs;
  for (const sweep_job& job : s.jobs)
    if (job.kind == "sqnr") runs.push_back(*db.find(job.hash));
  ASSERT_EQ(runs.size(), 3u);
  int sites = 0, weights = 0;
  for (const auto& [k, v8] : runs[0].metrics) {
    if (k.starts_with("a_sqnr:")) {
      ++sites;
      const double v16 = runs[1].metrics.at(k);
      EXPECT_GT(v16 - v8, 22.5) << k;
      EXPECT_LT(v16 - v8, 25.5) << k;
      EXPECT_TRUE(runs[2].metrics.count(k)) << k;
    }
    if (k.starts_with("w_sqnr:")) {
      ++weights;
      EXPECT_GT(runs[1].metrics.at(k) - v8, 22.5) << k;
      EXPECT_LT(runs[1].metrics.at(k) - v8, 25.5) << k;
    }
  }
  // stories260K: 5 blocks x 4 linear inputs + the classifier's input; 5 x 7 linear weights.
  EXPECT_EQ(sites, 5 * 4 + 1);
  EXPECT_EQ(weights, 5 * 7);
  EXPECT_EQ(std::count_if(runs[2].metrics.begin(), runs[2].metrics.end(),
                          [](const auto& kv) { return kv.first.starts_with("w_sqnr:"); }), 0);
  // The closed form of int8 on a Gaussian with optimal clipping (van Baalen et al. 2023's
  // analysis) is recorded beside it: 40.5 dB (docs/analysis.md §5.1's table); only densities asked for.
  EXPECT_NEAR(runs[0].metrics.at("closed_a:gaussian"), 40.5, 0.1);
  EXPECT_EQ(runs[0].metrics.count("closed_a:laplace"), 0u);
}

TEST(StudyGrammar, TasksAndSpreadAreScoredForEveryRun) {
  nlohmann::json j = small_study();
  j["tasks"] = {{{"kind", "ending"}, {"n", 12}, {"seed", 3}}, {{"kind", "lastword"}, {"n", 8}, {"name", "lw"}}};
  j["spread"] = {{"formats", 3}, {"budget", 24}, {"batch", 4}};
  const sweep_config c = parse_sweep_config(j, "", data_dir, "study.json");
  const std::string dir = fresh_dir("tasks");
  sweep_options o;
  o.db = dir + "/t.db";
  const sweep_summary s = run_sweep(c, o);
  ASSERT_TRUE(s.failures.empty()) << s.failures.front();
  ASSERT_EQ(s.jobs.size(), 1u);
  const run_record r = *runs_db(o.db).find(s.jobs[0].hash);
  const double acc = r.metrics.at("task.ending.acc");
  EXPECT_GE(acc, 0);
  EXPECT_LE(acc, 1);
  // acc is a count over 12 items
  EXPECT_NEAR(acc * 12, std::round(acc * 12), 1e-9);
  EXPECT_TRUE(r.metrics.count("task.lw.acc"));
  EXPECT_TRUE(r.metrics.count("task.lw.mean_loglik"));
  EXPECT_GE(r.metrics.at("spread.ending"), 0);
  // The original format's accuracy lies between the worst and the best format's.
  EXPECT_LE(r.metrics.at("spread.ending.worst_acc"), r.metrics.at("spread.ending.original_acc"));
  EXPECT_LE(r.metrics.at("spread.ending.original_acc"), r.metrics.at("spread.ending.best_acc"));
  // The task settings are part of the run's identity: another seed is another run.
  j["tasks"][0]["seed"] = 4;
  const sweep_config c2 = parse_sweep_config(j, "", data_dir, "study.json");
  EXPECT_NE(expand_sweep(c2)[0].hash, s.jobs[0].hash);
}

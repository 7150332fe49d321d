// Trained families (explore/family.hpp): the "train" section's grammar and refusals, and a tiny
// family trained, recorded, found again without retraining, resumed from its checkpoint, and its
// PTQ evaluated on the held-out text with the flatness feature.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/explore/family.hpp"
#include "lowbit/explore/sweep.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

const std::string data_dir = lowbit_test::data_dir();

nlohmann::json section() {
  return nlohmann::json::parse(R"({
    "dir": "runs",
    "settings": {"data": "${LOWBIT_DATA_DIR}/text/tinyshakespeare.txt", "tokenizer": "bytes",
                 "ctx": 32, "batch": 4, "lr": 3e-3, "val_batches": 1, "seed": 1},
    "members": {"a": {"dim": 32, "layers": 1, "heads": 2}, "b": {"dim": 48, "layers": 2, "heads": 2}},
    "grids": [{"members": ["a", "b"], "steps": [4, 8], "plans": ["fp32"]},
              {"members": ["a"], "steps": [4], "plans": ["fp32", "x=e2m1/g32"], "seeds": [1, 2]}]})");
}

std::string refusal(const nlohmann::json& t) {
  try {
    parse_family_config(t, "/base", data_dir, "study.json");
  } catch (const lowbit::error& e) {
    return e.what();
  }
  return "";
}

std::string fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / "lowbit_family" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

}  // namespace

TEST(FamilyConfig, GridsExpandInOrderWithoutDuplicates) {
  const family_config f = parse_family_config(section(), "/base", data_dir, "study.json");
  // 2 members x 2 budgets, then a's fp32/e2m1 at seeds 1 and 2 (a-s4-fp32-seed1 is the first grid's).
  std::vector<std::string> names;
  for (const auto& r : f.runs) names.push_back(r.name);
  const std::vector<std::string> want = {"a-s4-fp32-seed1",      "a-s8-fp32-seed1",       "b-s4-fp32-seed1",
                                         "b-s8-fp32-seed1",      "a-s4-x_e2m1_g32-seed1", "a-s4-fp32-seed2",
                                         "a-s4-x_e2m1_g32-seed2"};
  EXPECT_EQ(names, want);
  EXPECT_EQ(f.dir, "/base/runs");
  const family_run& b8 = f.runs[3];
  EXPECT_EQ(b8.cfg.dim, 48);
  EXPECT_EQ(b8.cfg.n_layers, 2);
  EXPECT_EQ(b8.cfg.steps, 8);
  EXPECT_EQ(b8.cfg.eval_every, 4);  // validates twice
  EXPECT_EQ(b8.cfg.out_dir, "/base/runs/b-s8-fp32-seed1");
  EXPECT_EQ(b8.cfg.data_path, data_dir + "/text/tinyshakespeare.txt");
  EXPECT_EQ(f.runs[6].cfg.seed, 2u);
  EXPECT_EQ(f.runs[6].cfg.plan, "x=e2m1/g32");
}

TEST(FamilyConfig, RefusesWhatItCannotRun) {
  auto t = section();
  t["grids"][0]["members"] = {"a", "c"};
  EXPECT_NE(refusal(t).find("member 'c'"), std::string::npos) << refusal(t);
  t = section();
  t["grids"][1]["plans"] = {"x=e9m9/g32"};
  EXPECT_NE(refusal(t).find("e9m9"), std::string::npos) << refusal(t);
  t = section();
  t["grids"][0]["stepz"] = {4};
  EXPECT_NE(refusal(t).find("unknown key 'stepz'"), std::string::npos) << refusal(t);
  t = section();
  t["settings"]["steps"] = 4;
  EXPECT_NE(refusal(t).find("'steps' is set per run"), std::string::npos) << refusal(t);
  t = section();
  t["grids"].push_back({{"init", "z-s4-fp32-seed1"}, {"steps", {2}}, {"plans", {"qat:int4/g32"}}});
  EXPECT_NE(refusal(t).find("not a run of an earlier grid"), std::string::npos) << refusal(t);
  t = section();
  t["ptq"] = {{{"runs", {"nothing-*"}}, {"formats", {"int4/g32"}}}};
  EXPECT_NE(refusal(t).find("matches no run"), std::string::npos) << refusal(t);
  t = section();
  t["ptq"] = {{{"runs", {"*"}}, {"formats", {"int4/q32"}}}};
  EXPECT_NE(refusal(t).find("int4/q32"), std::string::npos) << refusal(t);
  t = section();
  t["ptq"] = {{{"runs", {"*"}}, {"formats", {"int4/g32"}}, {"methods", {"gptqq"}}}};
  EXPECT_NE(refusal(t).find("gptqq"), std::string::npos) << refusal(t);
}

TEST(FamilyConfig, IncludeKeepsTheMatchingRunsAndTheirStarts) {
  const std::string dir = fresh_dir("include");
  auto fam = section();
  fam["grids"].push_back({{"init", "b-s8-fp32-seed1"}, {"steps", {2}}, {"plans", {"qat:int4/g32"}}});
  {
    std::ofstream(dir + "/family.json") << nlohmann::json{{"train", fam}}.dump();
  }
  const nlohmann::json t = {{"include", "family.json"}, {"runs", {"*.ft-*"}}};
  const family_config f = parse_family_config(t, dir, data_dir, "study.json");
  ASSERT_EQ(f.runs.size(), 2u);
  EXPECT_EQ(f.runs[0].name, "b-s8-fp32-seed1");  // the start, trained first
  EXPECT_EQ(f.runs[1].name, "b-s8-fp32-seed1.ft-s2-qat_int4_g32-seed1");
  EXPECT_EQ(f.runs[1].cfg.init, (fs::path(dir) / "runs/b-s8-fp32-seed1/model.safetensors").string());
  EXPECT_EQ(f.runs[1].given.count("dim"), 0u);  // the start's architecture
  EXPECT_EQ(f.dir, (fs::path(dir) / "runs").string());
  EXPECT_NE(refusal({{"include", dir + "/family.json"}, {"runs", {"q-*"}}}).find("matches no run"), std::string::npos);
}

TEST(FamilyConfig, Wildcards) {
  EXPECT_TRUE(family_name_matches("*", "a-s4-fp32-seed1"));
  EXPECT_TRUE(family_name_matches("a-s*-fp32-seed1", "a-s128-fp32-seed1"));
  EXPECT_TRUE(family_name_matches("*-fp32-*", "a-s4-fp32-seed2"));
  EXPECT_FALSE(family_name_matches("*-fp32-*", "a-s4-x_e2m1_g32-seed2"));
  EXPECT_FALSE(family_name_matches("a-s4", "a-s4-fp32-seed1"));
  EXPECT_FALSE(family_name_matches("a-s4-fp32-seed1", "a-s4"));
  EXPECT_TRUE(family_name_matches("?-s4-*", "b-s4-fp32-seed1"));  // glob_match's '?'
  EXPECT_FALSE(family_name_matches("*", "a.b"));
  EXPECT_TRUE(family_name_matches("*.*", "a.b"));
  EXPECT_FALSE(family_name_matches("*.*", "a"));
  EXPECT_FALSE(family_name_matches("a.*", "a.b.c"));
  EXPECT_TRUE(family_name_matches("a*b*c", "aXbYbZc"));
  EXPECT_FALSE(family_name_matches("a*b*c", "aXbYbZ"));
  // '*' stops at '.': a pattern for the runs from scratch does not take their fine-tunings.
  EXPECT_FALSE(family_name_matches("a-s*-fp32-seed1", "a-s4-fp32-seed1.ft-s2-fp32-seed1"));
  EXPECT_TRUE(family_name_matches("a-s4-fp32-seed1.ft-*", "a-s4-fp32-seed1.ft-s2-fp32-seed1"));
  EXPECT_TRUE(family_name_matches("*.ft-*-fp32-*", "a-s4-fp32-seed1.ft-s2-fp32-seed1"));
}

TEST(Family, TrainsRecordsFindsAndResumes) {
  ASSERT_TRUE(lowbit_test::have_data(data_dir + "/text/tinyshakespeare.txt"));
  const std::string dir = fresh_dir("run");
  auto t = section();
  t["grids"] = {{{"members", {"a"}}, {"steps", {6}}, {"plans", {"fp32"}}},
                {{"init", "a-s6-fp32-seed1"}, {"steps", {2}}, {"plans", {"qat:int4/g32"}}}};
  t["ptq"] = {{{"runs", {"*", "*.*"}}, {"formats", {"int4/g32"}}, {"methods", {"rtn", "gptq"}}, {"max_tokens", 128},
               {"flatness", 2}, {"calibration", {{"samples", 4}, {"ctx", 32}}}}};
  const family_config f = parse_family_config(t, dir, data_dir, "study.json");
  const std::string db_path = dir + "/study.db";
  const family_summary s = run_family(f, db_path);
  ASSERT_TRUE(s.failures.empty()) << s.failures.front();
  EXPECT_EQ(s.trained, 2);
  EXPECT_EQ(s.found, 0);
  // Each run: the float model, int4/g32 RTN and GPTQ.
  EXPECT_EQ(s.ptq_total, 6);
  EXPECT_EQ(s.ptq_ran, 6);
  for (const auto& r : f.runs) EXPECT_TRUE(fs::exists(fs::path(r.cfg.out_dir) / "result.json")) << r.name;

  const runs_db db(db_path);
  const auto runs = db.all();
  int train = 0, finetune = 0, quantized = 0;
  std::map<std::string, double> flatness_of;  // per run (model "family:NAME")
  for (const auto& r : runs) {
    if (r.kind == "train" && r.method == "train") {
      ++train;
      EXPECT_EQ(r.tokens, 6.0 * 4 * 32);  // D = steps x batch x ctx
      EXPECT_GT(r.n_params, 0);
      EXPECT_GT(r.metrics.at("val_loss"), 0);
    } else if (r.kind == "train") {
      ++finetune;
      EXPECT_EQ(r.method, "finetune");
    } else if (r.kind == "explore" && r.format == "int4/g32") {
      ++quantized;
      EXPECT_TRUE(std::isfinite(r.metrics.at("base_nll")));
      EXPECT_GT(r.metrics.at("sqnr_db"), 10);
      // Flatness: a perturbation at int4's SQNR raises the NLL of a model this undertrained by
      // little, but it is measured (a finite number with a spread over the two draws).
      EXPECT_TRUE(std::isfinite(r.metrics.at("flatness")));
      EXPECT_TRUE(std::isfinite(r.metrics.at("flatness_stderr")));
      // A property of the model and the format, not the method: RTN's and GPTQ's the same.
      const auto [it, first] = flatness_of.emplace(r.model, r.metrics.at("flatness"));
      if (!first) {
        EXPECT_EQ(it->second, r.metrics.at("flatness")) << r.model;
      }
    }
  }
  EXPECT_EQ(train, 1);
  EXPECT_EQ(finetune, 1);
  EXPECT_EQ(quantized, 4);
  const size_t recorded = runs.size();

  // Again: nothing trains or evaluates, nothing is recorded twice.
  const family_summary again = run_family(f, db_path);
  EXPECT_EQ(again.trained, 0);
  EXPECT_EQ(again.found, 2);
  EXPECT_EQ(again.ptq_ran, 0);
  EXPECT_EQ(runs_db(db_path).all().size(), recorded);

  // A run killed after its last checkpoint (no result file): resumed, not retrained; the same
  // record (the same hash), so still nothing new in the store.
  const fs::path first = f.runs[0].cfg.out_dir;
  std::ifstream in(first / "result.json");
  const nlohmann::json before = nlohmann::json::parse(in);
  in.close();
  fs::remove(first / "result.json");
  const family_summary resumed = run_family(f, db_path);
  EXPECT_EQ(resumed.trained, 1);
  std::ifstream in2(first / "result.json");
  const nlohmann::json after = nlohmann::json::parse(in2);
  EXPECT_EQ(after["resumed_from"], 6);
  EXPECT_EQ(after["val_loss"], before["val_loss"]);
  EXPECT_EQ(runs_db(db_path).all().size(), recorded);
}

TEST(Family, TinyTrainsEachPlanOnceAndOneFineTuning) {
  auto t = section();
  t["grids"].push_back({{"init", "b-s8-fp32-seed1"}, {"steps", {20}}, {"plans", {"qat:int4/g32"}}});
  t["ptq"] = {{{"runs", {"b-*"}}, {"formats", {"int4/g32", "int3/g32"}}, {"methods", {"rtn", "gptq"}}, {"flatness", 3}}};
  family_config f = parse_family_config(t, "/base", data_dir, "study.json");
  make_family_tiny(f, "/work");
  ASSERT_EQ(f.runs.size(), 3u);
  EXPECT_EQ(f.runs[0].name, "a-s4-fp32-seed1");
  EXPECT_EQ(f.runs[1].name, "a-s4-x_e2m1_g32-seed1");  // the other plan, once
  EXPECT_EQ(f.runs[2].name, "a-s4-fp32-seed1.ft-s20-qat_int4_g32-seed1");
  EXPECT_EQ(f.runs[2].cfg.init, "/work/train-tiny/a-s4-fp32-seed1/model.safetensors");
  EXPECT_EQ(f.runs[0].cfg.steps, 12);
  EXPECT_EQ(f.runs[0].cfg.out_dir, "/work/train-tiny/a-s4-fp32-seed1");
  ASSERT_EQ(f.ptq.size(), 1u);
  EXPECT_EQ(f.ptq[0].runs, std::vector<std::string>{"a-s4-fp32-seed1"});  // "b-*" is not kept
  EXPECT_EQ(f.ptq[0].formats.size(), 1u);
  EXPECT_EQ(f.ptq[0].flatness, 1);
}

TEST(Family, SweepWithOnlyATrainSection) {
  const std::string dir = fresh_dir("sweep");
  auto t = section();
  t["grids"] = {{{"members", {"a"}}, {"steps", {4}}, {"plans", {"fp32"}}}};
  t["dir"] = dir + "/runs";
  sweep_config c = parse_sweep_config({{"train", t}}, dir, data_dir, "study.json");
  ASSERT_TRUE(c.family.has_value());
  EXPECT_TRUE(c.formats.empty());
  sweep_options o;
  o.db = dir + "/study.db";
  const sweep_summary s = run_sweep(c, o);
  ASSERT_TRUE(s.failures.empty()) << s.failures.front();
  EXPECT_EQ(s.total, 1);
  EXPECT_EQ(s.ran, 1);
  EXPECT_EQ(runs_db(o.db).all().size(), 1u);
  // Without a train section, formats stay required.
  EXPECT_THROW(parse_sweep_config(nlohmann::json::object(), dir, data_dir, "study.json"), lowbit::error);
}

TEST(Family, ARunThatFailsCountsItsEvaluationsAsFailedAndProgressCountsTheFamily) {
  ASSERT_TRUE(lowbit_test::have_data(data_dir + "/text/tinyshakespeare.txt"));
  const std::string dir = fresh_dir("failed");
  auto t = section();
  t["grids"] = {{{"members", {"a", "b"}}, {"steps", {4}}, {"plans", {"fp32"}}}};
  t["dir"] = dir + "/runs";
  t["ptq"] = {{{"runs", {"*"}}, {"formats", {"int4/g32"}}, {"max_tokens", 128}}};
  const sweep_config c = parse_sweep_config({{"train", t}}, dir, data_dir, "study.json");
  // b's run directory cannot be made (a file is in the way): b does not train.
  fs::create_directories(dir + "/runs");
  std::ofstream(dir + "/runs/b-s4-fp32-seed1") << "in the way\n";
  sweep_options o;
  o.db = dir + "/study.db";
  std::vector<std::pair<int64_t, int64_t>> seen;
  const auto progress = [&](int64_t done, int64_t total) { seen.emplace_back(done, total); };
  // 2 runs and, for each, the float model and int4/g32 RTN: 6 in all.
  const sweep_summary s = run_sweep(c, o, progress);
  EXPECT_EQ(s.total, 6);
  EXPECT_EQ(s.ran, 3);  // a, its two evaluations
  EXPECT_EQ(s.already, 0);
  ASSERT_EQ(s.failures.size(), 3u);  // b, and its two evaluations (not done)
  EXPECT_NE(s.failures[0].find("train b-s4-fp32-seed1"), std::string::npos) << s.failures[0];
  EXPECT_NE(s.failures[1].find("ptq b-s4-fp32-seed1 fp32@rtn"), std::string::npos) << s.failures[1];
  EXPECT_NE(s.failures[2].find("ptq b-s4-fp32-seed1 int4/g32@rtn"), std::string::npos) << s.failures[2];
  // Progress counts the family's runs and evaluations as they go, ending with all 6.
  ASSERT_FALSE(seen.empty());
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].second, 6) << i;
    EXPECT_LE(seen[i].first, seen[i].second) << i;
    if (i > 0) {
      EXPECT_GE(seen[i].first, seen[i - 1].first) << i;
    }
  }
  EXPECT_EQ(seen.back(), std::make_pair(int64_t(6), int64_t(6)));
  // Again: a and its evaluations are found, b fails again with its evaluations.
  const sweep_summary again = run_sweep(c, o);
  EXPECT_EQ(again.total, 6);
  EXPECT_EQ(again.ran, 0);
  EXPECT_EQ(again.already, 3);
  EXPECT_EQ(again.failures.size(), 3u);
}

TEST(Family, TinyStudyShrinksItsFamilyAtOnce) {
  auto t = section();
  t["grids"].push_back({{"init", "b-s8-fp32-seed1"}, {"steps", {20}}, {"plans", {"qat:int4/g32"}}});
  sweep_config c = parse_sweep_config({{"train", t}}, "/base", data_dir, "study.json");
  make_tiny(c, "/work");
  ASSERT_TRUE(c.family.has_value());
  ASSERT_EQ(c.family->runs.size(), 3u);
  for (const auto& r : c.family->runs) {
    EXPECT_EQ(r.cfg.steps, 12) << r.name;
    EXPECT_EQ(fs::path(r.cfg.out_dir).parent_path(), "/work/train-tiny") << r.name;
  }
}

TEST(Family, EveryShippedStudyWithATrainSectionParses) {
  // studies/*.json (docs/studies/): their train sections name runs of studies/family.json.
  const fs::path dir = fs::path(LOWBIT_SOURCE_DIR) / "studies";
  int with_train = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".json") continue;
    std::ifstream in(e.path());
    const nlohmann::json j = nlohmann::json::parse(in);
    if (!j.contains("train")) continue;
    ++with_train;
    const sweep_config c = load_sweep_config(e.path().string(), data_dir);
    ASSERT_TRUE(c.family.has_value()) << e.path();
    EXPECT_FALSE(c.family->runs.empty()) << e.path();
  }
  EXPECT_GE(with_train, 6);
}

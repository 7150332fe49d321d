// `lowbit train` as a user runs it: the documented command line, refusals before training starts,
// and data parallelism over two Open MPI ranks (docs/conventions.md §24) against one process with the same
// global batch.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/cli_run.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;

namespace {

using result = lowbit::testing::cli_result;
result sh(const std::string& cmd) { return lowbit::testing::run_command(cmd); }

std::string last_line(const std::string& s) {
  auto end = s.find_last_not_of('\n');
  auto start = s.rfind('\n', end);
  return s.substr(start == std::string::npos ? 0 : start + 1, end - (start == std::string::npos ? 0 : start + 1) + 1);
}

std::vector<nlohmann::json> read_log(const fs::path& p) {
  std::vector<nlohmann::json> v;
  std::ifstream f(p);
  std::string line;
  while (std::getline(f, line)) v.push_back(nlohmann::json::parse(line));
  return v;
}

const std::string kData = lowbit_test::data_path("text/tinyshakespeare.txt");
// (tests/data.hpp: a missing file fails the run, listed.)
LOWBIT_TEST_NEEDS_DATA("test_train", {"text/tinyshakespeare.txt"});

TEST(TrainCli, TheDocumentedCommandPrintsTheFinalValidationLoss) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_train_cli");
  fs::remove_all(dir);
  // The issue's command line, shortened to 40 steps.
  const result r = sh(std::string(LOWBIT_CLI) + " train --data " + kData +
                      " --tokenizer bytes --dim 64 --layers 2 --heads 4 --ctx 64 --batch 16 --steps 40 --lr 3e-3 "
                      "--seed 1 --plan sun2025:e4m3/g32 --out " + dir.string() + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(last_line(r.out));
  EXPECT_GT(j.at("val_loss").get<double>(), 1.0);
  EXPECT_LT(j.at("val_loss").get<double>(), std::log(258.0));  // learned something
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_EQ(read_log(dir / "log.jsonl").size(), 40u);
  // eval loads the checkpoint.
  const result e = sh(std::string(LOWBIT_CLI) + " eval --model " + (dir / "model.safetensors").string() +
                      " --data " + kData + " --ctx 64 --max-tokens 2048 --json");
  ASSERT_EQ(e.code, 0) << e.out;
  // A second run into the same directory is refused unless it resumes.
  const result again = sh(std::string(LOWBIT_CLI) + " train --data " + kData +
                          " --dim 64 --layers 2 --heads 4 --ctx 64 --batch 16 --steps 40 --out " + dir.string());
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("--resume"), std::string::npos) << again.out;
  fs::remove_all(dir);
}

TEST(TrainCli, BadPlansAndConfigsAreRefusedBeforeTrainingStarts) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_train_refused");
  fs::remove_all(dir);
  for (const std::string plan : {"sun2025:e9m9/g32", "sun2025:e4m3/g32,axis=tokens", "'x=e4m3;grad=e5m2'", "bf17"}) {
    const result r = sh(std::string(LOWBIT_CLI) + " train --plan " + plan + " --steps 5 --out " + dir.string());
    EXPECT_EQ(r.code, 2) << plan << ": " << r.out;
    EXPECT_NE(r.out.find("plan"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(dir)) << plan;  // nothing written
  }
  const fs::path cfg = lowbit::testing::scratch_path("lowbit_train_bad").concat(".json");
  std::ofstream(cfg) << R"({"dim": 32, "learning_rate": 0.1})";
  const result r = sh(std::string(LOWBIT_CLI) + " train --config " + cfg.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("unknown key 'learning_rate'"), std::string::npos) << r.out;
}

TEST(TrainCli, TwoMpiRanksFollowTheSingleProcessTrajectory) {
  // Round to nearest; stochastic rounding of all six operands (each rank draws the noise one
  // process would draw for its share of the tokens, operand_quantizer::set_token_shard); and
  // Flexpoint, whose Autoflex maxima are reduced over the ranks (set_max_reducer).
  for (const std::string plan : {"sun2025:e4m3/g32",
                                 "x=e4m3/g32~sr;w=e4m3/g32~sr;dy=e5m2/g32~sr;w_bwd=e4m3/g32~sr;dy_w=e5m2/g32~sr;"
                                 "x_bwd=e4m3/g32~sr",
                                 "flex16+5"}) {
    const fs::path one = lowbit::testing::scratch_path("lowbit_dp1"), two = lowbit::testing::scratch_path("lowbit_dp2");
    fs::remove_all(one);
    fs::remove_all(two);
    const std::string args = " train --data " + kData +
                             " --dim 32 --layers 2 --heads 4 --ctx 32 --batch 8 --steps 20 --eval-every 5 "
                             "--plan '" + plan + "' --json --out ";
    const result a = sh(std::string(LOWBIT_CLI) + args + one.string());
    ASSERT_EQ(a.code, 0) << a.out;
    // docs/conventions.md §24
    const result b = sh("OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -np 2 " +
                        std::string(LOWBIT_CLI) + args + two.string());
    ASSERT_EQ(b.code, 0) << b.out;
    const auto la = read_log(one / "log.jsonl"), lb = read_log(two / "log.jsonl");
    ASSERT_EQ(la.size(), 20u);
    ASSERT_EQ(lb.size(), 20u);  // rank 0 alone writes
    // The first forward sees the same weights and the same quantized operands (the same draws):
    // only the order of the loss sum differs.
    EXPECT_NEAR(la[0]["train_loss"].get<double>(), lb[0]["train_loss"].get<double>(), 1e-9) << plan;
    for (size_t i = 0; i < la.size(); ++i) {
      EXPECT_NEAR(la[i]["train_loss"].get<double>(), lb[i]["train_loss"].get<double>(), 1e-4)
          << plan << " step " << i + 1;
      ASSERT_EQ(la[i].contains("val_loss"), lb[i].contains("val_loss")) << "step " << i + 1;
      if (la[i].contains("val_loss")) {
        EXPECT_NEAR(la[i]["val_loss"].get<double>(), lb[i]["val_loss"].get<double>(), 1e-4)
            << plan << " step " << i + 1;
      }
    }
    EXPECT_EQ(nlohmann::json::parse(last_line(b.out)).at("steps").get<int>(), 20);
    fs::remove_all(one);
    fs::remove_all(two);
  }
}

}  // namespace

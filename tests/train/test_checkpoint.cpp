// Training checkpoints refuse corrupted or edited data, and the log is rebuilt from them.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/train/checkpoint.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

train_checkpoint sample_checkpoint() {
  train_checkpoint c;
  c.step = 2;
  c.seconds = 1.5;
  c.config = {{"dim", 8}, {"plan", "fp32"}};
  c.quantizer = nullptr;
  c.curve = {{1, 3.5, -1, 1e-3, 0.25, 100}, {2, 3.25, 3.4, 2e-3, 0.125, 110}};
  for (int i = 0; i < 37; ++i) {
    c.params.push_back(0.01f * float(i) - 0.1f);
    c.adam_m.push_back(1e-4f * float(i));
    c.adam_v.push_back(1e-6f * float(i * i));
  }
  return c;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::string temp_dir(const char* name) {
  const fs::path d = fs::temp_directory_path() / (std::string("lowbit_test_ckpt_") + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

}  // namespace

TEST(TrainCheckpoint, RoundTripsExactly) {
  const std::string path = temp_dir("roundtrip") + "/checkpoint.safetensors";
  const train_checkpoint c = sample_checkpoint();
  save_train_checkpoint(path, c);
  const train_checkpoint r = load_train_checkpoint(path);
  EXPECT_EQ(r.step, c.step);
  EXPECT_EQ(r.seconds, c.seconds);
  EXPECT_EQ(r.config, c.config);
  EXPECT_EQ(r.params, c.params);
  EXPECT_EQ(r.adam_m, c.adam_m);
  EXPECT_EQ(r.adam_v, c.adam_v);
  ASSERT_EQ(r.curve.size(), c.curve.size());
  EXPECT_EQ(r.curve[1].val_loss, c.curve[1].val_loss);
}

TEST(TrainCheckpoint, AFlippedBitInTheDataIsRefused) {
  const std::string path = temp_dir("flip") + "/checkpoint.safetensors";
  save_train_checkpoint(path, sample_checkpoint());
  std::string bytes = read_file(path, "test file");
  // The last byte belongs to adam.v's data (the tensors follow the JSON header).
  bytes.back() = char(bytes.back() ^ 0x10);
  write_bytes(path, bytes);
  try {
    load_train_checkpoint(path);
    FAIL() << "a corrupted checkpoint was accepted";
  } catch (const lowbit::error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
}

TEST(TrainCheckpoint, AnEditedStepIsRefused) {
  const std::string path = temp_dir("edit") + "/checkpoint.safetensors";
  save_train_checkpoint(path, sample_checkpoint());
  std::string bytes = read_file(path, "test file");
  // The state is JSON inside the header (keys sorted, so the run's step is its last key): change
  // the stored step from 2 to 7 in place (same length), as a hand edit would.
  const std::string from = "\\\"step\\\":2}", to = "\\\"step\\\":7}";
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos) << "the test's view of the header is out of date";
  bytes.replace(at, from.size(), to);
  write_bytes(path, bytes);
  EXPECT_THROW(load_train_checkpoint(path), lowbit::error);
}

TEST(TrainCheckpoint, ACheckpointWithoutChecksumIsRefused) {
  const std::string path = temp_dir("nosum") + "/checkpoint.safetensors";
  const train_checkpoint c = sample_checkpoint();
  const int64_t n = int64_t(c.params.size());
  write_safetensors(path,
                    {{"params", st_dtype::f32, {n}, c.params.data()},
                     {"adam.m", st_dtype::f32, {n}, c.adam_m.data()},
                     {"adam.v", st_dtype::f32, {n}, c.adam_v.data()}},
                    {{"lowbit.train_state", nlohmann::json{{"step", 2}, {"config", c.config}, {"curve", nlohmann::json::array()}}.dump()}});
  EXPECT_THROW(load_train_checkpoint(path), lowbit::error);
}

TEST(TrainLog, RebuiltFromTheCurveKeepsEveryStep) {
  const std::string path = temp_dir("log") + "/log.jsonl";
  const train_checkpoint c = sample_checkpoint();
  // A killed run's log: the first line torn in the middle, a line past the checkpoint.
  write_bytes(path, "{\"step\":1,\"train_lo\n" + train_log_line(c.curve[1]) + train_log_line({3, 3.0, -1, 0, 0, 0}));
  write_train_log(path, c.curve);
  EXPECT_EQ(read_file(path, "test file"), train_log_line(c.curve[0]) + train_log_line(c.curve[1]));
  const nlohmann::json first = nlohmann::json::parse(train_log_line(c.curve[0]));
  EXPECT_EQ(first.at("step"), 1);
  EXPECT_FALSE(first.contains("val_loss"));  // not evaluated at step 1
  EXPECT_EQ(nlohmann::json::parse(train_log_line(c.curve[1])).at("val_loss").get<double>(), 3.4);
}

TEST(TrainLog, AppendFailsLoudlyWhenTheFileCannotBeWritten) {
  // /dev/full accepts the open and fails every write: a full disk (a Linux device, always there).
  ASSERT_TRUE(fs::exists("/dev/full"));
  EXPECT_THROW(append_train_log("/dev/full", {1, 3.0, -1, 0, 0, 0}), lowbit::error);
}

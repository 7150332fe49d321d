// The quantize job as a library call (ptq/job.hpp): the same job `lowbit quantize` runs.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include <filesystem>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/ptq/job.hpp"
#include "lowbit/runs/runs_db.hpp"

namespace lowbit {
namespace {

const std::string data_dir = LOWBIT_DATA_DIR;

ptq::quantize_job_config small_job(const std::string& method, const std::string& out) {
  ptq::quantize_job_config c;
  c.model = data_dir + "/llama2c/stories260K.bin";
  c.data = data_dir + "/text/tinystories_val_sample.txt";
  c.weights = "int4/g32";
  c.method = method;
  c.out = out;
  c.calib_samples = 4, c.calib_ctx = 64;
  c.force = true;
  c.eval_tokens = 256;
  return c;
}

TEST(QuantizeJob, WritesAndVerifiesTheFile) {
  for (const char* ext : {".safetensors", ".gguf"}) {
    const std::string out = ::testing::TempDir() + "quantize_job_gptq" + ext;
    ptq::quantize_job_config c = small_job("gptq", out);
    if (std::string(ext) == ".gguf") c.weights = "q4_0";
    int64_t steps = 0;
    bool quantized = false;
    ptq::quantize_job_hooks hooks;
    hooks.progress = [&](int64_t, int64_t) { ++steps; };
    hooks.quantized = [&] { quantized = true; };
    const ptq::quantize_job job = ptq::run_quantize_job(c, hooks);
    EXPECT_GT(steps, 0);
    EXPECT_TRUE(quantized);
    EXPECT_EQ(job.options.how, ptq::method::gptq);
    EXPECT_EQ(job.gguf, std::string(ext) == ".gguf");
    EXPECT_EQ(job.report.layers.size(), 35u);  // 5 blocks x 7 linear weights
    ASSERT_TRUE(job.in_memory && job.written);
    EXPECT_EQ(job.in_memory->mean_nll, job.written->mean_nll);  // the file holds what the pipeline made
    EXPECT_TRUE(std::filesystem::exists(out));
    EXPECT_FALSE(std::filesystem::exists(out + ".partial"));  // removed once the output is complete
    EXPECT_EQ(load_model(out).config.n_layers, 5);
  }
}

TEST(QuantizeJob, RefusesBeforeAnyWork) {
  const std::string out = ::testing::TempDir() + "quantize_job_refused.safetensors";
  EXPECT_THROW(ptq::run_quantize_job(small_job("gptx", out)), error);
  EXPECT_THROW(ptq::run_quantize_job(small_job("rtn", ::testing::TempDir() + "x.bin")), error);
  EXPECT_FALSE(std::filesystem::exists(out + ".partial"));
}

TEST(FileFingerprint, IsFnv1a64OfTheBytes) {
  // One fingerprint (base/files) names files in provenance and in the results store: FNV-1a 64
  // computed here byte by byte, independently of the chunked reader. lowbit's offset basis is
  // 1469598103934665603, not the published 14695981039346656037 (a digit lost when it was first
  // written); it stays, since every results store and shard in use names its files by it
  // (docs/conventions.md §39).
  const std::string path = data_dir + "/text/tinystories_val_sample.txt";
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  EXPECT_EQ(file_fingerprint(path), fmt::format("fnv1a64:{:016x}", h));
}

}  // namespace
}  // namespace lowbit

// The quantize job as a library call (ptq/job.hpp): the same job `lowbit quantize` runs.
#include <unistd.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/ptq/job.hpp"
#include "tests/data.hpp"
#include "lowbit/runs/runs_db.hpp"

namespace lowbit {
namespace {

const std::string data_dir = lowbit_test::data_dir();

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
    const std::string out = ::testing::TempDir() + std::to_string(::getpid()) + "_quantize_job_gptq" + ext;
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
    // (the job itself refuses a file whose evaluation differs from the model in memory)
    const nlohmann::json provenance = nlohmann::json::parse(load_model(out).provenance);
    EXPECT_EQ(provenance.at("method"), "gptq");
    EXPECT_EQ(provenance.at("calibration_hash"), file_fingerprint(c.data));
    EXPECT_TRUE(std::filesystem::exists(out));
    EXPECT_FALSE(std::filesystem::exists(out + ".partial"));  // removed once the output is complete
    EXPECT_EQ(load_model(out).config.n_layers, 5);
    std::filesystem::remove(out);
  }
}

// The error of a quantize job whose model does not exist: a refusal made before the model is read
// names what was refused, not the model.
std::string error_of(ptq::quantize_job_config c) {
  c.model = ::testing::TempDir() + std::to_string(::getpid()) + "_no_such_model.bin";
  try {
    ptq::run_quantize_job(c);
  } catch (const lowbit::error& e) {
    return std::string(e.what());
  }
  return std::string("no error");
}

// The method and the output container are refused before the model is read: with a model that
// does not exist, the error still names the bad method or output, not the model.
TEST(QuantizeJob, RefusesBeforeAnyWork) {
  const std::string bad_method = error_of(small_job("gptx", ::testing::TempDir() + std::to_string(::getpid()) + "_refused.safetensors"));
  EXPECT_NE(bad_method.find("gptx"), std::string::npos) << bad_method;
  EXPECT_EQ(bad_method.find("no_such_model"), std::string::npos) << bad_method;
  const std::string bad_out = error_of(small_job("rtn", ::testing::TempDir() + std::to_string(::getpid()) + "_x.bin"));
  EXPECT_NE(bad_out.find("x.bin"), std::string::npos) << bad_out;
  EXPECT_EQ(bad_out.find("no_such_model"), std::string::npos) << bad_out;
}

// Options that cannot apply are refused, before any work, with a message naming the option (they
// used to be ignored: the output was the same without them).
TEST(QuantizeJob, RefusesOptionsThatCannotApply) {
  const std::string st = ::testing::TempDir() + std::to_string(::getpid()) + "_refused_opts.safetensors";
  auto c = small_job("rtn", st);
  c.lorc_format = "int8/c";  // factors without a rank
  EXPECT_NE(error_of(c).find("--lorc-format"), std::string::npos) << error_of(c);
  c = small_job("gptq", ::testing::TempDir() + std::to_string(::getpid()) + "_refused.gguf");
  c.weights = "q4_0";
  c.lorc_rank = 8;  // GGUF has no place for LoRC's factors
  EXPECT_NE(error_of(c).find("--lorc-rank"), std::string::npos) << error_of(c);
  c = small_job("rtn", st);
  c.lorc_rank = -1;
  EXPECT_NE(error_of(c).find("--lorc-rank"), std::string::npos) << error_of(c);
  c = small_job("gptq", st);
  c.adaround_iters = 100;  // AdaRound's options with another method
  EXPECT_NE(error_of(c).find("--adaround-iters"), std::string::npos) << error_of(c);
  c = small_job("adaround", st);
  c.adaround_lambda = -0.5;
  EXPECT_NE(error_of(c).find("--adaround-lambda"), std::string::npos) << error_of(c);
  c = small_job("gptq", st);
  c.weights = "e2m1/g32";
  c.shared_pow2_scales = true;  // GPTQ chooses its own group scales
  EXPECT_NE(error_of(c).find("--shared-pow2-scales"), std::string::npos) << error_of(c);
  c = small_job("rtn", st);
  c.weights = "e2m1/c";  // no group scales to tie together
  c.shared_pow2_scales = true;
  EXPECT_NE(error_of(c).find("--shared-pow2-scales"), std::string::npos) << error_of(c);
  c.weights = "mxfp4";  // already powers of two
  EXPECT_NE(error_of(c).find("--shared-pow2-scales"), std::string::npos) << error_of(c);
}

// AdaRound through the job: a file of codes (its values are the format's under RTN's scales) that
// evaluates as the model in memory does.
TEST(QuantizeJob, AdaRoundWritesCodes) {
  const std::string out = ::testing::TempDir() + std::to_string(::getpid()) + "_quantize_job_adaround.safetensors";
  ptq::quantize_job_config c = small_job("adaround", out);
  c.adaround_iters = 40;
  const ptq::quantize_job job = ptq::run_quantize_job(c);
  EXPECT_TRUE(job.fallbacks.empty());  // every weight stored as codes + scales
  ASSERT_TRUE(job.in_memory && job.written);
  double err = 0, rtn = 0;
  for (const auto& l : job.report.layers) err += l.error, rtn += l.rtn_error;
  EXPECT_LT(err, rtn);
  std::filesystem::remove(out);
}

}  // namespace
}  // namespace lowbit

// The command line as a user runs it: build/lowbit with arguments, stdout/stderr and exit codes.
#include <unistd.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include "lowbit/base/files.hpp"
#include "lowbit/io/model_io.hpp"
#include "tests/cli_run.hpp"
#include "tests/data.hpp"

namespace {

using result = lowbit::testing::cli_result;
result run(const std::string& args, const std::string& input = "", bool with_stderr = false) {
  return lowbit::testing::run_lowbit(args, input, with_stderr);
}

}  // namespace

TEST(Cli, CastTakesNegativeNumbersAndSpecials) {  // docs/conventions.md §26
  const result r = run("cast e4m3fn -1.5 -inf nan 0x1.8p1 1e9 -0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, "-1.5\n-448\nnan\n3\n448\n-0\n");
}

TEST(Cli, CastReadsStdinAsOneRow) {
  const result r = run("cast mxfp4 --codes", "7 0.7\n-3");
  ASSERT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "6  code 0x7  scale 1\n0.5  code 0x1  scale 1\n-3  code 0xd  scale 1\n");
}

TEST(Cli, CastPlainElementAndCodesWithoutNanCode) {
  EXPECT_EQ(run("cast e2m1 2.5").out, "2\n");  // docs/conventions.md §1
  const result r = run("cast e2m1 --codes nan 1");
  ASSERT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "nan  code -\n1  code 0x2\n");
}

TEST(Cli, InfoJsonListsEveryValue) {
  const result r = run("info e2m1 --json");
  ASSERT_EQ(r.code, 0);
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["canonical"], "e2m1");
  EXPECT_EQ(j["max"], 6.0);
  EXPECT_EQ(j["finite_values"], 15);
  ASSERT_EQ(j["values"].size(), 16u);
  EXPECT_EQ(j["values"][7]["value"], "6");
  EXPECT_EQ(j["values"][15]["value"], "-6");
  const auto k = nlohmann::json::parse(run("info e4m3fn --json").out);
  EXPECT_EQ(k["max"], 448.0);
  EXPECT_EQ(k["nan_codes"], 2);
  EXPECT_EQ(k["values"][0x7f]["value"], "nan");
}

// K-quants print each value's sub-block scale code (and q4_k's min code) and the super-block's
// fp16 d (dmin): one super-block here, whose largest sub-block scale is q6_k's -128.
TEST(Cli, CastKQuantCodes) {
  result r = run("cast q6_k --codes 1 2 3 -0.5");
  ASSERT_EQ(r.code, 0) << r.out;
  std::istringstream lines(r.out);
  std::string line;
  int n = 0;
  for (; std::getline(lines, line); ++n) EXPECT_NE(line.find("sub-scale -128  d "), std::string::npos) << line;
  EXPECT_EQ(n, 4);
  r = run("cast q4_k --codes 0.25 -1 3");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("  min "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  dmin "), std::string::npos) << r.out;
}

TEST(Cli, FormatsJsonCarriesCanonicalNames) {
  const auto j = nlohmann::json::parse(run("formats --json").out);
  bool saw_mxfp4 = false;
  for (const auto& row : j)
    if (row["format"] == "mxfp4") {
      saw_mxfp4 = true;
      EXPECT_EQ(row["canonical"], "e2m1/g32:e8m0");
      EXPECT_EQ(row["bits_per_element"], 4.25);
    }
  EXPECT_TRUE(saw_mxfp4);
  // ggml's blocks: bytes per block over values per block.
  const std::map<std::string, double> ggml_bits = {{"q4_0", 4.5},  {"q4_1", 5.0},   {"q5_0", 5.5},  {"q5_1", 6.0},
                                                   {"q8_0", 8.5},  {"q2_k", 2.625}, {"q3_k", 3.4375},
                                                   {"q4_k", 4.5},  {"q5_k", 5.5},   {"q6_k", 6.5625}};
  size_t ggml = 0;
  for (const auto& row : j)
    if (const auto it = ggml_bits.find(row["format"].get<std::string>()); it != ggml_bits.end()) {
      ++ggml;
      EXPECT_EQ(row["canonical"], row["format"]);
      EXPECT_EQ(row["bits_per_element"], it->second) << row["format"];
    }
  EXPECT_EQ(ggml, ggml_bits.size());
}

TEST(Cli, BadInputIsAClearErrorNotACrash) {
  result r = run("cast mxfp5 1", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("did you mean"), std::string::npos) << r.out;
  r = run("cast e4m3fn abc", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("not a number"), std::string::npos) << r.out;
  r = run("info int4/g0", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("at least 1"), std::string::npos) << r.out;
  r = run("analyze int8 --dist cauchy", "", true);
  EXPECT_EQ(r.code, 2);
  r = run("frobnicate", "", true);
  EXPECT_NE(r.code, 0);
}

TEST(Cli, AnalyzeMarksTheBestFormat) {
  const result r = run("analyze int8 e4m3fn e5m2 --dist gaussian --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 3u);
  int best = 0;
  for (const auto& row : j) best += row["best"].get<bool>();
  EXPECT_EQ(best, 1);
  EXPECT_EQ(j[0]["format"], "int8");
  EXPECT_TRUE(j[0]["best"].get<bool>());  // docs/analysis.md §5.1: INT8 wins on Gaussian data
}

TEST(Cli, BenchJsonRowsNameTheFormatAsTyped) {  // docs/conventions.md §25
  const result r = run("bench fp8_e4m3/c --mib 1 --reps 1 --ref-mib 0.1 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["format"], "fp8_e4m3/c");
  EXPECT_EQ(j[0]["canonical"], "e4m3fn/c");
  EXPECT_GT(j[0]["gbps"].get<double>(), 0.0);
  EXPECT_GT(j[0]["memcpy_gbps"].get<double>(), 0.0);
}

// ---- model commands (issue "models") ------------------------------------------------------------
// Every shipped file test_cli's tests read (tests/data.hpp): a missing one fails the run, listed.
LOWBIT_TEST_NEEDS_DATA("test_cli", {"llama2c/stories260K.bin", "llama2c/tok512.bin", "text/tinystories_val_sample.txt"});
namespace {
const std::string data_dir = lowbit_test::data_dir();
const std::string stories = data_dir + "/llama2c/stories260K.bin";
const std::string tok512 = data_dir + "/llama2c/tok512.bin";
const std::string tinystories = data_dir + "/text/tinystories_val_sample.txt";
}  // namespace

TEST(CliModels, GreedyGenerationReproducesLlama2cSample) {
  // llama2.c's published stories260K sample (doc/stories260K.md), greedy from BOS.
  const result r = run("generate --model " + stories + " --tokenizer " + tok512 + " --greedy --max-tokens 40");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.rfind("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.", 0), 0u)
      << r.out;
}

TEST(CliModels, EvalJsonMatchesTheShippedNll) {
  // ../shared/data/vectors/stories260K_eval.json: ctx 128, first 1024 tokens, 1016 scored,
  // mean NLL 1.489755 from an independent float64 implementation.
  const result r = run("eval --model " + stories + " --data " + tinystories + " --ctx 128 --max-tokens 1024 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens_scored"], 1016);
  EXPECT_NEAR(j["mean_nll"].get<double>(), 1.489755, 2e-5);
  EXPECT_EQ(j["weights"]["canonical"], "fp32");
}

TEST(CliModels, QuantizedEvalWithKlBase) {
  const result r = run("eval --model " + stories + " --data " + tinystories +
                       " --ctx 128 --max-tokens 1024 --weights int4/g32 --acts int8/c --kv e4m3fn/c --kl-base --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["kl"]["base_mean_nll"].get<double>(), 1.489755, 2e-5);
  EXPECT_GT(j["mean_nll"].get<double>(), 1.489755);  // 4-bit weights lose something
  EXPECT_GT(j["kl"]["mean"].get<double>(), 0.0);
  EXPECT_LT(j["kl"]["top1_agreement"].get<double>(), 1.0);
  EXPECT_GT(j["kl"]["top1_agreement"].get<double>(), 0.5);
  EXPECT_EQ(j["weights"]["canonical"], "int4/g32");
  EXPECT_NEAR(j["bits_per_weight"].get<double>(), 5.0, 1e-9);  // 4 + 32/32
}

TEST(CliModels, SynthWritesModelsThatEvalReads) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_synth";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  for (const std::string arch : {"llama", "gpt2", "mistral", "qwen2", "gptneox", "opt"}) {
    for (const std::string ext : {".safetensors", ".gguf"}) {
      const std::string path = dir + "/" + arch + ext;
      const std::string extra = arch == "mistral" ? " --sliding-window 16" : "";
      const result s = run("synth --arch " + arch + " --dim 64 --layers 2 --heads 4 --ctx 64" + extra + " -o " + path, "",
                           true);
      if (arch == "opt" && ext == ".gguf") {  // OPT has no llama.cpp architecture: refused, saying so
        EXPECT_EQ(s.code, 2) << s.out;
        EXPECT_NE(s.out.find("write safetensors"), std::string::npos) << s.out;
        continue;
      }
      ASSERT_EQ(s.code, 0) << s.out;
      const result e = run("eval --model " + path + " --data " + tinystories + " --max-tokens 300 --json");
      ASSERT_EQ(e.code, 0) << arch << ext << ": " << e.out;
      const auto j = nlohmann::json::parse(e.out);
      // A random model knows nothing: perplexity near the vocabulary size (258 bytes + BOS/EOS).
      EXPECT_GT(j["ppl"].get<double>(), 100.0) << arch << ext;
      EXPECT_LT(j["ppl"].get<double>(), 600.0) << arch << ext;
    }
  }
}

// --packed: eval and generate from the codes (docs/architecture.md "Packed inference"); the NLL
// is the simulated model's up to the order of the sums; what has no packed kernel is refused.
TEST(CliModels, PackedEvalAndGenerate) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_packed";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  const std::string model = dir + "/m.gguf";
  ASSERT_EQ(run("synth --arch llama --dim 64 --layers 2 --heads 4 --ctx 64 -o " + model).code, 0);
  const std::string eval = "eval --model " + model + " --data " + tinystories + " --max-tokens 300 --json --weights q4_0";
  const result sim = run(eval), packed = run(eval + " --packed");
  ASSERT_EQ(sim.code, 0) << sim.out;
  ASSERT_EQ(packed.code, 0) << packed.out;
  const auto a = nlohmann::json::parse(sim.out), b = nlohmann::json::parse(packed.out);
  EXPECT_EQ(b["packed"], true);
  EXPECT_NEAR(a["mean_nll"].get<double>(), b["mean_nll"].get<double>(), 1e-4);
  EXPECT_NEAR(b["bits_per_weight"].get<double>(), 5.0, 1e-9);  // 4-bit codes + an fp32 multiplier per 32
  const result g = run("generate --model " + model + " --weights nvfp4 --packed --greedy --max-tokens 20", "", true);
  EXPECT_EQ(g.code, 0) << g.out;
  EXPECT_NE(g.out.find("packed nvfp4"), std::string::npos) << g.out;
  const std::map<std::string, std::string> refused = {
      {"eval --model " + model + " --data " + tinystories + " --packed", "--weights"},
      {"eval --model " + model + " --data " + tinystories + " --packed --weights e4m3fn/g32", "packed kernels take"},
      {"eval --model " + model + " --data " + tinystories + " --packed --weights q4_0 --kl-base", "--kl-base"},
      {"generate --model " + model + " --packed --weights q4_k", "q4_k"}};
  for (const auto& [args, needle] : refused) {
    const result r = run(args, "", true);
    EXPECT_EQ(r.code, 2) << args << ": " << r.out;
    EXPECT_NE(r.out.find(needle), std::string::npos) << args << ": " << r.out;
  }
}

// synth does not overwrite an existing model unless told to; with --force the config.json beside
// a replaced .safetensors is the new model's, not the old one's.
TEST(CliModels, SynthReplacesOnlyWithForce) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_synth_force";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  const std::string path = dir + "/m.safetensors";
  ASSERT_EQ(run("synth --dim 64 --layers 2 --heads 4 --ctx 64 -o " + path).code, 0);
  const std::string first = lowbit::testing::read_file_bytes(path);
  const result again = run("synth --dim 64 --layers 3 --heads 4 --ctx 64 -o " + path, "", true);
  EXPECT_EQ(again.code, 2) << again.out;
  EXPECT_NE(again.out.find("--force"), std::string::npos) << again.out;
  EXPECT_EQ(lowbit::testing::read_file_bytes(path), first);  // untouched
  ASSERT_EQ(run("synth --dim 64 --layers 3 --heads 4 --ctx 64 --force -o " + path).code, 0);
  const auto cfg = nlohmann::json::parse(lowbit::testing::read_file_bytes(dir + "/config.json"));
  EXPECT_EQ(cfg["num_hidden_layers"].get<int>(), 3) << cfg.dump();
  std::system(("rm -rf " + dir).c_str());
}

TEST(CliModels, ExploreWritesTableCsvJson) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_explore";
  const result r = run("explore --model " + stories + " --data " + tinystories +
                       " --max-tokens 600 --ctx 128 --row fp32 --row int4/g32 --row int8/c,int8/c --no-plot -o " + dir);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("int4/g32"), std::string::npos);
  FILE* f = std::fopen((dir + "/explore.json").c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  const result j = run("explore --model " + stories + " --data " + tinystories +
                       " --max-tokens 600 --ctx 128 --row fp32 --row int4/g32 --no-plot --json -o " + dir);
  const auto doc = nlohmann::json::parse(j.out);
  ASSERT_EQ(doc["rows"].size(), 2u);
  EXPECT_EQ(doc["rows"][0]["result"]["kl"]["mean"], 0.0);  // fp32 row is the float model
  EXPECT_GT(doc["rows"][1]["result"]["kl"]["mean"].get<double>(), 0.0);
}

TEST(CliModels, TokenizeShowsIdsAndPieces) {
  const result r = run("tokenize --tokenizer " + tok512 + " --bos --json 'Once upon a time'");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j[0]["ids"][0], 1);
  EXPECT_GT(j[0]["ids"].size(), 2u);
}

TEST(CliModels, BadInputGivesAClearError) {
  result r = run("eval --model /nonexistent.bin --data " + tinystories, "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("/nonexistent.bin"), std::string::npos) << r.out;
  r = run("eval --model " + stories + " --data " + tinystories + " --weights int5x", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("int5x"), std::string::npos) << r.out;
  r = run("eval --model " + tinystories + " --data " + tinystories, "", true);  // a text file as a model
  EXPECT_EQ(r.code, 2) << r.out;
  r = run("explore --row 'int4,int8,e4m3,int2' --no-plot", "", true);
  EXPECT_EQ(r.code, 2) << r.out;
}

// ---- lowbit quantize (issue "PTQ") ----------------------------------------------------------------
TEST(CliQuantize, GgufAndSafetensorsEvaluateLikeTheModelInMemory) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_quantize";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  for (const std::string& out : {dir + "/q.gguf", dir + "/q.safetensors"}) {
    const result q = run("quantize --model " + stories + " --data " + tinystories +
                         " --weights q4_0 --method gptq --calib-samples 16 --calib-ctx 128 --eval-tokens 2048 --json -o " + out);
    ASSERT_EQ(q.code, 0) << q.out;
    const auto jq = nlohmann::json::parse(q.out);
    const result e = run("eval --model " + out + " --data " + tinystories + " --max-tokens 2048 --json");
    ASSERT_EQ(e.code, 0) << e.out;
    const auto je = nlohmann::json::parse(e.out);
    // The file holds exactly the weights the pipeline made (GGUF: Q4_0 blocks, F16 for the ffn_down
    // rows of 172): the model evaluated in memory before the output was assembled, the file read
    // back by quantize and `lowbit eval` of the file agree to the last bit of the float64 mean.
    EXPECT_GT(jq["in_memory_mean_nll"].get<double>(), 0) << q.out;
    EXPECT_EQ(jq["file_mean_nll"].get<double>(), jq["in_memory_mean_nll"].get<double>()) << out;
    EXPECT_EQ(je["mean_nll"].get<double>(), jq["in_memory_mean_nll"].get<double>()) << out;
    EXPECT_GT(jq["peak_rss_mib"].get<double>(), 0);
    // GPTQ beat RTN on the calibration outputs of every layer group in total.
    double err = 0, rtn = 0;
    for (const auto& l : jq["layers"]) err += l["error"].get<double>(), rtn += l["rtn_error"].get<double>();
    EXPECT_LT(err, rtn);
    // Nothing is overwritten without --force.
    const result again = run("quantize --model " + stories + " --data " + tinystories +
                             " --weights q4_0 --method rtn -o " + out, "", true);
    EXPECT_EQ(again.code, 2);
    EXPECT_NE(again.out.find("--force"), std::string::npos) << again.out;
  }
  // The GGUF carries the tokenizer: eval needs no --tokenizer, and its ids are llama2.c's.
  const result t = run("tokenize --model " + dir + "/q.gguf --bos --json 'Once upon a time, Lily'");
  const result t2 = run("tokenize --tokenizer " + tok512 + " --bos --json 'Once upon a time, Lily'");
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_EQ(nlohmann::json::parse(t.out)[0]["ids"], nlohmann::json::parse(t2.out)[0]["ids"]);
}

// Two quantize runs with one -o would interleave their shards in OUT.partial: while one holds it,
// the other is refused at once, and the holder's directory is left as it was.
TEST(CliQuantize, SecondRunOnTheSameOutputIsRefused) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_quantize_lock";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  const std::string out = dir + "/q.safetensors";
  std::filesystem::create_directories(out + ".partial");
  std::ofstream(out + ".partial/marker") << "the first run's";
  {
    const lowbit::exclusive_lock held(out + ".partial", "test");  // as a running quantize holds it
    const result r = run("quantize --model " + stories + " --data " + tinystories + " --weights int8/c --method rtn -o " + out,
                         "", true);
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("another lowbit process"), std::string::npos) << r.out;
    EXPECT_TRUE(std::filesystem::exists(out + ".partial/marker"));
    EXPECT_FALSE(std::filesystem::exists(out));
  }
  std::filesystem::remove(out + ".partial/marker");
  const result r = run("quantize --model " + stories + " --data " + tinystories + " --weights int8/c --method rtn -o " + out,
                       "", true);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(std::filesystem::exists(out + ".partial"));
  std::system(("rm -rf " + dir).c_str());
}

// kill -9 at several moments of a GPTQ run (calibration, a block, a shard or the output being
// written, or after the end), then the same command again: the output equals an uninterrupted
// run's byte for byte, and no temp file or checkpoint directory survives.
TEST(CliQuantize, KilledRunsResumeToTheSameBytesAndLeaveNoTempFiles) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_quantize_kill";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  const std::string args = "quantize --model " + stories + " --data " + tinystories +
                           " --weights int4/g32 --method gptq --calib-samples 8 --calib-ctx 128 -o ";
  ASSERT_EQ(run(args + dir + "/whole.safetensors").code, 0);
  const std::string whole = lowbit::testing::read_file_bytes(dir + "/whole.safetensors");
  int killed = 0;
  for (const char* after : {"0.15", "0.4", "0.8", "1.5"}) {
    const std::string out = dir + "/k" + after + ".safetensors";
    const result k = lowbit::testing::run_command("timeout -s KILL " + std::string(after) + " " +
                                                  std::string(LOWBIT_CLI) + " " + args + out);
    killed += k.code != 0;
    if (!std::filesystem::exists(out)) {  // killed before its end: the same command finishes it
      const result r = run(args + out, "", true);
      ASSERT_EQ(r.code, 0) << after << ": " << r.out;
    }
    EXPECT_TRUE(lowbit::testing::read_file_bytes(out) == whole) << "killed after " << after << " s";
    EXPECT_FALSE(std::filesystem::exists(out + ".partial")) << after;
    for (const auto& e : std::filesystem::directory_iterator(dir))
      EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
  EXPECT_GE(killed, 1);  // at least one kill landed inside a run
  std::system(("rm -rf " + dir).c_str());
}

// A run stopped in block 2 leaves its finished blocks in OUT.partial; the same command resumes
// from there and writes the bytes an uninterrupted run writes.
TEST(CliQuantize, StoppedRunResumesWithTheSameBytes) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_quantize_resume";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  const std::string args = "quantize --model " + stories + " --data " + tinystories +
                           " --weights int4/g32 --method gptq --calib-samples 8 --calib-ctx 128 -o ";
  const result whole = run(args + dir + "/whole.safetensors");
  ASSERT_EQ(whole.code, 0) << whole.out;
  // 8 windows x 2 passes = 16 steps a block: step 37 is in block 2.
  const result stopped = lowbit::testing::run_command("LOWBIT_QUANTIZE_STOP_AFTER_STEPS=37 " + std::string(LOWBIT_CLI) +
                                                      " " + args + dir + "/resumed.safetensors");
  EXPECT_NE(stopped.code, 0) << stopped.out;
  EXPECT_TRUE(std::filesystem::exists(dir + "/resumed.safetensors.partial/blk.1.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/resumed.safetensors.partial/blk.2.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/resumed.safetensors"));
  const result resumed = run(args + dir + "/resumed.safetensors", "", true);
  ASSERT_EQ(resumed.code, 0) << resumed.out;
  EXPECT_NE(resumed.out.find("resuming from"), std::string::npos) << resumed.out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/resumed.safetensors.partial"));
  auto bytes = [](const std::string& path) {
    return lowbit::testing::read_file_bytes(path);
  };
  EXPECT_TRUE(bytes(dir + "/whole.safetensors") == bytes(dir + "/resumed.safetensors"));
  // The hook takes a step count only.
  for (const std::string bad : {"abc", "0", "12x", "-3"}) {
    const result r = lowbit::testing::run_command("LOWBIT_QUANTIZE_STOP_AFTER_STEPS=" + bad + " " +
                                                  std::string(LOWBIT_CLI) + " " + args + dir + "/hook.safetensors");
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("LOWBIT_QUANTIZE_STOP_AFTER_STEPS='" + bad + "': expected a step count"), std::string::npos)
        << r.out;
    EXPECT_FALSE(std::filesystem::exists(dir + "/hook.safetensors.partial")) << bad;
  }
}

// A model whose config contradicts its tensors (intermediate_size 4096, ffn tensors of 128 rows) is
// refused naming the file, the tensor and the config, whatever the method; nothing is written.
TEST(CliQuantize, ModelWhoseConfigContradictsItsTensorsIsRefused) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_quantize_lying";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  const std::string model = dir + "/lying.safetensors";
  ASSERT_EQ(run("synth --dim 64 --layers 2 --heads 4 --hidden 128 -o " + model).code, 0);
  // The lowbit.config in the file's header says 4096.
  const std::string bytes = lowbit::testing::read_file_bytes(model);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  nlohmann::json cfg = nlohmann::json::parse(header["__metadata__"]["lowbit.config"].get<std::string>());
  ASSERT_EQ(cfg["intermediate_size"], 128);
  cfg["intermediate_size"] = 4096;
  header["__metadata__"]["lowbit.config"] = cfg.dump();
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  const uint64_t size = text.size();
  std::ofstream out(model, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&size), 8);
  out << text << bytes.substr(8 + n);
  out.close();
  for (const std::string method : {"rtn", "gptq"}) {
    const result r = run("quantize --model " + model + " --data " + tinystories + " --weights int4/g32 --method " +
                         method + " --calib-samples 4 --calib-ctx 64 -o " + dir + "/q.safetensors", "", true);
    EXPECT_EQ(r.code, 2) << method << ": " << r.out;
    EXPECT_NE(r.out.find(model + ": tensor 'blk.0.ffn_gate.weight' has shape [128, 64], the config (dim 64, "
                         "hidden_dim 4096"), std::string::npos) << r.out;
    EXPECT_FALSE(std::filesystem::exists(dir + "/q.safetensors"));
    EXPECT_FALSE(std::filesystem::exists(dir + "/q.safetensors.partial"));
  }
}

// K-quants: a synthetic Llama with rows of 256 exports as Q4_K / Q6_K blocks and evaluates like
// the model in memory; stories260K's rows of 64 and 172 fall back (docs/conventions.md §22), listed.
TEST(CliQuantize, KQuantGgufEvaluatesLikeTheModelInMemory) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_kquant";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  const result s = run("synth --dim 256 --layers 1 --heads 4 --hidden 512 --vocab 512 --ctx 128 -o " + dir + "/m.gguf");
  ASSERT_EQ(s.code, 0) << s.out;
  for (const std::string fmt : {"q4_k", "q6_k", "q5_k"}) {
    const std::string out = dir + "/" + fmt + ".gguf";
    const result q = run("quantize --model " + dir + "/m.gguf --data " + tinystories + " --weights " + fmt +
                         " --method gptq --calib-samples 8 --calib-ctx 128 --eval-tokens 1024 --json -o " + out);
    ASSERT_EQ(q.code, 0) << q.out;
    const auto jq = nlohmann::json::parse(q.out);
    EXPECT_TRUE(jq["fallbacks"].empty()) << q.out;
    const result e = run("eval --model " + out + " --data " + tinystories + " --max-tokens 1024 --json");
    ASSERT_EQ(e.code, 0) << e.out;
    EXPECT_EQ(nlohmann::json::parse(e.out)["mean_nll"].get<double>(), jq["in_memory_mean_nll"].get<double>()) << fmt;
  }
  const result f = run("quantize --model " + stories + " --data " + tinystories + " --weights q4_k --method rtn -o " +
                       dir + "/stories.gguf");
  ASSERT_EQ(f.code, 0) << f.out;
  EXPECT_NE(f.out.find("35 weights kept as llama.cpp's fallback GGUF type (rows not a multiple of the q4_k block of 256)"),
            std::string::npos) << f.out;
  EXPECT_NE(f.out.find("blk.0.attn_q.weight (q5_0)"), std::string::npos) << f.out;  // llama.cpp's fallback
  EXPECT_NE(f.out.find("blk.0.ffn_down.weight (f16)"), std::string::npos) << f.out;
}

TEST(CliQuantize, BadRequestsSayWhatWouldWork) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_quantize_bad";
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  result r = run("quantize --model " + stories + " --data " + tinystories + " --weights int4/g32 -o " + dir + "/x.gguf", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, mxfp4"), std::string::npos) << r.out;
  r = run("quantize --model " + stories + " --data " + tinystories + " --weights int4/g32 --method gptq --calib-samples 100000 -o " + dir + "/x.safetensors", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("windows"), std::string::npos) << r.out;
  r = run("quantize --model " + stories + " --data " + tinystories + " --weights int4/g32 --method gptx -o " + dir + "/x.safetensors", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("gptq"), std::string::npos) << r.out;
  // Options that cannot apply are refused by name (before, some were ignored).
  r = run("quantize --model " + stories + " --data " + tinystories + " --weights int4/g32 --method gptq --adaround-iters 50 -o " + dir + "/x.safetensors", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--adaround-iters"), std::string::npos) << r.out;
  r = run("quantize --model " + stories + " --data " + tinystories + " --weights q4_0 --method rtn --lorc-rank 8 -o " + dir + "/x.gguf", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--lorc-rank"), std::string::npos) << r.out;
}

// ---- results store, sweeps and the report (issue 6) -----------------------------------------------
namespace {

std::string explore_dir(const std::string& name) {
  const std::string dir = testing::TempDir() + std::to_string(::getpid()) + "_lowbit_cli_explore_" + name;
  std::system(("rm -rf " + dir + " && mkdir -p " + dir).c_str());
  return dir;
}

// A three-run sweep of stories260K (128-token windows over 512 tokens), written into dir.
std::string write_small_sweep(const std::string& dir, const std::string& formats = R"("fp32", "int4/g32", "e2m1/g32")") {
  const std::string path = dir + "/sweep.json";
  FILE* f = std::fopen(path.c_str(), "w");
  std::fprintf(f, R"({"models": ["%s"], "data": "%s", "formats": [%s], "eval": {"ctx": 128, "max_tokens": 512}, "kl_base": false})",
               stories.c_str(), tinystories.c_str(), formats.c_str());
  std::fclose(f);
  return path;
}

bool file_starts_with(const std::string& path, const std::string& prefix) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  std::string head(prefix.size(), '\0');
  const size_t n = std::fread(head.data(), 1, head.size(), f);
  std::fclose(f);
  return n == prefix.size() && head == prefix;
}

}  // namespace

TEST(CliExplore, SweepStoppedMidwayResumesWithoutDuplicatesAndReports) {
  const std::string dir = explore_dir("resume");
  const std::string sweep = write_small_sweep(dir), db = dir + "/runs.db";
  result r = run("explore --config " + sweep + " --db " + db + " --max-runs 1 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["total"], 3);
  EXPECT_EQ(j["ran"], 1);
  EXPECT_EQ(j["runs"].size(), 1u);
  r = run("explore --config " + sweep + " --db " + db + " -j 2 --json");  // resumes: the other two
  ASSERT_EQ(r.code, 0) << r.out;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["already"], 1);
  EXPECT_EQ(j["ran"], 2);
  r = run("explore --config " + sweep + " --db " + db + " --json");  // nothing left to do
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["already"], 3);
  EXPECT_EQ(j["ran"], 0);
  ASSERT_EQ(j["runs"].size(), 3u);
  std::set<int64_t> ids;
  for (const auto& run : j["runs"]) ids.insert(run["id"].get<int64_t>());
  EXPECT_EQ(ids, (std::set<int64_t>{1, 2, 3}));  // three runs, no duplicate
  EXPECT_EQ(j["runs"][1]["canonical"], "int4/g32");
  EXPECT_EQ(j["runs"][2]["exp_bits"], 2);
  EXPECT_EQ(j["runs"][2]["man_bits"], 1);

  r = run("report --db " + db + " -o " + dir + "/report", "", true);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(file_starts_with(dir + "/report/index.html", "<!DOCTYPE html>"));
  EXPECT_TRUE(file_starts_with(dir + "/report/ppl_vs_bits.png", "\x89PNG")) << r.out;
  EXPECT_TRUE(file_starts_with(dir + "/report/pareto_mac.png", "\x89PNG")) << r.out;
  EXPECT_TRUE(file_starts_with(dir + "/report/runs.csv", "id,kind,model"));
}

// kill -9 of a sweep (its workers included: timeout kills the process group) at several moments,
// then the same command: every run recorded exactly once, each with the NLL an uninterrupted sweep
// records, and no temp file left beside the database.
TEST(CliExplore, KilledSweepsResumeToTheSameRecords) {
  const std::string dir = explore_dir("kill");
  const std::string sweep = write_small_sweep(dir);
  result whole = run("explore --config " + sweep + " --db " + dir + "/whole.db --json");
  ASSERT_EQ(whole.code, 0) << whole.out;
  auto nll_by_format = [](const nlohmann::json& j) {
    std::map<std::string, double> m;
    for (const auto& r : j["runs"]) m[r["canonical"].get<std::string>()] = r["metrics"]["nll"].get<double>();
    return m;
  };
  const auto want = nll_by_format(nlohmann::json::parse(whole.out));
  ASSERT_EQ(want.size(), 3u);
  int killed = 0;
  for (const char* after : {"0.1", "0.25", "0.5", "1.0"}) {
    const std::string db = dir + "/k" + after + ".db";
    killed += lowbit::testing::run_command("timeout -s KILL " + std::string(after) + " " + std::string(LOWBIT_CLI) +
                                 " explore --config " + sweep + " --db " + db + " -j 2 --json").code != 0;
    const result r = run("explore --config " + sweep + " --db " + db + " --json");
    ASSERT_EQ(r.code, 0) << after << ": " << r.out;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["runs"].size(), 3u) << after;
    EXPECT_EQ(nll_by_format(j), want) << after;
    for (const auto& e : std::filesystem::directory_iterator(dir))
      EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
  EXPECT_GE(killed, 1);
}

TEST(CliExplore, UnknownFormatInSweepIsRefusedBeforeAnythingRuns) {
  const std::string dir = explore_dir("refused");
  const std::string sweep = write_small_sweep(dir, R"("int4/g32", "int5x")"), db = dir + "/runs.db";
  const result r = run("explore --config " + sweep + " --db " + db, "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("formats[1]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("int5x"), std::string::npos) << r.out;
  EXPECT_FALSE(file_starts_with(db, "SQLite")) << "the database was created";
}

TEST(CliExplore, SweepAcrossTwoMpiRanksRecordsEachRunOnce) {  // docs/conventions.md §24
  // mpirun is not optional: the build requires MPI, scripts/install-deps.sh installs openmpi-bin.
  ASSERT_EQ(std::system("command -v mpirun > /dev/null 2>&1"), 0) << "mpirun not found: install openmpi-bin (scripts/install-deps.sh)";
  const std::string dir = explore_dir("mpi");
  const std::string sweep = write_small_sweep(dir, R"("fp32", "int4/g32", "e2m1/g32", "mxfp4")"), db = dir + "/runs.db";
  const std::string cmd = "mpirun --allow-run-as-root --oversubscribe -np 2 " + std::string(LOWBIT_CLI) +
                          " explore --config " + sweep + " --db " + db + " --json 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  ASSERT_EQ(pclose(p), 0) << out;
  const auto j = nlohmann::json::parse(out);  // only rank 0 prints
  EXPECT_EQ(j["total"], 4);
  EXPECT_EQ(j["ran"], 4);
  ASSERT_EQ(j["runs"].size(), 4u);
  std::set<int> ranks;  // rank 0 hands the first run to rank 1, then both work
  for (const auto& r : j["runs"]) ranks.insert(r["metrics"]["sweep_worker"].get<int>());
  EXPECT_TRUE(ranks.count(1)) << out;
  // The same numbers as a single process: rerun in one process records nothing new.
  const result again = run("explore --config " + sweep + " --db " + db + " --json");
  EXPECT_EQ(nlohmann::json::parse(again.out)["already"], 4);
}

TEST(CliExplore, EvalAndQuantizeRecordThemselvesOnce) {
  const std::string dir = explore_dir("record");
  const std::string db = dir + "/runs.db";
  const std::string eval = "eval --model " + stories + " --data " + tinystories +
                           " --ctx 128 --max-tokens 512 --weights int4/g32 --json --db " + db;
  result r = run(eval, "", true);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("recorded as run 1 in"), std::string::npos) << r.out;
  r = run(eval, "", true);
  EXPECT_NE(r.out.find("already recorded as run 1"), std::string::npos) << r.out;
  r = run("quantize --model " + stories + " --data " + tinystories + " --weights int4/g32 --method rtn --eval-tokens 512 -o " +
              dir + "/q.safetensors --db " + db, "", true);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("recorded as run 2 in"), std::string::npos) << r.out;
  // The quantized file's eval is recorded as its source model with the method that made it.
  r = run("eval --model " + dir + "/q.safetensors --data " + tinystories + " --ctx 128 --max-tokens 512 --db " + db, "", true);
  EXPECT_NE(r.out.find("recorded as run 3 in"), std::string::npos) << r.out;
  r = run("explore --config " + write_small_sweep(dir, R"("int4/g32")") + " --db " + db + " --json");
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["runs"][0]["id"], 4);
  EXPECT_EQ(j["runs"][0]["model"], "stories260K");
}

TEST(CliExplore, ForeignDatabaseFilesAreRefusedNamingThem) {
  result r = run("eval --model " + stories + " --data " + tinystories + " --max-tokens 300 --db " + tinystories, "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find(tinystories + ": not a lowbit results database"), std::string::npos) << r.out;
  r = run("report --db /nonexistent/runs.db -o /tmp/x", "", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("/nonexistent/runs.db"), std::string::npos) << r.out;
}

// A directory or a FIFO given as data is refused at once, naming it: before, a directory read as
// zero tokens and a FIFO blocked the command forever (opened before any check).
TEST(CliErrors, DataThatIsNotARegularFileIsRefused) {
  const auto dir = lowbit::testing::scratch_path("lowbit_cli_datadir");
  std::filesystem::create_directories(dir);
  result r = run("eval --model " + stories + " --data " + dir.string() + " --max-tokens 64", "", true);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("not a regular file"), std::string::npos) << r.out;
  const std::string fifo = (dir / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  r = run("eval --model " + stories + " --data " + fifo + " --max-tokens 64", "", true);  // must not hang
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("not a regular file"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

// A FIFO or directory given as the model, its config.json or a sweep configuration is refused
// at once, naming it (a FIFO model once blocked `eval` forever: the format sniff opened it first).
TEST(CliErrors, ModelThatIsNotARegularFileIsRefused) {
  const auto dir = lowbit::testing::scratch_path("lowbit_cli_modelfifo");
  std::filesystem::create_directories(dir);
  const std::string fifo = (dir / "model.bin").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  result r = run("eval --model " + fifo + " --tokenizer " + tok512 + " --data " + tinystories + " --max-tokens 64", "",
                 true);  // must not hang
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("not a regular file"), std::string::npos) << r.out;
  const std::string sweep = (dir / "sweep.json").string();
  ASSERT_EQ(::mkfifo(sweep.c_str(), 0600), 0);
  r = run("explore --config " + sweep + " --db " + (dir / "x.db").string(), "", true);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("not a regular file"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

// A llama2.c tokenizer cut at a token boundary parses, but names fewer tokens than the model's
// vocabulary: refused, where before stories260K evaluated with it at NLL 27 instead of 0.94.
TEST(CliErrors, TruncatedLlama2cTokenizerIsRefused) {
  const std::string bytes = lowbit::testing::read_file_bytes(tok512);
  size_t pos = 4;
  for (int i = 0; i < 300; ++i) {  // records: float score, int32 length, the piece
    int32_t len = 0;
    std::memcpy(&len, bytes.data() + pos + 4, 4);
    pos += 8 + static_cast<size_t>(len);
  }
  const auto stem = lowbit::testing::scratch_path("lowbit_cli_tok300");
  const auto path = std::filesystem::path(stem.string() + ".bin");
  std::ofstream(path, std::ios::binary) << bytes.substr(0, pos);
  const result r = run("eval --model " + stories + " --tokenizer " + path.string() + " --data " + tinystories +
                       " --max-tokens 64", "", true);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("has 300 tokens"), std::string::npos) << r.out;
  std::filesystem::remove(path);
}

// Numbers no command can mean are refused before any work, naming the flag: non-finite floats on
// any command, zero or negative lengths and counts, fractions outside [0, 1], a reversed range.
TEST(CliErrors, ImpossibleNumbersAreRefused) {
  const std::string model = "--model " + stories + " --tokenizer " + tok512;
  const std::string eval = "eval " + model + " --data " + tinystories;
  const std::pair<std::string, std::string> cases[] = {
      {eval + " --ctx 0 --max-tokens 64", "--ctx"},
      {eval + " --ctx -5 --max-tokens 64", "--ctx"},
      {eval + " --max-tokens -1", "--max-tokens"},
      {eval + " --max-tokens 0", "--max-tokens"},
      {"generate " + model + " --temperature nan", "--temperature"},
      {"generate " + model + " --temperature -1", "--temperature"},
      {"generate " + model + " --temperature inf", "--temperature"},
      {"train --steps 2 --warmup nan", "--warmup"},
      {"train --steps 2 --warmup 1.5", "--warmup"},
      {"train --steps 0", "--steps"},
      {"train --steps 2 --lr inf", "--lr"},
      {"law sun2025 --optimal-layout --bits 16..4", "--bits"},
      {"bench int8 --threads 0", "--threads"},
      {"bench int8 --mib nan", "--mib"},
      // integers that would wrap, saturate or fall back to the default
      {eval + " --max-tokens 99999999999999999999", "--max-tokens"},
      {eval + " --limit ''", "--limit"},
      {eval + " --ctx 0x10", "--ctx"},
      {"generate " + model + " --seed -1", "--seed"},
      {"synth --vocab 3 -o never-written.safetensors", "--vocab"},
  };
  for (const auto& [args, flag] : cases) {
    const result r = run(args, "", true);
    EXPECT_EQ(r.code, 2) << args << ": " << r.out;
    EXPECT_NE(r.out.find(flag), std::string::npos) << args << ": " << r.out;
  }
  // The library's own defaults stay: leaving the flags out evaluates the whole default window.
  EXPECT_EQ(run(eval + " --max-tokens 64").code, 0);
}

// Command-line errors (an unknown flag, a missing value, a bad number) exit 2 like every other bad
// input, with CLI11's message; --help exits 0.
TEST(CliErrors, ParseErrorsExitTwo) {
  for (const char* args : {"cast --no-such-flag e2m1 1", "eval --ctx", "bench int8 --threads two", "nonsense"}) {
    const result r = run(args, "", true);
    EXPECT_EQ(r.code, 2) << args << ": " << r.out;
    EXPECT_FALSE(r.out.empty()) << args;
  }
  EXPECT_EQ(run("eval --help").code, 0);
}

// A GPT-2 block quantized to a plain 16-bit cast has parts of zero bytes (its empty scales) at the
// offset of the next part; the shard's checksum used to take such ties in sort order on one side
// and write order on the other, and a fresh run was refused as "corrupted".
TEST(CliQuantize, Gpt2HalfPrecisionShardsVerify) {
  const auto dir = lowbit::testing::scratch_path("lowbit_cli_gpt2_fp16");
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string m = (dir / "m.safetensors").string();
  ASSERT_EQ(run("synth --arch gpt2 --dim 64 --layers 2 --heads 4 --vocab 300 --ctx 128 -o " + m).code, 0);
  for (const char* fmt : {"fp16", "bf16"}) {
    const std::string out = (dir / (std::string(fmt) + ".gguf")).string();
    const result r = run("quantize --model " + m + " --data " + tinystories + " --weights " + fmt +
                         " --method rtn --calib-samples 4 --calib-ctx 64 -o " + out, "", true);
    EXPECT_EQ(r.code, 0) << fmt << ": " << r.out;
    EXPECT_TRUE(std::filesystem::exists(out)) << fmt;
  }
  std::filesystem::remove_all(dir);
}

// ---- tasks and FormatSpread (docs/evaluation.md "Tasks", "FormatSpread") ---------------------------
TEST(CliTasks, TaskMakeIsDeterministicInItsSeed) {
  const std::string dir = lowbit::testing::scratch_path("lowbit_cli_tasks").string();
  std::filesystem::create_directories(dir);
  for (const std::string kind : {"ending", "lastword"}) {
    const std::string base = "task make --kind " + kind + " --text " + tinystories + " --n 20 ";
    ASSERT_EQ(run(base + "--seed 5 -o " + dir + "/a.jsonl").code, 0);
    ASSERT_EQ(run(base + "--seed 5 -o " + dir + "/b.jsonl").code, 0);
    ASSERT_EQ(run(base + "--seed 6 -o " + dir + "/c.jsonl").code, 0);
    const std::string a = lowbit::testing::read_file_bytes(dir + "/a.jsonl");
    EXPECT_EQ(std::count(a.begin(), a.end(), '\n'), 20);
    EXPECT_EQ(a, lowbit::testing::read_file_bytes(dir + "/b.jsonl")) << kind;
    EXPECT_NE(a, lowbit::testing::read_file_bytes(dir + "/c.jsonl")) << kind;
  }
  const result bad_kind = run("task make --kind quiz --text " + tinystories + " -o " + dir + "/x.jsonl", "", true);
  EXPECT_EQ(bad_kind.code, 2);
  EXPECT_NE(bad_kind.out.find("task kind 'quiz'"), std::string::npos) << bad_kind.out;
  std::filesystem::remove_all(dir);
}

TEST(CliTasks, EvalTaskReportsAccuracyWithLmEvalStandardErrors) {
  const std::string dir = lowbit::testing::scratch_path("lowbit_cli_task_eval").string();
  std::filesystem::create_directories(dir);
  const std::string task = dir + "/ending.jsonl";
  ASSERT_EQ(run("task make --kind ending --text " + tinystories + " --n 12 --seed 1 -o " + task).code, 0);
  const result r = run("eval --model " + stories + " --tokenizer " + tok512 + " --task " + task + " --limit 10 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["n"], 10);
  const double acc = j["acc"].get<double>(), norm = j["acc_norm"].get<double>();
  EXPECT_DOUBLE_EQ(acc * 10, std::round(acc * 10));
  EXPECT_NEAR(j["acc_stderr"].get<double>(), std::sqrt(acc * (1 - acc) / 9), 1e-12);
  EXPECT_NEAR(j["acc_norm_stderr"].get<double>(), std::sqrt(norm * (1 - norm) / 9), 1e-12);
  // Malformed lines are named by number; inapplicable options are refused.
  std::ofstream(dir + "/bad.jsonl") << R"({"kind":"lastword","context":"a b","target":"c"})" "\n"
                                    << R"({"kind":"ending","context":"x","choices":["a","b"],"gold":5})" "\n";
  const result bad = run("eval --model " + stories + " --tokenizer " + tok512 + " --task " + dir + "/bad.jsonl", "", true);
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.out.find("bad.jsonl:2: \"gold\" 5"), std::string::npos) << bad.out;
  for (const std::string& extra : {std::string(" --kl-base"), " --data " + tinystories, std::string(" --ctx 64")}) {
    const result refused = run("eval --model " + stories + " --task " + task + extra, "", true);
    EXPECT_EQ(refused.code, 2) << extra;
    EXPECT_NE(refused.out.find("--task"), std::string::npos) << refused.out;
  }
  const result neither = run("eval --model " + stories, "", true);
  EXPECT_EQ(neither.code, 2);
  EXPECT_NE(neither.out.find("--data"), std::string::npos) << neither.out;
  std::filesystem::remove_all(dir);
}

TEST(CliTasks, SpreadReportsBestMinusWorst) {
  const std::string dir = lowbit::testing::scratch_path("lowbit_cli_spread").string();
  std::filesystem::create_directories(dir);
  const std::string task = dir + "/ending.jsonl";
  ASSERT_EQ(run("task make --kind ending --text " + tinystories + " --n 12 --seed 2 -o " + task).code, 0);
  const std::string args = "spread --model " + stories + " --tokenizer " + tok512 + " --task " + task +
                           " --formats 4 --budget 24 --batch 4 --seed 3 --json";
  const result r = run(args);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["n"], 12);
  EXPECT_EQ(j["formats"], 4);
  EXPECT_EQ(j["steps_per_phase"], 3);  // 24 / 4 / 2
  EXPECT_DOUBLE_EQ(j["spread"].get<double>(), j["best"]["acc"].get<double>() - j["worst"]["acc"].get<double>());
  EXPECT_LE(j["bandit_item_evaluations"].get<int>(), 24);
  EXPECT_EQ(j["original"]["format"]["separator"], ": ");
  EXPECT_EQ(j["arms"].size(), 4u);
  // Deterministic in its seed (timings aside).
  const auto again = nlohmann::json::parse(run(args).out);
  EXPECT_EQ(again["arms"], j["arms"]);
  EXPECT_EQ(again["spread"], j["spread"]);
  const result small = run("spread --model " + stories + " --task " + task + " --budget 10 --batch 20", "", true);
  EXPECT_EQ(small.code, 2);
  EXPECT_NE(small.out.find("--budget 10"), std::string::npos) << small.out;
  std::filesystem::remove_all(dir);
}

// A model whose weights hold a NaN has NaN logits: eval refuses to print a NaN perplexity as a
// measurement (exit 2, naming the non-finite NLL), while the same model without the NaN evaluates.
TEST(Cli, EvalRefusesANonFiniteMeanNll) {
  const std::string dir = lowbit::testing::scratch_path("lowbit_cli_eval_nan").string();
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/m.safetensors", nan_path = dir + "/nan.safetensors", data = dir + "/d.txt";
  ASSERT_EQ(run("synth --dim 64 --layers 1 --heads 4 --ctx 32 --force -o " + path).code, 0);
  std::ofstream(data) << "Once upon a time there was a little model that could not count.\n";
  const result good = run("eval --model " + path + " --data " + data, "", true);
  ASSERT_EQ(good.code, 0) << good.out;
  lowbit::model m = lowbit::load_model(path);
  m.tensors.at("output_norm.weight").data[0] = std::numeric_limits<float>::quiet_NaN();
  lowbit::save_safetensors_model(m, nan_path);
  const result bad = run("eval --model " + nan_path + " --data " + data, "", true);
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("non-finite NLL"), std::string::npos) << bad.out;
  EXPECT_NE(bad.out.find("nan.safetensors"), std::string::npos) << bad.out;
  const result bad_json = run("eval --json --model " + nan_path + " --data " + data, "", false);
  EXPECT_EQ(bad_json.code, 2) << bad_json.out;
  EXPECT_EQ(bad_json.out.find("nan"), std::string::npos) << bad_json.out;  // nothing printed as a result
  std::filesystem::remove_all(dir);
}

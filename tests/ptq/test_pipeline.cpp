// The whole-model PTQ pipeline: calibration windows, the layer-by-layer order, and the scale
// folds of AWQ / SmoothQuant, which must leave the float function unchanged. Streaming
// (quantize_to_shards): the model read block by block from its file, each finished block in a
// shard, the output assembled from the shards — the bytes the in-memory pipeline writes, a killed
// run resumed without redoing finished blocks, a damaged shard never used.
#include <unistd.h>
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/cli_run.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/ptq/mixed.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/ptq/rotate.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"
#include "tests/data.hpp"

using namespace lowbit;

// Every shipped file test_ptq's tests read (tests/data.hpp): a missing one fails the run, listed.
LOWBIT_TEST_NEEDS_DATA("test_ptq", {"llama2c/stories260K.bin", "llama2c/tok512.bin", "text/tinystories_val_sample.txt"});

namespace {

const std::string data_dir = lowbit_test::data_dir();
const std::string stories_path = data_dir + "/llama2c/stories260K.bin";

const model& stories() {
  static const model m = load_llama2c(stories_path);
  return m;
}

const std::vector<int32_t>& story_ids() {
  static const std::vector<int32_t> ids = [] {
    std::ifstream in(data_dir + "/text/tinystories_val_sample.txt");
    std::stringstream ss;
    ss << in.rdbuf();
    const auto tok = load_llama2c_tokenizer(data_dir + "/llama2c/tok512.bin");
    auto all = encode_documents(*tok, ss.str());
    all.resize(40000);  // enough for the tests, fast to run
    return all;
  }();
  return ids;
}

std::vector<float> logits(const model& m, int n = 64) {
  forward_session s(m, {}, n);
  return s.forward(story_ids().data(), n);
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, mx = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i]))), mx = std::max(mx, double(std::fabs(a[i])));
  return d / mx;
}

ptq::quantize_options small_options(ptq::method how, const std::string& fmt) {
  ptq::quantize_options o;
  o.how = how;
  o.weights = parse_format(fmt);
  o.calib_samples = 8;
  o.calib_ctx = 128;
  return o;
}

// A progress callback that stops the run at its `step`-th call (a killed quantize).
struct interrupted {};
ptq::ptq_progress interrupt_at(int64_t step) {
  auto seen = std::make_shared<int64_t>(0);
  return [seen, step](int64_t, int64_t) {
    if (++*seen == step) throw interrupted{};
  };
}

// Streaming runs use fewer, shorter windows (4 of 64 tokens: 8 progress steps per block).
ptq::quantize_options stream_options(ptq::method how, const std::string& fmt) {
  ptq::quantize_options o = small_options(how, fmt);
  o.calib_samples = 4;
  o.calib_ctx = 64;
  return o;
}

std::string file_bytes(const std::string& path) { return lowbit::testing::read_file_bytes(path); }

std::string fresh_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + std::to_string(::getpid()) + "_lowbit_stream_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// The in-memory pipeline and the writers as `lowbit quantize` used them before streaming.
void write_in_memory(model m, ptq::quantize_options o, const std::string& out) {
  o.gguf_fallbacks = out.ends_with(".gguf");  // as the quantize job (ptq/job.cpp)
  const ptq::quantize_report r = ptq::quantize_model(m, story_ids(), o);
  if (out.ends_with(".gguf")) {
    gguf_export ex;
    ex.packed = r.packed;
    plan_gguf_export(m, ggml_type_for_format(o.weights), ex, o.gguf_fallbacks);
    save_gguf_model(m, out, ex);
  } else {
    std::map<std::string, quantized_tensor> packed;
    pack_linear_weights(m, o.weights, r.packed, packed);
    save_safetensors_model(m, out, "F32", packed);
  }
}

// The streaming pipeline and the writers as `lowbit quantize` uses them now.
ptq::quantize_report write_streamed(const tensor_reader& source, ptq::quantize_options o, const std::string& dir,
                                    const std::string& out, const ptq::ptq_progress& progress = {}) {
  o.checkpoint_dir = dir;
  o.gguf_fallbacks = out.ends_with(".gguf");  // as the quantize job (ptq/job.cpp)
  const ptq::quantize_report r = ptq::quantize_to_shards(source, story_ids(), o, progress);
  const auto quantized = ptq::read_quantized_shards(source, dir);
  if (out.ends_with(".gguf")) {
    std::map<std::string, uint32_t> types;
    std::set<std::string> rounded;
    gguf_export_types(quantized->header, ggml_type_for_format(o.weights), types, &rounded, o.gguf_fallbacks);
    save_gguf_model(*quantized, out, types, rounded);
  } else {
    save_safetensors_model(*quantized, out, "F32", true);
  }
  return r;
}

// A finished streaming run of `source` with `how` (int4/g32) into dir/shards; its options.
ptq::quantize_options finished_shards(const tensor_reader& source, const std::string& dir, ptq::method how) {
  auto o = stream_options(how, "int4/g32");
  o.checkpoint_dir = dir + "/shards";
  ptq::quantize_to_shards(source, story_ids(), o);
  return o;
}

// Runs `run`, which must throw lowbit::error with `text` in its message.
template <class F>
void expect_error_naming(F&& run, const std::string& text) {
  try {
    run();
    ADD_FAILURE() << "no error; expected one naming " << text;
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

uint64_t inode(const std::string& path) {
  struct stat st {};
  ::stat(path.c_str(), &st);
  return st.st_ino;
}

}  // namespace

TEST(Calibration, WindowsAreSeededDisjointAndInTheSecondHalf) {
  const auto a = ptq::calibration_windows(100000, 40, 256, 7), b = ptq::calibration_windows(100000, 40, 256, 7);
  const auto c = ptq::calibration_windows(100000, 40, 256, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_GE(a[i], 50000);
    EXPECT_LE(a[i] + 256, 100000);
    if (i) {
      EXPECT_GE(a[i], a[i - 1] + 256);  // sorted, non-overlapping
    }
  }
  try {
    ptq::calibration_windows(10000, 100, 256, 0);
    FAIL() << "accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("holds 19 windows"), std::string::npos) << e.what();
  }
}

// An identity format (fp32) through every method: GPTQ leaves each weight as it is; AWQ and
// SmoothQuant move scales between the norms (or v / up rows) and the weights, which changes no
// output beyond float rounding.
TEST(Pipeline, IdentityFormatKeepsTheFloatFunction) {
  const auto base = logits(stories());
  for (const auto how : {ptq::method::gptq, ptq::method::awq, ptq::method::smoothquant}) {
    model m = stories();
    ptq::quantize_model(m, story_ids(), small_options(how, "fp32"));
    const double d = max_rel_diff(base, logits(m));
    if (how == ptq::method::gptq) {
      for (const auto& [name, t] : m.tensors) EXPECT_EQ(t.data, stories().get(name).data) << name;
    }
    EXPECT_LT(d, 1e-5) << ptq::method_name(how);
  }
}

// SmoothQuant on the block's inputs really moves the scales: the norm weights change, the float
// function does not.
TEST(Pipeline, SmoothQuantFoldsIntoTheNorms) {
  model m = stories();
  auto o = small_options(ptq::method::smoothquant, "fp32");
  ptq::quantize_model(m, story_ids(), o);
  EXPECT_NE(m.get("blk.0.attn_norm.weight").data, stories().get("blk.0.attn_norm.weight").data);
  EXPECT_NE(m.get("blk.0.ffn_norm.weight").data, stories().get("blk.0.ffn_norm.weight").data);
  EXPECT_NE(m.get("blk.0.attn_q.weight").data, stories().get("blk.0.attn_q.weight").data);
  EXPECT_EQ(m.get("blk.0.ffn_down.weight").data, stories().get("blk.0.ffn_down.weight").data);
}

// On the real model, GPTQ's calibrated layers beat RTN on their calibration outputs, every
// weight's values are values of the format, and the held-out NLL is lower.
TEST(Pipeline, GptqBeatsRtnOnStories260K) {
  model rtn = stories(), gptq = stories();
  const auto ro = small_options(ptq::method::rtn, "int4/g32");
  ptq::quantize_model(rtn, story_ids(), ro);
  auto go = small_options(ptq::method::gptq, "int4/g32");
  go.calib_samples = 32;
  const auto report = ptq::quantize_model(gptq, story_ids(), go);
  ASSERT_EQ(report.layers.size(), 35u);
  double err = 0, rtn_err = 0;
  for (const auto& l : report.layers) err += l.error, rtn_err += l.rtn_error;
  EXPECT_LT(err, 0.85 * rtn_err);
  // GPTQ's weights are format values: quantizing them again in the format reproduces them when
  // the exported codes say so.
  for (const auto& [name, q] : report.packed) {
    std::vector<float> back(q.rows * q.cols);
    dequantize(q, back.data());
    EXPECT_EQ(back, gptq.get(name).data) << name;
  }
  EXPECT_EQ(report.packed.size(), 35u);
  eval_options eo;
  eo.ctx = 256;
  eo.max_tokens = 8192;  // the first half: never calibration data
  const double nll_rtn = evaluate(rtn, {}, story_ids(), eo).mean_nll;
  const double nll_gptq = evaluate(gptq, {}, story_ids(), eo).mean_nll;
  EXPECT_LT(nll_gptq, nll_rtn);
}

// GGUF export of the K-quants (docs/conventions.md §20, 22): a model whose rows are multiples of 256 is
// written as Q2_K ... Q6_K blocks with the method's own codes (ggml's search is not idempotent on
// its output, so they are not re-derived from the values), and the file loads to the same
// weights, bit for bit, and the same NLL as the model in memory.
TEST(Pipeline, KQuantGgufExportEvaluatesLikeTheModelInMemory) {
  model_config c;
  c.dim = 256, c.hidden_dim = 512, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4;
  c.vocab_size = 512, c.max_seq_len = 256;
  const model base = synthesize_model(c, 5);
  eval_options eo;
  eo.ctx = 128;
  eo.max_tokens = 512;
  for (const std::string fmt : {"q4_k", "q6_k", "q2_k", "q3_k", "q5_k"}) {
    for (const ptq::method how : {ptq::method::rtn, ptq::method::gptq, ptq::method::awq, ptq::method::imatrix}) {
      const std::string what = fmt + " " + ptq::method_name(how);
      // AWQ and imatrix (codes kept by the method) on q4_k only: the slow searches.
      if (fmt != "q4_k" && (how == ptq::method::awq || how == ptq::method::imatrix)) continue;
      model m = base;
      auto o = small_options(how, fmt);
      o.calib_samples = 4;
      o.awq.n_grid = 2, o.awq.clip_grid = 4;  // the search is not what is tested
      const ptq::quantize_report report = ptq::quantize_model(m, story_ids(), o);
      gguf_export ex;
      ex.packed = report.packed;
      const uint32_t type = ggml_type_for_format(o.weights);
      EXPECT_TRUE(plan_gguf_export(m, type, ex).empty()) << what;
      const std::string path = ::testing::TempDir() + std::to_string(::getpid()) + "_kquant_" + fmt + "_" + ptq::method_name(how) + ".gguf";
      save_gguf_model(m, path, ex);
      const gguf_file file(path);
      const model back = load_model(path);
      for (const std::string& name : m.linear_weight_names()) {
        EXPECT_EQ(static_cast<uint32_t>(file.get(name).type), type) << what << " " << name;
        const auto& a = m.get(name).data;
        const auto& b = back.get(name).data;
        ASSERT_EQ(a.size(), b.size());
        EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what << " " << name;
      }
      EXPECT_EQ(evaluate(back, {}, story_ids(), eo).mean_nll, evaluate(m, {}, story_ids(), eo).mean_nll) << what;
    }
  }
}

// stories260K's rows (64 and 172 columns) do not hold a super-block of 256: docs/conventions.md §22's
// fallback (llama.cpp's) writes q4_k's 64-column weights as Q5_0, q5_k's as Q5_1, q6_k's as
// Q8_0, q2_k's and q3_k's as Q4_0, ffn_down (172) as F16. With gguf_fallbacks (the quantize job
// writing a GGUF) the method quantizes those weights in the fallback format itself, as llama.cpp
// does; without, the export rounds the method's values onto it. Either way the file evaluates
// like the model in memory.
TEST(Pipeline, KQuantGgufFallsBackOnStories260K) {
  struct fallback_case {
    const char* fmt;
    ggml_type narrow;
    bool quantized_in_fallbacks;
  };
  const fallback_case cases[] = {{"q4_k", ggml_type::q5_0, true},  {"q4_k", ggml_type::q5_0, false},
                                 {"q5_k", ggml_type::q5_1, true},  {"q6_k", ggml_type::q8_0, true},
                                 {"q2_k", ggml_type::q4_0, true},  {"q3_k", ggml_type::q4_0, false}};
  eval_options eo;
  eo.ctx = 256;
  eo.max_tokens = 2048;
  for (const fallback_case& fc : cases) {
    const std::string what = fmt::format("{} (quantized in fallbacks: {})", fc.fmt, fc.quantized_in_fallbacks);
    model m = stories();
    auto o = small_options(ptq::method::rtn, fc.fmt);
    o.gguf_fallbacks = fc.quantized_in_fallbacks;
    EXPECT_EQ(ptq::weight_format_for(o, 64), fc.quantized_in_fallbacks ? ggml_type_format(fc.narrow) : o.weights) << what;
    EXPECT_EQ(ptq::weight_format_for(o, 172), o.weights) << what;  // F16: rounded by the writer
    EXPECT_EQ(ptq::weight_format_for(o, 512), o.weights) << what;
    ptq::quantize_model(m, story_ids(), o);
    const model quantized = m;
    gguf_export ex;
    const std::vector<std::string> fallbacks =
        plan_gguf_export(m, ggml_type_for_format(parse_format(fc.fmt)), ex, fc.quantized_in_fallbacks);
    ASSERT_EQ(fallbacks.size(), 35u) << what;
    int fits = 0, f16 = 0;
    for (const std::string& name : m.linear_weight_names()) {
      const auto type = static_cast<ggml_type>(ex.types.at(name));
      (type == fc.narrow ? fits : f16) += 1;
      EXPECT_EQ(type, m.get(name).cols() % 32 == 0 ? fc.narrow : ggml_type::f16) << what << " " << name;
      // Quantized in the fallback format, a weight is not rounded again: RTN in that format is
      // the export's rounding, to the bit.
      const tensor& t = m.get(name);
      if (fc.quantized_in_fallbacks && type == fc.narrow) {
        EXPECT_EQ(t.data, quantized.get(name).data) << what << " " << name;
        std::vector<float> again(t.data.size());
        fake_quantize_ref(t.data.data(), again.data(), t.rows(), t.cols(), ggml_type_format(fc.narrow));
        EXPECT_EQ(again, t.data) << what << " " << name;
      }
    }
    EXPECT_EQ(fits, 30) << what;
    EXPECT_EQ(f16, 5) << what;
    EXPECT_NE(fallbacks[0].find(fmt::format("({})", ggml_type_name(fc.narrow))), std::string::npos) << fallbacks[0];
    const std::string path = ::testing::TempDir() + std::to_string(::getpid()) + "_kquant_stories_" + fc.fmt + ".gguf";
    save_gguf_model(m, path, ex);
    EXPECT_EQ(evaluate(load_model(path), {}, story_ids(), eo).mean_nll, evaluate(m, {}, story_ids(), eo).mean_nll) << what;
  }
}

TEST(Pipeline, BadRequests) {
  model m = stories();
  EXPECT_THROW(ptq::parse_method("gptx"), error);
  auto o = small_options(ptq::method::gptq, "int4/g32");
  o.calib_samples = 1000;
  EXPECT_THROW(ptq::quantize_model(m, story_ids(), o), error);
}

TEST(Pipeline, LorcLowersTheCalibrationError) {
  model plain = stories(), lorc = stories();
  auto o = small_options(ptq::method::gptq, "int3/g32");
  const auto a = ptq::quantize_model(plain, story_ids(), o);
  o.lorc_rank = 4;
  const auto b = ptq::quantize_model(lorc, story_ids(), o);
  double ea = 0, eb = 0;
  for (const auto& l : a.layers) ea += l.error;
  for (const auto& l : b.layers) eb += l.error;
  EXPECT_LT(eb, ea);
  EXPECT_TRUE(b.packed.empty());  // Q + U V is not a value of the format
}

// LoRC needs no calibration data (it factors W - Q), so it applies with round-to-nearest too:
// before, --method rtn ran without the calibrated pass where LoRC runs, and rank 8 wrote the same
// weights as rank 0.
TEST(Pipeline, LorcAppliesToRoundToNearest) {
  const model base = stories();
  model plain = base, lorc = base;
  auto o = small_options(ptq::method::rtn, "int3/g32");
  ptq::quantize_model(plain, story_ids(), o);
  o.lorc_rank = 8;
  ptq::quantize_model(lorc, story_ids(), o);
  double ep = 0, el = 0;  // squared weight error against the float model, summed over the linear weights
  for (const std::string& name : base.linear_weight_names()) {
    const auto& w = base.get(name).data;
    const auto& p = plain.get(name).data;
    const auto& l = lorc.get(name).data;
    for (size_t i = 0; i < w.size(); ++i)
      ep += double(w[i] - p[i]) * (w[i] - p[i]), el += double(w[i] - l[i]) * (w[i] - l[i]);
  }
  EXPECT_LT(el, ep);
}

// LoRC after every method, through the one step they share (compensate): rank 8 changes the
// model's output and lowers each method's weight error; and AdaRound's result is stored as codes.
TEST(Pipeline, LorcAppliesAfterEveryMethod) {
  const model base = stories();
  // (gptq: LorcLowersTheCalibrationError; nupes shares the path and is slow here)
  for (const ptq::method how : {ptq::method::rtn, ptq::method::powerquant, ptq::method::adaround, ptq::method::imatrix}) {
    model plain = base, lorc = base;
    auto o = small_options(how, "int3/g32");
    o.calib_samples = 2, o.calib_ctx = 64;
    o.adaround.iters = 20;
    const auto a = ptq::quantize_model(plain, story_ids(), o);
    o.lorc_rank = 8;
    const auto b = ptq::quantize_model(lorc, story_ids(), o);
    EXPECT_NE(logits(plain), logits(lorc)) << ptq::method_name(how);
    double ep = 0, el = 0;
    for (const std::string& name : base.linear_weight_names()) {
      const auto& w = base.get(name).data;
      const auto& p = plain.get(name).data;
      const auto& l = lorc.get(name).data;
      for (size_t i = 0; i < w.size(); ++i)
        ep += double(w[i] - p[i]) * (w[i] - p[i]), el += double(w[i] - l[i]) * (w[i] - l[i]);
    }
    EXPECT_LT(el, ep) << ptq::method_name(how);
    if (how == ptq::method::adaround) {
      EXPECT_EQ(a.packed.size(), base.linear_weight_names().size());
    }
    EXPECT_TRUE(b.packed.empty()) << ptq::method_name(how);  // Q + U V: not values of the format
  }
}

// GPT-2 has biases: bias correction moves them when the weights change, and leaves them when
// the format is the identity.
TEST(Pipeline, BiasCorrectionOnGpt2) {
  model_config c;
  c.arch = architecture::gpt2;
  c.dim = 64, c.hidden_dim = 256, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4;
  c.vocab_size = 512, c.max_seq_len = 128;
  const model base = synthesize_model(c, 3);
  for (const std::string fmt : {"fp32", "int4/g32"}) {
    model m = base;
    auto o = small_options(ptq::method::rtn, fmt);
    o.bias_correct = true;
    ptq::quantize_model(m, story_ids(), o);
    const bool moved = m.get("blk.1.ffn_down.bias").data != base.get("blk.1.ffn_down.bias").data;
    EXPECT_EQ(moved, fmt != "fp32") << fmt;
  }
}

// docs/conventions.md §22b: sensitivities measured one weight at a time, greedy under the budget.
TEST(MixedPrecision, MeetsTheBudgetAndSpendsBitsWhereTheyMatter) {
  ptq::mixed_options o;
  o.formats = {"int3/g32", "int8/c"};
  o.calib_samples = 4;
  o.calib_ctx = 128;
  o.budget_bits = 6.0;
  const auto r = ptq::allocate_mixed_precision(stories(), story_ids(), o);
  ASSERT_EQ(r.formats.front(), "int8/c");  // widest first
  EXPECT_LE(r.average_bits, 6.0 + 1e-9);
  EXPECT_GT(r.average_bits, 5.0);  // it stops as soon as the budget holds
  model m = stories();
  apply_weight_plan(m, r.plan);
  EXPECT_NEAR(average_linear_bits(m, r.plan), r.average_bits, 1e-9);
  // Every weight left at int8 is at least as sensitive to int3 as some weight moved to int3
  // (greedy on NLL increase per bit saved; equal sizes inside a block make it a plain order).
  double max_moved = -INFINITY, min_kept = INFINITY;
  for (const auto& l : r.layers) {
    const double d = l.delta_nll[1] - l.delta_nll[0];
    if (l.format == "int3/g32") max_moved = std::max(max_moved, d / stories().get(l.name).numel());
    else min_kept = std::min(min_kept, d / stories().get(l.name).numel());
  }
  EXPECT_LE(max_moved, min_kept * 1.0001 + 1e-12);
  o.budget_bits = 2.0;
  EXPECT_THROW(ptq::allocate_mixed_precision(stories(), story_ids(), o), error);
}

// A run killed after some blocks resumes from its checkpoint and ends with the same model, bit
// for bit, as a run that was never interrupted; a checkpoint of other options is refused.
TEST(Pipeline, KilledRunResumesBitExactly) {
  // Stochastic rounding too: its stream position (tensor_id) is part of the checkpoint.
  for (const std::string fmt : {"int4/g32", "int4/g32~sr:3"}) {
  const std::string dir = ::testing::TempDir() + std::to_string(::getpid()) + "_lowbit_ptq_checkpoint";
  std::filesystem::remove_all(dir);
  auto o = small_options(ptq::method::gptq, fmt);
  model whole = stories();
  const auto full = ptq::quantize_model(whole, story_ids(), o);

  o.checkpoint_dir = dir;
  model killed = stories();
  try {  // stop in the middle of block 3 (2 passes x 8 windows per block)
    ptq::quantize_model(killed, story_ids(), o, interrupt_at(3 * 16 + 5));
    FAIL() << "not interrupted";
  } catch (const interrupted&) {
  }
  model resumed = stories();
  const auto r = ptq::quantize_model(resumed, story_ids(), o);
  EXPECT_EQ(r.resumed_at_block, 3);
  for (const auto& [name, t] : whole.tensors) EXPECT_EQ(resumed.get(name).data, t.data) << name;
  EXPECT_EQ(r.packed.size(), full.packed.size());
  for (const auto& [name, q] : full.packed) EXPECT_TRUE(r.packed.at(name) == q) << name;
  EXPECT_EQ(r.layers.size(), full.layers.size());

  auto other = o;
  other.seed = 99;
  model m = stories();
  EXPECT_THROW(ptq::quantize_model(m, story_ids(), other), error);
  std::filesystem::remove_all(dir);
  }
}

// Cross-layer equalization: the float function stays, and each equalized channel's range is the
// same in the producer's row and the consumer's column.
TEST(Pipeline, CrossLayerEqualizationKeepsTheFunction) {
  model m = stories();
  auto o = small_options(ptq::method::rtn, "fp32");
  o.equalize = true;
  ptq::quantize_model(m, story_ids(), o);
  EXPECT_LT(max_rel_diff(logits(stories()), logits(m)), 1e-5);
  const tensor& up = m.get("blk.2.ffn_up.weight");
  const tensor& down = m.get("blk.2.ffn_down.weight");
  EXPECT_NE(up.data, stories().get("blk.2.ffn_up.weight").data);
  for (int64_t j = 0; j < down.cols(); j += 17) {
    float r1 = 0, r2 = 0;
    for (int64_t c = 0; c < up.cols(); ++c) r1 = std::max(r1, std::fabs(up.data[j * up.cols() + c]));
    for (int64_t r = 0; r < down.rows(); ++r) r2 = std::max(r2, std::fabs(down.data[r * down.cols() + j]));
    EXPECT_NEAR(r1, r2, 1e-5 * r1) << j;
  }
}

// QuaRot-style rotation: the function stays (stories260K, dim 64 = one Hadamard block; and a
// random Llama of dim 12, tiled by blocks of 4), the classifier is untied, rows become incoherent.
TEST(Rotation, KeepsTheFunctionAndSpreadsOutliers) {
  model m = stories();
  const auto r = ptq::rotate_residual(m, 5);
  EXPECT_EQ(r.block, 64);
  EXPECT_TRUE(r.untied);
  EXPECT_FALSE(m.config.tied_classifier);
  EXPECT_LT(max_rel_diff(logits(stories()), logits(m)), 1e-5);
  for (float g : m.get("blk.0.attn_norm.weight").data) EXPECT_EQ(g, 1.0f);

  model_config c;
  c.dim = 12, c.hidden_dim = 32, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.vocab_size = 512;
  c.max_seq_len = 64, c.tied_classifier = true;
  model small = synthesize_model(c, 9);
  for (auto& [name, t] : small.tensors)  // norms that are not all ones, so the folds matter
    if (name.find("norm") != std::string::npos)
      for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = 0.5f + 0.1f * float(i % 7);
  const model before = small;
  const auto rs = ptq::rotate_residual(small, 1);
  EXPECT_EQ(rs.block, 4);
  EXPECT_LT(max_rel_diff(logits(before, 32), logits(small, 32)), 1e-5);

  // One outlier column in a reading weight is spread over its Hadamard block.
  model spiky = stories();
  tensor& q = spiky.get_mut("blk.1.attn_q.weight");
  for (int64_t r0 = 0; r0 < q.rows(); ++r0) q.data[r0 * q.cols() + 7] = 50.0f;  // ~100x the others
  auto peak_over_rms = [](const tensor& t) {
    double ratio = 0;
    for (int64_t r0 = 0; r0 < t.rows(); ++r0) {
      double mx = 0, ss = 0;
      for (int64_t j = 0; j < t.cols(); ++j) mx = std::max(mx, double(std::fabs(t.data[r0 * t.cols() + j]))), ss += double(t.data[r0 * t.cols() + j]) * t.data[r0 * t.cols() + j];
      ratio += mx / std::sqrt(ss / t.cols());
    }
    return ratio / t.rows();
  };
  const double before_ratio = peak_over_rms(q);
  ptq::rotate_residual(spiky, 2);
  EXPECT_LT(peak_over_rms(spiky.get("blk.1.attn_q.weight")), 0.5 * before_ratio);

  model_config g = c;
  g.arch = architecture::gpt2;
  g.n_kv_heads = 2;
  model gpt2 = synthesize_model(g, 1);
  EXPECT_THROW(ptq::rotate_residual(gpt2), error);
}

// Byte for byte the same file, for methods with their own codes (GPTQ), with folded scales
// (AWQ, SmoothQuant + equalization), data-free RTN, both output formats, and a GGUF input.
TEST(Streaming, WritesTheBytesOfTheInMemoryPipeline) {
  const std::string dir = fresh_dir("equal");
  struct run_case {
    ptq::method how;
    std::string fmt, ext;
    bool equalize;
  };
  const std::vector<run_case> cases = {{ptq::method::awq, "q4_0", ".gguf", false},
                                       {ptq::method::smoothquant, "int4/g32", ".safetensors", true},
                                       {ptq::method::rtn, "int4/g32~sr:3", ".safetensors", false},
                                       {ptq::method::gptq, "int4/g32", ".safetensors", false}};  // last: packed
  const auto source = open_model_reader(stories_path);
  for (const run_case& c : cases) {
    SCOPED_TRACE(std::string(ptq::method_name(c.how)) + " " + c.fmt + c.ext);
    auto o = stream_options(c.how, c.fmt);
    o.equalize = c.equalize;
    const std::string a = dir + "/memory" + c.ext, b = dir + "/streamed" + c.ext;
    write_in_memory(load_model(stories_path), o, a);
    std::filesystem::remove_all(dir + "/shards");
    const auto r = write_streamed(*source, o, dir + "/shards", b);
    EXPECT_EQ(r.resumed_at_block, 0);
    EXPECT_TRUE(r.packed.empty());  // the shards hold the codes
    const std::string bytes_a = file_bytes(a), bytes_b = file_bytes(b);
    EXPECT_GT(bytes_a.size(), 100000u);
    EXPECT_TRUE(bytes_a == bytes_b) << a << " and " << b << " differ";
  }

  // A GGUF input (F32) and a quantized input (the packed int4/g32 file above, dequantized as it
  // is read) stream too, and give what their in-memory loads give.
  save_gguf_model(load_model(stories_path), dir + "/input.gguf");
  std::filesystem::rename(dir + "/memory.safetensors", dir + "/packed.safetensors");
  const auto o = stream_options(ptq::method::gptq, "int8/g32");
  for (const std::string& input : {dir + "/input.gguf", dir + "/packed.safetensors"}) {
    SCOPED_TRACE(input);
    if (input.find("packed") != std::string::npos) {
      EXPECT_EQ(load_packed_tensors(input).size(), 35u);  // every weight stored as codes
    }
    write_in_memory(load_model(input), o, dir + "/memory.safetensors");
    std::filesystem::remove_all(dir + "/shards");
    write_streamed(*open_model_reader(input), o, dir + "/shards", dir + "/streamed.safetensors");
    EXPECT_TRUE(file_bytes(dir + "/memory.safetensors") == file_bytes(dir + "/streamed.safetensors"));
  }
  std::filesystem::remove_all(dir);
}

// A reference independent of the writers (the byte-equality tests above compare two paths that
// share them): data-free RTN files, written from the shards and decoded by the readers (the packed
// safetensors reader, GGUF's block decoder), hold fake_quantize_ref of the source's weights
// (the scalar reference kernel, not the pipeline's fast one) bit for bit, and the source's other
// tensors unchanged.
TEST(Streaming, RtnFilesHoldTheReferenceQuantization) {
  const std::string dir = fresh_dir("reference");
  const auto source = open_model_reader(stories_path);
  const model original = load_model(stories_path);
  for (const auto& [fmt, ext] : std::vector<std::pair<std::string, std::string>>{
           {"int4/g32", ".safetensors"}, {"uint4/g32", ".safetensors"}, {"q4_0", ".gguf"}, {"mxfp4", ".gguf"},
           {"q5_0", ".gguf"}, {"q4_1", ".gguf"}, {"q5_1", ".safetensors"}, {"q5_1", ".gguf"}}) {
    SCOPED_TRACE(fmt + ext);
    std::filesystem::remove_all(dir + "/shards");
    const std::string out = dir + "/q" + ext;
    write_streamed(*source, stream_options(ptq::method::rtn, fmt), dir + "/shards", out);
    if (ext == ".safetensors") {
      EXPECT_EQ(load_packed_tensors(out).size(), original.linear_weight_names().size());  // all as codes
    }
    const model written = load_model(out);
    const std::vector<std::string> linear = original.linear_weight_names();
    for (const auto& [name, t] : original.tensors) {
      std::vector<float> want = t.data;
      if (std::find(linear.begin(), linear.end(), name) != linear.end()) {
        fake_quantize_ref(t.data.data(), want.data(), t.rows(), t.cols(), parse_format(fmt));
        // docs/conventions.md §22: GGUF rows that do not fill the blocks of 32 (ffn_down's 172) fall
        // back to F16, onto which the quantized values are rounded.
        if (ext == ".gguf" && t.cols() % 32 != 0)
          fake_quantize_ref(want.data(), want.data(), t.rows(), t.cols(), parse_format("fp16"));
      }
      const std::vector<float>& got = written.get(name).data;
      ASSERT_EQ(got.size(), want.size()) << name;
      if (ext == ".gguf")  // as floats: ggml's MXFP4 table decodes the -0 code as +0
        EXPECT_TRUE(got == want) << name;
      else
        EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << name;
    }
  }
  std::filesystem::remove_all(dir);
}

// GPT-2 (biases, the fused qkv) with bias correction and LoRC (weights that stay float).
TEST(Streaming, Gpt2WithBiasCorrectionAndLorcWritesTheSameBytes) {
  const std::string dir = fresh_dir("gpt2");
  model_config c;
  c.arch = architecture::gpt2;
  c.dim = 64, c.hidden_dim = 256, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.vocab_size = 512;
  c.max_seq_len = 128;
  save_safetensors_model(synthesize_model(c, 3), dir + "/gpt2.safetensors");
  auto o = stream_options(ptq::method::gptq, "int4/g32");
  o.bias_correct = true;
  o.lorc_rank = 4;
  write_in_memory(load_model(dir + "/gpt2.safetensors"), o, dir + "/memory.safetensors");
  const auto source = open_model_reader(dir + "/gpt2.safetensors");
  write_streamed(*source, o, dir + "/shards", dir + "/streamed.safetensors");
  EXPECT_TRUE(file_bytes(dir + "/memory.safetensors") == file_bytes(dir + "/streamed.safetensors"));
  const model q = load_model(dir + "/streamed.safetensors");
  EXPECT_NE(q.get("blk.1.ffn_down.bias").data, load_model(dir + "/gpt2.safetensors").get("blk.1.ffn_down.bias").data);
  std::filesystem::remove_all(dir);
}

// A run killed in block 3 resumes there, keeps the finished shards (not rewritten) and writes
// the same file as an uninterrupted run; another run's shards are refused.
TEST(Streaming, KilledRunResumesAtTheNextBlock) {
  const std::string dir = fresh_dir("resume");
  const auto source = open_model_reader(stories_path);
  const auto o = stream_options(ptq::method::gptq, "int4/g32~sr:3");  // stochastic: tensor_id resumes too
  write_streamed(*source, o, dir + "/whole", dir + "/whole.safetensors");

  try {  // stop in the middle of block 3 (2 passes x 4 windows per block)
    write_streamed(*source, o, dir + "/killed", dir + "/killed.safetensors", interrupt_at(3 * 8 + 5));
    FAIL() << "not interrupted";
  } catch (const interrupted&) {
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/killed.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/killed/blk.2.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/killed/blk.3.safetensors"));
  const uint64_t shard0 = inode(dir + "/killed/blk.0.safetensors");
  const auto r = write_streamed(*source, o, dir + "/killed", dir + "/killed.safetensors");
  EXPECT_EQ(r.resumed_at_block, 3);
  EXPECT_EQ(inode(dir + "/killed/blk.0.safetensors"), shard0);  // reused, not rewritten
  EXPECT_EQ(r.layers.size(), size_t(source->header.config.n_layers) * 7);
  EXPECT_TRUE(file_bytes(dir + "/whole.safetensors") == file_bytes(dir + "/killed.safetensors"));

  auto other = o;
  other.seed = 99;
  other.checkpoint_dir = dir + "/killed";
  expect_error_naming([&] { ptq::quantize_to_shards(*source, story_ids(), other); }, "another run");
  std::filesystem::remove_all(dir);
}

// A shard damaged on disk (a flipped byte, a truncated file) stops the run with an error naming
// it, on resume and when the output is assembled; it is never used.
TEST(Streaming, DamagedShardIsRefused) {
  const std::string dir = fresh_dir("damaged");
  const auto source = open_model_reader(stories_path);
  finished_shards(*source, dir, ptq::method::rtn);
  const std::string shard1 = dir + "/shards/blk.1.safetensors";
  std::string bytes = file_bytes(shard1);
  auto expect_refused = [&](const std::string& what) {
    SCOPED_TRACE(what);
    expect_error_naming([&] { ptq::read_quantized_shards(*source, dir + "/shards")->read("blk.1.ffn_up.weight"); },
                        "blk.1.safetensors");
  };
  {
    std::string flipped = bytes;
    flipped[flipped.size() - 100] ^= 0x10;
    std::ofstream(shard1, std::ios::binary | std::ios::trunc) << flipped;
    expect_refused("flipped byte");
  }
  {
    std::ofstream(shard1, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
    expect_refused("truncated");
  }
  // Resuming a run whose finished shard is damaged: refused as well.
  auto gptq = stream_options(ptq::method::gptq, "int4/g32");
  gptq.checkpoint_dir = dir + "/gptq";
  try {
    ptq::quantize_to_shards(*source, story_ids(), gptq, interrupt_at(2 * 8 + 1));
  } catch (const interrupted&) {
  }
  const std::string gptq0 = dir + "/gptq/blk.0.safetensors";
  bytes = file_bytes(gptq0);
  bytes[bytes.size() - 8] ^= 0x01;
  std::ofstream(gptq0, std::ios::binary | std::ios::trunc) << bytes;
  expect_error_naming([&] { ptq::quantize_to_shards(*source, story_ids(), gptq); }, "checksum");
  std::filesystem::remove_all(dir);
}

namespace {

// A small Llama for the streaming checks that need a model of their own.
model_config small_llama() {
  model_config c;
  c.dim = 64, c.hidden_dim = 128, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.vocab_size = 512;
  c.max_seq_len = 128;
  return c;
}

// A reader whose tensors come back in another shape than its header says.
class misreading_reader final : public tensor_reader {
 public:
  explicit misreading_reader(const model& m) : m_(m) {  // the header: shapes only, no values copied
    header.config = m.config;
    header.source_path = m.source_path;
    for (const auto& [name, t] : m.tensors) header.tensors[name].shape = t.shape;
  }

 protected:
  tensor load(const std::string& name) const override {
    tensor t = m_.get(name);
    if (name == "blk.1.ffn_up.weight") t.shape = {t.shape[1], t.shape[0]};
    return t;
  }

 private:
  const model& m_;
};

}  // namespace

// A config that contradicts the tensors (intermediate_size 4096, tensors of 128 rows) is refused
// naming the tensor and the config's numbers, before anything is read or written: opening the file,
// and quantize_to_shards given a reader with such a header (rtn and gptq); a tensor read in another
// shape than its header's is refused too.
TEST(Streaming, ShapesThatContradictTheConfigAreRefused) {
  const std::string dir = fresh_dir("lying");
  model m = synthesize_model(small_llama(), 5);
  m.config.hidden_dim = 4096;
  save_safetensors_model(*reader_of(m), dir + "/lying.safetensors", "F32", false);  // writers trust the reader
  expect_error_naming([&] { open_model_reader(dir + "/lying.safetensors"); },
                      "lying.safetensors: tensor 'blk.0.ffn_gate.weight' has shape [128, 64], the config (dim 64, "
                      "hidden_dim 4096");
  m.source_path = "lying";
  for (const ptq::method how : {ptq::method::rtn, ptq::method::gptq}) {
    auto o = stream_options(how, "int4/g32");
    o.checkpoint_dir = dir + "/shards";
    expect_error_naming([&] { ptq::quantize_to_shards(*reader_of(m), story_ids(), o); }, "model lying: tensor 'blk.0.ffn_gate.weight'");
    EXPECT_FALSE(std::filesystem::exists(dir + "/shards"));
  }
  m.config.hidden_dim = 128;
  const misreading_reader misreading(m);
  auto o = stream_options(ptq::method::rtn, "int4/g32");
  o.checkpoint_dir = dir + "/shards";
  expect_error_naming([&] { ptq::quantize_to_shards(misreading, story_ids(), o); },
                      "tensor 'blk.1.ffn_up.weight' read as 8192 values of shape [64, 128]; the header says [128, 64]");
  std::filesystem::remove_all(dir);
}

// Tensors a GGUF carries beyond the architecture's, named like a block's (blk.<n_layers>.x, blk.x.y),
// are not a block's: they pass through from the source into a GGUF output.
TEST(Streaming, GgufTensorsBeyondTheBlocksPassThrough) {
  const std::string dir = fresh_dir("extra");
  model m = synthesize_model(small_llama(), 6);
  m.tensors["blk.2.extra.weight"] = tensor{{2, 32}, std::vector<float>(64, 0.25f)};
  m.tensors["blk.x.note"] = tensor{{32}, std::vector<float>(32, -1.0f)};
  save_gguf_model(m, dir + "/in.gguf");
  const auto source = open_model_reader(dir + "/in.gguf");
  for (const ptq::method how : {ptq::method::rtn, ptq::method::gptq}) {
    SCOPED_TRACE(ptq::method_name(how));
    std::filesystem::remove_all(dir + "/shards");
    write_streamed(*source, stream_options(how, "q8_0"), dir + "/shards", dir + "/out.gguf");
    const model q = load_model(dir + "/out.gguf");
    EXPECT_EQ(q.get("blk.2.extra.weight").data, m.get("blk.2.extra.weight").data);
    EXPECT_EQ(q.get("blk.x.note").data, m.get("blk.x.note").data);
    EXPECT_NE(q.get("blk.1.ffn_up.weight").data, m.get("blk.1.ffn_up.weight").data);  // quantized
  }
  std::filesystem::remove_all(dir);
}

// Every shard names its run and block and is checksummed header and all: another block's shard in
// its place, a changed metadata byte, and an older checkpoint's state are refused, saying so.
TEST(Streaming, ShardsBelongToTheirRunAndBlock) {
  const std::string dir = fresh_dir("tied");
  const auto source = open_model_reader(stories_path);
  const auto o = finished_shards(*source, dir, ptq::method::rtn);
  const std::string shard0 = dir + "/shards/blk.0.safetensors", shard1 = dir + "/shards/blk.1.safetensors";
  const std::string bytes0 = file_bytes(shard0), bytes1 = file_bytes(shard1);
  auto read_block1 = [&] { ptq::read_quantized_shards(*source, dir + "/shards")->read("blk.1.ffn_up.weight"); };
  std::ofstream(shard1, std::ios::binary | std::ios::trunc) << bytes0;  // block 0's shard as block 1's
  expect_error_naming(read_block1, "lowbit.block 0 is not this run's block 1");
  std::string changed = bytes1;  // a metadata value changed, the JSON still valid: the checksum shows it
  const std::string known = "\"lowbit.known_codes\":\"[\\\"blk.1.";  // RTN's own codes, block 1's names
  const size_t at = changed.find(known);
  ASSERT_NE(at, std::string::npos);
  changed[at + known.size() - 2] = '2';
  std::ofstream(shard1, std::ios::binary | std::ios::trunc) << changed;
  expect_error_naming(read_block1, "checksum");
  std::ofstream(shard1, std::ios::binary | std::ios::trunc) << bytes1;
  read_block1();  // restored: read
  // A checkpoint of the version before (no "version" in state.json).
  std::ifstream in(dir + "/shards/state.json");
  nlohmann::json state = nlohmann::json::parse(in);
  in.close();
  state.erase("version");
  std::ofstream(dir + "/shards/state.json", std::ios::trunc) << state.dump();
  expect_error_naming([&] { ptq::quantize_to_shards(*source, story_ids(), o); }, "another lowbit version");
  std::filesystem::remove_all(dir);
}

// A resumed run with every block done (only the output left to assemble) still reports the
// calibration windows and its time.
TEST(Streaming, FinishedRunResumedReportsItsWindows) {
  const std::string dir = fresh_dir("finished");
  const auto source = open_model_reader(stories_path);
  const auto o = stream_options(ptq::method::gptq, "int4/g32");
  const auto first = write_streamed(*source, o, dir + "/shards", dir + "/q.safetensors");
  std::vector<uint64_t> written;  // the shards' inodes: none is rewritten
  for (int b = 0; b < source->header.config.n_layers; ++b)
    written.push_back(inode(dir + "/shards/blk." + std::to_string(b) + ".safetensors"));
  const auto again = write_streamed(*source, o, dir + "/shards", dir + "/again.safetensors");
  EXPECT_TRUE(file_bytes(dir + "/q.safetensors") == file_bytes(dir + "/again.safetensors"));
  EXPECT_EQ(again.resumed_at_block, source->header.config.n_layers);
  EXPECT_GT(first.windows_available, 0);
  EXPECT_EQ(again.windows_available, first.windows_available);
  EXPECT_GT(again.seconds, 0);
  // Its layer reports are the finished run's, restored from the state, and it did none of the
  // work: no block was quantized again (no shard rewritten).
  ASSERT_EQ(again.layers.size(), first.layers.size());
  for (size_t i = 0; i < first.layers.size(); ++i) {
    EXPECT_EQ(again.layers[i].name, first.layers[i].name);
    EXPECT_EQ(again.layers[i].error, first.layers[i].error) << first.layers[i].name;
    EXPECT_EQ(again.layers[i].rtn_error, first.layers[i].rtn_error) << first.layers[i].name;
  }
  for (int b = 0; b < source->header.config.n_layers; ++b)
    EXPECT_EQ(inode(dir + "/shards/blk." + std::to_string(b) + ".safetensors"), written[static_cast<size_t>(b)])
        << "block " << b << " rewritten";
  std::filesystem::remove_all(dir);
}

// --db's SQNR, read one tensor at a time, is apply_weight_plan's on the whole model.
TEST(Streaming, WeightPlanReportsReadOneTensorAtATime) {
  quant_plan p;
  p.weights = parse_format("int4/g32~sr:1");
  model whole = stories();
  const auto a = apply_weight_plan(whole, p);
  const auto b = weight_plan_reports(*open_model_reader(stories_path), p);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].sqnr_db, b[i].sqnr_db) << a[i].name;
  }
}

// The shards' reader tells a coded tensor's layout from the shard's header (the writers describe
// the packed tensors before they read them): the layout its codes have, zero points (q4_0) and a
// tensor scale (nvfp4) included.
TEST(Streaming, ShardLayoutsAreTheCodesLayouts) {
  const std::string dir = fresh_dir("layouts");
  const auto source = open_model_reader(stories_path);
  for (const std::string fmt : {"int4/g32", "q4_0", "nvfp4", "q4_k"}) {
    SCOPED_TRACE(fmt);
    std::filesystem::remove_all(dir + "/shards");
    write_streamed(*source, stream_options(ptq::method::rtn, fmt), dir + "/shards", dir + "/q.safetensors");
    const auto r = ptq::read_quantized_shards(*source, dir + "/shards");
    ASSERT_EQ(r->coded_names().size(), 35u);  // RTN's own codes: every weight (nvfp4's too, not re-encoded)
    int tensor_scales = 0, zero_points = 0, super_scales = 0;
    for (const std::string& name : r->coded_names()) {
      const codes_layout l = r->read_codes_layout(name);
      const quantized_tensor q = r->read_codes(name);
      EXPECT_TRUE(l.fmt == q.fmt) << name;
      EXPECT_EQ(l.rows, q.rows) << name;
      EXPECT_EQ(l.cols, q.cols) << name;
      EXPECT_EQ(l.row_bytes, q.row_bytes) << name;
      EXPECT_EQ(l.n_scales, int64_t(q.scales.size())) << name;
      EXPECT_EQ(l.n_zero_points, int64_t(q.zero_points.size())) << name;
      EXPECT_EQ(l.n_super_scales, int64_t(q.super_scales.size())) << name;
      EXPECT_EQ(l.tensor_scale, q.tensor_scale != 1.0f) << name;
      tensor_scales += l.tensor_scale, zero_points += l.n_zero_points > 0, super_scales += l.n_super_scales > 0;
    }
    EXPECT_EQ(tensor_scales > 0, fmt == "nvfp4");
    EXPECT_EQ(super_scales > 0, fmt == "q4_k");
    if (fmt != "q4_k") {  // (q4_k's mins are its own)
      EXPECT_EQ(zero_points > 0, fmt == "q4_0");
    }
    // The file described from the layouts is the in-memory pipeline's (described from its codes).
    write_in_memory(load_model(stories_path), stream_options(ptq::method::rtn, fmt), dir + "/memory.safetensors");
    EXPECT_TRUE(file_bytes(dir + "/q.safetensors") == file_bytes(dir + "/memory.safetensors"));
  }
  std::filesystem::remove_all(dir);
}

// A coded weight is stored in its shard as its codes alone (no float copy: a 4-bit weight in
// about 1/7 of the bytes), the norms as floats; a resumed run and the shards' reader rebuild the
// weight's values from the codes, bit for bit those of the in-memory pipeline.
TEST(Streaming, ShardsHoldCodedWeightsAsCodesAlone) {
  const std::string dir = fresh_dir("codes_only");
  const auto source = open_model_reader(stories_path);
  const auto o = finished_shards(*source, dir, ptq::method::gptq);
  const safetensors_file shard(dir + "/shards/blk.0.safetensors");
  int64_t weight_floats = 0;
  for (const std::string& name : source->header.linear_weight_names()) {
    if (!name.starts_with("blk.0.")) continue;
    EXPECT_EQ(shard.find(name), nullptr) << name << " has a float copy";
    ASSERT_NE(shard.find(name + ".codes"), nullptr) << name;
    weight_floats += source->header.get(name).rows() * source->header.get(name).cols();
  }
  EXPECT_NE(shard.find("blk.0.attn_norm.weight"), nullptr);
  EXPECT_LT(std::filesystem::file_size(dir + "/shards/blk.0.safetensors"), uint64_t(weight_floats) * 4 / 5);
  // The values rebuilt from the shards are the in-memory pipeline's.
  model m = load_model(stories_path);
  auto in_memory = o;
  in_memory.checkpoint_dir.clear();
  ptq::quantize_model(m, story_ids(), in_memory);
  const auto quantized = ptq::read_quantized_shards(*source, dir + "/shards");
  for (const std::string& name : m.linear_weight_names()) {
    const tensor t = quantized->read(name);
    ASSERT_EQ(t.data.size(), m.get(name).data.size()) << name;
    EXPECT_EQ(std::memcmp(t.data.data(), m.get(name).data.data(), t.data.size() * 4), 0) << name;
  }
  std::filesystem::remove_all(dir);
}

// The K-quants stream too: their codes and super-block scales travel in the shards (no re-derived
// codes: ggml's search is not idempotent on its own output), the GGUF writer makes Q4_K / Q6_K
// blocks from them, and docs/conventions.md §22's fallbacks (stories260K's rows of 64 -> Q5_0 for
// q4_k, of 172 -> F16) are rounded as they are written — byte for byte the in-memory pipeline's
// files, and a killed K-quant run resumes to the same bytes.
TEST(Streaming, KQuantsWriteTheBytesOfTheInMemoryPipeline) {
  const std::string dir = fresh_dir("kquant");
  model_config c;
  c.dim = 256, c.hidden_dim = 512, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4;
  c.vocab_size = 512, c.max_seq_len = 256;
  const std::string wide = dir + "/wide.safetensors";
  save_safetensors_model(synthesize_model(c, 5), wide);
  struct run_case {
    std::string input;
    ptq::method how;
    std::string fmt, ext;
  };
  const std::vector<run_case> cases = {{stories_path, ptq::method::rtn, "q4_k", ".gguf"},
                                       {stories_path, ptq::method::imatrix, "q4_k", ".safetensors"},
                                       {stories_path, ptq::method::gptq, "q6_k", ".safetensors"},
                                       {wide, ptq::method::gptq, "q4_k", ".gguf"},
                                       {wide, ptq::method::rtn, "q6_k", ".gguf"},
                                       {wide, ptq::method::imatrix, "q4_k", ".gguf"}};
  for (const run_case& rc : cases) {
    SCOPED_TRACE(rc.input + " " + ptq::method_name(rc.how) + " " + rc.fmt + rc.ext);
    const auto o = stream_options(rc.how, rc.fmt);
    const std::string a = dir + "/memory" + rc.ext, b = dir + "/streamed" + rc.ext;
    write_in_memory(load_model(rc.input), o, a);
    std::filesystem::remove_all(dir + "/shards");
    const auto source = open_model_reader(rc.input);
    write_streamed(*source, o, dir + "/shards", b);
    const std::string bytes_a = file_bytes(a), bytes_b = file_bytes(b);
    EXPECT_GT(bytes_a.size(), 10000u);
    EXPECT_TRUE(bytes_a == bytes_b) << a << " and " << b << " differ";
    if (rc.ext == ".safetensors") {  // every weight as its K-quant codes, super-scales included
      const auto packed = load_packed_tensors(b);
      EXPECT_EQ(packed.size(), source->header.linear_weight_names().size());
      for (const auto& [name, q] : packed) EXPECT_FALSE(q.super_scales.empty()) << name;
    } else {
      const gguf_file file(b);
      const ggml_type want = static_cast<ggml_type>(ggml_type_for_format(o.weights));
      for (const std::string& name : source->header.linear_weight_names()) {
        const int64_t cols = source->header.get(name).cols();
        const ggml_type expected =
            cols % 256 == 0 ? want : static_cast<ggml_type>(ggml_fallback_type(static_cast<uint32_t>(want), cols));
        if (cols % 256 != 0) {  // llama.cpp's: Q4_K -> Q5_0, Q6_K -> Q8_0, rows not /32 -> F16
          EXPECT_EQ(expected, cols % 32 != 0 ? ggml_type::f16 : want == ggml_type::q4_k ? ggml_type::q5_0 : ggml_type::q8_0);
        }
        EXPECT_EQ(file.get(name).type, expected) << name;
      }
    }
  }

  // Killed in block 1 and resumed: the finished K-quant shard's codes are used as they are.
  const auto source = open_model_reader(wide);
  const auto o = stream_options(ptq::method::gptq, "q4_k");
  write_streamed(*source, o, dir + "/whole", dir + "/whole.gguf");
  try {
    write_streamed(*source, o, dir + "/killed", dir + "/killed.gguf", interrupt_at(8 + 5));
    FAIL() << "not interrupted";
  } catch (const interrupted&) {
  }
  EXPECT_TRUE(std::filesystem::exists(dir + "/killed/blk.0.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/killed/blk.1.safetensors"));
  const auto r = write_streamed(*source, o, dir + "/killed", dir + "/killed.gguf");
  EXPECT_EQ(r.resumed_at_block, 1);
  EXPECT_TRUE(file_bytes(dir + "/whole.gguf") == file_bytes(dir + "/killed.gguf"));
  std::filesystem::remove_all(dir);
}

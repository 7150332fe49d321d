// Packed inference (io's load_packed_model, the forward through kernels/packed_matmul.hpp):
//   - the packed weights hold exactly the values of the simulated path (apply_weight_plan), and
//     a GGUF's codes exactly the values its reader dequantizes;
//   - the packed forward's logits are the simulated model's up to the order of the sums;
//   - on stories15M's real weights, the fast kernels equal the reference bit for bit and stay
//     within the pinned order's bound (tests/kernels/test_packed_matmul.cpp states it), and every
//     kernel this CPU runs (AVX-512, AVX2, scalar) gives the packed forward the same logits;
//   - what cannot be packed is refused, naming the tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/kernels/packed_matmul.hpp"
#include "lowbit/text/documents.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

std::string packed_temp_dir(const std::string& name) {
  const fs::path d = fs::path(testing::TempDir()) / ("lowbit_packed_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// A small Llama whose widths are whole groups of 32 (dim 64, hidden 192).
model small_llama() {
  model_config c;
  c.arch = architecture::llama;
  c.dim = 64, c.hidden_dim = 192, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 258;
  c.max_seq_len = 64;
  return synthesize_model(c, 7);
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

}  // namespace

TEST(PackedEngine, PackedWeightsHoldTheSimulatedValues) {
  const std::string dir = packed_temp_dir("plan");
  const model m = small_llama();
  save_safetensors_model(m, dir + "/m.safetensors");
  for (const char* spec : {"q8_0", "q4_0", "int4/g32", "mxfp4", "nvfp4", "int8/c"}) {
    const quant_plan plan = make_quant_plan("", spec, "", "");
    model simulated = m;
    apply_weight_plan(simulated, plan);
    packed_load_report rep;
    const model packed = load_packed_model(dir + "/m.safetensors", plan, &rep);
    EXPECT_EQ(packed.packed.size(), m.linear_weight_names().size()) << spec;
    for (const auto& [name, p] : packed.packed) {
      const tensor& t = simulated.get(name);
      std::vector<float> values(t.data.size());
      dequantize_packed(*p, values.data());
      ASSERT_TRUE(same_bits(values.data(), t.data.data(), values.size())) << spec << " " << name;
      EXPECT_TRUE(packed.get(name).data.empty());
    }
    // The packed forward against the simulated one: the same values, sums in another order.
    const quant_plan none = make_quant_plan("", "", "", "");
    forward_session a(simulated, none, 16), b(packed, none, 16);
    std::vector<int32_t> toks = {1, 72, 101, 108, 108, 111, 44, 32};
    const std::vector<float> la = a.forward(toks.data(), int(toks.size()));
    const std::vector<float> lb = b.forward(toks.data(), int(toks.size()));
    double mx = 0, diff = 0;
    for (size_t i = 0; i < la.size(); ++i) mx = std::max(mx, std::fabs(double(la[i]))), diff = std::max(diff, std::fabs(double(la[i]) - lb[i]));
    EXPECT_LT(diff, 1e-4 * mx + 1e-6) << spec;
    // Decode (one token at a time, the GEMV) against the batched forward (the GEMM): each row of
    // the packed GEMM is the GEMV's order; attention's sgemm shapes differ, so close, not equal.
    forward_session c(packed, none, 16);
    std::vector<float> last;
    for (int32_t t : toks) last = c.forward(&t, 1);
    const size_t V = size_t(m.config.vocab_size);
    EXPECT_LT(*std::max_element(last.begin(), last.end()), 1e30f);
    double step_diff = 0;
    for (size_t v = 0; v < V; ++v) step_diff = std::max(step_diff, std::fabs(double(last[v]) - lb[(toks.size() - 1) * V + v]));
    EXPECT_LT(step_diff, 1e-4 * mx + 1e-6) << spec;
  }
}

// Integer activations: with --acts q8_0 (q4_0, q8_0, int4/g32 weights) or --acts int8/c (int8/c
// weights) the packed forward multiplies integer codes (packed_matmul_int); the activations' values
// are the plan's, so the logits are the simulated model's up to the order of the sums.
TEST(PackedEngine, IntegerActivationsMatchTheSimulatedPlan) {
  const std::string dir = packed_temp_dir("int");
  const model m = small_llama();
  save_safetensors_model(m, dir + "/m.safetensors");
  const std::vector<std::pair<const char*, const char*>> plans = {
      {"q4_0", "q8_0"}, {"q8_0", "q8_0"}, {"int4/g32", "q8_0"}, {"int8/c", "int8/c"}};
  for (const auto& [weights, acts] : plans) {
    const quant_plan plan = make_quant_plan("", weights, acts, "");
    model simulated = m;
    apply_weight_plan(simulated, plan);
    const model packed = load_packed_model(dir + "/m.safetensors", plan);
    forward_session a(simulated, plan, 16), b(packed, plan, 16);
    std::vector<int32_t> toks = {1, 72, 101, 108, 108, 111, 44, 32};
    const std::vector<float> la = a.forward(toks.data(), int(toks.size()));
    const std::vector<float> lb = b.forward(toks.data(), int(toks.size()));
    double mx = 0, diff = 0;
    for (size_t i = 0; i < la.size(); ++i) mx = std::max(mx, std::fabs(double(la[i]))), diff = std::max(diff, std::fabs(double(la[i]) - lb[i]));
    EXPECT_LT(diff, 1e-4 * mx + 1e-6) << weights << " " << acts;
    // The integer product ran, on every block linear (7 per block), and the simulated model's never.
    EXPECT_EQ(b.integer_products(), 7 * m.config.n_layers) << weights << " " << acts;
    EXPECT_EQ(a.integer_products(), 0);
    // Not the float-activation result: the activations were quantized.
    forward_session c(packed, make_quant_plan("", weights, "", ""), 16);
    const std::vector<float> lc = c.forward(toks.data(), int(toks.size()));
    EXPECT_EQ(c.integer_products(), 0) << weights;
    double d2 = 0;
    for (size_t i = 0; i < lc.size(); ++i) d2 = std::max(d2, std::fabs(double(lc[i]) - lb[i]));
    EXPECT_GT(d2, 0.0) << weights << " " << acts;
  }
}

// Every packed kernel this CPU runs (packed_kernel_targets: AVX-512, AVX2, the scalar
// references) gives the packed forward the same logits bit for bit: a prompt (GEMM), then tokens
// one at a time (GEMV, and the float GEMV of the classifier), float and integer activations.
TEST(PackedEngine, EveryKernelTargetGivesTheSameLogits) {
  const std::string dir = packed_temp_dir("targets");
  const model m = small_llama();
  save_safetensors_model(m, dir + "/m.safetensors");
  const std::vector<std::pair<const char*, const char*>> plans = {
      {"q4_0", ""}, {"q8_0", ""}, {"nvfp4", ""}, {"q4_0", "q8_0"}, {"q8_0", "q8_0"}, {"int8/c", "int8/c"}};
  const std::vector<std::string> targets = packed_kernel_targets();
  for (const auto& [weights, acts] : plans) {
    const quant_plan plan = make_quant_plan("", weights, acts, "");
    const model packed = load_packed_model(dir + "/m.safetensors", plan);
    std::vector<std::vector<float>> logits;
    for (const std::string& target : targets) {
      force_packed_kernel_target(target);
      forward_session s(packed, plan, 16);
      const std::vector<int32_t> toks = {1, 72, 101, 108, 108, 111, 44, 32};
      std::vector<float> all = s.forward(toks.data(), 5);
      for (size_t i = 5; i < toks.size(); ++i) {
        const std::vector<float>& l = s.forward(toks.data() + i, 1);
        all.insert(all.end(), l.begin(), l.end());
      }
      logits.push_back(std::move(all));
    }
    force_packed_kernel_target("");
    for (size_t k = 1; k < logits.size(); ++k)
      EXPECT_TRUE(same_bits(logits[0].data(), logits[k].data(), logits[0].size()))
          << weights << " " << acts << ": " << targets[k] << " against " << targets[0];
  }
}

TEST(PackedEngine, GgufCodesAreTheFilesValues) {
  const std::string dir = packed_temp_dir("gguf");
  for (const char* spec : {"q8_0", "q4_0", "mxfp4"}) {
    model m = small_llama();
    apply_weight_plan(m, make_quant_plan("", spec, "", ""));  // values of the type, as `lowbit quantize` writes them
    gguf_export ex;
    plan_gguf_export(m, ggml_type_for_format(parse_format(spec)), ex);
    const std::string path = dir + "/" + std::string(spec) + ".gguf";
    save_gguf_model(m, path, ex);
    const model read = load_model(path);
    const model packed = load_packed_model(path, make_quant_plan("", "", "", ""));
    EXPECT_EQ(packed.packed.size(), m.linear_weight_names().size()) << spec;
    for (const auto& [name, p] : packed.packed) {
      EXPECT_EQ(format_name(p->fmt), format_name(parse_format(spec)));
      std::vector<float> values(size_t(p->rows * p->cols));
      dequantize_packed(*p, values.data());
      for (size_t i = 0; i < values.size(); ++i)
        ASSERT_EQ(values[i], read.get(name).data[i]) << spec << " " << name << " element " << i;
      // Bit for bit but for mxfp4's -0 code: the GGUF reader takes ggml's integer table
      // (kvalues_mxfp4, +0), the codes decode as E2M1's -0 (docs/conventions.md §32).
      if (std::string(spec) != "mxfp4") {
        ASSERT_TRUE(same_bits(values.data(), read.get(name).data.data(), values.size())) << spec << " " << name;
      }
    }
  }
}

TEST(PackedEngine, RefusesWhatHasNoPackedKernel) {
  const std::string dir = packed_temp_dir("refuse");
  save_safetensors_model(small_llama(), dir + "/m.safetensors");
  auto message = [&](const std::string& weights) {
    try {
      load_packed_model(dir + "/m.safetensors", make_quant_plan("", weights, "", ""));
    } catch (const error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(message("").find("--weights"), std::string::npos) << message("");
  EXPECT_NE(message("").find("blk.0."), std::string::npos);
  EXPECT_NE(message("e4m3fn/g32").find("packed kernels take"), std::string::npos) << message("e4m3fn/g32");
  EXPECT_NE(message("q4_k").find("q4_k"), std::string::npos) << message("q4_k");
}

// stories15M's real weights (dim 288, hidden 768): the fast kernel against the reference and
// the bound, and the packed model's NLL against the simulated one's.
TEST(PackedEngine, Stories15MRealWeights) {
  const std::string path = lowbit_test::data_path("llama2c/stories15M.bin");
  ASSERT_TRUE(lowbit_test::have_data(path));
  const model m = load_model(path);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const double u = std::ldexp(1.0, -24);
  for (const char* spec : {"q8_0", "q4_0", "int4/g32", "mxfp4", "nvfp4"}) {
    for (const char* name : {"blk.0.attn_q.weight", "blk.3.ffn_down.weight"}) {
      const tensor& t = m.get(name);
      const packed_matrix p = pack_matrix(quantize(t.data.data(), t.rows(), t.cols(), parse_format(spec)));
      const int64_t n = 3;
      std::vector<float> x(size_t(n * t.cols()));
      for (float& v : x) v = nd(rng);
      std::vector<float> ref(size_t(n * t.rows())), fast(ref.size()), w(size_t(t.numel()));
      packed_matmul_ref(p, x.data(), n, ref.data());
      for (const std::string& target : packed_kernel_targets()) {  // every kernel this CPU runs
        force_packed_kernel_target(target);
        packed_matmul(p, x.data(), n, fast.data());
        force_packed_kernel_target("");
        ASSERT_TRUE(same_bits(ref.data(), fast.data(), ref.size())) << spec << " " << name << " " << target;
      }
      dequantize_packed(p, w.data());
      const double m_ = double(t.cols()) / 16 + 5, bound = m_ * u / (1 - m_ * u);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t o = 0; o < t.rows(); ++o) {
          double exact = 0, mag = 0;
          for (int64_t c = 0; c < t.cols(); ++c) {
            exact += double(w[size_t(o * t.cols() + c)]) * x[size_t(i * t.cols() + c)];
            mag += std::fabs(double(w[size_t(o * t.cols() + c)]) * x[size_t(i * t.cols() + c)]);
          }
          ASSERT_LE(std::fabs(fast[size_t(i * t.rows() + o)] - exact), bound * mag) << spec << " " << name;
        }
    }
  }
  // NLL over 256 tokens of the TinyStories sample: packed q4_0 against simulated q4_0.
  const std::string text = lowbit_test::data_path("text/tinystories_val_sample.txt");
  ASSERT_TRUE(lowbit_test::have_data(text));
  const quant_plan plan = make_quant_plan("", "q4_0", "", "");
  model simulated = m;
  apply_weight_plan(simulated, plan);
  const model packed = load_packed_model(path, plan);
  const auto tok = tokenizer_for_model(packed, "");
  std::ifstream in(text);
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::vector<int32_t> ids = encode_documents(*tok, s);
  eval_options eo;
  eo.ctx = 128, eo.max_tokens = 256;
  const eval_result a = evaluate(simulated, plan, ids, eo), b = evaluate(packed, plan, ids, eo);
  EXPECT_EQ(a.tokens_scored, b.tokens_scored);
  EXPECT_NEAR(a.mean_nll, b.mean_nll, 1e-4);
}

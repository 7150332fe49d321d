// Model files and the QuantPlan: every reader gives the same model, corrupt files are refused,
// plans quantize what they name and nothing else.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/safetensors.hpp"
#include <nlohmann/json.hpp>
#include "lowbit/base/error.hpp"
#include "lowbit/formats/element.hpp"
#include <bit>
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/io/model_io.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

// Every shipped file test_engine's tests read (tests/data.hpp): a missing one fails the run, listed.
LOWBIT_TEST_NEEDS_DATA("test_engine", {"llama2c/stories260K.bin", "llama2c/tok512.bin", "gguf/llama-2-tiny-random.gguf",
                                       "text/tinyshakespeare.txt", "text/tinystories_val_sample.txt",
                                       "tokenizers/gpt2/encoder.json", "tokenizers/gpt2/vocab.bpe",
                                       "tokenizers/gpt2/ggml-vocab-gpt-2.gguf.inp",
                                       "tokenizers/gpt2/ggml-vocab-gpt-2.gguf.out", "vectors/stories260K_eval.json"});

namespace {

const std::string data_dir = lowbit_test::data_dir();
const std::string stories = data_dir + "/llama2c/stories260K.bin";

std::string temp_dir(const std::string& name) {
  const fs::path d = fs::path(testing::TempDir()) / ("lowbit_model_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), b.size());
}

std::vector<float> logits_of(const model& m, const std::vector<int32_t>& tokens, const quant_plan& p = {}) {
  forward_session s(m, p, static_cast<int>(tokens.size()));
  return s.forward(tokens.data(), static_cast<int>(tokens.size()));
}

std::vector<int32_t> some_tokens(int n, int vocab) {
  std::vector<int32_t> t{1};
  for (int i = 1; i < n; ++i) t.push_back((i * 37 + 11) % vocab);
  return t;
}

void expect_same_tensors(const model& a, const model& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    const tensor* u = b.find(name);
    ASSERT_NE(u, nullptr) << name;
    EXPECT_EQ(t.shape, u->shape) << name;
    EXPECT_EQ(t.data, u->data) << name;  // float32 files: bit-exact
  }
}

}  // namespace

TEST(ModelFiles, Stories260KHeaderAndNames) {
  const model m = load_llama2c(stories);
  EXPECT_EQ(m.config.dim, 64);
  EXPECT_EQ(m.config.hidden_dim, 172);
  EXPECT_EQ(m.config.n_layers, 5);
  EXPECT_EQ(m.config.n_heads, 8);
  EXPECT_EQ(m.config.n_kv_heads, 4);
  EXPECT_EQ(m.config.vocab_size, 512);
  EXPECT_EQ(m.config.max_seq_len, 512);
  EXPECT_TRUE(m.config.tied_classifier);
  EXPECT_EQ(m.get("blk.4.attn_k.weight").shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(m.linear_weight_names().size(), 35u);
  // Parameters counted from the shapes equal the config's count.
  int64_t n = 0;
  for (const auto& [name, t] : m.tensors) n += t.numel();
  EXPECT_EQ(n, m.config.parameter_count());
}

// docs/conventions.md "Test fixtures": stories260K converted to Hugging Face safetensors + config.json and
// to GGUF must give the same NLL as the llama2.c file. The safetensors copy stores q/k in
// Hugging Face's rotate-half order, so this also checks that permutation both ways.
TEST(ModelFiles, SafetensorsAndGgufCopiesOfStories260KAreTheSameModel) {
  const model m = load_llama2c(stories);
  const std::string dir = temp_dir("convert");
  save_safetensors_model(m, dir + "/model.safetensors");
  save_gguf_model(m, dir + "/model.gguf");
  ASSERT_TRUE(fs::exists(dir + "/config.json"));
  const model st = load_model(dir + "/model.safetensors");
  const model gg = load_model(dir + "/model.gguf");
  expect_same_tensors(m, st);
  expect_same_tensors(m, gg);
  EXPECT_EQ(st.config.n_kv_heads, 4);
  EXPECT_EQ(gg.config.rope_theta, m.config.rope_theta);
  EXPECT_EQ(gg.config.norm_eps, m.config.norm_eps);

  // The q rows really are permuted on disk (not a copy in the interleaved order).
  safetensors_file raw(dir + "/model.safetensors");
  const auto q = raw.read_f32("model.layers.0.self_attn.q_proj.weight");
  const auto& mq = m.get("blk.0.attn_q.weight").data;
  const int64_t hd = m.config.head_dim(), cols = m.config.dim;
  EXPECT_EQ(q[1 * cols], mq[2 * cols]);            // HF row 1 = interleaved row 2 (pair 1, real)
  EXPECT_EQ(q[(hd / 2) * cols], mq[1 * cols]);     // HF row hd/2 = interleaved row 1 (pair 0, imag)

  const auto tokens = some_tokens(40, 512);
  const auto a = logits_of(m, tokens), b = logits_of(st, tokens), c = logits_of(gg, tokens);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
}

// Half-precision safetensors: the model read back is the float model rounded to bf16 / fp16,
// exactly what lowbit's own casts give.
TEST(ModelFiles, HalfPrecisionSafetensors) {
  const model m = load_llama2c(stories);
  const std::string dir = temp_dir("half");
  for (const std::string dtype : {"BF16", "F16"}) {
    save_safetensors_model(m, dir + "/m.safetensors", dtype);
    const model h = load_model(dir + "/m.safetensors");
    const format f = parse_format(dtype == "BF16" ? "bf16" : "fp16");
    for (const auto& [name, t] : m.tensors) {
      std::vector<float> q(t.data.size());
      fake_quantize_ref(t.data.data(), q.data(), t.rows(), t.cols(), f);
      EXPECT_EQ(h.get(name).data, q) << dtype << " " << name;
    }
  }
  EXPECT_THROW(save_safetensors_model(m, dir + "/m.safetensors", "F8"), error);
}

TEST(ModelFiles, RandomGpt2RoundTripsThroughBothFormats) {
  model_config c;
  c.arch = architecture::gpt2;
  c.dim = 32, c.hidden_dim = 128, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4;
  c.vocab_size = 258, c.max_seq_len = 32, c.tied_classifier = true;
  const model m = synthesize_model(c, 7);
  const std::string dir = temp_dir("gpt2");
  save_safetensors_model(m, dir + "/gpt2.safetensors");
  save_gguf_model(m, dir + "/gpt2.gguf");
  const model st = load_model(dir + "/gpt2.safetensors"), gg = load_model(dir + "/gpt2.gguf");
  expect_same_tensors(m, st);
  expect_same_tensors(m, gg);
  EXPECT_EQ(st.tokenizer.kind, "bytes");
  EXPECT_EQ(gg.tokenizer.kind, "bytes");
  // Hugging Face GPT-2 stores Conv1D weights [in, out]: the file holds the transpose.
  safetensors_file raw(dir + "/gpt2.safetensors");
  EXPECT_EQ(raw.get("h.0.mlp.c_fc.weight").shape, (std::vector<int64_t>{32, 128}));
}

TEST(ModelFiles, ShippedRandomGgufLoadsAndRuns) {
  const model m = load_model(data_dir + "/gguf/llama-2-tiny-random.gguf");
  EXPECT_EQ(m.config.arch, architecture::llama);
  EXPECT_EQ(m.config.dim, 8);
  EXPECT_EQ(m.config.n_layers, 1);
  EXPECT_EQ(m.config.n_heads, 2);
  EXPECT_EQ(m.config.hidden_dim, 32);
  EXPECT_EQ(m.config.vocab_size, 32000);
  const auto tok = tokenizer_for_model(m);
  EXPECT_EQ(tok->vocab_size(), 32000);
  const auto ids = tok->encode("Hello world", true, false);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(tok->decode(ids), "Hello world");
  const auto logits = logits_of(m, ids);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
}

// A llama2.c file whose header lies or whose body is cut is refused with the file's name.
TEST(ModelFiles, CorruptLlama2cFilesAreRefused) {
  const auto good = read_bytes(stories);
  const std::string dir = temp_dir("corrupt");
  const std::string path = dir + "/bad.bin";
  auto refused = [&](const std::vector<uint8_t>& bytes, const std::string& what) {
    write_bytes(path, bytes);
    try {
      load_llama2c(path);
      ADD_FAILURE() << what << ": accepted";
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  };
  for (size_t cut : {size_t(0), size_t(3), size_t(27), size_t(28), size_t(1000), good.size() - 1})
    refused({good.begin(), good.begin() + cut}, "cut at " + std::to_string(cut));
  std::mt19937 rng(5);
  for (int field = 0; field < 7; ++field) {
    for (int32_t v : {0, -1, 3, 1 << 30, INT32_MIN, INT32_MAX}) {
      auto b = good;
      std::memcpy(b.data() + 4 * field, &v, 4);
      write_bytes(path, b);
      try {
        const model m = load_llama2c(path);
        // Only a consistent header may load (e.g. vocab sign flipped with a matching size).
        EXPECT_NO_THROW(m.validate());
      } catch (const error&) {
      }
    }
  }
  auto extra = good;
  extra.push_back(0);
  refused(extra, "one byte too many");
}

TEST(ModelFiles, UnknownFilesAreRefused) {
  const std::string dir = temp_dir("unknown");
  EXPECT_THROW(load_model(dir + "/missing.gguf"), error);
  write_bytes(dir + "/x.txt", {1, 2, 3});
  EXPECT_THROW(load_model(dir + "/x.txt"), error);
  // safetensors without a config
  model_config c;
  c.dim = 16, c.hidden_dim = 32, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2, c.vocab_size = 258,
  c.max_seq_len = 16;
  const model m = synthesize_model(c, 1);
  save_safetensors_model(m, dir + "/m.safetensors");
  // The config also lives in the file's metadata, so removing config.json still loads.
  fs::remove(dir + "/config.json");
  EXPECT_NO_THROW(load_model(dir + "/m.safetensors"));
}

// A model that declares a huge context (a lie in a file, or a genuine long-context model) is
// evaluated on 64 tokens with sessions sized for those 64. Before, the KV caches were sized for
// the declared 2^20 positions: 2 layers x 2^20 x 64 x (K + V) floats, 1 GiB touched for a
// 64-token evaluation, which the peak resident set shows.
TEST(Eval, SessionsAreSizedForTheTokensEvaluated) {
  model_config c;
  c.dim = 64, c.hidden_dim = 128, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.vocab_size = 258,
  c.max_seq_len = 1 << 20;
  const model m = synthesize_model(c, 3);
  std::vector<int32_t> ids(64);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 37 + 11) % 258);
  eval_options o;
  o.max_tokens = 64;
  struct rusage before {};
  getrusage(RUSAGE_SELF, &before);
  const eval_result r = evaluate(m, quant_plan{}, ids, o);
  struct rusage after {};
  getrusage(RUSAGE_SELF, &after);
  EXPECT_EQ(r.tokens_scored, 63);
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 256 * 1024) << "peak RSS grew by " << (after.ru_maxrss - before.ru_maxrss) << " KiB";
  // The same window through a model that declares exactly 64 positions gives the same NLL, bit for bit.
  model small = m;
  small.config.max_seq_len = 64;
  EXPECT_EQ(evaluate(small, quant_plan{}, ids, o).mean_nll, r.mean_nll);
}

// ---- QuantPlan -----------------------------------------------------------------------------------
TEST(QuantPlan, GlobMatching) {
  EXPECT_TRUE(glob_match("blk.*.ffn_down.weight", "blk.12.ffn_down.weight"));
  EXPECT_TRUE(glob_match("*", "output.weight"));
  EXPECT_TRUE(glob_match("blk.?.attn_q.weight", "blk.3.attn_q.weight"));
  EXPECT_FALSE(glob_match("blk.?.attn_q.weight", "blk.13.attn_q.weight"));
  EXPECT_FALSE(glob_match("blk.*.ffn_down.weight", "blk.1.ffn_up.weight"));
  EXPECT_FALSE(glob_match("token_embd", "token_embd.weight"));
}

TEST(QuantPlan, DefaultTargetsLinearWeightsOnlyAndRulesOverride) {
  model m = load_llama2c(stories);
  const model original = m;
  quant_plan p;
  p.weights = parse_format("int4/g32");
  p.rules.push_back({"blk.0.*", "fp32", std::nullopt});                       // keep block 0 float
  p.rules.push_back({"token_embd.weight", "int8/c", parse_format("int8/c")});  // and name the embedding
  const auto reports = apply_weight_plan(m, p);
  EXPECT_EQ(reports.size(), 35u - 7u + 1u);
  for (const auto& [name, t] : m.tensors) {
    const bool linear = name.find("attn_q") != std::string::npos || name.find("attn_k") != std::string::npos ||
                        name.find("attn_v") != std::string::npos || name.find("attn_output") != std::string::npos ||
                        (name.find("ffn_") != std::string::npos && name.find("norm") == std::string::npos);
    const bool block0 = name.rfind("blk.0.", 0) == 0;
    const tensor& o = original.get(name);
    if (name == "token_embd.weight") {
      std::vector<float> q(o.data.size());
      fake_quantize_ref(o.data.data(), q.data(), o.rows(), o.cols(), parse_format("int8/c"));
      EXPECT_EQ(t.data, q) << name;
    } else if (linear && !block0) {
      std::vector<float> q(o.data.size());
      fake_quantize_ref(o.data.data(), q.data(), o.rows(), o.cols(), parse_format("int4/g32"));
      EXPECT_EQ(t.data, q) << name;  // the kernels' reference, element for element
      EXPECT_NE(t.data, o.data) << name;
    } else {
      EXPECT_EQ(t.data, o.data) << name;  // norms and block 0 untouched
    }
  }
}

TEST(QuantPlan, RulesJsonAndBadSpecs) {
  const std::string dir = temp_dir("rules");
  {
    std::ofstream f(dir + "/rules.json");
    f << R"({"weights": "int4/g32", "acts": "int8/c", "kv": "e4m3fn/c",
            "rules": [{"pattern": "blk.*.ffn_down.weight", "format": "int8/c"}]})";
  }
  const quant_plan p = load_plan_json(dir + "/rules.json");
  ASSERT_TRUE(p.acts && p.kv && p.weights);
  EXPECT_EQ(format_name(*p.kv), "e4m3fn/c");
  const model m = load_llama2c(stories);
  EXPECT_EQ(format_name(*p.weight_format(m, "blk.2.ffn_down.weight")), "int8/c");
  EXPECT_EQ(format_name(*p.weight_format(m, "blk.2.ffn_up.weight")), "int4/g32");
  EXPECT_FALSE(p.weight_format(m, "output_norm.weight"));
  {
    std::ofstream f(dir + "/bad.json");
    f << R"({"weights": "int5x"})";
  }
  EXPECT_THROW(load_plan_json(dir + "/bad.json"), error);
  {
    std::ofstream f(dir + "/bad2.json");
    f << R"({"rules": [{"pattern": 3}]})";
  }
  EXPECT_THROW(load_plan_json(dir + "/bad2.json"), error);
  {
    std::ofstream f(dir + "/bad3.json");
    f << "{not json";
  }
  EXPECT_THROW(load_plan_json(dir + "/bad3.json"), error);
}

// Activation and KV formats act on the fly: the logits move under each, differently.
TEST(QuantPlan, ActivationAndKvFormatsChangeTheForward) {
  const model m = load_llama2c(stories);
  const auto tokens = some_tokens(64, 512);
  const auto base = logits_of(m, tokens);
  quant_plan acts;
  acts.acts = parse_format("int4/c");
  quant_plan kv;
  kv.kv = parse_format("e2m1/c");
  const auto a = logits_of(m, tokens, acts), k = logits_of(m, tokens, kv);
  EXPECT_NE(a, base);
  EXPECT_NE(k, base);
  EXPECT_NE(a, k);
  // The dumped K rows under a KV format: K after RoPE is quantized per (token, head) before it
  // enters the cache; the dump shows the float K, so attention output differs but k does not.
  std::vector<float> k_plain, k_quant;
  forward_session s1(m, {}, 64), s2(m, kv, 64);
  s1.set_dump([&](const std::string& n, const float* d, int64_t r, int64_t c) {
    if (n == "blk.0.k") k_plain.assign(d, d + r * c);
  });
  s2.set_dump([&](const std::string& n, const float* d, int64_t r, int64_t c) {
    if (n == "blk.0.k") k_quant.assign(d, d + r * c);
  });
  s1.forward(tokens.data(), 64);
  s2.forward(tokens.data(), 64);
  EXPECT_EQ(k_plain, k_quant);
}

TEST(QuantPlan, AverageBitsCountScales) {
  const model m = load_llama2c(stories);
  quant_plan p;
  p.weights = parse_format("int4/g32");
  EXPECT_DOUBLE_EQ(average_linear_bits(m, p), 5.0);
  p.weights = parse_format("mxfp4");
  EXPECT_DOUBLE_EQ(average_linear_bits(m, p), 4.25);
  p.weights.reset();
  EXPECT_DOUBLE_EQ(average_linear_bits(m, p), 32.0);
  p.weights = parse_format("int8/c");  // 8 + 32 per row of 64 or 172 columns
  const double b = average_linear_bits(m, p);
  EXPECT_GT(b, 8.0);
  EXPECT_LT(b, 8.5);
}

// Running the blocks in pieces on a cached residual stream (what layer-by-layer PTQ does) gives
// the residual stream of the whole forward, bit for bit.
TEST(ForwardBlocks, PiecesEqualTheWholeForward) {
  const model m = load_llama2c(stories);
  const auto tokens = some_tokens(48, 512);
  std::vector<float> whole;
  forward_session s(m, {}, 48);
  s.set_dump([&](const std::string& n, const float* d, int64_t r, int64_t c) {
    if (n == "blk.4.out") whole.assign(d, d + r * c);
  });
  s.forward(tokens.data(), 48);
  forward_session p(m, {}, 48);
  std::vector<float> x(48 * 64);
  p.embed(tokens.data(), 48, x.data());
  p.forward_blocks(x.data(), 48, 0, 2);
  p.forward_blocks(x.data(), 48, 2, 3);
  p.forward_blocks(x.data(), 48, 3, 5);
  EXPECT_EQ(x, whole);
  EXPECT_EQ(p.pos(), 0);
  EXPECT_THROW(p.forward_blocks(x.data(), 48, 3, 6), error);
}

// Codes + scales in safetensors: read back as the dequantized values; a description that does
// not fit the stored arrays is refused.
TEST(ModelFiles, PackedSafetensorsRoundTrip) {
  model m = load_llama2c(stories);
  std::map<std::string, quantized_tensor> packed;
  const std::vector<std::string> specs = {"int4/g32", "q4_0", "nvfp4", "uint4/g32", "mxfp4", "int8/c", "e4m3fn/t"};
  size_t k = 0;
  for (const std::string& name : m.linear_weight_names()) {
    tensor& t = m.get_mut(name);
    const format f = parse_format(specs[k++ % specs.size()]);
    quantized_tensor q = quantize(t.data.data(), t.rows(), t.cols(), f);
    dequantize(q, t.data.data());
    packed[name] = std::move(q);
  }
  const std::string dir = temp_dir("packed");
  save_safetensors_model(m, dir + "/p.safetensors", "F32", packed);
  const model back = load_model(dir + "/p.safetensors");
  expect_same_tensors(m, back);
  // Lie about one tensor's format: the stored arrays no longer fit and the reader says so.
  safetensors_file f(dir + "/p.safetensors");
  auto meta = f.metadata();
  auto desc = nlohmann::json::parse(meta["lowbit.packed"]);
  desc["blk.0.attn_q.weight"]["format"] = "int8/g16";
  meta["lowbit.packed"] = desc.dump();
  std::vector<st_write_tensor> out;
  for (const auto& t : f.tensors()) out.push_back({t.name, t.dtype, t.shape, nullptr, f.raw(t)});
  write_safetensors(dir + "/lie.safetensors", out, meta);
  try {
    load_model(dir + "/lie.safetensors");
    ADD_FAILURE() << "accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos) << e.what();
  }
}

// A K-quant's sub-block scale and min codes are small integers (kquant_block's ranges); a packed
// file holding others (NaN, a float beyond int range, a fraction, one past the range) is refused
// when read, naming the tensor, instead of decoding through an out-of-range float -> int cast.
TEST(ModelFiles, PackedKQuantCodesOutOfRangeAreRefused) {
  model m = load_llama2c(stories);
  const std::string name = m.linear_weight_names().front();
  const std::string dir = temp_dir("packed_kquant");
  struct hostile {
    std::string spec, suffix;
    double value;
  };
  const std::vector<hostile> cases = {{"q4_k", ".scales", std::nan("")},  {"q4_k", ".scales", 1e30},
                                      {"q4_k", ".scales", 64},            {"q4_k", ".scales", 2.5},
                                      {"q4_k", ".scales", -1},            {"q4_k", ".zero_points", 64},
                                      {"q4_k", ".zero_points", -1},       {"q2_k", ".scales", 16},
                                      {"q3_k", ".scales", -33},           {"q6_k", ".scales", 128},
                                      {"q6_k", ".scales", -3e9}};
  for (const hostile& h : cases) {
    SCOPED_TRACE(h.spec + h.suffix + " = " + std::to_string(h.value));
    const tensor& t = m.get(name);
    std::map<std::string, quantized_tensor> packed;
    packed[name] = quantize(t.data.data(), t.rows(), t.cols(), parse_format(h.spec));
    save_safetensors_model(m, dir + "/ok.safetensors", "F32", packed);
    EXPECT_NO_THROW(load_model(dir + "/ok.safetensors"));  // the honest file reads
    safetensors_file f(dir + "/ok.safetensors");
    std::vector<std::vector<uint8_t>> copies;
    std::vector<st_write_tensor> out;
    copies.reserve(f.tensors().size());  // out points into them
    for (const auto& ti : f.tensors()) {
      const auto* raw = static_cast<const uint8_t*>(f.raw(ti));
      copies.emplace_back(raw, raw + (ti.end - ti.begin));
      if (ti.name == name + h.suffix) {  // the last code of the part
        uint8_t* last = copies.back().data() + copies.back().size() - 4;
        if (ti.dtype == st_dtype::f32) {
          const float v = float(h.value);
          std::memcpy(last, &v, 4);
        } else {
          const int32_t v = int32_t(h.value);
          std::memcpy(last, &v, 4);
        }
      }
      out.push_back({ti.name, ti.dtype, ti.shape, nullptr, copies.back().data()});
    }
    write_safetensors(dir + "/bad.safetensors", out, f.metadata());
    try {
      load_model(dir + "/bad.safetensors");
      ADD_FAILURE() << "accepted";
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("code"), std::string::npos) << e.what();
    }
  }
}

// One rule for "do these codes hold these values" (codes_mismatch), for the packed safetensors
// writer's codes and the GGUF writer's check alike: equal as floats, NaN matching any NaN
// (docs/conventions.md §4: a NaN makes its group NaN). A group holding NaN is stored as codes by both.
TEST(ModelFiles, CodesHoldValuesByOneRule) {
  const format f = parse_format("q8_0");
  tensor t{{2, 64}, std::vector<float>(128)};
  for (int i = 0; i < 128; ++i) t.data[size_t(i)] = float(i % 17) - 8.0f;
  fake_quantize(t.data.data(), t.data.data(), 2, 64, f);
  t.data[5] = std::numeric_limits<float>::quiet_NaN();
  quantized_tensor q = quantize(t.data.data(), 2, 64, f);
  std::vector<float> back(128);
  dequantize(q, back.data());
  EXPECT_TRUE(std::isnan(back[0]));  // the whole group is NaN
  tensor nan_group = t;
  for (int i = 0; i < 32; ++i) nan_group.data[size_t(i)] = back[size_t(i)];
  EXPECT_EQ(codes_mismatch(q, nan_group.data.data()), -1);
  EXPECT_TRUE(linear_weight_codes(nan_group, f, nullptr).has_value());
  EXPECT_EQ(codes_mismatch(q, t.data.data()), 0);  // a number where the codes hold NaN
  tensor off = nan_group;
  off.data[40] += 0.5f;
  float got = 0;
  EXPECT_EQ(codes_mismatch(q, off.data.data(), &got), 40);
  EXPECT_EQ(got, nan_group.data[40]);
  EXPECT_FALSE(linear_weight_codes(off, f, &q).has_value());  // known codes are checked too
  // GGUF: written from the same codes (NaN group included), refused where they do not hold.
  const std::string dir = temp_dir("one_rule");
  model m = load_llama2c(stories);
  tensor& w = m.get_mut("blk.0.attn_q.weight");
  fake_quantize(w.data.data(), w.data.data(), w.rows(), w.cols(), f);
  for (int i = 0; i < 32; ++i) w.data[size_t(i)] = std::numeric_limits<float>::quiet_NaN();
  gguf_export ex;
  ex.types["blk.0.attn_q.weight"] = ggml_type_for_format(f);
  save_gguf_model(m, dir + "/nan.gguf", ex);
  const model back_m = load_model(dir + "/nan.gguf");
  EXPECT_TRUE(std::isnan(back_m.get("blk.0.attn_q.weight").data[0]));
  EXPECT_EQ(back_m.get("blk.0.attn_q.weight").data[40], w.data[40]);
  w.data[40] += 1e-3f;
  EXPECT_THROW(save_gguf_model(m, dir + "/off.gguf", ex), error);
}

// fp32 is a GGUF type too (llama.cpp's F32): every weight is written as its float32 bits and read
// back equal, and the file names each linear as type 0.
TEST(ModelFiles, Float32GgufKeepsEveryWeightsBits) {
  EXPECT_EQ(ggml_type_for_format(parse_format("fp32")), 0u);
  const model m = load_llama2c(stories);
  gguf_export ex;
  for (const auto& [name, t] : m.tensors)
    if (t.shape.size() == 2) ex.types[name] = ggml_type_for_format(parse_format("fp32"));
  const std::string dir = temp_dir("f32gguf");
  save_gguf_model(m, dir + "/f32.gguf", ex);
  const model back = load_model(dir + "/f32.gguf");
  for (const auto& [name, t] : m.tensors) {
    const tensor& b = back.get(name);
    ASSERT_EQ(b.data.size(), t.data.size()) << name;
    EXPECT_EQ(std::memcmp(b.data.data(), t.data.data(), t.data.size() * sizeof(float)), 0) << name;
  }
}

// A GPT-2 GGUF carries its byte-level BPE as tokenizer.ggml.tokens / merges (model "gpt2"), and
// the tokenizer read back from it encodes exactly as the one from encoder.json + vocab.bpe.
TEST(ModelFiles, Gpt2GgufCarriesItsTokenizer) {
  model_config c;
  c.arch = architecture::gpt2;
  c.dim = 8, c.hidden_dim = 16, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2;
  c.vocab_size = 50257, c.max_seq_len = 32;
  model m = synthesize_model(c, 4);
  const std::string gpt2_dir = data_dir + "/tokenizers/gpt2";
  m.tokenizer = {"file", gpt2_dir + "/encoder.json"};
  const std::string dir = temp_dir("gpt2gguf");
  save_gguf_model(m, dir + "/g.gguf");
  const model back = load_model(dir + "/g.gguf");
  EXPECT_EQ(back.tokenizer.kind, "gguf");
  const auto from_gguf = tokenizer_for_model(back);
  const auto from_files = load_gpt2_tokenizer(gpt2_dir + "/encoder.json", gpt2_dir + "/vocab.bpe");
  EXPECT_EQ(from_gguf->kind(), "gpt2");
  EXPECT_EQ(from_gguf->bos_id(), 50256);
  for (const std::string text : {"Hello world", " 3.14 bananas!!  \n\tthe end", "ünïcödé 日本語 🦙", "it's we'll"})
    EXPECT_EQ(from_gguf->encode(text, true, false), from_files->encode(text, true, false)) << text;
  // llama.cpp chooses its pre-tokenizer by tokenizer.ggml.pre; without "gpt-2" it splits text its
  // own default way.
  EXPECT_EQ(gguf_file(dir + "/g.gguf").get_string("tokenizer.ggml.pre"), "gpt-2");
}

// A SentencePiece-style GGUF vocabulary says whether a dummy-prefix space goes before the text
// (tokenizer.ggml.add_space_prefix; llama.cpp's default true). lowbit writes it and honours it:
// with true the GGUF's tokenizer encodes as the source (llama2.c tok512) does; with false the
// text starts without the U+2581 piece, exactly as the source encodes the text with its leading
// space taken away from the first word's piece.
TEST(ModelFiles, GgufSpacePrefixIsWrittenAndHonoured) {
  const auto source = load_llama2c_tokenizer(data_dir + "/llama2c/tok512.bin");
  tokenizer::spm_vocabulary v;
  ASSERT_TRUE(source->sentencepiece_vocabulary(v));
  EXPECT_TRUE(v.add_space_prefix);
  const std::string dir = temp_dir("spaceprefix");
  for (const bool prefix : {true, false}) {
    gguf_writer w;
    w.add_string("general.architecture", "llama");
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_string_array("tokenizer.ggml.tokens", v.tokens);
    w.add_f32_array("tokenizer.ggml.scores", v.scores);
    w.add_i32_array("tokenizer.ggml.token_type", v.types);
    w.add_u32("tokenizer.ggml.bos_token_id", v.bos);
    w.add_u32("tokenizer.ggml.eos_token_id", v.eos);
    w.add_bool("tokenizer.ggml.add_space_prefix", prefix);
    const std::string path = dir + (prefix ? "/on.gguf" : "/off.gguf");
    w.write(path);
    model m;
    m.config.vocab_size = static_cast<int>(v.tokens.size());
    m.source_path = path;
    m.tokenizer = {"gguf", path};
    const auto tok = tokenizer_for_model(m);
    for (const std::string text : {"Once upon a time", "Lily saw a big dog."}) {
      const std::vector<int32_t> ids = tok->encode(text, false, false);
      if (prefix) {
        EXPECT_EQ(ids, source->encode(text, false, false)) << text;
      } else {
        ASSERT_FALSE(ids.empty());
        EXPECT_NE(tok->decode_token(-1, ids[0]).rfind(" ", 0), 0u) << text << ": first piece has the dummy space";
        EXPECT_NE(ids, source->encode(text, false, false)) << text;
      }
    }
  }
}

// GPT-2 has one kv head per query head: a file that says otherwise is refused before the forward
// (whose GPT-2 path splits q, k, v of equal width) could read past its buffers.
TEST(ModelFiles, Gpt2WithFewerKvHeadsIsRefused) {
  model_config c;
  c.arch = architecture::gpt2;
  c.dim = 32, c.hidden_dim = 64, c.n_layers = 1, c.n_heads = 4, c.n_kv_heads = 2;
  c.vocab_size = 258, c.max_seq_len = 16;
  EXPECT_THROW(c.validate(), error);
  EXPECT_THROW(synthesize_model(c, 1), error);
}

// The file readers' own fp16 / bf16 bit converters (fast whole-tensor loops) agree with the
// format engine's exact codec — the specification — on every code, and on encoding a sweep of
// float32 values around every code (midpoints included) to nearest-even.
TEST(ModelFiles, HalfConvertersAgreeWithTheFormatCodec) {
  const element_format fp16 = parse_format("fp16").element, bf16 = parse_format("bf16").element;
  for (uint32_t c = 0; c < 65536; ++c) {
    const float a = fp16_to_f32(uint16_t(c)), b = decode_ref(fp16, c);
    const float x = bf16_to_f32(uint16_t(c)), y = decode_ref(bf16, c);
    if (std::isnan(b)) {
      EXPECT_TRUE(std::isnan(a)) << c;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(a), std::bit_cast<uint32_t>(b)) << c;
    }
    if (std::isnan(y)) {
      EXPECT_TRUE(std::isnan(x)) << c;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(x), std::bit_cast<uint32_t>(y)) << c;
    }
  }
  for (uint32_t c = 0; c < 65535; ++c) {
    const float lo = decode_ref(fp16, c), hi = decode_ref(fp16, c + 1);
    if (std::isfinite(lo) && std::isfinite(hi)) {
      for (const float v : {lo, 0.5f * (lo + hi), std::nextafter(0.5f * (lo + hi), hi)}) {
        ASSERT_EQ(f32_to_fp16(v), encode_ref(fp16, v, rounding_mode::rne)) << v;
      }
    }
    const float blo = decode_ref(bf16, c), bhi = decode_ref(bf16, c + 1);
    if (std::isnan(blo) || std::isnan(bhi) || std::isinf(blo) || std::isinf(bhi)) continue;
    const double mid = 0.5 * (double(blo) + double(bhi));
    for (const float v : {blo, static_cast<float>(mid)})
      ASSERT_EQ(f32_to_bf16(v), encode_ref(bf16, v, rounding_mode::rne)) << v;
  }
}

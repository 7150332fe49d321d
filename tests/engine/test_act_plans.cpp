// Activation and attention plans (engine/plan.hpp): per-activation rules, static clipping values,
// per-cache KV rules and the operands of attention's GEMMs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/model_io.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

const std::string stories = lowbit_test::data_dir() + "/llama2c/stories260K.bin";

std::vector<int32_t> some_tokens(int n, int vocab) {
  std::vector<int32_t> t{1};
  for (int i = 1; i < n; ++i) t.push_back((i * 37 + 11) % vocab);
  return t;
}

std::vector<float> logits_of(const model& m, const std::vector<int32_t>& tokens, const quant_plan& p = {}) {
  forward_session s(m, p, static_cast<int>(tokens.size()));
  return s.forward(tokens.data(), static_cast<int>(tokens.size()));
}

// Every named intermediate of one forward.
std::map<std::string, std::vector<float>> dumps_of(const model& m, const std::vector<int32_t>& tokens,
                                                   const quant_plan& p) {
  std::map<std::string, std::vector<float>> d;
  forward_session s(m, p, static_cast<int>(tokens.size()));
  s.set_dump([&](const std::string& n, const float* x, int64_t r, int64_t c) { d[n].assign(x, x + r * c); });
  s.forward(tokens.data(), static_cast<int>(tokens.size()));
  return d;
}

std::string write_rules(const std::string& name, const std::string& text) {
  const fs::path dir = fs::path(testing::TempDir()) / fmt::format("lowbit_actplans_{}", getpid());
  fs::create_directories(dir);
  const fs::path p = dir / name;
  std::ofstream(p) << text;
  return p.string();
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// The static cast against its definition, written out: int8, s = clip / 127, RNE onto the
// integers, saturating at +-127, times s; per channel each column its own s.
TEST(ActPlans, StaticCastIsTheDefinition) {
  const std::vector<float> x{0.0f, 0.013f, -0.5f, 1.0f, 2.7f, -9.0f, 0.0049f, 3.3f};
  const format f = parse_format("int8");
  for (const std::vector<float>& clip : {std::vector<float>{2.5f}, std::vector<float>{2.5f, 0.25f, 9.0f, 1.0f}}) {
    std::vector<float> out(x.size());
    fake_quantize_static(x.data(), out.data(), 2, 4, f, clip);
    for (size_t i = 0; i < x.size(); ++i) {
      const float s = static_cast<float>(double(clip[clip.size() == 1 ? 0 : i % 4]) / 127.0);
      const float q = std::clamp(std::nearbyint(x[i] / s), -127.0f, 127.0f);
      EXPECT_EQ(out[i], q * s) << i;
    }
  }
  // A minifloat: e2m1's grid (max 6) scaled by clip / 6; 7 saturates to 6 s.
  std::vector<float> v{7.0f, 2.5f, -0.26f}, out(3);
  fake_quantize_static(v.data(), out.data(), 1, 3, parse_format("e2m1"), {3.0f});
  EXPECT_EQ(out[0], 3.0f);   // saturated at clip
  EXPECT_EQ(out[1], 2.0f);   // 2.5 / 0.5 = 5, a tie between 4 and 6: 4 has the even code
  EXPECT_EQ(out[2], -0.25f); // -0.52 -> -0.5 -> -0.25
}

// Attention operands in a format that holds every float32 (e8m23, IEEE) leave the forward bit
// for bit as it is, for separate (llama) and fused (gpt2: strided q) projections; e4m3 changes it.
TEST(ActPlans, PassThroughAttentionOperandsAreBitIdentical) {
  const model llama = load_model(stories);
  model_config c;
  c.arch = architecture::gpt2, c.dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.hidden_dim = 256;
  c.vocab_size = 300, c.max_seq_len = 128, c.tied_classifier = true;
  const model gpt2 = synthesize_model(c, 3);
  for (const model* m : {&llama, &gpt2}) {
    const auto tokens = some_tokens(48, m->config.vocab_size);
    quant_plan exact;
    set_attention_operands(exact, "e8m23");
    ASSERT_TRUE(exact.attn.q && exact.attn.k && exact.attn.p && exact.attn.v);
    const auto base = logits_of(*m, tokens);
    EXPECT_EQ(logits_of(*m, tokens, exact), base);
    // Per-tensor scales in that format are exact too only where s is a power of two; the cast is.
    quant_plan fp8;
    set_attention_operands(fp8, "e4m3");
    const auto q8 = logits_of(*m, tokens, fp8);
    EXPECT_NE(q8, base);
    // Each operand on its own moves the logits.
    for (char op : {'q', 'k', 'p', 'v'}) {
      quant_plan one;
      (op == 'q' ? one.attn.q : op == 'k' ? one.attn.k : op == 'p' ? one.attn.p : one.attn.v) = parse_format("e4m3");
      EXPECT_NE(logits_of(*m, tokens, one), base) << op;
    }
  }
}

// FP8 attention's K and V operands read the cache: K in e4m3 with rows (key, head) is the KV
// format e4m3 for K alone (the same cast of the same rows), bit for bit.
TEST(ActPlans, KOperandEqualsTheSameKvCastOfK) {
  const model m = load_model(stories);
  const auto tokens = some_tokens(40, m.config.vocab_size);
  quant_plan op;
  op.attn.k = parse_format("e4m3");
  quant_plan kv;
  kv.kv_rules.push_back({"blk.*.k", "e4m3", parse_format("e4m3")});
  EXPECT_EQ(logits_of(m, tokens, op), logits_of(m, tokens, kv));
}

// The same over calls of several sizes (a prompt, then tokens one at a time, then a chunk): a
// row-local operand format quantizes each new cache row once (the operand's shadow of the cache),
// as the KV format does, and both give the same logits at every call.
TEST(ActPlans, KAndVOperandsOverSeveralCallsEqualTheKvCast) {
  const model m = load_model(stories);
  const auto tokens = some_tokens(40, m.config.vocab_size);
  quant_plan op;
  op.attn.k = parse_format("e4m3");
  op.attn.v = parse_format("int8/c");
  quant_plan kv;
  kv.kv_rules.push_back({"blk.*.k", "e4m3", parse_format("e4m3")});
  kv.kv_rules.push_back({"blk.*.v", "int8/c", parse_format("int8/c")});
  forward_session a(m, op, 40), b(m, kv, 40);
  int at = 0;
  for (const int n : {7, 1, 1, 11, 20}) {
    EXPECT_EQ(a.forward(tokens.data() + at, n), b.forward(tokens.data() + at, n)) << "call at " << at;
    at += n;
  }
  // After a reset the rows are written and quantized anew.
  a.reset(), b.reset();
  EXPECT_EQ(a.forward(tokens.data() + 5, 30), b.forward(tokens.data() + 5, 30));
}

// A rule keeping layer 1 float: layer 0 computes exactly as under the global format, layer 1
// exactly as the float block on the same input.
TEST(ActPlans, RuleKeepingOneLayerFloatChangesOnlyThatLayer) {
  const model m = load_model(stories);
  ASSERT_GE(m.config.n_layers, 3);
  const auto tokens = some_tokens(32, m.config.vocab_size);
  quant_plan all;
  all.acts = parse_format("int4/c");
  quant_plan keep = all;
  keep.act_rules.push_back({"blk.1.*", "fp32", std::nullopt, {}, ""});
  const auto a = dumps_of(m, tokens, all), k = dumps_of(m, tokens, keep);
  for (const auto& [name, v] : a)
    if (name.starts_with("blk.0.")) {
      EXPECT_EQ(k.at(name), v) << name;
    }
  EXPECT_NE(k.at("blk.1.out"), a.at("blk.1.out"));
  // Block 1 of `keep` on its input = the float block 1 on that input.
  std::vector<float> x = k.at("blk.0.out");
  forward_session f(m, {}, static_cast<int>(tokens.size()));
  f.forward_blocks(x.data(), static_cast<int>(tokens.size()), 1, 2);
  EXPECT_EQ(x, k.at("blk.1.out"));
  // ... and block 2 is quantized again: not the float block.
  std::vector<float> y = k.at("blk.1.out");
  forward_session g(m, {}, static_cast<int>(tokens.size()));
  g.forward_blocks(y.data(), static_cast<int>(tokens.size()), 2, 3);
  EXPECT_NE(y, k.at("blk.2.out"));
  // One activation by its exact name: only blk.0.ffn_act (ffn_down's input) differs from float.
  quant_plan one;
  one.act_rules.push_back({"blk.0.ffn_act", "int4/c", parse_format("int4/c"), {}, ""});
  const auto o = dumps_of(m, tokens, one), fl = dumps_of(m, tokens, {});
  EXPECT_EQ(o.at("blk.0.ffn_act"), fl.at("blk.0.ffn_act"));  // the dump shows the float input
  EXPECT_EQ(o.at("blk.0.attn_out"), fl.at("blk.0.attn_out"));
  EXPECT_NE(o.at("blk.0.ffn_out"), fl.at("blk.0.ffn_out"));
}

// Rules that say what the global formats say give the same bits: act rules "blk.*" = acts, the
// classifier's rule = classifier_acts, kv rules for every k and v = kv.
TEST(ActPlans, RulesEqualToGlobalFormatsGiveTheSameBits) {
  const model m = load_model(stories);
  const auto tokens = some_tokens(32, m.config.vocab_size);
  quant_plan global;
  global.acts = parse_format("int8/c");
  global.classifier_acts = parse_format("e4m3/t");
  global.kv = parse_format("int4/c");
  quant_plan rules;
  rules.act_rules.push_back({"blk.*", "int8/c", parse_format("int8/c"), {}, ""});
  rules.act_rules.push_back({"output_norm", "e4m3/t", parse_format("e4m3/t"), {}, ""});
  rules.kv_rules.push_back({"blk.*.k", "int4/c", parse_format("int4/c")});
  rules.kv_rules.push_back({"blk.?.v", "int4/c", parse_format("int4/c")});
  EXPECT_EQ(logits_of(m, tokens, rules), logits_of(m, tokens, global));
  // Only layer 0's V: not the same as every cache.
  quant_plan v0;
  v0.kv_rules.push_back({"blk.0.v", "int4/c", parse_format("int4/c")});
  EXPECT_NE(logits_of(m, tokens, v0), logits_of(m, tokens, global));
  EXPECT_NE(logits_of(m, tokens, v0), logits_of(m, tokens));
}

// rules.json with act_rules (dynamic and static), kv_rules and attn reads back to the same plan
// (plan_json), and the static rule applies its clip.
TEST(ActPlans, RulesJsonRoundTripAndStaticRule) {
  const model m = load_model(stories);
  const auto tokens = some_tokens(32, m.config.vocab_size);
  const std::string path = write_rules("plan.json", R"({
    "acts": "int8/c",
    "act_rules": [{"pattern": "blk.0.attn_norm", "format": "int8", "clip": 2.0, "calibration": "max"},
                  {"pattern": "blk.1.*", "format": "fp32"}],
    "kv_rules": [{"pattern": "blk.*.v", "format": "e4m3/c"}],
    "attn": {"q": "e4m3", "p": "e4m3"}})");
  const quant_plan p = load_plan_json(path);
  ASSERT_EQ(p.act_rules.size(), 2u);
  EXPECT_EQ(p.act_rules[0].clip, std::vector<float>{2.0f});
  EXPECT_FALSE(p.act_rules[1].fmt);
  EXPECT_TRUE(p.attn.q && p.attn.p && !p.attn.k && !p.attn.v);
  const std::string again = write_rules("again.json", plan_json(p).dump());
  const quant_plan q = load_plan_json(again);
  EXPECT_EQ(plan_json(q), plan_json(p));
  EXPECT_EQ(logits_of(m, tokens, q), logits_of(m, tokens, p));
  // The static rule: blk.0's q/k/v read int8 values of step 2/127, clipped at 2.
  const act_quant a = p.act_for("blk.0.attn_norm");
  ASSERT_TRUE(a);
  std::vector<float> x{5.0f, -1.0f, 0.01f}, y(3);
  a.apply(x.data(), y.data(), 1, 3, 0);
  EXPECT_EQ(y[0], 2.0f / 127.0f * 127.0f);
  EXPECT_EQ(y[2], 2.0f / 127.0f * 1.0f);
  EXPECT_FALSE(p.act_for("blk.1.ffn_act"));
  EXPECT_EQ(format_name(*p.act_for("blk.2.attn").fmt), "int8/c");
  EXPECT_FALSE(p.act_for("output_norm"));  // the classifier: classifier_acts (none)
  EXPECT_EQ(format_name(*p.kv_for("blk.3.v")), format_name(parse_format("e4m3/c")));
  EXPECT_FALSE(p.kv_for("blk.3.k"));
}

TEST(ActPlans, BadRulesAreRefusedByName) {
  const model m = load_model(stories);
  auto load_error = [&](const std::string& text) {
    return message_of([&] { load_plan_json(write_rules("bad.json", text)); });
  };
  EXPECT_NE(load_error(R"({"act_rules": [{"pattern": "blk.0.*", "format": "int9x"}]})").find("act rule 'blk.0.*'"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"act_rules": [{"pattern": "blk.0.*", "format": "int8/c", "clip": 1}]})")
                .find("bare symmetric element"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"act_rules": [{"pattern": "x", "format": "int8", "clip": -1}]})").find("not finite and > 0"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"act_rules": [{"pattern": "x", "format": "fp32", "clip": 1}]})").find("float activation"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"act_rules": [{"pattern": "x", "format": "int8", "scale": 1}]})").find("unknown key 'scale'"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"act_rules": {"pattern": "x"}})").find("'act_rules' must be an array"), std::string::npos);
  EXPECT_NE(load_error(R"({"attn": {"s": "e4m3"}})").find("unknown operand 's'"), std::string::npos);
  EXPECT_NE(load_error(R"({"attn": {"q": "e9m9"}})").find("e9m9"), std::string::npos);
  EXPECT_NE(load_error(R"({"kv_rules": [{"pattern": "blk.0.k"}]})").find("kv rule"), std::string::npos);
  // Patterns that match nothing, and per-channel clips of the wrong width, at the session.
  auto session_error = [&](const quant_plan& p) { return message_of([&] { forward_session s(m, p, 8); }); };
  quant_plan typo;
  typo.act_rules.push_back({"blk.0.attn_q", "int8/c", parse_format("int8/c"), {}, ""});
  EXPECT_NE(session_error(typo).find("act rule 'blk.0.attn_q' matches no activation"), std::string::npos);
  quant_plan kv_typo;
  kv_typo.kv_rules.push_back({"blk.0.key", "int8/c", parse_format("int8/c")});
  EXPECT_NE(session_error(kv_typo).find("kv rule 'blk.0.key' matches no cache"), std::string::npos);
  quant_plan width;
  width.act_rules.push_back({"blk.0.ffn_act", "int8", parse_format("int8"), std::vector<float>(7, 1.0f), ""});
  EXPECT_NE(session_error(width).find("7 per-channel clipping values"), std::string::npos);
  // --attn with an unknown format.
  quant_plan p;
  EXPECT_THROW(set_attention_operands(p, "e4m3x"), std::exception);
}

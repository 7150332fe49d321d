// Static activation scales (ptq/calibrate.hpp): each statistic checked against its definition,
// computed here independently (full sorts, brute force over the candidate set, a naive output
// error), on random values and on the calibration rows of stories260K.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/ptq/calibrate.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/text/documents.hpp"
#include "tests/cli_run.hpp"
#include "tests/data.hpp"

using namespace lowbit;
using namespace lowbit::ptq;

namespace {

std::vector<float> heavy_tailed(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> t(3.0f);
  std::vector<float> v(n);
  for (float& x : v) x = t(rng);
  return v;
}

// The nearest-rank order statistic from a full sort.
float nearest_rank(std::vector<float> v, double p) {
  for (float& x : v) x = std::fabs(x);
  std::sort(v.begin(), v.end());
  int64_t k = static_cast<int64_t>(std::ceil(p / 100.0 * double(v.size())));
  k = std::max<int64_t>(1, std::min<int64_t>(k, int64_t(v.size())));
  return v[size_t(k - 1)];
}

// int8's static cast written out (s = c / 127, RNE, saturating), its squared error summed.
double int8_sse(const std::vector<float>& v, float clip) {
  const float s = static_cast<float>(double(clip) / 127.0);
  double e = 0;
  for (float x : v) {
    const float q = std::clamp(std::nearbyint(x / s), -127.0f, 127.0f) * s;
    e += (double(x) - q) * (double(x) - q);
  }
  return e;
}

// The brute-force argmin over c_i = amax (1 - i/100), i = 0..79 (first minimum).
float brute_mse_int8(const std::vector<float>& v) {
  float amax = 0;
  for (float x : v) amax = std::max(amax, std::fabs(x));
  float best = amax;
  double be = INFINITY;
  for (int i = 0; i < 80; ++i) {
    const float c = static_cast<float>(double(amax) * (1.0 - i / 100.0));
    const double e = int8_sse(v, c);
    if (e < be) be = e, best = c;
  }
  return best;
}

struct stories_data {
  model m;
  std::vector<int32_t> ids;
};
const stories_data& stories() {
  static const stories_data d = [] {
    const std::string dir = lowbit_test::data_dir();
    stories_data s{load_model(dir + "/llama2c/stories260K.bin"), {}};
    std::ifstream in(dir + "/text/tinystories_val_sample.txt");
    std::stringstream ss;
    ss << in.rdbuf();
    s.ids = encode_documents(*load_llama2c_tokenizer(dir + "/llama2c/tok512.bin"), ss.str());
    s.ids.resize(20000);
    return s;
  }();
  return d;
}

// The float rows of every activation over the calibration windows, gathered here.
std::map<std::string, std::vector<float>> calibration_rows(const model& m, const std::vector<int32_t>& ids,
                                                           int samples, int ctx, uint64_t seed) {
  std::map<std::string, std::vector<float>> rows;
  forward_session s(m, {}, ctx);
  s.set_dump([&](const std::string& n, const float* d, int64_t r, int64_t c) {
    auto& v = rows[n];
    v.insert(v.end(), d, d + r * c);
  });
  for (int64_t start : calibration_windows(int64_t(ids.size()), samples, ctx, seed)) {
    s.reset();
    s.forward(ids.data() + start, ctx);
  }
  return rows;
}

}  // namespace

TEST(Calibrate, StatisticsOnRandomValues) {
  const auto v = heavy_tailed(5001, 7);
  float amax = 0;
  for (float x : v) amax = std::max(amax, std::fabs(x));
  EXPECT_EQ(clip_absmax(v.data(), int64_t(v.size())), amax);
  for (double p : {50.0, 99.0, 99.9, 99.99, 100.0, 0.001})
    EXPECT_EQ(clip_percentile(v.data(), int64_t(v.size()), p), nearest_rank(v, p)) << p;
  // 99.9 of 5001 values: k = ceil(4996.0) = 4996 -> the 6th largest.
  std::vector<float> a = v;
  for (float& x : a) x = std::fabs(x);
  std::sort(a.begin(), a.end());
  EXPECT_EQ(clip_percentile(v.data(), int64_t(v.size()), 99.9), a[4995]);
  const float mse = clip_mse(v.data(), int64_t(v.size()), parse_format("int8"));
  EXPECT_EQ(mse, brute_mse_int8(v));
  EXPECT_LT(mse, amax);  // heavy tails: clipping pays at 8 bits
  // int4's mse clip: the candidates' errors computed with the engine's static cast.
  const format i4 = parse_format("int4");
  const float c4 = clip_mse(v.data(), int64_t(v.size()), i4);
  std::vector<float> q(v.size());
  double best = INFINITY;
  float arg = 0;
  for (int i = 0; i < 80; ++i) {
    const float c = static_cast<float>(double(amax) * (1.0 - i / 100.0));
    fake_quantize_static(v.data(), q.data(), 1, int64_t(v.size()), i4, {c});
    double e = 0;
    for (size_t j = 0; j < v.size(); ++j) e += (double(v[j]) - q[j]) * (double(v[j]) - q[j]);
    if (e < best) best = e, arg = c;
  }
  EXPECT_EQ(c4, arg);
  act_calibration_options o;
  EXPECT_THROW(parse_act_statistic("percentile:0", o), error);
  EXPECT_THROW(parse_act_statistic("percentile:101", o), error);
  EXPECT_THROW(parse_act_statistic("median", o), error);
  parse_act_statistic("percentile:99.5", o);
  EXPECT_EQ(o.statistic, act_statistic::percentile);
  EXPECT_EQ(o.percentile, 99.5);
}

// On stories260K's calibration windows: per tensor and per channel, max / percentile / mse clips
// are the statistic of the rows the windows give.
TEST(Calibrate, StaticClipsAreTheStatisticOfTheCalibrationRows) {
  const stories_data& d = stories();
  const auto rows = calibration_rows(d.m, d.ids, 3, 64, 5);
  act_calibration_options o;
  o.element = parse_format("int8");
  o.calib_samples = 3, o.calib_ctx = 64, o.seed = 5;
  o.pattern = "blk.1.*";
  const auto by_name = [](const act_calibration_result& r) {
    std::map<std::string, std::vector<float>> m;
    for (const auto& s : r.sites) m[s.name] = s.clip;
    return m;
  };
  // max, per tensor and per channel
  const auto max_t = by_name(calibrate_activations(d.m, {}, d.ids, o));
  o.per_channel = true;
  const auto max_c = by_name(calibrate_activations(d.m, {}, d.ids, o));
  ASSERT_EQ(max_t.size(), 4u);
  for (const auto& [name, clip] : max_t) {
    const std::vector<float>& x = rows.at(name);
    const int64_t cols = activation_width(d.m.config, name), n = int64_t(x.size()) / cols;
    EXPECT_EQ(n, 3 * 64);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    EXPECT_EQ(clip, std::vector<float>{amax}) << name;
    ASSERT_EQ(int64_t(max_c.at(name).size()), cols);
    for (int64_t j = 0; j < cols; ++j) {
      float cm = 0;
      for (int64_t i = 0; i < n; ++i) cm = std::max(cm, std::fabs(x[i * cols + j]));
      EXPECT_EQ(max_c.at(name)[j], cm > 0 ? cm : 1.0f) << name << " channel " << j;
    }
  }
  // percentile 99.9 per tensor; mse per tensor (int8, brute force)
  o.per_channel = false;
  parse_act_statistic("percentile:99.9", o);
  const auto pct = by_name(calibrate_activations(d.m, {}, d.ids, o));
  parse_act_statistic("mse", o);
  const auto mse = by_name(calibrate_activations(d.m, {}, d.ids, o));
  for (const auto& [name, clip] : pct) {
    EXPECT_EQ(clip, std::vector<float>{nearest_rank(rows.at(name), 99.9)}) << name;
    EXPECT_EQ(mse.at(name), std::vector<float>{brute_mse_int8(rows.at(name))}) << name;
  }
  // The result is a plan: static rules first, evaluable, near the float model at int8.
  parse_act_statistic("max", o);
  o.pattern = "blk.*";
  const act_calibration_result r = calibrate_activations(d.m, {}, d.ids, o);
  ASSERT_EQ(r.plan.act_rules.size(), size_t(4 * d.m.config.n_layers));
  EXPECT_EQ(r.plan.act_rules[0].pattern, "blk.0.attn_norm");
  EXPECT_EQ(r.plan.act_rules[0].calibration, "max");
  eval_options eo;
  eo.ctx = 64, eo.max_tokens = 512;
  const double f = evaluate(d.m, {}, d.ids, eo).mean_nll, s = evaluate(d.m, r.plan, d.ids, eo).mean_nll;
  EXPECT_NE(f, s);
  EXPECT_LT(std::fabs(f - s), 0.05);
  // Refusals.
  act_calibration_options bad = o;
  bad.pattern = "blk.0.attn_q";
  EXPECT_THROW(calibrate_activations(d.m, {}, d.ids, bad), error);
  bad = o;
  bad.element = parse_format("int8/c");
  EXPECT_THROW(calibrate_activations(d.m, {}, d.ids, bad), error);
  bad = o;
  parse_act_statistic("llmfp4", bad);
  EXPECT_THROW(calibrate_activations(d.m, {}, d.ids, bad), error);  // int8 is not eEmM
  bad.element = parse_format("e2m1");
  bad.per_channel = true;
  EXPECT_THROW(calibrate_activations(d.m, {}, d.ids, bad), error);
}

// LLM-FP4's activation search: the choice is the least output error over the documented
// candidates, its error the naive ||(Q(X) - X) W^T||^2, its clip maxval(b).
TEST(Calibrate, LlmFp4ActivationSearch) {
  const int64_t n = 64, in = 24, out = 10;
  auto X = heavy_tailed(n * in, 3);
  const auto W = heavy_tailed(out * in, 4);
  std::vector<float> G(in * in, 0.0f);
  for (int64_t a = 0; a < in; ++a)
    for (int64_t b = 0; b < in; ++b) {
      double s = 0;
      for (int64_t o = 0; o < out; ++o) s += double(W[o * in + a]) * W[o * in + b];
      G[a * in + b] = static_cast<float>(s);
    }
  auto naive = [&](const format& f, float clip) {
    std::vector<float> q(n * in);
    fake_quantize_static(X.data(), q.data(), n, in, f, {clip});
    double e = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t o = 0; o < out; ++o) {
        double y = 0;
        for (int64_t j = 0; j < in; ++j) y += (double(q[i * in + j]) - X[i * in + j]) * W[o * in + j];
        e += y * y;
      }
    return e;
  };
  const llmfp4_act_choice c = llmfp4_activation_search(X.data(), n, in, G.data(), parse_format("e2m1"));
  EXPECT_NEAR(c.error, naive(c.element, c.clip), 1e-3 * c.error);
  // maxval(b) = (2 - 2^-M) 2^(2^E - 1 - b) for the all-finite splits (the bias is the default).
  const int E = c.element.element.ebits, M = c.element.element.mbits;
  EXPECT_NEAR(c.clip, (2 - std::ldexp(1.0, -M)) * std::exp2(std::ldexp(1.0, E) - 1 - c.bias), 1e-5 * c.clip);
  // Brute force over the documented candidates: no candidate has a smaller (naive) error.
  float amax = 0;
  for (float v : X) amax = std::max(amax, std::fabs(v));
  const double best = naive(c.element, c.clip);
  int tried = 0;
  for (const char* spec : {"e2m1", "e3m0", "e1m2"}) {
    const format f = parse_format(spec);
    const double emax = element_max(f), b0 = f.element.bias + std::log2(emax / amax);
    std::vector<double> cs{1.0};
    for (int i = 0; i <= 100; ++i) cs.push_back(0.01 + 1.19 * i / 100.0);
    for (double k : cs) {
      const double clip = emax * std::exp2(f.element.bias - b0 * k);
      if (!(clip > 1e-30 && clip < 1e30)) continue;
      EXPECT_GE(naive(f, static_cast<float>(clip)), best * (1 - 1e-4)) << spec << " c=" << k;
      ++tried;
    }
  }
  EXPECT_GT(tried, 250);
  EXPECT_LE(c.error, c.max_error);
  EXPECT_THROW(llmfp4_activation_search(X.data(), n, in, G.data(), parse_format("int4")), error);
}

// calibrate --statistic llmfp4 on a model: each activation's choice is the search on its
// calibration rows with G = sum of W^T W over the layers that read it, listed here for Llama
// (q, k, v after attn_norm; attn_output; gate, up after ffn_norm; ffn_down; the classifier).
TEST(Calibrate, LlmFp4SearchesWithTheLayersReadingEachActivation) {
  const stories_data& d = stories();
  ASSERT_FALSE(d.m.config.fused_qkv());
  ASSERT_TRUE(d.m.config.gated_mlp());
  act_calibration_options o;
  o.element = parse_format("e2m1");
  o.calib_samples = 2, o.calib_ctx = 32, o.seed = 3;
  o.pattern = "*";
  parse_act_statistic("llmfp4", o);
  const act_calibration_result r = calibrate_activations(d.m, {}, d.ids, o);
  const auto rows = calibration_rows(d.m, d.ids, 2, 32, 3);
  ASSERT_EQ(r.sites.size(), size_t(4 * d.m.config.n_layers + 1));
  for (const act_calibration_site& site : r.sites) {
    const std::string blk = site.name.substr(0, site.name.rfind('.') + 1);
    std::vector<std::string> readers;
    if (site.name == "output_norm") readers = {d.m.find("output.weight") ? "output.weight" : "token_embd.weight"};
    else if (site.name.ends_with(".attn_norm")) readers = {blk + "attn_q.weight", blk + "attn_k.weight", blk + "attn_v.weight"};
    else if (site.name.ends_with(".attn")) readers = {blk + "attn_output.weight"};
    else if (site.name.ends_with(".ffn_norm")) readers = {blk + "ffn_gate.weight", blk + "ffn_up.weight"};
    else readers = {blk + "ffn_down.weight"};
    const std::vector<float>& x = rows.at(site.name);
    const int64_t in = activation_width(d.m.config, site.name), n = int64_t(x.size()) / in;
    std::vector<float> G(in * in, 0.0f);
    for (const std::string& name : readers) {
      const tensor& w = d.m.get(name);
      ASSERT_EQ(w.cols(), in) << name;
      for (int64_t a = 0; a < in; ++a)
        for (int64_t b = 0; b < in; ++b) {
          double sum = 0;
          for (int64_t k = 0; k < w.rows(); ++k) sum += double(w.data[k * in + a]) * w.data[k * in + b];
          G[a * in + b] += static_cast<float>(sum);
        }
    }
    const llmfp4_act_choice want = llmfp4_activation_search(x.data(), n, in, G.data(), o.element);
    EXPECT_EQ(site.format, format_name(want.element)) << site.name;
    ASSERT_EQ(site.clip.size(), 1u) << site.name;
    EXPECT_NEAR(site.clip[0], want.clip, 1e-5 * want.clip) << site.name;
    EXPECT_NEAR(site.error, want.error, 1e-4 * want.error) << site.name;
  }
}

// The command line: calibrate writes a rules file eval reads back (its clips the statistic of
// the windows), eval --attn in a format that holds every float32 gives the float NLL, and
// nonsense is refused by name.
TEST(Calibrate, CommandLine) {
  const std::string dir = lowbit_test::data_dir();
  const std::string model = dir + "/llama2c/stories260K.bin", data = dir + "/text/tinystories_val_sample.txt";
  const std::string out = lowbit::testing::scratch_path("lowbit_calibrate.json").string();
  const std::string common = " --model " + model + " --data " + data;
  auto run = [](const std::string& args) { return lowbit::testing::run_lowbit(args, "", true); };
  auto r = run("calibrate" + common + " --acts int8 --statistic max --calib-samples 3 --calib-ctx 64 --seed 5 "
               "--pattern 'blk.1.*' --force -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(lowbit::testing::read_file_bytes(out));
  ASSERT_EQ(j["act_rules"].size(), 4u);
  // The windows of the whole file (the command reads all of it).
  std::ifstream in(data);
  std::stringstream ss;
  ss << in.rdbuf();
  const auto ids = encode_documents(*load_llama2c_tokenizer(dir + "/llama2c/tok512.bin"), ss.str());
  const auto rows = calibration_rows(stories().m, ids, 3, 64, 5);
  for (const auto& rule : j["act_rules"]) {
    float amax = 0;
    for (float v : rows.at(rule["pattern"].get<std::string>())) amax = std::max(amax, std::fabs(v));
    EXPECT_EQ(rule["clip"].get<float>(), amax) << rule.dump();
    EXPECT_EQ(rule["format"], "int8");
  }
  const std::string ev = "eval" + common + " --ctx 64 --max-tokens 256 --json";
  auto nll = [&](const std::string& extra) {
    const auto e = lowbit::testing::run_lowbit(ev + extra, "", false);
    EXPECT_EQ(e.code, 0) << e.out;
    return nlohmann::json::parse(e.out)["mean_nll"].get<double>();
  };
  const double f = nll("");
  EXPECT_EQ(nll(" --attn e8m23"), f);
  EXPECT_NE(nll(" --attn e4m3"), f);
  EXPECT_NE(nll(" --rules " + out), f);
  r = run("calibrate" + common + " --acts int8/c -o " + out + " --force");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("bare symmetric element"), std::string::npos) << r.out;
  r = run("calibrate" + common + " --acts int8 --statistic median -o " + out + " --force");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("unknown calibration statistic 'median'"), std::string::npos) << r.out;
  r = run("calibrate" + common + " --acts int8 -o " + out);  // exists, no --force
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--force"), std::string::npos) << r.out;
  r = run(ev + " --attn e4m3q");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("e4m3q"), std::string::npos) << r.out;
  std::filesystem::remove(out);
}

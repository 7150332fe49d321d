// `lowbit calibrate`: static activation scales (clipping values) calibrated on data, written as a
// rules file for `lowbit eval --rules` (ptq/calibrate.hpp; docs/evaluation.md "Activation and
// attention plans").
#include <filesystem>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/ptq/calibrate.hpp"
#include "lowbit/text/documents.hpp"

namespace fs = std::filesystem;

namespace lowbit::cli {
namespace {

struct calibrate_cli_options {
  std::string model, tokenizer, data, weights, kv, rules, attn, acts, statistic = "max", pattern = "blk.*", out;
  bool per_channel = false, force = false, json = false;
  int calib_samples = 8, calib_ctx = 256;
  uint64_t seed = 0;
};

void cmd_calibrate(const calibrate_cli_options& o) {
  if (fs::exists(o.out) && !o.force)
    throw error(fmt::format("calibrate: {} exists; pass --force to replace it", o.out));
  ptq::act_calibration_options co;
  ptq::parse_act_statistic(o.statistic, co);
  co.element = parse_format(o.acts);
  check_static_format(co.element, fmt::format("calibrate --acts {}", o.acts));
  co.per_channel = o.per_channel, co.pattern = o.pattern;
  co.calib_samples = o.calib_samples, co.calib_ctx = o.calib_ctx, co.seed = o.seed;
  // The base plan: weights (applied before the calibration runs), KV and attention formats.
  quant_plan base = make_quant_plan(o.rules, o.weights, "", o.kv, o.attn);
  model m = load_model(o.model);
  apply_weight_plan(m, base);
  const auto tok = tokenizer_for_model(m, o.tokenizer);
  const std::vector<int32_t> ids = encode_documents(*tok, read_file(o.data, "data file"));
  progress_bar bar(fmt::format("calibrate {} {}", o.statistic, o.acts), "step");
  const ptq::act_calibration_result r =
      ptq::calibrate_activations(m, base, ids, co, [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  nlohmann::json doc = plan_json(r.plan);
  doc["calibration"] = {{"model", o.model}, {"data", o.data}, {"statistic", o.statistic},
                        {"per_channel", o.per_channel}, {"calib_samples", o.calib_samples},
                        {"calib_ctx", o.calib_ctx}, {"seed", o.seed}, {"rows", r.rows}};
  write_text_file_atomic(o.out, doc.dump(2) + "\n");
  if (o.json) {
    nlohmann::json sites = nlohmann::json::array();
    for (const auto& s : r.sites) {
      nlohmann::json j = {{"name", s.name}, {"format", s.format}, {"clip", s.clip}};
      if (s.error >= 0) j["output_error"] = s.error;
      sites.push_back(std::move(j));
    }
    std::cout << nlohmann::json{{"out", o.out}, {"rows", r.rows}, {"activations", sites}}.dump(2) << "\n";
    return;
  }
  table t{{"activation", "format", o.per_channel ? "clip (min .. max over channels)" : "clip"}, {}};
  for (const auto& s : r.sites) {
    const auto [lo, hi] = std::minmax_element(s.clip.begin(), s.clip.end());
    t.rows.push_back({s.name, s.format, s.clip.size() == 1 ? fmt::format("{:.6g}", s.clip[0])
                                                           : fmt::format("{:.4g} .. {:.4g}", *lo, *hi)});
  }
  std::cout << t.render();
  std::cout << fmt::format("{}: {} static act rules from {} calibration rows; evaluate with lowbit eval --rules {}\n",
                           o.out, r.sites.size(), r.rows, o.out);
}

}  // namespace

void add_calibrate_commands(CLI::App& app, command_list& commands) {
  static calibrate_cli_options o;
  auto* c = app.add_subcommand("calibrate", "static activation scales on calibration data -> rules.json for eval");
  c->add_option("--model", o.model, "model file (as eval)")->required();
  c->add_option("--tokenizer", o.tokenizer, "tokenizer (as eval)");
  c->add_option("--data", o.data, "text file; the windows come from its second half")->required();
  c->add_option("--acts", o.acts, "the static activation format: a bare element, e.g. int8, e4m3, e2m1")->required();
  c->add_option("--statistic", o.statistic, "max | percentile:P | mse | llmfp4 (LLM-FP4's format + clip search)")
      ->capture_default_str();
  c->add_flag("--per-channel", o.per_channel, "one clipping value per input channel (default: per tensor)");
  c->add_option("--pattern", o.pattern, "which activations (glob over blk.N.attn_norm|attn|ffn_norm|ffn_act, "
                                        "output_norm)")->capture_default_str();
  c->add_option("--weights", o.weights, "the plan's weight format (applied before calibrating)");
  c->add_option("--kv", o.kv, "the plan's KV-cache format");
  c->add_option("--attn", o.attn, "the plan's attention operand format (Q, K, P, V)");
  c->add_option("--rules", o.rules, "a base rules.json (weights, kv, attn, ...); the output extends it");
  c->add_option("--calib-samples", o.calib_samples, "calibration windows")->capture_default_str();
  c->add_option("--calib-ctx", o.calib_ctx, "tokens per window")->capture_default_str();
  c->add_option("--seed", o.seed, "which windows")->capture_default_str();
  c->add_option("-o,--out", o.out, "output rules.json")->required();
  c->add_flag("--force", o.force, "replace an existing output");
  c->add_flag("--json", o.json, "one JSON document");
  commands.push_back({c, [] { cmd_calibrate(o); }});
}

}  // namespace lowbit::cli

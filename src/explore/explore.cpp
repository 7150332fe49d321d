// `lowbit explore --row` as a library job (explore.hpp).
#include "lowbit/explore/explore.hpp"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <limits>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/base/process.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/law/predict.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/runs/records.hpp"
#include "lowbit/text/documents.hpp"

namespace fs = std::filesystem;

namespace lowbit {

explore_row parse_explore_row(const std::string& row) {
  explore_row r;
  r.label = row;
  try {
    r.plan = parse_plan_row(row);
  } catch (const lowbit::error& e) {
    throw error(fmt::format("explore: row {}", e.what()));
  }
  std::string& weights = r.plan.weights;
  if (const auto at = weights.rfind('@'); at != std::string::npos) {
    const std::string suffix = weights.substr(at + 1);
    bool is_method = ptq::find_method(suffix) != nullptr;
    if (!is_method) {
      try {
        parse_format(weights);
      } catch (const lowbit::error&) {
        ptq::parse_method(suffix);  // neither: say which methods there are
      }
    }
    if (is_method) r.method = suffix, weights = weights.substr(0, at);
  }
  if (r.method != "rtn" && !parse_optional_format(weights))
    throw error(fmt::format("explore: row '{}': a PTQ method needs a weight format", row));
  return r;
}

quant_plan quant_plan_of(const sweep_plan& p) {
  quant_plan plan;
  plan.weights_spec = p.weights, plan.weights = parse_optional_format(p.weights);
  plan.acts_spec = p.acts, plan.acts = parse_optional_format(p.acts);
  plan.kv_spec = p.kv, plan.kv = parse_optional_format(p.kv);
  return plan;
}

model quantize_variant(const model& base, const std::vector<int32_t>& ids, const quant_plan& plan,
                       const std::string& method, const calibration_settings& calib,
                       const ptq::ptq_progress& progress, double* sqnr_db) {
  model variant = base;
  if (method == "rtn") {
    const auto reports = apply_weight_plan(variant, plan);
    if (sqnr_db) *sqnr_db = mean_sqnr_db(reports);
    return variant;
  }
  ptq::quantize_options qo;
  qo.how = ptq::parse_method(method);
  qo.calib_samples = calib.samples, qo.calib_ctx = calib.ctx, qo.seed = calib.seed;
  return quantize_variant(base, ids, plan, qo, sqnr_db, progress);
}

model quantize_variant(const model& base, const std::vector<int32_t>& ids, const quant_plan& plan,
                       ptq::quantize_options o, double* sqnr_db, const ptq::ptq_progress& progress) {
  if (!plan.weights) throw error("quantize_variant: a PTQ method needs a weight format");
  model variant = base;
  o.weights = *plan.weights;
  ptq::quantize_model(variant, ids, o, progress);
  // The format's own SQNR on these weights (round to nearest), whatever the method did.
  if (sqnr_db) *sqnr_db = law::weights_sqnr_db(base, format_name(*plan.weights));
  return variant;
}

const std::vector<std::string>& default_explore_rows() {
  static const std::vector<std::string> rows = {
      "fp32", "bf16", "fp8_e4m3/c", "int8/c", "int4/g32", "e2m1/g32", "mxfp4", "nvfp4", "nf4",
      "q4_0", "int8/c,int8/c", "fp8_e4m3/c,fp8_e4m3/c", "fp32,-,fp8_e4m3/c", "int4/g32@gptq"};
  return rows;
}

explore_result run_explore(const explore_config& c, const explore_progress& progress) {
  std::vector<explore_row> rows;
  for (const std::string& row : c.rows) rows.push_back(parse_explore_row(row));  // fail fast
  std::vector<quant_plan> plans;
  for (const explore_row& r : rows) plans.push_back(quant_plan_of(r.plan));

  const model base = load_model(c.model);
  const auto tok = tokenizer_for_model(base, c.tokenizer);
  const std::vector<int32_t> ids = encode_documents(*tok, read_file(c.data, "data file"));
  eval_options eo;
  eo.ctx = c.ctx, eo.max_tokens = c.max_tokens, eo.kl_base = true;
  const bool calibrated = std::any_of(rows.begin(), rows.end(), [](const explore_row& r) { return r.method != "rtn"; });
  const int64_t half = int64_t(ids.size()) / 2;
  if (calibrated && (eo.max_tokens == 0 || eo.max_tokens > half)) {
    // Calibration windows come from the second half (docs/conventions.md §21): keep evaluation off it.
    if (progress.note) progress.note(fmt::format("evaluating the first {} tokens; PTQ calibrates on the second half", half));
    eo.max_tokens = half;
  }

  std::vector<model> variants;
  std::vector<const model*> pointers;
  variants.reserve(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string label = fmt::format("{}@{}", plans[i].weights_spec, rows[i].method);
    ptq::ptq_progress step;
    if (rows[i].method != "rtn" && progress.begin) progress.begin(label);
    if (progress.quantize) step = [&](int64_t d, int64_t t) { progress.quantize(label, d, t); };
    variants.push_back(quantize_variant(base, ids, plans[i], rows[i].method, calibration_settings{}, step));
    pointers.push_back(&variants.back());
  }
  if (progress.begin) progress.begin("explore");
  const auto evals = evaluate_many(pointers, plans, ids, eo, &base, progress.evaluate);

  explore_result res;
  res.model = c.model, res.data = c.data;
  res.ctx = c.ctx > 0 ? c.ctx : base.config.max_seq_len;
  res.max_tokens = eo.max_tokens;
  double fp32_ppl = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    res.rows.push_back({rows[i], average_linear_bits(variants[i], plans[i]), 0, evals[i]});
    if (plans[i].empty() && fp32_ppl == 0) fp32_ppl = evals[i].base_ppl;
  }
  if (fp32_ppl == 0 && !res.rows.empty()) fp32_ppl = res.rows[0].eval.base_ppl;
  for (explore_row_result& r : res.rows) r.dppl_percent = 100.0 * (r.eval.ppl / fp32_ppl - 1.0);

  if (!c.db.empty()) {  // every row as a run of the results store
    runs_db db(c.db);
    const std::string model_fp = file_fingerprint(c.model), data_fp = file_fingerprint(c.data);
    const calibration_settings calib;
    for (size_t i = 0; i < res.rows.size(); ++i) {
      const explore_row_result& r = res.rows[i];
      run_record rec = model_run_record("explore", fs::path(c.model).stem().string(), base.config, r.row.plan.weights,
                                        r.row.method, plans[i]);
      rec.config = {{"kind", "explore"}, {"model", model_fp}, {"tokenizer", tokenizer_identity(c.tokenizer)},
                    {"data", data_fp}, {"weights", canonical_or_float(r.row.plan.weights)},
                    {"acts", canonical_or_float(r.row.plan.acts)}, {"kv", canonical_or_float(r.row.plan.kv)},
                    {"method", r.row.method}, {"ctx", c.ctx}, {"max_tokens", eo.max_tokens},
                    {"eval_tokens", "rows"}, {"kl_base", true},
                    {"paths", {{"model", absolute_path(c.model)}, {"data", absolute_path(c.data)},
                               {"tokenizer", c.tokenizer.empty() ? c.tokenizer : tokenizer_path(c.tokenizer)}}}};
      if (r.row.method != "rtn")
        rec.config["calibration"] = {{"samples", calib.samples}, {"ctx", calib.ctx}, {"seed", calib.seed}};
      add_evaluation(rec, r.eval);
      rec.metrics["bits_per_weight"] = r.bits_per_weight;
      if (db.has(run_hash(rec.config))) ++res.already_recorded;
      else ++res.recorded;
      db.record(rec);
    }
  }
  return res;
}

nlohmann::json explore_json(const explore_result& r) {
  nlohmann::json rows = nlohmann::json::array();
  for (const explore_row_result& x : r.rows) {
    const sweep_plan& s = x.row.plan;
    rows.push_back({{"row", x.row.label}, {"method", x.row.method},
                    {"weights", {{"format", s.weights}, {"canonical", canonical_or_float(s.weights)}}},
                    {"acts", {{"format", s.acts}, {"canonical", canonical_or_float(s.acts)}}},
                    {"kv", {{"format", s.kv}, {"canonical", canonical_or_float(s.kv)}}},
                    {"bits_per_weight", x.bits_per_weight}, {"dppl_percent", x.dppl_percent},
                    {"result", eval_result_json(x.eval)}});
  }
  return {{"model", r.model}, {"data", r.data},
          {"tokens_scored", r.rows.empty() ? 0 : r.rows[0].eval.tokens_scored}, {"ctx", r.ctx}, {"rows", rows}};
}

namespace {

// A small text file's contents ("" when it cannot be read): the plotting process's output.
}  // namespace

explore_files write_explore_outputs(const explore_result& r, const std::string& out_dir, const std::string& plot_script) {
  fs::create_directories(out_dir);
  std::string csv = "row,method,weights,weights_canonical,acts,acts_canonical,kv,kv_canonical,bits_per_weight,"
                    "mean_nll,nll_stderr,ppl,ppl_stderr,dppl_percent,kl_mean,kl_p99,top1_agreement,"
                    "tokens_scored\n";
  for (const explore_row_result& x : r.rows) {
    const sweep_plan& s = x.row.plan;
    const eval_result& e = x.eval;
    csv += fmt::format("\"{}\",{},{},{},{},{},{},{},{:.6f},{:.8f},{:.8f},{:.6f},{:.6f},{:.6f},{:.8f},{:.8f},{:.6f},{}\n",
                       x.row.label, x.row.method, s.weights, canonical_or_float(s.weights), s.acts,
                       canonical_or_float(s.acts), s.kv, canonical_or_float(s.kv), x.bits_per_weight, e.mean_nll,
                       e.nll_stderr, e.ppl, e.ppl_stderr, x.dppl_percent, e.kl_mean, e.kl_p99, e.top1_agreement,
                       e.tokens_scored);
  }
  explore_files files;
  files.csv = (fs::path(out_dir) / "explore.csv").string();
  files.json = (fs::path(out_dir) / "explore.json").string();
  write_text_file_atomic(files.csv, csv);
  write_text_file_atomic(files.json, explore_json(r).dump(2) + "\n");
  if (!plot_script.empty()) {
    // The figures are drawn under temporary names and renamed into place only when the plotting
    // process succeeded: a full disk leaves no truncated explore.svg behind, and fails the run.
    const fs::path dir(out_dir);
    const std::string png = (dir / "explore.png").string(), svg = (dir / "explore.svg").string();
    const std::string stem = fmt::format("explore.plot-tmp-{}", ::getpid());
    const std::string tmp_png = (dir / (stem + ".png")).string(), tmp_svg = (dir / (stem + ".svg")).string();
    const std::string log = (dir / (stem + ".log")).string();
    const int rc = run_program({"/usr/bin/python3", plot_script, files.csv, tmp_png}, log);
    std::string output = fs::exists(log) ? read_file(log, "the plotting log") : std::string();
    std::error_code ec;
    if (rc == 0) {
      fs::rename(tmp_png, png, ec);
      if (!ec) fs::rename(tmp_svg, svg, ec);
    }
    fs::remove(tmp_png), fs::remove(tmp_svg), fs::remove(log);  // noexcept overloads: best effort
    if (rc == 3 || (rc == 127 && !fs::exists("/usr/bin/python3"))) {  // no /usr/bin/python3, or no matplotlib (scripts/plot_explore.py): no plot
      files.plot_note = " (no plot: /usr/bin/python3 with matplotlib is not available; run scripts/plot_explore.py)";
    } else if (rc != 0) {
      if (output.size() > 2000) output = "..." + output.substr(output.size() - 2000);
      throw error(fmt::format("explore: plotting {} into '{}' failed (exit {}): {}", files.csv, png, rc, output));
    } else if (ec) {
      throw error(fmt::format("explore: cannot move the plot into '{}': {}", out_dir, ec.message()));
    } else {
      files.plot_note = fmt::format(", {} and .svg", png);
    }
  }
  return files;
}

}  // namespace lowbit

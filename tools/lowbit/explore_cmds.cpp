// `lowbit explore` (rows on one model, or a sweep from a config) and `lowbit report` (the results
// database as CSV/JSON, figures and an HTML page). Each parses its flags, calls its library job
// (explore.hpp, sweep.hpp, report.hpp) and prints.
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/explore/explore.hpp"
#include "lowbit/explore/report.hpp"
#include "lowbit/explore/sweep.hpp"
#include "lowbit/runs/runs_db.hpp"

#ifndef LOWBIT_SOURCE_DIR
#define LOWBIT_SOURCE_DIR "."
#endif

namespace fs = std::filesystem;

namespace lowbit::cli {

namespace {

// ---- explore ----------------------------------------------------------------------------------
struct explore_options {
  std::string model, tokenizer, data, out = "explore-out";
  std::vector<std::string> rows;
  int ctx = 0;
  int64_t max_tokens = 0;
  bool json = false, no_plot = false;
  std::string config, db;  // --config: a sweep recorded in --db (default lowbit.db)
  int jobs = 1;
  int64_t max_runs = -1;
  bool tiny = false;  // --config: the study at CI size (sweep.hpp make_tiny)
};

// `explore --config sweep.json`: the grid of sweep.hpp, recorded in the results database; the
// table shows every run of the grid, whether it ran now or was already recorded.
void cmd_sweep(const explore_options& o) {
  if (!o.rows.empty() || !o.model.empty() || !o.data.empty() || o.ctx || o.max_tokens)
    throw error("explore: with --config, the models, data, formats and eval settings come from the sweep file "
                "(drop --row/--model/--data/--ctx/--max-tokens)");
  sweep_config c = load_sweep_config(o.config, data_dir());
  sweep_options so;
  so.db = o.db.empty() ? "lowbit.db" : o.db;
  if (o.tiny) make_tiny(c, fs::path(so.db).parent_path().string());
  so.jobs = o.jobs, so.max_runs = o.max_runs;
  progress_bar bar("explore", "run");
  const sweep_summary s = run_sweep(
      c, so, [&](int64_t d, int64_t t) { bar.update(d, t); },
      [&](const sweep_job& j, const run_record*, const std::string& err) {
        if (!err.empty()) std::cerr << fmt::format("\nexplore: {} {} @{} failed: {}\n", j.model.name, plan_label(j.plan), j.method, err);
      });
  bar.finish();
  if (!s.coordinator) return;  // MPI ranks other than 0 print nothing
  const runs_db db(so.db);
  table t{{"model", "weights", "acts", "kv", "method", "ctx", "tokens", "bits/w", "ppl", "dNLL", "KL mean", "SQNR dB", "run"}, {}};
  nlohmann::json rows = nlohmann::json::array();
  auto metric = [](const run_record& r, const char* k, int digits) {
    const auto it = r.metrics.find(k);
    return it == r.metrics.end() || std::isnan(it->second) ? std::string("-") : fmt::format("{:.{}f}", it->second, digits);
  };
  int64_t missing = 0;
  for (const sweep_job& j : s.jobs) {
    const auto r = db.find(j.hash);
    if (!r) {
      ++missing;
      continue;
    }
    rows.push_back(to_json(*r));
    t.rows.push_back({r->model, j.plan.weights.empty() ? "fp32" : j.plan.weights, j.plan.acts.empty() ? "-" : j.plan.acts,
                      j.plan.kv.empty() ? "-" : j.plan.kv, j.method, j.eval.ctx ? std::to_string(j.eval.ctx) : "max",
                      fmt::format("{:.0f}", r->tokens), metric(*r, "bits_per_weight", 3), metric(*r, "ppl", 4),
                      metric(*r, "dnll", 5), metric(*r, "kl_mean", 6), metric(*r, "sqnr_db", 2), std::to_string(r->id)});
  }
  const std::string note = fmt::format("{} runs in the grid: {} already recorded, {} ran now, {} failed, {} not run{}; "
                                       "database {}{}", s.total, s.already, s.ran, s.failures.size(), missing,
                                       o.max_runs >= 0 && missing ? " (--max-runs: run again to resume)" : "", so.db,
                                       s.ranks > 1 ? fmt::format(" ({} MPI ranks)", s.ranks) : "");
  if (o.json) std::cout << nlohmann::json{{"database", so.db}, {"total", s.total}, {"already", s.already},
                                          {"ran", s.ran}, {"failed", s.failures.size()}, {"runs", rows}}.dump(2) << "\n";
  else std::cout << t.render() << note << "\n";
  if (!s.failures.empty())
    throw error(fmt::format("explore: {} of {} runs failed (not recorded; a rerun retries them): {}", s.failures.size(),
                            s.total, s.failures.front()));
}

void cmd_explore(explore_options o) {
  if (!o.config.empty()) return cmd_sweep(o);
  if (o.jobs != 1 || o.max_runs >= 0 || o.tiny) throw error("explore: -j, --max-runs and --tiny go with --config sweep.json");
  explore_config c;
  c.model = o.model.empty() ? data_dir() + "/llama2c/stories260K.bin" : o.model;
  c.data = o.data.empty() ? data_dir() + "/text/tinystories_val_sample.txt" : o.data;
  c.tokenizer = o.tokenizer, c.rows = o.rows.empty() ? default_explore_rows() : o.rows;
  c.ctx = o.ctx, c.max_tokens = o.max_tokens, c.db = o.db;

  std::unique_ptr<progress_bar> bar;  // the current stage's
  explore_progress p;
  p.begin = [&](const std::string& stage) {
    if (bar) bar->finish();
    bar = std::make_unique<progress_bar>(stage, stage == "explore" ? "tok" : "step");
  };
  p.quantize = [&](const std::string&, int64_t d, int64_t t) { bar->update(d, t); };
  p.evaluate = [&](int64_t d, int64_t t) { bar->update(d, t); };
  p.note = [](const std::string& m) { std::cerr << "explore: " << m << "\n"; };
  const explore_result r = run_explore(c, p);
  if (bar) bar->finish();
  if (!c.db.empty())
    std::cerr << fmt::format("explore: {} rows recorded in {} ({} were there already)\n", r.recorded, c.db,
                             r.already_recorded);
  const std::string script =
      o.no_plot ? std::string() : (fs::path(LOWBIT_SOURCE_DIR) / "scripts" / "plot_explore.py").string();
  const explore_files files = write_explore_outputs(r, o.out, script);
  if (o.json) {
    std::cout << explore_json(r).dump(2) << "\n";
    return;
  }
  table t{{"row", "weights", "method", "acts", "kv", "bits/w", "ppl", "+/-", "dppl %", "KL mean", "top-1 %"}, {}};
  auto fixed = [](double v, int digits) { return fmt::format("{:.{}f}", v, digits); };
  for (const explore_row_result& x : r.rows) {
    const sweep_plan& s = x.row.plan;
    t.rows.push_back({x.row.label, s.weights.empty() ? "fp32" : s.weights, x.row.method, s.acts.empty() ? "-" : s.acts,
                      s.kv.empty() ? "-" : s.kv, fixed(x.bits_per_weight, 3), fixed(x.eval.ppl, 4),
                      fixed(x.eval.ppl_stderr, 4), fmt::format("{:+.3f}", x.dppl_percent),
                      fmt::format("{:.6f}", x.eval.kl_mean), fixed(100 * x.eval.top1_agreement, 2)});
  }
  std::cout << fmt::format("model {}  data {}  {} tokens scored per row (ctx {})\n", r.model, r.data,
                           r.rows.empty() ? 0 : r.rows[0].eval.tokens_scored, r.ctx);
  std::cout << t.render();
  std::cout << fmt::format("wrote {}, {}{}\n", files.csv, files.json, files.plot_note);
}

struct report_cli_options {
  std::string db = "lowbit.db", out = "report", fit;
  bool no_plot = false;
};

void cmd_report(const report_cli_options& o) {
  if (!fs::exists(o.db)) throw error(fmt::format("report: {}: no such results database", o.db));
  report_options ro;
  ro.db = o.db, ro.out = o.out, ro.fit = o.fit;
  if (!o.fit.empty() && !fs::exists(o.fit)) throw error(fmt::format("report: --fit {}: no such file", o.fit));
  if (!o.no_plot) ro.script = (fs::path(LOWBIT_SOURCE_DIR) / "scripts" / "plot_report.py").string();
  const report_result r = write_report(ro);
  std::cout << fmt::format("{} runs: {}, {}, {}\n", r.runs, r.html, r.csv, r.json);
  for (const auto& f : r.figures) std::cout << fmt::format("figure {} (and .svg)\n", f);
  if (!o.no_plot && r.figures.empty()) std::cerr << fmt::format("report: no figures: {}\n", r.plot_error);
}

}  // namespace

void add_explore_commands(CLI::App& app, command_list& commands) {
  static explore_options xo;
  auto* explore = app.add_subcommand("explore", "format sweep on a model: bits/weight, perplexity, KL; CSV, JSON, PNG");
  explore->add_option("--model", xo.model, "model (default: stories260K from the data directory)");
  explore->add_option("--tokenizer", xo.tokenizer, "tokenizer (default: the model's)");
  explore->add_option("--data", xo.data, "text (default: the TinyStories sample from the data directory)");
  explore->add_option("--row", xo.rows, "WEIGHTS[@METHOD][,ACTS[,KV]] ('-' = float; METHOD rtn, gptq, awq, smoothquant), repeatable (default: the demo set)");
  explore->add_option("--ctx", xo.ctx, "window length (default: the model's maximum)");
  explore->add_option("--max-tokens", xo.max_tokens, "evaluate the first N tokens (default: all)");
  explore->add_option("-o,--out", xo.out, "output directory for explore.csv/.json/.png")->capture_default_str();
  explore->add_flag("--no-plot", xo.no_plot, "skip the PNG/SVG plot");
  explore->add_flag("--json", xo.json, "one JSON document");
  explore->add_option("--config", xo.config, "sweep.json: models x formats x methods x eval settings, recorded in --db (see README)");
  explore->add_option("--db", xo.db, "results database (default with --config: lowbit.db; with --row: record the rows there)");
  explore->add_option("-j,--jobs", xo.jobs, "--config: runs in parallel (worker processes)")->capture_default_str();
  explore->add_option("--max-runs", xo.max_runs, "--config: start at most N runs not yet recorded, then stop (resume later)");
  explore->add_flag("--tiny", xo.tiny, "--config: run the study at CI size (first model, two formats, 256 tokens, "
                                       "4 calibration windows, 8 task items; a family: 12 training steps)");
  commands.push_back({explore, [] { cmd_explore(xo); }});

  static report_cli_options o;
  auto* report = app.add_subcommand("report", "HTML report of a results database: perplexity vs bits, Pareto frontiers, ExMy heatmap");
  report->add_option("--db", o.db, "results database")->capture_default_str();
  report->add_option("-o,--out", o.out, "output directory (index.html, runs.csv/.json, PNG + SVG)")->capture_default_str();
  report->add_option("--fit", o.fit, "law-fit JSON (lowbit fit's output: fitted/held_out points) for the law_fit figure");
  report->add_flag("--no-plot", o.no_plot, "tables and HTML only");
  commands.push_back({report, [] { cmd_report(o); }});
}

}  // namespace lowbit::cli

// `lowbit report`: the results database as CSV/JSON, figures and an HTML page (report.hpp).
// (`lowbit explore`, rows and sweeps, is registered with the model commands.)
#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "cli.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/explore/report.hpp"

#ifndef LOWBIT_SOURCE_DIR
#define LOWBIT_SOURCE_DIR "."
#endif

namespace fs = std::filesystem;

namespace lowbit::cli {

namespace {

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
  static report_cli_options o;
  auto* report = app.add_subcommand("report", "HTML report of a results database: perplexity vs bits, Pareto frontiers, ExMy heatmap");
  report->add_option("--db", o.db, "results database")->capture_default_str();
  report->add_option("-o,--out", o.out, "output directory (index.html, runs.csv/.json, PNG + SVG)")->capture_default_str();
  report->add_option("--fit", o.fit, "law-fit JSON (lowbit fit's output: fitted/held_out points) for the law_fit figure");
  report->add_flag("--no-plot", o.no_plot, "tables and HTML only");
  commands.push_back({report, [] { cmd_report(o); }});
}

}  // namespace lowbit::cli

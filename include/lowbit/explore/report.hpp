// `lowbit report --db FILE -o DIR` (issue 6): the runs of a results database as runs.csv and
// runs.json (every column, every metric, plus the derived columns below), figures drawn by
// scripts/plot_report.py with Debian's matplotlib (docs/conventions.md §29) as PNG and SVG, and an
// index.html that shows the figures above a table of the runs.
//
// Derived columns:
//   family    int | fp (ExMy minifloat) | mx (E8M0 block scale) | nvfp4 | ggml (q4_0 ... q6_k) |
//             lut (nf4, lut(...)) | pow (power maps) | float (16 bits and more, unscaled)
//   acts, kv  the activation and KV-cache formats from the run's config ("" when float)
//   mac_cost  relative cost of one multiply-accumulate of the weight and activation operands,
//             INT8 x INT8 = 1 (law/cost.hpp: our cell-count model, not a published one)
//   loss      metrics.nll, else metrics.val_loss (training); ppl: metrics.ppl, else exp(loss)
//
// Figures: ppl_vs_bits (perplexity against bits per weight, one line per format family and
// model), pareto_bits and pareto_mac (the Pareto frontier of perplexity against bits per weight
// and against MAC cost), exmy_heatmap (E x M -> perplexity of minifloat weights, and -> loss of
// training runs), and law_fit — the HOOK for scaling-law fits: drawn when runs carry a
// `law_prediction` metric, or when --fit names a JSON whose "fitted"/"held_out"/"points" lists
// hold {"loss" or "measured", "predicted"} (the form `lowbit fit` writes): measured against
// predicted with residuals.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/runs/runs_db.hpp"

namespace lowbit {

struct report_options {
  std::string db;                    // results database
  std::string out;                   // output directory (created)
  std::string fit;                   // optional law-fit JSON for the law_fit figure
  std::string script;                // plot_report.py ("" = no figures)
  std::string python = "/usr/bin/python3";
};

struct report_result {
  int64_t runs = 0;
  std::string csv, json, html;       // paths written
  std::vector<std::string> figures;  // PNG paths drawn
  std::string plot_error;            // why there are no figures, when there are none
};

// The derived columns of one run (see above).
std::string format_family(const run_record& r);
nlohmann::json report_row(const run_record& r);

report_result write_report(const report_options& o);

}  // namespace lowbit

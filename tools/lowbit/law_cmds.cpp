// `lowbit law`, `lowbit fit`, `lowbit predict`: scaling laws, their fits to recorded runs, the
// PTQ-quality predictor and the MAC cost model (issue 6; docs/laws.md §2.1, §2.2; docs/ptq.md §4.8).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "lowbit/io/safetensors.hpp"  // write_text_file_atomic
#include "lowbit/engine/model.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/law/cost.hpp"
#include "lowbit/law/fit.hpp"
#include "lowbit/law/laws.hpp"
#include "lowbit/law/predict.hpp"
#include "lowbit/io/model_io.hpp"

namespace lowbit::cli {
namespace {

using namespace lowbit::law;

std::string g(double v, int digits = 6) {
  if (std::isnan(v)) return "nan";
  return fmt::format("{:.{}g}", v, digits);
}

// "2..16" or "8" -> [lo, hi].
std::pair<int, int> parse_bits(const std::string& s) {
  const auto dots = s.find("..");
  try {
    if (dots == std::string::npos) {
      const int b = std::stoi(s);
      return {b, b};
    }
    const int lo = std::stoi(s.substr(0, dots)), hi = std::stoi(s.substr(dots + 2));
    if (lo <= hi) return {lo, hi};
  } catch (const std::exception&) {
  }
  throw error(fmt::format("--bits '{}': expected a bit width (8) or a range LO..HI with LO <= HI (2..16)", s));
}

// Outputs are written atomically (temp file + rename), like every other output of lowbit.
void write_json(const nlohmann::json& j, const std::string& out) { write_text_file_atomic(out, j.dump(2) + "\n"); }

nlohmann::json read_json(const std::string& path) {
  const std::string text = read_file(path, "JSON file");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw error(fmt::format("{}: not JSON ({})", path, e.what()));
  }
}

// ---- law ----------------------------------------------------------------------------------------
struct law_cli_options {
  std::string law;
  double N = 0, D = 0, C = 0, k = 6.0 / 16;
  std::vector<std::string> formats;
  std::string constants, bits = "2..16";
  bool optimal_layout = false, critical = false, compute_optimal = false, json = false;
  // cost
  std::vector<std::string> weights, acts;
  mac_cost_params cost;
};

// The paper's Figure 5 list (docs/laws.md §2.1), printed beside ours.
std::string figure5(int P) {
  static const char* paper[] = {"E1M0", "E1M1", "E2M1", "E2M2", "E3M2", "E3M3", "E4M3", "E4M4",
                                "E5M4", "E5M5", "E6M5", "E6M6", "E7M6", "E7M7", "E8M7"};
  return P >= 2 && P <= 16 ? paper[P - 2] : "";
}

void cmd_cost(const law_cli_options& o) {
  const std::vector<std::string> ws = o.weights.empty() ? std::vector<std::string>{"int8"} : o.weights;
  const std::vector<std::string> as = o.acts.empty() ? std::vector<std::string>{"int8"} : o.acts;
  table t{{"weights", "acts", "mult", "exp add", "shifter", "acc bits", "cells", "rel. cost"}, {}};
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& w : ws)
    for (const auto& a : as) {
      const mac_cost_breakdown b = mac_cost_detail(w, a, o.cost);
      t.rows.push_back({w, a.empty() ? "-" : a, g(b.multiplier), g(b.exponent_adder), g(b.shifter),
                        std::to_string(b.accumulator_bits), g(b.raw), g(b.relative, 4)});
      rows.push_back({{"weights", w},
                      {"acts", a},
                      {"multiplier", b.multiplier},
                      {"exponent_adder", b.exponent_adder},
                      {"shifter", b.shifter},
                      {"accumulator_bits", b.accumulator_bits},
                      {"cells", b.raw},
                      {"relative_cost", b.relative}});
    }
  if (o.json) {
    std::cout << nlohmann::json{{"model", mac_cost_model_description(o.cost)}, {"rows", rows}}.dump(2) << "\n";
    return;
  }
  std::cout << mac_cost_model_description(o.cost) << "\n\n" << t.render();
}

void cmd_law(const law_cli_options& o) {
  if (o.law == "cost") return cmd_cost(o);
  const law_id id = parse_law(o.law);
  const law_constants c =
      o.constants.empty() ? published_constants(id) : constants_from_json(read_json(o.constants), o.constants);
  if (c.law != id)
    throw error(fmt::format("{} holds constants of law {}, not {}", o.constants, to_string(c.law), to_string(id)));
  const law_info& li = info(id);
  nlohmann::json out;
  out["law"] = li.name;
  out["formula"] = li.formula;
  out["constants"] = constants_to_json(c)["constants"];
  out["source"] = c.source;
  std::string text = fmt::format("{}: {}\n  {}\n  constants ({}):", li.name, li.title, li.formula, c.source);
  for (size_t i = 0; i < c.values.size(); ++i) text += fmt::format(" {} {}", li.names[i], g(c.values[i]));
  text += "\n\n";
  bool did = false;
  auto need_sun = [&](const char* what) {
    if (id != law_id::sun2025) throw error(fmt::format("{} is a result of the sun2025 law", what));
  };
  const std::vector<std::string> formats = o.formats.empty() ? std::vector<std::string>{""} : o.formats;

  if (o.optimal_layout) {
    need_sun("--optimal-layout");
    const auto [lo, hi] = parse_bits(o.bits);
    table t{{"bits", "layout", "E", "M", "E continuous", "M continuous", "paper (Fig. 5)"}, {}};
    nlohmann::json rows = nlohmann::json::array();
    for (int P = lo; P <= hi; ++P) {
      const layout l = optimal_layout(c, P);
      const std::string name = fmt::format("E{}M{}", l.E, l.M);
      t.rows.push_back({std::to_string(P), name, std::to_string(l.E), std::to_string(l.M), g(l.E_cont, 4),
                        g(l.M_cont, 4), figure5(P)});
      rows.push_back({{"bits", P}, {"layout", name}, {"E", l.E}, {"M", l.M}, {"E_continuous", l.E_cont},
                      {"M_continuous", l.M_cont}, {"paper", figure5(P)}});
    }
    out["optimal_layout"] = rows;
    text += "optimal ExMy layout per bit width: integer argmax of (E+0.5)^delta (M+0.5)^nu, E + M + 1 = bits\n" +
            t.render() + "\n";
    did = true;
  }
  if (o.critical) {
    need_sun("--critical-data");
    if (!(o.N > 0)) throw error("--critical-data needs --N");
    if (o.formats.empty()) throw error("--critical-data needs --format (e.g. e4m3/g128)");
    table t{{"format", "canonical", "E", "M", "log2 B", "D_crit (tokens)", "loss at D_crit"}, {}};
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& f : formats) {
      law_point x = point_of_format(f);
      const double dc = critical_data(c, o.N, x.E, x.M, x.log2_block);
      x.N = o.N, x.D = dc;
      const double L = loss(c, x);
      const std::string canon = format_name(parse_format(f));
      t.rows.push_back({f, canon, g(x.E), g(x.M), g(x.log2_block), g(dc, 4), g(L, 5)});
      rows.push_back({{"format", f}, {"canonical", canon}, {"E", x.E}, {"M", x.M}, {"log2_block", x.log2_block},
                      {"N", o.N}, {"critical_data", dc}, {"loss", L}});
    }
    out["critical_data"] = rows;
    text += fmt::format("critical data size at N = {}: D_crit = [d gamma N^alpha (E+0.5)^delta (M+0.5)^nu / log2 B]"
                        "^(1/(2 beta)); more data than this raises the loss\n",
                        g(o.N)) +
            t.render() + "\n";
    did = true;
  }
  if (o.compute_optimal && id == law_id::chinchilla) {
    if (!(o.C > 0)) throw error("chinchilla --compute-optimal needs --C (FLOPs, C = 6 N D)");
    const auto [N, D] = chinchilla_optimal(c, o.C);
    law_point x;
    x.N = N, x.D = D;
    out["compute_optimal"] = {{"C", o.C}, {"N", N}, {"D", D}, {"loss", loss(c, x)}};
    text += fmt::format("compute-optimal at C = {} (C = 6 N D): N = {}, D = {}, loss {}\n\n", g(o.C), g(N, 4),
                        g(D, 4), g(loss(c, x), 5));
    did = true;
  } else if (o.compute_optimal) {
    need_sun("--compute-optimal");
    if (o.formats.size() > 1) throw error("--compute-optimal takes one --format (its block size is used)");
    const std::string f = o.formats.empty() ? "e4m3/g128" : o.formats[0];
    const double l2B = point_of_format(f).log2_block;
    nlohmann::json rows = nlohmann::json::array();
    table t{{"mode", "C (FLOPs)", "N", "D", "P* (bits)", "layout at round(P*)", "loss"}, {}};
    auto add = [&](const std::string& mode, double C, double N, double D, double P) {
      const int Pi = std::max(2, static_cast<int>(std::lround(P)));
      const layout l = optimal_layout(c, Pi);
      const std::string name = fmt::format("E{}M{}", l.E, l.M);
      const double L = N > 0 && D > 0 ? loss_at_optimal_layout(c, N, D, P, l2B) : std::nan("");
      t.rows.push_back({mode, C > 0 ? g(C, 3) : "-", N > 0 ? g(N, 4) : "-", D > 0 ? g(D, 4) : "-", g(P, 4), name,
                        g(L, 5)});
      rows.push_back({{"mode", mode}, {"C", C}, {"N", N}, {"D", D}, {"P", P}, {"layout", name},
                      {"loss", std::isnan(L) ? nlohmann::json(nullptr) : nlohmann::json(L)}});
    };
    if (o.D > 0) {
      const double P = optimal_precision_fixed_D(c, o.D, l2B);
      const double N = o.C > 0 ? o.C / (o.k * P * o.D) : 0;
      add("fixed D", o.C, N, o.D, P);
    } else if (o.N > 0) {
      if (!(o.C > 0)) throw error("--compute-optimal with --N (fixed model size) needs --C");
      const double P = optimal_precision_fixed_N(c, o.C, o.k, o.N, l2B);
      add("fixed N", o.C, o.N, o.C / (o.k * P * o.N), P);
    } else {
      std::vector<double> budgets;
      if (o.C > 0) budgets.push_back(o.C);
      else
        for (double C = 1e18; C <= 1.01e31; C *= 10) budgets.push_back(C);
      for (double C : budgets) {
        const double P = optimal_precision_joint(c, C, o.k, l2B);
        const double N = optimal_N_at(c, C, o.k, P, l2B);
        add("joint", C, N, C / (o.k * P * N), P);
      }
    }
    out["compute_optimal"] = {{"format", f}, {"log2_block", l2B}, {"k", o.k}, {"rows", rows}};
    text += fmt::format("compute-optimal precision P* (C = k P N D, k = {}; log2 B = {} from {}; the optimal layout "
                        "at every P)\n",
                        g(o.k), g(l2B), f) +
            t.render() + "\n";
    did = true;
  }
  if (!did || (o.N > 0 && o.D > 0 && !o.compute_optimal)) {
    if (!(o.N > 0) || !(o.D > 0))
      throw error(fmt::format("law {}: give --N and --D (and --format) to predict a loss, or one of "
                              "--optimal-layout, --critical-data, --compute-optimal",
                              li.name));
    table t{{"format", "canonical", "E", "M", "P", "log2 B", "loss"}, {}};
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& f : formats) {
      law_point x = point_of_format(f);
      x.N = o.N, x.D = o.D;
      const double L = loss(c, x);
      const std::string canon = f.empty() ? "fp32" : format_name(parse_format(f));
      const bool fl = x.log2_block == 0;  // float: no precision term
      t.rows.push_back({f.empty() ? "-" : f, canon, fl ? "-" : g(x.E), fl ? "-" : g(x.M), fl ? "-" : g(x.P),
                        g(x.log2_block), g(L, 6)});
      rows.push_back({{"format", f}, {"canonical", canon}, {"N", o.N}, {"D", o.D}, {"E", x.E}, {"M", x.M},
                      {"P", x.P}, {"log2_block", x.log2_block}, {"loss", L}});
    }
    out["predictions"] = rows;
    text += fmt::format("predicted loss at N = {}, D = {}\n", g(o.N), g(o.D)) + t.render();
  }
  if (o.json) std::cout << out.dump(2) << "\n";
  else std::cout << text;
}

// ---- fit ----------------------------------------------------------------------------------------
struct fit_cli_options {
  std::string law, db, out;
  fit_options fit;
  bool json = false;
};

void cmd_fit(fit_cli_options o) {
  const law_id id = parse_law(o.law);
  runs_db db(o.db, runs_db::access::existing);
  size_t skipped = 0;
  const std::vector<law_point> pts = points_from_runs(id, db.query({"train", "", ""}), &skipped);
  const fit_result r = fit_law(id, pts, o.fit);
  nlohmann::json j = to_json(r);
  j["db"] = o.db;
  j["runs_skipped"] = skipped;
  if (!o.out.empty()) write_json(j, o.out);
  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  const law_info& li = info(id);
  std::cout << fmt::format("{}: {}\n  {}\n  {} runs fitted, {} held out (N >= {}), {} skipped; robust {} ({}), {} "
                           "starts\n\n",
                           li.name, li.title, li.formula, r.n_fit, r.n_holdout, g(r.holdout_min_N), skipped,
                           o.fit.robust, g(o.fit.robust_scale), r.starts_run);
  table t{{"constant", "fitted", fmt::format("{:g}% CI lo", 100 * o.fit.confidence), "CI hi", "published"}, {}};
  for (size_t i = 0; i < li.names.size(); ++i)
    t.rows.push_back({li.names[i], g(r.constants.values[i]), r.ci_lo.empty() ? "-" : g(r.ci_lo[i]),
                      r.ci_hi.empty() ? "-" : g(r.ci_hi[i]), li.published ? g((*li.published)[i]) : "none"});
  std::cout << t.render();
  if (!r.ci_lo.empty())
    std::cout << fmt::format("({} {} bootstrap replicates; percentile intervals, which run slightly narrow)\n",
                             r.bootstrap_done, o.fit.bootstrap_kind);
  std::cout << fmt::format("\nfit error: RMSE {} (MAPE {}%) on {} runs\n", g(r.rmse_fit, 4), g(r.mape_fit, 3), r.n_fit);
  if (r.n_holdout)
    std::cout << fmt::format("held-out error: RMSE {} (MAPE {}%) on {} runs of the {} largest N\n",
                             g(r.rmse_holdout, 4), g(r.mape_holdout, 3), r.n_holdout, o.fit.holdout_largest);
  if (!o.out.empty()) std::cout << "wrote " << o.out << "\n";
}

// ---- predict ------------------------------------------------------------------------------------
struct predict_cli_options {
  std::string db, model, model_file, method = "rtn", out;
  std::vector<std::string> formats;
  predictor_options p;
  bool json = false;
};

// One training (with its cross-validation) answers every --format of the call; the model file is
// loaded once per path, and only when a format's SQNR has to be measured.
void cmd_predict(const predict_cli_options& o) {
  runs_db db(o.db, runs_db::access::existing);
  const std::vector<ptq_sample> rows = samples_from_runs(db.all());
  // Every query is checked (its format parsed, its model known) before the training.
  std::vector<ptq_sample> queries;
  for (const std::string& spec : o.formats) queries.push_back(query_for(rows, o.model, spec, o.method));
  ptq_predictor pr(o.p);
  const cv_report cv = pr.train(rows);
  std::optional<model> weights;  // the file last measured on, kept while the path stays
  std::string weights_path;
  nlohmann::json predictions = nlohmann::json::array();
  table t{{"format", "canonical", "predicted NLL", "ppl", "float NLL", "SQNR dB", "SQNR"}, {}};
  for (size_t i = 0; i < o.formats.size(); ++i) {
    const std::string& spec = o.formats[i];
    ptq_sample& q = queries[i];
    // The format's SQNR on the model's own weights, measured when no run has it.
    const std::string path = !o.model_file.empty() ? o.model_file : q.model_path;
    std::string sqnr_source = std::isnan(q.sqnr_db) ? "missing" : "recorded";
    if (std::isnan(q.sqnr_db) && !path.empty() && std::filesystem::exists(path)) {
      if (!weights || weights_path != path) weights = load_model(path), weights_path = path;
      q.sqnr_db = weights_sqnr_db(*weights, spec);
      sqnr_source = "measured on " + path;
    }
    const double nll = pr.predict(q);
    const std::string canonical = format_name(parse_format(spec));
    predictions.push_back({{"format", spec},
                           {"canonical", canonical},
                           {"predicted_nll", nll},
                           {"predicted_ppl", std::exp(nll)},
                           {"float_nll", q.nll_float},
                           {"features", feature_json(q)},
                           {"sqnr_source", sqnr_source}});
    t.rows.push_back({spec, canonical, g(nll, 5), g(std::exp(nll), 5), g(q.nll_float, 5), g(q.sqnr_db, 4), sqnr_source});
  }
  const nlohmann::json j = {{"model", o.model},          {"method", o.method}, {"predictions", predictions},
                            {"training_rows", rows.size()}, {"cv", to_json(cv)}};
  if (!o.out.empty()) write_json(j, o.out);
  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format(
                   "PTQ quality predictor (after Xu et al. 2024; gradient-boosted trees, XGBoost), {} training rows\n"
                   "  {}-fold CV: RMSE {} nats (constant predictor {}), MAE {}\n  model {}, method {}\n\n",
                   rows.size(), cv.folds, g(cv.rmse, 4), g(cv.rmse_constant, 4), g(cv.mae, 4), o.model, o.method)
            << t.render();
}

}  // namespace

void add_law_commands(CLI::App& app, command_list& commands) {
  static law_cli_options lo;
  auto* law = app.add_subcommand(
      "law", "scaling laws (sun2025, chinchilla, kumar2024) and the MAC cost model (cost): predictions, Sun et "
             "al.'s optimal layouts, critical data size, compute-optimal precision");
  law->add_option("LAW", lo.law, "sun2025 | chinchilla | kumar2024 | cost")->required();
  law->add_option("--N", lo.N, "parameters");
  law->add_option("--D", lo.D, "training tokens");
  law->add_option("--format", lo.formats, "format spec(s), e.g. e4m3/g128, int8/c (repeatable)");
  law->add_option("--constants", lo.constants, "constants from `lowbit fit -o FILE` (kumar2024 needs them)");
  law->add_flag("--optimal-layout", lo.optimal_layout, "best ExMy per bit width (sun2025)");
  law->add_option("--bits", lo.bits, "bit widths for --optimal-layout: N or LO..HI (default 2..16)");
  law->add_flag("--critical-data", lo.critical, "critical data size for --N and each --format (sun2025)");
  law->add_flag("--compute-optimal", lo.compute_optimal,
                "compute-optimal precision: with --D (fixed D), --N --C (fixed N), --C or nothing (joint)");
  law->add_option("--C", lo.C, "compute budget in FLOPs");
  law->add_option("--k", lo.k, "C = k P N D (default 6/16: 6 N D at 16 bits)");
  law->add_option("--weights", lo.weights, "cost: weight format(s) (repeatable)");
  law->add_option("--acts", lo.acts, "cost: activation format(s); '-' = fp32 (repeatable)");
  law->add_option("--c-mul", lo.cost.c_mul, "cost model: per multiplier cell");
  law->add_option("--c-exp", lo.cost.c_exp, "cost model: per exponent-adder bit");
  law->add_option("--c-shift", lo.cost.c_shift, "cost model: per shifter mux cell");
  law->add_option("--c-acc", lo.cost.c_acc, "cost model: per accumulator bit");
  law->add_option("--guard-bits", lo.cost.guard_bits, "cost model: accumulator headroom bits");
  law->add_flag("--json", lo.json, "one JSON document");
  law->footer(
      "Laws:\n"
      "  sun2025     " + info(law_id::sun2025).formula + "\n"
      "              published constants (arXiv 2501.02423v3); channel-wise log2 B = 13.1567; tensor-wise n/a\n"
      "  chinchilla  " + info(law_id::chinchilla).formula + " (E 1.69, A 406.4, alpha 0.34, B 410.7, beta 0.28)\n"
      "  kumar2024   " + info(law_id::kumar2024).formula + "\n"
      "              no published constants confirmed here: fit them (lowbit fit) and pass --constants\n"
      "Formats: eEmM -> E, M; intN -> E 0, M N-1; /gK -> B = K; /c -> log2 B 13.1567.\n"
      "cost: " + mac_cost_model_description() + "\n"
      "Examples:\n"
      "  lowbit law sun2025 --N 1e9 --D 1e11 --format e4m3/g128\n"
      "  lowbit law sun2025 --optimal-layout --bits 4..16\n"
      "  lowbit law sun2025 --critical-data --N 1e9 --format e4m3/g128 --format e2m1/g128\n"
      "  lowbit law sun2025 --compute-optimal --format e4m3/g128\n"
      "  lowbit law cost --weights int4 --weights e2m1 --acts int8 --acts e4m3");
  commands.push_back({law, [] { cmd_law(lo); }});

  static fit_cli_options fo;
  fo.fit.bootstrap = 200;
  auto* fit = app.add_subcommand("fit", "fit a law's constants to the training runs of a results database (Ceres)");
  fit->add_option("--law", fo.law, "sun2025 | chinchilla | kumar2024")->required();
  fit->add_option("--db", fo.db, "results database (SQLite)")->required();
  fit->add_option("--holdout-largest", fo.fit.holdout_largest, "hold out the runs of the K largest model sizes");
  fit->add_option("--bootstrap", fo.fit.bootstrap, "bootstrap replicates for confidence intervals (default 200; 0 none)");
  fit->add_option("--bootstrap-kind", fo.fit.bootstrap_kind, "residuals (default) | runs");
  fit->add_option("--confidence", fo.fit.confidence, "interval level (default 0.95)");
  fit->add_option("--starts", fo.fit.starts, "multi-start count (default 16)");
  fit->add_option("--robust", fo.fit.robust, "huber (default) | cauchy | none, on log-loss residuals");
  fit->add_option("--robust-scale", fo.fit.robust_scale, "robust loss scale in log-loss units (default 1e-3)");
  fit->add_option("--seed", fo.fit.seed, "random starts and bootstrap seed");
  fit->add_option("-o,--out", fo.out, "write the fit as JSON (read back by `lowbit law --constants`)");
  fit->add_flag("--json", fo.json, "one JSON document");
  commands.push_back({fit, [] { cmd_fit(fo); }});

  static predict_cli_options po;
  auto* pred = app.add_subcommand(
      "predict", "predict post-PTQ NLL of an unseen (model, format, method) from recorded runs (Xu et al. 2024)");
  pred->add_option("--db", po.db, "results database with eval/quantize/explore runs")->required();
  pred->add_option("--model", po.model, "model (as recorded, or a model file to measure)")->required();
  pred->add_option("--model-file", po.model_file,
                   "model file to measure the format's SQNR on (default: the path its runs recorded)");
  pred->add_option("--format", po.formats, "weight format spec(s) (repeatable; one training answers all)")->required();
  pred->add_option("--method", po.method, "PTQ method (default rtn)");
  pred->add_option("--folds", po.p.folds, "cross-validation folds (default 5)");
  pred->add_option("--rounds", po.p.rounds, "boosting rounds (default 200)");
  pred->add_option("--seed", po.p.seed, "seed");
  pred->add_option("-o,--out", po.out, "write the answer as JSON");
  pred->add_flag("--json", po.json, "one JSON document");
  commands.push_back({pred, [] { cmd_predict(po); }});
}

}  // namespace lowbit::cli

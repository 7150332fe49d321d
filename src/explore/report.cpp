// `lowbit report` (report.hpp): tables from the results database, figures through matplotlib,
// one HTML page.
#include "lowbit/base/files.hpp"
#include "lowbit/base/process.hpp"
#include "lowbit/explore/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/law/cost.hpp"

namespace fs = std::filesystem;

namespace lowbit {

namespace {

double metric_or(const run_record& r, const char* name, double fallback) {
  const auto it = r.metrics.find(name);
  return it == r.metrics.end() ? fallback : it->second;
}

std::string config_string(const run_record& r, const char* key) {
  if (!r.config.is_object() || !r.config.contains(key) || !r.config[key].is_string()) return "";
  const std::string v = r.config[key].get<std::string>();
  return v == "fp32" || v == "-" ? "" : v;
}

std::string csv_cell(const nlohmann::json& v) {
  if (v.is_null()) return "";
  if (v.is_number_float()) {
    const double d = v.get<double>();
    return std::isfinite(d) ? fmt::format("{:.10g}", d) : "";
  }
  if (v.is_number()) return v.dump();
  const std::string s = v.is_string() ? v.get<std::string>() : v.dump();
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

std::string format_family(const run_record& r) {
  const std::string c = r.canonical.empty() ? r.format : r.canonical;
  if (c.empty() || c == "fp32") return "float";
  if (c.rfind("pow", 0) == 0) return "pow";
  if (c.rfind("nvfp4", 0) == 0) return "nvfp4";
  // ggml's blocks: q4_0, q4_1, q5_0, q5_1, q8_0 and the K-quants q2_k ... q6_k.
  if (c.size() == 4 && c[0] == 'q' && c[1] >= '2' && c[1] <= '8' && c[2] == '_' &&
      (c[3] == '0' || c[3] == '1' || c[3] == 'k'))
    return "ggml";
  if (c.rfind("mxint", 0) == 0 || r.scale_format == "e8m0") return "mx";
  if (r.element.rfind("int", 0) == 0 || r.element.rfind("uint", 0) == 0 || r.element.rfind("flex", 0) == 0) return "int";
  if (r.element == "nf4" || r.element.rfind("lut", 0) == 0) return "lut";
  if (r.bits >= 16 && r.block == 0) return "float";
  if (r.exp_bits > 0) return "fp";
  return "other";
}

nlohmann::json report_row(const run_record& r) {
  nlohmann::json j = to_json(r);
  j.erase("config");
  const std::string acts = config_string(r, "acts"), kv = config_string(r, "kv");
  j["acts"] = acts, j["kv"] = kv;
  j["family"] = format_family(r);
  double cost = std::nan("");
  try {
    cost = law::mac_cost(r.canonical == "fp32" ? "" : r.canonical, acts);
  } catch (const lowbit::error&) {
  }
  j["mac_cost"] = num(cost);
  double bpw = metric_or(r, "bits_per_weight", std::nan(""));
  if (!std::isfinite(bpw)) {
    try {
      bpw = r.canonical.empty() || r.canonical == "fp32" ? 32.0 : bits_per_element(parse_format(r.canonical));
    } catch (const lowbit::error&) {
    }
  }
  j["bits_per_weight"] = num(bpw);
  const double loss = metric_or(r, "nll", metric_or(r, "val_loss", std::nan("")));
  j["loss"] = num(loss);
  j["ppl"] = num(metric_or(r, "ppl", std::exp(loss)));
  return j;
}

report_result write_report(const report_options& o) {
  runs_db db(o.db, runs_db::access::existing);
  const std::vector<run_record> runs = db.all();
  report_result res;
  res.runs = int64_t(runs.size());
  const fs::path dir = o.out;
  fs::create_directories(dir);

  // ---- runs.json and runs.csv: fixed columns, then every metric name ----
  nlohmann::json rows = nlohmann::json::array();
  std::set<std::string> metric_names;
  for (const auto& r : runs) {
    rows.push_back(report_row(r));
    for (const auto& [k, v] : r.metrics) metric_names.insert(k);
  }
  const std::vector<std::string> fixed = {"id", "kind", "model", "n_params", "tokens", "format", "canonical", "element",
                                          "exp_bits", "man_bits", "bits", "block", "scale_format", "method", "plan",
                                          "acts", "kv", "family", "bits_per_weight", "mac_cost", "loss", "ppl"};
  std::string csv;
  for (const auto& c : fixed) csv += c + ",";
  for (const auto& m : metric_names)
    if (m != "bits_per_weight" && m != "ppl") csv += "metric_" + m + ",";
  csv += "revision,time,config_hash\n";
  for (const auto& row : rows) {
    for (const auto& c : fixed) csv += csv_cell(row[c]) + ",";
    for (const auto& m : metric_names)
      if (m != "bits_per_weight" && m != "ppl")
        csv += (row["metrics"].contains(m) ? csv_cell(row["metrics"][m]) : "") + ",";
    csv += csv_cell(row["revision"]) + "," + csv_cell(row["time"]) + "," + csv_cell(row["config_hash"]) + "\n";
  }
  res.csv = (dir / "runs.csv").string();
  res.json = (dir / "runs.json").string();
  write_text_file_atomic(res.csv, csv);
  write_text_file_atomic(res.json, nlohmann::json{{"database", o.db}, {"runs", rows}, {"mac_cost_model", law::mac_cost_model_description()}}.dump(1) + "\n");

  // ---- figures ----
  nlohmann::json figures = nlohmann::json::array();
  if (o.script.empty()) {
    res.plot_error = "figures not requested";
  } else if (runs.empty()) {
    res.plot_error = "no runs in the database";
  } else {
    const fs::path list = dir / "figures.json";
    fs::remove(list);
    std::vector<std::string> argv{o.python, o.script, res.csv, dir.string()};
    if (!o.fit.empty()) argv.insert(argv.end(), {"--fit", o.fit});
    const fs::path log = dir / "plot.log";
    fs::remove(log);
    const int rc = run_program(argv, log.string());
    std::ifstream in(list);
    if (rc != 0 || !in) {
      std::ifstream l(log);
      std::stringstream ss;
      ss << l.rdbuf();
      std::string output = ss.str();
      if (output.size() > 2000) output = "..." + output.substr(output.size() - 2000);
      // No matplotlib (the script's exit 3) or no interpreter: a report without figures. Any other
      // failure (a full disk) fails the report; the script leaves no truncated figure behind.
      if (rc == 3 || (rc == 127 && !fs::exists(o.python)))
        res.plot_error = fmt::format("{} could not run (exit {}): {}", o.script, rc, output);
      else
        throw error(fmt::format("report: {} failed (exit {}) drawing the figures into '{}': {}", o.script, rc,
                                dir.string(), output));
    } else {
      figures = nlohmann::json::parse(in, nullptr, false);
      if (!figures.is_array()) figures = nlohmann::json::array();
      for (const auto& f : figures) res.figures.push_back((dir / f.value("png", "")).string());
    }
  }

  // ---- index.html ----
  std::string h = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>lowbit report</title>\n<style>\n"
                  "body{font-family:sans-serif;margin:2em;max-width:1400px}\n"
                  "table{border-collapse:collapse;font-size:12px}\n"
                  "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}\n"
                  "td.t,th{text-align:left}\nfigure{display:inline-block;margin:1em;vertical-align:top}\n"
                  "img{max-width:640px}\n</style></head><body>\n";
  h += fmt::format("<h1>lowbit report</h1>\n<p>{} runs from <code>{}</code>; data: <a href=\"runs.csv\">runs.csv</a>, "
                   "<a href=\"runs.json\">runs.json</a>.</p>\n<p>MAC cost: {}</p>\n",
                   runs.size(), html_escape(o.db), html_escape(law::mac_cost_model_description()));
  if (!res.plot_error.empty()) h += fmt::format("<p><b>No figures:</b> {}</p>\n", html_escape(res.plot_error));
  for (const auto& f : figures)
    h += fmt::format("<figure><a href=\"{0}\"><img src=\"{1}\" alt=\"{2}\"></a><figcaption>{2} "
                     "(<a href=\"{0}\">SVG</a>)</figcaption></figure>\n",
                     html_escape(f.value("svg", "")), html_escape(f.value("png", "")), html_escape(f.value("caption", "")));
  if (!figures.empty() && std::none_of(figures.begin(), figures.end(), [](const nlohmann::json& f) { return f.value("png", "") == "law_fit.png"; }))
    h += "<p>No law-fit figure: no run has a <code>law_prediction</code> metric and no <code>--fit FILE</code> was "
         "given.</p>\n";
  h += "<h2>Runs</h2>\n<table>\n<tr>";
  const std::vector<std::pair<std::string, std::string>> cols = {
      {"id", "run"}, {"kind", "kind"}, {"model", "model"}, {"n_params", "N"}, {"tokens", "D"}, {"format", "weights"},
      {"acts", "acts"}, {"kv", "kv"}, {"family", "family"}, {"method", "method"}, {"bits_per_weight", "bits/w"},
      {"mac_cost", "MAC cost"}, {"loss", "loss (NLL)"}, {"ppl", "ppl"}};
  for (const auto& [k, title] : cols) h += "<th>" + html_escape(title) + "</th>";
  h += "<th>dNLL</th><th>KL</th><th>SQNR dB</th><th>time</th></tr>\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    h += "<tr>";
    for (const auto& [k, title] : cols) {
      const auto& v = row[k];
      if (v.is_string()) h += "<td class=\"t\">" + html_escape(v.get<std::string>()) + "</td>";
      else if (v.is_number_float()) h += fmt::format("<td>{:.5g}</td>", v.get<double>());
      else h += "<td>" + html_escape(v.is_null() ? "" : v.dump()) + "</td>";
    }
    for (const char* m : {"dnll", "kl_mean", "sqnr_db"}) {
      const double v = metric_or(runs[i], m, std::nan(""));
      h += std::isfinite(v) ? fmt::format("<td>{:.4g}</td>", v) : "<td></td>";
    }
    h += "<td class=\"t\">" + html_escape(runs[i].time) + "</td></tr>\n";
  }
  h += "</table>\n</body></html>\n";
  res.html = (dir / "index.html").string();
  write_text_file_atomic(res.html, h);
  return res;
}

}  // namespace lowbit

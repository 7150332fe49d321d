// `lowbit report`'s library side: derived columns, CSV/JSON/HTML, and the figures (PNG + SVG)
// drawn by scripts/plot_report.py through Debian's matplotlib.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/cli_run.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/explore/report.hpp"
#include "lowbit/runs/runs_db.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

// tests/explore/test_report.cpp -> the source tree's scripts/plot_report.py
const std::string script = (fs::path(__FILE__).parent_path().parent_path().parent_path() / "scripts" / "plot_report.py").string();

std::string fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / "lowbit_report" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

run_record run(const std::string& weights, const std::string& acts, const std::string& method, double ppl) {
  run_record r;
  r.kind = "explore";
  r.model = "stories260K";
  r.n_params = 260032;
  r.tokens = 4064;
  r.format = weights;
  format_parts(weights, r);
  r.method = method;
  r.config = {{"weights", r.canonical}, {"acts", acts.empty() ? "fp32" : acts}, {"method", method}};
  r.metrics = {{"nll", std::log(ppl)}, {"ppl", ppl}};
  return r;
}

std::string slurp(const std::string& path) { return lowbit::testing::read_file_bytes(path); }

bool is_png(const std::string& path) { return slurp(path).rfind("\x89PNG\r\n\x1a\n", 0) == 0; }

}  // namespace

TEST(Report, FamiliesAndDerivedColumns) {
  EXPECT_EQ(format_family(run("int4/g32", "", "rtn", 5)), "int");
  EXPECT_EQ(format_family(run("uint4/g64", "", "rtn", 5)), "int");
  EXPECT_EQ(format_family(run("e3m2/g32", "", "rtn", 5)), "fp");
  EXPECT_EQ(format_family(run("mxfp4", "", "rtn", 5)), "mx");
  EXPECT_EQ(format_family(run("mxint8", "", "rtn", 5)), "mx");
  EXPECT_EQ(format_family(run("nvfp4", "", "rtn", 5)), "nvfp4");
  for (const char* ggml : {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"})
    EXPECT_EQ(format_family(run(ggml, "", "rtn", 5)), "ggml") << ggml;
  EXPECT_EQ(format_family(run("nf4", "", "rtn", 5)), "lut");
  EXPECT_EQ(format_family(run("bf16", "", "rtn", 5)), "float");
  EXPECT_EQ(format_family(run("", "", "rtn", 5)), "float");
  const nlohmann::json row = report_row(run("int8/c", "int8/c", "rtn", 4));
  EXPECT_EQ(row["acts"], "int8/c");
  EXPECT_DOUBLE_EQ(row["mac_cost"].get<double>(), 1.0);  // INT8 x INT8 is the unit
  EXPECT_DOUBLE_EQ(row["ppl"].get<double>(), 4.0);
  EXPECT_DOUBLE_EQ(row["bits_per_weight"].get<double>(), 8.0);  // from the format when not measured
  run_record train = run("e4m3/g32", "", "train", 1);
  train.kind = "train";
  train.metrics = {{"val_loss", 2.0}};
  const nlohmann::json t = report_row(train);
  EXPECT_DOUBLE_EQ(t["loss"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(t["ppl"].get<double>(), std::exp(2.0));
}

TEST(Report, WritesTablesHtmlAndFigures) {
  const std::string dir = fresh_dir("full");
  {
    runs_db db(dir + "/runs.db");
    int i = 0;
    for (const auto& [w, ppl] : std::vector<std::pair<std::string, double>>{
             {"", 4.00}, {"bf16", 4.00}, {"int8/c", 4.01}, {"int4/g32", 4.63}, {"int3/g32", 6.2}, {"e2m1/g32", 4.54},
             {"e3m2/g32", 4.11}, {"e4m3/g32", 4.03}, {"e2m3/g32", 4.05}, {"mxfp4", 4.81}, {"nvfp4", 4.5}, {"nf4", 4.4}}) {
      run_record r = run(w, "", "rtn", ppl);
      r.config["i"] = i++;
      db.record(r);
    }
    run_record g = run("int4/g32", "", "gptq", 4.35);
    g.config["i"] = i++;
    db.record(g);
    run_record a = run("int8/c", "int8/c", "rtn", 4.02);
    a.config["i"] = i++;
    a.metrics["law_prediction"] = 1.38;  // the hook: a law's prediction recorded with the run
    db.record(a);
  }
  const std::string fit = dir + "/fit.json";
  std::ofstream(fit) << R"({"law": "sun2025", "held_out": [{"loss": 3.1, "predicted": 3.0}, {"loss": 2.9, "predicted": 3.05}]})";
  report_options o;
  o.db = dir + "/runs.db", o.out = dir + "/report", o.script = script, o.fit = fit;
  const report_result r = write_report(o);
  EXPECT_EQ(r.runs, 14);
  ASSERT_TRUE(r.plot_error.empty()) << r.plot_error;
  for (const std::string name : {"ppl_vs_bits", "pareto_bits", "pareto_mac", "exmy_heatmap", "law_fit"}) {
    EXPECT_TRUE(is_png(o.out + "/" + name + ".png")) << name;
    EXPECT_NE(slurp(o.out + "/" + name + ".svg").find("<svg"), std::string::npos) << name;
  }
  EXPECT_EQ(r.figures.size(), 5u);
  const std::string html = slurp(r.html);
  EXPECT_NE(html.find("<img src=\"ppl_vs_bits.png\""), std::string::npos);
  EXPECT_NE(html.find("<img src=\"law_fit.png\""), std::string::npos);
  EXPECT_NE(html.find("e2m1/g32"), std::string::npos);  // the table
  const std::string csv = slurp(r.csv);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 15);  // header + 14 runs
  EXPECT_NE(csv.find("metric_law_prediction"), std::string::npos);
  const auto json = nlohmann::json::parse(slurp(r.json));
  EXPECT_EQ(json["runs"].size(), 14u);
}

TEST(Report, WithoutFiguresStillWritesThePage) {
  const std::string dir = fresh_dir("noplot");
  { runs_db db(dir + "/runs.db"); db.record(run("int4/g32", "", "rtn", 4.6)); }
  report_options o;
  o.db = dir + "/runs.db", o.out = dir + "/report";
  const report_result r = write_report(o);
  EXPECT_TRUE(r.figures.empty());
  EXPECT_NE(slurp(r.html).find("int4/g32"), std::string::npos);
  // No law-fit hook data: no law-fit figure (and the page would say why).
  o.script = script;
  const report_result p = write_report(o);
  EXPECT_FALSE(fs::exists(o.out + "/law_fit.png"));
  EXPECT_TRUE(is_png(o.out + "/ppl_vs_bits.png"));
  EXPECT_NE(slurp(p.html).find("No law-fit figure"), std::string::npos);
}

// A plotting process that fails (a full disk: matplotlib's OSError) fails the report with its
// output; one without matplotlib (plot_report.py's exit 3) leaves a page without figures.
TEST(Report, AFailedPlotFailsTheReportAndNoMatplotlibOnlySkipsTheFigures) {
  const std::string dir = fresh_dir("plotfail");
  { runs_db db(dir + "/runs.db"); db.record(run("int4/g32", "", "rtn", 4.6)); }
  report_options o;
  o.db = dir + "/runs.db", o.out = dir + "/report";
  o.script = dir + "/full_disk.py";
  std::ofstream(o.script) << "import sys\nsys.exit('OSError: [Errno 28] No space left on device')\n";
  try {
    write_report(o);
    ADD_FAILURE() << "a failed plot was reported as success";
  } catch (const lowbit::error& e) {
    EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos) << e.what();
  }
  o.script = dir + "/no_matplotlib.py";
  std::ofstream(o.script) << "import sys\nsys.exit(3)\n";
  const report_result r = write_report(o);
  EXPECT_TRUE(r.figures.empty());
  EXPECT_NE(r.plot_error.find("exit 3"), std::string::npos) << r.plot_error;
  EXPECT_NE(slurp(r.html).find("int4/g32"), std::string::npos);
}

// plot_report.py writes each figure under a temporary name: a write that fails leaves neither a
// truncated figure nor the temporary file.
TEST(Report, ThePlotScriptLeavesNoTruncatedFigure) {
  const std::string dir = fresh_dir("atomic");
  const std::string code =
      "import importlib.util as u, os, sys; s = u.spec_from_file_location(\"p\", \"" + script +
      "\"); m = u.module_from_spec(s); s.loader.exec_module(m)\n"
      "def half(p):\n    open(p, \"w\").write(\"<svg\")\n    raise OSError(28, \"No space left on device\")\n"
      "try:\n    m.write_atomically(\"" + dir + "/f.svg\", half)\nexcept OSError:\n    pass\n"
      "m.write_atomically(\"" + dir + "/g.svg\", lambda p: open(p, \"w\").write(\"<svg/>\"))\n"
      "print(sorted(os.listdir(\"" + dir + "\")))\n";
  std::ofstream(dir + "/t.py") << code;
  if (lowbit::testing::run_command("/usr/bin/python3 -c 'import matplotlib'").code != 0)
    GTEST_SKIP() << "/usr/bin/python3 with matplotlib is not available";
  const auto r = lowbit::testing::run_command("/usr/bin/python3 " + dir + "/t.py");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("['g.svg', 't.py']"), std::string::npos) << r.out;
  EXPECT_EQ(slurp(dir + "/g.svg"), "<svg/>");
}

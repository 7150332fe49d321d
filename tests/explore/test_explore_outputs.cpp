// explore's output files: the CSV and JSON, and the plot drawn by a spawned process whose failure
// (a full disk: scripts/plot_explore.py exits 1 after a partial write) fails the run and leaves no
// truncated figure behind; a missing matplotlib (exit 3) only skips the plot.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "lowbit/base/error.hpp"
#include "lowbit/explore/explore.hpp"
#include "tests/cli_run.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

explore_result one_row() {
  explore_result r;
  r.model = "m.safetensors", r.data = "d.txt", r.ctx = 16;
  explore_row_result x;
  x.row = parse_explore_row("int4/g32");
  x.bits_per_weight = 4.5;
  x.eval.mean_nll = 1.5, x.eval.ppl = 4.48, x.eval.tokens_scored = 30;
  r.rows.push_back(x);
  return r;
}

// A stand-in for scripts/plot_explore.py (argv: csv, png): `body` after the .svg path is known.
std::string plot_script(const fs::path& dir, const std::string& body) {
  const std::string path = (dir / "plot.py").string();
  std::ofstream(path) << "import sys\npng = sys.argv[2]\nsvg = png.rsplit('.', 1)[0] + '.svg'\n" << body;
  return path;
}

// The files in dir other than the stand-in script.
std::vector<std::string> outputs(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename() != "plot.py") names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST(ExploreOutputs, AFailedPlotFailsTheRunAndLeavesNoTruncatedFigure) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_explore_plot_fail");
  fs::remove_all(dir);
  fs::create_directories(dir);
  // What matplotlib does on a full disk: the PNG written, the SVG cut short, an OSError.
  const std::string script = plot_script(dir,
                                         "open(png, 'w').write('png')\nopen(svg, 'w').write('<svg')\n"
                                         "sys.exit('OSError: [Errno 28] No space left on device')\n");
  try {
    write_explore_outputs(one_row(), dir.string(), script);
    ADD_FAILURE() << "a failed plot was reported as success";
  } catch (const error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("No space left on device"), std::string::npos) << what;
    EXPECT_NE(what.find("explore.png"), std::string::npos) << what;
  }
  EXPECT_EQ(outputs(dir), (std::vector<std::string>{"explore.csv", "explore.json"}));
  fs::remove_all(dir);
}

TEST(ExploreOutputs, NoMatplotlibSkipsThePlot) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_explore_plot_none");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const explore_files f = write_explore_outputs(one_row(), dir.string(), plot_script(dir, "sys.exit(3)\n"));
  EXPECT_NE(f.plot_note.find("no plot"), std::string::npos) << f.plot_note;
  EXPECT_EQ(outputs(dir), (std::vector<std::string>{"explore.csv", "explore.json"}));
  fs::remove_all(dir);
}

TEST(ExploreOutputs, ASuccessfulPlotLandsUnderItsNames) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_explore_plot_ok");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const explore_files f = write_explore_outputs(
      one_row(), dir.string(), plot_script(dir, "open(png, 'w').write('png')\nopen(svg, 'w').write('<svg/>')\n"));
  EXPECT_NE(f.plot_note.find("explore.png"), std::string::npos) << f.plot_note;
  EXPECT_EQ(outputs(dir), (std::vector<std::string>{"explore.csv", "explore.json", "explore.png", "explore.svg"}));
  EXPECT_EQ(lowbit::testing::read_file_bytes((dir / "explore.svg").string()), "<svg/>");
  fs::remove_all(dir);
}

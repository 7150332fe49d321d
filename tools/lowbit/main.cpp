// lowbit command line: formats, info, cast, analyze, bench, synth, tokenize, eval, generate,
// explore. Errors from the library are caught
// here and become a message and exit code 2 (docs/architecture.md §11c).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/process.hpp"
#include "lowbit/formats/analysis.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit::cli {

std::string table::render() const {
  std::vector<size_t> width(header.size(), 0);
  auto grow = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i) width[i] = std::max(width[i], r[i].size());
  };
  grow(header);
  for (const auto& r : rows) grow(r);
  auto numeric = [](const std::string& s) {
    const size_t d = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
    return s.size() > d && std::isdigit(static_cast<unsigned char>(s[d]));
  };
  std::string out;
  auto line = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < width.size(); ++i) {
      const std::string cell = i < r.size() ? r[i] : "";
      const size_t pad = width[i] - cell.size();
      if (i) out += "  ";
      if (numeric(cell) && i > 0) out += std::string(pad, ' ') + cell;
      else out += cell + (i + 1 < width.size() ? std::string(pad, ' ') : "");
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    out += "\n";
  };
  line(header);
  size_t total = 0;
  for (size_t w : width) total += w;
  out += std::string(total + 2 * (width.size() - 1), '-') + "\n";
  for (const auto& r : rows) line(r);
  return out;
}

namespace {

std::string num(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{:.7g}", v);
}

// Parses one float32 value: decimal, hex-float, nan, inf (case-insensitive, signed).
float parse_value(const std::string& text) {
  std::string t = text;
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "nan" || t == "+nan" || t == "-nan") return std::nanf("");
  if (t == "inf" || t == "+inf" || t == "infinity") return INFINITY;
  if (t == "-inf" || t == "-infinity") return -INFINITY;
  char* end = nullptr;
  errno = 0;
  const float v = std::strtof(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size())
    throw error(fmt::format("'{}' is not a number (decimal, hex-float like 0x1.8p1, nan or inf)", text));
  return v;
}

// ---- formats ------------------------------------------------------------------------------------
void cmd_formats(bool json) {
  nlohmann::json rows = nlohmann::json::array();
  table t{{"name", "canonical", "bits/elem", "description"}, {}};
  for (const auto& n : named_formats()) {
    const format f = parse_format(n.name);
    t.rows.push_back({n.name, format_name(f), bits_description(f), n.description});
    rows.push_back({{"format", n.name},
                    {"canonical", format_name(f)},
                    {"bits_per_element", bits_per_element(f)},
                    {"bits", bits_description(f)},
                    {"description", n.description}});
  }
  if (json) std::cout << rows.dump(2) << "\n";
  else std::cout << t.render();
}

// ---- info ---------------------------------------------------------------------------------------
void cmd_info(const std::string& spec, bool json) {
  const format f = parse_format(spec);
  const element_format& e = f.element;
  const element_limits l = limits_of(e);
  nlohmann::json j;
  j["format"] = spec;
  j["canonical"] = format_name(f);
  j["element"] = element_name(e);
  j["element_bits"] = e.bits;
  j["bits_per_element"] = bits_per_element(f);
  j["bits"] = bits_description(f);
  if (e.kind == element_kind::minifloat) {
    j["exponent_bits"] = e.ebits;
    j["mantissa_bits"] = e.mbits;
    j["bias"] = e.bias;
    j["variant"] = to_string(e.variant);
    j["subnormals"] = e.subnormals;
    j["overflow"] = to_string(e.overflow);
  }
  j["max"] = l.max;
  j["min"] = l.min;
  j["min_normal"] = l.min_normal;
  j["min_subnormal"] = l.min_subnormal;
  j["epsilon"] = l.epsilon;
  j["emax"] = l.emax;
  j["finite_values"] = l.finite_values;
  j["nan_codes"] = l.nan_codes;
  j["inf_codes"] = l.inf_codes;
  if (f.gran != granularity::none) {
    j["group"] = f.gran == granularity::group ? fmt::format("{}", f.group_size)
                                               : (f.gran == granularity::row ? "row" : "tensor");
  }
  nlohmann::json values = nlohmann::json::array();
  if (e.bits <= 8) {
    for (uint32_t c = 0; c < code_count(e); ++c) {
      const float v = decode_ref(e, c);
      values.push_back({{"code", fmt::format("0x{:02x}", c)}, {"value", shortest_float(v)}});
    }
    j["values"] = values;
  }
  if (json) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("format        {}\ncanonical     {}\nelement       {} ({} bits)\nbits/element  {}\n", spec,
                           format_name(f), element_name(e), e.bits, bits_description(f));
  if (e.kind == element_kind::minifloat)
    std::cout << fmt::format("layout        1 sign, {} exponent, {} mantissa bits; bias {}; {}; subnormals {}; "
                             "overflow {}\n",
                             e.ebits, e.mbits, e.bias, to_string(e.variant), e.subnormals ? "on" : "off",
                             to_string(e.overflow));
  std::cout << fmt::format(
      "max           {}\nmin           {}\nmin normal    {}\nmin subnormal {}\nepsilon       {}\nemax          {}\n"
      "finite values {}\nNaN codes     {}\nInf codes     {}\n",
      num(l.max), num(l.min), num(l.min_normal), num(l.min_subnormal), num(l.epsilon), l.emax, l.finite_values,
      l.nan_codes, l.inf_codes);
  if (e.bits <= 8) {
    std::cout << "values (code: value)\n";
    int col = 0;
    for (const auto& v : values) {
      std::cout << fmt::format("  {}: {:>12}", v["code"].get<std::string>(), v["value"].get<std::string>());
      if (++col % 4 == 0) std::cout << "\n";
    }
    if (col % 4) std::cout << "\n";
  }
}

// ---- cast ---------------------------------------------------------------------------------------
void cmd_cast(const std::string& spec, std::vector<std::string> args, bool codes) {
  const format f = parse_format(spec);
  if (args.empty()) {
    std::string tok;
    while (std::cin >> tok) args.push_back(tok);
  }
  std::vector<float> x;
  for (const auto& a : args) x.push_back(parse_value(a));
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(x.size());
  fake_quantize(x.data(), y.data(), 1, n, f);
  if (!codes) {
    for (float v : y) std::cout << shortest_float(v) << "\n";
    return;
  }
  // Codes: a NaN in a format without a NaN code has none ("-").
  std::vector<float> clean = x;
  std::vector<bool> no_code(x.size(), false);
  if (f.gran == granularity::none && !has_nan_code(f.element))
    for (size_t i = 0; i < clean.size(); ++i)
      if (std::isnan(clean[i])) {
        clean[i] = 0;
        no_code[i] = true;
      }
  const quantized_tensor q = quantize(clean.data(), 1, n, f);
  const int hex_digits = (f.element.bits + 3) / 4;
  for (int64_t i = 0; i < n; ++i) {
    std::string line = shortest_float(y[static_cast<size_t>(i)]);
    line += no_code[static_cast<size_t>(i)] ? "  code -" : fmt::format("  code 0x{:0{}x}", q.code(0, i), hex_digits);
    if (is_kquant(f)) {  // the sub-block's integer scale (and min) codes, the super-block's fp16 scales
      const size_t sb = static_cast<size_t>(i / kSuperBlock * kquant_super_scale_count(f));
      line += fmt::format("  sub-scale {}", q.scale_at(0, i));
      if (kquant_has_min(f)) line += fmt::format("  min {}", q.zero_point_at(0, i));
      line += "  d " + shortest_float(q.super_scales[sb]);
      if (kquant_has_min(f)) line += "  dmin " + shortest_float(q.super_scales[sb + 1]);
    } else if (f.gran != granularity::none) {
      line += "  scale " + shortest_float(q.scale_at(0, i));
      if (!q.zero_points.empty()) line += fmt::format("  zero {}", q.zero_point_at(0, i));
      if (has_block_min(f)) line += "  min " + shortest_float(q.super_scales[static_cast<size_t>(q.group_of(i))]);
      if (f.named == preset::nvfp4) line += "  tensor_scale " + shortest_float(q.tensor_scale);
    }
    std::cout << line << "\n";
  }
}

// ---- analyze ------------------------------------------------------------------------------------
void cmd_analyze(const std::vector<std::string>& specs, const std::vector<std::string>& dists, bool json) {
  std::vector<density> ds;
  for (const auto& d : dists) ds.push_back(parse_density(d));
  std::vector<format> fs;
  for (const auto& s : specs) fs.push_back(parse_format(s));
  // results[i][j]: format i on density j
  std::vector<std::vector<sqnr_result>> res(fs.size(), std::vector<sqnr_result>(ds.size()));
  for (size_t i = 0; i < fs.size(); ++i)
    for (size_t j = 0; j < ds.size(); ++j) res[i][j] = analyze_sqnr(fs[i].element, ds[j]);
  std::vector<size_t> best(ds.size(), 0);
  for (size_t j = 0; j < ds.size(); ++j)
    for (size_t i = 0; i < fs.size(); ++i)
      if (res[i][j].sqnr_db > res[best[j]][j].sqnr_db) best[j] = i;
  if (json) {
    nlohmann::json rows = nlohmann::json::array();
    for (size_t i = 0; i < fs.size(); ++i)
      for (size_t j = 0; j < ds.size(); ++j)
        rows.push_back({{"format", specs[i]},
                        {"canonical", format_name(fs[i])},
                        {"element", element_name(fs[i].element)},
                        {"distribution", density_name(ds[j])},
                        {"sqnr_db", res[i][j].sqnr_db},
                        {"clip", res[i][j].clip},
                        {"mse", res[i][j].mse},
                        {"best", best[j] == i}});
    std::cout << rows.dump(2) << "\n";
    return;
  }
  table t;
  t.header = {"format", "element"};
  for (const auto& d : ds) t.header.push_back(density_name(d) + " SQNR dB (clip)");
  for (size_t i = 0; i < fs.size(); ++i) {
    std::vector<std::string> row{specs[i], element_name(fs[i].element)};
    for (size_t j = 0; j < ds.size(); ++j)
      row.push_back(fmt::format("{:.2f} ({:.3g}){}", res[i][j].sqnr_db, res[i][j].clip, best[j] == i ? " *" : ""));
    t.rows.push_back(row);
  }
  std::cout << t.render()
            << "* best format for that distribution. Element grids are analysed with a free scale and optimal\n"
               "  clipping on unit-variance densities (docs/analysis.md §5.1); block scales are not modelled.\n";
}

// CLI11 2.1 reads "-1.5" and "-inf" as options: move the cast's own flags first and put "--"
// before its format and values (docs/conventions.md §26).
std::vector<std::string> reorder_cast_args(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto it = std::find(args.begin(), args.end(), "cast");
  if (it == args.end()) return args;
  std::vector<std::string> head(args.begin(), it + 1), flags, rest;
  for (auto p = it + 1; p != args.end(); ++p) {
    if (*p == "--") continue;
    if (*p == "--codes" || *p == "-h" || *p == "--help") flags.push_back(*p);
    else rest.push_back(*p);
  }
  head.insert(head.end(), flags.begin(), flags.end());
  head.push_back("--");
  head.insert(head.end(), rest.begin(), rest.end());
  return head;
}

}  // namespace
}  // namespace lowbit::cli

namespace {

// The one check of every number given on the command line, for every command (ISSUE: `--ctx 0`,
// `--temperature nan`, `--warmup nan` once ran as if they meant something): a FLOAT option must be
// finite; the options named below must lie in their range when given (0 or a negative length,
// count or budget is refused here; the library's own 0 = "default" is what leaving a flag out means).
struct number_rule {
  const char* name;
  double lo, hi;
  bool lo_open;  // lo excluded
};
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr number_rule kNumberRules[] = {
    {"--ctx", 1, kInf, false},          {"--max-tokens", 1, kInf, false},   {"--steps", 1, kInf, false},
    {"--batch", 1, kInf, false},        {"--dim", 1, kInf, false},          {"--layers", 1, kInf, false},
    {"--heads", 1, kInf, false},        {"--kv-heads", 1, kInf, false},     {"--hidden", 1, kInf, false},
    {"--vocab", 1, kInf, false},        {"--calib-samples", 1, kInf, false}, {"--calib-ctx", 2, kInf, false},
    {"--val-batches", 1, kInf, false},  {"--eval-every", 1, kInf, false},   {"--checkpoint-every", 1, kInf, false},
    {"--reps", 1, kInf, false},         {"--mib", 0, kInf, true},           {"--ref-mib", 0, kInf, true},
    {"--threads", 1, kInf, false},      {"--jobs", 1, kInf, false},         {"--max-runs", 1, kInf, false},
    {"--folds", 2, kInf, false},        {"--rounds", 1, kInf, false},       {"--starts", 1, kInf, false},
    {"--temperature", 0, kInf, false},  {"--lr", 0, kInf, false},           {"--clip", 0, kInf, false},
    {"--wd", 0, kInf, false},           {"--warmup", 0, 1, false},          {"--min-lr-frac", 0, 1, false},
    {"--confidence", 0, 1, true},       {"--robust-scale", 0, kInf, true},  {"--options", 2, kInf, false},
    {"--max-chars", 1, kInf, false},    {"--fraction", 0, 1, true},         {"--formats", 1, kInf, false},
    {"--budget", 1, kInf, false},       {"--adaround-iters", 0, kInf, false}, {"--adaround-lambda", 0, kInf, false},
};

void refuse_impossible_numbers(const CLI::App& app) {
  for (const CLI::App* sub : app.get_subcommands()) {
    for (const CLI::Option* opt : sub->get_options()) {
      if (opt->count() == 0) continue;
      const std::string type = opt->get_type_name();
      if (type != "FLOAT" && type != "INT" && type != "UINT") continue;
      const std::string name = opt->get_name();
      for (const std::string& text : opt->results()) {
        // The whole text is one number of the option's type: CLI11 lets an empty value through
        // (as the default), and an integer beyond 64 bits or a negative one for an unsigned option
        // would otherwise wrap or saturate silently.
        if (type != "FLOAT") {
          const std::string digits = text.starts_with('+') || text.starts_with('-') ? text.substr(1) : text;
          errno = 0;
          char* iend = nullptr;
          if (type == "UINT") (void)std::strtoull(text.c_str(), &iend, 10);
          else (void)std::strtoll(text.c_str(), &iend, 10);
          if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || errno == ERANGE ||
              *iend != '\0' || (type == "UINT" && text.starts_with('-')))
            throw lowbit::error(fmt::format("{} {} '{}': expected {} integer{}", sub->get_name(), name, text,
                                            type == "UINT" ? "a non-negative" : "an",
                                            errno == ERANGE ? " that fits in 64 bits" : ""));
        } else if (text.empty()) {
          throw lowbit::error(fmt::format("{} {} '': expected a number", sub->get_name(), name));
        }
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (type == "FLOAT" && !std::isfinite(v))
          throw lowbit::error(fmt::format("{} {} {}: expected a finite number", sub->get_name(), name, text));
        for (const number_rule& r : kNumberRules) {
          if (name != r.name) continue;
          const bool below = r.lo_open ? !(v > r.lo) : !(v >= r.lo);
          if (below || !(v <= r.hi))
            throw lowbit::error(fmt::format("{} {} {}: expected {} {}{}", sub->get_name(), name, text,
                                    r.lo_open ? ">" : ">=", r.lo, r.hi < kInf ? fmt::format(" and <= {}", r.hi) : ""));
        }
      }
    }
    refuse_impossible_numbers(*sub);
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lowbit;
  using namespace lowbit::cli;
  settle_openmp_waiting(argv);  // before any OpenMP work: may start the program anew (process.hpp)
  CLI::App app{"lowbit: low-precision numerics for deep learning (formats, kernels, models)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "all subcommands' help");

  bool json = false, codes = false;
  std::string spec;
  std::vector<std::string> values, specs, dists{"gaussian"};

  auto* formats = app.add_subcommand("formats", "list the named formats with canonical spec and bits/element");
  formats->add_flag("--json", json, "one JSON document");

  auto* info = app.add_subcommand("info", "properties of a format (and every value of a <= 8-bit element)");
  info->add_option("FORMAT", spec, "format spec, e.g. e4m3fn, mxfp4, int4/g128")->required();
  info->add_flag("--json", json, "one JSON document");

  auto* cast = app.add_subcommand("cast", "round values (arguments or stdin, one row) and print them");
  cast->add_option("FORMAT", spec, "format spec")->required();
  cast->add_option("VALUES", values, "float32 values: decimal, hex-float, nan, inf (default: stdin)");
  cast->add_flag("--codes", codes, "also print each code (hex) and its group's scale");

  auto* analyze = app.add_subcommand("analyze", "SQNR of element grids on densities with optimal clipping");
  analyze->add_option("FORMAT", specs, "format specs")->required();
  analyze->add_option("--dist", dists, "gaussian | laplace | student-t:NU | uniform (repeatable)");
  analyze->add_flag("--json", json, "one JSON document");

  std::function<void()> run_bench;
  auto* bench = add_bench_command(app, &run_bench);
  command_list model_commands;
  add_model_commands(app, model_commands);
  add_ptq_commands(app, model_commands);
  add_calibrate_commands(app, model_commands);
  add_law_commands(app, model_commands);
  add_train_commands(app, model_commands);
  add_explore_commands(app, model_commands);
  add_task_commands(app, model_commands);

  try {
    std::vector<std::string> args = reorder_cast_args(argc, argv);
    std::reverse(args.begin(), args.end());  // CLI11 parses a reversed vector
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every command-line error exits 2, as every other bad input
    // does (CLI11's own codes, 104-114, would be a second convention).
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    refuse_impossible_numbers(app);
    if (*formats) cmd_formats(json);
    else if (*info) cmd_info(spec, json);
    else if (*cast) cmd_cast(spec, values, codes);
    else if (*analyze) cmd_analyze(specs, dists, json);
    else if (*bench) run_bench();
    else
      for (auto& [cmd, work] : model_commands)
        if (*cmd) work();
  } catch (const lowbit::error& e) {
    std::cerr << "lowbit: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "lowbit: " << e.what() << "\n";
    return 2;
  }
  return 0;
}

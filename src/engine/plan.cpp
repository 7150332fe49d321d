// QuantPlan: weight rules, activation and KV-cache formats (docs/conventions.md §17-18).
#include "lowbit/engine/plan.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit {

std::optional<format> parse_optional_format(const std::string& spec) {
  if (spec.empty() || spec == "fp32" || spec == "f32" || spec == "none" || spec == "float")
    return std::nullopt;
  return parse_format(spec);
}

// '*' matches any run (dots included), '?' one character.
bool glob_match(const std::string& pattern, const std::string& name) {
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p, ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++, mark = n;
    } else if (star != std::string::npos) {
      p = star + 1, n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool quant_plan::empty() const {
  return !weights && rules.empty() && !acts && !classifier_acts && !kv;
}

std::optional<format> quant_plan::weight_format(const model& m, const std::string& name) const {
  for (const weight_rule& r : rules)
    if (glob_match(r.pattern, name)) return r.fmt;
  if (!weights) return std::nullopt;
  const auto linear = m.linear_weight_names();
  if (std::find(linear.begin(), linear.end(), name) != linear.end()) return weights;
  return std::nullopt;
}

std::string quant_plan::describe() const {
  auto s = [](const std::optional<format>& f, const std::string& typed) {
    return f ? (typed.empty() ? format_name(*f) : typed) : std::string("-");
  };
  std::string d = fmt::format("W={} A={} KV={}", s(weights, weights_spec), s(acts, acts_spec),
                              s(kv, kv_spec));
  if (!rules.empty()) d += fmt::format(" +{} rules", rules.size());
  return d;
}

quant_plan load_plan_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw error(fmt::format("{}: cannot open rules file", path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw error(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  if (!j.is_object()) throw error(fmt::format("{}: expected a JSON object", path));
  auto text = [&](const char* key) -> std::string {
    if (!j.contains(key)) return "";
    if (!j[key].is_string()) throw error(fmt::format("{}: '{}' must be a format string", path, key));
    return j[key].get<std::string>();
  };
  quant_plan p;
  try {
    p.weights_spec = text("weights");
    p.weights = parse_optional_format(p.weights_spec);
    p.acts_spec = text("acts");
    p.acts = parse_optional_format(p.acts_spec);
    p.kv_spec = text("kv");
    p.kv = parse_optional_format(p.kv_spec);
    p.classifier_acts = parse_optional_format(text("classifier_acts"));
    if (j.contains("rules")) {
      if (!j["rules"].is_array()) throw error("'rules' must be an array");
      for (const auto& r : j["rules"]) {
        if (!r.is_object() || !r.contains("pattern") || !r.contains("format") ||
            !r["pattern"].is_string() || !r["format"].is_string())
          throw error("each rule needs string fields 'pattern' and 'format'");
        weight_rule w{r["pattern"], r["format"], std::nullopt};
        w.fmt = parse_optional_format(w.spec);
        p.rules.push_back(std::move(w));
      }
    }
  } catch (const error& e) {
    throw error(fmt::format("{}: {}", path, e.what()));
  }
  return p;
}

quant_plan make_quant_plan(const std::string& rules, const std::string& weights, const std::string& acts,
                           const std::string& kv) {
  quant_plan p = rules.empty() ? quant_plan{} : load_plan_json(rules);
  if (!weights.empty()) p.weights = parse_optional_format(weights), p.weights_spec = weights;
  if (!acts.empty()) p.acts = parse_optional_format(acts), p.acts_spec = acts;
  if (!kv.empty()) p.kv = parse_optional_format(kv), p.kv_spec = kv;
  return p;
}

namespace {

// Tensor t fake-quantized to f in place (the tensor_id-th tensor of its model), and its report.
weight_quant_report fake_quantize_weight(const std::string& name, tensor& t, const format& f, uint64_t tensor_id) {
  std::vector<float> q(t.data.size());
  fake_quantize(t.data.data(), q.data(), t.rows(), t.cols(), f, tensor_id);
  weight_quant_report r;
  r.name = name;
  r.format = format_name(f);
  r.numel = t.numel();
  r.bits_per_element = bits_per_element(f);
  r.sqnr_db = compare(t.data.data(), q.data(), t.numel()).sqnr_db;
  t.data = std::move(q);
  return r;
}

}  // namespace

std::vector<weight_quant_report> apply_weight_plan(model& m, const quant_plan& plan) {
  std::vector<weight_quant_report> reports;
  uint64_t tensor_id = 0;
  for (auto& [name, t] : m.tensors) {
    ++tensor_id;
    if (const auto f = plan.weight_format(m, name)) reports.push_back(fake_quantize_weight(name, t, *f, tensor_id));
  }
  return reports;
}

std::vector<weight_quant_report> weight_plan_reports(const tensor_reader& r, const quant_plan& plan) {
  std::vector<weight_quant_report> reports;
  uint64_t tensor_id = 0;  // the same stream positions as apply_weight_plan on the whole model
  for (const auto& [name, shape_only] : r.header.tensors) {
    ++tensor_id;
    if (const auto f = plan.weight_format(r.header, name)) {
      tensor t = r.read(name);
      reports.push_back(fake_quantize_weight(name, t, *f, tensor_id));
    }
  }
  return reports;
}

double weight_bits(const tensor& t, const std::optional<format>& f) {
  if (!f) return 32.0;
  double b = bits_per_element(*f);
  // Per-row (channel) and per-tensor scales: bits_per_element reports the element only
  // (docs/conventions.md §14); charge one scale (and zero point) per row / tensor to its elements.
  if (f->gran != granularity::group && f->gran != granularity::none) {
    const double zp = f->element.kind == element_kind::uint_asym ? f->element.bits : 0;
    const double per = f->gran == granularity::row ? t.cols() : t.numel();
    b += (scale_bits(*f) + zp) / per;
  }
  if (f->named == preset::nvfp4) b += 32.0 / t.numel();
  return b;
}

double average_linear_bits(const model& m, const quant_plan& plan) {
  double bits = 0, count = 0;
  for (const std::string& name : m.linear_weight_names()) {
    const tensor& t = m.get(name);
    bits += weight_bits(t, plan.weight_format(m, name)) * t.numel();
    count += t.numel();
  }
  return count ? bits / count : 32.0;
}

double mean_sqnr_db(const std::vector<weight_quant_report>& reports) {
  double sum = 0, n = 0;
  for (const auto& r : reports)
    if (std::isfinite(r.sqnr_db)) sum += r.sqnr_db * double(r.numel), n += double(r.numel);
  return n > 0 ? sum / n : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace lowbit

// QuantPlan: weight rules, activation and KV-cache formats (docs/conventions.md §17-18).
#include "lowbit/base/files.hpp"
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
  return !weights && rules.empty() && !acts && !classifier_acts && !kv && act_rules.empty() && kv_rules.empty() &&
         !attn.any();
}

void check_static_format(const format& f, const std::string& where) {
  const element_kind k = f.element.kind;
  if (f.gran != granularity::none || f.named != preset::none || f.power != 0 ||
      !(k == element_kind::int_sym || k == element_kind::minifloat))
    throw error(fmt::format("{}: static clipping values need a bare symmetric element (intN or eEmM, no /c, /t, "
                            "/gN or preset), not '{}'", where, format_name(f)));
}

std::vector<float> static_activation_scales(const format& f, const std::vector<float>& clip) {
  check_static_format(f, "static activation quantization");
  const double emax = element_max(f);
  std::vector<float> s(clip.size());
  for (size_t j = 0; j < clip.size(); ++j) {
    if (!(clip[j] > 0) || !std::isfinite(clip[j]))
      throw error(fmt::format("static activation quantization: clipping value {} is not finite and > 0", clip[j]));
    s[j] = static_cast<float>(double(clip[j]) / emax);
  }
  return s;
}

namespace {

// out = s_j * cast(in / s_j), s of size 1 (every column) or cols.
void fake_quantize_scaled(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                          const std::vector<float>& s, uint64_t stream) {
  if (s.size() != 1 && int64_t(s.size()) != cols)
    throw error(fmt::format("static activation quantization: {} clipping values for {} columns (expected 1 or {})",
                            s.size(), cols, cols));
  const bool per_tensor = s.size() == 1;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[i * cols + j] = in[i * cols + j] / s[per_tensor ? 0 : j];
  fake_quantize(out, out, rows, cols, f, stream);  // a plain, saturating cast (docs/conventions.md §1, §3)
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[i * cols + j] *= s[per_tensor ? 0 : j];
}

}  // namespace

void fake_quantize_static(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                          const std::vector<float>& clip, uint64_t stream) {
  fake_quantize_scaled(in, out, rows, cols, f, static_activation_scales(f, clip), stream);
}

void act_quant::apply(const float* in, float* out, int64_t rows, int64_t cols, uint64_t stream) const {
  if (!fmt) {
    if (in != out) std::copy_n(in, rows * cols, out);
  } else if (scale.empty()) {
    fake_quantize(in, out, rows, cols, *fmt, stream);
  } else {
    fake_quantize_scaled(in, out, rows, cols, *fmt, scale, stream);
  }
}

std::vector<std::string> activation_names(const model_config& c) {
  std::vector<std::string> n;
  for (int l = 0; l < c.n_layers; ++l)
    for (const char* s : {"attn_norm", "attn", "ffn_norm", "ffn_act"}) n.push_back(fmt::format("blk.{}.{}", l, s));
  n.push_back("output_norm");
  return n;
}

int64_t activation_width(const model_config& c, const std::string& name) {
  return name.ends_with(".ffn_act") ? c.hidden_dim : c.dim;
}

act_quant quant_plan::act_for(const std::string& name) const {
  for (const act_rule& r : act_rules)
    if (glob_match(r.pattern, name))
      return act_quant{r.fmt, r.fmt && !r.clip.empty() ? static_activation_scales(*r.fmt, r.clip) : std::vector<float>{}};
  return act_quant{name == "output_norm" ? classifier_acts : acts, {}};
}

std::optional<format> quant_plan::kv_for(const std::string& name) const {
  for (const weight_rule& r : kv_rules)
    if (glob_match(r.pattern, name)) return r.fmt;
  return kv;
}

void quant_plan::check_rules(const model_config& c) const {
  const std::vector<std::string> acts_of_model = activation_names(c);
  for (const act_rule& r : act_rules) {
    bool any = false;
    for (const std::string& name : acts_of_model) {
      if (!glob_match(r.pattern, name)) continue;
      any = true;
      const int64_t width = activation_width(c, name);
      if (r.fmt && r.clip.size() > 1 && int64_t(r.clip.size()) != width)
        throw error(fmt::format("act rule '{}': {} per-channel clipping values, but activation {} has {} columns",
                                r.pattern, r.clip.size(), name, width));
    }
    if (!any)
      throw error(fmt::format("act rule '{}' matches no activation of this model (names: blk.N.attn_norm, "
                              "blk.N.attn, blk.N.ffn_norm, blk.N.ffn_act for N = 0..{}, output_norm)",
                              r.pattern, c.n_layers - 1));
  }
  for (const weight_rule& r : kv_rules) {
    bool any = false;
    for (int l = 0; l < c.n_layers && !any; ++l)
      any = glob_match(r.pattern, fmt::format("blk.{}.k", l)) || glob_match(r.pattern, fmt::format("blk.{}.v", l));
    if (!any)
      throw error(fmt::format("kv rule '{}' matches no cache of this model (names: blk.N.k, blk.N.v for N = 0..{})",
                              r.pattern, c.n_layers - 1));
  }
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
  if (!act_rules.empty()) {
    size_t statics = 0;
    for (const act_rule& r : act_rules) statics += !r.clip.empty();
    d += fmt::format(" +{} act rules", act_rules.size());
    if (statics) d += fmt::format(" ({} static)", statics);
  }
  if (!kv_rules.empty()) d += fmt::format(" +{} kv rules", kv_rules.size());
  if (attn.any())
    d += fmt::format(" attn(q={} k={} p={} v={})", s(attn.q, attn.q_spec), s(attn.k, attn.k_spec),
                     s(attn.p, attn.p_spec), s(attn.v, attn.v_spec));
  return d;
}

quant_plan load_plan_json(const std::string& path) {
  require_regular_file(path, "rules file");  // a FIFO would block the open below
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
    if (j.contains("act_rules")) {
      if (!j["act_rules"].is_array()) throw error("'act_rules' must be an array");
      for (const auto& r : j["act_rules"]) {
        if (!r.is_object() || !r.contains("pattern") || !r.contains("format") || !r["pattern"].is_string() ||
            !r["format"].is_string())
          throw error("each act rule needs string fields 'pattern' and 'format'");
        for (const auto& [key, value] : r.items())
          if (key != "pattern" && key != "format" && key != "clip" && key != "calibration")
            throw error(fmt::format("act rule '{}': unknown key '{}' (known: pattern, format, clip, calibration)",
                                    r["pattern"].get<std::string>(), key));
        act_rule a{r["pattern"], r["format"], std::nullopt, {}, ""};
        const std::string where = fmt::format("act rule '{}'", a.pattern);
        try {
          a.fmt = parse_optional_format(a.spec);
        } catch (const std::exception& e) {
          throw error(fmt::format("{}: {}", where, e.what()));
        }
        if (r.contains("calibration")) {
          if (!r["calibration"].is_string()) throw error(fmt::format("{}: 'calibration' must be a string", where));
          a.calibration = r["calibration"];
        }
        if (r.contains("clip")) {
          const auto& c = r["clip"];
          if (c.is_number()) a.clip.push_back(c.get<float>());
          else if (c.is_array() && !c.empty())
            for (const auto& v : c) {
              if (!v.is_number()) throw error(fmt::format("{}: 'clip' must hold numbers", where));
              a.clip.push_back(v.get<float>());
            }
          else throw error(fmt::format("{}: 'clip' must be a number or a non-empty array of numbers", where));
          if (!a.fmt) throw error(fmt::format("{}: clipping values for a float activation", where));
          check_static_format(*a.fmt, where);
          for (float v : a.clip)
            if (!(v > 0) || !std::isfinite(v))
              throw error(fmt::format("{}: clipping value {} is not finite and > 0", where, v));
        }
        p.act_rules.push_back(std::move(a));
      }
    }
    if (j.contains("kv_rules")) {
      if (!j["kv_rules"].is_array()) throw error("'kv_rules' must be an array");
      for (const auto& r : j["kv_rules"]) {
        if (!r.is_object() || !r.contains("pattern") || !r.contains("format") || !r["pattern"].is_string() ||
            !r["format"].is_string() || r.size() != 2)
          throw error("each kv rule needs string fields 'pattern' and 'format' (and nothing else)");
        weight_rule w{r["pattern"], r["format"], std::nullopt};
        w.fmt = parse_optional_format(w.spec);
        p.kv_rules.push_back(std::move(w));
      }
    }
    if (j.contains("attn")) {
      const auto& a = j["attn"];
      if (!a.is_object()) throw error("'attn' must be an object {\"q\": fmt, \"k\": fmt, \"p\": fmt, \"v\": fmt}");
      for (const auto& [key, value] : a.items()) {
        if (!value.is_string()) throw error(fmt::format("attn.{} must be a format string", key));
        const std::string spec = value;
        if (key == "q") p.attn.q = parse_optional_format(spec), p.attn.q_spec = spec;
        else if (key == "k") p.attn.k = parse_optional_format(spec), p.attn.k_spec = spec;
        else if (key == "p") p.attn.p = parse_optional_format(spec), p.attn.p_spec = spec;
        else if (key == "v") p.attn.v = parse_optional_format(spec), p.attn.v_spec = spec;
        else throw error(fmt::format("attn: unknown operand '{}' (known: q, k, p, v)", key));
      }
    }
  } catch (const error& e) {
    throw error(fmt::format("{}: {}", path, e.what()));
  }
  return p;
}

quant_plan make_quant_plan(const std::string& rules, const std::string& weights, const std::string& acts,
                           const std::string& kv, const std::string& attn) {
  quant_plan p = rules.empty() ? quant_plan{} : load_plan_json(rules);
  if (!weights.empty()) p.weights = parse_optional_format(weights), p.weights_spec = weights;
  if (!acts.empty()) p.acts = parse_optional_format(acts), p.acts_spec = acts;
  if (!kv.empty()) p.kv = parse_optional_format(kv), p.kv_spec = kv;
  set_attention_operands(p, attn);
  return p;
}

void set_attention_operands(quant_plan& p, const std::string& spec) {
  if (spec.empty()) return;
  const std::optional<format> f = parse_optional_format(spec);
  p.attn.q = p.attn.k = p.attn.p = p.attn.v = f;
  p.attn.q_spec = p.attn.k_spec = p.attn.p_spec = p.attn.v_spec = spec;
}

nlohmann::json plan_json(const quant_plan& p) {
  nlohmann::json j = nlohmann::json::object();
  auto spec = [](const std::optional<format>& f, const std::string& typed) {
    return f ? (typed.empty() ? format_name(*f) : typed) : std::string("fp32");
  };
  if (p.weights) j["weights"] = spec(p.weights, p.weights_spec);
  if (p.acts) j["acts"] = spec(p.acts, p.acts_spec);
  if (p.kv) j["kv"] = spec(p.kv, p.kv_spec);
  if (p.classifier_acts) j["classifier_acts"] = format_name(*p.classifier_acts);
  if (!p.rules.empty()) {
    j["rules"] = nlohmann::json::array();
    for (const weight_rule& r : p.rules) j["rules"].push_back({{"pattern", r.pattern}, {"format", spec(r.fmt, r.spec)}});
  }
  if (!p.act_rules.empty()) {
    j["act_rules"] = nlohmann::json::array();
    for (const act_rule& r : p.act_rules) {
      nlohmann::json a = {{"pattern", r.pattern}, {"format", spec(r.fmt, r.spec)}};
      if (r.clip.size() == 1) a["clip"] = r.clip[0];
      else if (!r.clip.empty()) a["clip"] = r.clip;
      if (!r.calibration.empty()) a["calibration"] = r.calibration;
      j["act_rules"].push_back(std::move(a));
    }
  }
  if (!p.kv_rules.empty()) {
    j["kv_rules"] = nlohmann::json::array();
    for (const weight_rule& r : p.kv_rules) j["kv_rules"].push_back({{"pattern", r.pattern}, {"format", spec(r.fmt, r.spec)}});
  }
  if (p.attn.any())
    j["attn"] = {{"q", spec(p.attn.q, p.attn.q_spec)}, {"k", spec(p.attn.k, p.attn.k_spec)},
                 {"p", spec(p.attn.p, p.attn.p_spec)}, {"v", spec(p.attn.v, p.attn.v_spec)}};
  return j;
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

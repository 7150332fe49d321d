// The PTQ quality predictor (predict.hpp; Xu et al. 2024, docs/laws.md §2.2) on XGBoost's C API.
#include "lowbit/law/predict.hpp"

#include <xgboost/c_api.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>

#include <fmt/format.h>

#include "lowbit/engine/plan.hpp"
#include "lowbit/engine/train.hpp"  // mix64
#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"

namespace lowbit::law {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const std::vector<std::string> kMethods = {"rtn", "gptq", "awq", "smoothquant", "llmfp4"};

void xgb_check(int rc, const char* what) {
  if (rc != 0) throw error(fmt::format("predictor: XGBoost {} failed: {}", what, XGBGetLastError()));
}

// A DMatrix that frees itself.
struct dmatrix {
  DMatrixHandle h = nullptr;
  dmatrix(const std::vector<float>& x, size_t rows, size_t cols) {
    xgb_check(XGDMatrixCreateFromMat(x.data(), rows, cols, std::numeric_limits<float>::quiet_NaN(), &h),
              "DMatrix");
  }
  ~dmatrix() { XGDMatrixFree(h); }
  dmatrix(const dmatrix&) = delete;
  dmatrix& operator=(const dmatrix&) = delete;
};

struct booster {
  BoosterHandle h = nullptr;
  ~booster() {
    if (h) XGBoosterFree(h);
  }
};

std::vector<float> matrix(const std::vector<ptq_sample>& rows, const std::vector<size_t>& idx) {
  std::vector<float> x;
  for (size_t i : idx) {
    const std::vector<float> f = features(rows[i]);
    x.insert(x.end(), f.begin(), f.end());
  }
  return x;
}

// Trains a booster on rows[idx] (target: NLL increase over the float NLL).
BoosterHandle fit_booster(const std::vector<ptq_sample>& rows, const std::vector<size_t>& idx,
                          const predictor_options& o) {
  const size_t cols = feature_names().size();
  dmatrix d(matrix(rows, idx), idx.size(), cols);
  std::vector<float> y;
  for (size_t i : idx) y.push_back(static_cast<float>(rows[i].nll - rows[i].nll_float));
  xgb_check(XGDMatrixSetFloatInfo(d.h, "label", y.data(), y.size()), "labels");
  booster b;
  xgb_check(XGBoosterCreate(&d.h, 1, &b.h), "booster");
  const std::pair<const char*, std::string> params[] = {
      {"objective", "reg:squarederror"}, {"max_depth", std::to_string(o.max_depth)},
      {"eta", fmt::format("{}", o.eta)}, {"subsample", "1"},
      {"min_child_weight", "1"}, {"lambda", "1"},
      {"nthread", "1"}, {"seed", std::to_string(o.seed)},
      {"verbosity", "0"}, {"tree_method", "exact"}};
  for (const auto& [k, v] : params) xgb_check(XGBoosterSetParam(b.h, k, v.c_str()), "parameter");
  for (int it = 0; it < o.rounds; ++it) xgb_check(XGBoosterUpdateOneIter(b.h, it, d.h), "training");
  BoosterHandle out = b.h;
  b.h = nullptr;
  return out;
}

std::vector<double> predict_rows(BoosterHandle b, const std::vector<ptq_sample>& rows, const std::vector<size_t>& idx) {
  dmatrix d(matrix(rows, idx), idx.size(), feature_names().size());
  const bst_ulong* shape = nullptr;
  bst_ulong dim = 0;
  const float* out = nullptr;
  xgb_check(XGBoosterPredictFromDMatrix(
                b, d.h, R"({"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0, "strict_shape": false})",
                &shape, &dim, &out),
            "prediction");
  std::vector<double> p;
  for (size_t k = 0; k < idx.size(); ++k) p.push_back(rows[idx[k]].nll_float + out[k]);
  return p;
}

bool is_float_spec(const std::string& s) { return s.empty() || s == "fp32" || s == "f32" || s == "-" || s == "none"; }

double metric(const run_record& r, const char* name) {
  const auto it = r.metrics.find(name);
  return it == r.metrics.end() ? kNaN : it->second;
}

}  // namespace

const std::vector<std::string>& feature_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n = {"log_N", "nll_float", "sqnr_db", "bits", "block_code", "flatness"};
    for (const auto& m : kMethods) n.push_back("method_" + m);
    n.push_back("method_other");
    return n;
  }();
  return names;
}

std::vector<float> features(const ptq_sample& s) {
  std::vector<float> f = {float(s.log_N), float(s.nll_float), float(s.sqnr_db),
                          float(s.bits),  float(s.block_code), float(s.flatness)};
  bool known = false;
  for (const auto& m : kMethods) {
    f.push_back(s.method == m ? 1.f : 0.f);
    known |= s.method == m;
  }
  f.push_back(known ? 0.f : 1.f);
  return f;
}

nlohmann::json feature_json(const ptq_sample& s) {
  nlohmann::json j = nlohmann::json::object();
  const auto f = features(s);
  for (size_t i = 0; i < f.size(); ++i)
    j[feature_names()[i]] = std::isnan(f[i]) ? nlohmann::json(nullptr) : nlohmann::json(f[i]);
  return j;
}

void set_format_features(const std::string& spec, ptq_sample& s) {
  const format f = parse_format(spec);
  s.bits = bits_per_element(f);
  switch (f.gran) {
    case granularity::none: s.block_code = 0; break;
    case granularity::group: s.block_code = std::log2(double(f.group_size)); break;
    case granularity::row: s.block_code = 16; break;
    case granularity::tensor: s.block_code = 24; break;
  }
}

nlohmann::json to_json(const cv_report& r) {
  return {{"folds", r.folds}, {"rows", r.rows}, {"rmse", r.rmse}, {"mae", r.mae}, {"rmse_constant", r.rmse_constant}};
}

ptq_predictor::ptq_predictor(predictor_options o) : o_(o) {}
ptq_predictor::~ptq_predictor() {
  if (booster_) XGBoosterFree(booster_);
}

cv_report ptq_predictor::train(const std::vector<ptq_sample>& rows) {
  if (o_.folds < 2) throw error("predictor: --folds must be >= 2");
  const size_t need = 2 * static_cast<size_t>(o_.folds);
  if (rows.size() < need)
    throw error(fmt::format("predictor: {} training rows, needs at least {} (2 per fold of {}-fold cross-validation); "
                            "record more eval/quantize/explore runs",
                            rows.size(), need, o_.folds));
  for (const auto& r : rows)
    if (!std::isfinite(r.nll) || !std::isfinite(r.nll_float))
      throw error("predictor: every training row needs a finite NLL and float NLL");
  // Seeded shuffled folds.
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 g(o_.seed + 12345);
  std::shuffle(order.begin(), order.end(), g);
  cv_report rep;
  rep.folds = o_.folds, rep.rows = rows.size();
  double se = 0, ae = 0, se_c = 0;
  for (int k = 0; k < o_.folds; ++k) {
    std::vector<size_t> tr, te;
    for (size_t i = 0; i < order.size(); ++i) (int(i % o_.folds) == k ? te : tr).push_back(order[i]);
    booster b;
    b.h = fit_booster(rows, tr, o_);
    const std::vector<double> p = predict_rows(b.h, rows, te);
    double mean_inc = 0;
    for (size_t i : tr) mean_inc += rows[i].nll - rows[i].nll_float;
    mean_inc /= tr.size();
    for (size_t j = 0; j < te.size(); ++j) {
      const ptq_sample& s = rows[te[j]];
      se += (p[j] - s.nll) * (p[j] - s.nll);
      ae += std::abs(p[j] - s.nll);
      const double c = s.nll_float + mean_inc;
      se_c += (c - s.nll) * (c - s.nll);
    }
  }
  rep.rmse = std::sqrt(se / rows.size());
  rep.mae = ae / rows.size();
  rep.rmse_constant = std::sqrt(se_c / rows.size());
  std::vector<size_t> all(rows.size());
  std::iota(all.begin(), all.end(), 0);
  if (booster_) XGBoosterFree(booster_);
  booster_ = fit_booster(rows, all, o_);
  return rep;
}

double ptq_predictor::predict(const ptq_sample& s) const {
  if (!booster_) throw error("predictor: predict() before train()");
  return predict_rows(booster_, {s}, {0})[0];
}

std::vector<ptq_sample> samples_from_runs(const std::vector<run_record>& runs) {
  // Float NLL per model from its float runs.
  std::map<std::string, double> float_nll;
  for (const auto& r : runs)
    if ((r.kind == "eval" || r.kind == "explore" || r.kind == "quantize") && is_float_spec(r.format) &&
        std::isfinite(metric(r, "nll")))
      float_nll.emplace(r.model, metric(r, "nll"));
  std::vector<ptq_sample> out;
  for (const auto& r : runs) {
    if (r.kind != "eval" && r.kind != "explore" && r.kind != "quantize") continue;
    if (is_float_spec(r.format) || !std::isfinite(metric(r, "nll"))) continue;
    ptq_sample s;
    s.model = r.model, s.format = r.format, s.method = r.method.empty() ? "rtn" : r.method;
    if (r.config.is_object() && r.config.contains("paths") && r.config["paths"].is_object() &&
        r.config["paths"].contains("model") && r.config["paths"]["model"].is_string())
      s.model_path = r.config["paths"]["model"].get<std::string>();
    s.nll = metric(r, "nll");
    s.nll_float = metric(r, "base_nll");
    if (!std::isfinite(s.nll_float)) {
      const auto it = float_nll.find(r.model);
      if (it == float_nll.end()) continue;  // no float reference for this model
      s.nll_float = it->second;
    }
    s.log_N = r.n_params > 0 ? std::log(r.n_params) : kNaN;
    s.sqnr_db = metric(r, "sqnr_db");
    s.flatness = metric(r, "flatness");
    try {
      set_format_features(r.canonical.empty() ? r.format : r.canonical, s);
    } catch (const error&) {
      continue;
    }
    out.push_back(s);
  }
  return out;
}

ptq_sample query_for(const std::vector<ptq_sample>& rows, const std::string& model, const std::string& format,
                     const std::string& method) {
  ptq_sample q;
  q.model = model, q.format = format, q.method = method, q.nll = kNaN;
  q.sqnr_db = kNaN, q.flatness = kNaN;
  set_format_features(format, q);
  const std::string canon = format_name(parse_format(format));
  bool seen = false;
  for (const auto& r : rows) {
    if (r.model != model) continue;
    seen = true;
    q.log_N = r.log_N, q.nll_float = r.nll_float;
    if (q.model_path.empty()) q.model_path = r.model_path;
    if (format_name(parse_format(r.format)) == canon) {
      if (std::isfinite(r.sqnr_db)) q.sqnr_db = r.sqnr_db;
      if (std::isfinite(r.flatness)) q.flatness = r.flatness;
    }
  }
  if (!seen)
    throw error(fmt::format("predict: model '{}' has no runs in the database (its size and float NLL come from "
                            "them); record one, e.g. its float eval",
                            model));
  return q;
}

double weights_sqnr_db(const model& m, const std::string& spec) {
  model scratch = m;
  quant_plan plan;
  plan.weights = parse_format(spec), plan.weights_spec = spec;
  return mean_sqnr_db(apply_weight_plan(scratch, plan));
}

void perturb_weights(model& m, const std::vector<weight_quant_report>& reports, uint64_t seed) {
  for (size_t t = 0; t < reports.size(); ++t) {
    const double sqnr = reports[t].sqnr_db;
    if (!std::isfinite(sqnr)) continue;
    std::vector<float>& w = m.get_mut(reports[t].name).data;
    double norm2 = 0;
    for (float v : w) norm2 += double(v) * v;
    // One stream per (seed, tensor): Box-Muller on 53-bit uniforms from a 64-bit Mersenne
    // Twister (its output sequence is fixed by the standard, so the draws are too).
    std::mt19937_64 gen(mix64(seed * 0x9E3779B97F4A7C15ull + t + 1));
    const auto uniform = [&] { return (double(gen() >> 11) + 0.5) * 0x1p-53; };
    std::vector<double> g(w.size());
    double g2 = 0;
    for (size_t i = 0; i < g.size(); i += 2) {
      const double r = std::sqrt(-2 * std::log(uniform())), a = 2 * M_PI * uniform();
      g[i] = r * std::cos(a);
      if (i + 1 < g.size()) g[i + 1] = r * std::sin(a);
    }
    for (double v : g) g2 += v * v;
    if (g2 <= 0 || norm2 <= 0) continue;
    const double scale = std::sqrt(norm2) * std::pow(10.0, -sqnr / 20) / std::sqrt(g2);
    for (size_t i = 0; i < w.size(); ++i) w[i] = float(double(w[i]) + scale * g[i]);
  }
}

flatness_result measure_flatness(const model& base, const std::string& weights_spec, const std::vector<int32_t>& ids,
                                 const eval_options& eo_in, const flatness_options& o) {
  if (o.draws < 1) throw error(fmt::format("flatness: {} draws (at least 1)", o.draws));
  const std::optional<format> f = parse_optional_format(weights_spec);
  if (!f) throw error(fmt::format("flatness: '{}' is not a weight format", weights_spec));
  quant_plan plan;
  plan.weights = f, plan.weights_spec = weights_spec;
  std::vector<weight_quant_report> reports;
  {
    model scratch = base;
    reports = apply_weight_plan(scratch, plan);
  }
  eval_options eo = eo_in;
  eo.kl_base = false;
  const quant_plan float_plan;
  flatness_result r;
  r.float_nll = std::isnan(o.float_nll) ? evaluate(base, float_plan, ids, eo).mean_nll : o.float_nll;
  double sum = 0, sum2 = 0;
  for (int d = 0; d < o.draws; ++d) {
    model noisy = base;
    perturb_weights(noisy, reports, mix64(o.seed + 0x51ED2701ull * uint64_t(d + 1)));
    const double inc = evaluate(noisy, float_plan, ids, eo).mean_nll - r.float_nll;
    r.increases.push_back(inc);
    sum += inc, sum2 += inc * inc;
  }
  const double n = o.draws;
  r.mean_increase = sum / n;
  r.stderr_increase = o.draws > 1 ? std::sqrt(std::max(0.0, (sum2 - sum * sum / n) / (n - 1)) / n) : kNaN;
  return r;
}

}  // namespace lowbit::law

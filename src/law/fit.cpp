// Robust multi-start nonlinear least-squares fits of the scaling laws with Ceres, bootstrap
// confidence intervals and held-out error (fit.hpp).
#include "lowbit/law/fit.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <set>

#include <ceres/ceres.h>
#include <glog/logging.h>
#include <fmt/format.h>

#include "lowbit/base/error.hpp"

namespace lowbit::law {

namespace {

constexpr int kMaxConstants = 8;

// r = log L(x; exp(theta)) - log L_obs, one residual per run.
template <int K>
struct log_residual {
  law_id law;
  law_point x;
  double log_obs;
  template <class T>
  bool operator()(const T* theta, T* r) const {
    T c[K];
    for (int i = 0; i < K; ++i) c[i] = exp(theta[i]);
    const T L = law_loss<T>(law, c, x);
    if (!(L > T(0))) return false;  // outside the law's domain: Ceres rejects the step
    r[0] = log(L) - T(log_obs);
    return true;
  }
};

template <int K>
ceres::CostFunction* make_cost(law_id l, const law_point& x) {
  return new ceres::AutoDiffCostFunction<log_residual<K>, 1, K>(new log_residual<K>{l, x, std::log(x.loss)});
}

ceres::CostFunction* cost_for(law_id l, const law_point& x) {
  switch (l) {
    case law_id::sun2025: return make_cost<8>(l, x);
    case law_id::chinchilla: return make_cost<5>(l, x);
    case law_id::kumar2024: return make_cost<6>(l, x);
  }
  return nullptr;
}

ceres::LossFunction* robust_loss(const fit_options& o) {
  if (o.robust == "huber") return new ceres::HuberLoss(o.robust_scale);
  if (o.robust == "cauchy") return new ceres::CauchyLoss(o.robust_scale);
  if (o.robust == "none") return nullptr;
  throw error(fmt::format("fit: unknown robust loss '{}': expected huber, cauchy or none", o.robust));
}

// Box constraints on the constants (wide; they only keep a bad start from overflowing pow()).
std::vector<std::pair<double, double>> bounds(law_id l) {
  const std::pair<double, double> coef{1e-6, 1e12}, expo{1e-3, 3}, floor_{1e-3, 100}, shape{1e-2, 30};
  switch (l) {
    case law_id::sun2025: return {coef, expo, coef, expo, floor_, coef, shape, shape};
    case law_id::chinchilla: return {floor_, coef, expo, coef, expo};
    case law_id::kumar2024: return {coef, expo, coef, expo, floor_, {1e-2, 1e3}};
  }
  return {};
}

// One solve from theta (in place); returns the final robust cost (inf when it failed).
double solve(law_id l, const std::vector<law_point>& pts, const std::vector<size_t>& idx, const fit_options& o,
             std::vector<double>& theta) {
  ceres::Problem::Options po;
  ceres::Problem problem(po);
  for (size_t i : idx) problem.AddResidualBlock(cost_for(l, pts[i]), robust_loss(o), theta.data());
  const auto b = bounds(l);
  for (size_t i = 0; i < theta.size(); ++i) {
    theta[i] = std::clamp(theta[i], std::log(b[i].first), std::log(b[i].second));
    problem.SetParameterLowerBound(theta.data(), static_cast<int>(i), std::log(b[i].first));
    problem.SetParameterUpperBound(theta.data(), static_cast<int>(i), std::log(b[i].second));
  }
  ceres::Solver::Options so;
  so.linear_solver_type = ceres::DENSE_QR;
  so.max_num_iterations = o.max_iterations;
  so.function_tolerance = 1e-14;
  so.gradient_tolerance = 1e-14;
  so.parameter_tolerance = 1e-12;
  so.logging_type = ceres::SILENT;
  so.minimizer_progress_to_stdout = false;
  so.num_threads = 1;
  ceres::Solver::Summary sum;
  ceres::Solve(so, &problem, &sum);
  if (!sum.IsSolutionUsable() || !std::isfinite(sum.final_cost)) return std::numeric_limits<double>::infinity();
  for (double t : theta)
    if (!std::isfinite(t)) return std::numeric_limits<double>::infinity();
  return sum.final_cost;
}

// Ranges (of the constants, not their logs) the random starts are drawn from, log-uniformly.
std::vector<std::pair<double, double>> start_ranges(law_id l, double min_loss) {
  const double eps_hi = std::max(0.2, 0.95 * min_loss);
  switch (l) {
    case law_id::sun2025:
      return {{1, 1e3}, {0.05, 0.8}, {10, 1e7}, {0.05, 0.8}, {0.1, eps_hi}, {10, 1e7}, {0.5, 6}, {0.5, 6}};
    case law_id::chinchilla: return {{0.1, eps_hi}, {10, 1e4}, {0.05, 0.8}, {10, 1e4}, {0.05, 0.8}};
    case law_id::kumar2024: return {{1, 1e4}, {0.05, 0.8}, {10, 1e6}, {0.05, 0.8}, {0.1, eps_hi}, {0.3, 30}};
  }
  return {};
}

struct errors {
  double rmse = 0, mape = 0;
};
errors prediction_errors(const std::vector<fit_prediction>& p) {
  errors e;
  if (p.empty()) return {std::nan(""), std::nan("")};
  for (const auto& q : p) {
    e.rmse += (q.predicted - q.x.loss) * (q.predicted - q.x.loss);
    e.mape += std::abs(q.predicted - q.x.loss) / q.x.loss;
  }
  e.rmse = std::sqrt(e.rmse / p.size());
  e.mape = 100 * e.mape / p.size();
  return e;
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * (v.size() - 1);
  const size_t i = static_cast<size_t>(pos);
  if (i + 1 >= v.size()) return v.back();
  return v[i] + (pos - i) * (v[i + 1] - v[i]);
}

}  // namespace

size_t min_points(law_id l) { return info(l).names.size() + 2; }

fit_result fit_law(law_id l, const std::vector<law_point>& points, const fit_options& o) {
  const law_info& li = info(l);
  const int K = static_cast<int>(li.names.size());
  LOWBIT_ASSERT(K <= kMaxConstants);
  if (o.starts < 1) throw error("fit: --starts must be >= 1");
  if (o.bootstrap_kind != "residuals" && o.bootstrap_kind != "runs")
    throw error(fmt::format("fit: unknown bootstrap kind '{}': expected residuals or runs", o.bootstrap_kind));
  if (o.bootstrap < 0) throw error("fit: --bootstrap must be >= 0");
  if (!(o.confidence > 0 && o.confidence < 1)) throw error("fit: confidence must be in (0, 1)");
  delete robust_loss(o);  // validates the name before any work
  // Ceres reports failed starts through glog; a start that fails is expected here, not news.
  static const bool quiet = [] {
    FLAGS_minloglevel = google::GLOG_FATAL;
    return true;
  }();
  (void)quiet;
  for (const auto& x : points)
    if (!(x.N > 0) || !(x.D > 0) || !(x.loss > 0))
      throw error(fmt::format("fit {}: every run needs N > 0, D > 0 and a loss > 0 (found N {}, D {}, loss {})",
                              li.name, x.N, x.D, x.loss));

  // Hold out the runs of the K largest model sizes.
  std::set<double> sizes;
  for (const auto& x : points) sizes.insert(x.N);
  fit_result r;
  r.options = o;
  std::vector<size_t> fit_idx, hold_idx;
  if (o.holdout_largest > 0) {
    if (static_cast<size_t>(o.holdout_largest) >= sizes.size())
      throw error(fmt::format("fit {}: --holdout-largest {} leaves no model size to fit ({} distinct N)", li.name,
                              o.holdout_largest, sizes.size()));
    auto it = sizes.end();
    std::advance(it, -o.holdout_largest);
    r.holdout_min_N = *it;
  }
  for (size_t i = 0; i < points.size(); ++i)
    (o.holdout_largest > 0 && points[i].N >= r.holdout_min_N ? hold_idx : fit_idx).push_back(i);

  const size_t need = min_points(l);
  if (fit_idx.size() < need)
    throw error(fmt::format("fit {}: {} usable runs{}, needs at least {} ({} constants + 2)", li.name, fit_idx.size(),
                            o.holdout_largest > 0 ? " after the hold-out" : "", need, K));
  std::set<double> fit_N, fit_D;
  double min_loss = std::numeric_limits<double>::infinity();
  for (size_t i : fit_idx) fit_N.insert(points[i].N), fit_D.insert(points[i].D), min_loss = std::min(min_loss, points[i].loss);
  if (fit_N.size() < 2 || fit_D.size() < 2)
    throw error(fmt::format("fit {}: the runs need >= 2 distinct model sizes N and >= 2 distinct data sizes D "
                            "(found {} and {})",
                            li.name, fit_N.size(), fit_D.size()));

  // Multi-start: the published constants first (when there are any), then seeded draws.
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + 1);
  const auto ranges = start_ranges(l, min_loss);
  std::vector<double> best;
  double best_cost = std::numeric_limits<double>::infinity();
  for (int s = 0; s < o.starts; ++s) {
    std::vector<double> theta(K);
    if (s == 0 && li.published && o.published_start) {
      for (int i = 0; i < K; ++i) theta[i] = std::log((*li.published)[i]);
    } else {
      for (int i = 0; i < K; ++i) {
        std::uniform_real_distribution<double> u(std::log(ranges[i].first), std::log(ranges[i].second));
        theta[i] = u(rng);
      }
    }
    const double c = solve(l, points, fit_idx, o, theta);
    ++r.starts_run;
    if (c < best_cost) best_cost = c, best = theta;
  }
  if (!std::isfinite(best_cost))
    throw error(fmt::format("fit {}: no start converged ({} tried); are the losses from this law's kind of runs?",
                            li.name, o.starts));
  r.cost = best_cost;
  r.constants.law = l;
  r.constants.source = fmt::format("fitted to {} runs", fit_idx.size());
  for (double t : best) r.constants.values.push_back(std::exp(t));
  r.n_fit = fit_idx.size(), r.n_holdout = hold_idx.size();
  for (size_t i : fit_idx) r.fitted.push_back({points[i], loss(r.constants, points[i])});
  for (size_t i : hold_idx) r.held_out.push_back({points[i], loss(r.constants, points[i])});
  const errors ef = prediction_errors(r.fitted), eh = prediction_errors(r.held_out);
  r.rmse_fit = ef.rmse, r.mape_fit = ef.mape, r.rmse_holdout = eh.rmse, r.mape_holdout = eh.mape;

  // Percentile bootstrap, each replicate refitted from the best fit. residuals: every run keeps
  // its (N, D, format) and gets its prediction times a log-residual drawn from the fit's
  // (a designed grid; assumes one noise level); runs: runs drawn with replacement.
  if (o.bootstrap > 0) {
    std::vector<std::vector<double>> reps(o.bootstrap);
    const bool by_runs = o.bootstrap_kind == "runs";
#pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < o.bootstrap; ++b) {
      std::mt19937_64 g(o.seed * 1000003ull + 7919ull * (b + 1));
      std::uniform_int_distribution<size_t> pick(0, fit_idx.size() - 1);
      std::vector<size_t> idx(fit_idx.size());
      std::vector<law_point> resampled;
      for (size_t k = 0; k < idx.size(); ++k) {
        if (by_runs) {
          idx[k] = fit_idx[pick(g)];
        } else {
          const fit_prediction& e = r.fitted[pick(g)];
          law_point x = r.fitted[k].x;
          x.loss = r.fitted[k].predicted * (e.x.loss / e.predicted);
          resampled.push_back(x);
          idx[k] = k;
        }
      }
      std::vector<double> theta = best;
      if (std::isfinite(solve(l, by_runs ? points : resampled, idx, o, theta))) reps[b] = theta;
    }
    std::vector<std::vector<double>> per(K);
    for (const auto& t : reps)
      if (!t.empty()) {
        ++r.bootstrap_done;
        for (int i = 0; i < K; ++i) per[i].push_back(std::exp(t[i]));
      }
    if (r.bootstrap_done >= 2) {
      const double a = (1 - o.confidence) / 2;
      for (int i = 0; i < K; ++i) {
        r.ci_lo.push_back(quantile(per[i], a));
        r.ci_hi.push_back(quantile(per[i], 1 - a));
      }
    }
  }
  return r;
}

nlohmann::json to_json(const fit_result& r) {
  const law_info& li = info(r.constants.law);
  nlohmann::json j = constants_to_json(r.constants);
  j["formula"] = li.formula;
  if (!r.ci_lo.empty()) {
    nlohmann::json ci = nlohmann::json::object();
    for (size_t i = 0; i < li.names.size(); ++i) ci[li.names[i]] = {r.ci_lo[i], r.ci_hi[i]};
    j["ci"] = ci;
    j["confidence"] = r.options.confidence;
    j["bootstrap"] = r.bootstrap_done;
    j["bootstrap_kind"] = r.options.bootstrap_kind;
  }
  if (li.published) {
    nlohmann::json p = nlohmann::json::object();
    for (size_t i = 0; i < li.names.size(); ++i) p[li.names[i]] = (*li.published)[i];
    j["published"] = p;
  }
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
  j["runs_fit"] = r.n_fit;
  j["runs_held_out"] = r.n_holdout;
  j["rmse_fit"] = num(r.rmse_fit);
  j["mape_fit_percent"] = num(r.mape_fit);
  j["rmse_held_out"] = num(r.rmse_holdout);
  j["mape_held_out_percent"] = num(r.mape_holdout);
  if (r.n_holdout) j["held_out_min_N"] = r.holdout_min_N;
  j["robust"] = r.options.robust;
  j["robust_scale"] = r.options.robust_scale;
  j["starts"] = r.starts_run;
  j["seed"] = r.options.seed;
  j["cost"] = r.cost;
  // The points with their predictions (the report's law-fit figure draws both sets).
  auto points = [](const std::vector<fit_prediction>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& p : v)
      a.push_back({{"N", p.x.N}, {"D", p.x.D}, {"E", p.x.E}, {"M", p.x.M}, {"log2_block", p.x.log2_block},
                   {"P", p.x.P}, {"loss", p.x.loss}, {"predicted", p.predicted}});
    return a;
  };
  j["fitted"] = points(r.fitted);
  j["held_out"] = points(r.held_out);
  return j;
}

std::vector<law_point> points_from_runs(law_id l, const std::vector<run_record>& runs, size_t* skipped) {
  std::vector<law_point> out;
  size_t skip = 0;
  for (const auto& r : runs) {
    // A fine-tuning run's tokens are not its model's training tokens: no point of a law.
    if (r.kind != "train" || r.method == "finetune") continue;
    const auto it = r.metrics.find("val_loss");
    if (it == r.metrics.end() || !(it->second > 0) || !(r.n_params > 0) || !(r.tokens > 0)) {
      ++skip;
      continue;
    }
    const std::string spec = !r.canonical.empty() ? r.canonical : r.format;
    const bool is_float = spec.empty() || spec == "fp32" || (r.bits >= 16 && r.block == 0);
    law_point x;
    if (!is_float) {
      try {
        x = point_of_format(spec);
      } catch (const error&) {
        // Not expressible by sun2025 (tensor-wise, unscaled, LUT): skipped; the other laws need
        // only the bits.
        if (l == law_id::sun2025) {
          ++skip;
          continue;
        }
        x.P = r.bits;
      }
    }
    if (l == law_id::chinchilla && !is_float) {
      ++skip;
      continue;
    }
    if (is_float) x.P = r.bits;
    x.N = r.n_params, x.D = r.tokens, x.loss = it->second;
    out.push_back(x);
  }
  if (skipped) *skipped = skip;
  return out;
}

}  // namespace lowbit::law

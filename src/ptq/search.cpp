// PowerQuant exponent search and importance-weighted RTN (search.hpp).
#include "lowbit/ptq/search.hpp"

#include <algorithm>
#include <cstring>
#include <cmath>

#include <fmt/format.h>


#include "lowbit/base/error.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/ptq/pipeline.hpp"

namespace lowbit::ptq {

namespace {

double mse_of(const float* W, const std::vector<float>& Q) {
  double e = 0;
  for (size_t i = 0; i < Q.size(); ++i) e += double(W[i] - Q[i]) * double(W[i] - Q[i]);
  return Q.empty() ? 0 : e / double(Q.size());
}

// Columns that share a scale choice: the group; for the K-quants the super-block of 256, whose
// sub-block scales come from one search over all of it.
int64_t scale_unit(const format& f) { return is_kquant(f) ? kSuperBlock : f.group_size; }

// The columns [c0, c1) of scale unit g of a row under format f.
std::pair<int64_t, int64_t> group_range(const format& f, int64_t in, int64_t g) {
  if (f.gran != granularity::group) return {0, in};
  return {g * scale_unit(f), std::min<int64_t>(in, (g + 1) * scale_unit(f))};
}

}  // namespace

namespace {

void check_power_base(const format& base, double lo, double hi, const char* who) {
  if (base.power != 0) throw error(fmt::format("{}: give the base format without pow(...)", who));
  if (base.named != preset::none)  // as the grammar's pow(...): the presets fix their own grids
    throw error(fmt::format("{}: {} is a named preset; the power map takes a generic format "
                            "(e.g. int4/g32, e2m1/g32:e8m0)", who, format_name(base)));
  if (!(lo > 0) || !(hi >= lo)) throw error(fmt::format("{}: bad exponent range [{}, {}]", who, lo, hi));
}

// The 1-D search of both methods: `objective(a)` (which also leaves the weight in `q`) on a grid
// of 16 exponents over [lo, hi], the extra candidates, then golden section around the best.
template <class Objective>
double search_exponent(double lo, double hi, const std::vector<double>& extra, Objective&& objective) {
  double best_a = 1.0, best = objective(1.0);
  for (const double a : extra) {
    const double e = objective(a);
    if (e < best) best = e, best_a = a;
  }
  const int grid = 16;
  double grid_best_a = best_a, grid_best = INFINITY;
  for (int i = 0; i < grid; ++i) {
    const double a = lo + (hi - lo) * i / (grid - 1);
    const double e = objective(a);
    if (e < grid_best) grid_best = e, grid_best_a = a;
  }
  if (grid_best < best) best = grid_best, best_a = grid_best_a;
  // Golden section on the bracket around the best point.
  const double step = (hi - lo) / (grid - 1);
  double a0 = std::max(lo, best_a - step), a1 = std::min(hi, best_a + step);
  const double phi = (std::sqrt(5.0) - 1) / 2;
  double x1 = a1 - phi * (a1 - a0), x2 = a0 + phi * (a1 - a0);
  double f1 = objective(x1), f2 = objective(x2);
  while (a1 - a0 > 1e-3) {
    if (f1 < f2) a1 = x2, x2 = x1, f2 = f1, x1 = a1 - phi * (a1 - a0), f1 = objective(x1);
    else a0 = x1, x1 = x2, f1 = f2, x2 = a0 + phi * (a1 - a0), f2 = objective(x2);
  }
  for (const auto& [a, e] : {std::pair{x1, f1}, std::pair{x2, f2}})
    if (e < best) best = e, best_a = a;
  return best_a;
}

format with_power(const format& base, double a) {
  format f = base;
  f.power = a == 1.0 ? 0.0 : a;
  return f;
}

}  // namespace

power_search_result powerquant_search(const float* W, int64_t out, int64_t in, const format& base,
                                      double lo, double hi) {
  check_power_base(base, lo, hi, "powerquant");
  std::vector<float> q(out * in);
  auto error_at = [&](double a) {
    fake_quantize(W, q.data(), out, in, with_power(base, a));
    return mse_of(W, q);
  };
  power_search_result r;
  r.mse_uniform = error_at(1.0);
  r.exponent = search_exponent(lo, hi, {}, error_at);
  r.mse = r.loss = error_at(r.exponent);
  r.loss_uniform = r.mse_uniform;
  r.weights = q;
  return r;
}

power_search_result nupes_search(const float* W, int64_t out, int64_t in, const format& base, const double* C,
                                 double lo, double hi) {
  check_power_base(base, lo, hi, "nupes");
  for (int64_t i = 0; i < in * in; ++i)
    if (!std::isfinite(C[i])) throw error("nupes: the calibration second moment X^T X / n holds NaN or Inf");
  const std::vector<float> Cf(C, C + in * in);
  std::vector<float> q(out * in), D(out * in), G(out * in);
  auto output_error_at = [&](double a) {  // tr(D C D^T), D = W - Q_a(W)
    fake_quantize(W, q.data(), out, in, with_power(base, a));
    for (int64_t i = 0; i < out * in; ++i) D[i] = W[i] - q[i];
    if (out * in == 0) return 0.0;
    tiled_sgemm(gemm_op::none, gemm_op::none, out, in, in, 1.0f, D.data(), in, Cf.data(), in, 0.0f, G.data(), in);
    double l = 0;
    for (int64_t i = 0; i < out * in; ++i) l += double(G[i]) * D[i];
    return l;
  };
  // PowerQuant's data-free exponent is a candidate: the learned one is never worse on the output error.
  const double data_free = powerquant_search(W, out, in, base, lo, hi).exponent;
  power_search_result r;
  r.loss_uniform = output_error_at(1.0);
  r.exponent = search_exponent(lo, hi, {data_free}, output_error_at);
  r.loss = output_error_at(r.exponent);
  r.mse = mse_of(W, q);
  r.weights = q;
  fake_quantize(W, q.data(), out, in, base);
  r.mse_uniform = mse_of(W, q);
  return r;
}

std::vector<float> importance_rtn(const float* W, int64_t out, int64_t in, const format& f,
                                  const float* importance, int grid, double max_shrink,
                                  std::optional<quantized_tensor>* packed) {
  if (grid < 1 || !(max_shrink >= 0) || max_shrink >= 1)
    throw error(fmt::format("importance RTN: grid {} and max shrink {} (need >= 1 and in [0, 1))", grid, max_shrink));
  const int64_t groups = f.gran == granularity::group ? (in + scale_unit(f) - 1) / scale_unit(f) : 1;
  // The clipped input of each group's best shrink, quantized once at the end for its codes (a
  // group's — a K-quant super-block's — quantization depends on its values only).
  const bool kquant = is_kquant(f);
  std::vector<float> best_in(static_cast<size_t>(out * in));
  const bool per_tensor = f.gran == granularity::tensor || f.named == preset::nvfp4;
  std::vector<float> best(W, W + out * in), clipped(out * in), q(out * in);
  // Best weighted error per (row, group); per-tensor formats pick one shrink for the tensor.
  std::vector<double> best_err(out * groups, INFINITY);
  const int steps = std::max(1, static_cast<int>(std::floor(max_shrink * grid + 1e-9)) + 1);
  for (int s = 0; s < steps; ++s) {
    const double shrink = 1.0 - double(s) / grid;
    for (int64_t r = 0; r < out; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        const auto [c0, c1] = group_range(f, in, g);
        float amax = 0;
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(W[r * in + c]));
        const float lim = static_cast<float>(amax * shrink);
        for (int64_t c = c0; c < c1; ++c) clipped[r * in + c] = std::clamp(W[r * in + c], -lim, lim);
      }
    fake_quantize(clipped.data(), q.data(), out, in, f);
    double tensor_err = 0;
    std::vector<double> errs(out * groups, 0);
    for (int64_t r = 0; r < out; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        const auto [c0, c1] = group_range(f, in, g);
        double e = 0;
        for (int64_t c = c0; c < c1; ++c) {
          const double d = double(W[r * in + c]) - q[r * in + c];
          e += double(importance[c]) * d * d;
        }
        errs[r * groups + g] = e;
        tensor_err += e;
      }
    if (per_tensor) {
      if (tensor_err < best_err[0]) {
        best_err[0] = tensor_err;
        best = q;
        best_in = clipped;
      }
      continue;
    }
    for (int64_t r = 0; r < out; ++r)
      for (int64_t g = 0; g < groups; ++g)
        if (errs[r * groups + g] < best_err[r * groups + g]) {
          best_err[r * groups + g] = errs[r * groups + g];
          const auto [c0, c1] = group_range(f, in, g);
          std::copy(q.begin() + r * in + c0, q.begin() + r * in + c1, best.begin() + r * in + c0);
          std::copy(clipped.begin() + r * in + c0, clipped.begin() + r * in + c1, best_in.begin() + r * in + c0);
        }
  }
  if (kquant) {  // ggml's search run on its own output may choose other scales: the codes' values
    quantized_tensor q = quantize(best_in.data(), out, in, f);
    dequantize(q, best.data());  // the same values, now with their codes
    if (packed) *packed = std::move(q);
  } else if (packed) {  // the codes, where they give the chosen values bit for bit
    quantized_tensor q = quantize(best_in.data(), out, in, f);
    dequantize(q, clipped.data());  // (clipped: scratch)
    if (std::memcmp(clipped.data(), best.data(), best.size() * sizeof(float)) == 0) *packed = std::move(q);
  }
  return best;
}

// PowerQuant as a method (methods.hpp; docs/ptq.md §4.7): data-free, each weight alone.
group_result powerquant_group(const group_job& job) {
  group_result r;
  for (const linear_weight& l : job.layers)
    r.weights.push_back(powerquant_search(l.w, l.out, job.in, job.options.weights).weights);
  return r;
}

// NUPES's learned exponent as a method (docs/ptq.md §4.7): per layer, on its input's C = X^T X / n
// (GPTQ's Hessian halved).
group_result nupes_group(const group_job& job) {
  std::vector<double> C = job.inputs->hessian->matrix();
  for (double& c : C) c /= 2;
  group_result r;
  for (const linear_weight& l : job.layers)
    r.weights.push_back(nupes_search(l.w, l.out, job.in, job.options.weights, C.data()).weights);
  return r;
}

// Importance-weighted RTN as a method (methods.hpp; docs/ptq.md §4.9): imp_j = mean x_j^2 over
// every calibration row of the group's input.
group_result imatrix_group(const group_job& job) {
  const group_inputs& gi = *job.inputs;
  std::vector<float> importance(job.in);
  for (int64_t j = 0; j < job.in; ++j)
    importance[j] = static_cast<float>(gi.sqsum[j] / std::max<int64_t>(1, gi.seen));
  group_result r;
  for (size_t i = 0; i < job.layers.size(); ++i) {
    std::optional<quantized_tensor> codes;
    r.weights.push_back(importance_rtn(job.layers[i].w, job.layers[i].out, job.in, job.options.weights,
                                       importance.data(), 20, 0.5, &codes));
    if (codes) job.packed[job.names[i]] = std::move(*codes);
  }
  return r;
}

}  // namespace lowbit::ptq

// SmoothQuant's per-channel smoothing factors (Xiao et al., ICML 2023, Eq. 4; mit-han-lab/smoothquant
// smooth.py smooth_ln_fcs; docs/ptq.md §4.2). Applying them (scale_columns / divide_columns, common.cpp)
// moves quantization difficulty from activations to weights without changing X W^T.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

std::vector<float> smoothquant_scales(const float* act_absmax, int64_t in, const std::vector<linear_weight>& layers,
                                      double alpha) {
  if (layers.empty()) throw error("smoothquant_scales needs at least one layer reading the input");
  if (!(alpha >= 0 && alpha <= 1)) throw error(fmt::format("smoothquant: alpha must be in [0, 1], got {}", alpha));
  // weight_scales_j = max over every row of every layer of |W_oj|, clamped to >= 1e-5.
  std::vector<double> wmax(static_cast<size_t>(in), 0.0);
  for (const linear_weight& l : layers)
    for (int64_t o = 0; o < l.out; ++o)
      for (int64_t j = 0; j < in; ++j)
        wmax[static_cast<size_t>(j)] = std::max(wmax[static_cast<size_t>(j)], static_cast<double>(std::fabs(l.w[o * in + j])));
  std::vector<float> s(static_cast<size_t>(in));
  for (int64_t j = 0; j < in; ++j) {
    // smooth.py clamps the weight maxima and the result, not the activation maxima: a channel
    // that never fired gets s = 1e-5 (alpha > 0), as there.
    const double w = std::max(wmax[static_cast<size_t>(j)], 1e-5);
    const double a = act_absmax[j];
    const double v = std::pow(a, alpha) / std::pow(w, 1.0 - alpha);
    s[static_cast<size_t>(j)] = static_cast<float>(std::max(v, 1e-5));
  }
  return s;
}

// SmoothQuant as a method (methods.hpp): migrate activation outliers where a norm takes the
// scale (smooth.py smooth_ln_fcs), then RTN of W diag(s); other groups are plain RTN.
group_result smoothquant_group(const group_job& job) {
  group_result r;
  if (job.where == fold::norm)
    r.scales = smoothquant_scales(job.inputs->stats->absmax.data(), job.in, job.layers, job.options.smooth_alpha);
  for (size_t i = 0; i < job.layers.size(); ++i) {
    const int64_t out = job.layers[i].out;
    std::vector<float> w(job.layers[i].w, job.layers[i].w + out * job.in);
    if (!r.scales.empty()) scale_columns(w.data(), out, job.in, r.scales.data());
    r.weights.push_back(
        rtn_with_codes(w.data(), out, job.in, job.options.weights, job.tensor_id, job.packed, job.names[i]));
  }
  return r;
}

}  // namespace lowbit::ptq

// Static activation scales calibrated on data (docs/conventions.md §42; docs/evaluation.md
// "Activation and attention plans"): the clipping value of each activation (per tensor, or per
// input channel) from the calibration windows of the data (§21), written as the static act rules
// of a plan (engine/plan.hpp) that `lowbit eval --rules` reads back.
//
// Statistics over the calibration values v (|x| of the rows of every window; per channel: of
// one column):
//   max         : max |v|
//   percentile:P: the nearest-rank order statistic, |v| sorted ascending a_1 <= ... <= a_N,
//                 a_k with k = ceil(P/100 N) (at least 1): an exact value of the data
//   mse         : of the clip candidates c_i = max|v| (1 - i/100), i = 0..79 (the `mse` scale
//                 rule's set, §7), the one whose static cast x -> s cast(x/s), s = c_i / elem_max,
//                 has the least sum of squared errors over v; ties go to the smaller i
//   llmfp4      : LLM-FP4's activation search (Liu et al., EMNLP 2023, §4.6 of docs/ptq.md),
//                 per tensor: for every E/M split of the element's bits (4 bits: M = 0..2; 8 bits:
//                 M = 2..6; the format's own first) and every candidate exponent bias b = b0 c,
//                 b0 = 2^E - log2(max|x|) + log2(2 - 2^-M) - 1, c = 0.01 + 1.19 i/100 (i = 0..100;
//                 [M] and c = 1, so max|x| itself is a candidate), the pair with the least output
//                 error of the layers reading the activation, sum over them of ||(Q(X) - X) W^T||^2
//                 (= tr(G D^T D), D = Q(X) - X, G = sum W^T W). The FP quantizer with bias b is the
//                 split's all-finite element with subnormals scaled by 2^(default bias - b), i.e.
//                 clip = maxval(b) = (2 - 2^-M) 2^(2^E - 1 - b). Pair it with `lowbit quantize
//                 --method llmfp4 --preshift`, whose pre-shifted biases fold the per-channel
//                 factors into the norms and weights, leaving the per-tensor bias searched here.
// A statistic of 0 (an activation that was all zero) gives clip 1.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/formats/format.hpp"

namespace lowbit::ptq {

enum class act_statistic { max, percentile, mse, llmfp4 };

struct act_calibration_options {
  act_statistic statistic = act_statistic::max;
  double percentile = 99.99;     // statistic == percentile: P in (0, 100]
  bool per_channel = false;      // one clip per input column (not for llmfp4)
  format element;                // the static rules' format: a bare intN or eEmM
  std::string pattern = "blk.*"; // the activations calibrated (engine/plan.hpp's names)
  int calib_samples = 8, calib_ctx = 256;
  uint64_t seed = 0;
};

// "max", "mse", "llmfp4", "percentile:P" (P in (0, 100]) into o; throws naming the bad spelling.
void parse_act_statistic(const std::string& spec, act_calibration_options& o);
std::string act_statistic_name(const act_calibration_options& o);

// The statistics (exposed for tests), over n values.
float clip_absmax(const float* v, int64_t n);
float clip_percentile(const float* v, int64_t n, double p);
float clip_mse(const float* v, int64_t n, const format& element);

// LLM-FP4's per-tensor activation search on X [n, in], with G = sum over the reading layers of
// W^T W [in, in] (row-major): the chosen element and clip, and the output error it gives.
struct llmfp4_act_choice {
  format element;
  double bias = 0;
  float clip = 0;
  double error = 0;
  double max_error = 0;  // the error with clip = max|X| in the format's own element (for reports)
};
llmfp4_act_choice llmfp4_activation_search(const float* X, int64_t n, int64_t in, const float* gram,
                                           const format& element);

struct act_calibration_site {
  std::string name;
  std::string format;
  std::vector<float> clip;
  double error = -1;  // llmfp4: the output error of the choice
};
struct act_calibration_result {
  quant_plan plan;  // base's, with one static act rule per calibrated activation first
  std::vector<act_calibration_site> sites;
  int64_t rows = 0;  // calibration rows (tokens) seen
};

// Runs the calibration windows of ids through m (its weights already as the plan has them:
// apply_weight_plan first) under base's KV and attention formats with float activations, and
// returns base with a static act rule for each activation matching o.pattern (base's own act
// rules follow, shadowed for those names).
act_calibration_result calibrate_activations(const model& m, const quant_plan& base, const std::vector<int32_t>& ids,
                                             const act_calibration_options& o,
                                             const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace lowbit::ptq

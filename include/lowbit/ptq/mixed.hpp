// Mixed-precision allocation under an average-bits budget (docs/conventions.md §22b): a linear weight's
// sensitivity to a format is the increase of the calibration NLL when that weight alone is
// quantized (round to nearest) in it; starting from every weight in the widest format, the
// cheapest moves — least NLL increase per bit saved, one weight one format narrower — are taken
// greedily until the average bits per weight meet the budget.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/ptq/pipeline.hpp"

namespace lowbit::ptq {

struct mixed_options {
  std::vector<std::string> formats;  // candidate weight formats (any order; sorted by bits here)
  double budget_bits = 0;            // target average bits per linear weight (element + scales)
  int calib_samples = 16;            // windows of the data's second half (docs/conventions.md §21)
  int calib_ctx = 256;
  uint64_t seed = 0;
};

struct mixed_layer {
  std::string name;
  std::string format;             // the format allocated
  std::vector<double> delta_nll;  // [formats] sensitivity to each format, sorted order
};

struct mixed_result {
  std::vector<std::string> formats;  // sorted by bits per weight, widest first
  std::vector<double> format_bits;
  std::vector<mixed_layer> layers;
  double average_bits = 0;
  double base_nll = 0;  // calibration NLL of the float model
  quant_plan plan;      // rules naming every linear weight's format
};

mixed_result allocate_mixed_precision(const model& m, const std::vector<int32_t>& ids,
                                      const mixed_options& o, const ptq_progress& progress = {});

}  // namespace lowbit::ptq

// Mixed-precision allocation by measured sensitivity (mixed.hpp).
#include "lowbit/ptq/mixed.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "lowbit/engine/eval.hpp"
#include "lowbit/base/error.hpp"

namespace lowbit::ptq {

namespace {

// Mean NLL of m over the calibration windows (each window scored as in evaluation).
double calibration_nll(const model& m, const std::vector<int32_t>& ids, const std::vector<int64_t>& starts, int ctx) {
  forward_session s(m, quant_plan{}, ctx);
  double sum = 0;
  int64_t n = 0;
  for (int64_t start : starts) {
    s.reset();
    const auto& logits = s.forward(ids.data() + start, ctx);
    for (int i = 0; i + 1 < ctx; ++i, ++n)
      sum += token_nll(logits.data() + int64_t(i) * m.config.vocab_size, m.config.vocab_size, ids[start + i + 1]);
  }
  return sum / double(n);
}

}  // namespace

mixed_result allocate_mixed_precision(const model& m, const std::vector<int32_t>& ids, const mixed_options& o,
                                      const ptq_progress& progress) {
  if (o.formats.size() < 2) throw error("mixed precision: give at least two candidate formats");
  mixed_result r;
  // Candidates, widest first, by their cost on this model's linear weights.
  std::vector<std::pair<double, std::string>> by_bits;
  for (const std::string& f : o.formats) {
    quant_plan p;
    p.weights = parse_format(f);
    by_bits.push_back({average_linear_bits(m, p), f});
  }
  std::sort(by_bits.begin(), by_bits.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [bits, f] : by_bits) r.formats.push_back(f), r.format_bits.push_back(bits);
  const double widest = r.format_bits.front(), narrowest = r.format_bits.back();
  if (o.budget_bits < narrowest - 1e-9 || !(o.budget_bits > 0))
    throw error(fmt::format("mixed precision: a budget of {} bits/weight is below the narrowest candidate "
                            "({}: {:.3f} bits/weight)", o.budget_bits, r.formats.back(), narrowest));

  const auto starts = calibration_windows(int64_t(ids.size()), o.calib_samples, o.calib_ctx, o.seed);
  r.base_nll = calibration_nll(m, ids, starts, o.calib_ctx);
  const auto names = m.linear_weight_names();
  const int64_t total = int64_t(names.size()) * int64_t(r.formats.size());
  int64_t done = 0;
  model work = m;
  for (const std::string& name : names) {
    mixed_layer layer{name, r.formats.front(), {}};
    tensor& t = work.get_mut(name);
    const std::vector<float> original = t.data;
    for (const std::string& f : r.formats) {  // this weight alone in f
      t.data = rtn_quantize(original.data(), t.rows(), t.cols(), parse_format(f));
      layer.delta_nll.push_back(calibration_nll(work, ids, starts, o.calib_ctx) - r.base_nll);
      if (progress) progress(++done, total);
    }
    t.data = original;
    r.layers.push_back(std::move(layer));
  }

  // Greedy: every weight starts widest; take the move with the least NLL increase per bit saved.
  std::vector<int64_t> numel;
  int64_t all = 0;
  for (const std::string& name : names) numel.push_back(m.get(name).numel()), all += numel.back();
  std::vector<size_t> level(names.size(), 0);
  auto bits_of = [&](size_t layer, size_t f) {
    return weight_bits(m.get(names[layer]), parse_format(r.formats[f]));
  };
  double bits = widest;
  while (bits > o.budget_bits + 1e-12) {
    double best = INFINITY;
    size_t best_layer = names.size();
    for (size_t i = 0; i < names.size(); ++i) {
      if (level[i] + 1 >= r.formats.size()) continue;
      const double saved = (bits_of(i, level[i]) - bits_of(i, level[i] + 1)) * numel[i] / double(all);
      if (saved <= 0) continue;
      const double cost = r.layers[i].delta_nll[level[i] + 1] - r.layers[i].delta_nll[level[i]];
      const double rate = cost / saved;
      if (rate < best) best = rate, best_layer = i;
    }
    if (best_layer == names.size()) break;
    bits -= (bits_of(best_layer, level[best_layer]) - bits_of(best_layer, level[best_layer] + 1)) *
            numel[best_layer] / double(all);
    ++level[best_layer];
  }
  r.average_bits = bits;
  for (size_t i = 0; i < names.size(); ++i) {
    r.layers[i].format = r.formats[level[i]];
    weight_rule rule{names[i], r.formats[level[i]], parse_optional_format(r.formats[level[i]])};
    r.plan.rules.push_back(rule);
  }
  return r;
}

}  // namespace lowbit::ptq

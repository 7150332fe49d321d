// FormatSpread (Sclar et al. 2023; docs/evaluation.md "FormatSpread"): the spread of a model's
// accuracy over semantically equivalent prompt formats (text/prompt_format.hpp), estimated with a
// budget by a Thompson-sampling bandit that looks for the best and then the worst format.
//   Arms = formats; reward of one model call = "this item answered correctly" (Bernoulli).
//   Prior: Beta(a, b), b = 5, a = max(p0 / (1 - p0) * b, 1.1), p0 the original format's accuracy.
//   Phase 1 (steps = budget / batch / 2): draw theta_k ~ Beta(a + s_k, b + f_k) for every arm not
//   yet evaluated on every item, evaluate the argmax on its next `batch` items. Best = highest
//   empirical accuracy. Phase 2 (as many steps, counts kept): the argmin among the arms other
//   than the best (with 2 or more arms); worst = the lowest of them, so best != worst.
//   Both are then evaluated on every item (outside the budget); spread = acc(best) - acc(worst).
//   UCB instead of Thompson: mean +- 2 sqrt(ln(1 + t) / n).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/text/prompt_format.hpp"
#include "lowbit/text/tasks.hpp"
#include "lowbit/text/tokenizer.hpp"

namespace lowbit {

struct bandit_options {
  int64_t batch = 20;     // items per model call of one arm
  int64_t budget = 40000; // items evaluated in both phases together
  uint64_t seed = 0;
  bool ucb = false;       // the UCB rule instead of Thompson sampling
  double prior_b = 5;
};

struct bandit_result {
  int best = 0, worst = 0;                 // arm indices
  std::vector<int64_t> successes, trials;  // per arm, after both phases
  int64_t steps_per_phase = 0, steps_high = 0, steps_low = 0, evaluated = 0;  // evaluated: items
};

// outcome(arm, item) -> whether `arm` answers item `item` (0 <= item < items) correctly; each arm
// goes through the items in order 0, 1, ... The caller shuffles the items.
using arm_outcome = std::function<bool(int arm, int64_t item)>;
bandit_result find_best_and_worst(int arms, int64_t items, double p0, const arm_outcome& outcome,
                                  const bandit_options& opt);

// A Beta(a, b) draw from a 64-bit generator (Marsaglia-Tsang gamma variates; the standard
// library's distributions differ between implementations, a seeded run must not).
struct beta_sampler {
  explicit beta_sampler(uint64_t seed);
  double operator()(double a, double b);
  double uniform();  // (0, 1)
 private:
  double normal();
  double gamma(double shape);
  uint64_t state_[4];
};

struct spread_options {
  int formats = 20;   // the original and formats-1 sampled
  bool enumerate = false;
  bandit_options bandit;
};

struct spread_result {
  std::vector<prompt_format> formats;
  bandit_result bandit;
  int64_t n = 0;
  double original_acc = 0, best_acc = 0, worst_acc = 0, spread = 0;
  double best_stderr = 0, worst_stderr = 0, original_stderr = 0;
  int64_t item_evaluations = 0;  // with the original's and the final full evaluations
  double seconds = 0;
};

// FormatSpread of a model (its weight plan applied) on `items`: the original format on every
// item gives p0, then the bandit, then the best and worst on every item. progress(done, total)
// in items evaluated.
spread_result format_spread(const model& m, const quant_plan& plan, const tokenizer& tok,
                            const std::vector<task_item>& items, const spread_options& opt,
                            const std::function<void(int64_t, int64_t)>& progress = {});

nlohmann::json spread_result_json(const spread_result& r, task_kind kind);

}  // namespace lowbit

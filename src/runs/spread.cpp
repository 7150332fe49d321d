// FormatSpread (spread.hpp).
#include "lowbit/engine/train.hpp"
#include "lowbit/runs/spread.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <random>

#include <fmt/format.h>

#include "lowbit/base/draws.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/runs/task_eval.hpp"

namespace lowbit {

// ---- Beta draws ---------------------------------------------------------------------------------
namespace {

// splitmix64: the golden-ratio step, then the finalizer the trainer's streams use (engine/train.hpp).
uint64_t splitmix64(uint64_t& x) { return mix64(x += 0x9E3779B97F4A7C15ull); }

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

beta_sampler::beta_sampler(uint64_t seed) {
  for (uint64_t& s : state_) s = splitmix64(seed);
}

double beta_sampler::uniform() {  // xoshiro256** (Blackman, Vigna 2018), 53 bits, never 0
  const uint64_t result = rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0], state_[3] ^= state_[1], state_[1] ^= state_[2], state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = rotl(state_[3], 45);
  return ((result >> 11) + 0.5) * 0x1.0p-53;
}

double beta_sampler::normal() {  // Box-Muller
  const double u1 = uniform(), u2 = uniform();
  return std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);
}

double beta_sampler::gamma(double shape) {
  // Marsaglia and Tsang (2000); shape < 1 via Gamma(shape + 1) * U^(1/shape).
  if (shape < 1) return gamma(shape + 1) * std::pow(uniform(), 1 / shape);
  const double d = shape - 1.0 / 3, c = 1 / std::sqrt(9 * d);
  for (;;) {
    double x, v;
    do {
      x = normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = uniform();
    if (u < 1 - 0.0331 * x * x * x * x || std::log(u) < 0.5 * x * x + d * (1 - v + std::log(v))) return d * v;
  }
}

double beta_sampler::operator()(double a, double b) {
  const double x = gamma(a), y = gamma(b);
  return x / (x + y);
}

// ---- the bandit ---------------------------------------------------------------------------------
bandit_result find_best_and_worst(int arms, int64_t items, double p0, const arm_outcome& outcome,
                                  const bandit_options& opt) {
  if (arms < 1) throw error("spread: no formats");
  if (items < 1) throw error("spread: no items");
  if (opt.batch < 1) throw error(fmt::format("spread: --batch {} must be positive", opt.batch));
  if (opt.budget < 2 * opt.batch)
    throw error(fmt::format("spread: --budget {} is less than two batches of {}", opt.budget, opt.batch));
  // The prior's mean is p0 (Sclar et al.: b = 5, a = max(p0 / (1 - p0) b, 1.1)).
  const double p = std::clamp(p0, 0.0, 1.0 - 1e-9);
  const double b = opt.prior_b, a = std::max(p / (1 - p) * b, 1.1);
  bandit_result r;
  r.successes.assign(arms, 0);
  r.trials.assign(arms, 0);
  r.steps_per_phase = opt.budget / opt.batch / 2;
  beta_sampler draw(opt.seed);
  int64_t t = 0;
  // excluded: the best arm while looking for the worst (with 2 or more arms), so that the two
  // differ even when a small budget evaluated one arm only in the first phase.
  auto run_phase = [&](bool highest, int excluded) {
    int64_t steps = 0;
    for (; steps < r.steps_per_phase; ++steps) {
      int pick = -1;
      double pick_value = 0;
      for (int k = 0; k < arms; ++k) {
        if (k == excluded || r.trials[k] >= items) continue;  // excluded, or fully evaluated
        double v;
        if (opt.ucb) {
          v = r.trials[k] == 0 ? std::numeric_limits<double>::infinity()
                               : double(r.successes[k]) / r.trials[k] * (highest ? 1 : -1) +
                                     2 * std::sqrt(std::log(1.0 + t) / r.trials[k]);
        } else {
          const double theta = draw(a + r.successes[k], b + r.trials[k] - r.successes[k]);
          v = highest ? theta : -theta;
        }
        if (pick < 0 || v > pick_value) pick = k, pick_value = v;
      }
      if (pick < 0) break;  // every arm has seen every item
      const int64_t end = std::min(items, r.trials[pick] + opt.batch);
      for (int64_t i = r.trials[pick]; i < end; ++i) r.successes[pick] += outcome(pick, i);
      r.evaluated += end - r.trials[pick];
      r.trials[pick] = end;
      ++t;
    }
    // The empirical extreme among the arms evaluated (ties: the lower index).
    int chosen = -1;
    for (int k = 0; k < arms; ++k) {
      if (k == excluded || r.trials[k] == 0) continue;
      const double m = double(r.successes[k]) / r.trials[k];
      if (chosen < 0) { chosen = k; continue; }
      const double mc = double(r.successes[chosen]) / r.trials[chosen];
      if (highest ? m > mc : m < mc) chosen = k;
    }
    return std::pair<int, int64_t>(chosen, steps);
  };
  std::tie(r.best, r.steps_high) = run_phase(true, -1);
  std::tie(r.worst, r.steps_low) = run_phase(false, arms >= 2 ? r.best : -1);
  return r;
}

// ---- FormatSpread on a model ---------------------------------------------------------------------
spread_result format_spread(const model& m, const quant_plan& plan, const tokenizer& tok,
                            const std::vector<task_item>& items_in, const spread_options& opt,
                            const std::function<void(int64_t, int64_t)>& progress) {
  if (items_in.empty()) throw error("spread: no items");
  const task_kind kind = items_in[0].kind;
  int options = 0;
  for (const task_item& it : items_in) {
    if (it.kind != kind) throw error(fmt::format("spread: item {} is '{}' among '{}' items", it.id,
                                                 task_kind_name(it.kind), task_kind_name(kind)));
    options = std::max(options, static_cast<int>(it.choices.size()));
  }
  if (opt.enumerate && kind != task_kind::ending)
    throw error("spread: --enumerate-options lists multiple-choice options; a lastword task has none");
  const auto t0 = std::chrono::steady_clock::now();
  spread_result r;
  r.formats = sample_formats(opt.formats, opt.bandit.seed, opt.enumerate, kind, options);
  r.n = static_cast<int64_t>(items_in.size());
  // One item order for every arm, shuffled with the seed (each arm reads it from the start).
  std::vector<const task_item*> items;
  for (const task_item& it : items_in) items.push_back(&it);
  std::mt19937_64 rng(opt.bandit.seed ^ 0x5eed5eedull);
  shuffle_in_place(items, rng);
  task_scorer scorer(m, plan, tok);
  std::map<std::pair<int, int64_t>, bool> cache;  // (format, item) -> correct
  const int64_t planned = r.n * 3 + opt.bandit.budget;
  auto outcome = [&](int arm, int64_t i) {
    const auto key = std::make_pair(arm, i);
    if (auto f = cache.find(key); f != cache.end()) return f->second;
    const bool ok = scorer.score(render_item(r.formats[arm], *items[i]), *items[i]).correct;
    cache[key] = ok;
    ++r.item_evaluations;
    if (progress) progress(std::min(r.item_evaluations, planned), planned);
    return ok;
  };
  auto full_accuracy = [&](int arm) {
    int64_t c = 0;
    for (int64_t i = 0; i < r.n; ++i) c += outcome(arm, i);
    return double(c) / r.n;
  };
  r.original_acc = full_accuracy(0);
  r.bandit = find_best_and_worst(static_cast<int>(r.formats.size()), r.n, r.original_acc, outcome, opt.bandit);
  r.best_acc = full_accuracy(r.bandit.best);
  r.worst_acc = full_accuracy(r.bandit.worst);
  r.spread = r.best_acc - r.worst_acc;
  r.best_stderr = binomial_stderr(r.best_acc, r.n);
  r.worst_stderr = binomial_stderr(r.worst_acc, r.n);
  r.original_stderr = binomial_stderr(r.original_acc, r.n);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (progress) progress(planned, planned);
  return r;
}

nlohmann::json spread_result_json(const spread_result& r, task_kind kind) {
  nlohmann::json arms = nlohmann::json::array();
  for (size_t k = 0; k < r.formats.size(); ++k)
    arms.push_back({{"format", format_json(r.formats[k], kind)}, {"trials", r.bandit.trials[k]},
                    {"successes", r.bandit.successes[k]}});
  return {{"n", r.n},
          {"formats", r.formats.size()},
          {"original", {{"acc", r.original_acc}, {"acc_stderr", r.original_stderr}, {"format", format_json(r.formats[0], kind)}}},
          {"best", {{"arm", r.bandit.best}, {"acc", r.best_acc}, {"acc_stderr", r.best_stderr},
                    {"format", format_json(r.formats[r.bandit.best], kind)}}},
          {"worst", {{"arm", r.bandit.worst}, {"acc", r.worst_acc}, {"acc_stderr", r.worst_stderr},
                     {"format", format_json(r.formats[r.bandit.worst], kind)}}},
          {"spread", r.spread},
          {"steps_per_phase", r.bandit.steps_per_phase},
          {"steps", {r.bandit.steps_high, r.bandit.steps_low}},
          {"bandit_item_evaluations", r.bandit.evaluated},
          {"item_evaluations", r.item_evaluations},
          {"seconds", r.seconds},
          {"arms", arms}};
}

}  // namespace lowbit

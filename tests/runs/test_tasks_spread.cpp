// Task accuracy (runs/task_eval.hpp) and FormatSpread's bandit (runs/spread.hpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/runs/spread.hpp"
#include "lowbit/runs/task_eval.hpp"
#include "tests/data.hpp"

namespace {

using namespace lowbit;

// ---- the scorer against an independent computation -------------------------------------------

double log_prob(const float* row, int vocab, int target) {
  double mx = row[0], sum = 0;
  for (int v = 1; v < vocab; ++v) mx = std::max(mx, double(row[v]));
  for (int v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - mx);
  return double(row[target]) - mx - std::log(sum);
}

TEST(TaskScorer, OptionLogLikelihoodIsTheSumOfItsTokensLogProbs) {
  const std::string mpath = lowbit_test::data_path("llama2c/stories260K.bin");
  const std::string tpath = lowbit_test::data_path("llama2c/tok512.bin");
  ASSERT_TRUE(lowbit_test::have_data(mpath));
  ASSERT_TRUE(lowbit_test::have_data(tpath));
  const model m = load_model(mpath);
  const auto tok = load_tokenizer(tpath);
  task_item it;
  it.kind = task_kind::ending;
  it.context = "Once upon a time, there was a little girl named Lily. She loved to play outside.";
  it.choices = {"She was very happy.", "The dog barked at the big red ball.", "They went home.", "Lily smiled."};
  it.gold = 0;
  task_scorer scorer(m, quant_plan{}, *tok);
  for (const rendered_item& r : {render_plain(it), render_item(original_format(false), it)}) {
    const item_score s = scorer.score(r, it);
    ASSERT_EQ(s.loglik.size(), 4u);
    int best = 0, best_norm = 0;
    for (size_t i = 0; i < 4; ++i) {
      // lm-eval's split, the prompt's trailing space moved into the continuation.
      std::string prompt = r.prompt, cont = r.continuations[i];
      while (!prompt.empty() && prompt.back() == ' ') cont.insert(cont.begin(), ' '), prompt.pop_back();
      const auto whole = tok->encode(prompt + cont, true, false);
      const size_t n_ctx = tok->encode(prompt, true, false).size();
      forward_session fresh(m, quant_plan{}, 256);
      const std::vector<float> logits = fresh.forward(whole.data(), static_cast<int>(whole.size()));
      double expected = 0;
      for (size_t j = n_ctx; j < whole.size(); ++j) expected += log_prob(logits.data() + (j - 1) * 512, 512, whole[j]);
      EXPECT_NEAR(s.loglik[i], expected, 1e-4 * std::abs(expected)) << i << " " << r.prompt;
      if (s.loglik[i] > s.loglik[best]) best = static_cast<int>(i);
      if (s.loglik[i] / it.choices[i].size() > s.loglik[best_norm] / it.choices[best_norm].size())
        best_norm = static_cast<int>(i);
    }
    EXPECT_EQ(s.correct, best == it.gold);
    EXPECT_EQ(s.correct_norm, best_norm == it.gold);
  }
}

TEST(TaskScorer, StandardErrorIsLmEvals) {
  EXPECT_DOUBLE_EQ(binomial_stderr(0.25, 101), std::sqrt(0.25 * 0.75 / 100));
  EXPECT_DOUBLE_EQ(binomial_stderr(0.5, 1), 0.0);
}

// ---- the bandit on planted Bernoulli arms ------------------------------------------------------

// outcomes[arm][item] ~ Bernoulli(means[arm]), drawn here with the standard library.
std::vector<std::vector<bool>> bernoulli_table(const std::vector<double>& means, int64_t items, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<bool>> t(means.size(), std::vector<bool>(items));
  for (size_t k = 0; k < means.size(); ++k)
    for (int64_t i = 0; i < items; ++i) t[k][i] = (rng() >> 11) * 0x1.0p-53 < means[k];
  return t;
}

double full_accuracy(const std::vector<bool>& row) {
  return double(std::count(row.begin(), row.end(), true)) / row.size();
}

TEST(Bandit, FindsThePlantedBestAndWorstArms) {
  // 12 arms around 0.5, one planted best (0.85) and one planted worst (0.15).
  std::vector<double> means = {0.45, 0.5, 0.55, 0.85, 0.5, 0.4, 0.6, 0.15, 0.5, 0.45, 0.55, 0.5};
  for (bool ucb : {false, true}) {
    for (uint64_t seed : {1, 2, 3}) {
      const auto table = bernoulli_table(means, 1000, 100 + seed);
      bandit_options o;
      o.batch = 20, o.budget = 4000, o.seed = seed, o.ucb = ucb;
      int64_t calls = 0;
      const bandit_result r = find_best_and_worst(static_cast<int>(means.size()), 1000, 0.5,
                                                  [&](int arm, int64_t i) { ++calls; return table[arm][i]; }, o);
      EXPECT_EQ(r.best, 3) << "seed " << seed << " ucb " << ucb;
      EXPECT_EQ(r.worst, 7) << "seed " << seed << " ucb " << ucb;
      EXPECT_EQ(r.steps_per_phase, 100);
      EXPECT_LE(calls, o.budget);
      EXPECT_EQ(calls, r.evaluated);
      int64_t trials = 0;
      for (int64_t t : r.trials) trials += t;
      EXPECT_EQ(trials, calls);
    }
  }
}

TEST(Bandit, IdenticalArmsGiveSpreadNearZero) {
  bandit_options o;
  o.batch = 20, o.budget = 2000, o.seed = 4;
  // Equal means, independent draws: the spread of full evaluations is sampling noise only,
  // |acc_best - acc_worst| within 4 standard errors of a difference (4 sqrt(2 p (1 - p) / n)).
  const int64_t n = 4000;
  const auto table = bernoulli_table(std::vector<double>(10, 0.6), n, 10);
  const bandit_result r = find_best_and_worst(10, n, 0.6, [&](int arm, int64_t i) { return table[arm][i]; }, o);
  const double spread = full_accuracy(table[r.best]) - full_accuracy(table[r.worst]);
  EXPECT_LT(std::abs(spread), 4 * std::sqrt(2 * 0.6 * 0.4 / n));
}

TEST(Bandit, StepsAndPriorFollowThePaper) {
  bandit_options o;  // the paper's defaults: batch 20, budget 40000 -> 1000 steps a phase
  const bandit_result r = find_best_and_worst(2, 5, 0.5, [](int, int64_t) { return true; }, o);
  EXPECT_EQ(r.steps_per_phase, 1000);
  EXPECT_EQ(r.steps_high, 2);  // one step per arm fully evaluates it (5 items, batch 20)
  EXPECT_EQ(r.steps_low, 0);
  EXPECT_THROW(find_best_and_worst(2, 5, 0.5, [](int, int64_t) { return true; }, bandit_options{.batch = 0}), error);
  EXPECT_THROW(find_best_and_worst(2, 5, 0.5, [](int, int64_t) { return true; }, bandit_options{.batch = 20, .budget = 30}), error);
}

TEST(Bandit, BestAndWorstDifferWithTwoOrMoreArms) {
  // The smallest budget (one step a phase): UCB evaluates arm 0 in the first phase and arm 1 in
  // the second; every answer is wrong, so both have accuracy 0 and the lower index would win the
  // tie for the worst too. The worst is looked for among the other arms: arm 1.
  bandit_options o;
  o.batch = 4, o.budget = 8, o.ucb = true;
  const auto wrong = [](int, int64_t) { return false; };
  bandit_result r = find_best_and_worst(3, 100, 0.5, wrong, o);
  EXPECT_EQ(r.best, 0);
  EXPECT_EQ(r.worst, 1);
  // Thompson sampling at that budget, on arms of random quality: never the same arm.
  for (uint64_t seed = 0; seed < 40; ++seed) {
    const auto table = bernoulli_table({0.2, 0.5, 0.8}, 100, seed);
    o.ucb = false, o.seed = seed;
    r = find_best_and_worst(3, 100, 0.5, [&](int arm, int64_t i) { return table[arm][i]; }, o);
    EXPECT_NE(r.best, r.worst) << "seed " << seed;
  }
  // One arm: it is both.
  r = find_best_and_worst(1, 100, 0.5, wrong, o);
  EXPECT_EQ(r.best, 0);
  EXPECT_EQ(r.worst, 0);
}

TEST(Bandit, BetaDrawsHaveTheBetaMoments) {
  beta_sampler draw(5);
  for (auto [a, b] : {std::pair{1.1, 5.0}, std::pair{7.5, 5.0}, std::pair{0.5, 0.5}}) {
    const int n = 200000;
    double sum = 0, sq = 0;
    for (int i = 0; i < n; ++i) {
      const double x = draw(a, b);
      ASSERT_GT(x, 0.0);
      ASSERT_LT(x, 1.0);
      sum += x, sq += x * x;
    }
    const double mean = sum / n, var = sq / n - mean * mean;
    const double want_mean = a / (a + b), want_var = a * b / ((a + b) * (a + b) * (a + b + 1));
    EXPECT_NEAR(mean, want_mean, 5 * std::sqrt(want_var / n)) << a << "," << b;
    EXPECT_NEAR(var, want_var, 0.02 * want_var) << a << "," << b;
  }
}

}  // namespace

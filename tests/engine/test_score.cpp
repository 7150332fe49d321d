// Continuation scoring (engine/score.hpp) against the model's own logits of the whole sequence.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/score.hpp"
#include "lowbit/io/model_io.hpp"
#include "tests/data.hpp"

namespace {

using namespace lowbit;

// log p(target | row) in float64, written here (not the engine's token_nll).
double log_prob(const float* row, int vocab, int target) {
  double mx = row[0];
  for (int v = 1; v < vocab; ++v) mx = std::max(mx, double(row[v]));
  double sum = 0;
  for (int v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - mx);
  return double(row[target]) - mx - std::log(sum);
}

TEST(Score, LogLikelihoodIsTheSumOverTheWholeSequencesLogits) {
  const std::string path = lowbit_test::data_path("llama2c/stories260K.bin");
  ASSERT_TRUE(lowbit_test::have_data(path));
  const model m = load_model(path);
  const int V = m.config.vocab_size;
  const std::vector<int32_t> context = {1, 403, 407, 261, 378, 275, 260, 1139 % V, 267, 301};
  const std::vector<std::vector<int32_t>> conts = {{290}, {349, 411, 265, 321}, {267, 301, 445}, {400, 285}};
  for (const quant_plan& plan : {quant_plan{}, make_quant_plan("", "", "int8/c", "e4m3fn/c")}) {
    forward_session s(m, plan, 64);
    const auto scores = score_continuations(s, context, conts);
    ASSERT_EQ(scores.size(), conts.size());
    for (size_t i = 0; i < conts.size(); ++i) {
      // Independent: one forward of context + continuation in a fresh session.
      std::vector<int32_t> whole = context;
      whole.insert(whole.end(), conts[i].begin(), conts[i].end());
      forward_session fresh(m, plan, 64);
      const std::vector<float> logits = fresh.forward(whole.data(), static_cast<int>(whole.size()));
      double expected = 0;
      bool greedy = true;
      for (size_t j = 0; j < conts[i].size(); ++j) {
        const float* row = logits.data() + (context.size() - 1 + j) * V;
        expected += log_prob(row, V, conts[i][j]);
        greedy = greedy && std::max_element(row, row + V) - row == conts[i][j];
      }
      // Scoring runs the continuation after a cached context, the fresh session the whole sequence
      // at once: OpenBLAS may take another kernel for each shape, so the float sums differ in their
      // last bits, and under int8 activations a value that sits on a rounding midpoint can take
      // the next code (seen: 1.4e-4 relative on an AVX2 machine). A missing or misplaced token's
      // log-probability is off by whole units.
      const double tol = plan.describe() == quant_plan{}.describe() ? 1e-4 : 1e-3;
      EXPECT_NEAR(scores[i].loglik, expected, tol * std::max(1.0, std::abs(expected))) << plan.describe() << " " << i;
      EXPECT_EQ(scores[i].greedy, greedy);
      EXPECT_EQ(scores[i].tokens, static_cast<int>(conts[i].size()));
    }
  }
}

TEST(Score, GreedyContinuationIsRecognised) {
  const std::string path = lowbit_test::data_path("llama2c/stories260K.bin");
  ASSERT_TRUE(lowbit_test::have_data(path));
  const model m = load_model(path);
  const int V = m.config.vocab_size;
  std::vector<int32_t> context = {1, 403, 407, 261};
  // Greedy decoding, one token at a time, in a separate session.
  forward_session g(m, quant_plan{}, 64);
  std::vector<int32_t> path_tokens;
  const std::vector<float>* logits = &g.forward(context.data(), static_cast<int>(context.size()));
  for (int k = 0; k < 5; ++k) {
    const float* row = logits->data() + (logits->size() / V - 1) * V;
    const int32_t next = static_cast<int32_t>(std::max_element(row, row + V) - row);
    path_tokens.push_back(next);
    logits = &g.forward(&next, 1);
  }
  std::vector<int32_t> off = path_tokens;
  off[3] = (off[3] + 1) % V;
  forward_session s(m, quant_plan{}, 64);
  const auto scores = score_continuations(s, context, {path_tokens, off});
  EXPECT_TRUE(scores[0].greedy);
  EXPECT_FALSE(scores[1].greedy);
  EXPECT_GT(scores[0].loglik, scores[1].loglik);
  EXPECT_THROW(score_continuations(s, {}, {{1}}), std::exception);
  EXPECT_THROW(score_continuations(s, context, {{}}), std::exception);
}

}  // namespace

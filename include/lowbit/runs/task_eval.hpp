// Task accuracy as lm-evaluation-harness computes it (docs/evaluation.md "Tasks"):
//   multiple choice (ending): every option's log-likelihood given the prompt; acc = [argmax_i
//     loglik_i == gold], acc_norm = [argmax_i loglik_i / bytes(choice_i) == gold] (lm-eval's
//     length normalisation by the option's length in bytes);
//   last word (lastword): acc = the target's tokens are each the argmax (greedy decoding writes
//     exactly the word, LAMBADA); also its log-likelihood.
// Tokenization follows lm-eval: whole = encode(prompt + continuation) with BOS, the context is
// the first len(encode(prompt)) tokens of it, the continuation the rest; whitespace at the end of
// the prompt moves to the continuation's start. A sequence longer than the model's context loses
// context tokens from the left (BOS kept), as lm-eval truncates.
// Standard errors as lm-eval's: sqrt(p (1 - p) / (n - 1)).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/text/prompt_format.hpp"
#include "lowbit/text/tasks.hpp"
#include "lowbit/text/tokenizer.hpp"

namespace lowbit {

struct item_score {
  std::vector<double> loglik;  // per choice
  bool correct = false, correct_norm = false;
  bool greedy = false;         // lastword: exact match
  bool truncated = false;
};

// Scores items rendered one way on one model (the weight plan already applied to the model).
class task_scorer {
 public:
  task_scorer(const model& m, const quant_plan& plan, const tokenizer& tok);
  item_score score(const rendered_item& r, const task_item& item);

 private:
  forward_session& session_for(int tokens);
  const model& m_;
  const tokenizer& tok_;
  quant_plan plan_;
  std::unique_ptr<forward_session> session_;
  int capacity_ = 0;
};

struct task_accuracy {
  std::string kind;
  int64_t n = 0, truncated = 0;
  double acc = 0, acc_stderr = 0;
  double acc_norm = 0, acc_norm_stderr = 0;  // ending only
  double mean_loglik = 0;                    // lastword: of the target
  double seconds = 0;
};

// sqrt(p (1 - p) / (n - 1)), 0 when n < 2.
double binomial_stderr(double p, int64_t n);

// Every item, rendered plainly (render_plain) or under `format`; progress(done, total) per item.
task_accuracy score_task(const model& m, const quant_plan& plan, const tokenizer& tok,
                         const std::vector<task_item>& items, const prompt_format* format = nullptr,
                         const std::function<void(int64_t, int64_t)>& progress = {});

nlohmann::json task_accuracy_json(const task_accuracy& a);

}  // namespace lowbit

// Continuation scoring, as lm-evaluation-harness's loglikelihood requests (docs/evaluation.md
// "Tasks"): the log-likelihood of a continuation's tokens given a context, and whether greedy
// decoding would have produced exactly them (lm-eval's is_greedy, LAMBADA's exact match).
//   loglik = sum_{j < m} log p(c_j | context, c_0..c_{j-1}),  greedy = all_j argmax == c_j.
// The context runs once; each continuation runs on the context's KV cache (forward_session::rewind).
#pragma once

#include <cstdint>
#include <vector>

#include "lowbit/engine/forward.hpp"

namespace lowbit {

struct continuation_score {
  double loglik = 0;    // natural log, float64 accumulation of log-softmax per token
  bool greedy = false;  // every continuation token is the argmax of its row (first index on ties)
  int tokens = 0;       // continuation length
};

// context: >= 1 token (BOS first, as the model was trained); each continuation >= 1 token.
// The session is reset first and must hold context.size() + the longest continuation - 1 tokens.
// results[i] belongs to continuations[i].
std::vector<continuation_score> score_continuations(forward_session& session,
                                                    const std::vector<int32_t>& context,
                                                    const std::vector<std::vector<int32_t>>& continuations);

}  // namespace lowbit

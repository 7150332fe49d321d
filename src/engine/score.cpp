// Continuation scoring (score.hpp).
#include "lowbit/engine/score.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/eval.hpp"

namespace lowbit {

namespace {

// The log-probability of `target` under one row of logits, and whether it is the row's argmax.
void add_token(const float* row, int vocab, int target, continuation_score& s) {
  s.loglik -= token_nll(row, vocab, target);
  if (std::max_element(row, row + vocab) - row != target) s.greedy = false;
}

}  // namespace

std::vector<continuation_score> score_continuations(forward_session& session,
                                                    const std::vector<int32_t>& context,
                                                    const std::vector<std::vector<int32_t>>& continuations) {
  if (context.empty()) throw error("score: the context is empty (it needs at least BOS)");
  for (size_t i = 0; i < continuations.size(); ++i)
    if (continuations[i].empty()) throw error(fmt::format("score: continuation {} has no tokens", i));
  session.reset();
  const int L = static_cast<int>(context.size());
  const std::vector<float>& ctx_logits = session.forward(context.data(), L);
  const int64_t vocab = static_cast<int64_t>(ctx_logits.size()) / L;
  // The last context row predicts every continuation's first token; later forwards overwrite it.
  const std::vector<float> last(ctx_logits.end() - vocab, ctx_logits.end());
  std::vector<continuation_score> out(continuations.size());
  for (size_t i = 0; i < continuations.size(); ++i) {
    const std::vector<int32_t>& c = continuations[i];
    continuation_score& s = out[i];
    s.greedy = true;
    s.tokens = static_cast<int>(c.size());
    add_token(last.data(), static_cast<int>(vocab), c[0], s);
    if (c.size() > 1) {
      session.rewind(L);
      // Rows j of this forward (token c_j at position L + j) predict c_{j+1}.
      const std::vector<float>& logits = session.forward(c.data(), static_cast<int>(c.size()) - 1);
      for (size_t j = 0; j + 1 < c.size(); ++j)
        add_token(logits.data() + int64_t(j) * vocab, static_cast<int>(vocab), c[j + 1], s);
    }
  }
  return out;
}

}  // namespace lowbit

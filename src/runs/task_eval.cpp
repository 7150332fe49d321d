// Task accuracy (task_eval.hpp).
#include "lowbit/runs/task_eval.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/score.hpp"

namespace lowbit {

namespace {

struct split_sequence {
  std::vector<int32_t> context, continuation;
  bool truncated = false;
};

// The prompt of an item, split once for all its options: trailing whitespace belongs to the
// continuation (lm-eval), so a space is not a lone token at the end of the context.
struct prompt_split {
  std::string kept, tail;
  size_t tokens = 0;  // len(encode(kept))
};
prompt_split split_prompt(const tokenizer& tok, const std::string& prompt) {
  size_t keep = prompt.size();
  while (keep > 0 && std::isspace(static_cast<unsigned char>(prompt[keep - 1]))) --keep;
  prompt_split p{prompt.substr(0, keep), prompt.substr(keep), 0};
  p.tokens = tok.encode(p.kept, true, false).size();
  return p;
}

// lm-eval's split: the context is the first len(encode(prompt)) tokens of encode(prompt + cont).
split_sequence tokenize_pair(const tokenizer& tok, const prompt_split& prompt, const std::string& cont, int max_len) {
  const std::vector<int32_t> whole = tok.encode(prompt.kept + prompt.tail + cont, true, false);
  const size_t n_ctx = std::min(prompt.tokens, whole.size() - 1);
  split_sequence s;
  s.context.assign(whole.begin(), whole.begin() + n_ctx);
  s.continuation.assign(whole.begin() + n_ctx, whole.end());
  if (static_cast<int>(s.continuation.size()) >= max_len)
    throw error(fmt::format("task: a continuation of {} tokens does not fit the model's context of {}",
                            s.continuation.size(), max_len));
  const int64_t over = static_cast<int64_t>(s.context.size() + s.continuation.size()) - max_len;
  if (over > 0) {  // drop the oldest context tokens after BOS
    s.context.erase(s.context.begin() + 1, s.context.begin() + 1 + over);
    s.truncated = true;
  }
  return s;
}

}  // namespace

double binomial_stderr(double p, int64_t n) { return n < 2 ? 0.0 : std::sqrt(p * (1 - p) / double(n - 1)); }

task_scorer::task_scorer(const model& m, const quant_plan& plan, const tokenizer& tok) : m_(m), tok_(tok) {
  if (tok.vocab_size() > m.config.vocab_size)
    throw error(fmt::format("task: the tokenizer's {} tokens exceed the model's vocabulary of {}",
                            tok.vocab_size(), m.config.vocab_size));
  plan_ = plan;
}

forward_session& task_scorer::session_for(int tokens) {
  // Sized for the longest sequence so far (doubling), not for the model's whole context: a
  // long-context model's KV cache would be gigabytes for items of a few hundred tokens.
  if (!session_ || capacity_ < tokens) {
    capacity_ = std::min(m_.config.max_seq_len, std::max({tokens, 2 * capacity_, 256}));
    session_ = std::make_unique<forward_session>(m_, plan_, capacity_);
  }
  return *session_;
}

item_score task_scorer::score(const rendered_item& r, const task_item& item) {
  const int max_len = m_.config.max_seq_len;
  std::vector<split_sequence> seqs;
  const prompt_split prompt = split_prompt(tok_, r.prompt);
  for (const std::string& c : r.continuations) seqs.push_back(tokenize_pair(tok_, prompt, c, max_len));
  item_score out;
  out.loglik.assign(seqs.size(), 0);
  // Options whose contexts tokenize alike share one context forward.
  std::map<std::vector<int32_t>, std::vector<size_t>> groups;
  for (size_t i = 0; i < seqs.size(); ++i) {
    groups[seqs[i].context].push_back(i);
    out.truncated = out.truncated || seqs[i].truncated;
  }
  std::vector<continuation_score> scores(seqs.size());
  for (const auto& [context, members] : groups) {
    std::vector<std::vector<int32_t>> conts;
    for (size_t i : members) conts.push_back(seqs[i].continuation);
    size_t longest = 0;
    for (const auto& c : conts) longest = std::max(longest, c.size());
    const auto s = score_continuations(session_for(static_cast<int>(context.size() + longest)), context, conts);
    for (size_t k = 0; k < members.size(); ++k) scores[members[k]] = s[k];
  }
  for (size_t i = 0; i < seqs.size(); ++i) out.loglik[i] = scores[i].loglik;
  if (item.kind == task_kind::lastword) {
    out.greedy = scores[0].greedy;
    out.correct = out.correct_norm = out.greedy;
    return out;
  }
  size_t best = 0, best_norm = 0;
  auto norm = [&](size_t i) { return out.loglik[i] / double(std::max<size_t>(1, item.choices[i].size())); };
  for (size_t i = 1; i < seqs.size(); ++i) {
    if (out.loglik[i] > out.loglik[best]) best = i;
    if (norm(i) > norm(best_norm)) best_norm = i;
  }
  out.correct = static_cast<int>(best) == item.gold;
  out.correct_norm = static_cast<int>(best_norm) == item.gold;
  return out;
}

task_accuracy score_task(const model& m, const quant_plan& plan, const tokenizer& tok,
                         const std::vector<task_item>& items, const prompt_format* format,
                         const std::function<void(int64_t, int64_t)>& progress) {
  if (items.empty()) throw error("task: no items");
  for (const task_item& it : items)
    if (it.kind != items[0].kind)
      throw error(fmt::format("task: item {} is '{}' among '{}' items; one kind per task", it.id,
                              task_kind_name(it.kind), task_kind_name(items[0].kind)));
  task_scorer scorer(m, plan, tok);
  task_accuracy a;
  a.kind = task_kind_name(items[0].kind);
  a.n = static_cast<int64_t>(items.size());
  int64_t correct = 0, correct_norm = 0;
  double loglik = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < items.size(); ++i) {
    const rendered_item r = format ? render_item(*format, items[i]) : render_plain(items[i]);
    const item_score s = scorer.score(r, items[i]);
    correct += s.correct, correct_norm += s.correct_norm, a.truncated += s.truncated;
    loglik += s.loglik[items[i].gold];
    if (progress) progress(i + 1, a.n);
  }
  a.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  a.acc = double(correct) / a.n;
  a.acc_stderr = binomial_stderr(a.acc, a.n);
  a.acc_norm = double(correct_norm) / a.n;
  a.acc_norm_stderr = binomial_stderr(a.acc_norm, a.n);
  a.mean_loglik = loglik / a.n;
  return a;
}

nlohmann::json task_accuracy_json(const task_accuracy& a) {
  nlohmann::json j = {{"kind", a.kind}, {"n", a.n}, {"acc", a.acc}, {"acc_stderr", a.acc_stderr},
                      {"truncated", a.truncated}, {"seconds", a.seconds}};
  if (a.kind == "ending") j["acc_norm"] = a.acc_norm, j["acc_norm_stderr"] = a.acc_norm_stderr;
  j["mean_gold_loglik"] = a.mean_loglik;
  return j;
}

}  // namespace lowbit

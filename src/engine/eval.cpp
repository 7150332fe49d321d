// Perplexity and KL-divergence evaluation under the protocol of eval.hpp (docs/conventions.md §15).
#include "lowbit/engine/eval.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/softmax.hpp"
#include "lowbit/kernels/threads.hpp"

namespace lowbit {

namespace {

// log-softmax of one row into out (float64).
void log_softmax(const float* logits, int vocab, std::vector<double>& out) {
  out.resize(vocab);
  const double lse = log_sum_exp(logits, vocab);
  for (int v = 0; v < vocab; ++v) out[v] = double(logits[v]) - lse;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

void mean_and_stderr(const std::vector<double>& v, double& mean, double& se) {
  mean = 0, se = 0;
  if (v.empty()) return;
  for (double x : v) mean += x;
  mean /= v.size();
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  var /= v.size();
  se = std::sqrt(var / v.size());
}

// The position in the evaluated tokens of the i-th scored token: windows of ctx tokens score
// ctx - 1 each, token j of a window predicting token j + 1.
int64_t nll_position(int64_t i, int ctx) { return i / (ctx - 1) * ctx + i % (ctx - 1) + 1; }

}  // namespace

double token_nll(const float* logits, int vocab, int target) {
  return log_sum_exp(logits, vocab) - double(logits[target]);
}

std::vector<eval_result> evaluate_many(const std::vector<const model*>& models,
                                      const std::vector<quant_plan>& plans,
                                      const std::vector<int32_t>& ids, const eval_options& opt,
                                      const model* base, const progress_fn& progress) {
  if (models.empty() || models.size() != plans.size())
    throw error("eval: one plan per model is needed");
  const model& first = *models[0];
  const int vocab = first.config.vocab_size;
  for (const model* m : models)
    if (m->config.vocab_size != vocab || m->config.arch != first.config.arch)
      throw error("eval: the models of one evaluation must share architecture and vocabulary");
  if (opt.ctx < 0 || opt.max_tokens < 0)  // 0 is each one's default (the model's context, all tokens)
    throw error(fmt::format("eval: context {} / max_tokens {}: expected a positive number, or 0 for the default",
                            opt.ctx, opt.max_tokens));
  const int ctx = opt.ctx > 0 ? opt.ctx : first.config.max_seq_len;
  if (ctx < 2) throw error(fmt::format("eval: context {} is too short (need >= 2)", ctx));
  if (first.config.learned_positions() && ctx > first.config.max_seq_len)
    throw error(fmt::format("eval: context {} exceeds {}'s {} learned positions", ctx,
                            architecture_name(first.config.arch), first.config.max_seq_len));
  const int64_t total = opt.max_tokens > 0 ? std::min<int64_t>(opt.max_tokens, ids.size()) : ids.size();
  if (total < 2) throw error(fmt::format("eval: {} tokens; at least 2 are needed", total));
  for (int64_t i = 0; i < total; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw error(fmt::format("eval: token id {} at position {} is outside the model's vocabulary "
                              "of {} (wrong tokenizer?)", ids[i], i, vocab));
  if (opt.kl_base && !base) throw error("eval: --kl-base needs the float model");
  if (base && (base->config.vocab_size != vocab || base->config.arch != first.config.arch))
    throw error("eval: the float model must share the quantized models' architecture and vocabulary");

  const size_t R = models.size();
  // Sessions (their KV caches and activations) are sized for the longest window evaluated, not
  // for the context the model declares: a 64-token eval of a 128K-context model needs 64 rows.
  const int session_len = static_cast<int>(std::min<int64_t>(ctx, total));
  std::vector<std::unique_ptr<forward_session>> sessions;
  for (size_t r = 0; r < R; ++r)
    sessions.push_back(std::make_unique<forward_session>(*models[r], plans[r], session_len));
  std::unique_ptr<forward_session> base_session;
  if (opt.kl_base) base_session = std::make_unique<forward_session>(*base, quant_plan{}, session_len);

  struct accum {
    std::vector<double> nll, kl;
    int64_t agree = 0;
    double seconds = 0, flops = 0;
  };
  std::vector<accum> acc(R);
  std::vector<double> base_nll;
  std::vector<float> base_logits;  // the float model's logits of the current window
  int64_t windows = 0;
  for (int64_t w0 = 0; w0 < total; w0 += ctx) {
    const int len = static_cast<int>(std::min<int64_t>(ctx, total - w0));
    if (len < 2) break;  // a trailing window of one token predicts nothing (docs/conventions.md §15)
    const int32_t* win = ids.data() + w0;
    ++windows;
    if (base_session) {  // once per window, shared by every row
      base_session->reset();
      base_logits = base_session->forward(win, len);
      for (int i = 0; i + 1 < len; ++i)
        base_nll.push_back(token_nll(base_logits.data() + int64_t(i) * vocab, vocab, win[i + 1]));
    }
    // Small models: one thread per row, rows side by side; large ones: rows in turn, each
    // forward on every thread.
    const bool rows_in_parallel = R > 1 && forward_prefers_one_thread(len, first.config.dim);
    auto run_row = [&](size_t r) {
      forward_session& session = *sessions[r];
      session.reset();
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<float>& logits = session.forward(win, len);
      acc[r].seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      acc[r].flops += session.last_flops();
      if (!base_session) {
        // The window's NLLs, rows across the threads (a 32,000-entry log-sum-exp per row: as long as
        // a tenth of a 110M Llama's forward on one thread); each row's value as computed alone.
        const size_t at = acc[r].nll.size();
        acc[r].nll.resize(at + size_t(len - 1));
        double* nll = acc[r].nll.data() + at;
        const serial_scope team(rows_in_parallel || int64_t(len) * vocab < kParallelMinElements);
        #pragma omp parallel for schedule(static) if (!team.serial())
        for (int i = 0; i < len - 1; ++i) nll[i] = token_nll(logits.data() + int64_t(i) * vocab, vocab, win[i + 1]);
        return;
      }
      std::vector<double> lp, lq;  // with a base model: NLL, KL and top-1 agreement per row
      for (int i = 0; i + 1 < len; ++i) {
        const float* row = logits.data() + int64_t(i) * vocab;
        acc[r].nll.push_back(token_nll(row, vocab, win[i + 1]));
        const float* brow = base_logits.data() + int64_t(i) * vocab;
        log_softmax(brow, vocab, lp);
        log_softmax(row, vocab, lq);
        double k = 0;
        for (int v = 0; v < vocab; ++v) k += std::exp(lp[v]) * (lp[v] - lq[v]);
        acc[r].kl.push_back(std::max(0.0, k));
        acc[r].agree += std::max_element(row, row + vocab) - row == std::max_element(brow, brow + vocab) - brow;
      }
    };
    // Not `parallel for if(...)`: even an inactive region changes how OpenBLAS threads inside it.
    if (rows_in_parallel) {
      #pragma omp parallel for schedule(dynamic)
      for (size_t r = 0; r < R; ++r) run_row(r);
    } else {
      for (size_t r = 0; r < R; ++r) run_row(r);
    }
    if (progress) progress(w0 + len, total);
  }
  std::vector<eval_result> results(R);
  for (size_t r = 0; r < R; ++r) {
    eval_result& e = results[r];
    const accum& a = acc[r];
    e.windows = windows;
    e.tokens_scored = a.nll.size();
    mean_and_stderr(a.nll, e.mean_nll, e.nll_stderr);
    e.ppl = std::exp(e.mean_nll);
    for (size_t i = 0; i < a.nll.size(); ++i)
      if (!std::isfinite(a.nll[i])) {
        if (e.nonfinite_tokens++ == 0) e.first_nonfinite_position = nll_position(int64_t(i), ctx);
      }
    e.ppl_stderr = e.ppl * e.nll_stderr;
    e.seconds = a.seconds;
    const int64_t processed = e.tokens_scored + windows;
    e.tokens_per_second = a.seconds > 0 ? processed / a.seconds : 0;
    e.gflops_per_second = a.seconds > 0 ? a.flops / a.seconds * 1e-9 : 0;
    if (base_session) {
      e.has_kl = true;
      mean_and_stderr(a.kl, e.kl_mean, e.kl_stderr);
      e.kl_p50 = percentile(a.kl, 50);
      e.kl_p90 = percentile(a.kl, 90);
      e.kl_p99 = percentile(a.kl, 99);
      e.kl_max = a.kl.empty() ? 0 : *std::max_element(a.kl.begin(), a.kl.end());
      e.top1_agreement = a.kl.empty() ? 0 : double(a.agree) / a.kl.size();
      double se;
      mean_and_stderr(base_nll, e.base_mean_nll, se);
      e.base_ppl = std::exp(e.base_mean_nll);
    }
  }
  return results;
}

eval_result evaluate(const model& quantized, const quant_plan& plan, const std::vector<int32_t>& ids,
                     const eval_options& opt, const model* base, const progress_fn& progress) {
  return evaluate_many({&quantized}, {plan}, ids, opt, base, progress)[0];
}

}  // namespace lowbit

// Perplexity evaluation (issue "models"; docs/conventions.md §15):
//   the text is split into documents at blank lines (each stripped; empty ones dropped); each is
//   encoded with BOS; the documents are concatenated into one stream; the first max_tokens
//   tokens (default all) are cut into consecutive non-overlapping windows of ctx tokens (default
//   the model's maximum); a trailing partial window is scored when it has >= 2 tokens; in each
//   window every position but the last predicts the next token.
//   mean NLL, ppl = exp(mean NLL), stderr(mean NLL) = sqrt(var(nll_i) / n).
// With a base session, the same windows also run through the float model and the KL divergence
// of the quantized next-token distribution from the float one is reported (as llama.cpp's
// perplexity tool: KL(P_float || Q_quant) per position, its mean and percentiles, and the rate
// at which both argmaxes agree).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/engine/forward.hpp"

namespace lowbit {

struct eval_options {
  int ctx = 0;             // 0 = the model's max_seq_len
  int64_t max_tokens = 0;  // 0 = all
  bool kl_base = false;
};

struct eval_result {
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double mean_nll = 0, ppl = 0, nll_stderr = 0, ppl_stderr = 0;  // ppl_stderr = ppl * nll_stderr
  // Scored tokens whose NLL is NaN or Inf (NaN/Inf logits), and the position of the first (-1:
  // none). Sweeps keep such a result (a format that overflows is a finding); `lowbit eval`
  // refuses to report it as a perplexity (runs/eval_job.cpp).
  int64_t nonfinite_tokens = 0, first_nonfinite_position = -1;
  double seconds = 0, tokens_per_second = 0, gflops_per_second = 0;
  // kl_base only
  bool has_kl = false;
  double kl_mean = 0, kl_stderr = 0, kl_p50 = 0, kl_p90 = 0, kl_p99 = 0, kl_max = 0;
  double top1_agreement = 0;
  double base_mean_nll = 0, base_ppl = 0;
};

// progress(done_tokens, total_tokens) is called after each window.
using progress_fn = std::function<void(int64_t done, int64_t total)>;

// `quantized` is the model with the weight plan applied; `base` (for kl_base) the float model.
eval_result evaluate(const model& quantized, const quant_plan& plan, const std::vector<int32_t>& ids,
                     const eval_options& opt, const model* base = nullptr,
                     const progress_fn& progress = {});

// Several quantized variants of one model over the same windows; the float model (for KL) runs
// once per window for all of them. results[i] belongs to models[i] / plans[i].
std::vector<eval_result> evaluate_many(const std::vector<const model*>& models,
                                      const std::vector<quant_plan>& plans,
                                      const std::vector<int32_t>& ids, const eval_options& opt,
                                      const model* base = nullptr, const progress_fn& progress = {});

// log-softmax NLL of `target` under one row of logits (float64 accumulation).
double token_nll(const float* logits, int vocab, int target);

}  // namespace lowbit

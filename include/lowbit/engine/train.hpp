// Training of the Llama and GPT-2 decoders (the same layer definitions as forward.hpp's, with their
// backward: src/engine/decoder.hpp), in the style of llm.c: parameters, gradients and optimizer
// state each in one arena, reached through structs of named views; activations of a step in
// another; explicit forward and backward per layer.
//
// Every linear layer y = x W^T has six GEMM operands (Sun et al. 2025, docs/laws.md §2.1):
//   forward  Y  = X  W^T     P1 = X [tokens, in]      P2 = W [out, in]        reduction: in
//   dX       dX = dY W       P3 = dY [tokens, out]    P4 = W (as [in, out])   reduction: out
//   dW       dW = dY^T X     P5 = dY (as [out, tokens]) P6 = X (as [in, tokens]) reduction: tokens
// An operand_quantizer fake-quantizes any of them; each operand's groups run along the reduction
// axis of its own GEMM, as hardware would (X in the dW GEMM is grouped along tokens), unless the
// quantizer asks for the paper's grouping along each tensor's feature axis (docs/conventions.md §23,
// axis=din). The gradient flows through a quantized operand unchanged (straight-through).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/model.hpp"

namespace lowbit {

enum class gemm_operand : int { x_fwd = 0, w_fwd, dy_dx, w_dx, dy_dw, x_dw };
inline constexpr int gemm_operand_count = 6;
// "P1".."P6" and the short names of the plan grammar: x, w, dy, w_bwd, dy_w, x_bwd.
const char* gemm_operand_label(gemm_operand op);
const char* gemm_operand_key(gemm_operand op);

// The splitmix64 finalizer (Steele et al. 2014): a 64-bit mix for the trainer's deterministic
// streams (initialisation, data windows, stochastic-rounding stream ids).
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class operand_quantizer {
 public:
  virtual ~operand_quantizer() = default;
  virtual bool quantizes(gemm_operand op) const = 0;
  // True: every operand grouped along its tensor's own feature axis (X and W along d_in, dY along
  // d_out; Sun et al.'s grouping); false (default): along its GEMM's reduction axis.
  virtual bool feature_axis_groups() const { return false; }
  // out[rows, cols] = Q(in), groups along cols; in == out allowed. `linear` numbers the linear
  // layers (block * 7 + q,k,v,o,gate,up,down; GPT-2: block * 7 + qkv 0, attn_output 3, ffn_up 5,
  // ffn_down 6), `step` the optimizer step: with `op` they key the
  // stochastic-rounding stream and the per-tensor, per-use state (Autoflex).
  virtual void apply(gemm_operand op, int linear, int64_t step, const float* in, float* out,
                     int64_t rows, int64_t cols) = 0;
  // out[rows, cols] = Q(in^T)^T: groups along rows, in in's own layout, the values apply() gives
  // on the transposed tensor (its stochastic-rounding counters included). The operands grouped
  // along a GEMM's leading axis (X and dY in the dW GEMM: tokens; W in the dX GEMM: outputs)
  // then need no transposed copy. Returns false when this quantizer has no such path (the
  // caller transposes and calls apply).
  virtual bool apply_columns(gemm_operand, int, int64_t, const float*, float*, int64_t, int64_t) { return false; }
  // Data-parallel training: this process's tokens are [first_token, first_token + local_tokens)
  // of a global batch of total_tokens (every rank the same local_tokens); total_tokens < 0 ends
  // the sharding (and never throws). Stochastic rounding of the token-indexed operands (X, dY) then draws what one
  // process quantizing the whole batch would (sr_counters), so that the ranks' noise is
  // independent. Statistics that stay within a rank's tokens (per-token rows, groups along
  // features, groups along tokens that do not straddle ranks) are then what one process
  // computes; the returned notes name the operands whose scales come from a statistic over
  // tokens of several ranks (per-tensor scales, nvfp4's tensor scale, per-channel scales along
  // tokens), which each rank takes over its own tokens (as per-GPU amax in FP8 training without
  // an amax reduction). Throws lowbit::error where sharding cannot be done (groups along tokens
  // that would straddle ranks; quantizers without shard support, the default).
  virtual std::vector<std::string> set_token_shard(int64_t first_token, int64_t local_tokens, int64_t total_tokens);
  // Data-parallel training: the maximum over every rank of a statistic of a token-sharded
  // operand (Autoflex's maxima), so that every rank keeps the state one process would keep;
  // an empty function ends it.
  virtual void set_max_reducer(std::function<double(double)>) {}
  // Quantizer state that a checkpoint must keep (Autoflex histories); null when stateless.
  virtual nlohmann::json state() const { return nullptr; }
  // Frozen: quantize with the current state and do not update it (validation must not steer
  // Autoflex's exponents).
  virtual void set_frozen(bool) {}
  virtual void restore(const nlohmann::json&) {}
};

// The model being trained: Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention, tied or
// separate classifier) or GPT-2 (LayerNorm, learned positions, GELU-tanh, fused qkv, biases on
// every linear; tied or separate classifier). Parameters live in one arena under GGUF names
// (model.hpp's layout). Biases are added after the quantized GEMM and their gradients are the
// column sums of dY (not quantized).
class train_model {
 public:
  // A fresh model: weights (and GPT-2's positions) N(0, 0.02), the residual projections
  // (attn_output, ffn_down) N(0, 0.02/sqrt(2 layers)) as GPT-2, norm gains 1, biases 0;
  // deterministic in the seed.
  // model_config::l1_norm selects the L1 normalisation (ShiftQuant's recipe).
  train_model(const model_config& c, uint64_t seed);
  // The weights of an existing Llama or GPT-2 model (fine-tuning, resume).
  explicit train_model(const model& m);

  const model_config& config() const { return cfg_; }
  // The trained weights as a model (copies), for eval and checkpoints.
  model to_model() const;
  // Copies m's tensors into the arena (shapes must match).
  void load(const model& m);

  struct param_view {
    std::string name;
    int64_t offset, size;
    std::vector<int64_t> shape;
    bool decay;  // AdamW weight decay applies (matrices; not norm gains or biases)
  };
  const std::vector<param_view>& views() const { return views_; }
  std::vector<float>& params() { return params_; }
  const std::vector<float>& params() const { return params_; }
  std::vector<float>& grads() { return grads_; }

  // One forward and backward pass over `batch` sequences of `ctx` tokens (inputs and targets
  // [batch, ctx]); the gradient of sum(losses) / loss_divisor is written into grads() (overwritten).
  // Returns the sum of the token losses (natural log). quantizer may be null (fp32).
  double forward_backward(const int32_t* inputs, const int32_t* targets, int batch, int ctx,
                          double loss_divisor, operand_quantizer* q, int64_t step);
  // Forward only: the sum of the token losses.
  double forward_loss(const int32_t* inputs, const int32_t* targets, int batch, int ctx,
                      operand_quantizer* q, int64_t step);
  // Logits [batch*ctx, vocab] of the last forward (for tests).
  const std::vector<float>& logits() const { return logits_; }

 private:
  struct activations;
  struct param_refs;  // the arenas as the decoder's named views (decoder.hpp)
  double run(const int32_t* inputs, const int32_t* targets, int batch, int ctx, double divisor,
             operand_quantizer* q, int64_t step, bool backward);
  void build_views();
  const param_refs& refs();

  model_config cfg_;
  std::vector<param_view> views_;
  std::vector<float> params_, grads_;
  std::shared_ptr<const param_refs> refs_;
  std::vector<float> logits_;
  std::shared_ptr<activations> act_;
};

// AdamW (Loshchilov & Hutter 2019) with fp32 state: m, v and the decoupled weight decay on the
// views marked `decay`.
struct adamw_config {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};
class adamw {
 public:
  explicit adamw(adamw_config c = {}) : c_(c) {}
  // One update with learning rate lr at step t (1-based, for the bias correction).
  void step(train_model& m, double lr, int64_t t);
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }

 private:
  adamw_config c_;
  std::vector<float> m_, v_;
};

// Scales the gradients so their global L2 norm is at most max_norm; returns the norm before.
double clip_gradients(std::vector<float>& grads, double max_norm);

// Learning rate at step s (0-based) of `steps`: linear warmup over `warmup` steps to lr, then
// cosine to lr * min_frac at the last step.
double learning_rate(int64_t s, int64_t steps, int64_t warmup, double lr, double min_frac);

}  // namespace lowbit

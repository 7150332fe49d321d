// The decoder of every model family (model.hpp: Llama, Mistral, Qwen2, GPT-2, GPT-NeoX, OPT)
// defined once, for inference (forward.cpp: forward_session) and training (train_model.cpp), in
// the style of llm.c: each layer a forward function and, where training needs one, its backward
// next to it; parameters (and gradients) reached through structs of named views. A family is a
// set of layer variants (model_config's traits), not a forward of its own. The element-wise kernels (norms, RoPE, softmax, activations) are in layers.hpp.
//
// Shapes: n = tokens of a call (batch sequences of `seq` tokens each, row-major), D = dim,
// KV = kv heads * hd, F = hidden, V = vocab. What differs between inference and training is
// passed in, not forked:
//   - linear_ops: how a linear layer's GEMMs run, i.e. which operands are fake-quantized
//     (inference: the plan's activation formats on the input X; training: an operand_quantizer
//     on any of the six operands P1..P6, train.hpp);
//   - block_hooks::kv: where attention reads K and V (inference: the KV cache, quantized by the
//     plan's KV format; training: the projections in place);
//   - block_hooks::dump: the named intermediates of forward.hpp's dump_hook (inference).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lowbit/engine/model.hpp"
#include "lowbit/engine/train.hpp"
#include "src/engine/layers.hpp"

namespace lowbit::decoder {

// ---- parameters ----------------------------------------------------------------------------------

// One block's parameters as named views into float arrays (V = const float*: weights, float*:
// their gradients). Matrices are [out, in] row-major (model.hpp). Members a family has no
// tensor for stay null (a null bias: none).
template <class V>
struct block_views {
  V attn_norm{}, attn_norm_b{};    // [D]; _b: LayerNorm's bias
  V wq{}, wk{}, wv{};              // separate q, k, v: [D, D], [KV, D], [KV, D]
  V bq{}, bk{}, bv{};              // their biases [D], [KV], [KV] (qwen2; llama attention_bias; opt)
  V wqkv{}, bqkv{};                // fused (gpt2, gptneox): [3D, D] rows [q; k; v], [3D]
  V wo{}, bo{};                    // [D, D], [D]
  V ffn_norm{}, ffn_norm_b{};      // [D]
  V w_gate{}, b_gate{};            // gated MLP (SwiGLU): [F, D], [F]
  V w_up{}, b_up{};                // [F, D], [F]
  V w_down{}, b_down{};            // [D, F], [D]
};

template <class V>
struct model_views {
  V tok_embd{};                    // [V, D]
  V pos_embd{};                    // learned positions: [max_seq_len + position_offset, D]
  std::vector<block_views<V>> blocks;
  V out_norm{}, out_norm_b{};      // [D] (null: no final norm, OPT's post-LN); _b: LayerNorm's bias
  V classifier{};                  // [V, D]: output.weight, or tok_embd when tied
};

using block_params = block_views<const float*>;
using block_grads = block_views<float*>;
using model_params = model_views<const float*>;
using model_grads = model_views<float*>;

// The canonical (GGUF, model.hpp) name and shape of each view of block `l`, in the order of the
// training arena: f(name, member, shape). The one place where names meet the views (model.cpp's
// list of the tensors a model needs is this walk too). Llama's and GPT-2's orders are those of
// their first arenas (checkpoints keep them).
template <class V, class F>
void for_each_block_view(const model_config& c, int l, block_views<V>& b, F&& f) {
  const int64_t D = c.dim, KV = int64_t(c.n_kv_heads) * c.head_dim(), F_ = c.hidden_dim;
  const std::string p = "blk." + std::to_string(l) + ".";
  const bool ln = c.layer_norm(), qkv_b = c.qkv_bias(), mlp_b = c.has_mlp_bias();
  using shape = std::vector<int64_t>;
  f(p + "attn_norm.weight", b.attn_norm, shape{D});
  if (ln) f(p + "attn_norm.bias", b.attn_norm_b, shape{D});
  if (c.fused_qkv()) {
    f(p + "attn_qkv.weight", b.wqkv, shape{3 * D, D});
    if (qkv_b) f(p + "attn_qkv.bias", b.bqkv, shape{3 * D});
  } else {
    f(p + "attn_q.weight", b.wq, shape{D, D});
    if (qkv_b) f(p + "attn_q.bias", b.bq, shape{D});
    f(p + "attn_k.weight", b.wk, shape{KV, D});
    if (qkv_b) f(p + "attn_k.bias", b.bk, shape{KV});
    f(p + "attn_v.weight", b.wv, shape{KV, D});
    if (qkv_b) f(p + "attn_v.bias", b.bv, shape{KV});
  }
  f(p + "attn_output.weight", b.wo, shape{D, D});
  if (c.out_bias()) f(p + "attn_output.bias", b.bo, shape{D});
  f(p + "ffn_norm.weight", b.ffn_norm, shape{D});
  if (ln) f(p + "ffn_norm.bias", b.ffn_norm_b, shape{D});
  if (c.gated_mlp()) {
    f(p + "ffn_gate.weight", b.w_gate, shape{F_, D});
    if (mlp_b) f(p + "ffn_gate.bias", b.b_gate, shape{F_});
  }
  f(p + "ffn_up.weight", b.w_up, shape{F_, D});
  if (mlp_b) f(p + "ffn_up.bias", b.b_up, shape{F_});
  f(p + "ffn_down.weight", b.w_down, shape{D, F_});
  if (mlp_b) f(p + "ffn_down.bias", b.b_down, shape{D});
}

// Every view of the model, in the training arena's order (embeddings, blocks, final norm,
// separate classifier); classifier is then set (to tok_embd when tied).
template <class V, class F>
void for_each_view(const model_config& c, model_views<V>& m, F&& f) {
  const int64_t D = c.dim, Vv = c.vocab_size;
  f(std::string("token_embd.weight"), m.tok_embd, std::vector<int64_t>{Vv, D});
  if (c.learned_positions())
    f(std::string("position_embd.weight"), m.pos_embd,
      std::vector<int64_t>{int64_t(c.max_seq_len) + c.position_offset(), D});
  m.blocks.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) for_each_block_view(c, l, m.blocks[l], f);
  if (c.final_norm()) {
    f(std::string("output_norm.weight"), m.out_norm, std::vector<int64_t>{D});
    if (c.layer_norm()) f(std::string("output_norm.bias"), m.out_norm_b, std::vector<int64_t>{D});
  }
  if (!c.tied_classifier) f(std::string("output.weight"), m.classifier, std::vector<int64_t>{Vv, D});
  else m.classifier = m.tok_embd;
}

// Views of a model's tensors (inference). The model must outlive them and keep its tensors'
// storage: bind again after replacing a tensor's data (PTQ swaps a block's weights between calls).
block_params bind_block(const model& m, int l);
// Each binds only the tensors its part reads: a streaming run holds some of them at a time.
model_params bind_embeddings(const model& m);  // tok_embd, pos_embd
model_params bind_head(const model& m);        // out_norm (+ bias), classifier

// ---- linear layers ---------------------------------------------------------------------------------

// The linear layers' numbering for operand quantizers and stochastic-rounding streams: block l's
// q, k, v, o, gate, up, down are l * 7 + 0..6 (fused qkv 0; without a gate, ffn_up is still 5);
// the classifier is classifier_linear.
inline constexpr int linears_per_block = 7;
inline constexpr int classifier_linear = -1;

// How a linear layer y = x W^T runs, with its operands quantized or not.
class linear_ops {
 public:
  virtual ~linear_ops() = default;
  // P1: the input X [n, in] as the GEMM reads it: x itself or a quantized copy (valid until the
  // next input() call).
  virtual const float* input(const float* x, int64_t n, int in, int linear) = 0;
  // y[n, out] = xq[n, in] W[out, in]^T (W, operand P2, quantized or not).
  virtual void forward(const float* xq, int64_t n, int in, const float* w, int out, float* y, int linear) = 0;
};

// y[n, out] = xq W^T (+ b[out]): a linear layer's forward; xq from ops.input.
void matmul_forward(linear_ops& ops, const float* xq, int64_t n, int in, const float* w, const float* b, int out,
                    float* y, int linear);

// The training GEMMs: each of the six operands fake-quantized by an operand_quantizer (train.hpp's
// table), q null: plain float. buf_a/b/c hold the quantized X (or X^T), W (or W^T) and dY (or dY^T).
class quantized_gemms : public linear_ops {
 public:
  quantized_gemms(operand_quantizer* q, int64_t step, std::vector<float>& buf_a, std::vector<float>& buf_b,
                  std::vector<float>& buf_c)
      : q_(q), step_(step), buf_a_(buf_a), buf_b_(buf_b), buf_c_(buf_c) {}
  const float* input(const float* x, int64_t n, int in, int linear) override;
  void forward(const float* xq, int64_t n, int in, const float* w, int out, float* y, int linear) override;
  // dx[n, in] += Q3(dY)[n, out] Q4(W)[out, in].
  void backward_input(const float* dy, int64_t n, int out, const float* w, int in, float* dx, int linear);
  // X's operand of the dW GEMM (P6), prepared once per input shared by several linears: grouped
  // along tokens as X [n, in] (token_major) or X^T [in, n], or grouped along in as X [n, in]
  // (feature-axis groups); data null: X as it is.
  struct x_dw_operand {
    const float* data = nullptr;
    bool token_major = true;  // [n, in]; else X^T [in, n]
  };
  x_dw_operand weight_grad_input(const float* x, int64_t n, int in, int linear);
  // dw[out, in] = Q5(dY)^T Q6(X) over the n tokens (overwrites dw).
  void backward_weight(const float* dy, int64_t n, int out, const float* x, const x_dw_operand& xq6, int in,
                       float* dw, int linear);

 private:
  bool on(gemm_operand op) const { return q_ && q_->quantizes(op); }
  bool din() const { return q_ && q_->feature_axis_groups(); }
  bool quantize_along_rows(gemm_operand op, int linear, const float* in, float* buf, int64_t rows, int64_t cols);

  operand_quantizer* q_;
  int64_t step_;
  std::vector<float>& buf_a_;
  std::vector<float>& buf_b_;
  std::vector<float>& buf_c_;
};

// ---- embedding ---------------------------------------------------------------------------------------

// x[n, D] = tok_embd[tokens[i]] (+ learned positions: pos_embd[offset + pos0 + (period ? i % period : i)],
// offset = position_offset(): OPT's 2).
void embedding_forward(const model_config& c, const model_params& p, const int32_t* tokens, int64_t n, int pos0,
                       int period, float* x);
// tok_embd's (and pos_embd's) rows += dx[n, D], rows in order.
void embedding_backward(const model_config& c, const model_grads& g, const int32_t* tokens, int64_t n, int period,
                        const float* dx);

// ---- norms ---------------------------------------------------------------------------------------------

// out[n, D] = norm(x) with gain w (and the LayerNorm's bias b): the Llama family's RMS (or L1)
// norm, LayerNorm (gpt2, gptneox, opt). mean (LayerNorm) and inv [n] keep the statistics for the
// backward (null: not kept). w null: no norm (OPT's post-LN models have no final one), out = x.
void norm_forward(const model_config& c, const float* w, const float* b, const float* x, float* out, int64_t n,
                  float* mean, float* inv);
// dx[n, D] += norm'(dy); dw (and db) += the gain's (bias's) gradients; dw_acc/db_acc [D] scratch.
// w null: dx += dy.
void norm_backward(const model_config& c, const float* w, const float* x, const float* mean, const float* inv,
                   const float* dy, float* dx, float* dw, float* db, int64_t n, std::vector<double>& dw_acc,
                   std::vector<double>& db_acc);

// ---- attention -------------------------------------------------------------------------------------------

// Where attention reads keys and values: sequence b's key t at k + b * seq_stride + t * stride,
// kv head j at column j * hd (the same for v).
struct kv_source {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t stride = 0, seq_stride = 0;
};

// Causal attention of `batch` sequences of `seq` queries at positions pos0..pos0+seq over keys
// 0..pos0+seq (T = pos0 + seq); with a sliding window W (Mistral), the query at position p sees
// keys p - W < t <= p only (Hugging Face's sliding_window_overlay: the last W positions). Per (sequence b, query head h; kv head h / (heads / kv_heads),
// grouped-query attention): S = Q_h K_h^T / sqrt(hd) [seq, T], P = causal softmax, O_h = P V_h.
// Queries go in blocks of query_block rows: block [i0, i1) sees keys [0, pos0 + i1) only, so a
// prefill computes about half of the seq x T square (keys past a row's position get weight 0;
// P's entries past a block's keys are left as they are). P of (b, h) is written at
// scores + (b * heads + h) * scores_per_head, row stride T (scores_per_head 0: one buffer reused,
// heads one after another; with heads_parallel, OpenMP thread t's at scores + t * scores_per_thread,
// one query block's rows at a time).
// heads_parallel: (sequence, head) pairs split across OpenMP threads; else heads in turn. Either
// way each GEMM is one single-threaded sgemm (kernels/gemm.hpp's serial_sgemm), so both give the
// same bits (docs/conventions.md §46, §47).
struct attention_args {
  const float* q = nullptr;
  int64_t qs = 0;  // row stride of q: query head h at column h * hd
  kv_source kv;
  float* o = nullptr;
  int64_t os = 0;  // row stride of o [batch * seq, heads * hd]
  float* scores = nullptr;
  int64_t scores_per_head = 0;
  int64_t scores_per_thread = 0;  // scores_per_head 0 and heads_parallel: one buffer per thread
  int batch = 1, seq = 0, pos0 = 0, heads = 0, kv_heads = 0, hd = 0;
  int window = 0;  // sliding window W; 0: every earlier key
  int query_block = 128;
  bool heads_parallel = false;
  // P's operand of O = P V (FP8 attention, inference): called on each query block's P [rows, keys]
  // (row stride ld) after the softmax, before the GEMM reads it; null: P as it is.
  std::function<void(float* p, int rows, int keys, int64_t ld)> p_operand;
};
// Returns the multiply-adds x2 it did.
double attention_forward(const attention_args& a);
// With P kept (scores_per_head = T * T, one query block, pos0 = 0) and dO [batch * seq, os]
// (keys outside a window have P = 0, so they get no gradient):
//   dP = dO V^T, dV += P^T dO, dS = P o (dP - rowsum(dP o P)), dQ = dS K / sqrt(hd),
//   dK += dS^T Q / sqrt(hd)
// per (sequence, kv head), so dK and dV accumulate without races; dq/dk/dv have a's strides
// (dkv.k, dkv.v written through). dP_scratch: threads x T x T.
void attention_backward(const attention_args& a, const float* dO, float* dq, float* dk, float* dv,
                        std::vector<float>& dP_scratch);

// ---- the block -----------------------------------------------------------------------------------------

// One block's activations for n = batch * seq tokens. Inference reuses one set for every block
// (x, x1 and out alias the residual stream, statistics not kept); training keeps one per block.
// Fused qkv (gpt2, gptneox): qkv [n, 3D] holds q, k, v (q/k/v point into it, strides 3D); else
// q [n, D], k and v [n, KV].
struct block_acts {
  float* x = nullptr;     // [n, D] the block's input (residual stream)
  float* x1 = nullptr;    // [n, D] x + attention (may alias x)
  float* out = nullptr;   // [n, D] x1 + MLP (may alias x1)
  float *n1 = nullptr, *n2 = nullptr;  // [n, D] norm outputs (pre-LN: inputs of attention, MLP)
  float *mean1 = nullptr, *inv1 = nullptr, *mean2 = nullptr, *inv2 = nullptr;  // [n] or null
  float *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t qs = 0, ks = 0;  // row strides of q and of k, v
  float* scores = nullptr;  // P, attention_args's layout
  int64_t scores_per_head = 0, scores_per_thread = 0;
  float* o = nullptr;       // [n, D] attention output
  float* y = nullptr;       // [n, D] scratch: a projection's output before the residual add
  float *gate = nullptr, *up = nullptr, *act = nullptr;  // [n, F]; gate: gated MLP
};
// Points q, k, v (and strides) into qkv (fused: [n, 3D]) or the separate buffers.
void set_qkv(const model_config& c, block_acts& a, float* qkv, float* q, float* k, float* v);

struct block_hooks {
  linear_ops* ops = nullptr;
  const layers::rope_table* rope = nullptr;  // RoPE families
  // K and V of the n new tokens (rows of stride ks, RoPE applied) -> where attention reads them;
  // null: in place.
  std::function<kv_source(int layer, const float* k, const float* v, int64_t ks)> kv;
  // Q's operand of S = Q K^T (FP8 attention, inference): q [n, heads * hd] of row stride qs after
  // RoPE, changed in place before attention reads it; null: Q as it is.
  std::function<void(int layer, float* q, int64_t qs)> q_operand;
  // attention_args::p_operand of every block.
  std::function<void(float* p, int rows, int keys, int64_t ld)> p_operand;
  // Named intermediates [n, cols] (forward.hpp's dump_hook names, without "blk.N."); null: none.
  std::function<void(const std::string& name, const float* data, int64_t cols)> dump;
  int query_block = 128;
  bool heads_parallel = false;
  double flops = 0;  // multiply-adds x2 of the attention products, accumulated
};

// Block `layer` on a.x: batch sequences of seq tokens at positions pos0..pos0+seq.
//   n1 = norm1(x); q, k, v = n1 Wq, Wk, Wv (+ biases; fused: one [3D, D] matrix);
//   RoPE families: RoPE on the first rotary_dim() dims of each q, k head;
//   o = attention (causal, within the sliding window); x1 = x + o Wo (+ bo); n2 = norm2(x1);
//   gated (Llama family): act = silu(n2 Wgate) * (n2 Wup) (SwiGLU); else act = f(n2 Wup + bup)
//   with f GELU (tanh or erf) or ReLU; out = x1 + act Wdown (+ bdown).
// GPT-NeoX's parallel residual: n2 = norm2(x), out = x + o Wo + act Wdown (Black et al. 2022,
// GPT-NeoX-20B). OPT's post-LN (do_layer_norm_before = false; Vaswani et al. 2017's order):
// attention reads x, x1 = norm1(x + o Wo), the MLP reads x1, out = norm2(x1 + act Wdown).
// The dump's "attn_norm" and "ffn_norm" are the inputs of the attention and the MLP.
void block_forward(const model_config& c, const block_params& p, int layer, block_acts& a, int batch, int seq,
                   int pos0, block_hooks& h);

// The block's backward scratch, n = batch * seq tokens.
struct block_grad_scratch {
  float* dx = nullptr;    // [n, D] the residual stream's gradient, in: d(out), out: d(x)
  float* dn = nullptr;    // [n, D]
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;  // strides as the acts' q, k, v
  float* dqkv = nullptr;  // fused [n, 3D] (dq/dk/dv point into it)
  float* dn2 = nullptr;   // [n, D] parallel residual: d(n2) kept until norm2's backward
  float *dgate = nullptr, *dup = nullptr, *dact = nullptr;  // [n, F]
  std::vector<float>* dP = nullptr;  // attention_backward's scratch
  std::vector<double>* dnorm = nullptr;    // [D]
  std::vector<double>* dnorm_b = nullptr;  // [D]
};
// The backward of block_forward (training: pos0 = 0, P kept): the parameters' gradients into g
// (overwritten for matrices, accumulated for norms and biases), d(x) into s.dx. Pre-LN blocks
// only (train_model refuses OPT's post-LN).
void block_backward(const model_config& c, const block_params& p, const block_grads& g, int layer, const block_acts& a,
                    int batch, int seq, const layers::rope_table* rope, quantized_gemms& G, block_grad_scratch& s);

// ---- classifier and loss -------------------------------------------------------------------------------

// logits[n, V] = xq cls^T (xq: the final norm's output through ops.input(.., classifier_linear)).
void classifier_forward(linear_ops& ops, const float* xq, int64_t n, int D, const float* cls, int V, float* logits);
// dx[n, D] = dlogits cls; dcls[V, D] += dlogits^T x (not quantized).
void classifier_backward(const float* dlogits, const float* x, const float* cls, int64_t n, int D, int V, float* dx,
                         float* dcls);
// The summed cross-entropy of logits [n, V] against targets: loss_i = logsumexp(z_i) - z_i[target],
// rows summed in order (bit-exact whatever the thread count). dlogits (null: none) = softmax(z) -
// onehot, the gradient of the summed loss.
double cross_entropy(const float* logits, const int32_t* targets, int64_t n, int V, float* dlogits);

}  // namespace lowbit::decoder

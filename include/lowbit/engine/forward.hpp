// The forward pass of every model family (model.hpp) in float32: batched over a window of tokens
// (prefill) or one token at a time (generation), with a KV cache, OpenBLAS sgemm and OpenMP.
//   llama: x = embd[tok]; per layer: h = x + Wo attn(rope(Wq n1), rope(Wk n1), Wv n1),
//          n1 = rmsnorm(x); x = h + Wdown(silu(Wgate n2) * Wup n2), n2 = rmsnorm(h);
//          logits = Wcls rmsnorm(x)   (mistral: a sliding window; qwen2: q/k/v biases)
//   gpt2 : x = wte[tok] + wpe[pos]; pre-LayerNorm blocks, GELU (tanh approximation), biases.
//   gptneox: LayerNorm, partial RoPE, parallel attention and MLP; opt: learned positions,
//          ReLU, pre- or post-LayerNorm (src/engine/decoder.hpp's block_forward).
// Every intermediate has a name (see `dump_hook`) so any layer can be dumped and compared.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"

namespace lowbit {

namespace layers { struct rope_table; }

// Called with each named intermediate [rows = tokens, cols]:
//   "blk.N.attn_norm", "blk.N.q", "blk.N.k", "blk.N.v" (k after RoPE), "blk.N.attn",
//   "blk.N.attn_out", "blk.N.ffn_norm", "blk.N.ffn_act" (input of ffn_down), "blk.N.ffn_out",
//   "blk.N.out" (residual stream after the block), "output_norm", "logits". attn_norm and
//   ffn_norm are the inputs of the attention and the MLP (OPT's post-LN: the block's input and
//   norm1's output), output_norm the classifier's input.
using dump_hook = std::function<void(const std::string& name, const float* data, int64_t rows,
                                     int64_t cols)>;

class forward_session {
 public:
  // The model must outlive the session; weights are used as they are (apply_weight_plan first).
  // The plan's acts/kv formats apply on the fly. max_tokens bounds the KV cache.
  forward_session(const model& m, const quant_plan& plan, int max_tokens);

  // Runs tokens[0..n) at positions pos()..pos()+n, appends them to the KV cache and returns the
  // logits [n, vocab] (row-major). Throws when the cache would overflow.
  const std::vector<float>& forward(const int32_t* tokens, int n);
  void reset();  // empties the KV cache (a new window)
  // Forgets the cache from position p on (0 <= p <= pos()): the next forward runs at p, so several
  // continuations can each follow one shared prefix (src/engine/score.cpp).
  void rewind(int p);

  // Layer by layer (post-training quantization runs one block at a time on cached inputs):
  // embed writes the token (+ position) embeddings of tokens at pos()..pos()+n into x[n, dim];
  // forward_blocks runs blocks [first, last) on the residual stream x[n, dim] in place, filling
  // those blocks' KV cache at pos()..pos()+n; neither moves pos().
  void embed(const int32_t* tokens, int n, float* x) const;
  void forward_blocks(float* x, int n, int first, int last);
  int pos() const { return pos_; }
  void set_dump(dump_hook hook) { dump_ = std::move(hook); }
  // Multiply-adds x2 of the last forward call (for GFLOP/s reports).
  double last_flops() const { return last_flops_; }
  // Linear layers this session computed from integer activation codes (packed_matmul_int), all calls.
  int64_t integer_products() const { return integer_products_; }

 private:
  void check_tokens(const int32_t* tokens, int n) const;
  void run(float* x, int n, int first, int last, bool head);

  const model& m_;
  quant_plan plan_;
  int max_tokens_;
  int pos_ = 0;
  std::vector<float> k_cache_, v_cache_;  // [layer][pos][kv_heads*hd]
  std::shared_ptr<const layers::rope_table> rope_;  // cos/sin per (position, pair), RoPE families
  std::vector<float> logits_;
  dump_hook dump_;
  double last_flops_ = 0;
  int64_t integer_products_ = 0;
  uint64_t call_ = 0;  // stream of tensor ids for stochastic rounding
  // The plan resolved for this model: each block's activations (attn_norm, attn, ffn_norm,
  // ffn_act: block * 4 + site) and the classifier's input; each block's K and V cache formats.
  std::vector<act_quant> block_acts_;
  act_quant classifier_act_;
  std::vector<std::optional<format>> kv_k_, kv_v_;
  // Attention's K and V operands (plan attn.k / attn.v). When the operand's format quantizes each
  // row on its own, deterministically (operand_rows_local), a shadow of the cache [layer][pos][kv_dim]
  // where each call quantizes only its new rows; else the current layer's T rows, quantized anew.
  std::vector<float> k_operand_, v_operand_;
  bool k_operand_shadow_ = false, v_operand_shadow_ = false;
  // The model's packed weights by linear number (model::linear_number); null: float (sgemm).
  std::vector<const packed_matrix*> packed_linears_;
  // The activations of a forward call, kept from call to call (grown, never shrunk): buffers of
  // a window's size are megabytes, which the allocator maps afresh and the kernel zero-fills page
  // by page on every call (7% of a 110M-parameter prefill in perf) when they are allocated per call.
  struct activations {
    std::vector<float> x, n1, n2, o, y, qkv, gate, up, act, scores, input, operand, p;
  } acts_;
};

// True when a forward call of `tokens` tokens through layers of width `dim` is too small to
// split across threads (it then runs on one; callers may run several such calls in parallel).
bool forward_prefers_one_thread(int64_t tokens, int dim);

// OpenBLAS sgemm throughput on C[m, n] = A[m, k] B[n, k]^T (the shape of a linear layer over a
// window), median of `reps` runs, in GFLOP/s: the peak next to which eval reports its own rate.
double sgemm_gflops(int m, int n, int k, int reps = 7);

}  // namespace lowbit

// The decoder's layers, each defined once for inference and training, for every model family
// (decoder.hpp). Linear layers
// run through kernels/gemm.hpp's tiled_sgemm (OpenBLAS per tile, the same bits at any thread count,
// docs/conventions.md §47), attention's per-head products through its serial_sgemm; element-wise
// work through OpenMP.
#include "src/engine/decoder.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/expf.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/kernels/softmax.hpp"

namespace lowbit::decoder {

namespace {

// out[cols, rows] = in[rows, cols]^T: OpenBLAS's out-of-place transpose (a plain tiled loop took
// 15% of a fully quantized training step at dim 256, this 3%; perf, same run shape).
void transpose(const float* in, float* out, int64_t rows, int64_t cols) {
  cblas_somatcopy(CblasRowMajor, CblasTrans, int(rows), int(cols), 1.0f, in, int(cols), out, int(rows));
}

// y[n, out] += b[out]
void add_bias(float* y, int64_t n, int out, const float* b) {
  #pragma omp parallel for schedule(static) if (n * out > 65536)
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < out; ++j) y[i * out + j] += b[j];
}

// A bias's gradient: db[out] += the column sums of dY [n, out] (not quantized), in double, rows in order.
void bias_backward(const float* dy, int64_t n, int out, float* db) {
  std::vector<double> s(out, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < out; ++j) s[j] += dy[i * out + j];
  for (int j = 0; j < out; ++j) db[j] += static_cast<float>(s[j]);
}

// x[i] = a[i] + b[i] over n elements (x may alias a): a residual add, split across the threads as
// the other element-wise layers (512 x 768 floats: three 1.5 MiB streams).
void residual_add(const float* a, const float* b, float* x, int64_t n) {
  #pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] = a[i] + b[i];
}

}  // namespace

// ---- parameters ----------------------------------------------------------------------------------

block_params bind_block(const model& m, int l) {
  block_params b;
  for_each_block_view(m.config, l, b, [&](const std::string& name, const float*& v, const std::vector<int64_t>&) {
    v = m.get(name).data.data();
  });
  return b;
}

model_params bind_embeddings(const model& m) {
  model_params p;
  p.tok_embd = m.get("token_embd.weight").data.data();
  if (m.config.learned_positions()) p.pos_embd = m.get("position_embd.weight").data.data();
  return p;
}

model_params bind_head(const model& m) {
  model_params p;
  if (m.config.final_norm()) {
    p.out_norm = m.get("output_norm.weight").data.data();
    if (m.config.layer_norm()) p.out_norm_b = m.get("output_norm.bias").data.data();
  }
  p.classifier = m.classifier().data.data();
  return p;
}

// ---- linear layers ---------------------------------------------------------------------------------

void matmul_forward(linear_ops& ops, const float* xq, int64_t n, int in, const float* w, const float* b, int out,
                    float* y, int linear) {
  ops.forward(xq, n, in, w, out, y, linear);
  if (b) add_bias(y, n, out, b);
}

// buf = in [rows, cols] quantized with groups along rows (the GEMM reduces over them): in in's
// layout when the quantizer can (returns true), else as Q(in^T) [cols, rows] (returns false).
// The fallback hands apply() a transposed tensor whose rows are not tokens: only quantizers
// without a token shard take it (the shard-aware ones implement apply_columns).
bool quantized_gemms::quantize_along_rows(gemm_operand op, int linear, const float* in, float* buf, int64_t rows,
                                          int64_t cols) {
  if (q_->apply_columns(op, linear, step_, in, buf, rows, cols)) return true;
  transpose(in, buf, rows, cols);
  q_->apply(op, linear, step_, buf, buf, cols, rows);
  return false;
}

// P1: the input X [n, in], grouped along in; X itself when P1 is not quantized.
const float* quantized_gemms::input(const float* x, int64_t n, int in, int linear) {
  if (!on(gemm_operand::x_fwd)) return x;
  q_->apply(gemm_operand::x_fwd, linear, step_, x, buf_a_.data(), n, in);
  return buf_a_.data();
}

void quantized_gemms::forward(const float* xq, int64_t n, int in, const float* w, int out, float* y, int linear) {
  const float* wq = w;
  if (on(gemm_operand::w_fwd)) {
    q_->apply(gemm_operand::w_fwd, linear, step_, w, buf_b_.data(), out, in);
    wq = buf_b_.data();
  }
  tiled_sgemm(gemm_op::none, gemm_op::transpose, n, out, in, 1.0f, xq, in, wq, in, 0.0f, y, out);
}

// Q4 is grouped along out: quantized as W^T [in, out] (or in W's layout through apply_columns).
void quantized_gemms::backward_input(const float* dy, int64_t n, int out, const float* w, int in, float* dx,
                                     int linear) {
  const float* a = dy;
  if (on(gemm_operand::dy_dx)) {
    q_->apply(gemm_operand::dy_dx, linear, step_, dy, buf_c_.data(), n, out);
    a = buf_c_.data();
  }
  if (!on(gemm_operand::w_dx)) {
    tiled_sgemm(gemm_op::none, gemm_op::none, n, in, out, 1.0f, a, out, w, in, 1.0f, dx, in);
  } else if (din()) {
    q_->apply(gemm_operand::w_dx, linear, step_, w, buf_b_.data(), out, in);
    tiled_sgemm(gemm_op::none, gemm_op::none, n, in, out, 1.0f, a, out, buf_b_.data(), in, 1.0f, dx, in);
  } else if (quantize_along_rows(gemm_operand::w_dx, linear, w, buf_b_.data(), out, in)) {  // [out, in]
    tiled_sgemm(gemm_op::none, gemm_op::none, n, in, out, 1.0f, a, out, buf_b_.data(), in, 1.0f, dx, in);
  } else {  // W^T [in, out]
    tiled_sgemm(gemm_op::none, gemm_op::transpose, n, in, out, 1.0f, a, out, buf_b_.data(), out, 1.0f, dx, in);
  }
}

quantized_gemms::x_dw_operand quantized_gemms::weight_grad_input(const float* x, int64_t n, int in, int linear) {
  if (!on(gemm_operand::x_dw)) return {};
  if (din()) {
    q_->apply(gemm_operand::x_dw, linear, step_, x, buf_a_.data(), n, in);
    return {buf_a_.data(), true};
  }
  return {buf_a_.data(), quantize_along_rows(gemm_operand::x_dw, linear, x, buf_a_.data(), n, in)};
}

void quantized_gemms::backward_weight(const float* dy, int64_t n, int out, const float* x, const x_dw_operand& xq6,
                                      int in, float* dw, int linear) {
  const int N = int(n);
  // A' = dY^T [out, N]
  const float* a = dy;
  gemm_op ta = gemm_op::transpose;
  int lda = out;
  if (on(gemm_operand::dy_dw)) {
    if (din()) q_->apply(gemm_operand::dy_dw, linear, step_, dy, buf_c_.data(), n, out);
    else if (!quantize_along_rows(gemm_operand::dy_dw, linear, dy, buf_c_.data(), n, out))
      ta = gemm_op::none, lda = N;  // dY^T [out, N]
    a = buf_c_.data();
  }
  // B' = X [N, in]
  const float* b = x;
  gemm_op tb = gemm_op::none;
  int ldb = in;
  if (xq6.data) {
    b = xq6.data;
    if (!xq6.token_major) tb = gemm_op::transpose, ldb = N;  // X^T [in, N]
  }
  tiled_sgemm(ta, tb, out, in, N, 1.0f, a, lda, b, ldb, 0.0f, dw, in);
}

// ---- embedding ---------------------------------------------------------------------------------------

void embedding_forward(const model_config& c, const model_params& p, const int32_t* tokens, int64_t n, int pos0,
                       int period, float* x) {
  const int D = c.dim;
  for (int64_t i = 0; i < n; ++i) std::copy_n(p.tok_embd + int64_t(tokens[i]) * D, D, x + i * D);
  if (c.learned_positions()) {
    const int64_t offset = c.position_offset();
    for (int64_t i = 0; i < n; ++i) {
      float* xi = x + i * D;
      const float* pe = p.pos_embd + (offset + pos0 + (period ? i % period : i)) * D;
      for (int j = 0; j < D; ++j) xi[j] += pe[j];
    }
  }
}

void embedding_backward(const model_config& c, const model_grads& g, const int32_t* tokens, int64_t n, int period,
                        const float* dx) {
  const int D = c.dim;
  for (int64_t i = 0; i < n; ++i) {
    float* r = g.tok_embd + int64_t(tokens[i]) * D;
    const float* d = dx + i * D;
    for (int j = 0; j < D; ++j) r[j] += d[j];
  }
  if (c.learned_positions()) {
    const int64_t offset = c.position_offset();
    for (int64_t i = 0; i < n; ++i) {
      float* r = g.pos_embd + (offset + (period ? i % period : i)) * D;
      const float* d = dx + i * D;
      for (int j = 0; j < D; ++j) r[j] += d[j];
    }
  }
}

// ---- norms ---------------------------------------------------------------------------------------------

namespace {
layers::norm_kind norm_kind_of(const model_config& c) {
  return c.l1_norm ? layers::norm_kind::l1 : layers::norm_kind::rms;
}
}  // namespace

void norm_forward(const model_config& c, const float* w, const float* b, const float* x, float* out, int64_t n,
                  float* mean, float* inv) {
  if (!w) {
    if (out != x) std::copy_n(x, n * c.dim, out);
  } else if (c.layer_norm()) {
    layers::layernorm(x, w, b, out, n, c.dim, c.norm_eps, mean, inv);
  } else {
    layers::normalize(norm_kind_of(c), x, w, out, n, c.dim, c.norm_eps, inv);
  }
}

void norm_backward(const model_config& c, const float* w, const float* x, const float* mean, const float* inv,
                   const float* dy, float* dx, float* dw, float* db, int64_t n, std::vector<double>& dw_acc,
                   std::vector<double>& db_acc) {
  const int D = c.dim;
  if (!w) {
    for (int64_t i = 0; i < n * D; ++i) dx[i] += dy[i];
    return;
  }
  std::fill(dw_acc.begin(), dw_acc.end(), 0.0);
  if (c.layer_norm()) {
    std::fill(db_acc.begin(), db_acc.end(), 0.0);
    layers::layernorm_backward(x, w, mean, inv, dy, dx, dw_acc.data(), db_acc.data(), n, D);
    for (int j = 0; j < D; ++j) db[j] += static_cast<float>(db_acc[j]);
  } else {
    layers::normalize_backward(norm_kind_of(c), x, w, inv, dy, dx, dw_acc.data(), n, D);
  }
  for (int j = 0; j < D; ++j) dw[j] += static_cast<float>(dw_acc[j]);
}

// ---- attention -------------------------------------------------------------------------------------------

double attention_forward(const attention_args& a) {
  const int T = a.pos0 + a.seq, hd = a.hd, H = a.heads, group = a.heads / a.kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  auto head = [&](int bh) {
    const int bi = bh / H, h = bh % H, kvh = h / group;
    // A thread's own buffer holds one query block at a time (rows at its start).
    const bool per_thread = !a.scores_per_head && a.heads_parallel;
    float* S = a.scores + (per_thread ? int64_t(omp_get_thread_num()) * a.scores_per_thread
                                      : int64_t(bh) * a.scores_per_head);
    const float* K = a.kv.k + bi * a.kv.seq_stride + kvh * hd;
    const float* Vv = a.kv.v + bi * a.kv.seq_stride + kvh * hd;
    for (int i0 = 0; i0 < a.seq; i0 += a.query_block) {
      const int rows = std::min(a.query_block, a.seq - i0), keys = a.pos0 + i0 + rows;
      const int64_t r0 = int64_t(bi) * a.seq + i0;  // the block's first query row
      float* s = per_thread ? S : S + int64_t(i0) * T;
      serial_sgemm(gemm_op::none, gemm_op::transpose, rows, keys, hd, scale, a.q + r0 * a.qs + h * hd, a.qs, K,
                   a.kv.stride, 0.0f, s, T);
      // Four rows at a time (layers::causal_softmax_rows: the rows' bits, their chains interleaved),
      // split across threads only when heads go in turn (else each thread has its head).
      constexpr int R = 4;
      #pragma omp parallel for schedule(static) if (!a.heads_parallel && int64_t(rows) * keys > 16384)
      for (int g = 0; g < (rows + R - 1) / R; ++g) {
        int visible[R], first[R];
        const int count = std::min(R, rows - g * R);
        for (int r = 0; r < count; ++r) {
          const int pos = a.pos0 + i0 + g * R + r;  // the query's position: keys (pos - window, pos] take part
          visible[r] = pos + 1, first[r] = a.window ? std::max(0, pos - a.window + 1) : 0;
        }
        float* rows_s = s + int64_t(g) * R * T;
        if (count == R) layers::causal_softmax_rows<R>(rows_s, T, visible, keys, first);
        else
          for (int r = 0; r < count; ++r) layers::causal_softmax(rows_s + int64_t(r) * T, visible[r], keys, first[r]);
      }
      if (a.p_operand) a.p_operand(s, rows, keys, T);
      serial_sgemm(gemm_op::none, gemm_op::none, rows, hd, keys, 1.0f, s, T, Vv, a.kv.stride, 0.0f,
                   a.o + r0 * a.os + h * hd, a.os);
    }
  };
  if (a.heads_parallel) {
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < a.batch * H; ++bh) head(bh);
  } else {
    for (int bh = 0; bh < a.batch * H; ++bh) head(bh);
  }
  double flops = 0;
  for (int i0 = 0; i0 < a.seq; i0 += a.query_block) {
    const int rows = std::min(a.query_block, a.seq - i0), keys = a.pos0 + i0 + rows;
    flops += 4.0 * rows * double(keys) * hd;
  }
  return flops * a.batch * H;
}

void attention_backward(const attention_args& a, const float* dO, float* dq, float* dk, float* dv,
                        std::vector<float>& dP_scratch) {
  const int T = a.seq, hd = a.hd, H = a.heads, nkv = a.kv_heads, group = H / nkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int qs = int(a.qs), ks = int(a.kv.stride), os = int(a.os);
  dP_scratch.resize(int64_t(omp_get_max_threads()) * T * T);  // kept across layers and steps
  #pragma omp parallel for schedule(static)
  for (int bk = 0; bk < a.batch * nkv; ++bk) {
    const int bi = bk / nkv, kvh = bk % nkv;
    float* dP = dP_scratch.data() + int64_t(omp_get_thread_num()) * T * T;
    const float* K = a.kv.k + bi * a.kv.seq_stride + kvh * hd;
    const float* Vv = a.kv.v + bi * a.kv.seq_stride + kvh * hd;
    float* dK = dk + bi * a.kv.seq_stride + kvh * hd;
    float* dV = dv + bi * a.kv.seq_stride + kvh * hd;
    for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
      const float* P = a.scores + (int64_t(bi) * H + h) * a.scores_per_head;
      const float* dOh = dO + int64_t(bi) * T * os + h * hd;
      const float* Q = a.q + int64_t(bi) * T * qs + h * hd;
      float* dQ = dq + int64_t(bi) * T * qs + h * hd;
      serial_sgemm(gemm_op::none, gemm_op::transpose, T, T, hd, 1.0f, dOh, os, Vv, ks, 0.0f, dP, T);
      serial_sgemm(gemm_op::transpose, gemm_op::none, T, hd, T, 1.0f, P, T, dOh, os, 1.0f, dV, ks);
      for (int i = 0; i < T; ++i) {
        const float* pr = P + int64_t(i) * T;
        float* dr = dP + int64_t(i) * T;
        double dot = 0;
        for (int t = 0; t <= i; ++t) dot += double(pr[t]) * dr[t];
        for (int t = 0; t <= i; ++t) dr[t] = pr[t] * (dr[t] - static_cast<float>(dot));
        std::fill(dr + i + 1, dr + T, 0.0f);
      }
      serial_sgemm(gemm_op::none, gemm_op::none, T, hd, T, scale, dP, T, K, ks, 0.0f, dQ, qs);
      serial_sgemm(gemm_op::transpose, gemm_op::none, T, hd, T, scale, dP, T, Q, qs, 1.0f, dK, ks);
    }
  }
}

// ---- the block -----------------------------------------------------------------------------------------

void set_qkv(const model_config& c, block_acts& a, float* qkv, float* q, float* k, float* v) {
  const int64_t D = c.dim, KV = int64_t(c.n_kv_heads) * c.head_dim();
  if (c.fused_qkv()) a.q = qkv, a.k = qkv + D, a.v = qkv + 2 * D, a.qs = a.ks = 3 * D;
  else a.q = q, a.k = k, a.v = v, a.qs = D, a.ks = KV;
}

namespace {

// act[i] = f(up[i]) over n values (the MLP of the families without a gate).
void activation_forward(activation f, const float* up, float* act, int64_t n) {
  switch (f) {
    case activation::gelu_tanh:
      #pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) act[i] = layers::gelu_tanh(up[i]);
      break;
    case activation::gelu:
      #pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) act[i] = layers::gelu_erf(up[i]);
      break;
    case activation::relu:
      #pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) act[i] = layers::relu(up[i]);
      break;
    case activation::silu:  // (ungated SiLU: no family has it; validate refuses it)
      LOWBIT_ASSERT(false);
  }
}

// dup[i] = dact[i] f'(up[i]).
void activation_backward(activation f, const float* up, const float* dact, float* dup, int64_t n) {
  switch (f) {
    case activation::gelu_tanh:
      #pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) dup[i] = dact[i] * layers::gelu_tanh_grad(up[i]);
      break;
    case activation::gelu:
      #pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) dup[i] = dact[i] * layers::gelu_erf_grad(up[i]);
      break;
    case activation::relu:
      #pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) dup[i] = dact[i] * layers::relu_grad(up[i]);
      break;
    case activation::silu:
      LOWBIT_ASSERT(false);
  }
}

}  // namespace

void block_forward(const model_config& c, const block_params& p, int layer, block_acts& a, int batch, int seq,
                   int pos0, block_hooks& h) {
  const bool fused = c.fused_qkv(), pre_ln = c.norm_before, parallel = c.has_parallel_residual();
  const int64_t n = int64_t(batch) * seq;
  const int D = c.dim, H = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim(), KV = nkv * hd, F = c.hidden_dim;
  const int lin = layer * linears_per_block;
  linear_ops& ops = *h.ops;
  std::vector<float> packed;  // a strided intermediate made contiguous for the dump
  auto dump = [&](const char* name, const float* data, int64_t cols, int64_t stride) {
    if (!h.dump) return;
    if (stride != cols) {
      packed.resize(n * cols);
      for (int64_t i = 0; i < n; ++i) std::copy_n(data + i * stride, cols, packed.data() + i * cols);
      data = packed.data();
    }
    h.dump(name, data, cols);
  };

  // ---- attention ----
  const float* attn_in = a.x;  // post-LN: the block's input itself
  if (pre_ln) {
    norm_forward(c, p.attn_norm, p.attn_norm_b, a.x, a.n1, n, a.mean1, a.inv1);
    attn_in = a.n1;
  }
  dump("attn_norm", attn_in, D, D);
  // Parallel residual: the MLP reads norm2(x), taken before x1 (which may alias x) is written.
  if (parallel) norm_forward(c, p.ffn_norm, p.ffn_norm_b, a.x, a.n2, n, a.mean2, a.inv2);
  const float* xq = ops.input(attn_in, n, D, lin);
  if (fused) {
    matmul_forward(ops, xq, n, D, p.wqkv, p.bqkv, 3 * D, a.q, lin + 0);  // q, k, v fused: [n, 3D]
  } else {
    matmul_forward(ops, xq, n, D, p.wq, p.bq, D, a.q, lin + 0);
    matmul_forward(ops, xq, n, D, p.wk, p.bk, KV, a.k, lin + 1);
    matmul_forward(ops, xq, n, D, p.wv, p.bv, KV, a.v, lin + 2);
  }
  if (c.uses_rope()) {
    layers::rope(a.q, n, H, int(a.qs), pos0, seq, *h.rope);
    layers::rope(a.k, n, nkv, int(a.ks), pos0, seq, *h.rope);
  }
  dump("q", a.q, D, a.qs);
  dump("k", a.k, KV, a.ks);
  dump("v", a.v, KV, a.ks);
  const kv_source kv = h.kv ? h.kv(layer, a.k, a.v, a.ks) : kv_source{a.k, a.v, a.ks, int64_t(seq) * a.ks};
  if (h.q_operand) h.q_operand(layer, a.q, a.qs);
  attention_args at;
  at.q = a.q, at.qs = a.qs, at.kv = kv, at.o = a.o, at.os = D;
  at.scores = a.scores, at.scores_per_head = a.scores_per_head, at.scores_per_thread = a.scores_per_thread;
  at.batch = batch, at.seq = seq, at.pos0 = pos0, at.heads = H, at.kv_heads = nkv, at.hd = hd;
  at.window = c.sliding_window;
  at.query_block = h.query_block, at.heads_parallel = h.heads_parallel;
  at.p_operand = h.p_operand;
  h.flops += attention_forward(at);
  dump("attn", a.o, D, D);
  matmul_forward(ops, ops.input(a.o, n, D, lin + 3), n, D, p.wo, p.bo, D, a.y, lin + 3);
  dump("attn_out", a.y, D, D);
  residual_add(a.x, a.y, a.x1, n * D);
  if (!pre_ln) {  // x1 = norm1(x + attention)
    norm_forward(c, p.attn_norm, p.attn_norm_b, a.x1, a.n1, n, a.mean1, a.inv1);
    std::copy_n(a.n1, n * D, a.x1);
  }

  // ---- MLP ----
  const float* mlp_in = a.n2;  // pre-LN: norm2(x1) (parallel: norm2(x), above)
  if (!pre_ln) mlp_in = a.x1;
  else if (!parallel) norm_forward(c, p.ffn_norm, p.ffn_norm_b, a.x1, a.n2, n, a.mean2, a.inv2);
  dump("ffn_norm", mlp_in, D, D);
  if (c.gated_mlp()) {
    const float* x2q = ops.input(mlp_in, n, D, lin + 4);
    matmul_forward(ops, x2q, n, D, p.w_gate, p.b_gate, F, a.gate, lin + 4);
    matmul_forward(ops, x2q, n, D, p.w_up, p.b_up, F, a.up, lin + 5);
    // SwiGLU, silu(gate) * up (Shazeer 2020) with std::exp's bits in SIMD (kernels/expf.hpp's swiglu_f32), a row each.
    #pragma omp parallel for schedule(static) if (n * F > 65536)
    for (int64_t i = 0; i < n; ++i) swiglu_f32(a.gate + i * F, a.up + i * F, F, a.act + i * F);
  } else {
    matmul_forward(ops, ops.input(mlp_in, n, D, lin + 5), n, D, p.w_up, p.b_up, F, a.up, lin + 5);
    activation_forward(c.mlp_activation(), a.up, a.act, n * F);
  }
  dump("ffn_act", a.act, F, F);
  matmul_forward(ops, ops.input(a.act, n, F, lin + 6), n, F, p.w_down, p.b_down, D, a.y, lin + 6);
  dump("ffn_out", a.y, D, D);
  residual_add(a.x1, a.y, a.out, n * D);
  if (!pre_ln) {  // out = norm2(x1 + MLP)
    norm_forward(c, p.ffn_norm, p.ffn_norm_b, a.out, a.n2, n, a.mean2, a.inv2);
    std::copy_n(a.n2, n * D, a.out);
  }
  dump("out", a.out, D, D);
}

void block_backward(const model_config& c, const block_params& p, const block_grads& g, int layer, const block_acts& a,
                    int batch, int seq, const layers::rope_table* rope, quantized_gemms& G, block_grad_scratch& s) {
  LOWBIT_ASSERT(c.norm_before);  // post-LN blocks have no backward (train_model refuses them)
  const bool fused = c.fused_qkv(), parallel = c.has_parallel_residual();
  const int64_t N = int64_t(batch) * seq;
  const int D = c.dim, H = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim(), KV = nkv * hd, F = c.hidden_dim;
  const int lin = layer * linears_per_block;
  const int64_t ND = N * D, NF = N * F;
  // d(n2), the MLP input's gradient: kept in dn2 until norm2's backward when norm2 reads x (parallel
  // residual), whose gradient is complete only after the attention's.
  float* dmlp_in = parallel ? s.dn2 : s.dn;

  // out = x1 + down(act): dact = dx Wd, dWd = dx^T act
  std::fill(s.dact, s.dact + NF, 0.0f);
  G.backward_input(s.dx, N, D, p.w_down, F, s.dact, lin + 6);
  G.backward_weight(s.dx, N, D, a.act, G.weight_grad_input(a.act, N, F, lin + 6), F, g.w_down, lin + 6);
  if (g.b_down) bias_backward(s.dx, N, D, g.b_down);
  std::fill(dmlp_in, dmlp_in + ND, 0.0f);
  if (!c.gated_mlp()) {
    // act = f(up), up = n2 Wu^T + bu
    activation_backward(c.mlp_activation(), a.up, s.dact, s.dup, NF);
    G.backward_input(s.dup, N, F, p.w_up, D, dmlp_in, lin + 5);
    G.backward_weight(s.dup, N, F, a.n2, G.weight_grad_input(a.n2, N, D, lin + 5), D, g.w_up, lin + 5);
    if (g.b_up) bias_backward(s.dup, N, F, g.b_up);
  } else {
    // act = silu(gate) * up
    #pragma omp parallel for schedule(static) if (NF > 65536)
    for (int64_t i = 0; i < NF; ++i) {
      const float gt = a.gate[i];
      const float sg = 1.0f / (1.0f + std::exp(-gt));
      s.dup[i] = s.dact[i] * gt * sg;
      s.dgate[i] = s.dact[i] * a.up[i] * sg * (1.0f + gt * (1.0f - sg));
    }
    G.backward_input(s.dgate, N, F, p.w_gate, D, dmlp_in, lin + 4);
    G.backward_input(s.dup, N, F, p.w_up, D, dmlp_in, lin + 5);
    const auto xq6 = G.weight_grad_input(a.n2, N, D, lin + 4);
    G.backward_weight(s.dgate, N, F, a.n2, xq6, D, g.w_gate, lin + 4);
    G.backward_weight(s.dup, N, F, a.n2, xq6, D, g.w_up, lin + 5);
    if (g.b_gate) bias_backward(s.dgate, N, F, g.b_gate);
    if (g.b_up) bias_backward(s.dup, N, F, g.b_up);
  }
  // x1 = x + attn: dx1 = dx + norm2'(dn2) (parallel: norm2 reads x, below)
  if (!parallel)
    norm_backward(c, p.ffn_norm, a.x1, a.mean2, a.inv2, s.dn, s.dx, g.ffn_norm, g.ffn_norm_b, N, *s.dnorm,
                  *s.dnorm_b);
  // attn_output: do = dx1 Wo
  std::fill(s.dn, s.dn + ND, 0.0f);  // dn holds d(o) now
  G.backward_input(s.dx, N, D, p.wo, D, s.dn, lin + 3);
  G.backward_weight(s.dx, N, D, a.o, G.weight_grad_input(a.o, N, D, lin + 3), D, g.wo, lin + 3);
  if (g.bo) bias_backward(s.dx, N, D, g.bo);
  if (fused) std::fill(s.dqkv, s.dqkv + N * 3 * D, 0.0f);
  else std::fill(s.dk, s.dk + N * KV, 0.0f), std::fill(s.dv, s.dv + N * KV, 0.0f);
  attention_args at;
  at.q = a.q, at.qs = a.qs, at.kv = {a.k, a.v, a.ks, int64_t(seq) * a.ks}, at.o = a.o, at.os = D;
  at.scores = a.scores, at.scores_per_head = a.scores_per_head;
  at.batch = batch, at.seq = seq, at.pos0 = 0, at.heads = H, at.kv_heads = nkv, at.hd = hd;
  at.window = c.sliding_window;
  attention_backward(at, s.dn, s.dq, s.dk, s.dv, *s.dP);
  if (c.uses_rope()) {  // the rotation's transpose: by -angle
    layers::rope(s.dq, N, H, int(a.qs), 0, seq, *rope, true);
    layers::rope(s.dk, N, nkv, int(a.ks), 0, seq, *rope, true);
  }
  std::fill(s.dn, s.dn + ND, 0.0f);  // dn holds d(n1) now
  if (fused) {
    G.backward_input(s.dqkv, N, 3 * D, p.wqkv, D, s.dn, lin + 0);
    G.backward_weight(s.dqkv, N, 3 * D, a.n1, G.weight_grad_input(a.n1, N, D, lin + 0), D, g.wqkv, lin + 0);
    if (g.bqkv) bias_backward(s.dqkv, N, 3 * D, g.bqkv);
  } else {
    G.backward_input(s.dq, N, D, p.wq, D, s.dn, lin + 0);
    G.backward_input(s.dk, N, KV, p.wk, D, s.dn, lin + 1);
    G.backward_input(s.dv, N, KV, p.wv, D, s.dn, lin + 2);
    const auto xq6 = G.weight_grad_input(a.n1, N, D, lin + 0);
    G.backward_weight(s.dq, N, D, a.n1, xq6, D, g.wq, lin + 0);
    G.backward_weight(s.dk, N, KV, a.n1, xq6, D, g.wk, lin + 1);
    G.backward_weight(s.dv, N, KV, a.n1, xq6, D, g.wv, lin + 2);
    if (g.bq) bias_backward(s.dq, N, D, g.bq), bias_backward(s.dk, N, KV, g.bk), bias_backward(s.dv, N, KV, g.bv);
  }
  norm_backward(c, p.attn_norm, a.x, a.mean1, a.inv1, s.dn, s.dx, g.attn_norm, g.attn_norm_b, N, *s.dnorm,
                *s.dnorm_b);
  if (parallel)
    norm_backward(c, p.ffn_norm, a.x, a.mean2, a.inv2, s.dn2, s.dx, g.ffn_norm, g.ffn_norm_b, N, *s.dnorm,
                  *s.dnorm_b);
}

// ---- classifier and loss -------------------------------------------------------------------------------

void classifier_forward(linear_ops& ops, const float* xq, int64_t n, int D, const float* cls, int V, float* logits) {
  matmul_forward(ops, xq, n, D, cls, nullptr, V, logits, classifier_linear);
}

void classifier_backward(const float* dlogits, const float* x, const float* cls, int64_t n, int D, int V, float* dx,
                         float* dcls) {
  tiled_sgemm(gemm_op::none, gemm_op::none, n, D, V, 1.0f, dlogits, V, cls, D, 0.0f, dx, D);
  tiled_sgemm(gemm_op::transpose, gemm_op::none, V, D, n, 1.0f, dlogits, V, x, D, 1.0f, dcls, D);
}

// The backward carries per-token magnitudes (a mean's 1/N would push small gradients below a
// shared-exponent format's range, e.g. flex16+5's 2^-16); the caller divides the parameter
// gradients by its divisor at the end.
double cross_entropy(const float* logits, const int32_t* targets, int64_t n, int V, float* dlogits) {
  std::vector<double> row_loss(n);
  #pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits + i * V;
    const float mx = max_of(z, V);
    const double sum = sum_exp_shifted(z, V, mx);
    row_loss[i] = std::log(sum) + mx - z[targets[i]];
    if (dlogits) {
      float* dz = dlogits + i * V;
      exp_shifted_scaled(z, V, mx, 1.0 / sum, dz);
      dz[targets[i]] -= 1.0f;
    }
  }
  double loss = 0;
  for (double l : row_loss) loss += l;
  return loss;
}

}  // namespace lowbit::decoder

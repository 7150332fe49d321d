// Forward and backward of the Llama and GPT-2 decoders for training (shapes in train.hpp and
// below), with the six GEMM operands of every linear layer open to an operand_quantizer. N =
// batch * ctx tokens, D = dim, KV = kv heads * hd, F = hidden, V = vocab.
#include "lowbit/engine/train.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "src/engine/layers.hpp"

namespace lowbit {

const char* gemm_operand_label(gemm_operand op) {
  static const char* names[] = {"P1", "P2", "P3", "P4", "P5", "P6"};
  return names[static_cast<int>(op)];
}
const char* gemm_operand_key(gemm_operand op) {
  static const char* names[] = {"x", "w", "dy", "w_bwd", "dy_w", "x_bwd"};
  return names[static_cast<int>(op)];
}

std::vector<std::string> operand_quantizer::set_token_shard(int64_t, int64_t, int64_t total_tokens) {
  if (total_tokens < 0) return {};
  throw error("this training plan's quantizer does not run data-parallel (its stochastic rounding and scales "
              "would be per process); run it as one process");
}

namespace {

// splitmix64 (Steele et al. 2014): the initialisation's random stream, the same on every
// platform (std::normal_distribution is not).
uint64_t splitmix64(uint64_t& s) { return mix64(s += 0x9E3779B97F4A7C15ull); }
double uniform01(uint64_t& s) { return ((splitmix64(s) >> 11) + 0.5) * 0x1.0p-53; }

// Box-Muller normals.
void fill_normal(float* x, int64_t n, double std, uint64_t& s) {
  for (int64_t i = 0; i < n; i += 2) {
    const double u1 = uniform01(s), u2 = uniform01(s);
    const double r = std::sqrt(-2.0 * std::log(u1)) * std;
    x[i] = static_cast<float>(r * std::cos(2 * M_PI * u2));
    if (i + 1 < n) x[i + 1] = static_cast<float>(r * std::sin(2 * M_PI * u2));
  }
}

// out[cols, rows] = in[rows, cols]^T: OpenBLAS's out-of-place transpose (a plain tiled loop took
// 15% of a fully quantized training step at dim 256, this 3%; perf, same run shape).
void transpose(const float* in, float* out, int64_t rows, int64_t cols) {
  cblas_somatcopy(CblasRowMajor, CblasTrans, int(rows), int(cols), 1.0f, in, int(cols), out, int(rows));
}

}  // namespace

// ---- parameters ----------------------------------------------------------------------------------

void train_model::build_views() {
  const model_config& c = cfg_;
  c.validate();
  const bool gpt2 = c.arch == architecture::gpt2;
  if (gpt2 && c.l1_norm) throw error("train: the L1 normalisation is for Llama (GPT-2 has LayerNorm)");
  const int D = c.dim, KV = c.n_kv_heads * c.head_dim(), F = c.hidden_dim, V = c.vocab_size;
  views_.clear();
  int64_t off = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool decay) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    views_.push_back({name, off, n, std::move(shape), decay});
    off += n;
  };
  add("token_embd.weight", {V, D}, true);
  if (gpt2) {
    // LayerNorm gains and biases and the linears' biases are not decayed.
    add("position_embd.weight", {c.max_seq_len, D}, true);
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string b = fmt::format("blk.{}.", l);
      add(b + "attn_norm.weight", {D}, false);
      add(b + "attn_norm.bias", {D}, false);
      add(b + "attn_qkv.weight", {3 * D, D}, true);
      add(b + "attn_qkv.bias", {3 * D}, false);
      add(b + "attn_output.weight", {D, D}, true);
      add(b + "attn_output.bias", {D}, false);
      add(b + "ffn_norm.weight", {D}, false);
      add(b + "ffn_norm.bias", {D}, false);
      add(b + "ffn_up.weight", {F, D}, true);
      add(b + "ffn_up.bias", {F}, false);
      add(b + "ffn_down.weight", {D, F}, true);
      add(b + "ffn_down.bias", {D}, false);
    }
  } else {
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string b = fmt::format("blk.{}.", l);
      add(b + "attn_norm.weight", {D}, false);
      add(b + "attn_q.weight", {D, D}, true);
      add(b + "attn_k.weight", {KV, D}, true);
      add(b + "attn_v.weight", {KV, D}, true);
      add(b + "attn_output.weight", {D, D}, true);
      add(b + "ffn_norm.weight", {D}, false);
      add(b + "ffn_gate.weight", {F, D}, true);
      add(b + "ffn_up.weight", {F, D}, true);
      add(b + "ffn_down.weight", {D, F}, true);
    }
  }
  add("output_norm.weight", {D}, false);
  if (gpt2) add("output_norm.bias", {D}, false);
  if (!c.tied_classifier) add("output.weight", {V, D}, true);
  offset_of_.clear();
  for (const auto& v : views_) offset_of_[v.name] = v.offset;
  params_.assign(off, 0.0f);
  grads_.assign(off, 0.0f);
}

float* train_model::p(const std::string& name) {
  auto it = offset_of_.find(name);
  if (it == offset_of_.end()) throw error("train: no parameter " + name);
  return params_.data() + it->second;
}
float* train_model::g(const std::string& name) {
  auto it = offset_of_.find(name);
  if (it == offset_of_.end()) throw error("train: no parameter " + name);
  return grads_.data() + it->second;
}

train_model::train_model(const model_config& c, uint64_t seed) : cfg_(c) {
  build_views();
  uint64_t s = seed * 0x2545F4914F6CDD1Dull + 1;
  const double resid_std = 0.02 / std::sqrt(2.0 * c.n_layers);
  for (const auto& v : views_) {
    float* x = params_.data() + v.offset;
    const bool bias = v.name.size() > 5 && v.name.compare(v.name.size() - 5, 5, ".bias") == 0;
    if (v.shape.size() == 1) std::fill_n(x, v.size, bias ? 0.0f : 1.0f);  // biases 0, norm gains 1
    else {
      const bool resid = v.name.find("attn_output") != std::string::npos ||
                         v.name.find("ffn_down") != std::string::npos;
      fill_normal(x, v.size, resid ? resid_std : 0.02, s);
    }
  }
}

train_model::train_model(const model& m) : cfg_(m.config) {
  build_views();
  load(m);
}

void train_model::load(const model& m) {
  for (const auto& v : views_) {
    const tensor& t = m.get(v.name);
    if (t.shape != v.shape)
      throw error(fmt::format("train: {} has shape [{}], the model being trained needs [{}]", v.name,
                              fmt::join(t.shape, ", "), fmt::join(v.shape, ", ")));
    std::copy(t.data.begin(), t.data.end(), params_.begin() + v.offset);
  }
}

model train_model::to_model() const {
  model m;
  m.config = cfg_;
  for (const auto& v : views_) {
    tensor t;
    t.shape = v.shape;
    t.data.assign(params_.begin() + v.offset, params_.begin() + v.offset + v.size);
    m.tensors.emplace(v.name, std::move(t));
  }
  m.validate();
  return m;
}

// ---- activations ---------------------------------------------------------------------------------

struct train_model::activations {
  int batch = 0, ctx = 0;
  // GPT-2: qkv [N, 3D] in place of q, k, v; mean1/mean2 the LayerNorms' means; up holds the
  // GELU's input and act its output; no gate.
  struct layer {
    std::vector<float> x, mean1, inv1, n1, q, k, v, qkv, att, o, x1, mean2, inv2, n2, gate, up, act;
  };
  std::vector<layer> layers;
  std::vector<float> x_final, mean_final, inv_final, n_final;
  layers::rope_table rope;
  // scratch
  std::vector<float> qa, qb, qc, dx, dn, dq, dk, dv, dqkv, dgate, dup, dact, dlogits, y;
  std::vector<float> dP;  // attention backward, [threads][T, T]
  std::vector<double> dnorm, dnorm_b;

  void ensure(const model_config& c, int b, int t) {
    if (b == batch && t == ctx) return;
    batch = b, ctx = t;
    const int64_t N = int64_t(b) * t, D = c.dim, KV = int64_t(c.n_kv_heads) * c.head_dim(),
                  F = c.hidden_dim, H = c.n_heads;
    const bool gpt2 = c.arch == architecture::gpt2;
    layers.assign(c.n_layers, {});
    for (auto& L : layers) {
      L.x.resize(N * D), L.inv1.resize(N), L.n1.resize(N * D), L.att.resize(int64_t(b) * H * t * t);
      L.o.resize(N * D), L.x1.resize(N * D), L.inv2.resize(N), L.n2.resize(N * D);
      L.up.resize(N * F), L.act.resize(N * F);
      if (gpt2) L.qkv.resize(N * 3 * D), L.mean1.resize(N), L.mean2.resize(N);
      else L.q.resize(N * D), L.k.resize(N * KV), L.v.resize(N * KV), L.gate.resize(N * F);
    }
    x_final.resize(N * D), inv_final.resize(N), n_final.resize(N * D);
    if (gpt2) mean_final.resize(N);
    else rope = layers::rope_table(t, c.head_dim(), c.rope_theta);
    // quantized operands of the block linears (never the classifier): X or dY [N, max(D, F, 3D)]
    // and the weights [F, D], [D, D] or [3D, D]
    const int64_t wide = std::max<int64_t>({D, F, gpt2 ? 3 * D : 0});
    const int64_t big = std::max(N * wide, wide * D);
    qa.resize(big), qb.resize(big), qc.resize(big);
    dx.resize(N * D), dn.resize(N * D);
    if (gpt2) dqkv.resize(N * 3 * D);
    else dq.resize(N * D), dk.resize(N * KV), dv.resize(N * KV), dgate.resize(N * F);
    dup.resize(N * F), dact.resize(N * F), y.resize(N * std::max(D, F));
    dlogits.resize(N * c.vocab_size);
    dnorm.resize(D), dnorm_b.resize(D);
  }
};

namespace {

// The linear layers' GEMMs with their operands fake-quantized (train.hpp's table).
struct gemms {
  operand_quantizer* q;
  int64_t step;
  std::vector<float>& buf_a;  // quantized X (or X^T)
  std::vector<float>& buf_b;  // quantized W (or W^T)
  std::vector<float>& buf_c;  // quantized dY (or dY^T)

  bool on(gemm_operand op) const { return q && q->quantizes(op); }
  bool din() const { return q && q->feature_axis_groups(); }
  // buf = in [rows, cols] quantized with groups along rows (the GEMM reduces over them): in in's
  // layout when the quantizer can (returns true), else as Q(in^T) [cols, rows] (returns false).
  // The fallback hands apply() a transposed tensor whose rows are not tokens: only quantizers
  // without a token shard take it (the shard-aware ones implement apply_columns).
  bool quantize_along_rows(gemm_operand op, int linear, const float* in, float* buf, int64_t rows, int64_t cols) {
    if (q->apply_columns(op, linear, step, in, buf, rows, cols)) return true;
    transpose(in, buf, rows, cols);
    q->apply(op, linear, step, buf, buf, cols, rows);
    return false;
  }

  // P1: the input X [N, in], grouped along in; returns X itself when P1 is not quantized.
  const float* input(const float* x, int64_t n, int in, int linear) {
    if (!on(gemm_operand::x_fwd)) return x;
    q->apply(gemm_operand::x_fwd, linear, step, x, buf_a.data(), n, in);
    return buf_a.data();
  }
  // y[N, out] = xq[N, in] Q2(W)[out, in]^T
  void forward(const float* xq, int64_t n, int in, const float* w, int out, float* y, int linear) {
    const float* wq = w;
    if (on(gemm_operand::w_fwd)) {
      q->apply(gemm_operand::w_fwd, linear, step, w, buf_b.data(), out, in);
      wq = buf_b.data();
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), out, in, 1.0f, xq, in, wq, in, 0.0f, y, out);
  }
  // dx[N, in] += Q3(dY)[N, out] Q4(W)[out, in] (Q4 grouped along out: quantized as W^T [in, out]).
  void backward_input(const float* dy, int64_t n, int out, const float* w, int in, float* dx, int linear) {
    const float* a = dy;
    if (on(gemm_operand::dy_dx)) {
      q->apply(gemm_operand::dy_dx, linear, step, dy, buf_c.data(), n, out);
      a = buf_c.data();
    }
    if (!on(gemm_operand::w_dx)) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), in, out, 1.0f, a, out, w, in, 1.0f, dx, in);
    } else if (din()) {
      q->apply(gemm_operand::w_dx, linear, step, w, buf_b.data(), out, in);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), in, out, 1.0f, a, out, buf_b.data(), in,
                  1.0f, dx, in);
    } else if (quantize_along_rows(gemm_operand::w_dx, linear, w, buf_b.data(), out, in)) {  // [out, in]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), in, out, 1.0f, a, out, buf_b.data(), in,
                  1.0f, dx, in);
    } else {  // W^T [in, out]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), in, out, 1.0f, a, out, buf_b.data(), out,
                  1.0f, dx, in);
    }
  }
  // X's operand of the dW GEMM (P6), prepared once per input shared by several linears: grouped
  // along tokens as X [N, in] (token_major) or X^T [in, N], or grouped along in as X [N, in]
  // (din); data null: X as it is.
  struct x_dw_operand {
    const float* data = nullptr;
    bool token_major = true;  // [N, in]; else X^T [in, N]
  };
  x_dw_operand weight_grad_input(const float* x, int64_t n, int in, int linear) {
    if (!on(gemm_operand::x_dw)) return {};
    if (din()) {
      q->apply(gemm_operand::x_dw, linear, step, x, buf_a.data(), n, in);
      return {buf_a.data(), true};
    }
    return {buf_a.data(), quantize_along_rows(gemm_operand::x_dw, linear, x, buf_a.data(), n, in)};
  }
  // dw[out, in] = Q5(dY)^T Q6(X) over the N tokens (overwrites dw).
  void backward_weight(const float* dy, int64_t n, int out, const float* x, const x_dw_operand& xq6, int in,
                       float* dw, int linear) {
    const int N = int(n);
    // A' = dY^T [out, N]
    const float* a = dy;
    CBLAS_TRANSPOSE ta = CblasTrans;
    int lda = out;
    if (on(gemm_operand::dy_dw)) {
      if (din()) q->apply(gemm_operand::dy_dw, linear, step, dy, buf_c.data(), n, out);
      else if (!quantize_along_rows(gemm_operand::dy_dw, linear, dy, buf_c.data(), n, out))
        ta = CblasNoTrans, lda = N;  // dY^T [out, N]
      a = buf_c.data();
    }
    // B' = X [N, in]
    const float* b = x;
    CBLAS_TRANSPOSE tb = CblasNoTrans;
    int ldb = in;
    if (xq6.data) {
      b = xq6.data;
      if (!xq6.token_major) tb = CblasTrans, ldb = N;  // X^T [in, N]
    }
    cblas_sgemm(CblasRowMajor, ta, tb, out, in, N, 1.0f, a, lda, b, ldb, 0.0f, dw, in);
  }
};

}  // namespace

double train_model::forward_loss(const int32_t* inputs, const int32_t* targets, int batch, int ctx,
                                 operand_quantizer* q, int64_t step) {
  return run(inputs, targets, batch, ctx, 1.0, q, step, false);
}

double train_model::forward_backward(const int32_t* inputs, const int32_t* targets, int batch, int ctx,
                                     double loss_divisor, operand_quantizer* q, int64_t step) {
  return run(inputs, targets, batch, ctx, loss_divisor, q, step, true);
}

double train_model::run(const int32_t* inputs, const int32_t* targets, int batch, int ctx, double divisor,
                        operand_quantizer* qz, int64_t step, bool backward) {
  const model_config& c = cfg_;
  if (batch <= 0 || ctx <= 0) throw error(fmt::format("train: batch {} x ctx {} (expected > 0)", batch, ctx));
  if (ctx > c.max_seq_len)
    throw error(fmt::format("train: ctx {} exceeds the model's context {}", ctx, c.max_seq_len));
  const bool gpt2 = c.arch == architecture::gpt2;
  const int64_t N = int64_t(batch) * ctx;
  const int D = c.dim, H = c.n_heads, hd = c.head_dim(), nkv = c.n_kv_heads, KV = nkv * hd;
  const int F = c.hidden_dim, V = c.vocab_size, T = ctx;
  for (int64_t i = 0; i < N; ++i)
    if (inputs[i] < 0 || inputs[i] >= V || targets[i] < 0 || targets[i] >= V)
      throw error(fmt::format("train: token id {} outside the vocabulary (0..{})",
                              inputs[i] < 0 || inputs[i] >= V ? inputs[i] : targets[i], V - 1));
  const layers::thread_scope threads(N, D);  // tiny models run on one thread (forward.cpp)
  if (!act_) act_ = std::make_shared<activations>();
  activations& A = *act_;
  A.ensure(c, batch, ctx);
  gemms G{qz, step, A.qa, A.qb, A.qc};
  const layers::norm_kind norm_kind = cfg_.l1_norm ? layers::norm_kind::l1 : layers::norm_kind::rms;
  // Llama: RMS (or L1) norm of x with gain `name`.weight; GPT-2: LayerNorm with .weight and .bias.
  auto norm = [&](const float* x, const std::string& name, float* out, float* mean, float* inv) {
    if (gpt2)
      layers::layernorm(x, p(name + ".weight"), p(name + ".bias"), out, N, D, c.norm_eps, mean, inv);
    else
      layers::normalize(norm_kind, x, p(name + ".weight"), out, N, D, c.norm_eps, inv);
  };
  // y[N, out] += b[out]
  auto add_bias = [&](float* y, int out, const float* bias) {
    #pragma omp parallel for schedule(static) if (N * out > 65536)
    for (int64_t i = 0; i < N; ++i)
      for (int j = 0; j < out; ++j) y[i * out + j] += bias[j];
  };
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int group = H / nkv;
  // Where attention reads Q, K, V and writes dQ, dK, dV, and their row strides: Llama's separate
  // q [N, D], k and v [N, KV]; GPT-2's fused qkv [N, 3D] (n_kv_heads == n_heads).
  struct qkv_layout {
    float *q, *k, *v;
    int qs, ks;
  };
  auto layout = [&](activations::layer& L) {
    return gpt2 ? qkv_layout{L.qkv.data(), L.qkv.data() + D, L.qkv.data() + 2 * D, 3 * D, 3 * D}
                : qkv_layout{L.q.data(), L.k.data(), L.v.data(), D, KV};
  };
  const qkv_layout dlay = gpt2 ? qkv_layout{A.dqkv.data(), A.dqkv.data() + D, A.dqkv.data() + 2 * D, 3 * D, 3 * D}
                               : qkv_layout{A.dq.data(), A.dk.data(), A.dv.data(), D, KV};

  // ---- forward ----
  const float* emb = p("token_embd.weight");
  for (int64_t i = 0; i < N; ++i) std::copy_n(emb + int64_t(inputs[i]) * D, D, A.layers[0].x.data() + i * D);
  if (gpt2) {  // learned positions 0..ctx-1 of each sequence
    const float* wpe = p("position_embd.weight");
    for (int64_t i = 0; i < N; ++i) {
      float* x = A.layers[0].x.data() + i * D;
      const float* pe = wpe + (i % T) * D;
      for (int j = 0; j < D; ++j) x[j] += pe[j];
    }
  }
  for (int l = 0; l < c.n_layers; ++l) {
    auto& L = A.layers[l];
    const std::string b = fmt::format("blk.{}.", l);
    const int lin = l * 7;  // Llama: q k v o gate up down; GPT-2: qkv 0, attn_output 3, ffn_up 5, ffn_down 6
    norm(L.x.data(), b + "attn_norm", L.n1.data(), L.mean1.data(), L.inv1.data());
    const float* xq = G.input(L.n1.data(), N, D, lin);
    if (gpt2) {
      G.forward(xq, N, D, p(b + "attn_qkv.weight"), 3 * D, L.qkv.data(), lin + 0);
      add_bias(L.qkv.data(), 3 * D, p(b + "attn_qkv.bias"));
    } else {
      G.forward(xq, N, D, p(b + "attn_q.weight"), D, L.q.data(), lin + 0);
      G.forward(xq, N, D, p(b + "attn_k.weight"), KV, L.k.data(), lin + 1);
      G.forward(xq, N, D, p(b + "attn_v.weight"), KV, L.v.data(), lin + 2);
      layers::rope(L.q.data(), N, H, D, 0, T, A.rope);
      layers::rope(L.k.data(), N, nkv, KV, 0, T, A.rope);
    }
    const qkv_layout lay = layout(L);
    // Causal attention per (sequence, head): P = softmax(Q K^T / sqrt(hd)) [T, T], O = P V.
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < batch * H; ++bh) {
      const int bi = bh / H, h = bh % H, kvh = h / group;
      float* P = L.att.data() + int64_t(bh) * T * T;
      const float* Q = lay.q + int64_t(bi) * T * lay.qs + h * hd;
      const float* K = lay.k + int64_t(bi) * T * lay.ks + kvh * hd;
      const float* Vv = lay.v + int64_t(bi) * T * lay.ks + kvh * hd;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, Q, lay.qs, K, lay.ks, 0.0f, P, T);
      for (int i = 0; i < T; ++i) layers::causal_softmax(P + int64_t(i) * T, i + 1, T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, Vv, lay.ks, 0.0f,
                  L.o.data() + int64_t(bi) * T * D + h * hd, D);
    }
    G.forward(G.input(L.o.data(), N, D, lin + 3), N, D, p(b + "attn_output.weight"), D, A.y.data(), lin + 3);
    if (gpt2) add_bias(A.y.data(), D, p(b + "attn_output.bias"));
    for (int64_t i = 0; i < N * D; ++i) L.x1[i] = L.x[i] + A.y[i];
    norm(L.x1.data(), b + "ffn_norm", L.n2.data(), L.mean2.data(), L.inv2.data());
    if (gpt2) {
      G.forward(G.input(L.n2.data(), N, D, lin + 5), N, D, p(b + "ffn_up.weight"), F, L.up.data(), lin + 5);
      add_bias(L.up.data(), F, p(b + "ffn_up.bias"));
      #pragma omp parallel for schedule(static) if (N * F > 65536)
      for (int64_t i = 0; i < N * F; ++i) L.act[i] = layers::gelu_tanh(L.up[i]);
    } else {
      const float* x2q = G.input(L.n2.data(), N, D, lin + 4);
      G.forward(x2q, N, D, p(b + "ffn_gate.weight"), F, L.gate.data(), lin + 4);
      G.forward(x2q, N, D, p(b + "ffn_up.weight"), F, L.up.data(), lin + 5);
      #pragma omp parallel for schedule(static) if (N * F > 65536)
      for (int64_t i = 0; i < N * F; ++i) L.act[i] = layers::silu(L.gate[i]) * L.up[i];
    }
    G.forward(G.input(L.act.data(), N, F, lin + 6), N, F, p(b + "ffn_down.weight"), D, A.y.data(), lin + 6);
    if (gpt2) add_bias(A.y.data(), D, p(b + "ffn_down.bias"));
    float* next = l + 1 < c.n_layers ? A.layers[l + 1].x.data() : A.x_final.data();
    for (int64_t i = 0; i < N * D; ++i) next[i] = L.x1[i] + A.y[i];
  }
  norm(A.x_final.data(), "output_norm", A.n_final.data(), A.mean_final.data(), A.inv_final.data());
  const float* cls = c.tied_classifier ? p("token_embd.weight") : p("output.weight");
  logits_.resize(N * V);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(N), V, D, 1.0f, A.n_final.data(), D, cls, D,
              0.0f, logits_.data(), V);
  // Cross-entropy: loss_i = logsumexp(z_i) - z_i[target]; dz = softmax(z) - onehot, the gradient
  // of the summed loss: the backward carries per-token magnitudes (a mean's 1/N would push small
  // gradients below a shared-exponent format's range, e.g. flex16+5's 2^-16) and the parameter
  // gradients are divided by `divisor` at the end. Row losses are summed in order (bit-exact
  // whatever the thread count).
  std::vector<double> row_loss(N);
  #pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float* z = logits_.data() + i * V;
    float mx = z[0];
    for (int j = 1; j < V; ++j) mx = std::max(mx, z[j]);
    double sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp(double(z[j]) - mx);
    row_loss[i] = std::log(sum) + mx - z[targets[i]];
    if (backward) {
      float* dz = A.dlogits.data() + i * V;
      const double inv = 1.0 / sum;
      for (int j = 0; j < V; ++j) dz[j] = static_cast<float>(std::exp(double(z[j]) - mx) * inv);
      dz[targets[i]] -= 1.0f;
    }
  }
  double loss = 0;
  for (double l : row_loss) loss += l;
  if (!backward) return loss;

  // ---- backward ----
  std::fill(grads_.begin(), grads_.end(), 0.0f);
  // dx += norm'(dy); the gain's (and LayerNorm's bias's) gradients accumulate into name.weight/.bias.
  auto norm_backward = [&](const float* x, const std::string& name, const float* mean, const float* inv,
                           const float* dy, float* dx) {
    std::fill(A.dnorm.begin(), A.dnorm.end(), 0.0);
    float* dw = g(name + ".weight");
    if (gpt2) {
      std::fill(A.dnorm_b.begin(), A.dnorm_b.end(), 0.0);
      layers::layernorm_backward(x, p(name + ".weight"), mean, inv, dy, dx, A.dnorm.data(), A.dnorm_b.data(),
                                 N, D);
      float* db = g(name + ".bias");
      for (int j = 0; j < D; ++j) db[j] += static_cast<float>(A.dnorm_b[j]);
    } else {
      layers::normalize_backward(norm_kind, x, p(name + ".weight"), inv, dy, dx, A.dnorm.data(), N, D);
    }
    for (int j = 0; j < D; ++j) dw[j] += static_cast<float>(A.dnorm[j]);
  };
  // A bias's gradient: the column sums of dY [N, out] (not quantized), in double, rows in order.
  auto bias_backward = [&](const float* dy, int out, float* db) {
    std::vector<double> s(out, 0.0);
    for (int64_t i = 0; i < N; ++i)
      for (int j = 0; j < out; ++j) s[j] += dy[i * out + j];
    for (int j = 0; j < out; ++j) db[j] += static_cast<float>(s[j]);
  };
  // classifier: dn_final = dz cls [N, D]; dcls = dz^T n_final [V, D] (not quantized: Sun et al.
  // quantize the blocks' linear layers only)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), D, V, 1.0f, A.dlogits.data(), V, cls, D,
              0.0f, A.dn.data(), D);
  float* gcls = c.tied_classifier ? g("token_embd.weight") : g("output.weight");
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, D, int(N), 1.0f, A.dlogits.data(), V,
              A.n_final.data(), D, 1.0f, gcls, D);
  std::fill(A.dx.begin(), A.dx.end(), 0.0f);
  norm_backward(A.x_final.data(), "output_norm", A.mean_final.data(), A.inv_final.data(), A.dn.data(),
                A.dx.data());

  for (int l = c.n_layers - 1; l >= 0; --l) {
    auto& L = A.layers[l];
    const std::string b = fmt::format("blk.{}.", l);
    const int lin = l * 7;
    // x2 = x1 + down(act): dact = dx Wd, dWd = dx^T act
    std::fill(A.dact.begin(), A.dact.end(), 0.0f);
    G.backward_input(A.dx.data(), N, D, p(b + "ffn_down.weight"), F, A.dact.data(), lin + 6);
    G.backward_weight(A.dx.data(), N, D, L.act.data(), G.weight_grad_input(L.act.data(), N, F, lin + 6), F,
                      g(b + "ffn_down.weight"), lin + 6);
    if (gpt2) bias_backward(A.dx.data(), D, g(b + "ffn_down.bias"));
    std::fill(A.dn.begin(), A.dn.end(), 0.0f);
    if (gpt2) {
      // act = gelu(up), up = n2 Wu^T + bu
      #pragma omp parallel for schedule(static) if (N * F > 65536)
      for (int64_t i = 0; i < N * F; ++i) A.dup[i] = A.dact[i] * layers::gelu_tanh_grad(L.up[i]);
      G.backward_input(A.dup.data(), N, F, p(b + "ffn_up.weight"), D, A.dn.data(), lin + 5);
      G.backward_weight(A.dup.data(), N, F, L.n2.data(), G.weight_grad_input(L.n2.data(), N, D, lin + 5), D,
                        g(b + "ffn_up.weight"), lin + 5);
      bias_backward(A.dup.data(), F, g(b + "ffn_up.bias"));
    } else {
      // act = silu(gate) * up
      #pragma omp parallel for schedule(static) if (N * F > 65536)
      for (int64_t i = 0; i < N * F; ++i) {
        const float gt = L.gate[i];
        const float sg = 1.0f / (1.0f + std::exp(-gt));
        A.dup[i] = A.dact[i] * gt * sg;
        A.dgate[i] = A.dact[i] * L.up[i] * sg * (1.0f + gt * (1.0f - sg));
      }
      G.backward_input(A.dgate.data(), N, F, p(b + "ffn_gate.weight"), D, A.dn.data(), lin + 4);
      G.backward_input(A.dup.data(), N, F, p(b + "ffn_up.weight"), D, A.dn.data(), lin + 5);
      const auto xq6 = G.weight_grad_input(L.n2.data(), N, D, lin + 4);
      G.backward_weight(A.dgate.data(), N, F, L.n2.data(), xq6, D, g(b + "ffn_gate.weight"), lin + 4);
      G.backward_weight(A.dup.data(), N, F, L.n2.data(), xq6, D, g(b + "ffn_up.weight"), lin + 5);
    }
    // x1 = x + attn: dx1 = dx + norm'(dn)
    norm_backward(L.x1.data(), b + "ffn_norm", L.mean2.data(), L.inv2.data(), A.dn.data(), A.dx.data());
    // attn_output: do = dx1 Wo
    std::fill(A.dn.begin(), A.dn.end(), 0.0f);  // dn holds d(o) now
    G.backward_input(A.dx.data(), N, D, p(b + "attn_output.weight"), D, A.dn.data(), lin + 3);
    G.backward_weight(A.dx.data(), N, D, L.o.data(), G.weight_grad_input(L.o.data(), N, D, lin + 3), D,
                      g(b + "attn_output.weight"), lin + 3);
    if (gpt2) bias_backward(A.dx.data(), D, g(b + "attn_output.bias"));
    // attention backward per (sequence, kv head), so dK and dV accumulate without races:
    //   dP = dO V^T, dV += P^T dO, dS = P o (dP - rowsum(dP o P)), dQ = dS K s, dK += dS^T Q s.
    const qkv_layout lay = layout(L);
    if (gpt2) std::fill(A.dqkv.begin(), A.dqkv.end(), 0.0f);
    else std::fill(A.dk.begin(), A.dk.end(), 0.0f), std::fill(A.dv.begin(), A.dv.end(), 0.0f);
    A.dP.resize(int64_t(omp_get_max_threads()) * T * T);  // kept across layers and steps
    #pragma omp parallel for schedule(static)
    for (int bk = 0; bk < batch * nkv; ++bk) {
      const int bi = bk / nkv, kvh = bk % nkv;
      float* dP = A.dP.data() + int64_t(omp_get_thread_num()) * T * T;
      const float* K = lay.k + int64_t(bi) * T * lay.ks + kvh * hd;
      const float* Vv = lay.v + int64_t(bi) * T * lay.ks + kvh * hd;
      float* dK = dlay.k + int64_t(bi) * T * dlay.ks + kvh * hd;
      float* dV = dlay.v + int64_t(bi) * T * dlay.ks + kvh * hd;
      for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
        const float* P = L.att.data() + (int64_t(bi) * H + h) * T * T;
        const float* dO = A.dn.data() + int64_t(bi) * T * D + h * hd;
        const float* Q = lay.q + int64_t(bi) * T * lay.qs + h * hd;
        float* dQ = dlay.q + int64_t(bi) * T * dlay.qs + h * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dO, D, Vv, lay.ks, 0.0f, dP, T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, dO, D, 1.0f, dV, dlay.ks);
        for (int i = 0; i < T; ++i) {
          const float* pr = P + int64_t(i) * T;
          float* dr = dP + int64_t(i) * T;
          double dot = 0;
          for (int t = 0; t <= i; ++t) dot += double(pr[t]) * dr[t];
          for (int t = 0; t <= i; ++t) dr[t] = pr[t] * (dr[t] - static_cast<float>(dot));
          std::fill(dr + i + 1, dr + T, 0.0f);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dP, T, K, lay.ks, 0.0f, dQ,
                    dlay.qs);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dP, T, Q, lay.qs, 1.0f, dK,
                    dlay.ks);
      }
    }
    std::fill(A.dn.begin(), A.dn.end(), 0.0f);  // dn holds d(n1) now
    if (gpt2) {
      G.backward_input(A.dqkv.data(), N, 3 * D, p(b + "attn_qkv.weight"), D, A.dn.data(), lin + 0);
      G.backward_weight(A.dqkv.data(), N, 3 * D, L.n1.data(), G.weight_grad_input(L.n1.data(), N, D, lin + 0), D,
                        g(b + "attn_qkv.weight"), lin + 0);
      bias_backward(A.dqkv.data(), 3 * D, g(b + "attn_qkv.bias"));
    } else {
      layers::rope(A.dq.data(), N, H, D, 0, T, A.rope, true);
      layers::rope(A.dk.data(), N, nkv, KV, 0, T, A.rope, true);
      G.backward_input(A.dq.data(), N, D, p(b + "attn_q.weight"), D, A.dn.data(), lin + 0);
      G.backward_input(A.dk.data(), N, KV, p(b + "attn_k.weight"), D, A.dn.data(), lin + 1);
      G.backward_input(A.dv.data(), N, KV, p(b + "attn_v.weight"), D, A.dn.data(), lin + 2);
      const auto xq6 = G.weight_grad_input(L.n1.data(), N, D, lin + 0);
      G.backward_weight(A.dq.data(), N, D, L.n1.data(), xq6, D, g(b + "attn_q.weight"), lin + 0);
      G.backward_weight(A.dk.data(), N, KV, L.n1.data(), xq6, D, g(b + "attn_k.weight"), lin + 1);
      G.backward_weight(A.dv.data(), N, KV, L.n1.data(), xq6, D, g(b + "attn_v.weight"), lin + 2);
    }
    norm_backward(L.x.data(), b + "attn_norm", L.mean1.data(), L.inv1.data(), A.dn.data(), A.dx.data());
  }
  // embedding rows (and GPT-2's positions)
  float* gemb = g("token_embd.weight");
  for (int64_t i = 0; i < N; ++i) {
    float* r = gemb + int64_t(inputs[i]) * D;
    const float* d = A.dx.data() + i * D;
    for (int j = 0; j < D; ++j) r[j] += d[j];
  }
  if (gpt2) {
    float* gpe = g("position_embd.weight");
    for (int64_t i = 0; i < N; ++i) {
      float* r = gpe + (i % T) * D;
      const float* d = A.dx.data() + i * D;
      for (int j = 0; j < D; ++j) r[j] += d[j];
    }
  }
  const float inv_divisor = static_cast<float>(1.0 / divisor);
  #pragma omp parallel for schedule(static) if (grads_.size() > 65536)
  for (size_t i = 0; i < grads_.size(); ++i) grads_[i] *= inv_divisor;
  return loss;
}

// ---- optimizer -----------------------------------------------------------------------------------

void adamw::step(train_model& m, double lr, int64_t t) {
  auto& w = m.params();
  auto& gr = m.grads();
  if (m_.size() != w.size()) m_.assign(w.size(), 0.0f), v_.assign(w.size(), 0.0f);
  const double bc1 = 1.0 - std::pow(c_.beta1, double(t)), bc2 = 1.0 - std::pow(c_.beta2, double(t));
  const float b1 = float(c_.beta1), b2 = float(c_.beta2);
  for (const auto& v : m.views()) {
    const float decay = v.decay ? float(c_.weight_decay) : 0.0f;
    #pragma omp parallel for schedule(static) if (v.size > 65536)
    for (int64_t i = v.offset; i < v.offset + v.size; ++i) {
      const float g = gr[i];
      m_[i] = b1 * m_[i] + (1 - b1) * g;
      v_[i] = b2 * v_[i] + (1 - b2) * g * g;
      const double mh = m_[i] / bc1, vh = v_[i] / bc2;
      w[i] -= static_cast<float>(lr * (mh / (std::sqrt(vh) + c_.eps) + decay * w[i]));
    }
  }
}

double clip_gradients(std::vector<float>& grads, double max_norm) {
  double ss = 0;
  for (float g : grads) ss += double(g) * g;
  const double norm = std::sqrt(ss);
  if (max_norm > 0 && norm > max_norm) {
    const float f = static_cast<float>(max_norm / norm);
    for (float& g : grads) g *= f;
  }
  return norm;
}

double learning_rate(int64_t s, int64_t steps, int64_t warmup, double lr, double min_frac) {
  if (s < warmup) return lr * double(s + 1) / double(warmup);
  if (steps <= warmup + 1) return lr;
  const double progress = double(s - warmup) / double(steps - 1 - warmup);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return lr * (min_frac + (1.0 - min_frac) * cosine);
}

}  // namespace lowbit

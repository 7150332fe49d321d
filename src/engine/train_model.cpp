// Training of the decoder of every model family but OPT's post-LN variant (shapes in train.hpp
// and below): the parameter arena
// and its named views, the activations of a step, and the step itself through decoder.hpp's
// layers (shared with inference), with the six GEMM operands of every linear layer open to an
// operand_quantizer. N = batch * ctx tokens, D = dim, KV = kv heads * hd, F = hidden, V = vocab.
#include "lowbit/engine/train.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "src/engine/decoder.hpp"
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

}  // namespace

// ---- parameters ----------------------------------------------------------------------------------

// The arena's layout: one view per tensor under its GGUF name (load, save, AdamW's decay), in
// decoder::for_each_view's order.
void train_model::build_views() {
  const model_config& c = cfg_;
  c.validate();
  if (c.arch == architecture::gpt2 && c.l1_norm)
    throw error("train: the L1 normalisation is for Llama (GPT-2 has LayerNorm)");
  if (!c.norm_before)
    throw error(fmt::format("train: {}'s post-LayerNorm blocks (do_layer_norm_before = false) have no backward in "
                            "lowbit; train the pre-LN variant", architecture_name(c.arch)));
  views_.clear();
  int64_t off = 0;
  decoder::model_params layout;
  decoder::for_each_view(c, layout, [&](const std::string& name, const float*&, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    const bool decay = shape.size() == 2;  // matrices; not norm gains or biases
    views_.push_back({name, off, n, std::move(shape), decay});
    off += n;
  });
  params_.assign(off, 0.0f);
  grads_.assign(off, 0.0f);
  refs_.reset();
}

// The arenas as the decoder's structs of named views, which the step reaches every parameter and
// gradient through. Bound on the first step and again only when an arena has moved (a resumed
// run assigns params(); a copy has arenas of its own): each bound set is a new object, so copies
// sharing one never see it change.
struct train_model::param_refs {
  decoder::model_params p;
  decoder::model_grads g;
  const float* p_base = nullptr;
  const float* g_base = nullptr;
};

const train_model::param_refs& train_model::refs() {
  if (refs_ && refs_->p_base == params_.data() && refs_->g_base == grads_.data()) return *refs_;
  auto r = std::make_shared<param_refs>();
  size_t k = 0;  // the walk of build_views, in the same order
  decoder::for_each_view(cfg_, r->p, [&](const std::string&, const float*& v, const std::vector<int64_t>&) {
    v = params_.data() + views_[k++].offset;
  });
  k = 0;
  decoder::for_each_view(cfg_, r->g, [&](const std::string&, float*& v, const std::vector<int64_t>&) {
    v = grads_.data() + views_[k++].offset;
  });
  r->p_base = params_.data(), r->g_base = grads_.data();
  refs_ = std::move(r);
  return *refs_;
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
  // Fused qkv (gpt2, gptneox): qkv [N, 3D] in place of q, k, v; LayerNorm: mean1/mean2 its means;
  // without a gate, up holds the activation's input and act its output.
  struct layer {
    std::vector<float> x, mean1, inv1, n1, q, k, v, qkv, att, o, x1, mean2, inv2, n2, gate, up, act;
  };
  std::vector<layer> layers;
  std::vector<float> x_final, mean_final, inv_final, n_final;
  layers::rope_table rope;
  // scratch
  std::vector<float> qa, qb, qc, dx, dn, dn2, dq, dk, dv, dqkv, dgate, dup, dact, dlogits, y;
  std::vector<float> dP;  // attention backward, [threads][T, T]
  std::vector<double> dnorm, dnorm_b;

  // Block l's activations as the decoder's block_acts (its output: block l + 1's input).
  decoder::block_acts block(const model_config& c, int l) {
    layer& L = layers[l];
    decoder::block_acts a;
    a.x = L.x.data(), a.x1 = L.x1.data();
    a.out = l + 1 < int(layers.size()) ? layers[l + 1].x.data() : x_final.data();
    a.n1 = L.n1.data(), a.n2 = L.n2.data();
    a.mean1 = L.mean1.data(), a.inv1 = L.inv1.data(), a.mean2 = L.mean2.data(), a.inv2 = L.inv2.data();
    decoder::set_qkv(c, a, L.qkv.data(), L.q.data(), L.k.data(), L.v.data());
    a.scores = L.att.data(), a.scores_per_head = int64_t(ctx) * ctx;
    a.o = L.o.data(), a.y = y.data();
    a.gate = L.gate.data(), a.up = L.up.data(), a.act = L.act.data();
    return a;
  }

  void ensure(const model_config& c, int b, int t) {
    if (b == batch && t == ctx) return;
    batch = b, ctx = t;
    const int64_t N = int64_t(b) * t, D = c.dim, KV = int64_t(c.n_kv_heads) * c.head_dim(),
                  F = c.hidden_dim, H = c.n_heads;
    const bool fused = c.fused_qkv(), ln = c.layer_norm();
    layers.assign(c.n_layers, {});
    for (auto& L : layers) {
      L.x.resize(N * D), L.inv1.resize(N), L.n1.resize(N * D), L.att.resize(int64_t(b) * H * t * t);
      L.o.resize(N * D), L.x1.resize(N * D), L.inv2.resize(N), L.n2.resize(N * D);
      L.up.resize(N * F), L.act.resize(N * F);
      if (fused) L.qkv.resize(N * 3 * D);
      else L.q.resize(N * D), L.k.resize(N * KV), L.v.resize(N * KV);
      if (ln) L.mean1.resize(N), L.mean2.resize(N);
      if (c.gated_mlp()) L.gate.resize(N * F);
    }
    x_final.resize(N * D), inv_final.resize(N), n_final.resize(N * D);
    if (ln) mean_final.resize(N);
    if (c.uses_rope()) rope = layers::rope_table(t, c.head_dim(), rope_frequencies(c));
    // quantized operands of the block linears (never the classifier): X or dY [N, max(D, F, 3D)]
    // and the weights [F, D], [D, D] or [3D, D]
    const int64_t wide = std::max<int64_t>({D, F, fused ? 3 * D : 0});
    const int64_t big = std::max(N * wide, wide * D);
    qa.resize(big), qb.resize(big), qc.resize(big);
    dx.resize(N * D), dn.resize(N * D);
    if (c.has_parallel_residual()) dn2.resize(N * D);
    if (fused) dqkv.resize(N * 3 * D);
    else dq.resize(N * D), dk.resize(N * KV), dv.resize(N * KV);
    if (c.gated_mlp()) dgate.resize(N * F);
    dup.resize(N * F), dact.resize(N * F), y.resize(N * std::max(D, F));
    dlogits.resize(N * c.vocab_size);
    dnorm.resize(D), dnorm_b.resize(D);
  }
};

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
  const bool fused = c.fused_qkv();
  const int64_t N = int64_t(batch) * ctx;
  const int D = c.dim, V = c.vocab_size, T = ctx;
  for (int64_t i = 0; i < N; ++i)
    if (inputs[i] < 0 || inputs[i] >= V || targets[i] < 0 || targets[i] >= V)
      throw error(fmt::format("train: token id {} outside the vocabulary (0..{})",
                              inputs[i] < 0 || inputs[i] >= V ? inputs[i] : targets[i], V - 1));
  const layers::thread_scope threads(N, D);  // tiny models run on one thread (forward.cpp)
  if (!act_) act_ = std::make_shared<activations>();
  activations& A = *act_;
  A.ensure(c, batch, ctx);
  const int64_t arena = views_.back().offset + views_.back().size;
  if (int64_t(params_.size()) != arena || int64_t(grads_.size()) != arena)
    throw error(fmt::format("train: {} parameters and {} gradients, the model has {}", params_.size(), grads_.size(),
                            arena));
  const param_refs& R = refs();
  const decoder::model_params& P = R.p;
  const decoder::model_grads& Gd = R.g;
  decoder::quantized_gemms G(qz, step, A.qa, A.qb, A.qc);

  // ---- forward ----
  decoder::embedding_forward(c, P, inputs, N, 0, T, A.layers[0].x.data());
  // Attention in one query block per sequence: P [T, T] of every (sequence, head) is kept for the
  // backward; (sequence, head) pairs across threads.
  decoder::block_hooks h;
  h.ops = &G;
  h.rope = &A.rope;
  h.query_block = T;
  h.heads_parallel = true;
  for (int l = 0; l < c.n_layers; ++l) {
    decoder::block_acts a = A.block(c, l);
    decoder::block_forward(c, P.blocks[l], l, a, batch, T, 0, h);
  }
  decoder::norm_forward(c, P.out_norm, P.out_norm_b, A.x_final.data(), A.n_final.data(), N, A.mean_final.data(),
                        A.inv_final.data());
  // The classifier is not quantized (Sun et al. quantize the blocks' linear layers only).
  decoder::quantized_gemms plain(nullptr, step, A.qa, A.qb, A.qc);
  logits_.resize(N * V);
  decoder::classifier_forward(plain, A.n_final.data(), N, D, P.classifier, V, logits_.data());
  // The gradient of the summed loss; the parameter gradients are divided by `divisor` at the end.
  const double loss = decoder::cross_entropy(logits_.data(), targets, N, V, backward ? A.dlogits.data() : nullptr);
  if (!backward) return loss;

  // ---- backward ----
  std::fill(grads_.begin(), grads_.end(), 0.0f);
  decoder::classifier_backward(A.dlogits.data(), A.n_final.data(), P.classifier, N, D, V, A.dn.data(),
                               Gd.classifier);
  std::fill(A.dx.begin(), A.dx.end(), 0.0f);
  decoder::norm_backward(c, P.out_norm, A.x_final.data(), A.mean_final.data(), A.inv_final.data(), A.dn.data(),
                         A.dx.data(), Gd.out_norm, Gd.out_norm_b, N, A.dnorm, A.dnorm_b);
  decoder::block_grad_scratch sc;
  sc.dx = A.dx.data(), sc.dn = A.dn.data();
  if (fused) sc.dqkv = A.dqkv.data(), sc.dq = sc.dqkv, sc.dk = sc.dqkv + D, sc.dv = sc.dqkv + 2 * D;
  else sc.dq = A.dq.data(), sc.dk = A.dk.data(), sc.dv = A.dv.data();
  sc.dn2 = A.dn2.data();
  sc.dgate = A.dgate.data(), sc.dup = A.dup.data(), sc.dact = A.dact.data();
  sc.dP = &A.dP, sc.dnorm = &A.dnorm, sc.dnorm_b = &A.dnorm_b;
  for (int l = c.n_layers - 1; l >= 0; --l)
    decoder::block_backward(c, P.blocks[l], Gd.blocks[l], l, A.block(c, l), batch, T, &A.rope, G, sc);
  decoder::embedding_backward(c, Gd, inputs, N, T, A.dx.data());
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

// The forward pass of every model family in float32 (shapes in forward.hpp), through the layers
// of decoder.hpp (shared with training). The plan's activation formats fake-quantize each linear
// layer's input per token, its KV format the cache rows (one token and head each) after RoPE
// (docs/conventions.md §17).
#include "lowbit/engine/forward.hpp"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <new>
#include <cmath>

#include <fmt/format.h>
#include <omp.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/kernels/packed_matmul.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/threads.hpp"
#include "src/engine/decoder.hpp"
#include "src/engine/layers.hpp"

namespace lowbit {

namespace {

// True when fake-quantizing rows [0, T) gives each row the values it gets quantized alone: no
// tensor-wide scale (per-tensor, NVFP4's second level, Flexpoint's shared exponent) and no
// stochastic rounding (whose draws depend on the call). Then a KV operand's rows are quantized once.
bool operand_rows_local(const std::optional<format>& f) {
  if (!f) return false;
  const rounding_mode r = f->rounding;
  const bool deterministic = r == rounding_mode::rne || r == rounding_mode::rna || r == rounding_mode::rtz ||
                             r == rounding_mode::up || r == rounding_mode::down || r == rounding_mode::odd;
  return deterministic && f->gran != granularity::tensor && f->named != preset::nvfp4 && f->named != preset::flex;
}

}  // namespace

bool forward_prefers_one_thread(int64_t tokens, int dim) {
  return tokens * dim * dim < (int64_t(1) << 24);
}

forward_session::forward_session(const model& m, const quant_plan& plan, int max_tokens)
    : m_(m), plan_(plan), max_tokens_(max_tokens) {
  m_.config.validate();
  if (max_tokens <= 0) throw error(fmt::format("forward: max_tokens = {} (expected > 0)", max_tokens));
  if (m_.config.learned_positions() && max_tokens > m_.config.max_seq_len)
    throw error(fmt::format("forward: {} tokens exceed {}'s {} learned positions", max_tokens,
                            architecture_name(m_.config.arch), m_.config.max_seq_len));
  plan_.check_rules(m_.config);
  const std::vector<std::string> names = activation_names(m_.config);
  for (const std::string& name : names) {
    if (name == "output_norm") classifier_act_ = plan_.act_for(name);
    else block_acts_.push_back(plan_.act_for(name));
  }
  for (int l = 0; l < m_.config.n_layers; ++l) {
    kv_k_.push_back(plan_.kv_for(fmt::format("blk.{}.k", l)));
    kv_v_.push_back(plan_.kv_for(fmt::format("blk.{}.v", l)));
  }
  if (!m_.packed.empty()) {
    packed_linears_.assign(size_t(m_.config.n_layers) * decoder::linears_per_block, nullptr);
    for (const auto& [name, p] : m_.packed) {
      const int lin = model::linear_number(m_.config, name);
      if (lin < 0) throw error(fmt::format("forward: packed tensor '{}' is not a linear weight", name));
      packed_linears_[size_t(lin)] = p.get();
    }
  }
  if (m_.config.uses_rope())
    rope_ = std::make_shared<layers::rope_table>(max_tokens, m_.config.head_dim(), rope_frequencies(m_.config));
  const int64_t kv_dim = int64_t(m_.config.n_kv_heads) * m_.config.head_dim();
  const int64_t cache = int64_t(m_.config.n_layers) * max_tokens * kv_dim;
  try {
    k_cache_.resize(cache);
    v_cache_.resize(cache);
  } catch (const std::bad_alloc&) {
    throw error(fmt::format("forward: a KV cache of {} layers x {} tokens x {} needs {:.1f} GiB; use a "
                            "shorter context", m_.config.n_layers, max_tokens, kv_dim, 8.0 * cache / (1 << 30)));
  }
  k_operand_shadow_ = operand_rows_local(plan_.attn.k);
  v_operand_shadow_ = operand_rows_local(plan_.attn.v);
  if (k_operand_shadow_) k_operand_.resize(cache);
  if (v_operand_shadow_) v_operand_.resize(cache);
}

void forward_session::reset() { pos_ = 0; }

void forward_session::rewind(int p) {
  if (p < 0 || p > pos_) throw error(fmt::format("forward: cannot rewind to position {} (at {})", p, pos_));
  pos_ = p;
}

void forward_session::check_tokens(const int32_t* tokens, int n) const {
  if (n <= 0) throw error("forward: no tokens");
  if (pos_ + n > max_tokens_)
    throw error(fmt::format("forward: position {} + {} tokens exceeds the session's {} tokens",
                            pos_, n, max_tokens_));
  for (int i = 0; tokens && i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= m_.config.vocab_size)
      throw error(fmt::format("forward: token id {} outside the vocabulary (0..{})", tokens[i],
                              m_.config.vocab_size - 1));
}

void forward_session::embed(const int32_t* tokens, int n, float* x) const {
  check_tokens(tokens, n);
  decoder::embedding_forward(m_.config, decoder::bind_embeddings(m_), tokens, n, pos_, 0, x);
}

namespace {
// v holds at least n floats (its contents are the caller's to overwrite).
float* at_least(std::vector<float>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
  return v.data();
}
}  // namespace

const std::vector<float>& forward_session::forward(const int32_t* tokens, int n) {
  float* x = at_least(acts_.x, int64_t(n) * m_.config.dim);
  embed(tokens, n, x);
  run(x, n, 0, m_.config.n_layers, true);
  pos_ += n;
  return logits_;
}

void forward_session::forward_blocks(float* x, int n, int first, int last) {
  check_tokens(nullptr, n);
  if (first < 0 || last > m_.config.n_layers || first > last)
    throw error(fmt::format("forward: blocks [{}, {}) outside 0..{}", first, last, m_.config.n_layers));
  run(x, n, first, last, false);
}

namespace {

// The inference side of the shared layers' linear_ops: weights used as they are (the plan's
// weight formats were applied to the model beforehand), the input of every linear layer
// quantized as the plan says for that activation (act_rules, else acts; the classifier's
// classifier_acts), each such call a new stochastic-rounding stream (*call).
class plan_ops : public decoder::linear_ops {
 public:
  plan_ops(const std::vector<act_quant>& blocks, const act_quant& classifier, uint64_t& call,
           const std::vector<const packed_matrix*>& packed, std::vector<float>& buf)
      : blocks_(blocks), classifier_(classifier), call_(call), packed_(packed), buf_(buf) {}
  const float* input(const float* x, int64_t n, int in, int linear) override {
    const act_quant& q = linear == decoder::classifier_linear ? classifier_ : blocks_[site(linear)];
    int_acts_valid_ = false;
    if (!q) return x;
    if (int64_t(buf_.size()) < n * in) buf_.resize(n * in);
    q.apply(x, buf_.data(), n, in, ++call_);
    // Packed weights with integer codes read this input as integer codes (llama.cpp's q8_0
    // activations; int8 per token for int8/c): the same values as q.apply's, kept as codes and
    // scales for packed_matmul_int (conventions §44).
    if (!packed_.empty() && q.scale.empty()) {
      // Compared as formats (rounding included), not by building each call's canonical name.
      static const format q8_0 = parse_format("q8_0"), int8_per_row = parse_format("int8/c");
      const int64_t group = *q.fmt == q8_0 ? 32 : *q.fmt == int8_per_row ? in : 0;
      // Only when the linear reading this input takes integer activations (q, k and v share
      // one input and are packed alike).
      if (group > 0 && in % group == 0 && takes_int(linear, group)) {
        int_acts_ = quantize_activations(x, n, in, group);
        int_acts_valid_ = true;
      }
    }
    return buf_.data();
  }
  // Whether linear `linear` is packed with integer codes in groups of `group` that an exact int32
  // dot holds: it then multiplies integer activation codes (packed_matmul_int).
  bool takes_int(int linear, int64_t group) const {
    const packed_matrix* p = linear >= 0 && size_t(linear) < packed_.size() ? packed_[size_t(linear)] : nullptr;
    return p && p->integer_values && p->group == group && group <= kMaxIntDotGroup;
  }
  // block * 4 + (attn_norm, attn, ffn_norm, ffn_act) of a linear's number (decoder.hpp): q (and
  // k, v, which read q's input) 0, o 3, gate 4 or (no gate) up 5, down 6.
  static size_t site(int linear) {
    const int block = linear / decoder::linears_per_block, j = linear % decoder::linears_per_block;
    const int s = j <= 2 ? 0 : j == 3 ? 1 : j <= 5 ? 2 : 3;
    return size_t(block) * 4 + size_t(s);
  }
  void forward(const float* xq, int64_t n, int in, const float* w, int out, float* y, int linear) override {
    flops += 2.0 * n * in * double(out);
    if (linear >= 0 && size_t(linear) < packed_.size() && packed_[size_t(linear)]) {
      const packed_matrix& p = *packed_[size_t(linear)];
      if (int_acts_valid_ && int_acts_.n == n && takes_int(linear, int_acts_.group)) {
        packed_matmul_int(p, int_acts_, y);  // integer codes on both sides (VNNI)
        ++integer_products;
      } else
        packed_matmul(p, xq, n, y);  // from the codes, float activations
      return;
    }
    // One token (decode): a GEMV that reads W once in place (kernels/packed_matmul.hpp's float
    // kernel, the packed kernels' order); sgemm would first copy all of W into its packed panels
    // (measured on stories15M's 32,000 x 288 classifier: 70% of a decode step), and OpenBLAS's
    // sgemv ran at about a third of this kernel's rate.
    if (n == 1) lane_ordered_matmul(w, out, in, xq, 1, y);
    else tiled_sgemm(gemm_op::none, gemm_op::transpose, n, out, in, 1.0f, xq, in, w, in, 0.0f, y, out);
  }
  double flops = 0;
  int64_t integer_products = 0;  // linears computed by packed_matmul_int in this call

 private:
  const std::vector<act_quant>& blocks_;
  const act_quant& classifier_;
  uint64_t& call_;
  const std::vector<const packed_matrix*>& packed_;
  std::vector<float>& buf_;  // the quantized input (the session's, reused from call to call)
  int8_activations int_acts_;  // the last input's integer codes, when int_acts_valid_
  bool int_acts_valid_ = false;
};

// Rows of `cols` values at stride `stride` quantized in place as one [rows, cols] tensor (a
// packed copy when strided).
void quantize_strided(float* x, int64_t rows, int64_t cols, int64_t stride, const format& f, uint64_t stream,
                      std::vector<float>& scratch) {
  if (stride == cols) {
    fake_quantize(x, x, rows, cols, f, stream);
    return;
  }
  scratch.resize(rows * cols);
  for (int64_t i = 0; i < rows; ++i) std::copy_n(x + i * stride, cols, scratch.data() + i * cols);
  fake_quantize(scratch.data(), scratch.data(), rows, cols, f, stream);
  for (int64_t i = 0; i < rows; ++i) std::copy_n(scratch.data() + i * cols, cols, x + i * stride);
}

}  // namespace

// Blocks [first, last) on the residual stream x[n, dim] at positions pos_..pos_+n, then (head)
// the final norm and classifier into logits_: decoder.hpp's layers with one set of activations
// reused by every block, K and V through the KV cache. The views are bound on each call: the
// model's tensors may be replaced between calls (post-training quantization swaps a block's weights).
void forward_session::run(float* x, int n, int first, int last, bool head) {
  const model_config& c = m_.config;
  const int dim = c.dim, hd = c.head_dim(), nkv = c.n_kv_heads, kv_dim = nkv * hd, hidden = c.hidden_dim;
  const int T = pos_ + n;  // keys visible to the last query
  const layers::thread_scope threads(n, c.dim);

  const int64_t nd = int64_t(n) * dim;
  float* xb1 = at_least(acts_.n1, nd);
  float* qkv = at_least(acts_.qkv, int64_t(n) * (dim + 2 * kv_dim));  // q, k, v; or fused rows
  plan_ops ops(block_acts_, classifier_act_, call_, packed_linears_, acts_.input);

  decoder::block_acts a;
  a.x = a.x1 = a.out = x;
  a.n1 = xb1, a.n2 = at_least(acts_.n2, nd), a.o = at_least(acts_.o, nd), a.y = at_least(acts_.y, nd);
  decoder::set_qkv(c, a, qkv, qkv, qkv + nd, qkv + int64_t(n) * (dim + kv_dim));
  a.gate = c.gated_mlp() ? at_least(acts_.gate, int64_t(n) * hidden) : nullptr;
  a.up = at_least(acts_.up, int64_t(n) * hidden), a.act = at_least(acts_.act, int64_t(n) * hidden);

  decoder::block_hooks h;
  h.ops = &ops;
  h.rope = rope_.get();
  // Heads side by side, one OpenMP thread each (their GEMMs single-threaded), unless P's operand
  // hook must see the heads in turn (its stochastic-rounding stream counter): a head's GEMMs in a
  // 512-token window are small (128 x keys x 64, 4 query blocks x 2), and split across two threads
  // each paid OpenBLAS's fork and join. P: then one query block's [rows, T] per thread.
  const int team = omp_in_parallel() ? 1 : omp_get_max_threads();
  h.heads_parallel = team > 1 && !plan_.attn.p;
  a.scores_per_head = 0, a.scores_per_thread = int64_t(std::min(n, h.query_block)) * T;
  a.scores = at_least(acts_.scores, h.heads_parallel ? a.scores_per_thread * team : int64_t(n) * T);
  std::string prefix;
  if (dump_)
    h.dump = [&](const std::string& name, const float* data, int64_t cols) { dump_(prefix + name, data, n, cols); };
  // K and V of the new tokens into the cache rows pos_..pos_+n, fake-quantized there when the plan
  // has a KV format: rows = (token, kv head), groups along the head dimension.
  h.kv = [&](int l, const float* k, const float* v, int64_t ks) {
    float* kc = k_cache_.data() + int64_t(l) * max_tokens_ * kv_dim;
    float* vc = v_cache_.data() + int64_t(l) * max_tokens_ * kv_dim;
    float* kn = kc + int64_t(pos_) * kv_dim;
    float* vn = vc + int64_t(pos_) * kv_dim;
    for (int i = 0; i < n; ++i) {
      std::copy_n(k + i * ks, kv_dim, kn + int64_t(i) * kv_dim);
      std::copy_n(v + i * ks, kv_dim, vn + int64_t(i) * kv_dim);
    }
    if (kv_k_[l]) fake_quantize(kn, kn, int64_t(n) * nkv, hd, *kv_k_[l], ++call_);
    if (kv_v_[l]) fake_quantize(vn, vn, int64_t(n) * nkv, hd, *kv_v_[l], ++call_);
    // FP8 attention's K and V operands: the T cached rows as the GEMMs read them, quantized on a
    // copy (the cache keeps the KV format's values), rows = (key, kv head). A row-local format's
    // shadow copy already holds rows 0..pos_ quantized (rows below pos_ do not change): only the n
    // new rows are quantized, O(n) per call instead of O(T).
    auto operand = [&](const float* cache_rows, const std::optional<format>& f, bool shadow,
                       std::vector<float>& buf) -> const float* {
      if (!f) return cache_rows;
      if (shadow) {
        float* rows = buf.data() + int64_t(l) * max_tokens_ * kv_dim;
        std::copy_n(cache_rows + int64_t(pos_) * kv_dim, int64_t(n) * kv_dim, rows + int64_t(pos_) * kv_dim);
        fake_quantize(rows + int64_t(pos_) * kv_dim, rows + int64_t(pos_) * kv_dim, int64_t(n) * nkv, hd, *f, ++call_);
        return rows;
      }
      buf.assign(cache_rows, cache_rows + int64_t(T) * kv_dim);
      fake_quantize(buf.data(), buf.data(), int64_t(T) * nkv, hd, *f, ++call_);
      return buf.data();
    };
    const float* kr = operand(kc, plan_.attn.k, k_operand_shadow_, k_operand_);
    const float* vr = operand(vc, plan_.attn.v, v_operand_shadow_, v_operand_);
    return decoder::kv_source{kr, vr, kv_dim, 0};
  };
  // Q's operand: rows = (token, head) of head_dim. P's: each (head, query block) [rows, keys].
  // Heads run in turn when P is quantized (heads_parallel is off then), so the stream counter needs
  // no lock; q's operand is quantized before attention starts.
  std::vector<float>& operand_scratch = acts_.operand;
  if (plan_.attn.q)
    h.q_operand = [&](int, float* q, int64_t qs) {
      const int H = c.n_heads;
      if (qs == int64_t(H) * hd) {
        fake_quantize(q, q, int64_t(n) * H, hd, *plan_.attn.q, ++call_);
      } else {  // fused qkv: q rows at stride qs
        operand_scratch.resize(int64_t(n) * H * hd);
        for (int i = 0; i < n; ++i) std::copy_n(q + i * qs, H * hd, operand_scratch.data() + int64_t(i) * H * hd);
        fake_quantize(operand_scratch.data(), operand_scratch.data(), int64_t(n) * H, hd, *plan_.attn.q, ++call_);
        for (int i = 0; i < n; ++i) std::copy_n(operand_scratch.data() + int64_t(i) * H * hd, H * hd, q + i * qs);
      }
    };
  std::vector<float>& p_scratch = acts_.p;
  if (plan_.attn.p)
    h.p_operand = [&](float* p, int rows, int keys, int64_t ld) {
      quantize_strided(p, rows, keys, ld, *plan_.attn.p, ++call_, p_scratch);
    };

  for (int l = first; l < last; ++l) {
    if (dump_) prefix = fmt::format("blk.{}.", l);
    decoder::block_forward(c, decoder::bind_block(m_, l), l, a, 1, n, pos_, h);
  }

  if (head) {
    const decoder::model_params p = decoder::bind_head(m_);
    decoder::norm_forward(c, p.out_norm, p.out_norm_b, x, xb1, n, nullptr, nullptr);
    if (dump_) dump_("output_norm", xb1, n, dim);
    logits_.resize(int64_t(n) * c.vocab_size);
    decoder::classifier_forward(ops, ops.input(xb1, n, dim, decoder::classifier_linear), n, dim,
                                p.classifier, c.vocab_size, logits_.data());
    if (dump_) dump_("logits", logits_.data(), n, c.vocab_size);
  }
  last_flops_ = ops.flops + h.flops;
  integer_products_ += ops.integer_products;
}

double sgemm_gflops(int m, int n, int k, int reps) {
  std::vector<float> a(int64_t(m) * k), b(int64_t(n) * k), c(int64_t(m) * n);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 104729) % 1000) * 1e-3f - 0.5f;
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {  // the first run warms caches and threads
    const auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k,
                0.0f, c.data(), n);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r) t.push_back(dt);
  }
  std::sort(t.begin(), t.end());
  return 2.0 * m * n * double(k) / t[t.size() / 2] * 1e-9;
}

}  // namespace lowbit

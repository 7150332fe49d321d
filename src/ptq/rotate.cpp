// Randomized Hadamard rotation of the residual stream, fused into the weights (rotate.hpp).
#include "lowbit/ptq/rotate.hpp"

#include <cmath>
#include <random>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"

namespace lowbit::ptq {

namespace {

// v <- FWHT_b(d .* v) / sqrt(b) on each block of b entries: v Q for a row vector, and also Q^T v
// for a column vector (H is symmetric, so Q^T v = H (d .* v) / sqrt(b)).
void apply_q(float* v, int64_t n, const std::vector<float>& signs, int64_t b) {
  std::vector<double> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = double(v[i]) * signs[i];
  for (int64_t base = 0; base < n; base += b)
    for (int64_t len = 1; len < b; len <<= 1)
      for (int64_t i = base; i < base + b; i += 2 * len)
        for (int64_t j = i; j < i + len; ++j) {
          const double a = x[j], c = x[j + len];
          x[j] = a + c;
          x[j + len] = a - c;
        }
  const double inv = 1.0 / std::sqrt(double(b));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(x[i] * inv);
}

void rows_times_q(tensor& w, const std::vector<float>& signs, int64_t b) {  // W <- W Q
  #pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < w.rows(); ++r) apply_q(w.data.data() + r * w.cols(), w.cols(), signs, b);
}

void qt_times(tensor& w, const std::vector<float>& signs, int64_t b) {  // W <- Q^T W
  const int64_t rows = w.rows(), cols = w.cols();
  #pragma omp parallel
  {
    std::vector<float> col(rows);
    #pragma omp for schedule(static)
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = 0; r < rows; ++r) col[r] = w.data[r * cols + c];
      apply_q(col.data(), rows, signs, b);
      for (int64_t r = 0; r < rows; ++r) w.data[r * cols + c] = col[r];
    }
  }
}

// W[:, j] *= g_j: an RMSNorm weight g folded into a layer that reads the norm's output.
void fold_norm_weight(tensor& w, const std::vector<float>& g) {
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int64_t j = 0; j < w.cols(); ++j) w.data[r * w.cols() + j] *= g[j];
}

}  // namespace

rotation_report rotate_residual(model& m, uint64_t seed) {
  const model_config& c = m.config;
  if (c.layer_norm())
    throw error("rotate: only the Llama family (RMSNorm) models; LayerNorm's mean subtraction does not commute with "
                "a rotation");
  // Biases on q, k, v (Qwen2) add after the rotated inputs and stay; biases on the residual
  // stream's writers would need rotating too.
  if (c.out_bias() || c.has_mlp_bias())
    throw error("rotate: a model with biases on attn_output or the MLP (llama attention_bias / mlp_bias) is not "
                "rotated");
  rotation_report r;
  r.dim = c.dim;
  r.block = c.dim & -c.dim;  // the largest power of two dividing dim
  if (r.block < 2) throw error(fmt::format("rotate: dim {} is odd; no Hadamard block tiles it (skipped)", c.dim));
  std::mt19937_64 rng(seed);
  std::vector<float> signs(c.dim);
  for (float& s : signs) s = (rng() >> 63) ? -1.0f : 1.0f;

  // 1. fold the norms, untie the classifier (it gets output_norm's weight, the embedding not).
  if (c.tied_classifier) {
    m.tensors["output.weight"] = m.get("token_embd.weight");
    m.config.tied_classifier = false;
    r.untied = true;
  }
  auto fold = [&](const std::string& norm, std::initializer_list<std::string> readers) {
    tensor& g = m.get_mut(norm);
    for (const std::string& name : readers) fold_norm_weight(m.get_mut(name), g.data);
    std::fill(g.data.begin(), g.data.end(), 1.0f);
  };
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    fold(b + "attn_norm.weight", {b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"});
    fold(b + "ffn_norm.weight", {b + "ffn_gate.weight", b + "ffn_up.weight"});
  }
  fold("output_norm.weight", {"output.weight"});

  // 2. rotate the residual stream.
  rows_times_q(m.get_mut("token_embd.weight"), signs, r.block);
  rows_times_q(m.get_mut("output.weight"), signs, r.block);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    for (const char* reader : {"attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"})
      rows_times_q(m.get_mut(b + reader + ".weight"), signs, r.block);
    for (const char* writer : {"attn_output", "ffn_down"}) qt_times(m.get_mut(b + writer + ".weight"), signs, r.block);
  }
  m.validate();
  return r;
}

}  // namespace lowbit::ptq

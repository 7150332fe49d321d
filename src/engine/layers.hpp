// The element-wise layers of the decoder (every family of model.hpp), with the backward of each
// next to its forward; decoder.hpp builds the decoder's layers on them, for inference and training alike.
// Shapes: x [n, dim] row-major (n = tokens).
#pragma once

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "lowbit/engine/forward.hpp"
#include "lowbit/kernels/expf.hpp"
#include "lowbit/kernels/threads.hpp"

namespace lowbit::layers {

// Threads for one forward call: a small model's layers (stories260K: dim 64) finish in
// microseconds, so such calls run on one thread (measured on a loaded 2-core machine: 8x faster
// than two spinning threads); larger ones take the team the machine's load leaves room for
// (serial_scope, kernels/threads.hpp). OpenMP OpenBLAS follows omp_get_max_threads(); the pthread build
// (the fallback) is told as well, except inside a parallel region (rows of evaluate_many), where
// its setting, which is global, must not change.
class thread_scope {
 public:
  explicit thread_scope(int64_t tokens, int dim)
      : saved_(omp_get_max_threads()), nested_(omp_in_parallel()),
        serial_(forward_prefers_one_thread(tokens, dim)) {
    if (!nested_) openblas_set_num_threads(omp_get_max_threads());  // serial_'s team: 1, or what the load leaves
  }
  ~thread_scope() {
    if (!nested_) openblas_set_num_threads(saved_);
  }

 private:
  int saved_;
  bool nested_;
  serial_scope serial_;
};


// Normalisation of each row by a statistic s(x): out = w * (x * r), r = 1/s.
//   rms: RMSNorm (Zhang & Sennrich 2019) as llama2.c, s = sqrt(mean(x^2) + eps), the sum in double.
//   l1 : L1 RMSNorm (Wu et al. 2018, "L1-norm batch normalization"; the L1 normalisation of Guo
//        et al. 2024, docs/training.md §3.3): s = sqrt(pi/2) mean|x| + eps, which equals the RMS for
//        Gaussian x, so y = w x / s needs only sign/abs/add.
// inv_out[n] (optional) keeps r for the backward.
enum class norm_kind { rms, l1 };
inline constexpr double l1_norm_factor = 1.2533141373155003;  // sqrt(pi/2)

// Rows go four at a time: each row's double sum runs over j in order (its bits), the four sums side
// by side (one sum alone is bound by the latency of its adds).
inline void normalize(norm_kind kind, const float* x, const float* w, float* out, int64_t n, int dim,
                      float eps, float* inv_out = nullptr) {
  constexpr int R = 4;
  const auto term = [kind](float v) { return kind == norm_kind::rms ? double(v) * v : std::fabs(double(v)); };
  #pragma omp parallel for schedule(static) if (n * dim > 65536)
  for (int64_t g = 0; g < (n + R - 1) / R; ++g) {
    const int64_t i0 = g * R;
    const int count = static_cast<int>(std::min<int64_t>(R, n - i0));
    double acc[R] = {};
    if (count == R) {
      const float* xr = x + i0 * dim;
      for (int j = 0; j < dim; ++j)
        for (int r = 0; r < R; ++r) acc[r] += term(xr[int64_t(r) * dim + j]);
    } else {
      for (int r = 0; r < count; ++r)
        for (int j = 0; j < dim; ++j) acc[r] += term(x[(i0 + r) * dim + j]);
    }
    for (int r = 0; r < count; ++r) {
      const int64_t i = i0 + r;
      const float* xi = x + i * dim;
      const float inv = static_cast<float>(kind == norm_kind::rms ? 1.0 / std::sqrt(acc[r] / dim + eps)
                                                                  : 1.0 / (l1_norm_factor * acc[r] / dim + eps));
      if (inv_out) inv_out[i] = inv;
      float* oi = out + i * dim;
      for (int j = 0; j < dim; ++j) oi[j] = w[j] * (inv * xi[j]);
    }
  }
}
inline void rmsnorm(const float* x, const float* w, float* out, int64_t n, int dim, float eps,
                    float* inv_out = nullptr) {
  normalize(norm_kind::rms, x, w, out, n, dim, eps, inv_out);
}

// Backward: with y_j = w_j x_j r and r = 1/s(x),
//   dx_j += r w_j dy_j - r^2 (sum_k w_k dy_k x_k) ds/dx_j,   dw_j += sum_i dy_ij x_ij r_i,
// ds/dx_j = r x_j / dim (rms) or sqrt(pi/2) sign(x_j) / dim (l1). dx accumulates (the residual
// stream's gradient); dw accumulates in double over rows.
inline void normalize_backward(norm_kind kind, const float* x, const float* w, const float* inv,
                               const float* dy, float* dx, double* dw, int64_t n, int dim) {
  #pragma omp parallel for schedule(static) if (n * dim > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    const float* gi = dy + i * dim;
    double dot = 0;
    for (int j = 0; j < dim; ++j) dot += double(w[j]) * gi[j] * xi[j];
    const double r = inv[i];
    const double c = r * r * dot / dim;
    float* di = dx + i * dim;
    for (int j = 0; j < dim; ++j) {
      const double dsdx = kind == norm_kind::rms ? r * xi[j]
                                                 : l1_norm_factor * (xi[j] > 0 ? 1.0 : (xi[j] < 0 ? -1.0 : 0.0));
      di[j] += static_cast<float>(r * w[j] * gi[j] - c * dsdx);
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < dim; ++j) dw[j] += double(dy[i * dim + j]) * x[i * dim + j] * inv[i];
}

// LayerNorm (Ba et al. 2016), GPT-2's: y = (x - mean) / sqrt(var + eps) * w + b, the statistics
// in double. mean_out[n] and inv_out[n] (optional) keep the mean and 1/sqrt(var + eps) for the
// backward.
inline void layernorm(const float* x, const float* w, const float* b, float* out, int64_t n, int dim,
                      float eps, float* mean_out = nullptr, float* inv_out = nullptr) {
  #pragma omp parallel for schedule(static) if (n * dim > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    double mean = 0, var = 0;
    for (int j = 0; j < dim; ++j) mean += xi[j];
    mean /= dim;
    for (int j = 0; j < dim; ++j) var += (xi[j] - mean) * (xi[j] - mean);
    const double inv = 1.0 / std::sqrt(var / dim + eps);
    if (mean_out) mean_out[i] = static_cast<float>(mean);
    if (inv_out) inv_out[i] = static_cast<float>(inv);
    float* oi = out + i * dim;
    for (int j = 0; j < dim; ++j) oi[j] = static_cast<float>((xi[j] - mean) * inv) * w[j] + b[j];
  }
}

// Backward: with h = (x - mean) r, y = w h + b and g = w dy,
//   dx_j += r (g_j - mean(g) - h_j mean(g h)),   dw_j += sum_i dy_ij h_ij,   db_j += sum_i dy_ij.
// dx accumulates (the residual stream's gradient); dw and db accumulate in double over rows.
inline void layernorm_backward(const float* x, const float* w, const float* mean, const float* inv,
                               const float* dy, float* dx, double* dw, double* db, int64_t n, int dim) {
  #pragma omp parallel for schedule(static) if (n * dim > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    const float* gi = dy + i * dim;
    const double m = mean[i], r = inv[i];
    double sg = 0, sgh = 0;
    for (int j = 0; j < dim; ++j) {
      const double g = double(w[j]) * gi[j];
      sg += g;
      sgh += g * (xi[j] - m) * r;
    }
    sg /= dim, sgh /= dim;
    float* di = dx + i * dim;
    for (int j = 0; j < dim; ++j) {
      const double h = (xi[j] - m) * r;
      di[j] += static_cast<float>(r * (double(w[j]) * gi[j] - sg - h * sgh));
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const double m = mean[i], r = inv[i];
    for (int j = 0; j < dim; ++j) {
      const double g = dy[i * dim + j];
      dw[j] += g * (x[i * dim + j] - m) * r;
      db[j] += g;
    }
  }
}

// The end of a causal softmax row: keys [first, visible) (their exps summing to sum) scaled by
// 1 / sum, the others 0.
inline void normalize_softmax_row(float* s, double sum, int visible, int T, int first) {
  const float inv = static_cast<float>(1.0 / sum);
  for (int t = first; t < visible; ++t) s[t] *= inv;
  std::fill(s, s + first, 0.0f);
  std::fill(s + visible, s + T, 0.0f);
}

// Causal softmax of one row of attention scores s[0, T): keys [first, visible) take part (max
// subtracted, the sum in double), the rest become 0 (first > 0: a sliding window).
inline void causal_softmax(float* s, int visible, int T, int first = 0) {
  float mx = s[first];
  for (int t = first + 1; t < visible; ++t) mx = std::max(mx, s[t]);
  exp_shifted_f32(s + first, visible - first, mx, s + first);  // std::exp(s[t] - mx), in SIMD
  double sum = 0;
  for (int t = first; t < visible; ++t) sum += s[t];
  normalize_softmax_row(s, sum, visible, T, first);
}

// causal_softmax on R rows at once (row r at s + r * ld, keys [first[r], visible[r])): each row's
// max and double sum run over its keys in causal_softmax's order, so the results are its bits, but
// the R chains are interleaved over the keys the rows share; one row's chain is bound by the
// latency of its adds (4 cycles each), R of them side by side by the adds' throughput. (Adjacent
// query rows of a block: visible and first differ by one from row to row.)
template <int R>
inline void causal_softmax_rows(float* s, int64_t ld, const int* visible, int T, const int* first) {
  float* row[R];
  float mx[R];
  double sum[R];
  int lo = first[0], hi = visible[0];  // keys every row has
  for (int r = 0; r < R; ++r) {
    row[r] = s + r * ld;
    lo = std::max(lo, first[r]), hi = std::min(hi, visible[r]);
  }
  if (hi - lo < 16) {  // little shared: one row at a time
    for (int r = 0; r < R; ++r) causal_softmax(row[r], visible[r], T, first[r]);
    return;
  }
  // max: row r from first[r] (its initial value) through lo alone, (lo, hi) interleaved, then the rest.
  for (int r = 0; r < R; ++r) {
    mx[r] = row[r][first[r]];
    for (int t = first[r] + 1; t <= lo; ++t) mx[r] = std::max(mx[r], row[r][t]);
  }
  for (int t = lo + 1; t < hi; ++t)
    for (int r = 0; r < R; ++r) mx[r] = std::max(mx[r], row[r][t]);
  for (int r = 0; r < R; ++r) {
    for (int t = hi; t < visible[r]; ++t) mx[r] = std::max(mx[r], row[r][t]);
    exp_shifted_f32(row[r] + first[r], visible[r] - first[r], mx[r], row[r] + first[r]);
    sum[r] = 0;
    for (int t = first[r]; t < lo; ++t) sum[r] += row[r][t];
  }
  for (int t = lo; t < hi; ++t)
    for (int r = 0; r < R; ++r) sum[r] += row[r][t];
  for (int r = 0; r < R; ++r) {
    for (int t = hi; t < visible[r]; ++t) sum[r] += row[r][t];
    normalize_softmax_row(row[r], sum[r], visible[r], T, first[r]);
  }
}

// Interleaved RoPE (Su et al. 2021; llama2.c/GGUF pairing): pair (2p, 2p+1) of each head, p <
// pairs, rotates by pos * freq_p; the dims past 2 * pairs pass unrotated (GPT-NeoX's partial
// rotary). The table holds cos and sin per (pos, p), computed in double and rounded once, so
// every caller rotates by the same floats.
struct rope_table {
  int hd = 0;     // head dimension: the stride between heads
  int pairs = 0;  // rotated pairs of a head (rotary_dim / 2)
  std::vector<float> cos_, sin_;  // [positions, pairs]
  rope_table() = default;
  // Every dim rotated, freq_p = theta^(-2p/hd).
  rope_table(int positions, int head_dim, float theta) : rope_table(positions, head_dim, plain(head_dim, theta)) {}
  // freq: the frequency of each rotated pair (model.hpp's rope_frequencies).
  rope_table(int positions, int head_dim, const std::vector<double>& freq)
      : hd(head_dim), pairs(static_cast<int>(freq.size())) {
    cos_.resize(int64_t(positions) * pairs);
    sin_.resize(cos_.size());
    for (int pos = 0; pos < positions; ++pos)
      for (int p = 0; p < pairs; ++p) {
        const double angle = pos * freq[p];
        cos_[int64_t(pos) * pairs + p] = static_cast<float>(std::cos(angle));
        sin_[int64_t(pos) * pairs + p] = static_cast<float>(std::sin(angle));
      }
  }
  int positions() const { return pairs ? static_cast<int>(cos_.size() / pairs) : 0; }

 private:
  static std::vector<double> plain(int hd, float theta) {
    std::vector<double> f(hd / 2);
    for (int p = 0; p < hd / 2; ++p) f[p] = std::pow(double(theta), -2.0 * p / hd);
    return f;
  }
};

// Rotates x [n, heads*hd] (row stride `stride`) at positions pos0 + (i % period) for row i
// (period = the sequence length when n rows hold several sequences). inverse: rotate by -angle
// (the backward, since the rotation is orthogonal).
inline void rope(float* x, int64_t n, int heads, int stride, int pos0, int period,
                 const rope_table& t, bool inverse = false) {
  const int hd = t.hd, half = t.pairs;
  #pragma omp parallel for schedule(static) if (n * heads * hd > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const int pos = pos0 + static_cast<int>(period ? i % period : i);
    const float* cs = t.cos_.data() + int64_t(pos) * half;
    const float* sn = t.sin_.data() + int64_t(pos) * half;
    float* row = x + i * stride;
    for (int p = 0; p < half; ++p) {
      const float c = cs[p], s = inverse ? -sn[p] : sn[p];
      for (int h = 0; h < heads; ++h) {
        float* v = row + h * hd + 2 * p;
        const float a = v[0], b = v[1];
        v[0] = a * c - b * s;
        v[1] = a * s + b * c;
      }
    }
  }
}

// GPT-2's GELU, tanh approximation (Hendrycks & Gimpel 2016):
//   gelu(x) = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
//   gelu'(x) = (1 + tanh(u))/2 + x/2 (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
inline constexpr float gelu_k = 0.7978845608028654f;  // sqrt(2/pi)
inline float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + std::tanh(gelu_k * (x + 0.044715f * x * x * x)));
}
inline float gelu_tanh_grad(float x) {
  const float t = std::tanh(gelu_k * (x + 0.044715f * x * x * x));
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * gelu_k * (1.0f + 3.0f * 0.044715f * x * x);
}

// The exact GELU (Hendrycks & Gimpel 2016; Hugging Face's "gelu", GPT-NeoX/Pythia's):
//   gelu(x) = x Phi(x) = x/2 (1 + erf(x / sqrt 2)),   gelu'(x) = Phi(x) + x phi(x).
inline constexpr float inv_sqrt2 = 0.7071067811865476f;
inline constexpr float inv_sqrt_2pi = 0.3989422804014327f;
inline float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * inv_sqrt2)); }
inline float gelu_erf_grad(float x) {
  return 0.5f * (1.0f + std::erf(x * inv_sqrt2)) + x * inv_sqrt_2pi * std::exp(-0.5f * x * x);
}

// ReLU (OPT's activation); its derivative is taken as 0 at 0.
inline float relu(float x) { return x > 0.0f ? x : 0.0f; }
inline float relu_grad(float x) { return x > 0.0f ? 1.0f : 0.0f; }

}  // namespace lowbit::layers

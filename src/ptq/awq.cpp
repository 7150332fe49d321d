// AWQ, activation-aware weight quantization (Lin et al., MLSys 2024; mit-han-lab/llm-awq
// awq/quantize/auto_scale.py and auto_clip.py; docs/ptq.md §4.3): a grid search over per-channel scales
// s = s_x^r that protect the weights of large-activation channels (W diag(s) is quantized, X
// diag(s)^-1 feeds it), then a grid search over clipping thresholds per row and group.
//
// The searches evaluate mean squared output errors. [M] They use whichever of two equal forms is
// cheaper (llm-awq always runs the layer on its inputs):
//   direct  ||X D^T||^2 / (n out)  with D = W - W_q: one GEMM of n x in x out
//   Gram    sum((D C) o D) / out   with C = X^T X / n: one GEMM of out x in x in (when n > in)
// and for the clipping search, per group of K columns, with C_g = X_g^T X_g / n_s when K < n_s.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/threads.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

namespace {

// [M] Layers of at most kSerialElements weights run on one thread (serial_scope, threads.hpp).
constexpr int64_t kSerialElements = int64_t{1} << 17;


void check_layers(const std::vector<linear_weight>& layers, int64_t n, int64_t in, const char* who) {
  if (layers.empty()) throw error(fmt::format("{}: needs at least one layer reading the input", who));
  if (n <= 0) throw shape_error(fmt::format("{}: needs at least one calibration row, got {}", who, n));
  if (in <= 0) throw shape_error(fmt::format("{}: input size must be positive, got {}", who, in));
  for (const linear_weight& l : layers)
    if (!l.w || l.out <= 0) throw shape_error(fmt::format("{}: a layer has no weight or no rows", who));
}

// Columns per clipping group: the format's group, [M] the whole row for row, tensor and
// unscaled formats (llm-awq's q_group_size = -1).
int64_t clip_group(const format& f, int64_t in) {
  return f.gran == granularity::group ? std::min<int64_t>(f.group_size, in) : in;
}

}  // namespace

awq_result awq_search_scale(const float* X, int64_t n, int64_t in, const std::vector<linear_weight>& layers,
                            const format& f, const awq_options& o) {
  check_layers(layers, n, in, "awq_search_scale");
  if (o.n_grid < 1) throw error(fmt::format("awq: n_grid must be >= 1, got {}", o.n_grid));
  channel_stats st(in);
  st.add(X, n);
  const std::vector<float> sx = st.absmean();  // s_x: mean |x| per channel (get_act_scale)
  int64_t total_out = 0;
  for (const linear_weight& l : layers) total_out += l.out;
  const serial_scope serial(total_out * in <= kSerialElements);

  row_output_error mse(X, n, in);
  awq_result res;
  double best = std::numeric_limits<double>::infinity();
  std::vector<float> s(static_cast<size_t>(in)), Ws, Q, D;
  for (int i = 0; i < o.n_grid; ++i) {
    const double ratio = static_cast<double>(i) / o.n_grid;
    // s = clamp(s_x^r, 1e-4); s /= sqrt(max(s) min(s)), in float32 as auto_scale.py.
    for (int64_t j = 0; j < in; ++j)
      s[static_cast<size_t>(j)] = std::max(static_cast<float>(std::pow(static_cast<double>(sx[static_cast<size_t>(j)]), ratio)), 1e-4f);
    const auto [mn, mx] = std::minmax_element(s.begin(), s.end());
    const float norm = std::sqrt(*mx * *mn);
    for (float& v : s) v /= norm;
    double loss = 0;
    for (const linear_weight& l : layers) {
      const size_t sz = static_cast<size_t>(l.out * in);
      Ws.assign(l.w, l.w + sz);
      scale_columns(Ws.data(), l.out, in, s.data());
      Q.resize(sz);
      fake_quantize(Ws.data(), Q.data(), l.out, in, f, o.tensor_id);
      D.resize(sz);  // W - Q(W diag(s)) diag(s)^-1: the weight the inspected layer runs with
      for (int64_t r = 0; r < l.out; ++r)
        for (int64_t j = 0; j < in; ++j) {
          const size_t k = static_cast<size_t>(r * in + j);
          D[k] = l.w[k] - Q[k] / s[static_cast<size_t>(j)];
        }
      loss += mse.total(D.data(), l.out);
    }
    loss /= static_cast<double>(total_out);
    res.ratio_loss.push_back(loss);
    if (loss < best) {
      best = loss;
      res.ratio = ratio;
      res.scales = s;
    }
  }
  if (res.scales.empty())  // every loss NaN (a NaN weight or input)
    throw error("awq: every scale ratio gave a NaN loss; the weight or the inputs hold NaN/Inf");
  return res;
}

std::vector<float> awq_search_clip(const float* Xs, int64_t n, const float* Ws, int64_t out, int64_t in,
                                   const format& f, const awq_options& o) {
  if (n <= 0 || out <= 0 || in <= 0)
    throw shape_error(fmt::format("awq_search_clip: empty problem (n {}, out {}, in {})", n, out, in));
  if (o.clip_grid < 1) throw error(fmt::format("awq: clip_grid must be >= 1, got {}", o.clip_grid));
  const serial_scope serial(out * in <= kSerialElements);
  const int64_t K = clip_group(f, in), gpr = (in + K - 1) / K;
  // Every stride-th token (input_feat[:, 0::n // n_sample_token]); [M] stride >= 1, where torch's
  // step n // 512 is 0 (an error) for fewer than 512 tokens.
  const int64_t stride = o.clip_sample_tokens > 0 ? std::max<int64_t>(1, n / o.clip_sample_tokens) : 1;
  const int64_t ns = (n + stride - 1) / stride;
  std::vector<float> Xn(static_cast<size_t>(ns * in));  // [ns, in]
  for (int64_t t = 0; t < ns; ++t) std::copy(Xs + t * stride * in, Xs + (t * stride + 1) * in, Xn.begin() + t * in);

  // Per-group Gram matrices C_g [K_g, K_g] = X_g^T X_g / ns when that is cheaper (K < ns).
  const bool gram = K < ns;
  std::vector<std::vector<float>> C(gram ? static_cast<size_t>(gpr) : 0);
  for (int64_t g = 0; gram && g < gpr; ++g) {
    const int64_t c0 = g * K, kg = std::min(K, in - c0);
    std::vector<double> acc(static_cast<size_t>(kg * kg), 0.0);
    for (int64_t t = 0; t < ns; ++t) {
      const float* x = Xn.data() + t * in + c0;
      for (int64_t a = 0; a < kg; ++a)
        for (int64_t b = 0; b < kg; ++b) acc[static_cast<size_t>(a * kg + b)] += static_cast<double>(x[a]) * x[b];
    }
    C[static_cast<size_t>(g)].resize(acc.size());
    for (size_t i = 0; i < acc.size(); ++i) C[static_cast<size_t>(g)][i] = static_cast<float>(acc[i] / static_cast<double>(ns));
  }

  std::vector<float> amax(static_cast<size_t>(out * gpr), 0.0f);  // [out, gpr] org_max_val
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      float& a = amax[static_cast<size_t>(r * gpr + c / K)];
      a = std::max(a, std::fabs(Ws[r * in + c]));
    }
  std::vector<float> best_val = amax;
  std::vector<double> best_err(amax.size(), std::numeric_limits<double>::infinity());
  std::vector<float> cur(static_cast<size_t>(out * in)), mv(amax.size()), err_buf;
  std::vector<double> err(amax.size());
  const int n_shrink = static_cast<int>(o.max_shrink * o.clip_grid);
  for (int i_s = 0; i_s < n_shrink; ++i_s) {
    const float factor = static_cast<float>(1.0 - static_cast<double>(i_s) / o.clip_grid);
    for (size_t i = 0; i < amax.size(); ++i) mv[i] = amax[i] * factor;
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c = 0; c < in; ++c) {
        const float m = mv[static_cast<size_t>(r * gpr + c / K)];
        cur[static_cast<size_t>(r * in + c)] = std::clamp(Ws[r * in + c], -m, m);
      }
    fake_quantize(cur.data(), cur.data(), out, in, f, o.tensor_id);
    for (int64_t i = 0; i < out * in; ++i) cur[static_cast<size_t>(i)] -= Ws[i];  // D = q - w
    for (int64_t g = 0; g < gpr; ++g) {
      const int64_t c0 = g * K, kg = std::min(K, in - c0);
      const float* Dg = cur.data() + c0;  // [out, kg], leading dimension in
      if (gram) {  // err_r = d^T C_g d
        err_buf.resize(static_cast<size_t>(out * kg));
        tiled_sgemm(gemm_op::none, gemm_op::none, out, kg, kg, 1.0f, Dg, in, C[static_cast<size_t>(g)].data(), kg, 0.0f,
                    err_buf.data(), kg);
        for (int64_t r = 0; r < out; ++r) {
          double e = 0;
          for (int64_t k = 0; k < kg; ++k) e += static_cast<double>(err_buf[static_cast<size_t>(r * kg + k)]) * Dg[r * in + k];
          err[static_cast<size_t>(r * gpr + g)] = e;
        }
      } else {  // err_r = mean_t (x_t,g . d_r,g)^2
        err_buf.resize(static_cast<size_t>(out * ns));
        tiled_sgemm(gemm_op::none, gemm_op::transpose, out, ns, kg, 1.0f, Dg, in, Xn.data() + c0, in, 0.0f,
                    err_buf.data(), ns);
        for (int64_t r = 0; r < out; ++r) {
          double e = 0;
          for (int64_t t = 0; t < ns; ++t) e += static_cast<double>(err_buf[static_cast<size_t>(r * ns + t)]) * err_buf[static_cast<size_t>(r * ns + t)];
          err[static_cast<size_t>(r * gpr + g)] = e / static_cast<double>(ns);
        }
      }
    }
    for (size_t i = 0; i < err.size(); ++i)
      if (err[i] < best_err[i]) {
        best_err[i] = err[i];
        best_val[i] = mv[i];
      }
  }
  return best_val;
}

void awq_apply_clip(float* W, int64_t out, int64_t in, const format& f, const float* clip_max) {
  const int64_t K = clip_group(f, in), gpr = (in + K - 1) / K;
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const float m = clip_max[r * gpr + c / K];
      W[r * in + c] = std::clamp(W[r * in + c], -m, m);
    }
}

awq_result awq_quantize(const float* X, int64_t n, int64_t in, const std::vector<linear_weight>& layers,
                        const format& f, const awq_options& o, const std::vector<bool>& clip_layer) {
  if (!clip_layer.empty() && clip_layer.size() != layers.size())
    throw error(fmt::format("awq_quantize: clip_layer has {} entries for {} layers", clip_layer.size(), layers.size()));
  int64_t total_out = 0;
  for (const linear_weight& l : layers) total_out += l.out;
  const serial_scope serial(total_out * in <= kSerialElements);
  awq_result res = awq_search_scale(X, n, in, layers, f, o);
  std::vector<float> Xs;  // X diag(s)^-1, for the clipping search (auto_scale's apply_scale on input_feat)
  if (o.clip) {
    Xs.assign(X, X + n * in);
    divide_columns(Xs.data(), n, in, res.scales.data());
  }
  for (size_t li = 0; li < layers.size(); ++li) {
    const linear_weight& l = layers[li];
    awq_layer_result lr;
    lr.weights.assign(l.w, l.w + l.out * in);
    scale_columns(lr.weights.data(), l.out, in, res.scales.data());
    if (o.clip && (clip_layer.empty() || clip_layer[li])) {
      lr.clip_max = awq_search_clip(Xs.data(), n, lr.weights.data(), l.out, in, f, o);
      awq_apply_clip(lr.weights.data(), l.out, in, f, lr.clip_max.data());
    }
    // The codes travel with the values (exact export without quantizing again; K-quants: ggml's
    // search is not idempotent on its own output, so they are the only exact codes).
    lr.packed = quantize(lr.weights.data(), l.out, in, f, o.tensor_id);
    dequantize(*lr.packed, lr.weights.data());
    res.layers.push_back(std::move(lr));
  }
  return res;
}

// AWQ as a method (methods.hpp): the scale search where the scale folds, else (s = 1) the
// clipping search alone; clipping skips q and k as llm-awq does ("due to qk bmm, it is hard to
// clip precisely").
group_result awq_group(const group_job& job) {
  awq_options ao = job.options.awq;
  ao.tensor_id = ++job.tensor_id;
  if (job.where == fold::none) ao.n_grid = 1;
  std::vector<bool> clip(job.names.size(), true);
  for (size_t i = 0; i < job.names.size(); ++i)
    if (job.names[i].ends_with(".attn_q.weight") || job.names[i].ends_with(".attn_k.weight") ||
        job.names[i].ends_with(".attn_qkv.weight"))
      clip[i] = false;
  const group_inputs& gi = *job.inputs;
  awq_result a = awq_quantize(gi.rows.data(), gi.n_rows(), job.in, job.layers, job.options.weights, ao, clip);
  group_result r;
  for (size_t i = 0; i < job.layers.size(); ++i) {
    r.weights.push_back(std::move(a.layers[i].weights));
    if (a.layers[i].packed) job.packed[job.names[i]] = std::move(*a.layers[i].packed);
  }
  if (job.where != fold::none) r.scales = std::move(a.scales);
  return r;
}

}  // namespace lowbit::ptq

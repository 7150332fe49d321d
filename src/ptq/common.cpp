// Shared pieces of ptq/: dense helpers on OpenBLAS, calibration statistics, RTN, bias correction.

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

void matmul_nt(const float* X, const float* W, float* Y, int64_t n, int64_t in, int64_t out) {
  if (n == 0 || out == 0) return;
  if (in == 0) {
    std::fill(Y, Y + n * out, 0.0f);
    return;
  }
  tiled_sgemm(gemm_op::none, gemm_op::transpose, n, out, in, 1.0f, X, in, W, in, 0.0f, Y, out);
}

double output_error(const float* X, int64_t n, int64_t in, const float* W, const float* Q, int64_t out) {
  std::vector<float> D(static_cast<size_t>(out * in));  // [out, in] W - Q
  for (int64_t i = 0; i < out * in; ++i) D[static_cast<size_t>(i)] = W[i] - Q[i];
  std::vector<float> E(static_cast<size_t>(n * out));   // [n, out] X D^T
  matmul_nt(X, D.data(), E.data(), n, in, out);
  double sse = 0;
  for (const float e : E) sse += static_cast<double>(e) * e;
  return sse;
}

channel_stats::channel_stats(int64_t in_) : in(in_), absmax(static_cast<size_t>(in_), 0.0f), abssum(static_cast<size_t>(in_), 0.0) {
  if (in_ < 0) throw shape_error(fmt::format("channel_stats: negative channel count {}", in_));
}

void channel_stats::add(const float* X, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const float* x = X + t * in;
    for (int64_t j = 0; j < in; ++j) {
      const float a = std::fabs(x[j]);
      absmax[static_cast<size_t>(j)] = std::max(absmax[static_cast<size_t>(j)], a);
      abssum[static_cast<size_t>(j)] += a;
    }
  }
  count += n;
}

std::vector<float> channel_stats::absmean() const {
  std::vector<float> m(static_cast<size_t>(in), 0.0f);
  if (count > 0)
    for (int64_t j = 0; j < in; ++j)
      m[static_cast<size_t>(j)] = static_cast<float>(abssum[static_cast<size_t>(j)] / static_cast<double>(count));
  return m;
}

std::vector<float> rtn_quantize(const float* W, int64_t out, int64_t in, const format& f, uint64_t tensor_id) {
  std::vector<float> Q(static_cast<size_t>(out * in));
  fake_quantize(W, Q.data(), out, in, f, tensor_id);
  return Q;
}

void scale_columns(float* W, int64_t rows, int64_t in, const float* s) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < in; ++j) W[r * in + j] *= s[j];
}

void divide_columns(float* X, int64_t rows, int64_t in, const float* s) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < in; ++j) X[r * in + j] /= s[j];
}

void divide_rows(float* W, int64_t rows, int64_t cols, const float* s) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) W[r * cols + j] /= s[r];
}

std::vector<float> bias_correction(const float* X, int64_t n, int64_t in, const float* W, const float* Q,
                                   int64_t out, const float* bias) {
  if (n <= 0) throw shape_error("bias_correction needs at least one calibration row");
  // mean input [in], then b'_o = b_o + sum_j mean_j (W - Q)_oj, all in float64.
  std::vector<double> mean(static_cast<size_t>(in), 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < in; ++j) mean[static_cast<size_t>(j)] += X[t * in + j];
  for (double& m : mean) m /= static_cast<double>(n);
  std::vector<float> b(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    double delta = 0;
    for (int64_t j = 0; j < in; ++j)
      delta += mean[static_cast<size_t>(j)] * (static_cast<double>(W[o * in + j]) - Q[o * in + j]);
    b[static_cast<size_t>(o)] = static_cast<float>((bias ? bias[o] : 0.0) + delta);
  }
  return b;
}

row_output_error::row_output_error(const float* X, int64_t n, int64_t in) : X_(X), n_(n), in_(in) {
  if (n > in) {
    hessian_accumulator h(in);  // (2/n) X^T X
    h.add(X, n);
    const std::vector<double> H = h.matrix();
    C_.resize(H.size());
    for (size_t i = 0; i < H.size(); ++i) C_[i] = static_cast<float>(H[i] / 2);
  }
}

double row_output_error::total(const float* D, int64_t out) {
  double sse = 0;
  if (C_.empty()) {
    buf_.resize(static_cast<size_t>(n_ * out));
    matmul_nt(X_, D, buf_.data(), n_, in_, out);  // [n, out]
    for (const float e : buf_) sse += static_cast<double>(e) * e;
    return sse / static_cast<double>(n_);
  }
  buf_.resize(static_cast<size_t>(out * in_));  // [out, in] D C
  tiled_sgemm(gemm_op::none, gemm_op::none, out, in_, in_, 1.0f, D, in_, C_.data(), in_, 0.0f, buf_.data(), in_);
  for (size_t i = 0; i < buf_.size(); ++i) sse += static_cast<double>(buf_[i]) * D[i];
  return sse;
}

void row_output_error::per_row(const float* D, int64_t out, std::vector<double>& err) {
  err.assign(static_cast<size_t>(out), 0.0);
  if (C_.empty()) {
    buf_.resize(static_cast<size_t>(n_ * out));
    matmul_nt(X_, D, buf_.data(), n_, in_, out);  // [n, out]
    for (int64_t t = 0; t < n_; ++t)
      for (int64_t r = 0; r < out; ++r) {
        const double e = buf_[static_cast<size_t>(t * out + r)];
        err[static_cast<size_t>(r)] += e * e;
      }
    for (double& e : err) e /= static_cast<double>(n_);
    return;
  }
  buf_.resize(static_cast<size_t>(out * in_));  // [out, in] D C
  tiled_sgemm(gemm_op::none, gemm_op::none, out, in_, in_, 1.0f, D, in_, C_.data(), in_, 0.0f, buf_.data(), in_);
  for (int64_t r = 0; r < out; ++r) {
    double e = 0;
    for (int64_t j = 0; j < in_; ++j) e += static_cast<double>(buf_[static_cast<size_t>(r * in_ + j)]) * D[r * in_ + j];
    err[static_cast<size_t>(r)] = std::max(e, 0.0);  // float rounding of a PSD form
  }
}

// ---- round to nearest as a method (methods.hpp; docs/ptq.md §4.0) --------------------------------

std::vector<float> rtn_with_codes(const float* w, int64_t out, int64_t in, const format& f, uint64_t& tensor_id,
                                  std::map<std::string, quantized_tensor>& packed, const std::string& name) {
  quantized_tensor q = quantize(w, out, in, f, ++tensor_id);
  std::vector<float> values(static_cast<size_t>(out * in));
  dequantize(q, values.data());
  packed[name] = std::move(q);
  return values;
}

group_result rtn_group(const group_job& job) {
  group_result r;
  if (job.options.shared_pow2_scales) {  // ZeroQuant-FP's constrained scales (ptq.hpp)
    for (size_t i = 0; i < job.layers.size(); ++i) {
      shared_pow2_result s = shared_pow2_quantize(job.layers[i].w, job.layers[i].out, job.in, job.options.weights);
      r.weights.push_back(std::move(s.weights));
      job.packed[job.names[i]] = std::move(s.packed);
    }
    return r;
  }
  for (size_t i = 0; i < job.layers.size(); ++i)
    r.weights.push_back(rtn_with_codes(job.layers[i].w, job.layers[i].out, job.in, job.options.weights, job.tensor_id,
                                       job.packed, job.names[i]));
  return r;
}

}  // namespace lowbit::ptq

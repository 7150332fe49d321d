// LoRC, low-rank compensation (ZeroQuant-V2, Yao et al. 2023, arXiv 2303.08302; METHODS 4.5 [M]):
// the quantization error E = W - Q is approximated by its best rank-k factorisation (Eckart-Young:
// the truncated SVD), E ~ (U_k S_k^(1/2)) (S_k^(1/2) V_k^T), and the factors run beside the
// quantized layer: y = x Q^T + (x V^T) U^T.
#include <Eigen/Core>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/error.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

lorc_result lorc_compensate(const float* W, const float* Q, int64_t out, int64_t in, int64_t rank,
                            const std::optional<format>& factor_format) {
  if (out < 0 || in < 0 || rank < 0)
    throw shape_error(fmt::format("lorc: shape [{}, {}] rank {} has a negative value", out, in, rank));
  using matrix = Eigen::MatrixXd;
  lorc_result res;
  const int64_t k = std::min({rank, out, in});
  matrix E(out, in);  // [out, in] W - Q in float64
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) E(r, c) = static_cast<double>(W[r * in + c]) - Q[r * in + c];
  // BDCSVD: divide and conquer, O(out in min(out, in)); Jacobi for the small blocks.
  Eigen::BDCSVD<matrix> svd(E, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::VectorXd& sv = svd.singularValues();
  res.singular_values.assign(sv.data(), sv.data() + sv.size());

  res.u.assign(static_cast<size_t>(out * k), 0.0f);  // [out, k] U_k S_k^(1/2)
  res.v.assign(static_cast<size_t>(k * in), 0.0f);   // [k, in]  S_k^(1/2) V_k^T
  for (int64_t i = 0; i < k; ++i) {
    const double root = std::sqrt(sv(i));
    for (int64_t r = 0; r < out; ++r) res.u[static_cast<size_t>(r * k + i)] = static_cast<float>(svd.matrixU()(r, i) * root);
    for (int64_t c = 0; c < in; ++c) res.v[static_cast<size_t>(i * in + c)] = static_cast<float>(svd.matrixV()(c, i) * root);
  }
  if (factor_format && k > 0) {
    // Each factor is a linear layer with groups along its own reduction axis (k for U, in for V).
    fake_quantize(res.u.data(), res.u.data(), out, k, *factor_format, 0);
    fake_quantize(res.v.data(), res.v.data(), k, in, *factor_format, 1);
  }
  // Q + U V in float64, rounded once.
  using rowmajor_f = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const rowmajor_f> Um(res.u.data(), out, k), Vm(res.v.data(), k, in);
  const matrix UV = k > 0 ? matrix(Um.cast<double>() * Vm.cast<double>()) : matrix::Zero(out, in);
  res.weights.assign(static_cast<size_t>(out * in), 0.0f);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) res.weights[static_cast<size_t>(r * in + c)] = static_cast<float>(Q[r * in + c] + UV(r, c));
  return res;
}

}  // namespace lowbit::ptq

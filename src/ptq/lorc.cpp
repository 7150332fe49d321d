// LoRC, low-rank compensation (ZeroQuant-V2, Yao et al. 2023, arXiv 2303.08302; docs/ptq.md §4.5 [M]):
// the quantization error E = W - Q is approximated by its best rank-k factorisation (Eckart-Young:
// the truncated SVD), E ~ (U_k S_k^(1/2)) (S_k^(1/2) V_k^T), and the factors run beside the
// quantized layer: y = x Q^T + (x V^T) U^T.
#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <omp.h>
#include <algorithm>
#include <cmath>
#include <random>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/threads.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

namespace {

// [M] Layers of at most kSerialElements weights run on one thread (serial_scope, threads.hpp).
constexpr int64_t kSerialElements = int64_t{1} << 17;

using matrix = Eigen::MatrixXd;

// An orthonormal basis of the columns of Y [m, l] (thin Householder QR).
matrix orthonormal_basis(const matrix& Y) {
  Eigen::HouseholderQR<matrix> qr(Y);
  return qr.householderQ() * matrix::Identity(Y.rows(), Y.cols());
}

struct svd_factors {
  matrix U;                   // [m, r] left singular vectors
  Eigen::VectorXd s;          // [r] descending
  matrix V;                   // [n, r] right singular vectors
};

svd_factors exact_svd(const matrix& E) {
  // BDCSVD: divide and conquer (Jacobi on the small blocks), thin factors.
  Eigen::BDCSVD<matrix> svd(E, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return {svd.matrixU(), svd.singularValues(), svd.matrixV()};
}

// Randomized subspace iteration (Halko, Martinsson, Tropp, SIAM Review 2011, Alg. 4.4 + 5.1):
// Q spans E's dominant l-dimensional range after `iters` re-orthonormalised power passes; the SVD
// of the small B = Q^T E [l, n] gives E's leading singular triplets.
svd_factors randomized_svd(const matrix& E, int64_t l, int iters, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  matrix omega(E.cols(), l);  // [n, l]
  for (int64_t j = 0; j < l; ++j)
    for (int64_t i = 0; i < E.cols(); ++i) omega(i, j) = nd(rng);
  matrix Q = orthonormal_basis(E * omega);  // [m, l]
  for (int it = 0; it < iters; ++it) {
    const matrix Z = orthonormal_basis(E.transpose() * Q);  // [n, l]
    Q = orthonormal_basis(E * Z);
  }
  const matrix B = Q.transpose() * E;  // [l, n]
  Eigen::BDCSVD<matrix> svd(B, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return {Q * svd.matrixU(), svd.singularValues(), svd.matrixV()};
}

}  // namespace

lorc_result lorc_compensate(const float* W, const float* Q, int64_t out, int64_t in, int64_t rank,
                            const lorc_options& o) {
  if (out < 0 || in < 0 || rank < 0)
    throw shape_error(fmt::format("lorc: shape [{}, {}] rank {} has a negative value", out, in, rank));
  if (o.oversample < 0 || o.power_iters < 0)
    throw error(fmt::format("lorc: oversample ({}) and power_iters ({}) must be >= 0", o.oversample, o.power_iters));
  const serial_scope serial(out * in <= kSerialElements);
  lorc_result res;
  const int64_t mn = std::min(out, in), k = std::min(rank, mn);
  const int64_t l = std::min(mn, k + o.oversample);
  matrix E(out, in);  // [out, in] W - Q in float64
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) E(r, c) = static_cast<double>(W[r * in + c]) - Q[r * in + c];
  res.randomized = l > 0 && (o.svd == lorc_svd::randomized ||
                   (o.svd == lorc_svd::automatic && mn > 1024 && 4 * (k + o.oversample) <= mn));
  const svd_factors svd = mn == 0 ? svd_factors{} : res.randomized ? randomized_svd(E, l, o.power_iters, o.seed) : exact_svd(E);
  res.singular_values.assign(svd.s.data(), svd.s.data() + svd.s.size());

  res.u.assign(static_cast<size_t>(out * k), 0.0f);  // [out, k] U_k S_k^(1/2)
  res.v.assign(static_cast<size_t>(k * in), 0.0f);   // [k, in]  S_k^(1/2) V_k^T
  for (int64_t i = 0; i < k; ++i) {
    const double root = std::sqrt(svd.s(i));
    for (int64_t r = 0; r < out; ++r) res.u[static_cast<size_t>(r * k + i)] = static_cast<float>(svd.U(r, i) * root);
    for (int64_t c = 0; c < in; ++c) res.v[static_cast<size_t>(i * in + c)] = static_cast<float>(svd.V(c, i) * root);
  }
  if (o.factor_format && k > 0) {
    // Each factor is a linear layer with groups along its own reduction axis (k for U, in for V).
    fake_quantize(res.u.data(), res.u.data(), out, k, *o.factor_format, 0);
    fake_quantize(res.v.data(), res.v.data(), k, in, *o.factor_format, 1);
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

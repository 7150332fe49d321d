// GPTQ (Frantar et al., ICLR 2023, Alg. 1; IST-DASLab/gptq gptq.py; docs/ptq.md §4.1) with lowbit's
// format engine as the quantizer, and its Hessian accumulator.
//
// For W[out, in] and H = (2/n) X^T X, columns are quantized left to right; the error of column i
// is spread over the columns not yet quantized with the OBS update
//   err = (w_i - q_i) / U_ii,   W[:, j] -= err * U_ij  (j > i)
// where U is the upper Cholesky factor of H^-1 (H^-1 = U^T U); row i of U is the (scaled) row i
// of the inverse Hessian of the columns i.. once the columns < i are fixed. Lazy batching
// (gptq.py): after each column only the rest of its block of B columns is updated; the columns
// right of the block get the block's errors at once, W[:, i2:] -= Err[:, i1:i2] U[i1:i2, i2:].
//
// Cost for [out, in]: the trailing GEMMs ~ out * in^2 flops (sgemm/dgemm), the in-block updates
// out * in * B, the factorisation in^3 / 3 (Cholesky) + in^3 / 3 (triangular inverse), all
// through OpenBLAS; rows are independent inside a block (a group's scale is per row), so the
// in-block work runs one row per OpenMP iteration, contiguous in memory. Measured on 2 cores at
// [4096, 4096] int4/g32: ~5 s in all (factorisation ~2 s, GEMMs ~0.9 s), one sgemm of the same
// shape ~1.4 s.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/threads.hpp"
#include "lowbit/ptq/methods.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

// ---- Hessian -----------------------------------------------------------------------------------

hessian_accumulator::hessian_accumulator(int64_t in_) : in(in_) {
  if (in_ < 0) throw shape_error(fmt::format("hessian_accumulator: negative input size {}", in_));
  upper.assign(static_cast<size_t>(in_ * in_), 0.0);
}

void hessian_accumulator::add(const float* X, int64_t n) {
  if (n < 0) throw shape_error(fmt::format("hessian_accumulator::add: negative row count {}", n));
  // Chunks of rows: each is one running-average step, which is the same sum as one step for all
  // rows: H_new = H * (c / (c + m)) + (2 / (c + m)) Xc^T Xc. A chunk's Xc^T Xc runs in float32
  // (tiled_ssyrk_upper: OpenBLAS ssyrk and sgemm tiles, twice dsyrk's rate, conventions §47; gptq.py
  // keeps all of H in float32) and is added to the float64 running H, so the sum over many chunks
  // does not lose the small ones.
  constexpr int64_t kChunk = 2048;
  std::vector<float> s(static_cast<size_t>(in * in));
  for (int64_t t0 = 0; t0 < n; t0 += kChunk) {
    const int64_t m = std::min(kChunk, n - t0);
    const int64_t c_new = count + m;
    const double beta = static_cast<double>(count) / static_cast<double>(c_new);
    const double alpha = 2.0 / static_cast<double>(c_new);
    if (in > 0) {  // upper triangle of S = Xc^T Xc, then H = alpha S + beta H
      tiled_ssyrk_upper(in, m, 1.0f, X + t0 * in, in, 0.0f, s.data(), in);
      #pragma omp parallel for schedule(static) if (in >= 512)
      for (int64_t i = 0; i < in; ++i)
        for (int64_t j = i; j < in; ++j) {
          double& h = upper[static_cast<size_t>(i * in + j)];
          h = alpha * double(s[static_cast<size_t>(i * in + j)]) + beta * h;
        }
    }
    count = c_new;
  }
}

std::vector<double> hessian_accumulator::matrix() const {
  std::vector<double> H(upper.size());
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = i; j < in; ++j) H[static_cast<size_t>(i * in + j)] = H[static_cast<size_t>(j * in + i)] = upper[static_cast<size_t>(i * in + j)];
  return H;
}

namespace {

// [M] Layers of at most kSerialElements weights run on one thread (serial_scope, threads.hpp).
constexpr int64_t kSerialElements = int64_t{1} << 17;

// In-place lower Cholesky factor of the symmetric positive definite A[n, n] (leading dimension
// ld, lower triangle read and written): recursive on halves so that nearly all flops run in
// OpenBLAS dtrsm / dsyrk (threaded). Not Eigen's LLT: with its triangular solve it took 6.2 s at
// n = 4096 on 2 cores, this and triangular_inverse_lower ~2 s together. Returns false when A is
// not positive definite (or not finite).
bool cholesky_lower(double* A, int64_t n, int64_t ld) {
  if (n <= 64) {
    for (int64_t j = 0; j < n; ++j) {
      double* rj = A + j * ld;
      double d = rj[j];
      for (int64_t k = 0; k < j; ++k) d -= rj[k] * rj[k];
      if (!(d > 0) || !std::isfinite(d)) return false;
      rj[j] = std::sqrt(d);
      for (int64_t i = j + 1; i < n; ++i) {
        double* ri = A + i * ld;
        double v = ri[j];
        for (int64_t k = 0; k < j; ++k) v -= ri[k] * rj[k];
        ri[j] = v / rj[j];
      }
    }
    return true;
  }
  const int64_t n1 = n / 2, n2 = n - n1;
  double* A21 = A + n1 * ld;
  double* A22 = A21 + n1;
  if (!cholesky_lower(A, n1, ld)) return false;
  // L21 = A21 L11^-T; A22 -= L21 L21^T
  cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, static_cast<blasint>(n2),
              static_cast<blasint>(n1), 1.0, A, static_cast<blasint>(ld), A21, static_cast<blasint>(ld));
  cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, static_cast<blasint>(n2), static_cast<blasint>(n1), -1.0, A21,
              static_cast<blasint>(ld), 1.0, A22, static_cast<blasint>(ld));
  return cholesky_lower(A22, n2, ld);
}

// In-place inverse of the lower triangular L[n, n] (leading dimension ld), n^3 / 3 flops:
// [A 0; B C]^-1 = [A^-1 0; -C^-1 B A^-1  C^-1], B's update by two dtrsm before A and C invert.
void triangular_inverse_lower(double* L, int64_t n, int64_t ld) {
  if (n <= 64) {  // forward substitution, column by column, into a scratch copy
    std::vector<double> inv(static_cast<size_t>(n * n), 0.0);
    for (int64_t j = 0; j < n; ++j) {
      inv[static_cast<size_t>(j * n + j)] = 1.0 / L[j * ld + j];
      for (int64_t i = j + 1; i < n; ++i) {
        double v = 0;
        for (int64_t k = j; k < i; ++k) v += L[i * ld + k] * inv[static_cast<size_t>(k * n + j)];
        inv[static_cast<size_t>(i * n + j)] = -v / L[i * ld + i];
      }
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) L[i * ld + j] = inv[static_cast<size_t>(i * n + j)];
    return;
  }
  const int64_t n1 = n / 2, n2 = n - n1;
  double* B = L + n1 * ld;
  double* C = B + n1;
  cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, static_cast<blasint>(n2),
              static_cast<blasint>(n1), 1.0, L, static_cast<blasint>(ld), B, static_cast<blasint>(ld));  // B A^-1
  cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, static_cast<blasint>(n2),
              static_cast<blasint>(n1), -1.0, C, static_cast<blasint>(ld), B, static_cast<blasint>(ld));  // -C^-1 B A^-1
  triangular_inverse_lower(L, n1, ld);
  triangular_inverse_lower(C, n2, ld);
}

// U, the upper Cholesky factor of H^-1 (H^-1 = U^T U), [n, n] row-major. gptq.py computes
// chol(H) -> cholesky_inverse -> chol(upper); we get the same factor without forming H^-1: with P
// the reversal permutation, P H P = L L^T gives H^-1 = (P L^-T P)(P L^-1 P), and P L^-1 P is upper
// triangular with a positive diagonal, so it is U (the factor is unique). One Cholesky and one
// triangular inverse, each n^3 / 3 flops, and no explicit inverse to lose accuracy in.
std::vector<double> inverse_cholesky_upper(const std::vector<double>& H, int64_t n, double percdamp) {
  std::vector<double> A(static_cast<size_t>(n * n));  // P H P
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) A[static_cast<size_t>(i * n + j)] = H[static_cast<size_t>((n - 1 - i) * n + (n - 1 - j))];
  if (!cholesky_lower(A.data(), n, n))
    throw error(fmt::format("gptq: the dampened Hessian [{}, {}] is not positive definite (percdamp {}); "
                            "increase percdamp or use more calibration tokens",
                            n, n, percdamp));
  triangular_inverse_lower(A.data(), n, n);
  std::vector<double> U(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) U[static_cast<size_t>(i * n + j)] = A[static_cast<size_t>((n - 1 - i) * n + (n - 1 - j))];
  return U;
}

// C[M, N] -= A[M, K] B[K, N] (row-major, leading dimensions given).
void gemm_sub(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
              int64_t ldc) {
  tiled_sgemm(gemm_op::none, gemm_op::none, M, N, K, -1.0f, A, lda, B, ldb, 1.0f, C, ldc);
}
void gemm_sub(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B, int64_t ldb, double* C,
              int64_t ldc) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), -1.0, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), 1.0, C,
              static_cast<blasint>(ldc));
}

// Everything the column loop needs that does not change during it.
struct gptq_plan {
  const format* f = nullptr;
  scale_context ctx;
  int64_t out = 0, in = 0;
  int64_t block = 128;            // effective block size
  int64_t K = 0;                  // columns a scale choice covers: the group (K-quants: the
                                  // super-block of 256, whose sub-block scales are chosen at once)
  int64_t G = 0;                  // group size (K-quants: the sub-block), indexes the scales
  bool dynamic_groups = false;    // scales chosen at each group's (super-block's) first column
  bool kquant = false;            // q2_k ... q6_k (kernels/kquant.hpp)
  std::vector<float> fixed_super; // static K-quant groups: the super-scales [out, super-blocks, 1|2]
  float tensor_scale = 1.0f;      // nvfp4's second level
  std::vector<group_scale> fixed; // tensor: [1]; row: [out]; static groups: [out, groups]; else empty
  int64_t groups_per_row = 0;
  std::vector<int64_t> perm;      // permuted position -> original column (empty: identity)
  bool pack = false;              // also produce codes + scales
  uint64_t tensor_id = 0;
};

// The lazy-batch column loop over Wp[out, in] (columns in permuted order) with U[in, in].
// Writes Qp[out, in] (permuted order), the per-column loss (permuted order), and, when packing,
// codes[out, in] (ORIGINAL column order) and the dynamic group scales [out, groups].
template <typename T>
void gptq_columns(const gptq_plan& p, std::vector<T>& Wp, const std::vector<T>& U, std::vector<float>& Qp,
                  std::vector<double>& loss, std::vector<uint32_t>& codes, std::vector<group_scale>& dyn_scales,
                  std::vector<float>& dyn_super) {
  const format& f = *p.f;
  const int64_t out = p.out, in = p.in, B = p.block;
  const bool sr = f.rounding == rounding_mode::sr;
  std::vector<T> err(static_cast<size_t>(out * B));     // [out, B] scaled errors of the block
  std::vector<T> lossb(static_cast<size_t>(out * B));   // [out, B] (w - q)^2 / U_ii^2 / 2
  for (int64_t i1 = 0; i1 < in; i1 += B) {
    const int64_t i2 = std::min(i1 + B, in), cnt = i2 - i1;
    bool any_error = false;
#pragma omp parallel for schedule(static) reduction(|| : any_error) if (out * cnt * cnt > (1 << 20))
    for (int64_t r = 0; r < out; ++r) {
      T* w = Wp.data() + r * in;
      T* e_row = err.data() + r * B;
      T* l_row = lossb.data() + r * B;
      group_scale gs;
      if (f.gran == granularity::tensor) gs = p.fixed[0];
      else if (f.gran == granularity::row) gs = p.fixed[static_cast<size_t>(r)];
      float gbuf[256];
      std::vector<float> gbig;
      group_scale sub_scales[16];  // K-quants: the sub-blocks of the current super-block
      for (int64_t i = i1; i < i2; ++i) {
        const int64_t c = p.perm.empty() ? i : p.perm[static_cast<size_t>(i)];
        if (p.kquant && p.dynamic_groups && i % p.K == 0) {
          // [M] The super-block's d/dmin and all its sub-block scales from its CURRENT weights
          // (ggml's search on the error-updated columns), fixed for its 256 columns.
          const int64_t n = std::min(p.K, in - i);
          for (int64_t k = 0; k < n; ++k) gbuf[k] = static_cast<float>(w[i + k]);
          kquant_block b;
          kquant_quantize_block(f, gbuf, n, &b);
          const int64_t subs = (n + p.G - 1) / p.G, sb = i / p.K, nss = kquant_super_scale_count(f);
          for (int64_t j = 0; j < subs; ++j) {
            sub_scales[j] = kquant_sub_scale(f, b.d, b.dmin, b.sc[j], b.m[j]);
            if (p.pack) dyn_scales[static_cast<size_t>(r * p.groups_per_row + i / p.G + j)] = sub_scales[j];
          }
          if (p.pack) {
            const int64_t nsb = kquant_super_blocks_per_row(in);
            dyn_super[static_cast<size_t>((r * nsb + sb) * nss)] = b.d;
            if (nss > 1) dyn_super[static_cast<size_t>((r * nsb + sb) * nss + 1)] = b.dmin;
          }
        }
        if (p.kquant && p.dynamic_groups) {
          gs = sub_scales[(i % p.K) / p.G];
        } else if (p.dynamic_groups && i % p.K == 0) {
          // The group's scale from its CURRENT weights (every earlier column already applied:
          // the block is a multiple of K, so the whole group lies in this block).
          const int64_t n = std::min(p.K, in - i);
          float* g = gbuf;
          if (n > 256) {
            gbig.resize(static_cast<size_t>(n));
            g = gbig.data();
          }
          for (int64_t k = 0; k < n; ++k) g[k] = static_cast<float>(w[i + k]);
          gs = choose_scale(p.ctx, group_stats_ref(g, n), g, n, p.tensor_scale);
          if (p.pack) dyn_scales[static_cast<size_t>(r * p.groups_per_row + i / p.K)] = gs;
        } else if (f.gran == granularity::group && !p.dynamic_groups) {
          gs = p.fixed[static_cast<size_t>(r * p.groups_per_row + c / p.G)];
        }
        const float x = static_cast<float>(w[i]);
        const float u = sr ? sr_uniform(f, p.tensor_id, static_cast<uint64_t>(r * in + c)) : 0.0f;
        const uint32_t code = quantize_value_ref(f, x, gs, u);
        const float q = dequantize_value_ref(f, code, gs);
        if (p.pack) codes[static_cast<size_t>(r * in + c)] = code;
        Qp[static_cast<size_t>(r * in + i)] = q;
        const T* urow = U.data() + i * in;
        const T e = (w[i] - static_cast<T>(q)) / urow[i];
        e_row[i - i1] = e;
        l_row[i - i1] = e * e / 2;
        if (e != 0) {
          any_error = true;
          for (int64_t j = i + 1; j < i2; ++j) w[j] -= e * urow[j];
        }
      }
    }
    for (int64_t r = 0; r < out; ++r)
      for (int64_t i = 0; i < cnt; ++i) loss[static_cast<size_t>(i1 + i)] += static_cast<double>(lossb[static_cast<size_t>(r * B + i)]);
    // The columns right of the block: W[:, i2:] -= Err[:, :cnt] U[i1:i2, i2:]. Skipped when every
    // error is 0 (e.g. weights already in the format), which also keeps -0.0 weights bit-exact.
    if (any_error && i2 < in)
      gemm_sub(out, in - i2, cnt, err.data(), B, U.data() + i1 * in + i2, in, Wp.data() + i2, in);
  }
}

bool all_finite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

}  // namespace

gptq_result gptq_quantize(const float* W, int64_t out, int64_t in, const double* H, const format& f,
                          const gptq_options& o) {
  if (out < 0 || in < 0) throw shape_error(fmt::format("gptq: weight shape [{}, {}] has a negative dimension", out, in));
  if (o.block_size < 1) throw error(fmt::format("gptq: block_size must be >= 1, got {}", o.block_size));
  if (!(o.percdamp >= 0)) throw error(fmt::format("gptq: percdamp must be >= 0, got {}", o.percdamp));
  if (!all_finite(W, out * in)) throw error("gptq: the weight holds NaN or Inf; GPTQ needs a finite weight");
  for (int64_t i = 0; i < in * in; ++i)
    if (!std::isfinite(H[i])) throw error("gptq: the Hessian holds NaN or Inf");

  const serial_scope serial(out * in <= kSerialElements);
  gptq_result res;
  res.column_loss.assign(static_cast<size_t>(in), 0.0);
  res.weights.assign(static_cast<size_t>(out * in), 0.0f);
  if (out == 0 || in == 0) {
    if (o.static_groups || !o.act_order || f.gran != granularity::group)
      res.packed = quantize_ref(W, out, in, f, o.tensor_id);
    return res;
  }

  // 1. Dead inputs (never active in calibration): H_ii = 1, W[:, i] = 0 (gptq.py).
  std::vector<double> Hd(H, H + in * in);
  std::vector<float> W0(W, W + out * in);
  for (int64_t i = 0; i < in; ++i) {
    if (Hd[static_cast<size_t>(i * in + i)] != 0) continue;
    Hd[static_cast<size_t>(i * in + i)] = 1;
    for (int64_t r = 0; r < out; ++r) W0[static_cast<size_t>(r * in + i)] = 0;
    ++res.dead_columns;
  }

  // 2. The quantizer's fixed parts. [M] Row / tensor / static-group scales and nvfp4's tensor
  // scale come from W after the dead columns are zeroed (gptq.py's find_params for per-channel
  // runs before the zeroing, so a dead input's weight could widen the row's range; the weights
  // GPTQ actually quantizes are the zeroed ones, and they are what a stored scale must cover).
  gptq_plan p;
  p.f = &f;
  p.ctx = make_scale_context(f, true);
  p.out = out;
  p.in = in;
  p.tensor_id = o.tensor_id;
  if (f.named == preset::nvfp4) {
    float amax = 0;
    for (const float v : W0) amax = std::max(amax, std::fabs(v));
    p.tensor_scale = nvfp4_tensor_scale(amax);
  }
  if (f.gran == granularity::tensor) {
    p.fixed.push_back(choose_scale(p.ctx, group_stats_ref(W0.data(), out * in), W0.data(), out * in, p.tensor_scale));
  } else if (f.gran == granularity::row) {
    for (int64_t r = 0; r < out; ++r) {
      const float* x = W0.data() + r * in;
      p.fixed.push_back(choose_scale(p.ctx, group_stats_ref(x, in), x, in, p.tensor_scale));
    }
  } else if (f.gran == granularity::group && is_kquant(f)) {
    // K-quants: a super-block's sub-block scales are chosen together (kquant_quantize_block).
    p.kquant = true;
    p.K = kSuperBlock;
    p.G = f.group_size;
    p.groups_per_row = groups_per_row(f, in);
    p.dynamic_groups = !o.static_groups;
    if (o.static_groups) {  // from the weights before any update: ggml's RTN scales
      const quantized_tensor rtn = quantize_ref(W0.data(), out, in, f, o.tensor_id);
      p.fixed_super = rtn.super_scales;
      for (int64_t r = 0; r < out; ++r)
        for (int64_t c = 0; c < in; c += p.G) p.fixed.push_back(kquant_stored_scale(rtn, r, c));
    }
  } else if (f.gran == granularity::group) {
    p.K = p.G = f.group_size;
    p.groups_per_row = groups_per_row(f, in);
    p.dynamic_groups = !o.static_groups;
    if (o.static_groups) {
      for (int64_t r = 0; r < out; ++r)
        for (int64_t g = 0; g < p.groups_per_row; ++g) {
          const int64_t c0 = g * p.K, n = std::min(p.K, in - c0);
          const float* x = W0.data() + r * in + c0;
          p.fixed.push_back(choose_scale(p.ctx, group_stats_ref(x, n), x, n, p.tensor_scale));
        }
    }
  }
  // [M] The block is a multiple of the group size (K itself when K > block_size), so that a
  // group never straddles two blocks and its scale sees every update of the columns before it.
  // For K dividing 128 (g16, g32, g64, g128) this is gptq.py's blocking exactly; gptq.py with
  // other sizes reads the group's columns right of the block before the block's lazy update.
  p.block = o.block_size;
  if (p.dynamic_groups) p.block = p.K >= o.block_size ? p.K : (o.block_size / p.K) * p.K;
  p.pack = !(o.act_order && p.dynamic_groups);

  // 3. Act-order: columns by descending diag(H). [M] A stable sort, so ties keep column order
  // (torch.argsort does not promise an order for ties).
  if (o.act_order) {
    p.perm.resize(static_cast<size_t>(in));
    std::iota(p.perm.begin(), p.perm.end(), int64_t{0});
    std::stable_sort(p.perm.begin(), p.perm.end(), [&](int64_t a, int64_t b) {
      return Hd[static_cast<size_t>(a * in + a)] > Hd[static_cast<size_t>(b * in + b)];
    });
    std::vector<double> Hp(Hd.size());
    for (int64_t i = 0; i < in; ++i)
      for (int64_t j = 0; j < in; ++j)
        Hp[static_cast<size_t>(i * in + j)] = Hd[static_cast<size_t>(p.perm[static_cast<size_t>(i)] * in + p.perm[static_cast<size_t>(j)])];
    Hd.swap(Hp);
  }

  // 4. Dampening, 5. U = chol_upper(H^-1).
  double mean_diag = 0;
  for (int64_t i = 0; i < in; ++i) mean_diag += Hd[static_cast<size_t>(i * in + i)];
  mean_diag /= static_cast<double>(in);
  for (int64_t i = 0; i < in; ++i) Hd[static_cast<size_t>(i * in + i)] += o.percdamp * mean_diag;
  const std::vector<double> U64 = inverse_cholesky_upper(Hd, in, o.percdamp);
  Hd = {};

  // 6. The column loop, in float32 (as gptq.py) or float64.
  std::vector<float> Qp(static_cast<size_t>(out * in));
  std::vector<double> lossp(static_cast<size_t>(in), 0.0);
  std::vector<uint32_t> codes(p.pack ? static_cast<size_t>(out * in) : 0);
  std::vector<group_scale> dyn(p.pack && p.dynamic_groups ? static_cast<size_t>(out * p.groups_per_row) : 0);
  std::vector<float> dyn_super(p.pack && p.dynamic_groups && p.kquant
                                   ? static_cast<size_t>(out * kquant_super_blocks_per_row(in) * kquant_super_scale_count(f))
                                   : 0);
  auto permuted = [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> Wp(static_cast<size_t>(out * in));
    for (int64_t r = 0; r < out; ++r)
      for (int64_t i = 0; i < in; ++i)
        Wp[static_cast<size_t>(r * in + i)] = W0[static_cast<size_t>(r * in + (p.perm.empty() ? i : p.perm[static_cast<size_t>(i)]))];
    return Wp;
  };
  if (o.float64) {
    std::vector<double> Wp = permuted(0.0);
    gptq_columns<double>(p, Wp, U64, Qp, lossp, codes, dyn, dyn_super);
  } else {
    std::vector<float> Wp = permuted(0.0f);
    const std::vector<float> U32(U64.begin(), U64.end());
    gptq_columns<float>(p, Wp, U32, Qp, lossp, codes, dyn, dyn_super);
  }

  // Undo the permutation.
  for (int64_t i = 0; i < in; ++i) {
    const int64_t c = p.perm.empty() ? i : p.perm[static_cast<size_t>(i)];
    res.column_loss[static_cast<size_t>(c)] = lossp[static_cast<size_t>(i)];
    for (int64_t r = 0; r < out; ++r) res.weights[static_cast<size_t>(r * in + c)] = Qp[static_cast<size_t>(r * in + i)];
  }
  res.loss = std::accumulate(res.column_loss.begin(), res.column_loss.end(), 0.0);
  if (!all_finite(res.weights.data(), out * in))
    throw error("gptq: the update produced NaN or Inf (an ill-conditioned Hessian?); increase percdamp");

  // Codes + scales in quantize()'s layout.
  if (p.pack) {
    quantized_tensor q = quantized_tensor::allocate(f, out, in);
    q.tensor_scale = f.named == preset::nvfp4 ? p.tensor_scale : 1.0f;
    const std::vector<group_scale>& scales = p.dynamic_groups ? dyn : p.fixed;
    for (size_t g = 0; g < q.scales.size(); ++g) store_group_scale(q, static_cast<int64_t>(g), scales[g]);
    if (p.kquant) q.super_scales = p.dynamic_groups ? dyn_super : p.fixed_super;
    for (int64_t r = 0; r < out; ++r) pack_codes(codes.data() + r * in, in, f.element.bits, q.codes.data() + r * q.row_bytes);
    res.packed = std::move(q);
  }
  return res;
}

// GPTQ as a method (methods.hpp): every layer of the group with the Hessian of their shared input.
group_result gptq_group(const group_job& job) {
  const std::vector<double> H = job.inputs->hessian->matrix();
  group_result r;
  for (size_t i = 0; i < job.layers.size(); ++i) {
    gptq_options go = job.options.gptq;
    go.tensor_id = ++job.tensor_id;
    gptq_result g = gptq_quantize(job.layers[i].w, job.layers[i].out, job.in, H.data(), job.options.weights, go);
    r.weights.push_back(std::move(g.weights));
    if (g.packed) job.packed[job.names[i]] = std::move(*g.packed);
  }
  return r;
}

}  // namespace lowbit::ptq

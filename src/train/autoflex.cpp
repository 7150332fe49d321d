// Flexpoint's Autoflex exponent manager (Koster et al., "Flexpoint: An Adaptive Numerical Format
// for Efficient Training of Deep Neural Networks", NeurIPS 2017, arXiv 1711.02213; docs/formats.md §1.5).
//
// A flexN+E tensor stores N-bit two's-complement integer mantissas and one E-bit exponent k shared
// by the whole tensor; an element's value is mantissa * kappa with kappa = 2^k. The exponent of an
// op's output must be fixed before the op runs, so Autoflex predicts it from the maxima the tensor
// had on earlier uses (Algorithm 2), after a short trial-and-error start (Algorithm 1).
//
// This file only manages the exponent: it never touches tensor data. The kernel reports
// Gamma = max |mantissa| of the output it wrote under the current exponent. A saturating kernel
// clamps mantissas to M = 2^(N-1) - 1, so Gamma >= M is read as an overflow (Gamma is then only a
// lower bound of the true maximum).
#include "lowbit/train/autoflex.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "lowbit/base/error.hpp"

namespace lowbit {

namespace {

// Largest mantissa magnitude of an N-bit two's-complement integer used symmetrically: 2^(N-1) - 1.
double mantissa_max(int n) { return std::ldexp(1.0, n - 1) - 1.0; }

// The E-bit two's-complement range of the shared exponent: [-2^(E-1), 2^(E-1) - 1].
int exponent_min(int e) { return -(1 << (e - 1)); }
int exponent_max(int e) { return (1 << (e - 1)) - 1; }

// Gamma comes from a kernel as a magnitude; anything else is a caller's bug we can report.
void check_gamma(double gamma_max_mantissa, const char* where) {
  if (!(gamma_max_mantissa >= 0) || std::isinf(gamma_max_mantissa)) {
    throw error(std::string("autoflex::") + where +
                ": expected Gamma = max |mantissa| as a finite number >= 0, got " +
                std::to_string(gamma_max_mantissa));
  }
}

}  // namespace

autoflex::autoflex(autoflex_config cfg) : cfg_(cfg) {
  // N <= 32 keeps every mantissa (and 2 * M after an overflow) exact in a double; E <= 10 keeps
  // every kappa = 2^k, k in [-512, 511], and M * kappa a normal double.
  if (cfg_.mantissa_bits < 3 || cfg_.mantissa_bits > 32) {
    throw format_error("autoflex: flexN+E needs 3 <= N <= 32 mantissa bits, got N = " +
                       std::to_string(cfg_.mantissa_bits));
  }
  if (cfg_.exponent_bits < 1 || cfg_.exponent_bits > 10) {
    throw format_error("autoflex: flexN+E needs 1 <= E <= 10 exponent bits, got E = " +
                       std::to_string(cfg_.exponent_bits));
  }
  // alpha < 1 would be negative headroom (the predicted maximum below the observed one); with
  // alpha >= 1 an overflow (Gamma doubled) always raises the exponent by at least one.
  if (!(cfg_.alpha >= 1) || !std::isfinite(cfg_.alpha) || !(cfg_.beta >= 0) ||
      !std::isfinite(cfg_.beta) || !(cfg_.gamma >= 0) || !std::isfinite(cfg_.gamma)) {
    throw error("autoflex: expected finite headroom alpha >= 1, beta >= 0, gamma >= 0, got "
                "alpha = " + std::to_string(cfg_.alpha) + ", beta = " + std::to_string(cfg_.beta) +
                ", gamma = " + std::to_string(cfg_.gamma));
  }
  // The additive headroom alone must fit the mantissa range: otherwise chi / kappa >=
  // alpha * gamma >= M on every update and the exponent rises without end (the paper's gamma = 100
  // is for flex16, M = 32767; smaller N need a smaller gamma).
  if (!(cfg_.alpha * cfg_.gamma < mantissa_max(cfg_.mantissa_bits))) {
    throw error("autoflex: the additive headroom alpha * gamma = " +
                std::to_string(cfg_.alpha * cfg_.gamma) +
                " must be below the largest mantissa 2^(N-1) - 1 = " +
                std::to_string(mantissa_max(cfg_.mantissa_bits)) + " (N = " +
                std::to_string(cfg_.mantissa_bits) + "); lower gamma for a narrow mantissa");
  }
  if (cfg_.window < 1) {
    throw error("autoflex: the maxima window l must hold at least one entry, got " +
                std::to_string(cfg_.window));
  }
  k_ = 0;  // kappa = 1, Algorithm 1's starting point; 0 lies inside every E-bit range (E >= 1)
}

double autoflex::kappa() const { return std::ldexp(1.0, k_); }

// The smallest exponent k in the E-bit range with chi <= M * 2^k, i.e. chi / kappa fits the
// mantissa range; the top of the range when even that is too small, the bottom for chi <= 0.
//
// The header describes this as ceil(log2(chi)) - (N - 1). That formula places chi against 2^(N-1),
// one more than the largest mantissa M = 2^(N-1) - 1: for chi in (M * 2^j, 2^(N-1) * 2^j] (e.g.
// N = 16, chi = 32768 or 32767.5) it returns j, and chi / 2^j rounds to 2^(N-1), which overflows.
// We therefore use the safe form k = ceil(log2(chi / M)), evaluated exactly: log2 only gives a
// first guess, which is then corrected by exact comparisons against M * 2^k (an integer times a
// power of two, exact in a double), so rounding in log2 cannot move the result by one.
int autoflex::exponent_for_max(double chi) const {
  const int kmin = exponent_min(cfg_.exponent_bits);
  const int kmax = exponent_max(cfg_.exponent_bits);
  if (!(chi > 0)) return kmin;  // nothing to represent (also NaN: no information)
  if (std::isinf(chi)) return kmax;
  const double m = mantissa_max(cfg_.mantissa_bits);
  const double guess = std::ceil(std::log2(chi / m));
  int k = static_cast<int>(std::clamp(guess, double(kmin), double(kmax)));
  while (k < kmax && std::ldexp(m, k) < chi) ++k;       // too small: chi / 2^k > M
  while (k > kmin && std::ldexp(m, k - 1) >= chi) --k;  // one lower still fits
  return k;
}

// Algorithm 1 (paper Sec. 3, "initialization"): run the op with the current exponent, starting at
// kappa = 1, and adjust until Gamma sits in the upper half of the mantissa range.
//
// Choices where the (OCR'd) paper text leaves the exact factor open (docs/formats.md §1.5 [M]):
//  * Overflow (Gamma >= M): a saturated Gamma only says "the maximum is at least M * kappa", so we
//    jump k up by N/2 bits. A maximum just above the overflow threshold then comes back with about
//    2^(N/2 - 1), which is the reliability threshold used below, so the next trial can usually
//    jump straight to the target; larger maxima are found with ~log2(max)/(N/2) jumps. When the
//    kernel does not saturate and reports Gamma > M, that lower bound may ask for a larger jump,
//    and we take the larger of the two.
//  * Under-use (Gamma <= 2^(N-2)): jump straight to the exponent that puts the maximum at the top
//    of the mantissa range. Gamma is a rounded integer, so the true maximum may be up to
//    (Gamma + 1/2) * kappa, and a mantissa of exactly M already reads as an overflow; we target
//    (Gamma + 1) * kappa, which guarantees (for the same data) a next Gamma of at most M - 1, and
//    (when Gamma > 2^(N/2 - 1) and the E-bit range does not clamp) a next Gamma of about
//    2^(N-2) * (1 - 3 * 2^(-N/2)) or more, i.e. the upper half up to the rounding error of the
//    measurement. We accept right away when Gamma has more than N/2 - 1 bits (a reliable jump),
//    else retry at the new exponent.
//  * Gamma == 0: every mantissa rounded to zero, so the maximum is below kappa / 2. Moving k down
//    by N - 1 is the largest step that cannot overflow (max / 2^(k - N + 1) < 2^(N-2)); retry.
//  * A step that the E-bit range clamps to no change is accepted: a retry could not learn more,
//    and accepting keeps the loop finite (an all-zero tensor ends at the bottom of the range).
bool autoflex::initialize_step(double gamma_max_mantissa) {
  check_gamma(gamma_max_mantissa, "initialize_step");
  const int n = cfg_.mantissa_bits;
  const int kmin = exponent_min(cfg_.exponent_bits);
  const int kmax = exponent_max(cfg_.exponent_bits);
  const double m = mantissa_max(n);
  const double g = gamma_max_mantissa;
  const int k_old = k_;

  if (g >= m) {
    // Overflow: a large jump up (see above); retry.
    const int by_jump = std::min(k_ + n / 2, kmax);
    const int by_bound = exponent_for_max((g + 1) * kappa());
    k_ = std::max(by_jump, by_bound);
    return k_ == k_old;  // already at the top of the range: nothing larger to try
  }
  if (g == 0) {
    // Nothing survived the rounding: a big safe jump down; retry.
    k_ = std::max(k_ - (n - 1), kmin);
    return k_ == k_old;
  }
  if (g <= std::ldexp(1.0, n - 2)) {
    // Under-use: jump directly to the target exponent.
    k_ = exponent_for_max((g + 1) * kappa());
    const bool reliable = g > std::ldexp(1.0, n / 2 - 1);
    return reliable || k_ == k_old;
  }
  return true;  // 2^(N-2) < Gamma < M: the upper half, accept
}

// Algorithm 2 (paper Sec. 3, "Autoflex"): after each use of the tensor, record its maximum and set
// the exponent for the next use from the statistics of the last l maxima.
//
// Gamma is a rounded integer, so phi = Gamma * kappa differs slightly between exponents for the
// same data. With the paper's flex16 this is far below the headroom; with a narrow mantissa
// (N around 8-10) it can feed std(f) enough that a stationary input makes the exponent alternate
// between two neighbours. We implement the paper's rule as written (no hysteresis).
int autoflex::update(double gamma_max_mantissa) {
  check_gamma(gamma_max_mantissa, "update");
  // Step 1: Gamma from the kernel, kappa the scale this use ran with.
  double g = gamma_max_mantissa;
  const double kappa_used = kappa();

  // Step 2: overflow. The history no longer describes the tensor, and a saturated Gamma is only a
  // lower bound: drop the history and "add one bit" to the estimate.
  overflowed_ = g >= mantissa_max(cfg_.mantissa_bits);
  if (overflowed_) {
    maxima_.clear();
    g *= 2;
  }

  // Step 3: the floating-point maximum phi = Gamma * kappa, into a deque of at most l entries.
  maxima_.push_back(g * kappa_used);
  while (static_cast<int>(maxima_.size()) > cfg_.window) maxima_.pop_front();

  // Step 4: predicted maximum chi = alpha * (max(f) + beta * std(f) + gamma * kappa), with the
  // population standard deviation (0 for a single entry); gamma is in mantissa units, hence
  // scaled by the kappa of this use.
  double f_max = 0, f_sum = 0;
  for (double f : maxima_) {
    f_max = std::max(f_max, f);
    f_sum += f;
  }
  const double f_mean = f_sum / static_cast<double>(maxima_.size());
  double f_ss = 0;
  for (double f : maxima_) f_ss += (f - f_mean) * (f - f_mean);
  const double f_std = std::sqrt(f_ss / static_cast<double>(maxima_.size()));
  const double chi = cfg_.alpha * (f_max + cfg_.beta * f_std + cfg_.gamma * kappa_used);

  // Step 5: the power of two that puts chi at the top of the mantissa range, clamped to E bits.
  k_ = exponent_for_max(chi);
  return k_;
}

}  // namespace lowbit

// Format analysis (docs/analysis.md §5.1; van Baalen et al. 2023 "FP8 versus INT8 for efficient deep
// learning inference", Kuzmin et al. 2022 "FP8 quantization: the power of the exponent"):
// the SQNR of an element grid on a unit-variance density, with the clipping value chosen
// optimally.
//
// Model. The decoded values of every code, finite and within the element's [min, max] (the int
// code -2^(N-1) decodes but is no level of the symmetric grid), deduplicated (+0 = -0) and
// sorted, form a grid v_0 < ... < v_{n-1}; a uint grid 0 .. 2^N-1 is centred first
// (k - (2^N-1)/2). The grid is scaled so that max|v_i| = c (the clip). Round-to-nearest gives
// the cells
//     [t_i, t_{i+1}),  t_i = (v_{i-1} + v_i) / 2,  t_0 = -inf,  t_n = +inf
// (the outermost cells reach to infinity: values beyond the grid are clipped to its ends), and
//     MSE(c) = sum_i  integral_{t_i}^{t_{i+1}} (x - v_i)^2 p(x) dx,       SQNR = 10 log10(1 / MSE)
// (E[x^2] = 1 for every density here). No sampling: every cell integral is computed exactly,
// up to double rounding:
//   * a cell is split at 0 and its negative part mirrored (p is even, and the Laplace density has
//     a kink at 0), so the pieces below are integrals over 0 <= a < b <= inf;
//   * narrow pieces (b - a <= h, h = min(1, s) / 8 with s the density's length scale) use a
//     10-point Gauss-Legendre rule: the integrand (x - q)^2 p(x) is analytic on and far around
//     such a piece (for the Student-t density the nearest poles of p are at +-i s), so the rule
//     is exact to rounding, and it avoids the cancellation of the closed forms, which subtract
//     O(1) antiderivatives to get an O(h^3) cell (a 16-bit grid has 65535 such cells);
//   * wider pieces and the tails use the closed forms below, or, for Student-t with nu != 3,
//     adaptive Gauss-Legendre quadrature (dyadic pieces, and a change of variables for the tail).
//
// Closed forms: U_q(x) = integral_x^inf (t - q)^2 p(t) dt for x >= 0, so a piece is
// U_q(a) - U_q(b).
//   Gaussian N(0, 1), Q(x) = erfc(x / sqrt 2) / 2, phi the pdf:
//       U_q(x) = (1 + q^2) Q(x) + (x - 2q) phi(x)
//   Laplace, p(x) = exp(-|x| / beta) / (2 beta), beta = 1 / sqrt 2:
//       U_q(x) = exp(-x / beta) ((x - q + beta)^2 + beta^2) / 2
//   Student-t, nu = 3, scaled to unit variance: p(x) = 2 / (pi (1 + x^2)^2), and with
//   atan(1/x) = pi/2 - atan(x):
//       integral_x^inf p     = (atan(1/x) - x / (1 + x^2)) / pi
//       integral_x^inf t p   = 1 / (pi (1 + x^2))
//       integral_x^inf t^2 p = (atan(1/x) + x / (1 + x^2)) / pi
//       U_q(x) = M2 - 2 q M1 + q^2 M0 of these (M0 by its series in 1/x for x > 4)
//   Uniform on [-sqrt 3, sqrt 3], p = 1 / (2 sqrt 3): a piece [a, b] clipped to [0, sqrt 3] is
//       ((b - q)^3 - (a - q)^3) / (6 sqrt 3)
// Student-t, general nu > 2, scaled by s = sqrt(nu - 2) to unit variance:
//       p(x) = C (1 + x^2 / s^2)^(-(nu + 1) / 2),
//       C = Gamma((nu + 1) / 2) / (Gamma(nu / 2) sqrt(pi (nu - 2)))       (via lgamma)
//   The tail beyond a (a >= max(1, s)) is mapped onto [0, 1] by x = a / y:
//       integral_a^inf (x - q)^2 p dx
//           = integral_0^1 C a (a - q y)^2 y^(nu - 3) (s^2 / (s^2 y^2 + a^2))^((nu + 1) / 2) dy,
//   and for nu < 3, where y^(nu - 3) is unbounded, further by y = w^k, k = 1 / (nu - 2)
//   (y^(nu - 3) dy = k dw), which leaves a bounded integrand. Finite pieces are split at
//   min(1, s) 2^j so that no piece hides the peak of p from the quadrature nodes.
//
// Optimisation: grid search over log2(c) in steps of 1/64 on [-3, 8], extended by 8 octaves at a
// time (up to 2^+-64) while the best point lies in the first or last octave, then golden-section
// refinement of log2(c) within +-1/64 of the best grid point down to a bracket of 1e-9 (c to
// ~1e-9 relative). A fixed range such as [0.5, 40] is not enough: on heavy tails a float grid's
// MSE keeps falling with c far beyond it (E5M2 on t3: clipping error ~0.42 / c against a
// c-independent relative rounding error; optimum near c = 1e7), and on t with nu near 2 a 1-bit
// grid's optimum c = E|X| is below 0.25.
#include "lowbit/formats/analysis.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"

namespace lowbit {

namespace {

constexpr double kPi = std::numbers::pi;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLaplaceBeta = 0.70710678118654752440;  // 1 / sqrt 2: variance 2 beta^2 = 1
constexpr double kSqrt3 = 1.73205080756887729353;
constexpr double kMaxNu = 1e6;  // beyond this, lgamma differences lose digits; use gaussian

// ---- Gauss-Legendre quadrature ------------------------------------------------------------------
constexpr int kGaussPoints = 10;

struct gauss_rule {
  std::array<double, kGaussPoints> node{}, weight{};
};

// Nodes (roots of the Legendre polynomial P_n) and weights 2 / ((1 - x^2) P_n'(x)^2) on [-1, 1],
// found by Newton's method from the estimate cos(pi (i + 3/4) / (n + 1/2)).
const gauss_rule& gauss_legendre() {
  static const gauss_rule rule = [] {
    gauss_rule r;
    const int n = kGaussPoints;
    // P_n(x) and P_n'(x) by (k + 1) P_{k+1} = (2k + 1) x P_k - k P_{k-1}.
    auto legendre = [n](double x, double& derivative) {
      double p_prev = 1, p = x;
      for (int k = 1; k < n; ++k) {
        const double p_next = ((2 * k + 1) * x * p - k * p_prev) / (k + 1);
        p_prev = p;
        p = p_next;
      }
      derivative = n * (x * p - p_prev) / (x * x - 1);
      return p;
    };
    for (int i = 0; i < n; ++i) {
      double x = std::cos(kPi * (i + 0.75) / (n + 0.5));
      double dp = 0;
      for (int it = 0; it < 8; ++it) x -= legendre(x, dp) / dp;  // quadratic convergence
      legendre(x, dp);
      r.node[i] = x;
      r.weight[i] = 2 / ((1 - x * x) * dp * dp);
    }
    return r;
  }();
  return rule;
}

template <class F>
double gauss_integral(const F& f, double a, double b) {
  const gauss_rule& r = gauss_legendre();
  const double half = 0.5 * (b - a), mid = 0.5 * (a + b);
  double sum = 0;
  for (int i = 0; i < kGaussPoints; ++i) sum += r.weight[i] * f(mid + half * r.node[i]);
  return sum * half;
}

// Adaptive bisection: accept a piece when the rule on its two halves agrees with the rule on the
// whole to `tol`. Only used on positive integrands.
constexpr int kMaxDepth = 48;

template <class F>
double adaptive_step(const F& f, double a, double b, double whole, double tol, int depth) {
  const double mid = 0.5 * (a + b);
  const double left = gauss_integral(f, a, mid), right = gauss_integral(f, mid, b);
  if (depth >= kMaxDepth || std::fabs(left + right - whole) <= tol) return left + right;
  return adaptive_step(f, a, mid, left, tol, depth + 1) + adaptive_step(f, mid, b, right, tol, depth + 1);
}

// Relative tolerance 1e-13, and an absolute floor far below any MSE a grid of <= 16 bits can
// reach (~1e-10), which stops the bisection in far tails where the integrand is subnormal noise.
template <class F>
double adaptive_integral(const F& f, double a, double b) {
  const double whole = gauss_integral(f, a, b);
  const double tol = 1e-13 * std::fabs(whole) + 1e-200;
  return adaptive_step(f, a, b, whole, tol, 0);
}

// ---- the densities ------------------------------------------------------------------------------
class density_model {
 public:
  explicit density_model(const density& d) : d_(d) {
    if (d.kind == density_kind::student_t) {
      if (!(d.nu > 2) || !(d.nu <= kMaxNu))
        throw error(
            fmt::format("student-t needs 2 < nu <= {:g} (the variance must exist), got {}", kMaxNu, d.nu));
      s_ = std::sqrt(d.nu - 2);
      log_c_ = std::lgamma((d.nu + 1) / 2) - std::lgamma(d.nu / 2) - 0.5 * std::log(kPi * (d.nu - 2));
      closed_t3_ = d.nu == 3;
    }
    narrow_ = std::min(1.0, s_) / 8;
  }

  // integral_a^b (x - q)^2 p(x) dx for any a < b (either may be infinite).
  double cell(double a, double b, double q) const {
    if (!(a < b)) return 0;
    if (a < 0 && b > 0) return half(0, b, q) + half(0, -a, -q);
    if (b <= 0) return half(-b, -a, -q);  // mirror: p is even
    return half(a, b, q);
  }

 private:
  double pdf(double x) const {
    switch (d_.kind) {
      case density_kind::gaussian: return std::exp(-0.5 * x * x) / std::sqrt(2 * kPi);
      case density_kind::laplace: return std::exp(-std::fabs(x) / kLaplaceBeta) / (2 * kLaplaceBeta);
      case density_kind::student_t:
        return std::exp(log_c_ - 0.5 * (d_.nu + 1) * std::log1p((x / s_) * (x / s_)));
      case density_kind::uniform: return std::fabs(x) <= kSqrt3 ? 1 / (2 * kSqrt3) : 0.0;
    }
    return 0;
  }

  // P(X > x) = (atan(1/x) - x / (1 + x^2)) / pi for the unit-variance t3, x >= 0. For large x
  // both terms are ~1/x and their difference ~2/(3 x^3); there the series in y = 1/x,
  //     atan(y) - y / (1 + y^2) = sum_{k>=1} (-1)^(k+1) (2k / (2k + 1)) y^(2k+1),
  // avoids the cancellation (y <= 1/4: 16 terms reach 1e-19).
  static double t3_tail_mass(double x) {
    if (x <= 4) return (std::atan2(1.0, x) - x / (1 + x * x)) / kPi;
    const double y = 1 / x, y2 = y * y;
    double sum = 0, power = y;
    for (int k = 1; k <= 16; ++k) {
      power *= y2;
      sum += (k % 2 ? 1.0 : -1.0) * (2.0 * k / (2 * k + 1)) * power;
    }
    return sum / kPi;
  }

  // Closed form U_q(x) = integral_x^inf (t - q)^2 p(t) dt, x >= 0 (gaussian, laplace, t with nu = 3).
  double upper(double x, double q) const {
    if (std::isinf(x)) return 0;
    switch (d_.kind) {
      case density_kind::gaussian: {
        const double tail = 0.5 * std::erfc(x / std::numbers::sqrt2);
        const double phi = std::exp(-0.5 * x * x) / std::sqrt(2 * kPi);
        return (1 + q * q) * tail + (x - 2 * q) * phi;
      }
      case density_kind::laplace: {
        const double u = x - q + kLaplaceBeta;
        return 0.5 * std::exp(-x / kLaplaceBeta) * (u * u + kLaplaceBeta * kLaplaceBeta);
      }
      case density_kind::student_t: {             // nu = 3, s = 1
        const double angle = std::atan2(1.0, x);  // atan(1/x), pi/2 at x = 0
        const double r = x / (1 + x * x);
        const double m0 = t3_tail_mass(x), m1 = 1 / (kPi * (1 + x * x)), m2 = (angle + r) / kPi;
        return m2 - 2 * q * m1 + q * q * m0;
      }
      case density_kind::uniform: break;
    }
    return 0;
  }

  // integral_a^b (x - q)^2 p(x) dx for 0 <= a < b <= inf.
  double half(double a, double b, double q) const {
    if (d_.kind == density_kind::uniform) {
      const double hi = std::min(b, kSqrt3);
      if (a >= hi) return 0;
      const double da = a - q, db = hi - q;
      return (db * db * db - da * da * da) / (6 * kSqrt3);
    }
    auto integrand = [this, q](double x) { return (x - q) * (x - q) * pdf(x); };
    if (b - a <= narrow_) return gauss_integral(integrand, a, b);
    if (d_.kind != density_kind::student_t || closed_t3_) return std::max(0.0, upper(a, q) - upper(b, q));

    // Student-t, general nu: finite part by adaptive quadrature, tail by a change of variables.
    const double tail_start = std::max(1.0, s_);
    if (std::isinf(b)) {
      if (a < tail_start) return t_finite(a, tail_start, q) + t_tail(tail_start, q);
      return t_tail(a, q);
    }
    return t_finite(a, b, q);
  }

  // Student-t on a finite [a, b], 0 <= a < b: adaptive Gauss-Legendre on the dyadic pieces
  // [base 2^k, base 2^(k+1)] (base = min(1, s)), so that no piece hides the density's peak.
  double t_finite(double a, double b, double q) const {
    auto integrand = [this, q](double x) { return (x - q) * (x - q) * pdf(x); };
    double edge = std::min(1.0, s_);
    while (edge <= a) edge *= 2;
    double sum = 0, lo = a;
    for (; edge < b; edge *= 2) {
      sum += adaptive_integral(integrand, lo, edge);
      lo = edge;
    }
    return sum + adaptive_integral(integrand, lo, b);
  }

  // Student-t tail integral_a^inf (x - q)^2 p(x) dx for a >= max(1, s), through x = a / y (and
  // y = w^k for nu < 3); see the header comment.
  double t_tail(double a, double q) const {
    const double nu = d_.nu, c = std::exp(log_c_), s2 = s_ * s_;
    auto in_y = [=](double y) {  // the integrand without the y^(nu - 3) factor
      const double r = a - q * y;
      return c * a * r * r * std::pow(s2 / (s2 * y * y + a * a), 0.5 * (nu + 1));
    };
    if (nu < 3) {
      const double k = 1 / (nu - 2);
      return adaptive_integral([&](double w) { return k * in_y(std::pow(w, k)); }, 0.0, 1.0);
    }
    return adaptive_integral([&](double y) { return std::pow(y, nu - 3) * in_y(y); }, 0.0, 1.0);
  }

  density d_;
  double s_ = kInf;   // Student-t: sqrt(nu - 2); the distance of p's poles from the real axis
  double log_c_ = 0;  // Student-t: log of the normalising constant C
  bool closed_t3_ = false;
  double narrow_ = 0.125;
};

// ---- the grid -----------------------------------------------------------------------------------
// The element's finite values, deduplicated, sorted, centred for uint, divided by the largest
// magnitude (so the scaled grid is clip * levels).
std::vector<double> unit_grid(const element_format& e) {
  if (e.bits > 16)
    throw error(fmt::format("format analysis enumerates every code: {} has {} bits, at most 16 are supported",
                            element_name(e), e.bits));
  // Codes outside [min, max] are not levels: the int code -2^(N-1) decodes to -2^(N-1) but the
  // symmetric restricted grid stops at -(2^(N-1) - 1), and encode never produces it.
  const element_limits lim = limits_of(e);
  std::vector<double> levels;
  const uint64_t codes = code_count(e);
  levels.reserve(codes);
  for (uint64_t code = 0; code < codes; ++code) {
    const double v = decode_ref(e, static_cast<uint32_t>(code));
    if (std::isfinite(v) && v >= lim.min && v <= lim.max) levels.push_back(v == 0 ? 0.0 : v);  // -0 -> +0
  }
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  if (e.kind == element_kind::uint_asym) {
    const double centre = (std::ldexp(1.0, e.bits) - 1) / 2;
    for (double& v : levels) v -= centre;
  }
  double amax = 0;
  for (double v : levels) amax = std::max(amax, std::fabs(v));
  if (levels.size() < 2 || !(amax > 0))
    throw error(fmt::format("format analysis needs at least two distinct finite values, {} has {}",
                            element_name(e), levels.size()));
  for (double& v : levels) v /= amax;
  return levels;
}

double mse_of(const std::vector<double>& levels, const density_model& model, double clip) {
  const size_t n = levels.size();
  double sum = 0;
  double lower = -kInf;
  for (size_t i = 0; i < n; ++i) {
    const double q = clip * levels[i];
    const double upper_edge = i + 1 < n ? 0.5 * (q + clip * levels[i + 1]) : kInf;
    sum += model.cell(lower, upper_edge, q);
    lower = upper_edge;
  }
  return sum;
}

void check_clip(double clip) {
  if (!(clip > 0) || !std::isfinite(clip))
    throw error(fmt::format("the clip must be a positive finite number, got {}", clip));
}

}  // namespace

// ---- public API ---------------------------------------------------------------------------------
density parse_density(std::string_view name) {
  density d;
  if (name == "gaussian") {
    d.kind = density_kind::gaussian;
    return d;
  }
  if (name == "laplace") {
    d.kind = density_kind::laplace;
    return d;
  }
  if (name == "uniform") {
    d.kind = density_kind::uniform;
    return d;
  }
  constexpr std::string_view t_prefix = "student-t:";
  if (name.starts_with(t_prefix)) {
    const std::string_view digits = name.substr(t_prefix.size());
    double nu = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), nu);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || !std::isfinite(nu))
      throw error(
          fmt::format("density '{}': the degrees of freedom after 'student-t:' must be a number, "
                      "e.g. student-t:3",
                      name));
    if (!(nu > 2) || nu > kMaxNu)
      throw error(
          fmt::format("density '{}': student-t needs 2 < nu <= {:g} (nu > 2 for a finite "
                      "variance; use gaussian for the limit)",
                      name, kMaxNu));
    d.kind = density_kind::student_t;
    d.nu = nu;
    return d;
  }
  throw error(
      fmt::format("unknown density '{}': expected gaussian, laplace, student-t:NU (NU > 2, "
                  "e.g. student-t:3) or uniform",
                  name));
}

std::string density_name(const density& d) {
  switch (d.kind) {
    case density_kind::gaussian: return "gaussian";
    case density_kind::laplace: return "laplace";
    case density_kind::student_t: return fmt::format("student-t:{}", d.nu);  // shortest round trip
    case density_kind::uniform: return "uniform";
  }
  return "?";
}

double grid_mse(const element_format& e, const density& d, double clip) {
  check_clip(clip);
  return mse_of(unit_grid(e), density_model(d), clip);
}

sqnr_result analyze_sqnr(const element_format& e, const density& d) {
  const std::vector<double> levels = unit_grid(e);
  const density_model model(d);
  auto mse_at = [&](double log2_clip) { return mse_of(levels, model, std::exp2(log2_clip)); };

  // Grid search over log2(c) = j / 64; the range grows by 8 octaves while the best point is in
  // its first or last octave (up to 2^+-64).
  constexpr int kSteps = 64;  // per octave
  constexpr int kOctaveLimit = 64;
  int lo = -3 * kSteps, hi = 8 * kSteps;  // j range, inclusive
  int best = lo;
  double best_mse = kInf;
  auto scan = [&](int from, int to) {
    for (int j = from; j <= to; ++j) {
      const double m = mse_at(static_cast<double>(j) / kSteps);
      if (m < best_mse) {
        best_mse = m;
        best = j;
      }
    }
  };
  scan(lo, hi);
  for (bool grown = true; grown;) {
    grown = false;
    if (best > hi - kSteps && hi < kOctaveLimit * kSteps) {
      scan(hi + 1, hi + 8 * kSteps);
      hi += 8 * kSteps;
      grown = true;
    }
    if (best < lo + kSteps && lo > -kOctaveLimit * kSteps) {
      scan(lo - 8 * kSteps, lo - 1);
      lo -= 8 * kSteps;
      grown = true;
    }
  }

  // Golden-section refinement of log2(c) in [best - 1, best + 1] / 64; the result is the best
  // point evaluated, so it is never worse than the grid search.
  double t_best = static_cast<double>(best) / kSteps;
  const double inv_phi = (std::sqrt(5.0) - 1) / 2;
  double a = t_best - 1.0 / kSteps, b = t_best + 1.0 / kSteps;
  double x1 = b - inv_phi * (b - a), x2 = a + inv_phi * (b - a);
  double f1 = mse_at(x1), f2 = mse_at(x2);
  auto consider = [&](double t, double m) {
    if (m < best_mse) {
      best_mse = m;
      t_best = t;
    }
  };
  consider(x1, f1);
  consider(x2, f2);
  while (b - a > 1e-9) {
    if (f1 <= f2) {
      b = x2;
      x2 = x1;
      f2 = f1;
      x1 = b - inv_phi * (b - a);
      f1 = mse_at(x1);
      consider(x1, f1);
    } else {
      a = x1;
      x1 = x2;
      f1 = f2;
      x2 = a + inv_phi * (b - a);
      f2 = mse_at(x2);
      consider(x2, f2);
    }
  }

  sqnr_result r;
  r.clip = std::exp2(t_best);
  r.mse = best_mse;
  r.sqnr_db = 10 * std::log10(1 / best_mse);
  return r;
}

}  // namespace lowbit

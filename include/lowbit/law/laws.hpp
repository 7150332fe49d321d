// Scaling laws of the loss of language-model training (issue 6, docs/laws.md §2.1):
//
//   sun2025     Sun et al. 2025, "Scaling Laws for Floating-Point Quantization Training"
//               (arXiv 2501.02423v3, Eq. 1/18/26):
//                 L(N, D, E, M, B) = n/N^alpha + d/D^beta + eps
//                                  + (D^beta/N^alpha) * log2 B / (gamma (E+0.5)^delta (M+0.5)^nu)
//               published constants n 69.2343, alpha 0.2368, d 68973.0621, beta 0.5162,
//               eps 1.9061, gamma 11334.5197, delta 3.1926, nu 2.9543; channel-wise scaling
//               enters as log2 B = 13.1567; tensor-wise scaling needs omega, xi, eta, which the
//               paper does not report (not available here).
//   chinchilla  Hoffmann et al. 2022, approach 3: L = E + A/N^alpha + B/D^beta with
//               E 1.69, A 406.4, alpha 0.34, B 410.7, beta 0.28.
//   kumar2024   Kumar et al. 2024 (the baseline Sun et al. compare against, docs/laws.md §2.1):
//                 L = n/[N (1 - e^(-P/gamma))]^alpha + d/D^beta + eps,  P = E + M + 1 bits.
//               Its published constants could not be confirmed from the paper here, so none are
//               built in: the law needs constants fitted here (`lowbit fit --law kumar2024 -o F`,
//               then `--constants F`).
//
// How a lowbit format maps onto the law's variables (ours; the paper only has ExMy):
//   minifloat eEmM: E, M as stored (e4m3 -> E 4, M 3).
//   intN: E = 0, M = N - 1 (sign + N-1 magnitude bits; the law's +0.5 offsets keep E = 0 finite —
//         an extrapolation outside the paper's fitted range E >= 1).
//   /gK: B = K; /c: log2 B = 13.1567; /t: error (not reported); no scale: error; named presets by
//   their element and group (nvfp4 = e2m1, B 16; mxfp4 = e2m1, B 32); LUT elements (nf4): error.
//   No format (float training): log2 B = 0, which is the BF16 (Chinchilla-form) law.
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lowbit::law {

enum class law_id { sun2025, chinchilla, kumar2024 };

// Throws lowbit::error naming the known laws.
law_id parse_law(const std::string& name);
std::string to_string(law_id l);

// One observation or query of a law. P = total bits (E + M + 1 for minifloats, N for intN).
struct law_point {
  double N = 0, D = 0;
  double E = 0, M = 0;
  double log2_block = 0;  // 0: no quantization term (float training)
  double P = 16;
  double loss = 0;        // observed loss (fits), unused for queries
};

// The constants of a law in its own order (law_info::names), with where they came from.
struct law_constants {
  law_id law = law_id::sun2025;
  std::vector<double> values;
  std::string source;  // "published: ..." or "fitted: FILE"
};

struct law_info {
  std::string name, title, formula;
  std::vector<std::string> names;  // constant names in order
  std::optional<std::vector<double>> published;  // nullopt: none confirmed
  std::string citation;
};
const law_info& info(law_id l);

// The published constants; throws lowbit::error for kumar2024 (none confirmed: fit them).
law_constants published_constants(law_id l);
// Reads {"law": ..., "constants": {name: value, ...}} (what `lowbit fit -o` writes).
law_constants constants_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json constants_to_json(const law_constants& c);

// The channel-wise equivalent block size of Sun et al. (log2 B_channel).
inline constexpr double kSunLog2BlockChannel = 13.1567;

// The law's variables of a format spec (mapping above); throws lowbit::error when the law cannot
// express it (tensor-wise, no scale, LUT elements). An empty spec is float training.
law_point point_of_format(const std::string& spec);

// The law's loss at x; `c` holds the constants in info(l).names order. Templated so that the fits
// can differentiate it (Ceres jets); T = double for plain evaluation.
template <class T>
T law_loss(law_id l, const T* c, const law_point& x) {
  using std::exp;
  using std::pow;
  switch (l) {
    case law_id::sun2025: {
      // c = n, alpha, d, beta, eps, gamma, delta, nu
      const T na = pow(T(x.N), c[1]), db = pow(T(x.D), c[3]);
      T L = c[0] / na + c[2] / db + c[4];
      if (x.log2_block > 0)
        L += (db / na) * T(x.log2_block) / (c[5] * pow(T(x.E + 0.5), c[6]) * pow(T(x.M + 0.5), c[7]));
      return L;
    }
    case law_id::chinchilla:  // c = E, A, alpha, B, beta
      return c[0] + c[1] / pow(T(x.N), c[2]) + c[3] / pow(T(x.D), c[4]);
    case law_id::kumar2024: {
      // c = n, alpha, d, beta, eps, gamma
      const T neff = T(x.N) * (T(1) - exp(-T(x.P) / c[5]));
      return c[0] / pow(neff, c[1]) + c[2] / pow(T(x.D), c[3]) + c[4];
    }
  }
  return T(0);
}
double loss(const law_constants& c, const law_point& x);

// ---- derived results of Sun et al. (docs/laws.md §2.1; formulas from the paper, App. C-E) -------------
struct sun2025_derived {
  double gamma_rho = 0;  // gamma delta^delta nu^nu / (delta+nu)^(delta+nu)
  double gamma_D = 0;    // (delta+nu-alpha) / (n alpha gamma_rho)
  double gamma_N = 0;    // (beta+delta+nu) / (d beta gamma_rho)
  double lambda = 0;     // (d beta / (n alpha)) (delta+nu-alpha) / (delta+nu+beta)
};
sun2025_derived derived(const law_constants& sun);

// Best ExMy for P total bits: integer argmax of (E+0.5)^delta (M+0.5)^nu over E + M = P - 1,
// E >= 1 (a minifloat), and the continuous optimum E = delta P/(delta+nu) - 0.5,
// M = nu P/(delta+nu) - 0.5.
struct layout {
  int P = 0, E = 0, M = 0;
  double E_cont = 0, M_cont = 0;
};
layout optimal_layout(const law_constants& sun, int P);

// D_crit = [d gamma N^alpha (E+0.5)^delta (M+0.5)^nu / log2 B]^(1/(2 beta)): beyond it more data
// raises the loss (dL/dD = 0). Throws when log2 B <= 0 (no precision term, no critical size).
double critical_data(const law_constants& sun, double N, double E, double M, double log2_block);

// Compute-optimal precision P* with C = k P N D (the optimal layout assumed at every P):
//   fixed D: P^(delta+nu) = gamma_D D^beta log2 B
//   fixed N: P^(delta+nu+2beta) = gamma_N (C/k)^(2beta) N^-(alpha+2beta) log2 B
//   joint:   P^((delta+nu)(alpha+beta)/beta + alpha) = lambda (gamma_D log2 B)^((alpha+beta)/beta) (C/k)^alpha
double optimal_precision_fixed_D(const law_constants& sun, double D, double log2_block);
double optimal_precision_fixed_N(const law_constants& sun, double C, double k, double N, double log2_block);
double optimal_precision_joint(const law_constants& sun, double C, double k, double log2_block);
// The law at precision P with the continuous optimal layout: (D^beta/N^alpha) log2 B / (gamma_rho P^(delta+nu)).
double loss_at_optimal_layout(const law_constants& sun, double N, double D, double P, double log2_block);
// With P fixed and C = k P N D, the N minimising the loss (golden-section search on log N).
double optimal_N_at(const law_constants& sun, double C, double k, double P, double log2_block);

// Chinchilla's compute-optimal allocation with C = 6 N D: N_opt = G (C/6)^(beta/(alpha+beta)),
// D_opt = (C/6)^(alpha/(alpha+beta)) / G, G = (alpha A / (beta B))^(1/(alpha+beta)).
std::pair<double, double> chinchilla_optimal(const law_constants& c, double C);

}  // namespace lowbit::law

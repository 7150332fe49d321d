// The built-in scaling laws and the derived results of Sun et al. 2025 (laws.hpp, docs/laws.md §2.1).
#include "lowbit/law/laws.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"

namespace lowbit::law {

law_id parse_law(const std::string& name) {
  if (name == "sun2025") return law_id::sun2025;
  if (name == "chinchilla") return law_id::chinchilla;
  if (name == "kumar2024") return law_id::kumar2024;
  throw error(fmt::format("unknown law '{}': expected sun2025, chinchilla or kumar2024", name));
}

std::string to_string(law_id l) { return info(l).name; }

const law_info& info(law_id l) {
  static const law_info sun{
      "sun2025",
      "Sun et al. 2025, Scaling Laws for Floating-Point Quantization Training",
      "L = n/N^alpha + d/D^beta + eps + (D^beta/N^alpha) log2 B / (gamma (E+0.5)^delta (M+0.5)^nu)",
      {"n", "alpha", "d", "beta", "eps", "gamma", "delta", "nu"},
      std::vector<double>{69.2343, 0.2368, 68973.0621, 0.5162, 1.9061, 11334.5197, 3.1926, 2.9543},
      "arXiv 2501.02423v3 Eq. 1/18/26 (ICML 2025)"};
  static const law_info chin{"chinchilla",
                             "Hoffmann et al. 2022 (Chinchilla), approach 3",
                             "L = E + A/N^alpha + B/D^beta",
                             {"E", "A", "alpha", "B", "beta"},
                             std::vector<double>{1.69, 406.4, 0.34, 410.7, 0.28},
                             "arXiv 2203.15556 Eq. 10"};
  static const law_info kumar{"kumar2024",
                              "Kumar et al. 2024, Scaling Laws for Precision (as Sun et al. use it)",
                              "L = n/[N (1 - e^(-P/gamma))]^alpha + d/D^beta + eps",
                              {"n", "alpha", "d", "beta", "eps", "gamma"},
                              std::nullopt,
                              "arXiv 2411.04330; published constants not confirmed here: fit them"};
  switch (l) {
    case law_id::sun2025: return sun;
    case law_id::chinchilla: return chin;
    case law_id::kumar2024: return kumar;
  }
  return sun;
}

law_constants published_constants(law_id l) {
  const law_info& i = info(l);
  if (!i.published)
    throw error(fmt::format("law {}: no published constants are built in (they could not be confirmed); fit "
                            "them with `lowbit fit --law {} --db FILE -o fit.json` and pass --constants fit.json",
                            i.name, i.name));
  return {l, *i.published, "published: " + i.citation};
}

law_constants constants_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("law") || !j.contains("constants") || !j["constants"].is_object())
    throw error(fmt::format("{}: expected a JSON object with \"law\" and \"constants\" (as `lowbit fit -o` writes)",
                            where));
  law_constants c;
  c.law = parse_law(j["law"].get<std::string>());
  c.source = "fitted: " + where;
  for (const std::string& n : info(c.law).names) {
    const auto& v = j["constants"];
    if (!v.contains(n) || !v[n].is_number())
      throw error(fmt::format("{}: law {} needs constant '{}' (a number)", where, info(c.law).name, n));
    c.values.push_back(v[n].get<double>());
  }
  return c;
}

nlohmann::json constants_to_json(const law_constants& c) {
  nlohmann::json j;
  j["law"] = info(c.law).name;
  j["source"] = c.source;
  nlohmann::json v = nlohmann::json::object();
  for (size_t i = 0; i < c.values.size(); ++i) v[info(c.law).names[i]] = c.values[i];
  j["constants"] = v;
  return j;
}

law_point point_of_format(const std::string& spec) {
  law_point x;
  if (spec.empty() || spec == "-" || spec == "fp32") return x;  // float training: no precision term
  const format f = parse_format(spec);
  const element_format& e = f.element;
  // bf16 / fp16 / fp32 without a scale: the unquantized baseline (B = 1 recovers the BF16 law).
  if (f.gran == granularity::none && e.kind == element_kind::minifloat && e.bits >= 16) return x;
  switch (e.kind) {
    case element_kind::minifloat:
      x.E = e.ebits, x.M = e.mbits, x.P = e.ebits + e.mbits + 1;
      break;
    case element_kind::int_sym:
    case element_kind::uint_asym:
      x.E = 0, x.M = e.bits - 1, x.P = e.bits;
      break;
    case element_kind::lut:
      throw error(fmt::format("{}: a lookup-table element has no exponent/mantissa split for the law", spec));
  }
  switch (f.gran) {
    case granularity::group: x.log2_block = std::log2(static_cast<double>(f.group_size)); break;
    case granularity::row: x.log2_block = kSunLog2BlockChannel; break;
    case granularity::tensor:
      throw error(fmt::format("{}: tensor-wise scaling is not available: Sun et al. give log2 B_tensor ~ "
                              "N^omega / (xi D^eta) but do not report omega, xi, eta; use /c or /gK",
                              spec));
    case granularity::none:
      throw error(fmt::format("{}: the law needs a scaled format (/gK block-wise or /c channel-wise)", spec));
  }
  if (x.log2_block <= 0)
    throw error(fmt::format("{}: block size 1 has log2 B = 0 (no quantization term); use B >= 2", spec));
  return x;
}

double loss(const law_constants& c, const law_point& x) {
  if (c.values.size() != info(c.law).names.size())
    throw error(fmt::format("law {}: {} constants given, {} expected", info(c.law).name, c.values.size(),
                            info(c.law).names.size()));
  if (!(x.N > 0) || !(x.D > 0)) throw error("law: N and D must be > 0");
  return law_loss<double>(c.law, c.values.data(), x);
}

namespace {
struct sun_c {
  double n, alpha, d, beta, eps, gamma, delta, nu;
};
sun_c unpack_sun(const law_constants& c) {
  if (c.law != law_id::sun2025 || c.values.size() != 8)
    throw error("this result is a derivation of the sun2025 law and needs its 8 constants");
  const auto& v = c.values;
  return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]};
}
void need_block(double log2_block) {
  if (!(log2_block > 0)) throw error("the precision term needs log2 B > 0 (a quantized, scaled format)");
}
}  // namespace

sun2025_derived derived(const law_constants& sun) {
  const sun_c s = unpack_sun(sun);
  sun2025_derived r;
  const double dn = s.delta + s.nu;
  r.gamma_rho = s.gamma * std::pow(s.delta, s.delta) * std::pow(s.nu, s.nu) / std::pow(dn, dn);
  r.gamma_D = (dn - s.alpha) / (s.n * s.alpha * r.gamma_rho);
  r.gamma_N = (s.beta + dn) / (s.d * s.beta * r.gamma_rho);
  r.lambda = (s.d * s.beta / (s.n * s.alpha)) * (dn - s.alpha) / (dn + s.beta);
  return r;
}

layout optimal_layout(const law_constants& sun, int P) {
  const sun_c s = unpack_sun(sun);
  if (P < 2 || P > 64) throw error(fmt::format("optimal layout: {} bits is outside 2..64 (sign + E >= 1)", P));
  layout best;
  best.P = P;
  double best_v = -1;
  for (int E = 1; E <= P - 1; ++E) {
    const int M = P - 1 - E;
    const double v = s.delta * std::log(E + 0.5) + s.nu * std::log(M + 0.5);
    if (v > best_v) best_v = v, best.E = E, best.M = M;
  }
  best.E_cont = s.delta * P / (s.delta + s.nu) - 0.5;
  best.M_cont = s.nu * P / (s.delta + s.nu) - 0.5;
  return best;
}

double critical_data(const law_constants& sun, double N, double E, double M, double log2_block) {
  const sun_c s = unpack_sun(sun);
  need_block(log2_block);
  return std::pow(s.d * s.gamma * std::pow(N, s.alpha) * std::pow(E + 0.5, s.delta) * std::pow(M + 0.5, s.nu) /
                      log2_block,
                  1.0 / (2 * s.beta));
}

double optimal_precision_fixed_D(const law_constants& sun, double D, double log2_block) {
  const sun_c s = unpack_sun(sun);
  need_block(log2_block);
  return std::pow(derived(sun).gamma_D * std::pow(D, s.beta) * log2_block, 1.0 / (s.delta + s.nu));
}

double optimal_precision_fixed_N(const law_constants& sun, double C, double k, double N, double log2_block) {
  const sun_c s = unpack_sun(sun);
  need_block(log2_block);
  return std::pow(derived(sun).gamma_N * std::pow(C / k, 2 * s.beta) * std::pow(N, -(s.alpha + 2 * s.beta)) *
                      log2_block,
                  1.0 / (s.delta + s.nu + 2 * s.beta));
}

double optimal_precision_joint(const law_constants& sun, double C, double k, double log2_block) {
  const sun_c s = unpack_sun(sun);
  need_block(log2_block);
  const sun2025_derived g = derived(sun);
  const double ab = (s.alpha + s.beta) / s.beta;
  const double rhs = g.lambda * std::pow(g.gamma_D * log2_block, ab) * std::pow(C / k, s.alpha);
  return std::pow(rhs, 1.0 / ((s.delta + s.nu) * ab + s.alpha));
}

double loss_at_optimal_layout(const law_constants& sun, double N, double D, double P, double log2_block) {
  const sun_c s = unpack_sun(sun);
  const double g_rho = derived(sun).gamma_rho;
  return s.n / std::pow(N, s.alpha) + s.d / std::pow(D, s.beta) + s.eps +
         std::pow(D, s.beta) / std::pow(N, s.alpha) * log2_block / (g_rho * std::pow(P, s.delta + s.nu));
}

double optimal_N_at(const law_constants& sun, double C, double k, double P, double log2_block) {
  auto f = [&](double logN) {
    const double N = std::exp(logN);
    return loss_at_optimal_layout(sun, N, C / (k * P * N), P, log2_block);
  };
  // Golden-section search over N in [1e3, C/(k P)] (D >= 1 token).
  double a = std::log(1e3), b = std::log(C / (k * P));
  if (!(b > a)) throw error("compute budget too small for any model of >= 1000 parameters");
  const double r = (std::sqrt(5.0) - 1) / 2;
  double c1 = b - r * (b - a), c2 = a + r * (b - a), f1 = f(c1), f2 = f(c2);
  for (int i = 0; i < 200 && b - a > 1e-10; ++i) {
    if (f1 < f2) b = c2, c2 = c1, f2 = f1, c1 = b - r * (b - a), f1 = f(c1);
    else a = c1, c1 = c2, f1 = f2, c2 = a + r * (b - a), f2 = f(c2);
  }
  return std::exp((a + b) / 2);
}

std::pair<double, double> chinchilla_optimal(const law_constants& c, double C) {
  if (c.law != law_id::chinchilla || c.values.size() != 5) throw error("chinchilla_optimal needs chinchilla constants");
  const double A = c.values[1], alpha = c.values[2], B = c.values[3], beta = c.values[4];
  const double G = std::pow(alpha * A / (beta * B), 1.0 / (alpha + beta));
  return {G * std::pow(C / 6, beta / (alpha + beta)), std::pow(C / 6, alpha / (alpha + beta)) / G};
}

}  // namespace lowbit::law

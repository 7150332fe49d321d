// Exact scalar codec of the element formats: the reference every fast kernel must equal bit for
// bit. Written for clarity, in double/long double where a step needs exactness; no SIMD, no
// threads, no early-outs beyond the special values.
//
// Rounding onto a grid is defined through the two neighbours lo <= |y| < hi of a value:
//   rne   hi iff (|y|-lo) > (hi-|y|), or a tie and lo's code is odd   (ties to the even code)
//   rna   hi iff (|y|-lo) >= (hi-|y|)
//   rtz   lo                  odd  hi iff inexact and lo's code is even
//   up/down toward +inf/-inf (hi or lo depending on the sign)
//   sr    on the signed value (docs/conventions.md §10): for y >= 0 hi iff u < t, t = (y - lo) / (hi - lo);
//         for y < 0 the signed neighbours are -hi, -lo, so hi iff not u < (hi - |y|) / (hi - lo)
// "Code" parity is the parity of the magnitude code (mantissa lsb, or exponent lsb when M = 0),
// as bit-level converters (hardware, ml_dtypes) round.
#include "lowbit/formats/element.hpp"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"

namespace lowbit {


int default_bias(int ebits, float_variant variant) {
  return variant == float_variant::fnuz ? (1 << (ebits - 1)) : (1 << (ebits - 1)) - 1;
}

float_variant default_variant(int ebits, int mbits) {
  if (ebits == 4 && mbits == 3) return float_variant::fn;
  if (ebits == 5 && mbits == 2) return float_variant::ieee;
  if (ebits == 8) return float_variant::ieee;
  return float_variant::finite;
}

namespace {

// Largest magnitude code that is a finite number.
uint32_t minifloat_top_code(const element_format& f) {
  const uint32_t all = (1u << (f.ebits + f.mbits)) - 1u;
  switch (f.variant) {
    case float_variant::ieee: return (((1u << f.ebits) - 1u) << f.mbits) - 1u;  // below the Inf/NaN binade
    case float_variant::fn: return all - 1u;
    case float_variant::fnuz:
    case float_variant::finite: return all;
  }
  return all;
}

// Value of a magnitude code (no sign), exact in double.
double minifloat_magnitude(const element_format& f, uint32_t mag) {
  const uint32_t e = mag >> f.mbits;
  const uint32_t m = mag & ((1u << f.mbits) - 1u);
  if (e == 0) {
    if (!f.subnormals) return 0.0;
    return std::ldexp(static_cast<double>(m), 1 - f.bias - f.mbits);
  }
  return std::ldexp(static_cast<double>((1u << f.mbits) | m), static_cast<int>(e) - f.bias - f.mbits);
}

bool minifloat_is_nan(const element_format& f, uint32_t code) {
  const uint32_t sign_bit = 1u << (f.ebits + f.mbits);
  const uint32_t mag = code & (sign_bit - 1u);
  const uint32_t e = mag >> f.mbits, m = mag & ((1u << f.mbits) - 1u);
  const uint32_t etop = (1u << f.ebits) - 1u, mtop = (1u << f.mbits) - 1u;
  switch (f.variant) {
    case float_variant::ieee: return e == etop && m != 0;
    case float_variant::fn: return e == etop && m == mtop;
    case float_variant::fnuz: return code == sign_bit;
    case float_variant::finite: return false;
  }
  return false;
}

bool minifloat_is_inf(const element_format& f, uint32_t code) {
  const uint32_t mag = code & ((1u << (f.ebits + f.mbits)) - 1u);
  return f.variant == float_variant::ieee && (mag >> f.mbits) == (1u << f.ebits) - 1u &&
         (mag & ((1u << f.mbits) - 1u)) == 0;
}

void validate_minifloat(const element_format& f) {
  if (f.ebits < 1 || f.ebits > 8)
    throw format_error(fmt::format("exponent bits E = {} is outside 1..8", f.ebits));
  if (f.mbits < 0 || f.mbits > 23)
    throw format_error(fmt::format("mantissa bits M = {} is outside 0..23", f.mbits));
  if (f.overflow == overflow_policy::inf && f.variant != float_variant::ieee)
    throw format_error(fmt::format("overflow=inf needs a format with infinities (variant ieee), not {}",
                                   to_string(f.variant)));
  if (f.overflow == overflow_policy::nan && !has_nan_code(f))
    throw format_error("overflow=nan needs a format with a NaN code (ieee with M > 0, fn or fnuz)");
  const uint32_t top = minifloat_top_code(f);
  const double max = minifloat_magnitude(f, top);
  if (!(max > 0))
    throw format_error(fmt::format("e{}m{}{} has no positive finite value", f.ebits, f.mbits,
                                   to_string(f.variant)));
  // The finest spacing of the value set must be a float32 step: 2^(1-bias-M) whenever a value with
  // a nonzero mantissa exists in the lowest binade (subnormals, or normals e = 1, m >= 1).
  const bool fine_values = (f.subnormals && f.mbits > 0) || top >= (1u << f.mbits) + 1;
  const double smallest = fine_values ? std::ldexp(1.0, 1 - f.bias - f.mbits) : std::ldexp(1.0, 1 - f.bias);
  if (max > static_cast<double>(FLT_MAX) || smallest < std::ldexp(1.0, -149))
    throw format_error(fmt::format(
        "bias {} puts e{}m{} values outside float32 (largest {:g}, smallest {:g}); lowbit computes "
        "in float32, pick a bias that keeps them inside 2^-149 .. 2^128",
        f.bias, f.ebits, f.mbits, max, smallest));
}

// Rounds the magnitude a (>= 0, finite) between grid neighbours lo < hi. Returns true for hi.
bool round_up_between(double a, double lo, double hi, bool lo_code_odd, bool negative,
                      rounding_mode mode, float u) {
  if (a == lo) return false;
  const double below = a - lo, above = hi - a;  // exact: neighbours share the binade scale
  switch (mode) {
    case rounding_mode::rne: return below > above || (below == above && lo_code_odd);
    case rounding_mode::rna: return below >= above;
    case rounding_mode::rtz: return false;
    case rounding_mode::up: return !negative;
    case rounding_mode::down: return negative;
    case rounding_mode::odd: return !lo_code_odd;
    case rounding_mode::sr: {
      // docs/conventions.md §10 on the signed value x: with signed neighbours lo_s <= x < hi_s,
      // t = (x - lo_s) / (hi_s - lo_s) in float32 and x goes to hi_s iff u < t. For x = a >= 0 that is
      // the magnitude's hi; for x = -a the signed neighbours are -hi < -a < -lo, t = (hi - a)/(hi - lo),
      // and hi_s = -lo is the smaller magnitude.
      const float step = static_cast<float>(hi) - static_cast<float>(lo);
      if (!negative) return u < (static_cast<float>(a) - static_cast<float>(lo)) / step;
      return !(u < (static_cast<float>(hi) - static_cast<float>(a)) / step);
    }
  }
  return false;
}

// True when a value that rounds past the largest finite value becomes Inf/NaN rather than max:
// only for a non-saturating policy and a rounding that goes away from zero (IEEE 754 7.4).
bool overflow_is_special(overflow_policy policy, rounding_mode mode, bool negative) {
  if (policy == overflow_policy::saturate) return false;
  const bool toward_zero = mode == rounding_mode::rtz || mode == rounding_mode::odd ||
                           (mode == rounding_mode::up && negative) ||
                           (mode == rounding_mode::down && !negative);
  return !toward_zero;
}

uint32_t minifloat_special_code(const element_format& f, bool negative, bool want_inf) {
  const uint32_t sign_bit = 1u << (f.ebits + f.mbits);
  const uint32_t s = negative ? sign_bit : 0u;
  const uint32_t etop = (1u << f.ebits) - 1u;
  if (want_inf && f.variant == float_variant::ieee) return s | (etop << f.mbits);
  switch (f.variant) {
    case float_variant::ieee: return f.mbits > 0 ? (s | (etop << f.mbits) | (1u << (f.mbits - 1))) : kNoCode;
    case float_variant::fn: return s | (sign_bit - 1u);
    case float_variant::fnuz: return sign_bit;
    case float_variant::finite: return kNoCode;
  }
  return kNoCode;
}

uint32_t encode_minifloat(const element_format& f, float y, rounding_mode mode, float u) {
  const uint32_t sign_bit = 1u << (f.ebits + f.mbits);
  if (std::isnan(y)) return has_nan_code(f) ? minifloat_special_code(f, false, false) : kNoCode;
  const bool negative = std::signbit(y);
  const uint32_t top = minifloat_top_code(f);
  const double max = minifloat_magnitude(f, top);
  auto with_sign = [&](uint32_t mag) -> uint32_t {
    if (mag == 0 && f.variant == float_variant::fnuz) return 0;  // fnuz has no -0
    return negative ? (mag | sign_bit) : mag;
  };
  const double a = std::fabs(static_cast<double>(y));
  if (std::isinf(a)) {
    if (f.overflow == overflow_policy::saturate) return with_sign(top);
    return minifloat_special_code(f, negative && f.overflow == overflow_policy::inf,
                                  f.overflow == overflow_policy::inf);
  }
  if (a == 0) return with_sign(0);

  // Neighbours lo <= a < hi on the grid and lo's magnitude code.
  const int emin = 1 - f.bias;
  const int p = std::ilogb(a);
  double lo, step;
  uint32_t lo_code, hi_code;
  if (p >= emin) {  // normal binade [2^p, 2^(p+1)): step 2^(p-M)
    step = std::ldexp(1.0, p - f.mbits);
    const double k = std::floor(a / step);  // in [2^M, 2^(M+1))
    lo = k * step;
    lo_code = (static_cast<uint32_t>(p + f.bias) << f.mbits) | (static_cast<uint32_t>(k) - (1u << f.mbits));
    hi_code = lo_code + 1;
  } else if (f.subnormals) {  // subnormal range [0, 2^emin): step 2^(emin-M)
    step = std::ldexp(1.0, emin - f.mbits);
    const double k = std::floor(a / step);
    lo = k * step;
    lo_code = static_cast<uint32_t>(k);
    hi_code = lo_code + 1;
  } else {  // subnormals off: only 0 and the smallest normal 2^emin
    step = std::ldexp(1.0, emin);
    lo = 0;
    lo_code = 0;
    hi_code = 1u << f.mbits;
  }
  const double hi = lo + step;
  const bool up = round_up_between(a, lo, hi, (lo_code & 1u) != 0, negative, mode, u);
  const double r = up ? hi : lo;
  if (r > max) {
    if (overflow_is_special(f.overflow, mode, negative))  // Inf keeps the sign; NaN is the positive code
      return minifloat_special_code(f, negative && f.overflow == overflow_policy::inf,
                                    f.overflow == overflow_policy::inf);
    return with_sign(top);
  }
  return with_sign(up ? hi_code : lo_code);
}

}  // namespace

float round_to_integer_ref(float y, rounding_mode mode, float u) {
  if (std::isnan(y) || std::isinf(y)) return y;
  const bool negative = std::signbit(y);
  const double a = std::fabs(static_cast<double>(y));
  const double lo = std::floor(a);
  const bool lo_odd = std::fmod(lo, 2.0) != 0;
  const bool up = round_up_between(a, lo, lo + 1.0, lo_odd, negative, mode, u);
  const double r = up ? lo + 1.0 : lo;
  return static_cast<float>(negative ? -r : r);
}

namespace {

uint32_t encode_int(const element_format& f, float y, rounding_mode mode, float u) {
  if (std::isnan(y)) return kNoCode;
  const double qmax = std::ldexp(1.0, f.bits - 1) - 1.0;
  // Scale by 2^frac first: exact in float for every value the format can round to.
  const float scaled = std::ldexp(y, f.frac_bits);
  double r = std::isinf(scaled) ? (scaled > 0 ? qmax : -qmax)
                                : static_cast<double>(round_to_integer_ref(scaled, mode, u));
  r = std::clamp(r, -qmax, qmax);
  const int64_t q = static_cast<int64_t>(r);
  return static_cast<uint32_t>(q) & static_cast<uint32_t>((uint64_t{1} << f.bits) - 1u);
}

uint32_t encode_uint(const element_format& f, float y, rounding_mode mode, float u) {
  if (std::isnan(y)) return kNoCode;
  const double qmax = std::ldexp(1.0, f.bits) - 1.0;
  double r = std::isinf(y) ? (y > 0 ? qmax : 0.0) : static_cast<double>(round_to_integer_ref(y, mode, u));
  r = std::clamp(r, 0.0, qmax);
  return static_cast<uint32_t>(r);
}

uint32_t encode_lut(const element_format& f, float y, rounding_mode mode, float u) {
  if (std::isnan(y)) return kNoCode;
  const auto& t = f.table;
  const uint32_t n = static_cast<uint32_t>(t.size());
  if (y <= t.front()) return 0;
  if (y >= t.back()) return n - 1;
  // lo = largest entry <= y
  const uint32_t i = static_cast<uint32_t>(std::upper_bound(t.begin(), t.end(), y) - t.begin()) - 1;
  if (t[i] == y) return i;
  const long double lo = t[i], hi = t[i + 1], x = y;
  const long double mid = (lo + hi) / 2;  // exact in long double for any table lowbit accepts
  bool up = false;
  switch (mode) {
    case rounding_mode::rne: up = x > mid || (x == mid && (i & 1u)); break;
    case rounding_mode::rna: up = x > mid || (x == mid && std::fabs(hi) > std::fabs(lo)); break;
    case rounding_mode::rtz: up = y < 0; break;
    case rounding_mode::up: up = true; break;
    case rounding_mode::down: up = false; break;
    case rounding_mode::odd: up = (i & 1u) == 0; break;
    case rounding_mode::sr: up = u < (y - t[i]) / (t[i + 1] - t[i]); break;
  }
  return up ? i + 1 : i;
}

}  // namespace

uint32_t encode_ref(const element_format& f, float y, rounding_mode mode, float u) {
  switch (f.kind) {
    case element_kind::minifloat: return encode_minifloat(f, y, mode, u);
    case element_kind::int_sym: return encode_int(f, y, mode, u);
    case element_kind::uint_asym: return encode_uint(f, y, mode, u);
    case element_kind::lut: return encode_lut(f, y, mode, u);
  }
  return kNoCode;
}

float decode_ref(const element_format& f, uint32_t code) {
  if (code == kNoCode && f.bits < 32) return canonical_nan();
  switch (f.kind) {
    case element_kind::minifloat: {
      if (minifloat_is_nan(f, code)) return canonical_nan();
      const uint32_t sign_bit = 1u << (f.ebits + f.mbits);
      const bool negative = (code & sign_bit) != 0;
      double v;
      if (minifloat_is_inf(f, code)) v = std::numeric_limits<double>::infinity();
      else v = minifloat_magnitude(f, code & (sign_bit - 1u));
      if (v == 0 && f.variant == float_variant::fnuz) return 0.0f;  // fnuz has no -0 (flushed codes too)
      return static_cast<float>(negative ? -v : v);
    }
    case element_kind::int_sym: {
      const int64_t sign = int64_t{1} << (f.bits - 1);
      int64_t q = static_cast<int64_t>(code & ((uint64_t{1} << f.bits) - 1u));
      if (q & sign) q -= (sign << 1);
      return static_cast<float>(std::ldexp(static_cast<double>(q), -f.frac_bits));
    }
    case element_kind::uint_asym: return static_cast<float>(code);
    case element_kind::lut: return code < f.table.size() ? f.table[code] : canonical_nan();
  }
  return canonical_nan();
}

// ---- constructors ------------------------------------------------------------------------------
element_format make_minifloat(int ebits, int mbits, float_variant variant, int bias, bool subnormals,
                              overflow_policy overflow) {
  element_format f;
  f.kind = element_kind::minifloat;
  f.ebits = ebits;
  f.mbits = mbits;
  f.bias = bias;
  f.variant = variant;
  f.subnormals = subnormals;
  f.overflow = overflow;
  f.bits = 1 + ebits + mbits;
  validate_minifloat(f);
  return f;
}

element_format make_minifloat(int ebits, int mbits, float_variant variant) {
  if (ebits < 1 || ebits > 8)
    throw format_error(fmt::format("exponent bits E = {} is outside 1..8", ebits));
  return make_minifloat(ebits, mbits, variant, default_bias(ebits, variant));
}

element_format make_int(int bits, int frac_bits) {
  if (bits < 2 || bits > 16) throw format_error(fmt::format("int{}: bits must be in 2..16", bits));
  element_format f;
  f.kind = element_kind::int_sym;
  f.bits = bits;
  f.frac_bits = frac_bits;
  f.ebits = f.mbits = f.bias = 0;
  f.variant = float_variant::finite;
  return f;
}

element_format make_uint(int bits) {
  if (bits < 2 || bits > 16) throw format_error(fmt::format("uint{}: bits must be in 2..16", bits));
  element_format f = make_int(bits);
  f.kind = element_kind::uint_asym;
  return f;
}

element_format make_lut(std::vector<float> values, std::string name) {
  if (values.size() < 2 || values.size() > 65536)
    throw format_error(fmt::format("lut(...) needs 2..65536 values, got {}", values.size()));
  for (float v : values)
    if (!std::isfinite(v)) throw format_error("lut(...) values must be finite numbers");
  std::sort(values.begin(), values.end());
  for (size_t i = 1; i < values.size(); ++i)
    if (values[i] == values[i - 1])
      throw format_error(fmt::format("lut(...) lists the value {} twice", shortest_float(values[i])));
  element_format f;
  f.kind = element_kind::lut;
  f.bits = std::max(1, static_cast<int>(std::bit_width(values.size() - 1)));
  f.ebits = f.mbits = f.bias = 0;
  f.variant = float_variant::finite;
  f.table = std::move(values);
  f.table_name = std::move(name);
  return f;
}

namespace {
// Inverse standard normal CDF in double: Acklam's rational approximation refined by two Halley
// steps on erfc, accurate to a few ulp (enough for the float32 NF4 table).
double normal_quantile(double p) {
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01,  -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  double x;
  if (p < 0.02425) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - 0.02425) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const double q = std::sqrt(-2 * std::log(1 - p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  for (int it = 0; it < 2; ++it) {  // Halley refinement
    const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
    const double u = e * std::sqrt(2 * M_PI) * std::exp(x * x / 2);
    x = x - u / (1 + x * u / 2);
  }
  return x;
}
}  // namespace

const std::vector<float>& nf4_table() {
  // QLoRA / bitsandbytes create_normal_map(offset = 0.9677083, use_extra_value = True):
  // positives = ppf(linspace(offset, 0.5, 9)[:-1]), negatives = -ppf(linspace(offset, 0.5, 8)[:-1]),
  // plus 0, sorted, divided by the largest (docs/formats.md §1.4).
  static const std::vector<float> table = [] {
    const double offset = 0.9677083;
    std::vector<double> v;
    const double step9 = (0.5 - offset) / 8, step8 = (0.5 - offset) / 7;
    for (int i = 0; i < 8; ++i) v.push_back(normal_quantile(i * step9 + offset));
    for (int i = 0; i < 7; ++i) v.push_back(-normal_quantile(i * step8 + offset));
    v.push_back(0.0);
    std::sort(v.begin(), v.end());
    const double vmax = v.back();
    std::vector<float> out;
    for (double x : v) out.push_back(static_cast<float>(x / vmax));
    return out;
  }();
  return table;
}

element_format make_nf4() { return make_lut(nf4_table(), "nf4"); }

// ---- properties ---------------------------------------------------------------------------------
uint64_t code_count(const element_format& f) { return uint64_t{1} << f.bits; }

bool has_signed_zero(const element_format& f) {
  return f.kind == element_kind::minifloat && f.variant != float_variant::fnuz;
}
bool has_nan_code(const element_format& f) {
  if (f.kind != element_kind::minifloat) return false;
  if (f.variant == float_variant::ieee) return f.mbits > 0;  // M = 0: the top binade is only Inf
  return f.variant != float_variant::finite;
}
bool has_inf_code(const element_format& f) {
  return f.kind == element_kind::minifloat && f.variant == float_variant::ieee;
}

element_limits limits_of(const element_format& f) {
  element_limits l;
  switch (f.kind) {
    case element_kind::minifloat: {
      const uint32_t top = minifloat_top_code(f);
      l.max = minifloat_magnitude(f, top);
      l.min = -l.max;
      l.min_normal = std::ldexp(1.0, 1 - f.bias);
      l.min_subnormal = f.subnormals && f.mbits > 0 ? std::ldexp(1.0, 1 - f.bias - f.mbits) : l.min_normal;
      l.epsilon = std::ldexp(1.0, -f.mbits);
      const uint64_t mcount = uint64_t{1} << f.mbits;
      switch (f.variant) {
        case float_variant::ieee: l.nan_codes = 2 * (mcount - 1); l.inf_codes = 2; break;
        case float_variant::fn: l.nan_codes = 2; break;
        case float_variant::fnuz: l.nan_codes = 1; break;
        case float_variant::finite: break;
      }
      // Distinct finite values: positive magnitudes counted twice (signs), zero once.
      uint64_t positive = top;  // magnitude codes 1..top
      if (!f.subnormals) positive -= (mcount - 1);  // flushed subnormal codes are zeros
      l.finite_values = 2 * positive + 1;
      break;
    }
    case element_kind::int_sym: {
      const double q = std::ldexp(1.0, f.bits - 1) - 1;
      l.max = std::ldexp(q, -f.frac_bits);
      l.min = -l.max;
      l.min_normal = l.min_subnormal = l.epsilon = std::ldexp(1.0, -f.frac_bits);
      l.finite_values = static_cast<uint64_t>(2 * q + 1);
      break;
    }
    case element_kind::uint_asym:
      l.max = std::ldexp(1.0, f.bits) - 1;
      l.min = 0;
      l.min_normal = l.min_subnormal = l.epsilon = 1;
      l.finite_values = static_cast<uint64_t>(l.max + 1);
      break;
    case element_kind::lut: {
      l.max = f.table.back();
      l.min = f.table.front();
      double smallest = std::numeric_limits<double>::infinity();
      for (float v : f.table)
        if (v != 0) smallest = std::min(smallest, std::fabs(static_cast<double>(v)));
      l.min_normal = l.min_subnormal = smallest;
      double gap = std::numeric_limits<double>::infinity();
      for (size_t i = 1; i < f.table.size(); ++i)
        gap = std::min(gap, static_cast<double>(f.table[i]) - f.table[i - 1]);
      l.epsilon = gap;
      l.finite_values = f.table.size();
      break;
    }
  }
  const double amax = std::max(std::fabs(l.max), std::fabs(l.min));
  l.emax = amax > 0 ? std::ilogb(amax) : 0;
  return l;
}

std::string to_string(rounding_mode m) {
  switch (m) {
    case rounding_mode::rne: return "rne";
    case rounding_mode::rna: return "rna";
    case rounding_mode::rtz: return "rtz";
    case rounding_mode::up: return "up";
    case rounding_mode::down: return "down";
    case rounding_mode::odd: return "odd";
    case rounding_mode::sr: return "sr";
  }
  return "?";
}

std::string to_string(float_variant v) {
  switch (v) {
    case float_variant::ieee: return "ieee";
    case float_variant::fn: return "fn";
    case float_variant::fnuz: return "fnuz";
    case float_variant::finite: return "finite";
  }
  return "?";
}

std::string to_string(overflow_policy o) {
  switch (o) {
    case overflow_policy::saturate: return "saturate";
    case overflow_policy::inf: return "inf";
    case overflow_policy::nan: return "nan";
  }
  return "?";
}

std::string shortest_float(float v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{}", v);  // fmt prints the shortest round-trip representation
}

}  // namespace lowbit

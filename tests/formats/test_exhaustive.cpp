// Exhaustive tests of the element codec (decode_ref / encode_ref / limits_of) against an
// independent reference written here from the definitions (docs/formats.md §0.1, 0.2, 1.1; docs/conventions.md
// 3, 5, 9). Nothing below calls the code under test to produce an expected value: the reference
// decodes codes with exact long double arithmetic, enumerates the value set of each format, and
// rounds by searching that sorted set; fp16/bf16 have a second, bit-manipulation converter.
//
// Coverage:
//   * every code of every <= 8-bit minifloat: E = 1..7, M = 0..7-E, variants ieee/fn/fnuz/finite,
//     subnormals on/off, biases default, default +-1, 0 and the two float32 extremes, and every
//     overflow policy the constructor accepts;
//   * encode at every grid point, every midpoint and the floats around it, one float ulp inside
//     each gap, quarter points, overflow, Inf, NaN and zero, in every rounding mode;
//   * every 16-bit code of fp16 and bf16, and a float32 sweep (stride 4099 over all 2^32 bit
//     patterns plus dense boundary windows) against integer-bit converters;
//   * int2..int16 and uint2..uint16 (every code, every integer, half-integer and quarter point);
//   * the published docs/formats.md §0.1 table, the E2M1 value set and the E1My = INT(y+2) identity.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/element.hpp"
#include "lowbit/formats/format.hpp"

namespace {

using lowbit::element_format;
using lowbit::float_variant;
using lowbit::kNoCode;
using lowbit::overflow_policy;
using lowbit::rounding_mode;

using ld = long double;

constexpr rounding_mode kDeterministicModes[] = {rounding_mode::rne, rounding_mode::rna,
                                                 rounding_mode::rtz, rounding_mode::up,
                                                 rounding_mode::down, rounding_mode::odd};
constexpr float kSrDraws[] = {0.0f, 0.25f, 0.5f, 0.75f, 0x1.fffffep-1f};

uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }

std::string hex(uint64_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

std::string show(float x) {
  std::ostringstream s;
  s.precision(9);
  s << x << " (" << hex(bits_of(x)) << ")";
  return s.str();
}

std::string mode_name(rounding_mode v) { return to_string(v); }  // the library's names, for messages

std::string variant_name(float_variant v) { return to_string(v); }  // the library's names, for messages

std::string overflow_name(overflow_policy v) { return to_string(v); }  // the library's names, for messages

// Collects mismatches: counts all of them, reports the first few in full.
class Mismatches {
 public:
  explicit Mismatches(uint64_t shown = 25) : shown_(shown) {}
  void add(const std::string& what) {
    if (count_++ < shown_) ADD_FAILURE() << what;
  }
  void expect_none(const char* what, uint64_t checked) {
    EXPECT_EQ(count_, 0u) << count_ << " mismatches in " << checked << " " << what;
  }
  uint64_t count() const { return count_; }

 private:
  uint64_t shown_;
  uint64_t count_ = 0;
};

// Two floats equal as results: same bits, or both NaN.
bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return bits_of(a) == bits_of(b);
}

// ================================================================================================
// Reference minifloat, from docs/formats.md §0.1:
//   e == 0: (-1)^s 2^(1-b) m/2^M   (+-0 when subnormals are off, docs/conventions.md §9)
//   e  > 0: (-1)^s 2^(e-b) (1 + m/2^M)
//   ieee: e all-ones is Inf (m = 0) / NaN (m != 0); fn: e and m all-ones is NaN;
//   fnuz: the code 100..0 is NaN and there is no -0; finite: every code is a number.
// ================================================================================================
struct RefFormat {
  int E = 4, M = 3, bias = 7;
  float_variant variant = float_variant::fn;
  bool subnormals = true;
  overflow_policy overflow = overflow_policy::saturate;

  int bits() const { return 1 + E + M; }
  uint32_t sign_bit() const { return 1u << (E + M); }
  std::string name() const {
    std::ostringstream s;
    s << "e" << E << "m" << M << variant_name(variant) << "(bias=" << bias
      << ", subnormals=" << (subnormals ? "on" : "off") << ", overflow=" << overflow_name(overflow)
      << ")";
    return s.str();
  }
};

int ref_default_bias(int E, float_variant v) {
  return v == float_variant::fnuz ? (1 << (E - 1)) : (1 << (E - 1)) - 1;
}

enum class Cls { number, nan, inf };

struct RefValue {
  Cls cls = Cls::number;
  bool negative = false;
  ld mag = 0;  // exact magnitude for numbers
  float as_float() const {
    if (cls == Cls::nan) return std::numeric_limits<float>::quiet_NaN();
    const ld v = cls == Cls::inf ? std::numeric_limits<ld>::infinity() : mag;
    const float f = static_cast<float>(v);
    return negative ? -f : f;
  }
};

RefValue ref_decode(const RefFormat& f, uint32_t code) {
  const uint32_t s = (code >> (f.E + f.M)) & 1u;
  const uint32_t e = (code >> f.M) & ((1u << f.E) - 1u);
  const uint32_t m = code & ((1u << f.M) - 1u);
  const uint32_t eall = (1u << f.E) - 1u, mall = (1u << f.M) - 1u;
  RefValue r;
  r.negative = s != 0;
  switch (f.variant) {
    case float_variant::ieee:
      if (e == eall) {
        r.cls = m == 0 ? Cls::inf : Cls::nan;
        return r;
      }
      break;
    case float_variant::fn:
      if (e == eall && m == mall) {
        r.cls = Cls::nan;
        return r;
      }
      break;
    case float_variant::fnuz:
      if (s == 1 && e == 0 && m == 0) {
        r.cls = Cls::nan;
        return r;
      }
      break;
    case float_variant::finite: break;
  }
  const ld two_pow_M = std::ldexp(ld{1}, f.M);
  if (e == 0) {
    r.mag = f.subnormals ? std::ldexp(ld{1}, 1 - f.bias) * (ld(m) / two_pow_M) : ld{0};
  } else {
    r.mag = std::ldexp(ld{1}, static_cast<int>(e) - f.bias) * (1 + ld(m) / two_pow_M);
  }
  // fnuz has no negative zero: a flushed subnormal with the sign bit set is +0.
  if (f.variant == float_variant::fnuz && r.mag == 0) r.negative = false;
  return r;
}

bool ref_has_nan(const RefFormat& f) {
  switch (f.variant) {
    case float_variant::ieee: return f.M > 0;
    case float_variant::fn:
    case float_variant::fnuz: return true;
    case float_variant::finite: return false;
  }
  return false;
}

// The value set of a format, built from ref_decode only.
struct RefGrid {
  RefFormat f;
  std::vector<ld> mags;         // distinct non-negative finite magnitudes, ascending (mags[0] = 0)
  std::vector<uint32_t> codes;  // canonical (smallest) magnitude code of each
  uint64_t nan_codes = 0, inf_codes = 0;
  uint64_t finite_values = 0;  // distinct finite values, +0 and -0 once
  uint32_t inf_code_pos = kNoCode;

  explicit RefGrid(const RefFormat& fmt) : f(fmt) {
    std::map<ld, uint32_t> canon;
    std::map<ld, int> signed_values;  // value -> 1 (to count distinct signed values)
    for (uint32_t c = 0; c < (1u << f.bits()); ++c) {
      const RefValue v = ref_decode(f, c);
      if (v.cls == Cls::nan) {
        ++nan_codes;
        continue;
      }
      if (v.cls == Cls::inf) {
        ++inf_codes;
        if (!v.negative) inf_code_pos = c;
        continue;
      }
      signed_values[v.negative ? -v.mag : v.mag] = 1;
      if (c < f.sign_bit() && !canon.count(v.mag)) canon[v.mag] = c;
    }
    finite_values = signed_values.size();
    for (auto& [mag, code] : canon) {
      mags.push_back(mag);
      codes.push_back(code);
    }
  }
  ld max() const { return mags.back(); }
  uint32_t max_code() const { return codes.back(); }
};

// docs/conventions.md §10 on the signed value x = (negative ? -a : a): with signed grid neighbours
// sl <= x < sh, t = (x - sl) / (sh - sl) in float32 and x goes to sh iff u < t. Returns whether the
// result is the neighbour of larger magnitude (hi).
bool ref_sr_to_larger_magnitude(ld a, ld lo, ld hi, bool negative, float u) {
  const float x = static_cast<float>(negative ? -a : a);
  const float sl = static_cast<float>(negative ? -hi : lo), sh = static_cast<float>(negative ? -lo : hi);
  const bool to_sh = u < (x - sl) / (sh - sl);
  return negative ? !to_sh : to_sh;  // for x < 0 the upper signed neighbour is the smaller magnitude
}

// Whether rounding the magnitude a (lo < a < hi) goes to hi. lo_code/hi_code are the magnitude
// codes whose parity decides ties (rne) and round-to-odd.
bool ref_round_to_hi(ld a, ld lo, ld hi, uint32_t lo_code, uint32_t hi_code, bool negative,
                     rounding_mode mode, float u) {
  const ld twice = 2 * a, sum = lo + hi;  // exact: all operands are floats of nearby scale
  switch (mode) {
    case rounding_mode::rne:
      if (twice != sum) return twice > sum;
      if ((lo_code & 1u) == 0 && (hi_code & 1u) == 0) return false;  // 0 / min normal: smaller
      return (hi_code & 1u) == 0;
    case rounding_mode::rna: return twice >= sum;
    case rounding_mode::rtz: return false;
    case rounding_mode::up: return !negative;
    case rounding_mode::down: return negative;
    case rounding_mode::odd: return (lo_code & 1u) == 0;
    case rounding_mode::sr: return ref_sr_to_larger_magnitude(a, lo, hi, negative, u);
  }
  return false;
}

// The value of a magnitude code by the decode formula alone: no special values, and an exponent
// field that may exceed its E bits (the grid continued past max).
ld ref_unbounded_value(const RefFormat& f, uint32_t mag_code) {
  const uint32_t e = mag_code >> f.M, m = mag_code & ((1u << f.M) - 1u);
  const ld frac = ld(m) / std::ldexp(ld{1}, f.M);
  if (e == 0) return f.subnormals ? std::ldexp(ld{1}, 1 - f.bias) * frac : ld{0};
  return std::ldexp(ld{1}, static_cast<int>(e) - f.bias) * (1 + frac);
}

// Expected result of encoding y: kind + signed magnitude (as the reference value) and the
// canonical code (kNoCode for "no code": NaN in a format without NaN).
struct RefEncoded {
  RefValue value;
  uint32_t code = kNoCode;  // canonical code; for NaN results: kNoCode if the format has no NaN
};

RefEncoded ref_encode(const RefGrid& g, float y, rounding_mode mode, float u) {
  const RefFormat& f = g.f;
  RefEncoded out;
  auto number = [&](size_t i, bool negative) {
    const bool neg = negative && !(f.variant == float_variant::fnuz && g.mags[i] == 0);
    out.value.cls = Cls::number;
    out.value.mag = g.mags[i];
    out.value.negative = neg;
    out.code = g.codes[i] | (neg ? f.sign_bit() : 0u);
    return out;
  };
  auto special = [&](bool negative) {
    if (f.overflow == overflow_policy::inf) {
      out.value.cls = Cls::inf;
      out.value.negative = negative;
      out.code = g.inf_code_pos | (negative ? f.sign_bit() : 0u);
    } else {
      out.value.cls = Cls::nan;
      out.code = kNoCode;
    }
    return out;
  };
  if (std::isnan(y)) {
    out.value.cls = Cls::nan;
    out.code = kNoCode;
    return out;
  }
  const bool negative = std::signbit(y);
  const ld a = std::fabs(static_cast<ld>(y));
  const size_t top = g.mags.size() - 1;
  if (std::isinf(a)) {
    if (f.overflow == overflow_policy::saturate) return number(top, negative);
    return special(negative);
  }
  if (a > g.max()) {
    if (f.overflow == overflow_policy::saturate) return number(top, negative);
    const bool toward_zero = mode == rounding_mode::rtz || mode == rounding_mode::odd ||
                             (mode == rounding_mode::up && negative) ||
                             (mode == rounding_mode::down && !negative);
    if (toward_zero) return number(top, negative);
    // Round with an unbounded exponent: the value after max is that of the magnitude code
    // max_code + 1 read by the plain formula (no specials, exponent field allowed to overflow).
    const ld next = ref_unbounded_value(f, g.max_code() + 1);
    if (a >= next) return special(negative);
    const bool hi = ref_round_to_hi(a, g.max(), next, g.max_code(), g.max_code() + 1, negative,
                                    mode, u);
    return hi ? special(negative) : number(top, negative);
  }
  // lo = largest grid magnitude <= a
  const size_t i = static_cast<size_t>(std::upper_bound(g.mags.begin(), g.mags.end(), a) -
                                       g.mags.begin()) - 1;
  if (g.mags[i] == a) return number(i, negative);
  const bool hi = ref_round_to_hi(a, g.mags[i], g.mags[i + 1], g.codes[i], g.codes[i + 1],
                                  negative, mode, u);
  return number(hi ? i + 1 : i, negative);
}

// Every <= 8-bit minifloat the constructor accepts, with the reference description.
struct Case {
  RefFormat ref;
  element_format fmt;
};

// Whether every finite value of the format is exactly a float32 (and some value is positive):
// lowbit computes in float32, so these are the formats it can represent.
bool ref_fits_float32(const RefFormat& r) {
  bool positive = false;
  for (uint32_t code = 0; code < (1u << r.bits()); ++code) {
    const RefValue v = ref_decode(r, code);
    if (v.cls != Cls::number) continue;
    const float f = static_cast<float>(v.mag);
    if (!std::isfinite(f) || static_cast<ld>(f) != v.mag) return false;
    positive = positive || v.mag > 0;
  }
  return positive;
}

// The float32 extremes of the bias (by enumeration). The finest spacing of the grid is
// 2^(1-b-M) in the lowest binade, so biases up to 150 - M always fit; above that only formats
// whose lowest-binade codes are special or flushed still fit. The smallest bias keeps max <=
// FLT_MAX.
int ref_largest_float_bias(RefFormat r) {
  for (r.bias = 151; r.bias > -400; --r.bias)
    if (ref_fits_float32(r)) return r.bias;
  return 0;
}
int ref_smallest_float_bias(RefFormat r) {
  for (r.bias = -300; r.bias < 400; r.bias += 8)  // coarse, then fine
    if (ref_fits_float32(r)) break;
  for (r.bias -= 8; r.bias < 400; ++r.bias)
    if (ref_fits_float32(r)) return r.bias;
  return 0;
}

struct Enumeration {
  std::vector<Case> cases;
  int rejected = 0;
};

// Every layout of at most 8 bits: E = 1..7, M with 1 + E + M <= 8, each variant, subnormals on
// and off (bias and overflow left at their defaults for the caller to vary).
template <typename Fn>
void for_each_small_layout(Fn&& fn) {
  for (int E = 1; E <= 7; ++E)
    for (int M = 0; 1 + E + M <= 8; ++M)
      for (float_variant v : {float_variant::ieee, float_variant::fn, float_variant::fnuz, float_variant::finite})
        for (bool sub : {true, false}) {
          RefFormat r;
          r.E = E;
          r.M = M;
          r.variant = v;
          r.subnormals = sub;
          fn(r);
        }
}

const Enumeration& all_small_minifloats() {
  static const Enumeration all = [] {
    Enumeration out;
    const overflow_policy policies[] = {overflow_policy::saturate, overflow_policy::inf,
                                        overflow_policy::nan};
    for_each_small_layout([&](RefFormat r) {
      const int d = ref_default_bias(r.E, r.variant);
      std::vector<int> biases = {d, d - 1, d + 1, 0, ref_largest_float_bias(r), ref_smallest_float_bias(r)};
      std::sort(biases.begin(), biases.end());
      biases.erase(std::unique(biases.begin(), biases.end()), biases.end());
      for (int b : biases)
        for (overflow_policy o : policies) {
          r.bias = b;
          r.overflow = o;
          try {
            out.cases.push_back({r, lowbit::make_minifloat(r.E, r.M, r.variant, b, r.subnormals, o)});
          } catch (const lowbit::format_error&) {
            ++out.rejected;
          }
        }
    });
    return out;
  }();
  return all;
}

TEST(ExhaustiveMinifloat, EnumerationCoversTheFamily) {
  const Enumeration& all = all_small_minifloats();
  // 28 (E, M) shapes x 4 variants x 2 subnormal settings x 3..6 biases x accepted policies.
  EXPECT_GT(all.cases.size(), 800u);
  EXPECT_GT(all.rejected, 0);
  int bits_seen[9] = {};
  for (const Case& c : all.cases) ++bits_seen[c.ref.bits()];
  for (int b = 2; b <= 8; ++b) EXPECT_GT(bits_seen[b], 0) << b << "-bit formats";
  // What the constructor rejects must be what the spec rules out, and nothing else.
  for (const Case& c : all.cases) {
    const RefGrid g(c.ref);
    ASSERT_GT(g.max(), 0) << c.ref.name();
    if (c.ref.overflow == overflow_policy::inf) {
      EXPECT_EQ(c.ref.variant, float_variant::ieee);
    }
    if (c.ref.overflow == overflow_policy::nan) {
      EXPECT_TRUE(ref_has_nan(c.ref)) << c.ref.name();
    }
  }
}

// The constructor accepts exactly the biases whose values are all float32 numbers, around both
// ends of the range, and rejects the formats with no positive finite value.
TEST(ExhaustiveMinifloat, BiasRangeIsTheFloat32Range) {
  Mismatches bad;
  int checked = 0;
  for_each_small_layout([&](RefFormat r) {
    const int E = r.E, M = r.M;
    const float_variant v = r.variant;
    const bool sub = r.subnormals;
    r.bias = ref_default_bias(E, v);
    if (RefGrid(r).max() == 0) {
      EXPECT_THROW(lowbit::make_minifloat(E, M, v, r.bias, sub), lowbit::format_error)
          << r.name() << " has no positive finite value";
      return;
    }
    const int hi = ref_largest_float_bias(r), lo = ref_smallest_float_bias(r);
    EXPECT_LE(lo, hi) << r.name();
    std::vector<int> biases;
    for (int b = hi - 2; b <= hi + M + 2; ++b) biases.push_back(b);
    for (int b = lo - 2; b <= lo + 2; ++b) biases.push_back(b);
    for (int b : biases) {
      r.bias = b;
      const bool fits = ref_fits_float32(r);
      ++checked;
      try {
        const element_format f = lowbit::make_minifloat(E, M, v, b, sub);
        if (fits) continue;
        // Accepted though it should not be: show a code whose value is not a float32.
        std::ostringstream o;
        o << r.name() << " is accepted, but its values are not all float32";
        for (uint32_t code = 0; code < (1u << r.bits()); ++code) {
          const RefValue x = ref_decode(r, code);
          const float xf = static_cast<float>(x.mag);
          if (x.cls == Cls::number && (!std::isfinite(xf) || static_cast<ld>(xf) != x.mag)) {
            o.precision(21);
            o << ": code " << hex(code) << " = " << x.mag << " by the definition, decode_ref "
              << "gives " << show(lowbit::decode_ref(f, code));
            break;
          }
        }
        bad.add(o.str());
      } catch (const lowbit::format_error&) {
        if (fits) bad.add(r.name() + " is rejected though every value is a float32");
      }
    }
  });
  bad.expect_none("biases", checked);
  EXPECT_GT(checked, 1500);
  // Non-IEEE variants cannot overflow to Inf; formats without a NaN code cannot overflow to NaN.
  EXPECT_THROW(lowbit::make_minifloat(4, 3, float_variant::fn, 7, true, overflow_policy::inf),
               lowbit::format_error);
  EXPECT_THROW(lowbit::make_minifloat(2, 1, float_variant::finite, 1, true, overflow_policy::nan),
               lowbit::format_error);
  EXPECT_THROW(lowbit::make_minifloat(5, 0, float_variant::ieee, 15, true, overflow_policy::nan),
               lowbit::format_error);
}

// Every code of every <= 8-bit minifloat decodes to the reference value, bit for bit.
TEST(ExhaustiveMinifloat, DecodeEveryCode) {
  Mismatches bad;
  uint64_t checked = 0;
  const float cnan = std::bit_cast<float>(0x7fc00000u);
  for (const Case& c : all_small_minifloats().cases) {
    for (uint32_t code = 0; code < (1u << c.ref.bits()); ++code) {
      const RefValue r = ref_decode(c.ref, code);
      const float want = r.as_float();
      if (r.cls == Cls::number) {
        // The reference value must itself be a float (the constructor keeps formats in range).
        ASSERT_EQ(static_cast<ld>(std::fabs(want)), r.mag) << c.ref.name() << " code " << code;
      }
      const float got = lowbit::decode_ref(c.fmt, code);
      ++checked;
      bool ok = r.cls == Cls::nan ? bits_of(got) == bits_of(cnan) : bits_of(got) == bits_of(want);
      // The sign of the flushed fnuz zeros is checked on its own below
      // (FnuzFlushedNegativeSubnormalsArePositiveZero); here any zero passes for them.
      if (c.ref.variant == float_variant::fnuz && !c.ref.subnormals && r.cls == Cls::number &&
          r.mag == 0 && got == 0.0f)
        ok = true;
      if (!ok)
        bad.add(c.ref.name() + " code " + hex(code) + ": want " + show(want) + ", got " + show(got));
    }
    // kNoCode (a NaN without a NaN code) decodes to NaN.
    if (!std::isnan(lowbit::decode_ref(c.fmt, kNoCode))) bad.add(c.ref.name() + " kNoCode");
  }
  bad.expect_none("decoded codes", checked);
  EXPECT_GT(checked, 200000u);
}

// limits_of and the predicates agree with the enumeration of every format.
TEST(ExhaustiveMinifloat, LimitsMatchEnumeration) {
  Mismatches bad;
  uint64_t checked = 0;
  for (const Case& c : all_small_minifloats().cases) {
    const RefGrid g(c.ref);
    const lowbit::element_limits l = lowbit::limits_of(c.fmt);
    const std::string n = c.ref.name();
    auto check = [&](bool ok, const std::string& what) {
      ++checked;
      if (!ok) bad.add(n + ": " + what);
    };
    check(l.max == static_cast<double>(g.max()), "max " + std::to_string(l.max));
    check(l.min == -static_cast<double>(g.max()), "min");
    check(l.min_subnormal == static_cast<double>(g.mags[1]),
          "min_subnormal " + std::to_string(l.min_subnormal));
    check(l.min_normal == std::ldexp(1.0, 1 - c.ref.bias), "min_normal");
    check(l.epsilon == std::ldexp(1.0, -c.ref.M), "epsilon");
    check(l.emax == std::ilogb(static_cast<double>(g.max())), "emax");
    check(l.finite_values == g.finite_values, "finite_values " + std::to_string(l.finite_values) +
                                                  " vs " + std::to_string(g.finite_values));
    check(l.nan_codes == g.nan_codes, "nan_codes " + std::to_string(l.nan_codes));
    check(l.inf_codes == g.inf_codes, "inf_codes " + std::to_string(l.inf_codes));
    check(lowbit::code_count(c.fmt) == (uint64_t{1} << c.ref.bits()), "code_count");
    check(c.fmt.bits == c.ref.bits(), "bits");
    check(lowbit::has_nan_code(c.fmt) == (g.nan_codes > 0), "has_nan_code");
    check(lowbit::has_inf_code(c.fmt) == (g.inf_codes > 0), "has_inf_code");
    check(lowbit::has_signed_zero(c.fmt) == (c.ref.variant != float_variant::fnuz),
          "has_signed_zero");
  }
  bad.expect_none("limit fields", checked);
}

// Test inputs for one format: every grid point, midpoints and their float neighbours, one float
// ulp inside every gap, quarter points, overflow, Inf, NaN and zero; both signs.
std::vector<float> encode_inputs(const RefGrid& g) {
  std::vector<float> pts;
  auto add = [&](ld v) {
    const float f = static_cast<float>(v);
    pts.push_back(f);
  };
  auto add_around = [&](ld v) {
    const float f = static_cast<float>(v);
    pts.push_back(f);
    pts.push_back(std::nextafter(f, 0.0f));
    pts.push_back(std::nextafter(f, std::numeric_limits<float>::infinity()));
  };
  for (size_t i = 0; i + 1 < g.mags.size(); ++i) {
    const ld lo = g.mags[i], hi = g.mags[i + 1];
    add(lo);
    add(hi);
    add_around((lo + hi) / 2);  // the midpoint (when a float) and the float just below/above
    pts.push_back(std::nextafter(static_cast<float>(lo), std::numeric_limits<float>::infinity()));
    pts.push_back(std::nextafter(static_cast<float>(hi), 0.0f));
    add(lo + (hi - lo) / 4);
    add(lo + 3 * (hi - lo) / 4);
  }
  // Beyond max: quarter, half (and around), one and 1.5 ulp, 2x, 4x, FLT_MAX, Inf.
  const ld max = g.max();
  const ld ulp = ref_unbounded_value(g.f, g.max_code() + 1) - max;
  pts.push_back(std::nextafter(static_cast<float>(max), std::numeric_limits<float>::infinity()));
  add(max + ulp / 4);
  add_around(max + ulp / 2);
  add(max + 3 * ulp / 4);
  add_around(max + ulp);
  add(max + 3 * ulp / 2);
  add(2 * max);
  add(4 * max);
  pts.push_back(FLT_MAX);
  pts.push_back(std::numeric_limits<float>::infinity());
  // Below the smallest positive value.
  add(g.mags[1] / 4);
  pts.push_back(std::numeric_limits<float>::denorm_min());
  pts.push_back(0.0f);
  // Pseudo-random floats over the whole range of the format.
  uint64_t s = 0x9E3779B97F4A7C15ull;
  const int e_lo = std::ilogb(g.mags[1]) - 3, e_hi = std::ilogb(max) + 3;
  for (int k = 0; k < 256; ++k) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const int e = e_lo + static_cast<int>((s >> 33) % static_cast<uint64_t>(e_hi - e_lo + 1));
    const float frac = 1.0f + static_cast<float>((s >> 8) & 0xFFFFFF) * 0x1p-24f;
    pts.push_back(std::ldexp(frac, e));
  }
  const size_t n = pts.size();
  for (size_t i = 0; i < n; ++i) pts.push_back(-pts[i]);
  pts.push_back(std::numeric_limits<float>::quiet_NaN());
  pts.push_back(-std::numeric_limits<float>::quiet_NaN());
  std::sort(pts.begin(), pts.end(), [](float a, float b) { return bits_of(a) < bits_of(b); });
  pts.erase(std::unique(pts.begin(), pts.end(),
                        [](float a, float b) { return bits_of(a) == bits_of(b); }),
            pts.end());
  return pts;
}

// Checks one encode: the value of the returned code (through the reference decode) must be the
// expected value bit for bit, and the code must be the canonical code of that value.
void check_encode(const Case& c, const RefGrid& g, float y, rounding_mode mode, float u,
                  Mismatches& bad) {
  const RefEncoded want = ref_encode(g, y, mode, u);
  const uint32_t got = lowbit::encode_ref(c.fmt, y, mode, u);
  auto report = [&](const std::string& why) {
    std::ostringstream s;
    s << c.ref.name() << " encode(" << show(y) << ", " << mode_name(mode);
    if (mode == rounding_mode::sr) s << ", u=" << u;
    s << "): " << why << "; want " << show(want.value.as_float()) << " code " << hex(want.code)
      << ", got code " << hex(got);
    if (got != kNoCode && got < (1u << c.ref.bits()))
      s << " = " << show(ref_decode(c.ref, got).as_float());
    bad.add(s.str());
  };
  if (want.value.cls == Cls::nan) {
    if (ref_has_nan(c.ref)) {
      if (got == kNoCode || got >= (1u << c.ref.bits()) || ref_decode(c.ref, got).cls != Cls::nan)
        report("want a NaN code");
    } else if (got != kNoCode) {
      report("want kNoCode");
    }
    return;
  }
  if (got == kNoCode || got >= (1u << c.ref.bits())) return report("not a code");
  const float value = ref_decode(c.ref, got).as_float();
  if (!same_float(value, want.value.as_float())) return report("wrong value");
  if (got != want.code) return report("non-canonical code");
}

TEST(ExhaustiveMinifloat, EncodeEveryGapAllModes) {
  Mismatches bad;
  uint64_t checked = 0;
  for (const Case& c : all_small_minifloats().cases) {
    const RefGrid g(c.ref);
    for (float y : encode_inputs(g)) {
      for (rounding_mode mode : kDeterministicModes) {
        check_encode(c, g, y, mode, 0.0f, bad);
        ++checked;
      }
      // Stochastic rounding only inside the range (its overflow is not specified here).
      if (std::isfinite(y) && std::fabs(static_cast<ld>(y)) <= g.max())
        for (float u : kSrDraws) {
          check_encode(c, g, y, rounding_mode::sr, u, bad);
          ++checked;
        }
    }
  }
  bad.expect_none("encodes", checked);
  EXPECT_GT(checked, 5000000u);
}

// The reference itself: spot values from the definitions, so that a wrong reference cannot
// silently agree with a wrong library.
TEST(ExhaustiveMinifloat, ReferenceSelfCheck) {
  RefFormat e4m3;  // OCP E4M3FN
  EXPECT_EQ(ref_decode(e4m3, 0x7E).mag, 448);
  EXPECT_EQ(ref_decode(e4m3, 0x01).mag, std::ldexp(ld{1}, -9));
  EXPECT_EQ(ref_decode(e4m3, 0x08).mag, std::ldexp(ld{1}, -6));
  EXPECT_EQ(ref_decode(e4m3, 0x7F).cls, Cls::nan);
  EXPECT_EQ(ref_decode(e4m3, 0xFF).cls, Cls::nan);
  EXPECT_TRUE(ref_decode(e4m3, 0x80).negative);
  const RefGrid g(e4m3);
  // rne ties go to the even code: 432 is halfway between 416 (0x7D) and 448 (0x7E).
  EXPECT_EQ(ref_encode(g, 432.0f, rounding_mode::rne, 0).value.mag, 448);
  EXPECT_EQ(ref_encode(g, 432.0f, rounding_mode::rtz, 0).value.mag, 416);
  EXPECT_EQ(ref_encode(g, 1.0625f, rounding_mode::rne, 0).value.mag, 1);  // 1 = 0x38 even
  EXPECT_EQ(ref_encode(g, 1.1875f, rounding_mode::rne, 0).value.mag, 1.25);  // 0x3A even
  EXPECT_EQ(ref_encode(g, 1.1875f, rounding_mode::rna, 0).value.mag, 1.25);
  EXPECT_EQ(ref_encode(g, 1.0625f, rounding_mode::rna, 0).value.mag, 1.125);
  EXPECT_EQ(ref_encode(g, 1.0625f, rounding_mode::odd, 0).value.mag, 1.125);  // 0x39 odd
  EXPECT_EQ(ref_encode(g, 1e9f, rounding_mode::rne, 0).value.mag, 448);
  EXPECT_TRUE(ref_encode(g, -0.0f, rounding_mode::rne, 0).value.negative);
  EXPECT_EQ(ref_encode(g, -0.0f, rounding_mode::rne, 0).code, 0x80u);
  EXPECT_EQ(ref_encode(g, -1.0f, rounding_mode::up, 0).code, 0xB8u);
  EXPECT_EQ(ref_encode(g, -1.01f, rounding_mode::up, 0).code, 0xB8u);
  EXPECT_EQ(ref_encode(g, -1.01f, rounding_mode::down, 0).code, 0xB9u);
  EXPECT_EQ(g.finite_values, 253u);
  // E5M2 with overflow=inf: 57344 + 4096 (half ulp) ties to 65536 (odd 0x7B -> even 0x7C = Inf).
  RefFormat e5m2{5, 2, 15, float_variant::ieee, true, overflow_policy::inf};
  const RefGrid g5(e5m2);
  EXPECT_EQ(g5.max(), 57344);
  EXPECT_EQ(ref_encode(g5, 61440.0f, rounding_mode::rne, 0).value.cls, Cls::inf);
  EXPECT_EQ(ref_encode(g5, 61439.0f, rounding_mode::rne, 0).value.mag, 57344);
  EXPECT_EQ(ref_encode(g5, 61439.0f, rounding_mode::up, 0).value.cls, Cls::inf);
  EXPECT_EQ(ref_encode(g5, 1e30f, rounding_mode::rtz, 0).value.mag, 57344);
  EXPECT_EQ(ref_encode(g5, -1e30f, rounding_mode::up, 0).value.mag, 57344);
  EXPECT_EQ(ref_encode(g5, -1e30f, rounding_mode::down, 0).value.cls, Cls::inf);
  // Subnormals off: only 0 and 2^-6 below 2^-6; the tie 2^-7 goes to 0 (both codes even).
  RefFormat flush = e4m3;
  flush.subnormals = false;
  const RefGrid gf(flush);
  EXPECT_EQ(gf.mags[1], std::ldexp(ld{1}, -6));
  EXPECT_EQ(ref_encode(gf, 0x1p-7f, rounding_mode::rne, 0).value.mag, 0);
  EXPECT_EQ(ref_encode(gf, 0x1p-7f, rounding_mode::rna, 0).value.mag, std::ldexp(ld{1}, -6));
  EXPECT_EQ(gf.finite_values, 253u - 14u);
  // fnuz: no -0.
  RefFormat fnuz{4, 3, 8, float_variant::fnuz, true, overflow_policy::saturate};
  const RefGrid gz(fnuz);
  EXPECT_EQ(ref_encode(gz, -0.0f, rounding_mode::rne, 0).code, 0u);
  EXPECT_EQ(ref_encode(gz, -1e-10f, rounding_mode::rtz, 0).code, 0u);
  EXPECT_EQ(ref_decode(gz.f, 0x80).cls, Cls::nan);
  EXPECT_EQ(gz.max(), 240);
}

// Subnormals off in fnuz: the flushed codes 1.0000.mmm (m != 0) decode to a zero, and fnuz has
// no negative zero (docs/formats.md §0.1 "no negative zero"; docs/conventions.md §9 "decode to +-0"), so +0.
TEST(ExhaustiveMinifloat, FnuzFlushedNegativeSubnormalsArePositiveZero) {
  for (auto [E, M] : {std::pair{4, 3}, std::pair{5, 2}, std::pair{3, 2}}) {
    const element_format f =
        lowbit::make_minifloat(E, M, float_variant::fnuz, 1 << (E - 1), /*subnormals=*/false);
    for (uint32_t m = 1; m < (1u << M); ++m) {
      const uint32_t code = (1u << (E + M)) | m;
      EXPECT_EQ(bits_of(lowbit::decode_ref(f, code)), 0u)
          << "e" << E << "m" << M << "fnuz(subnormals=off) code " << hex(code) << " decodes to "
          << show(lowbit::decode_ref(f, code));
    }
  }
}

// ================================================================================================
// fp16 and bf16: every code, and a float32 sweep against integer-bit converters.
// ================================================================================================

// float32 bits -> 16-bit code by integer manipulation; saturating (lowbit's default). The NaN
// result is flagged by returning 0xFFFFFFFF.
constexpr uint32_t kRefNaN = 0xFFFFFFFFu;

bool round_increment(uint64_t q, uint64_t rem, uint64_t half, bool negative, rounding_mode mode) {
  if (rem == 0) return false;
  switch (mode) {
    case rounding_mode::rne: return rem > half || (rem == half && (q & 1u));
    case rounding_mode::rna: return rem >= half;
    case rounding_mode::rtz: return false;
    case rounding_mode::up: return !negative;
    case rounding_mode::down: return negative;
    case rounding_mode::odd: return (q & 1u) == 0;
    case rounding_mode::sr: return false;  // not used
  }
  return false;
}

uint32_t ref_f32_to_f16(uint32_t x, rounding_mode mode) {
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
  const bool negative = sign != 0;
  if (ax > 0x7F800000u) return kRefNaN;
  if (ax >= 0x47800000u) return sign | 0x7BFFu;  // |x| >= 65536 or Inf: saturate
  const uint32_t exp = ax >> 23, man = ax & 0x7FFFFFu;
  uint64_t q, rem, half;
  if (exp >= 113) {  // |x| >= 2^-14: fp16 normal, drop 13 mantissa bits
    q = (static_cast<uint64_t>(exp - 112) << 10) | (man >> 13);
    rem = man & 0x1FFFu;
    half = 0x1000u;
  } else {  // fp16 subnormal range: count units of 2^-24
    const uint64_t sig = exp ? (man | 0x800000u) : man;
    const int e2 = static_cast<int>(exp ? exp : 1) - 150;  // |x| = sig * 2^e2
    const int shift = -(e2 + 24);                          // >= 14
    if (shift >= 40) {
      q = 0;
      rem = sig;
      half = uint64_t{1} << 39;
    } else {
      q = sig >> shift;
      rem = sig & ((uint64_t{1} << shift) - 1);
      half = uint64_t{1} << (shift - 1);
    }
  }
  q += round_increment(q, rem, half, negative, mode) ? 1 : 0;
  if (q > 0x7BFFu) q = 0x7BFFu;
  return sign | static_cast<uint32_t>(q);
}

uint32_t ref_f32_to_bf16(uint32_t x, rounding_mode mode) {
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return kRefNaN;
  if (ax == 0x7F800000u) return sign | 0x7F7Fu;
  uint64_t q = ax >> 16;
  q += round_increment(q, ax & 0xFFFFu, 0x8000u, sign != 0, mode) ? 1 : 0;
  if (q > 0x7F7Fu) q = 0x7F7Fu;
  return sign | static_cast<uint32_t>(q);
}

struct Wide {
  const char* name;
  element_format fmt;
  RefFormat ref;
  uint32_t (*convert)(uint32_t, rounding_mode);
};

std::vector<Wide> wide_formats() {
  return {{"fp16", lowbit::make_minifloat(5, 10, float_variant::ieee),
           RefFormat{5, 10, 15, float_variant::ieee, true, overflow_policy::saturate},
           ref_f32_to_f16},
          {"bf16", lowbit::make_minifloat(8, 7, float_variant::ieee),
           RefFormat{8, 7, 127, float_variant::ieee, true, overflow_policy::saturate},
           ref_f32_to_bf16}};
}

TEST(Exhaustive16Bit, DecodeEveryCode) {
  for (const Wide& w : wide_formats()) {
    Mismatches bad;
    // parse_format spells the same formats.
    EXPECT_EQ(lowbit::parse_format(w.name).element, w.fmt) << w.name;
    for (uint32_t code = 0; code < 0x10000u; ++code) {
      const RefValue r = ref_decode(w.ref, code);
      const float want = r.as_float(), got = lowbit::decode_ref(w.fmt, code);
      const bool ok = r.cls == Cls::nan ? bits_of(got) == 0x7fc00000u : bits_of(got) == bits_of(want);
      if (!ok) bad.add(std::string(w.name) + " code " + hex(code) + ": want " + show(want) +
                       ", got " + show(got));
    }
    bad.expect_none(w.name, 0x10000);
  }
}

// The float32 inputs of the 16-bit sweep: a stride over all 2^32 patterns plus dense windows
// around the interesting boundaries (both signs).
std::vector<uint32_t> sweep_patterns(const char* name) {
  std::vector<uint32_t> v;
  for (uint64_t x = 0; x < (uint64_t{1} << 32); x += 4099) v.push_back(static_cast<uint32_t>(x));
  auto window = [&](uint32_t lo, uint32_t hi) {
    for (uint32_t x = lo; x <= hi; ++x) {
      v.push_back(x);
      v.push_back(x | 0x80000000u);
    }
  };
  if (std::string(name) == "fp16") {
    window(0x387FC000u, 0x38800400u);  // subnormal / normal boundary 2^-14
    window(0x32FFF000u, 0x33001000u);  // 2^-25: half the smallest subnormal
    window(0x337FF000u, 0x33801000u);  // 2^-24: the smallest subnormal
    window(0x477FD000u, 0x47801000u);  // 65504 (max), 65520 (its half ulp), 65536
    window(0x3F7FF000u, 0x3F801000u);  // 1.0
  } else {
    window(0x00000000u, 0x00020000u);  // float subnormals: bf16 subnormals and their ties
    window(0x007F0000u, 0x00810000u);  // subnormal / normal boundary 2^-126
    window(0x7F7F0000u, 0x7F800001u);  // max, its half ulp, Inf, the first NaN
    window(0x3F7F0000u, 0x3F810000u);  // 1.0
  }
  v.push_back(0x7FC00000u);
  v.push_back(0xFFC00001u);
  return v;
}

TEST(Exhaustive16Bit, EncodeFloat32SweepAllModes) {
  for (const Wide& w : wide_formats()) {
    Mismatches bad;
    uint64_t checked = 0;
    for (uint32_t x : sweep_patterns(w.name)) {
      const float y = std::bit_cast<float>(x);
      for (rounding_mode mode : kDeterministicModes) {
        const uint32_t want = w.convert(x, mode);
        const uint32_t got = lowbit::encode_ref(w.fmt, y, mode);
        ++checked;
        const bool ok = want == kRefNaN
                            ? (got < 0x10000u && ref_decode(w.ref, got).cls == Cls::nan)
                            : got == want;
        if (!ok)
          bad.add(std::string(w.name) + " encode(" + show(y) + ", " + mode_name(mode) +
                  "): want " + hex(want) + ", got " + hex(got));
      }
    }
    bad.expect_none(w.name, checked);
    EXPECT_GT(checked, 6000000u);
  }
}

// The two references agree with each other (grid search vs bit manipulation) on a subset.
TEST(Exhaustive16Bit, ReferencesAgree) {
  for (const Wide& w : wide_formats()) {
    const RefGrid g(w.ref);
    Mismatches bad;
    uint64_t checked = 0;
    for (uint64_t x = 0; x < (uint64_t{1} << 32); x += 65537 * 7) {
      const float y = std::bit_cast<float>(static_cast<uint32_t>(x));
      for (rounding_mode mode : kDeterministicModes) {
        const RefEncoded a = ref_encode(g, y, mode, 0);
        const uint32_t b = w.convert(static_cast<uint32_t>(x), mode);
        const bool ok = a.value.cls == Cls::nan ? b == kRefNaN : a.code == b;
        ++checked;
        if (!ok) bad.add(std::string(w.name) + " " + show(y) + " " + mode_name(mode));
      }
    }
    bad.expect_none("reference pairs", checked);
  }
}

// ================================================================================================
// Integer formats: intN (restricted symmetric two's complement, optional 2^-frac) and uintN.
// ================================================================================================

// Rounds the real x (exact in long double) to an integer; directed modes look at the sign.
ld ref_round_integer(ld x, rounding_mode mode, float u) {
  const bool negative = std::signbit(x);
  const ld a = std::fabs(x), lo = std::floor(a), hi = lo + 1;
  if (a == lo) return x;
  const bool lo_even = std::fmod(lo, ld{2}) == 0;
  bool up = false;  // to the larger magnitude
  switch (mode) {
    case rounding_mode::rne: up = a - lo > hi - a || (a - lo == hi - a && !lo_even); break;
    case rounding_mode::rna: up = a - lo >= hi - a; break;
    case rounding_mode::rtz: up = false; break;
    case rounding_mode::up: up = !negative; break;
    case rounding_mode::down: up = negative; break;
    case rounding_mode::odd: up = lo_even; break;
    case rounding_mode::sr: up = ref_sr_to_larger_magnitude(a, lo, hi, negative, u); break;
  }
  const ld r = up ? hi : lo;
  return negative ? -r : r;
}

float ref_int_decode(int bits, int frac, bool is_unsigned, uint32_t code) {
  int64_t q = code;
  if (!is_unsigned && code >= (1u << (bits - 1))) q -= int64_t{1} << bits;
  return static_cast<float>(std::ldexp(static_cast<ld>(q), -frac));
}

uint32_t ref_int_encode(int bits, int frac, bool is_unsigned, float y, rounding_mode mode, float u) {
  if (std::isnan(y)) return kNoCode;
  const int64_t qmax = is_unsigned ? (int64_t{1} << bits) - 1 : (int64_t{1} << (bits - 1)) - 1;
  const int64_t qmin = is_unsigned ? 0 : -qmax;
  int64_t q;
  if (std::isinf(y)) {
    q = y > 0 ? qmax : qmin;
  } else {
    const ld r = ref_round_integer(std::ldexp(static_cast<ld>(y), frac), mode, u);
    q = r > ld(qmax) ? qmax : r < ld(qmin) ? qmin : static_cast<int64_t>(r);
  }
  return static_cast<uint32_t>(q) & ((1u << bits) - 1u);
}

struct IntCase {
  std::string name;
  element_format fmt;
  int bits, frac;
  bool is_unsigned;
};

std::vector<IntCase> int_cases() {
  std::vector<IntCase> v;
  for (int b = 2; b <= 16; ++b) {
    v.push_back({"int" + std::to_string(b), lowbit::make_int(b), b, 0, false});
    v.push_back({"uint" + std::to_string(b), lowbit::make_uint(b), b, 0, true});
  }
  v.push_back({"int8(frac=6)", lowbit::make_int(8, 6), 8, 6, false});  // MXINT8
  v.push_back({"int4(frac=2)", lowbit::make_int(4, 2), 4, 2, false});
  return v;
}

TEST(ExhaustiveInteger, ParseNames) {
  for (int b = 2; b <= 8; ++b) {
    EXPECT_EQ(lowbit::parse_format("int" + std::to_string(b)).element, lowbit::make_int(b));
    EXPECT_EQ(lowbit::parse_format("uint" + std::to_string(b)).element, lowbit::make_uint(b));
  }
}

TEST(ExhaustiveInteger, DecodeEveryCode) {
  Mismatches bad;
  uint64_t checked = 0;
  for (const IntCase& c : int_cases()) {
    for (uint32_t code = 0; code < (1u << c.bits); ++code) {
      const float want = ref_int_decode(c.bits, c.frac, c.is_unsigned, code);
      const float got = lowbit::decode_ref(c.fmt, code);
      ++checked;
      if (bits_of(want) != bits_of(got))
        bad.add(c.name + " code " + hex(code) + ": want " + show(want) + ", got " + show(got));
    }
    // The code of -2^(N-1) decodes to -2^(N-1) (encode never produces it).
    if (!c.is_unsigned && c.frac == 0) {
      EXPECT_EQ(lowbit::decode_ref(c.fmt, 1u << (c.bits - 1)), -std::ldexp(1.0f, c.bits - 1))
          << c.name;
    }
    EXPECT_TRUE(std::isnan(lowbit::decode_ref(c.fmt, kNoCode))) << c.name;
  }
  bad.expect_none("integer codes", checked);
}

TEST(ExhaustiveInteger, LimitsMatchEnumeration) {
  for (const IntCase& c : int_cases()) {
    const lowbit::element_limits l = lowbit::limits_of(c.fmt);
    const ld step = std::ldexp(ld{1}, -c.frac);
    const int64_t qmax = c.is_unsigned ? (int64_t{1} << c.bits) - 1 : (int64_t{1} << (c.bits - 1)) - 1;
    EXPECT_EQ(l.max, static_cast<double>(qmax * step)) << c.name;
    EXPECT_EQ(l.min, c.is_unsigned ? 0.0 : -static_cast<double>(qmax * step)) << c.name;
    EXPECT_EQ(l.finite_values, static_cast<uint64_t>(c.is_unsigned ? qmax + 1 : 2 * qmax + 1))
        << c.name;
    EXPECT_EQ(l.nan_codes, 0u) << c.name;
    EXPECT_EQ(l.inf_codes, 0u) << c.name;
    EXPECT_FALSE(lowbit::has_signed_zero(c.fmt)) << c.name;
    EXPECT_FALSE(lowbit::has_nan_code(c.fmt)) << c.name;
  }
}

TEST(ExhaustiveInteger, EncodeEveryIntegerHalfAndQuarter) {
  Mismatches bad;
  uint64_t checked = 0;
  const float offsets[] = {0.0f, 0.25f, 0.5f, 0.75f, -0.25f, -0.5f, -0.75f};
  for (const IntCase& c : int_cases()) {
    const int64_t qmax =
        c.is_unsigned ? (int64_t{1} << c.bits) - 1 : (int64_t{1} << (c.bits - 1)) - 1;
    std::vector<float> ys;
    for (int64_t k = -qmax - 3; k <= qmax + 3; ++k)
      for (float o : offsets) {
        const ld x = std::ldexp(static_cast<ld>(k) + o, -c.frac);  // exact (k, o need <= 19 bits)
        ys.push_back(static_cast<float>(x));
      }
    for (float y : {0.0f, -0.0f, 0.25f, -0.25f, 1e30f, -1e30f, FLT_MAX, -FLT_MAX,
                    std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(),
                    -std::numeric_limits<float>::denorm_min()}) {
      ys.push_back(y);
      ys.push_back(std::ldexp(y, -c.frac));
    }
    for (float y : ys) {
      for (rounding_mode mode : kDeterministicModes) {
        const uint32_t want = ref_int_encode(c.bits, c.frac, c.is_unsigned, y, mode, 0);
        const uint32_t got = lowbit::encode_ref(c.fmt, y, mode);
        ++checked;
        if (want != got)
          bad.add(c.name + " encode(" + show(y) + ", " + mode_name(mode) + "): want " + hex(want) +
                  ", got " + hex(got));
        else if (want != kNoCode &&
                 bits_of(ref_int_decode(c.bits, c.frac, c.is_unsigned, got)) == 0x80000000u)
          bad.add(c.name + " encode produced -0");
      }
      if (std::isfinite(y) && c.bits <= 10)  // sr on the smaller formats (runtime)
        for (float u : kSrDraws) {
          const uint32_t want = ref_int_encode(c.bits, c.frac, c.is_unsigned, y, rounding_mode::sr, u);
          const uint32_t got = lowbit::encode_ref(c.fmt, y, rounding_mode::sr, u);
          ++checked;
          if (want != got)
            bad.add(c.name + " encode(" + show(y) + ", sr, u=" + std::to_string(u) + "): want " +
                    hex(want) + ", got " + hex(got));
        }
    }
  }
  bad.expect_none("integer encodes", checked);
  // Spot values written out: ties of int4.
  const element_format int4 = lowbit::make_int(4);
  EXPECT_EQ(lowbit::encode_ref(int4, 2.5f, rounding_mode::rne), 2u);
  EXPECT_EQ(lowbit::encode_ref(int4, 2.5f, rounding_mode::rna), 3u);
  EXPECT_EQ(lowbit::encode_ref(int4, -2.5f, rounding_mode::rne), 0xEu);  // -2
  EXPECT_EQ(lowbit::encode_ref(int4, -2.5f, rounding_mode::rna), 0xDu);  // -3
  EXPECT_EQ(lowbit::encode_ref(int4, -100.0f, rounding_mode::rne), 0x9u);  // -7, never -8
  EXPECT_EQ(lowbit::encode_ref(lowbit::make_uint(4), -3.0f, rounding_mode::rne), 0u);
  EXPECT_EQ(lowbit::encode_ref(lowbit::make_uint(4), 99.0f, rounding_mode::rne), 15u);
}

// ================================================================================================
// docs/formats.md §0.1 table, written out as published.
// ================================================================================================
struct TableRow {
  const char* spec;
  int bias;
  double max, min_normal, min_subnormal;
  uint64_t finite_values, nan_codes, inf_codes;
};

TEST(ExhaustiveMethodsTable, PublishedLimits) {
  const TableRow rows[] = {
      {"e4m3fn", 7, 448, 0x1p-6, 0x1p-9, 253, 2, 0},
      {"e5m2", 15, 57344, 0x1p-14, 0x1p-16, 247, 6, 2},
      {"e4m3fnuz", 8, 240, 0x1p-7, 0x1p-10, 255, 1, 0},
      {"e5m2fnuz", 16, 57344, 0x1p-15, 0x1p-17, 255, 1, 0},
      {"e3m2", 3, 28, 0.25, 0.0625, 63, 0, 0},
      {"e2m3", 1, 7.5, 1, 0.125, 63, 0, 0},
      {"e2m1", 1, 6, 1, 0.5, 15, 0, 0},
      {"e4m3finite", 7, 480, 0x1p-6, 0x1p-9, 255, 0, 0},
      {"fp16", 15, 65504, 0x1p-14, 0x1p-24, 63487, 2046, 2},
      {"bf16", 127, 3.38953e38, 0x1p-126, 0x1p-133, 65279, 254, 2},
  };
  for (const TableRow& row : rows) {
    SCOPED_TRACE(row.spec);
    const element_format f = lowbit::parse_format(row.spec).element;
    ASSERT_EQ(f.kind, lowbit::element_kind::minifloat);
    EXPECT_EQ(f.bias, row.bias);
    // The library's limits.
    const lowbit::element_limits l = lowbit::limits_of(f);
    if (std::string(row.spec) == "bf16") {
      EXPECT_NEAR(l.max, row.max, 1e33);  // the table prints 6 digits
      EXPECT_EQ(l.max, 0x1.fep127);
    } else {
      EXPECT_EQ(l.max, row.max);
    }
    EXPECT_EQ(l.min_normal, row.min_normal);
    EXPECT_EQ(l.min_subnormal, row.min_subnormal);
    EXPECT_EQ(l.finite_values, row.finite_values);
    EXPECT_EQ(l.nan_codes, row.nan_codes);
    EXPECT_EQ(l.inf_codes, row.inf_codes);
    // Our own enumeration of the same format.
    const RefFormat r{f.ebits, f.mbits, row.bias, f.variant, true, overflow_policy::saturate};
    const RefGrid g(r);
    if (std::string(row.spec) == "bf16") {
      EXPECT_NEAR(static_cast<double>(g.max()), row.max, 1e33);
    } else {
      EXPECT_EQ(static_cast<double>(g.max()), row.max);
    }
    EXPECT_EQ(static_cast<double>(g.mags[1]), row.min_subnormal);
    EXPECT_EQ(g.finite_values, row.finite_values);
    EXPECT_EQ(g.nan_codes, row.nan_codes);
    EXPECT_EQ(g.inf_codes, row.inf_codes);
    // min normal: the smallest value with a non-zero exponent field.
    EXPECT_EQ(ref_decode(r, 1u << r.M).mag, static_cast<ld>(row.min_normal));
  }
}

TEST(ExhaustiveMethodsTable, PublishedCodes) {
  const element_format e4m3fn = lowbit::parse_format("e4m3fn").element;
  const element_format e5m2 = lowbit::parse_format("e5m2").element;
  const element_format e4m3fnuz = lowbit::parse_format("e4m3fnuz").element;
  EXPECT_EQ(lowbit::parse_format("e4m3").element, e4m3fn);  // a bare e4m3 is OCP E4M3FN
  EXPECT_EQ(lowbit::decode_ref(e4m3fn, 0x7E), 448.0f);
  EXPECT_TRUE(std::isnan(lowbit::decode_ref(e4m3fn, 0x7F)));
  EXPECT_TRUE(std::isnan(lowbit::decode_ref(e4m3fn, 0xFF)));
  EXPECT_EQ(lowbit::decode_ref(e5m2, 0x7B), 57344.0f);
  EXPECT_EQ(lowbit::decode_ref(e5m2, 0x7C), std::numeric_limits<float>::infinity());
  EXPECT_EQ(lowbit::decode_ref(e5m2, 0xFC), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(lowbit::decode_ref(e4m3fnuz, 0x80)));
  EXPECT_EQ(lowbit::decode_ref(e4m3fnuz, 0x7F), 240.0f);
  EXPECT_EQ(lowbit::encode_ref(e4m3fnuz, -0.0f, rounding_mode::rne), 0u);
  EXPECT_EQ(lowbit::encode_ref(e4m3fn, -0.0f, rounding_mode::rne), 0x80u);
}

TEST(ExhaustiveMethodsTable, E2M1ValueSet) {
  const element_format f = lowbit::parse_format("e2m1").element;
  std::vector<float> pos;
  for (uint32_t c = 0; c < 8; ++c) pos.push_back(lowbit::decode_ref(f, c));
  EXPECT_EQ(pos, (std::vector<float>{0, 0.5, 1, 1.5, 2, 3, 4, 6}));
  for (uint32_t c = 0; c < 8; ++c)
    EXPECT_EQ(bits_of(lowbit::decode_ref(f, c | 8)), bits_of(-pos[c])) << c;
  // docs/conventions.md §1: a plain cast of 2.5 onto e2m1 gives 2 (tie to the even code 0b100).
  EXPECT_EQ(lowbit::decode_ref(f, lowbit::encode_ref(f, 2.5f, rounding_mode::rne)), 2.0f);
  EXPECT_EQ(lowbit::decode_ref(f, lowbit::encode_ref(f, 5.0f, rounding_mode::rne)), 4.0f);
  EXPECT_EQ(lowbit::decode_ref(f, lowbit::encode_ref(f, 5.0f, rounding_mode::rna)), 6.0f);
  EXPECT_EQ(lowbit::decode_ref(f, lowbit::encode_ref(f, 0.25f, rounding_mode::rne)), 0.0f);
  EXPECT_EQ(lowbit::decode_ref(f, lowbit::encode_ref(f, 0.75f, rounding_mode::rne)), 1.0f);
}

// E1My (finite, default bias 2^0 - 1 = 0): e = 0 gives 2^(1-0) m/2^M = m 2^(1-M); e = 1 gives
// 2^(1-0)(1 + m/2^M) = (2^M + m) 2^(1-M). So the magnitudes are k 2^(1-M), k = 0 .. 2^(M+1)-1:
// a uniform grid, the symmetric INT(M+2) levels -(2^(M+1)-1) .. 2^(M+1)-1 times 2^(1-M), with
// magnitude code = k (so even codes are even integers and the ties agree too).
TEST(ExhaustiveMethodsTable, E1MyIsUniformIntGrid) {
  for (int M = 0; M <= 6; ++M) {
    SCOPED_TRACE("e1m" + std::to_string(M));
    const element_format f = lowbit::make_minifloat(1, M, float_variant::finite);
    EXPECT_EQ(f.bias, 0);
    const element_format q = lowbit::make_int(M + 2, M - 1);  // value = level * 2^(1-M)
    const uint32_t n = 1u << (M + 1);
    for (uint32_t k = 0; k < n; ++k) {
      const float want = std::ldexp(static_cast<float>(k), 1 - M);
      EXPECT_EQ(lowbit::decode_ref(f, k), want) << k;
      EXPECT_EQ(lowbit::decode_ref(f, k | n), -want) << k;
      EXPECT_EQ(lowbit::decode_ref(q, k), want) << k;
    }
    EXPECT_EQ(lowbit::limits_of(f).finite_values, lowbit::limits_of(q).finite_values);
    EXPECT_EQ(lowbit::limits_of(f).max, lowbit::limits_of(q).max);
    // Same rounding in every mode (values compared with ==: the minifloat keeps -0).
    for (int i = -4 * static_cast<int>(n) - 8; i <= 4 * static_cast<int>(n) + 8; ++i) {
      const float y = std::ldexp(static_cast<float>(i) / 4.0f, 1 - M);
      for (rounding_mode mode : kDeterministicModes) {
        const float a = lowbit::decode_ref(f, lowbit::encode_ref(f, y, mode));
        const float b = lowbit::decode_ref(q, lowbit::encode_ref(q, y, mode));
        EXPECT_EQ(a, b) << "y=" << y << " " << mode_name(mode);
      }
    }
  }
}

}  // namespace

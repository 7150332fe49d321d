// Element formats: the value sets that one code of a quantized tensor can take, and their exact
// scalar codec (the specification every fast kernel is tested against).
//
// Families (docs/formats.md §0.1, 0.2, 1.1-1.4):
//   minifloat  eEmM: sign + E exponent bits + M stored mantissa bits (e4m3 has M = 3), any bias,
//              special-value variant ieee / fn / fnuz / finite, subnormals on/off, overflow policy.
//              fp32 = e8m23, tf32 = e8m10, bf16 = e8m7, fp16 = e5m10 (all ieee).
//   int        intN: symmetric restricted two's complement, levels -(2^(N-1)-1) .. 2^(N-1)-1,
//              optionally with an implicit 2^-frac (MXINT8: frac = 6).
//   uint       uintN: levels 0 .. 2^N-1; used with a zero point (asymmetric min-max).
//   lut        a sorted table of values (NF4, lut(...)): round to the nearest entry.
//
// This file knows nothing of tensors, scales or threads.
#pragma once

#include <bit>
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

enum class element_kind : uint8_t { minifloat, int_sym, uint_asym, lut };

// Special-value policy of a minifloat (docs/formats.md §0.1 table).
//   ieee   : top exponent is Inf (m = 0) / NaN (m != 0)
//   fn     : no Inf; only S.1..1.1..1 is NaN (OCP E4M3)
//   fnuz   : no Inf, no -0; the single code 100..0 is NaN; default bias 2^(E-1)
//   finite : every code is a number (MX FP6/FP4)
enum class float_variant : uint8_t { ieee, fn, fnuz, finite };

// What a value beyond the largest finite magnitude becomes (docs/conventions.md §3: saturate by default).
enum class overflow_policy : uint8_t { saturate, inf, nan };

// Rounding of a real value onto a grid (docs/conventions.md §10 for stochastic).
//   rne  nearest, ties to the even code      rna  nearest, ties away from zero
//   rtz  toward zero    up  toward +inf    down  toward -inf
//   odd  round to odd (truncate, set the last code bit when inexact)
//   sr   stochastic: up with probability (x - lo) / (hi - lo)
enum class rounding_mode : uint8_t { rne, rna, rtz, up, down, odd, sr };

struct element_format {
  element_kind kind = element_kind::minifloat;
  int bits = 8;  // storage bits of one code

  // minifloat
  int ebits = 4, mbits = 3, bias = 7;
  float_variant variant = float_variant::fn;
  bool subnormals = true;
  overflow_policy overflow = overflow_policy::saturate;

  // int_sym: value = code * 2^-frac_bits
  int frac_bits = 0;

  // lut: ascending values, and the name it prints as ("nf4"), empty for lut(...)
  std::vector<float> table;
  std::string table_name;

  bool operator==(const element_format&) const = default;
};

// Constructors of the families; they validate and throw format_error on impossible parameters.
element_format make_minifloat(int ebits, int mbits, float_variant variant, int bias,
                              bool subnormals = true,
                              overflow_policy overflow = overflow_policy::saturate);
element_format make_minifloat(int ebits, int mbits, float_variant variant);  // default bias
element_format make_int(int bits, int frac_bits = 0);
element_format make_uint(int bits);
element_format make_lut(std::vector<float> values, std::string name = {});
element_format make_nf4();

int default_bias(int ebits, float_variant variant);
// A bare `eEmM`: e4m3 -> fn, e5m2 and e8mM -> ieee, everything else finite (docs/conventions.md §2).
float_variant default_variant(int ebits, int mbits);

// The NF4 code book of QLoRA: float32 of the double-precision formula (docs/formats.md §1.4).
const std::vector<float>& nf4_table();

// ---- properties ---------------------------------------------------------------------------
struct element_limits {
  double max = 0;            // largest finite value
  double min = 0;            // most negative finite value (-max for symmetric families)
  double min_normal = 0;     // minifloat: 2^(1-bias); int: 2^-frac
  double min_subnormal = 0;  // smallest positive value
  double epsilon = 0;        // minifloat: 2^-M; int: 2^-frac (step)
  int emax = 0;              // floor(log2(max)): the OCP "emax_elem"
  uint64_t finite_values = 0;  // distinct finite values (+0 and -0 counted once)
  uint64_t nan_codes = 0, inf_codes = 0;
};
element_limits limits_of(const element_format& f);
uint64_t code_count(const element_format& f);  // 2^bits
bool has_signed_zero(const element_format& f);
bool has_nan_code(const element_format& f);
bool has_inf_code(const element_format& f);

// ---- exact scalar codec ---------------------------------------------------------------------
// The code a NaN maps to in a format without a NaN code: it decodes to NaN, and quantize()
// refuses to store it.
inline constexpr uint32_t kNoCode = 0xFFFFFFFFu;

// Dequantized value of a code; NaN codes decode to the canonical quiet NaN.
float decode_ref(const element_format& f, uint32_t code);

// The code of y rounded onto the element grid. `u` is the uniform draw in [0, 1) used only by
// rounding_mode::sr (round up iff u < t). For uint the grid is 0 .. 2^N-1 (no zero point here).
uint32_t encode_ref(const element_format& f, float y, rounding_mode mode, float u = 0.0f);

// y rounded to an integer (sign-magnitude: directed modes look at the sign); NaN/Inf pass through.
float round_to_integer_ref(float y, rounding_mode mode, float u = 0.0f);

// The canonical NaN every lowbit kernel writes (bit pattern 0x7fc00000).
inline float canonical_nan() { return std::bit_cast<float>(0x7fc00000u); }

// Names and printing of the pieces (the whole-format grammar is in format.hpp).
std::string to_string(rounding_mode m);
std::string to_string(float_variant v);
std::string to_string(overflow_policy o);
// Shortest decimal that reads back to the same float ("nan", "inf", "-inf").
std::string shortest_float(float v);

}  // namespace lowbit

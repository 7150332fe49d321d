// The quantization format descriptor and its spec grammar (docs/formats.md "The format spec"):
//
//   format   := element [ '/' group ] [ ':' scale ] [ '@' rule ] [ '~' rounding ]
//             | preset [ '~' rounding ]              (nvfp4, ggml's q4_0 ... q6_k, mxint8, flexN+E)
//             | powA '(' format ')'                  (power map, docs/conventions.md §12)
//   element  := intN | uintN | eEmM[variant][(opts)] | nf4 | lut(v1,v2,...) | bf16 | fp16 | fp32 | tf32
//   group    := t | c | gK           scale := fp32 | fp16 | bf16 | e8m0 | pow2 | e4m3 | any element
//   rule     := max | mse | pNN.NNN | ocp | ceil | rceil | even
//   rounding := rne | rna | rtz | up | down | odd | sr[R][:seed]   (R = 1, 2, 4, 8, 16 random bits:
//               docs/conventions.md §43; plain sr is the exact 24-bit draw of §10)
//
// parse_format() and format_name() are lossless inverses: parse(format_name(f)) == f, and
// format_name(parse(s)) is the canonical spelling of s.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/formats/element.hpp"

namespace lowbit {

// Where one scale applies. none: a plain element cast (no scale, docs/conventions.md §1).
enum class granularity : uint8_t { none, tensor, row, group };

// How a scale is stored.
//   element : rounded onto an element format (fp32, fp16, bf16, e4m3, ...), RNE, saturating
//   e8m0    : OCP's unsigned exponent, 2^-127 .. 2^127, 0xFF = NaN
//   pow2    : a power of two with an exponent of `exp_bits` two's complement bits
//             (default 8 bits: anything float32 holds; Flexpoint uses 5)
enum class scale_kind : uint8_t { element, e8m0, pow2 };

// How a group's scale is chosen (docs/conventions.md §7).
//   max        s = amax / elem_max rounded to the scale format
//   mse        the clip ratio c = 1 - i/100 (i = 0..79) of amax with least squared error
//   percentile clip at the pNN.N percentile of |x| in the group
//   ocp/ceil/rceil/even: power-of-two scales (docs/formats.md §1.2)
enum class scale_rule : uint8_t { max, mse, percentile, ocp, ceil, rceil, even };

// Layouts and algorithms the generic grammar cannot express (docs/conventions.md §13).
// ggml's block formats (docs/formats.md §1.6), fp16 scales, their rounding fixed:
//   q4_0, q5_0, q8_0 : blocks of 32, value (q - z) * d (z = 8, 16, 0)
//   q4_1, q5_1       : blocks of 32, value q * d + m with the block's fp16 min m
//   q2_k, q3_k, q4_k, q5_k, q6_k : ggml's K-quants, super-blocks of 256 with sub-block scales
//                      (kernels/kquant.hpp); group_size is the sub-block (16 or 32)
enum class preset : uint8_t { none, nvfp4, q4_0, q8_0, mxint8, flex, q4_k, q6_k, q4_1, q5_0, q5_1, q2_k, q3_k, q5_k };

struct scale_format {
  scale_kind kind = scale_kind::element;
  element_format element;  // kind == element
  int exp_bits = 8;        // kind == pow2
  bool operator==(const scale_format&) const = default;
};

struct format {
  element_format element;
  granularity gran = granularity::none;
  int group_size = 0;  // gran == group
  scale_format scale;
  scale_rule rule = scale_rule::max;
  double percentile = 99.9;  // rule == percentile
  rounding_mode rounding = rounding_mode::rne;
  uint64_t seed = 0;      // rounding == sr
  // rounding == sr: random bits per element, 0 = the exact draw of docs/conventions.md §10 (24 bits
  // of one Philox word per element); R = 1, 2, 4, 8, 16 = §43's R-bit draw (one word serves 32/R elements).
  int sr_bits = 0;
  double power = 0;       // power map exponent A of powA(...); 0 = none
  preset named = preset::none;
  int flex_mantissa_bits = 16, flex_exponent_bits = 5;  // named == flex

  bool operator==(const format&) const = default;
};

// The random bits per element of an R-bit stochastic rounding ~srR (docs/conventions.md §43).
inline bool valid_sr_bits(int r) { return r == 1 || r == 2 || r == 4 || r == 8 || r == 16; }

// Parses a spec; throws format_error naming the position, what was expected, and close names.
format parse_format(std::string_view spec);
// The canonical spelling.
std::string format_name(const format& f);
std::string element_name(const element_format& e);

// Storage cost: element bits plus scale bits per element for groups of K; for row/tensor scales
// the scale cost is reported separately (docs/conventions.md §14).
double bits_per_element(const format& f);
std::string bits_description(const format& f);
int scale_bits(const format& f);

// The element's largest finite magnitude, as used by scale rules (elem_max).
double element_max(const format& f);
// emax_elem of OCP MX: floor(log2(elem_max)).
int element_emax(const format& f);

// A named format of the literature: the name users type, its meaning and source.
struct named_format {
  std::string name;
  std::string description;
};
const std::vector<named_format>& named_formats();

// Default rule for a scale kind: ocp for power-of-two scales, max otherwise.
scale_rule default_rule(const scale_format& s);

}  // namespace lowbit

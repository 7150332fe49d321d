// Hardware cost model: the relative cost of one multiply-accumulate (MAC) of a weight and an
// activation operand, so that every run has a cost next to its quality (issue 6, docs/ptq.md §4.8).
//
// THIS IS OUR MODEL, NOT A PUBLISHED ONE. Aggarwal et al. (arXiv 2311.12359) evaluate against an
// FPGA cost model whose LUT-per-MAC formulas were not retrieved (docs/ptq.md §4.8 "gap"); the formula
// below is the placeholder docs/ptq.md §4.8 suggests, made concrete. It counts area-like cells of a
// bit-level datapath and is normalised so that INT8 x INT8 = 1:
//
//   raw(w, a) = c_mul   * s_w * s_a                       multiplier array (partial-product cells)
//             + c_exp   * (E_w + E_a)                     exponent adder
//             + c_shift * ((s_w + s_a) * ceil(log2 P) + (P - 1))   alignment shifter (log shifter
//                                                         of the product over P positions)
//             + c_acc   * A                               fixed-point (Kulisch) accumulator
//   cost(w, a) = raw(w, a) / raw(int8, int8)
//
// with, per operand,
//   s  significand width: minifloat M + 1 (hidden bit, sign-magnitude); intN: N (two's
//      complement array); uintN: N + 1 (the zero point makes the operand signed); E = 0 for integers
//   P  = p_w + p_a - 1 product exponent positions, p = number of distinct binade positions of the
//      operand's normal exponents (emax - emin_normal + 1; 1 for integers: no shifter when both
//      operands are integers)
//   A  = ceil(log2(max_w * max_a / (minsub_w * minsub_a))) + 1 (sign) + guard_bits: a fixed-point
//      accumulator that holds every product exactly (Kulisch style; docs/ptq.md §4.8's
//      ~2^E_w + 2^E_a + M_w + M_a bits), with guard_bits of headroom for the sum. For INT8 x INT8
//      that is 14 + 1 + 16 = 31 bits (the usual INT32 accumulator).
//
// Parameters (defaults, ours, uncalibrated): c_mul = 1 per partial-product cell (AND + full adder),
// c_exp = 1 per exponent-adder bit, c_shift = 0.5 per 2:1-mux cell (about half a full adder),
// c_acc = 1 per accumulator bit (full adder + register), guard_bits = 16. Calibrate them on real
// synthesis results before quoting absolute ratios.
//
// Mapping of lowbit's element families onto operands:
//   minifloat eEmM (any variant, bf16, fp16, fp32, tf32): as above from its exact limits.
//   intN (incl. MXINT8, ggml's q4_0/q5_0/q8_0/q3_k/q6_k elements, flexN+E's intN): E = 0, one position.
//   uintN: as a signed int of N + 1 bits (w - z).
//   lut (nf4, lut(...)): decoded through a table to an fp16 (e5m10) operand, then as fp16.
//   "" or "-" (no format, the float path): fp32.
// Block/channel scales are applied once per group of products and are NOT counted (their cost
// per MAC shrinks as 1/B); neither are the sign XOR, normalisation or pipeline registers.
#pragma once

#include <string>

#include "lowbit/formats/format.hpp"

namespace lowbit::law {

// The coefficients of the model above (all ours).
struct mac_cost_params {
  double c_mul = 1.0;    // per multiplier partial-product cell
  double c_exp = 1.0;    // per exponent-adder bit
  double c_shift = 0.5;  // per alignment-shifter mux cell
  double c_acc = 1.0;    // per accumulator bit
  int guard_bits = 16;   // accumulator headroom bits for the running sum
};

// One operand as the model sees it.
struct mac_operand {
  std::string element;  // element name it came from
  int significand = 0;  // s
  int exp_bits = 0;     // E (0 for integers)
  int positions = 1;    // p: binade positions of its normal exponents
  double range_log2 = 0;  // log2(max / min_subnormal)
};

// The parts of one MAC's raw cost and the relative cost.
struct mac_cost_breakdown {
  mac_operand weight, act;
  double multiplier = 0, exponent_adder = 0, shifter = 0, accumulator = 0;
  int accumulator_bits = 0;
  double raw = 0;       // sum of the parts (cells)
  double relative = 0;  // raw / raw(int8 x int8)
};

// The operand of a parsed format's element (see the mapping above).
mac_operand mac_operand_of(const format& f);
// The operand of a spec; "" and "-" mean fp32. Throws format_error on a bad spec.
mac_operand mac_operand_of(const std::string& spec);

mac_cost_breakdown mac_cost_detail(const mac_operand& w, const mac_operand& a,
                                   const mac_cost_params& p = {});
mac_cost_breakdown mac_cost_detail(const std::string& weight_spec, const std::string& act_spec,
                                   const mac_cost_params& p = {});

// Relative cost of one multiply-accumulate of these operands, INT8 x INT8 = 1 (our model, above).
double mac_cost(const std::string& weight_spec, const std::string& act_spec);

// One line naming the model and its parameters, for command output.
std::string mac_cost_model_description(const mac_cost_params& p = {});

}  // namespace lowbit::law

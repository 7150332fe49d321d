// The MAC cost model of cost.hpp (ours, docs/ptq.md §4.8 placeholder made concrete).
#include "lowbit/law/cost.hpp"

#include <cmath>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/element.hpp"

namespace lowbit::law {

namespace {

mac_operand operand_of_element(const element_format& e) {
  mac_operand o;
  switch (e.kind) {
    case element_kind::minifloat: {
      const element_limits l = limits_of(e);
      o.element = element_name(e);
      o.significand = e.mbits + 1;
      o.exp_bits = e.ebits;
      o.positions = l.emax - static_cast<int>(std::lround(std::log2(l.min_normal))) + 1;
      o.range_log2 = std::log2(l.max / l.min_subnormal);
      return o;
    }
    case element_kind::int_sym: {
      const element_limits l = limits_of(e);
      o.element = element_name(e);
      o.significand = e.bits;
      o.range_log2 = std::log2(l.max / l.min_subnormal);
      return o;
    }
    case element_kind::uint_asym: {
      // w - z spans a signed range of N + 1 bits.
      mac_operand s = operand_of_element(make_int(e.bits + 1));
      s.element = element_name(e);
      return s;
    }
    case element_kind::lut: {
      // Table lookup to fp16, then an fp16 operand.
      mac_operand s = operand_of_element(make_minifloat(5, 10, float_variant::ieee));
      s.element = element_name(e);
      return s;
    }
  }
  throw error("mac cost: unknown element kind");
}

// The raw cells of one MAC (cost.hpp's formula), relative left 0.
mac_cost_breakdown raw_cost(const mac_operand& w, const mac_operand& a, const mac_cost_params& p) {
  mac_cost_breakdown b;
  b.weight = w, b.act = a;
  b.multiplier = p.c_mul * w.significand * a.significand;
  b.exponent_adder = p.c_exp * (w.exp_bits + a.exp_bits);
  const int positions = w.positions + a.positions - 1;
  if (positions > 1) {
    const int stages = static_cast<int>(std::ceil(std::log2(static_cast<double>(positions))));
    b.shifter = p.c_shift * ((w.significand + a.significand) * stages + (positions - 1));
  }
  // -1e-9: an exact power-of-two range ratio must not round up through float noise.
  b.accumulator_bits = static_cast<int>(std::ceil(w.range_log2 + a.range_log2 - 1e-9)) + 1 + p.guard_bits;
  b.accumulator = p.c_acc * b.accumulator_bits;
  b.raw = b.multiplier + b.exponent_adder + b.shifter + b.accumulator;
  return b;
}

}  // namespace

mac_operand mac_operand_of(const format& f) { return operand_of_element(f.element); }

mac_operand mac_operand_of(const std::string& spec) {
  if (spec.empty() || spec == "-") return operand_of_element(make_minifloat(8, 23, float_variant::ieee));
  return mac_operand_of(parse_format(spec));
}

mac_cost_breakdown mac_cost_detail(const mac_operand& w, const mac_operand& a, const mac_cost_params& p) {
  if (p.c_mul < 0 || p.c_exp < 0 || p.c_shift < 0 || p.c_acc < 0 || p.guard_bits < 0)
    throw error("mac cost: the model's coefficients and guard bits must be >= 0");
  mac_cost_breakdown b = raw_cost(w, a, p);
  const mac_operand i8 = operand_of_element(make_int(8));
  const double ref = raw_cost(i8, i8, p).raw;  // INT8 x INT8 under the same parameters
  if (!(ref > 0)) throw error("mac cost: INT8 x INT8 costs nothing under these parameters; nothing to normalise by");
  b.relative = b.raw / ref;
  return b;
}

mac_cost_breakdown mac_cost_detail(const std::string& weight_spec, const std::string& act_spec,
                                   const mac_cost_params& p) {
  return mac_cost_detail(mac_operand_of(weight_spec), mac_operand_of(act_spec), p);
}

double mac_cost(const std::string& weight_spec, const std::string& act_spec) {
  return mac_cost_detail(weight_spec, act_spec).relative;
}

std::string mac_cost_model_description(const mac_cost_params& p) {
  return fmt::format(
      "MAC cost: OUR MODEL (not a published one; docs/ptq.md §4.8): c_mul*s_w*s_a + c_exp*(E_w+E_a) + "
      "c_shift*((s_w+s_a)*ceil(log2 P)+P-1) + c_acc*(Kulisch accumulator bits), relative to INT8 x INT8; "
      "c_mul={} c_exp={} c_shift={} c_acc={} guard_bits={}",
      p.c_mul, p.c_exp, p.c_shift, p.c_acc, p.guard_bits);
}

}  // namespace lowbit::law

// The MAC cost model (ours, cost.hpp): normalisation, the worked cells of its formula, and the
// orderings any such model must have.
#include <gtest/gtest.h>

#include "lowbit/base/error.hpp"
#include "lowbit/law/cost.hpp"

using namespace lowbit;
using namespace lowbit::law;

TEST(MacCost, Int8TimesInt8IsOne) {
  EXPECT_DOUBLE_EQ(mac_cost("int8", "int8"), 1.0);
  EXPECT_DOUBLE_EQ(mac_cost("int8/c", "int8/g128"), 1.0);  // scales are not counted
  const mac_cost_breakdown b = mac_cost_detail("int8", "int8");
  EXPECT_DOUBLE_EQ(b.multiplier, 64);            // 8 x 8 partial products
  EXPECT_EQ(b.accumulator_bits, 14 + 1 + 16);    // ceil(log2 127^2) + sign + guard = INT32-like
  EXPECT_DOUBLE_EQ(b.shifter, 0);
  EXPECT_DOUBLE_EQ(b.exponent_adder, 0);
}

TEST(MacCost, WorkedE4M3) {
  // E4M3 (OCP fn): s = 4, E = 4, exponents -6..8 = 15 positions, range 448 / 2^-9.
  const mac_cost_breakdown b = mac_cost_detail("e4m3", "e4m3");
  EXPECT_EQ(b.weight.significand, 4);
  EXPECT_EQ(b.weight.positions, 15);
  EXPECT_DOUBLE_EQ(b.multiplier, 16);
  EXPECT_DOUBLE_EQ(b.exponent_adder, 8);
  // P = 29 positions, 5 stages: 0.5 * (8 * 5 + 28)
  EXPECT_DOUBLE_EQ(b.shifter, 0.5 * (8 * 5 + 28));
  // log2(448^2 * 2^18) = 35.6 -> 36 + 1 + 16
  EXPECT_EQ(b.accumulator_bits, 53);
  EXPECT_NEAR(b.relative, (16 + 8 + 34 + 53) / 95.0, 1e-12);
}

TEST(MacCost, Orderings) {
  EXPECT_LT(mac_cost("int4", "int4"), mac_cost("int8", "int8"));
  EXPECT_LT(mac_cost("int4", "int8"), mac_cost("int8", "int8"));
  EXPECT_LT(mac_cost("e2m1", "e2m1"), mac_cost("e4m3", "e4m3"));
  EXPECT_LT(mac_cost("e4m3", "e4m3"), mac_cost("e5m2", "e5m2"));  // wider exponent, wider accumulator
  EXPECT_GT(mac_cost("e4m3", "e4m3"), mac_cost("int8", "int8"));  // FP8 dearer than INT8 (van Baalen)
  EXPECT_LT(mac_cost("bf16", "bf16"), mac_cost("fp32", "fp32"));
  EXPECT_DOUBLE_EQ(mac_cost("int4", "e4m3"), mac_cost("e4m3", "int4"));  // symmetric
  EXPECT_DOUBLE_EQ(mac_cost("int4/g32", ""), mac_cost("int4", "fp32"));  // "" = the fp32 path
  EXPECT_DOUBLE_EQ(mac_cost("int4/g32", "-"), mac_cost("int4", "fp32"));
  EXPECT_DOUBLE_EQ(mac_cost("nf4", "bf16"), mac_cost("fp16", "bf16"));  // LUT -> fp16 operand
  EXPECT_DOUBLE_EQ(mac_cost("uint4", "int8"), mac_cost("int5", "int8"));  // w - z is signed N+1
  EXPECT_DOUBLE_EQ(mac_cost("mxfp4", "mxfp4"), mac_cost("e2m1", "e2m1"));
}

TEST(MacCost, Parameters) {
  mac_cost_params p;
  p.c_shift = 0, p.c_exp = 0, p.c_acc = 0;  // multiplier only: (M+1)^2 / 64
  EXPECT_DOUBLE_EQ(mac_cost_detail("e4m3", "e4m3", p).relative, 16.0 / 64.0);
  p.c_acc = -1;
  EXPECT_THROW(mac_cost_detail("e4m3", "e4m3", p), error);
  EXPECT_THROW(mac_cost("mxfp5", "int8"), format_error);
  EXPECT_NE(mac_cost_model_description().find("OUR MODEL"), std::string::npos);
}

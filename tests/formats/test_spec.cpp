// The format spec grammar: canonical printing, lossless round trips, and clear errors (with a
// bounded fuzz test: nothing crashes, every failure is a lowbit::format_error).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"

using namespace lowbit;

namespace {

std::string canon(const std::string& s) { return format_name(parse_format(s)); }

std::string error_of(const std::string& s) {
  try {
    parse_format(s);
  } catch (const format_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Spec, CanonicalNames) {
  EXPECT_EQ(canon("e4m3"), "e4m3fn");
  EXPECT_EQ(canon("fp8_e4m3"), "e4m3fn");
  EXPECT_EQ(canon("fp8_e5m2"), "e5m2");
  EXPECT_EQ(canon("e5m2ieee"), "e5m2");
  EXPECT_EQ(canon("e2m1finite"), "e2m1");
  EXPECT_EQ(canon("e8m7"), "bf16");
  EXPECT_EQ(canon("e5m10ieee"), "fp16");
  EXPECT_EQ(canon("e8m23"), "fp32");
  EXPECT_EQ(canon("e8m10"), "tf32");
  EXPECT_EQ(canon("mxfp4"), "e2m1/g32:e8m0");
  EXPECT_EQ(canon("mxfp8"), "e4m3fn/g32:e8m0");
  EXPECT_EQ(canon("mxfp6_e2m3"), "e2m3/g32:e8m0");
  EXPECT_EQ(canon("nf4"), "nf4/g64");
  EXPECT_EQ(canon("nf4/g128:fp16"), "nf4/g128:fp16");
  EXPECT_EQ(canon("int4/g128:fp32@max~rne"), "int4/g128");
  EXPECT_EQ(canon("e2m1/g32:e8m0@ocp"), "e2m1/g32:e8m0");
  EXPECT_EQ(canon("e2m1/g32:e8m0@rceil"), "e2m1/g32:e8m0@rceil");
  EXPECT_EQ(canon("e2m1/g32~sr"), "e2m1/g32~sr");
  EXPECT_EQ(canon("e2m1/g32~sr:7"), "e2m1/g32~sr:7");
  EXPECT_EQ(canon("e4m3fn(bias=7)"), "e4m3fn");
  EXPECT_EQ(canon("e4m3fnuz(bias=8)"), "e4m3fnuz");
  EXPECT_EQ(canon("e4m3(bias=6,subnormals=off)"), "e4m3fn(bias=6,subnormals=off)");
  EXPECT_EQ(canon("e5m2(overflow=inf)"), "e5m2(overflow=inf)");
  EXPECT_EQ(canon("mxfp4~sr"), "e2m1/g32:e8m0~sr");
  EXPECT_EQ(canon("nvfp4"), "nvfp4");
  EXPECT_EQ(canon("nvfp4~sr:3"), "nvfp4~sr:3");
  EXPECT_EQ(canon("q4_0"), "q4_0");
  EXPECT_EQ(canon("mxint8"), "mxint8");
  EXPECT_EQ(canon("flex16+5"), "flex16+5");
  EXPECT_EQ(canon("pow0.5(int4/g128)"), "pow0.5(int4/g128)");
  EXPECT_EQ(canon("lut(1, -1, 0.5)"), "lut(-1,0.5,1)");
  EXPECT_EQ(canon("uint4/c:fp16@mse"), "uint4/c:fp16@mse");
  EXPECT_EQ(canon("int8/t@p99.9"), "int8/t@p99.9");
  EXPECT_EQ(canon("e4m3/g16:ue4m3"), "e4m3fn/g16:e4m3fn");
}

TEST(Spec, RoundTripIsLossless) {
  const char* specs[] = {"int2", "int16", "uint3/g7", "e1m0", "e1m6", "e3m4fnuz(bias=2)",
                         "e5m2fn", "e6m1ieee(subnormals=off,overflow=nan)", "e2m1/g9:e4m3@mse~rtz",
                         "int8/c:bf16@p99.99~sr:123", "e4m3fn/t:pow2@even~odd", "e4m3fn/g32:e8m0@ceil~up",
                         "mxint8~down", "flex8+4", "pow2(e2m1/g16:fp16)", "lut(-0.5,0.25,3)/g3",
                         "nf4/c", "bf16/g64:e8m0@rceil", "e3m2/t:fp16", "tf32", "e7m0"};
  for (const char* s : specs) {
    SCOPED_TRACE(s);
    const format f = parse_format(s);
    const std::string name = format_name(f);
    const format g = parse_format(name);
    EXPECT_TRUE(f == g) << name;
    EXPECT_EQ(format_name(g), name);
  }
}

TEST(Spec, ErrorsNamePositionExpectationAndSuggestions) {
  std::string e = error_of("e4m3fx");
  EXPECT_NE(e.find("variant"), std::string::npos) << e;
  e = error_of("mxfp5");
  EXPECT_NE(e.find("position 1"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean"), std::string::npos) << e;
  EXPECT_NE(e.find("mxfp4"), std::string::npos) << e;
  e = error_of("int4/g0");
  EXPECT_NE(e.find("at least 1"), std::string::npos) << e;
  e = error_of("e9m2");
  EXPECT_NE(e.find("1..8"), std::string::npos) << e;
  e = error_of("e4m24");
  EXPECT_NE(e.find("0..23"), std::string::npos) << e;
  e = error_of("int4/g32:e1m1(bias=1)");  // values 0.5, 1, 1.5: nothing >= 2
  EXPECT_NE(e.find("no positive powers"), std::string::npos) << e;
  e = error_of("int4:fp16");
  EXPECT_NE(e.find("needs a group"), std::string::npos) << e;
  e = error_of("e4m3fn(overflow=inf)");
  EXPECT_NE(e.find("infinities"), std::string::npos) << e;
  e = error_of("e2m1(overflow=nan)");
  EXPECT_NE(e.find("NaN code"), std::string::npos) << e;
  e = error_of("e8m7(bias=300)");
  EXPECT_NE(e.find("float32"), std::string::npos) << e;
  e = error_of("int4/g32:e8m0@max");
  EXPECT_NE(e.find("power-of-two"), std::string::npos) << e;
  e = error_of("mxfp4/g16");
  EXPECT_NE(e.find("fixes its group"), std::string::npos) << e;
  e = error_of("int4/g32~sr:x");
  EXPECT_NE(e.find("seed"), std::string::npos) << e;
  e = error_of("");
  EXPECT_FALSE(e.empty());
  e = error_of("int1");
  EXPECT_NE(e.find("2..16"), std::string::npos) << e;
  e = error_of("lut(1,1)");
  EXPECT_NE(e.find("twice"), std::string::npos) << e;
  e = error_of("pow0.5(int4)");
  EXPECT_NE(e.find("group"), std::string::npos) << e;
  e = error_of("e8m0");
  EXPECT_NE(e.find("scale format"), std::string::npos) << e;
  e = error_of("int4/g32:e8m0ieee");
  EXPECT_NE(e.find("e8m0"), std::string::npos) << e;
  e = error_of("e04m3");
  EXPECT_FALSE(e.empty());
  e = error_of("int4/g32@p0");
  EXPECT_NE(e.find("percentile"), std::string::npos) << e;
  e = error_of("q8_0~sr");
  EXPECT_NE(e.find("rounding"), std::string::npos) << e;
}

// The R-bit stochastic rounding ~srR (docs/conventions.md §43): R is part of the format, prints
// back as written, and is distinct from the exact ~sr; R outside {1, 2, 4, 8, 16} is refused.
TEST(Spec, StochasticRoundingWithRBitsRoundTrips) {
  EXPECT_EQ(canon("e2m1/g32~sr8"), "e2m1/g32~sr8");
  EXPECT_EQ(canon("mxfp4~sr16:7"), "e2m1/g32:e8m0~sr16:7");
  EXPECT_EQ(canon("nvfp4~sr8:3"), "nvfp4~sr8:3");
  EXPECT_EQ(canon("int8/c~sr1"), "int8/c~sr1");
  EXPECT_EQ(parse_format("e2m1/g32~sr8").sr_bits, 8);
  EXPECT_EQ(parse_format("e2m1/g32~sr16:4").sr_bits, 16);
  EXPECT_EQ(parse_format("e2m1/g32~sr16:4").seed, 4u);
  EXPECT_EQ(parse_format("e2m1/g32~sr").sr_bits, 0);
  EXPECT_FALSE(parse_format("e2m1/g32~sr8") == parse_format("e2m1/g32~sr"));
  EXPECT_FALSE(parse_format("e2m1/g32~sr8") == parse_format("e2m1/g32~sr16"));
  for (const char* s : {"e2m1/g32~sr2", "e4m3fn/t~sr4:9", "nvfp4~sr16", "e4m3fn/g32:e8m0~sr8:18446744073709551615"}) {
    SCOPED_TRACE(s);
    const format f = parse_format(s);
    EXPECT_EQ(format_name(f), s);
    EXPECT_TRUE(parse_format(format_name(f)) == f);
  }
  for (const char* bad : {"e2m1/g32~sr3", "e2m1/g32~sr0", "e2m1/g32~sr32", "e2m1/g32~sr24", "e2m1/g32~sr08",
                          "e2m1/g32~sr8x", "e2m1/g32~sr99999999999"}) {
    const std::string e = error_of(bad);
    EXPECT_NE(e.find("1, 2, 4, 8 or 16"), std::string::npos) << bad << ": " << e;
  }
  EXPECT_NE(error_of("q8_0~sr8").find("rounding"), std::string::npos);
  EXPECT_NE(error_of("int4/g32~sr8:x").find("seed"), std::string::npos);
}

TEST(Spec, BitsPerElement) {
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("mxfp4")), 4.25);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("mxfp8")), 8.25);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("mxint8")), 8.25);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("nvfp4")), 4.5);
  EXPECT_EQ(bits_description(parse_format("nvfp4")), "4.5 +32/tensor");
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("nf4")), 4.5);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("q4_0")), 4.5);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("q8_0")), 8.5);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("int4/g128")), 4.25);
  EXPECT_DOUBLE_EQ(bits_per_element(parse_format("uint4/g128:fp16")), 4 + 20.0 / 128);
  EXPECT_EQ(bits_description(parse_format("int8/c")), "8 +32/row");
  EXPECT_EQ(bits_description(parse_format("e4m3fn/t")), "8 +32/tensor");
  EXPECT_EQ(bits_description(parse_format("flex16+5")), "16 +5/tensor");
}

TEST(Spec, EveryNamedFormatParses) {
  for (const auto& n : named_formats()) {
    SCOPED_TRACE(n.name);
    const format f = parse_format(n.name);
    EXPECT_TRUE(parse_format(format_name(f)) == f);
  }
}

// Bounded fuzz: random mutations of valid specs and random strings either parse (and then round
// trip) or throw format_error; nothing else escapes and nothing crashes.
TEST(Spec, FuzzNeverCrashes) {
  const std::string seeds[] = {"e4m3fn/g32:e8m0@ocp~sr:5", "int4/g128:fp16@mse", "pow0.5(e2m1/g16)",
                               "lut(-1,0,1)/c", "nvfp4~rtz", "flex16+5", "e3m2fnuz(bias=3,subnormals=off)"};
  const std::string alphabet = "eimntfuzg0123456789/:@~()=,.+-_abcdlprsox";
  std::mt19937 gen(1234);
  int parsed = 0, rejected = 0;
  for (int it = 0; it < 20000; ++it) {
    std::string s = seeds[gen() % std::size(seeds)];
    const int edits = 1 + static_cast<int>(gen() % 4);
    for (int k = 0; k < edits; ++k) {
      const size_t pos = s.empty() ? 0 : gen() % (s.size() + 1);
      switch (gen() % 3) {
        case 0: s.insert(s.begin() + static_cast<long>(pos), alphabet[gen() % alphabet.size()]); break;
        case 1: if (pos < s.size()) s.erase(pos, 1); break;
        default: if (pos < s.size()) s[pos] = alphabet[gen() % alphabet.size()]; break;
      }
    }
    try {
      const format f = parse_format(s);
      EXPECT_TRUE(parse_format(format_name(f)) == f) << s << " -> " << format_name(f);
      ++parsed;
    } catch (const format_error&) {
      ++rejected;
    }
  }
  EXPECT_GT(parsed, 100);
  EXPECT_GT(rejected, 100);
}

// A hostile spec (from a model file's packed-format metadata, a rules file or a results
// database) must not exhaust the stack: 20,000 nested power maps are refused like two.
TEST(Spec, DeeplyNestedPowerMapsAreRefusedNotACrash) {
  std::string spec;
  for (int i = 0; i < 20000; ++i) spec += "pow0.5(";
  spec += "int4/g32";
  for (int i = 0; i < 20000; ++i) spec += ")";
  try {
    parse_format(spec);
    FAIL() << "a nested power map was accepted";
  } catch (const lowbit::format_error& e) {
    EXPECT_NE(std::string(e.what()).find("another power map"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_format("pow0.5(pow0.5(int4/g32))"), lowbit::format_error);
  EXPECT_NO_THROW(parse_format("pow0.5(int4/g32)"));
}

// The format spec grammar: parser with positioned, suggestive errors, and the canonical printer.
// Names follow the ecosystem (OCP, ml_dtypes, ggml, bitsandbytes); see format.hpp for the grammar.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"

namespace lowbit {

namespace {

// ---- the named formats: aliases expand to a spec, presets to a descriptor ----------------------
struct alias_entry {
  const char* name;
  const char* expansion;  // a spec in the generic grammar, or "" for presets built in code
  const char* description;
};

const alias_entry kAliases[] = {
    {"fp8_e4m3", "e4m3fn", "OCP FP8 E4M3 (no Inf, NaN = S.1111.111), max 448"},
    {"fp8_e5m2", "e5m2", "OCP FP8 E5M2 (IEEE-like), max 57344"},
    {"e4m3fnuz", "e4m3fnuz", "Graphcore/AMD FP8 E4M3 FNUZ (bias 8, single NaN 0x80), max 240"},
    {"e5m2fnuz", "e5m2fnuz", "Graphcore/AMD FP8 E5M2 FNUZ (bias 16, single NaN 0x80), max 57344"},
    {"fp6_e3m2", "e3m2", "OCP MX FP6 E3M2 element (all finite), max 28"},
    {"fp6_e2m3", "e2m3", "OCP MX FP6 E2M3 element (all finite), max 7.5"},
    {"fp4_e2m1", "e2m1", "OCP MX / NVFP4 FP4 E2M1 element (all finite), max 6"},
    {"mxfp8", "e4m3fn/g32:e8m0", "OCP MXFP8 (E4M3 elements, blocks of 32, E8M0 scale)"},
    {"mxfp8_e4m3", "e4m3fn/g32:e8m0", "OCP MXFP8 with E4M3 elements"},
    {"mxfp8_e5m2", "e5m2/g32:e8m0", "OCP MXFP8 with E5M2 elements"},
    {"mxfp6_e3m2", "e3m2/g32:e8m0", "OCP MXFP6 with E3M2 elements"},
    {"mxfp6_e2m3", "e2m3/g32:e8m0", "OCP MXFP6 with E2M3 elements"},
    {"mxfp4", "e2m1/g32:e8m0", "OCP MXFP4 (E2M1 elements, blocks of 32, E8M0 scale)"},
    {"mxint8", "", "OCP MXINT8 (int8 x 2^-6, symmetric -127..127, blocks of 32, E8M0 scale)"},
    {"nvfp4", "", "NVIDIA NVFP4: E2M1 in blocks of 16, E4M3 block scale, FP32 tensor scale"},
    {"nf4", "nf4/g64:fp32", "QLoRA NormalFloat4 in blocks of 64 with an FP32 absmax"},
    {"q4_0", "", "ggml Q4_0 block layout: 32 x 4-bit (q-8)*d, fp16 d = max/-8"},
    {"q4_1", "", "ggml Q4_1 block layout: 32 x 4-bit q*d + m, fp16 d = (max-min)/15, fp16 m = min"},
    {"q5_0", "", "ggml Q5_0 block layout: 32 x 5-bit (q-16)*d, fp16 d = max/-16"},
    {"q5_1", "", "ggml Q5_1 block layout: 32 x 5-bit q*d + m, fp16 d = (max-min)/31, fp16 m = min"},
    {"q8_0", "", "ggml Q8_0 block layout: 32 x int8 q*d, fp16 d = amax/127"},
    {"q2_k", "", "ggml Q2_K: super-blocks of 256, 16 x 16 x 2-bit d*sc*q - dmin*m, 4-bit sc/m, fp16 d/dmin"},
    {"q3_k", "", "ggml Q3_K: super-blocks of 256, 16 x 16 x 3-bit d*sc*(q-4), 6-bit sc, fp16 d"},
    {"q4_k", "", "ggml Q4_K: super-blocks of 256, 8 x 32 x 4-bit d*sc*q - dmin*m, 6-bit sc/m, fp16 d/dmin"},
    {"q5_k", "", "ggml Q5_K: super-blocks of 256, 8 x 32 x 5-bit d*sc*q - dmin*m, 6-bit sc/m, fp16 d/dmin"},
    {"q6_k", "", "ggml Q6_K: super-blocks of 256, 16 x 16 x 6-bit d*sc*(q-32), int8 sc, fp16 d"},
    {"flex16+5", "", "Flexpoint (Koster et al. 2017): int16 mantissas, one 5-bit shared exponent"},
    {"bf16", "bf16", "bfloat16 (e8m7 ieee)"},
    {"fp16", "fp16", "IEEE binary16 (e5m10 ieee)"},
    {"tf32", "tf32", "NVIDIA TensorFloat-32 (e8m10 ieee)"},
    {"fp32", "fp32", "IEEE binary32 (e8m23 ieee)"},
    {"e4m3fn", "e4m3fn", "OCP FP8 E4M3"},
    {"e5m2", "e5m2", "OCP FP8 E5M2"},
    {"e3m2", "e3m2", "FP6 E3M2 (all finite)"},
    {"e2m3", "e2m3", "FP6 E2M3 (all finite)"},
    {"e2m1", "e2m1", "FP4 E2M1 (all finite)"},
    {"int8", "int8", "symmetric int8, levels -127..127"},
    {"int4", "int4", "symmetric int4, levels -7..7"},
    {"uint8", "uint8", "asymmetric uint8 with a zero point (min-max)"},
    {"uint4", "uint4", "asymmetric uint4 with a zero point (min-max)"},
    {"int8/c", "int8/c", "int8, one fp32 scale per row (channel)"},
    {"int4/g128", "int4/g128", "int4, fp32 scale per 128 elements (GPTQ/AWQ-style groups)"},
    {"e4m3fn/t", "e4m3fn/t", "FP8 E4M3 with one fp32 scale per tensor"},
    {"e4m3fn/c", "e4m3fn/c", "FP8 E4M3 with one fp32 scale per row"},
};

const char* kWords[] = {"int",  "uint", "nf4",   "lut",  "pow",  "bf16", "fp16", "fp32", "tf32",
                        "fn",   "fnuz", "ieee",  "finite", "e8m0", "pow2", "max",  "mse",  "ocp",
                        "ceil", "rceil", "even", "rne",  "rna",  "rtz",  "up",   "down", "odd", "sr",
                        "bias", "subnormals", "overflow", "saturate", "inf", "nan", "on", "off"};

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t prev = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cur = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] != b[j - 1])});
      prev = cur;
    }
  }
  return row[b.size()];
}

std::string suggestions(std::string_view word) {
  std::vector<std::pair<size_t, std::string>> scored;
  auto consider = [&](std::string_view cand) {
    const size_t d = edit_distance(word, cand);
    if (d <= std::max<size_t>(2, cand.size() / 3)) scored.emplace_back(d, std::string(cand));
  };
  for (const auto& a : kAliases) consider(a.name);
  for (const char* w : kWords) consider(w);
  std::sort(scored.begin(), scored.end());
  scored.erase(std::unique(scored.begin(), scored.end()), scored.end());
  if (scored.empty()) return {};
  std::string out = "; did you mean ";
  for (size_t i = 0; i < std::min<size_t>(3, scored.size()); ++i) {
    if (i) out += i + 1 == std::min<size_t>(3, scored.size()) ? " or " : ", ";
    out += "'" + scored[i].second + "'";
  }
  return out + "?";
}

// ggml's fp16 block scale: IEEE binary16, RNE, overflow to Inf (GGML_FP32_TO_FP16).
element_format ggml_fp16() {
  return make_minifloat(5, 10, float_variant::ieee, 15, true, overflow_policy::inf);
}

// ggml's block formats (ggml-common.h): the codes each stores per value, the group lowbit scales
// by (the block of 32; a K-quant's sub-block, whose super-block of 256 holds 8 or 16 of them) and
// the bytes of one ggml block, which fix the bits per weight.
struct ggml_preset {
  const char* name;
  preset named;
  int bits;
  bool signed_codes;  // the element lowbit decodes the code with: intN (q - zero point) or uintN (q)
  int group;
  int block_values, block_bytes;
};
constexpr ggml_preset kGgmlPresets[] = {
    {"q4_0", preset::q4_0, 4, true, 32, 32, 18},    {"q4_1", preset::q4_1, 4, false, 32, 32, 20},
    {"q5_0", preset::q5_0, 5, true, 32, 32, 22},    {"q5_1", preset::q5_1, 5, false, 32, 32, 24},
    {"q8_0", preset::q8_0, 8, true, 32, 32, 34},    {"q2_k", preset::q2_k, 2, false, 16, 256, 84},
    {"q3_k", preset::q3_k, 3, true, 16, 256, 110},  {"q4_k", preset::q4_k, 4, false, 32, 256, 144},
    {"q5_k", preset::q5_k, 5, false, 32, 256, 176}, {"q6_k", preset::q6_k, 6, true, 16, 256, 210},
};

const ggml_preset* ggml_preset_named(std::string_view w) {
  for (const auto& g : kGgmlPresets)
    if (w == g.name) return &g;
  return nullptr;
}
const ggml_preset* ggml_preset_of(preset p) {
  for (const auto& g : kGgmlPresets)
    if (p == g.named) return &g;
  return nullptr;
}

class spec_parser {
 public:
  explicit spec_parser(std::string_view s) : s_(s) {}

  format parse_all() {
    if (s_.empty()) fail("a format (e.g. e4m3fn, int4/g128, mxfp4)");
    format f = parse_format_expr();
    if (pos_ != s_.size()) fail("end of the spec or one of / : @ ~");
    return f;
  }

 private:
  std::string_view s_;
  size_t pos_ = 0;
  bool inside_pow_ = false;  // parsing the inner format of pow(...)

  [[noreturn]] void fail(std::string_view expected, std::string_view extra = {}) const {
    std::string found = pos_ < s_.size() ? fmt::format("'{}'", s_.substr(pos_)) : "the end";
    throw format_error(fmt::format("bad format spec '{}' at position {}: expected {}, found {}{}",
                                   s_, pos_ + 1, expected, found, extra));
  }
  [[noreturn]] void fail_word(std::string_view expected, std::string_view word) const {
    throw format_error(fmt::format("bad format spec '{}' at position {}: expected {}, found '{}'{}", s_,
                                   pos_ + 1 - word.size(), expected, word, suggestions(word)));
  }
  [[noreturn]] void fail_at(size_t at, const std::string& what) const {
    throw format_error(fmt::format("bad format spec '{}' at position {}: {}", s_, at + 1, what));
  }

  bool eat(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool starts(std::string_view w) const { return s_.substr(pos_, w.size()) == w; }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }

  // Identifier: letters, digits, '_' and '+' (flex16+5), stopping at the grammar's separators.
  std::string_view word() {
    const size_t b = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_' ||
                                s_[pos_] == '+' || s_[pos_] == '.'))
      ++pos_;
    return s_.substr(b, pos_ - b);
  }

  int64_t integer(std::string_view what) {
    const size_t b = pos_;
    while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) || (pos_ == b && s_[pos_] == '-')))
      ++pos_;
    int64_t v = 0;
    auto [p, ec] = std::from_chars(s_.data() + b, s_.data() + pos_, v);
    if (ec != std::errc() || p != s_.data() + pos_ || b == pos_) {
      pos_ = b;
      fail(what);
    }
    return v;
  }

  double number(std::string_view what) {
    const size_t b = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.' ||
                                s_[pos_] == '-' || s_[pos_] == '+'))
      ++pos_;
    const std::string text(s_.substr(b, pos_ - b));
    char* end = nullptr;
    const double v = text.empty() ? 0.0 : std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size()) {
      pos_ = b;
      fail(what);
    }
    return v;
  }

  // Parses "eEmM[variant][(opts)]" after the word was read whole (e.g. "e4m3fnuz").
  element_format minifloat_from_word(std::string_view w, size_t word_start) {
    // w = e<digits>m<digits><variant?>
    size_t i = 1;
    auto digits = [&](size_t& k) {
      const size_t b = k;
      while (k < w.size() && std::isdigit(static_cast<unsigned char>(w[k]))) ++k;
      if (b == k || k - b > 3) return -1;
      if (k - b > 1 && w[b] == '0') return -1;  // no leading zeros: one spelling per format
      return std::stoi(std::string(w.substr(b, k - b)));
    };
    const int E = digits(i);
    if (E < 0 || i >= w.size() || w[i] != 'm') fail_word("an element like e4m3 or int8", w);
    ++i;
    const int M = digits(i);
    if (M < 0) fail_word("mantissa bits after 'm' (e.g. e4m3)", w);
    const std::string_view suffix = w.substr(i);
    if (E < 1 || E > 8) fail_at(word_start, fmt::format("exponent bits E = {} must be in 1..8", E));
    if (M < 0 || M > 23) fail_at(word_start, fmt::format("mantissa bits M = {} must be in 0..23", M));
    float_variant v;
    if (suffix.empty()) v = default_variant(E, M);
    else if (suffix == "fn") v = float_variant::fn;
    else if (suffix == "fnuz") v = float_variant::fnuz;
    else if (suffix == "ieee") v = float_variant::ieee;
    else if (suffix == "finite") v = float_variant::finite;
    else {
      pos_ = word_start + 1 + (i - 1) + suffix.size();
      fail_word("a variant fn, fnuz, ieee or finite", suffix);
    }
    int bias = default_bias(E, v);
    bool subnormals = true;
    overflow_policy overflow = overflow_policy::saturate;
    if (eat('(')) {
      do {
        const size_t key_at = pos_;
        const std::string_view key = word();
        if (!eat('=')) fail("'=' after an option name");
        if (key == "bias") {
          bias = static_cast<int>(integer("an integer bias"));
        } else if (key == "subnormals") {
          const std::string_view val = word();
          if (val == "on") subnormals = true;
          else if (val == "off") subnormals = false;
          else fail_word("on or off", val);
        } else if (key == "overflow") {
          const std::string_view val = word();
          if (val == "saturate") overflow = overflow_policy::saturate;
          else if (val == "inf") overflow = overflow_policy::inf;
          else if (val == "nan") overflow = overflow_policy::nan;
          else fail_word("saturate, inf or nan", val);
        } else {
          pos_ = key_at + key.size();
          fail_word("an option bias=K, subnormals=on|off or overflow=saturate|inf|nan", key);
        }
      } while (eat(','));
      if (!eat(')')) fail("',' or ')' to close the options");
    }
    try {
      return make_minifloat(E, M, v, bias, subnormals, overflow);
    } catch (const format_error& e) {
      fail_at(word_start, e.what());
    }
  }

  element_format element(std::string_view w, size_t at) {
    if (w == "bf16") return make_minifloat(8, 7, float_variant::ieee);
    if (w == "fp16") return make_minifloat(5, 10, float_variant::ieee);
    if (w == "fp32") return make_minifloat(8, 23, float_variant::ieee);
    if (w == "tf32") return make_minifloat(8, 10, float_variant::ieee);
    if (w == "nf4") return make_nf4();
    if (w == "ue4m3" || w == "ue8m0") fail_word("an element (ue4m3/e8m0 are scale formats: write ':e4m3' or ':e8m0')", w);
    if (w == "lut") {
      if (!eat('(')) fail("'(' and the values of lut(v1,v2,...)");
      std::vector<float> values;
      do {
        while (peek() == ' ') ++pos_;
        const size_t b = pos_;
        const double v = number("a number in lut(...)");
        while (peek() == ' ') ++pos_;
        if (!std::isfinite(v)) {
          pos_ = b;
          fail("a finite number in lut(...)");
        }
        values.push_back(static_cast<float>(v));
      } while (eat(','));
      if (!eat(')')) fail("',' or ')' to close lut(...)");
      try {
        return make_lut(std::move(values));
      } catch (const format_error& e) {
        fail_at(at, e.what());
      }
    }
    auto int_bits = [&](size_t prefix) -> int {
      const std::string_view d = w.substr(prefix);
      int n = 0;
      auto [p, ec] = std::from_chars(d.data(), d.data() + d.size(), n);
      if (ec != std::errc() || p != d.data() + d.size()) fail_word("an element like int8 or uint4", w);
      if (n < 2 || n > 16) fail_at(at, fmt::format("{}: integer bits must be in 2..16", w));
      return n;
    };
    if (w.size() > 4 && w.substr(0, 4) == "uint") return make_uint(int_bits(4));
    if (w.size() > 3 && w.substr(0, 3) == "int") return make_int(int_bits(3));
    if (w.size() > 1 && w[0] == 'e' && std::isdigit(static_cast<unsigned char>(w[1]))) {
      if (w == "e8m0") fail_word("an element (e8m0 is only a scale format: write ':e8m0')", w);
      return minifloat_from_word(w, at);
    }
    fail_word("an element (intN, uintN, eEmM, nf4, lut(...), bf16, fp16, fp32, tf32) or a named format", w);
  }

  scale_format scale() {
    const size_t at = pos_;
    const std::string_view w = word();
    scale_format s;
    if (w == "e8m0" || w == "ue8m0") {
      s.kind = scale_kind::e8m0;
      return s;
    }
    if (w == "pow2") {
      s.kind = scale_kind::pow2;
      return s;
    }
    if (w.empty()) fail("a scale format (fp32, fp16, bf16, e8m0, pow2, e4m3, ...)");
    s.kind = scale_kind::element;
    s.element = element(w == "ue4m3" ? std::string_view("e4m3") : w, at);
    if (s.element.kind == element_kind::minifloat && s.element.ebits == 8 && s.element.mbits == 0)
      fail_at(at, "an 8-bit exponent-only scale is OCP's e8m0 (write ':e8m0') or ':pow2'");
    if (s.element.kind != element_kind::minifloat)
      fail_at(at, fmt::format("scale format '{}' must be a float format (fp32, fp16, bf16, e4m3, e8m0, pow2, eEmM)", w));
    if (limits_of(s.element).max < 2)
      fail_at(at, fmt::format("scale format '{}' has no positive powers of two (largest value {}); it cannot scale "
                              "a group up", w, limits_of(s.element).max));
    return s;
  }

  void rule(format& f) {
    const std::string_view w = word();
    if (w == "max") f.rule = scale_rule::max;
    else if (w == "mse") f.rule = scale_rule::mse;
    else if (w == "ocp") f.rule = scale_rule::ocp;
    else if (w == "ceil") f.rule = scale_rule::ceil;
    else if (w == "rceil") f.rule = scale_rule::rceil;
    else if (w == "even") f.rule = scale_rule::even;
    else if (w.size() > 1 && w[0] == 'p' && (std::isdigit(static_cast<unsigned char>(w[1])))) {
      const std::string text(w.substr(1));
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      if (end != text.c_str() + text.size() || !(v > 0 && v <= 100))
        fail_word("a percentile pNN.N with 0 < NN.N <= 100", w);
      f.rule = scale_rule::percentile;
      f.percentile = v;
    } else {
      fail_word("a scale rule (max, mse, pNN.N, ocp, ceil, rceil, even)", w);
    }
  }

  static constexpr const char* kRoundingWords =
      "a rounding (rne, rna, rtz, up, down, odd, sr[:seed], or srR[:seed] with R = 1, 2, 4, 8 or 16 random bits)";

  void rounding(format& f) {
    const std::string_view w = word();
    if (w == "rne") f.rounding = rounding_mode::rne;
    else if (w == "rna") f.rounding = rounding_mode::rna;
    else if (w == "rtz") f.rounding = rounding_mode::rtz;
    else if (w == "up") f.rounding = rounding_mode::up;
    else if (w == "down") f.rounding = rounding_mode::down;
    else if (w == "odd") f.rounding = rounding_mode::odd;
    else if (w.size() >= 2 && w.substr(0, 2) == "sr" &&
             std::all_of(w.begin() + 2, w.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); })) {
      f.rounding = rounding_mode::sr;
      f.sr_bits = 0;
      if (w.size() > 2) {  // ~srR: R random bits per element (docs/conventions.md §43)
        const std::string_view digits = w.substr(2);
        int r = 0;
        auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), r);
        if (ec != std::errc() || p != digits.data() + digits.size() || digits[0] == '0' || !valid_sr_bits(r))
          fail_word(kRoundingWords, w);
        f.sr_bits = r;
      }
      if (eat(':')) {
        const size_t b = pos_;
        while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
        uint64_t seed = 0;
        auto [p, ec] = std::from_chars(s_.data() + b, s_.data() + pos_, seed);
        if (ec != std::errc() || b == pos_) {
          pos_ = b;
          fail("a seed (unsigned integer) after 'sr:'");
        }
        f.seed = seed;
      }
    } else {
      fail_word(kRoundingWords, w);
    }
  }

  // Trailing '@rule' and '~rounding', allowed after everything.
  void suffixes(format& f, bool allow_rule) {
    if (peek() == '@') {
      if (!allow_rule) fail("'~rounding' or the end (this named format fixes its scale rule)");
      ++pos_;
      if (f.gran == granularity::none) fail_at(pos_ - 1, "a scale rule needs a group (/t, /c or /gK)");
      rule(f);
      const bool pow2_rule = f.rule == scale_rule::ocp || f.rule == scale_rule::ceil ||
                             f.rule == scale_rule::rceil || f.rule == scale_rule::even;
      if (f.scale.kind != scale_kind::element && !pow2_rule)
        fail_at(pos_ - 1, "a power-of-two scale (e8m0, pow2) takes the rules ocp, ceil, rceil or even");
    }
    if (eat('~')) rounding(f);
  }

  format parse_format_expr() {
    const size_t at = pos_;
    if (starts("pow") && pos_ + 3 < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_ + 3])) || s_[pos_ + 3] == '.')) {
      pos_ += 3;
      const size_t b = pos_;
      while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.')) ++pos_;
      const std::string text(s_.substr(b, pos_ - b));
      char* end = nullptr;
      const double a = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size() || !(a > 0) || a > 16) {
        pos_ = b;
        fail("a power exponent 0 < A <= 16 after 'pow' (e.g. pow0.5(int4/g128))");
      }
      if (!eat('(')) fail("'(' and an inner format, as in pow0.5(int4/g128)");
      // A power map never nests: refusing a second 'pow' before descending also bounds the
      // recursion, so no spec can exhaust the stack.
      if (inside_pow_) fail_at(at, "pow(...) takes a generic format, not a named preset or another power map");
      inside_pow_ = true;
      format f = parse_format_expr();
      inside_pow_ = false;
      if (!eat(')')) fail("')' to close pow(...)");
      if (f.named != preset::none)
        fail_at(at, "pow(...) takes a generic format, not a named preset or another power map");
      if (f.gran == granularity::none)
        fail_at(at, "pow(...) needs a group in its inner format (it divides by the group's amax), e.g. pow0.5(int4/g128)");
      if (f.element.kind == element_kind::uint_asym)
        fail_at(at, "pow(...) needs a symmetric element (int, minifloat, lut), not uint");
      f.power = a;
      return f;
    }
    const std::string_view w = word();
    if (w.empty()) fail("an element or a named format");

    // Named formats.
    format f;
    const ggml_preset* ggml = ggml_preset_named(w);
    if (w == "nvfp4" || ggml || w == "mxint8" || (w.size() > 4 && w.substr(0, 4) == "flex")) {
      if (w == "nvfp4") {
        f.element = make_minifloat(2, 1, float_variant::finite);
        f.gran = granularity::group;
        f.group_size = 16;
        f.scale.element = make_minifloat(4, 3, float_variant::fn);
        f.named = preset::nvfp4;
      } else if (ggml) {  // codes as kGgmlPresets describes them; the group is the block or sub-block
        f.element = ggml->signed_codes ? make_int(ggml->bits) : make_uint(ggml->bits);
        f.gran = granularity::group;
        f.group_size = ggml->group;
        f.scale.element = ggml_fp16();
        f.named = ggml->named;
      } else if (w == "mxint8") {
        f.element = make_int(8, 6);
        f.gran = granularity::group;
        f.group_size = 32;
        f.scale.kind = scale_kind::e8m0;
        f.rule = scale_rule::ocp;
        f.named = preset::mxint8;
      } else {
        // flexN+E
        const std::string_view rest = w.substr(4);
        const size_t plus = rest.find('+');
        int n = 0, e = 0;
        bool ok = plus != std::string_view::npos;
        if (ok) {
          auto r1 = std::from_chars(rest.data(), rest.data() + plus, n);
          auto r2 = std::from_chars(rest.data() + plus + 1, rest.data() + rest.size(), e);
          ok = r1.ec == std::errc() && r1.ptr == rest.data() + plus && r2.ec == std::errc() &&
               r2.ptr == rest.data() + rest.size();
        }
        if (!ok) fail_word("flexN+E (e.g. flex16+5)", w);
        if (n < 2 || n > 16) fail_at(at, fmt::format("flex{}+{}: mantissa bits must be in 2..16", n, e));
        if (e < 1 || e > 8) fail_at(at, fmt::format("flex{}+{}: exponent bits must be in 1..8", n, e));
        f.element = make_int(n);
        f.gran = granularity::tensor;
        f.scale.kind = scale_kind::pow2;
        f.scale.exp_bits = e;
        f.rule = scale_rule::rceil;
        f.named = preset::flex;
        f.flex_mantissa_bits = n;
        f.flex_exponent_bits = e;
      }
      if (f.named != preset::mxint8 && f.named != preset::flex) f.rule = scale_rule::max;
      if (peek() == '/' || peek() == ':') fail("'~rounding' or the end: this named format fixes its group and scale");
      if (ggml && peek() == '~') fail("the end: ggml's block formats fix their rounding (as ggml's quantize_row_*_ref)");
      suffixes(f, false);
      return f;
    }
    bool have_element = false;
    for (const auto& a : kAliases) {
      if (w == "nf4" && (peek() == '/' || peek() == ':')) break;  // the NF4 element with a group
      if (w == a.name && a.expansion[0] != '\0' && std::string_view(a.expansion) != a.name) {
        f = spec_parser(a.expansion).parse_all();
        if (peek() == '/' || peek() == ':') {
          if (f.gran != granularity::none)
            fail("'@rule', '~rounding' or the end: this named format fixes its group and scale");
          have_element = true;
          break;  // an element alias (fp8_e4m3): a group may follow
        }
        suffixes(f, true);
        return f;
      }
    }

    if (!have_element) f.element = element(w, at);
    if (eat('/')) {
      const size_t gat = pos_;
      const std::string_view g = word();
      if (g == "t") f.gran = granularity::tensor;
      else if (g == "c") f.gran = granularity::row;
      else if (g.size() > 1 && g[0] == 'g') {
        int k = 0;
        auto [p, ec] = std::from_chars(g.data() + 1, g.data() + g.size(), k);
        if (ec != std::errc() || p != g.data() + g.size()) fail_word("a group t, c or gK (e.g. g32)", g);
        if (k < 1) fail_at(gat, fmt::format("group size {} must be at least 1", k));
        if (k > (1 << 24)) fail_at(gat, fmt::format("group size {} is larger than 2^24", k));
        f.gran = granularity::group;
        f.group_size = k;
      } else {
        fail_word("a group t (tensor), c (row/channel) or gK (K elements), e.g. /g32", g);
      }
      f.scale.kind = scale_kind::element;
      f.scale.element = make_minifloat(8, 23, float_variant::ieee);
      f.rule = scale_rule::max;
    }
    if (eat(':')) {
      if (f.gran == granularity::none) fail_at(pos_ - 1, "a scale needs a group first (/t, /c or /gK)");
      f.scale = scale();
      f.rule = default_rule(f.scale);
    }
    suffixes(f, true);
    return f;
  }
};

std::string scale_name(const scale_format& s) {
  switch (s.kind) {
    case scale_kind::e8m0: return "e8m0";
    case scale_kind::pow2: return "pow2";
    case scale_kind::element: return element_name(s.element);
  }
  return "?";
}

std::string rule_name(const format& f) {
  switch (f.rule) {
    case scale_rule::max: return "max";
    case scale_rule::mse: return "mse";
    case scale_rule::percentile: return "p" + fmt::format("{}", f.percentile);
    case scale_rule::ocp: return "ocp";
    case scale_rule::ceil: return "ceil";
    case scale_rule::rceil: return "rceil";
    case scale_rule::even: return "even";
  }
  return "?";
}

std::string rounding_suffix(const format& f) {
  if (f.rounding == rounding_mode::rne) return {};
  if (f.rounding == rounding_mode::sr) {
    const std::string r = f.sr_bits ? fmt::format("sr{}", f.sr_bits) : std::string("sr");
    return f.seed != 0 ? fmt::format("~{}:{}", r, f.seed) : "~" + r;
  }
  return "~" + to_string(f.rounding);
}

}  // namespace

scale_rule default_rule(const scale_format& s) {
  return s.kind == scale_kind::element ? scale_rule::max : scale_rule::ocp;
}

format parse_format(std::string_view spec) { return spec_parser(spec).parse_all(); }

std::string element_name(const element_format& e) {
  switch (e.kind) {
    case element_kind::int_sym: return fmt::format("int{}", e.bits);
    case element_kind::uint_asym: return fmt::format("uint{}", e.bits);
    case element_kind::lut: {
      if (e.table_name == "nf4") return "nf4";
      std::string out = "lut(";
      for (size_t i = 0; i < e.table.size(); ++i) out += (i ? "," : "") + shortest_float(e.table[i]);
      return out + ")";
    }
    case element_kind::minifloat: break;
  }
  const bool plain = e.variant == float_variant::ieee && e.bias == default_bias(e.ebits, e.variant) &&
                     e.subnormals && e.overflow == overflow_policy::saturate;
  if (plain && e.ebits == 8 && e.mbits == 23) return "fp32";
  if (plain && e.ebits == 8 && e.mbits == 7) return "bf16";
  if (plain && e.ebits == 8 && e.mbits == 10) return "tf32";
  if (plain && e.ebits == 5 && e.mbits == 10) return "fp16";
  std::string out = fmt::format("e{}m{}", e.ebits, e.mbits);
  if (e.variant != default_variant(e.ebits, e.mbits) || (e.ebits == 4 && e.mbits == 3)) out += to_string(e.variant);
  std::vector<std::string> opts;
  if (e.bias != default_bias(e.ebits, e.variant)) opts.push_back(fmt::format("bias={}", e.bias));
  if (!e.subnormals) opts.push_back("subnormals=off");
  if (e.overflow != overflow_policy::saturate) opts.push_back("overflow=" + to_string(e.overflow));
  if (!opts.empty()) {
    out += "(";
    for (size_t i = 0; i < opts.size(); ++i) out += (i ? "," : "") + opts[i];
    out += ")";
  }
  return out;
}

std::string format_name(const format& f) {
  switch (f.named) {
    case preset::nvfp4: return "nvfp4" + rounding_suffix(f);
    case preset::q4_0:
    case preset::q4_1:
    case preset::q5_0:
    case preset::q5_1:
    case preset::q8_0:
    case preset::q2_k:
    case preset::q3_k:
    case preset::q4_k:
    case preset::q5_k:
    case preset::q6_k: return ggml_preset_of(f.named)->name;  // (their rounding is fixed)
    case preset::mxint8: return "mxint8" + rounding_suffix(f);
    case preset::flex:
      return fmt::format("flex{}+{}", f.flex_mantissa_bits, f.flex_exponent_bits) + rounding_suffix(f);
    case preset::none: break;
  }
  std::string out = element_name(f.element);
  switch (f.gran) {
    case granularity::none: break;
    case granularity::tensor: out += "/t"; break;
    case granularity::row: out += "/c"; break;
    case granularity::group: out += fmt::format("/g{}", f.group_size); break;
  }
  if (f.gran != granularity::none) {
    const bool default_scale = f.scale.kind == scale_kind::element &&
                               f.scale.element == make_minifloat(8, 23, float_variant::ieee);
    if (!default_scale) out += ":" + scale_name(f.scale);
    if (f.rule != default_rule(f.scale)) out += "@" + rule_name(f);
  }
  out += rounding_suffix(f);
  if (f.power != 0) out = fmt::format("pow{}({})", f.power, out);
  return out;
}

int scale_bits(const format& f) {
  switch (f.scale.kind) {
    case scale_kind::e8m0: return 8;
    case scale_kind::pow2: return f.scale.exp_bits;
    case scale_kind::element: return f.scale.element.bits;
  }
  return 0;
}

double bits_per_element(const format& f) {
  // ggml's blocks: their bytes per value, codes, scales, mins and super-scales together (q4_0 18
  // bytes per 32 = 4.5; q4_k 144 per 256 = 4 + (6 + 6) / 32 + 2 * 16 / 256 = 4.5).
  if (const ggml_preset* g = ggml_preset_of(f.named)) return 8.0 * g->block_bytes / g->block_values;
  double bits = f.element.bits;
  if (f.gran == granularity::group) {
    double per_group = scale_bits(f);
    if (f.element.kind == element_kind::uint_asym) per_group += f.element.bits;  // zero point
    bits += per_group / f.group_size;
  }
  return bits;
}

std::string bits_description(const format& f) {
  const double b = bits_per_element(f);
  std::string out = fmt::format("{:g}", b);
  const int zp = f.element.kind == element_kind::uint_asym ? f.element.bits : 0;
  if (f.gran == granularity::row) out += fmt::format(" +{}/row", scale_bits(f) + zp);
  if (f.gran == granularity::tensor) out += fmt::format(" +{}/tensor", scale_bits(f) + zp);
  if (f.named == preset::nvfp4) out += " +32/tensor";
  return out;
}

double element_max(const format& f) {
  const element_limits l = limits_of(f.element);
  return std::max(std::fabs(l.max), std::fabs(l.min));
}

int element_emax(const format& f) { return limits_of(f.element).emax; }

const std::vector<named_format>& named_formats() {
  static const std::vector<named_format> list = [] {
    std::vector<named_format> v;
    for (const auto& a : kAliases) v.push_back({a.name, a.description});
    return v;
  }();
  return list;
}

}  // namespace lowbit

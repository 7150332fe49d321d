// Training recipes (recipes.hpp): the plan grammar and the quantizers of the six GEMM operands.
#include "lowbit/train/recipes.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/train/autoflex.hpp"
#include "lowbit/kernels/flexpoint.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"

namespace lowbit {

namespace {

constexpr gemm_operand kAll[] = {gemm_operand::x_fwd, gemm_operand::w_fwd, gemm_operand::dy_dx,
                                 gemm_operand::w_dx,  gemm_operand::dy_dw, gemm_operand::x_dw};

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  int depth = 0;  // lut(a,b,...) keeps its commas
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i < s.size() && s[i] == '(') ++depth;
    if (i < s.size() && s[i] == ')') --depth;
    if (i == s.size() || (s[i] == sep && depth == 0)) {
      out.push_back(trim(s.substr(start, i - start)));
      start = i + 1;
    }
  }
  return out;
}

// The canonical spelling, or a lowbit::error naming the plan and the operand.
std::string canonical(const std::string& spec, const std::string& plan, const std::string& where) {
  try {
    return format_name(parse_format(spec));
  } catch (const std::exception& e) {
    throw error(fmt::format("training plan '{}': {} format '{}': {}", plan, where, spec, e.what()));
  }
}

// Stream id of one (run seed, step, linear, operand) for stochastic rounding: distinct for every
// use, and different runs (seeds) draw different noise.
uint64_t stream_id(uint64_t seed, int64_t step, int linear, gemm_operand op) {
  return mix64(seed * 0x9E3779B97F4A7C15ull + ((uint64_t(step) << 24) ^ (uint64_t(linear) << 3) ^ uint64_t(op)));
}

// Operands in formats of the format engine.
class format_quantizer : public operand_quantizer {
 public:
  format_quantizer(const training_plan& p, uint64_t seed) : plan_(p), seed_(seed) {
    for (int i = 0; i < gemm_operand_count; ++i)
      if (!p.operands[i].empty()) formats_[i] = parse_format(p.operands[i]);
  }
  bool quantizes(gemm_operand op) const override { return formats_[int(op)].has_value(); }
  bool feature_axis_groups() const override { return plan_.feature_axis; }
  void apply(gemm_operand op, int linear, int64_t step, const float* in, float* out, int64_t rows,
             int64_t cols) override {
    // Rows are tokens for X and dY (any axis=din operand but the weights): a shard's rows start
    // at first_token of the whole batch.
    const bool token_rows = op != gemm_operand::w_fwd && op != gemm_operand::w_dx;
    const sr_counters counters{token_rows ? uint64_t(first_token_ * cols) : 0, sr_counters::kOwnRowLength};
    fake_quantize(in, out, rows, cols, *formats_[int(op)], stream_id(seed_, step, linear, op), counters);
  }
  bool apply_columns(gemm_operand op, int linear, int64_t step, const float* in, float* out, int64_t rows,
                     int64_t cols) override {
    // Groups along tokens (X, dY of the dW GEMM): the transposed tensor's rows hold all tokens.
    const bool token_rows = op != gemm_operand::w_dx;
    const sr_counters counters = token_rows && total_tokens_ > 0 ? sr_counters{uint64_t(first_token_), total_tokens_}
                                                                 : sr_counters{};
    fake_quantize_columns(in, out, rows, cols, *formats_[int(op)], stream_id(seed_, step, linear, op), counters);
    return true;
  }
  std::vector<std::string> set_token_shard(int64_t first_token, int64_t local_tokens, int64_t total_tokens) override {
    std::vector<std::string> notes;
    if (total_tokens >= 0) {
      for (gemm_operand op : kAll) {
        const auto& f = formats_[int(op)];
        if (!f || op == gemm_operand::w_fwd || op == gemm_operand::w_dx) continue;  // weights: alike on every rank
        // X and dY of the dW GEMM group along tokens unless axis=din.
        const bool along_tokens = !plan_.feature_axis && (op == gemm_operand::x_dw || op == gemm_operand::dy_dw);
        const std::string what = fmt::format("{} ({})", gemm_operand_label(op), format_name(*f));
        const int64_t block = is_kquant(*f) ? kSuperBlock : f->group_size;
        if (along_tokens && f->gran == granularity::group && local_tokens % block != 0)
          throw error(fmt::format("training plan '{}': {} groups {} tokens, but a rank holds {} (batch x ctx / "
                                  "ranks): its groups would straddle ranks; choose a batch and ctx whose "
                                  "per-rank tokens are a multiple of {}, or axis=din",
                                  plan_.spec, what, block, local_tokens, block));
        if (f->gran == granularity::tensor || f->named == preset::nvfp4)
          notes.push_back(what + ": the tensor scale comes from each rank's tokens");
        else if (along_tokens && f->gran == granularity::row)
          notes.push_back(what + ": the per-channel scales come from each rank's tokens");
      }
    }
    first_token_ = total_tokens < 0 ? 0 : first_token;
    total_tokens_ = total_tokens;
    return notes;
  }

 private:
  training_plan plan_;
  uint64_t seed_;
  std::array<std::optional<format>, gemm_operand_count> formats_;
  int64_t first_token_ = 0, total_tokens_ = -1;  // -1: the batch is whole
};

// Flexpoint with Autoflex exponents per (linear, operand): per tensor and per use.
class flex_quantizer : public operand_quantizer {
 public:
  flex_quantizer(const training_plan& p, int mantissa_bits, int exponent_bits) {
    cfg_.mantissa_bits = mantissa_bits;
    cfg_.exponent_bits = exponent_bits;
    try {
      autoflex check(cfg_);  // refuse what Autoflex cannot manage before training starts
    } catch (const std::exception& e) {
      throw error(fmt::format("training plan '{}': {}", p.spec, e.what()));
    }
  }
  void set_frozen(bool f) override { frozen_ = f; }
  bool quantizes(gemm_operand) const override { return true; }
  void apply(gemm_operand op, int linear, int64_t, const float* in, float* out, int64_t rows,
             int64_t cols) override {
    const int64_t n = rows * cols;
    const auto key = std::make_pair(linear, int(op));
    auto it = managers_.find(key);
    if (it == managers_.end()) {
      // Algorithm 1: initialise the exponent by trial on the first use; the trials write into
      // scratch, as `in` may be `out`.
      autoflex af(cfg_);
      trial_.resize(n);
      for (int tries = 0; tries < 64; ++tries) {
        const flex_stats trial = flexpoint_fake_quantize(in, trial_.data(), n, cfg_.mantissa_bits, af.exponent());
        if (af.initialize_step(global_max(op, trial.gamma))) break;
      }
      if (frozen_) {  // a use seen only in validation: quantize, remember nothing
        flexpoint_fake_quantize(in, out, n, cfg_.mantissa_bits, af.exponent());
        return;
      }
      it = managers_.emplace(key, af).first;
    }
    autoflex& af = it->second;
    // The kernel (kernels/flexpoint.hpp) reports Gamma, Autoflex's overflow statistic.
    const double gamma = global_max(op, flexpoint_fake_quantize(in, out, n, cfg_.mantissa_bits, af.exponent()).gamma);
    if (!frozen_) af.update(gamma);  // Algorithm 2: the exponent of the next use
  }
  // One shared exponent and round-to-nearest per element: the values do not depend on the layout.
  bool apply_columns(gemm_operand op, int linear, int64_t step, const float* in, float* out, int64_t rows,
                     int64_t cols) override {
    apply(op, linear, step, in, out, rows, cols);
    return true;
  }
  nlohmann::json state() const override {
    nlohmann::json s = nlohmann::json::array();
    for (const auto& [key, af] : managers_)
      s.push_back({{"linear", key.first}, {"operand", key.second}, {"exponent", af.exponent()},
                   {"history", std::vector<double>(af.history().begin(), af.history().end())}});
    return s;
  }
  void restore(const nlohmann::json& s) override {
    managers_.clear();
    if (s.is_null()) return;
    for (const auto& e : s) {
      autoflex af(cfg_);
      const auto h = e.at("history").get<std::vector<double>>();
      af.restore(e.at("exponent").get<int>(), std::deque<double>(h.begin(), h.end()));
      managers_.emplace(std::make_pair(e.at("linear").get<int>(), e.at("operand").get<int>()), af);
    }
  }

  void set_max_reducer(std::function<double(double)> r) override { max_reducer_ = std::move(r); }
  // One exponent per tensor from the maxima over all ranks (set_max_reducer), nothing random.
  std::vector<std::string> set_token_shard(int64_t, int64_t, int64_t) override { return {}; }

 private:
  // The tensor's maximum over every rank's share (data-parallel), or the local one. The weights
  // (P2, P4) are alike on every rank: no reduction (every rank skips it alike).
  double global_max(gemm_operand op, double gamma) const {
    const bool weights = op == gemm_operand::w_fwd || op == gemm_operand::w_dx;
    return max_reducer_ && !weights ? max_reducer_(gamma) : gamma;
  }
  std::function<double(double)> max_reducer_;
  autoflex_config cfg_;
  std::map<std::pair<int, int>, autoflex> managers_;
  std::vector<float> trial_;
  bool frozen_ = false;
};

// ShiftQuant gradients, per-channel integer X and W.
class shiftquant_quantizer : public operand_quantizer {
 public:
  shiftquant_quantizer(const training_plan& p, int bits, int group, int max_shift, uint64_t seed)
      : seed_(seed), bits_(bits), group_(group), max_shift_(max_shift),
        channel_(parse_format(fmt::format("int{}/c", bits))) {}
  bool quantizes(gemm_operand) const override { return true; }
  void apply(gemm_operand op, int linear, int64_t step, const float* in, float* out, int64_t rows,
             int64_t cols) override {
    if (op == gemm_operand::dy_dx || op == gemm_operand::dy_dw)
      shiftquant_fake_quantize(in, out, rows, cols, bits_, group_, max_shift_, true, seed_,
                               stream_id(seed_, step, linear, op));
    else
      fake_quantize(in, out, rows, cols, channel_, stream_id(seed_, step, linear, op));
  }

 private:
  uint64_t seed_;
  int bits_, group_, max_shift_;
  format channel_;
};

}  // namespace

training_plan parse_training_plan(const std::string& spec_in) {
  const std::string spec = trim(spec_in);
  training_plan p;
  p.spec = spec;
  const auto colon = spec.find(':');
  const std::string head = spec.substr(0, colon);
  const std::string rest = colon == std::string::npos ? "" : spec.substr(colon + 1);
  auto set = [&](std::initializer_list<gemm_operand> ops, const std::string& f) {
    const std::string c = canonical(f, spec, "the");
    for (auto op : ops) p.operands[int(op)] = c;
  };
  if (const auto eq = spec.find('='); eq != std::string::npos && (colon == std::string::npos || eq < colon)) {
    // x=FMT;w=FMT;...
    p.recipe = "custom";
    for (const auto& entry : split(spec, ';')) {
      if (entry.empty()) continue;
      const auto eq = entry.find('=');
      if (eq == std::string::npos)
        throw error(fmt::format("training plan '{}': '{}' is not KEY=FORMAT (keys: x, w, dy, w_bwd, dy_w, "
                                "x_bwd, axis)", spec, entry));
      const std::string key = trim(entry.substr(0, eq)), value = trim(entry.substr(eq + 1));
      if (key == "axis") {
        if (value != "din" && value != "reduction")
          throw error(fmt::format("training plan '{}': axis={} (expected din or reduction)", spec, value));
        p.feature_axis = value == "din";
        continue;
      }
      bool found = false;
      for (auto op : kAll)
        if (key == gemm_operand_key(op) || key == gemm_operand_label(op)) {
          p.operands[int(op)] = canonical(value, spec, std::string("operand ") + key);
          found = true;
        }
      if (!found)
        throw error(fmt::format("training plan '{}': unknown target '{}' (targets: x, w, dy, w_bwd, dy_w, "
                                "x_bwd or P1..P6)", spec, key));
    }
    for (const auto& o : p.operands)
      if (!o.empty()) p.law_format = o;
    return p;
  }
  p.recipe = head;
  std::vector<std::string> args = rest.empty() ? std::vector<std::string>{} : split(rest, ',');
  auto need_format = [&]() {
    if (args.empty() || args[0].empty())
      throw error(fmt::format("training plan '{}': {} needs a format, e.g. {}:e4m3/g32", spec, head, head));
    return args[0];
  };
  auto options = [&](size_t first, std::initializer_list<const char*> allowed) {
    std::map<std::string, std::string> o;
    for (size_t i = first; i < args.size(); ++i) {
      const auto eq = args[i].find('=');
      const std::string k = args[i].substr(0, eq), v = eq == std::string::npos ? "" : args[i].substr(eq + 1);
      if (std::find_if(allowed.begin(), allowed.end(), [&](const char* a) { return k == a; }) == allowed.end())
        throw error(fmt::format("training plan '{}': unknown option '{}'", spec, args[i]));
      o[k] = v;
    }
    return o;
  };
  if (head == "fp32" && rest.empty()) {
  } else if (head == "sun2025") {
    const std::string f = need_format();
    set({gemm_operand::w_fwd, gemm_operand::w_dx, gemm_operand::x_dw}, f);
    auto o = options(1, {"axis"});
    if (o.count("axis")) {
      if (o["axis"] != "din" && o["axis"] != "reduction")
        throw error(fmt::format("training plan '{}': axis={} (expected din or reduction)", spec, o["axis"]));
      p.feature_axis = o["axis"] == "din";
    }
    p.law_format = p.operands[int(gemm_operand::w_fwd)];
  } else if (head == "qat") {
    // dX = dY Q(W) with the forward's Q(W): P4 grouped along d_in like P2 (axis=din; the other
    // operands are float).
    set({gemm_operand::w_fwd, gemm_operand::w_dx}, need_format());
    p.feature_axis = true;
    options(1, {});
    p.law_format = p.operands[int(gemm_operand::w_fwd)];
  } else if (head == "fp8" && rest.empty()) {
    set({gemm_operand::x_fwd, gemm_operand::w_fwd, gemm_operand::w_dx, gemm_operand::x_dw}, "e4m3/t");
    set({gemm_operand::dy_dx, gemm_operand::dy_dw}, "e5m2/t");
    p.law_format = p.operands[int(gemm_operand::w_fwd)];
  } else if ((head == "mxfp4" || head == "nvfp4") && rest.empty()) {
    set({gemm_operand::x_fwd, gemm_operand::w_fwd, gemm_operand::w_dx, gemm_operand::x_dw}, head);
    set({gemm_operand::dy_dx, gemm_operand::dy_dw}, head + "~sr");
    p.law_format = p.operands[int(gemm_operand::w_fwd)];
  } else if (head.rfind("flex", 0) == 0 && rest.empty()) {
    const format f = parse_format(canonical(head, spec, "the"));
    if (f.rounding != rounding_mode::rne)
      throw error(fmt::format("training plan '{}': Flexpoint rounds to nearest even; no rounding suffix", spec));
    for (auto op : kAll) p.operands[int(op)] = format_name(f);
    p.law_format = format_name(f);
  } else if (head == "shiftquant") {
    const std::string f = need_format();
    const format e = parse_format(canonical(f, spec, "the"));
    if (e.element.kind != element_kind::int_sym || e.gran != granularity::none)
      throw error(fmt::format("training plan '{}': shiftquant takes an integer element such as int4 or int8, "
                              "not '{}'", spec, f));
    auto o = options(1, {"g", "shift", "l1"});
    const int bits = e.element.bits;
    const std::string group = o.count("g") ? o["g"] : "32";
    for (auto op : kAll) p.operands[int(op)] = fmt::format("int{}/c", bits);
    p.operands[int(gemm_operand::dy_dx)] = p.operands[int(gemm_operand::dy_dw)] =
        fmt::format("shiftquant(int{},g{},shift={})", bits, group, o.count("shift") ? o["shift"] : "7");
    if (o.count("l1") && !o["l1"].empty())
      throw error(fmt::format("training plan '{}': l1 takes no value", spec));
    p.l1_norm = o.count("l1") > 0;
    p.law_format = fmt::format("int{}/c", bits);
  } else {
    throw error(fmt::format("unknown training plan '{}' (plans: fp32, sun2025:FMT[,axis=din], qat:FMT, fp8, "
                            "mxfp4, nvfp4, flex16+5, shiftquant:intN[,g=K][,shift=S][,l1], "
                            "x=FMT;w=FMT;dy=FMT;w_bwd=FMT;dy_w=FMT;x_bwd=FMT)", spec));
  }
  return p;
}

std::unique_ptr<operand_quantizer> make_operand_quantizer(const training_plan& p, uint64_t seed) {
  if (p.recipe == "fp32") return nullptr;
  if (p.recipe.rfind("flex", 0) == 0) {
    const format f = parse_format(p.law_format);
    return std::make_unique<flex_quantizer>(p, f.flex_mantissa_bits, f.flex_exponent_bits);
  }
  if (p.recipe == "shiftquant") {
    const format e = parse_format(p.law_format);
    const std::string& d = p.operands[int(gemm_operand::dy_dx)];
    int bits = 0, group = 0, shift = 0;
    if (std::sscanf(d.c_str(), "shiftquant(int%d,g%d,shift=%d)", &bits, &group, &shift) != 3 || group <= 0 ||
        shift < 0 || shift > 30)
      throw error(fmt::format("training plan '{}': bad shiftquant group or shift", p.spec));
    return std::make_unique<shiftquant_quantizer>(p, e.element.bits, group, shift, seed);
  }
  return std::make_unique<format_quantizer>(p, seed);
}

}  // namespace lowbit

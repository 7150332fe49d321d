// QuantPlan: which tensor or GEMM input gets which format (docs/architecture.md "engine"; docs/conventions.md §17).
//   weights : rules from tensor-name glob patterns (GGUF names, '*' and '?') to a format; the
//             first rule that matches wins. The default weight format applies to every linear
//             weight of attention and MLP; embeddings, classifier and norms stay float unless a
//             rule names them. A rule's format "fp32" (or "none") keeps a tensor float.
//             Weights are fake-quantized once, at load.
//   acts    : the format of the input of every linear layer of attention and MLP (q, k, v, o,
//             gate, up, down; GPT-2's fused qkv), not the classifier's input unless
//             `classifier_acts` is set. Rows are tokens, so `/c` is a dynamic per-token scale.
//   kv      : the KV cache: K after RoPE and V, rows of one token and head (groups along the
//             head dimension).
//
//   act_rules: per activation, by glob patterns over the activation names below (first match
//             wins, before acts / classifier_acts). A rule is dynamic (the format's own scales,
//             computed on each call: /c per token, /t per tensor) or static: "clip" holds the
//             calibrated clipping value(s) (one: per tensor; one per input column: per channel)
//             and the format is a bare symmetric element (intN, eEmM) cast as
//             x -> s * cast(x / s), s = clip / element_max (docs/conventions.md §42).
//             Activation names (forward.hpp's dump names of the inputs the linears read):
//               blk.N.attn_norm  input of q, k, v (GPT-2's fused qkv)   [tokens, dim]
//               blk.N.attn       input of attn_output                  [tokens, dim]
//               blk.N.ffn_norm   input of ffn_gate and ffn_up           [tokens, dim]
//               blk.N.ffn_act    input of ffn_down                      [tokens, hidden]
//               output_norm      the classifier's input                 [tokens, dim]
//   kv_rules: per cache, by patterns over blk.N.k and blk.N.v (first match wins, before kv).
//   attn    : the operands of attention's two GEMMs, S = Q K^T and O = P V (FP8 attention):
//             Q rows (token, head), K and V rows (key, kv head) of head_dim, P rows (query) of
//             keys per head and query block; K and V are quantized as the GEMMs read them (all
//             keys of the window, after the KV format of the cache).
//
// rules.json: {"weights": "int4/g32", "acts": "int8/c", "kv": "e4m3fn/c",
//              "rules": [{"pattern": "blk.0.*", "format": "int8/c"}, ...],
//              "classifier_acts": "int8/c",
//              "act_rules": [{"pattern": "blk.0.*", "format": "fp32"},
//                            {"pattern": "blk.1.ffn_act", "format": "int8", "clip": 3.5}],
//              "kv_rules": [{"pattern": "blk.*.v", "format": "int4/c"}],
//              "attn": {"q": "e4m3", "k": "e4m3", "p": "e4m3", "v": "e4m3"}}
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/model.hpp"
#include "lowbit/formats/format.hpp"

namespace lowbit {

struct weight_rule {
  std::string pattern;
  std::string spec;               // as the user typed it
  std::optional<format> fmt;      // nullopt = keep float
};

// An activation rule: dynamic (clip empty) or static (clip: 1 value, per tensor, or one per
// input column, per channel).
struct act_rule {
  std::string pattern;
  std::string spec;
  std::optional<format> fmt;      // nullopt = keep float
  std::vector<float> clip;        // static clipping values; empty = dynamic
  std::string calibration;        // how clip was found ("max", "percentile:99.9", "mse", "llmfp4"); a note
};

// How one activation (or cache, or attention operand) is quantized: nothing, dynamically, or
// with static clipping values.
struct act_quant {
  std::optional<format> fmt;
  // Static quantization's per-column (or one) scales s_j = clip_j / element_max(fmt), computed and
  // checked once when the plan is resolved (static_activation_scales); empty = dynamic.
  std::vector<float> scale;
  explicit operator bool() const { return fmt.has_value(); }
  // out[rows, cols] = the quantized in (in == out allowed); stream: the stochastic-rounding tensor id.
  void apply(const float* in, float* out, int64_t rows, int64_t cols, uint64_t stream) const;
};

// Static quantization (docs/conventions.md §42): out = s_j * cast(in / s_j) per column j with
// s_j = clip_j / element_max(f) (clip of size 1: one s for every column), in float32; f is a bare
// symmetric element. Throws when clip has neither 1 nor cols values.
// The scales of static quantization for clipping values clip under f (checked: f a bare symmetric
// element, every clip finite and > 0).
std::vector<float> static_activation_scales(const format& f, const std::vector<float>& clip);

void fake_quantize_static(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                          const std::vector<float>& clip, uint64_t stream = 0);
// Throws unless f can take static clipping values (a bare intN or eEmM element).
void check_static_format(const format& f, const std::string& where);

// The four operands of attention's GEMMs; nullopt = float.
struct attention_operands {
  std::optional<format> q, k, p, v;
  std::string q_spec, k_spec, p_spec, v_spec;
  bool any() const { return q || k || p || v; }
};

// The activation names of the model (see above), in forward order.
std::vector<std::string> activation_names(const model_config& c);
// The width (columns) of activation `name` of the model.
int64_t activation_width(const model_config& c, const std::string& name);

struct quant_plan {
  std::optional<format> weights;  // default for linear weights; nullopt = float
  std::string weights_spec;
  std::vector<weight_rule> rules;
  std::optional<format> acts;
  std::string acts_spec;
  std::optional<format> classifier_acts;
  std::optional<format> kv;
  std::string kv_spec;
  std::vector<act_rule> act_rules;
  std::vector<weight_rule> kv_rules;
  attention_operands attn;

  bool empty() const;
  // How activation `name` is quantized: the first act rule that matches, else acts (classifier:
  // classifier_acts for output_norm).
  act_quant act_for(const std::string& name) const;
  // The format of the cache blk.N.k or blk.N.v: the first kv rule that matches, else kv.
  std::optional<format> kv_for(const std::string& name) const;
  // Throws when an act or kv rule matches no activation / cache of the model, or a static rule's
  // clip values do not fit the activation's width (a typo'd pattern must not be ignored).
  void check_rules(const model_config& c) const;
  // The format tensor `name` gets (nullopt = stays float).
  std::optional<format> weight_format(const model& m, const std::string& name) const;
  std::string describe() const;  // "W=int4/g32 A=- KV=-" style
};

// A spec of "fp32", "f32", "none" or "" means float (nullopt); anything else is parsed.
std::optional<format> parse_optional_format(const std::string& spec);
bool glob_match(const std::string& pattern, const std::string& name);
quant_plan load_plan_json(const std::string& path);
// The plan of `lowbit eval`'s and `generate`'s flags (and lowbit.evaluate's arguments): the
// rules file when `rules` names one (else an empty plan), then each non-empty spec replacing
// that part (weights: the default weight format; the rules' patterns stay); `attn` as `--attn`
// (set_attention_operands).
quant_plan make_quant_plan(const std::string& rules, const std::string& weights, const std::string& acts,
                           const std::string& kv, const std::string& attn = "");
// `--attn SPEC`: every attention operand (q, k, p, v) in SPEC ("" leaves the plan's as it is).
void set_attention_operands(quant_plan& p, const std::string& spec);
// The plan as rules.json (load_plan_json reads it back to an equal plan).
nlohmann::json plan_json(const quant_plan& p);

// Fake-quantizes every weight the plan names, in place. Returns per-tensor stats for reports.
struct weight_quant_report {
  std::string name;
  std::string format;
  int64_t numel = 0;
  double bits_per_element = 32;
  double sqnr_db = 0;
};
std::vector<weight_quant_report> apply_weight_plan(model& m, const quant_plan& plan);
// apply_weight_plan's reports for the model r reads, one tensor in memory at a time (r unchanged).
std::vector<weight_quant_report> weight_plan_reports(const tensor_reader& r, const quant_plan& plan);
// The weight format's SQNR on the model's own weights as one number: the mean of the per-tensor
// SQNR (dB) weighted by tensor size (NaN when no tensor has a finite one). The feature Xu et
// al.'s PTQ predictor uses, recorded by eval, quantize and explore.
double mean_sqnr_db(const std::vector<weight_quant_report>& reports);
// Storage bits per element of tensor t in format f (32 when float): element bits plus the scales
// (and zero points) of its groups, rows or tensor, spread over the elements they serve.
double weight_bits(const tensor& t, const std::optional<format>& f);
// Average bits per weight over the linear weights (what the demo table reports).
double average_linear_bits(const model& m, const quant_plan& plan);

}  // namespace lowbit

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
// rules.json: {"weights": "int4/g32", "acts": "int8/c", "kv": "e4m3fn/c",
//              "rules": [{"pattern": "blk.0.*", "format": "int8/c"}, ...],
//              "classifier_acts": "int8/c"}
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "lowbit/engine/model.hpp"
#include "lowbit/formats/format.hpp"

namespace lowbit {

struct weight_rule {
  std::string pattern;
  std::string spec;               // as the user typed it
  std::optional<format> fmt;      // nullopt = keep float
};

struct quant_plan {
  std::optional<format> weights;  // default for linear weights; nullopt = float
  std::string weights_spec;
  std::vector<weight_rule> rules;
  std::optional<format> acts;
  std::string acts_spec;
  std::optional<format> classifier_acts;
  std::optional<format> kv;
  std::string kv_spec;

  bool empty() const;
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
// that part (weights: the default weight format; the rules' patterns stay).
quant_plan make_quant_plan(const std::string& rules, const std::string& weights, const std::string& acts,
                           const std::string& kv);

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

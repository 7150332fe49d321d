// The PTQ methods as a table (docs/ptq.md "Methods"): one entry per method says what the method is
// called on the command line, what the quantize job must collect for it in each block's
// calibration pass, what it keeps, and the function that quantizes one layer group. The pipeline
// (pipeline.cpp), `lowbit quantize --method` and its help, and every other place that names a
// method read this table, so a new method is one entry in src/ptq/methods.cpp plus the file that
// holds its algorithm and its group function.
//
// A layer group is the linear layers of one block that read one input (docs/ptq.md, the quantize
// job step 3): q, k, v after attn_norm; gate, up after ffn_norm; attn_output; ffn_down (Llama),
// and GPT-2's attn_qkv, attn_output, ffn_up, ffn_down. A method sees the group's float weights,
// each W [out, in], and what the calibration pass collected about their shared input X [n, in].
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lowbit/engine/model.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::ptq {

enum class method { rtn, gptq, awq, smoothquant, imatrix, powerquant, llmfp4, adaround, nupes };

struct quantize_options;  // pipeline.hpp

// Where a per-input-channel scale s of a group's input can be divided out so the float function
// is unchanged (X diag(s)^-1 (diag(s) W^T) = X W^T): into the preceding norm's weight (and bias),
// into the rows of the layer that produces the input (v for attn_output, up for ffn_down), or
// nowhere (GELU before GPT-2's ffn_down; grouped-query attention before attn_output).
enum class fold { none, norm, rows };

// The linear layers of a block that read one input, and where a per-input-channel scale s of
// that input can be folded (divided out) so the float function is unchanged.
struct layer_group {
  std::string input;                 // activation name suffix (blk.N.INPUT): attn_norm, attn, ffn_norm, ffn_act
  std::vector<std::string> weights;  // tensor name suffixes (blk.N.WEIGHT)
  fold how = fold::none;
  std::string fold_tensor;           // norm prefix (fold::norm) or weight whose rows produce the input
  int64_t fold_row0 = 0;             // first row of that weight (GPT-2's v inside attn_qkv)
};
// A block's groups in block order (pipeline.cpp); every block's activations but the last norm's
// (output_norm, read by the classifier) is the input of one of them.
std::vector<layer_group> block_groups(const model_config& c);

// What one block's calibration pass collected about one group's input X [n, in]. Which
// statistics exist is the method's method_needs; the sampled rows exist for every calibrated
// method (AWQ's and LLM-FP4's objectives, bias correction, the report's errors).
struct group_inputs {
  int64_t in = 0;
  std::optional<hessian_accumulator> hessian;  // needs.hessian: GPTQ's H = (2/n) X^T X
  std::optional<channel_stats> stats;          // needs.channel_stats: max |x_j|, mean |x_j|
  std::vector<float> rows;                     // sampled rows [n_rows(), in], every stride-th
  std::vector<double> sqsum;                   // needs.square_sums: [in] sum of x_j^2 over every row
  int64_t seen = 0, stride = 1, max_rows = 0;  // rows seen; keep every stride-th, up to max_rows

  void add(const float* x, int64_t n);  // x [n, in]
  int64_t n_rows() const { return int64_t(rows.size()) / in; }
};

// One layer group handed to a method. Weights are the float originals; a method that rescales
// the input returns the scale and quantizes W diag(s) (the pipeline folds 1/s where `where` says).
struct group_job {
  const quantize_options& options;
  std::vector<std::string> names;     // the group's weights, e.g. "blk.3.attn_q.weight"
  std::vector<linear_weight> layers;  // their float values, each [out, in]
  int64_t in = 0;
  fold where = fold::none;
  const group_inputs* inputs = nullptr;  // null when the method runs without calibration
  // The stochastic-rounding stream (docs/conventions.md §9): a method takes ++tensor_id for each
  // quantize / fake_quantize call it makes, in a fixed order, so a resumed run draws the same.
  uint64_t& tensor_id;
  // Exact codes of a weight whose values alone do not pin them down (quantize_report::packed):
  // a method that knows its codes puts them here under the weight's name.
  std::map<std::string, quantized_tensor>& packed;
};

struct group_result {
  std::vector<std::vector<float>> weights;  // [layer] [out, in] the quantized W diag(s)
  std::vector<float> scales;                // [in] s, folded into job.where; empty: none
};

using group_quantizer = group_result (*)(const group_job&);

// What the quantize job collects for a method in each block's pass (docs/ptq.md "Methods").
struct method_needs {
  bool calibration = true;     // run the calibration forward at all (else each weight alone,
                               // unless --bias-correction asks for the outputs)
  bool hessian = false;        // group_inputs::hessian
  bool channel_stats = false;  // group_inputs::stats
  bool square_sums = false;    // group_inputs::sqsum
};

struct method_info {
  method id;
  const char* name;     // as --method spells it
  const char* summary;  // the paper or what it is (docs/ptq.md §4.x)
  method_needs needs;
  // (LoRC, --lorc-rank, docs/ptq.md §4.5, compensates W - Q whatever made Q, so every method takes
  // it; it runs in the calibrated pass, which --lorc-rank turns on for the data-free methods.)
  group_quantizer quantize = nullptr;
};

// Every method, in the order the CLI lists them.
std::span<const method_info> methods();
const method_info& method_of(method m);
const method_info* find_method(std::string_view name);  // null when no method is called `name`
method parse_method(const std::string& name);           // throws listing the known names
const char* method_name(method m);
// The methods' names joined: "rtn, gptq, ..." (sep ", ", last " or ": "rtn, ... or llmfp4").
std::string method_names(std::string_view sep, std::string_view last_sep);

// RTN of one weight W [out, in] (rtn_quantize's values: dequantize(quantize(W))). Its codes go to
// `packed[name]` for an exact export without quantizing again (K-quants: ggml's scale search run
// again on its own output may choose other scales).
std::vector<float> rtn_with_codes(const float* w, int64_t out, int64_t in, const format& f, uint64_t& tensor_id,
                                  std::map<std::string, quantized_tensor>& packed, const std::string& name);

// The methods' group functions (each in its method's file).
group_result rtn_group(const group_job& job);          // common.cpp
group_result gptq_group(const group_job& job);         // gptq.cpp
group_result awq_group(const group_job& job);          // awq.cpp
group_result smoothquant_group(const group_job& job);  // smoothquant.cpp
group_result imatrix_group(const group_job& job);      // search.cpp
group_result powerquant_group(const group_job& job);   // search.cpp
group_result llmfp4_group(const group_job& job);       // llmfp4.cpp
group_result adaround_group(const group_job& job);     // adaround.cpp
group_result nupes_group(const group_job& job);        // search.cpp

}  // namespace lowbit::ptq

// The quantize job (docs/ptq.md "The quantize job"; docs/conventions.md §20-22): a model file and
// calibration text in, a quantized GGUF or safetensors file out — pipeline -> shards -> export ->
// verify — as one library call, so `lowbit quantize`, a sweep or a binding run the same job:
//   1. checks (the output's container, --force) and options, before any work;
//   2. the pipeline, streamed from the memory-mapped model (quantize_to_shards), every finished
//      block a shard in OUT.partial/ so a killed job resumes; --rotate in memory (quantize_model);
//   3. the output assembled from the shards one tensor at a time, with the tokenizer's location and
//      the provenance; GGUF in llama.cpp's own types (wider where rows do not fit a block);
//   4. with eval_tokens > 0, the model as made and the file as written evaluated: both must agree
//      to the last bit; then OUT.partial/ is removed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/ptq/pipeline.hpp"

namespace lowbit::ptq {

// The job's inputs, as `lowbit quantize` takes them (its flags in parentheses); names and specs
// are parsed by the job, so a bad one is reported in the CLI's order.
struct quantize_job_config {
  std::string model;           // --model: safetensors, GGUF or llama2.c
  std::string tokenizer;       // --tokenizer ("": the model's)
  std::string data;            // --data: calibration text, windows from its second half
  std::string weights;         // --weights: the format spec, e.g. int4/g32
  std::string method = "gptq";  // --method: a name of the method table (methods.hpp)
  std::string out;             // -o: .safetensors or .gguf
  int calib_samples = 128, calib_ctx = 256;
  uint64_t seed = 0;           // the windows' draw and --rotate's signs
  double damp = 0.01;          // GPTQ dampening
  bool act_order = false;      // GPTQ
  double alpha = 0.5;          // SmoothQuant migration strength
  int lorc_rank = 0;
  std::string lorc_format;     // "": float factors
  // --adaround-iters, --adaround-lambda (--method adaround only; unset: adaround_options' defaults)
  std::optional<int> adaround_iters;
  std::optional<double> adaround_lambda;
  bool shared_pow2_scales = false;  // --shared-pow2-scales (rtn, adaround)
  bool bias_correct = false, preshift = false, equalize = false, rotate = false;
  bool force = false;          // replace an existing output
  bool float_values = false;   // safetensors: float values (HF layout) instead of codes + scales
  int64_t eval_tokens = 0;     // > 0: evaluate in memory and from the file on the first N tokens
};

struct quantize_job_hooks {
  ptq_progress progress;                         // each pipeline step (may throw to stop the job)
  std::function<void(const std::string&)> note;  // a line for the user (e.g. resuming from ...)
  std::function<void()> quantized;               // the pipeline is done; the export follows
};

struct quantize_job {
  quantize_options options;  // as the pipeline ran (parsed method and formats)
  quantize_report report;
  std::unique_ptr<tensor_reader> source;  // the input model, still open (for records of the run)
  bool gguf = false;
  uint32_t gguf_type = 0;                 // the ggml type of the weights' format (GGUF)
  // Weights written otherwise: GGUF, a wider type (rows not a multiple of the block); safetensors,
  // float values (not values of the format alone).
  std::vector<std::string> fallbacks;
  double peak_rss_mib = 0;                // of quantization and assembly (before any evaluation)
  std::optional<eval_result> in_memory, written;  // eval_tokens > 0
};

// Step 1's options without the output: the method, formats and options parsed, and every option
// that would change nothing for the method refused (lowbit::error naming the flag). A sweep's
// method objects (explore/sweep.hpp) are checked by this.
quantize_options quantize_options_of(const quantize_job_config& config);

quantize_job run_quantize_job(const quantize_job_config& config, const quantize_job_hooks& hooks = {});

// The job's report, `quantize --json`'s document: out, method, weights (as typed and canonical),
// seconds, windows_available, layers (name, seconds, error, rtn_error), fallbacks, the mean NLL
// in memory and from the file (0 without eval_tokens) and peak_rss_mib.
nlohmann::json quantize_job_json(const quantize_job_config& config, const quantize_job& job);


}  // namespace lowbit::ptq

// The quantize job (job.hpp): pipeline -> shards -> export -> verify.
#include "lowbit/ptq/job.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/base/hash.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"

namespace fs = std::filesystem;

namespace lowbit::ptq {

quantize_options quantize_options_of(const quantize_job_config& c) {
  quantize_options qo;
  qo.how = parse_method(c.method);
  qo.weights = parse_format(c.weights);
  qo.calib_samples = c.calib_samples, qo.calib_ctx = c.calib_ctx, qo.seed = c.seed;
  qo.gptq.percdamp = c.damp, qo.gptq.act_order = c.act_order;
  qo.smooth_alpha = c.alpha;
  qo.lorc_rank = c.lorc_rank;
  qo.lorc_format = parse_optional_format(c.lorc_format);
  // Options that would change nothing are refused, not ignored.
  if (c.lorc_rank < 0) throw error(fmt::format("quantize: --lorc-rank {}: expected a rank >= 0", c.lorc_rank));
  if (qo.lorc_format && c.lorc_rank == 0)
    throw error(fmt::format("quantize: --lorc-format {} without --lorc-rank: there are no LoRC factors to quantize",
                            c.lorc_format));
  if ((c.adaround_iters || c.adaround_lambda) && qo.how != method::adaround)
    throw error(fmt::format("quantize: --adaround-iters / --adaround-lambda apply to --method adaround, not {}",
                            c.method));
  if (c.shared_pow2_scales && qo.how != method::rtn && qo.how != method::adaround)
    throw error(fmt::format("quantize: --shared-pow2-scales applies to --method rtn and adaround (which take RTN's "
                            "group scales), not {}, which chooses its own", c.method));
  if (c.shared_pow2_scales) {
    const float probe[2] = {1.0f, 0.5f};  // the format is checked before any work
    (void)shared_pow2_quantize(probe, 1, 2, qo.weights);
  }
  qo.shared_pow2_scales = c.shared_pow2_scales;
  if (c.adaround_iters) qo.adaround.iters = *c.adaround_iters;
  if (c.adaround_lambda) qo.adaround.lambda = *c.adaround_lambda;
  if (qo.adaround.iters < 0) throw error(fmt::format("quantize: --adaround-iters {}: expected >= 0", qo.adaround.iters));
  if (!(qo.adaround.lambda >= 0) || !std::isfinite(qo.adaround.lambda))
    throw error(fmt::format("quantize: --adaround-lambda {}: expected a finite value >= 0", qo.adaround.lambda));
  qo.bias_correct = c.bias_correct;
  qo.llmfp4_preshift = c.preshift;
  qo.equalize = c.equalize;
  qo.rotate = c.rotate;
  qo.rotate_seed = c.seed;
  return qo;
}

namespace {

// Step 1: the output's container and the options, checked before any work.
quantize_options job_options(const quantize_job_config& c) {
  if (!c.out.ends_with(".safetensors") && !c.out.ends_with(".gguf"))
    throw error(fmt::format("quantize: -o {}: expected a .safetensors or .gguf path", c.out));
  if (fs::exists(c.out) && !c.force) throw error(fmt::format("quantize: {} exists; pass --force to replace it", c.out));
  if (c.lorc_rank > 0 && c.out.ends_with(".gguf"))
    throw error(fmt::format("quantize: --lorc-rank {} with a GGUF output ({}): a LoRC weight Q + U V is not a value "
                            "of the format and llama.cpp's types have no place for the factors; write .safetensors",
                            c.lorc_rank, c.out));
  quantize_options qo = quantize_options_of(c);
  // A GGUF output: weights whose rows do not fit the type's block are quantized in llama.cpp's
  // fallback type (docs/conventions.md §22).
  qo.gguf_fallbacks = c.out.ends_with(".gguf");
  // Every finished block goes to a shard beside the output, so a killed run resumes.
  qo.checkpoint_dir = c.out + ".partial";
  return qo;
}

// Step 3's header: where the tokenizer is (a llama2.c model's tokenizer is a file beside it or
// --tokenizer) and the provenance travel with the file.
void describe_output(model& header, const quantize_job_config& c, const quantize_options& qo) {
  if (header.tokenizer.kind.empty() || header.tokenizer.kind == "llama2c") {
    const std::string file =
        c.tokenizer.empty() ? tokenizer_file_beside(c.model, header.config.vocab_size) : c.tokenizer;
    if (!file.empty()) header.tokenizer = {"file", fs::absolute(file).string()};
  }
  header.provenance = nlohmann::json{{"method", c.method}, {"weights", c.weights},
                                     {"weights_canonical", format_name(qo.weights)}, {"source_model", c.model},
                                     {"calibration_data", c.data}, {"calibration_hash", file_fingerprint(c.data)},
                                     {"calib_samples", c.calib_samples}, {"calib_ctx", c.calib_ctx},
                                     {"seed", c.seed}}.dump();
}

// Step 3: the output, written from the shards one tensor at a time; returns the fallbacks.
std::vector<std::string> export_output(const tensor_reader& quantized, const quantize_job_config& c, const quantize_job& job) {
  const model& header = quantized.header;
  std::vector<std::string> fallbacks;
  if (job.gguf) {  // llama.cpp's own types, its fallback where rows do not fit a block (F16: rounded onto it)
    std::map<std::string, uint32_t> types;
    std::set<std::string> rounded;
    fallbacks = gguf_export_types(header, job.gguf_type, types, &rounded, job.options.gguf_fallbacks);
    save_gguf_model(quantized, c.out, types, rounded);
  } else if (c.float_values) {
    save_safetensors_model(quantized, c.out, "F32", false);
  } else {  // codes and scales where the weights are values of the format
    const std::vector<std::string> coded = quantized.coded_names();
    for (const std::string& name : header.linear_weight_names())
      if (!std::binary_search(coded.begin(), coded.end(), name)) fallbacks.push_back(name);
    save_safetensors_model(quantized, c.out, "F32", true);
  }
  return fallbacks;
}

// Step 4: the model as the pipeline produced it (its shards, with the export's GGUF fallbacks),
// evaluated whole in memory, and the file as written, read back: the two must agree to the last
// bit, or the writer changed a weight (an error; the shards are kept to look at).
void verify_output(const tensor_reader& quantized, const std::vector<int32_t>& ids, const quantize_job_config& c,
                   quantize_job& job) {
  eval_options eo;
  eo.max_tokens = c.eval_tokens;
  {
    model produced = read_whole_model(quantized);
    if (job.gguf) {
      gguf_export ex;
      plan_gguf_export(produced, job.gguf_type, ex, job.options.gguf_fallbacks);
    }
    job.in_memory = evaluate(produced, quant_plan{}, ids, eo);
  }
  job.written = evaluate(load_model(c.out), quant_plan{}, ids, eo);
  if (job.written->mean_nll != job.in_memory->mean_nll)
    throw error(fmt::format("quantize: {} evaluates to mean NLL {:.17g}, the quantized model in memory to {:.17g}: "
                            "the file does not hold the weights the pipeline made (shards kept in {})",
                            c.out, job.written->mean_nll, job.in_memory->mean_nll, job.options.checkpoint_dir));
}

}  // namespace

quantize_job run_quantize_job(const quantize_job_config& c, const quantize_job_hooks& hooks) {
  quantize_job job;
  job.options = job_options(c);
  const quantize_options& qo = job.options;
  // GGUF: llama.cpp's own tensor type for the format, decided before any work.
  job.gguf = c.out.ends_with(".gguf");
  job.gguf_type = job.gguf ? ggml_type_for_format(qo.weights) : 0;
  // The model stays in its (memory-mapped) file: the pipeline reads one block's weights at a time.
  job.source = open_model_reader(c.model);
  const auto tok = tokenizer_for_model(job.source->header, c.tokenizer);
  const std::vector<int32_t> ids = encode_documents(*tok, read_file(c.data, "data file"));

  // Step 2. One run per output: the checkpoint directory is locked for the run (a second
  // `quantize` with the same -o is refused instead of interleaving shards with this one); an empty
  // one left by a run that stopped before its first block is removed.
  fs::create_directories(qo.checkpoint_dir);
  struct remove_if_empty {
    std::string dir;
    ~remove_if_empty() {
      std::error_code ec;
      if (fs::is_empty(dir, ec) && !ec) fs::remove(dir, ec);
    }
  } tidy{qo.checkpoint_dir};
  const exclusive_lock lock(qo.checkpoint_dir, "quantize -o " + c.out);
  if (fs::exists(fs::path(qo.checkpoint_dir) / "state.json") && hooks.note)
    hooks.note(fmt::format("quantize: resuming from {}", qo.checkpoint_dir));
  std::optional<model> whole;  // --rotate only
  std::unique_ptr<tensor_reader> whole_reader;
  std::unique_ptr<tensor_reader> quantized;
  if (qo.rotate) {
    // The rotation changes the embeddings, the classifier and every block at once: this one
    // option quantizes the whole model in memory (with the same per-block checkpoints). The
    // blocks, codes included, come from those shards as in a streamed run; the rest (rotated)
    // from the model in memory.
    whole = read_whole_model(*job.source);
    job.report = quantize_model(*whole, ids, qo, hooks.progress);
    whole_reader = reader_of(*whole);
    quantized = read_quantized_shards(*whole_reader, qo.checkpoint_dir);
  } else {
    job.report = quantize_to_shards(*job.source, ids, qo, hooks.progress);
    quantized = read_quantized_shards(*job.source, qo.checkpoint_dir);
  }
  if (hooks.quantized) hooks.quantized();

  // Step 3.
  describe_output(quantized->header, c, qo);
  job.fallbacks = export_output(*quantized, c, job);
  // The peak of quantization and assembly: what follows (eval_tokens) loads whole models.
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  job.peak_rss_mib = double(usage.ru_maxrss) / 1024.0;  // Linux reports KiB

  // Step 4.
  if (c.eval_tokens > 0) verify_output(*quantized, ids, c, job);
  quantized.reset();
  std::error_code ec;
  fs::remove_all(qo.checkpoint_dir, ec);  // the output is complete
  return job;
}

nlohmann::json quantize_job_json(const quantize_job_config& c, const quantize_job& job) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : job.report.layers)
    layers.push_back({{"name", l.name}, {"seconds", l.seconds}, {"error", l.error}, {"rtn_error", l.rtn_error}});
  return {{"out", c.out}, {"method", c.method},
          {"weights", {{"format", c.weights}, {"canonical", format_name(job.options.weights)}}},
          {"seconds", job.report.seconds}, {"windows_available", job.report.windows_available},
          {"layers", layers}, {"fallbacks", job.fallbacks},
          {"in_memory_mean_nll", job.in_memory ? job.in_memory->mean_nll : 0.0},
          {"file_mean_nll", job.written ? job.written->mean_nll : 0.0},
          {"peak_rss_mib", job.peak_rss_mib}};
}

}  // namespace lowbit::ptq

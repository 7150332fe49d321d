// `lowbit quantize`: post-training quantization of a model, written to safetensors or GGUF: the
// flags, the job (ptq/job.hpp: run_quantize_job), the report and the run record
// (docs/conventions.md §20-22).
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <iostream>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/io/gguf.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/runs/records.hpp"
#include "lowbit/ptq/job.hpp"
#include "lowbit/ptq/mixed.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"

namespace fs = std::filesystem;

namespace lowbit::cli {
namespace {

struct quantize_cli_options {
  std::string model, tokenizer, data, weights, method = "gptq", out;
  int calib_samples = 128, calib_ctx = 256;
  int64_t eval_tokens = 0;
  uint64_t seed = 0;
  bool force = false, json = false, act_order = false, bias_correct = false, float_values = false;
  bool preshift = false, equalize = false, rotate = false, shared_pow2 = false;
  int lorc_rank = 0;
  std::string lorc_format;
  std::optional<int> adaround_iters;
  std::optional<double> adaround_lambda;
  double damp = 0.01, alpha = 0.5;
  std::string db;  // record the run in this results database
};

// `quantize --db`: the run as a record of the results store. Every option that changes the
// weights is in the config (and so in its hash); the output path rides along under "paths".
// `original` is read one tensor at a time.
void record_quantize(const quantize_cli_options& o, const ptq::quantize_options& qo, const tensor_reader& original,
                     const ptq::quantize_report& r, const eval_result* ev) {
  quant_plan w;
  w.weights = qo.weights, w.weights_spec = o.weights;
  run_record rec = model_run_record("quantize", fs::path(o.model).stem().string(),  // the path is in config.paths
                                    original.header.config, o.weights, o.method, w);
  rec.config = {{"kind", "quantize"}, {"model", file_fingerprint(o.model)},
                {"tokenizer", tokenizer_identity(o.tokenizer)},
                {"data", file_fingerprint(o.data)}, {"weights", format_name(qo.weights)}, {"method", o.method},
                {"calib_samples", o.calib_samples}, {"calib_ctx", o.calib_ctx}, {"seed", o.seed},
                {"damp", o.damp}, {"act_order", o.act_order}, {"alpha", o.alpha}, {"lorc_rank", o.lorc_rank},
                {"lorc_format", o.lorc_format}, {"bias_correction", o.bias_correct}, {"preshift", o.preshift},
                {"equalize", o.equalize}, {"rotate", o.rotate}, {"eval_tokens", o.eval_tokens},
                {"output", std::string(o.out.ends_with(".gguf") ? "gguf" : o.float_values ? "safetensors-float" : "safetensors")},
                {"paths", {{"model", absolute_path(o.model)}, {"data", absolute_path(o.data)},
                           {"out", absolute_path(o.out)}, {"tokenizer", tokenizer_path(o.tokenizer)}}}};
  if (qo.shared_pow2_scales) rec.config["shared_pow2_scales"] = true;
  if (qo.how == ptq::method::adaround) {  // (only then: other methods' config hashes are those of before)
    rec.config["adaround_iters"] = qo.adaround.iters;
    rec.config["adaround_lambda"] = qo.adaround.lambda;
  }
  double err = 0, rtn = 0;
  for (const auto& l : r.layers) err += l.error, rtn += l.rtn_error;
  // The format's own round-to-nearest SQNR on the original weights (cheap: one pass, one tensor
  // in memory at a time).
  const double sqnr = mean_sqnr_db(weight_plan_reports(original, w));
  // The evaluation's metrics (--eval-tokens) under their usual names, but "seconds" is the
  // quantization's time (the evaluation's is eval_seconds).
  if (ev) {
    add_evaluation(rec, *ev);
    rec.metrics["eval_seconds"] = ev->seconds;
  }
  rec.metrics["seconds"] = r.seconds;
  rec.metrics["calib_error"] = err;
  rec.metrics["calib_rtn_error"] = rtn;
  rec.metrics["bits_per_weight"] = average_linear_bits(original.header, w);
  rec.metrics["sqnr_db"] = sqnr;
  if (rtn > 0) rec.metrics["calib_error_ratio"] = err / rtn;
  record_run(o.db, rec, "quantize");
}

// Test hook, not for users: LOWBIT_QUANTIZE_STOP_AFTER_STEPS=N (N >= 1) stops `quantize` at its
// N-th progress step, as a kill would, so tests can check that the next run resumes. 0 = unset.
int64_t stop_after_steps() {
  const char* v = std::getenv("LOWBIT_QUANTIZE_STOP_AFTER_STEPS");
  if (!v) return 0;
  const std::string text(v);
  int64_t n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size() || n < 1)
    throw error(fmt::format("LOWBIT_QUANTIZE_STOP_AFTER_STEPS='{}': expected a step count >= 1 (a test hook: "
                            "unset it)", text));
  return n;
}

// The job's report: one JSON document (--json) or a few lines.
void print_quantize(const quantize_cli_options& o, const ptq::quantize_job_config& c, const ptq::quantize_job& job) {
  const ptq::quantize_report& r = job.report;
  const std::optional<eval_result>& in_memory = job.in_memory;
  const std::optional<eval_result>& written = job.written;
  double err = 0, rtn = 0;
  for (const auto& l : r.layers) err += l.error, rtn += l.rtn_error;
  if (o.json) {
    std::cout << ptq::quantize_job_json(c, job).dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("{}: {} {} of {} linear weights in {:.2f} s (peak RSS {:.0f} MiB)", o.out, o.method,
                           format_name(job.options.weights), r.layers.size(), r.seconds, job.peak_rss_mib);
  if (rtn > 0)
    std::cout << fmt::format("; calibration output error {:.4g} vs RTN {:.4g} ({:.1f}%)", err, rtn,
                             100.0 * err / rtn);
  std::cout << "\n";
  if (o.eval_tokens > 0)
    std::cout << fmt::format("mean NLL on the first {} tokens: {:.6f} in memory, {:.6f} from {}\n", o.eval_tokens,
                             in_memory->mean_nll, written->mean_nll, o.out);
  if (!job.fallbacks.empty())
    std::cout << fmt::format("{} weights kept as {}: {}\n", job.fallbacks.size(),
                             job.gguf ? fmt::format("llama.cpp's fallback GGUF type (rows not a multiple of the {} block of {})",
                                                    ggml_type_name(static_cast<ggml_type>(job.gguf_type)),
                                                    ggml_block_size(static_cast<ggml_type>(job.gguf_type)))
                                      : std::string("float values (not values of the format alone)"),
                             fmt::join(job.fallbacks, ", "));
}

// Flags in, one library job (ptq/job.hpp), the report out.
void cmd_quantize(const quantize_cli_options& o) {
  const ptq::quantize_job_config c{.model = o.model, .tokenizer = o.tokenizer, .data = o.data, .weights = o.weights,
                                   .method = o.method, .out = o.out, .calib_samples = o.calib_samples,
                                   .calib_ctx = o.calib_ctx, .seed = o.seed, .damp = o.damp, .act_order = o.act_order,
                                   .alpha = o.alpha, .lorc_rank = o.lorc_rank, .lorc_format = o.lorc_format,
                                   .adaround_iters = o.adaround_iters, .adaround_lambda = o.adaround_lambda,
                                   .shared_pow2_scales = o.shared_pow2,
                                   .bias_correct = o.bias_correct, .preshift = o.preshift, .equalize = o.equalize,
                                   .rotate = o.rotate, .force = o.force, .float_values = o.float_values,
                                   .eval_tokens = o.eval_tokens};
  progress_bar bar(fmt::format("quantize {} {}", o.method, o.weights), "step");
  // The test hook is read at the first step: after the job has checked its inputs, before any
  // shard is written; -1: not read yet.
  int64_t stop_after = -1, steps_seen = 0;
  ptq::quantize_job_hooks hooks;
  hooks.note = [](const std::string& line) { std::cerr << line << "\n"; };
  hooks.progress = [&](int64_t d, int64_t t) {
    if (stop_after < 0) stop_after = stop_after_steps();
    bar.update(d, t);
    if (stop_after > 0 && ++steps_seen == stop_after)
      throw error(fmt::format("quantize: stopped after {} steps (LOWBIT_QUANTIZE_STOP_AFTER_STEPS, for tests)",
                              stop_after));
  };
  hooks.quantized = [&] { bar.finish(); };
  const ptq::quantize_job job = ptq::run_quantize_job(c, hooks);
  if (!o.db.empty())
    record_quantize(o, job.options, *job.source, job.report, job.written ? &*job.written : nullptr);
  print_quantize(o, c, job);
}

struct mixed_cli_options {
  std::string model, tokenizer, data, out;
  std::vector<std::string> formats;
  double budget = 0;
  int calib_samples = 16, calib_ctx = 256;
  uint64_t seed = 0;
  bool json = false, force = false;
};

void cmd_mixed(const mixed_cli_options& o) {
  if (fs::exists(o.out) && !o.force)
    throw error(fmt::format("mixed: {} exists; pass --force to replace it", o.out));
  const model m = load_model(o.model);
  const auto tok = tokenizer_for_model(m, o.tokenizer);
  const std::vector<int32_t> ids = encode_documents(*tok, read_file(o.data, "data file"));
  ptq::mixed_options mo;
  mo.formats = o.formats, mo.budget_bits = o.budget;
  mo.calib_samples = o.calib_samples, mo.calib_ctx = o.calib_ctx, mo.seed = o.seed;
  progress_bar bar("mixed precision: sensitivities", "eval");
  const ptq::mixed_result r = ptq::allocate_mixed_precision(m, ids, mo, [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  nlohmann::json rules = nlohmann::json::array();
  for (const auto& l : r.layers) rules.push_back({{"pattern", l.name}, {"format", l.format}});
  const nlohmann::json doc = {{"rules", rules}, {"average_bits", r.average_bits}, {"budget_bits", o.budget},
                              {"source_model", o.model}, {"candidates", r.formats}};
  write_text_file_atomic(o.out, doc.dump(2) + "\n");
  if (o.json) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : r.layers)
      layers.push_back({{"name", l.name}, {"format", l.format}, {"delta_nll", l.delta_nll}});
    std::cout << nlohmann::json{{"out", o.out}, {"average_bits", r.average_bits}, {"base_nll", r.base_nll},
                                {"formats", r.formats}, {"format_bits", r.format_bits}, {"layers", layers}}.dump(2)
              << "\n";
    return;
  }
  table t{{"weight", "format"}, {}};
  for (const std::string& f : r.formats) t.header.push_back("dNLL " + f);
  for (const auto& l : r.layers) {
    std::vector<std::string> row{l.name, l.format};
    for (double d : l.delta_nll) row.push_back(fmt::format("{:+.5f}", d));
    t.rows.push_back(row);
  }
  std::cout << t.render();
  std::cout << fmt::format("{}: {:.3f} bits/weight (budget {}); use it with lowbit eval --rules {}\n", o.out,
                           r.average_bits, o.budget, o.out);
}

}  // namespace

void add_ptq_commands(CLI::App& app, command_list& commands) {
  static mixed_cli_options mo;
  auto* mx = app.add_subcommand("mixed", "mixed-precision weight formats under a bits budget, by measured sensitivity");
  mx->add_option("--model", mo.model, "model file")->required();
  mx->add_option("--tokenizer", mo.tokenizer, "tokenizer (default: the model's)");
  mx->add_option("--data", mo.data, "calibration text: windows drawn from its second half")->required();
  mx->add_option("--formats", mo.formats, "candidate weight formats, e.g. int8/c int4/g32 int3/g32")->required()->delimiter(',');
  mx->add_option("--budget", mo.budget, "average bits per linear weight")->required();
  mx->add_option("--calib-samples", mo.calib_samples, "calibration windows")->capture_default_str();
  mx->add_option("--calib-ctx", mo.calib_ctx, "tokens per window")->capture_default_str();
  mx->add_option("--seed", mo.seed, "window draw seed")->capture_default_str();
  mx->add_option("-o,--out", mo.out, "rules.json for lowbit eval --rules")->required();
  mx->add_flag("--force", mo.force, "replace an existing output");
  mx->add_flag("--json", mo.json, "one JSON document");
  commands.push_back({mx, [] { cmd_mixed(mo); }});

  static quantize_cli_options o;
  // The method names come from the method table (ptq/methods.hpp), as parse_method's error does.
  auto* q = app.add_subcommand(
      "quantize", fmt::format("post-training quantization ({}) to a file", ptq::method_names(", ", ", ")));
  q->add_option("--model", o.model, "model file")->required();
  q->add_option("--tokenizer", o.tokenizer, "tokenizer (default: the model's)");
  q->add_option("--data", o.data, "calibration text: windows drawn from its second half")->required();
  q->add_option("--weights", o.weights, "weight format, e.g. int4/g32, mxfp4, nvfp4")->required();
  q->add_option("--method", o.method, ptq::method_names(" | ", " | "))->capture_default_str();
  q->add_option("--calib-samples", o.calib_samples, "calibration windows")->capture_default_str();
  q->add_option("--calib-ctx", o.calib_ctx, "tokens per calibration window")->capture_default_str();
  q->add_option("--seed", o.seed, "window draw seed")->capture_default_str();
  q->add_option("--damp", o.damp, "GPTQ dampening (fraction of mean diag H)")->capture_default_str();
  q->add_flag("--act-order", o.act_order, "GPTQ: columns in order of decreasing Hessian diagonal");
  q->add_option("--alpha", o.alpha, "SmoothQuant migration strength")->capture_default_str();
  q->add_option("--adaround-iters", o.adaround_iters, "AdaRound: Adam steps per layer (default 500)");
  q->add_option("--adaround-lambda", o.adaround_lambda, "AdaRound: rounding regulariser weight (default 0.01)");
  q->add_flag("--shared-pow2-scales", o.shared_pow2,
             "ZeroQuant-FP: each group scale = its row's largest times 2^-k (rtn, adaround; e.g. e2m1/g32)");
  q->add_option("--lorc-rank", o.lorc_rank,
                "LoRC: add the rank-k part of each weight's quantization error (any method; safetensors output)");
  q->add_option("--lorc-format", o.lorc_format, "format of LoRC's factors (default float), e.g. int8/c");
  q->add_flag("--rotate", o.rotate, "randomized Hadamard rotation of the residual stream (QuaRot-style; Llama)");
  q->add_flag("--equalize", o.equalize, "cross-layer equalization (v->attn_output, up->ffn_down) before quantizing");
  q->add_flag("--preshift", o.preshift, "LLM-FP4: fold per-channel power-of-two activation shifts into the weights");
  q->add_flag("--bias-correction", o.bias_correct, "correct biases for the mean output error (GPT-2)");
  q->add_option("-o,--out", o.out, "output .safetensors or .gguf")->required();
  q->add_flag("--force", o.force, "replace an existing output");
  q->add_flag("--float", o.float_values, "safetensors: the weights' float values (Hugging Face layout) instead of codes + scales");
  q->add_option("--eval-tokens", o.eval_tokens,
                "also evaluate the quantized model on the first N tokens, in memory and from the written file "
                "(both must agree; loads the whole model twice, after the peak RSS is taken)");
  q->add_flag("--json", o.json, "one JSON document");
  q->add_option("--db", o.db, "record the run in this results database (SQLite; idempotent)");
  commands.push_back({q, [] { cmd_quantize(o); }});
}

}  // namespace lowbit::cli

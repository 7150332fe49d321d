// Model commands: synth, tokenize, eval, generate.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/kernels/packed_matmul.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/text/tokenizer.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/runs/eval_job.hpp"
#include "lowbit/runs/records.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/io/model_io.hpp"

#ifndef LOWBIT_DEFAULT_DATA_DIR
#define LOWBIT_DEFAULT_DATA_DIR "../shared/data"
#endif

namespace lowbit::cli {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The options shared by eval and generate: a model and a quantization plan.
using model_options = task_model_options;


// ---- synth ------------------------------------------------------------------------------------
struct synth_options {
  std::string arch = "llama", out;
  int dim = 256, layers = 4, heads = 8, kv_heads = 0, hidden = 0, vocab = 258, ctx = 512, sliding_window = 0;
  int rope_dim = 0;
  uint64_t seed = 0;
  bool untied = false, post_ln = false, sequential = false, force = false;
};

void cmd_synth(const synth_options& o) {
  // The model carries the byte tokenizer (256 bytes, <s>, </s>): a smaller vocabulary could not
  // embed the ids it produces.
  if (o.vocab < 258)
    throw error(fmt::format("synth --vocab {}: a synthetic model uses the byte tokenizer, which needs >= 258 ids",
                            o.vocab));
  model_config c;
  c.arch = parse_architecture(o.arch);
  c.dim = o.dim, c.n_layers = o.layers, c.n_heads = o.heads;
  c.n_kv_heads = o.kv_heads > 0 ? o.kv_heads : o.heads;
  // The Llama family's SwiGLU width: 2/3 of 4*dim rounded up to a multiple of 32; the others 4*dim.
  c.hidden_dim = o.hidden > 0 ? o.hidden : default_hidden_dim(c.arch, o.dim);
  c.vocab_size = o.vocab, c.max_seq_len = o.ctx, c.tied_classifier = !o.untied;
  c.sliding_window = o.sliding_window;
  if (o.rope_dim > 0) c.rope_dim = o.rope_dim;
  if (o.post_ln) c.norm_before = false;
  if (o.sequential) c.parallel_residual = false;
  const model m = synthesize_model(c, o.seed);
  // An existing output is replaced only with --force; then a config.json beside it that describes
  // another model (the replaced one's) is replaced too, so that the file and its config.json agree.
  if (std::filesystem::exists(o.out)) {
    if (!o.force) throw error(fmt::format("synth: {} exists; pass --force to replace it", o.out));
    const std::filesystem::path cfg_path = std::filesystem::path(o.out).parent_path() / "config.json";
    if (o.out.ends_with(".safetensors") && std::filesystem::is_regular_file(cfg_path)) {
      const nlohmann::json existing = nlohmann::json::parse(read_file(cfg_path.string(), "config.json"), nullptr, false);
      if (existing.is_discarded() || existing != config_to_hf_json(c)) std::filesystem::remove(cfg_path);
    }
  }
  if (o.out.size() >= 5 && o.out.compare(o.out.size() - 5, 5, ".gguf") == 0) save_gguf_model(m, o.out);
  else if (o.out.size() >= 12 && o.out.compare(o.out.size() - 12, 12, ".safetensors") == 0)
    save_safetensors_model(m, o.out);
  else throw error(fmt::format("synth: -o {}: expected a .safetensors or .gguf path", o.out));
  const std::string variants = c.variant_string();
  std::cout << fmt::format("{}: {} with {:.1f}M parameters (dim {}, hidden {}, layers {}, heads {}/{}, "
                           "vocab {}, ctx {}{})\n", o.out, o.arch, c.parameter_count() / 1e6, c.dim,
                           c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len,
                           variants.empty() ? "" : ", " + variants);
}

// ---- tokenize ---------------------------------------------------------------------------------
void cmd_tokenize(const std::string& model_path, const std::string& tok_path,
                  std::vector<std::string> texts, bool bos, bool json) {
  std::unique_ptr<tokenizer> tok;
  if (!model_path.empty()) tok = tokenizer_for_model(load_model(model_path), tok_path);
  else if (!tok_path.empty()) tok = load_tokenizer(tok_path);
  else throw error("tokenize: give --tokenizer or --model");
  if (texts.empty()) {
    std::stringstream ss;
    ss << std::cin.rdbuf();
    texts.push_back(ss.str());
  }
  nlohmann::json out = nlohmann::json::array();
  for (const std::string& t : texts) {
    const auto ids = tok->encode(t, bos, false);
    nlohmann::json pieces = nlohmann::json::array();
    for (size_t i = 0; i < ids.size(); ++i)
      pieces.push_back(tok->decode_token(i ? ids[i - 1] : -1, ids[i]));
    if (json) {
      out.push_back({{"text", t}, {"ids", ids}, {"pieces", pieces}});
    } else {
      std::cout << fmt::format("{} tokens:", ids.size());
      for (size_t i = 0; i < ids.size(); ++i)
        std::cout << fmt::format(" {}:{}", ids[i], nlohmann::json(pieces[i]).dump(-1, ' ', false,
                                 nlohmann::json::error_handler_t::replace));
      std::cout << "\n";
    }
  }
  if (json) std::cout << out.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

// ---- eval -------------------------------------------------------------------------------------
struct eval_cli_options {
  model_options m;
  std::string data;
  int ctx = 0;
  int64_t max_tokens = 0;
  bool kl_base = false, json = false, sgemm_peak = false;
  std::string db;  // record the run in this results database
  std::string task;     // --task: accuracy on a task file instead of perplexity
  int64_t limit = 0;    // --limit: its first N items
  bool packed = false;  // --packed: linear weights computed from their codes
};

void cmd_eval(const eval_cli_options& o) {
  if (!o.task.empty()) {
    // Task accuracy (docs/evaluation.md "Tasks"): the perplexity options do not apply.
    if (!o.data.empty()) throw error("eval: give --data (perplexity) or --task (accuracy), not both");
    if (o.ctx || o.max_tokens || o.kl_base || o.sgemm_peak || !o.db.empty() || o.packed)
      throw error("eval --task: --ctx, --max-tokens, --kl-base, --sgemm-peak, --db and --packed apply to perplexity "
                  "(--data), not to a task");
    run_task_eval(o.m, o.task, o.limit, o.json);
    return;
  }
  if (o.data.empty()) throw error("eval: give --data (a text file) or --task (a task file)");
  if (o.limit) throw error("eval: --limit applies to --task");
  if (o.packed && !o.db.empty())
    throw error("eval --packed: --db records the simulated (float32) evaluation; run it without --packed");
  const eval_job_config c{.model = o.m.model, .tokenizer = o.m.tokenizer, .data = o.data, .weights = o.m.weights,
                          .acts = o.m.acts, .kv = o.m.kv, .rules = o.m.rules, .ctx = o.ctx,
                          .max_tokens = o.max_tokens, .kl_base = o.kl_base, .attn = o.m.attn,
                          .packed = o.packed};
  progress_bar bar("eval", "tok");
  const eval_job job = run_eval_job(c, [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  const eval_result& r = job.result;
  const quant_plan& plan = job.plan;
  const double bits = job.bits_per_weight;
  // sgemm on the largest linear layer's shape over one window, measured in this same run.
  double peak = 0;
  if (o.sgemm_peak) {
    const model_config& mc = job.config;
    const int window = static_cast<int>(std::min<int64_t>(o.ctx > 0 ? o.ctx : mc.max_seq_len, r.tokens_scored + 1));
    peak = sgemm_gflops(window, std::max(mc.hidden_dim, mc.dim), mc.dim);
  }
  if (!o.db.empty()) record_run(o.db, eval_run_record(c, job), "eval");
  if (o.json) {
    nlohmann::json j = eval_job_json(c, job);
    if (peak > 0) j["sgemm_peak_gflops"] = peak, j["fraction_of_sgemm_peak"] = r.gflops_per_second / peak;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("model   {} ({}, {:.2f}M parameters)\n", o.m.model,
                           architecture_name(job.config.arch), job.config.parameter_count() / 1e6);
  if (o.packed)
    std::cout << fmt::format("plan    {}  packed: {:.3g} bits/weight stored ({} kernel)\n", plan.describe(), bits,
                             packed_kernel_target(false));
  else
    std::cout << fmt::format("plan    {}  ({:.3g} bits/weight over {} quantized tensors)\n",
                             plan.describe(), bits, job.reports.size());
  std::cout << fmt::format("data    {}: {} tokens scored in {} windows\n", o.data, r.tokens_scored, r.windows);
  std::cout << fmt::format("NLL     {:.6f} +/- {:.6f}\n", r.mean_nll, r.nll_stderr);
  std::cout << fmt::format("PPL     {:.4f} +/- {:.4f}\n", r.ppl, r.ppl_stderr);
  if (r.has_kl) {
    std::cout << fmt::format("base    NLL {:.6f}  PPL {:.4f}\n", r.base_mean_nll, r.base_ppl);
    std::cout << fmt::format("KL      mean {:.6f} +/- {:.6f}  p50 {:.6f}  p90 {:.6f}  p99 {:.6f}  max {:.6f}\n",
                             r.kl_mean, r.kl_stderr, r.kl_p50, r.kl_p90, r.kl_p99, r.kl_max);
    std::cout << fmt::format("top-1   {:.2f}% same token as the float model\n", 100 * r.top1_agreement);
  }
  std::cout << fmt::format("speed   {:.0f} tokens/s, {:.2f} GFLOP/s ({:.2f} s)\n", r.tokens_per_second,
                           r.gflops_per_second, r.seconds);
  if (peak > 0)
    std::cout << fmt::format("sgemm   {:.2f} GFLOP/s peak in this run: forward at {:.0f}% of it\n", peak,
                             100 * r.gflops_per_second / peak);
}

// ---- generate ---------------------------------------------------------------------------------
struct generate_options {
  model_options m;
  std::string prompt;
  bool greedy = false;
  double temperature = 1.0;
  uint64_t seed = 0;
  int max_tokens = 256;
  bool packed = false;
};

void cmd_generate(const generate_options& o) {
  const quant_plan plan = o.m.plan();
  model mdl;
  if (o.packed) {
    packed_load_report rep;
    mdl = load_packed_model(o.m.model, plan, &rep);
    std::cerr << fmt::format("generate: packed {} ({:.1f} MiB of codes and scales, {:.1f} MiB float; {} kernel)\n",
                             fmt::join(rep.formats, ", "), rep.packed_bytes / 1048576.0, rep.float_bytes / 1048576.0,
                             packed_kernel_target(false));
  } else {
    mdl = load_model(o.m.model);
    apply_weight_plan(mdl, plan);
  }
  const auto tok = tokenizer_for_model(mdl, o.m.tokenizer);
  std::vector<int32_t> ids = tok->encode(o.prompt, true, false);
  const int steps = std::min(o.max_tokens, mdl.config.max_seq_len);
  if (static_cast<int>(ids.size()) >= steps)
    throw error(fmt::format("generate: the prompt has {} tokens; --max-tokens {} leaves no room",
                            ids.size(), steps));
  forward_session s(mdl, plan, steps);
  std::mt19937_64 rng(o.seed);
  const bool greedy = o.greedy || o.temperature <= 0;
  // As llama2.c: the prompt runs first (one batch), then one token at a time until BOS/EOS or
  // the step budget; text streams as it is made.
  const std::vector<float>* logits = &s.forward(ids.data(), static_cast<int>(ids.size()));
  int prev = ids.back();
  for (size_t i = 1; i < ids.size(); ++i) std::cout << tok->decode_token(ids[i - 1], ids[i]);
  const int V = mdl.config.vocab_size;
  const double t0 = now_seconds();
  int generated = 0;
  while (s.pos() < steps) {
    const float* row = logits->data() + (logits->size() / V - 1) * V;
    int next = 0;
    if (greedy) {
      next = static_cast<int>(std::max_element(row, row + V) - row);
    } else {
      std::vector<double> p(V);
      double mx = *std::max_element(row, row + V), sum = 0;
      for (int v = 0; v < V; ++v) sum += p[v] = std::exp((row[v] - mx) / o.temperature);
      std::discrete_distribution<int> dist(p.begin(), p.end());
      next = dist(rng);
    }
    if (next == tok->bos_id() || next == tok->eos_id()) break;
    std::cout << tok->decode_token(prev, next) << std::flush;
    prev = next;
    ++generated;
    logits = &s.forward(&next, 1);
  }
  std::cout << "\n";
  std::cerr << fmt::format("generate: {} tokens, {:.1f} tokens/s\n", generated,
                           generated / std::max(1e-9, now_seconds() - t0));
}

}  // namespace

std::string data_dir() { return shipped_data_dir(LOWBIT_DEFAULT_DATA_DIR); }

void task_model_options::add(CLI::App* c) {
  c->add_option("--model", model, "model file: llama2.c .bin, .safetensors (+config.json) or .gguf")->required();
  c->add_option("--tokenizer", tokenizer, "tokenizer: tokenizer.bin, encoder.json/dir, .model or 'bytes'");
  c->add_option("--weights", weights, "format of the linear weights (round to nearest), e.g. int4/g32");
  c->add_option("--acts", acts, "format of each linear layer's input (per-token scales with /c)");
  c->add_option("--kv", kv, "format of the KV cache (rows = token x head)");
  c->add_option("--rules", rules,
                "rules.json: per-tensor weight formats and the plan (act_rules, kv_rules, attn; "
                "static act scales from `lowbit calibrate`)");
  c->add_option("--attn", attn,
                "format of attention's GEMM operands Q, K, P, V (FP8 attention: e4m3; per operand: rules.json "
                "\"attn\")");
}

quant_plan task_model_options::plan() const { return make_quant_plan(rules, weights, acts, kv, attn); }


progress_bar::progress_bar(std::string label, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), start_(now_seconds()), tty_(isatty(2)) {}

void progress_bar::update(int64_t done, int64_t total) {
  if (total <= 0) return;
  const double frac = std::min(1.0, double(done) / total);
  const double el = now_seconds() - start_;
  const double rate = el > 0 ? done / el : 0;
  const double eta = rate > 0 ? (total - done) / rate : 0;
  const int decile = static_cast<int>(frac * 10);
  if (!tty_ && decile == last_decile_) return;
  last_decile_ = decile;
  const int width = 30, fill = static_cast<int>(frac * width);
  std::cerr << fmt::format("{}{} [{}{}] {:3.0f}% {}/{} {} {:.1f} {}/s ETA {:.0f}s{}", tty_ ? "\r" : "",
                           label_, std::string(fill, '#'), std::string(width - fill, ' '), 100 * frac,
                           done, total, unit_, rate, unit_, eta, tty_ ? "" : "\n");
  drawn_ = true;
}

void progress_bar::finish() {
  if (drawn_ && tty_) std::cerr << "\n";
}

void add_model_commands(CLI::App& app, command_list& commands) {
  static synth_options so;
  auto* synth = app.add_subcommand("synth", "write a random model of any family (byte tokenizer)");
  synth->add_option("--arch", so.arch, "llama | gpt2 | mistral | qwen2 | gptneox | opt")->capture_default_str();
  synth->add_option("--dim", so.dim, "residual width")->capture_default_str();
  synth->add_option("--layers", so.layers, "blocks")->capture_default_str();
  synth->add_option("--heads", so.heads, "attention heads")->capture_default_str();
  synth->add_option("--kv-heads", so.kv_heads, "key/value heads (default: --heads)");
  synth->add_option("--hidden", so.hidden,
                    "MLP width (default: llama, mistral, qwen2 8/3*dim rounded to 32; gpt2, gptneox, opt 4*dim)");
  synth->add_option("--sliding-window", so.sliding_window, "mistral: attend to the last N positions (0: all)");
  synth->add_option("--rope-dim", so.rope_dim, "gptneox: rotated dims per head (default head_dim / 4)");
  synth->add_flag("--post-ln", so.post_ln, "opt: LayerNorm after each sublayer (do_layer_norm_before = false)");
  synth->add_flag("--sequential", so.sequential, "gptneox: attention then MLP (use_parallel_residual = false)");
  synth->add_option("--vocab", so.vocab, "vocabulary (>= 258 for the byte tokenizer)")->capture_default_str();
  synth->add_option("--ctx", so.ctx, "maximum context")->capture_default_str();
  synth->add_option("--seed", so.seed, "random seed")->capture_default_str();
  synth->add_flag("--untied", so.untied, "a separate classifier matrix");
  synth->add_option("-o,--out", so.out, "output .safetensors (+ config.json) or .gguf")->required();
  synth->add_flag("--force", so.force, "replace an existing output (and a config.json beside it of another model)");
  commands.push_back({synth, [] { cmd_synth(so); }});

  static std::string tk_model, tk_tok;
  static std::vector<std::string> tk_text;
  static bool tk_bos = false, tk_json = false;
  auto* tokenize = app.add_subcommand("tokenize", "show the token ids and pieces of text");
  tokenize->add_option("--model", tk_model, "take the model's tokenizer");
  tokenize->add_option("--tokenizer", tk_tok, "tokenizer file (see eval)");
  tokenize->add_option("TEXT", tk_text, "texts (default: stdin)");
  tokenize->add_flag("--bos", tk_bos, "prepend BOS");
  tokenize->add_flag("--json", tk_json, "one JSON document");
  commands.push_back({tokenize, [] { cmd_tokenize(tk_model, tk_tok, tk_text, tk_bos, tk_json); }});

  static eval_cli_options eo;
  auto* eval = app.add_subcommand("eval", "perplexity (and KL against the float model), or task accuracy, under a plan");
  eo.m.add(eval);
  eval->add_option("--data", eo.data, "text file (documents separated by blank lines)");
  eval->add_option("--task", eo.task, "task file (lowbit task make): accuracy instead of perplexity");
  eval->add_option("--limit", eo.limit, "--task: use its first N items (0: all)");
  eval->add_option("--ctx", eo.ctx, "window length (default: the model's maximum)");
  eval->add_option("--max-tokens", eo.max_tokens, "evaluate the first N tokens (default: all)");
  eval->add_flag("--kl-base", eo.kl_base, "also run the float model: KL divergence and top-1 agreement");
  eval->add_flag("--json", eo.json, "one JSON document");
  eval->add_flag("--sgemm-peak", eo.sgemm_peak, "also measure OpenBLAS sgemm on the model's largest layer shape");
  eval->add_option("--db", eo.db, "record the run in this results database (SQLite; idempotent)");
  eval->add_flag("--packed", eo.packed,
                 "keep the linear weights as codes and compute from them (--weights FMT, or the file's q8_0/q4_0/"
                 "mxfp4 codes; docs/architecture.md \"Packed inference\")");
  commands.push_back({eval, [] { cmd_eval(eo); }});

  static generate_options go;
  auto* gen = app.add_subcommand("generate", "generate text (greedy or sampled)");
  go.m.add(gen);
  gen->add_option("--prompt", go.prompt, "prompt text (default: start from BOS)");
  gen->add_flag("--greedy", go.greedy, "argmax decoding");
  gen->add_option("--temperature", go.temperature, "sampling temperature")->capture_default_str();
  gen->add_option("--seed", go.seed, "sampling seed")->capture_default_str();
  gen->add_flag("--packed", go.packed,
                "keep the linear weights as codes and compute from them (--weights FMT, or the file's codes)");
  gen->add_option("--max-tokens", go.max_tokens, "positions, prompt included (as llama2.c's steps)")->capture_default_str();
  commands.push_back({gen, [] { cmd_generate(go); }});
}

}  // namespace lowbit::cli

// Model commands: synth, tokenize, eval, generate, explore (issue "models").
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/text/tokenizer.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "lowbit/explore/sweep.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"

#ifndef LOWBIT_DEFAULT_DATA_DIR
#define LOWBIT_DEFAULT_DATA_DIR "../shared/data"
#endif

namespace fs = std::filesystem;

namespace lowbit::cli {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The options shared by eval and generate: a model and a quantization plan.
struct model_options {
  std::string model, tokenizer, weights, acts, kv, rules;
  void add(CLI::App* c) {
    c->add_option("--model", model, "model file: llama2.c .bin, .safetensors (+config.json) or .gguf")->required();
    c->add_option("--tokenizer", tokenizer, "tokenizer: tokenizer.bin, encoder.json/dir, .model or 'bytes'");
    c->add_option("--weights", weights, "format of the linear weights (round to nearest), e.g. int4/g32");
    c->add_option("--acts", acts, "format of each linear layer's input (per-token scales with /c)");
    c->add_option("--kv", kv, "format of the KV cache (rows = token x head)");
    c->add_option("--rules", rules, "rules.json: per-tensor weight formats and the plan");
  }
  quant_plan plan() const {
    quant_plan p = rules.empty() ? quant_plan{} : load_plan_json(rules);
    if (!weights.empty()) p.weights = parse_optional_format(weights), p.weights_spec = weights;
    if (!acts.empty()) p.acts = parse_optional_format(acts), p.acts_spec = acts;
    if (!kv.empty()) p.kv = parse_optional_format(kv), p.kv_spec = kv;
    return p;
  }
};

std::string fixed(double v, int digits) { return fmt::format("{:.{}f}", v, digits); }

// ---- synth ------------------------------------------------------------------------------------
struct synth_options {
  std::string arch = "llama", out;
  int dim = 256, layers = 4, heads = 8, kv_heads = 0, hidden = 0, vocab = 258, ctx = 512;
  uint64_t seed = 0;
  bool untied = false;
};

void cmd_synth(const synth_options& o) {
  model_config c;
  c.arch = parse_architecture(o.arch);
  c.dim = o.dim, c.n_layers = o.layers, c.n_heads = o.heads;
  c.n_kv_heads = o.kv_heads > 0 ? o.kv_heads : o.heads;
  // Llama's SwiGLU width: 2/3 of 4*dim rounded up to a multiple of 32; GPT-2's MLP: 4*dim.
  c.hidden_dim = o.hidden > 0 ? o.hidden
                 : c.arch == architecture::llama ? (8 * o.dim / 3 + 31) / 32 * 32 : 4 * o.dim;
  c.vocab_size = o.vocab, c.max_seq_len = o.ctx, c.tied_classifier = !o.untied;
  const model m = synthesize_model(c, o.seed);
  if (o.out.size() >= 5 && o.out.compare(o.out.size() - 5, 5, ".gguf") == 0) save_gguf_model(m, o.out);
  else if (o.out.size() >= 12 && o.out.compare(o.out.size() - 12, 12, ".safetensors") == 0)
    save_safetensors_model(m, o.out);
  else throw error(fmt::format("synth: -o {}: expected a .safetensors or .gguf path", o.out));
  std::cout << fmt::format("{}: {} with {:.1f}M parameters (dim {}, hidden {}, layers {}, heads {}/{}, "
                           "vocab {}, ctx {})\n", o.out, o.arch, c.parameter_count() / 1e6, c.dim,
                           c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len);
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
};

std::string abs_path(const std::string& p) { return p.empty() ? p : fs::absolute(p).lexically_normal().string(); }

// `eval --db`: the run as a record of the results store. The config names files by fingerprint
// (their paths ride along under "paths", outside the hash), so a rerun is recognised wherever
// the files are.
void record_eval(const eval_cli_options& o, const model& base, const quant_plan& plan,
                 const std::vector<weight_quant_report>& reports, const eval_result& r, double bits) {
  auto canonical = [](const std::optional<format>& f) { return f ? format_name(*f) : std::string("fp32"); };
  run_record rec;
  rec.kind = "eval";
  rec.model = fs::path(o.m.model).stem().string();  // the path is in config.paths
  rec.n_params = double(base.config.parameter_count());
  rec.tokens = double(r.tokens_scored);
  rec.format = o.m.weights;
  rec.method = plan.weights ? "rtn" : "none";
  nlohmann::json provenance;
  if (!base.provenance.empty()) {  // a model written by `lowbit quantize`: its format and method
    provenance = nlohmann::json::parse(base.provenance, nullptr, false);
    if (!plan.weights && provenance.is_object()) {
      rec.format = provenance.value("weights", "");
      rec.method = provenance.value("method", "none");
      // A quantized model is its source model for reports and fits.
      if (provenance.contains("source_model"))
        rec.model = fs::path(provenance.value("source_model", o.m.model)).stem().string();
    }
  }
  format_parts(rec.format, rec);
  rec.plan = plan.describe();
  nlohmann::json rules = nullptr;
  if (!o.m.rules.empty()) {
    std::ifstream in(o.m.rules);
    rules = nlohmann::json::parse(in, nullptr, false);
  }
  rec.config = {{"kind", "eval"}, {"model", file_fingerprint(o.m.model)},
                {"tokenizer", o.m.tokenizer.empty() || o.m.tokenizer == "bytes" ? o.m.tokenizer : file_fingerprint(o.m.tokenizer)},
                {"data", file_fingerprint(o.data)}, {"weights", canonical(plan.weights)},
                {"acts", canonical(plan.acts)}, {"kv", canonical(plan.kv)}, {"rules", rules},
                {"ctx", o.ctx}, {"max_tokens", o.max_tokens}, {"kl_base", o.kl_base},
                {"provenance", provenance.is_discarded() ? nlohmann::json(nullptr) : provenance},
                {"paths", {{"model", abs_path(o.m.model)}, {"data", abs_path(o.data)},
                           {"tokenizer", o.m.tokenizer == "bytes" ? o.m.tokenizer : abs_path(o.m.tokenizer)},
                           {"rules", abs_path(o.m.rules)}}}};
  rec.metrics = eval_metrics(r);
  rec.metrics["bits_per_weight"] = bits;
  if (!reports.empty()) rec.metrics["sqnr_db"] = mean_sqnr_db(reports);
  runs_db db(o.db);
  const bool had = db.has(run_hash(rec.config));
  const int64_t id = db.record(rec);
  std::cerr << fmt::format("eval: {} run {} in {}\n", had ? "already recorded as" : "recorded as", id, o.db);
}

nlohmann::json result_json(const eval_result& r) {
  nlohmann::json j = {{"tokens_scored", r.tokens_scored}, {"windows", r.windows},
                      {"mean_nll", r.mean_nll}, {"nll_stderr", r.nll_stderr}, {"ppl", r.ppl},
                      {"ppl_stderr", r.ppl_stderr}, {"seconds", r.seconds},
                      {"tokens_per_second", r.tokens_per_second},
                      {"gflops_per_second", r.gflops_per_second}};
  if (r.has_kl) {
    j["kl"] = {{"mean", r.kl_mean}, {"stderr", r.kl_stderr}, {"p50", r.kl_p50}, {"p90", r.kl_p90},
               {"p99", r.kl_p99}, {"max", r.kl_max}, {"top1_agreement", r.top1_agreement},
               {"base_mean_nll", r.base_mean_nll}, {"base_ppl", r.base_ppl}};
  }
  return j;
}

void cmd_eval(const eval_cli_options& o) {
  const quant_plan plan = o.m.plan();
  model base = load_model(o.m.model);
  const auto tok = tokenizer_for_model(base, o.m.tokenizer);
  const std::vector<int32_t> ids = encode_documents(*tok, read_text_file(o.data));
  model quantized = base;
  const auto reports = apply_weight_plan(quantized, plan);
  eval_options eo;
  eo.ctx = o.ctx, eo.max_tokens = o.max_tokens, eo.kl_base = o.kl_base;
  progress_bar bar("eval", "tok");
  const eval_result r = evaluate(quantized, plan, ids, eo, o.kl_base ? &base : nullptr,
                                 [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  const double bits = average_linear_bits(quantized, plan);
  // sgemm on the largest linear layer's shape over one window, measured in this same run.
  double peak = 0;
  if (o.sgemm_peak) {
    const model_config& c = base.config;
    const int window = static_cast<int>(std::min<int64_t>(o.ctx > 0 ? o.ctx : c.max_seq_len, r.tokens_scored + 1));
    peak = sgemm_gflops(window, std::max(c.hidden_dim, c.dim), c.dim);
  }
  if (!o.db.empty()) record_eval(o, base, plan, reports, r, bits);
  if (o.json) {
    nlohmann::json j = result_json(r);
    j["model"] = o.m.model;
    j["data"] = o.data;
    j["plan"] = plan.describe();
    j["weights"] = {{"format", o.m.weights}, {"canonical", plan.weights ? format_name(*plan.weights) : "fp32"}};
    j["acts"] = {{"format", o.m.acts}, {"canonical", plan.acts ? format_name(*plan.acts) : "fp32"}};
    j["kv"] = {{"format", o.m.kv}, {"canonical", plan.kv ? format_name(*plan.kv) : "fp32"}};
    j["bits_per_weight"] = bits;
    j["quantized_tensors"] = reports.size();
    if (peak > 0) j["sgemm_peak_gflops"] = peak, j["fraction_of_sgemm_peak"] = r.gflops_per_second / peak;
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("model   {} ({}, {:.2f}M parameters)\n", o.m.model,
                           architecture_name(base.config.arch), base.config.parameter_count() / 1e6);
  std::cout << fmt::format("plan    {}  ({:.3g} bits/weight over {} quantized tensors)\n",
                           plan.describe(), bits, reports.size());
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
};

void cmd_generate(const generate_options& o) {
  const quant_plan plan = o.m.plan();
  model mdl = load_model(o.m.model);
  apply_weight_plan(mdl, plan);
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

// ---- explore ----------------------------------------------------------------------------------
struct explore_options {
  std::string model, tokenizer, data, out = "explore-out";
  std::vector<std::string> rows;
  int ctx = 0;
  int64_t max_tokens = 0;
  bool json = false, no_plot = false;
  std::string config, db;  // --config: a sweep recorded in --db (default lowbit.db)
  int jobs = 1;
  int64_t max_runs = -1;
};

// `explore --config sweep.json`: the grid of sweep.hpp, recorded in the results database; the
// table shows every run of the grid, whether it ran now or was already recorded.
void cmd_sweep(const explore_options& o) {
  if (!o.rows.empty() || !o.model.empty() || !o.data.empty() || o.ctx || o.max_tokens)
    throw error("explore: with --config, the models, data, formats and eval settings come from the sweep file "
                "(drop --row/--model/--data/--ctx/--max-tokens)");
  const sweep_config c = load_sweep_config(o.config, data_dir());
  sweep_options so;
  so.db = o.db.empty() ? "lowbit.db" : o.db;
  so.jobs = o.jobs, so.max_runs = o.max_runs;
  progress_bar bar("explore", "run");
  const sweep_summary s = run_sweep(
      c, so, [&](int64_t d, int64_t t) { bar.update(d, t); },
      [&](const sweep_job& j, const run_record*, const std::string& err) {
        if (!err.empty()) std::cerr << fmt::format("\nexplore: {} {} @{} failed: {}\n", j.model.name, plan_label(j.plan), j.method, err);
      });
  bar.finish();
  if (!s.coordinator) return;  // MPI ranks other than 0 print nothing
  const runs_db db(so.db);
  table t{{"model", "weights", "acts", "kv", "method", "ctx", "tokens", "bits/w", "ppl", "dNLL", "KL mean", "SQNR dB", "run"}, {}};
  nlohmann::json rows = nlohmann::json::array();
  auto metric = [](const run_record& r, const char* k, int digits) {
    const auto it = r.metrics.find(k);
    return it == r.metrics.end() || std::isnan(it->second) ? std::string("-") : fmt::format("{:.{}f}", it->second, digits);
  };
  int64_t missing = 0;
  for (const sweep_job& j : s.jobs) {
    const auto r = db.find(j.hash);
    if (!r) {
      ++missing;
      continue;
    }
    rows.push_back(to_json(*r));
    t.rows.push_back({r->model, j.plan.weights.empty() ? "fp32" : j.plan.weights, j.plan.acts.empty() ? "-" : j.plan.acts,
                      j.plan.kv.empty() ? "-" : j.plan.kv, j.method, j.eval.ctx ? std::to_string(j.eval.ctx) : "max",
                      fmt::format("{:.0f}", r->tokens), metric(*r, "bits_per_weight", 3), metric(*r, "ppl", 4),
                      metric(*r, "dnll", 5), metric(*r, "kl_mean", 6), metric(*r, "sqnr_db", 2), std::to_string(r->id)});
  }
  const std::string note = fmt::format("{} runs in the grid: {} already recorded, {} ran now, {} failed, {} not run{}; "
                                       "database {}{}", s.total, s.already, s.ran, s.failures.size(), missing,
                                       o.max_runs >= 0 && missing ? " (--max-runs: run again to resume)" : "", so.db,
                                       s.ranks > 1 ? fmt::format(" ({} MPI ranks)", s.ranks) : "");
  if (o.json) std::cout << nlohmann::json{{"database", so.db}, {"total", s.total}, {"already", s.already},
                                          {"ran", s.ran}, {"failed", s.failures.size()}, {"runs", rows}}.dump(2) << "\n";
  else std::cout << t.render() << note << "\n";
  if (!s.failures.empty())
    throw error(fmt::format("explore: {} of {} runs failed (not recorded; a rerun retries them): {}", s.failures.size(),
                            s.total, s.failures.front()));
}

// The demo's rows (issue "models"): weight-only round-to-nearest over the formats of the
// literature, W8A8 in int8 and FP8, an FP8 KV cache, and GPTQ next to RTN at int4/g32.
const std::vector<std::string> default_explore_rows = {
    "fp32", "bf16", "fp8_e4m3/c", "int8/c", "int4/g32", "e2m1/g32", "mxfp4", "nvfp4", "nf4",
    "q4_0", "int8/c,int8/c", "fp8_e4m3/c,fp8_e4m3/c", "fp32,-,fp8_e4m3/c", "int4/g32@gptq"};

// A row WEIGHTS[,ACTS[,KV]] as three specs ("" = float): the sweep's own row grammar.
std::vector<std::string> split_row(const std::string& row) {
  try {
    const sweep_plan p = parse_plan_row(row);
    return {p.weights, p.acts, p.kv};
  } catch (const lowbit::error& e) {
    throw error(fmt::format("explore: row {}", e.what()));
  }
}

std::string canonical_or_float(const std::string& spec) {
  const auto f = parse_optional_format(spec);
  return f ? format_name(*f) : "fp32";
}

void cmd_explore(explore_options o) {
  if (!o.config.empty()) return cmd_sweep(o);
  if (o.jobs != 1 || o.max_runs >= 0) throw error("explore: -j and --max-runs go with --config sweep.json");
  if (o.model.empty()) o.model = data_dir() + "/llama2c/stories260K.bin";
  if (o.data.empty()) o.data = data_dir() + "/text/tinystories_val_sample.txt";
  if (o.rows.empty()) o.rows = default_explore_rows;
  std::vector<std::array<std::string, 3>> specs;
  std::vector<quant_plan> plans;
  std::vector<std::string> methods;  // WEIGHTS@METHOD: rtn (default), gptq, awq, smoothquant
  for (const std::string& row : o.rows) {  // parse every row before any work (fail fast)
    auto p = split_row(row);
    std::string method = "rtn";
    // WEIGHTS@METHOD, where '@' may also be the format's own scale rule (int4/g32@mse): the last
    // '@' names a method when it is one, or when the whole is not a format.
    if (const auto at = p[0].rfind('@'); at != std::string::npos) {
      const std::string suffix = p[0].substr(at + 1);
      bool is_method = true;
      try {
        ptq::parse_method(suffix);
      } catch (const lowbit::error&) {
        is_method = false;
        try {
          parse_format(p[0]);
        } catch (const lowbit::error&) {
          ptq::parse_method(suffix);  // neither: say which methods there are
        }
      }
      if (is_method) method = suffix, p[0] = p[0].substr(0, at);
    }
    methods.push_back(method);
    quant_plan plan;
    plan.weights_spec = p[0], plan.weights = parse_optional_format(p[0]);
    if (method != "rtn" && !plan.weights)
      throw error(fmt::format("explore: row '{}': a PTQ method needs a weight format", row));
    plan.acts_spec = p[1], plan.acts = parse_optional_format(p[1]);
    plan.kv_spec = p[2], plan.kv = parse_optional_format(p[2]);
    specs.push_back({p[0], p[1], p[2]});
    plans.push_back(plan);
  }
  const model base = load_model(o.model);
  const auto tok = tokenizer_for_model(base, o.tokenizer);
  const std::vector<int32_t> ids = encode_documents(*tok, read_text_file(o.data));
  eval_options eo;
  eo.ctx = o.ctx, eo.max_tokens = o.max_tokens, eo.kl_base = true;
  const bool calibrated = std::any_of(methods.begin(), methods.end(), [](const std::string& m) { return m != "rtn"; });
  const int64_t half = int64_t(ids.size()) / 2;
  if (calibrated && (eo.max_tokens == 0 || eo.max_tokens > half)) {
    // Calibration windows come from the second half (docs/conventions.md §21): keep evaluation off it.
    std::cerr << fmt::format("explore: evaluating the first {} tokens; PTQ calibrates on the second half\n", half);
    eo.max_tokens = half;
  }
  fs::create_directories(o.out);

  struct row_result {
    std::string label;
    double bits;
    eval_result r;
  };
  std::vector<row_result> results;
  double fp32_ppl = 0;
  std::vector<model> variants(plans.size(), base);
  std::vector<const model*> pointers;
  for (size_t i = 0; i < plans.size(); ++i) {
    if (methods[i] == "rtn") {
      apply_weight_plan(variants[i], plans[i]);
    } else {
      ptq::quantize_options qo;
      qo.how = ptq::parse_method(methods[i]);
      qo.weights = *plans[i].weights;
      progress_bar qbar(fmt::format("{}@{}", plans[i].weights_spec, methods[i]), "step");
      ptq::quantize_model(variants[i], ids, qo, [&](int64_t d, int64_t t) { qbar.update(d, t); });
      qbar.finish();
    }
    pointers.push_back(&variants[i]);
  }
  progress_bar bar("explore", "tok");
  const auto evals = evaluate_many(pointers, plans, ids, eo, &base,
                                   [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  for (size_t i = 0; i < plans.size(); ++i) {
    results.push_back({o.rows[i], average_linear_bits(variants[i], plans[i]), evals[i]});
    if (plans[i].empty() && fp32_ppl == 0) fp32_ppl = evals[i].base_ppl;
  }
  if (fp32_ppl == 0 && !results.empty()) fp32_ppl = results[0].r.base_ppl;

  table t{{"row", "weights", "method", "acts", "kv", "bits/w", "ppl", "+/-", "dppl %", "KL mean", "top-1 %"}, {}};
  nlohmann::json rows = nlohmann::json::array();
  std::string csv = "row,method,weights,weights_canonical,acts,acts_canonical,kv,kv_canonical,bits_per_weight,"
                    "mean_nll,nll_stderr,ppl,ppl_stderr,dppl_percent,kl_mean,kl_p99,top1_agreement,"
                    "tokens_scored\n";
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& [label, bits, r] = results[i];
    const auto& s = specs[i];
    const double dppl = 100.0 * (r.ppl / fp32_ppl - 1.0);
    t.rows.push_back({label, s[0].empty() ? "fp32" : s[0], methods[i], s[1].empty() ? "-" : s[1],
                      s[2].empty() ? "-" : s[2], fixed(bits, 3), fixed(r.ppl, 4), fixed(r.ppl_stderr, 4),
                      fmt::format("{:+.3f}", dppl), fmt::format("{:.6f}", r.kl_mean),
                      fixed(100 * r.top1_agreement, 2)});
    rows.push_back({{"row", label}, {"method", methods[i]},
                    {"weights", {{"format", s[0]}, {"canonical", canonical_or_float(s[0])}}},
                    {"acts", {{"format", s[1]}, {"canonical", canonical_or_float(s[1])}}},
                    {"kv", {{"format", s[2]}, {"canonical", canonical_or_float(s[2])}}},
                    {"bits_per_weight", bits}, {"dppl_percent", dppl}, {"result", result_json(r)}});
    csv += fmt::format("\"{}\",{},{},{},{},{},{},{},{:.6f},{:.8f},{:.8f},{:.6f},{:.6f},{:.6f},{:.8f},{:.8f},{:.6f},{}\n",
                       label, methods[i], s[0], canonical_or_float(s[0]), s[1], canonical_or_float(s[1]), s[2],
                       canonical_or_float(s[2]), bits, r.mean_nll, r.nll_stderr, r.ppl, r.ppl_stderr, dppl,
                       r.kl_mean, r.kl_p99, r.top1_agreement, r.tokens_scored);
  }
  if (!o.db.empty()) {  // every row as a run of the results store
    runs_db db(o.db);
    const std::string model_fp = file_fingerprint(o.model), data_fp = file_fingerprint(o.data);
    const std::string tok_fp = o.tokenizer.empty() || o.tokenizer == "bytes" ? o.tokenizer : file_fingerprint(o.tokenizer);
    const ptq::quantize_options defaults;
    int64_t added = 0;
    for (size_t i = 0; i < results.size(); ++i) {
      const eval_result& r = results[i].r;
      run_record rec;
      rec.kind = "explore";
      rec.model = fs::path(o.model).stem().string();
      rec.n_params = double(base.config.parameter_count());
      rec.tokens = double(r.tokens_scored);
      rec.format = specs[i][0];
      format_parts(rec.format, rec);
      rec.method = methods[i];
      rec.plan = plans[i].describe();
      rec.config = {{"kind", "explore"}, {"model", model_fp}, {"tokenizer", tok_fp}, {"data", data_fp},
                    {"weights", canonical_or_float(specs[i][0])}, {"acts", canonical_or_float(specs[i][1])},
                    {"kv", canonical_or_float(specs[i][2])}, {"method", methods[i]}, {"ctx", o.ctx},
                    {"max_tokens", eo.max_tokens}, {"eval_tokens", "rows"}, {"kl_base", true},
                    {"paths", {{"model", abs_path(o.model)}, {"data", abs_path(o.data)}, {"tokenizer", o.tokenizer.empty() || o.tokenizer == "bytes" ? o.tokenizer : abs_path(o.tokenizer)}}}};
      if (methods[i] != "rtn")
        rec.config["calibration"] = {{"samples", defaults.calib_samples}, {"ctx", defaults.calib_ctx}, {"seed", defaults.seed}};
          rec.metrics = eval_metrics(r);
          rec.metrics["bits_per_weight"] = results[i].bits;
      if (!db.has(run_hash(rec.config))) ++added;
      db.record(rec);
    }
    std::cerr << fmt::format("explore: {} rows recorded in {} ({} were there already)\n", added, o.db,
                             results.size() - size_t(added));
  }
  const nlohmann::json doc = {{"model", o.model}, {"data", o.data},
                              {"tokens_scored", results.empty() ? 0 : results[0].r.tokens_scored},
                              {"ctx", o.ctx > 0 ? o.ctx : base.config.max_seq_len}, {"rows", rows}};
  const std::string csv_path = (fs::path(o.out) / "explore.csv").string();
  const std::string json_path = (fs::path(o.out) / "explore.json").string();
  write_text_file_atomic(csv_path, csv);
  write_text_file_atomic(json_path, doc.dump(2) + "\n");
  std::string plot_note;
  if (!o.no_plot) {
    const fs::path script = fs::path(LOWBIT_SOURCE_DIR) / "scripts" / "plot_explore.py";
    const std::string png = (fs::path(o.out) / "explore.png").string();
    const std::string cmd = fmt::format("/usr/bin/python3 '{}' '{}' '{}' > /dev/null 2>&1",
                                        script.string(), csv_path, png);
    plot_note = std::system(cmd.c_str()) == 0
                    ? fmt::format(", {} and .svg", png)
                    : " (no plot: /usr/bin/python3 with matplotlib failed; run scripts/plot_explore.py)";
  }
  if (o.json) {
    std::cout << doc.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("model {}  data {}  {} tokens scored per row (ctx {})\n", o.model, o.data,
                           results.empty() ? 0 : results[0].r.tokens_scored,
                           o.ctx > 0 ? o.ctx : base.config.max_seq_len);
  std::cout << t.render();
  std::cout << fmt::format("wrote {}, {}{}\n", csv_path, json_path, plot_note);
}

}  // namespace

std::string data_dir() {
  if (const char* d = std::getenv("LOWBIT_DATA_DIR"); d && *d) return d;
  return LOWBIT_DEFAULT_DATA_DIR;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(fmt::format("{}: cannot open data file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

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
  auto* synth = app.add_subcommand("synth", "write a random Llama or GPT-2 model (byte tokenizer)");
  synth->add_option("--arch", so.arch, "llama | gpt2")->capture_default_str();
  synth->add_option("--dim", so.dim, "residual width")->capture_default_str();
  synth->add_option("--layers", so.layers, "blocks")->capture_default_str();
  synth->add_option("--heads", so.heads, "attention heads")->capture_default_str();
  synth->add_option("--kv-heads", so.kv_heads, "key/value heads (default: --heads)");
  synth->add_option("--hidden", so.hidden, "MLP width (default: llama 8/3*dim rounded to 32, gpt2 4*dim)");
  synth->add_option("--vocab", so.vocab, "vocabulary (>= 258 for the byte tokenizer)")->capture_default_str();
  synth->add_option("--ctx", so.ctx, "maximum context")->capture_default_str();
  synth->add_option("--seed", so.seed, "random seed")->capture_default_str();
  synth->add_flag("--untied", so.untied, "a separate classifier matrix");
  synth->add_option("-o,--out", so.out, "output .safetensors (+ config.json) or .gguf")->required();
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
  auto* eval = app.add_subcommand("eval", "perplexity (and KL against the float model) under a plan");
  eo.m.add(eval);
  eval->add_option("--data", eo.data, "text file (documents separated by blank lines)")->required();
  eval->add_option("--ctx", eo.ctx, "window length (default: the model's maximum)");
  eval->add_option("--max-tokens", eo.max_tokens, "evaluate the first N tokens (default: all)");
  eval->add_flag("--kl-base", eo.kl_base, "also run the float model: KL divergence and top-1 agreement");
  eval->add_flag("--json", eo.json, "one JSON document");
  eval->add_flag("--sgemm-peak", eo.sgemm_peak, "also measure OpenBLAS sgemm on the model's largest layer shape");
  eval->add_option("--db", eo.db, "record the run in this results database (SQLite; idempotent)");
  commands.push_back({eval, [] { cmd_eval(eo); }});

  static generate_options go;
  auto* gen = app.add_subcommand("generate", "generate text (greedy or sampled)");
  go.m.add(gen);
  gen->add_option("--prompt", go.prompt, "prompt text (default: start from BOS)");
  gen->add_flag("--greedy", go.greedy, "argmax decoding");
  gen->add_option("--temperature", go.temperature, "sampling temperature")->capture_default_str();
  gen->add_option("--seed", go.seed, "sampling seed")->capture_default_str();
  gen->add_option("--max-tokens", go.max_tokens, "positions, prompt included (as llama2.c's steps)")->capture_default_str();
  commands.push_back({gen, [] { cmd_generate(go); }});

  static explore_options xo;
  auto* explore = app.add_subcommand("explore", "format sweep on a model: bits/weight, perplexity, KL; CSV, JSON, PNG");
  explore->add_option("--model", xo.model, "model (default: stories260K from the data directory)");
  explore->add_option("--tokenizer", xo.tokenizer, "tokenizer (default: the model's)");
  explore->add_option("--data", xo.data, "text (default: the TinyStories sample from the data directory)");
  explore->add_option("--row", xo.rows, "WEIGHTS[@METHOD][,ACTS[,KV]] ('-' = float; METHOD rtn, gptq, awq, smoothquant), repeatable (default: the demo set)");
  explore->add_option("--ctx", xo.ctx, "window length (default: the model's maximum)");
  explore->add_option("--max-tokens", xo.max_tokens, "evaluate the first N tokens (default: all)");
  explore->add_option("-o,--out", xo.out, "output directory for explore.csv/.json/.png")->capture_default_str();
  explore->add_flag("--no-plot", xo.no_plot, "skip the PNG/SVG plot");
  explore->add_flag("--json", xo.json, "one JSON document");
  explore->add_option("--config", xo.config, "sweep.json: models x formats x methods x eval settings, recorded in --db (see README)");
  explore->add_option("--db", xo.db, "results database (default with --config: lowbit.db; with --row: record the rows there)");
  explore->add_option("-j,--jobs", xo.jobs, "--config: runs in parallel (worker processes)")->capture_default_str();
  explore->add_option("--max-runs", xo.max_runs, "--config: start at most N runs not yet recorded, then stop (resume later)");
  commands.push_back({explore, [] { cmd_explore(xo); }});
}

}  // namespace lowbit::cli

// The training loop (trainer.hpp).
#include "lowbit/train/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <fmt/format.h>

#include "lowbit/engine/eval.hpp"
#include "lowbit/io/safetensors.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/text/documents.hpp"
#include "lowbit/train/checkpoint.hpp"

namespace fs = std::filesystem;

namespace lowbit {

// ---- configuration ---------------------------------------------------------------------------------

model_config train_run_config::model_shape(int vocab) const {
  model_config c;
  try {
    c.arch = parse_architecture(arch);
  } catch (const error& e) {
    throw error(fmt::format("train: {}", e.what()));
  }
  c.dim = dim, c.n_layers = n_layers, c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads > 0 ? n_kv_heads : n_heads;
  if (c.fused_qkv() || c.arch == architecture::opt) {
    // GPT-2, GPT-NeoX, OPT: one kv head per query head
    if (n_kv_heads > 0 && n_kv_heads != n_heads)
      throw error(fmt::format("train: {} has one kv head per query head (kv_heads {} != heads {})", arch,
                              n_kv_heads, n_heads));
  }
  if (l1_norm && c.arch != architecture::llama) {
    if (c.arch == architecture::gpt2) throw error("train: the L1 normalisation is for Llama (GPT-2 has LayerNorm)");
    throw error(fmt::format("train: the L1 normalisation is for Llama ({} has no L1 variant)", arch));
  }
  // llama2.c: hidden = 2/3 * 4 * dim, rounded up to a multiple of 32; the ungated families 4 * dim
  c.hidden_dim = hidden_dim > 0 ? hidden_dim : default_hidden_dim(c.arch, dim);
  c.vocab_size = vocab;
  c.max_seq_len = ctx;
  c.tied_classifier = tied_classifier;
  c.l1_norm = l1_norm;
  if (sliding_window < 0) throw error(fmt::format("train: sliding window {} (expected >= 0)", sliding_window));
  c.sliding_window = sliding_window;  // model_config::validate refuses it where the family has none
  return c;
}

namespace {

// Every setting with its JSON key: the one list that to_json, from_json (and so checkpoints and
// --config files) share. Config is train_run_config, const or not.
template <class Config, class F>
void visit_settings(Config& c, F&& f) {
  f("arch", c.arch), f("dim", c.dim), f("layers", c.n_layers), f("heads", c.n_heads);
  f("kv_heads", c.n_kv_heads), f("hidden", c.hidden_dim), f("tied", c.tied_classifier);
  f("data", c.data_path), f("tokenizer", c.tokenizer), f("batch", c.batch), f("ctx", c.ctx);
  f("val_fraction", c.val_fraction), f("val_batches", c.val_batches), f("steps", c.steps), f("lr", c.lr);
  f("min_lr_frac", c.min_lr_frac), f("warmup_frac", c.warmup_frac), f("clip", c.clip);
  f("beta1", c.adam.beta1), f("beta2", c.adam.beta2), f("eps", c.adam.eps);
  f("weight_decay", c.adam.weight_decay), f("seed", c.seed), f("plan", c.plan), f("l1_norm", c.l1_norm);
  f("eval_every", c.eval_every), f("checkpoint_every", c.checkpoint_every), f("out", c.out_dir);
  f("init", c.init), f("init_weights", c.init_weights), f("calib_samples", c.calib_samples);
  f("calib_ctx", c.calib_ctx);
}

}  // namespace

nlohmann::json train_run_config::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  visit_settings(*this, [&](const char* key, const auto& value) { j[key] = value; });
  // Written only when set, so that the configs (and run hashes) of runs without it stay as they were.
  if (sliding_window != 0) j["sliding_window"] = sliding_window;
  return j;
}

train_run_config train_run_config::from_json(const nlohmann::json& j) {
  train_run_config c;
  if (!j.is_object()) throw error("train config: expected a JSON object");
  for (const auto& [key, v] : j.items()) {
    bool known = false;
    if (key == "sliding_window") {
      if (!v.is_number_integer()) throw error(fmt::format("train config: 'sliding_window' has the wrong type ({})", v.dump()));
      c.sliding_window = v.get<int>();
      continue;
    }
    visit_settings(c, [&](const char* name, auto& field) {
      if (key != name) return;
      known = true;
      try {
        field = v.get<std::decay_t<decltype(field)>>();
      } catch (const nlohmann::json::exception&) {
        throw error(fmt::format("train config: '{}' has the wrong type ({})", key, v.dump()));
      }
    });
    if (!known) throw error(fmt::format("train config: unknown key '{}'", key));
  }
  return c;
}

token_split training_tokens(const train_run_config& c, const tokenizer& tok, bool documents) {
  const std::string text = read_file(c.data_path, "training data");
  if (c.val_fraction <= 0 || c.val_fraction >= 1)
    throw error(fmt::format("train: validation fraction {} (expected in (0, 1))", c.val_fraction));
  size_t cut = static_cast<size_t>(double(text.size()) * (1 - c.val_fraction));
  while (cut < text.size() && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) ++cut;
  token_split t;
  const std::string_view all(text);
  if (documents) {
    t.train = encode_documents(tok, std::string(all.substr(0, cut)));
    t.val = encode_documents(tok, std::string(all.substr(cut)));
  } else {
    t.train = tok.encode(all.substr(0, cut), false, false);
    t.val = tok.encode(all.substr(cut), false, false);
  }
  const size_t need = size_t(c.ctx) + 1;
  if (t.train.size() < need || t.val.size() < need)
    throw error(fmt::format("train: '{}' gives {} training and {} validation tokens; a window of ctx {} needs "
                            "{} in each", c.data_path, t.train.size(), t.val.size(), c.ctx, need));
  return t;
}

namespace {

// Window of sequence b (of the global batch) at step s: deterministic in (seed, s, b), so a
// resumed run and every rank draw the same windows.
int64_t window_offset(uint64_t seed, int64_t step, int b, int64_t tokens, int ctx) {
  const uint64_t r = mix64(seed * 0x9E3779B97F4A7C15ull ^ mix64(uint64_t(step) * 0x100000001B3ull + uint64_t(b)));
  return static_cast<int64_t>(r % uint64_t(tokens - ctx));
}

// The configuration fields a resumed run must share with its checkpoint (not steps-related
// bookkeeping or the output directory).
nlohmann::json resume_identity(const train_run_config& c) {
  nlohmann::json j = c.to_json();
  for (const char* k : {"eval_every", "checkpoint_every", "out", "data"}) j.erase(k);
  return j;
}

}  // namespace

train_result run_training(const train_run_config& cfg, const tokenizer& tok, const tokenizer_source& tok_src,
                          operand_quantizer* quantizer, bool resume,
                          const std::function<void(const train_point&, int64_t)>& progress, const model* init) {
  const mpi_world& dp = mpi_world::world();
  if (cfg.batch <= 0 || cfg.ctx <= 1 || cfg.steps <= 0)
    throw error(fmt::format("train: batch {}, ctx {}, steps {} (expected batch > 0, ctx > 1, steps > 0)",
                            cfg.batch, cfg.ctx, cfg.steps));
  if (cfg.batch % dp.size)
    throw error(fmt::format("train: the global batch {} does not split over {} ranks", cfg.batch, dp.size));
  // This rank's tokens in the quantizer, before the run reads data or touches the output
  // directory (a refusal throws alike on every rank). The shard and the reducer live as long as
  // this run: a later use of the quantizer (an eval on the root rank) must neither count from a
  // shard nor wait in an allreduce.
  struct shard_guard {
    operand_quantizer* q = nullptr;
    ~shard_guard() {
      if (!q) return;
      try {  // ending a shard does not throw (train.hpp); a destructor must not let it
        q->set_token_shard(0, 0, -1);
        q->set_max_reducer({});
      } catch (...) {
      }
    }
  } shard;
  if (quantizer && dp.size > 1) {
    const int64_t local_tokens = int64_t(cfg.batch / dp.size) * cfg.ctx;
    const std::vector<std::string> notes =
        quantizer->set_token_shard(int64_t(dp.rank) * local_tokens, local_tokens, int64_t(cfg.batch) * cfg.ctx);
    shard.q = quantizer;
    quantizer->set_max_reducer([&dp](double v) { return dp.allreduce_max(v); });
    if (dp.root())
      for (const std::string& note : notes) std::cerr << "train: note: " << note << " (per rank, not the one-process run's)\n";
  }
  // lr 0 keeps the weights as they are (AdamW's update and decay are multiples of it): a run that
  // only measures its start.
  if (!(cfg.lr >= 0)) throw error(fmt::format("train: learning rate {} (expected >= 0)", cfg.lr));
  // Settings a JSON config can carry as well as flags (the CLI refuses non-finite flags itself).
  auto in_range = [](const char* what, double v, double lo, double hi) {
    if (!(v >= lo && v <= hi)) throw error(fmt::format("train: {} {} (expected {} .. {})", what, v, lo, hi));
  };
  in_range("warmup fraction", cfg.warmup_frac, 0, 1);
  in_range("min_lr_frac", cfg.min_lr_frac, 0, 1);
  in_range("gradient clip", cfg.clip, 0, std::numeric_limits<double>::max());
  in_range("learning rate", cfg.lr, 0, std::numeric_limits<double>::max());
  if (cfg.val_batches <= 0)
    throw error(fmt::format("train: val_batches {} (expected > 0)", cfg.val_batches));
  const model_config mc = init ? init->config : cfg.model_shape(tok.vocab_size());
  mc.validate();
  if (init && tok.vocab_size() > mc.vocab_size)
    throw error(fmt::format("train: the tokenizer has {} tokens, the model being fine-tuned {}", tok.vocab_size(),
                            mc.vocab_size));
  const token_split data = training_tokens(cfg, tok, init != nullptr);

  // mc.l1_norm from cfg.l1_norm (a fresh model) or the model's own
  train_model m = init ? train_model(*init) : train_model(mc, cfg.seed);
  adamw opt(cfg.adam);
  train_result res;
  res.params = mc.parameter_count();
  const int64_t eval_every = cfg.eval_every > 0 ? cfg.eval_every : std::max<int64_t>(1, cfg.steps / 10);
  const int64_t ckpt_every = cfg.checkpoint_every > 0 ? cfg.checkpoint_every : std::max<int64_t>(1, cfg.steps / 5);
  const int64_t warmup = static_cast<int64_t>(std::llround(cfg.warmup_frac * double(cfg.steps)));
  const std::string ckpt_path = cfg.out_dir.empty() ? "" : (fs::path(cfg.out_dir) / "checkpoint.safetensors").string();
  const std::string log_path = cfg.out_dir.empty() ? "" : (fs::path(cfg.out_dir) / "log.jsonl").string();
  if (!cfg.out_dir.empty() && dp.root()) {
    std::error_code ec;
    fs::create_directories(cfg.out_dir, ec);
    if (ec) throw error(fmt::format("train: cannot create '{}': {}", cfg.out_dir, ec.message()));
  }

  int64_t start = 0;
  double elapsed_before = 0;
  if (resume) {
    if (ckpt_path.empty()) throw error("train: --resume needs --out DIR");
    if (!fs::exists(ckpt_path))
      throw error(fmt::format("train: nothing to resume: no checkpoint at '{}'", ckpt_path));
    train_checkpoint c = load_train_checkpoint(ckpt_path);
    const nlohmann::json saved = resume_identity(train_run_config::from_json(c.config));
    if (saved != resume_identity(cfg))
      throw error(fmt::format("train: the checkpoint in '{}' was made with another configuration ({}); "
                              "not resuming", cfg.out_dir, saved.dump()));
    if (c.params.size() != m.params().size())
      throw error(fmt::format("{}: parameter count does not match the configured model", ckpt_path));
    if (c.step < 0 || c.step > cfg.steps || int64_t(c.curve.size()) != c.step ||
        (!c.curve.empty() && c.curve.back().step != c.step))
      throw error(fmt::format("{}: step {} does not agree with its curve of {} points or the run's {} steps",
                              ckpt_path, c.step, c.curve.size(), cfg.steps));
    start = c.step;
    elapsed_before = c.seconds;
    m.params() = std::move(c.params);
    opt.m() = std::move(c.adam_m);
    opt.v() = std::move(c.adam_v);
    if (quantizer) quantizer->restore(c.quantizer);
    res.curve = std::move(c.curve);
    res.resumed_from = start;
    // The log is rebuilt from the checkpoint's curve: exactly the steps it holds, none lost to a
    // torn line of the killed run, none past it (they are trained again).
    if (dp.root()) write_train_log(log_path, res.curve);
  } else if (dp.root() && !log_path.empty()) {
    write_text_file_atomic(log_path, "");
  }

  // Validation windows: val_batches x batch sequences spread evenly over the validation tokens.
  const int64_t n_val = int64_t(cfg.val_batches) * cfg.batch;
  std::vector<int64_t> val_offsets(n_val);
  for (int64_t i = 0; i < n_val; ++i)
    val_offsets[i] = n_val > 1 ? i * (int64_t(data.val.size()) - cfg.ctx - 1) / (n_val - 1) : 0;
  const int local_batch = cfg.batch / dp.size;
  std::vector<int32_t> in(int64_t(local_batch) * cfg.ctx), tg(in.size());
  // This rank's windows are rows [rank * local_batch, ...) of every global batch (train and
  // validation alike).
  auto fill = [&](const std::vector<int32_t>& src, auto offset_of) {
    for (int b = 0; b < local_batch; ++b) {
      const int64_t off = offset_of(b);
      std::copy_n(src.begin() + off, cfg.ctx, in.begin() + int64_t(b) * cfg.ctx);
      std::copy_n(src.begin() + off + 1, cfg.ctx, tg.begin() + int64_t(b) * cfg.ctx);
    }
  };
  auto validate = [&](int64_t step) {
    if (quantizer) quantizer->set_frozen(true);
    double sum = 0;
    // Each rank scores its share of the windows; every rank gets the total.
    for (int64_t first = 0; first < n_val; first += cfg.batch)
      fill(data.val, [&](int b) { return val_offsets[first + int64_t(dp.rank) * local_batch + b]; }),
          sum += m.forward_loss(in.data(), tg.data(), local_batch, cfg.ctx, quantizer, step);
    if (quantizer) quantizer->set_frozen(false);
    return dp.allreduce_sum(sum) / double(n_val * cfg.ctx);
  };

  // Where a fine-tuned model started, for its provenance: the model file by content.
  const std::string init_fingerprint = init && !cfg.init.empty() ? file_fingerprint(cfg.init) : "";
  auto save_checkpoint = [&](int64_t step, double seconds) {
    if (ckpt_path.empty()) return;
    if (dp.root()) {
      save_train_checkpoint(ckpt_path, {step, seconds, cfg.to_json(), quantizer ? quantizer->state() : nlohmann::json(),
                                        res.curve, m.params(), opt.m(), opt.v()});
      model out = m.to_model();
      out.tokenizer = tok_src;
      nlohmann::json prov{{"method", "train"}, {"plan", cfg.plan}, {"step", step}, {"config", cfg.to_json()}};
      if (init) prov["init"] = {{"model", cfg.init}, {"fingerprint", init_fingerprint}, {"weights", cfg.init_weights}};
      out.provenance = prov.dump();
      save_safetensors_model(out, (fs::path(cfg.out_dir) / "model.safetensors").string());
    }
    dp.barrier();
  };

  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  const double global_tokens = double(cfg.batch) * cfg.ctx;
  if (opt.m().empty()) opt.m().assign(m.params().size(), 0.0f), opt.v().assign(m.params().size(), 0.0f);
  for (int64_t s = start; s < cfg.steps; ++s) {
    fill(data.train, [&](int b) {
      return window_offset(cfg.seed, s, dp.rank * local_batch + b, int64_t(data.train.size()), cfg.ctx);
    });
    double loss = m.forward_backward(in.data(), tg.data(), local_batch, cfg.ctx, global_tokens, quantizer, s);
    loss = dp.allreduce_sum(loss) / global_tokens;
    dp.allreduce_sum(m.grads().data(), int64_t(m.grads().size()));
    train_point tp;
    tp.step = s + 1;
    tp.train_loss = loss;
    tp.grad_norm = clip_gradients(m.grads(), cfg.clip);
    tp.lr = learning_rate(s, cfg.steps, warmup, cfg.lr, cfg.min_lr_frac);
    opt.step(m, tp.lr, s + 1);
    if (!std::isfinite(loss))
      throw error(fmt::format("train: the loss became {} at step {} (plan {}); lower --lr or change the plan",
                              loss, s + 1, cfg.plan));
    if (tp.step % eval_every == 0 || tp.step == cfg.steps) tp.val_loss = validate(s);
    tp.tokens_per_s = global_tokens * double(s + 1 - start) / seconds();
    res.curve.push_back(tp);
    if (dp.root() && !log_path.empty()) append_train_log(log_path, tp);
    if (progress) progress(tp, cfg.steps);
    if (tp.step % ckpt_every == 0 || tp.step == cfg.steps) save_checkpoint(tp.step, elapsed_before + seconds());
  }
  res.seconds = seconds();
  res.steps = cfg.steps;
  res.tokens = cfg.steps * int64_t(cfg.batch) * cfg.ctx;
  res.tokens_per_s = global_tokens * double(cfg.steps - start) / std::max(res.seconds, 1e-9);
  for (auto it = res.curve.rbegin(); it != res.curve.rend(); ++it)
    if (it->val_loss >= 0) {
      res.val_loss = it->val_loss;
      break;
    }
  if (!res.curve.empty()) res.train_loss = res.curve.back().train_loss;
  if (start >= cfg.steps && res.curve.empty()) res.val_loss = validate(cfg.steps);
  res.trained = m.to_model();
  res.trained.tokenizer = tok_src;
  return res;
}

}  // namespace lowbit

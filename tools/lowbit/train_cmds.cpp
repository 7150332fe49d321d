// `lowbit train`: low-precision training of a Llama-style or GPT-2 model on a text file (job.hpp, trainer.hpp,
// recipes.hpp). The last line of stdout with --json is one JSON object with the final val_loss.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lowbit/explore/finetune.hpp"
#include "lowbit/train/job.hpp"
#include "lowbit/train/trainer.hpp"
#include "lowbit/runs/runs_db.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/train/recipes.hpp"
#include "cli.hpp"

namespace fs = std::filesystem;

namespace lowbit::cli {

namespace {

struct train_cli_options {
  train_run_config cfg;
  std::string config_file, db;
  bool json = false, resume = false, untied = false;
};

// Each setting's flag (train_run_config's JSON keys; --untied sets "tied").
const std::map<std::string, std::string>& flag_of() {
  static const std::map<std::string, std::string> flags = {
      {"arch", "--arch"}, {"dim", "--dim"}, {"layers", "--layers"}, {"heads", "--heads"}, {"kv_heads", "--kv-heads"},
      {"hidden", "--hidden"}, {"data", "--data"}, {"tokenizer", "--tokenizer"}, {"batch", "--batch"},
      {"ctx", "--ctx"}, {"val_batches", "--val-batches"}, {"steps", "--steps"}, {"lr", "--lr"},
      {"min_lr_frac", "--min-lr-frac"}, {"warmup_frac", "--warmup"}, {"clip", "--clip"},
      {"weight_decay", "--wd"}, {"seed", "--seed"}, {"plan", "--plan"}, {"eval_every", "--eval-every"},
      {"checkpoint_every", "--checkpoint-every"}, {"out", "--out"}, {"init", "--init"},
      {"init_weights", "--init-weights"}, {"calib_samples", "--calib-samples"}, {"calib_ctx", "--calib-ctx"},
      {"sliding_window", "--sliding-window"}};
  return flags;
}

void cmd_train(train_cli_options o, const CLI::App& app) {
  train_run_config cfg = o.cfg;
  // The settings given explicitly (a config file's keys, the flags on the command line): with
  // --init, the model's architecture and tokenizer give way only to these (job.hpp).
  std::set<std::string> given;
  for (const auto& [key, flag] : flag_of())
    if (app.count(flag)) given.insert(key);
  if (o.untied) given.insert("tied");
  if (!o.config_file.empty()) {
    // The file gives the base; flags given on the command line win.
    std::ifstream f(o.config_file);
    if (!f) throw error(fmt::format("train: cannot read the config '{}'", o.config_file));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(f);
    } catch (const std::exception& e) {
      throw error(fmt::format("train: '{}' is not JSON: {}", o.config_file, e.what()));
    }
    train_run_config from_file = train_run_config::from_json(j);
    for (const auto& [key, value] : j.items()) given.insert(key);
    nlohmann::json merged = from_file.to_json();
    const nlohmann::json flags = cfg.to_json();
    for (const auto& [key, flag] : flag_of())
      if (app.count(flag)) merged[key] = flags[key];
    cfg = train_run_config::from_json(merged);
  }
  if (o.untied) cfg.tied_classifier = false;
  // Everything that can be refused is refused before training starts.
  train_job job = prepare_train_job(cfg, o.resume, data_dir(), given);
  cfg = job.config;  // as it runs (the data file defaulted, the plan's L1 norm)

  std::unique_ptr<runs_db> db;
  const mpi_world& dp = mpi_world::world();
  if (!o.db.empty() && dp.root()) {
    try {
      db = std::make_unique<runs_db>(o.db);  // a bad database fails first
    } catch (const std::exception& e) {
      std::cerr << "lowbit: " << e.what() << "\n";
      dp.abort(2);
      throw;
    }
  }
  progress_bar bar("train", "step");
  auto on_step = [&](const train_point& p, int64_t steps) {
    if (!dp.root()) return;
    bar.set_label(fmt::format("train loss {:.3f} {:.0f} tok/s", p.train_loss, p.tokens_per_s));
    bar.update(p.step, steps);
  };
  train_result r;
  try {
    r = run_training(job, on_step);
  } catch (const std::exception& e) {
    if (dp.size > 1) {  // one rank's failure (a full disk at a checkpoint) must not hang the rest
      std::cerr << fmt::format("lowbit: rank {}: {}\n", dp.rank, e.what());
      dp.abort(2);
    }
    throw;
  }
  bar.finish();
  if (!dp.root()) return;

  nlohmann::json out = train_job_json(job, r);
  if (db) {
    // One row per run for the scaling-law fits (explore/finetune.hpp train_run_record).
    const run_record rec = train_run_record(job, r);
    out["db_id"] = db->record(rec);
  }
  if (o.json) {
    std::cout << out.dump() << std::endl;
    return;
  }
  table t;
  t.header = {"plan", "params", "tokens", "train loss", "val loss", "tok/s"};
  t.rows.push_back({cfg.plan, std::to_string(r.params), std::to_string(r.tokens), fmt::format("{:.4f}", r.train_loss),
                    fmt::format("{:.4f}", r.val_loss), fmt::format("{:.0f}", r.tokens_per_s)});
  std::cout << t.render();
  if (!cfg.out_dir.empty())
    std::cout << fmt::format("model: {}  log: {}\n", (fs::path(cfg.out_dir) / "model.safetensors").string(),
                             (fs::path(cfg.out_dir) / "log.jsonl").string());
}

}  // namespace

void add_train_commands(CLI::App& app, command_list& commands) {
  static train_cli_options o;
  auto* c = app.add_subcommand("train", "train a model (Llama, GPT-2, Mistral, Qwen2, GPT-NeoX or OPT) with quantized GEMM operands (W/A/G)");
  c->add_option("--config", o.config_file, "JSON file with the settings below (flags override it)");
  c->add_option("--data", o.cfg.data_path, "text file (default: the shipped tinyshakespeare)");
  c->add_option("--tokenizer", o.cfg.tokenizer,
                 "bytes | llama2c[:PATH] | gpt2 | tokenizer file (with --init: the model's own by default)")
      ->capture_default_str();
  c->add_option("--init", o.cfg.init,
                "fine-tune this model (llama2.c .bin, safetensors, GGUF): its architecture and weights are the "
                "start (docs/training.md §3.5)");
  c->add_option("--init-weights", o.cfg.init_weights,
                "start from the --init model's weights quantized by this PTQ method (rtn, gptq, awq, ...) in the "
                "plan's weight format (QAFT)");
  c->add_option("--calib-samples", o.cfg.calib_samples, "--init-weights: calibration windows")->capture_default_str();
  c->add_option("--calib-ctx", o.cfg.calib_ctx, "--init-weights: tokens per calibration window")
      ->capture_default_str();
  c->add_option("--arch", o.cfg.arch, "llama | gpt2 | mistral | qwen2 | gptneox | opt (family defaults: docs/evaluation.md)")
      ->check(CLI::IsMember({"llama", "gpt2", "mistral", "qwen2", "gptneox", "opt"}))
      ->capture_default_str();
  c->add_option("--dim", o.cfg.dim, "residual width")->capture_default_str();
  c->add_option("--layers", o.cfg.n_layers, "blocks")->capture_default_str();
  c->add_option("--heads", o.cfg.n_heads, "attention heads")->capture_default_str();
  c->add_option("--kv-heads", o.cfg.n_kv_heads, "key/value heads (default: --heads)");
  c->add_option("--sliding-window", o.cfg.sliding_window, "mistral: attend to the last N positions (0: all)");
  c->add_option("--hidden", o.cfg.hidden_dim, "MLP width (default: 8/3 dim rounded up to 32; gpt2, gptneox, opt: 4 dim)");
  c->add_flag("--untied", o.untied, "a separate classifier matrix (default: tied to the embedding)");
  c->add_option("--ctx", o.cfg.ctx, "sequence length")->capture_default_str();
  c->add_option("--batch", o.cfg.batch, "sequences per step (global, over all ranks)")->capture_default_str();
  c->add_option("--steps", o.cfg.steps, "optimizer steps")->capture_default_str();
  c->add_option("--lr", o.cfg.lr, "peak learning rate")->capture_default_str();
  c->add_option("--min-lr-frac", o.cfg.min_lr_frac, "cosine floor as a fraction of --lr")->capture_default_str();
  c->add_option("--warmup", o.cfg.warmup_frac, "warmup fraction of the steps")->capture_default_str();
  c->add_option("--wd", o.cfg.adam.weight_decay, "AdamW weight decay (matrices only)")->capture_default_str();
  c->add_option("--clip", o.cfg.clip, "gradient norm clip (0 = off)")->capture_default_str();
  c->add_option("--seed", o.cfg.seed, "initialisation and data order")->capture_default_str();
  c->add_option("--plan", o.cfg.plan,
                "fp32 | sun2025:FMT[,axis=din] | qat:FMT | fp8 | mxfp4 | nvfp4 | flex16+5 | "
                "shiftquant:intN[,g=K][,shift=S][,l1] | x=FMT;w=FMT;dy=FMT;w_bwd=FMT;dy_w=FMT;x_bwd=FMT")
      ->capture_default_str();
  c->add_option("--val-batches", o.cfg.val_batches, "validation batches (fixed windows of the last 10%)")
      ->capture_default_str();
  c->add_option("--eval-every", o.cfg.eval_every, "validate every N steps (default steps/10)");
  c->add_option("--checkpoint-every", o.cfg.checkpoint_every, "checkpoint every N steps (default steps/5)");
  c->add_option("-o,--out", o.cfg.out_dir, "output directory: log.jsonl, checkpoint.safetensors, model.safetensors");
  c->add_flag("--resume", o.resume, "continue the run checkpointed in --out");
  c->add_option("--db", o.db, "record the run in this results database (SQLite)");
  c->add_flag("--json", o.json, "print one JSON object (last line) with the final val_loss");
  commands.push_back({c, [c] { cmd_train(o, *c); }});
}

}  // namespace lowbit::cli

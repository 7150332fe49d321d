// Task commands: `task make` (task files from story text), `eval --task` (accuracy, lm-eval's
// way) and `spread` (FormatSpread). docs/evaluation.md "Tasks" and "FormatSpread".
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/base/files.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/runs/spread.hpp"
#include "lowbit/runs/task_eval.hpp"
#include "lowbit/text/tasks.hpp"

namespace lowbit::cli {

namespace {

std::vector<task_item> read_items(const std::string& path, int64_t limit) {
  if (limit < 0) throw error(fmt::format("--limit {} is negative", limit));
  std::vector<task_item> items = read_task_file(path);
  if (limit > 0 && limit < static_cast<int64_t>(items.size())) items.resize(limit);
  return items;
}

// The model with the plan's weights applied, as eval reads it.
struct loaded_model {
  quant_plan plan;
  model base, quantized;
  std::unique_ptr<tokenizer> tok;
  double bits = 32;
};

// What a model written by `lowbit quantize` says of itself ("gptq int4/g32"; "" for an original).
std::string quantized_as(const model& m) {
  if (m.provenance.empty()) return "";
  const nlohmann::json p = nlohmann::json::parse(m.provenance, nullptr, false);
  if (!p.is_object()) return "";
  return fmt::format("{} {}", p.value("method", "?"), p.value("weights", "?"));
}

std::string written_as(const model& m) {
  const std::string q = quantized_as(m);
  return q.empty() ? "" : " (written by lowbit quantize: " + q + ")";
}

loaded_model load_under_plan(const task_model_options& o) {
  loaded_model l;
  l.plan = o.plan();
  l.base = load_model(o.model);
  l.tok = tokenizer_for_model(l.base, o.tokenizer);
  l.quantized = l.base;
  apply_weight_plan(l.quantized, l.plan);
  l.bits = average_linear_bits(l.quantized, l.plan);
  return l;
}

struct make_options {
  std::string kind = "ending", text, out;
  uint64_t seed = 0;
  int64_t n = 0, max_chars = 1000;
  int options = 4;
  double fraction = 0.4;
};

void cmd_task_make(const make_options& o) {
  task_build_options b;
  b.kind = parse_task_kind(o.kind);
  b.seed = o.seed, b.n = o.n, b.options = o.options, b.max_chars = o.max_chars, b.text_fraction = o.fraction;
  const auto items = build_task(read_file(o.text, "text file"), b);
  write_task_file(o.out, items);
  std::cout << fmt::format("{}: {} '{}' items from {} (seed {})\n", o.out, items.size(), o.kind, o.text, o.seed);
}

struct spread_cli_options {
  task_model_options m;
  std::string task;
  int64_t limit = 0;
  spread_options s;
  bool json = false;
};

std::string show(const std::string& s) { return nlohmann::json(s).dump(); }  // separators, escaped

void cmd_spread(const spread_cli_options& o) {
  const auto items = read_items(o.task, o.limit);
  const loaded_model l = load_under_plan(o.m);
  progress_bar bar("spread", "items");
  const spread_result r = format_spread(l.quantized, l.plan, *l.tok, items, o.s,
                                        [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  const task_kind kind = items[0].kind;
  if (o.json) {
    nlohmann::json j = spread_result_json(r, kind);
    j["model"] = o.m.model, j["task"] = o.task, j["plan"] = l.plan.describe(), j["bits_per_weight"] = l.bits;
    j["quantized_file"] = quantized_as(l.base);
    j["seed"] = o.s.bandit.seed, j["budget"] = o.s.bandit.budget, j["batch"] = o.s.bandit.batch;
    j["rule"] = o.s.bandit.ucb ? "ucb" : "thompson";
    std::cout << j.dump(2) << "\n";
    return;
  }
  auto fmt_line = [&](const prompt_format& f) {
    const nlohmann::json j = format_json(f, kind);
    return fmt::format("{}{}...{}{}{}", j["text_descriptor"].get<std::string>(), j["separator"].get<std::string>(),
                       j["space"].get<std::string>(), j["answer_descriptor"].get<std::string>(),
                       j["separator"].get<std::string>());
  };
  std::cout << fmt::format("model    {}{}  plan {} ({:.3g} bits/weight)\n", o.m.model, written_as(l.base),
                           l.plan.describe(), l.bits);
  std::cout << fmt::format("task     {}: {} '{}' items, {} formats, budget {} items in batches of {} ({} steps "
                           "per phase, {})\n", o.task, r.n, task_kind_name(kind), r.formats.size(),
                           o.s.bandit.budget, o.s.bandit.batch, r.bandit.steps_per_phase,
                           o.s.bandit.ucb ? "UCB" : "Thompson sampling");
  std::cout << fmt::format("original acc {:.4f} +/- {:.4f}  {}\n", r.original_acc, r.original_stderr, show(fmt_line(r.formats[0])));
  std::cout << fmt::format("best     acc {:.4f} +/- {:.4f}  {}\n", r.best_acc, r.best_stderr,
                           show(fmt_line(r.formats[r.bandit.best])));
  std::cout << fmt::format("worst    acc {:.4f} +/- {:.4f}  {}\n", r.worst_acc, r.worst_stderr,
                           show(fmt_line(r.formats[r.bandit.worst])));
  std::cout << fmt::format("spread   {:.4f}  (interval [{:.4f}, {:.4f}]; {} item evaluations, {:.1f} s)\n",
                           r.spread, r.worst_acc, r.best_acc, r.item_evaluations, r.seconds);
}

}  // namespace

void run_task_eval(const task_model_options& m, const std::string& task, int64_t limit, bool json) {
  const auto items = read_items(task, limit);
  const loaded_model l = load_under_plan(m);
  progress_bar bar("task", "items");
  const task_accuracy a = score_task(l.quantized, l.plan, *l.tok, items, nullptr,
                                     [&](int64_t d, int64_t t) { bar.update(d, t); });
  bar.finish();
  if (json) {
    nlohmann::json j = task_accuracy_json(a);
    j["model"] = m.model, j["task"] = task, j["plan"] = l.plan.describe(), j["bits_per_weight"] = l.bits;
    j["quantized_file"] = quantized_as(l.base);
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("model    {}{}  plan {} ({:.3g} bits/weight)\n", m.model, written_as(l.base),
                           l.plan.describe(), l.bits);
  std::cout << fmt::format("task     {}: {} '{}' items{}\n", task, a.n, a.kind,
                           a.truncated ? fmt::format(" ({} truncated to the model's context)", a.truncated) : "");
  std::cout << fmt::format("acc      {:.4f} +/- {:.4f}\n", a.acc, a.acc_stderr);
  if (a.kind == "ending") std::cout << fmt::format("acc_norm {:.4f} +/- {:.4f}\n", a.acc_norm, a.acc_norm_stderr);
  std::cout << fmt::format("loglik   {:.4f} (mean of the true {})  {:.1f} s\n", a.mean_loglik,
                           a.kind == "ending" ? "ending" : "word", a.seconds);
}

void add_task_commands(CLI::App& app, command_list& commands) {
  static make_options mo;
  auto* task = app.add_subcommand("task", "evaluation tasks made from story text");
  task->require_subcommand(1);
  auto* make = task->add_subcommand("make", "write a task (JSONL) from a text of blank-line-separated stories");
  make->add_option("--kind", mo.kind, "ending (which ending follows the story) | lastword (the story's last word)")
      ->capture_default_str();
  make->add_option("--text", mo.text, "stories separated by blank lines")->required();
  make->add_option("--seed", mo.seed, "which stories, distractors and answer positions")->capture_default_str();
  make->add_option("--n", mo.n, "items (0: every eligible story)")->capture_default_str();
  make->add_option("--options", mo.options, "ending: choices per item")->capture_default_str();
  make->add_option("--max-chars", mo.max_chars, "skip stories longer than this")->capture_default_str();
  make->add_option("--fraction", mo.fraction,
                   "take stories from this leading fraction of the text's bytes (calibration reads the second half "
                   "of its tokens)")->capture_default_str();
  make->add_option("-o,--out", mo.out, "output .jsonl")->required();
  commands.push_back({make, [] { cmd_task_make(mo); }});

  static spread_cli_options so;
  auto* spread = app.add_subcommand("spread", "FormatSpread: accuracy of the best and the worst prompt format");
  so.m.add(spread);
  spread->add_option("--task", so.task, "task file (lowbit task make)")->required();
  spread->add_option("--limit", so.limit, "use the first N items (0: all)");
  spread->add_option("--formats", so.s.formats, "formats: the original and K-1 sampled")->capture_default_str();
  spread->add_option("--budget", so.s.bandit.budget, "items evaluated by the bandit, both phases")->capture_default_str();
  spread->add_option("--batch", so.s.bandit.batch, "items per bandit step")->capture_default_str();
  spread->add_option("--seed", so.s.bandit.seed, "formats sampled, item order, Thompson draws")->capture_default_str();
  spread->add_flag("--ucb", so.s.bandit.ucb, "UCB instead of Thompson sampling");
  spread->add_flag("--enumerate-options", so.s.enumerate, "list the options in the prompt (ending tasks)");
  spread->add_flag("--json", so.json, "one JSON document");
  commands.push_back({spread, [] { cmd_spread(so); }});
}

}  // namespace lowbit::cli

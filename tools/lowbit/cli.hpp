// Shared pieces of the lowbit command line: table printing and JSON output helpers.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "lowbit/engine/plan.hpp"

namespace lowbit::cli {

// A table for people: columns padded to their widest cell, numbers right-aligned.
struct table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::string render() const;
};

// A progress bar on stderr with rate and ETA: redrawn in place on a terminal, every 10% otherwise
// (so CI logs stay short).
class progress_bar {
 public:
  progress_bar(std::string label, std::string unit);
  void update(int64_t done, int64_t total);
  void finish();
  // The label changes with the work (e.g. the training loss).
  void set_label(std::string label) { label_ = std::move(label); }

 private:
  std::string label_, unit_;
  double start_;
  int last_decile_ = -1;
  bool tty_;
  bool drawn_ = false;
};

// The shipped data directory: $LOWBIT_DATA_DIR, else $LOWBIT_DATA, else the build's setting
// (../shared/data).
std::string data_dir();

// A subcommand and the work to do when it is chosen.
using command_list = std::vector<std::pair<CLI::App*, std::function<void()>>>;
// synth, tokenize, eval, generate
void add_model_commands(CLI::App& app, command_list& commands);
// quantize
void add_ptq_commands(CLI::App& app, command_list& commands);
// calibrate (static activation scales)
void add_calibrate_commands(CLI::App& app, command_list& commands);
// law, fit, predict
void add_law_commands(CLI::App& app, command_list& commands);
// train
void add_train_commands(CLI::App& app, command_list& commands);
// explore, report
void add_explore_commands(CLI::App& app, command_list& commands);
// task make, spread (tools/lowbit/task_cmds.cpp)
void add_task_commands(CLI::App& app, command_list& commands);

// A model and a quantization plan as eval, generate and spread take them.
struct task_model_options {
  std::string model, tokenizer, weights, acts, kv, rules, attn;
  void add(CLI::App* c);
  quant_plan plan() const;  // the rules file, then each flag given (make_quant_plan), then --attn
};
// `eval --task`: accuracy on a task file (limit: its first N items, 0 all).
void run_task_eval(const task_model_options& m, const std::string& task, int64_t limit, bool json);

// `lowbit bench`: registers the subcommand; *run is set to the work to do when it is chosen.
CLI::App* add_bench_command(CLI::App& app, std::function<void()>* run);

}  // namespace lowbit::cli

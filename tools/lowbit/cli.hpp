// Shared pieces of the lowbit command line: table printing and JSON output helpers.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace lowbit::cli {

// A table for people: columns padded to their widest cell, numbers right-aligned.
struct table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::string render() const;
};

// `lowbit bench`: registers the subcommand; *run is set to the work to do when it is chosen.
CLI::App* add_bench_command(CLI::App& app, std::function<void()>* run);

}  // namespace lowbit::cli

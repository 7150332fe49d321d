// Running the command line from tests: build/lowbit (LOWBIT_CLI) or any shell command, with its
// output and exit code. Shared by the CLI tests of every layer.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace lowbit::testing {

struct cli_result {
  int code;         // exit code (-1 when the command did not exit normally)
  std::string out;  // stdout (+ stderr when asked)
};

// A path in the temporary directory that no other test process uses (test binaries of several
// checkouts may run at once): name + "_" + pid.
inline std::filesystem::path scratch_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
}

// A file's bytes ("" when it cannot be read).
inline std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs a shell command and captures its output.
inline cli_result run_command(const std::string& command, bool with_stderr = true) {
  const std::string cmd = command + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  cli_result r{-1, ""};
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Runs `lowbit ARGS` (stdin from `input` when given).
inline cli_result run_lowbit(const std::string& args, const std::string& input = "", bool with_stderr = false) {
  std::string cmd = std::string(LOWBIT_CLI) + " " + args;
  if (!input.empty()) cmd = "printf '%s' '" + input + "' | " + cmd;
  return run_command(cmd, with_stderr);
}

}  // namespace lowbit::testing

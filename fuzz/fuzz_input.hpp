// Shared by the libFuzzer harnesses (docs/robustness.md "Fuzzing"): the readers take paths (they
// memory-map), so each input is written to one scratch file per process, in /dev/shm when it
// exists (no disk I/O per execution).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace lowbit::fuzz {

inline const std::string& scratch_dir() {
  // Leaked on purpose: the exit handler that removes the directory runs after static
  // destructors would have freed a static string.
  static const std::string* dir = [] {
    const char* base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    auto* d = new std::string(std::string(base) + "/lowbit-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(*d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return d;
  }();
  return *dir;
}

// Writes the input to scratch_dir()/name and returns the path (overwritten at every call).
inline std::string write_input(const uint8_t* data, size_t size, const std::string& name) {
  const std::string path = scratch_dir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// An oracle failed: a finding (libFuzzer saves the input).
[[noreturn]] inline void finding(const char* what) {
  std::fprintf(stderr, "lowbit fuzz finding: %s\n", what);
  std::abort();
}

}  // namespace lowbit::fuzz

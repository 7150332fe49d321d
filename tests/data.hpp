// The shipped data folder the tests read (../shared/data beside the checkout): $LOWBIT_DATA when
// set, else the folder the build was configured with (cmake -DLOWBIT_DATA_DIR=DIR, make DATA=DIR).
// Missing data is a test FAILURE that names the file and how to get it, never a skip: a skipped
// data test would count as passed in ctest.
//
//   ASSERT_TRUE(lowbit_test::have_data(path));           // in a test, before reading path
//   LOWBIT_TEST_NEEDS_DATA(name, {"llama2c/stories260K.bin", ...});  // once per test binary:
//       a failure of the binary's global set-up that lists every missing file
#pragma once

#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace lowbit_test {

inline std::string data_dir() {
  const char* env = std::getenv("LOWBIT_DATA");
  return env && *env ? env : LOWBIT_DATA_DIR;
}

inline std::string data_path(const std::string& relative) { return data_dir() + "/" + relative; }

// How to get the data, appended to every missing-data failure.
inline std::string how_to_get_data() {
  return "the tests read the shipped data folder " + data_dir() +
         " ($LOWBIT_DATA, else the build's LOWBIT_DATA_DIR). Fetch the public files with "
         "scripts/get-data.sh DIR (vectors/* exist only in the project's shared data folder, "
         "../shared/data), then run the tests with LOWBIT_DATA=DIR or rebuild with make DATA=DIR "
         "(cmake -DLOWBIT_DATA_DIR=DIR)";
}

// Success when path can be opened as a file; otherwise a failure naming it and how to get it.
inline ::testing::AssertionResult have_data(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "missing shipped data file " << path << ": " << how_to_get_data();
}

// A test binary's global set-up: fails once, listing every missing file, before its tests run
// (their own failures then say what each could not open).
class needs_data : public ::testing::Environment {
 public:
  needs_data(std::string binary, std::initializer_list<const char*> files) : binary_(std::move(binary)) {
    for (const char* f : files) files_.emplace_back(f);
  }
  void SetUp() override {
    std::string missing;
    for (const auto& f : files_)
      if (!have_data(data_path(f))) missing += "\n  " + data_path(f);
    if (!missing.empty()) ADD_FAILURE() << binary_ << " needs shipped data that is missing:" << missing << "\n" << how_to_get_data();
  }

 private:
  std::string binary_;
  std::vector<std::string> files_;
};

}  // namespace lowbit_test

// At namespace scope in one source file of a test binary.
#define LOWBIT_TEST_NEEDS_DATA(binary, ...)                                                         \
  [[maybe_unused]] static ::testing::Environment* const lowbit_test_needs_data_env_ =              \
      ::testing::AddGlobalTestEnvironment(new ::lowbit_test::needs_data(binary, __VA_ARGS__))

// Thread control shared by every layer that runs OpenMP (and, through it, OpenMP OpenBLAS).
#pragma once

#include <omp.h>

#include <cstdint>

namespace lowbit {

// The quantize kernels (src/kernels/fake_quantize_rows.cpp and its siblings) run a [rows, cols]
// tensor on the calling thread when rows * cols is below this, on the OpenMP team otherwise
// (tests/kernels/test_differential.cpp's thread-count test runs above it).
inline constexpr int64_t kParallelMinElements = int64_t{1} << 15;

// Runs the enclosing scope on one OpenMP thread when `serial` is true, restoring the previous
// setting on exit. Work that finishes in microseconds (small layers, tiny models) costs more to
// wake a team for than it saves, and with more threads than free cores (ctest -j, a loaded
// machine) a spinning team can cost a scheduler time slice per region.
class serial_scope {
 public:
  explicit serial_scope(bool serial) : saved_(omp_get_max_threads()), active_(serial && saved_ > 1) {
    if (active_) omp_set_num_threads(1);
  }
  ~serial_scope() {
    if (active_) omp_set_num_threads(saved_);
  }
  serial_scope(const serial_scope&) = delete;
  serial_scope& operator=(const serial_scope&) = delete;
  bool serial() const { return active_ || saved_ == 1; }

 private:
  int saved_;
  bool active_;
};

}  // namespace lowbit

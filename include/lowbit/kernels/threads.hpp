// Thread control shared by every layer that runs OpenMP (and, through it, OpenMP OpenBLAS).
#pragma once

#include <omp.h>

#include <cstdint>

namespace lowbit {

// The quantize kernels (src/kernels/fake_quantize_rows.cpp and its siblings) run a [rows, cols]
// tensor on the calling thread when rows * cols is below this, on the OpenMP team otherwise
// (tests/kernels/test_differential.cpp's thread-count test runs above it).
inline constexpr int64_t kParallelMinElements = int64_t{1} << 15;

// The threads parallel work should use now: `ceiling` (the user's OMP_NUM_THREADS, --threads or
// lowbit.set_threads, as omp_get_max_threads() gives it) capped by the cores that other processes
// leave free. Spinning OpenMP teams collapse when other processes hold the cores: a region ends at
// its slowest thread, and a thread that lost its core holds up the others for a scheduler slice
// (stories15M eval, 2 threads beside 2 busy processes: 164 tokens/s; one thread: 892). So the
// free cores are measured, not assumed: the machine's busy time from /proc/stat less this
// process's own (/proc/self/stat), over at least kLoadSampleMs, smoothed over samples (the first
// call, before an interval exists, counts the runnable tasks of /proc/loadavg); free =
// cores - others' busy cores, threads = clamp(round(free), 1, ceiling). Between samples the last
// answer stands (a clock read). Where /proc cannot be read, or after set_threads_follow_load(false)
// (`lowbit bench`, which measures a fixed team; or LOWBIT_THREADS_FOLLOW_LOAD=0), the ceiling.
inline constexpr int kLoadSampleMs = 100;
int threads_for_load(int ceiling);
void set_threads_follow_load(bool follow);
// Other processes' busy cores as last measured (-1 before two samples, or when not measured).
double others_busy_cores();

// The OpenMP team for the enclosing scope, restored on exit: one thread when `serial` is true
// (work that finishes in microseconds, small layers, tiny models: waking a team costs more than it
// saves), else threads_for_load(the caller's setting). Every parallel entry point of the library
// (the kernels, the forward and training steps, the PTQ methods) opens one, so the load decides the
// team in this one place; OpenMP OpenBLAS follows omp_get_max_threads().
class serial_scope {
 public:
  explicit serial_scope(bool serial) : saved_(omp_get_max_threads()) {
    const int want = serial ? 1 : (omp_in_parallel() ? saved_ : threads_for_load(saved_));
    active_ = want < saved_;
    if (active_) omp_set_num_threads(want);
    serial_ = want == 1;
  }
  ~serial_scope() {
    if (active_) omp_set_num_threads(saved_);
  }
  serial_scope(const serial_scope&) = delete;
  serial_scope& operator=(const serial_scope&) = delete;
  bool serial() const { return serial_; }

 private:
  int saved_;
  bool active_ = false, serial_ = false;
};

}  // namespace lowbit

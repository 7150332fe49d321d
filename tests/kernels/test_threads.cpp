// The load-following team of kernels/threads.hpp: busy processes on every core leave one thread;
// bench's fixed team ignores the load.
#include <gtest/gtest.h>
#include <omp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

#include "lowbit/kernels/threads.hpp"

namespace {

using namespace lowbit;

// Children that spin until killed, one per online core.
struct busy_children {
  std::vector<pid_t> pids;
  explicit busy_children(int n) {
    for (int i = 0; i < n; ++i) {
      const pid_t p = fork();
      if (p == 0) {
        volatile unsigned long x = 0;
        for (;;) x = x + 1;
      }
      if (p > 0) pids.push_back(p);
    }
  }
  ~busy_children() {
    for (pid_t p : pids) kill(p, SIGKILL);
    for (pid_t p : pids) waitpid(p, nullptr, 0);
  }
};

TEST(Threads, BusyCoresLeaveOneThread) {
  const int cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  ASSERT_GE(cores, 1);
  const int ceiling = std::max(2, cores);
  busy_children load(cores);
  ASSERT_EQ(static_cast<int>(load.pids.size()), cores);
  // Several sampling intervals, so that the smoothed estimate sees the children.
  int threads = ceiling;
  for (int i = 0; i < 12; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(kLoadSampleMs + 20));
    threads = threads_for_load(ceiling);
  }
  EXPECT_EQ(threads, 1) << "others busy " << others_busy_cores() << " of " << cores << " cores";
  EXPECT_GE(others_busy_cores(), cores - 0.75);
  // The team a serial_scope opens follows the same answer, and the caller's setting comes back.
  omp_set_num_threads(ceiling);
  {
    const serial_scope team(false);
    EXPECT_EQ(omp_get_max_threads(), 1);
  }
  EXPECT_EQ(omp_get_max_threads(), ceiling);
  // A fixed team (lowbit bench) ignores the load.
  set_threads_follow_load(false);
  EXPECT_EQ(threads_for_load(ceiling), ceiling);
  set_threads_follow_load(true);
}

}  // namespace

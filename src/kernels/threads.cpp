// The load-following thread count of threads.hpp: the machine's busy time from /proc/stat less this
// process's own, sampled at most every kLoadSampleMs.
#include "lowbit/kernels/threads.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace lowbit {
namespace {

struct cpu_times {
  long long busy = 0, total = 0, self = 0;
  int cores = 0;
  bool ok = false;
};

// /proc/stat's aggregate "cpu" line (user nice system idle iowait irq softirq steal ...) and its
// cpuN lines, and /proc/self/stat's utime + stime (fields 14, 15), all in clock ticks.
cpu_times read_cpu_times() {
  cpu_times t;
  if (FILE* f = std::fopen("/proc/stat", "re")) {
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
      if (std::strncmp(line, "cpu", 3) != 0) break;
      if (line[3] == ' ') {
        long long v[8] = {};
        if (std::sscanf(line + 3, "%lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                        &v[6], &v[7]) >= 4) {
          t.busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
          t.total = t.busy + v[3] + v[4];
          t.ok = true;
        }
      } else {
        ++t.cores;
      }
    }
    std::fclose(f);
  }
  if (!t.ok || t.cores == 0) return t.ok = false, t;
  t.ok = false;
  if (FILE* f = std::fopen("/proc/self/stat", "re")) {
    char buf[1024];
    const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = 0;
    // The command name (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'.
    if (const char* p = std::strrchr(buf, ')')) {
      long long ut = 0, st = 0;
      // Fields 3..13 skipped: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt.
      if (std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &ut, &st) == 2) {
        t.self = ut + st;
        t.ok = true;
      }
    }
  }
  return t;
}

struct load_state {
  std::mutex mu;
  std::atomic<bool> follow{true};
  std::atomic<int64_t> next_sample_ns{0};
  std::atomic<double> others{-1.0};  // smoothed busy cores of other processes
  std::atomic<int> cores{0};
  cpu_times last;
};

load_state& state() {
  static load_state s;
  static const bool env_checked = [] {
    const char* e = std::getenv("LOWBIT_THREADS_FOLLOW_LOAD");
    if (e && std::strcmp(e, "0") == 0) s.follow = false;
    return true;
  }();
  (void)env_checked;
  return s;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Before two samples exist: the runnable tasks now (/proc/loadavg's fourth field, "R/T"), less the
// caller, as other processes' busy cores (-1 when unreadable).
double runnable_others() {
  double others = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "re")) {
    int running = 0, total = 0;
    if (std::fscanf(f, "%*f %*f %*f %d/%d", &running, &total) == 2) others = std::max(0, running - 1);
    std::fclose(f);
  }
  return others;
}

void sample(load_state& s, int64_t now) {
  const std::lock_guard<std::mutex> lock(s.mu);
  if (now < s.next_sample_ns.load(std::memory_order_relaxed)) return;  // another thread sampled meanwhile
  s.next_sample_ns = now + int64_t{kLoadSampleMs} * 1000000;
  const cpu_times t = read_cpu_times();
  if (!t.ok) return;
  if (s.last.ok && t.total > s.last.total) {
    const double dt = static_cast<double>(t.total - s.last.total);  // ticks summed over all cores
    const double others_ticks = static_cast<double>((t.busy - s.last.busy) - (t.self - s.last.self));
    const double busy = std::clamp(others_ticks / dt * t.cores, 0.0, static_cast<double>(t.cores));
    const double prev = s.others.load();
    s.others = prev < 0 ? busy : 0.5 * prev + 0.5 * busy;
    s.cores = t.cores;
  } else if (!s.last.ok) {
    s.others = std::min(runnable_others(), static_cast<double>(t.cores));
    s.cores = t.cores;
  }
  s.last = t;
}

}  // namespace

int threads_for_load(int ceiling) {
  if (ceiling <= 1) return 1;
  load_state& s = state();
  if (!s.follow.load(std::memory_order_relaxed)) return ceiling;
  const int64_t now = now_ns();
  if (now >= s.next_sample_ns.load(std::memory_order_relaxed)) sample(s, now);
  const double others = s.others.load(std::memory_order_relaxed);
  if (others < 0) return ceiling;
  const double free = s.cores.load(std::memory_order_relaxed) - others;
  return std::clamp(static_cast<int>(std::lround(free)), 1, ceiling);
}

void set_threads_follow_load(bool follow) { state().follow = follow; }

double others_busy_cores() { return state().follow ? state().others.load() : -1.0; }

}  // namespace lowbit

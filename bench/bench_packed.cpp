// Decode GEMV speed (issue 17): one token against a weight of each shape, the float32 kernel
// (lane_ordered_matmul) and the packed kernels (packed_matmul, float activations;
// packed_matmul_int, q8_0 activations). The weights are cold as in decode: enough copies of each
// matrix to fill 256 MiB are used in turn, so every call reads its weight from DRAM. Prints the
// median time of a call and the weight bytes read per second (codes + scales, or float32).
//   build/bench_packed [tokens=1] [reps=41] [rows x cols ...]   e.g. build/bench_packed 1 41 32000x288
// BENCH_THREAD_CLOCK=1 times with the calling thread's CPU time instead of the wall clock (one
// thread, OMP_NUM_THREADS=1: steadier on a shared machine; a DRAM stall still counts as time).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/packed_matmul.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace {
double now() {
  static const bool thread_clock = std::getenv("BENCH_THREAD_CLOCK") != nullptr;
  if (thread_clock) {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median_seconds(int reps, int copies, const std::function<void(int)>& call) {
  std::vector<double> t;
  for (int r = 0; r < copies; ++r) call(r);  // warm-up: page faults, first touch
  for (int r = 0; r < reps; ++r) {
    const double s = now();
    call(r % copies);
    t.push_back(now() - s);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 1;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 41;
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int i = 3; i < argc; ++i) {
    long long r = 0, c = 0;
    if (std::sscanf(argv[i], "%lldx%lld", &r, &c) == 2) shapes.emplace_back(r, c);
  }
  if (shapes.empty())  // stories15M's classifier, wq and w1, w2; the 85M model's wq, w1, w2
    shapes = {{32000, 288}, {768, 288}, {288, 768}, {768, 768}, {2048, 768}, {768, 2048}};
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::printf("%-12s %-10s %10s %9s\n", "shape", "kernel", "us/call", "GB/s");
  for (const auto& [rows, cols] : shapes) {
    std::vector<float> w(size_t(rows * cols)), x(size_t(n * cols)), y(size_t(n * rows));
    for (auto& v : w) v = 0.05f * nd(gen);
    for (auto& v : x) v = nd(gen);
    const auto copies_of = [&](double bytes) { return std::max(2, int(256.0 * 1024 * 1024 / bytes)); };
    const auto line = [&](const char* kernel, double bytes, double s) {
      std::printf("%5lldx%-6lld %-10s %10.1f %9.2f\n", (long long)rows, (long long)cols, kernel, s * 1e6, bytes / s / 1e9);
    };
    {  // float32
      const double bytes = double(rows * cols) * 4;
      const int copies = copies_of(bytes);
      std::vector<std::vector<float>> ws(size_t(copies), w);
      line("f32", bytes, median_seconds(reps, copies, [&](int k) {
             lowbit::lane_ordered_matmul(ws[size_t(k)].data(), rows, cols, x.data(), n, y.data());
           }));
    }
    for (const char* spec : {"q8_0", "q4_0"}) {
      const lowbit::packed_matrix p = lowbit::pack_matrix(lowbit::quantize(w.data(), rows, cols, lowbit::parse_format(spec)));
      const double bytes = double(p.bytes());
      const int copies = copies_of(bytes);
      std::vector<lowbit::packed_matrix> ps(size_t(copies), p);
      line(spec, bytes, median_seconds(reps, copies, [&](int k) { lowbit::packed_matmul(ps[size_t(k)], x.data(), n, y.data()); }));
      const lowbit::int8_activations a = lowbit::quantize_activations(x.data(), n, cols, p.group);
      line((std::string(spec) + "-int").c_str(), bytes, median_seconds(reps, copies, [&](int k) {
             lowbit::packed_matmul_int(ps[size_t(k)], a, y.data());
           }));
    }
  }
}

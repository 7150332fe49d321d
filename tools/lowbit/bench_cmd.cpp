// `lowbit bench`: fake-quantize throughput of a float32 buffer next to memcpy of the same buffer in
// the same run, both counted as (bytes in + bytes out) / time; medians of repeated runs; and the
// speed-up of the fast kernel over its scalar _ref twin.
#include <algorithm>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "cli.hpp"
#include "lowbit/kernels/threads.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit::cli {
namespace {

struct bench_options {
  std::vector<std::string> specs;
  double mib = 64;
  int threads = 1;
  int reps = 9;
  double ref_mib = 2;
  bool json = false;
  bool codes = false;  // time quantize (to packed codes) instead of fake_quantize
};

// memcpy with the same threads as the kernel (each copies its contiguous share).
void parallel_memcpy(float* dst, const float* src, int64_t n) {
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (n + nt - 1) / nt, b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    if (e > b) std::memcpy(dst + b, src + b, static_cast<size_t>(e - b) * sizeof(float));
  }
}

template <typename F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    const auto b = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double>(b - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void run(const bench_options& o) {
  if (o.mib <= 0 || o.threads < 1 || o.reps < 1) throw error("bench: --mib, --threads and --reps must be positive");
  // libgomp crashes creating a team of 100,000 threads; no benchmark wants more than a few per core.
  if (const int most = 4 * omp_get_num_procs(); o.threads > most)
    throw error(fmt::format("bench: --threads {}: at most {} (4 per core) on this machine", o.threads, most));
  omp_set_num_threads(o.threads);
  set_threads_follow_load(false);  // a benchmark measures the team it was asked for
  const int64_t cols = 4096;
  const int64_t rows = std::max<int64_t>(1, static_cast<int64_t>(o.mib * 1024 * 1024 / 4) / cols);
  const int64_t n = rows * cols;
  // 64-byte aligned buffers (as an ML framework allocates tensors): full vectors line up with
  // cache lines, so large outputs can be streamed past the caches, as memcpy does.
  struct aligned_buffer {
    float* p;
    explicit aligned_buffer(size_t count)
        : p(static_cast<float*>(std::aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64))) {
      if (!p) throw error("bench: out of memory");
    }
    ~aligned_buffer() { std::free(p); }
    float* data() { return p; }
  } in(static_cast<size_t>(n)), out(static_cast<size_t>(n));
  auto* in_end = in.data() + n;
  std::mt19937 gen(42);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float* v = in.data(); v != in_end; ++v) *v = dist(gen);
  const double bytes = 2.0 * static_cast<double>(n) * sizeof(float);  // in + out
  // Touch both buffers once so page faults are not timed.
  std::memcpy(out.data(), in.data(), static_cast<size_t>(n) * sizeof(float));
  const int64_t ref_rows = std::max<int64_t>(1, std::min<int64_t>(rows, static_cast<int64_t>(o.ref_mib * 1024 * 1024 / 4) / cols));

  table t{{"format", "canonical", "GB/s", "memcpy GB/s", "x memcpy", "ref GB/s", "x ref"}, {}};
  nlohmann::json rows_json = nlohmann::json::array();
  for (const auto& spec : o.specs) {
    const format f = parse_format(spec);
    // --codes: quantize to packed codes (bytes out = the codes and scales as stored).
    double q_bytes = bytes;
    auto kernel = [&] {
      if (o.codes) quantize(in.data(), rows, cols, f);
      else fake_quantize(in.data(), out.data(), rows, cols, f);
    };
    if (o.codes)  // the warm-up, which also gives the stored size
      q_bytes = static_cast<double>(n) * sizeof(float) + static_cast<double>(quantize(in.data(), rows, cols, f).storage_bytes());
    else
      kernel();  // warm-up
    // memcpy and the kernel are timed alternately so that both see the same machine state.
    std::vector<double> tq, tm;
    for (int r = 0; r < o.reps; ++r) {
      tm.push_back(median_seconds(1, [&] { parallel_memcpy(out.data(), in.data(), n); }));
      tq.push_back(median_seconds(1, kernel));
    }
    std::sort(tq.begin(), tq.end());
    std::sort(tm.begin(), tm.end());
    const double q_gbs = q_bytes / tq[tq.size() / 2] / 1e9, m_gbs = bytes / tm[tm.size() / 2] / 1e9;
    const double ref_bytes = q_bytes * static_cast<double>(ref_rows) / static_cast<double>(rows);
    const double t_ref = median_seconds(std::max(1, o.reps / 3), [&] {
      if (o.codes) quantize_ref(in.data(), ref_rows, cols, f);
      else fake_quantize_ref(in.data(), out.data(), ref_rows, cols, f);
    });
    const double ref_gbs = ref_bytes / t_ref / 1e9;
    t.rows.push_back({spec, format_name(f), fmt::format("{:.2f}", q_gbs), fmt::format("{:.2f}", m_gbs),
                      fmt::format("{:.2f}", q_gbs / m_gbs), fmt::format("{:.3f}", ref_gbs),
                      fmt::format("{:.1f}", q_gbs / ref_gbs)});
    rows_json.push_back({{"format", spec},
                         {"canonical", format_name(f)},
                         {"threads", o.threads},
                         {"mib", o.mib},
                         {"kernel", o.codes ? "quantize" : "fake_quantize"},
                         {"gbps", q_gbs},
                         {"memcpy_gbps", m_gbs},
                         {"ratio_memcpy", q_gbs / m_gbs},
                         {"ref_gbps", ref_gbs},
                         {"speedup_ref", q_gbs / ref_gbs}});
  }
  if (o.json) {
    std::cout << rows_json.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("{} of a {:.0f} MiB float32 buffer [{} x {}], {} thread(s), median of {} runs; "
                           "GB/s = (bytes in + bytes out{}) / time; memcpy on the same buffers and threads, "
                           "alternating with the kernel\n",
                           o.codes ? "quantize to codes" : "fake_quantize", static_cast<double>(n) * 4 / (1024 * 1024), rows,
                           cols, o.threads, o.reps, o.codes ? " as stored: codes and scales" : "")
            << t.render();
}

}  // namespace

CLI::App* add_bench_command(CLI::App& app, std::function<void()>* run_fn) {
  auto opts = std::make_shared<bench_options>();
  auto* sub = app.add_subcommand("bench", "fake-quantize throughput vs memcpy of the same buffer, and vs _ref");
  sub->add_option("FORMAT", opts->specs, "format specs")->required();
  sub->add_option("--mib", opts->mib, "buffer size in MiB (default 64)");
  sub->add_option("--threads", opts->threads, "OpenMP threads (default 1)");
  sub->add_option("--reps", opts->reps, "repetitions; the median is reported (default 9)");
  sub->add_option("--ref-mib", opts->ref_mib, "MiB given to the scalar _ref for the speed-up (default 2)");
  sub->add_flag("--json", opts->json, "one JSON document");
  sub->add_flag("--codes", opts->codes,
                "time quantize to packed codes (bytes out = codes and scales as stored) instead of fake_quantize");
  *run_fn = [opts] { run(*opts); };
  return sub;
}

}  // namespace lowbit::cli

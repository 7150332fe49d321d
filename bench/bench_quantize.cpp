// Google Benchmark programs for the kernels: fake_quantize / quantize / dequantize (fast and
// _ref) and memcpy on the same buffer, bytes counted as (in + out). `lowbit bench` prints the
// same comparison as ratios; this program is for profiling and regression tracking.
//   build/bench_quantize --benchmark_filter=mxfp4
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"

namespace {

constexpr int64_t kCols = 4096;

struct buffers {
  int64_t rows;
  float* in;
  float* out;
  explicit buffers(int64_t r) : rows(r) {
    const size_t bytes = static_cast<size_t>(r * kCols) * sizeof(float);
    in = static_cast<float*>(std::aligned_alloc(64, bytes));
    out = static_cast<float*>(std::aligned_alloc(64, bytes));
    std::mt19937 gen(42);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (int64_t i = 0; i < r * kCols; ++i) in[i] = d(gen);
    std::memcpy(out, in, bytes);
  }
  ~buffers() {
    std::free(in);
    std::free(out);
  }
  int64_t bytes_in_out() const { return 2 * rows * kCols * static_cast<int64_t>(sizeof(float)); }
};

void BM_memcpy(benchmark::State& st) {
  buffers b(st.range(0));
  for (auto _ : st) {
    std::memcpy(b.out, b.in, static_cast<size_t>(b.rows * kCols) * sizeof(float));
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * b.bytes_in_out());
}

void BM_fake_quantize(benchmark::State& st, const std::string& spec, bool ref) {
  buffers b(st.range(0));
  const lowbit::format f = lowbit::parse_format(spec);
  for (auto _ : st) {
    if (ref) lowbit::fake_quantize_ref(b.in, b.out, b.rows, kCols, f);
    else lowbit::fake_quantize(b.in, b.out, b.rows, kCols, f);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * b.bytes_in_out());
}

void BM_quantize_dequantize(benchmark::State& st, const std::string& spec) {
  buffers b(st.range(0));
  const lowbit::format f = lowbit::parse_format(spec);
  for (auto _ : st) {
    const lowbit::quantized_tensor q = lowbit::quantize(b.in, b.rows, kCols, f);
    lowbit::dequantize(q, b.out);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * b.bytes_in_out());
}

// The stochastic-rounding draws alone (Philox4x32-10, one 32-bit word per element) for as many
// elements as a fake_quantize run: the floor under every ~sr row. Bytes are counted as the
// fake-quantize of those elements would count them (8 per element), so GB/s compare directly.
void BM_random_words(benchmark::State& st, bool ref) {
  const size_t n = static_cast<size_t>(st.range(0) * kCols);
  std::vector<uint32_t> words(n);
  for (auto _ : st) {
    if (ref) lowbit::random_words_ref(7, 11, 0, n, words.data());
    else lowbit::random_words(7, 11, 0, n, words.data());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(n * 2 * sizeof(float)));
}

// e2m1/g32 next to e2m1/g32~sr and ~sr8: the cost of the stochastic draws (Philox4x32-10,
// docs/conventions.md §10 and §43).
const char* kFormats[] = {"int8/c", "int4/g128", "e4m3fn/c", "e4m3fn/t", "mxfp4",        "nvfp4",        "nf4",
                          "q8_0",   "q4_0",      "e2m1/g32", "e2m1/g32~sr", "e2m1/g32~sr8", "bf16"};

int register_all() {
  constexpr int64_t kRows = 4096;  // 64 MiB
  // 16 rows (256 KiB in + 256 KiB out) stay in L2: the kernel's compute cost without DRAM.
  constexpr int64_t kCachedRows = 16;
  benchmark::RegisterBenchmark("memcpy", BM_memcpy)->Arg(kRows)->Arg(kCachedRows)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("random_words", BM_random_words, false)->Arg(kCachedRows)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("random_words_ref", BM_random_words, true)->Arg(kCachedRows)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (const char* s : kFormats) {
    benchmark::RegisterBenchmark((std::string("fake_quantize/") + s).c_str(), BM_fake_quantize, std::string(s), false)
        ->Arg(kRows)->Arg(kCachedRows)->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((std::string("fake_quantize_ref/") + s).c_str(), BM_fake_quantize, std::string(s), true)
        ->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((std::string("quantize+dequantize/") + s).c_str(), BM_quantize_dequantize, std::string(s))
        ->Arg(kRows / 4)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  return 0;
}
const int registered = register_all();

}  // namespace

BENCHMARK_MAIN();

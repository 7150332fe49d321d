// GPTQ speed (issue "PTQ"): one [dim, dim] layer with its Hessian accumulated from `tokens`
// calibration rows, next to one sgemm of the same [dim, dim] x [dim, dim] shape in the same run.
//   build/bench_gptq [dim=4096] [tokens=262144 (128 x 2048)] [format=int4/g32]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "lowbit/engine/forward.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

int main(int argc, char** argv) {
  const int64_t dim = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t tokens = argc > 2 ? std::atoll(argv[2]) : 128 * 2048;
  const std::string spec = argc > 3 ? argv[3] : "int4/g32";
  const lowbit::format f = lowbit::parse_format(spec);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> W(dim * dim);
  for (auto& w : W) w = 0.02f * nd(rng);
  // Calibration rows in chunks of 2048 (one sequence each), correlated through a shared factor.
  lowbit::ptq::hessian_accumulator h(dim);
  const int64_t chunk = 2048;
  std::vector<float> X(chunk * dim);
  double t_hessian = 0;
  for (int64_t done = 0; done < tokens; done += chunk) {
    const int64_t n = std::min(chunk, tokens - done);
    for (int64_t r = 0; r < n; ++r) {
      const float common = nd(rng);
      for (int64_t j = 0; j < dim; ++j) X[r * dim + j] = nd(rng) + 0.5f * common;
    }
    const double t0 = now();
    h.add(X.data(), n);
    t_hessian += now() - t0;
    if ((done / chunk) % 16 == 15) std::fprintf(stderr, "\rHessian: %lld / %lld tokens", (long long)(done + n), (long long)tokens);
  }
  std::fprintf(stderr, "\n");
  const auto H = h.matrix();
  double t0 = now();
  const auto r = lowbit::ptq::gptq_quantize(W.data(), dim, dim, H.data(), f);
  const double t_gptq = now() - t0;
  const double sgemm = 2.0 * dim * dim * double(dim) / (lowbit::sgemm_gflops(dim, dim, dim, 3) * 1e9);
  std::printf("[%lld x %lld] %s, Hessian of %lld tokens: %.2f s; GPTQ: %.2f s; one sgemm %lld^3: %.3f s "
              "(GPTQ = %.1f sgemms, Hessian = %.1f sgemms)\n",
              (long long)dim, (long long)dim, spec.c_str(), (long long)tokens, t_hessian, t_gptq, (long long)dim,
              sgemm, t_gptq / sgemm, t_hessian / sgemm);
  return r.weights.empty();
}

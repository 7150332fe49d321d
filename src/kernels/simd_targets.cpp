// Which code the fast kernels run: the Highway target every unit's dispatch picks (forced by the
// per-target tests; one chosen target serves every HWY_EXPORT table), and the switch that sends
// every fast kernel to its _ref twin (docs/architecture.md §6). No per-target code here.
#include <hwy/highway.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/simd.hpp"

namespace lowbit {

namespace {
std::atomic<bool> g_use_ref{false};
}  // namespace

void set_use_ref(bool v) { g_use_ref.store(v); }
bool use_ref() { return g_use_ref.load(); }

// SIMD target control (tests).
std::vector<std::pair<int64_t, std::string>> simd_targets() {
  std::vector<std::pair<int64_t, std::string>> out;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) out.emplace_back(t, hwy::TargetName(t));
  return out;
}

void force_simd_target(int64_t target) {
  hwy::SetSupportedTargetsForTest(target);
  hwy::GetChosenTarget().DeInit();
}

}  // namespace lowbit

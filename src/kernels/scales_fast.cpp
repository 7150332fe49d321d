// Statistics passes of the fast kernels: a group's amax (and min/max) and nvfp4's first pass over
// a row (the row's finite amax, its batched groups' amax bits), per target; and, once, the
// threaded tensor statistics and fast_call's constructor, which runs them (the per-call grid
// constants, scale context, nvfp4's tensor scale, /t's one scale; docs/formats.md §1.3,
// docs/conventions.md §5-8).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/scales_fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/simd.hpp"
#include "lowbit/kernels/threads.hpp"
#include "src/kernels/fast_plan.hpp"
#include "src/kernels/scales_fast-inl.hpp"
#include "src/kernels/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// nvfp4's first pass over a row: the row's finite amax (the tensor scale) and the amax bits of
// the groups of k in whole batches of N (the second pass's batches read those instead of the
// groups; its per-group tail takes its own statistics). One read of the data.
void GroupAmaxRow(const float* HWY_RESTRICT x, size_t cols, size_t k, int32_t* HWY_RESTRICT group_amax,
                  uint32_t* finite_amax_bits) {
  size_t c0 = 0;
  uint32_t finite = 0;
#if HWY_TARGET != HWY_SCALAR
  const DI di;
  const size_t N = hn::Lanes(di);
  VI partial[hn::MaxLanes(DI())];
  VI finite_v = hn::Zero(di);
  for (size_t g = 0; c0 + N * k <= cols; c0 += N * k, g += N)
    hn::StoreU(BatchGroupAmax<true>(di, x + c0, k, partial, &finite_v), di, group_amax + g);
  finite = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, finite_v)));
#endif
  if (c0 < cols) {
    simd_stats st;
    GroupStatsT(x + c0, cols - c0, false, true, &st);
    finite = std::max(finite, st.amax_bits);
  }
  *finite_amax_bits = finite;
}

void GroupStats(const float* HWY_RESTRICT x, size_t n, bool want_minmax, bool finite_only, simd_stats* st) {
  GroupStatsT(x, n, want_minmax, finite_only, st);
}

// The amax bits of x[0, n) (finite_only: of its finite values) read as four streams at once,
// the quarters of the span, one vector of each per step: one core reads memory faster over
// several streams (Zen 4, 64 MiB: 28 GB/s against 22 GB/s for one). The max of |x| bit patterns
// does not depend on the order, so this equals GroupStatsT's amax.
uint32_t StreamAmax(const float* HWY_RESTRICT x, size_t n, bool finite_only) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const size_t q = n / (4 * N) * N;  // floats per stream
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  const VI inf_bits = hn::Set(di, 0x7f800000);
  auto abs_bits = [&](const float* p) {
    const VI a = hn::And(hn::BitCast(di, hn::LoadU(df, p)), abs_mask);
    return finite_only ? hn::IfThenElseZero(hn::Lt(a, inf_bits), a) : a;
  };
  VI m0 = hn::Zero(di), m1 = m0, m2 = m0, m3 = m0;
  for (size_t i = 0; i < q; i += N) {
    m0 = hn::Max(m0, abs_bits(x + i));
    m1 = hn::Max(m1, abs_bits(x + q + i));
    m2 = hn::Max(m2, abs_bits(x + 2 * q + i));
    m3 = hn::Max(m3, abs_bits(x + 3 * q + i));
  }
  uint32_t amax = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(di, hn::Max(hn::Max(m0, m1), hn::Max(m2, m3)))));
  if (4 * q < n) {
    simd_stats st;
    GroupStatsT(x + 4 * q, n - 4 * q, false, finite_only, &st);
    amax = std::max(amax, st.amax_bits);
  }
  return amax;
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(GroupStats);
HWY_EXPORT(GroupAmaxRow);
HWY_EXPORT(StreamAmax);

namespace {

// Statistics of the whole tensor, threaded (for /t, and nvfp4's finite amax).
group_stats tensor_stats_fast(const float* x, int64_t n, bool want_minmax, bool finite_only) {
  const int nt = n >= kParallelMinElements ? omp_get_max_threads() : 1;
  std::vector<simd_stats> part(static_cast<size_t>(nt));
  const int64_t chunk = (n + nt - 1) / std::max(1, nt);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    simd_stats s;
    if (e > b && !want_minmax)
      s.amax_bits = HWY_DYNAMIC_DISPATCH(StreamAmax)(x + b, static_cast<size_t>(e - b), finite_only);
    else if (e > b)
      HWY_DYNAMIC_DISPATCH(GroupStats)(x + b, static_cast<size_t>(e - b), want_minmax, finite_only, &s);
    part[static_cast<size_t>(t)] = s;
  }
  group_stats st;
  uint32_t amax_bits = 0;
  for (const auto& s : part) {
    amax_bits = std::max(amax_bits, s.amax_bits);
    st.min = std::min(st.min, s.min);
    st.max = std::max(st.max, s.max);
  }
  st.nonfinite = amax_bits >= 0x7f800000u;
  st.amax = std::bit_cast<float>(amax_bits);
  return st;
}

}  // namespace

namespace detail {

fast_call::fast_call(const format& f, const float* x, int64_t rows, int64_t cols, bool unscaled,
                     uint64_t tensor_id, bool keep_group_amax)
    : grid(make_grid_params(f.element)), sctx(make_scale_context(f, /*reference=*/false)) {
  plan.f = &f;
  plan.rng_seed = f.seed;
  plan.rng_bits = f.sr_bits;
  plan.rng_tensor_id = tensor_id;
  plan.grid = &grid;
  plan.sctx = &sctx;
  plan.group_cols = f.gran == granularity::group ? f.group_size : std::max<int64_t>(cols, 1);
  plan.want_minmax = f.element.kind == element_kind::uint_asym;
  plan.unscaled = unscaled;
  plan.stream = false;
  plan.rows_backward = false;
  plan.batch_preset = f.named == preset::nvfp4 ? 1 : f.named == preset::q8_0 ? 2 : 0;
  plan.batch = f.gran == granularity::group && f.group_size <= 512 &&
               (sctx.inline_rule != scale_context::inline_none || plan.batch_preset != 0);
  plan.ggml_batch = (has_fixed_zero_point(f) || has_block_min(f)) && f.gran == granularity::group;
  plan.tensor_scale = 1.0f;
  if (f.named == preset::nvfp4 && keep_group_amax) {  // (nvfp4's groups of 16 always batch)
    thread_local std::vector<int32_t> amax_buffer;  // reused by the calls of a thread
    amax_per_row = groups_per_row(f, cols);
    amax_buffer.resize(static_cast<size_t>(rows * amax_per_row));
    int32_t* const amax = amax_buffer.data();  // the calling thread's buffer (the team's are others)
    uint32_t finite_bits = 0;
#pragma omp parallel for schedule(static) reduction(max : finite_bits) if (rows * cols >= kParallelMinElements)
    for (int64_t r = 0; r < rows; ++r) {
      uint32_t row_bits = 0;
      HWY_DYNAMIC_DISPATCH(GroupAmaxRow)(x + r * cols, static_cast<size_t>(cols), static_cast<size_t>(plan.group_cols),
                                         amax + r * amax_per_row, &row_bits);
      finite_bits = std::max(finite_bits, row_bits);
    }
    group_amax = amax;
    plan.tensor_scale = nvfp4_tensor_scale(std::bit_cast<float>(finite_bits));
  } else if (f.named == preset::nvfp4) {
    plan.tensor_scale = nvfp4_tensor_scale(tensor_stats_fast(x, rows * cols, false, true).amax);
  }
  if (f.gran == granularity::tensor) {  // per-tensor scale: a first pass over the data
    const group_stats st = tensor_stats_fast(x, rows * cols, plan.want_minmax, false);
    plan.tensor_gs = choose_scale(sctx, st, x, rows * cols, plan.tensor_scale);
  }
}

}  // namespace detail

}  // namespace lowbit
#endif  // HWY_ONCE

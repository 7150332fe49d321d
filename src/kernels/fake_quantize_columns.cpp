// The fast kernel of groups along rows (fake_quantize_columns: out = Q(in^T)^T without a
// transposed copy): tiles of N columns x one group of rows, scales N at a time
// (scales_fast-inl.hpp), elements rounded as the row kernel rounds them (simd_round-inl.hpp);
// what the tiles do not take runs the row kernel on each column's group, gathered. Must equal
// fake_quantize_columns_ref bit for bit (tests/kernels/test_differential.cpp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/fake_quantize_columns.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/threads.hpp"
#include "src/kernels/fast_plan.hpp"
#include "src/kernels/scales_fast-inl.hpp"
#include "src/kernels/simd_common-inl.hpp"
#include "src/kernels/simd_round-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// One tile: columns [c0, c0 + N) of rows [r0, r1), one group of each column. The statistics are a
// lane-wise max over the rows (no horizontal reduction), the N scales one vectorised computation
// (BatchScales / BatchScalesPreset, as the row kernel's batches), then every row vector is rounded
// under its lanes' scales. Returns false (the caller takes the gathered per-column path) when a
// scale needs the general code (zero, subnormal or non-finite amax, ...). Stochastic rounding:
// element (r, c) draws the transposed tensor's counter counters.of(c, rows) + r; each column's
// draws for [r0, r1) are made in one run and each row vector gathers its lanes' words.
template <rounding_mode kMode, span_path kPath>
HWY_NOINLINE bool FakeQuantColumnTilePath(const float* in, float* out, size_t rows, size_t cols, size_t r0, size_t r1,
                                          size_t c0, const row_plan& plan, const grid_params g,
                                          const sr_counters& counters) {
#if HWY_TARGET == HWY_SCALAR
  return false;
#else
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  VI m = hn::Zero(di);
  for (size_t r = r0; r < r1; ++r) m = hn::Max(m, hn::And(hn::BitCast(di, hn::LoadU(df, in + r * cols + c0)), abs_mask));
  HWY_ALIGN float scale[hn::MaxLanes(DF())];
  HWY_ALIGN float stored[hn::MaxLanes(DF())];
  HWY_ALIGN float mult[hn::MaxLanes(DF())];
  if (plan.batch_preset == 0) {
    if (!BatchScales(df, m, *plan.sctx, scale, mult)) return false;
  } else if (!BatchScalesPreset(df, m, plan, scale, stored, mult)) {
    return false;
  }
  const VF div = hn::Load(df, scale), mul = hn::Load(df, mult), zero = hn::Zero(df);
  // sr: words[j * n + i] is the draw of element (r0 + i, c0 + j).
  const size_t n = r1 - r0;
  thread_local std::vector<uint32_t> words;
  if constexpr (kMode == rounding_mode::sr) {
    words.resize(N * n);
    for (size_t j = 0; j < N; ++j)
      random_words(plan.rng_seed, plan.rng_tensor_id, counters.of(static_cast<int64_t>(c0 + j), static_cast<int64_t>(rows)) + r0,
                   n, words.data() + j * n, plan.rng_bits);
  }
  const VI lane_offsets = hn::Mul(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(n)));
  auto each_row = [&](auto quantize_vec) {
    for (size_t r = r0; r < r1; ++r) {
      VF u = zero;
      if constexpr (kMode == rounding_mode::sr) {  // UniformFromWords of the gathered words
        const VI w = hn::GatherIndex(di, reinterpret_cast<const int32_t*>(words.data() + (r - r0)), lane_offsets);
        u = hn::Mul(hn::ConvertTo(df, hn::BitCast(di, hn::ShiftRight<8>(hn::BitCast(DU(), w)))), hn::Set(df, 0x1p-24f));
      }
      hn::StoreU(quantize_vec(hn::LoadU(df, in + r * cols + c0), u), df, out + r * cols + c0);
    }
  };
  if (plan.batch_preset == 2) {  // q8_0: ggml's roundf(x * (1/d)) * d
    each_row([&](VF x, VF) {
      return FakeQuantVec<rounding_mode::rna, span_path::int_fast, span_scale::mul>(df, x, zero, g, mul, div, div,
                                                                                  false, zero, zero);
    });
  } else if (hn::AllFalse(df, hn::Eq(mul, zero))) {  // every lane's scale a power of two: exact multiply
    each_row([&](VF x, VF u) {
      return FakeQuantVec<kMode, kPath, span_scale::mul>(df, x, u, g, mul, div, div, false, zero, zero);
    });
  } else {
    each_row([&](VF x, VF u) {
      return FakeQuantVec<kMode, kPath, span_scale::div>(df, x, u, g, mul, div, div, false, zero, zero);
    });
  }
  return true;
#endif
}

// `counters` describe the transposed tensor [cols, rows] (fake_quantize_columns).
bool FakeQuantColumnTile(const float* in, float* out, size_t rows, size_t cols, size_t r0, size_t r1, size_t c0,
                         const row_plan& plan, const sr_counters& counters) {
  const grid_params& g = *plan.grid;
  return WithRounding(plan.f->rounding, [&](auto mode) {
    return WithSpanPath<mode()>(g, [&](auto path) {
      return FakeQuantColumnTilePath<mode(), path()>(in, out, rows, cols, r0, r1, c0, plan, g, counters);
    });
  });
}

size_t LanesF32() { return hn::Lanes(DF()); }

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(FakeQuantColumnTile);
HWY_EXPORT(LanesF32);

using detail::fast_call;
using detail::simd_covers;

namespace {

// dst [cols, rows] = src [rows, cols]^T, tiles of 32 x 32 (dst != src).
void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
  for (int64_t t = 0; t < row_tiles * col_tiles; ++t) {
    const int64_t r0 = t / col_tiles * kTile, c0 = t % col_tiles * kTile;
    for (int64_t c = c0; c < std::min(cols, c0 + kTile); ++c)
      for (int64_t r = r0; r < std::min(rows, r0 + kTile); ++r) dst[c * rows + r] = src[r * cols + c];
  }
}

}  // namespace

void fake_quantize_columns(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                           uint64_t tensor_id, sr_counters counters) {
  if (use_ref() || rows < 0 || cols < 0) return fake_quantize_columns_ref(in, out, rows, cols, f, tensor_id, counters);
  if (rows == 0 || cols == 0) return;
  // One scale for every element, no draws: the values do not depend on the layout.
  if ((f.gran == granularity::tensor || f.gran == granularity::none) && f.rounding != rounding_mode::sr)
    return fake_quantize(in, out, rows, cols, f, tensor_id);
  if (is_kquant(f)) {  // ggml's searches run along super-blocks of 256: on an explicit transpose
    std::vector<float> t(static_cast<size_t>(rows * cols));
    transpose(in, rows, cols, t.data());
    fake_quantize(t.data(), t.data(), cols, rows, f, tensor_id, counters);
    transpose(t.data(), cols, rows, out);
    return;
  }
  // The formats the SIMD path does not cover: the scalar per-value code, which is the reference.
  if (!simd_covers(f)) return fake_quantize_columns_ref(in, out, rows, cols, f, tensor_id, counters);
  // The transposed tensor [cols, rows]: rows of `rows` elements, groups of k along them.
  const fast_call call(f, in, cols, rows, false, tensor_id);
  const int64_t k = call.plan.group_cols;
  const int64_t lanes = static_cast<int64_t>(HWY_DYNAMIC_DISPATCH(LanesF32)());
  // Tiles: the scale rules the row kernel's batches compute N at a time (per group or per
  // column), no zero points. The rest (q4_0, /t and plain casts with stochastic rounding, ...)
  // runs the row kernel on each column's group, gathered.
  const bool tiles = (f.gran == granularity::group || f.gran == granularity::row) &&
                     (call.sctx.inline_rule != scale_context::inline_none || call.plan.batch_preset != 0) &&
                     !call.plan.want_minmax && lanes > 1;
  const int64_t col_blocks = (cols + lanes - 1) / lanes, row_groups = (rows + k - 1) / k;
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  {
    std::vector<float> column;  // one column's group, gathered (the general path)
#pragma omp for schedule(static)
    for (int64_t t = 0; t < col_blocks * row_groups; ++t) {
      const int64_t c0 = (t % col_blocks) * lanes, r0 = (t / col_blocks) * k;
      const int64_t c1 = std::min(cols, c0 + lanes), r1 = std::min(rows, r0 + k);
      if (tiles && c1 - c0 == lanes &&
          HWY_DYNAMIC_DISPATCH(FakeQuantColumnTile)(in, out, static_cast<size_t>(rows), static_cast<size_t>(cols),
                                                    static_cast<size_t>(r0), static_cast<size_t>(r1),
                                                    static_cast<size_t>(c0), call.plan, counters))
        continue;
      // The row kernel on each column's group, gathered: element (r, c) is element (c, r) of the
      // transposed tensor (its stochastic-rounding counter: counters.of(c, rows) + r).
      column.resize(static_cast<size_t>(r1 - r0));
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = r0; r < r1; ++r) column[static_cast<size_t>(r - r0)] = in[r * cols + c];
        detail::fake_quant_row(column.data(), column.data(), column.size(), call.plan,
                               counters.of(c, rows) + static_cast<uint64_t>(r0), nullptr, nullptr, nullptr);
        for (int64_t r = r0; r < r1; ++r) out[r * cols + c] = column[static_cast<size_t>(r - r0)];
      }
    }
  }
}

}  // namespace lowbit
#endif  // HWY_ONCE

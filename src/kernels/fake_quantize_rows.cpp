// The fast row kernel: fake_quantize (groups along a row), Highway SIMD with dynamic dispatch,
// OpenMP over rows. One row at a time: per group the statistics, the scale (N groups at once
// where the rule allows, scales_fast-inl.hpp), the elements (simd_round-inl.hpp). quantize
// (codes_fast.cpp) and the columns' general path (fake_quantize_columns.cpp) run the same kernel
// through detail::fake_quant_row. Must equal quantize_ref.cpp bit for bit on every input
// (tests/kernels/test_differential.cpp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/fake_quantize_rows.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/simd.hpp"
#include "lowbit/kernels/threads.hpp"
#include "src/kernels/fast_plan.hpp"
#include "src/kernels/scales_fast-inl.hpp"
#include "src/kernels/simd_common-inl.hpp"
#include "src/kernels/simd_round-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

HWY_INLINE VF UniformFromWords(DF df, const uint32_t* w, size_t i, size_t count) {
  const DU du;
  const auto words = LoadTail(du, w + i, count);
  const DI di;
  return hn::Mul(hn::ConvertTo(df, hn::BitCast(di, hn::ShiftRight<8>(words))), hn::Set(df, 0x1p-24f));
}

// The same uniform from the R bits k of ~sr8 / ~sr16 straight out of the Philox output (no word
// buffer): u = k 2^-R + 2^-(R+1) = (k + 1/2) 2^-R, both steps exact, which is UniformFromWords of
// the word (2k + 1) << (31 - R).
HWY_INLINE VF UniformFromRawBits(DF df, const uint8_t* raw, int bits, size_t i, size_t count) {
  const DU du;
  const DI di;
#if HWY_TARGET == HWY_SCALAR
  const size_t N = count;  // (one lane: never a partial vector)
#else
  const size_t N = hn::Lanes(du);
#endif
  hn::Vec<DU> k;
  if (bits == 8) {
    const hn::Rebind<uint8_t, DU> d8;
    k = hn::PromoteTo(du, count == N ? hn::LoadU(d8, raw + i) : LoadTail(d8, raw + i, count));
  } else {
    const hn::Rebind<uint16_t, DU> d16;
    const auto* halves = reinterpret_cast<const uint16_t*>(raw);
    k = hn::PromoteTo(du, count == N ? hn::LoadU(d16, halves + i) : LoadTail(d16, halves + i, count));
  }
  const float unit = bits == 8 ? 0x1p-8f : 0x1p-16f;
  return hn::MulAdd(hn::ConvertTo(df, hn::BitCast(di, k)), hn::Set(df, unit), hn::Set(df, 0.5f * unit));
}

// The uniforms of elements [draw0 + i, draw0 + i + count) of a job's draws.
HWY_INLINE VF UniformOf(DF df, const row_job& job, size_t draw0, size_t i, size_t count) {
  if (job.random_bytes) return UniformFromRawBits(df, job.random_bytes, job.random_bits, draw0 + i, count);
  return UniformFromWords(df, job.random + draw0, i, count);
}

// out[0..n) = fake-quantized in[0..n) under one scale (mul = 1/s, div = s, scale = what the
// rounded values are multiplied by: s, or 1 for quantize's unscaled values); sr: element i's draw
// is the job's draw draw0 + i.
template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void ApplyScaleT(const float* HWY_RESTRICT in, float* HWY_RESTRICT out, size_t n, VF mul, VF div,
                            VF scale, size_t draw0, const row_job& job, const grid_params& g) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const VF clamp_lo = hn::Set(df, job.clamp_lo), clamp_hi = hn::Set(df, job.clamp_hi);
  const bool uint_clamp = job.uint_clamp, stream = job.stream;
  const int64_t ahead = job.prefetch_ahead;
  VF u = hn::Zero(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    // While this span computes from cache, pull the next one (the next row for /c) from memory.
    if (ahead) hwy::Prefetch(in + i + ahead);
    if constexpr (kMode == rounding_mode::sr) u = UniformOf(df, job, draw0, i, N);
    const VF r = FakeQuantVec<kMode, kPath, kScale>(df, hn::LoadU(df, in + i), u, g, mul, div, scale, uint_clamp,
                                                    clamp_lo, clamp_hi);
    if (stream && (reinterpret_cast<uintptr_t>(out + i) & (N * sizeof(float) - 1)) == 0) hn::Stream(r, df, out + i);
    else hn::StoreU(r, df, out + i);
  }
  if (i < n) {
    if constexpr (kMode == rounding_mode::sr) u = UniformOf(df, job, draw0, i, n - i);
    const VF r = FakeQuantVec<kMode, kPath, kScale>(df, LoadTail(df, in + i, n - i), u, g, mul, div, scale,
                                                    uint_clamp, clamp_lo, clamp_hi);
    StoreTail(df, r, out + i, n - i);
  }
}

template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void FakeQuantSpanT(const float* in, float* out, size_t n, const row_job& job, const grid_params& g) {
  const DF df;
  ApplyScaleT<kMode, kPath, kScale>(in, out, n, hn::Set(df, job.multiplier), hn::Set(df, job.divisor),
                                    hn::Set(df, job.scale), 0, job, g);
}

template <rounding_mode kMode, span_path kPath>
HWY_INLINE void FakeQuantSpanScale(const float* in, float* out, size_t n, const row_job& job, const grid_params& g) {
  if (!job.scaled) FakeQuantSpanT<kMode, kPath, span_scale::none>(in, out, n, job, g);
  else if (job.use_multiplier) FakeQuantSpanT<kMode, kPath, span_scale::mul>(in, out, n, job, g);
  else FakeQuantSpanT<kMode, kPath, span_scale::div>(in, out, n, job, g);
}

// The elements of N consecutive groups of k under their batch scales (all multiply, or all
// divide).
template <rounding_mode kMode, span_path kPath, span_scale kScale>
HWY_INLINE void BatchApplyT(const float* in, float* out, size_t k, size_t groups, const float* batch_scale,
                            const float* batch_mult, const row_job& job, const grid_params& g, bool unscaled) {
  const DF df;
  for (size_t j = 0; j < groups; ++j) {
    const VF div = hn::Set(df, batch_scale[j]);
    ApplyScaleT<kMode, kPath, kScale>(in + j * k, out + j * k, k, hn::Set(df, batch_mult[j]), div,
                                      unscaled ? hn::Set(df, 1.0f) : div, j * k, job, g);
  }
}

// ggml's blocks of 32 without a rounding mode (quantize_ref.cpp's quantize_value has the rules):
//   q4_0, q5_0: y = x * id + (z + 0.5), value (q - z) * d           (quantize_row_q4_0_ref / _q5_0_ref)
//   q4_1, q5_1: y = (x - min) * id + 0.5, value q * d - offset       (_q4_1_ref / _q5_1_ref; offset = -m)
// q = clamp(trunc(y), 0, maxq); a NaN y (an Inf id) gives the value 0 (code z, or 0 with a min).
void FakeQuantGgmlBlock(const float* HWY_RESTRICT in, float* HWY_RESTRICT out, size_t n, const group_scale& gs,
                        bool with_min, float maxq) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const VF id = hn::Set(df, gs.multiplier), d = hn::Set(df, gs.scale), zero = hn::Zero(df), top = hn::Set(df, maxq);
  const VF lo = hn::Set(df, gs.min), z = hn::Set(df, static_cast<float>(gs.zero_point)), offset = hn::Set(df, gs.offset);
  const VF bias = hn::Set(df, static_cast<float>(gs.zero_point) + 0.5f);
  auto f = [&](VF x) {
    const VF v = with_min ? hn::Add(hn::Mul(hn::Sub(x, lo), id), hn::Set(df, 0.5f)) : hn::Add(hn::Mul(x, id), bias);
    VF q = hn::Min(hn::Max(hn::Trunc(v), zero), top);
    q = hn::IfThenElse(hn::Eq(v, v), q, with_min ? zero : z);
    return with_min ? hn::Sub(hn::Mul(d, q), offset) : hn::Mul(hn::Sub(q, z), d);
  };
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(f(hn::LoadU(df, in + i)), df, out + i);
  if (i < n) StoreTail(df, f(LoadTail(df, in + i, n - i)), out + i, n - i);
}

// The stochastic-rounding draws of a row's elements [c, c + n), made a chunk (>= 1024 elements)
// at a time into a thread-local buffer (element i of the tensor uses Philox block i/4, word i%4;
// under ~srR block i/(128/R), docs/conventions.md §43). ~sr8 and ~sr16 keep the Philox output
// itself (a quarter / half of the words' bytes; the element loop widens the bits), the others
// one word per element.
class RowDraws {
 public:
  RowDraws(const row_plan& plan, uint64_t index0, size_t cols)
      : plan_(plan), index0_(index0), cols_(cols),
        raw_(std::endian::native == std::endian::little && (plan.rng_bits == 8 || plan.rng_bits == 16)) {}
  // Points job's draws at those of [c, c + n).
  void at(size_t c, size_t n, row_job& job) {
    if (!(base_ && c >= begin_ && c + n <= end_)) fill(c, n);
    if (raw_) {
      job.random_bytes = raw_base_ + (c - begin_) * static_cast<size_t>(plan_.rng_bits / 8);
      job.random_bits = plan_.rng_bits;
    } else {
      job.random = base_ + (c - begin_);
    }
  }

 private:
  void fill(size_t c, size_t n) {
    thread_local std::vector<uint32_t> buf;
    begin_ = c;
    end_ = std::min(cols_, c + std::max<size_t>(n, 1024));
    if (raw_) {
      const uint64_t per_block = 128 / static_cast<uint64_t>(plan_.rng_bits);
      const uint64_t first = index0_ + begin_, b0 = first / per_block, b1 = (index0_ + end_ - 1) / per_block;
      buf.resize(4 * (b1 - b0 + 1));
      random_blocks(plan_.rng_seed, plan_.rng_tensor_id, b0, b1 - b0 + 1, buf.data());
      raw_base_ = reinterpret_cast<const uint8_t*>(buf.data()) + (first - b0 * per_block) * static_cast<uint64_t>(plan_.rng_bits / 8);
    } else {
      buf.resize(end_ - begin_);
      random_words(plan_.rng_seed, plan_.rng_tensor_id, index0_ + begin_, end_ - begin_, buf.data(), plan_.rng_bits);
    }
    base_ = buf.data();
  }

  const row_plan& plan_;
  uint64_t index0_;
  size_t cols_, begin_ = 0, end_ = 0;
  bool raw_;
  const uint32_t* base_ = nullptr;
  const uint8_t* raw_base_ = nullptr;
};

// One row: per group, the statistics (SIMD), the scale (inline for the common rules, else the
// scalar choose_scale), the elements. `scales`/`zero_points` receive each group's stored scale
// (quantize), or are nullptr. The grid constants are a local copy so that they stay in registers.
template <rounding_mode kMode, span_path kPath>
HWY_NOINLINE void FakeQuantRowPath(const float* HWY_RESTRICT x, float* HWY_RESTRICT y, size_t cols,
                                   const row_plan& plan, const grid_params g, uint64_t index0, float* scales,
                                   int32_t* zero_points, const int32_t* group_amax) {
  const format& f = *plan.f;
  const size_t k = static_cast<size_t>(plan.group_cols);
  const bool q8 = f.named == preset::q8_0;
  const bool ggml_block = has_fixed_zero_point(f) || has_block_min(f);  // q4_0, q5_0, q4_1, q5_1
  RowDraws draws(plan, index0, cols);
  // The stochastic draws of [c, c + n), made here just before they are used (sr only).
  auto draws_for = [&](size_t c, size_t n, row_job& job) {
    if constexpr (kMode == rounding_mode::sr) draws.at(c, n, job);
  };
  size_t c0 = 0, gi = 0;
#if HWY_TARGET != HWY_SCALAR
  if (plan.ggml_batch) {
    // ggml's blocks, N at a time: their scales in one vectorised computation, then each block.
    const size_t N = hn::Lanes(DF());
    group_scale batch[hn::MaxLanes(DF())];
    const bool with_min = has_block_min(f);
    const float maxq = static_cast<float>((1 << f.element.bits) - 1);
    for (; c0 + N * k <= cols; c0 += N * k, gi += N) {
      if (!BatchGgmlScales(DF(), x + c0, k, *plan.sctx, with_min, batch))  // this batch block by block
        for (size_t j = 0; j < N; ++j) batch[j] = GgmlBlockScale(x + c0 + j * k, k, *plan.sctx, with_min);
      for (size_t j = 0; j < N; ++j) {
        if (scales) scales[gi + j] = batch[j].nonfinite ? canonical_nan() : batch[j].stored;
        if (zero_points) zero_points[gi + j] = batch[j].zero_point;
        if (batch[j].nonfinite) std::fill(y + c0 + j * k, y + c0 + (j + 1) * k, canonical_nan());
        else FakeQuantGgmlBlock(x + c0 + j * k, y + c0 + j * k, k, batch[j], with_min, maxq);
      }
    }
  }
  if (plan.batch) {
    // N groups at a time: their statistics, one vectorised scale computation, then the elements.
    const DF df;
    const DI di;
    const size_t N = hn::Lanes(df);
    HWY_ALIGN float batch_scale[hn::MaxLanes(DF())];
    HWY_ALIGN float batch_stored[hn::MaxLanes(DF())];
    HWY_ALIGN float batch_mult[hn::MaxLanes(DF())];
    VI partial[hn::MaxLanes(DF())];
    row_job job = detail::make_job(f, g, group_scale{}, plan.unscaled);
    job.stream = plan.stream;
    // Stochastic rounding computes long enough per element that the hardware prefetcher keeps up:
    // its software prefetch cost more than it hid (e2m1/g32~sr8 at 64 MiB: 0.90 -> 0.80 ns/element).
    job.prefetch_ahead = plan.stream && kMode != rounding_mode::sr ? 1024 : 0;
    for (; c0 + N * k <= cols; c0 += N * k, gi += N) {
      const VI amax_bits = group_amax ? hn::LoadU(di, group_amax + gi) : BatchGroupAmax(di, x + c0, k, partial);
      if (plan.batch_preset == 0) {
        if (!BatchScales(df, amax_bits, *plan.sctx, batch_scale, batch_mult)) break;
        hn::Store(hn::Load(df, batch_scale), df, batch_stored);
      } else if (!BatchScalesPreset(df, amax_bits, plan, batch_scale, batch_stored, batch_mult)) {
        break;
      }
      if (scales)
        for (size_t j = 0; j < N; ++j) scales[gi + j] = batch_stored[j];
      // A batch multiplies (power-of-two scales, q8_0's 1/d) or divides as a whole.
      bool all_mul = true;
      for (size_t j = 0; j < N; ++j) all_mul &= batch_mult[j] != 0.0f;
      draws_for(c0, N * k, job);
      if (q8)
        BatchApplyT<rounding_mode::rna, span_path::int_fast, span_scale::mul>(x + c0, y + c0, k, N, batch_scale,
                                                                             batch_mult, job, g, plan.unscaled);
      else if (all_mul)
        BatchApplyT<kMode, kPath, span_scale::mul>(x + c0, y + c0, k, N, batch_scale, batch_mult, job, g, plan.unscaled);
      else
        BatchApplyT<kMode, kPath, span_scale::div>(x + c0, y + c0, k, N, batch_scale, batch_mult, job, g, plan.unscaled);
    }
  }
#endif
  for (; c0 < cols; c0 += k, ++gi) {
    const size_t n = std::min(k, cols - c0);
    group_scale gs;
    if (f.gran == granularity::tensor) {
      gs = plan.tensor_gs;
    } else if (ggml_block && GgmlBlockScaleFast(x + c0, n, *plan.sctx, has_block_min(f), &gs)) {
      if (scales) scales[gi] = gs.stored;
      if (zero_points) zero_points[gi] = gs.zero_point;
    } else if (f.gran != granularity::none) {
      simd_stats ss;
      GroupStatsT(x + c0, n, plan.want_minmax, false, &ss);
      const bool nonfinite = ss.amax_bits >= 0x7f800000u;
      const float amax = std::bit_cast<float>(ss.amax_bits);
      if (nonfinite || !fast_group_scale(*plan.sctx, amax, &gs)) {
        group_stats st;
        st.nonfinite = nonfinite;
        st.amax = amax;
        st.min = ss.min;
        st.max = ss.max;
        gs = choose_scale(*plan.sctx, st, x + c0, static_cast<int64_t>(n), plan.tensor_scale);
      }
      if (scales) scales[gi] = gs.nonfinite ? canonical_nan() : gs.stored;
      if (zero_points) zero_points[gi] = gs.zero_point;
    }
    if (gs.nonfinite) {
      std::fill(y + c0, y + c0 + n, canonical_nan());
      continue;
    }
    if (has_fixed_zero_point(f) || has_block_min(f)) {
      FakeQuantGgmlBlock(x + c0, y + c0, n, gs, has_block_min(f), static_cast<float>((1 << f.element.bits) - 1));
      continue;
    }
    if (HWY_UNLIKELY(q8 && std::isinf(gs.multiplier))) {  // subnormal d: the reference's clamps
      for (size_t c = c0; c < c0 + n; ++c) {
        const uint32_t code = quantize_value_ref(f, x[c], gs, 0.0f);
        y[c] = plan.unscaled ? decode_ref(f.element, code) : dequantize_value_ref(f, code, gs);
      }
      continue;
    }
    row_job job = detail::make_job(f, g, gs, plan.unscaled);
    draws_for(c0, n, job);
    job.stream = plan.stream;
    // Row-sized groups (/c, /t) prefetch the same columns of the next row to be visited.
    const int64_t next_row = plan.rows_backward ? -static_cast<int64_t>(k) : static_cast<int64_t>(k);
    job.prefetch_ahead = plan.stream ? (k >= 1024 ? next_row : 1024) : 0;
    if (q8) FakeQuantSpanScale<rounding_mode::rna, span_path::int_fast>(x + c0, y + c0, n, job, g);  // ggml's roundf
    else FakeQuantSpanScale<kMode, kPath>(x + c0, y + c0, n, job, g);
  }
}

void FakeQuantRow(const float* x, float* y, size_t cols, const row_plan& plan, uint64_t index0,
                  float* scales, int32_t* zero_points, const int32_t* group_amax) {
  struct flush_at_exit {  // non-temporal stores must be fenced before others read the output
    bool on;
    ~flush_at_exit() {
      if (on) hwy::FlushStream();
    }
  } flush{plan.stream};
  const grid_params& g = *plan.grid;
  WithRounding(plan.f->rounding, [&](auto mode) {
    WithSpanPath<mode()>(g, [&](auto path) {
      FakeQuantRowPath<mode(), path()>(x, y, cols, plan, g, index0, scales, zero_points, group_amax);
    });
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(FakeQuantRow);

namespace detail {

void fake_quant_row(const float* x, float* y, size_t cols, const row_plan& plan, uint64_t index0, float* scales,
                    int32_t* zero_points, const int32_t* group_amax) {
  HWY_DYNAMIC_DISPATCH(FakeQuantRow)(x, y, cols, plan, index0, scales, zero_points, group_amax);
}

}  // namespace detail

namespace {

using detail::fast_call;
using detail::simd_covers;

// Below kParallelMinElements (threads.hpp) a kernel runs on the calling thread: waking a team
// costs more than the work (and on a loaded machine a spinning team can cost a scheduler slice
// per call).

// fn(r0, r1) on blocks of consecutive rows of a [rows, cols] tensor, one block per thread (the
// calling thread alone below kParallelMinElements): the row kernels that run scalar code.
template <class Fn>
void for_row_blocks(int64_t rows, int64_t cols, Fn&& fn) {
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per = (rows + nt - 1) / nt, r0 = std::min(rows, t * per), r1 = std::min(rows, r0 + per);
    if (r1 > r0) fn(r0, r1);
  }
}

}  // namespace

void fake_quantize(const float* in, float* out, int64_t rows, int64_t cols, const format& f, uint64_t tensor_id,
                   sr_counters counters) {
  if (use_ref() || rows < 0 || cols < 0) return fake_quantize_ref(in, out, rows, cols, f, tensor_id, counters);
  const serial_scope team(rows * cols < kParallelMinElements);  // the team the load leaves room for
  if (is_kquant(f))  // ggml's super-block searches (scalar, kquant.cpp), straight to values
    return for_row_blocks(rows, cols, [&](int64_t r0, int64_t r1) { kquant_fake_quantize_rows(f, in, out, cols, r0, r1); });
  if (!simd_covers(f)) {
    // Explicit scalar fallback (power maps, LUT with directed/stochastic rounding, mse/percentile
    // rules): the reference, a block of rows per thread. Scales over the whole tensor would be
    // read while other threads write in place: those run the reference on one thread.
    if (f.gran == granularity::tensor || f.named == preset::nvfp4) return fake_quantize_ref(in, out, rows, cols, f, tensor_id, counters);
    return for_row_blocks(rows, cols, [&](int64_t r0, int64_t r1) {
      fake_quantize_rows_ref(in, out, rows, cols, r0, r1, f, tensor_id, counters);
    });
  }
  fast_call call(f, in, rows, cols, false, tensor_id, /*keep_group_amax=*/true);
  // Outputs larger than the caches go around them (no read-for-ownership of the destination).
  constexpr int64_t kStreamBytes = int64_t{8} << 20;
  call.plan.stream = in != out && rows * cols * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  // A first pass over the tensor (/t, nvfp4) read it front to back, each thread its own block of
  // rows; the second goes back to front over the same blocks, so that it starts on the rows the
  // caches still hold and a tensor larger than the caches is read from memory once plus the part
  // the caches could not keep, instead of twice.
  const bool backward = detail::has_first_pass(f);
  call.plan.rows_backward = backward;
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  detail::for_rows_in_team(rows, backward, omp_get_thread_num(), omp_get_num_threads(), [&](int64_t r) {
    // In place is safe: each group's statistics are taken before its outputs are written.
    const float* x = in + r * cols;
    HWY_DYNAMIC_DISPATCH(FakeQuantRow)(x, out + r * cols, static_cast<size_t>(cols), call.plan,
                                       counters.of(r, cols), nullptr, nullptr, call.group_amax_of(r));
  });
}

}  // namespace lowbit
#endif  // HWY_ONCE

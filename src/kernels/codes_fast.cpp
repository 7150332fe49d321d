// Fast quantize to codes and dequantize: codes come from the row kernel with the scale left out
// (values on the element grid, detail::fake_quant_row) encoded a vector at a time (EncodeSpan,
// the bit-level inverse of decode); dequantize is a decode-table gather times the scale
// (DequantSpan). Must equal quantize_ref / dequantize_ref bit for bit
// (tests/kernels/test_differential.cpp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/codes_fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"
#include "lowbit/kernels/threads.hpp"
#include "src/kernels/fast_plan.hpp"
#include "src/kernels/scales_fast-inl.hpp"
#include "src/kernels/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace lowbit {
namespace HWY_NAMESPACE {

// Dequantize a span of unpacked codes under one scale: value = table[code] * s, or for
// asymmetric formats (code - z) * s, then minus `offset` where one is given (q4_1/q5_1: q * d -
// (-m)); a plain cast (scaled = false) is table[code] alone. The reference's float operations, a
// gather per vector.
void DequantSpan(const uint32_t* HWY_RESTRICT codes, const float* HWY_RESTRICT table, size_t n, float s, float z,
                 bool asym, bool scaled, bool subtract_offset, float offset, float* HWY_RESTRICT out) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VF sv = hn::Set(df, s), zv = hn::Set(df, z), ov = hn::Set(df, offset);
  auto value = [&](VI c) {
    VF v = asym ? hn::Sub(hn::ConvertTo(df, c), zv) : hn::GatherIndex(df, table, c);
    v = scaled ? hn::Mul(v, sv) : v;
    return subtract_offset ? hn::Sub(v, ov) : v;
  };
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(value(hn::BitCast(di, hn::LoadU(DU(), codes + i))), df, out + i);
  if (i < n) StoreTail(df, value(hn::BitCast(di, LoadTail(DU(), codes + i, n - i))), out + i, n - i);
}

// Codes of values already on a minifloat or integer grid (quantize's unscaled output): the
// bit-level inverse of decode, branch-free. Returns false if a value is NaN or Inf (the caller
// then encodes that span with the scalar encoder).
bool EncodeSpan(const float* HWY_RESTRICT vals, size_t n, const grid_params& g, int32_t zero_point,
                uint32_t* HWY_RESTRICT codes) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const int mbits = g.mbits;
  const VI abs_mask = hn::Set(di, 0x7fffffff), one = hn::Set(di, 1), zero = hn::Zero(di);
  auto code_of = [&](VF v, bool* special) -> VI {
    const VI bits = hn::BitCast(di, v);
    const VI a = hn::And(bits, abs_mask);
    if (!hn::AllFalse(di, hn::Gt(a, hn::Set(di, 0x7f7fffff)))) *special = true;
    if (g.kind == 2) {  // a table value's index: how many entries lie below it
      VI idx = zero;
      for (int t = 0; t + 1 < g.lut_n; ++t)
        idx = hn::Add(idx, hn::IfThenElseZero(hn::RebindMask(di, hn::Gt(v, hn::Set(df, g.lut_values[t]))), one));
      return idx;
    }
    if (g.kind == 1) {  // integers: code = v * 2^frac (two's complement, masked), or v + z (uint)
      const VI q = hn::ConvertTo(di, g.frac_scale != 1.0f ? hn::Mul(v, hn::Set(df, g.frac_scale)) : v);
      return zero_point ? hn::Add(q, hn::Set(di, zero_point)) : q;
    }
    const VI ef = hn::ShiftRight<23>(a);
    const VI p = hn::Sub(ef, hn::Set(di, 127));
    const VI normal = hn::Or(hn::ShiftLeftSame(hn::Add(p, hn::Set(di, g.bias)), mbits),
                             hn::ShiftRightSame(hn::And(a, hn::Set(di, 0x7fffff)), 23 - mbits));
    VI sub;
    if (g.subnormals) {
      // A subnormal element value m * 2^(emin - M): m from the float's significand by a shift.
      const VI mi = hn::Or(hn::And(a, hn::Set(di, 0x7fffff)), hn::IfThenElseZero(hn::Gt(ef, zero), hn::Set(di, 0x800000)));
      const VI sh = hn::Add(hn::Max(ef, one), hn::Set(di, -150 - g.emin + mbits));
      sub = hn::IfThenElse(hn::Lt(sh, zero), hn::BitCast(di, hn::BitCast(DU(), mi) >> hn::BitCast(DU(), hn::Neg(sh))),
                           mi << hn::Max(sh, zero));
    } else {
      sub = hn::Set(di, 1 << mbits);
    }
    const auto is_normal = hn::And(hn::Gt(ef, zero), hn::Not(hn::Lt(p, hn::Set(di, g.emin))));
    VI mag = hn::IfThenElse(is_normal, normal, sub);
    mag = hn::IfThenZeroElse(hn::Eq(a, zero), mag);
    const VI sign = hn::IfThenElseZero(hn::Lt(bits, zero), hn::Set(di, static_cast<int32_t>(g.sign_bit)));
    return hn::Or(mag, sign);
  };
  bool special = false;
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::BitCast(DU(), code_of(hn::LoadU(df, vals + i), &special)), DU(), codes + i);
  if (i < n) StoreTail(DU(), hn::BitCast(DU(), code_of(LoadTail(df, vals + i, n - i), &special)), codes + i, n - i);
  return !special;
}

// ggml's q4_0/q5_0/q4_1/q5_1 to codes, one row: per block of k the scale (GgmlBlockScaleFast, or
// choose_scale's scan where it declines), then quantize_ref's quantize_value a vector at a time:
// q = clamp(trunc(x * id + (z + 1/2)), 0, 2^bits - 1), or trunc((x - min) * id + 1/2) with a
// min; a NaN gives z (0 with a min). gss receives each block's scale.
void QuantizeGgmlRow(const float* HWY_RESTRICT x, size_t cols, size_t k, const scale_context& ctx,
                     group_scale* HWY_RESTRICT gss, uint32_t* HWY_RESTRICT codes) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const bool with_min = has_block_min(*ctx.f);
  const VF top = hn::Set(df, static_cast<float>((1 << ctx.f->element.bits) - 1)), zero = hn::Zero(df);
  size_t c0 = 0, g = 0;
#if HWY_TARGET != HWY_SCALAR
  // N blocks' scales at a time where BatchGgmlScales takes them; the blocks of a batch it
  // declines take the per-block path.
  size_t batch_end = 0;  // blocks [batch_end - N, batch_end) were tried as a batch
  bool batched = false;
#endif
  for (; c0 < cols; c0 += k, ++g) {
    const size_t n = std::min(k, cols - c0);
    const float* xg = x + c0;
    group_scale gs;
#if HWY_TARGET != HWY_SCALAR
    if (g >= batch_end && c0 + N * k <= cols) {
      batched = BatchGgmlScales(df, xg, k, ctx, with_min, gss + g);
      batch_end = g + N;
    }
    if (batched && g < batch_end) {
      gs = gss[g];
    } else
#endif
    {
      gs = GgmlBlockScale(xg, n, ctx, with_min);
    }
    gss[g] = gs;
    const VF id = hn::Set(df, gs.multiplier), lo = hn::Set(df, gs.min);
    const VF bias = hn::Set(df, with_min ? 0.5f : static_cast<float>(gs.zero_point) + 0.5f);
    const VF nan_code = hn::Set(df, with_min ? 0.0f : static_cast<float>(gs.zero_point));
    auto code = [&](VF v) {
      const VF y = with_min ? hn::Add(hn::Mul(hn::Sub(v, lo), id), bias) : hn::Add(hn::Mul(v, id), bias);
      const VF q = hn::IfThenElse(hn::Eq(y, y), hn::Min(hn::Max(hn::Trunc(y), zero), top), nan_code);
      return hn::BitCast(DU(), hn::ConvertTo(di, q));
    };
    size_t i = 0;
    for (; i + N <= n; i += N) hn::StoreU(code(hn::LoadU(df, xg + i)), DU(), codes + c0 + i);
    if (i < n) StoreTail(DU(), code(LoadTail(df, xg + i, n - i)), codes + c0 + i, n - i);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(DequantSpan);
HWY_EXPORT(EncodeSpan);
HWY_EXPORT(QuantizeGgmlRow);

using detail::fast_call;
using detail::simd_covers;

namespace {

// The code of a value already on the element grid, for the spans EncodeSpan leaves (NaN/Inf):
// the exact codec, which gives a grid value its own code; uint adds its zero point.
uint32_t code_of_grid_value(const format& f, float v, int32_t zero_point) {
  if (f.element.kind == element_kind::uint_asym && !std::isnan(v))
    return static_cast<uint32_t>(v + static_cast<float>(f.gran == granularity::none ? 0 : zero_point));
  return encode_ref(f.element, v, rounding_mode::rne);
}

}  // namespace

quantized_tensor quantize(const float* x, int64_t rows, int64_t cols, const format& f, uint64_t tensor_id) {
  const serial_scope team(rows * cols < kParallelMinElements);  // the team the load leaves room for
  // Codes come from the same row kernel as fake_quantize with the scale left out (values on the
  // element grid); the cases the SIMD path does not cover use the reference; ggml's
  // q4_0/q5_0/q4_1/q5_1 (their truncating arithmetic is not a rounding of x / s) their own row.
  if (use_ref() || (!is_kquant(f) && !simd_covers(f)) || rows < 0 || cols < 0) return quantize_ref(x, rows, cols, f, tensor_id);
  quantized_tensor q = quantized_tensor::allocate(f, rows, cols);
  if (has_fixed_zero_point(f) || has_block_min(f)) {  // ggml's truncating blocks: QuantizeGgmlRow
    const scale_context ctx = make_scale_context(f, /*reference=*/false);
    const int64_t gpr = groups_per_row(f, cols);
#pragma omp parallel if (rows * cols >= kParallelMinElements)
    {
      std::vector<uint32_t> row_codes(static_cast<size_t>(cols));
      std::vector<group_scale> gss(static_cast<size_t>(gpr));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        HWY_DYNAMIC_DISPATCH(QuantizeGgmlRow)(x + r * cols, static_cast<size_t>(cols), static_cast<size_t>(f.group_size),
                                              ctx, gss.data(), row_codes.data());
        for (int64_t g = 0; g < gpr; ++g) store_group_scale(q, r * gpr + g, gss[static_cast<size_t>(g)]);
        pack_codes(row_codes.data(), cols, f.element.bits, q.codes.data() + r * q.row_bytes);
      }
    }
    return q;
  }
  if (is_kquant(f)) {  // rows in parallel; each row's codes and scales are its own bytes
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinElements)
    for (int64_t r = 0; r < rows; ++r) kquant_quantize_rows(x, r, r + 1, q);
    return q;
  }
  const fast_call call(f, x, rows, cols, true, tensor_id, /*keep_group_amax=*/true);
  q.tensor_scale = call.plan.tensor_scale;
  const int64_t gpr = groups_per_row(f, cols);
  const bool asym = f.element.kind == element_kind::uint_asym;
  if (f.gran == granularity::tensor) {
    q.scales[0] = call.plan.tensor_gs.nonfinite ? canonical_nan() : call.plan.tensor_gs.stored;
    if (asym) q.zero_points[0] = call.plan.tensor_gs.zero_point;
  }
  const int64_t k = call.plan.group_cols;
  // SIMD encoding for codes of at most 31 bits; spans with NaN/Inf take the exact codec.
  const bool simd_encode = f.element.bits < 32;
  const uint32_t code_mask = f.element.bits >= 32 ? 0xffffffffu : (1u << f.element.bits) - 1u;
  std::atomic<bool> unstorable_nan{false};
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  {
    std::vector<uint32_t> row_codes(static_cast<size_t>(cols));
    std::vector<float> vals(static_cast<size_t>(cols));
    // The second pass of /t and nvfp4 walks each thread's rows back to front (fake_quantize_rows.cpp).
    detail::for_rows_in_team(rows, detail::has_first_pass(f), omp_get_thread_num(), omp_get_num_threads(), [&](int64_t r) {
      const float* xr = x + r * cols;
      std::fill(row_codes.begin(), row_codes.end(), 0u);  // NaN-scale groups keep code 0
      const bool grouped = f.gran == granularity::group || f.gran == granularity::row;
      float* sc = grouped ? q.scales.data() + r * gpr : nullptr;
      int32_t* zp = grouped && asym ? q.zero_points.data() + r * gpr : nullptr;
      detail::fake_quant_row(xr, vals.data(), static_cast<size_t>(cols), call.plan, static_cast<uint64_t>(r * cols), sc,
                             zp, call.group_amax_of(r));
      for (int64_t c0 = 0, g = 0; c0 < cols; c0 += k, ++g) {
        const int64_t c1 = std::min(cols, c0 + k);
        const float s = f.gran == granularity::none ? 1.0f : (grouped ? sc[g] : q.scales[0]);
        if (std::isnan(s)) continue;  // the NaN scale carries the group; codes stay 0
        const int32_t z = !asym || f.gran == granularity::none ? 0 : (grouped ? zp[g] : q.zero_points[0]);
        if (simd_encode && HWY_DYNAMIC_DISPATCH(EncodeSpan)(vals.data() + c0, static_cast<size_t>(c1 - c0), call.grid,
                                                           z, row_codes.data() + c0)) {
          if (f.element.kind == element_kind::int_sym)  // two's complement in `bits` bits
            for (int64_t c = c0; c < c1; ++c) row_codes[static_cast<size_t>(c)] &= code_mask;
          continue;
        }
        for (int64_t c = c0; c < c1; ++c) {
          const uint32_t code = code_of_grid_value(f, vals[static_cast<size_t>(c)], z);
          if (code == kNoCode && f.element.bits < 32) unstorable_nan.store(true);
          row_codes[static_cast<size_t>(c)] = code;
        }
      }
      pack_codes(row_codes.data(), cols, f.element.bits, q.codes.data() + r * q.row_bytes);
    });
  }
  if (unstorable_nan.load()) return quantize_ref(x, rows, cols, f, tensor_id);  // throws the reference's message
  return q;
}

void dequantize(const quantized_tensor& q, float* out) {
  const serial_scope team(q.rows * q.cols < kParallelMinElements);
  if (use_ref() || q.fmt.power != 0 || q.fmt.element.bits > 16) return dequantize_ref(q, out);
  if (is_kquant(q.fmt)) {
#pragma omp parallel for schedule(static) if (q.rows * q.cols >= kParallelMinElements)
    for (int64_t r = 0; r < q.rows; ++r) kquant_dequantize_rows(q, r, r + 1, out);
    return;
  }
  const format& f = q.fmt;
  // Decode table of every code, then one multiply per value (the reference's float operations).
  std::vector<float> table(static_cast<size_t>(code_count(f.element)));
  for (size_t c = 0; c < table.size(); ++c) table[c] = decode_ref(f.element, static_cast<uint32_t>(c));
  const bool asym = f.element.kind == element_kind::uint_asym || has_fixed_zero_point(f);
  const bool block_min = has_block_min(f);
  const int64_t k = f.gran == granularity::group ? f.group_size : std::max<int64_t>(q.cols, 1);
#pragma omp parallel if (q.rows * q.cols >= kParallelMinElements)
  {
  std::vector<uint32_t> codes(static_cast<size_t>(q.cols));
#pragma omp for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) {
    float* y = out + r * q.cols;
    unpack_codes(q.codes.data() + r * q.row_bytes, q.cols, f.element.bits, codes.data());
    for (int64_t c0 = 0; c0 < q.cols; c0 += k) {
      const int64_t c1 = std::min(q.cols, c0 + k);
      const size_t n = static_cast<size_t>(c1 - c0);
      const uint32_t* cc = codes.data() + c0;
      if (f.gran == granularity::none) {
        HWY_DYNAMIC_DISPATCH(DequantSpan)(cc, table.data(), n, 1.0f, 0.0f, false, false, false, 0.0f, y + c0);
        continue;
      }
      const float stored = q.scale_at(r, c0);
      if (std::isnan(stored)) {
        std::fill(y + c0, y + c1, canonical_nan());
        continue;
      }
      const float s = f.named == preset::nvfp4 ? q.tensor_scale * stored : stored;
      const float z = asym ? static_cast<float>(q.zero_point_at(r, c0)) : 0.0f;
      const float offset = block_min ? stored_group_scale(q, r, c0).offset : 0.0f;
      HWY_DYNAMIC_DISPATCH(DequantSpan)(cc, table.data(), n, s, z, asym, true, block_min, offset, y + c0);
    }
  }
  }
}

}  // namespace lowbit
#endif  // HWY_ONCE

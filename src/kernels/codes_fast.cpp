// Fast quantize to codes and dequantize: codes come from the row kernel with the scale left out
// (values on the element grid, detail::fake_quant_row) encoded a vector at a time (EncodeSpan,
// the bit-level inverse of decode); dequantize is a decode-table gather times the scale
// (DequantSpan). Must equal quantize_ref / dequantize_ref bit for bit
// (tests/kernels/test_differential.cpp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/kernels/codes_fast.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
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

// Dequantize a span of unpacked codes under one scale: value = table[code] * s, or for
// asymmetric formats (code - z) * s, then minus `offset` where one is given (q4_1/q5_1: q * d -
// (-m)); a plain cast (scaled = false) is table[code] alone. The reference's float operations, a
// gather per vector.
// A table of at most N entries (padded to N: table_n <= N) is one vector, looked up with a lane
// permute instead of a gather; symmetric integers (int_shift = 32 - bits > 0) need no table: the
// code sign-extended, converted (exact) and times int_unit = 2^-frac, decode_ref's value.
void DequantSpan(const uint32_t* HWY_RESTRICT codes, const float* HWY_RESTRICT table, size_t table_n, int int_shift,
                 float int_unit, size_t n, float s, float z, bool asym, bool scaled, bool subtract_offset, float offset,
                 float* HWY_RESTRICT out) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VF sv = hn::Set(df, s), zv = hn::Set(df, z), ov = hn::Set(df, offset), unit = hn::Set(df, int_unit);
  const bool in_vector = table_n <= N;
  const VF table_v = in_vector ? hn::LoadU(df, table) : hn::Zero(df);
  auto value = [&](VI c) {
    VF v = asym        ? hn::Sub(hn::ConvertTo(df, c), zv)
           : int_shift ? hn::Mul(hn::ConvertTo(df, hn::ShiftRightSame(hn::ShiftLeftSame(c, int_shift), int_shift)), unit)
           : in_vector ? hn::TableLookupLanes(table_v, hn::IndicesFromVec(df, c))
                       : hn::GatherIndex(df, table, c);
    v = scaled ? hn::Mul(v, sv) : v;
    return subtract_offset ? hn::Sub(v, ov) : v;
  };
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(value(hn::BitCast(di, hn::LoadU(DU(), codes + i))), df, out + i);
  if (i < n) StoreTail(df, value(hn::BitCast(di, LoadTail(DU(), codes + i, n - i))), out + i, n - i);
}

// n codes of `bits` bits from a row's bytes (the layout of quantized_tensor::codes): 8 bits a
// vector at a time, 4 bits a byte (two codes) at a time, other widths through unpack_codes.
void UnpackCodes(const uint8_t* HWY_RESTRICT src, size_t n, int bits, uint32_t* HWY_RESTRICT codes) {
  if (bits == 8) {
    const DU du;
    const hn::Rebind<uint8_t, DU> d8;
    const size_t N = hn::Lanes(du);
    size_t i = 0;
    for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(du, hn::LoadU(d8, src + i)), du, codes + i);
    for (; i < n; ++i) codes[i] = src[i];
  } else if (bits == 4) {
    for (size_t b = 0; b < n / 2; ++b) {
      codes[2 * b] = src[b] & 0xfu;
      codes[2 * b + 1] = static_cast<uint32_t>(src[b] >> 4);
    }
    if (n & 1) codes[n - 1] = src[n / 2] & 0xfu;
  } else {
    unpack_codes(src, static_cast<int64_t>(n), bits, codes);
  }
}

// One row of dequantize from its unpacked codes, group by group (k columns each): a NaN stored
// scale makes the group NaN; else DequantSpan with the group's scale (nvfp4: tensor_scale times
// the stored block scale), zero point and min. scales / zero_points / mins point at the row's
// first group's entries (nullptr where the format has none); per_group = false: entry 0 serves
// the whole row (/t).
void DequantRow(const uint32_t* HWY_RESTRICT codes, size_t cols, size_t k, const float* HWY_RESTRICT table, size_t table_n,
                int int_shift, float int_unit,
                const float* scales, bool per_group, bool nvfp4, float tensor_scale, const int32_t* zero_points,
                bool asym, const float* mins, float* HWY_RESTRICT out) {
  for (size_t c0 = 0, g = 0; c0 < cols; c0 += k, ++g) {
    const size_t n = std::min(k, cols - c0), gi = per_group ? g : 0;
    if (!scales) {  // a plain cast
      DequantSpan(codes + c0, table, table_n, int_shift, int_unit, n, 1.0f, 0.0f, false, false, false, 0.0f, out + c0);
      continue;
    }
    const float stored = scales[gi];
    if (std::isnan(stored)) {
      std::fill(out + c0, out + c0 + n, canonical_nan());
      continue;
    }
    const float s = nvfp4 ? tensor_scale * stored : stored;
    const float z = asym && zero_points ? static_cast<float>(zero_points[gi]) : 0.0f;
    DequantSpan(codes + c0, table, table_n, int_shift, int_unit, n, s, z, asym, true, mins != nullptr, mins ? -mins[gi] : 0.0f, out + c0);
  }
}

#if HWY_TARGET != HWY_SCALAR
// Highway 1.0.3 narrows 32-bit lanes with permutes on AVX-512; VPMOVDB / VPMOVDW / VPMOVWB do it
// in one instruction each.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define LOWBIT_CODES_AVX512_NARROW 1
#endif

// The low byte of each lane, stored (N bytes).
HWY_INLINE void StoreLowBytes(hn::Vec<DU> v, uint8_t* HWY_RESTRICT dst) {
#ifdef LOWBIT_CODES_AVX512_NARROW
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(v.raw));
#else
  const hn::Rebind<uint8_t, DU> d8;
  hn::StoreU(hn::TruncateTo(d8, v), d8, dst);
#endif
}

// The low 16 bits of each lane, stored little-endian (2N bytes).
HWY_INLINE void StoreLowHalves(hn::Vec<DU> v, uint8_t* HWY_RESTRICT dst) {
#ifdef LOWBIT_CODES_AVX512_NARROW
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(v.raw));
#else
  const hn::Rebind<uint16_t, DU> d16;
  hn::StoreU(hn::TruncateTo(d16, v), d16, reinterpret_cast<uint16_t*>(dst));
#endif
}

// 2N codes below 16 (a: the first N, b: the next N) as the N bytes c0 | c1 << 4, c2 | c3 << 4, ...
HWY_INLINE void StoreNibblePairs(hn::Vec<DU> a, hn::Vec<DU> b, uint8_t* HWY_RESTRICT dst) {
#ifdef LOWBIT_CODES_AVX512_NARROW
  // The 2N codes as bytes; each 16-bit pair (c0, c1) becomes c0 | c1 << 4 in its low byte.
  const __m256i bytes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(a.raw)),
                                                _mm512_cvtepi32_epi8(b.raw), 1);
  const __m256i pairs = _mm256_or_si256(bytes, _mm256_srli_epi16(bytes, 4));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_cvtepi16_epi8(pairs));
#else
  const DU du;
  const hn::Rebind<uint8_t, DU> d8;
  const auto even = hn::ConcatEven(du, b, a), odd = hn::ConcatOdd(du, b, a);
  hn::StoreU(hn::TruncateTo(d8, hn::Or(even, hn::ShiftLeft<4>(odd))), d8, dst);
#endif
}
#endif

// n codes (each below 2^bits) into the packed layout of quantized_tensor::codes at dst (byte
// aligned): 8 and 16 bits by truncating each lane, 4 bits by merging the two codes of each 64-bit
// lane into its low byte (c0 | c1 << 4) first; other widths, and what is left after the whole
// vectors, through pack_codes.
void PackCodes(const uint32_t* HWY_RESTRICT codes, size_t n, int bits, uint8_t* HWY_RESTRICT dst) {
  size_t i = 0;
#if HWY_TARGET != HWY_SCALAR
  const DU du;
  const size_t N = hn::Lanes(du);
  if (bits == 8) {
    for (; i + N <= n; i += N) StoreLowBytes(hn::LoadU(du, codes + i), dst + i);
  } else if (bits == 16) {
    for (; i + N <= n; i += N) StoreLowHalves(hn::LoadU(du, codes + i), dst + 2 * i);
  } else if (bits == 4) {
    for (; i + 2 * N <= n; i += 2 * N) StoreNibblePairs(hn::LoadU(du, codes + i), hn::LoadU(du, codes + i + N), dst + i / 2);
  }
#endif
  if (i < n) pack_codes(codes + i, static_cast<int64_t>(n - i), bits, dst + i * static_cast<size_t>(bits) / 8);
}

// The code of a vector of values already on a minifloat (kKind 0, or 3: a shortcut for most), integer (1) or table (2) grid
// (quantize's unscaled output): the bit-level inverse of decode, branch-free. Lanes holding NaN
// or Inf give no valid code (the callers check the magnitudes and take the exact codec there).
template <int kKind>
HWY_INLINE VI GridCode(VF v, const grid_params& g, int32_t zero_point, VF sub_unit) {
  const DF df;
  const DI di;
  const VI bits = hn::BitCast(di, v);
  const VI one = hn::Set(di, 1), zero = hn::Zero(di);
  if constexpr (kKind == 2) {  // a table value's index: how many entries lie below it
    VI idx = zero;
    for (int t = 0; t + 1 < g.lut_n; ++t)
      idx = hn::Add(idx, hn::IfThenElseZero(hn::RebindMask(di, hn::Gt(v, hn::Set(df, g.lut_values[static_cast<size_t>(t)]))), one));
    return idx;
  } else if constexpr (kKind == 1) {  // integers: code = v * 2^frac (two's complement, masked), or v + z (uint)
    const VI q = hn::ConvertTo(di, g.frac_scale != 1.0f ? hn::Mul(v, hn::Set(df, g.frac_scale)) : v);
    return zero_point ? hn::Add(q, hn::Set(di, zero_point)) : q;
  } else if constexpr (kKind == 3) {
    // Minifloats whose grid lies in float32's normal range with 2^(M - emin) a float32 (most of
    // them; MinifloatDirect): a normal value's code magnitude is its pattern shifted down to M
    // mantissa bits minus the bias difference, ((E - 127 + bias) << M) | (m >> (23 - M)); a
    // subnormal one k 2^(emin - M) is k = |v| 2^(M - emin), exact.
    const VI a = hn::And(bits, hn::Set(di, 0x7fffffff));
    const VI normal = hn::Sub(hn::ShiftRightSame(a, 23 - g.mbits), hn::Set(di, (127 - g.bias) << g.mbits));
    const VI sub = g.subnormals ? hn::ConvertTo(di, hn::Mul(hn::BitCast(df, a), sub_unit))
                                : hn::IfThenZeroElse(hn::Eq(a, zero), hn::Set(di, 1 << g.mbits));
    const VI mag = hn::IfThenElse(hn::Lt(a, hn::Set(di, (g.emin + 127) << 23)), sub, normal);
    return hn::Or(mag, hn::IfThenElseZero(hn::Lt(bits, zero), hn::Set(di, static_cast<int32_t>(g.sign_bit))));
  } else {
    const int mbits = g.mbits;
    const VI a = hn::And(bits, hn::Set(di, 0x7fffffff));
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
  }
}

// Whether GridCode<3> serves a minifloat grid: its smallest normal 2^emin a float32 normal, and
// 2^(M - emin) (a subnormal's code per unit) a float32.
HWY_INLINE bool MinifloatDirect(const grid_params& g) {
  return g.kind == 0 && g.emin >= -126 && g.mbits - g.emin <= 127 && g.mbits <= 23;
}

// GridCode<3>'s 2^(M - emin).
HWY_INLINE VF SubnormalUnit(const grid_params& g) {
  return hn::Set(DF(), MinifloatDirect(g) ? std::ldexp(1.0f, g.mbits - g.emin) : 0.0f);
}

// fn(kind), kind a std::integral_constant: g.kind, or 3 for MinifloatDirect grids.
template <class Fn>
HWY_INLINE decltype(auto) WithGridKind(const grid_params& g, Fn&& fn) {
  if (g.kind == 1) return fn(std::integral_constant<int, 1>{});
  if (g.kind == 2) return fn(std::integral_constant<int, 2>{});
  if (MinifloatDirect(g)) return fn(std::integral_constant<int, 3>{});
  return fn(std::integral_constant<int, 0>{});
}

// Codes of values already on the element grid, masked to code_mask (two's complement integers
// keep their low `bits` bits). Returns false if a value is NaN or Inf (the caller then encodes
// that span with the scalar encoder).
bool EncodeSpan(const float* HWY_RESTRICT vals, size_t n, const grid_params& grid, int32_t zero_point, uint32_t code_mask,
                uint32_t* HWY_RESTRICT codes) {
  const grid_params g = grid;  // a local copy: its constants stay in registers
  const VF sub_unit = SubnormalUnit(g);
  return WithGridKind(g, [&](auto kind) {
    const DF df;
    const DI di;
    const DU du;
    const size_t N = hn::Lanes(df);
    const auto mask = hn::Set(du, code_mask);
    const VI abs_mask = hn::Set(di, 0x7fffffff);
    VI amax = hn::Zero(di);  // the largest magnitude pattern: above max float, a NaN/Inf
    auto code = [&](VF v) {
      amax = hn::Max(amax, hn::And(hn::BitCast(di, v), abs_mask));
      return hn::And(hn::BitCast(du, GridCode<kind()>(v, g, zero_point, sub_unit)), mask);
    };
    size_t i = 0;
    for (; i + N <= n; i += N) hn::StoreU(code(hn::LoadU(df, vals + i)), du, codes + i);
    if (i < n) StoreTail(du, code(LoadTail(df, vals + i, n - i)), codes + i, n - i);
    return hn::AllFalse(di, hn::Gt(amax, hn::Set(di, 0x7f7fffff)));
  });
}

// EncodeSpan and PackCodes in one: the codes of n values on the grid (no zero point) packed
// straight into dst (byte aligned) where the width allows (4, 8 and 16 bits a vector at a time),
// through `codes` (n entries) and PackCodes otherwise. While it works it prefetches prefetch_n
// floats from `prefetch` (the caller's next input), one cache line per vector. Returns false if a
// value is NaN or Inf (dst is then to be written again).
bool EncodePackSpan(const float* HWY_RESTRICT vals, size_t n, const grid_params& grid, int bits,
                    uint32_t* HWY_RESTRICT codes, uint8_t* HWY_RESTRICT dst, const float* prefetch, size_t prefetch_n) {
  const grid_params g = grid;  // a local copy: its constants stay in registers
  const VF sub_unit = SubnormalUnit(g);
  const uint32_t code_mask = (1u << bits) - 1u;  // bits < 32
  const DF df;
  const size_t N = hn::Lanes(df);
  const bool direct = HWY_TARGET != HWY_SCALAR && (bits == 8 || bits == 16 || bits == 4);
  if (!direct) {
    for (size_t i = 0; i * 16 / N < prefetch_n && i < n; i += N) hwy::Prefetch(prefetch + i * 16 / N);
    if (!EncodeSpan(vals, n, g, 0, code_mask, codes)) return false;
    PackCodes(codes, n, bits, dst);
    return true;
  }
  return WithGridKind(g, [&](auto kind) {
    const DI di;
    const DU du;
    const auto mask = hn::Set(du, code_mask);
    const VI abs_mask = hn::Set(di, 0x7fffffff);
    VI amax = hn::Zero(di);
    auto code = [&](VF v) {
      amax = hn::Max(amax, hn::And(hn::BitCast(di, v), abs_mask));
      return hn::And(hn::BitCast(du, GridCode<kind()>(v, g, 0, sub_unit)), mask);
    };
    size_t i = 0;
#if HWY_TARGET != HWY_SCALAR
    auto prefetch_line = [&](size_t at) {
      if (at * 16 / N < prefetch_n) hwy::Prefetch(prefetch + at * 16 / N);
    };
    if (bits == 8) {
      for (; i + N <= n; i += N) {
        prefetch_line(i);
        StoreLowBytes(code(hn::LoadU(df, vals + i)), dst + i);
      }
    } else if (bits == 16) {
      for (; i + N <= n; i += N) {
        prefetch_line(i);
        StoreLowHalves(code(hn::LoadU(df, vals + i)), dst + 2 * i);
      }
    } else {  // 4
      for (; i + 2 * N <= n; i += 2 * N) {
        prefetch_line(i);
        prefetch_line(i + N);
        const auto a = code(hn::LoadU(df, vals + i));
        StoreNibblePairs(a, code(hn::LoadU(df, vals + i + N)), dst + i / 2);
      }
    }
#endif
    if (i < n) {  // (less than two vectors)
      size_t j = 0;
      for (; j + N <= n - i; j += N) hn::StoreU(code(hn::LoadU(df, vals + i + j)), du, codes + j);
      if (j < n - i) StoreTail(du, code(LoadTail(df, vals + i + j, n - i - j)), codes + j, n - i - j);
      pack_codes(codes, static_cast<int64_t>(n - i), bits, dst + i * static_cast<size_t>(bits) / 8);
    }
    return hn::AllFalse(di, hn::Gt(amax, hn::Set(di, 0x7f7fffff)));
  });
}

// A chunk of whole batches (N groups of k, k a multiple of N) in one pass: per batch the groups'
// amax (or the nvfp4 first pass's), their scales in one vectorised computation, then each
// vector rounded onto the grid (FakeQuantVec, as the row kernel's batches with the scale left
// out), coded (GridCode<kKind>) and packed into dst in registers: the values are never stored.
// The same operations as fake_quantize_rows.cpp's batch loop, so the same bits. (The grid
// constants come by value: stores through the byte pointer dst could alias a reference, which
// would reload them for every vector.) Returns false,
// with scales and dst to be written again, where the row kernel's batches would stop (a batch
// the vectorised scales decline) or a rounded value is NaN or Inf (the exact codec's work).
// An integer-valued float |q| < 2^22 as int32: the pattern of q + 1.5 * 2^23 less that of 1.5 * 2^23
// (two operations where ConvertTo also fixes up overflowing lanes).
HWY_INLINE VI SmallIntOf(VF q) {
  const DF df;
  const DI di;
  return hn::Sub(hn::BitCast(di, hn::Add(q, hn::Set(df, 12582912.0f))), hn::Set(di, 0x4B400000));
}

#if HWY_TARGET != HWY_SCALAR
// GridCode for codes of at most 16 bits (QuantizeBatches' formats): the integers' and the
// minifloat shortcut's conversions are SmallIntOf.
template <int kKind>
HWY_INLINE VI SmallGridCode(VF v, const grid_params& g, VF sub_unit) {
  const DF df;
  const DI di;
  if constexpr (kKind == 1) {
    return SmallIntOf(g.frac_scale != 1.0f ? hn::Mul(v, hn::Set(df, g.frac_scale)) : v);
  } else if constexpr (kKind == 3) {
    const VI bits = hn::BitCast(di, v);
    const VI a = hn::And(bits, hn::Set(di, 0x7fffffff));
    const VI normal = hn::Sub(hn::ShiftRightSame(a, 23 - g.mbits), hn::Set(di, (127 - g.bias) << g.mbits));
    const VI sub = g.subnormals ? SmallIntOf(hn::Mul(hn::BitCast(df, a), sub_unit))
                                : hn::IfThenZeroElse(hn::Eq(a, hn::Zero(di)), hn::Set(di, 1 << g.mbits));
    const VI mag = hn::IfThenElse(hn::Lt(a, hn::Set(di, (g.emin + 127) << 23)), sub, normal);
    return hn::Or(mag, hn::IfThenElseZero(hn::Lt(bits, hn::Zero(di)), hn::Set(di, static_cast<int32_t>(g.sign_bit))));
  } else {
    return GridCode<kKind>(v, g, 0, sub_unit);
  }
}

template <rounding_mode kMode, span_path kPath, int kKind, int kBits>
HWY_INLINE bool QuantizeBatchesT(const float* HWY_RESTRICT x, size_t n, const row_plan& plan, const grid_params g,
                                 float* HWY_RESTRICT scales, const int32_t* group_amax, uint8_t* HWY_RESTRICT dst,
                                 const float* prefetch, size_t prefetch_n) {
  const DF df;
  const DI di;
  const DU du;
  const size_t N = hn::Lanes(df);
  const size_t k = static_cast<size_t>(plan.group_cols);
  const row_job job = detail::make_job(*plan.f, g, group_scale{}, true);
  const VF one = hn::Set(df, 1.0f), clamp_lo = hn::Set(df, job.clamp_lo), clamp_hi = hn::Set(df, job.clamp_hi), u = hn::Zero(df);
  const VF sub_unit = SubnormalUnit(g);
  const auto mask = hn::Set(du, (1u << kBits) - 1u);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  VI amax = hn::Zero(di);  // of the rounded values: above max float, a NaN/Inf
  HWY_ALIGN float batch_scale[hn::MaxLanes(DF())];
  HWY_ALIGN float batch_stored[hn::MaxLanes(DF())];
  HWY_ALIGN float batch_mult[hn::MaxLanes(DF())];
  VI partial[hn::MaxLanes(DF())];
  size_t line = 0;  // input floats prefetched
  const size_t per_group = k / N;  // vectors per group
  for (size_t c0 = 0, gi = 0; c0 < n; c0 += N * k, gi += N) {
    const VI amax_bits = group_amax ? hn::LoadU(di, group_amax + gi) : BatchGroupAmax(di, x + c0, k, partial);
    if (plan.batch_preset == 0) {
      if (!BatchScales(df, amax_bits, *plan.sctx, batch_scale, batch_mult)) return false;
      hn::Store(hn::Load(df, batch_scale), df, batch_stored);
    } else if (!BatchScalesPreset(df, amax_bits, plan, batch_scale, batch_stored, batch_mult)) {
      return false;
    }
    hn::StoreU(hn::Load(df, batch_stored), df, scales + gi);
    bool all_mul = true;  // (q8_0 multiplies by its 1/d always, as the row kernel)
    for (size_t j = 0; j < N; ++j) all_mul &= batch_mult[j] != 0.0f || plan.batch_preset == 2;
    // The code of vector t of the batch (group t / per_group).
    auto code_at = [&](size_t t, auto scale_kind) {
      if (line < prefetch_n) hwy::Prefetch(prefetch + line);
      line += 16;
      const size_t j = t / per_group;
      const VF v = hn::LoadU(df, x + c0 + t * N);
      const VF q = FakeQuantVec<kMode, kPath, decltype(scale_kind)::value>(df, v, u, g, hn::Set(df, batch_mult[j]),
                                                                           hn::Set(df, batch_scale[j]), one, false,
                                                                           clamp_lo, clamp_hi);
      amax = hn::Max(amax, hn::And(hn::BitCast(di, q), abs_mask));
      return hn::And(hn::BitCast(du, SmallGridCode<kKind>(q, g, sub_unit)), mask);
    };
    auto codes_of_batch = [&](auto scale_kind) {
      uint8_t* out = dst + c0 * kBits / 8;
      if constexpr (kBits == 4) {  // N * k is even in vectors (N >= 2)
        for (size_t t = 0; t < k; t += 2) {
          const auto a = code_at(t, scale_kind);
          StoreNibblePairs(a, code_at(t + 1, scale_kind), out + t * N / 2);
        }
      } else if constexpr (kBits == 8) {
        for (size_t t = 0; t < k; ++t) StoreLowBytes(code_at(t, scale_kind), out + t * N);
      } else {
        for (size_t t = 0; t < k; ++t) StoreLowHalves(code_at(t, scale_kind), out + 2 * t * N);
      }
    };
    // (N * k values = k vectors)
    if (all_mul) codes_of_batch(std::integral_constant<span_scale, span_scale::mul>{});
    else codes_of_batch(std::integral_constant<span_scale, span_scale::div>{});
  }
  return hn::AllFalse(di, hn::Gt(amax, hn::Set(di, 0x7f7fffff)));
}

template <rounding_mode kMode, span_path kPath, int kKind>
HWY_INLINE bool QuantizeBatchesBits(const float* HWY_RESTRICT x, size_t n, const row_plan& plan, const grid_params& g,
                                    float* HWY_RESTRICT scales, const int32_t* group_amax, uint8_t* HWY_RESTRICT dst,
                                    const float* prefetch, size_t prefetch_n) {
  switch (plan.f->element.bits) {
    case 4: return QuantizeBatchesT<kMode, kPath, kKind, 4>(x, n, plan, g, scales, group_amax, dst, prefetch, prefetch_n);
    case 8: return QuantizeBatchesT<kMode, kPath, kKind, 8>(x, n, plan, g, scales, group_amax, dst, prefetch, prefetch_n);
    default: return QuantizeBatchesT<kMode, kPath, kKind, 16>(x, n, plan, g, scales, group_amax, dst, prefetch, prefetch_n);
  }
}
#endif

// A chunk under one scale (/t, or a plain cast) in one pass: each vector scaled as the row
// kernel's span (x * 1/s for a power-of-two s, else x / s; a plain cast x itself), rounded onto
// the grid (FakeQuantVec with the scale left out), coded and packed in registers. Returns false
// where a rounded value is NaN or Inf (the caller takes the row kernel and the exact codec).
template <rounding_mode kMode, span_path kPath, int kKind, int kBits, span_scale kScale>
HWY_INLINE bool QuantizeUniformT(const float* HWY_RESTRICT x, size_t n, const row_job job, const grid_params g,
                                 uint8_t* HWY_RESTRICT dst, const float* prefetch, size_t prefetch_n) {
  const DF df;
  const DI di;
  const DU du;
  const size_t N = hn::Lanes(df);
  const VF one = hn::Set(df, 1.0f), mul = hn::Set(df, job.multiplier), div = hn::Set(df, job.divisor), u = hn::Zero(df);
  const VF clamp_lo = hn::Set(df, job.clamp_lo), clamp_hi = hn::Set(df, job.clamp_hi);
  const VF sub_unit = SubnormalUnit(g);
  const auto mask = hn::Set(du, (1u << kBits) - 1u);
  const VI abs_mask = hn::Set(di, 0x7fffffff);
  VI amax = hn::Zero(di);
  size_t line = 0;
  auto code_at = [&](size_t i) {
    if (line < prefetch_n) hwy::Prefetch(prefetch + line);
    line += 16;
    const VF q = FakeQuantVec<kMode, kPath, kScale>(df, hn::LoadU(df, x + i), u, g, mul, div, one, false, clamp_lo, clamp_hi);
    amax = hn::Max(amax, hn::And(hn::BitCast(di, q), abs_mask));
    return hn::And(hn::BitCast(du, SmallGridCode<kKind>(q, g, sub_unit)), mask);
  };
  size_t i = 0;
  if constexpr (kBits == 4) {
    for (; i + 2 * N <= n; i += 2 * N) {
      const auto a = code_at(i);
      StoreNibblePairs(a, code_at(i + N), dst + i / 2);
    }
  } else if constexpr (kBits == 8) {
    for (; i + N <= n; i += N) StoreLowBytes(code_at(i), dst + i);
  } else {
    for (; i + N <= n; i += N) StoreLowHalves(code_at(i), dst + 2 * i);
  }
  if (i < n) return false;  // (callers give whole pairs of vectors)
  return hn::AllFalse(di, hn::Gt(amax, hn::Set(di, 0x7f7fffff)));
}

template <rounding_mode kMode, span_path kPath, int kKind>
HWY_INLINE bool QuantizeUniformBits(const float* HWY_RESTRICT x, size_t n, const row_job& job, const grid_params& g,
                                    int bits, uint8_t* HWY_RESTRICT dst, const float* prefetch, size_t prefetch_n) {
  auto with_scale = [&](auto scale) {
    constexpr span_scale kS = decltype(scale)::value;
    switch (bits) {
      case 4: return QuantizeUniformT<kMode, kPath, kKind, 4, kS>(x, n, job, g, dst, prefetch, prefetch_n);
      case 8: return QuantizeUniformT<kMode, kPath, kKind, 8, kS>(x, n, job, g, dst, prefetch, prefetch_n);
      default: return QuantizeUniformT<kMode, kPath, kKind, 16, kS>(x, n, job, g, dst, prefetch, prefetch_n);
    }
  };
  if (!job.scaled) return with_scale(std::integral_constant<span_scale, span_scale::none>{});
  if (job.use_multiplier) return with_scale(std::integral_constant<span_scale, span_scale::mul>{});
  return with_scale(std::integral_constant<span_scale, span_scale::div>{});
}

// Whether QuantizeBatches takes a chunk of n values of a row under plan (else the row kernel and
// EncodePackSpan): the row kernel's batches (groups of k, a multiple of N, n whole batches), or
// one finite scale (/t, plain casts; n whole pairs of vectors); rounding the integer or the
// (|y| + C) - C minifloat path or a table (q8_0: ggml's rna), codes of 4, 8 or 16 bits, no zero
// points.
bool BatchesCover(const row_plan& plan, size_t n) {
#if HWY_TARGET == HWY_SCALAR
  (void)plan;
  (void)n;
  return false;
#else
  const size_t N = hn::Lanes(DF());
  const format& f = *plan.f;
  const size_t k = static_cast<size_t>(plan.group_cols);
  const grid_params& g = *plan.grid;
  const int bits = f.element.bits;
  const bool uniform = f.gran == granularity::tensor || f.gran == granularity::none;  // one scale: QuantizeUniformT
  if (uniform ? n % (2 * N) != 0 || (f.gran == granularity::tensor && plan.tensor_gs.nonfinite)
              : !plan.batch || plan.ggml_batch || k % N != 0 || n % (N * k) != 0)
    return false;
  if (!(bits == 4 || bits == 8 || bits == 16) || f.element.kind == element_kind::uint_asym) return false;
  if (f.named == preset::q8_0) return true;
  if (f.rounding != rounding_mode::rne) return false;
  const span_path path = path_of<rounding_mode::rne>(g);
  return path == span_path::int_fast || path == span_path::table || (path == span_path::rne_fast && MinifloatDirect(g));
#endif
}

bool QuantizeBatches(const float* HWY_RESTRICT x, size_t n, const row_plan& plan, float* scales,
                     const int32_t* group_amax, uint8_t* HWY_RESTRICT dst, const float* prefetch, size_t prefetch_n) {
#if HWY_TARGET == HWY_SCALAR  // (BatchesCover declines every chunk there)
  (void)x, (void)n, (void)plan, (void)scales, (void)group_amax, (void)dst, (void)prefetch, (void)prefetch_n;
  return false;
#else
  const grid_params g = *plan.grid;  // a local copy: its constants stay in registers
  if (plan.f->gran == granularity::tensor || plan.f->gran == granularity::none) {  // one scale: the row kernel's job
    const row_job job = detail::make_job(*plan.f, g, plan.f->gran == granularity::tensor ? plan.tensor_gs : group_scale{}, true);
    const int bits = plan.f->element.bits;
    switch (path_of<rounding_mode::rne>(g)) {
      case span_path::int_fast:
        return QuantizeUniformBits<rounding_mode::rne, span_path::int_fast, 1>(x, n, job, g, bits, dst, prefetch, prefetch_n);
      case span_path::table:
        return QuantizeUniformBits<rounding_mode::rne, span_path::table, 2>(x, n, job, g, bits, dst, prefetch, prefetch_n);
      default:
        return QuantizeUniformBits<rounding_mode::rne, span_path::rne_fast, 3>(x, n, job, g, bits, dst, prefetch, prefetch_n);
    }
  }
  if (plan.f->named == preset::q8_0)  // ggml's roundf
    return QuantizeBatchesBits<rounding_mode::rna, span_path::int_fast, 1>(x, n, plan, g, scales, group_amax, dst, prefetch,
                                                                          prefetch_n);
  switch (path_of<rounding_mode::rne>(g)) {
    case span_path::int_fast:
      return QuantizeBatchesBits<rounding_mode::rne, span_path::int_fast, 1>(x, n, plan, g, scales, group_amax, dst,
                                                                            prefetch, prefetch_n);
    case span_path::table:
      return QuantizeBatchesBits<rounding_mode::rne, span_path::table, 2>(x, n, plan, g, scales, group_amax, dst, prefetch,
                                                                         prefetch_n);
    default:
      return QuantizeBatchesBits<rounding_mode::rne, span_path::rne_fast, 3>(x, n, plan, g, scales, group_amax, dst,
                                                                            prefetch, prefetch_n);
  }
#endif
}

// The codes of one of ggml's blocks (n values at x) given its multiplier id, min lo (with a min)
// and zero point z: quantize_ref's quantize_value a vector at a time, q = clamp(trunc(x * id +
// (z + 1/2)), 0, 2^bits - 1), or trunc((x - min) * id + 1/2) with a min; a NaN gives z (0 with a
// min). Packed into dst: 4-bit codes two vectors at a time in registers, the rest through `codes`.
// kFinite: the block and its multiplier are finite (a batch BatchGgmlScaleVecs took), so no y is NaN.
template <bool kWithMin, bool kFinite = false>
HWY_INLINE void GgmlBlockCodes(const float* HWY_RESTRICT x, size_t n, float id_s, float lo_s, int32_t z, int bits,
                               uint32_t* HWY_RESTRICT codes, uint8_t* HWY_RESTRICT dst) {
  const DF df;
  const DU du;
  const size_t N = hn::Lanes(df);
  const VF top = hn::Set(df, static_cast<float>((1 << bits) - 1)), zero = hn::Zero(df);
  const VF id = hn::Set(df, id_s), lo = hn::Set(df, lo_s);
  const VF bias = hn::Set(df, kWithMin ? 0.5f : static_cast<float>(z) + 0.5f);
  const VF nan_code = hn::Set(df, kWithMin ? 0.0f : static_cast<float>(z));
  auto code = [&](VF v) {
    const VF y = kWithMin ? hn::Add(hn::Mul(hn::Sub(v, lo), id), bias) : hn::Add(hn::Mul(v, id), bias);
    VF q = hn::Min(hn::Max(hn::Trunc(y), zero), top);
    if constexpr (!kFinite) q = hn::IfThenElse(hn::Eq(y, y), q, nan_code);
    return hn::BitCast(du, SmallIntOf(q));  // (0 <= q < 2^bits)
  };
  size_t i = 0;
#if HWY_TARGET != HWY_SCALAR
  if (bits == 4)
    for (; i + 2 * N <= n; i += 2 * N) {
      const auto a = code(hn::LoadU(df, x + i));
      StoreNibblePairs(a, code(hn::LoadU(df, x + i + N)), dst + i / 2);
    }
#endif
  if (i == n) return;
  const size_t first = i;
  for (; i + N <= n; i += N) hn::StoreU(code(hn::LoadU(df, x + i)), du, codes + (i - first));
  if (i < n) StoreTail(du, code(LoadTail(df, x + i, n - i)), codes + (i - first), n - i);
  PackCodes(codes, n - first, bits, dst + first * static_cast<size_t>(bits) / 8);
}

// ggml's q4_0/q5_0/q4_1/q5_1 to codes, one row, straight into the tensor's bytes: per block of k
// the scale (N blocks at a time with BatchGgmlScaleVecs, else GgmlBlockScale: choose_scale's scan
// where the fast statistics decline), stored as store_group_scale stores it (scales, the fixed
// zero point or the min), then the codes (GgmlBlockCodes); a block with NaN/Inf has code 0 and a
// NaN scale. dst = the row's bytes; scales, zero_points (q4_0/q5_0) and mins (q4_1/q5_1:
// super_scales) = the row's first group's; codes = k entries of scratch. k * bits is a multiple of 8.
template <bool kWithMin>
HWY_INLINE void QuantizeGgmlRowT(const float* HWY_RESTRICT x, size_t cols, size_t k, const scale_context& ctx,
                                 float* HWY_RESTRICT scales, int32_t* HWY_RESTRICT zero_points, float* HWY_RESTRICT mins,
                                 uint32_t* HWY_RESTRICT codes, uint8_t* HWY_RESTRICT dst) {
  const int bits = ctx.f->element.bits;
  const size_t block_bytes = k * static_cast<size_t>(bits) / 8;
  // Block g (columns c0 .. c0 + n) on its own.
  auto one_block = [&](size_t c0, size_t n, size_t g) {
    const group_scale gs = GgmlBlockScale(x + c0, n, ctx, kWithMin);
    scales[g] = gs.nonfinite ? canonical_nan() : gs.stored;  // as store_group_scale
    if (kWithMin) mins[g] = gs.nonfinite ? canonical_nan() : -gs.offset;
    else zero_points[g] = gs.zero_point;
    if (gs.nonfinite) {  // the NaN scale carries the block; its codes are 0
      std::fill(codes, codes + n, 0u);
      PackCodes(codes, n, bits, dst + g * block_bytes);
    } else {
      GgmlBlockCodes<kWithMin>(x + c0, n, gs.multiplier, gs.min, gs.zero_point, bits, codes, dst + g * block_bytes);
    }
  };
  size_t c0 = 0, g = 0;
#if HWY_TARGET != HWY_SCALAR
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const int32_t fixed_zp = int32_t{1} << (bits - 1);
  HWY_ALIGN float id_s[hn::MaxLanes(DF())], mn_s[hn::MaxLanes(DF())];
  for (; c0 + N * k <= cols; c0 += N * k, g += N) {
    ggml_scale_vecs v;
    if (!BatchGgmlScaleVecs(df, x + c0, k, ctx, kWithMin, &v)) {  // this batch block by block
      for (size_t j = 0; j < N; ++j) one_block(c0 + j * k, k, g + j);
      continue;
    }
    hn::StoreU(v.d16, df, scales + g);
    if (kWithMin) hn::StoreU(v.m16, df, mins + g);
    else hn::StoreU(hn::Set(di, fixed_zp), di, zero_points + g);
    hn::Store(v.id, df, id_s);
    hn::Store(v.mn, df, mn_s);
    for (size_t j = 0; j < N; ++j)
      GgmlBlockCodes<kWithMin, true>(x + c0 + j * k, k, id_s[j], mn_s[j], fixed_zp, bits, codes, dst + (g + j) * block_bytes);
  }
#endif
  for (; c0 < cols; c0 += k, ++g) one_block(c0, std::min(k, cols - c0), g);
}

void QuantizeGgmlRow(const float* HWY_RESTRICT x, size_t cols, size_t k, const scale_context& ctx,
                     float* HWY_RESTRICT scales, int32_t* HWY_RESTRICT zero_points, float* HWY_RESTRICT mins,
                     uint32_t* HWY_RESTRICT codes, uint8_t* HWY_RESTRICT dst) {
  if (has_block_min(*ctx.f)) QuantizeGgmlRowT<true>(x, cols, k, ctx, scales, zero_points, mins, codes, dst);
  else QuantizeGgmlRowT<false>(x, cols, k, ctx, scales, zero_points, mins, codes, dst);
}

}  // namespace HWY_NAMESPACE
}  // namespace lowbit
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lowbit {

HWY_EXPORT(DequantSpan);
HWY_EXPORT(UnpackCodes);
HWY_EXPORT(DequantRow);
HWY_EXPORT(EncodeSpan);
HWY_EXPORT(EncodePackSpan);
HWY_EXPORT(QuantizeGgmlRow);
HWY_EXPORT(PackCodes);
HWY_EXPORT(BatchesCover);
HWY_EXPORT(QuantizeBatches);

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
    if (f.gran != granularity::group || f.group_size * f.element.bits % 8 != 0)  // (ggml's blocks are 32)
      return quantize_ref(x, rows, cols, f, tensor_id);
    const scale_context ctx = make_scale_context(f, /*reference=*/false);
    const int64_t gpr = groups_per_row(f, cols);
    const bool with_min = has_block_min(f);
#pragma omp parallel if (rows * cols >= kParallelMinElements)
    {
      thread_local std::vector<uint32_t> block_codes;  // one block's codes, reused by the calls of a thread
      block_codes.resize(static_cast<size_t>(f.group_size));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r)
        HWY_DYNAMIC_DISPATCH(QuantizeGgmlRow)(x + r * cols, static_cast<size_t>(cols), static_cast<size_t>(f.group_size),
                                              ctx, q.scales.data() + r * gpr,
                                              with_min ? nullptr : q.zero_points.data() + r * gpr,
                                              with_min ? q.super_scales.data() + r * gpr : nullptr, block_codes.data(),
                                              q.codes.data() + r * q.row_bytes);
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
  const bool grouped = f.gran == granularity::group || f.gran == granularity::row;
  // A row goes through the row kernel a chunk of about kChunk values at a time, so that its
  // values, their codes and the input stay in L1 until they are packed into the row's bytes.
  // Groups and the row kernel's batches of N <= 16 groups keep their columns (a chunk is whole
  // batches; the nvfp4 first pass's group amax are kept for those); /c's group is the row; /t's
  // scale and a plain cast's rounding do not depend on where a chunk starts.
  constexpr int64_t kChunk = 2048;
  const int64_t chunk = f.gran == granularity::row     ? std::max<int64_t>(cols, 1)
                        : f.gran == granularity::group ? 16 * k * std::max<int64_t>(1, kChunk / (16 * k))
                                                       : kChunk;
  // SIMD encoding for codes of at most 31 bits; spans with NaN/Inf take the exact codec.
  const bool simd_encode = f.element.bits < 32;
  const uint32_t code_mask = f.element.bits >= 32 ? 0xffffffffu : (1u << f.element.bits) - 1u;
  std::atomic<bool> unstorable_nan{false};
  // QuantizeBatches: the row kernel's batches of groups, or one scale (/t, plain casts).
  const bool fused = f.gran != granularity::row;
#pragma omp parallel if (rows * cols >= kParallelMinElements)
  {
    // Reused by the calls of a thread: no allocation per call once they have grown.
    thread_local std::vector<uint32_t> chunk_codes;
    thread_local std::vector<float> chunk_vals;
    chunk_codes.resize(static_cast<size_t>(std::min(chunk, cols)));
    chunk_vals.resize(static_cast<size_t>(std::min(chunk, cols)));
    uint32_t* const codes = chunk_codes.data();
    float* const vals = chunk_vals.data();
    // The codes of columns [cb, ce) of row r, group by group, from their values (vals[0] is
    // column cb's): NaN-scale groups code 0, EncodeSpan, and the exact codec where a span holds
    // NaN/Inf.
    auto group_codes = [&](int64_t r, int64_t cb, int64_t ce) {
      const int64_t span = f.gran == granularity::group ? k : ce - cb;
      for (int64_t c0 = cb; c0 < ce; c0 += span) {
        const int64_t c1 = std::min(ce, c0 + span), g = f.gran == granularity::group ? c0 / k : 0;
        const float s = f.gran == granularity::none ? 1.0f : (grouped ? q.scales[static_cast<size_t>(r * gpr + g)] : q.scales[0]);
        uint32_t* cc = codes + (c0 - cb);
        const float* vv = vals + (c0 - cb);
        const size_t n = static_cast<size_t>(c1 - c0);
        if (std::isnan(s)) {  // the NaN scale carries the group; codes stay 0
          std::fill(cc, cc + n, 0u);
          continue;
        }
        const int32_t z = !asym || f.gran == granularity::none ? 0
                                                              : (grouped ? q.zero_points[static_cast<size_t>(r * gpr + g)] : q.zero_points[0]);
        if (simd_encode && HWY_DYNAMIC_DISPATCH(EncodeSpan)(vv, n, call.grid, z, code_mask, cc)) continue;
        for (size_t c = 0; c < n; ++c) {
          const uint32_t code = code_of_grid_value(f, vv[c], z);
          if (code == kNoCode && f.element.bits < 32) unstorable_nan.store(true);
          cc[c] = code;
        }
      }
    };
    // The second pass of /t and nvfp4 walks each thread's rows back to front (fake_quantize_rows.cpp).
    const bool backward = detail::has_first_pass(f);
    detail::for_rows_in_team(rows, backward, omp_get_thread_num(), omp_get_num_threads(), [&](int64_t r) {
      const float* xr = x + r * cols;
      // Software prefetch one chunk ahead (the next row's first after the last): the row kernel
      // computes from L1 while the next chunk comes from memory.
      const float* next_row = backward ? (r > 0 ? xr - cols : nullptr) : (r + 1 < rows ? xr + cols : nullptr);
      float* sc = grouped ? q.scales.data() + r * gpr : nullptr;
      int32_t* zp = grouped && asym ? q.zero_points.data() + r * gpr : nullptr;
      const int32_t* amax = call.group_amax_of(r);
      uint8_t* row_bytes = q.codes.data() + r * q.row_bytes;
      for (int64_t cb = 0; cb < cols; cb += chunk) {
        const int64_t ce = std::min(cols, cb + chunk), n = ce - cb;
        const int64_t g0 = f.gran == granularity::group ? cb / k : 0;
        const float* next = ce < cols ? xr + ce : next_row;
        const int64_t next_n = next ? std::min(chunk, ce < cols ? cols - ce : cols) : 0;
        uint8_t* dst = row_bytes + cb * f.element.bits / 8;
        // Whole batches of the common formats in one pass (QuantizeBatches); else the row kernel
        // into `vals`, then the whole chunk encoded and packed at once where no value is NaN/Inf
        // (a NaN-scale group's values are NaN) and no zero point enters, or group by group.
        if (fused && HWY_DYNAMIC_DISPATCH(BatchesCover)(call.plan, static_cast<size_t>(n)) &&
            HWY_DYNAMIC_DISPATCH(QuantizeBatches)(xr + cb, static_cast<size_t>(n), call.plan, sc ? sc + g0 : nullptr,
                                                  amax ? amax + g0 : nullptr, dst, next, static_cast<size_t>(next_n)))
          continue;
        detail::fake_quant_row(xr + cb, vals, static_cast<size_t>(n), call.plan, static_cast<uint64_t>(r * cols + cb),
                               sc ? sc + g0 : nullptr, zp ? zp + g0 : nullptr, amax ? amax + g0 : nullptr);
        if (asym || !simd_encode ||
            !HWY_DYNAMIC_DISPATCH(EncodePackSpan)(vals, static_cast<size_t>(n), call.grid, f.element.bits, codes, dst,
                                                   next, static_cast<size_t>(next_n))) {
          group_codes(r, cb, ce);
          HWY_DYNAMIC_DISPATCH(PackCodes)(codes, static_cast<size_t>(n), f.element.bits, dst);
        }
      }
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
  // (Padded to 16 entries with zeros: DequantSpan loads a table of at most a vector whole.)
  const size_t table_n = static_cast<size_t>(code_count(f.element));
  std::vector<float> table(std::max<size_t>(table_n, 16), 0.0f);
  for (size_t c = 0; c < table_n; ++c) table[c] = decode_ref(f.element, static_cast<uint32_t>(c));
  const bool asym = f.element.kind == element_kind::uint_asym || has_fixed_zero_point(f);
  const bool block_min = has_block_min(f);
  const int64_t k = f.gran == granularity::group ? f.group_size : std::max<int64_t>(q.cols, 1);
  const int64_t gpr = q.groups_per_row();
  // Symmetric integers of more than 4 bits (past a vector's table) decode by sign extension.
  const int int_shift = f.element.kind == element_kind::int_sym && f.element.bits > 4 ? 32 - f.element.bits : 0;
  const float int_unit = std::ldexp(1.0f, -f.element.frac_bits);
  const bool per_row = f.gran == granularity::group || f.gran == granularity::row;  // else /t's one entry
#pragma omp parallel if (q.rows * q.cols >= kParallelMinElements)
  {
    thread_local std::vector<uint32_t> row_codes;  // reused by the calls of a thread
    row_codes.resize(static_cast<size_t>(q.cols));
    uint32_t* const codes = row_codes.data();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < q.rows; ++r) {
      HWY_DYNAMIC_DISPATCH(UnpackCodes)(q.codes.data() + r * q.row_bytes, static_cast<size_t>(q.cols), f.element.bits, codes);
      const int64_t g0 = per_row ? r * gpr : 0;
      const bool scaled = f.gran != granularity::none;
      HWY_DYNAMIC_DISPATCH(DequantRow)(codes, static_cast<size_t>(q.cols), static_cast<size_t>(k), table.data(), table_n,
                                       int_shift, int_unit,
                                       scaled ? q.scales.data() + g0 : nullptr, per_row, f.named == preset::nvfp4,
                                       q.tensor_scale, scaled && !q.zero_points.empty() ? q.zero_points.data() + g0 : nullptr,
                                       asym, block_min ? q.super_scales.data() + g0 : nullptr, out + r * q.cols);
    }
  }
}

}  // namespace lowbit
#endif  // HWY_ONCE

// Scale selection for one group, and the counter-based generator of stochastic rounding.
// Scalar and shared by the reference and the fast kernels: it runs once per group.
#include "lowbit/kernels/scale.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/element_ops.hpp"

namespace lowbit {

group_stats group_stats_ref(const float* x, int64_t n) {
  group_stats st;
  // amax over |x| as bit patterns: NaN-safe and exact (every pattern above 0x7f800000 is NaN).
  uint32_t amax_bits = 0;
  float mn = 0, mx = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t a = std::bit_cast<uint32_t>(x[i]) & 0x7fffffffu;
    amax_bits = std::max(amax_bits, a);
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  st.nonfinite = amax_bits >= 0x7f800000u;
  st.amax = std::bit_cast<float>(amax_bits);
  st.min = mn;
  st.max = mx;
  return st;
}

float round_ggml_fp16(const element_format& half, float v) {
  return decode_ref(half, encode_ref(half, v, rounding_mode::rne));
}

float round_scale(const scale_format& s, float v) {
  float r = v;
  if (s.kind == scale_kind::element) {
    r = decode_ref(s.element, encode_ref(s.element, v, rounding_mode::rne));
    if (!(r > 0)) r = static_cast<float>(limits_of(s.element).min_subnormal);
  }
  return r;
}

namespace {

// floor(log2(v)), ceil(log2(v)) and round(log2(v)) of a positive finite float, exactly, from its
// bits (float32 subnormals through ilogb).
int floor_log2(float v) {
  const uint32_t b = std::bit_cast<uint32_t>(v);
  return (b >> 23) != 0 ? static_cast<int>(b >> 23) - 127 : std::ilogb(v);
}
int ceil_log2(float v) {
  const int e = floor_log2(v);
  return std::ldexp(1.0f, e) == v ? e : e + 1;
}
// Up iff the significand exceeds sqrt(2) (irrational: never a tie); the float above sqrt(2)'s
// float32 rounding, 0x3FB504F3, is the first significand past it.
int round_log2(float v) {
  const int e = floor_log2(v);
  const float m = std::ldexp(v, -e);  // in [1, 2), exact
  return std::bit_cast<uint32_t>(m) >= 0x3FB504F4u ? e + 1 : e;
}

// 2^k as a float (k in -149..127), without libm.
float pow2(int k) {
  return k >= -126 ? std::bit_cast<float>(static_cast<uint32_t>(k + 127) << 23)
                   : std::bit_cast<float>(uint32_t{1} << (k + 149));
}

// |v| rounded (RNE) onto a minifloat grid without the exact codec: (|v| + C) - C with
// C = 2^(L+23) rounds onto the grid of step 2^L in float32, ties to even; M > 0, subnormals on.
// Beyond `max`: max, or Inf when overflow_inf (IEEE, as ggml's fp16 conversion).
float round_minifloat_fast(float v, int emin, int mbits, float max, bool overflow_inf) {
  const float a = std::fabs(v);
  const uint32_t b = std::bit_cast<uint32_t>(a);
  const int p = std::max(static_cast<int>(b >> 23), 1) - 127;
  const int L = std::max(p, emin) - mbits;
  float r = a;
  if (L > p - 23) {
    // C must be a finite float: at the top of a wide grid (bf16 scales of amax >= 2^112) round
    // a * 2^-64 onto the step 2^(L-64) and scale back; both products are exact (a is normal
    // and large), and a carry past FLT_MAX becomes Inf, which the saturation below takes.
    const int down = L + 23 > 127 ? 64 : 0;
    const float scaled = down ? a * pow2(-down) : a;
    const float c = std::bit_cast<float>(static_cast<uint32_t>(L - down + 150) << 23);
    r = (scaled + c) - c;
    if (down) r *= pow2(down);
  }
  if (r > max) r = overflow_inf ? INFINITY : max;
  return std::copysign(r, v);
}

float round_scale_fast(const scale_context& ctx, float v) {
  if (ctx.scale_identity) return v > 0 ? std::min(v, ctx.s_max) : ctx.s_min;
  const float r = round_minifloat_fast(v, ctx.s_emin, ctx.s_mbits, ctx.s_max, false);
  return r > 0 ? r : ctx.s_min;
}

// ggml's fp16 block scale d (any sign, overflow to Inf): the exact codec, or the fast rounding.
float round_ggml_scale(const scale_context& ctx, float d) {
  if (ctx.reference || std::isnan(d) || std::fabs(d) > 1e30f) return round_ggml_fp16(ctx.f->scale.element, d);
  return round_minifloat_fast(d, ctx.s_emin, ctx.s_mbits, ctx.s_max, true);
}

float round_scale_ctx(const scale_context& ctx, float v) {
  if (ctx.f->scale.kind != scale_kind::element) return v;
  return ctx.fast_scale_round ? round_scale_fast(ctx, v) : round_scale(ctx.f->scale, v);
}

// The scale of a group whose (clipped) amax is `amax` under the non-data-dependent rules.
// Returns NaN when a power-of-two exponent overflows e8m0.
float scale_from_amax(const scale_context& ctx, float amax, float elem_max) {
  if (ctx.pow2_rule) {
    int k = 0;
    if (!pow2_scale_exponent(ctx, amax, &k)) return canonical_nan();
    return round_scale_ctx(ctx, pow2(k));
  }
  return round_scale_ctx(ctx, amax / elem_max);
}

double group_sse(const format& f, const float* x, int64_t n, const group_scale& gs) {
  double sse = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float q = fake_quantize_value_ref(f, x[i], gs, 0.0f, rounding_mode::rne);
    const double d = static_cast<double>(x[i]) - q;
    sse += d * d;
  }
  return sse;
}

// numpy's default (linear) percentile of the values v (sorted here).
float percentile_of(std::vector<float> v, double pct) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  const double pos = pct / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return static_cast<float>(v[lo] + frac * (static_cast<double>(v[hi]) - v[lo]));
}

// Asymmetric min-max (docs/conventions.md §5, docs/formats.md §0.2): range forced to contain 0, [-1, 1] when
// empty; s = (max - min) / (2^N - 1) rounded to the scale format, z = round(-min / s).
group_scale uint_scale(const scale_context& ctx, float lo, float hi) {
  group_scale gs;
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  if (lo == hi) {
    lo = -1.0f;
    hi = 1.0f;
  }
  gs.scale = scale_from_amax(ctx, hi - lo, ctx.elem_max);
  if (std::isnan(gs.scale)) {
    gs.nonfinite = true;
    return gs;
  }
  const float z = std::nearbyint(-lo / gs.scale);
  gs.zero_point = static_cast<int32_t>(std::clamp(z, 0.0f, ctx.elem_max));
  return gs;
}

}  // namespace

scale_context make_scale_context(const format& f, bool reference) {
  scale_context ctx;
  ctx.f = &f;
  ctx.reference = reference;
  ctx.elem_max = f.element.kind == element_kind::uint_asym ? std::ldexp(1.0f, f.element.bits) - 1.0f
                 : f.power != 0                             ? 1.0f
                                                            : static_cast<float>(element_max(f));
  // emax of the grid the scale maps onto: a power map's grid is normalised to [-1, 1] (emax 0).
  ctx.emax = std::ilogb(f.element.kind == element_kind::uint_asym || f.power != 0 ? ctx.elem_max
                                                                                 : static_cast<float>(element_max(f)));
  ctx.pow2_rule = f.rule == scale_rule::ocp || f.rule == scale_rule::ceil || f.rule == scale_rule::rceil ||
                  f.rule == scale_rule::even;
  switch (f.scale.kind) {
    case scale_kind::e8m0:
      ctx.k_min = -127;
      ctx.k_max = 127;
      ctx.k_overflow_nan = true;
      break;
    case scale_kind::pow2:
      ctx.k_min = std::max(-(1 << (f.scale.exp_bits - 1)), -149);
      ctx.k_max = std::min((1 << (f.scale.exp_bits - 1)) - 1, 127);
      break;
    case scale_kind::element: {
      const element_format& s = f.scale.element;
      const element_limits l = limits_of(s);
      ctx.s_emin = 1 - s.bias;
      ctx.s_mbits = s.mbits;
      ctx.s_max = static_cast<float>(l.max);
      ctx.s_min = static_cast<float>(l.min_subnormal);
      ctx.scale_identity = s.ebits == 8 && s.mbits == 23 && s.bias == 127 && s.subnormals;
      ctx.fast_scale_round = !reference && s.kind == element_kind::minifloat && s.subnormals && s.mbits > 0 &&
                             s.overflow == overflow_policy::saturate;
      break;
    }
  }
  const bool generic = f.named == preset::none || f.named == preset::mxint8 || f.named == preset::flex;
  if (!reference && generic && f.power == 0 && f.element.kind != element_kind::uint_asym) {
    if (ctx.pow2_rule && f.scale.kind != scale_kind::element) ctx.inline_rule = scale_context::inline_pow2;
    if (f.rule == scale_rule::max && ctx.scale_identity) ctx.inline_rule = scale_context::inline_max_fp32;
    // (|v| + C) - C needs C = 2^(L+23) in range: L <= emax - M <= 103 after clamping v to max.
    else if (f.rule == scale_rule::max && ctx.fast_scale_round && f.scale.kind == scale_kind::element &&
             limits_of(f.scale.element).emax - f.scale.element.mbits <= 103)
      ctx.inline_rule = scale_context::inline_max_minifloat;
  }
  return ctx;
}

bool pow2_scale_exponent(const scale_context& ctx, float amax, int* k) {
  const float elem_max = ctx.elem_max;
  const int emax = ctx.emax;
  // microxcaling: log2(amax + FP32_MIN_NORMAL * (amax == 0)), so an all-zero block gets -126 - emax.
  const float a = amax > 0 ? amax : 0x1p-126f;
  int e = 0;
  switch (ctx.f->rule) {
    case scale_rule::ocp: e = floor_log2(a) - emax; break;
    case scale_rule::ceil: e = ceil_log2(a) - emax; break;
    case scale_rule::rceil: {
      const float r = a / elem_max;
      e = r > 0 ? ceil_log2(r) : -149;
      break;
    }
    case scale_rule::even: {
      const float r = a / elem_max;
      e = r > 0 ? round_log2(r) : -149;
      break;
    }
    default: e = ceil_log2(a / elem_max); break;
  }
  if (ctx.k_overflow_nan && e > ctx.k_max) return false;  // OCP MX: the scale becomes NaN
  *k = std::clamp(e, ctx.k_min, ctx.k_max);
  return true;
}

float nvfp4_tensor_scale(float tensor_amax) {
  // 1 for an all-zero tensor, and for one so small that amax / 2688 underflows to 0 (the block
  // ratios would divide by zero).
  const float s = tensor_amax / (448.0f * 6.0f);
  return s > 0 ? s : 1.0f;
}

group_scale choose_scale(const format& f, const group_stats& st, const float* x, int64_t n,
                         float tensor_scale) {
  return choose_scale(make_scale_context(f), st, x, n, tensor_scale);
}

group_scale ggml_scale_from_max(const scale_context& ctx, float vmax) {
  group_scale gs;
  const int32_t half = int32_t{1} << (ctx.f->element.bits - 1);
  const float d = vmax / static_cast<float>(-half);
  gs.multiplier = d != 0 ? 1.0f / d : 0.0f;
  gs.scale = gs.stored = round_ggml_scale(ctx, d);
  gs.zero_point = half;
  return gs;
}

group_scale ggml_scale_from_range(const scale_context& ctx, float lo, float hi) {
  group_scale gs;
  const float d = (hi - lo) / static_cast<float>((1 << ctx.f->element.bits) - 1);
  gs.multiplier = d != 0 ? 1.0f / d : 0.0f;
  gs.scale = gs.stored = round_ggml_scale(ctx, d);
  gs.min = lo;
  gs.offset = -round_ggml_scale(ctx, lo);
  return gs;
}

group_scale choose_scale(const scale_context& ctx, const group_stats& st, const float* x, int64_t n,
                         float tensor_scale) {
  const format& f = *ctx.f;
  group_scale gs;
  if (st.nonfinite) {
    gs.nonfinite = true;
    gs.scale = canonical_nan();
    return gs;
  }
  switch (f.named) {
    case preset::nvfp4: {
      // docs/formats.md §1.3 / docs/conventions.md §6: s_blk = amax/6; ratio clamped to [2^-6, 448], rounded to
      // E4M3; the quantization scale is s_tensor * s_blk_q in float32.
      const float s_blk = st.amax / 6.0f;
      const float ratio = std::clamp(s_blk / tensor_scale, 0x1p-6f, 448.0f);
      gs.stored = round_scale_ctx(ctx, ratio);
      gs.scale = tensor_scale * gs.stored;
      return gs;
    }
    case preset::q4_0:
    case preset::q5_0: {
      // ggml quantize_row_q4_0_ref / _q5_0_ref: d = max / -8 (-16) with max the signed value of
      // largest |x|; codes q = x/d + 8 (16), so the zero point is 8 (16).
      float amax = 0, vmax = 0;
      for (int64_t i = 0; i < n; ++i)
        if (amax < std::fabs(x[i])) {
          amax = std::fabs(x[i]);
          vmax = x[i];
        }
      return ggml_scale_from_max(ctx, vmax);
    }
    case preset::q4_1:
    case preset::q5_1: {
      // ggml quantize_row_q4_1_ref / _q5_1_ref: d = (max - min) / 15 (31), codes count up from
      // min; the fp16 d and m = min are stored. min and max as ggml scans them (from +-FLT_MAX,
      // strict comparisons), so a signed zero is ggml's.
      float lo = std::numeric_limits<float>::max(), hi = -std::numeric_limits<float>::max();
      for (int64_t i = 0; i < n; ++i) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
      }
      return ggml_scale_from_range(ctx, lo, hi);
    }
    case preset::q8_0: {
      // ggml quantize_row_q8_0_ref: d = amax / 127, q = roundf(x * (1/d)).
      const float d = st.amax / 127.0f;
      gs.multiplier = d != 0 ? 1.0f / d : 0.0f;
      gs.scale = gs.stored = round_ggml_scale(ctx, d);
      return gs;
    }
    case preset::q2_k:
    case preset::q3_k:
    case preset::q4_k:
    case preset::q5_k:
    case preset::q6_k:
      // A K-quant group (sub-block) shares its super-block's scales: kquant_quantize_block.
      throw error(fmt::format("choose_scale: {} scales are chosen per super-block of 256 (kquant_quantize_block)",
                              format_name(f)));
    case preset::mxint8:
    case preset::flex:
    case preset::none: break;
  }
  if (f.element.kind == element_kind::uint_asym) {
    float lo = st.min, hi = st.max;
    if (f.rule == scale_rule::percentile) {
      std::vector<float> v(x, x + n);
      hi = percentile_of(v, f.percentile);
      lo = percentile_of(std::move(v), 100.0 - f.percentile);
    }
    if (f.rule != scale_rule::mse) {
      gs = uint_scale(ctx, lo, hi);
    } else {
      double best = std::numeric_limits<double>::infinity();
      for (int i = 0; i < 80; ++i) {
        const float c = static_cast<float>(1.0 - i / 100.0);
        const group_scale cand = uint_scale(ctx, lo * c, hi * c);
        const double sse = group_sse(f, x, n, cand);
        if (sse < best) {
          best = sse;
          gs = cand;
        }
      }
    }
    gs.stored = gs.scale;
    return gs;
  }
  float amax = st.amax;
  if (f.rule == scale_rule::percentile) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = std::fabs(x[i]);
    amax = percentile_of(std::move(v), f.percentile);
  }
  if (f.rule == scale_rule::mse) {
    double best = std::numeric_limits<double>::infinity();
    for (int i = 0; i < 80; ++i) {
      const float c = static_cast<float>(1.0 - i / 100.0);
      group_scale cand;
      cand.scale = cand.stored = scale_from_amax(ctx, amax * c, ctx.elem_max);
      const double sse = group_sse(f, x, n, cand);
      if (sse < best) {
        best = sse;
        gs = cand;
      }
    }
    return gs;
  }
  gs.scale = gs.stored = scale_from_amax(ctx, amax, ctx.elem_max);
  if (std::isnan(gs.scale)) gs.nonfinite = true;
  return gs;
}

// ---- Philox4x32-10 ------------------------------------------------------------------------------
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t{kM0} * c0, p1 = uint64_t{kM1} * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

philox_stream philox_stream_of(uint64_t seed, uint64_t tensor_id) {
  return {{static_cast<uint32_t>(seed), static_cast<uint32_t>(tensor_id)},
          static_cast<uint32_t>(seed >> 32),
          static_cast<uint32_t>(tensor_id >> 32)};
}

void philox_stream::block(uint64_t b, uint32_t out[4]) const {
  const uint32_t ctr[4] = {static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), c2, c3};
  philox4x32_10(ctr, key, out);
}

uint32_t random_word(uint64_t seed, uint64_t tensor_id, uint64_t index) {
  uint32_t out[4];
  philox_stream_of(seed, tensor_id).block(index >> 2, out);
  return out[index & 3];
}

// docs/conventions.md §43: the R-bit draw k of element `index` as the word (2k + 1) << (31 - R).
uint32_t random_word(uint64_t seed, uint64_t tensor_id, uint64_t index, int draw_bits) {
  if (draw_bits == 0) return random_word(seed, tensor_id, index);
  if (!valid_sr_bits(draw_bits)) throw error(fmt::format("random_word: {} random bits per element (1, 2, 4, 8 or 16)", draw_bits));
  const uint64_t per_block = 128 / static_cast<uint64_t>(draw_bits);
  uint32_t out[4];
  philox_stream_of(seed, tensor_id).block(index / per_block, out);
  const uint64_t offset = static_cast<uint64_t>(draw_bits) * (index % per_block);  // bit in the 128-bit output
  const uint32_t k = (out[offset / 32] >> (offset % 32)) & ((1u << draw_bits) - 1u);
  return (2 * k + 1) << (31 - draw_bits);
}

void random_words_ref(uint64_t seed, uint64_t tensor_id, uint64_t first, size_t count, uint32_t* out, int draw_bits) {
  for (size_t i = 0; i < count; ++i) out[i] = random_word(seed, tensor_id, first + i, draw_bits);
}

void random_blocks_ref(uint64_t seed, uint64_t tensor_id, uint64_t block0, size_t count, uint32_t* out) {
  const philox_stream ps = philox_stream_of(seed, tensor_id);
  for (size_t k = 0; k < count; ++k) ps.block(block0 + k, out + 4 * k);
}

}  // namespace lowbit

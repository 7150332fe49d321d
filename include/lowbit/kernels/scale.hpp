// Scale selection for one group (docs/conventions.md §5-8, docs/formats.md §1.2-1.4): scalar code shared by the
// reference and the fast kernels (it runs once per group, the per-element work is elsewhere).
#pragma once

#include <cstdint>

#include "lowbit/formats/format.hpp"

namespace lowbit {

struct group_scale {
  float scale = 1.0f;       // quantize x / scale, dequantize q * scale (NaN: the group held NaN/Inf)
  float stored = 1.0f;      // what the format stores (nvfp4: the E4M3 block scale; else = scale)
  float multiplier = 0.0f;  // ggml presets: 1/d taken before d is rounded to fp16
  int32_t zero_point = 0;   // uint elements (and q4_0's / q5_0's fixed 8 / 16; a K-quant's min code m)
  // Subtracted after scaling (value_minus_offset): q2_k/q4_k/q5_k dmin * m; q4_1/q5_1 -m, the
  // block's fp16 min negated.
  float offset = 0.0f;
  float min = 0.0f;         // q4_1/q5_1: the block's min before fp16 rounding (codes count from it)
  bool nonfinite = false;
};

// The value of code q in ggml's blocks with a min ("type-1", x = d * q + min), in ggml's float
// operations: dequantize_row_q2_K/q4_K/q5_K's y = d1 * q - m1 (scale = d1 = d * sc, offset = m1 =
// dmin * m) and dequantize_row_q4_1/q5_1's y = q * d + m (offset = -m; a - (-m) is a + m bit for bit).
inline float value_minus_offset(const group_scale& gs, uint32_t q) { return gs.scale * static_cast<float>(q) - gs.offset; }

// Statistics a group's scale is chosen from; kernels compute them (SIMD or scalar).
struct group_stats {
  float amax = 0;      // max |x| (finite groups)
  float min = 0, max = 0;  // for uint elements
  bool nonfinite = false;
};

group_stats group_stats_ref(const float* x, int64_t n);

// Constants of scale selection, computed once per tensor (not per group).
struct scale_context {
  const format* f = nullptr;
  float elem_max = 1;        // largest element magnitude (uint: 2^N - 1; power maps: 1)
  int emax = 0;              // floor(log2(elem_max)), OCP's emax_elem
  int k_min = -149, k_max = 127;  // range of a power-of-two scale exponent
  bool k_overflow_nan = false;    // e8m0: an exponent above k_max makes the group NaN
  bool pow2_rule = false;
  bool reference = true;     // round scales with the exact codec (false: the fast scalar path)
  // fast RNE rounding onto a minifloat scale format (valid when fast_scale_round)
  bool fast_scale_round = false, scale_identity = false;
  int s_emin = 0, s_mbits = 0;
  float s_max = 0, s_min = 0;
  // Groups whose scale the fast kernels compute inline (fast_group_scale); 0 = none.
  // inline_max_minifloat: the max rule onto a small minifloat scale (fp16, e4m3, ...), batched
  // only (the per-group path calls choose_scale).
  enum { inline_none, inline_pow2, inline_max_fp32, inline_max_minifloat } inline_rule = inline_none;
};
scale_context make_scale_context(const format& f, bool reference = true);

// The scale of a group. `x` (n values) is only read by the data-dependent rules (mse,
// percentile) and the ggml presets; `tensor_scale` is nvfp4's first level.
group_scale choose_scale(const scale_context& ctx, const group_stats& st, const float* x, int64_t n,
                         float tensor_scale);
group_scale choose_scale(const format& f, const group_stats& st, const float* x, int64_t n,
                         float tensor_scale);

// The scale of a finite group for the two commonest cases without a function call or libm: a
// power-of-two scale (e8m0/pow2) from a normal amax, and the max rule with an fp32 scale.
// Returns false where it does not apply (the caller then calls choose_scale); where it returns
// true the result equals choose_scale's (tests/kernels/test_differential.cpp).
inline bool fast_group_scale(const scale_context& ctx, float amax, group_scale* gs) {
  if (ctx.inline_rule == scale_context::inline_max_fp32) {
    float s = amax / ctx.elem_max;
    s = s > 0 ? (s < ctx.s_max ? s : ctx.s_max) : ctx.s_min;
    gs->scale = gs->stored = s;
    return true;
  }
  if (ctx.inline_rule != scale_context::inline_pow2) return false;  // incl. inline_max_minifloat
  const uint32_t b = __builtin_bit_cast(uint32_t, amax);
  if (b < 0x00800000u || b >= 0x7f800000u) return false;  // 0, subnormal: the general path
  int e = static_cast<int>(b >> 23) - 127;
  switch (ctx.f->rule) {
    case scale_rule::ocp: e -= ctx.emax; break;
    case scale_rule::ceil: e += ((b & 0x7fffffu) != 0) - ctx.emax; break;
    default: {  // rceil / even on r = amax / elem_max
      const uint32_t rb = __builtin_bit_cast(uint32_t, amax / ctx.elem_max);
      if (rb < 0x00800000u) return false;
      e = static_cast<int>(rb >> 23) - 127;
      if (ctx.f->rule == scale_rule::rceil) e += (rb & 0x7fffffu) != 0;
      else e += (rb & 0x7fffffu) >= 0x3504F4u;  // significand above sqrt(2)
    }
  }
  if (e > ctx.k_max && ctx.k_overflow_nan) return false;
  e = e < ctx.k_min ? ctx.k_min : (e > ctx.k_max ? ctx.k_max : e);
  if (e < -126) return false;
  gs->scale = gs->stored = __builtin_bit_cast(float, static_cast<uint32_t>(e + 127) << 23);
  return true;
}

// ggml's block scales from what their scans find (choose_scale's arithmetic, for kernels that find
// those values with SIMD): q4_0/q5_0's from vmax, the block's signed value of largest magnitude
// that ggml's scan keeps (the first; +0 for an all-zero block); q4_1/q5_1's from the block's
// min and max as ggml's scan has them. Finite blocks only.
group_scale ggml_scale_from_max(const scale_context& ctx, float vmax);
group_scale ggml_scale_from_range(const scale_context& ctx, float lo, float hi);

// nvfp4's tensor scale from the tensor's finite amax: amax / (448 * 6), or 1 when that is 0 (an
// all-zero tensor, or an amax below 2688 x the smallest subnormal) (docs/formats.md §1.3).
float nvfp4_tensor_scale(float tensor_amax);

// GGML_FP32_TO_FP16 then GGML_FP16_TO_FP32 with the exact codec: RNE onto IEEE binary16, overflow
// to Inf. `half` is the ggml presets' scale element (parse_format's ggml fp16).
float round_ggml_fp16(const element_format& half, float v);
// A value rounded (RNE, saturating) onto a scale format; clamped below to the format's smallest
// positive value so that a scale is never 0.
float round_scale(const scale_format& s, float v);
// Power-of-two exponent k of a scale 2^k for the pow2 rules; returns false when k overflows an
// e8m0 scale (the group becomes NaN, as microxcaling does).
bool pow2_scale_exponent(const scale_context& ctx, float amax, int* k);

// Philox4x32-10 (Salmon et al. 2011): counter-based, so element i's draw depends only on
// (seed, tensor_id, i). Element i takes word (i & 3) of the block with counter i >> 2.
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
// The stream of docs/conventions.md §10: key = the low halves of (seed, tensor_id), counter words 2 and 3
// their high halves, so block b's counter is (b mod 2^32, b >> 32, c2, c3).
struct philox_stream {
  uint32_t key[2], c2, c3;
  void block(uint64_t b, uint32_t out[4]) const;
};
philox_stream philox_stream_of(uint64_t seed, uint64_t tensor_id);
uint32_t random_word(uint64_t seed, uint64_t tensor_id, uint64_t index);
// out[i] = random_word(seed, tensor_id, first + i) for i < count: the draws of the stochastic-
// rounding kernels. random_words runs Philox on SIMD lanes (src/kernels/philox_fast.cpp); _ref is
// the loop.
//
// draw_bits = R in {1, 2, 4, 8, 16} gives the words of the R-bit draw instead (docs/conventions.md
// §43, rounding ~srR): Philox block b serves the 128/R elements [b 128/R, (b + 1) 128/R), element i
// takes the R bits k at bit offset o = R (i mod 128/R) of the block's four words read as one
// 128-bit little-endian number, k = (out[o / 32] >> (o mod 32)) mod 2^R, and its word is
// (2k + 1) << (31 - R), so that uniform_from_word gives u = (k + 1/2) 2^-R. draw_bits = 0 is the
// exact stream above, word for word.
void random_words(uint64_t seed, uint64_t tensor_id, uint64_t first, size_t count, uint32_t* out, int draw_bits = 0);
void random_words_ref(uint64_t seed, uint64_t tensor_id, uint64_t first, size_t count, uint32_t* out,
                      int draw_bits = 0);
uint32_t random_word(uint64_t seed, uint64_t tensor_id, uint64_t index, int draw_bits);
// The Philox output itself: out[4k .. 4k + 3] = the words of block block0 + k of the stream, for
// k < count (the bits ~srR reads, above). random_blocks runs Philox on SIMD lanes
// (src/kernels/philox_fast.cpp); _ref is the loop over philox_stream::block.
void random_blocks(uint64_t seed, uint64_t tensor_id, uint64_t block0, size_t count, uint32_t* out);
void random_blocks_ref(uint64_t seed, uint64_t tensor_id, uint64_t block0, size_t count, uint32_t* out);
// The uniform draw of docs/conventions.md §10: (r >> 8) * 2^-24.
inline float uniform_from_word(uint32_t r) { return static_cast<float>(r >> 8) * 0x1p-24f; }
// The uniform draw u of element `index` under f's stochastic rounding (exact or R-bit): what the
// reference kernels round with.
inline float sr_uniform(const format& f, uint64_t tensor_id, uint64_t index) {
  return uniform_from_word(random_word(f.seed, tensor_id, index, f.sr_bits));
}

}  // namespace lowbit

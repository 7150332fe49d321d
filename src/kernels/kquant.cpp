// ggml's K-quants Q4_K and Q6_K: one super-block at a time, scalar (kquant.hpp has the layout).
// The float operations are ggml's, in ggml's order (the build has no FMA contraction), so that
// the codes and scales equal those of ggml's quantize_row_q4_K_ref / quantize_row_q6_K_ref.
#include "lowbit/kernels/kquant.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit {

bool is_kquant(const format& f) { return f.named == preset::q4_k || f.named == preset::q6_k; }

int kquant_super_scale_count(const format& f) { return f.named == preset::q4_k ? 2 : 1; }

int64_t kquant_super_blocks_per_row(int64_t cols) { return (cols + kSuperBlock - 1) / kSuperBlock; }

int ggml_nearest_int(float v) {
  const float t = v + 12582912.0f;  // 1.5 * 2^23: the integer lands in the low mantissa bits
  return static_cast<int>(std::bit_cast<uint32_t>(t) & 0x007fffffu) - 0x00400000;
}

namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS

// make_qkx2_quants (ggml-quants.c) for q4_k's sub-blocks: the weighted least-squares fit of
// x ~ scale * L + min with L in 0..nmax, min <= 0, trying iscale = (rmin + rdelta * is + nmax) /
// (max - min) for is = 0..nstep after the plain min-max fit; squared error (use_mad = false).
// Returns the scale, sets *the_min = -min (>= 0) and L.
float fit_scale_min(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min, float rmin,
                    float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = ggml_nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * static_cast<float>(L[i]) + min - x[i];
    diff = diff * diff;
    best_error += weights[i] * diff;
  }
  uint8_t Laux[32];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = ggml_nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      const float lf = static_cast<float>(l);
      sum_l += w * lf;
      sum_l2 += w * lf * lf;
      sum_xl += w * lf * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        diff = diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// make_qx_quants (ggml-quants.c) with rmse_type = 1 and no importance weights, for q6_k's
// sub-blocks: symmetric codes l in -nmax..nmax-1 (stored L = l + nmax), weights x^2; the
// least-squares scale of iscale = -nmax / max, then of iscale = -(nmax + 0.1 is) / max for
// is = -9..9 (is != 0), keeping the best. `max` is the value of largest magnitude (signed).
float fit_symmetric_scale(int n, int nmax, const float* x, uint8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  auto code = [&](float iscale, float xi) { return std::max(-nmax, std::min(nmax - 1, ggml_nearest_int(iscale * xi))); };
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = code(iscale, x[i]);
    L[i] = static_cast<uint8_t>(l + nmax);
    const float w = x[i] * x[i];
    const float lf = static_cast<float>(l);
    sumlx += w * x[i] * lf;
    suml2 += w * lf * lf;
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const float lf = static_cast<float>(code(iscale, x[i]));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * lf;
      suml2 += w * lf * lf;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(code(iscale, x[i]) + nmax);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// quantize_row_q4_K_ref on one super-block x[256].
void quantize_q4_k(const element_format& half, const float* x, kquant_block* b) {
  constexpr int kSub = 32, kSubs = kSuperBlock / kSub;
  float scales[kSubs], mins[kSubs], weights[kSub];
  float max_scale = 0, max_min = 0;  // the min is subtracted: scales and mins are >= 0
  for (int j = 0; j < kSubs; ++j) {
    const float* xs = x + kSub * j;
    float sum_x2 = 0;
    for (int l = 0; l < kSub; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / static_cast<float>(kSub));
    for (int l = 0; l < kSub; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] = fit_scale_min(kSub, 15, xs, weights, b->q + kSub * j, &mins[j], -1.0f, 0.1f, 20);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  // 6-bit codes of the sub-block scales and mins relative to their largest.
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < kSubs; ++j) {
    const uint8_t ls = static_cast<uint8_t>(ggml_nearest_int(inv_scale * scales[j]));  // C's int -> uint8_t
    const uint8_t lm = static_cast<uint8_t>(ggml_nearest_int(inv_min * mins[j]));
    b->sc[j] = std::min<int32_t>(63, ls);
    b->m[j] = std::min<int32_t>(63, lm);
  }
  b->d = round_ggml_fp16(half, max_scale / 63.0f);
  b->dmin = round_ggml_fp16(half, max_min / 63.0f);
  // The codes again with the stored (rounded) scales; a sub-block whose scale is 0 keeps the
  // codes of its fit (its values are -dmin * m whatever the code).
  for (int j = 0; j < kSubs; ++j) {
    const float d = b->d * static_cast<float>(b->sc[j]);
    if (d == 0) continue;
    const float dm = b->dmin * static_cast<float>(b->m[j]);
    for (int i = 0; i < kSub; ++i) {
      const int l = ggml_nearest_int((x[kSub * j + i] + dm) / d);
      b->q[kSub * j + i] = static_cast<uint8_t>(std::max(0, std::min(15, l)));
    }
  }
}

// quantize_row_q6_K_ref on one super-block x[256].
void quantize_q6_k(const element_format& half, const float* x, kquant_block* b) {
  constexpr int kSub = 16, kSubs = kSuperBlock / kSub;
  float scales[kSubs];
  float max_scale = 0, max_abs_scale = 0;
  for (int j = 0; j < kSubs; ++j) {
    scales[j] = fit_symmetric_scale(kSub, 32, x + kSub * j, b->q + kSub * j);
    const float abs_scale = std::fabs(scales[j]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[j];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {  // ggml zeroes the whole block: codes 0 (value -32 * 0)
    *b = kquant_block{};
    return;
  }
  // int8 codes of the sub-block scales: the largest in magnitude becomes -128.
  const float iscale = -128.0f / max_scale;
  b->d = round_ggml_fp16(half, 1 / iscale);
  for (int j = 0; j < kSubs; ++j) b->sc[j] = static_cast<int8_t>(std::min(127, ggml_nearest_int(iscale * scales[j])));
  for (int j = 0; j < kSubs; ++j) {
    const float d = b->d * static_cast<float>(b->sc[j]);
    if (d == 0) continue;  // keeps the fit's codes, as ggml
    for (int i = 0; i < kSub; ++i) {
      const int l = ggml_nearest_int(x[kSub * j + i] / d);
      b->q[kSub * j + i] = static_cast<uint8_t>(std::max(-32, std::min(31, l)) + 32);
    }
  }
}

}  // namespace

void kquant_quantize_block(const format& f, const float* x, int64_t n, kquant_block* out) {
  if (!is_kquant(f)) throw error(fmt::format("kquant_quantize_block: {} is not q4_k or q6_k", format_name(f)));
  if (n < 0 || n > kSuperBlock) throw shape_error(fmt::format("kquant_quantize_block: {} values; a super-block holds 1..256", n));
  float padded[kSuperBlock] = {};
  bool nonfinite = false;
  for (int64_t i = 0; i < n; ++i) {
    padded[i] = x[i];
    nonfinite |= !std::isfinite(x[i]);
  }
  *out = kquant_block{};
  if (nonfinite) {  // docs/conventions.md §4: the super-block's scales are NaN, its lowbit codes 0
    out->d = out->dmin = canonical_nan();
    if (f.named == preset::q6_k) std::fill(out->q, out->q + kSuperBlock, uint8_t{32});  // q - 32 = 0
    return;
  }
  if (f.named == preset::q4_k) quantize_q4_k(f.scale.element, padded, out);
  else quantize_q6_k(f.scale.element, padded, out);
}

group_scale kquant_sub_scale(const format& f, float d, float dmin, int32_t sc, int32_t m) {
  group_scale gs;
  gs.nonfinite = std::isnan(d);
  gs.stored = static_cast<float>(sc);
  gs.scale = d * static_cast<float>(sc);  // ggml: d1 = d * sc (exact: 11 x 8 significant bits)
  if (f.named == preset::q4_k) {
    gs.offset = dmin * static_cast<float>(m);  // m1 = dmin * m
    gs.zero_point = m;
  }
  return gs;
}

group_scale kquant_stored_scale(const quantized_tensor& q, int64_t r, int64_t c) {
  const int nss = kquant_super_scale_count(q.fmt);
  const float* ss = q.super_scales.data() + (r * kquant_super_blocks_per_row(q.cols) + c / kSuperBlock) * nss;
  return kquant_sub_scale(q.fmt, ss[0], nss > 1 ? ss[1] : 0.0f, static_cast<int32_t>(q.scale_at(r, c)),
                          q.zero_point_at(r, c));
}


void kquant_fake_quantize_rows(const format& f, const float* in, float* out, int64_t cols, int64_t r0, int64_t r1) {
  const int64_t sub = f.group_size;
  const bool q4 = f.named == preset::q4_k;
  kquant_block b;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c0 = 0; c0 < cols; c0 += kSuperBlock) {
      const int64_t n = std::min<int64_t>(kSuperBlock, cols - c0);
      kquant_quantize_block(f, in + r * cols + c0, n, &b);  // reads its n values before y is written
      float* y = out + r * cols + c0;
      for (int64_t j = 0; j * sub < n; ++j) {
        const group_scale gs = kquant_sub_scale(f, b.d, b.dmin, b.sc[j], b.m[j]);
        const int64_t i0 = j * sub, i1 = std::min(n, i0 + sub);
        if (gs.nonfinite) {
          std::fill(y + i0, y + i1, canonical_nan());
          continue;
        }
        if (q4)
          for (int64_t i = i0; i < i1; ++i) y[i] = q4_k_value(gs, b.q[i]);
        else
          for (int64_t i = i0; i < i1; ++i) y[i] = q6_k_value(gs, static_cast<int32_t>(b.q[i]) - 32);
      }
    }
  }
}

void kquant_dequantize_rows(const quantized_tensor& q, int64_t r0, int64_t r1, float* out) {
  const format& f = q.fmt;
  const bool q4 = f.named == preset::q4_k;
  const int64_t sub = f.group_size, gpr = q.groups_per_row();
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* codes = q.codes.data() + r * q.row_bytes;
    float* y = out + r * q.cols;
    for (int64_t g = 0; g < gpr; ++g) {
      const int64_t c0 = g * sub, c1 = std::min(q.cols, c0 + sub);
      const group_scale gs = kquant_stored_scale(q, r, c0);  // once per sub-block
      if (gs.nonfinite) {
        std::fill(y + c0, y + c1, canonical_nan());
        continue;
      }
      int64_t c = c0;
      if (q4) {  // 4-bit q, two a byte, low nibble first
        for (; c < c1; ++c) y[c] = q4_k_value(gs, (codes[c >> 1] >> ((c & 1) * 4)) & 15u);
        continue;
      }
      // 6-bit two's complement of q - 32, four in three bytes (a sub-block of 16 starts on a byte).
      auto value = [&](uint32_t code) { return q6_k_value(gs, static_cast<int32_t>(code ^ 32u) - 32); };
      for (; c + 4 <= c1; c += 4) {
        const uint8_t* p = codes + c / 4 * 3;
        const uint32_t w = p[0] | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16);
        for (int k = 0; k < 4; ++k) y[c + k] = value((w >> (6 * k)) & 63u);
      }
      for (; c < c1; ++c) {  // a partial sub-block's last codes: no byte past the row is read
        const int64_t bit = 6 * c;
        const int sh = static_cast<int>(bit & 7);
        uint32_t v = codes[bit >> 3] >> sh;
        if (sh > 2) v |= uint32_t{codes[(bit >> 3) + 1]} << (8 - sh);
        y[c] = value(v & 63u);
      }
    }
  }
}

void kquant_quantize_rows(const float* x, int64_t r0, int64_t r1, quantized_tensor& q) {
  const format& f = q.fmt;
  const int64_t cols = q.cols, sub = f.group_size;
  const int64_t nsb = kquant_super_blocks_per_row(cols), gpr = q.groups_per_row();
  const int nss = kquant_super_scale_count(f);
  const bool q4 = f.named == preset::q4_k;
  kquant_block b;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t s = 0; s < nsb; ++s) {
      const int64_t c0 = s * kSuperBlock, n = std::min<int64_t>(kSuperBlock, cols - c0);
      kquant_quantize_block(f, x + r * cols + c0, n, &b);
      float* ss = q.super_scales.data() + (r * nsb + s) * nss;
      ss[0] = b.d;
      if (q4) ss[1] = b.dmin;
      for (int64_t g = c0 / sub; g < std::min(gpr, (c0 + kSuperBlock) / sub); ++g) {
        const int64_t j = g - c0 / sub;
        q.scales[static_cast<size_t>(r * gpr + g)] = static_cast<float>(b.sc[j]);
        if (q4) q.zero_points[static_cast<size_t>(r * gpr + g)] = b.m[j];
      }
      for (int64_t i = 0; i < n; ++i)  // q6_k: the two's complement of q - 32 in 6 bits
        q.set_code(r, c0 + i, q4 ? b.q[i] : static_cast<uint32_t>(b.q[i] - 32) & 63u);
    }
  }
}

}  // namespace lowbit

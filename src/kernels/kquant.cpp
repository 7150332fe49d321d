// ggml's K-quants (kquant.hpp has the layouts). The reference, kquant_quantize_block_ref, runs one
// super-block at a time, scalar: the float operations are ggml's, in ggml's order (the build has
// no FMA contraction), so that the codes and scales equal those of ggml's
// quantize_row_q{2,3,4,5,6}_K_ref. The fast path (kquant_quantize_super_blocks) runs the
// sub-block fits of a batch of super-blocks lane-parallel (kquant_fast.cpp: lane j fits sub-block
// j with the reference's float operations) and shares the rest (scale codes, fp16 super-scales)
// with the reference.
#include "lowbit/kernels/kquant.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "src/kernels/kquant_fast.hpp"

namespace lowbit {

bool is_kquant(const format& f) {
  switch (f.named) {
    case preset::q2_k:
    case preset::q3_k:
    case preset::q4_k:
    case preset::q5_k:
    case preset::q6_k: return true;
    default: return false;
  }
}

bool kquant_has_min(const format& f) {
  return f.named == preset::q2_k || f.named == preset::q4_k || f.named == preset::q5_k;
}

int kquant_super_scale_count(const format& f) { return kquant_has_min(f) ? 2 : 1; }

int64_t kquant_super_blocks_per_row(int64_t cols) { return (cols + kSuperBlock - 1) / kSuperBlock; }

int kquant_block_bytes(const format& f) {
  switch (f.named) {
    case preset::q2_k: return sizeof(block_q2_k);
    case preset::q3_k: return sizeof(block_q3_k);
    case preset::q4_k: return sizeof(block_q4_k);
    case preset::q5_k: return sizeof(block_q5_k);
    case preset::q6_k: return sizeof(block_q6_k);
    default: throw error(fmt::format("kquant_block_bytes: {} is not a K-quant", format_name(f)));
  }
}

int ggml_nearest_int(float v) {
  const float t = v + 12582912.0f;  // 1.5 * 2^23: the integer lands in the low mantissa bits
  return static_cast<int>(std::bit_cast<uint32_t>(t) & 0x007fffffu) - 0x00400000;
}

namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS
constexpr int kSymmetricSub = 16, kSymmetricSubs = kSuperBlock / kSymmetricSub;  // q3_k, q6_k

// make_qkx2_quants (ggml-quants.c) for the sub-blocks of q2_k, q4_k and q5_k: the weighted
// least-squares fit of x ~ scale * L + min with L in 0..nmax, min <= 0, trying iscale = (rmin +
// rdelta * is + nmax) / (max - min) for is = 0..nstep after the plain min-max fit; the error is
// squared, or absolute (use_mad, q2_k). Returns the scale, sets *the_min = -min (>= 0) and L.
float fit_scale_min(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min, float rmin,
                    float rdelta, int nstep, bool use_mad) {
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
  auto error_of = [use_mad](float diff) { return use_mad ? std::fabs(diff) : diff * diff; };
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = ggml_nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    const float diff = scale * static_cast<float>(L[i]) + min - x[i];
    best_error += weights[i] * error_of(diff);
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
        const float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        cur_error += weights[i] * error_of(diff);
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

// The value of largest magnitude among x[0..n) (the first of equal magnitudes, with its sign),
// and that magnitude in *amax: the symmetric K-quant fits scale from it.
float signed_max(int n, const float* x, float* amax) {
  float max = 0;
  *amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > *amax) {
      *amax = ax;
      max = x[i];
    }
  }
  return max;
}

// make_qx_quants (ggml-quants.c) with rmse_type = 1 and no importance weights, for q6_k's
// sub-blocks: symmetric codes l in -nmax..nmax-1 (stored L = l + nmax), weights x^2; the
// least-squares scale of iscale = -nmax / max, then of iscale = -(nmax + 0.1 is) / max for
// is = -9..9 (is != 0), keeping the best. `max` is the value of largest magnitude (signed).
float fit_symmetric_scale(int n, int nmax, const float* x, uint8_t* L) {
  float amax = 0;
  const float max = signed_max(n, x, &amax);
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

// make_q3_quants (ggml-quants.c) with do_rmse, for q3_k's sub-blocks: symmetric codes l in
// -nmax..nmax-1 from iscale = -nmax / max, then up to 5 sweeps that move one code at a time to
// the nearest of x * sum(w l^2) / sum(w x l) (the other codes' least-squares scale, weights x^2)
// when that raises sumlx^2 / suml2. Stores L = l + nmax; an all-(near-)zero sub-block keeps L = 0.
float fit_q3_scale(int n, int nmax, const float* x, uint8_t* L) {
  float amax = 0;
  const float max = signed_max(n, x, &amax);
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const float iscale = static_cast<float>(-nmax) / max;
  int l_of[32];
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, ggml_nearest_int(iscale * x[i])));
    l_of[i] = l;
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      const float li = static_cast<float>(l_of[i]);
      float slx = sumlx - w * x[i] * li;
      if (slx > 0) {
        float sl2 = suml2 - w * li * li;
        int new_l = ggml_nearest_int(x[i] * sl2 / slx);
        new_l = std::max(-nmax, std::min(nmax - 1, new_l));
        if (new_l != l_of[i]) {
          const float nl = static_cast<float>(new_l);
          slx += w * x[i] * nl;
          sl2 += w * nl * nl;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            l_of[i] = new_l;
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(l_of[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// The range of a K-quant's sub-block scale codes (and of its min codes, where it has mins), as
// ggml's block layouts store them: q2_k 4 bits, q4_k/q5_k 6 bits, q3_k 6 bits signed, q6_k int8.
struct code_range {
  int32_t lo, hi;
};
code_range sub_block_code_range(preset p) {
  switch (p) {
    case preset::q2_k: return {0, 15};
    case preset::q3_k: return {-32, 31};
    case preset::q6_k: return {-128, 127};
    default: return {0, 63};  // q4_k, q5_k
  }
}

// The per-type constants of quantize_row_q2_K_ref / _q4_K_ref / _q5_K_ref.
struct min_family {
  int sub;          // values per sub-block
  int nmax;         // largest code
  float rmin, rdelta;
  int nstep;
  bool use_mad;     // q2_k: absolute error, weights |x|; else squared error, weights av_x + |x|
};
min_family min_family_of(preset p) {
  switch (p) {
    case preset::q2_k: return {16, 3, -0.5f, 0.1f, 15, true};
    case preset::q4_k: return {32, 15, -1.0f, 0.1f, 20, false};
    default: return {32, 31, -0.5f, 0.1f, 15, false};  // q5_k
  }
}

// The sub-block fits of quantize_row_q2_K_ref / _q4_K_ref / _q5_K_ref on one super-block x[256]:
// scales[j], mins[j] (>= 0, subtracted) and the fit's codes L in q[256].
void fit_with_min_ref(preset p, const float* x, float* scales, float* mins, uint8_t* q) {
  const min_family k = min_family_of(p);
  float weights[32];
  for (int j = 0; j < kSuperBlock / k.sub; ++j) {
    const float* xs = x + k.sub * j;
    if (k.use_mad) {
      for (int l = 0; l < k.sub; ++l) weights[l] = std::fabs(xs[l]);
    } else {
      float sum_x2 = 0;
      for (int l = 0; l < k.sub; ++l) sum_x2 += xs[l] * xs[l];
      const float av_x = std::sqrt(sum_x2 / static_cast<float>(k.sub));
      for (int l = 0; l < k.sub; ++l) weights[l] = av_x + std::fabs(xs[l]);
    }
    scales[j] = fit_scale_min(k.sub, k.nmax, xs, weights, q + k.sub * j, &mins[j], k.rmin, k.rdelta, k.nstep, k.use_mad);
  }
}

// The codes again with the stored (rounded) scales, ggml's last loop: sub-block j (of `sub`
// values) with d[j] != 0 gets q = clamp(nearest_int((x + dm[j]) / d[j]), lo, hi) + z, or with no
// dm (the symmetric K-quants) nearest_int(x / d[j]); a sub-block whose d is 0 keeps the codes of
// its fit. `fast`: the vector twin (kquant_fast.cpp), the same float operations lane by lane.
void requantize(bool fast, const float* x, int subs, int sub, const float* d, const float* dm, int lo, int hi, int z,
                uint8_t* q) {
  if (fast) {
    detail::kquant_requantize_fast(x, subs, sub, d, dm, lo, hi, z, q);
    return;
  }
  for (int j = 0; j < subs; ++j) {
    if (d[j] == 0) continue;
    for (int i = 0; i < sub; ++i) {
      const float v = x[sub * j + i];
      const int l = ggml_nearest_int(dm ? (v + dm[j]) / d[j] : v / d[j]);
      q[sub * j + i] = static_cast<uint8_t>(std::max(lo, std::min(hi, l)) + z);
    }
  }
}

// The rest of quantize_row_q2_K_ref / _q4_K_ref / _q5_K_ref on one super-block x[256] after the
// sub-block fits (fit_with_min_ref or its vector twin): b->q holds the fit's codes.
void finish_with_min(const element_format& half, preset p, const float* x, const float* scales, const float* mins,
                     kquant_block* b, bool fast) {
  const min_family k = min_family_of(p);
  const int subs = kSuperBlock / k.sub;
  float max_scale = 0, max_min = 0;  // the min is subtracted: scales and mins are >= 0
  for (int j = 0; j < subs; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  // Codes of the sub-block scales and mins relative to their largest.
  // The largest sub-block scale / min code: 15 (q2_k's 4 bits) or 63 (6 bits).
  const int32_t code_max = sub_block_code_range(p).hi;
  const float levels = static_cast<float>(code_max);
  if (p == preset::q2_k) {
    // q2_k: scales[j] = l, then |= l_min << 4, as bytes; sc = byte & 15, m = byte >> 4.
    uint8_t bytes[16] = {};
    if (max_scale > 0) {
      const float iscale = levels / max_scale;
      for (int j = 0; j < subs; ++j) bytes[j] = static_cast<uint8_t>(ggml_nearest_int(iscale * scales[j]));
    }
    if (max_min > 0) {
      const float iscale = levels / max_min;
      for (int j = 0; j < subs; ++j) bytes[j] |= static_cast<uint8_t>(ggml_nearest_int(iscale * mins[j]) << 4);
    }
    b->d = max_scale > 0 ? round_ggml_fp16(half, max_scale / levels) : 0.0f;
    b->dmin = max_min > 0 ? round_ggml_fp16(half, max_min / levels) : 0.0f;
    for (int j = 0; j < subs; ++j) {
      b->sc[j] = bytes[j] & 15;
      b->m[j] = bytes[j] >> 4;
    }
  } else {
    const float inv_scale = max_scale > 0 ? levels / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? levels / max_min : 0.0f;
    for (int j = 0; j < subs; ++j) {
      const uint8_t ls = static_cast<uint8_t>(ggml_nearest_int(inv_scale * scales[j]));  // C's int -> uint8_t
      const uint8_t lm = static_cast<uint8_t>(ggml_nearest_int(inv_min * mins[j]));
      b->sc[j] = std::min<int32_t>(code_max, ls);
      b->m[j] = std::min<int32_t>(code_max, lm);
    }
    b->d = round_ggml_fp16(half, max_scale / levels);
    b->dmin = round_ggml_fp16(half, max_min / levels);
  }
  // The codes again with the stored (rounded) scales; a sub-block whose scale is 0 keeps the
  // codes of its fit (its values are -dmin * m whatever the code).
  float d[16], dm[16];
  for (int j = 0; j < subs; ++j) {
    d[j] = b->d * static_cast<float>(b->sc[j]);
    dm[j] = b->dmin * static_cast<float>(b->m[j]);
  }
  requantize(fast, x, subs, k.sub, d, dm, 0, k.nmax, 0, b->q);
}

// The sub-block fits of quantize_row_q3_K_ref / _q6_K_ref on one super-block x[256]: scales[j]
// and the fit's codes in q.
void fit_symmetric_ref(preset p, const float* x, float* scales, uint8_t* q) {
  for (int j = 0; j < kSymmetricSubs; ++j)
    scales[j] = p == preset::q3_k ? fit_q3_scale(kSymmetricSub, 4, x + kSymmetricSub * j, q + kSymmetricSub * j)
                                  : fit_symmetric_scale(kSymmetricSub, 32, x + kSymmetricSub * j, q + kSymmetricSub * j);
}

// The rest of quantize_row_q3_K_ref on one super-block x[256] after the sub-block fits.
void finish_q3_k(const element_format& half, const float* x, const float* scales, kquant_block* b, bool fast) {
  constexpr int kSubs = kSymmetricSubs;
  float max_scale = 0, amax = 0;
  for (int j = 0; j < kSubs; ++j) {
    const float a = std::fabs(scales[j]);
    if (a > amax) {
      amax = a;
      max_scale = scales[j];
    }
  }
  // 6-bit codes of the sub-block scales: the largest in magnitude becomes -32. With no scale at
  // all ggml stores zero bytes, which read as sc = 0 - 32 = -32 (and d = 0).
  if (max_scale != 0) {
    const float iscale = -32.0f / max_scale;
    const code_range sc_range = sub_block_code_range(preset::q3_k);
    for (int j = 0; j < kSubs; ++j) {
      const int8_t l = static_cast<int8_t>(ggml_nearest_int(iscale * scales[j]));  // C's int -> int8_t
      b->sc[j] = std::clamp<int32_t>(l, sc_range.lo, sc_range.hi);
    }
    b->d = round_ggml_fp16(half, 1 / iscale);
  } else {
    for (int j = 0; j < kSubs; ++j) b->sc[j] = -32;
    b->d = round_ggml_fp16(half, 0.0f);
  }
  float d[kSubs];
  for (int j = 0; j < kSubs; ++j) d[j] = b->d * static_cast<float>(b->sc[j]);
  requantize(fast, x, kSubs, kSymmetricSub, d, nullptr, -4, 3, 4, b->q);  // d == 0 keeps the fit's codes, as ggml
}

// The rest of quantize_row_q6_K_ref on one super-block x[256] after the sub-block fits.
void finish_q6_k(const element_format& half, const float* x, const float* scales, kquant_block* b, bool fast) {
  constexpr int kSubs = kSymmetricSubs;
  float max_scale = 0, max_abs_scale = 0;
  for (int j = 0; j < kSubs; ++j) {
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
  float d[kSubs];
  for (int j = 0; j < kSubs; ++j) d[j] = b->d * static_cast<float>(b->sc[j]);
  requantize(fast, x, kSubs, kSymmetricSub, d, nullptr, -32, 31, 32, b->q);  // d == 0 keeps the fit's codes, as ggml
}

// The rest of a super-block's quantization after its sub-block fits (scales, mins, b->q).
void finish_block(const format& f, const float* x, const float* scales, const float* mins, kquant_block* b, bool fast) {
  const element_format& half = f.scale.element;
  switch (f.named) {
    case preset::q3_k: finish_q3_k(half, x, scales, b, fast); break;
    case preset::q6_k: finish_q6_k(half, x, scales, b, fast); break;
    default: finish_with_min(half, f.named, x, scales, mins, b, fast); break;
  }
}

// A symmetric K-quant's z (q - z is the value's integer): 4 (q3_k) or 32 (q6_k).
int32_t symmetric_zero(const format& f) { return int32_t{1} << (f.element.bits - 1); }

// lowbit's code of ggml's q: q itself, or the bits-wide two's complement of q - z.
uint32_t lowbit_code(const format& f, bool with_min, uint8_t q) {
  if (with_min) return q;
  return static_cast<uint32_t>(static_cast<int32_t>(q) - symmetric_zero(f)) & ((1u << f.element.bits) - 1u);
}

// Code c of a row packed at `bits` (<= 8) bits per value, least significant bit first; reads no
// byte past the one holding the code's last bit.
uint32_t packed_code(const uint8_t* row, int64_t c, int bits) {
  const int64_t bit = c * bits;
  const int sh = static_cast<int>(bit & 7);
  uint32_t v = row[bit >> 3] >> sh;
  if (sh + bits > 8) v |= uint32_t{row[(bit >> 3) + 1]} << (8 - sh);
  return v & ((1u << bits) - 1u);
}

}  // namespace

namespace {

void check_block_args(const char* who, const format& f, int64_t n) {
  if (!is_kquant(f)) throw error(fmt::format("{}: {} is not a K-quant", who, format_name(f)));
  if (n < 0 || n > kSuperBlock) throw shape_error(fmt::format("{}: {} values; a super-block holds 1..256", who, n));
}

// x[0, n) into padded[256], zero-padded; false when a value is NaN or Inf.
bool pad_super_block(const float* x, int64_t n, float* padded) {
  std::copy(x, x + n, padded);
  std::fill(padded + n, padded + kSuperBlock, 0.0f);
  uint32_t nonfinite = 0;  // exponent all ones: NaN or Inf (a loop the compiler vectorises)
  for (int i = 0; i < kSuperBlock; ++i) nonfinite |= (std::bit_cast<uint32_t>(padded[i]) & 0x7f800000u) == 0x7f800000u;
  return nonfinite == 0;
}

// docs/conventions.md §4: a super-block holding NaN/Inf has NaN scales and lowbit codes 0.
void nonfinite_block(const format& f, kquant_block* out) {
  *out = kquant_block{};
  out->d = out->dmin = canonical_nan();
  if (!kquant_has_min(f)) std::fill(out->q, out->q + kSuperBlock, static_cast<uint8_t>(symmetric_zero(f)));  // q - z = 0
}

// Super-blocks per batch of the fast path: 16 KiB of input (it stays in L1 through the fits and
// the codes), 256 sub-blocks of 16 or 128 of 32 (whole vectors of lanes on every target).
constexpr int64_t kBatchSuperBlocks = 16;

}  // namespace

void kquant_quantize_block_ref(const format& f, const float* x, int64_t n, kquant_block* out) {
  check_block_args("kquant_quantize_block_ref", f, n);
  float padded[kSuperBlock];
  if (!pad_super_block(x, n, padded)) {
    nonfinite_block(f, out);
    return;
  }
  *out = kquant_block{};
  float scales[16] = {}, mins[16] = {};
  if (kquant_has_min(f)) fit_with_min_ref(f.named, padded, scales, mins, out->q);
  else fit_symmetric_ref(f.named, padded, scales, out->q);
  finish_block(f, padded, scales, mins, out, /*fast=*/false);
}

void kquant_quantize_super_blocks(const format& f, const float* x, int64_t n, kquant_block* out) {
  if (!is_kquant(f)) throw error(fmt::format("kquant_quantize_super_blocks: {} is not a K-quant", format_name(f)));
  if (n < 0) throw shape_error(fmt::format("kquant_quantize_super_blocks: {} values", n));
  const int64_t nsb = kquant_super_blocks_per_row(n);
  if (use_ref()) {
    for (int64_t s = 0; s < nsb; ++s)
      kquant_quantize_block_ref(f, x + s * kSuperBlock, std::min<int64_t>(kSuperBlock, n - s * kSuperBlock), out + s);
    return;
  }
  const bool with_min = kquant_has_min(f);
  const min_family k = min_family_of(f.named);
  const int subs = with_min ? kSuperBlock / k.sub : kSymmetricSubs;
  alignas(64) float padded[kBatchSuperBlocks * kSuperBlock];  // the batch's finite super-blocks, packed
  alignas(64) uint8_t fit_codes[kBatchSuperBlocks * kSuperBlock];
  float scales[kBatchSuperBlocks * 16], mins[kBatchSuperBlocks * 16];
  int64_t where[kBatchSuperBlocks];  // the super-block (of out) of each packed one
  for (int64_t s0 = 0; s0 < nsb; s0 += kBatchSuperBlocks) {
    int64_t m = 0;
    for (int64_t s = s0; s < std::min(nsb, s0 + kBatchSuperBlocks); ++s) {
      if (pad_super_block(x + s * kSuperBlock, std::min<int64_t>(kSuperBlock, n - s * kSuperBlock), padded + m * kSuperBlock))
        where[m++] = s;
      else
        nonfinite_block(f, out + s);
    }
    if (m == 0) continue;
    const size_t count = static_cast<size_t>(m * subs);  // sub-blocks, contiguous in padded
    if (f.named == preset::q6_k) detail::kquant_fit_symmetric_fast(padded, count, 32, scales, fit_codes);
    else if (f.named == preset::q3_k) detail::kquant_fit_q3_fast(padded, count, 4, scales, fit_codes);
    else detail::kquant_fit_scale_min_fast(padded, count, k.sub, k.nmax, k.rmin, k.rdelta, k.nstep, k.use_mad, scales, mins, fit_codes);
    for (int64_t i = 0; i < m; ++i) {
      kquant_block* b = out + where[i];
      *b = kquant_block{};
      std::copy(fit_codes + i * kSuperBlock, fit_codes + (i + 1) * kSuperBlock, b->q);
      finish_block(f, padded + i * kSuperBlock, scales + i * subs, mins + i * subs, b, /*fast=*/true);
    }
  }
}

void kquant_quantize_block(const format& f, const float* x, int64_t n, kquant_block* out) {
  check_block_args("kquant_quantize_block", f, n);
  if (n == 0) return kquant_quantize_block_ref(f, x, 0, out);  // one all-zero super-block (a run of 0 values has none)
  kquant_quantize_super_blocks(f, x, n, out);
}

group_scale kquant_sub_scale(const format& f, float d, float dmin, int32_t sc, int32_t m) {
  group_scale gs;
  gs.nonfinite = std::isnan(d);
  gs.stored = static_cast<float>(sc);
  gs.scale = d * static_cast<float>(sc);  // ggml: d1 = d * sc (exact: 11 x 8 significant bits)
  if (kquant_has_min(f)) {
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

void kquant_check_stored_codes(const quantized_tensor& q, const std::string& where) {
  if (!is_kquant(q.fmt)) return;
  const auto [lo, hi] = sub_block_code_range(q.fmt.named);  // the min codes share the scales' range
  for (size_t i = 0; i < q.scales.size(); ++i) {
    const float s = q.scales[i];
    // Written as a negation so that NaN fails too.
    if (!(s >= float(lo) && s <= float(hi) && s == std::nearbyint(s)))
      throw error(fmt::format("{}: sub-block scale code {} at index {} is not an integer in {}'s range {}..{}", where, s,
                              i, format_name(q.fmt), lo, hi));
  }
  if (!kquant_has_min(q.fmt)) return;
  for (size_t i = 0; i < q.zero_points.size(); ++i)
    if (q.zero_points[i] < 0 || q.zero_points[i] > hi)
      throw error(fmt::format("{}: sub-block min code {} at index {} is outside {}'s range 0..{}", where,
                              q.zero_points[i], i, format_name(q.fmt), hi));
}

void kquant_fake_quantize_rows(const format& f, const float* in, float* out, int64_t cols, int64_t r0, int64_t r1) {
  const int64_t sub = f.group_size;
  const bool with_min = kquant_has_min(f);
  const int32_t z = symmetric_zero(f);
  kquant_block blocks[kBatchSuperBlocks];
  constexpr int64_t kBatchCols = kBatchSuperBlocks * kSuperBlock;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t b0 = 0; b0 < cols; b0 += kBatchCols) {
      // The batch's values are read before y is written (in == out is allowed).
      kquant_quantize_super_blocks(f, in + r * cols + b0, std::min(kBatchCols, cols - b0), blocks);
      for (int64_t c0 = b0; c0 < std::min(cols, b0 + kBatchCols); c0 += kSuperBlock) {
        const kquant_block& b = blocks[(c0 - b0) / kSuperBlock];
        const int64_t n = std::min<int64_t>(kSuperBlock, cols - c0);
        float* y = out + r * cols + c0;
        for (int64_t j = 0; j * sub < n; ++j) {
          const group_scale gs = kquant_sub_scale(f, b.d, b.dmin, b.sc[j], b.m[j]);
          const int64_t i0 = j * sub, i1 = std::min(n, i0 + sub);
          if (gs.nonfinite) {
            std::fill(y + i0, y + i1, canonical_nan());
            continue;
          }
          if (with_min)
            for (int64_t i = i0; i < i1; ++i) y[i] = value_minus_offset(gs, b.q[i]);
          else
            for (int64_t i = i0; i < i1; ++i) y[i] = kquant_symmetric_value(gs, static_cast<int32_t>(b.q[i]) - z);
        }
      }
    }
  }
}

void kquant_dequantize_rows(const quantized_tensor& q, int64_t r0, int64_t r1, float* out) {
  const format& f = q.fmt;
  const bool with_min = kquant_has_min(f);
  const int bits = f.element.bits;
  const uint32_t sign = 1u << (bits - 1);
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
      if (with_min) {
        for (int64_t c = c0; c < c1; ++c) y[c] = value_minus_offset(gs, packed_code(codes, c, bits));
        continue;
      }
      // The bits-wide two's complement of q - z, sign-extended.
      for (int64_t c = c0; c < c1; ++c)
        y[c] = kquant_symmetric_value(gs, static_cast<int32_t>(packed_code(codes, c, bits) ^ sign) - static_cast<int32_t>(sign));
    }
  }
}

namespace {

// The scales of super-block s of row r of q (from allocate) from b: the super-scales, and the
// sub-block scale and min codes of its sub-blocks.
void store_block_scales(const kquant_block& b, int64_t r, int64_t s, quantized_tensor& q) {
  const format& f = q.fmt;
  const int64_t sub = f.group_size, nsb = kquant_super_blocks_per_row(q.cols), gpr = q.groups_per_row();
  const int nss = kquant_super_scale_count(f);
  const bool with_min = kquant_has_min(f);
  const int64_t c0 = s * kSuperBlock;
  float* ss = q.super_scales.data() + (r * nsb + s) * nss;
  ss[0] = b.d;
  if (with_min) ss[1] = b.dmin;
  for (int64_t g = c0 / sub; g < std::min(gpr, (c0 + kSuperBlock) / sub); ++g) {
    const int64_t j = g - c0 / sub;
    q.scales[static_cast<size_t>(r * gpr + g)] = static_cast<float>(b.sc[j]);
    if (with_min) q.zero_points[static_cast<size_t>(r * gpr + g)] = b.m[j];
  }
}

}  // namespace

void kquant_quantize_rows_ref(const float* x, int64_t r0, int64_t r1, quantized_tensor& q) {
  const format& f = q.fmt;
  const int64_t cols = q.cols, nsb = kquant_super_blocks_per_row(cols);
  const bool with_min = kquant_has_min(f);
  kquant_block b;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t s = 0; s < nsb; ++s) {
      const int64_t c0 = s * kSuperBlock, n = std::min<int64_t>(kSuperBlock, cols - c0);
      kquant_quantize_block_ref(f, x + r * cols + c0, n, &b);
      store_block_scales(b, r, s, q);
      for (int64_t i = 0; i < n; ++i) q.set_code(r, c0 + i, lowbit_code(f, with_min, b.q[i]));
    }
  }
}

void kquant_quantize_rows(const float* x, int64_t r0, int64_t r1, quantized_tensor& q) {
  const format& f = q.fmt;
  const int64_t cols = q.cols, nsb = kquant_super_blocks_per_row(cols);
  const bool with_min = kquant_has_min(f);
  const int bits = f.element.bits;
  kquant_block blocks[kBatchSuperBlocks];
  uint32_t codes[kSuperBlock];
  constexpr int64_t kBatchCols = kBatchSuperBlocks * kSuperBlock;
  for (int64_t r = r0; r < r1; ++r) {
    uint8_t* row = q.codes.data() + r * q.row_bytes;
    for (int64_t b0 = 0; b0 < cols; b0 += kBatchCols) {
      kquant_quantize_super_blocks(f, x + r * cols + b0, std::min(kBatchCols, cols - b0), blocks);
      for (int64_t s = b0 / kSuperBlock; s < std::min(nsb, (b0 + kBatchCols) / kSuperBlock); ++s) {
        const kquant_block& b = blocks[s - b0 / kSuperBlock];
        store_block_scales(b, r, s, q);
        // A super-block's codes start on a byte: 256 * bits bits.
        const int64_t c0 = s * kSuperBlock, n = std::min<int64_t>(kSuperBlock, cols - c0);
        for (int64_t i = 0; i < n; ++i) codes[i] = lowbit_code(f, with_min, b.q[i]);
        pack_codes(codes, n, bits, row + c0 * bits / 8);
      }
    }
  }
}

}  // namespace lowbit

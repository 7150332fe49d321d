// Reference quantize / dequantize / fake-quantize: scalar, single-threaded, one value at a time.
// This file is the specification the fast kernels are tested against; it does not vectorise,
// thread or special-case anything beyond what the conventions say.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "lowbit/base/error.hpp"
#include "lowbit/kernels/element_ops.hpp"
#include "lowbit/kernels/kquant.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit {

// ---- one value ---------------------------------------------------------------------------------
namespace {

uint32_t quantize_value(const format& f, float x, const group_scale& gs, float u, rounding_mode mode) {
  if (gs.nonfinite) return 0;  // the NaN scale makes every value of the group NaN
  const element_format& e = f.element;
  switch (f.named) {
    case preset::q4_0:
    case preset::q5_0: {
      // ggml: xi = MIN(15, (int8_t)(x * id + 8.5f)) (q5_0: 31, 16.5f); the cast truncates toward
      // zero. With a subnormal d, id = 1/d is Inf and v can be +-Inf or NaN (undefined in ggml's
      // C): lowbit clamps to 0..2^bits - 1 and maps NaN to the zero point (the value 0).
      const float v = x * gs.multiplier + (static_cast<float>(gs.zero_point) + 0.5f);
      if (std::isnan(v)) return static_cast<uint32_t>(gs.zero_point);
      const float maxq = static_cast<float>((1 << e.bits) - 1);
      return static_cast<uint32_t>(std::clamp(std::trunc(v), 0.0f, maxq));
    }
    case preset::q4_1:
    case preset::q5_1: {
      // ggml: xi = (uint8_t)((x - min) * id + 0.5f) (q4_1 also MIN(15, ...)), never outside
      // 0..2^bits - 1 for x in [min, max]. Beyond ggml's domain (x outside the block's range, as
      // GPTQ's updated weights; an Inf id from a subnormal d) lowbit clamps, and NaN (0 * Inf)
      // becomes code 0.
      const float v = (x - gs.min) * gs.multiplier + 0.5f;
      if (std::isnan(v)) return 0;
      const float maxq = static_cast<float>((1 << e.bits) - 1);
      return static_cast<uint32_t>(std::clamp(std::trunc(v), 0.0f, maxq));
    }
    case preset::q8_0: {
      // roundf(x * id): ties away. With a subnormal d, id = 1/d is Inf (undefined in ggml's C):
      // lowbit clamps to -127..127 and maps NaN to 0.
      const float v = std::round(x * gs.multiplier);
      const int q = std::isnan(v) ? 0 : static_cast<int>(std::clamp(v, -127.0f, 127.0f));
      return static_cast<uint32_t>(q) & 0xffu;
    }
    case preset::q2_k:
    case preset::q4_k:
    case preset::q5_k: {
      // quantize_row_q{2,4,5}_K_ref's last pass: l = nearest_int((x + dmin*m) / (d*sc)), 0..2^bits - 1.
      // A sub-block whose scale is 0 holds -dmin*m whatever its codes: code 0.
      if (gs.scale == 0) return 0;
      return static_cast<uint32_t>(std::clamp(ggml_nearest_int((x + gs.offset) / gs.scale), 0, (1 << e.bits) - 1));
    }
    case preset::q3_k:
    case preset::q6_k: {
      // quantize_row_q3_K_ref / _q6_K_ref: l = nearest_int(x / (d*sc)) in -z..z-1 (z = 4, 32),
      // stored as bits-wide two's complement.
      if (gs.scale == 0) return 0;
      const int z = 1 << (e.bits - 1);
      return static_cast<uint32_t>(std::clamp(ggml_nearest_int(x / gs.scale), -z, z - 1)) & ((1u << e.bits) - 1u);
    }
    default: break;
  }
  if (f.gran == granularity::none) return encode_ref(e, x, mode, u);
  if (e.kind == element_kind::uint_asym) {
    const float maxq = std::ldexp(1.0f, e.bits) - 1.0f;
    const float r = round_to_integer_ref(x / gs.scale, mode, u);
    return static_cast<uint32_t>(std::clamp(r + static_cast<float>(gs.zero_point), 0.0f, maxq));
  }
  if (f.power != 0) {
    const float y = x / gs.scale;
    const float t = std::copysign(std::pow(std::fabs(y), static_cast<float>(f.power)), y);
    return encode_ref(e, t * static_cast<float>(element_max(f)), mode, u);
  }
  return encode_ref(e, x / gs.scale, mode, u);
}

}  // namespace

uint32_t quantize_value_ref(const format& f, float x, const group_scale& gs, float u) {
  return quantize_value(f, x, gs, u, f.rounding);
}

float dequantize_value_ref(const format& f, uint32_t code, const group_scale& gs) {
  if (gs.nonfinite) return canonical_nan();
  const element_format& e = f.element;
  if (code == kNoCode && e.bits < 32) return canonical_nan();  // a NaN the format has no code for
  if (kquant_has_min(f) || has_block_min(f)) return value_minus_offset(gs, code);
  // q3_k's int3 / q6_k's int6 element decodes to q - z (decode_ref).
  if (is_kquant(f)) return kquant_symmetric_value(gs, static_cast<int32_t>(decode_ref(e, code)));
  if (e.kind == element_kind::uint_asym || has_fixed_zero_point(f))
    return (static_cast<float>(code) - static_cast<float>(gs.zero_point)) * gs.scale;
  const float q = decode_ref(e, code);
  if (f.gran == granularity::none) return q;
  if (f.power != 0) {
    const float w = q / static_cast<float>(element_max(f));
    return std::copysign(std::pow(std::fabs(w), static_cast<float>(1.0 / f.power)), w) * gs.scale;
  }
  return q * gs.scale;
}

float fake_quantize_value_ref(const format& f, float x, const group_scale& gs, float u, rounding_mode mode) {
  return dequantize_value_ref(f, quantize_value(f, x, gs, u, mode), gs);
}

// ---- layout --------------------------------------------------------------------------------------
int64_t groups_per_row(const format& f, int64_t cols) {
  switch (f.gran) {
    case granularity::group: return (cols + f.group_size - 1) / f.group_size;
    case granularity::row: return 1;
    case granularity::tensor: return 1;
    case granularity::none: return 0;
  }
  return 0;
}

bool has_block_min(const format& f) { return f.named == preset::q4_1 || f.named == preset::q5_1; }

bool has_fixed_zero_point(const format& f) { return f.named == preset::q4_0 || f.named == preset::q5_0; }

bool stores_zero_points(const format& f) {
  return (f.element.kind == element_kind::uint_asym && !has_block_min(f)) || has_fixed_zero_point(f);
}

void pack_codes(const uint32_t* codes, int64_t n, int bits, uint8_t* dst) {
  if (bits == 8) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<uint8_t>(codes[j]);
    return;
  }
  if (bits == 4) {
    for (int64_t j = 0; j + 1 < n; j += 2) dst[j / 2] = static_cast<uint8_t>((codes[j] & 0xf) | (codes[j + 1] << 4));
    if (n & 1) dst[n / 2] = static_cast<uint8_t>(codes[n - 1] & 0xf);
    return;
  }
  // General widths: a 64-bit accumulator, flushed a byte at a time.
  uint64_t acc = 0;
  int have = 0;
  int64_t out = 0;
  const uint64_t mask = bits == 32 ? 0xffffffffu : (uint64_t{1} << bits) - 1;
  for (int64_t j = 0; j < n; ++j) {
    acc |= (codes[j] & mask) << have;
    have += bits;
    while (have >= 8) {
      dst[out++] = static_cast<uint8_t>(acc);
      acc >>= 8;
      have -= 8;
    }
  }
  if (have > 0) dst[out] = static_cast<uint8_t>(acc);
}

void unpack_codes(const uint8_t* src, int64_t n, int bits, uint32_t* codes) {
  if (bits == 8) {
    for (int64_t j = 0; j < n; ++j) codes[j] = src[j];
    return;
  }
  if (bits == 4) {
    for (int64_t j = 0; j < n; ++j) codes[j] = (src[j / 2] >> ((j & 1) * 4)) & 0xfu;
    return;
  }
  uint64_t acc = 0;
  int have = 0;
  int64_t in = 0;
  const uint64_t mask = bits == 32 ? 0xffffffffu : (uint64_t{1} << bits) - 1;
  for (int64_t j = 0; j < n; ++j) {
    while (have < bits) {
      acc |= static_cast<uint64_t>(src[in++]) << have;
      have += 8;
    }
    codes[j] = static_cast<uint32_t>(acc & mask);
    acc >>= bits;
    have -= bits;
  }
}

quantized_tensor quantized_tensor::allocate(const format& f, int64_t rows, int64_t cols) {
  quantized_tensor q;
  q.fmt = f;
  q.rows = rows;
  q.cols = cols;
  q.row_bytes = (cols * f.element.bits + 7) / 8;
  q.codes.assign(static_cast<size_t>(rows * q.row_bytes), 0);
  const size_t nscales = f.gran == granularity::tensor ? 1 : static_cast<size_t>(rows * lowbit::groups_per_row(f, cols));
  q.scales.assign(nscales, 1.0f);
  if (stores_zero_points(f)) q.zero_points.assign(nscales, 0);
  if (is_kquant(f))
    q.super_scales.assign(static_cast<size_t>(rows * kquant_super_blocks_per_row(cols) * kquant_super_scale_count(f)), 0.0f);
  if (has_block_min(f)) q.super_scales.assign(nscales, 0.0f);
  return q;
}

int64_t quantized_tensor::groups_per_row() const { return lowbit::groups_per_row(fmt, cols); }

int64_t quantized_tensor::group_of(int64_t c) const {
  return fmt.gran == granularity::group ? c / fmt.group_size : 0;
}

uint32_t quantized_tensor::code(int64_t r, int64_t c) const {
  const int b = fmt.element.bits;
  const uint8_t* row = codes.data() + r * row_bytes;
  uint64_t bit = static_cast<uint64_t>(c) * b;
  uint64_t v = 0;
  for (int k = 0; k < b; ++k, ++bit) v |= static_cast<uint64_t>((row[bit >> 3] >> (bit & 7)) & 1u) << k;
  return static_cast<uint32_t>(v);
}

void quantized_tensor::set_code(int64_t r, int64_t c, uint32_t v) {
  const int b = fmt.element.bits;
  uint8_t* row = codes.data() + r * row_bytes;
  uint64_t bit = static_cast<uint64_t>(c) * b;
  for (int k = 0; k < b; ++k, ++bit) {
    const uint8_t m = static_cast<uint8_t>(1u << (bit & 7));
    if ((v >> k) & 1u) row[bit >> 3] |= m;
    else row[bit >> 3] &= static_cast<uint8_t>(~m);
  }
}

float quantized_tensor::scale_at(int64_t r, int64_t c) const {
  switch (fmt.gran) {
    case granularity::none: return 1.0f;
    case granularity::tensor: return scales[0];
    case granularity::row: return scales[static_cast<size_t>(r)];
    case granularity::group: return scales[static_cast<size_t>(r * groups_per_row() + group_of(c))];
  }
  return 1.0f;
}

int32_t quantized_tensor::zero_point_at(int64_t r, int64_t c) const {
  if (zero_points.empty()) return 0;
  switch (fmt.gran) {
    case granularity::tensor: return zero_points[0];
    case granularity::row: return zero_points[static_cast<size_t>(r)];
    case granularity::group: return zero_points[static_cast<size_t>(r * groups_per_row() + group_of(c))];
    case granularity::none: return 0;
  }
  return 0;
}

size_t quantized_tensor::storage_bytes() const {
  if (is_kquant(fmt))  // ggml's blocks, one per 256 values
    return static_cast<size_t>(rows * kquant_super_blocks_per_row(cols) * kquant_block_bytes(fmt));
  // q4_1/q5_1's min is an fp16 like the scale; q4_0/q5_0's fixed zero point is not stored.
  const size_t per_group = has_block_min(fmt) ? 2 : 1;
  if (has_block_min(fmt) || has_fixed_zero_point(fmt))
    return codes.size() + scales.size() * per_group * static_cast<size_t>(scale_bits(fmt)) / 8;
  const double scale_bytes = static_cast<double>(scales.size()) * scale_bits(fmt) / 8.0;
  const double zp_bytes = static_cast<double>(zero_points.size()) * fmt.element.bits / 8.0;
  return codes.size() + static_cast<size_t>(std::ceil(scale_bytes + zp_bytes)) +
         (fmt.named == preset::nvfp4 ? 4 : 0);
}

bool quantized_tensor::operator==(const quantized_tensor& o) const {
  auto same_floats = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  };
  return fmt == o.fmt && rows == o.rows && cols == o.cols && row_bytes == o.row_bytes &&
         codes == o.codes && same_floats(scales, o.scales) && zero_points == o.zero_points &&
         same_floats(super_scales, o.super_scales) &&
         std::bit_cast<uint32_t>(tensor_scale) == std::bit_cast<uint32_t>(o.tensor_scale);
}

// ---- whole tensors ----------------------------------------------------------------------------------
namespace {

void check_shape(int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0)
    throw shape_error(fmt::format("tensor shape [{}, {}] has a negative dimension", rows, cols));
}

// nvfp4's first level: the tensor's amax over finite values.
float finite_amax_ref(const float* x, int64_t n) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(x[i])) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

// Visits every group of rows [r0, r1) of the tensor in row-major order with its scale:
// visit(row, c0, c1, group_index, scale). A per-tensor scale still comes from all rows.
template <typename Visit>
void for_each_group_ref(const float* x, int64_t rows, int64_t cols, int64_t r0, int64_t r1, const format& f,
                        float tensor_scale, Visit&& visit) {
  if (f.gran == granularity::none) {
    for (int64_t r = r0; r < r1; ++r) visit(r, int64_t{0}, cols, int64_t{-1}, group_scale{});
    return;
  }
  if (f.gran == granularity::tensor) {
    const int64_t n = rows * cols;
    const group_scale gs = choose_scale(f, group_stats_ref(x, n), x, n, tensor_scale);
    for (int64_t r = r0; r < r1; ++r) visit(r, int64_t{0}, cols, int64_t{0}, gs);
    return;
  }
  const int64_t gpr = groups_per_row(f, cols);
  const int64_t k = f.gran == granularity::row ? cols : f.group_size;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t g = 0; g < gpr; ++g) {
      const int64_t c0 = g * k, c1 = std::min(cols, c0 + k);
      const float* p = x + r * cols + c0;
      const group_scale gs = choose_scale(f, group_stats_ref(p, c1 - c0), p, c1 - c0, tensor_scale);
      visit(r, c0, c1, r * gpr + g, gs);
    }
  }
}

float draw(const format& f, uint64_t tensor_id, int64_t index) {
  return f.rounding == rounding_mode::sr ? sr_uniform(f, tensor_id, static_cast<uint64_t>(index)) : 0.0f;
}

}  // namespace

quantized_tensor quantize_ref(const float* x, int64_t rows, int64_t cols, const format& f, uint64_t tensor_id) {
  check_shape(rows, cols);
  quantized_tensor q = quantized_tensor::allocate(f, rows, cols);
  if (is_kquant(f)) {  // whole super-blocks at a time (ggml's algorithm), kquant.cpp
    kquant_quantize_rows_ref(x, 0, rows, q);
    return q;
  }
  if (f.named == preset::nvfp4) q.tensor_scale = nvfp4_tensor_scale(finite_amax_ref(x, rows * cols));
  for_each_group_ref(x, rows, cols, 0, rows, f, q.tensor_scale,
                     [&](int64_t r, int64_t c0, int64_t c1, int64_t gi, const group_scale& gs) {
                       if (gi >= 0) store_group_scale(q, gi, gs);
                       for (int64_t c = c0; c < c1; ++c) {
                         const int64_t i = r * cols + c;
                         const uint32_t code = quantize_value_ref(f, x[i], gs, draw(f, tensor_id, i));
                         if (code == kNoCode && f.element.bits < 32)
                           throw error(fmt::format(
                               "element [{}, {}] is NaN and {} has no NaN code; quantize it with a scaled "
                               "format (a group's NaN becomes a NaN scale) or clean the input",
                               r, c, format_name(f)));
                         q.set_code(r, c, code);
                       }
                     });
  return q;
}

group_scale stored_group_scale(const quantized_tensor& q, int64_t r, int64_t c) {
  if (is_kquant(q.fmt)) return kquant_stored_scale(q, r, c);
  group_scale gs;
  const float s = q.scale_at(r, c);
  gs.nonfinite = std::isnan(s);
  gs.stored = s;
  gs.scale = q.fmt.named == preset::nvfp4 ? q.tensor_scale * s : s;
  gs.zero_point = q.zero_point_at(r, c);
  if (has_block_min(q.fmt)) gs.offset = -q.super_scales[static_cast<size_t>(r * q.groups_per_row() + q.group_of(c))];
  return gs;
}

void store_group_scale(quantized_tensor& q, int64_t gi, const group_scale& gs) {
  const size_t i = static_cast<size_t>(gi);
  q.scales[i] = gs.nonfinite ? canonical_nan() : gs.stored;
  if (!q.zero_points.empty()) q.zero_points[i] = gs.zero_point;
  if (has_block_min(q.fmt)) q.super_scales[i] = gs.nonfinite ? canonical_nan() : -gs.offset;
}

void dequantize_ref(const quantized_tensor& q, float* out) {
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c)
      out[r * q.cols + c] = dequantize_value_ref(q.fmt, q.code(r, c), stored_group_scale(q, r, c));
}

void fake_quantize_rows_ref(const float* in, float* out, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                            const format& f, uint64_t tensor_id, sr_counters counters) {
  check_shape(rows, cols);
  if (is_kquant(f)) {  // dequantize(quantize(rows)): the super-block algorithm picks the codes
    quantized_tensor q = quantized_tensor::allocate(f, r1 - r0, cols);
    kquant_quantize_rows_ref(in + r0 * cols, 0, r1 - r0, q);
    dequantize_ref(q, out + r0 * cols);
    return;
  }
  // Scales are chosen from the input before anything is written (in == out is allowed).
  const float tensor_scale = f.named == preset::nvfp4 ? nvfp4_tensor_scale(finite_amax_ref(in, rows * cols)) : 1.0f;
  std::vector<float> result(static_cast<size_t>((r1 - r0) * cols));
  for_each_group_ref(in, rows, cols, r0, r1, f, tensor_scale,
                     [&](int64_t r, int64_t c0, int64_t c1, int64_t, const group_scale& gs) {
                       for (int64_t c = c0; c < c1; ++c) {
                         const int64_t i = r * cols + c;
                         const int64_t counter = static_cast<int64_t>(counters.of(r, cols)) + c;
                         result[static_cast<size_t>(i - r0 * cols)] =
                             fake_quantize_value_ref(f, in[i], gs, draw(f, tensor_id, counter), f.rounding);
                       }
                     });
  std::copy(result.begin(), result.end(), out + r0 * cols);
}

void fake_quantize_ref(const float* in, float* out, int64_t rows, int64_t cols, const format& f, uint64_t tensor_id,
                       sr_counters counters) {
  fake_quantize_rows_ref(in, out, rows, cols, 0, rows, f, tensor_id, counters);
}

// The definition: transpose, quantize the rows of the transpose, transpose back.
void fake_quantize_columns_ref(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                               uint64_t tensor_id, sr_counters counters) {
  check_shape(rows, cols);
  std::vector<float> t(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[static_cast<size_t>(c * rows + r)] = in[r * cols + c];
  fake_quantize_ref(t.data(), t.data(), cols, rows, f, tensor_id, counters);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = t[static_cast<size_t>(c * rows + r)];
}

// ---- metrics ------------------------------------------------------------------------------------------
error_metrics compare(const float* x, const float* q, int64_t n) {
  error_metrics m;
  double signal = 0, noise = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(q[i])) continue;
    const double d = static_cast<double>(x[i]) - q[i];
    signal += static_cast<double>(x[i]) * x[i];
    noise += d * d;
    m.max_abs = std::max(m.max_abs, std::fabs(d));
    ++m.count;
  }
  m.mse = m.count ? noise / static_cast<double>(m.count) : 0;
  m.sqnr_db = noise > 0 ? 10 * std::log10(signal / noise) : std::numeric_limits<double>::infinity();
  return m;
}

double kl_divergence(const float* p, const float* q, int64_t n) {
  double sp = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    sp += p[i];
    sq += q[i];
  }
  if (!(sp > 0) || !(sq > 0)) throw error("kl_divergence needs two distributions with positive mass");
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = p[i] / sp, b = q[i] / sq;
    if (a > 0) kl += a * std::log(a / (b > 0 ? b : 1e-300));
  }
  return kl;
}

}  // namespace lowbit

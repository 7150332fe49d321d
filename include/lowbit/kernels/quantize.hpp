// Quantize / dequantize / fake-quantize of row-major float32 tensors [rows, cols], groups along
// cols (the reduction axis). Every kernel has a scalar `_ref` twin that reads like the
// specification (docs/conventions.md §4-10); the fast versions (Highway SIMD + OpenMP) must equal it bit
// for bit on every input.
#pragma once

#include <cstdint>
#include <vector>

#include "lowbit/formats/format.hpp"

namespace lowbit {

// A tensor in a quantized format: packed codes plus the scales (and zero points) of its groups.
//   codes  : each row starts on a byte boundary; element j of a row occupies bits
//            [j*b, (j+1)*b) of the row, least significant bit first (b = element bits)
//   scales : one float per group, row-major over (row, group); exact values of the scale format
//            (NaN for a group that held NaN/Inf, docs/conventions.md §4)
//   zero_points : for uint elements (asymmetric), one per group (q4_0 / q5_0: their fixed 8 / 16)
//   tensor_scale: the second-level FP32 scale of nvfp4 (1 otherwise)
//   super_scales: the K-quants (q2_k ... q6_k), the fp16 scales of each 256-value super-block,
//                 (d, dmin) or (d); then `scales` holds the integer sub-block scale codes and
//                 zero_points the sub-block min codes (kernels/kquant.hpp).
//                 q4_1 / q5_1: each block's fp16 min m, one per group (value = q * d + m, d in
//                 `scales`; no zero points)
struct quantized_tensor {
  format fmt;
  int64_t rows = 0, cols = 0;
  int64_t row_bytes = 0;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  float tensor_scale = 1.0f;
  std::vector<float> super_scales;

  // Zeroed codes and unit scales (plus zero points for uint, q4_0/q5_0 and the K-quants with a
  // min; super-scales for the K-quants, q4_1 and q5_1) for [rows, cols] in f.
  static quantized_tensor allocate(const format& f, int64_t rows, int64_t cols);

  uint32_t code(int64_t r, int64_t c) const;
  void set_code(int64_t r, int64_t c, uint32_t v);
  int64_t groups_per_row() const;
  int64_t group_of(int64_t c) const;  // index of c's group within its row
  float scale_at(int64_t r, int64_t c) const;
  int32_t zero_point_at(int64_t r, int64_t c) const;
  size_t storage_bytes() const;  // codes + scales as the format stores them
  bool operator==(const quantized_tensor&) const;
};

// Number of groups per row and the columns [c0, c1) of group g of a row.
int64_t groups_per_row(const format& f, int64_t cols);

// ggml's blocks of 32 with a min, q4_1 and q5_1: value = q * d + m, m in super_scales.
bool has_block_min(const format& f);
// ggml's q4_0 / q5_0: codes q - z with the fixed zero point z = 8 / 16 in zero_points.
bool has_fixed_zero_point(const format& f);
// Whether quantized_tensor::zero_points holds one per group (uint elements, q4_0/q5_0, the
// K-quants with a min).
bool stores_zero_points(const format& f);

// The group_scale a stored tensor implies for element (r, c): what dequantize_value_ref takes.
struct group_scale;
group_scale stored_group_scale(const quantized_tensor& q, int64_t r, int64_t c);
// Stores a group's scale as quantize_ref does: `scales` (NaN for a non-finite group), the zero
// point where the format keeps one, q4_1/q5_1's min. gi = r * groups_per_row + g.
void store_group_scale(quantized_tensor& q, int64_t gi, const group_scale& gs);

// Bit packing of one row of codes (the layout of quantized_tensor::codes): element j at bits
// [j*bits, (j+1)*bits), least significant bit first. dst must hold ceil(n*bits/8) bytes.
void pack_codes(const uint32_t* codes, int64_t n, int bits, uint8_t* dst);
void unpack_codes(const uint8_t* src, int64_t n, int bits, uint32_t* codes);

// ---- reference kernels (the specification) -------------------------------------------------
quantized_tensor quantize_ref(const float* x, int64_t rows, int64_t cols, const format& f,
                              uint64_t tensor_id = 0);
void dequantize_ref(const quantized_tensor& q, float* out);
// Stochastic rounding's counter of element (r, c) of the tensor as the kernel groups it is
// base + r * row_stride + c (row_stride = kOwnRowLength, or any negative: cols, i.e. the element's
// own index). A shard of a larger tensor (data-parallel training: one rank's tokens) then draws
// what the whole tensor would; the default is the tensor itself.
struct sr_counters {
  static constexpr int64_t kOwnRowLength = -1;  // row_stride = the kernel's own cols
  uint64_t base = 0;
  int64_t row_stride = kOwnRowLength;
  uint64_t of(int64_t r, int64_t cols) const {
    return base + static_cast<uint64_t>(r) * static_cast<uint64_t>(row_stride < 0 ? cols : row_stride);
  }
};

// out = dequantize(quantize(in)); in == out is allowed.
void fake_quantize_ref(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                       uint64_t tensor_id = 0, sr_counters counters = {});
// Groups along rows instead of columns: out = Q(in^T)^T for in [rows, cols] (the element index
// of stochastic rounding is the transposed tensor's, c * rows + r). Training quantizes the
// token-grouped operands of the dW GEMM and W grouped along its outputs this way, without a
// transposed copy. in == out is allowed.
// `counters` describe the transposed tensor [cols, rows] (a shard of tokens: base = its first
// token, row_stride = all tokens).
void fake_quantize_columns_ref(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                               uint64_t tensor_id = 0, sr_counters counters = {});

// ---- fast kernels (SIMD + threads; bit-exact with the reference) ------------------------------
quantized_tensor quantize(const float* x, int64_t rows, int64_t cols, const format& f,
                          uint64_t tensor_id = 0);
void dequantize(const quantized_tensor& q, float* out);
void fake_quantize(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                   uint64_t tensor_id = 0, sr_counters counters = {});
void fake_quantize_columns(const float* in, float* out, int64_t rows, int64_t cols, const format& f,
                           uint64_t tensor_id = 0, sr_counters counters = {});

// Forces every fast kernel onto its _ref twin (for debugging; docs/architecture.md §6).
void set_use_ref(bool use_ref);
bool use_ref();

// ---- error metrics ----------------------------------------------------------------------------
struct error_metrics {
  double mse = 0;        // mean (x - q)^2
  double sqnr_db = 0;    // 10 log10(E[x^2] / E[(x - q)^2]); +inf when exact
  double max_abs = 0;    // max |x - q|
  int64_t count = 0;     // finite pairs compared
};
error_metrics compare(const float* x, const float* q, int64_t n);
// KL(P || Q) of two discrete distributions given as non-negative weights (normalised here).
double kl_divergence(const float* p, const float* q, int64_t n);

}  // namespace lowbit

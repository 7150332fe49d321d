// Packed low-bit matrix products: y[n, rows] = x[n, cols] W[rows, cols]^T with W kept as its codes
// and scales (a linear layer's forward on a quantized weight, without a float32 copy of W).
// docs/architecture.md "Packed inference", docs/conventions.md "Packed products".
//
// Weights: the block formats whose value is lut[code] x scale, one scale per group along the
// row: ggml's q8_0 and q4_0 (value (q - 8) d), intN/gK and intN/c (symmetric int4, int8),
// OCP mxfp4 (E2M1 x E8M0 per 32), NVIDIA nvfp4 (E2M1 x (FP32 tensor scale x E4M3 per 16)) and
// any other 4-bit element with group or row scales (e2m1/g16:e4m3, nf4/g64, ...). `scales`
// holds each group's multiplier as dequantize_ref forms it (nvfp4: tensor_scale x block scale,
// one float product), so lut[code] x scale is dequantize_ref's value bit for bit.
//
// Two products:
//  * float activations (packed_matmul): y[t, o] is the dot of W's row o (dequantized value
//    w = lut[code] * scale) and x[t] in the pinned lane order of lane_ordered_dot_ref: 16 lane
//    sums, column c into lane c % 16 in order of c (each term w * x rounded, then added), then
//    the lanes halved pairwise (lane k += lane k + 8, then + 4, + 2, + 1). The fast kernels
//    (AVX-512: one register of 16 lanes; AVX2: two of 8, lanes 0-7 and 8-15) follow that order,
//    so they equal dequantize + lane_ordered_matmul_ref bit for bit.
//  * integer activations (packed_matmul_int): x quantized per group of the weight's group size B
//    (B = 32: ggml's q8_0, as llama.cpp's vec_dot_q4_0_q8_0 / q8_0_q8_0; otherwise symmetric
//    int8 with an fp32 scale per group of B, intN/c weights: int8 per token), then per
//    (token, row, group) the exact int32 dot of the integer codes, combined in float as
//    y = sum over groups in order of (sw * sx) * float(dot). The int32 dots are exact, so the
//    fast kernels (AVX-512 VNNI dpbusd; AVX2 madd_epi16 of int16-widened codes) must equal the
//    reference in every accumulator.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit {

// Whether a weight in format f can be packed (packed_matrix); else *why (when given) says why.
bool has_packed_kernel(const format& f, std::string* why = nullptr);
// The formats with a packed kernel, for messages: "q8_0, q4_0, int4/g32, int8/c, mxfp4, nvfp4, ...".
const char* packed_formats_help();

struct packed_matrix {
  format fmt;
  int64_t rows = 0, cols = 0;
  int bits = 0;               // 4 or 8 bits per code
  int64_t group = 0;          // columns per scale (a multiple of 16; cols for row scales)
  int64_t row_bytes = 0;      // quantized_tensor's layout: element j at bits [j*bits, (j+1)*bits)
  std::vector<uint8_t> codes;  // [rows, row_bytes]
  std::vector<float> scales;   // [rows, cols / group]: each group's multiplier
  std::array<float, 16> lut{};  // 4-bit: value of each code before its scale
  bool integer_values = false;  // every code's value is an integer in [-128, 127] (int path)

  int64_t groups_per_row() const { return cols / group; }
  float scale(int64_t r, int64_t c) const { return scales[size_t(r * groups_per_row() + c / group)]; }
  float value(int64_t r, int64_t c) const;  // lut[code] (8-bit: the code as int8)
  size_t bytes() const { return codes.size() + scales.size() * sizeof(float); }
};

// Packs q (throws lowbit::error naming the format when has_packed_kernel says no, or when cols is
// not a multiple of 16). q is taken by value: a caller that is done with its codes moves them in
// (load_packed_model), so a loaded weight's codes are never held twice.
packed_matrix pack_matrix(quantized_tensor q);
// W's values, [rows, cols]: equals dequantize_ref(q) bit for bit (tests check it).
void dequantize_packed(const packed_matrix& w, float* out);

// ---- float activations ------------------------------------------------------------------------
// The pinned order on one dot of length n (a multiple of 16 not required: column c in lane c % 16).
float lane_ordered_dot_ref(const float* w, const float* x, int64_t n);
// y[t, o] = lane_ordered_dot_ref(W[o], x[t]) for float W [rows, cols].
void lane_ordered_matmul_ref(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y);
// The same, AVX-512 or AVX2 (bit for bit): the engine's float GEMV of one token (decode), which reads W in
// place where sgemm would first copy it into packed panels.
void lane_ordered_matmul(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y);
// y[n, rows] = x[n, cols] W^T in the pinned order from the codes (the specification).
void packed_matmul_ref(const packed_matrix& w, const float* x, int64_t n, float* y);
// The same, AVX-512 or AVX2 where the CPU has it (else the reference), threaded over rows when large.
void packed_matmul(const packed_matrix& w, const float* x, int64_t n, float* y);

// ---- integer activations ----------------------------------------------------------------------
struct int8_activations {
  int64_t n = 0, cols = 0, group = 0;
  std::vector<int8_t> q;     // [n, cols]
  std::vector<float> scale;  // [n, cols / group]
};
// x [n, cols] quantized per group of `group` columns: 32 -> ggml's q8_0 (lowbit's q8_0: fp16
// d = amax / 127, q = roundf(x / d)); otherwise int8 with an fp32 scale amax / 127 per group
// (lowbit's int8/gK, group == cols: int8/c).
int8_activations quantize_activations(const float* x, int64_t n, int64_t cols, int64_t group);
// dots[(t * rows + o) * groups + g] = sum over group g of the integer values of W and x (exact).
void packed_int_dots_ref(const packed_matrix& w, const int8_activations& a, int32_t* dots);
// y[t, o] = sum over g in order of (sw[o, g] * sx[t, g]) * float(dot).
void packed_matmul_int_ref(const packed_matrix& w, const int8_activations& a, float* y);
// The longest group whose exact dot of int8 values fits an int32: 128 * 128 * group <= 2^31 - 1
// (longer groups, only /c rows of more than 131,071 columns, are refused; the engine keeps float
// activations for them).
constexpr int64_t kMaxIntDotGroup = 131071;
void packed_matmul_int(const packed_matrix& w, const int8_activations& a, float* y);

// Which fast path runs: "avx512", "avx512-vnni" (packed_matmul_int), "avx2" (no AVX-512; the
// integer product also on AVX-512 without VNNI) or "scalar" (the references: no AVX2, or use_ref()).
std::string packed_kernel_target(bool integer);
// The packed kernels this CPU runs, best first ("avx512", "avx2", "scalar"), and (tests) a cap on
// the one the products take: force_packed_kernel_target("avx2") runs the AVX2 kernels on an
// AVX-512 CPU, "" goes back to the best. Throws for a name not in packed_kernel_targets().
std::vector<std::string> packed_kernel_targets();
void force_packed_kernel_target(const std::string& target);

}  // namespace lowbit

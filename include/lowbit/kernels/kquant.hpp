// ggml's K-quants Q4_K and Q6_K (llama.cpp "k-quants", QK_K = 256): rows are cut into
// super-blocks of 256 values, each with fp16 super-scales and small integer sub-block scales.
//
//   q4_k: 8 sub-blocks of 32, value = d * sc_j * q - dmin * m_j, q in 0..15, sc_j and m_j 6-bit
//         (0..63), d and dmin fp16 (4.5 bits per weight)
//   q6_k: 16 sub-blocks of 16, value = d * sc_j * (q - 32), q in 0..63, sc_j int8, d fp16
//         (6.5625 bits per weight)
//
// Quantization follows ggml's reference quantize_row_q4_K_ref (make_qkx2_quants per sub-block,
// then the 6-bit scale/min codes) and quantize_row_q6_K_ref (make_qx_quants per sub-block, then
// the int8 scale codes), float operation for float operation, so the codes and scales equal
// ggml's bit for bit (tests/kernels/test_kquant.cpp; the outside check against ggml itself is
// described in README "K-quants").
//
// lowbit's conventions on top of ggml's (README "K-quants"):
//   - a row whose length is not a multiple of 256 ends in a partial super-block, quantized as if
//     zero-padded to 256; only its real columns are stored (GGUF cannot hold it: the export falls
//     back, docs/conventions.md §22);
//   - a super-block holding NaN or Inf gets d = dmin = NaN, sub-block scales/mins 0 and codes 0;
//     every value of it dequantizes to NaN (docs/conventions.md §4, as q4_0/q8_0's NaN groups).
//
// In a quantized_tensor (quantize.hpp) a K-quant is a group format whose group is the sub-block:
//   codes        : q4_k the 4-bit q; q6_k the 6-bit two's complement of q - 32
//   scales       : one per sub-block, the integer scale code sc_j (as a float)
//   zero_points  : q4_k only, one per sub-block, the min code m_j
//   super_scales : per super-block, row-major: q4_k (d, dmin), q6_k (d)
#pragma once

#include <cstdint>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/scale.hpp"

namespace lowbit {

constexpr int kSuperBlock = 256;  // ggml's QK_K

bool is_kquant(const format& f);
// Floats per super-block in quantized_tensor::super_scales: 2 (q4_k: d, dmin) or 1 (q6_k: d).
int kquant_super_scale_count(const format& f);
int64_t kquant_super_blocks_per_row(int64_t cols);

// One super-block as ggml's quantize_row_*_ref leaves it.
struct kquant_block {
  float d = 0, dmin = 0;  // fp16 values (dmin: q4_k); NaN for a super-block holding NaN/Inf
  int32_t sc[16] = {};    // sub-block scale codes: q4_k 0..63 (8 used), q6_k -128..127 (16 used)
  int32_t m[8] = {};      // q4_k sub-block min codes 0..63
  uint8_t q[kSuperBlock] = {};  // ggml's stored codes: q4_k 0..15, q6_k 0..63 (value q - 32)
};

// ggml's K-quant blocks as GGUF stores them (ggml-common.h block_q4_K / block_q6_K), little-endian
// (engine/gguf.cpp packs and unpacks them; storage_bytes counts them).
struct block_q4_k {
  uint16_t d;                       // fp16 super-block scale of the sub-block scales
  uint16_t dmin;                    // fp16 super-block scale of the sub-block mins
  uint8_t scales[12];               // 8 x (6-bit scale sc_j, 6-bit min m_j), get_scale_min_k4's packing
  uint8_t qs[kSuperBlock / 2];      // 4-bit q: per 64 values, byte l = value l | value l + 32 << 4
};
static_assert(sizeof(block_q4_k) == 144, "block_q4_K is 144 bytes");
struct block_q6_k {
  uint8_t ql[kSuperBlock / 2];      // low 4 bits of q: per 128 values, ql[l] = l | l + 64 << 4, ql[l + 32] = l + 32 | l + 96 << 4
  uint8_t qh[kSuperBlock / 4];      // high 2 bits of q: per 128 values, qh[l] = l, l + 32, l + 64, l + 96 at bits 0, 2, 4, 6
  int8_t scales[kSuperBlock / 16];  // int8 sub-block scales sc_j (sub-blocks of 16)
  uint16_t d;                       // fp16 super-block scale
};
static_assert(sizeof(block_q6_k) == 210, "block_q6_K is 210 bytes");

// Quantizes the n <= 256 values x of one super-block (zero-padded to 256) in q4_k or q6_k.
void kquant_quantize_block(const format& f, const float* x, int64_t n, kquant_block* out);

// The group_scale of sub-block j of a super-block: scale = d * sc_j, offset = dmin * m_j (q4_k).
group_scale kquant_sub_scale(const format& f, float d, float dmin, int32_t sc, int32_t m);

struct quantized_tensor;
// The group_scale a stored K-quant tensor implies for column c of row r (its sub-block's).
group_scale kquant_stored_scale(const quantized_tensor& q, int64_t r, int64_t c);

// ggml's nearest_int: round to nearest (ties to even) through the float32 magic 1.5 * 2^23, as
// ggml computes it (an assert bounds |v| <= 4194303 in ggml's debug builds; release builds, and
// this function, keep the bit trick's result for any input).
int ggml_nearest_int(float v);

// Rows [r0, r1) of a K-quant tensor (q from quantized_tensor::allocate): the reference and the
// fast kernels share this per-super-block code.
void kquant_quantize_rows(const float* x, int64_t r0, int64_t r1, quantized_tensor& q);

// A K-quant element's value, the one arithmetic of dequantize_value_ref and the fast decoders.
// ggml's dequantize_row_q4_K: y = d1 * q - m1, d1 = d * sc and m1 = dmin * m (gs.scale, gs.offset).
inline float q4_k_value(const group_scale& gs, uint32_t q) { return gs.scale * static_cast<float>(q) - gs.offset; }
// ggml's dequantize_row_q6_K: y = d * sc * (q - 32), d * sc first (gs.scale); v = q - 32.
inline float q6_k_value(const group_scale& gs, int32_t v) { return gs.scale * static_cast<float>(v); }

// Rows [r0, r1) of a stored K-quant tensor into out (the whole [rows, cols] output), decoded
// straight from the packed codes with dequantize_value_ref's arithmetic; no allocation.
void kquant_dequantize_rows(const quantized_tensor& q, int64_t r0, int64_t r1, float* out);

// out = dequantize(quantize(in)) on rows [r0, r1) of a [rows, cols] tensor (in, out: the whole
// tensor), one super-block at a time from its kquant_block, without a packed tensor: the fast
// fake_quantize (the reference goes through quantize_ref and dequantize_ref). in == out is allowed.
void kquant_fake_quantize_rows(const format& f, const float* in, float* out, int64_t cols, int64_t r0, int64_t r1);

}  // namespace lowbit

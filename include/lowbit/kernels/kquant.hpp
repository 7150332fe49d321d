// ggml's K-quants (llama.cpp "k-quants", QK_K = 256): rows are cut into super-blocks of 256
// values, each with fp16 super-scales and small integer sub-block scales. Two families:
//
//   with a min ("type-1"), value = d * sc_j * q - dmin * m_j, q in 0..2^bits - 1, d, dmin fp16:
//     q2_k: 16 sub-blocks of 16, 2-bit q, 4-bit sc_j and m_j              (2.625 bits per weight)
//     q4_k:  8 sub-blocks of 32, 4-bit q, 6-bit sc_j and m_j              (4.5)
//     q5_k:  8 sub-blocks of 32, 5-bit q, 6-bit sc_j and m_j              (5.5)
//   symmetric ("type-0"), value = d * sc_j * (q - z), z = 2^(bits-1), d fp16:
//     q3_k: 16 sub-blocks of 16, 3-bit q (z = 4), 6-bit signed sc_j (-32..31)  (3.4375)
//     q6_k: 16 sub-blocks of 16, 6-bit q (z = 32), int8 sc_j                  (6.5625)
//
// Quantization follows ggml's reference quantize_row_q{2,3,4,5,6}_K_ref float operation for float
// operation (make_qkx2_quants per sub-block of q2_k / q4_k / q5_k, make_q3_quants for q3_k,
// make_qx_quants for q6_k, then the sub-block scale codes relative to the largest, the fp16
// super-scales, and the codes again with the stored scales), so codes and scales equal ggml's bit
// for bit (tests/kernels/test_kquant.cpp; the outside check against ggml itself is in
// docs/results.md "K-quants against ggml").
//
// lowbit's conventions on top of ggml's (docs/formats.md §1.6):
//   - a row whose length is not a multiple of 256 ends in a partial super-block, quantized as if
//     zero-padded to 256; only its real columns are stored (GGUF cannot hold it: the export falls
//     back, docs/conventions.md §22);
//   - a super-block holding NaN or Inf gets d = dmin = NaN, sub-block scales/mins 0 and lowbit
//     codes 0; every value of it dequantizes to NaN (docs/conventions.md §4, as q4_0/q8_0's NaN
//     groups).
//
// In a quantized_tensor (quantize.hpp) a K-quant is a group format whose group is the sub-block:
//   codes        : with a min, q; symmetric, the bits-wide two's complement of q - z
//   scales       : one per sub-block, the integer scale code sc_j (as a float)
//   zero_points  : with a min only, one per sub-block, the min code m_j
//   super_scales : per super-block, row-major: with a min (d, dmin), symmetric (d)
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/scale.hpp"

namespace lowbit {

constexpr int kSuperBlock = 256;  // ggml's QK_K

bool is_kquant(const format& f);
// q2_k, q4_k, q5_k: a min per sub-block (dmin * m_j subtracted) and zero_points holding m_j.
bool kquant_has_min(const format& f);
// Floats per super-block in quantized_tensor::super_scales: 2 (d, dmin) or 1 (d).
int kquant_super_scale_count(const format& f);
int64_t kquant_super_blocks_per_row(int64_t cols);
// Bytes of one of f's ggml blocks (block_q2_K ... block_q6_K below).
int kquant_block_bytes(const format& f);

// One super-block as ggml's quantize_row_*_ref leaves it.
struct kquant_block {
  float d = 0, dmin = 0;  // fp16 values (dmin: with a min); NaN for a super-block holding NaN/Inf
  int32_t sc[16] = {};    // sub-block scale codes: q2_k 0..15, q4_k/q5_k 0..63, q3_k -32..31, q6_k -128..127
  int32_t m[16] = {};     // sub-block min codes: q2_k 0..15, q4_k/q5_k 0..63
  uint8_t q[kSuperBlock] = {};  // ggml's stored codes, 0..2^bits - 1 (symmetric: value q - z)
};

// ggml's K-quant blocks as GGUF stores them (ggml-common.h block_q2_K ... block_q6_K),
// little-endian (io/gguf.cpp packs and unpacks them; storage_bytes counts them).
struct block_q2_k {
  uint8_t scales[kSuperBlock / 16];  // per sub-block of 16: 4-bit sc_j (low nibble) | 4-bit m_j << 4
  uint8_t qs[kSuperBlock / 4];       // 2-bit q: per 128 values, qs[l] = l, l + 32, l + 64, l + 96 at bits 0, 2, 4, 6
  uint16_t d;                        // fp16 super-block scale of the sub-block scales
  uint16_t dmin;                     // fp16 super-block scale of the sub-block mins
};
static_assert(sizeof(block_q2_k) == 84, "block_q2_K is 84 bytes");
struct block_q3_k {
  uint8_t hmask[kSuperBlock / 8];  // bit 2 of q: value i at bit i / 32 of hmask[i % 32]
  uint8_t qs[kSuperBlock / 4];     // bits 0..1 of q, packed as block_q2_k's qs
  uint8_t scales[12];              // 16 x 6-bit sc_j + 32: low nibbles in scales[0..7] (j < 8 low, j >= 8
                                   // high nibble of j - 8), top 2 bits at bits 2 (j / 4) of scales[8 + j % 4]
  uint16_t d;                      // fp16 super-block scale
};
static_assert(sizeof(block_q3_k) == 110, "block_q3_K is 110 bytes");
struct block_q4_k {
  uint16_t d;                       // fp16 super-block scale of the sub-block scales
  uint16_t dmin;                    // fp16 super-block scale of the sub-block mins
  uint8_t scales[12];               // 8 x (6-bit scale sc_j, 6-bit min m_j), get_scale_min_k4's packing
  uint8_t qs[kSuperBlock / 2];      // 4-bit q: per 64 values, byte l = value l | value l + 32 << 4
};
static_assert(sizeof(block_q4_k) == 144, "block_q4_K is 144 bytes");
struct block_q5_k {
  uint16_t d;                   // as block_q4_k
  uint16_t dmin;
  uint8_t scales[12];           // as block_q4_k
  uint8_t qh[kSuperBlock / 8];  // bit 4 of q: per 64 values (chunk k), value l at bit 2k, l + 32 at bit 2k + 1 of qh[l]
  uint8_t qs[kSuperBlock / 2];  // bits 0..3 of q, packed as block_q4_k's qs
};
static_assert(sizeof(block_q5_k) == 176, "block_q5_K is 176 bytes");
struct block_q6_k {
  uint8_t ql[kSuperBlock / 2];      // low 4 bits of q: per 128 values, ql[l] = l | l + 64 << 4, ql[l + 32] = l + 32 | l + 96 << 4
  uint8_t qh[kSuperBlock / 4];      // high 2 bits of q: per 128 values, qh[l] = l, l + 32, l + 64, l + 96 at bits 0, 2, 4, 6
  int8_t scales[kSuperBlock / 16];  // int8 sub-block scales sc_j (sub-blocks of 16)
  uint16_t d;                       // fp16 super-block scale
};
static_assert(sizeof(block_q6_k) == 210, "block_q6_K is 210 bytes");

// Quantizes the n <= 256 values x of one super-block (zero-padded to 256) in f: the fast path
// (kquant_quantize_super_blocks), or the reference under use_ref(); the same bits either way.
void kquant_quantize_block(const format& f, const float* x, int64_t n, kquant_block* out);
// The reference (the specification): ggml's quantize_row_*_ref on one super-block, scalar.
void kquant_quantize_block_ref(const format& f, const float* x, int64_t n, kquant_block* out);
// The fast twin of kquant_quantize_block_ref on a run of super-blocks: the n >= 0 values x as
// ceil(n / 256) super-blocks out[0..), the last zero-padded; bit for bit the reference's
// (tests/kernels/test_kquant_fast.cpp). The sub-block fits of up to 16 super-blocks at a time run
// on vector lanes, one sub-block per lane (kernels/kquant_fast.cpp). Under use_ref() it runs the
// reference.
void kquant_quantize_super_blocks(const format& f, const float* x, int64_t n, kquant_block* out);

// The group_scale of sub-block j of a super-block: scale = d * sc_j, offset = dmin * m_j (with a min).
group_scale kquant_sub_scale(const format& f, float d, float dmin, int32_t sc, int32_t m);

struct quantized_tensor;
// The group_scale a stored K-quant tensor implies for column c of row r (its sub-block's).
group_scale kquant_stored_scale(const quantized_tensor& q, int64_t r, int64_t c);

// The stored sub-block scale codes (quantized_tensor::scales, float) and min codes (zero_points)
// of a K-quant tensor read from a file: every scale code an integer in its format's range
// (kquant_block's sc) and every min code in its range (m). Throws lowbit::error naming `where`,
// the first bad code and its index otherwise; decoding takes the codes as int32 (a float code
// out of int range, or NaN, would be undefined behaviour there).
void kquant_check_stored_codes(const quantized_tensor& q, const std::string& where);

// ggml's nearest_int: round to nearest (ties to even) through the float32 magic 1.5 * 2^23, as
// ggml computes it (an assert bounds |v| <= 4194303 in ggml's debug builds; release builds, and
// this function, keep the bit trick's result for any input).
int ggml_nearest_int(float v);

// Rows [r0, r1) of a K-quant tensor (q from quantized_tensor::allocate): the fast path
// (kquant_quantize_super_blocks, whole super-blocks' codes packed at once) and its reference
// (kquant_quantize_block_ref, set_code), the same bytes.
void kquant_quantize_rows(const float* x, int64_t r0, int64_t r1, quantized_tensor& q);
void kquant_quantize_rows_ref(const float* x, int64_t r0, int64_t r1, quantized_tensor& q);

// A symmetric K-quant's value (q3_k, q6_k), the one arithmetic of dequantize_value_ref and the
// fast decoders: ggml's dequantize_row_q3_K / _q6_K, y = d * sc * (q - z) with d * sc first
// (gs.scale); v = q - z. (The family with a min uses value_minus_offset, scale.hpp.)
inline float kquant_symmetric_value(const group_scale& gs, int32_t v) { return gs.scale * static_cast<float>(v); }

// Rows [r0, r1) of a stored K-quant tensor into out (the whole [rows, cols] output), decoded
// straight from the packed codes with dequantize_value_ref's arithmetic; no allocation.
void kquant_dequantize_rows(const quantized_tensor& q, int64_t r0, int64_t r1, float* out);

// out = dequantize(quantize(in)) on rows [r0, r1) of a [rows, cols] tensor (in, out: the whole
// tensor), 16 super-blocks at a time (kquant_quantize_super_blocks), without a packed tensor: the fast
// fake_quantize (the reference goes through quantize_ref and dequantize_ref). in == out is allowed.
void kquant_fake_quantize_rows(const format& f, const float* in, float* out, int64_t cols, int64_t r0, int64_t r1);

}  // namespace lowbit

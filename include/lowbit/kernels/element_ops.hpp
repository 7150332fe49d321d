// One value of a group: quantize to a code, dequantize a code, or both, given the group's scale.
// The scalar specification of docs/conventions.md §4-12 that every kernel (reference or fast) follows:
//   generic     code = encode(x / s), value = decode(code) * s
//   uint        code = clamp(round(x / s) + z, 0, 2^N - 1), value = (code - z) * s
//   powA(...)   y = x / s, t = sign(y)|y|^A, code = encode(t * elem_max),
//               value = sign(w)|w|^(1/A) * s with w = decode(code) / elem_max
//   q4_0, q5_0, q8_0, q4_1, q5_1  ggml's quantize_row_*_ref arithmetic (x * (1/d), truncation /
//               roundf; q4_1/q5_1 count from the block's min: value = code * d + m)
//   q2_k, q4_k, q5_k  code = clamp(nearest_int((x + dmin*m) / (d*sc)), 0, 2^bits - 1),
//               value = d*sc * code - dmin*m
//   q3_k, q6_k  code = clamp(nearest_int(x / (d*sc)), -z, z - 1), value = d*sc * code (kquant.hpp;
//               the super-block's d, dmin, sc, m come from ggml's search over its 256 values)
//   a group that held NaN/Inf: every value is NaN
#pragma once

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/scale.hpp"

namespace lowbit {

uint32_t quantize_value_ref(const format& f, float x, const group_scale& gs, float u);
float dequantize_value_ref(const format& f, uint32_t code, const group_scale& gs);
float fake_quantize_value_ref(const format& f, float x, const group_scale& gs, float u,
                              rounding_mode mode);

// fake_quantize_ref on rows [r0, r1) of a [rows, cols] tensor (a per-tensor scale still comes
// from every row): the fast kernels' explicit scalar fallback, a block of rows per thread.
void fake_quantize_rows_ref(const float* in, float* out, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                            const format& f, uint64_t tensor_id, sr_counters counters = {});

}  // namespace lowbit

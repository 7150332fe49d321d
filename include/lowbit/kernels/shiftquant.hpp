// ShiftQuant fake quantization of gradients (Guo, Liu et al. 2024, "Towards Accurate and
// Efficient Sub-8-Bit Integer Training", arXiv 2411.10948; the grouping details are ours,
// docs/training.md, ShiftQuant).
//
// A row-major tensor [rows, cols]; each row of `cols` values is split into groups of `group`
// along the reduction axis (the last group may be shorter). The row's scale
// s = amax_row / qmax (qmax = 2^(bits-1) - 1, in double) is shared and group g uses
// s_g = s * 2^-k_g with k_g = min(max_shift, floor(log2(amax_row / amax_g))) (max_shift for an
// all-zero group): a power-of-two fraction of the row scale, so integer partial sums of the groups
// combine by shifts and no memory is rearranged. Values are x / s_g in double, rounded to an
// integer q in [-qmax, qmax] to nearest even, or stochastically (q = floor(v) + 1 iff u < t with
// t = float(v - floor(v)) and u the uniform of the Philox word (seed, tensor_id, r * cols + c),
// kernels/scale.hpp), and the output is float(q * s_g). A row holding NaN/Inf is NaN
// (docs/conventions.md §4); an all-zero row is +0. in == out is allowed.
//
// shiftquant_fake_quantize_ref is the specification; shiftquant_fake_quantize (Highway SIMD on
// double lanes, OpenMP over rows) must equal it bit for bit on every input, thread count and SIMD
// target (tests/kernels/test_flexpoint_shiftquant.cpp). Both throw lowbit::error unless
// 2 <= bits <= 16, group > 0 and 0 <= max_shift <= 30.
#pragma once

#include <cstdint>

namespace lowbit {

void shiftquant_fake_quantize_ref(const float* in, float* out, int64_t rows, int64_t cols, int bits, int group,
                                  int max_shift, bool stochastic, uint64_t seed, uint64_t tensor_id);
void shiftquant_fake_quantize(const float* in, float* out, int64_t rows, int64_t cols, int bits, int group,
                              int max_shift, bool stochastic, uint64_t seed, uint64_t tensor_id);

// The shift k_g of a group: min(max_shift, floor(log2(amax_row / amax_group))) for finite
// amax_row >= amax_group > 0, max_shift for amax_group = 0. The _ref takes the double ratio and
// libm's log2 (as the specification reads); the fast one reads both exponents and significands
// from the float bits (exact: the ratio of two floats is never within 2^-25 of a power of two
// without being one, so the double division and log2 cannot cross an integer).
int shiftquant_group_shift_ref(float amax_row, float amax_group, int max_shift);
int shiftquant_group_shift(float amax_row, float amax_group, int max_shift);

}  // namespace lowbit

// The vector parts of the K-quants' fast path (kquant_fast.cpp, per Highway target; called by
// kquant_quantize_super_blocks in kquant.cpp). Each runs the scalar function of kquant.cpp named
// below on `count` sub-blocks stored one after another in x (a sub-block of `sub` values at
// x + sub * j), one sub-block per vector lane, with the same float operations in the same order
// lane by lane (no FMA: the build has -ffp-contract=off), so its results are the reference's bit
// for bit: scales[j] (and mins[j]) per sub-block, the fit's codes L at L + sub * j.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lowbit::detail {

// make_qkx2_quants (kquant.cpp fit_scale_min) with fit_with_min_ref's weights: |x| (use_mad,
// q2_k) or sqrt(mean x^2) + |x| (q4_k, q5_k). sub: 16 or 32.
void kquant_fit_scale_min_fast(const float* x, size_t count, int sub, int nmax, float rmin, float rdelta, int nstep,
                               bool use_mad, float* scales, float* the_mins, uint8_t* L);
// make_qx_quants (kquant.cpp fit_symmetric_scale) on sub-blocks of 16 (q6_k: nmax 32).
void kquant_fit_symmetric_fast(const float* x, size_t count, int nmax, float* scales, uint8_t* L);
// make_q3_quants (kquant.cpp fit_q3_scale) on sub-blocks of 16 (q3_k: nmax 4).
void kquant_fit_q3_fast(const float* x, size_t count, int nmax, float* scales, uint8_t* L);
// kquant.cpp requantize's loop on `subs` sub-blocks of `sub` values: along each sub-block.
void kquant_requantize_fast(const float* x, int subs, int sub, const float* d, const float* dm, int lo, int hi, int z,
                            uint8_t* q);

}  // namespace lowbit::detail

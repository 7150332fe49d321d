// Flexpoint flexN+E fake quantization (Koster et al., "Flexpoint: An Adaptive Numerical Format
// for Efficient Training of Deep Neural Networks", NeurIPS 2017, arXiv 1711.02213): every element
// of a tensor is an N-bit two's-complement integer mantissa m and the whole tensor shares one
// exponent k, value = m * 2^k. The exponent comes from Autoflex (train/autoflex.hpp), which
// needs the kernel to report Gamma = max |m| of what it wrote (docs/training.md, Flexpoint).
//
// Layout: a flat tensor of n floats (one exponent for all of them, so rows do not matter).
// flexpoint_fake_quantize_ref is the specification; flexpoint_fake_quantize (Highway SIMD, OpenMP over
// blocks of the tensor) must equal it bit for bit, its statistics included, on every input,
// thread count and SIMD target (tests/kernels/test_flexpoint_shiftquant.cpp).
#pragma once

#include <cstdint>

namespace lowbit {

// What the kernel saw of one tensor under exponent k; qmax = 2^(N-1) - 1.
struct flex_stats {
  // Autoflex's Gamma: max |round_even(x / 2^k)| over the finite x, before clamping; at least
  // qmax + 1 when the tensor held NaN or Inf (reads as an overflow). Exact (a double).
  double gamma = 0;
  float amax = 0;          // max |x| over the finite x (0 for none)
  int64_t nonfinite = 0;   // NaN and Inf inputs
  int64_t saturated = 0;   // finite x whose mantissa |round_even(x / 2^k)| > qmax (clamped)
  bool operator==(const flex_stats&) const = default;
};

// out[i] = clamp(round_even(x / 2^k), -qmax, qmax) * 2^k, computed exactly and rounded once to
// float32 (a -0 stays -0). NaN passes through unchanged (payload and sign, docs/conventions.md §4);
// +-Inf saturates to +-qmax * 2^k (no code for it). in == out is allowed.
// Requires 2 <= mantissa_bits <= 32 and -512 <= exponent <= 511 (Autoflex's E <= 10 range);
// throws lowbit::error otherwise.
flex_stats flexpoint_fake_quantize_ref(const float* in, float* out, int64_t n, int mantissa_bits, int exponent);
flex_stats flexpoint_fake_quantize(const float* in, float* out, int64_t n, int mantissa_bits, int exponent);

}  // namespace lowbit

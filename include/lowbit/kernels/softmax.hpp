// Log-sum-exp of a row of logits, the step of every language-model loss: the classifier's
// log-softmax over the vocabulary (32,000 entries for Llama 2's tokenizer) costs as much per token as
// a small model's whole forward when it calls the scalar double exp once per entry. These run it
// in SIMD float64 (Highway's Exp, within 1 ulp of std::exp), summing in 8 (AVX-512) or 4 lanes;
// the _ref twins are the scalar loops with std::exp (the specification). The two differ by the
// exp's rounding and the order of the sum: relative differences of order 1e-15
// (tests/kernels/test_softmax.cpp bounds them).
#pragma once

#include <cstdint>

namespace lowbit {

// max_i z[i] over the non-NaN entries (-inf when n == 0 or all are NaN).
float max_of(const float* z, int64_t n);
float max_of_ref(const float* z, int64_t n);

// sum_i exp(double(z[i]) - shift), in float64. A NaN entry makes the sum NaN.
double sum_exp_shifted(const float* z, int64_t n, double shift);
double sum_exp_shifted_ref(const float* z, int64_t n, double shift);

// log(sum_i exp(z[i])) computed as m + log(sum_exp_shifted(z, n, m)), m = max_of(z, n).
double log_sum_exp(const float* z, int64_t n);
double log_sum_exp_ref(const float* z, int64_t n);

// out[i] = float(exp(double(z[i]) - shift) * scale): softmax probabilities given the shift (the
// max) and scale = 1 / sum (the cross-entropy's gradient).
void exp_shifted_scaled(const float* z, int64_t n, double shift, double scale, float* out);
void exp_shifted_scaled_ref(const float* z, int64_t n, double shift, double scale, float* out);

}  // namespace lowbit

// float32 exp in SIMD with the C library's bits: the decoder's SwiGLU (silu(g) = g / (1 + exp(-g)))
// and attention's softmax (exp(s - max)) call std::exp(float) once per element, 2.6 million times per
// layer of a 512-token window at dim 768 (1M gate values, 1.6M attention scores); the scalar calls
// and their loops took about 5% of a 110M Llama's forward (thread CPU time, one thread). These kernels evaluate glibc's expf (glibc >= 2.28;
// the FMA variant its dispatcher picks on x86-64 CPUs with FMA) lane by lane with the same float64
// operations, so every result equals std::exp's bit for bit, and the model's outputs do not change.
// The _ref twins are the scalar loops with std::exp (the specification). Where the fast path cannot
// reproduce the library (no FMA target, another C library) the kernels run the _ref loops.
// |argument| >= 88 and NaN (glibc's special cases) go through std::exp in the fast path too.
#pragma once

#include <cstdint>

namespace lowbit {

// out[i] = std::exp(x[i] - shift) (the difference in float). out may alias x.
void exp_shifted_f32(const float* x, int64_t n, float shift, float* out);
void exp_shifted_f32_ref(const float* x, int64_t n, float shift, float* out);

// out[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i]: SwiGLU (Shazeer 2020), silu(gate) * up, in
// layers.hpp's order of float operations. out may alias gate or up.
void swiglu_f32(const float* gate, const float* up, int64_t n, float* out);
void swiglu_f32_ref(const float* gate, const float* up, int64_t n, float* out);

// Whether the fast path runs here (false: every call takes the _ref loop).
bool expf_simd_available();

}  // namespace lowbit

// Randomized Hadamard rotation of a Llama's residual stream (QuaRot, Ashkboos et al. 2024;
// incoherence processing as in QuIP#), fused into the weights so the model computes the same
// function with weights whose rows are "incoherent" (outliers spread over all channels), which
// round-to-nearest and GPTQ then quantize with less error.
//   1. every RMSNorm weight is folded into the linear layers that read its output (q, k, v;
//      gate, up; the classifier, which is untied from the embedding) and set to 1;
//   2. with Q = diag(d) H / sqrt(b) (d random signs, seeded; H a Sylvester Hadamard of size b,
//      block-diagonal when dim is not a power of two: b = the largest power of two dividing dim,
//      docs/conventions.md §22a), the residual stream becomes x Q: the embedding and every weight that
//      reads the residual are multiplied by Q on the right (W Q), every weight that writes into
//      it (attn_output, ffn_down) by Q^T on the left (Q^T W).
// RMSNorm(x Q) = RMSNorm(x) Q because Q is orthogonal, so the function is unchanged up to float
// rounding. LayerNorm (GPT-2) subtracts the mean, which a rotation does not preserve: refused.
#pragma once

#include <cstdint>
#include <string>

#include "lowbit/engine/model.hpp"

namespace lowbit::ptq {

struct rotation_report {
  int dim = 0;
  int block = 0;         // Hadamard block size (dim when dim is a power of two)
  bool untied = false;   // the classifier was split from the embedding
};

rotation_report rotate_residual(model& m, uint64_t seed = 0);

}  // namespace lowbit::ptq

// Low-precision training recipes: which of the six GEMM operands of every linear layer (train.hpp)
// live in which format. The plan grammar of `lowbit train --plan`:
//
//   fp32                       nothing quantized
//   sun2025:FMT[,axis=din]     P2, P4, P6 (W forward and backward, X in the dW GEMM) in FMT,
//                              absmax-to-FPmax scaling per group (Sun et al. 2025, docs/laws.md §2.1)
//   qat:FMT                    weights fake-quantized in the forward (P2) and the same Q(W) in
//                              dX = dY Q(W) (P4 grouped along d_in like P2); the gradient passes
//                              straight through to the fp32 master weights (QAT with the STE)
//   fp8                        E4M3 forward (P1, P2) and W/X of the backward (P4, P6), E5M2
//                              gradients (P3, P5), per-tensor scales (the hybrid FP8 recipe)
//   mxfp4 | nvfp4              all six operands in that block format, gradients (P3, P5) with
//                              stochastic rounding
//   flexN+E                    all six operands in Flexpoint with Autoflex exponents per tensor
//                              and per use (Koster et al. 2017, docs/formats.md §1.5)
//   shiftquant:intN[,g=K][,shift=S][,l1]
//                              sub-8-bit integer training after Guo et al. 2024 (docs/training.md §3.3):
//                              X and W (P1, P2, P4, P6) intN per channel; gradients (P3, P5) in
//                              ShiftQuant groups (below); l1: L1 normalisation layers
//   x=FMT;w=FMT;dy=FMT;w_bwd=FMT;dy_w=FMT;x_bwd=FMT[;axis=din]
//                              any operands, any formats (omitted ones stay fp32)
//
// Each operand is grouped along its own GEMM's reduction axis unless axis=din (docs/conventions.md §23).
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>

#include "lowbit/engine/train.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/shiftquant.hpp"

namespace lowbit {

struct training_plan {
  std::string spec;                                      // as given
  std::string recipe;                                    // fp32, sun2025, qat, fp8, ...
  std::array<std::string, gemm_operand_count> operands;  // canonical format per operand ("" = fp32)
  bool feature_axis = false;                             // axis=din
  bool l1_norm = false;                                  // shiftquant's L1 normalisation
  std::string law_format;  // the format whose E, M, B describe the run for the scaling laws ("" = fp32)
};

// Parses and validates a plan (every format parsed) before any training starts; throws
// lowbit::error naming the unknown recipe, operand or format.
training_plan parse_training_plan(const std::string& spec);

// The quantizer that carries the plan out; `seed` (the run's) keys its stochastic rounding.
std::unique_ptr<operand_quantizer> make_operand_quantizer(const training_plan& plan, uint64_t seed = 0);

// The ShiftQuant kernel of the gradients (P3, P5) is shiftquant_fake_quantize
// (kernels/shiftquant.hpp, included above).


}  // namespace lowbit

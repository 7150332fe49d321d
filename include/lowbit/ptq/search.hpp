// Per-layer searches that pick how a weight is rounded, without calibration data (PowerQuant)
// or with only per-input-channel importances (importance-weighted RTN).
//   PowerQuant  Yvinec, Dapogny, Cord, Bailly, ICLR 2023 (docs/ptq.md §4.7): quantize sign(w)|w|^a
//               uniformly, dequantize with the inverse power; a per layer minimises the weight
//               reconstruction error ||W - x_hat_a(W)||_2^2, a unimodal 1-D problem.
//   importance-weighted RTN  as llama.cpp's importance matrix (quantize with imatrix): per row
//               group, the clipping of the group's range that minimises sum_j imp_j (w_j - q_j)^2,
//               imp_j = mean x_j^2 over calibration inputs (the diagonal of X^T X / n).
// Shapes: W [out, in] row-major, groups along in; importance [in].
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit::ptq {

struct power_search_result {
  double exponent = 1;           // a of pow<a>(base)
  std::vector<float> weights;    // [out, in] the weight in pow<a>(base)
  double mse = 0;                // mean (w - q)^2 at a
  double mse_uniform = 0;        // the same at a = 1 (the base format)
  double loss = 0;               // the search's objective at a (PowerQuant: mse; NUPES: output error)
  double loss_uniform = 0;       // the same at a = 1
};

// [M] A grid of 16 exponents over [lo, hi] (a = 1 included), then golden-section refinement
// around the best grid point to 1e-3 (in place of the paper's Nelder-Mead; the error is unimodal
// in a on Gaussian-like weights, docs/ptq.md §4.7 "Checks").
power_search_result powerquant_search(const float* W, int64_t out, int64_t in, const format& base,
                                      double lo = 0.2, double hi = 1.0);

// [M] Shrink factors 1, 1 - 1/grid, ..., down to 1 - max_shrink (as AWQ's clip grid), chosen per
// row and group (per row for /c, per tensor for /t; per super-block of 256 for q4_k/q6_k, whose
// sub-blocks share their scales) by the importance-weighted squared error. `packed` (when given)
// receives the codes and scales of the result, in any format whose codes reproduce it bit for
// bit (every format on finite weights; it stays empty otherwise, e.g. a group that held NaN).
// NUPES's learned exponent (Yvinec, Dapogny, Bailly 2023; docs/ptq.md §4.7). [M] Our reading: NUPES
// learns a by gradient descent on a data-driven loss; here a minimises the layer's calibration
// output error tr(D C D^T) (D = W - Q_a(W), C = X^T X / n [in, in]), the objective AdaRound and
// GPTQ use, where PowerQuant minimises the weight error. The error is piecewise smooth in a (the
// codes jump), so the same 1-D search replaces the straight-through gradient; PowerQuant's
// data-free exponent and a = 1 are candidates, so the result's output error is at most theirs.
power_search_result nupes_search(const float* W, int64_t out, int64_t in, const format& base, const double* C,
                                 double lo = 0.2, double hi = 1.0);

std::vector<float> importance_rtn(const float* W, int64_t out, int64_t in, const format& f,
                                  const float* importance, int grid = 20, double max_shrink = 0.5,
                                  std::optional<quantized_tensor>* packed = nullptr);

}  // namespace lowbit::ptq

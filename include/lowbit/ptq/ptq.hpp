// Post-training quantization of one linear layer (docs/ptq.md §4): the matrix-level algorithms that
// turn a float weight and calibration inputs into a quantized weight, on top of lowbit's format
// engine (every quantized value below is a value of the format, chosen by the format's own scale
// rules, docs/conventions.md §5-10).
//
//   GPTQ          Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023 (arXiv 2210.17323), Alg. 1;
//                 semantics of IST-DASLab/gptq gptq.py (docs/ptq.md §4.1)
//   SmoothQuant   Xiao et al., ICML 2023 (arXiv 2211.10438); mit-han-lab/smoothquant smooth.py (4.2)
//   AWQ           Lin et al., MLSys 2024 (arXiv 2306.00978); mit-han-lab/llm-awq auto_scale.py,
//                 auto_clip.py (4.3)
//   LoRC          Yao et al., ZeroQuant-V2 (arXiv 2303.08302) (4.5)
//   bias correction  Nagel et al., ICCV 2019 (arXiv 1906.04721), "empirical" variant
//
// Shapes (row-major, dimension 0 first, as everywhere in lowbit):
//   W, Q  [out, in]   weight of y = x W^T; groups of the format run along `in` (the reduction axis)
//   X     [n, in]     calibration inputs of the layer, one token per row
//   H     [in, in]    GPTQ's Hessian (2/n) X^T X, float64, symmetric
//   s     [in]        per-input-channel scales (SmoothQuant, AWQ): X diag(s)^-1 (diag(s) W^T) = X W^T
//
// Choices of our own are tagged [M] here and in src/ptq/*.cpp (docs/ptq.md's tag for "not from the
// source"); everything else follows the cited code.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit::ptq {

// ---- small dense helpers (OpenBLAS sgemm / float64 accumulation) --------------------------------

// Y[n, out] = X[n, in] W[out, in]^T (sgemm).
void matmul_nt(const float* X, const float* W, float* Y, int64_t n, int64_t in, int64_t out);

// ||X W^T - X Q^T||_F^2, computed as ||X (W - Q)^T||_F^2 (the difference first, so no
// cancellation between two large outputs); float64 sum of squares.
double output_error(const float* X, int64_t n, int64_t in, const float* W, const float* Q, int64_t out);

// Per-input-channel statistics of calibration inputs: max |x_j| (SmoothQuant's act scales) and
// mean |x_j| (AWQ's s_x), accumulated over batches of rows.
struct channel_stats {
  int64_t in = 0;
  int64_t count = 0;            // rows seen
  std::vector<float> absmax;    // [in]
  std::vector<double> abssum;   // [in]

  explicit channel_stats(int64_t in);
  void add(const float* X, int64_t n);  // X[n, in]
  std::vector<float> absmean() const;   // [in] abssum / count
};

// Output errors of weight errors D [out, in] on calibration inputs X [n, in] (AWQ's and LLM-FP4's
// search objectives): mean over tokens of (x_t . d_r)^2, by the cheaper of the direct product
// X D^T and the Gram form D C D^T with C = X^T X / n (float64 accumulation, float32 GEMMs).
class row_output_error {
 public:
  row_output_error(const float* X, int64_t n, int64_t in);
  void per_row(const float* D, int64_t out, std::vector<double>& err);  // err [out], each >= 0
  double total(const float* D, int64_t out);                            // the sum over rows

 private:
  const float* X_;
  int64_t n_, in_;
  std::vector<float> C_;  // [in, in] when n > in
  std::vector<float> buf_;
};

// ---- round to nearest ---------------------------------------------------------------------------

// The baseline every method is compared with: fake_quantize(W) in the format (its scale rule,
// max / mse / ..., comes from the spec). Returns Q[out, in].
std::vector<float> rtn_quantize(const float* W, int64_t out, int64_t in, const format& f,
                                uint64_t tensor_id = 0);

// ---- GPTQ (docs/ptq.md §4.1) -------------------------------------------------------------------------

// H = (2/n) sum_t x_t x_t^T over every calibration row seen so far, in float64, kept as gptq.py
// keeps it: a running average, H *= n_old / n_new; H += (2 / n_new) X^T X (OpenBLAS dsyrk).
// [M] gptq.py counts sequences (the batch dimension) where we count rows; GPTQ's result does not
// depend on the scale of H, only the reported loss does (it is then in units of one token).
struct hessian_accumulator {
  int64_t in = 0;
  int64_t count = 0;          // rows (tokens) accumulated
  std::vector<double> upper;  // [in, in]; the upper triangle is H, the rest is scratch

  explicit hessian_accumulator(int64_t in);
  void add(const float* X, int64_t n);  // X[n, in]
  std::vector<double> matrix() const;   // H [in, in], full symmetric
};

struct gptq_options {
  double percdamp = 0.01;     // H += percdamp * mean(diag H) * I
  int64_t block_size = 128;   // lazy batch updates (gptq.py blocksize)
  bool act_order = false;     // columns in order of descending diag(H), un-permuted at the end
  bool static_groups = false; // group scales from the original weights, before any update
  bool float64 = false;       // run the updates in float64 (default float32, as gptq.py); [M] the
                              // quantizer still sees the current weight rounded to float32
  uint64_t tensor_id = 0;     // stochastic rounding stream (~sr formats), as fake_quantize
};

struct gptq_result {
  std::vector<float> weights;        // [out, in] the quantized weight (values of the format)
  std::vector<double> column_loss;   // [in] sum over rows of (w - q)^2 / U_ii^2 / 2, original order
  double loss = 0;                   // sum of column_loss (gptq.py's printed "error")
  int64_t dead_columns = 0;          // inputs with H_ii == 0 (their weights become 0)
  // The same weight as codes + scales (quantize()'s layout): dequantize(*packed) == weights bit
  // for bit. Absent with act_order + groups + !static_groups: then a group of K consecutive
  // columns in act order is not a group of the format's layout (gptq.py's behaviour; later
  // GPTQ code stores a g_idx for it; pass static_groups = true for a storable result).
  std::optional<quantized_tensor> packed;
};

// GPTQ of W[out, in] with the Hessian H[in, in] (float64, symmetric, e.g. hessian_accumulator::
// matrix()). The quantizer is the format itself:
//   - group formats (gK, mxfp*, nvfp4, q4_0, ...): a group's scales (one per row) are chosen by
//     the format's rule when the first column of the group is reached, from the CURRENT weights of
//     the group's K columns (already updated by every earlier column); every column of the group
//     is then quantized with that scale (static_groups: from the original W, up front);
//   - row (/c) and tensor (/t) scales, and nvfp4's per-tensor second level, come from the whole
//     original row / tensor before the loop, as gptq.py does for per-channel quantization;
//   - formats without a scale (e4m3fn, bf16, ...) quantize element by element.
// Throws lowbit::error when W or H is not finite or the dampened H is not positive definite.
gptq_result gptq_quantize(const float* W, int64_t out, int64_t in, const double* H, const format& f,
                          const gptq_options& options = {});

// ---- SmoothQuant (docs/ptq.md §4.2) ------------------------------------------------------------------

// A weight [out, in] of a layer that reads the shared input (q, k and v share one; fc1 its own).
struct linear_weight {
  const float* w = nullptr;
  int64_t out = 0;
};

// s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha), the weight max over the rows of every layer in
// `layers` (each [out, in]), clamped to >= 1e-5 before the power, and s clamped to >= 1e-5
// (smooth.py smooth_ln_fcs; it leaves max|X_j| unclamped, where docs/ptq.md §4.2 says both are).
// act_absmax[in]: channel_stats::absmax. Computed in float64, returned rounded to float32 (the
// scale that is then applied).
std::vector<float> smoothquant_scales(const float* act_absmax, int64_t in,
                                      const std::vector<linear_weight>& layers, double alpha = 0.5);

// W[:, j] *= s_j for W[rows, in]: SmoothQuant's weight side and AWQ's (smooth.py fc.weight.mul_).
void scale_columns(float* W, int64_t rows, int64_t in, const float* s);
// X[:, j] /= s_j for X[rows, in]: the activation side. The preceding norm's weight (and bias) is
// a one-row X: divide_columns(norm_w, 1, in, s) (smooth.py ln.weight.div_). A preceding linear
// layer's output rows: W_prev[j, :] /= s_j.
void divide_columns(float* X, int64_t rows, int64_t in, const float* s);
void divide_rows(float* W, int64_t rows, int64_t cols, const float* s);  // W[j, :] /= s_j

// ---- AWQ (docs/ptq.md §4.3) --------------------------------------------------------------------------

struct awq_options {
  int n_grid = 20;                    // scale ratios r = i / n_grid, i = 0 .. n_grid-1
  bool clip = true;                   // run the clipping search after the scale search
  int clip_grid = 20;                 // auto_clip n_grid
  double max_shrink = 0.5;            // shrink factors 1 - i / clip_grid, i < max_shrink * clip_grid
  int64_t clip_sample_tokens = 512;   // auto_clip n_sample_token: every (n / 512)-th row of X
  uint64_t tensor_id = 0;
};

struct awq_layer_result {
  std::vector<float> weights;   // [out, in] Q(clip(W diag(s))): run it on X diag(s)^-1
  std::vector<float> clip_max;  // [out, groups] the chosen max_val per row and group (scaled
                                // domain); empty when not clipped
  std::optional<quantized_tensor> packed;  // the codes of `weights` (exact export)
};

struct awq_result {
  std::vector<float> scales;       // [in] s: multiply W's columns, divide the previous op by it
  double ratio = 0;                // the chosen exponent r of s = s_x^r
  std::vector<double> ratio_loss;  // [n_grid] mean squared output error of each ratio
  std::vector<awq_layer_result> layers;
};

// The scale search alone: for r in {0, 1/n_grid, ..}: s = max(s_x^r, 1e-4), s /= sqrt(max s *
// min s) with s_x = mean |x| per channel over X[n, in]; loss = mean over every output of every
// layer of (X W^T - (X diag(s)^-1) Q(W diag(s))^T)^2; returns the s (and r, losses) of the least
// loss (auto_scale.py _search_module_scale). r = 0 is s = 1, plain RTN. [M] llm-awq measures the
// loss on the output of an "inspected module" (for q/k/v the whole attention block); at the
// matrix level the loss is over the outputs of the layers given, concatenated.
awq_result awq_search_scale(const float* X, int64_t n, int64_t in, const std::vector<linear_weight>& layers,
                            const format& f, const awq_options& options = {});

// The clipping search on an already scaled weight Ws[out, in] and scaled inputs Xs[n, in]: per
// row and group, max_val = amax * (1 - i / clip_grid) for i < max_shrink * clip_grid; the weight
// clipped to [-max_val, max_val] is fake-quantized and the group's share of the output, over every
// (n / clip_sample_tokens)-th row of Xs, is compared with the float one; the least mean squared
// error wins (auto_clip.py auto_clip_layer). Returns max_val [out, groups].
std::vector<float> awq_search_clip(const float* Xs, int64_t n, const float* Ws, int64_t out, int64_t in,
                                   const format& f, const awq_options& options = {});
// W[r, group g] clamped to [-max_val, max_val] (auto_clip.py apply_clip).
void awq_apply_clip(float* W, int64_t out, int64_t in, const format& f, const float* clip_max);

// Scale search, then (options.clip) the clipping search per layer, then RTN of the clipped
// scaled weights. `clip_layer` (one per layer, default all true) skips layers as llm-awq skips
// q/k ("due to qk bmm, it is hard to clip precisely").
awq_result awq_quantize(const float* X, int64_t n, int64_t in, const std::vector<linear_weight>& layers,
                        const format& f, const awq_options& options = {},
                        const std::vector<bool>& clip_layer = {});

// ---- LoRC: low-rank compensation (docs/ptq.md §4.5) --------------------------------------------------

struct lorc_result {
  std::vector<float> weights;          // [out, in] Q + U V
  std::vector<float> u;                // [out, k] U_k S_k^(1/2) (fake-quantized when asked)
  std::vector<float> v;                // [k, in]  S_k^(1/2) V_k^T (fake-quantized when asked)
  std::vector<double> singular_values; // of E = W - Q, descending: all of them (exact SVD), or
                                       // the leading k + oversample estimates (randomized)
  bool randomized = false;             // which SVD ran
};

// exact: Eigen BDCSVD, O(out in min(out, in)) (1 s at 1024 x 1024 on 2 cores, ~8x per doubling).
// randomized: [M] subspace iteration (Halko, Martinsson, Tropp 2011, Alg. 4.4) on k + oversample
// Gaussian directions with power_iters passes, O(out in (k + oversample) power_iters); on
// quantization errors (a flat spectrum, the hard case) it captures ~98% of the energy the exact
// rank-k truncation captures (tests). automatic: randomized when
// min(out, in) > 1024 and 4 (k + oversample) <= min(out, in), else exact.
enum class lorc_svd { automatic, exact, randomized };

struct lorc_options {
  std::optional<format> factor_format;  // fake-quantize U and V in this format (e.g. int8/c)
  lorc_svd svd = lorc_svd::automatic;
  int oversample = 16;
  int power_iters = 4;
  uint64_t seed = 0;                    // Gaussian test matrix of the randomized SVD
};

// E = W - Q in float64, truncated SVD at rank k (clamped to min(out, in)). [M] The factors are each
// a linear layer with groups along their own reduction axis (U [out, k] along k, V [k, in] along
// in) when fake-quantized: y = x Q^T + (x V^T) U^T.
lorc_result lorc_compensate(const float* W, const float* Q, int64_t out, int64_t in, int64_t rank,
                            const lorc_options& options = {});

// ---- ZeroQuant-FP's second scale constraint (docs/ptq.md §4.5) ------------------------------------
// Wu, Yao, He 2023 (arXiv 2307.09782). [M] Our reading of a constraint the paper states without
// code: within each output row, every group scale is the row's largest group scale S (the shared
// maximum) times 2^-k, k >= 0 an integer, so an E2M1 weight times its group's 2^-k is an E4M3
// value and the row's GEMM runs in FP8 with the one scale S applied after it. Each group's scale
// is the format's own choice s_g (its rule) rounded UP to the next S 2^-k (k = floor(log2(S / s_g)),
// so no value of the group clips more than under s_g); a group of zeros gets S. Group formats
// with scales stored as a float element (e2m1/g32, int4/g32, ...) and deterministic rounding; the
// presets, power-of-two scale kinds (already powers of two), uint elements and ~sr are refused.
struct shared_pow2_result {
  quantized_tensor packed;     // codes + the constrained scales
  std::vector<float> weights;  // [out, in] dequantize(packed)
};
shared_pow2_result shared_pow2_quantize(const float* W, int64_t out, int64_t in, const format& f);

// ---- AdaRound (docs/ptq.md §4.4) -------------------------------------------------------------------
// Nagel, Amjad, van Baalen, Louizos, Blankevoort, ICML 2020 (arXiv 2004.10568), "Up or Down?
// Adaptive Rounding for Post-Training Quantization", eq. (21)-(24).
//
// Every weight w gets the two values of the format that enclose it under the group scale RTN
// chooses (scales stay RTN's): down <= w <= up (grid_neighbours; for an integer grid
// s floor(w/s) and s ceil(w/s)). [M] The paper's s (floor(w/s) + h) becomes down + h (up - down),
// which is the same on a uniform grid and also covers the non-uniform grids of float elements
// and power maps. h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1) is learned per weight by
// Adam on
//   L(V) = tr(D C D^T) + lambda sum_ij (1 - |2 h(V_ij) - 1|^beta),   D = W - (down + h (up - down))
// with C = X^T X / n [in, in] (so the first term is the mean over calibration tokens of the squared
// output error summed over the outputs, the reconstruction loss of the paper's reference code:
// squared error summed over channels, averaged over the batch); [M] full-batch gradients from C
// rather than mini-batches of X. lambda = 0 for the first warmup fraction of the iterations, then
// beta decays linearly from beta_start to beta_end. V starts where h(V) = (w - down) / (up - down).
// Finally each weight becomes up where h(V) >= 0.5, else down.
struct adaround_options {
  int iters = 500;           // Adam steps per layer (the paper: 10k; [M] fewer, full-batch)
  double lambda = 0.01;      // regulariser weight (the paper's default)
  double lr = 1e-2;          // Adam step (beta1 0.9, beta2 0.999, eps 1e-8)
  double warmup = 0.2;       // fraction of the iterations without the regulariser
  double beta_start = 20, beta_end = 2;
  double zeta = 1.1, gamma = -0.1;  // the rectified sigmoid's stretch
  uint64_t tensor_id = 0;    // RTN's scales are quantize(W, f, tensor_id)'s
  bool shared_pow2_scales = false;  // ... or shared_pow2_quantize(W, f)'s (ZeroQuant-FP, §4.5)
};

struct adaround_result {
  std::vector<float> weights;  // [out, in] hard-rounded: values of the format under RTN's scales
  std::vector<float> soft;     // [out, in] h(V) after the last step, before hardening
  // Codes + RTN's scales: dequantize(*packed) == weights bit for bit (absent only where the
  // format's codes cannot reproduce a value, e.g. a group that held NaN).
  std::optional<quantized_tensor> packed;
  double rtn_loss = 0;         // tr(D C D^T) of round to nearest
  double soft_loss = 0;        // of the relaxed weight down + h (up - down) at the end
  double loss = 0;             // of the hard result
  int64_t flipped = 0;         // weights rounded the other way than RTN rounds them
};

// The two grid values enclosing x under group scale gs (down <= x <= up; equal when x is on the
// grid or outside the format's range, then both are RTN's value), and their codes; rtn_code is
// x's code in quantize()'s result (RTN), gs its stored_group_scale. Generic elements, uint, power
// maps, mxint8, nvfp4, flex: the element's directed roundings (rounding modes down / up of x / s);
// ggml's presets (q4_0 ... q8_0, the K-quants): the integer levels next to RTN's code (ggml's
// 1/d before d's fp16 rounding is not stored, so RTN's code is not recomputed from gs).
struct grid_pair {
  float down = 0, up = 0;
  uint32_t code_down = 0, code_up = 0;
};
grid_pair grid_neighbours(const format& f, float x, const group_scale& gs, uint32_t rtn_code);

// AdaRound of W[out, in] with C = X^T X / n [in, in] (float64, symmetric; GPTQ's H / 2).
adaround_result adaround_quantize(const float* W, int64_t out, int64_t in, const double* C, const format& f,
                                  const adaround_options& options = {});

// ---- bias correction ------------------------------------------------------------------------------

// b' = b + mean_t(x_t) (W - Q)^T over X[n, in]: the quantized layer's mean output error over the
// calibration inputs becomes 0. bias[out] may be null (zero). Float64 accumulation.
std::vector<float> bias_correction(const float* X, int64_t n, int64_t in, const float* W, const float* Q,
                                   int64_t out, const float* bias = nullptr);

// ---- LLM-FP4 (docs/ptq.md §4.6) ----------------------------------------------------------------------
// Liu, Cheng, Huang, Xing, Shen, EMNLP 2023 (arXiv 2310.16836); nbasyl/LLM-FP4
// quant_layers/fp_linear.py (FPPTQSLBatchingQuantLinear_fpq_baseline / _fpq), configs/FPQ_config_llama.py.
//
// Joint search of the exponent/mantissa split and of the clipping of a floating-point weight
// format, layer by layer, on the layer's output error ||X W^T - X Q^T||^2 over calibration rows.
// LLM-FP4's quantizer has a real-valued exponent bias b per output channel; maxval(b) =
// (2 - 2^-M) 2^(2^E - 1 - b). [M] lowbit expresses b as the scale of a real format: the element
// eEmM (all codes finite, its default integer bias) times a per-group scale chosen by the format's
// scale rule from the group maximum m_c = maxval(c b0) instead of the group's amax, with
// b0 = 2^E - log2(amax) + log2(2 - 2^-M) - 1 (so maxval(b0) = amax, c = 1 is RTN). Every
// candidate is quantized by lowbit's element codec (x / s cast onto eEmM, times s: docs/conventions.md §6),
// so the result holds exact values of the returned format. The repo's quantizer keeps the binade
// of x itself (floor(log2|x|) + b), which differs from a scaled format when b is not an integer.
//
// Granularity and scale format are the user's (e2m1/c: one scale per output channel, the paper's
// setting; e2m1/g32:e8m0: per group of 32 with power-of-two scales, ...); only the element split
// and the clip vary:
//   splits     every eEmM with E >= 1, E + M + 1 = the user's element bits, that the format engine
//              accepts (variant finite, default bias, the user's subnormals setting), plus the
//              user's own element (e.g. e4m3fn) when it is not one of them; paper_splits keeps the
//              repo's set (4 bit: M in 0..2; 8 bit: M in 2..6)
//   clip       c_i = alpha + i (beta - alpha) / n, i = 0..n (0.01, 1.2, 100 as FPQ_config_llama.py;
//              the repo's loop stops at i = n - 1), plus c = 1, plus RTN of the user's format as is
//              (its own rule, e.g. @mse), so the search never does worse than RTN on the objective
//   selection  per output row for row and group scales (one c per row, each group's b0 from its own
//              amax: a row's share of the output error depends only on that row, so the per-row
//              choice is exact; [M] the repo has one group per row); per tensor for /t; the split
//              with the least total error wins (the repo's _search_best_w_format)
//   plain casts (no '/': no scale) search integer biases round(c b0) of the element itself, e.g.
//              "e2m1(bias=5)" - there LLM-FP4's quantizer with an integer bias is exactly the cast
// [M] Weight-only: the objective uses float inputs (the repo alternates with an activation search,
// 3 rounds, on quantized inputs). Data-dependent scale rules (mse, pNN) are replaced by `max` for the
// clip candidates. Presets (nvfp4, q4_0, ...), power maps and non-float elements are refused.
// LLM-FP4's split candidates for f's element in search order: the element itself first (ties go
// to it), then every all-finite eEmM of the same bits the engine accepts, with f's subnormals
// setting; paper = true keeps only the paper's splits (4 bits: M <= 2; 8 bits: 2 <= M <= 6).
std::vector<element_format> split_elements(const format& f, bool paper);

struct llmfp4_options {
  double alpha = 0.01, beta = 1.2;  // bias multipliers c_i = alpha + i (beta - alpha) / n, i = 0..n
  int n = 100;
  bool paper_splits = false;        // the repo's split set instead of every split with E >= 1
  bool preshift = true;             // quantize_model: pre-shifted activation biases on norm-fed groups
  uint64_t tensor_id = 0;           // stochastic rounding stream (~sr formats), as fake_quantize
};

struct llmfp4_split {
  std::string format;  // the split as a spec with the user's granularity and scale, e.g. "e3m0/c"
  double error = 0;    // the objective with each row's best clip: row_output_error, mean over tokens
};

struct llmfp4_result {
  std::string format;            // the chosen spec (parse_format accepts it; canonical spelling)
  lowbit::format fmt;            // parse_format(format)
  std::vector<float> weights;    // [out, in] values of fmt
  // [out] (row, group scales) or [1] (tensor scale, plain cast): the chosen bias multiplier c;
  // 1 = the group max (RTN with the max rule); NaN = RTN of the user's format as given.
  std::vector<float> multiplier;
  // [out, groups] (row: groups = 1; tensor: [1]): the maximum m_c each scale was chosen for; empty
  // for plain casts (the chosen bias is in `format`).
  std::vector<float> clip_max;
  quantized_tensor packed;       // codes + scales of fmt: dequantize(packed) == weights bit for bit
  double error = 0;              // output_error(X, W, weights), float64
  double rtn_error = 0;          // output_error(X, W, rtn_quantize(W, user format))
  bool rtn = false;              // the user's format with its own scale rule won (or tied)
  std::vector<llmfp4_split> splits;  // every split tried, in search order
};

// The weight search for one layer W[out, in] on calibration inputs X[n, in] (docs/ptq.md §4.6 steps 2-4).
llmfp4_result llmfp4_quantize(const float* X, int64_t n, int64_t in, const float* W, int64_t out,
                              const format& f, const llmfp4_options& options = {});

// The split candidates llmfp4_quantize tries for format f (specs, search order).
std::vector<std::string> llmfp4_splits(const format& f, bool paper_splits = false);

// Pre-shifted exponent bias (docs/ptq.md §4.6): per-input-channel biases from the calibration maxima,
// b_j = 2^E - log2(max|X_j|) + log2(2 - 2^-M) - 1 for the activation element eEmM; the tensor
// bias b_t = min_j b_j; integer offsets rho_j = clamp(round(b_j) - round(b_t), 0, 2^E - 1)
// (round: ties to even, torch.round). Activation channel j quantized with bias b_t + rho_j equals
// 2^-rho_j times the same code with bias b_t, so the factor s_j = 2^-rho_j moves into the weight:
// W[:, j] *= s_j (scale_columns) and the activation is divided by it, X[:, j] /= s_j
// (divide_columns; the preceding norm's weight and bias: the pipeline's fold) - X diag(s)^-1
// (diag(s) W^T) = X W^T exactly in float32 (powers of two), and the activations then take one
// per-tensor bias. [M] A channel with max 0 (or not finite) gets rho = 0; rho is capped at 126 so
// 2^-rho stays a normal float32.
struct llmfp4_preshift_result {
  std::vector<double> channel_bias;  // [in] b_j (NaN for a channel with max 0)
  double tensor_bias = 0;            // b_t
  std::vector<int> rho;              // [in]
  std::vector<float> scales;         // [in] s_j = 2^-rho_j, the pipeline's `scales`
};
llmfp4_preshift_result llmfp4_preshift(const float* act_absmax, int64_t in, const element_format& act);

}  // namespace lowbit::ptq

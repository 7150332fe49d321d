// PTQ quality predictor after Xu, Lan, Yazar, Webb, Sharify, Wang 2024, "Scaling Laws for Post
// Training Quantized LLMs" (docs/laws.md §2.2): a tree ensemble maps features of (model, format,
// method) to the post-quantization NLL. The paper used a random forest on model size, pre-trained
// NLL, data-type properties (SQNR, format, block size), method and loss-landscape features; its
// exact feature list and hyper-parameters are not known (docs/laws.md §2.2 "gaps"). Ours:
//
//   features  log N, float NLL, SQNR (dB) of the format on the model's own linear weights (size-
//             weighted mean over tensors, as explore records it), bits per element (element +
//             scale overhead of the format), block code (log2 K for /gK; 16 for /c, 24 for /t,
//             0 for no scale: markers, not sizes), method one-hot (rtn, gptq, awq, smoothquant,
//             llmfp4, other), flatness = NLL increase when every linear weight gets an isotropic
//             random perturbation at the per-tensor SQNR of the format (measure_flatness below;
//             missing when not measured — XGBoost routes missing values itself).
//   target    NLL increase over the float NLL (predicted NLL = float NLL + it), so that the trees
//             need not extrapolate across models' NLL levels.
//   model     gradient-boosted trees (Debian's XGBoost C API, reg:squarederror), k-fold
//             cross-validated; the baseline is "float NLL + the mean increase".
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/runs/runs_db.hpp"

namespace lowbit::law {

struct ptq_sample {
  std::string model, format, method;
  std::string model_path;  // the model file when the run recorded it (config.paths.model)
  double log_N = 0, nll_float = 0, sqnr_db = 0, bits = 0, block_code = 0, flatness = 0;  // NaN = missing
  double nll = 0;  // the target run's NLL (NaN for a query)
};

const std::vector<std::string>& feature_names();
std::vector<float> features(const ptq_sample& s);
nlohmann::json feature_json(const ptq_sample& s);
// The format-derived features (bits, block code) of a spec.
void set_format_features(const std::string& spec, ptq_sample& s);

struct predictor_options {
  int folds = 5;
  int rounds = 200;
  int max_depth = 4;
  double eta = 0.1;
  uint64_t seed = 0;
};

struct cv_report {
  int folds = 0;
  size_t rows = 0;
  double rmse = 0, mae = 0;  // of the predicted NLL, out of fold
  double rmse_constant = 0;  // "float NLL + mean increase of the training folds"
};
nlohmann::json to_json(const cv_report& r);

class ptq_predictor {
 public:
  explicit ptq_predictor(predictor_options o = {});
  ~ptq_predictor();
  ptq_predictor(const ptq_predictor&) = delete;
  ptq_predictor& operator=(const ptq_predictor&) = delete;
  // k-fold cross-validation, then a fit on every row. Throws when there are fewer rows than
  // 2 * folds (saying how many are needed).
  cv_report train(const std::vector<ptq_sample>& rows);
  // Predicted NLL of a sample (its nll is ignored).
  double predict(const ptq_sample& s) const;

 private:
  predictor_options o_;
  void* booster_ = nullptr;  // BoosterHandle
};

// Training rows from the store: runs of kind eval / quantize / explore with metrics "nll" and a
// weight format; float NLL from metrics "base_nll" or the model's float run (format empty/fp32)
// in the store; SQNR from "sqnr_db"; flatness from "flatness" (else missing).
std::vector<ptq_sample> samples_from_runs(const std::vector<run_record>& runs);
// Features of an unseen (model, format, method) from the rows of the same model (N, float NLL)
// and of the same model and format (SQNR, flatness); throws when the model has no rows.
ptq_sample query_for(const std::vector<ptq_sample>& rows, const std::string& model, const std::string& format,
                     const std::string& method);

// Measured on a model: the size-weighted mean per-tensor SQNR (dB) of round-to-nearest in f on
// the linear weights.
double weights_sqnr_db(const model& m, const std::string& spec);

// The flatness feature (docs/laws.md §2.2; recorded as a run's "flatness" metric by the trained
// families' PTQ evaluation, explore/family.hpp): how much the NLL rises when every linear weight
// W of the model gets a random perturbation of the same relative size as the format's rounding
// error, i.e. of fixed norm ||W|| 10^(-SQNR_W / 20) with SQNR_W the format's round-to-nearest
// SQNR on W. The direction is isotropic (a Gaussian vector rescaled to exactly that norm), so
// what the model sees differs from quantization only in the error's direction: a flat
// neighbourhood tolerates it, a sharp one does not (Xu et al. 2024: larger models sit in flatter
// basins). Mean and standard error over `draws` independent directions.
struct flatness_options {
  int draws = 3;
  uint64_t seed = 0;
  // The float model's NLL on the same ids and eval settings when the caller has it (NaN: it is
  // evaluated here): one model's flatness in several formats evaluates the float model once.
  double float_nll = std::numeric_limits<double>::quiet_NaN();
};
struct flatness_result {
  double float_nll = 0;
  double mean_increase = 0, stderr_increase = 0;  // NLL(perturbed) - NLL(float), over the draws
  std::vector<double> increases;
};
// Adds to each tensor that `reports` names (weight_quant_report: name, sqnr_db) a random
// direction of norm ||W|| 10^(-sqnr_db / 20), drawn from `seed` and the tensor's position in
// `reports`. Tensors with an infinite or NaN SQNR (exact in the format) are left alone.
void perturb_weights(model& m, const std::vector<weight_quant_report>& reports, uint64_t seed);
// Throws lowbit::error when weights_spec is not a weight format or draws < 1.
flatness_result measure_flatness(const model& base, const std::string& weights_spec, const std::vector<int32_t>& ids,
                                 const eval_options& eo, const flatness_options& o = {});

}  // namespace lowbit::law

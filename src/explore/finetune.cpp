// Fine-tuning from quantized weights (finetune.hpp).
#include "lowbit/explore/finetune.hpp"

#include "lowbit/ptq/pipeline.hpp"

namespace lowbit {

nlohmann::json ptq_init_weights(model& m, const train_run_config& cfg, const std::string& weights,
                                const std::vector<int32_t>& calibration) {
  ptq::quantize_options o;
  o.how = ptq::parse_method(cfg.init_weights);
  o.weights = parse_format(weights);
  o.calib_samples = cfg.calib_samples, o.calib_ctx = cfg.calib_ctx, o.seed = cfg.seed;
  const ptq::quantize_report r = ptq::quantize_model(m, calibration, o);
  double error = 0, rtn_error = 0;
  for (const auto& l : r.layers) error += l.error, rtn_error += l.rtn_error;
  return {{"method", ptq::method_name(o.how)}, {"weights", format_name(o.weights)},
          {"calib_samples", cfg.calib_samples}, {"calib_ctx", cfg.calib_ctx}, {"seed", cfg.seed},
          {"windows_available", r.windows_available}, {"seconds", r.seconds}, {"error", error},
          {"rtn_error", rtn_error}};
}

train_job prepare_train_job(train_run_config cfg, bool resume, const std::string& data_dir,
                            const std::set<std::string>& given) {
  train_job_options options;
  options.given = given;
  options.init_weights = ptq_init_weights;
  return prepare_training(std::move(cfg), resume, data_dir, options);
}

}  // namespace lowbit

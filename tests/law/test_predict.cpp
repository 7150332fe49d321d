// The PTQ quality predictor on synthetic rows with a known relation: its cross-validated error is
// small and beats the "float NLL + mean increase" baseline; it orders SQNR the right way.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "lowbit/base/error.hpp"
#include "lowbit/law/predict.hpp"

using namespace lowbit;
using namespace lowbit::law;

namespace {

// NLL increase = 8 * 10^(-SQNR/10) * (1 + 4 flatness) * (0.6 for gptq) / N-ish, plus noise.
std::vector<ptq_sample> synthetic(uint64_t seed, double noise_sd) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> noise(0, noise_sd);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<ptq_sample> rows;
  const char* formats[] = {"int8/c", "int4/g32", "int4/g128", "int3/g64", "e2m1/g32", "e4m3/c", "nf4", "mxfp4"};
  for (int m = 0; m < 6; ++m) {
    const double N = 1e6 * std::pow(4, m);
    const double nll_float = 3.5 - 0.3 * m;
    for (const char* f : formats)
      for (const char* method : {"rtn", "gptq"}) {
        ptq_sample s;
        s.model = "m" + std::to_string(m), s.format = f, s.method = method;
        s.log_N = std::log(N), s.nll_float = nll_float;
        set_format_features(f, s);
        s.sqnr_db = 6.02 * s.bits - 4 + 3 * u(g);  // roughly what RTN gives
        s.flatness = 0.5 / (1 + m) * u(g);         // larger models flatter
        const double inc = 8 * std::pow(10, -s.sqnr_db / 10) * (1 + 4 * s.flatness) *
                           (s.method == "gptq" ? 0.6 : 1.0);
        s.nll = nll_float + inc + noise(g);
        rows.push_back(s);
      }
  }
  return rows;
}

}  // namespace

TEST(Predict, CrossValidatedErrorBeatsBaseline) {
  const auto rows = synthetic(1, 0.002);
  ptq_predictor p;
  const cv_report cv = p.train(rows);
  EXPECT_EQ(cv.rows, rows.size());
  EXPECT_EQ(cv.folds, 5);
  std::printf("CV RMSE %.4f, baseline %.4f, MAE %.4f (%zu rows)\n", cv.rmse, cv.rmse_constant, cv.mae, rows.size());
  EXPECT_LT(cv.rmse, 0.5 * cv.rmse_constant);
  EXPECT_LT(cv.rmse, 0.05);
  // Unseen combination: a known model with more SQNR predicts a lower NLL.
  ptq_sample q = query_for(rows, "m2", "int4/g64", "rtn");
  EXPECT_TRUE(std::isnan(q.sqnr_db));  // not measured for this format
  q.sqnr_db = 30, q.flatness = 0.05;
  const double hi = p.predict(q);
  q.sqnr_db = 12;
  const double lo = p.predict(q);
  EXPECT_GT(lo, hi);
  EXPECT_GE(hi, q.nll_float - 0.05);
}

TEST(Predict, BadInput) {
  auto rows = synthetic(2, 0.002);
  rows.resize(7);
  ptq_predictor p;
  try {
    p.train(rows);
    FAIL();
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("7 training rows, needs at least 10"), std::string::npos) << e.what();
  }
  EXPECT_THROW(query_for(rows, "nosuchmodel", "int4/g32", "rtn"), error);
  EXPECT_THROW(p.predict(rows[0]), error);  // not trained
}

TEST(Predict, SamplesFromRuns) {
  auto rec = [](std::string kind, std::string model, std::string format, double nll) {
    run_record r;
    r.kind = kind, r.model = model, r.format = format, r.canonical = format, r.method = "rtn", r.n_params = 1e6;
    r.metrics["nll"] = nll;
    return r;
  };
  std::vector<run_record> runs = {rec("explore", "a", "", 2.0), rec("explore", "a", "int4/g32", 2.3),
                                  rec("eval", "b", "int8/c", 3.1), rec("train", "a", "int4/g32", 2.5)};
  runs[1].metrics["sqnr_db"] = 19;
  runs[2].metrics["base_nll"] = 3.0;
  const auto s = samples_from_runs(runs);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_DOUBLE_EQ(s[0].nll_float, 2.0);  // from model a's float run
  EXPECT_DOUBLE_EQ(s[0].sqnr_db, 19);
  EXPECT_DOUBLE_EQ(s[1].nll_float, 3.0);  // from base_nll
  EXPECT_TRUE(std::isnan(s[1].flatness));
  EXPECT_DOUBLE_EQ(s[0].block_code, 5);
  EXPECT_DOUBLE_EQ(s[1].block_code, 16);
}

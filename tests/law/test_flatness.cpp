// The flatness feature of the PTQ predictor (law/predict.hpp measure_flatness, docs/laws.md §2.2):
// every perturbed tensor moves by exactly the norm its SQNR prescribes, in a direction fixed by
// the seed; on a trained model the NLL rises more at a lower SQNR and not at all at a very high one.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "lowbit/base/error.hpp"
#include "lowbit/engine/eval.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/law/predict.hpp"
#include "lowbit/text/documents.hpp"
#include "lowbit/base/files.hpp"
#include "tests/data.hpp"

using namespace lowbit;

namespace {

model tiny_model() {
  model m = load_model(lowbit_test::data_path("llama2c/stories260K.bin"));
  return m;
}

double rel_change(const tensor& a, const tensor& b) {
  double d2 = 0, n2 = 0;
  for (size_t i = 0; i < a.data.size(); ++i) {
    const double d = double(b.data[i]) - a.data[i];
    d2 += d * d, n2 += double(a.data[i]) * a.data[i];
  }
  return std::sqrt(d2 / n2);
}

}  // namespace

TEST(Flatness, PerturbationHasTheNormItsSqnrPrescribes) {
  ASSERT_TRUE(lowbit_test::have_data(lowbit_test::data_path("llama2c/stories260K.bin")));
  const model base = tiny_model();
  const auto names = base.linear_weight_names();
  ASSERT_GE(names.size(), 3u);
  std::vector<weight_quant_report> reports;
  const double sqnr[3] = {10.0, 20.0, 37.5};
  for (int i = 0; i < 3; ++i) {
    weight_quant_report r;
    r.name = names[size_t(i)], r.sqnr_db = sqnr[i];
    reports.push_back(r);
  }
  weight_quant_report exact;
  exact.name = names[3], exact.sqnr_db = INFINITY;  // exact in the format: left alone
  reports.push_back(exact);
  model a = base, b = base, c = base;
  law::perturb_weights(a, reports, 7);
  law::perturb_weights(b, reports, 7);
  law::perturb_weights(c, reports, 8);
  for (int i = 0; i < 3; ++i) {
    const std::string& n = names[size_t(i)];
    // ||dW|| / ||W|| = 10^(-SQNR/20) (float rounding of the sum aside).
    EXPECT_NEAR(rel_change(base.get(n), a.get(n)), std::pow(10.0, -sqnr[i] / 20), 1e-4 * std::pow(10.0, -sqnr[i] / 20))
        << n;
    EXPECT_EQ(a.get(n).data, b.get(n).data) << n;  // the seed fixes the direction
    EXPECT_NE(a.get(n).data, c.get(n).data) << n;  // another seed, another direction
  }
  EXPECT_EQ(a.get(names[3]).data, base.get(names[3]).data);
  for (size_t i = 4; i < names.size(); ++i) EXPECT_EQ(a.get(names[i]).data, base.get(names[i]).data) << names[i];
  // The directions of two tensors are not the same draw (one stream per tensor).
  EXPECT_NE(a.get(names[0]).data[0] - base.get(names[0]).data[0], a.get(names[1]).data[0] - base.get(names[1]).data[0]);
}

TEST(Flatness, RisesAsTheSqnrFalls) {
  ASSERT_TRUE(lowbit_test::have_data(lowbit_test::data_path("text/tinystories_val_sample.txt")));
  const model base = tiny_model();
  const auto tok = tokenizer_for_model(base);
  std::string text = read_file(lowbit_test::data_path("text/tinystories_val_sample.txt"), "text");
  text.resize(20000);
  const std::vector<int32_t> ids = encode_documents(*tok, text);
  eval_options eo;
  eo.ctx = 128, eo.max_tokens = 512;
  law::flatness_options o;
  o.draws = 2;
  const law::flatness_result int8 = law::measure_flatness(base, "int8/c", ids, eo, o);
  const law::flatness_result int3 = law::measure_flatness(base, "int3/c", ids, eo, o);
  ASSERT_EQ(int8.increases.size(), 2u);
  EXPECT_EQ(int8.float_nll, evaluate(base, {}, ids, eo).mean_nll);  // the float model's NLL, not the perturbed one's
  // int8 per channel: ~40 dB, noise that barely moves the NLL; int3: ~12 dB, a clear rise.
  EXPECT_LT(std::fabs(int8.mean_increase), 0.01);
  EXPECT_GT(int3.mean_increase, 0.05);
  EXPECT_GT(int3.mean_increase, 5 * std::fabs(int8.mean_increase));
  EXPECT_TRUE(std::isfinite(int3.stderr_increase));
  // A float NLL the caller measured is used as given: the perturbed NLLs are the same draws.
  law::flatness_options given = o;
  given.float_nll = int3.float_nll + 0.25;
  const law::flatness_result reused = law::measure_flatness(base, "int3/c", ids, eo, given);
  EXPECT_EQ(reused.float_nll, given.float_nll);
  ASSERT_EQ(reused.increases.size(), 2u);
  for (size_t d = 0; d < 2; ++d)
    EXPECT_NEAR(reused.increases[d], int3.increases[d] - 0.25, 1e-12) << d;
  EXPECT_THROW(law::measure_flatness(base, "fp32", ids, eo, o), lowbit::error);
  o.draws = 0;
  EXPECT_THROW(law::measure_flatness(base, "int8/c", ids, eo, o), lowbit::error);
}

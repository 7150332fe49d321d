// The PTQ method table (ptq/methods.hpp): names, lookups and what each method asks of the job.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "lowbit/base/error.hpp"
#include "lowbit/ptq/methods.hpp"

namespace lowbit {
namespace {

TEST(MethodTable, NamesAreUniqueAndRoundTrip) {
  std::set<std::string> names;
  for (const ptq::method_info& m : ptq::methods()) {
    EXPECT_TRUE(names.insert(m.name).second) << m.name;
    EXPECT_EQ(ptq::parse_method(m.name), m.id);
    EXPECT_STREQ(ptq::method_name(m.id), m.name);
    EXPECT_EQ(&ptq::method_of(m.id), &m);
    EXPECT_EQ(ptq::find_method(m.name), &m);
    EXPECT_NE(m.quantize, nullptr) << m.name;
  }
  EXPECT_EQ(ptq::find_method("gptx"), nullptr);
  EXPECT_THROW(ptq::parse_method("GPTQ"), error);  // names are exact
}

TEST(MethodTable, ListsEveryMethodInOrder) {
  // The CLI's help and parse_method's error list the table in its order.
  EXPECT_EQ(ptq::method_names(", ", " or "), "rtn, gptq, awq, smoothquant, imatrix, powerquant, llmfp4, adaround or nupes");
  EXPECT_EQ(ptq::method_names(" | ", " | "), "rtn | gptq | awq | smoothquant | imatrix | powerquant | llmfp4 | adaround | nupes");
  try {
    ptq::parse_method("gptx");
    FAIL();
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("expected rtn, gptq, awq, smoothquant, imatrix, powerquant, llmfp4, adaround or nupes"),
              std::string::npos)
        << e.what();
  }
}

TEST(MethodTable, NeedsMatchTheMethods) {
  // What the job collects per block (docs/ptq.md "Methods"): only these read calibration inputs.
  EXPECT_FALSE(ptq::method_of(ptq::method::rtn).needs.calibration);
  EXPECT_FALSE(ptq::method_of(ptq::method::powerquant).needs.calibration);
  EXPECT_TRUE(ptq::method_of(ptq::method::gptq).needs.hessian);
  EXPECT_TRUE(ptq::method_of(ptq::method::awq).needs.calibration);  // its statistics from the sampled rows
  EXPECT_TRUE(ptq::method_of(ptq::method::smoothquant).needs.channel_stats);
  EXPECT_TRUE(ptq::method_of(ptq::method::imatrix).needs.square_sums);
  EXPECT_TRUE(ptq::method_of(ptq::method::llmfp4).needs.calibration);
  EXPECT_TRUE(ptq::method_of(ptq::method::adaround).needs.hessian);
  EXPECT_TRUE(ptq::method_of(ptq::method::nupes).needs.hessian);
}

}  // namespace
}  // namespace lowbit

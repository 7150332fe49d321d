// The shipped reference vectors (../shared/data/vectors/formats.jsonl, made by an independent
// exact implementation): every output must match bit for bit, on the reference and fast paths.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "tests/data.hpp"

using namespace lowbit;

namespace {
bool same_bits(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}
// The vectors hold exact rational results, which have no sign of zero: a 0 there matches +0 and
// -0 (lowbit keeps the sign of a negative value rounded to zero in formats with a -0 code).
bool matches_vector(float got, float want) { return want == 0 ? got == 0 : same_bits(got, want); }
}  // namespace

TEST(Vectors, ShippedFormatsMatchBitForBit) {
  const std::string path = lowbit_test::data_path("vectors/formats.jsonl");
  ASSERT_TRUE(lowbit_test::have_data(path));  // missing data fails (tests/data.hpp)
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  std::string line;
  int formats_seen = 0;
  size_t values = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    const std::string spec = j["format"];
    SCOPED_TRACE(spec);
    const format f = parse_format(spec);
    std::vector<float> x, want;
    for (const auto& v : j["inputs"]) x.push_back(v.get<float>());
    for (const auto& v : j["outputs"]) want.push_back(v.get<float>());
    ASSERT_EQ(x.size(), want.size());
    std::vector<float> ref(x.size()), fast(x.size());
    const int64_t n = static_cast<int64_t>(x.size());
    fake_quantize_ref(x.data(), ref.data(), 1, n, f);
    fake_quantize(x.data(), fast.data(), 1, n, f);
    int bad = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!matches_vector(ref[i], want[i]) && bad++ < 5)
        ADD_FAILURE() << "input " << x[i] << ": want " << want[i] << " got " << ref[i];
      EXPECT_TRUE(same_bits(fast[i], ref[i])) << "fast != ref at " << i;
    }
    EXPECT_EQ(bad, 0);
    // And through packed codes.
    std::vector<float> deq(x.size());
    dequantize(quantize(x.data(), 1, n, f), deq.data());
    for (size_t i = 0; i < x.size(); ++i) EXPECT_TRUE(matches_vector(deq[i], want[i])) << i;
    ++formats_seen;
    values += x.size();
  }
  EXPECT_EQ(formats_seen, 10);
  EXPECT_EQ(values, 7 * 200u + 3 * 256u);
}

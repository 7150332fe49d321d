// The element-wise layers that run several rows side by side (src/engine/layers.hpp) give each row
// the bits of the one-row computation: causal_softmax_rows against causal_softmax row by row, and
// normalize against its per-row formula written here (the double sum over j in order).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "src/engine/layers.hpp"

namespace lowbit {
namespace {

bool same(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

TEST(Layers, SoftmaxRowsEqualOneRowAtATime) {
  std::mt19937 gen(5);
  std::normal_distribution<float> d(0.0f, 3.0f);
  constexpr int R = 4;
  const int T = 300;
  // Rows as a query block sees them: visible = pos + 1, first = 0 or pos - window + 1; short rows
  // (the one-row path), long ones, and a NaN score in one row.
  for (int window : {0, 7, 64}) {
    for (int pos0 : {0, 3, 20, 150, 290}) {
      for (bool nan : {false, true}) {
        std::vector<float> s(size_t(R) * T);
        for (float& v : s) v = d(gen);
        if (nan) s[2 * T + pos0 / 2] = std::numeric_limits<float>::quiet_NaN();
        const int keys = std::min(T, pos0 + R);
        int visible[R], first[R];
        for (int r = 0; r < R; ++r) {
          const int pos = pos0 + r;
          visible[r] = std::min(pos + 1, keys), first[r] = window ? std::max(0, pos - window + 1) : 0;
        }
        std::vector<float> one = s;
        for (int r = 0; r < R; ++r) layers::causal_softmax(one.data() + r * T, visible[r], keys, first[r]);
        layers::causal_softmax_rows<R>(s.data(), T, visible, keys, first);
        for (size_t i = 0; i < s.size(); ++i)
          ASSERT_TRUE(same(s[i], one[i])) << "window " << window << " pos0 " << pos0 << " at " << i << ": " << s[i]
                                          << " vs " << one[i];
      }
    }
  }
}

TEST(Layers, NormalizeRowsHaveTheirOwnBits) {
  std::mt19937 gen(6);
  std::normal_distribution<float> d(0.0f, 2.0f);
  const int dim = 77;
  for (layers::norm_kind kind : {layers::norm_kind::rms, layers::norm_kind::l1}) {
    for (int64_t n : {1, 3, 4, 7, 9, 1000}) {  // 1000 x 77 > 65536: the OpenMP split too
      std::vector<float> x(n * dim), w(dim), out(n * dim), inv(n);
      for (float& v : x) v = d(gen);
      for (float& v : w) v = d(gen);
      layers::normalize(kind, x.data(), w.data(), out.data(), n, dim, 1e-5f, inv.data());
      for (int64_t i = 0; i < n; ++i) {
        double acc = 0;
        for (int j = 0; j < dim; ++j) {
          const double v = x[i * dim + j];
          acc += kind == layers::norm_kind::rms ? v * v : std::fabs(v);
        }
        const float r = static_cast<float>(kind == layers::norm_kind::rms
                                               ? 1.0 / std::sqrt(acc / dim + 1e-5f)
                                               : 1.0 / (layers::l1_norm_factor * acc / dim + 1e-5f));
        ASSERT_TRUE(same(inv[i], r)) << i;
        for (int j = 0; j < dim; ++j) ASSERT_TRUE(same(out[i * dim + j], w[j] * (r * x[i * dim + j]))) << i << " " << j;
      }
    }
  }
}

}  // namespace
}  // namespace lowbit

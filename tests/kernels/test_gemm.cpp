// tiled_sgemm (kernels/gemm.hpp, docs/conventions.md §47): the same bits at any thread count, equal
// to its tiles computed one by one, for awkward shapes, every transpose and beta != 0.
#include <gtest/gtest.h>
#include <omp.h>

#include <random>
#include <vector>

#include "bits.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/kernels/threads.hpp"

namespace {

using namespace lowbit;

struct shape {
  int64_t m, n, k;
};

// [m, n] x k shapes: one tile (small), ragged tiles in both directions, a narrow n, a short k, and
// a product cut into several tiles only along one side.
const shape kShapes[] = {{1, 33, 7}, {77, 301, 129}, {513, 1031, 65}, {600, 47, 300}, {31, 2000, 64}, {1000, 17, 1000}};

struct operands {
  std::vector<float> a, b, c0;
  int64_t lda, ldb, ldc;
};

// Leading dimensions wider than the matrices (views into larger arrays), values in [-1, 1).
operands make(const shape& s, gemm_op op_a, gemm_op op_b, unsigned seed) {
  std::mt19937 rng(test::seed(seed));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  operands o;
  const int64_t a_rows = op_a == gemm_op::none ? s.m : s.k, a_cols = op_a == gemm_op::none ? s.k : s.m;
  const int64_t b_rows = op_b == gemm_op::none ? s.k : s.n, b_cols = op_b == gemm_op::none ? s.n : s.k;
  o.lda = a_cols + 3, o.ldb = b_cols + 5, o.ldc = s.n + 2;
  o.a.resize(size_t(a_rows * o.lda)), o.b.resize(size_t(b_rows * o.ldb)), o.c0.resize(size_t(s.m * o.ldc));
  for (auto* v : {&o.a, &o.b, &o.c0})
    for (float& x : *v) x = u(rng);
  return o;
}

// The specification: each tile of sgemm_tiles as its own one-thread sgemm.
std::vector<float> tile_by_tile(const shape& s, gemm_op op_a, gemm_op op_b, const operands& o, float beta) {
  std::vector<float> c = o.c0;
  const gemm_tiles t = sgemm_tiles(s.m, s.n, s.k);
  for (int64_t r0 = 0; r0 < s.m; r0 += t.rows)
    for (int64_t c0 = 0; c0 < s.n; c0 += t.cols) {
      const float* a = o.a.data() + (op_a == gemm_op::none ? r0 * o.lda : r0);
      const float* b = o.b.data() + (op_b == gemm_op::none ? c0 : c0 * o.ldb);
      serial_sgemm(op_a, op_b, std::min(t.rows, s.m - r0), std::min(t.cols, s.n - c0), s.k, 0.75f, a, o.lda, b,
                   o.ldb, beta, c.data() + r0 * o.ldc + c0, o.ldc);
    }
  return c;
}

TEST(TiledSgemm, SameBitsAtOneTwoAndThreeThreads) {
  const int saved = omp_get_max_threads();
  set_threads_follow_load(false);  // the team asked for, whatever the machine's load
  unsigned seed = 1;
  for (const shape& s : kShapes)
    for (gemm_op op_a : {gemm_op::none, gemm_op::transpose})
      for (gemm_op op_b : {gemm_op::none, gemm_op::transpose})
        for (float beta : {0.0f, 0.5f}) {
          const operands o = make(s, op_a, op_b, seed++);
          const std::vector<float> want = tile_by_tile(s, op_a, op_b, o, beta);
          for (int threads : {1, 2, 3}) {
            omp_set_num_threads(threads);
            std::vector<float> c = o.c0;
            tiled_sgemm(op_a, op_b, s.m, s.n, s.k, 0.75f, o.a.data(), o.lda, o.b.data(), o.ldb, beta, c.data(), o.ldc);
            int64_t differ = 0;
            for (size_t i = 0; i < c.size(); ++i) differ += !test::same(c[i], want[i]);
            EXPECT_EQ(differ, 0) << s.m << "x" << s.n << "x" << s.k << " op_a " << int(op_a) << " op_b " << int(op_b)
                                 << " beta " << beta << " threads " << threads;
          }
        }
  omp_set_num_threads(saved);
  set_threads_follow_load(true);
}

// Inside a parallel region (one thread per head, conventions §46) the same tiles run on the caller.
TEST(TiledSgemm, InsideParallelRegionSameBits) {
  const shape s{513, 1031, 65};
  const operands o = make(s, gemm_op::none, gemm_op::transpose, 99);
  const std::vector<float> want = tile_by_tile(s, gemm_op::none, gemm_op::transpose, o, 0.0f);
  std::vector<std::vector<float>> got(2, o.c0);
  #pragma omp parallel for num_threads(2)
  for (int i = 0; i < 2; ++i)
    tiled_sgemm(gemm_op::none, gemm_op::transpose, s.m, s.n, s.k, 0.75f, o.a.data(), o.lda, o.b.data(), o.ldb, 0.0f,
                got[size_t(i)].data(), o.ldc);
  for (const auto& c : got) {
    int64_t differ = 0;
    for (size_t i = 0; i < c.size(); ++i) differ += !test::same(c[i], want[i]);
    EXPECT_EQ(differ, 0);
  }
}

// The tiles follow the shape only; K is never split (a tile is a whole-k product), and tiles cover
// the product with at least kMinTiles-like sharing for the 110M Llama's layers.
TEST(TiledSgemm, TilesOfTheModelShapes) {
  EXPECT_EQ(sgemm_tiles(1, 33, 7).count(1, 33), 1);  // small: one tile on the caller
  const gemm_tiles q = sgemm_tiles(512, 768, 768);   // [512, 768] x [768, 768]^T
  EXPECT_EQ(q.rows, 256);
  EXPECT_EQ(q.cols, 384);
  const gemm_tiles cls = sgemm_tiles(512, 32000, 768);  // the classifier
  EXPECT_EQ(cls.rows, 512);
  EXPECT_EQ(cls.cols % 16, 0);
  EXPECT_GE(cls.count(512, 32000), 60);
}

// tiled_ssyrk_upper: the upper triangle of A^T A, the same bits at 1, 2 and 3 threads, its
// off-diagonal tiles equal to one sgemm each; the strict lower triangle untouched.
TEST(TiledSsyrk, SameBitsAtOneTwoAndThreeThreadsAndLowerUntouched) {
  const int saved = omp_get_max_threads();
  set_threads_follow_load(false);
  const shape shapes[] = {{5, 5, 3}, {300, 300, 77}, {1030, 1030, 200}};  // n x n, k
  unsigned seed = 200;
  for (const shape& s : shapes) {
    const operands o = make({s.k, s.n, 1}, gemm_op::none, gemm_op::none, seed++);  // A: [k, n], lda n + 3
    const int64_t n = s.n, k = s.k, lda = o.lda, ldc = n + 2;
    std::vector<float> c0(size_t(n * ldc));
    for (size_t i = 0; i < c0.size(); ++i) c0[i] = float(i % 7) * 0.25f;
    // The specification of the off-diagonal tiles, one by one (a diagonal tile is ssyrk's own sums:
    // checked for thread-independence only).
    std::vector<float> want = c0;
    const int64_t t = ssyrk_tile(n, k);
    for (int64_t r0 = 0; r0 < n; r0 += t)
      for (int64_t j0 = r0 + t; j0 < n; j0 += t)
        serial_sgemm(gemm_op::transpose, gemm_op::none, std::min(t, n - r0), std::min(t, n - j0), k, 1.5f,
                     o.a.data() + r0, lda, o.a.data() + j0, lda, 0.5f, want.data() + r0 * ldc + j0, ldc);
    std::vector<float> first;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      std::vector<float> c = c0;
      tiled_ssyrk_upper(n, k, 1.5f, o.a.data(), lda, 0.5f, c.data(), ldc);
      if (first.empty()) first = c;
      int64_t differ = 0, lower_moved = 0, off_diagonal_tiles_differ = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
          const size_t at = size_t(i * ldc + j);
          differ += !test::same(c[at], first[at]);
          if (j < i) lower_moved += !test::same(c[at], c0[at]);
          if (i / t != j / t && j > i) off_diagonal_tiles_differ += !test::same(c[at], want[at]);
        }
      EXPECT_EQ(differ, 0) << n << " x " << k << " threads " << threads;
      EXPECT_EQ(lower_moved, 0) << n << " x " << k;
      EXPECT_EQ(off_diagonal_tiles_differ, 0) << n << " x " << k;
    }
  }
  omp_set_num_threads(saved);
  set_threads_follow_load(true);
}

}  // namespace

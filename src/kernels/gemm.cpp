// tiled_sgemm (kernels/gemm.hpp): OpenBLAS sgemm per tile, tiles over the load-following team.
#include "lowbit/kernels/gemm.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "lowbit/kernels/threads.hpp"

namespace lowbit {
namespace {

// Tile targets, measured on the AVX2 Zen machine (thread CPU time, one thread, the 110M Llama's
// shapes with m = 512 tokens: [512, 768 | 2048 | 32000] with k = 768, [512, 768] with k = 2048):
// tiles of 256..512 rows and 384..512 columns ran at 0.93-0.99 of one untiled sgemm (512 rows
// 1-3% ahead of 256), 64-column tiles at 0.75-0.84 (each tile packs its own panels of A and B).
constexpr int64_t kTileRows = 512, kTileCols = 512;
// A product is cut into at least this many tiles while each keeps kMinTileMultiplyAdds, so that a
// team of two to four threads shares it (stories15M's [256, 288] x [288, 288]^T: four tiles of
// [128, 144]). A constant, not the team size: the tiles must not follow the thread count.
constexpr int64_t kMinTiles = 4;
constexpr int64_t kMinTileMultiplyAdds = int64_t{1} << 19;
// Tile edges fall on multiples of this (OpenBLAS's AVX2 sgemm kernels are 16 or fewer wide), so
// only the product's last row and column of tiles run its edge kernels.
constexpr int64_t kTileAlign = 16;
// Products of at most this many multiply-adds (2 MFLOP, ~25 us at one thread) are one tile on the
// calling thread: waking a team costs more.
constexpr int64_t kSerialMultiplyAdds = int64_t{1} << 20;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t aligned(int64_t part) { return ceil_div(part, kTileAlign) * kTileAlign; }

}  // namespace

gemm_tiles sgemm_tiles(int64_t m, int64_t n, int64_t k) {
  m = std::max<int64_t>(m, 1), n = std::max<int64_t>(n, 1);
  if (m * n * k <= kSerialMultiplyAdds) return {m, n};
  // Parts per dimension: within the tile targets, then more (cutting the longer side of a tile)
  // until kMinTiles, while a tile keeps kMinTileMultiplyAdds and both sides reach 2 x kTileAlign.
  int64_t row_parts = ceil_div(m, kTileRows), col_parts = ceil_div(n, kTileCols);
  while (row_parts * col_parts < kMinTiles && m * n * k / (row_parts * col_parts + 1) >= kMinTileMultiplyAdds) {
    const bool rows_can = m / (row_parts + 1) >= 2 * kTileAlign, cols_can = n / (col_parts + 1) >= 2 * kTileAlign;
    const bool rows_longer = ceil_div(m, row_parts) >= ceil_div(n, col_parts);
    if (rows_can && (rows_longer || !cols_can)) ++row_parts;
    else if (cols_can) ++col_parts;
    else break;
  }
  return {std::min(m, aligned(ceil_div(m, row_parts))), std::min(n, aligned(ceil_div(n, col_parts)))};
}

void serial_sgemm(gemm_op op_a, gemm_op op_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  // One thread: inside an active parallel region OpenBLAS runs on the caller; elsewhere it follows
  // omp_get_max_threads(), which the scope sets to 1.
  const serial_scope one(!omp_in_parallel());
  cblas_sgemm(CblasRowMajor, op_a == gemm_op::transpose ? CblasTrans : CblasNoTrans,
              op_b == gemm_op::transpose ? CblasTrans : CblasNoTrans, int(m), int(n), int(k), alpha, a, int(lda), b,
              int(ldb), beta, c, int(ldc));
}

namespace {

// Runs tile(0..tiles-1), each a single-threaded OpenBLAS call, over the load-following team.
// OpenMP OpenBLAS threads a call over omp_get_max_threads() unless it runs inside an active
// parallel region; each tile must be one thread's call, so the team size is 1 around every call
// (a thread's ICV, restored when its scope or region ends).
template <class Tile>
void run_tiles(int64_t tiles, const Tile& tile) {
  const serial_scope team(tiles == 1 || omp_in_parallel());
  if (team.serial()) {
    for (int64_t i = 0; i < tiles; ++i) tile(i);
    return;
  }
  #pragma omp parallel
  {
    omp_set_num_threads(1);
    // Dynamic: a thread that lost its core takes fewer tiles (docs/architecture.md §17b).
    #pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < tiles; ++i) tile(i);
  }
}

}  // namespace

void tiled_sgemm(gemm_op op_a, gemm_op op_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const gemm_tiles t = sgemm_tiles(m, n, k);
  const int64_t col_tiles = ceil_div(n, t.cols);
  const bool ta = op_a == gemm_op::transpose, tb = op_b == gemm_op::transpose;
  run_tiles(t.count(m, n), [&](int64_t i) {
    const int64_t r0 = i / col_tiles * t.rows, c0 = i % col_tiles * t.cols;
    const int64_t rows = std::min(t.rows, m - r0), cols = std::min(t.cols, n - c0);
    // op(A)'s rows r0.. are A's rows (none) or columns (transpose); op(B)'s columns c0.. likewise.
    serial_sgemm(op_a, op_b, rows, cols, k, alpha, a + (ta ? r0 : r0 * lda), lda, b + (tb ? c0 * ldb : c0), ldb, beta,
                 c + r0 * ldc + c0, ldc);
  });
}

int64_t ssyrk_tile(int64_t n, int64_t k) {
  const gemm_tiles t = sgemm_tiles(n, n, k);
  return std::min(t.rows, t.cols);
}

void tiled_ssyrk_upper(int64_t n, int64_t k, float alpha, const float* a, int64_t lda, float beta, float* c,
                       int64_t ldc) {
  if (n <= 0) return;
  const int64_t s = ssyrk_tile(n, k), blocks = ceil_div(n, s);
  // The upper triangle's tiles (I, J), J >= I, row by row: tile i is the i-th of them.
  std::vector<std::pair<int64_t, int64_t>> upper;
  for (int64_t I = 0; I < blocks; ++I)
    for (int64_t J = I; J < blocks; ++J) upper.emplace_back(I, J);
  run_tiles(int64_t(upper.size()), [&](int64_t i) {
    const int64_t r0 = upper[size_t(i)].first * s, c0 = upper[size_t(i)].second * s;
    const int64_t rows = std::min(s, n - r0), cols = std::min(s, n - c0);
    if (r0 == c0)  // a diagonal tile: its upper triangle, as ssyrk leaves the lower one alone
      cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(rows), int(k), alpha, a + r0, int(lda), beta,
                  c + r0 * ldc + r0, int(ldc));
    else  // A[:, rows]^T A[:, cols]
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(rows), int(cols), int(k), alpha, a + r0, int(lda),
                  a + c0, int(lda), beta, c + r0 * ldc + c0, int(ldc));
  });
}

}  // namespace lowbit

// The engine's float matrix product: C = alpha op(A) op(B) + beta C (row-major, cblas_sgemm's
// CblasRowMajor arguments) whose bits do not depend on the thread count (docs/conventions.md §47).
//
// OpenBLAS's own threading splits a product across the threads it is given, and the split moves
// the edges of its blocking, which changes the last bits of some sums (an AVX2 Zen machine: 7% of a
// [512, 768] x [768, 768]^T product's values differ between one and two threads). Here C is cut
// into tiles whose shape depends only on (m, n, k) (sgemm_tiles), K is never split, and each tile
// is one single-threaded sgemm; the tiles are shared over the OpenMP team that threads.hpp's
// serial_scope picks (the load-following team). A tile's value does not depend on which thread
// computes it, so 1, 2 or 3 threads give the same C bit for bit. The tiles' bits do differ from one
// untiled sgemm call's: OpenBLAS's blocking follows the call's m and n.
#pragma once

#include <cstdint>

namespace lowbit {

enum class gemm_op : bool { none, transpose };

// The tile shape of an [m, n] product with inner dimension k: rows x cols (the last row and column
// of tiles may be smaller). A function of (m, n, k) only.
struct gemm_tiles {
  int64_t rows = 0, cols = 0;
  int64_t count(int64_t m, int64_t n) const { return ((m + rows - 1) / rows) * ((n + cols - 1) / cols); }
};
gemm_tiles sgemm_tiles(int64_t m, int64_t n, int64_t k);

// C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, every matrix row-major with the given leading
// dimension (op none: A is [m, lda >= k]; transpose: A is [k, lda >= m]; B likewise). Called
// inside an active OpenMP parallel region it runs the same tiles on the calling thread.
void tiled_sgemm(gemm_op op_a, gemm_op op_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The upper triangle (j >= i) of C[n, n] = alpha A^T A + beta C, A [k, n] row-major (lda >= n):
// cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, ...)'s result (the strict lower triangle left
// alone), in square tiles of side ssyrk_tile(n, k) (sgemm_tiles of the [n, n] product): a diagonal
// tile one single-threaded ssyrk, the others one single-threaded sgemm each. K is never split.
int64_t ssyrk_tile(int64_t n, int64_t k);
void tiled_ssyrk_upper(int64_t n, int64_t k, float alpha, const float* a, int64_t lda, float beta, float* c,
                       int64_t ldc);

// The same product as one single-threaded sgemm on the calling thread, untiled: for products that
// one thread of a team computes whole, side by side with the other threads' (attention's per-head
// products, docs/conventions.md §46), and that must give those bits when the heads run in turn.
void serial_sgemm(gemm_op op_a, gemm_op op_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace lowbit

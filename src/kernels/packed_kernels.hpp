// The packed products' per-ISA kernels (include/lowbit/kernels/packed_matmul.hpp), shared by
//   packed_matmul.cpp       the references, pack_matrix, dispatch, the AVX-512 (and VNNI) kernels
//   packed_matmul_avx2.cpp  the AVX2 kernels (CPUs without AVX-512)
// Every kernel equals its reference bit for bit (docs/conventions.md §44).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "lowbit/kernels/packed_matmul.hpp"

namespace lowbit::detail {

// Whether a product of rows x cols x n is worth OpenMP threads (rows split over threads; the bits
// do not depend on it).
bool packed_product_threads(int64_t rows, int64_t cols, int64_t n);

// x [n, cols] with each block of 16 columns as [its 8 even columns | its 8 odd ones]: the order of
// a 4-bit row's codes as the low nibbles, then the high nibbles, of its 8 bytes.
std::vector<float> permuted_x(const float* x, int64_t n, int64_t cols);

// Prefetch distance of the packed GEMVs, in rows: rows are read one after another (one stream from
// memory), and the row this many on is requested ahead (bench/bench_packed.cpp: 4 rows >= 8).
constexpr int64_t kPrefetchRows = 4;

// Whether a 4-bit table is q4_0's (value = code - 8): the code itself is the weight plus 8.
inline bool lut_is_code_minus_8(const packed_matrix& w) {
  if (w.bits != 4) return false;
  for (int c = 0; c < 16; ++c)
    if (w.lut[size_t(c)] != float(c - 8)) return false;
  return true;
}

// A tile's rows [o0, o0 + R): each row's codes and its first group's scale.
template <int R>
struct tile_rows {
  const uint8_t* codes[R];
  const float* scales[R];
  tile_rows(const packed_matrix& w, int64_t o0) {
    for (int i = 0; i < R; ++i) {
      codes[i] = w.codes.data() + (o0 + i) * w.row_bytes;
      scales[i] = w.scales.data() + (o0 + i) * w.groups_per_row();
    }
  }
};

// The GEMV's prefetch into L1 of rows [first, first + count) (codes and scales; contiguous), when
// they exist: one row's codes are a few cache lines, which the kernels need before the hardware
// prefetcher has seen the row's stream.
inline void prefetch_rows(const packed_matrix& w, int64_t first, int64_t count) {
  if (first + count > w.rows) return;
  const uint8_t* codes = w.codes.data() + first * w.row_bytes;
  for (int64_t b = 0; b < count * w.row_bytes; b += 64) __builtin_prefetch(codes + b, 0, 3);
  const float* scales = w.scales.data() + first * w.groups_per_row();
  for (int64_t b = 0; b < count * w.groups_per_row(); b += 16) __builtin_prefetch(scales + b, 0, 3);
}

// lane_ordered_matmul's schedule, the same for every ISA: a GEMV (n == 1) in chunks of 64 rows,
// gemv(o0, o1) computing rows [o0, o1); a GEMM in blocks of 4 rows, each against every token in
// turn, rows4(o0, t) computing rows [o0, o0 + 4) of token t and row1(o, t) one row (the last
// block's). Threaded over the chunks or blocks when packed_product_threads says so.
template <class Gemv, class Rows4, class Row1>
void lane_ordered_schedule(int64_t rows, int64_t cols, int64_t n, const Gemv& gemv, const Rows4& rows4,
                           const Row1& row1) {
  const bool threads = packed_product_threads(rows, cols, n);
  if (n == 1) {
    const int64_t chunks = (rows + 63) / 64;
#pragma omp parallel for schedule(static) if (threads)
    for (int64_t b = 0; b < chunks; ++b) gemv(b * 64, std::min(rows, b * 64 + 64));
    return;
  }
  const int64_t blocks = (rows + 3) / 4;
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t o0 = b * 4;
    for (int64_t t = 0; t < n; ++t) {
      if (o0 + 4 <= rows) rows4(o0, t);
      else
        for (int64_t o = o0; o < rows; ++o) row1(o, t);
    }
  }
}

// AVX2 (callers check the CPU): packed_matmul, lane_ordered_matmul (n >= 1, rows >= 1) and
// packed_matmul_int (check_int passed, w.group a multiple of 32).
void packed_matmul_avx2(const packed_matrix& w, const float* x, int64_t n, float* y);
void lane_ordered_matmul_avx2(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y);
void packed_matmul_int_avx2(const packed_matrix& w, const int8_activations& a, float* y);

}  // namespace lowbit::detail

// The packed products' per-ISA kernels (include/lowbit/kernels/packed_matmul.hpp), shared by
//   packed_matmul.cpp       the references, pack_matrix, dispatch, the AVX-512 (and VNNI) kernels
//   packed_matmul_avx2.cpp  the AVX2 kernels (CPUs without AVX-512)
// Every kernel equals its reference bit for bit (docs/conventions.md §44).
#pragma once

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

// AVX2 (callers check the CPU): packed_matmul, lane_ordered_matmul (n >= 1, rows >= 1) and
// packed_matmul_int (check_int passed, w.group a multiple of 32).
void packed_matmul_avx2(const packed_matrix& w, const float* x, int64_t n, float* y);
void lane_ordered_matmul_avx2(const float* w, int64_t rows, int64_t cols, const float* x, int64_t n, float* y);
void packed_matmul_int_avx2(const packed_matrix& w, const int8_activations& a, float* y);

}  // namespace lowbit::detail

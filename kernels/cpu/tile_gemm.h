// Register-blocked products for attention tiles (kernels/cpu/attention_tasks.cc). On tiles of a
// few dozen to a few hundred rows, OpenBLAS sgemm spends a fifth or more of its time packing both
// operands on every call and more on call overhead for the tiny tiles of short documents. Here the
// caller packs the B operand into 16-column panels once per tile and reuses it for every row and
// head that needs it; A is read where it lies; the causal edge is skipped per block of rows.
#pragma once

#include <cstdint>

namespace cadtrain::kernels::cpu {

// Columns of C per micro-tile (two 8-float vectors) and rows per micro-tile; TileLimits apply
// per block of kTileRows rows.
constexpr int64_t kTilePanel = 16;
constexpr int64_t kTileRows = 6;

// Floats of the panels of an [k, n] B (pack_panels), or of an [n, k] B^T (pack_transposed).
inline int64_t packed_size(int64_t n, int64_t k) { return (n + kTilePanel - 1) / kTilePanel * kTilePanel * k; }

// dst = src^T in panels of 16 columns, src [n, k] row-major with row stride ld:
// dst[(p * k + kk) * 16 + c] = src[(p * 16 + c) * ld + kk], 0 where p * 16 + c >= n.
void pack_transposed(float* dst, const float* src, int64_t ld, int64_t n, int64_t k);

// The same panels from a row-major B [k, n] with row stride ld: dst[(p * k + kk) * 16 + c] =
// src[kk * ld + p * 16 + c]. Worth it when ld is a large power of two: the rows of one panel
// would otherwise fall into a few L1 sets and evict each other.
void pack_panels(float* dst, const float* src, int64_t ld, int64_t k, int64_t n);

// The A [m, k] operand: element (i, kk) is p[i * row_stride + kk * k_stride]. A row-major matrix
// has k_stride 1; the transpose of a row-major matrix has row_stride 1.
struct TileA {
  const float* p = nullptr;
  int64_t row_stride = 0, k_stride = 1;
};

// Optional per-row bounds on the work, each an array of m entries (nullptr: none).
struct TileLimits {
  // Row i needs only columns [0, n_end[i]) of C; its other columns are left unspecified.
  const int64_t* n_end = nullptr;
  // A(i, kk) is 0 for kk >= k_end[i] and for kk < k_begin[i]: those terms may be skipped.
  const int64_t* k_end = nullptr;
  const int64_t* k_begin = nullptr;
};

// C[m, n] = alpha A B, or C += alpha A B when accumulate; C row-major with row stride ldc, B [k, n]
// in panels (pack_panels of B, or pack_transposed of B^T). Runs on the calling thread.
void tile_gemm(float* c, int64_t ldc, const TileA& a, const float* b, int64_t m, int64_t n, int64_t k, float alpha,
               bool accumulate, const TileLimits& limits = {});

}  // namespace cadtrain::kernels::cpu

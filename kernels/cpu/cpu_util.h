// Small helpers shared by the CPU kernels: argument checks, sgemm dimension casts, the fixed
// blocking of elementwise loops and per-thread column ranges.
#pragma once

#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/error.h"

namespace cadtrain::kernels::cpu {

// Elementwise loops run over fixed blocks of this many floats (64 KiB): big enough to amortise
// OpenMP scheduling, and a fixed size makes block-wise reductions independent of thread count.
constexpr size_t kBlock = 16384;
// Below this many elements an op runs on the calling thread: waking the team costs more than the
// work (a few microseconds idle, milliseconds when another process holds a core).
constexpr int64_t kParallelMin = 4 * static_cast<int64_t>(kBlock);

inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// OpenBLAS takes 32-bit dimensions; larger ones are a caller bug we name rather than truncate.
inline int blas_dim(int64_t v, const char* op, const char* what) {
  CADTRAIN_CHECK(v >= 0 && v <= INT_MAX, "{}: {} = {} is out of range for sgemm", op, what, v);
  return static_cast<int>(v);
}

inline void check_nonneg(int64_t v, const char* op, const char* what) {
  CADTRAIN_CHECK(v >= 0, "{}: {} = {} is negative", op, what, v);
}

template <typename T>
inline void check_ptr(const T* p, bool needed, const char* op, const char* what) {
  CADTRAIN_CHECK(p != nullptr || !needed, "{}: {} is null", op, what);
}

// Runs fn(begin, end) over [0, count) in kBlock pieces, in parallel from kParallelMin elements.
template <typename Fn>
inline void parallel_blocks(size_t count, Fn&& fn) {
  const auto blocks = static_cast<int64_t>(ceil_div(count, kBlock));
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(count) >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const size_t begin = static_cast<size_t>(b) * kBlock;
    fn(begin, std::min(count, begin + kBlock));
  }
}

// The calling thread's share [begin, end) of `total` columns inside a parallel region. Shares are
// multiples of 16 floats (one cache line), so no two threads write the same line.
struct Range {
  int64_t begin = 0, end = 0;
};
inline Range thread_columns(int64_t total) {
  const int64_t threads = omp_get_num_threads();
  const int64_t per = static_cast<int64_t>(ceil_div(ceil_div(static_cast<size_t>(total), threads), 16)) * 16;
  const int64_t begin = std::min(total, per * omp_get_thread_num());
  return {begin, std::min(total, begin + per)};
}

// A reusable buffer of at least n elements (callers keep one thread_local per use, so hot loops
// stop allocating after the first call).
template <typename T>
inline T* scratch(std::vector<T>& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// Validates packed-sequence offsets: cu[0] == 0, non-decreasing. Returns cu[n_seqs], the tokens.
inline int64_t check_cu_seqlens(const int32_t* cu, int64_t n_seqs, const char* op) {
  CADTRAIN_CHECK(n_seqs >= 0, "{}: n_seqs = {} is negative", op, n_seqs);
  CADTRAIN_CHECK(cu != nullptr, "{}: cu_seqlens is null", op);
  CADTRAIN_CHECK(cu[0] == 0, "{}: cu_seqlens[0] = {}, expected 0", op, cu[0]);
  for (int64_t s = 0; s < n_seqs; ++s) {
    CADTRAIN_CHECK(cu[s + 1] >= cu[s], "{}: cu_seqlens[{}] = {} < cu_seqlens[{}] = {}", op, s + 1, cu[s + 1], s,
                   cu[s]);
  }
  return cu[n_seqs];
}

}  // namespace cadtrain::kernels::cpu

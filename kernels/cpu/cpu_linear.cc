// Linear layers (OpenBLAS sgemm, all threads) and the token embedding.
#include <cblas.h>

#include <cstring>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_util.h"

namespace cadtrain::kernels::cpu {

void CpuBackend::linear_forward(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out) {
  const int N = blas_dim(n, "linear_forward", "n");
  const int I = blas_dim(in, "linear_forward", "in");
  const int O = blas_dim(out, "linear_forward", "out");
  if (N == 0 || O == 0) return;
  check_ptr(y, true, "linear_forward", "y");
  if (I == 0) return zero(y, static_cast<size_t>(n) * out);
  check_ptr(x, true, "linear_forward", "x");
  check_ptr(w, true, "linear_forward", "w");
  // y[N,O] = x[N,I] W[O,I]^T
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, I, 1.0f, x, I, w, I, 0.0f, y, O);
}

void CpuBackend::linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                                 int64_t in, int64_t out, bool accumulate_dx) {
  const int N = blas_dim(n, "linear_backward", "n");
  const int I = blas_dim(in, "linear_backward", "in");
  const int O = blas_dim(out, "linear_backward", "out");
  if (N == 0 || I == 0) return;  // dx and dw are empty, or dw += an empty sum
  check_ptr(dw, true, "linear_backward", "dw");
  if (O == 0) {  // dx = a product over an empty dimension
    if (dx != nullptr && !accumulate_dx) zero(dx, static_cast<size_t>(n) * in);
    return;
  }
  check_ptr(dy, true, "linear_backward", "dy");
  check_ptr(x, true, "linear_backward", "x");
  if (dx != nullptr) {
    check_ptr(w, true, "linear_backward", "w");
    // dx[N,I] (+)= dy[N,O] W[O,I]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, O, 1.0f, dy, O, w, I, accumulate_dx ? 1.0f : 0.0f,
                dx, I);
  }
  // dw[O,I] += dy[N,O]^T x[N,I]
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, I, N, 1.0f, dy, O, x, I, 1.0f, dw, I);
}

// Token ids are not range-checked here: the interface carries no vocabulary size, so the data
// pipeline validates ids against the dataset's vocab_size when it reads them.
void CpuBackend::embedding_forward(float* out, const uint32_t* tokens, const float* table, int64_t n, int64_t c) {
  check_nonneg(n, "embedding_forward", "n");
  check_nonneg(c, "embedding_forward", "c");
  if (n == 0 || c == 0) return;
  check_ptr(out, true, "embedding_forward", "out");
  check_ptr(tokens, true, "embedding_forward", "tokens");
  check_ptr(table, true, "embedding_forward", "table");
  // out[i, :] = table[tokens[i], :]
#pragma omp parallel for schedule(static) if (n * c >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * c, table + static_cast<int64_t>(tokens[i]) * c, static_cast<size_t>(c) * sizeof(float));
  }
}

void CpuBackend::embedding_backward(float* dtable, const float* dout, const uint32_t* tokens, int64_t n,
                                    int64_t c) {
  check_nonneg(n, "embedding_backward", "n");
  check_nonneg(c, "embedding_backward", "c");
  if (n == 0 || c == 0) return;
  check_ptr(dtable, true, "embedding_backward", "dtable");
  check_ptr(dout, true, "embedding_backward", "dout");
  check_ptr(tokens, true, "embedding_backward", "tokens");
  // dtable[tokens[i], :] += dout[i, :]. A token may repeat, so threads split the columns rather
  // than the rows: no two threads touch one element, and every element sums its rows in order
  // (the result does not depend on the thread count).
#pragma omp parallel if (n * c >= kParallelMin)
  {
    const Range cols = thread_columns(c);
    for (int64_t i = 0; i < n && cols.begin < cols.end; ++i) {
      float* dst = dtable + static_cast<int64_t>(tokens[i]) * c;
      const float* src = dout + i * c;
#pragma omp simd
      for (int64_t j = cols.begin; j < cols.end; ++j) dst[j] += src[j];
    }
  }
}

}  // namespace cadtrain::kernels::cpu

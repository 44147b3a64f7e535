// Causal depthwise convolution along tokens (the LFM2-style gated short-convolution block),
// per packed sequence, with zero history before each sequence start.
#include <algorithm>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_util.h"

namespace cadtrain::kernels::cpu {

namespace {

thread_local std::vector<float> t_wt;       // w transposed to [K, C]: contiguous over channels
thread_local std::vector<double> t_dw_acc;  // one thread's dw columns, [K, width]

void check_conv_args(const int32_t* cu_seqlens, int64_t n_seqs, int64_t c, int64_t k, const char* op) {
  CADTRAIN_CHECK(c > 0, "{}: channels c = {} must be > 0", op, c);
  CADTRAIN_CHECK(k > 0, "{}: kernel size k = {} must be > 0", op, k);
  check_cu_seqlens(cu_seqlens, n_seqs, op);
}

// wt[j, c] = w[c, j]
const float* transpose_weight(const float* w, int64_t c, int64_t k) {
  float* wt = scratch(t_wt, static_cast<size_t>(c * k));
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t j = 0; j < k; ++j) wt[j * c + ch] = w[ch * k + j];
  }
  return wt;
}

}  // namespace

void CpuBackend::short_conv_forward(float* z, const float* y, const float* w, const int32_t* cu_seqlens,
                                    int64_t n_seqs, int64_t c, int64_t k) {
  check_conv_args(cu_seqlens, n_seqs, c, k, "short_conv_forward");
  const int64_t n = cu_seqlens[n_seqs];
  if (n == 0) return;
  check_ptr(z, true, "short_conv_forward", "z");
  check_ptr(y, true, "short_conv_forward", "y");
  check_ptr(w, true, "short_conv_forward", "w");
  const float* wt = transpose_weight(w, c, k);
#pragma omp parallel for schedule(static) if (n * c * k >= kParallelMin)
  for (int64_t t = 0; t < n; ++t) {
    // The sequence holding t: the last offset <= t (empty sequences share their offset with the next).
    const int64_t start = *(std::upper_bound(cu_seqlens, cu_seqlens + n_seqs + 1, static_cast<int32_t>(t)) - 1);
    float* zt = z + t * c;
    std::fill(zt, zt + c, 0.0f);
    // z[t, :] = sum_j w[:, j] * y[t-K+1+j, :] over taps inside the sequence
    for (int64_t j = std::max<int64_t>(0, k - 1 - (t - start)); j < k; ++j) {
      const float* ys = y + (t - k + 1 + j) * c;
      const float* wj = wt + j * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) zt[ch] += wj[ch] * ys[ch];
    }
  }
}

void CpuBackend::short_conv_backward(float* dy, float* dw, const float* dz, const float* y, const float* w,
                                     const int32_t* cu_seqlens, int64_t n_seqs, int64_t c, int64_t k) {
  check_conv_args(cu_seqlens, n_seqs, c, k, "short_conv_backward");
  const int64_t n = cu_seqlens[n_seqs];
  if (n == 0) return;
  check_ptr(dy, true, "short_conv_backward", "dy");
  check_ptr(dw, true, "short_conv_backward", "dw");
  check_ptr(dz, true, "short_conv_backward", "dz");
  check_ptr(y, true, "short_conv_backward", "y");
  check_ptr(w, true, "short_conv_backward", "w");
  const float* wt = transpose_weight(w, c, k);
  // Threads split the channels: each owns dy[:, cols] and dw[cols, :] outright, and sums dw over
  // tokens in order (the result does not depend on the thread count).
#pragma omp parallel if (n * c * k >= kParallelMin)
  {
    const Range cols = thread_columns(c);
    const int64_t width = cols.end - cols.begin;
    if (width > 0) {
      double* acc = scratch(t_dw_acc, static_cast<size_t>(k * width));
      std::fill(acc, acc + k * width, 0.0);
      for (int64_t s = 0; s < n_seqs; ++s) {
        const int64_t start = cu_seqlens[s], end = cu_seqlens[s + 1];
        for (int64_t t = start; t < end; ++t) {
          float* dyt = dy + t * c + cols.begin;
          const float* dzt = dz + t * c + cols.begin;
          std::fill(dyt, dyt + width, 0.0f);
          for (int64_t j = 0; j < k; ++j) {
            // dy[t] += w[:, j] dz[t+K-1-j] (the output that read y[t] through tap j)
            const int64_t out = t + k - 1 - j;
            if (out < end) {
              const float* wj = wt + j * c + cols.begin;
              const float* dzo = dz + out * c + cols.begin;
#pragma omp simd
              for (int64_t ch = 0; ch < width; ++ch) dyt[ch] += wj[ch] * dzo[ch];
            }
            // dw[:, j] += dz[t] y[t-K+1+j]
            const int64_t src = t - k + 1 + j;
            if (src >= start) {
              const float* ys = y + src * c + cols.begin;
              double* aj = acc + j * width;
#pragma omp simd
              for (int64_t ch = 0; ch < width; ++ch) aj[ch] += static_cast<double>(dzt[ch]) * ys[ch];
            }
          }
        }
      }
      for (int64_t ch = 0; ch < width; ++ch) {
        for (int64_t j = 0; j < k; ++j) dw[(cols.begin + ch) * k + j] += static_cast<float>(acc[j * width + ch]);
      }
    }
  }
}

}  // namespace cadtrain::kernels::cpu

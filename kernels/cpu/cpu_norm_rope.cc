// RMSNorm (row sums in double) and rotary position embedding (angles in double).
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_util.h"

namespace cadtrain::kernels::cpu {

namespace {
thread_local std::vector<double> t_dw_acc;   // rmsnorm_backward: one thread's dw columns
thread_local std::vector<float> t_rope_cs;   // rope: cos/sin of one token's angles
thread_local std::vector<double> t_inv_freq;  // rope: theta^(-2i/D), shared by the team
}  // namespace

void CpuBackend::rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t c,
                                 float eps) {
  check_nonneg(rows, "rmsnorm_forward", "rows");
  CADTRAIN_CHECK(c > 0, "rmsnorm_forward: c = {} must be > 0", c);
  if (rows == 0) return;
  check_ptr(y, true, "rmsnorm_forward", "y");
  check_ptr(rstd, true, "rmsnorm_forward", "rstd");
  check_ptr(x, true, "rmsnorm_forward", "x");
  check_ptr(w, true, "rmsnorm_forward", "w");
#pragma omp parallel for schedule(static) if (rows * c >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < c; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    // rstd = (mean(x^2) + eps)^(-1/2); y = x * rstd * w
    const auto rs = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(c) + eps));
    rstd[r] = rs;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) yr[j] = xr[j] * rs * w[j];
  }
}

void CpuBackend::rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                                  const float* rstd, int64_t rows, int64_t c) {
  check_nonneg(rows, "rmsnorm_backward", "rows");
  CADTRAIN_CHECK(c > 0, "rmsnorm_backward: c = {} must be > 0", c);
  if (rows == 0) return;
  check_ptr(dx, true, "rmsnorm_backward", "dx");
  check_ptr(dw, true, "rmsnorm_backward", "dw");
  check_ptr(dy, true, "rmsnorm_backward", "dy");
  check_ptr(x, true, "rmsnorm_backward", "x");
  check_ptr(w, true, "rmsnorm_backward", "w");
  check_ptr(rstd, true, "rmsnorm_backward", "rstd");
#pragma omp parallel if (rows * c >= kParallelMin)
  {
    // dx_k = r w_k dy_k - x_k r^3 / C * sum_j dy_j w_j x_j   (r = rstd of the row)
#pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * c;
      const float* dyr = dy + r * c;
      float* dxr = dx + r * c;
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < c; ++j) dot += static_cast<double>(dyr[j]) * w[j] * xr[j];
      const float rs = rstd[r];
      const auto coef = static_cast<float>(static_cast<double>(rs) * rs * rs * dot / static_cast<double>(c));
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) dxr[j] = rs * w[j] * dyr[j] - xr[j] * coef;
    }
    // dw_k += sum_rows dy_k x_k r. Threads split the columns and sum rows in order, so dw does not
    // depend on the thread count.
    const Range cols = thread_columns(c);
    const int64_t width = cols.end - cols.begin;
    if (width > 0) {
      double* acc = scratch(t_dw_acc, static_cast<size_t>(width));
      for (int64_t j = 0; j < width; ++j) acc[j] = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * c + cols.begin;
        const float* dyr = dy + r * c + cols.begin;
        const double rs = rstd[r];
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) acc[j] += static_cast<double>(dyr[j]) * xr[j] * rs;
      }
      for (int64_t j = 0; j < width; ++j) dw[cols.begin + j] += static_cast<float>(acc[j]);
    }
  }
}

namespace {

// Rotates every (x[2i], x[2i+1]) pair of x[N, heads, D] by sign * pos * theta^(-2i/D):
//   x0' = x0 cos a - x1 sin a,  x1' = x0 sin a + x1 cos a.
// The angle and its cos/sin are computed in double: at pos 1e5 a float angle would be off by
// ~4e-3 rad. sign -1 applies the transpose (the backward).
void rope_rotate(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t d, float theta, double sign,
                 const char* op) {
  check_nonneg(n, op, "n");
  check_nonneg(heads, op, "heads");
  CADTRAIN_CHECK(d > 0 && d % 2 == 0, "{}: head dim d = {} must be even and > 0", op, d);
  CADTRAIN_CHECK(theta > 0, "{}: theta = {} must be > 0", op, theta);
  if (n == 0 || heads == 0) return;
  check_ptr(x, true, op, "x");
  check_ptr(pos, true, op, "pos");
  const int64_t pairs = d / 2;
  double* inv_freq = scratch(t_inv_freq, static_cast<size_t>(pairs));
  for (int64_t i = 0; i < pairs; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(d));
  }
#pragma omp parallel if (n * heads * d >= kParallelMin)
  {
    float* cs = scratch(t_rope_cs, static_cast<size_t>(d));  // [pairs] cos then [pairs] sin
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < pairs; ++i) {
        const double a = sign * static_cast<double>(pos[t]) * inv_freq[i];
        cs[i] = static_cast<float>(std::cos(a));
        cs[pairs + i] = static_cast<float>(std::sin(a));
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* row = x + (t * heads + h) * d;
#pragma omp simd
        for (int64_t i = 0; i < pairs; ++i) {
          const float x0 = row[2 * i], x1 = row[2 * i + 1];
          row[2 * i] = x0 * cs[i] - x1 * cs[pairs + i];
          row[2 * i + 1] = x0 * cs[pairs + i] + x1 * cs[i];
        }
      }
    }
  }
}

}  // namespace

void CpuBackend::rope_forward(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t d, float theta) {
  rope_rotate(x, pos, n, heads, d, theta, 1.0, "rope_forward");
}

void CpuBackend::rope_backward(float* dx, const int32_t* pos, int64_t n, int64_t heads, int64_t d, float theta) {
  rope_rotate(dx, pos, n, heads, d, theta, -1.0, "rope_backward");
}

}  // namespace cadtrain::kernels::cpu

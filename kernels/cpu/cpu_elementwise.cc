// Elementwise ops and reductions: swiglu, mul, accumulate, scale, sum_squares, adamw. Each runs
// over fixed kBlock pieces in parallel, with a contiguous `omp simd` inner loop.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/cpu_util.h"

namespace cadtrain::kernels::cpu {

namespace {

thread_local std::vector<double> t_partials;  // sum_squares: one partial sum per block

// sum of x[i]^2 over [begin, end) in double. A function of its own: GCC does not vectorise an
// `omp simd reduction` written directly inside the lambda of parallel_blocks.
double sum_squares_range(const float* x, size_t begin, size_t end) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (size_t i = begin; i < end; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

}  // namespace

void CpuBackend::swiglu_forward(float* h, const float* gate, const float* up, size_t count) {
  check_ptr(h, count > 0, "swiglu_forward", "h");
  check_ptr(gate, count > 0, "swiglu_forward", "gate");
  check_ptr(up, count > 0, "swiglu_forward", "up");
  parallel_blocks(count, [=](size_t begin, size_t end) {
    // h = g sigmoid(g) u
#pragma omp simd
    for (size_t i = begin; i < end; ++i) h[i] = gate[i] * fast_sigmoid(gate[i]) * up[i];
  });
}

void CpuBackend::swiglu_backward(float* dgate, float* dup, const float* dh, const float* gate, const float* up,
                                 size_t count) {
  check_ptr(dgate, count > 0, "swiglu_backward", "dgate");
  check_ptr(dup, count > 0, "swiglu_backward", "dup");
  check_ptr(dh, count > 0, "swiglu_backward", "dh");
  check_ptr(gate, count > 0, "swiglu_backward", "gate");
  check_ptr(up, count > 0, "swiglu_backward", "up");
  parallel_blocks(count, [=](size_t begin, size_t end) {
    // dg = dh u (s + g s (1 - s)),  du = dh g s,  s = sigmoid(g)
#pragma omp simd
    for (size_t i = begin; i < end; ++i) {
      const float g = gate[i], s = fast_sigmoid(g), d = dh[i];
      dgate[i] = d * up[i] * (s + g * s * (1.0f - s));
      dup[i] = d * g * s;
    }
  });
}

void CpuBackend::mul_forward(float* out, const float* a, const float* b, size_t count) {
  check_ptr(out, count > 0, "mul_forward", "out");
  check_ptr(a, count > 0, "mul_forward", "a");
  check_ptr(b, count > 0, "mul_forward", "b");
  parallel_blocks(count, [=](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) out[i] = a[i] * b[i];
  });
}

void CpuBackend::mul_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                              size_t count) {
  check_ptr(da, count > 0, "mul_backward", "da");
  check_ptr(db, count > 0, "mul_backward", "db");
  check_ptr(dout, count > 0, "mul_backward", "dout");
  check_ptr(a, count > 0, "mul_backward", "a");
  check_ptr(b, count > 0, "mul_backward", "b");
  parallel_blocks(count, [=](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) {
      const float d = dout[i];
      da[i] = d * b[i];
      db[i] = d * a[i];
    }
  });
}

void CpuBackend::accumulate(float* y, const float* x, size_t count) {
  check_ptr(y, count > 0, "accumulate", "y");
  check_ptr(x, count > 0, "accumulate", "x");
  parallel_blocks(count, [=](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) y[i] += x[i];
  });
}

void CpuBackend::scale(float* x, float s, size_t count) {
  check_ptr(x, count > 0, "scale", "x");
  parallel_blocks(count, [=](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) x[i] *= s;
  });
}

double CpuBackend::sum_squares(const float* x, size_t count) {
  check_ptr(x, count > 0, "sum_squares", "x");
  // Per-block partial sums added in block order: the result is the same for any thread count.
  double* partial = scratch(t_partials, ceil_div(count, kBlock));
  parallel_blocks(count,
                  [=](size_t begin, size_t end) { partial[begin / kBlock] = sum_squares_range(x, begin, end); });
  double total = 0;
  for (size_t b = 0; b < ceil_div(count, kBlock); ++b) total += partial[b];
  return total;
}

void CpuBackend::adamw_step(float* p, const float* g, float* m, float* v, size_t count, float lr, float beta1,
                            float beta2, float eps, float weight_decay, int64_t step) {
  CADTRAIN_CHECK(step >= 1, "adamw_step: step = {} must be >= 1 (bias correction divides by 1 - beta^step)", step);
  CADTRAIN_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
                 "adamw_step: beta1 = {} and beta2 = {} must lie in [0, 1)", beta1, beta2);
  check_ptr(p, count > 0, "adamw_step", "p");
  check_ptr(g, count > 0, "adamw_step", "g");
  check_ptr(m, count > 0, "adamw_step", "m");
  check_ptr(v, count > 0, "adamw_step", "v");
  // 1 - beta^step in double: in float, beta2 = 0.999 at step 1 loses three digits to cancellation.
  const auto inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step))));
  const auto inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step))));
  const float one_minus_b1 = 1.0f - beta1, one_minus_b2 = 1.0f - beta2;
  parallel_blocks(count, [=](size_t begin, size_t end) {
    // m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p)
#pragma omp simd
    for (size_t i = begin; i < end; ++i) {
      const float gi = g[i];
      const float mi = beta1 * m[i] + one_minus_b1 * gi;
      const float vi = beta2 * v[i] + one_minus_b2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      const float update = (mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps) + weight_decay * p[i];
      p[i] -= lr * update;
    }
  });
}

}  // namespace cadtrain::kernels::cpu

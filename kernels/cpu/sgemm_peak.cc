// measure_sgemm_gflops: the in-run matmul reference every benchmark ratio is stated against.
#include "kernels/sgemm_peak.h"

#include <cblas.h>

#include <chrono>
#include <vector>

#include "common/error.h"

namespace cadtrain::kernels {

double measure_sgemm_gflops(int n, int repeats) {
  CADTRAIN_CHECK(n > 0 && repeats > 0, "measure_sgemm_gflops: n = {} and repeats = {} must be > 0", n, repeats);
  const size_t count = static_cast<size_t>(n) * n;
  // Values in [-0.5, 0.5): no denormals or overflow to slow the arithmetic.
  std::vector<float> a(count), b(count), c(count);
  for (size_t i = 0; i < count; ++i) {
    a[i] = static_cast<float>((i * 7919) % 1000) / 1000.0f - 0.5f;
    b[i] = static_cast<float>((i * 104729) % 1000) / 1000.0f - 0.5f;
  }
  auto run = [&] {
    // C[n,n] = A[n,n] B[n,n]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(),
                n);
  };
  run();  // warm-up: thread pool start, page faults, caches
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return 2.0 * n * static_cast<double>(n) * n / best / 1e9;
}

}  // namespace cadtrain::kernels

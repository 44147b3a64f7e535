// CpuBackend memory (64-byte aligned, zeroed in parallel) and make_cpu_backend().
#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common/error.h"
#include "kernels/cpu/blas_info.h"
#include "kernels/cpu/cpu_util.h"

namespace cadtrain::kernels {

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<cpu::CpuBackend>(); }

namespace cpu {

namespace {
// One AVX-512 register / cache line: every buffer starts on a line of its own.
constexpr size_t kAlign = 64;
}  // namespace

CpuBackend::CpuBackend(const CpuBackendOptions& options) : options_(options) {
  CADTRAIN_CHECK(options_.lm_head_block_rows >= 1, "cpu backend: lm_head_block_rows = {} must be >= 1",
                 options_.lm_head_block_rows);
}

std::string CpuBackend::name() const {
  return fmt::format("cpu ({} OpenMP threads, {})", omp_get_max_threads(), blas_config());
}

float* CpuBackend::alloc(size_t count) {
  CADTRAIN_CHECK(count <= (SIZE_MAX - kAlign) / sizeof(float), "cpu backend: alloc of {} floats overflows", count);
  const size_t bytes = ceil_div(std::max<size_t>(count, 1) * sizeof(float), kAlign) * kAlign;
  void* p = std::aligned_alloc(kAlign, bytes);
  if (p == nullptr) fail("cpu backend: cannot allocate {} floats ({:.1f} MiB)", count, bytes / 1048576.0);
  // Zeroing in parallel also makes the first touch of each page by the threads that will use it.
  zero(static_cast<float*>(p), count);
  return static_cast<float*>(p);
}

void CpuBackend::free(float* p) { std::free(p); }

void CpuBackend::zero(float* p, size_t count) {
  check_ptr(p, count > 0, "zero", "p");
  parallel_blocks(count, [=](size_t begin, size_t end) { std::memset(p + begin, 0, (end - begin) * sizeof(float)); });
}

void CpuBackend::copy(float* dst, const float* src, size_t count) {
  check_ptr(dst, count > 0, "copy", "dst");
  check_ptr(src, count > 0, "copy", "src");
  parallel_blocks(count,
                  [=](size_t begin, size_t end) { std::memcpy(dst + begin, src + begin, (end - begin) * sizeof(float)); });
}

}  // namespace cpu
}  // namespace cadtrain::kernels

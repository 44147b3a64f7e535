// Implements probe_cuda(): library versions, device query and a checked saxpy kernel.
#include "kernels/cuda/cuda_probe.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

#include <cmath>
#include <vector>

namespace cadtrain::cuda {
namespace {

__global__ void saxpy(int n, float a, const float* x, float* y) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

// Runs y = 2x + y on device 0 and compares with the host; returns an empty string on success.
std::string run_saxpy() {
  constexpr int n = 1 << 16;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) {
    x[i] = 0.5f * i;
    y[i] = 1.0f;
  }
  float *dx = nullptr, *dy = nullptr;
  cudaError_t err = cudaMalloc(&dx, n * sizeof(float));
  if (err == cudaSuccess) err = cudaMalloc(&dy, n * sizeof(float));
  if (err == cudaSuccess) err = cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  if (err == cudaSuccess) err = cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  if (err == cudaSuccess) {
    saxpy<<<(n + 255) / 256, 256>>>(n, 2.0f, dx, dy);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) err = cudaMemcpy(y.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(dx);
  cudaFree(dy);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  for (int i = 0; i < n; ++i) {
    if (std::fabs(y[i] - (x[i] * 2.0f + 1.0f)) > 1e-6f * std::fabs(y[i])) {
      return "saxpy result mismatch at element " + std::to_string(i);
    }
  }
  return {};
}

}  // namespace

CudaProbe probe_cuda() {
  CudaProbe probe;
  cudaRuntimeGetVersion(&probe.cuda_runtime_version);
  probe.cublas_version = static_cast<int>(cublasGetCudartVersion());
  probe.cudnn_version = static_cast<long>(cudnnGetVersion());
  ncclGetVersion(&probe.nccl_version);
  const cudaError_t err = cudaGetDeviceCount(&probe.device_count);
  if (err != cudaSuccess) {
    probe.device_count = 0;
    probe.error = cudaGetErrorString(err);
    return probe;
  }
  if (probe.device_count == 0) {
    probe.error = "no CUDA device";
    return probe;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  probe.device_name = prop.name;
  probe.error = run_saxpy();
  probe.kernel_ok = probe.error.empty();
  return probe;
}

}  // namespace cadtrain::cuda

// Reports what the CUDA stack offers here: library versions (always) and, when a GPU is present,
// the device and the result of a tiny kernel checked on the host.
#pragma once

#include <string>

namespace cadtrain::cuda {

struct CudaProbe {
  int cuda_runtime_version = 0;
  int cublas_version = 0;
  long cudnn_version = 0;
  int nccl_version = 0;
  int device_count = 0;        // 0 when no GPU or no driver
  std::string device_name;     // device 0
  bool kernel_ok = false;      // a saxpy kernel ran on device 0 and matched the host result
  std::string error;           // why device_count is 0 or kernel_ok is false
};

CudaProbe probe_cuda();

}  // namespace cadtrain::cuda

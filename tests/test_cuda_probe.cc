// The CUDA toolchain links here always; the kernel runs only where a GPU is present.
#include <gtest/gtest.h>

#include "kernels/cuda/cuda_probe.h"

TEST(CudaProbe, LibrariesReportVersions) {
  const auto probe = cadtrain::cuda::probe_cuda();
  EXPECT_GT(probe.cudnn_version, 0);
  EXPECT_GT(probe.nccl_version, 0);
}

TEST(CudaProbe, SaxpyKernelMatchesHost) {
  const auto probe = cadtrain::cuda::probe_cuda();
  if (probe.device_count == 0) GTEST_SKIP() << "no CUDA device here (" << probe.error << ")";
  EXPECT_TRUE(probe.kernel_ok) << probe.error;
}

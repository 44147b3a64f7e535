// The machine's matmul limit, measured: OpenBLAS sgemm GFLOP/s on square fp32 matrices. MFU and
// every benchmark ratio are stated against it, measured in the same run.
#pragma once

namespace cadtrain::kernels {

// Best of `repeats` timed C = A B products of n x n matrices (after one warm-up), in GFLOP/s,
// with the current OpenMP thread count.
double measure_sgemm_gflops(int n = 2048, int repeats = 3);

}  // namespace cadtrain::kernels

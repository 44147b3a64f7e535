// What BLAS this process actually runs: OpenBLAS's build configuration, its threading model and
// the file the loader picked. For the run header table and for the test that the OpenMP build of
// OpenBLAS (not the system's default alternative, often the pthread build) is the one loaded.
#pragma once

#include <string>

namespace cadtrain::kernels::cpu {

// openblas_get_config(), e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64".
std::string blas_config();
// openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP.
int blas_parallel_mode();
// The loaded libopenblas file with symbolic links resolved ("" when none is loaded).
std::string blas_library_path();

}  // namespace cadtrain::kernels::cpu

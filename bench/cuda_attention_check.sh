#!/usr/bin/env bash
# CUDA core-attention check for a session that has a GPU (not run in CI, nor without a GPU):
# configures and builds the CUDA attention test, runs its CPU comparisons (they skip without a
# GPU), then its timing: forward/backward GFLOP/s counted by causal pairs (DESIGN section 3),
# d = 64 and 128, 16 q heads / 4 kv heads, 16K tokens as 4K documents or one 16K document.
#
#   bench/cuda_attention_check.sh            build in build-cuda with -j16, test, time
#   BUILD_DIR=b JOBS=8 bench/cuda_attention_check.sh
#
# Needs the project's dependencies on the machine (cmake, ninja, fmt, GoogleTest, OpenBLAS, HDF5:
# launch/install_deps.sh) besides nvcc with cuBLAS, cuDNN and NCCL. Output: the gtest log and a
# markdown table of timings.
set -euo pipefail

cd "$(dirname "$0")/.."
build_dir="${BUILD_DIR:-build-cuda}"
jobs="${JOBS:-16}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
cmake -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCADTRAIN_CUDA=ON >/dev/null
ninja -C "$build_dir" -j "$jobs" test_attention_tasks_cuda test_cuda_probe

"$build_dir"/tests/test_cuda_probe
# Correctness first: the timing runs only if every comparison with the CPU passes.
"$build_dir"/tests/test_attention_tasks_cuda --gtest_filter='AttentionTasksCuda.*'
"$build_dir"/tests/test_attention_tasks_cuda --gtest_also_run_disabled_tests \
  --gtest_filter='AttentionTasksCuda.DISABLED_Timing'

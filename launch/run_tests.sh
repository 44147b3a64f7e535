#!/usr/bin/env bash
# Builds and runs the test suite (CTest). With --sanitize: a Debug build with ASan + UBSan in
# build-asan/ running the unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# Idle OpenMP threads sleep instead of spinning: on a shared or oversubscribed machine (ctest -j,
# other jobs) spinning steals the cores and a 2-thread step can run several times slower; on a
# quiet machine passive waiting measured no slower (bench/RESULTS.md).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [[ "${1:-}" == "--sanitize" ]]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # CUDA is compiled (and tested where a GPU is) by the normal build; host sanitizers do not reach it.
  launch/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DCADTRAIN_SANITIZE=ON -DCADTRAIN_BENCH=OFF -DCADTRAIN_CUDA=OFF
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)" -L unit
else
  launch/build.sh build
  ctest --test-dir build --output-on-failure -j "$(nproc)"
fi

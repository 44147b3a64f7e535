#!/usr/bin/env bash
# Builds and runs the test suite (CTest). With --sanitize: a Debug build with ASan + UBSan in
# build-asan/ running the unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--sanitize" ]]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # CUDA is compiled (and tested where a GPU is) by the normal build; host sanitizers do not reach it.
  launch/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DCADTRAIN_SANITIZE=ON -DCADTRAIN_BENCH=OFF -DCADTRAIN_CUDA=OFF
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)" -L unit
else
  launch/build.sh build
  ctest --test-dir build --output-on-failure -j "$(nproc)"
fi

#!/usr/bin/env bash
# Configures and builds cadtrain into a build directory (default: build/). Quiet unless it fails.
# Usage: launch/build.sh [BUILD_DIR] [extra cmake -D options...]
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
shift || true
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" "${generator[@]}" "$@" > "$build_dir.configure.log" 2>&1 || {
    cat "$build_dir.configure.log"; exit 1; }
  grep -A20 "cadtrain .* configuration" "$build_dir.configure.log" | sed 's/^-- //'
elif [[ $# -gt 0 ]]; then
  cmake -S . -B "$build_dir" "$@" > "$build_dir.configure.log" 2>&1 || { cat "$build_dir.configure.log"; exit 1; }
fi
# Two cores and 24 GiB here; nvcc and protobuf-heavy units want about 1-2 GiB each.
cmake --build "$build_dir" -j "$(nproc)"

#!/usr/bin/env bash
# The default job: build, train the tiny CPU config on the embedded synthetic corpus (generated
# into data_out/ on first use), then let the trained model complete a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
# Idle OpenMP threads sleep instead of spinning: on a shared or oversubscribed machine (ctest -j,
# other jobs) spinning steals the cores and a 2-thread step can run several times slower; on a
# quiet machine passive waiting measured no slower (bench/RESULTS.md).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
launch/build.sh build
# `train` never starts over an earlier run's checkpoints: a rerun first moves the previous run
# aside (kept, not deleted).
if compgen -G "runs/tiny/checkpoints/step_*.h5" >/dev/null; then
  previous="runs/tiny.$(date +%Y%m%d_%H%M%S)"
  mv runs/tiny "$previous"
  echo "default job: moved the previous run to $previous"
fi
build/cadtrain train --config configs/tiny_cpu.pbtxt
build/cadtrain sample runs/tiny --prompt "The code word QXZT is 4821. the old farmer visits the quiet forest. Recall: QXZT is " --tokens 40

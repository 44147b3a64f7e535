#!/usr/bin/env bash
# Trains on one machine with mpirun: NP ranks of build/cadtrain train on CONFIG, each with
# cores / NP OpenMP threads bound to its own cores (or unbound, oversubscribed, when NP exceeds
# the cores). The config's parallel.data_parallel x parallel.context_parallel (+ dedicated
# attention servers) must equal NP; it is checked before anything starts. Rerunning continues
# the run from its newest checkpoint.
# Usage: launch/mpirun.sh NP CONFIG [--set field=value ...]
#   launch/mpirun.sh 2 configs/tiny_cpu.pbtxt --set parallel.data_parallel=2
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
RANKS=$1 CONFIG=$2
shift 2
SETS=()
while [[ $# -gt 0 ]]; do
  [[ $1 == --set && $# -ge 2 ]] || { echo "unexpected argument: $1 (only --set field=value)" >&2; exit 2; }
  SETS+=("$2")
  shift 2
done
CADTRAIN=build/cadtrain
[[ -x $CADTRAIN ]] || launch/build.sh build
source launch/run_config.sh
check_and_resume_args

cores=$(nproc)
threads=$(( cores / RANKS ))
mpi_args=(-np "$RANKS" -x OMP_NUM_THREADS -x OMP_WAIT_POLICY)
if (( threads >= 1 )); then
  mpi_args+=(--map-by "slot:PE=$threads" --bind-to core)
else
  threads=1
  mpi_args+=(--oversubscribe --bind-to none)
fi
[[ $(id -u) -ne 0 ]] || mpi_args+=(--allow-run-as-root)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
echo "launch: mpirun ${mpi_args[*]} $CADTRAIN train ${TRAIN_ARGS[*]}"
exec mpirun "${mpi_args[@]}" "$CADTRAIN" train "${TRAIN_ARGS[@]}"

# Shared by the fault-case scripts: runs PROBE under mpirun with its last rank killed (kill -9) or
# stopped (SIGSTOP), prints its output, and fails the case when the job exited 0 or hung until
# the outer time limit. Sets out, rc, victim and defines fail() for the caller's own checks.
# Usage (sourced): run_fault_job MPIEXEC PROBE kill|stop NP
fail() { echo "FAILED: $*"; exit 1; }
run_fault_job() {
  local mpiexec=$1 probe=$2 mode=$3 np=$4 timeout_s=2 start elapsed
  [[ $mode == kill ]] && timeout_s=60   # the launcher, not the watchdog, must end this one
  victim=$((np - 1))
  start=$(date +%s)
  out=$(timeout 50 "$mpiexec" --oversubscribe -np "$np" "$probe" "$mode" "$timeout_s" 2>&1)
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  echo "$out"
  echo "--- exit status $rc after ${elapsed}s"
  [[ $rc -ne 0 ]] || fail "the job exited 0"
  [[ $rc -ne 124 && $elapsed -lt 45 ]] || fail "the job hung and was ended by the test's time limit"
}

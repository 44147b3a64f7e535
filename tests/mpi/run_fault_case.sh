#!/usr/bin/env bash
# Runs fault_probe under mpirun with its last rank killed (kill -9) or stopped (SIGSTOP) and checks
# that the job ends non-zero well before the outer time limit, and that every surviving rank
# printed an error naming the all-reduce, the step, layer and phase, the missing rank, host and pid.
# Usage: run_fault_case.sh MPIEXEC FAULT_PROBE kill|stop NP
set -uo pipefail
mode=$3 np=$4
source "$(dirname "$0")/fault_case_common.sh"
run_fault_job "$@"
for ((r = 0; r < victim; r++)); do
  line=$(grep -E "^rank $r/$np \(host [^,]+, pid [0-9]+\)" <<<"$out" | grep "all_reduce (sum) of float32 x 1024 on host on communicator \"world\" ($np ranks)" | head -1)
  [[ -n $line ]] || fail "rank $r printed no report of the all-reduce"
  grep -q "(step 7, layer 3, grad bucket 1)" <<<"$line" || fail "rank $r's report lacks the step, layer and phase: $line"
  grep -q "$victim (world rank $victim)" <<<"$line" || fail "rank $r's report does not name rank $victim: $line"
done
if [[ $mode == stop ]]; then
  grep -q "did not complete within parallel.timeout_s = 2 s" <<<"$out" || fail "no rank reported the timeout"
else
  grep -q "ended by SIGTERM" <<<"$out" || fail "no rank reported the launcher's SIGTERM"
fi
echo "PASSED: every surviving rank reported the $mode of rank $victim"

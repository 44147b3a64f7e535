#!/usr/bin/env bash
# Runs cad_fault_probe under mpirun with its dedicated server (the last rank) killed (kill -9) or
# stopped (SIGSTOP) mid-step and checks that the job ends non-zero well before the outer time
# limit, and that every trainer printed an error naming the CAD call it waited in and the server.
# Usage: run_cad_fault_case.sh MPIEXEC CAD_FAULT_PROBE kill|stop NP
set -uo pipefail
mode=$3 np=$4
source "$(dirname "$0")/fault_case_common.sh"
run_fault_job "$@"
if [[ $mode == stop ]]; then
  # At least one trainer's watchdog fires; each trainer either reports the timeout or the launcher's
  # SIGTERM that followed another trainer's report.
  grep -E "^rank [0-9]+/$np .*did not complete within parallel.timeout_s = 2 s.*\(layer 3, CAD forward dispatch\); ranks that did not arrive: .*$victim \(world rank $victim\)" <<<"$out" >/dev/null ||
    fail "no trainer reported the CAD forward dispatch timeout naming server rank $victim"
fi
for ((r = 0; r < victim; r++)); do
  line=$(grep -E "^rank $r/$np \(host [^,]+, pid [0-9]+\)" <<<"$out" | head -1)
  [[ -n $line ]] || fail "trainer rank $r printed no report"
  if [[ $mode == kill ]]; then
    grep -q "CAD forward dispatch" <<<"$line" || fail "trainer rank $r's report does not name the CAD call: $line"
    grep -q "ended by SIGTERM" <<<"$line" || fail "trainer rank $r's report lacks the launcher's SIGTERM: $line"
    grep -q "$victim (world rank $victim)" <<<"$line" || fail "trainer rank $r's report does not name server rank $victim: $line"
  fi
done
echo "PASSED: the trainers reported the $mode of CAD server rank $victim"

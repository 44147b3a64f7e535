#!/usr/bin/env bash
# Checks that CI runs exactly what the README tells a new user to run: the commands of the
# README's first ```bash block (comments stripped) must each be a whole line of the CI script, in
# the README's order, and every other line of the CI script that calls a launch/ script must be
# the sanitizer run. This is how a CI-only flag (it once passed --with-torch) hid a fresh-machine
# failure of the README's test command.
# Usage: tests/check_readme_ci.sh README.md .ci/run
set -euo pipefail
readme=$1 ci=$2
sanitizer_line="launch/run_tests.sh --sanitize"

mapfile -t readme_cmds < <(awk '/^```bash/ { inside = 1; next } inside && /^```/ { exit }
  inside { sub(/[[:space:]]*#.*/, ""); sub(/^[[:space:]]+/, ""); if (length) print }' "$readme")
mapfile -t ci_cmds < <(awk '{ sub(/[[:space:]]*#.*/, ""); sub(/^[[:space:]]+/, "") }
  /launch\// { print }' "$ci")

fail() { echo "check_readme_ci: FAILED: $*" >&2; exit 1; }
[[ ${#readme_cmds[@]} -eq 2 ]] ||
  fail "$readme: expected 2 commands in the first bash block, found ${#readme_cmds[@]}"

next=0
for line in "${ci_cmds[@]}"; do
  if [[ $next -lt ${#readme_cmds[@]} && "$line" == "${readme_cmds[$next]}" ]]; then
    next=$((next + 1))
  elif [[ "$line" != "$sanitizer_line" ]]; then
    fail "$ci runs '$line', which is neither a README command (next expected: '${readme_cmds[$next]:-none}') nor '$sanitizer_line'"
  fi
done
[[ $next -eq ${#readme_cmds[@]} ]] ||
  fail "$ci does not run the README command '${readme_cmds[$next]}' (as a whole line, in the README's order)"
printf '%s\n' "${ci_cmds[@]}" | grep -qx -- "$sanitizer_line" || fail "$ci does not run '$sanitizer_line'"
echo "check_readme_ci: $ci runs the README's ${#readme_cmds[@]} commands, then the sanitizer run"

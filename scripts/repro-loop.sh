#!/usr/bin/env bash
# Runs a program N times in a row (default: the issue-14 reproducer, 100 times) with
# every lock-rule breach trapping (SWIFTRAY_LOCK_CHECKS=1); stops at the first failure
# and prints its output. Usage: scripts/repro-loop.sh [N] [COMMAND...]
#   scripts/repro-loop.sh 100
#   scripts/repro-loop.sh 20 python3 -m pytest -q -x tests/test_stress.py -k fresh_actors
#   scripts/repro-loop.sh 30 python3 -m pytest -q -x tests/test_chaos.py
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
shift || true
if [ $# -eq 0 ]; then set -- python3 examples/repro/actor_call_with_task_result.py; fi
export SWIFTRAY_LOCK_CHECKS=1
out=$(mktemp)
start=$(date +%s)
for i in $(seq "$n"); do
  if ! timeout 600 "$@" >"$out" 2>&1; then
    echo "run $i of $n FAILED ($*):"
    tail -50 "$out"
    rm -f "$out"
    exit 1
  fi
done
rm -f "$out"
echo "$n runs in a row passed in $(( $(date +%s) - start )) s: $*"

#!/usr/bin/env bash
# Seeded simulations of whole clusters on virtual time (DESIGN §8; Sources/SwiftraySim):
# nodes scheduling with the NodeManager's LeaseQueue, drivers deciding with OwnerState,
# fake workers, and a network with delays, reordering, broken connections, worker and
# node deaths and slow nodes, all from one seed.
#
#   ./scripts/simulate.sh --seeds N [--first-seed S] [--nodes K] [--tasks T]
#   ./scripts/simulate.sh --seed S [--nodes K] [--tasks T]    # replays one run, with its trace
#   ./scripts/simulate.sh --scale [--scale-nodes N] [--scale-tasks T] [--json PATH]
#
# Ends with `simulated N seeds: F failures`; exits 0 only when F = 0.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/swift.sh build -c release --product swiftray-sim >/tmp/swiftray-sim-build.log 2>&1 \
  || { tail -40 /tmp/swiftray-sim-build.log; exit 1; }
exec "$(scripts/swift.sh build -c release --show-bin-path)/swiftray-sim" "$@"

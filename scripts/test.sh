#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs every test: the Swift unit tests of the pure
# Runtime (release build, shared with the pip build) and the Python end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real Ray's job client in a venv of its own (tests/test_jobs.py drives a swiftray head with it).
bash scripts/ray-venv.sh
export SWIFTRAY_TEST_RAY_PYTHON="$PWD/.bench-venv-ray/bin/python"
# Every breach of the lock rule traps with its reason (Sources/Runtime/Concurrency/Locked.swift).
export SWIFTRAY_LOCK_CHECKS=1
python3 scripts/check-locks.py
scripts/swift.sh test -c release --disable-testable-imports
# Seeded simulations of whole clusters on virtual time (seconds; longer runs: more --seeds).
./scripts/simulate.sh --seeds 400 --nodes 50
./scripts/simulate.sh --seeds 200 --first-seed 100001 --nodes 8
./scripts/simulate.sh --seeds 100 --first-seed 200001 --nodes 3 --tasks 300
python3 -m pytest -q tests "$@"

#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs every test: the Swift unit tests of the pure
# Runtime (release build, shared with the pip build) and the Python end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Every breach of the lock rule traps with its reason (Sources/Runtime/Concurrency/Locked.swift).
export SWIFTRAY_LOCK_CHECKS=1
python3 scripts/check-locks.py
scripts/swift.sh test -c release --disable-testable-imports
python3 -m pytest -q tests "$@"

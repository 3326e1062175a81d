#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs every test: the Swift unit tests of the pure
# Runtime (release build, shared with the pip build) and the Python end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
scripts/swift.sh test -c release --disable-testable-imports
python3 -m pytest -q tests "$@"

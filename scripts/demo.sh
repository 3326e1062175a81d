#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the blog's parallel-computing example on a
# local cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 examples/parallel_computing.py

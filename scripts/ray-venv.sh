#!/usr/bin/env bash
# Makes .bench-venv-ray: real Ray 2.60 (with its job client's aiohttp) in a venv of its
# own, for the test that Ray's JobSubmissionClient works against a swiftray head and
# for the benchmarks that compare with Ray. Never a dependency of swiftray. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .bench-venv-ray/bin/python -c "import ray.job_submission, aiohttp" >/dev/null 2>&1; then
  python3 -m venv .bench-venv-ray
  .bench-venv-ray/bin/pip install -q --disable-pip-version-check "ray[default]==2.60.0"
fi

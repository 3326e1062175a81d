#!/usr/bin/env bash
# Runs every benchmark against swiftray and Ray (2.60, from PyPI, in its own venv:
# never a project dependency), writes JSON to benchmarks/results/, and regenerates the
# README's benchmark section from it. Takes ~15 minutes on 2 cores.
#   SWIFTRAY_BENCH_RAY_PYTHON=/path/to/python   use an existing Ray install
#   NO_RAY=1                                    swiftray only
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NO_RAY:-}" ] && [ -z "${SWIFTRAY_BENCH_RAY_PYTHON:-}" ]; then
  if [ ! -x .bench-venv-ray/bin/python ]; then
    python3 -m venv .bench-venv-ray
    .bench-venv-ray/bin/pip install -q --disable-pip-version-check ray==2.60.0 numpy
  fi
  # The peers of the task workloads live in the same venv (never project dependencies);
  # numpy too, which Ray's own rows with arrays need (a venv made without it lost them).
  if ! .bench-venv-ray/bin/python -c "import joblib, distributed, numpy" 2>/dev/null; then
    .bench-venv-ray/bin/pip install -q --disable-pip-version-check joblib distributed numpy
  fi
  export SWIFTRAY_BENCH_RAY_PYTHON="$PWD/.bench-venv-ray/bin/python"
fi
impl=both; [ -n "${NO_RAY:-}" ] && impl=swiftray
mkdir -p benchmarks/results
python3 benchmarks/microbenchmark.py --impl "$impl" --json benchmarks/results/microbenchmark.json
python3 benchmarks/task_peers.py --json benchmarks/results/task_peers.json $([ -n "${NO_RAY:-}" ] && echo --impl swiftray,pool,executor)
python3 benchmarks/vs_serial.py --json benchmarks/results/vs_serial.json $([ -n "${NO_RAY:-}" ] && echo --impl serial,swiftray,pool)
python3 benchmarks/large_objects.py --impl "$impl" --json benchmarks/results/large_objects.json
python3 benchmarks/core_figures.py --json benchmarks/results/core_figures.json
python3 benchmarks/in_flight.py --json benchmarks/results/in_flight.json $([ -z "${NO_RAY:-}" ] && echo --ray-python "$SWIFTRAY_BENCH_RAY_PYTHON")
python3 benchmarks/worker_start.py --json benchmarks/results/worker_start.json $([ -z "${NO_RAY:-}" ] && echo --ray-python "$SWIFTRAY_BENCH_RAY_PYTHON")
python3 benchmarks/multinode.py --json benchmarks/results/multinode.json $([ -z "${NO_RAY:-}" ] && echo --ray-python "$SWIFTRAY_BENCH_RAY_PYTHON")
python3 benchmarks/runtime_env.py --json benchmarks/results/runtime_env.json
python3 benchmarks/recovery.py --health-check-period-ms 1000 --failure-threshold 3
python3 benchmarks/recovery.py --health-check-period-ms 3000 --failure-threshold 5
./scripts/simulate.sh --scale --scale-tasks 100000 --scale-nodes 100 --json benchmarks/results/scale-small.json
./scripts/simulate.sh --scale --json benchmarks/results/scale.json
python3 -c "import json, sys; sys.path.insert(0, 'benchmarks'); import provenance; json.dump(provenance.stamp(), open('benchmarks/results/run_all.json', 'w'), indent=1)"
python3 benchmarks/update_readme.py

#!/usr/bin/env bash
# One-time set-up on a fresh machine (idempotent): system packages (pkg-config;
# redis-server and redis-tools, which the tests of a head on Redis start on loopback
# ports, also over TLS; openssl, with which the TLS tests make their certificates;
# iproute2 and util-linux, whose ip, nsenter and unshare make the network-namespace
# hosts of the multi-node and partition tests; chromium and chromium-driver, in which
# the dashboard's test drives the page headless; wget, with which KubeRay's probes
# call the health endpoints in the contract test), Python packages (prometheus_client
# parses /metrics in the tests, selenium drives chromium, joblib's Parallel runs on the
# ray backend, PyYAML reads the Kubernetes manifests), and `pip install ./python` (which builds the Swift core in release mode).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for p in pkg-config redis-server redis-tools openssl iproute2 util-linux chromium chromium-driver wget; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
python3 -m pip install -q --disable-pip-version-check cloudpickle numpy pytest grpcio prometheus_client selenium joblib pyyaml
python3 -m pip install -q --disable-pip-version-check ./python

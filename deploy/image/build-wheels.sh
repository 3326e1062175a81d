#!/usr/bin/env bash
# The image's build stage (deploy/Dockerfile runs it; tests/test_image.py runs it too, to
# prove the steps where no container builder can pull base images): builds the swiftray
# wheel (the Swift core in release mode, for the python3 on PATH), the `ray` alias
# package, and the wheels of their dependencies into OUT, so the runtime stage installs
# without an index.
set -euo pipefail
out=${1:?usage: build-wheels.sh OUT}
cd "$(dirname "$0")/../.."
mkdir -p "$out"
python3 -m pip wheel -q --disable-pip-version-check -w "$out" ./python ./deploy/ray-alias
ls "$out"

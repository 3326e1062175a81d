#!/usr/bin/env bash
# The image's runtime stage (deploy/Dockerfile runs it; tests/test_image.py runs it in a
# fresh directory): a virtual environment at PREFIX holding swiftray and the `ray` alias
# (the `ray` command, `import ray`) from the wheels in WHEELS, nothing from an index.
# Then `PREFIX/bin` first on PATH gives KubeRay's pods `ray` and `python`.
set -euo pipefail
wheels=${1:?usage: install-runtime.sh WHEELS PREFIX}
prefix=${2:?usage: install-runtime.sh WHEELS PREFIX}
python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheels" swiftray swiftray-ray-alias
# What KubeRay's probes and commands call, checked where the image is made.
for tool in bash wget grep; do command -v "$tool" >/dev/null || { echo "the image needs $tool" >&2; exit 1; }; done
"$prefix/bin/ray" --help >/dev/null
"$prefix/bin/python" -c "import ray, swiftray; assert ray is swiftray"

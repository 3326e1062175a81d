#!/usr/bin/env bash
# Runs `swift` with the environment every build of this package needs: PKG_CONFIG_PATH
# pointing at the LIBPC of the python3 on PATH (DESIGN §9), so the extension and the
# worker host are built against the interpreter that will load them.
set -euo pipefail
PY=${PYTHON:-python3}
libpc=$("$PY" -c "import sysconfig;print(sysconfig.get_config_var('LIBPC'))")
export PKG_CONFIG_PATH="$libpc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
cd "$(dirname "$0")/.."
exec swift "$@"

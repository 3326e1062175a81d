"""`swiftray run SCRIPT` / `swiftray run -m MODULE`: runs an unchanged Ray program
with `import ray` -> swiftray (e.g. `swiftray run -m pytest ray_tests/`)."""
import os
import runpy
import sys


def main():
    from swiftray import _ray_alias
    _ray_alias.install()
    module = os.environ.pop("SWIFTRAY_RUN_MODULE", None)
    if module is not None:
        # As python -m: the current directory first on sys.path, argv[0] the module's file.
        sys.path.insert(0, os.getcwd())
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    script = os.environ.pop("SWIFTRAY_RUN_SCRIPT")
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0

"""`swiftray run SCRIPT`: runs an unchanged Ray script with `import ray` -> swiftray."""
import os
import runpy
import sys


def main():
    from swiftray import _ray_alias
    _ray_alias.install()
    script = os.environ.pop("SWIFTRAY_RUN_SCRIPT")
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0

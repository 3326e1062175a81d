"""The package installs and both halves of the core load: the extension in the
driver, and the Swift host that embeds the interpreter."""
import os
import subprocess
import sys
import textwrap

import swiftray
from swiftray import _cli


def test_extension_imports_and_reports_version():
    assert swiftray.__version__ == swiftray._core.version()
    assert swiftray._core.__file__.endswith(".so")


def test_cli_version_matches_the_core():
    out = subprocess.run([sys.executable, "-m", "swiftray", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == swiftray.__version__


def test_swiftray_run_resolves_import_ray_and_passes_arguments(tmp_path):
    script = tmp_path / "uses_ray.py"
    script.write_text(textwrap.dedent("""
        import sys
        import ray
        import ray._core as core
        print("module", ray.__name__, "args", sys.argv[1:])
        # The hosted interpreter uses the built-in core, not the package's .so.
        print("builtin", not hasattr(core, "__file__"))
        print("prefix", sys.prefix)
    """))
    out = subprocess.run([_cli.binary_path(), "run", str(script), "x", "--flag"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, SWIFTRAY_PYTHON=sys.executable))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "module swiftray args ['x', '--flag']"
    assert lines[1] == "builtin True"
    assert lines[2] == f"prefix {sys.prefix}"


def test_swiftray_run_reports_the_script_exit_code(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("raise SystemExit(3)\n")
    out = subprocess.run([_cli.binary_path(), "run", str(script)], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, SWIFTRAY_PYTHON=sys.executable))
    assert out.returncode == 3

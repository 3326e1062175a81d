"""`pip install ./python` into a virtual environment: the driver and its workers run in
that environment (the worker host embeds the venv's interpreter configuration)."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pip_install_into_a_venv_and_run_tasks_there(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    # --system-site-packages supplies cloudpickle without the network; the package
    # itself must come from the build into the venv, not the outer site-packages.
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--force-reinstall", os.path.join(REPO, "python")],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    script = tmp_path / "in_venv.py"
    script.write_text(textwrap.dedent("""
        import sys, swiftray
        @swiftray.remote
        def where():
            import sys, swiftray
            return sys.prefix, swiftray.__file__
        prefix, location = swiftray.get(where.remote())
        print(prefix == sys.prefix, location.startswith(sys.prefix), swiftray.__file__.startswith(sys.prefix))
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("SWIFTRAY_PYTHON", "PYTHONPATH")}
    r = subprocess.run([py, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "True"]

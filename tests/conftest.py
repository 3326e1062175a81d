import os
import subprocess
import sys
import textwrap

import pytest

import swiftray


@pytest.fixture
def ray2():
    """A fresh local cluster with 2 CPUs, shut down after the test."""
    swiftray.shutdown()
    swiftray.init(num_cpus=2, _system_config={"infeasible_retry_ms": 200})
    yield swiftray
    swiftray.shutdown()


@pytest.fixture(scope="module")
def ray_module():
    """One 2-CPU local cluster shared by a module's fast tests."""
    swiftray.shutdown()
    swiftray.init(num_cpus=2)
    yield swiftray
    swiftray.shutdown()


def run_script(tmp_path, source, timeout=120, args=(), via=None, env=None):
    """Runs `source` as a separate driver process; returns CompletedProcess."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source))
    cmd = [sys.executable, str(path), *args] if via is None else [*via, str(path), *args]
    e = dict(os.environ, SWIFTRAY_PYTHON=sys.executable, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=str(tmp_path))

"""runtime_env on real clusters: code and data shipped to nodes that cannot see the
driver's folder (network-namespace hosts with a /tmp of their own), env_vars, pip
virtualenvs per requirement set, workers pooled per environment, set-up failures."""
import os
import sys
import textwrap

import pytest

import swiftray
from swiftray.exceptions import RuntimeEnvSetupError
from swiftray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def project(tmp_path):
    """A driver's folder: a working_dir with a module and a data file, and a package
    for py_modules elsewhere."""
    _write(tmp_path / "proj" / "shipped_mod.py", "VALUE = 42\n")
    _write(tmp_path / "proj" / "data" / "table.txt", "a,b\n1,2\n")
    _write(tmp_path / "proj" / ".gitignore", "scratch/\n")
    _write(tmp_path / "proj" / "scratch" / "big.bin", "not shipped\n")
    _write(tmp_path / "libs" / "helperpkg" / "__init__.py", "def twice(x):\n    return 2 * x\n")
    return tmp_path


@swiftray.remote
def _probe(driver_folder):
    import helperpkg
    import shipped_mod
    return {
        "value": shipped_mod.VALUE,
        "module_file": shipped_mod.__file__,
        "table": open("data/table.txt").read(),
        "twice": helperpkg.twice(21),
        "stage": os.environ.get("STAGE"),
        "cwd": os.getcwd(),
        "scratch_shipped": os.path.exists("scratch"),
        "sees_driver_folder": os.path.exists(driver_folder),
        "driver_folder_on_path": any(p.startswith(driver_folder) for p in sys.path),
        "node": swiftray.get_runtime_context().get_node_id(),
    }


@swiftray.remote
class _EnvActor:
    def env(self):
        import shipped_mod
        return os.environ.get("STAGE"), os.environ.get("ROLE"), shipped_mod.VALUE


def test_working_dir_and_py_modules_reach_a_node_that_cannot_see_the_driver_folder(host_cluster, project):
    c = host_cluster()
    c.add_node(num_cpus=1)
    far = c.add_node(num_cpus=2, resources={"far": 2})
    swiftray.init(address=c.address, runtime_env={
        "working_dir": str(project / "proj"),
        "py_modules": [str(project / "libs" / "helperpkg")],
        "env_vars": {"STAGE": "job"},
    })
    far_id = next(n["NodeID"] for n in swiftray.nodes() if n["Resources"].get("far"))
    # The driver's folder is not visible on the far node's host: the code must travel.
    out = swiftray.get(_probe.options(resources={"far": 1}).remote(str(project)))
    assert out["node"] == far_id
    assert out["sees_driver_folder"] is False and out["driver_folder_on_path"] is False
    assert (out["value"], out["table"], out["twice"], out["stage"]) == (42, "a,b\n1,2\n", 42, "job")
    assert out["cwd"].startswith(far["session"]) and out["module_file"].startswith(out["cwd"])
    assert out["scratch_shipped"] is False, ".gitignore'd folders are not shipped"
    # A task's env_vars override the job's; its working_dir is still the job's.
    task = swiftray.get(_probe.options(resources={"far": 1}, runtime_env={"env_vars": {"STAGE": "task"}})
                        .remote(str(project)))
    assert (task["stage"], task["value"], task["cwd"]) == ("task", 42, out["cwd"])
    # An actor: the job's env_vars with its own added.
    a = _EnvActor.options(resources={"far": 1}, runtime_env={"env_vars": {"ROLE": "actor"}}).remote()
    assert swiftray.get(a.env.remote()) == ("job", "actor", 42)


@swiftray.remote
def _pid_and_var():
    return os.getpid(), os.environ.get("POOL")


def test_workers_are_pooled_per_runtime_env_and_nested_tasks_inherit_it(cluster):
    cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    plain = swiftray.get(_pid_and_var.remote())
    a1 = swiftray.get(_pid_and_var.options(runtime_env={"env_vars": {"POOL": "a"}}).remote())
    b1 = swiftray.get(_pid_and_var.options(runtime_env={"env_vars": {"POOL": "b"}}).remote())
    a2 = swiftray.get(_pid_and_var.options(runtime_env={"env_vars": {"POOL": "a"}}).remote())
    plain2 = swiftray.get(_pid_and_var.remote())
    assert (plain[1], a1[1], b1[1], a2[1], plain2[1]) == (None, "a", "b", "a", None)
    # A worker never serves two environments.
    assert len({plain[0], a1[0], b1[0]}) == 3
    assert plain2[0] != a1[0] and plain2[0] != b1[0]

    @swiftray.remote
    def parent():
        return swiftray.get(_pid_and_var.remote())[1], swiftray.get(
            _pid_and_var.options(runtime_env={"env_vars": {"POOL": "child"}}).remote())[1]

    assert swiftray.get(parent.options(runtime_env={"env_vars": {"POOL": "outer"}}).remote()) == ("outer", "child")


@swiftray.remote
def _tabulate_version():
    import tabulate
    return tabulate.__version__, tabulate.__file__


@swiftray.remote
def _one():
    return 1


def test_pip_environments_install_from_the_registry_side_by_side_and_a_bad_one_fails_alone(cluster):
    cluster.add_node(num_cpus=2)
    cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    new = _tabulate_version.options(runtime_env={"pip": ["tabulate==0.9.0"]}).remote()
    old = _tabulate_version.options(runtime_env={"pip": ["tabulate==0.8.10"]}).remote()
    bad = _one.options(runtime_env={"pip": ["swiftray-no-such-package-xyz==1.0"]}).remote()
    plain = [_one.remote() for _ in range(4)]
    (v_new, f_new), (v_old, f_old) = swiftray.get([new, old], timeout=600)
    assert (v_new, v_old) == ("0.9.0", "0.8.10")
    assert f_new != f_old and "runtime_resources" in f_new
    with pytest.raises(RuntimeEnvSetupError, match="swiftray-no-such-package-xyz") as e:
        swiftray.get(bad, timeout=600)
    assert "pip install" in str(e.value)
    assert swiftray.get(plain) == [1] * 4
    # The driver's interpreter never saw the package.
    with pytest.raises(ImportError):
        import tabulate  # noqa: F401


def test_bad_runtime_env_options_fail_at_the_call_and_lose_nothing_submitted(tmp_path):
    swiftray.shutdown()
    swiftray.init(num_cpus=1)
    first = _one.remote()
    with pytest.raises(ValueError, match="conda"):
        _one.options(runtime_env={"conda": "env.yml"})
    with pytest.raises(ValueError, match="not_a_field"):
        _one.options(runtime_env={"not_a_field": 1})
    with pytest.raises(ValueError, match="does not exist"):
        _one.options(runtime_env={"working_dir": str(tmp_path / "missing")})
    with pytest.raises(TypeError, match="env_vars"):
        _one.options(runtime_env={"env_vars": {"A": 1}})
    big = tmp_path / "big"
    big.mkdir()
    (big / "blob.bin").write_bytes(os.urandom(64 << 10))
    os.environ["SWIFTRAY_RUNTIME_ENV_MAX_PACKAGE_BYTES"] = str(16 << 10)
    try:
        with pytest.raises(ValueError, match="exceeds the maximum size"):
            _one.options(runtime_env={"working_dir": str(big)}).remote()
    finally:
        del os.environ["SWIFTRAY_RUNTIME_ENV_MAX_PACKAGE_BYTES"]
    assert swiftray.get(first) == 1
    swiftray.shutdown()


def test_the_job_runtime_env_is_reported_by_the_runtime_context(tmp_path):
    swiftray.shutdown()
    swiftray.init(num_cpus=1, runtime_env={"env_vars": {"K": "v"}})
    try:
        assert swiftray.get_runtime_context().runtime_env["env_vars"] == {"K": "v"}

        @swiftray.remote
        def inside():
            return swiftray.get_runtime_context().runtime_env["env_vars"]

        assert swiftray.get(inside.options(runtime_env={"env_vars": {"T": "1"}}).remote()) == {"K": "v", "T": "1"}
        node = swiftray.get_runtime_context().get_node_id()
        pinned = _one.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                              runtime_env={"env_vars": {"X": "1"}})
        assert swiftray.get(pinned.remote()) == 1
    finally:
        swiftray.shutdown()

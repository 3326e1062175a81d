"""Everyday behaviours where swiftray must do what Ray 2.60 does (checked against real
Ray): wait on nothing, errors through nested tasks, namespaces inside tasks, ray.util,
placement group names, ActorPool, GPUs, exit_actor, `swiftray run -m`."""
import os
import sys
import threading
import time

import pytest

import swiftray
from conftest import run_script
from swiftray.exceptions import ActorDiedError, RayTaskError


# ---------------------------------------------------------------- wait, errors

def test_wait_on_an_empty_list_returns_two_empty_lists(ray_module):
    assert swiftray.wait([]) == ([], [])
    assert swiftray.wait([], num_returns=3, timeout=0) == ([], [])


class ConfigError(ValueError):
    pass


@swiftray.remote
def _inner_fails():
    raise ConfigError("the innermost message")


@swiftray.remote
def _outer_waits():
    return swiftray.get(_inner_fails.remote())


@swiftray.remote
def _outermost_waits():
    return swiftray.get(_outer_waits.remote())


def test_an_error_raised_two_tasks_down_keeps_its_class_message_and_both_tracebacks(ray_module):
    with pytest.raises(ConfigError) as ei:
        swiftray.get(_outermost_waits.remote(), timeout=60)
    e = ei.value
    assert isinstance(e, RayTaskError) and isinstance(e, ValueError)
    assert isinstance(e.cause, ConfigError) and str(e.cause) == "the innermost message"
    text = str(e)
    # Each task's traceback, outermost first, down to the user's raise.
    for frame in ("in _outermost_waits", "in _outer_waits", "in _inner_fails", "the innermost message"):
        assert frame in text, text
    assert text.index("in _outermost_waits") < text.index("in _outer_waits") < text.index("in _inner_fails")
    # Only the user's frames, as Ray shows them.
    assert "_worker.py" not in text and "_api.py" not in text, text


# ---------------------------------------------------------------- namespaces

@swiftray.remote
class _Registry:
    def __init__(self):
        self.items = {}

    def put(self, k, v):
        self.items[k] = v

    def get(self, k):
        return self.items.get(k)


@swiftray.remote
def _lookup_from_a_task(name):
    return swiftray.get(swiftray.get_actor(name).get.remote("k")), swiftray.get_runtime_context().namespace


@swiftray.remote
class _Finder:
    def find(self, name):
        return swiftray.get(swiftray.get_actor(name).get.remote("k"))


def test_tasks_and_actors_run_in_their_jobs_anonymous_namespace(ray2):
    reg = _Registry.options(name="registry").remote()
    swiftray.get(reg.put.remote("k", 42))
    value, namespace = swiftray.get(_lookup_from_a_task.remote("registry"), timeout=60)
    assert value == 42
    assert namespace == swiftray.get_runtime_context().namespace and namespace.startswith("anonymous-")
    assert swiftray.get(_Finder.remote().find.remote("registry"), timeout=60) == 42


def test_a_named_namespace_reaches_tasks_too(tmp_path):
    out = run_script(tmp_path, """
        import swiftray
        swiftray.init(num_cpus=1, namespace="team-a")

        @swiftray.remote
        class A:
            def ping(self):
                return "pong"

        @swiftray.remote
        def look():
            return swiftray.get(swiftray.get_actor("svc").ping.remote()), swiftray.get_runtime_context().namespace

        a = A.options(name="svc").remote()
        print(swiftray.get(look.remote()))
    """)
    assert out.returncode == 0, out.stderr
    assert "('pong', 'team-a')" in out.stdout


# ---------------------------------------------------------------- actors known at once

@swiftray.remote
def _slow_value(x, seconds=1.0):
    time.sleep(seconds)
    return x


@swiftray.remote
class _Holds:
    def __init__(self, x):
        self.x = x

    def get(self):
        return self.x


@swiftray.remote
def _call_get(handle):
    return swiftray.get(handle.get.remote())


def test_an_actor_is_known_at_once_though_its_constructor_waits_for_a_task(ray2):
    # Its handle reaches a task before the constructor's argument exists: the task's
    # call waits for the actor (as in Ray) instead of failing.
    a = _Holds.remote(_slow_value.remote(5))
    assert swiftray.get(_call_get.remote(a), timeout=60) == 5
    # A named one is found by name at once, and its name is taken at once.
    n = _Holds.options(name="waiting").remote(_slow_value.remote(6))
    assert swiftray.get(swiftray.get_actor("waiting").get.remote(), timeout=60) == 6
    with pytest.raises(ValueError, match="already taken"):
        _Holds.options(name="waiting").remote(1)
    del n


def test_an_actor_dropped_before_its_arguments_exist_is_never_created(ray2):
    from conftest import wait_until
    arg = _slow_value.remote(7, 1.5)
    h = _Holds.options(name="dropped").remote(arg)
    assert swiftray.get_actor("dropped")
    del h
    # Its last handle went: the name is free again, and no actor is made later.
    assert wait_until(lambda: "dropped" not in swiftray.util.list_named_actors(), timeout=30)
    assert swiftray.get(arg, timeout=60) == 7  # the argument has arrived
    assert "dropped" not in swiftray.util.list_named_actors()
    again = _Holds.options(name="dropped").remote(8)
    assert swiftray.get(again.get.remote(), timeout=60) == 8


# ---------------------------------------------------------------- ray.util

def test_import_alone_makes_ray_util_reachable_as_in_ray(tmp_path):
    out = run_script(tmp_path, """
        import inspect
        import ray

        u = ray.util
        assert inspect.ismodule(u.scheduling_strategies) and u.scheduling_strategies.NodeAffinitySchedulingStrategy
        assert inspect.isfunction(u.placement_group)  # the function, as in Ray
        from ray.util.placement_group import PlacementGroup  # the module is still importable
        for name in ["ActorPool", "as_completed", "map_unordered", "get_node_ip_address", "get_node_instance_id",
                     "get_placement_group", "get_current_placement_group", "placement_group_table",
                     "remove_placement_group", "list_named_actors", "inspect_serializability",
                     "register_serializer", "deregister_serializer", "log_once", "disable_log_once_globally",
                     "enable_periodic_logging", "accelerators", "actor_pool"]:
            assert hasattr(u, name), name
        assert u.accelerators.NVIDIA_TESLA_V100 == "V100"
        assert ray.actor.exit_actor and ray.get_gpu_ids
        print("ok")
    """, via=[sys.executable, "-m", "swiftray", "run"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout


@swiftray.remote
def _slow_square(x):
    time.sleep(0.01 * (5 - x))
    return x * x


def test_as_completed_and_map_unordered_give_every_result(ray_module):
    refs = [_slow_square.remote(i) for i in range(5)]
    assert sorted(swiftray.util.as_completed(refs, chunk_size=2)) == [0, 1, 4, 9, 16]
    got = list(swiftray.util.as_completed(refs, chunk_size=3, yield_obj_refs=True))
    assert sorted(swiftray.get(got)) == [0, 1, 4, 9, 16]
    assert sorted(swiftray.util.map_unordered(_slow_square, range(6), backpressure_size=2, chunk_size=1)) == \
        [0, 1, 4, 9, 16, 25]
    with pytest.raises(ValueError):
        list(swiftray.util.as_completed(refs, chunk_size=0))


class _Point:
    def __init__(self, x):
        self.x = x
        self.lock = threading.Lock()  # cannot be pickled the default way


@swiftray.remote
def _rebuilt_x(p):
    return p["rebuilt"]


def test_a_registered_serializer_carries_an_unpicklable_class_to_tasks(ray_module):
    swiftray.util.register_serializer(_Point, serializer=lambda p: p.x, deserializer=lambda x: {"rebuilt": x})
    try:
        # The worker has no registration: the deserializer travels with the value.
        assert swiftray.get(_rebuilt_x.remote(_Point(5)), timeout=60) == 5
        assert swiftray.get(swiftray.put(_Point(7))) == {"rebuilt": 7}
    finally:
        swiftray.util.deregister_serializer(_Point)
    with pytest.raises(TypeError):
        swiftray.put(_Point(1))


def test_inspect_serializability_names_the_member_that_does_not_pickle(capsys):
    lock = threading.Lock()

    def uses_a_lock():
        return lock

    ok, failures = swiftray.util.inspect_serializability(uses_a_lock, name="uses_a_lock")
    assert not ok
    assert any(f.name == "lock" for f in failures), failures
    assert "lock" in capsys.readouterr().out
    assert swiftray.util.inspect_serializability(lambda: 1)[0]


def test_log_once_says_a_key_once():
    from swiftray.util import debug
    key = f"k-{time.time()}"
    assert swiftray.util.log_once(key) and not swiftray.util.log_once(key)
    debug._disabled, was = True, debug._disabled
    try:
        assert not swiftray.util.log_once(key + "x")
    finally:
        debug._disabled = was


# ---------------------------------------------------------------- placement groups

def test_a_named_group_can_be_made_again_right_after_it_is_removed(ray2):
    from swiftray.util import get_placement_group, placement_group, placement_group_table, remove_placement_group
    for _ in range(20):  # Ray's own documentation example, in a loop
        pg = placement_group([{"CPU": 1}], name="reused")
        swiftray.get(pg.ready(), timeout=30)
        remove_placement_group(pg)
        # What the return promises holds at once, for everyone.
        assert placement_group_table(pg)["state"] == "REMOVED"
        with pytest.raises(ValueError):
            get_placement_group("reused")
    pg = placement_group([{"CPU": 1}], name="reused")
    assert swiftray.get(pg.ready(), timeout=30)
    remove_placement_group(pg)


@swiftray.remote
def _table_state(pg):
    from swiftray.util import placement_group_table
    return placement_group_table(pg)["state"]


def test_an_unnamed_group_passed_on_at_once_is_known_to_the_receiver(ray2):
    from swiftray.util import placement_group, remove_placement_group
    for _ in range(10):
        pg = placement_group([{"CPU": 0.1}])
        assert swiftray.get(_table_state.remote(pg), timeout=30) in ("PENDING", "CREATED")
        remove_placement_group(pg)
        assert swiftray.get(_table_state.remote(pg), timeout=30) == "REMOVED"


# ---------------------------------------------------------------- ActorPool

@swiftray.remote
class _Worker:
    def __init__(self, log=None):
        self.log = log

    def double(self, v):
        if self.log is not None:
            swiftray.get(self.log.put.remote(v, time.time()))
        return 2 * v

    def slow(self, v):
        time.sleep(v)
        return v

    @swiftray.method(num_returns=2)
    def both(self, v):
        return v, -v


def test_actor_pool_map_submits_everything_at_once(ray2):
    from swiftray.util import ActorPool
    log = _Registry.remote()
    pool = ActorPool([_Worker.remote(log), _Worker.remote(log)])
    it = pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])
    # Nothing consumed yet, yet each actor already works on a value (as in Ray, the
    # others wait in the pool for an actor whose result was taken).
    deadline = time.time() + 30
    while time.time() < deadline and any(swiftray.get(log.get.remote(v)) is None for v in (1, 2)):
        time.sleep(0.05)
    assert all(swiftray.get(log.get.remote(v)) is not None for v in (1, 2))
    assert list(it) == [2, 4, 6, 8]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), [5, 6, 7])) == [10, 12, 14]


def test_a_value_submitted_before_a_map_does_not_hold_up_its_results(ray2):
    from swiftray.util import ActorPool
    pool = ActorPool([_Worker.remote(), _Worker.remote()])
    pool.submit(lambda a, v: a.slow.remote(v), 1.0)
    # The earlier value is not one of the map's results (it ran, outside the map).
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3])) == [2, 4, 6]
    assert not pool.has_next()


def test_actor_pool_handles_methods_with_several_returns(ray2):
    from swiftray.util import ActorPool
    pool = ActorPool([_Worker.remote()])
    pool.submit(lambda a, v: a.both.remote(v), 3)
    pool.submit(lambda a, v: a.both.remote(v), 4)
    assert pool.get_next() == [3, -3]
    assert pool.get_next_unordered() == [4, -4]
    assert list(pool.map(lambda a, v: a.both.remote(v), [1, 2])) == [[1, -1], [2, -2]]


def test_actor_pool_push_and_pop_as_in_ray(ray2):
    from swiftray.util import ActorPool
    a, b = _Worker.remote(), _Worker.remote()
    pool = ActorPool([a])
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a)
    pool.submit(lambda w, v: w.slow.remote(v), 0.5)
    pool.submit(lambda w, v: w.double.remote(v), 21)  # waits: the only actor is busy
    assert not pool.has_free() and pool.pop_idle() is None
    pool.push(b)  # takes the waiting submit at once
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(b)
    assert sorted([pool.get_next_unordered(timeout=30), pool.get_next_unordered(timeout=30)]) == [0.5, 42]
    assert pool.has_free() and pool.pop_idle() in (a, b)
    with pytest.raises(StopIteration):
        pool.get_next()


def test_actor_pool_get_next_timeout(ray2):
    from swiftray.util import ActorPool
    pool = ActorPool([_Worker.remote()])
    pool.submit(lambda w, v: w.slow.remote(v), 2.0)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    assert pool.has_next()  # not ignored: still next
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert not pool.has_next()


# ---------------------------------------------------------------- GPUs

@swiftray.remote(num_gpus=1)
def _one_gpu():
    time.sleep(0.3)
    return swiftray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), \
        swiftray.get_runtime_context().get_assigned_resources()


@swiftray.remote(num_gpus=0.5)
def _half_gpu():
    time.sleep(0.3)
    return swiftray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@swiftray.remote
def _no_gpu():
    return swiftray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), \
        swiftray.get_runtime_context().get_assigned_resources()


@swiftray.remote(num_gpus=1)
class _GPUActor:
    def ids(self):
        return swiftray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), \
            swiftray.get_runtime_context().get_assigned_resources()


@pytest.fixture
def ray_gpus():
    swiftray.shutdown()
    swiftray.init(num_cpus=4, num_gpus=2)
    yield swiftray
    swiftray.shutdown()


def test_each_worker_sees_the_gpus_it_was_assigned(ray_gpus):
    a, b = swiftray.get([_one_gpu.remote(), _one_gpu.remote()], timeout=60)
    # Two whole-GPU tasks at once hold different GPUs, and CUDA sees exactly theirs.
    assert sorted(a[0] + b[0]) == [0, 1]
    for ids, visible, assigned in (a, b):
        assert visible == ",".join(map(str, ids)) and assigned == {"CPU": 1.0, "GPU": 1.0}
    # Fractions share one GPU id (as Ray packs them).
    halves = swiftray.get([_half_gpu.remote() for _ in range(2)], timeout=60)
    assert halves[0][0] == halves[1][0] and len(halves[0][0]) == 1
    assert halves[0][1] == str(halves[0][0][0])
    # A task without GPUs sees none; CUDA_VISIBLE_DEVICES is left alone.
    assert swiftray.get(_no_gpu.remote(), timeout=60) == ([], None, {"CPU": 1.0})
    # An actor keeps its GPU for its life.
    actors = [_GPUActor.remote(), _GPUActor.remote()]
    got = swiftray.get([x.ids.remote() for x in actors], timeout=60)
    assert sorted(g[0][0] for g in got) == [0, 1]
    assert all(g[1] == str(g[0][0]) and g[2] == {"GPU": 1.0} for g in got)
    # The driver holds none, and get_assigned_resources is for workers (as Ray).
    assert swiftray.get_gpu_ids() == []
    with pytest.raises(AssertionError):
        swiftray.get_runtime_context().get_assigned_resources()
    assert swiftray.get_runtime_context().get_accelerator_ids()["GPU"] == []


def test_a_task_in_a_bundle_gets_the_bundles_gpu(ray_gpus):
    from swiftray.util import placement_group, remove_placement_group
    from swiftray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    hold = _GPUActor.remote()  # takes one GPU first
    held = swiftray.get(hold.ids.remote(), timeout=60)[0]
    pg = placement_group([{"CPU": 1, "GPU": 1}])
    swiftray.get(pg.ready(), timeout=30)
    ids, visible = swiftray.get(_half_gpu.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)).remote(), timeout=60)
    assert ids != held and len(ids) == 1 and visible == str(ids[0])
    remove_placement_group(pg)


# ---------------------------------------------------------------- exit_actor, run -m

@swiftray.remote(max_restarts=3)
class _Leaver:
    def pid(self):
        return os.getpid()

    def leave(self):
        swiftray.actor.exit_actor()


def test_exit_actor_ends_the_actor_for_good_and_says_so(ray2):
    from conftest import pid_alive, wait_until
    a = _Leaver.remote()
    pid = swiftray.get(a.pid.remote(), timeout=60)
    with pytest.raises(ActorDiedError, match="exit_actor"):
        swiftray.get(a.leave.remote(), timeout=60)
    with pytest.raises(ActorDiedError, match="exit_actor"):  # not restarted, whatever max_restarts says
        swiftray.get(a.pid.remote(), timeout=60)
    assert wait_until(lambda: not pid_alive(pid))
    with pytest.raises(TypeError, match="non-actor"):
        swiftray.exit_actor()


def test_swiftray_run_m_runs_a_ray_test_suite_unchanged(tmp_path):
    suite = tmp_path / "ray_suite"
    suite.mkdir()
    (suite / "test_basic.py").write_text(
        "import ray\n\n"
        "def test_tasks():\n"
        "    ray.init(num_cpus=1)\n"
        "    f = ray.remote(lambda x: x + 1)\n"
        "    assert ray.get(f.remote(1)) == 2\n"
        "    assert ray.__name__ == 'swiftray'\n"
        "    ray.shutdown()\n\n"
        "def test_fails_on_purpose():\n"
        "    assert False, 'reported by pytest'\n")
    import subprocess
    env = dict(os.environ, SWIFTRAY_PYTHON=sys.executable)
    out = subprocess.run([sys.executable, "-m", "swiftray", "run", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(suite)], capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert "1 failed, 1 passed" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 1  # pytest's exit status comes through

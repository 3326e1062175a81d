"""Errors: exceptions in tasks, worker deaths and retries, bad input, cancellation."""
import os
import signal
import threading
import time

import pytest

import swiftray
from swiftray import exceptions


class MyError(ValueError):
    pass


@swiftray.remote
def boom(msg):
    raise MyError(msg)


@swiftray.remote
def identity(x):
    return x


def test_task_exception_is_a_ray_task_error_and_the_users_class(ray_module):
    with pytest.raises(MyError) as ei:
        swiftray.get(boom.remote("bad input"))
    err = ei.value
    assert isinstance(err, exceptions.RayTaskError)
    assert "bad input" in str(err)
    assert "raise MyError(msg)" in str(err)  # the remote traceback
    assert isinstance(err.cause, MyError)


def test_task_errors_propagate_through_dependent_tasks(ray_module):
    with pytest.raises(exceptions.RayTaskError) as ei:
        swiftray.get(identity.remote(identity.remote(boom.remote("upstream"))))
    assert "upstream" in str(ei.value)
    assert isinstance(ei.value, MyError)


def test_application_errors_are_not_retried_by_default(ray_module, tmp_path):
    marker = tmp_path / "count"

    @swiftray.remote
    def count_and_fail(path):
        with open(path, "a") as f:
            f.write("x")
        raise RuntimeError("always")

    with pytest.raises(RuntimeError):
        swiftray.get(count_and_fail.remote(str(marker)))
    assert marker.read_text() == "x"


def test_retry_exceptions_retries_application_errors(ray_module, tmp_path):
    marker = tmp_path / "count"

    @swiftray.remote(retry_exceptions=[KeyError], max_retries=2)
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 3:
            raise KeyError("transient")
        return "ok"

    assert swiftray.get(flaky.remote(str(marker))) == "ok"
    assert marker.read_text() == "xxx"

    @swiftray.remote(retry_exceptions=[KeyError], max_retries=2)
    def wrong_kind():
        raise ValueError("not listed")

    with pytest.raises(ValueError):
        swiftray.get(wrong_kind.remote())


@pytest.mark.parametrize("how", ["exit", "sigkill", "sigsegv"])
def test_a_worker_that_dies_mid_task_is_retried_on_a_fresh_worker(ray2, tmp_path, capfd, how):
    marker = tmp_path / "attempts"

    @swiftray.remote(max_retries=3)
    def dies_twice(path, how):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        if len(open(path).read().split()) <= 2:
            if how == "exit":
                os._exit(7)
            os.kill(os.getpid(), signal.SIGKILL if how == "sigkill" else signal.SIGSEGV)
        return "survived"

    assert swiftray.get(dies_twice.remote(str(marker), how), timeout=60) == "survived"
    pids = marker.read_text().split()
    assert len(pids) == 3 and len(set(pids)) == 3
    err = capfd.readouterr().err
    assert "A worker died or was killed while executing task" in err
    assert "dies_twice" in err and f"pid {pids[0]}" in err
    expected = {"exit": "exited with code 7", "sigkill": "signal 9 (SIGKILL)", "sigsegv": "signal 11 (SIGSEGV)"}[how]
    assert expected in err


def test_worker_crashed_error_after_the_last_retry(ray2, capfd):
    @swiftray.remote(max_retries=1)
    def always_dies():
        os._exit(3)

    with pytest.raises(exceptions.WorkerCrashedError) as ei:
        swiftray.get(always_dies.remote(), timeout=60)
    msg = str(ei.value)
    assert "always_dies" in msg and "exited with code 3" in msg and "pid" in msg
    assert "2 time(s)" in msg


def test_the_name_option_names_the_task_in_errors(ray2):
    @swiftray.remote(max_retries=0)
    def anonymous():
        os._exit(2)

    with pytest.raises(exceptions.WorkerCrashedError, match="nightly-etl"):
        swiftray.get(anonymous.options(name="nightly-etl").remote(), timeout=60)


def test_max_retries_zero_fails_at_once(ray2):
    @swiftray.remote(max_retries=0)
    def dies():
        os._exit(1)

    with pytest.raises(exceptions.WorkerCrashedError):
        swiftray.get(dies.remote(), timeout=60)


def test_unpicklable_argument_names_the_object_and_where(ray_module):
    lock = threading.Lock()
    with pytest.raises(TypeError) as ei:
        identity.remote({"ok": 1, "bad": lock})
    msg = str(ei.value)
    assert "argument 0 of task identity" in msg and "['bad']" in msg and "lock" in msg
    # Nothing submitted earlier is lost.
    assert swiftray.get(identity.remote(5)) == 5


def test_unpicklable_result_names_the_return_value(ray_module):
    @swiftray.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(exceptions.RayTaskError) as ei:
        swiftray.get(returns_lock.remote())
    assert "return value of task" in str(ei.value) and "lock" in str(ei.value)


def test_unknown_or_mistyped_options_fail_at_decoration_and_options_time():
    with pytest.raises(ValueError, match="Invalid option keyword num_cpu"):
        swiftray.remote(num_cpu=1)
    with pytest.raises(TypeError, match="num_cpus"):
        swiftray.remote(num_cpus="two")
    with pytest.raises(ValueError, match="max_retries"):
        swiftray.remote(max_retries=-2)
    with pytest.raises(TypeError, match="num_returns"):
        identity.options(num_returns=1.5)
    with pytest.raises(ValueError, match="num_cpus"):
        identity.options(resources={"CPU": 1})
    with pytest.raises(TypeError, match="retry_exceptions"):
        identity.options(retry_exceptions=["not a class"])


def test_cancel_a_running_task_interrupts_it(ray2, tmp_path):
    started = tmp_path / "started"

    @swiftray.remote
    def long_running(path):
        open(path, "w").close()
        time.sleep(60)

    ref = long_running.remote(str(started))
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.02)
    swiftray.cancel(ref)
    # Not interrupted, the task would sleep 60 s and this get would time out instead.
    with pytest.raises(exceptions.TaskCancelledError):
        swiftray.get(ref, timeout=30)


def test_cancel_force_kills_the_worker(ray2, tmp_path):
    started = tmp_path / "started"

    @swiftray.remote
    def ignores_interrupts(path):
        open(path, "w").write(str(os.getpid()))
        while True:
            try:
                time.sleep(60)
            except KeyboardInterrupt:
                pass

    ref = ignores_interrupts.remote(str(started))
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.02)
    worker_pid = int(started.read_text())
    swiftray.cancel(ref, force=True)
    with pytest.raises(exceptions.TaskCancelledError):
        swiftray.get(ref, timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(worker_pid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    else:
        pytest.fail("the worker was not killed")


def test_cancel_a_queued_task_never_runs_it(ray2, tmp_path):
    ran = tmp_path / "ran"

    @swiftray.remote(num_cpus=2)
    def hog():
        time.sleep(1)

    @swiftray.remote(num_cpus=2)
    def queued(path):
        open(path, "w").close()

    h = hog.remote()
    q = queued.remote(str(ran))
    swiftray.cancel(q)
    with pytest.raises(exceptions.TaskCancelledError):
        swiftray.get(q, timeout=30)
    swiftray.get(h)
    time.sleep(0.2)
    assert not ran.exists()


def test_cancel_an_actor_call_queued_behind_a_busy_one_never_runs_it(ray2, tmp_path):
    # The queued call went by lane and still waits, unread, in the worker's socket
    # while the busy call runs: the cancel must still reach it.
    started, ran = tmp_path / "started", tmp_path / "ran"

    @swiftray.remote
    class Worker:
        def busy(self, path):
            open(path, "w").close()
            time.sleep(1)
            return "busy done"

        def mark(self, path):
            open(path, "w").close()
            return "marked"

    w = Worker.remote()
    b = w.busy.remote(str(started))
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.02)
    q = w.mark.remote(str(ran))
    swiftray.cancel(q)
    with pytest.raises(exceptions.TaskCancelledError):
        swiftray.get(q, timeout=30)
    assert swiftray.get(b, timeout=30) == "busy done"
    assert swiftray.get(w.mark.remote(str(tmp_path / "later")), timeout=30) == "marked"
    assert not ran.exists()


def test_a_broken_worker_environment_fails_tasks_with_the_workers_output(tmp_path):
    from conftest import run_script
    r = run_script(tmp_path, f"""
        import os, sys, swiftray
        shadow = {str(tmp_path / 'shadow')!r}
        os.makedirs(os.path.join(shadow, "swiftray"))
        with open(os.path.join(shadow, "swiftray", "__init__.py"), "w") as f:
            f.write("raise ImportError('broken environment for the test')\\n")
        sys.path.insert(0, shadow)  # workers inherit the driver's sys.path
        swiftray.init(num_cpus=1)
        @swiftray.remote
        def f():
            return 1
        try:
            swiftray.get(f.remote(), timeout=60)
        except swiftray.exceptions.RaySystemError as e:
            print("ERROR", e)
    """)
    assert r.returncode == 0, r.stderr
    assert "ERROR" in r.stdout and "fail to start" in r.stdout
    assert "broken environment for the test" in r.stdout

"""Resources are hard requirements; nested tasks; infeasible demand."""
import os
import time

import pytest

import swiftray
from conftest import signal_and_waiter
from swiftray import exceptions


def test_a_two_cpu_task_never_runs_beside_another_cpu_task(ray2, tmp_path):
    log = tmp_path / "log"

    def hold(path, start, end, seconds):
        with open(path, "a") as f:
            f.write(f"{start} {time.time()}\n")
        time.sleep(seconds)
        with open(path, "a") as f:
            f.write(f"{end} {time.time()}\n")

    big = swiftray.remote(num_cpus=2)(lambda path: hold(path, "big-start", "big-end", 0.5))
    small = swiftray.remote(num_cpus=1)(lambda path: hold(path, "small", "small-end", 0.2))
    refs = [small.remote(str(log)), big.remote(str(log)), small.remote(str(log)), big.remote(str(log))]
    swiftray.get(refs, timeout=60)
    events = [(float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines())]
    events.sort()
    running_big, running_small = 0, 0
    for _, kind in events:
        if kind == "big-start":
            running_big += 1
        elif kind == "big-end":
            running_big -= 1
        elif kind == "small":
            running_small += 1
        else:
            running_small -= 1
        assert not (running_big and running_small), events
        assert running_big <= 1


def test_custom_resources_are_hard_requirements(tmp_path):
    swiftray.shutdown()
    swiftray.init(num_cpus=2, resources={"accel": 1})
    try:
        @swiftray.remote(num_cpus=0, resources={"accel": 1})
        def use_accel():
            start = time.time()
            time.sleep(0.3)
            return start, time.time()

        spans = sorted(swiftray.get([use_accel.remote() for _ in range(3)], timeout=60))
        # One at a time: no two holders of the single "accel" overlap.
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
        assert swiftray.cluster_resources()["accel"] == 1
    finally:
        swiftray.shutdown()


def test_nested_tasks_do_not_deadlock_a_two_cpu_node(ray2):
    @swiftray.remote
    def leaf(i):
        return i

    @swiftray.remote
    def middle(i):
        return sum(swiftray.get([leaf.remote(i), leaf.remote(i + 1)]))

    @swiftray.remote
    def top():
        # Every CPU is held by a task blocked in get: blocked workers lend their CPU.
        return sum(swiftray.get([middle.remote(i) for i in range(4)]))

    assert swiftray.get([top.remote(), top.remote()], timeout=60) == [16, 16]


def test_an_infeasible_task_warns_naming_the_resource_and_get_times_out(ray2, capfd):
    @swiftray.remote(num_gpus=1)
    def needs_gpu():
        return 1

    ref = needs_gpu.remote()
    with pytest.raises(exceptions.GetTimeoutError):
        swiftray.get(ref, timeout=1.5)
    err = capfd.readouterr().err
    assert "cannot be scheduled" in err and "GPU" in err
    # The cluster still works.
    @swiftray.remote
    def fine():
        return 2

    assert swiftray.get(fine.remote(), timeout=30) == 2


def test_short_tasks_pipelined_behind_a_task_that_blocks_are_handed_back(tmp_path):
    # Tasks measured short are pushed several to a worker at once (task_pipeline_depth).
    # The first one here blocks until the second has run; on one CPU both go to the same
    # worker, so unless the blocked worker hands the second back (to run on another
    # worker while this one lends its CPU) the pair never finishes.
    swiftray.shutdown()
    swiftray.init(num_cpus=1, _system_config={"task_pipeline_depth": 8, "task_pipeline_below_us": 10_000_000})
    try:
        Signal, wait_for, send = signal_and_waiter()

        @swiftray.remote
        def noop():
            return os.getpid()

        signal = Signal.remote()
        for _ in range(3):  # the shape's tasks are "short" (below 10 s): later ones are pipelined
            assert len(swiftray.get([noop.remote() for _ in range(50)], timeout=60)) == 50
        waiter, sender = swiftray.get([wait_for.remote(signal), send.remote(signal)], timeout=90)
        assert waiter != sender
        # The worker that blocked takes tasks again.
        assert len(swiftray.get([noop.remote() for _ in range(200)], timeout=60)) == 200
    finally:
        swiftray.shutdown()

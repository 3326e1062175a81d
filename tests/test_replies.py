"""A worker's replies: while more tasks wait in its queue, a finished task's reply may
leave with a later one (`task_reply_batch`, Sources/Runtime/CoreWorker/ReplyHold.swift).
What a user relies on still holds: every result comes back, in order, and none waits
behind a call that runs long after it, behind a task that blocks on it, or behind an
actor's exit."""
import os
import time

import pytest

import swiftray
from swiftray.exceptions import ActorDiedError


def _until_exists(path):
    """Runs until `path` exists (the driver creates it once it has every earlier result),
    at most two minutes; whether it does."""
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.002)
    return os.path.exists(path)


@swiftray.remote
class Gate:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n

    def echo(self, i):
        return i

    def wait_for(self, path):
        return _until_exists(path)

    def read(self, refs):
        return swiftray.get(refs[0])

    def leave(self):
        swiftray.actor.exit_actor()


def test_results_of_quick_calls_do_not_wait_behind_a_long_call_queued_after_them(ray2, tmp_path):
    a = Gate.remote()
    assert swiftray.get(a.inc.remote(), timeout=60) == 1
    for round in range(5):
        go = tmp_path / f"go{round}"
        quick = [a.inc.remote() for _ in range(300)]
        slow = a.wait_for.remote(str(go))
        # The long call runs until these are in: a reply held behind it would never come.
        got = swiftray.get(quick, timeout=60)
        assert got == list(range(2 + 300 * round, 2 + 300 * (round + 1)))
        go.touch()
        assert swiftray.get(slow, timeout=60) is True


def test_quick_tasks_pipelined_to_one_worker_do_not_wait_behind_a_long_one(tmp_path):
    swiftray.shutdown()
    swiftray.init(num_cpus=1)
    try:
        @swiftray.remote
        def quick(i):
            return i

        @swiftray.remote
        def wait_for(path):
            return _until_exists(path)

        assert swiftray.get([quick.remote(i) for i in range(200)], timeout=60) == list(range(200))  # measured short
        for round in range(5):
            go = tmp_path / f"go{round}"
            refs = [quick.remote(i) for i in range(50)]
            slow = wait_for.remote(str(go))
            assert swiftray.get(refs, timeout=60) == list(range(50))
            go.touch()
            assert swiftray.get(slow, timeout=60) is True
    finally:
        swiftray.shutdown()


@pytest.mark.parametrize("slow_first", [True, False])
def test_results_of_a_threaded_actors_quick_calls_do_not_wait_behind_a_long_one(ray2, tmp_path, slow_first):
    # Slow last: the thread that ran the quick calls holds their replies while calls
    # are queued, then runs the long one, which ends only once the driver has them all.
    a = Gate.options(max_concurrency=4).remote()
    assert swiftray.get(a.echo.remote(-1), timeout=60) == -1
    for round in range(5):
        go = tmp_path / f"go{round}"
        slow = a.wait_for.remote(str(go)) if slow_first else None
        quick = [a.echo.remote(i) for i in range(300)]
        if not slow_first:
            slow = a.wait_for.remote(str(go))
        assert swiftray.get(quick, timeout=60) == list(range(300))
        go.touch()
        assert swiftray.get(slow, timeout=60) is True


@swiftray.remote
class AsyncGate:
    async def quick(self, i):
        return i

    async def block_until(self, path):
        return _until_exists(path)  # holds the actor's event loop itself (no await)

    async def sleep_until(self, path):
        import asyncio
        deadline = time.monotonic() + 120
        while not os.path.exists(path) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        return os.path.exists(path)


@pytest.mark.parametrize("waiter", ["block_until", "sleep_until"])
def test_results_of_an_async_actors_quick_calls_do_not_wait_behind_a_long_one(ray2, tmp_path, waiter):
    a = AsyncGate.remote()
    assert swiftray.get(a.quick.remote(-1), timeout=60) == -1
    for round in range(5):
        go = tmp_path / f"go{round}"
        quick = [a.quick.remote(i) for i in range(300)]
        slow = getattr(a, waiter).remote(str(go))
        assert swiftray.get(quick, timeout=60) == list(range(300))
        go.touch()
        assert swiftray.get(slow, timeout=60) is True


def test_a_call_that_blocks_on_the_result_of_the_call_before_it_gets_it(ray2):
    a = Gate.remote()
    for _ in range(20):
        made = [a.inc.remote() for _ in range(10)]
        reads = [a.read.remote([r]) for r in made]
        assert swiftray.get(reads, timeout=60) == swiftray.get(made, timeout=60)


def test_calls_that_finished_before_exit_actor_still_return_their_results(ray2):
    a = Gate.remote()
    refs = [a.inc.remote() for _ in range(200)]
    bye = a.leave.remote()
    assert swiftray.get(refs, timeout=60) == list(range(1, 201))
    with pytest.raises(ActorDiedError, match="exit_actor"):
        swiftray.get(bye, timeout=60)


@swiftray.remote
class Rendezvous:
    """Calls that wait (each on a thread of the actor) until another call opens them."""

    def __init__(self):
        import threading
        self.open = threading.Event()

    def wait_then_mark(self, path):
        if self.open.wait(120):
            with open(path, "w"):
                pass

    def release(self):
        self.open.set()


def test_a_call_sent_behind_many_that_wait_for_it_runs_without_the_caller_waiting(ray2, tmp_path):
    # The last calls go with many in flight on the lane, so they are corked; the calls
    # ahead never answer until the last has run, and the driver never blocks for a
    # result: only the lane's own deadline can send them.
    a = Rendezvous.options(max_concurrency=16).remote()
    paths = [str(tmp_path / f"m{i}") for i in range(12)]
    refs = [a.wait_then_mark.remote(p) for p in paths]
    opener = a.release.remote()
    assert all(_until_exists(p) for p in paths)
    assert swiftray.get(refs + [opener], timeout=60) == [None] * 13


@pytest.mark.parametrize("batch", [0, 1, 1024])
def test_every_setting_of_task_reply_batch_returns_every_result_in_order(batch):
    swiftray.shutdown()
    swiftray.init(num_cpus=2, _system_config={"task_reply_batch": batch})
    try:
        a = Gate.remote()
        assert swiftray.get([a.inc.remote() for _ in range(3000)], timeout=60) == list(range(1, 3001))

        @swiftray.remote
        def sq(i):
            return i * i
        assert swiftray.get([sq.remote(i) for i in range(3000)], timeout=60) == [i * i for i in range(3000)]
    finally:
        swiftray.shutdown()

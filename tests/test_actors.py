"""Actors with real worker processes: state, ordering, handles, names, concurrency,
death and restarts."""
import os
import signal
import time

import pytest

import swiftray
from conftest import pid_alive as _pid_alive, wait_until as _wait_until
from swiftray.exceptions import ActorDiedError, PendingCallsLimitExceeded, RayActorError, RayTaskError


@swiftray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    @swiftray.method(num_returns=2)
    def pair(self):
        return self.n, -self.n

    def fail(self):
        raise KeyError("no such thing")


def test_state_is_kept_across_calls_and_1000_calls_run_in_order(ray2):
    c = Counter.remote(10)
    assert swiftray.get(c.inc.remote()) == 11
    refs = [c.inc.remote() for _ in range(1000)]
    assert swiftray.get(refs) == list(range(12, 1012))
    assert swiftray.get(c.get.remote()) == 1011


def test_bursts_of_calls_larger_than_a_sockets_buffer_all_reach_their_actors(ray2):
    # Calls to an actor of this node go by lane; bursts this large (1,500 calls of 2 KiB
    # each) fill its socket while the actor runs, so what is left waits for the socket
    # to take it, and nothing may be forgotten there: a lost write would hang the get.
    @swiftray.remote
    class Sink:
        def __init__(self):
            self.n = 0

        def add(self, pad):
            self.n += 1
            return self.n

    actors = [Sink.remote() for _ in range(2)]
    pad = "x" * 2048
    for round_ in range(3):
        refs = [[a.add.remote(pad) for _ in range(1500)] for a in actors]
        for r in refs:
            assert swiftray.get(r, timeout=60) == list(range(round_ * 1500 + 1, (round_ + 1) * 1500 + 1))


def test_method_num_returns_and_method_options(ray2):
    c = Counter.remote(3)
    a, b = c.pair.remote()
    assert swiftray.get([a, b]) == [3, -3]
    # options() overrides @method for one call: one ref holding the pair.
    assert swiftray.get(c.pair.options(num_returns=1).remote()) == (3, -3)
    assert c.inc.options(num_returns=0).remote() is None
    assert swiftray.get(c.get.remote()) == 4
    with pytest.raises(TypeError, match="num_returns"):
        c.get.options(num_returns="two")
    with pytest.raises(ValueError, match="Invalid option keyword"):
        c.get.options(num_cpus=1)


def test_method_errors_raise_the_users_exception_and_the_actor_lives_on(ray2):
    c = Counter.remote()
    with pytest.raises(RayTaskError) as ei:
        swiftray.get(c.fail.remote())
    assert isinstance(ei.value, KeyError)
    assert "no such thing" in str(ei.value)
    assert swiftray.get(c.inc.remote()) == 1


def test_direct_calls_are_refused_with_a_hint(ray2):
    with pytest.raises(TypeError, match=r"Counter\.remote\(\)"):
        Counter()
    c = Counter.remote()
    with pytest.raises(TypeError, match=r"inc\.remote\(\)"):
        c.inc()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope


def test_bad_actor_options_are_named(ray2):
    with pytest.raises(ValueError, match="Invalid option keyword num_returns for actors"):
        swiftray.remote(num_returns=2)(type("A", (), {}))
    with pytest.raises(TypeError, match="max_restarts"):
        Counter.options(max_restarts="x")
    with pytest.raises(ValueError, match="max_concurrency"):
        Counter.options(max_concurrency=0)
    with pytest.raises(ValueError, match="lifetime"):
        Counter.options(lifetime="forever")
    with pytest.raises(ValueError, match="get_if_exists"):
        Counter.options(get_if_exists=True)


@swiftray.remote
def call_inc(handle, k):
    return swiftray.get(handle.inc.remote(k))


@swiftray.remote
class Relay:
    def __init__(self, target):
        self.target = target

    def push(self, k):
        return swiftray.get(self.target.inc.remote(k))

    def push_all(self, handles, k):
        return swiftray.get([h.inc.remote(k) for h in handles])


def test_handles_work_from_tasks_other_actors_and_inside_values(ray2):
    c = Counter.remote()
    assert swiftray.get(call_inc.remote(c, 5)) == 5
    relay = Relay.remote(c)
    assert swiftray.get(relay.push.remote(10)) == 15
    other = Counter.remote(100)
    box = swiftray.put([c, other])
    assert swiftray.get(relay.push_all.remote(swiftray.get(box), 1)) == [16, 101]
    # Every caller's calls landed on the one actor.
    assert swiftray.get(c.get.remote()) == 16


def test_default_actor_takes_a_cpu_to_place_and_none_while_alive(ray2):
    actors = [Counter.remote() for _ in range(4)]  # 4 actors on a 2-CPU node
    assert len(set(swiftray.get([a.pid.remote() for a in actors]))) == 4
    assert swiftray.available_resources().get("CPU") == 2.0
    held = Counter.options(num_cpus=1).remote()
    swiftray.get(held.get.remote())
    assert swiftray.available_resources().get("CPU") == 1.0
    swiftray.kill(held)
    assert _wait_until(lambda: swiftray.available_resources().get("CPU") == 2.0)


def test_named_actors_get_actor_get_if_exists_and_list(ray2):
    c = Counter.options(name="counter-a").remote(7)
    same = swiftray.get_actor("counter-a")
    assert swiftray.get(same.inc.remote()) == 8
    again = Counter.options(name="counter-a", get_if_exists=True).remote(0)
    assert swiftray.get(again.get.remote()) == 8
    with pytest.raises(ValueError, match="already taken"):
        Counter.options(name="counter-a").remote()
    b = Counter.options(name="counter-b", namespace="elsewhere").remote()
    assert swiftray.util.list_named_actors() == ["counter-a"]
    assert {"name": "counter-b", "namespace": "elsewhere"} in swiftray.util.list_named_actors(all_namespaces=True)
    assert swiftray.get(swiftray.get_actor("counter-b", namespace="elsewhere").get.remote()) == 0
    with pytest.raises(ValueError, match="Failed to look up actor with name 'counter-b'"):
        swiftray.get_actor("counter-b")
    swiftray.kill(c)
    assert _wait_until(lambda: "counter-a" not in swiftray.util.list_named_actors())
    with pytest.raises(ValueError, match="Failed to look up"):
        swiftray.get_actor("counter-a")
    # As in Ray, a named (non-detached) actor goes when its last handle does.
    del b
    assert _wait_until(lambda: swiftray.util.list_named_actors(all_namespaces=True) == [])


@swiftray.remote
class Sleeper:
    def span(self, seconds):
        start = time.monotonic()
        time.sleep(seconds)
        return start, time.monotonic()


@swiftray.remote
class AsyncWorker:
    async def span(self, seconds):
        import asyncio
        start = time.monotonic()
        await asyncio.sleep(seconds)
        return start, time.monotonic()


def _max_overlap(spans):
    """The largest number of calls running at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def test_threaded_actor_overlaps_calls():
    swiftray.shutdown()
    swiftray.init(num_cpus=2)
    try:
        threaded = Sleeper.options(max_concurrency=4).remote()
        spans = swiftray.get([threaded.span.remote(0.4) for _ in range(4)])
        assert _max_overlap(spans) == 4
        one = Sleeper.options(max_concurrency=1).remote()
        spans = swiftray.get([one.span.remote(0.1) for _ in range(3)])
        assert _max_overlap(spans) == 1
    finally:
        swiftray.shutdown()


def test_async_actor_overlaps_calls_on_its_event_loop(ray2):
    a = AsyncWorker.remote()
    spans = swiftray.get([a.span.remote(0.5) for _ in range(50)])
    assert _max_overlap(spans) == 50
    limited = AsyncWorker.options(max_concurrency=2).remote()
    spans = swiftray.get([limited.span.remote(0.1) for _ in range(6)])
    assert _max_overlap(spans) == 2


@swiftray.remote
def _plus_one(x):
    return x + 1


@swiftray.remote
class AsyncUser:
    """Calls that use the cluster from an async actor's event loop."""

    async def awaits(self, x):
        return await _plus_one.remote(x)

    async def gets(self, x):
        return swiftray.get(_plus_one.remote(x))  # blocks its loop, as in Ray

    async def gathers(self, n):
        import asyncio
        return sum(await asyncio.gather(*[_plus_one.remote(i) for i in range(n)]))

    def plain(self, x):
        return x * 2


def test_async_actor_awaits_refs_gets_and_serves_a_burst_in_order(ray2):
    a = AsyncUser.remote()
    assert swiftray.get(a.awaits.remote(1)) == 2
    assert swiftray.get(a.gets.remote(2)) == 3
    assert swiftray.get(a.gathers.remote(20)) == sum(range(1, 21))
    # A burst larger than one take of the event loop, with a sync method mixed in.
    refs = [a.plain.remote(i) if i % 2 else a.awaits.remote(i) for i in range(3000)]
    assert swiftray.get(refs) == [i * 2 if i % 2 else i + 1 for i in range(3000)]


@swiftray.remote
class LoopUser:
    """An async actor whose calls wait on its event loop's own timers and descriptors."""

    async def after(self, delay):
        import asyncio
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(delay, fut.set_result, delay)
        return await fut

    async def in_thread(self, x):
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(None, pow, x, 2)

    async def quick(self, i):
        return i

    async def look(self, readable, timeout):
        import os
        from swiftray import _core
        r, w = os.pipe()
        try:
            if readable:
                os.write(w, b"x")
            return _core.spin_until_readable(r, timeout)
        finally:
            os.close(r)
            os.close(w)

    async def look_at_bad_descriptor(self):
        from swiftray import _core
        try:
            _core.spin_until_readable(-1, 0.01)
        except ValueError as e:
            return str(e)


def test_async_actor_loop_serves_its_timers_and_descriptors_between_calls(ray2):
    # Before it sleeps, the loop looks for events without sleeping for a moment: the
    # events it finds (or sleeps for) must be its own timers and descriptors as well.
    a = LoopUser.remote()
    slow = [a.after.remote(0.2), a.in_thread.remote(7)]
    assert swiftray.get([a.quick.remote(i) for i in range(500)]) == list(range(500))
    assert swiftray.get(slow, timeout=30) == [0.2, 49]
    time.sleep(0.5)  # idle: its looks stop paying and back off; a call and a timer still wake it
    assert swiftray.get(a.after.remote(0.05), timeout=30) == 0.05
    assert swiftray.get([a.look.remote(True, 1.0), a.look.remote(False, 0.0)], timeout=30) == [True, False]
    assert "not a file descriptor" in swiftray.get(a.look_at_bad_descriptor.remote(), timeout=30)


@swiftray.remote
class Meeting:
    def __init__(self, size):
        import threading
        self.barrier = threading.Barrier(size, timeout=20)

    def meet(self):
        self.barrier.wait()  # only passes when `size` calls run at the same time
        return True


def test_threaded_actor_runs_max_concurrency_calls_at_once_again_and_again(ray2):
    # Each round needs all three calls running together: a call left waiting behind
    # a busy thread (while a thread slot is free) would break the barrier.
    m = Meeting.options(max_concurrency=3).remote(3)
    for _ in range(5):
        assert swiftray.get([m.meet.remote() for _ in range(3)], timeout=60) == [True] * 3


def test_max_pending_calls_refuses_more_calls(ray2):
    s = Sleeper.options(max_pending_calls=2).remote()
    first = [s.span.remote(0.5), s.span.remote(0.5)]
    with pytest.raises(PendingCallsLimitExceeded, match="max_pending_calls=2"):
        s.span.remote(0)
    swiftray.get(first)
    assert len(swiftray.get([s.span.remote(0), s.span.remote(0)])) == 2


def test_killed_actor_calls_raise_actor_died_with_the_reason(ray2):
    c = Counter.remote()
    pid = swiftray.get(c.pid.remote())
    slow = Sleeper.remote()
    running = slow.span.remote(30)
    time.sleep(0.3)
    swiftray.kill(c)
    swiftray.kill(slow)
    with pytest.raises(ActorDiedError, match="killed") as ei:
        swiftray.get(c.inc.remote())
    assert isinstance(ei.value, RayActorError)
    with pytest.raises(ActorDiedError, match="killed"):
        swiftray.get(running, timeout=20)
    assert _wait_until(lambda: not _pid_alive(pid))
    with pytest.raises(ValueError):
        swiftray.kill("not an actor")


@swiftray.remote
class Fragile:
    def __init__(self, marker):
        self.marker = marker
        self.calls = 0

    def work(self, i):
        self.calls += 1
        return i, self.calls, swiftray.get_runtime_context().was_current_actor_reconstructed

    def crash_once(self):
        # Dies the first time only (the marker outlives the worker).
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return "survived"

    def die(self, how):
        if how == "signal":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)


def test_crashing_actor_restarts_with_fresh_state_and_resends_calls(ray2, tmp_path):
    f = Fragile.options(max_restarts=1, max_task_retries=-1).remote(str(tmp_path / "m"))
    assert swiftray.get(f.work.remote(0)) == (0, 1, False)
    refs = [f.work.remote(1), f.crash_once.remote()] + [f.work.remote(i) for i in range(2, 6)]
    out = swiftray.get(refs, timeout=60)
    assert out[1] == "survived"
    # Fresh state after the restart, then the resent and later calls in order. (work(1)
    # may run again too: its reply can die with the worker, and resent calls are
    # at-least-once.)
    assert [o[0] for o in out[2:]] == [2, 3, 4, 5]
    counts = [o[1] for o in out[2:]]
    assert counts[0] in (1, 2) and counts == list(range(counts[0], counts[0] + 4))
    assert all(o[2] for o in out[2:])


def test_worker_death_reason_reaches_the_caller(ray2, tmp_path):
    f = Fragile.remote(str(tmp_path / "m"))
    with pytest.raises(ActorDiedError, match="exited with code 3"):
        swiftray.get(f.die.remote("exit"), timeout=30)
    with pytest.raises(ActorDiedError, match="max_restarts=0"):
        swiftray.get(f.work.remote(1), timeout=30)
    g = Fragile.remote(str(tmp_path / "m"))
    with pytest.raises(ActorDiedError, match="SIGKILL"):
        swiftray.get(g.die.remote("signal"), timeout=30)


def test_unfinished_calls_fail_without_max_task_retries(ray2, tmp_path):
    f = Fragile.options(max_restarts=1).remote(str(tmp_path / "m"))
    with pytest.raises(ActorDiedError, match="max_task_retries=0"):
        swiftray.get(f.crash_once.remote(), timeout=30)
    # The actor itself came back.
    assert swiftray.get(f.work.remote(7), timeout=30) == (7, 1, True)


@swiftray.remote
class BadInit:
    def __init__(self):
        raise ValueError("bad config value 42")

    def ping(self):
        return "pong"


def test_constructor_failure_kills_the_actor_for_good(ray2):
    a = BadInit.options(max_restarts=3).remote()
    with pytest.raises(ActorDiedError) as ei:
        swiftray.get(a.ping.remote(), timeout=30)
    text = str(ei.value)
    # The constructor's own frame, not swiftray's.
    assert "constructor raised" in text and "bad config value 42" in text and "in __init__" in text, text
    assert "_worker.py" not in text, text
    with pytest.raises(ActorDiedError, match="bad config value 42"):
        swiftray.get(a.ping.remote(), timeout=30)


def test_actor_dies_when_its_last_handle_goes(ray2):
    c = Counter.remote()
    pid = swiftray.get(c.pid.remote())
    ref = c.inc.remote()
    del c  # a pending call keeps it until the call is done
    assert swiftray.get(ref) == 1
    assert _wait_until(lambda: not _pid_alive(pid))
    kept = Counter.options(lifetime="detached", name="kept").remote()
    kpid = swiftray.get(kept.pid.remote())
    del kept
    time.sleep(0.5)
    assert _pid_alive(kpid)
    swiftray.kill(swiftray.get_actor("kept"))


def test_actor_pool_map_submit_and_get_next(ray2):
    from swiftray.util import ActorPool

    @swiftray.remote
    class Doubler:
        def double(self, x):
            return 2 * x

    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(10))) == [2 * i for i in range(10)]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(10))) == [2 * i for i in range(10)]
    for i in range(5):
        pool.submit(lambda a, v: a.double.remote(v), i)
    assert pool.has_next()
    assert [pool.get_next() for _ in range(5)] == [0, 2, 4, 6, 8]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()


SECOND_DRIVER = """
import os, signal, sys
import swiftray
swiftray.init(address=sys.argv[1], namespace="team")
shared = swiftray.get_actor("shared")
print("value", swiftray.get(shared.inc.remote(1)))

@swiftray.remote
class Mine:
    def ping(self):
        return "pong"

mine = Mine.options(name=sys.argv[2]).remote()
print(swiftray.get(mine.ping.remote()))
if sys.argv[3] == "crash":
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("ending", ["exit", "crash"])
def test_a_second_driver_finds_named_actors_and_its_actors_die_with_it(ray2, tmp_path, ending):
    from conftest import run_script
    shared = Counter.options(name="shared", namespace="team").remote(5)
    address = swiftray.get_runtime_context().gcs_address
    r = run_script(tmp_path, SECOND_DRIVER, args=[address, f"mine-{ending}", ending])
    assert "value 6" in r.stdout and "pong" in r.stdout, r.stdout + r.stderr
    assert swiftray.get(shared.inc.remote(1)) == 7
    # The second driver's actor died with it (a clean exit or a SIGKILL).
    assert _wait_until(lambda: f"mine-{ending}" not in
                       [a["name"] for a in swiftray.util.list_named_actors(all_namespaces=True)], timeout=15)


DETACHED_CREATE = """
import sys
import swiftray
swiftray.init(address=sys.argv[1], namespace="jobs")

@swiftray.remote
class Registry:
    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(x)
        return len(self.items)

    def items_(self):
        return self.items

r = Registry.options(name="registry", lifetime="detached").remote()
print(swiftray.get([r.add.remote("a"), r.add.remote("b")]))
"""

DETACHED_READ = """
import sys
import swiftray
swiftray.init(address=sys.argv[1], namespace="jobs")
r = swiftray.get_actor("registry")
print("items", swiftray.get(r.items_.remote()))
swiftray.kill(r)
"""


def test_detached_actor_outlives_its_driver_on_a_node_daemon(tmp_path):
    import shutil
    import subprocess
    import sys
    import tempfile
    from conftest import run_script
    swiftray.shutdown()
    cli = [sys.executable, "-m", "swiftray"]
    root = tempfile.mkdtemp(prefix="sr", dir="/tmp")  # short: socket paths are limited
    out = subprocess.run(cli + ["start", "--head", "--num-cpus", "2", "--temp-dir", str(root)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    session = next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Session:"))
    try:
        first = run_script(tmp_path, DETACHED_CREATE, args=[session])
        assert "[1, 2]" in first.stdout, first.stdout + first.stderr
        # The first driver is gone; its detached actor is not.
        second = run_script(tmp_path, DETACHED_READ, args=[session])
        assert "items ['a', 'b']" in second.stdout, second.stdout + second.stderr
    finally:
        stop = subprocess.run(cli + ["stop", "--temp-dir", str(root)], capture_output=True, text=True, timeout=60)
        assert "Stopped 1" in stop.stdout, stop.stdout + stop.stderr
        assert not os.path.exists(session)
        shutil.rmtree(root, ignore_errors=True)

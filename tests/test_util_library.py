"""Ray's utility library on swiftray: util.queue.Queue, util.multiprocessing.Pool (with
the examples of Python's own multiprocessing.Pool documentation), the joblib backend,
and awaiting refs from asyncio and concurrent futures without a thread per ref."""
import asyncio
import os
import threading
import time

import pytest

import swiftray
from conftest import run_script
from swiftray.util.queue import Empty, Full, Queue


# -- Queue -----------------------------------------------------------------------


@swiftray.remote
def _produce(q, n):
    for i in range(n):
        q.put((i, time.time()))
    return n


@swiftray.remote
class _Consumer:
    async def take(self, q, n):
        return [await q.get_async() for _ in range(n)]


def test_queue_put_and_get_block_time_out_and_batch_as_rays(ray_module):
    q = Queue(maxsize=3)
    q.put(1)
    q.put_nowait(2)
    q.put_nowait_batch([3])
    assert (q.qsize(), len(q), q.full(), q.empty()) == (3, 3, True, False)
    with pytest.raises(Full):
        q.put(4, timeout=0.2)
    with pytest.raises(Full):
        q.put_nowait(4)
    with pytest.raises(Full, match="Cannot add 2 items"):
        q.put_nowait_batch([5, 6])
    assert q.qsize() == 3, "a batch that does not fit adds nothing"
    assert q.get() == 1 and q.get_nowait_batch(2) == [2, 3]
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty, match="Cannot get 1 items"):
        q.get_nowait_batch(1)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(TypeError):
        q.put_nowait_batch(3)
    with pytest.raises(TypeError, match="actor_options"):
        Queue(actor_options=["num_cpus"])
    # A blocked get is answered by a later put from another process.
    blocked = Queue()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("v", blocked.get(timeout=30)))
    t.start()
    time.sleep(0.3)
    swiftray.get(_produce.remote(blocked, 1))
    t.join(30)
    assert result["v"][0] == 0
    q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(1)


def test_a_queue_is_shared_by_tasks_and_async_actors(ray_module):
    q = Queue(maxsize=5, actor_options={"num_cpus": 0})
    consumer = _Consumer.remote()
    taken = consumer.take.remote(q, 50)
    assert swiftray.get(_produce.remote(q, 50)) == 50
    items = swiftray.get(taken)
    assert [i for i, _ in items] == list(range(50)), "in order, each once"
    assert q.empty()

    async def both_ways():
        await q.put_async("a")
        return await q.get_async(timeout=5)
    assert asyncio.run(both_ways()) == "a"
    q.shutdown(force=True)


# -- multiprocessing.Pool ----------------------------------------------------------

# The examples of Python's multiprocessing.Pool documentation ("Using a pool of
# workers"), unchanged but for the import.
POOL_DOC_FIRST = """
from swiftray.util.multiprocessing import Pool

def f(x):
    return x*x

if __name__ == '__main__':
    with Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
"""

POOL_DOC_SECOND = """
from swiftray.util.multiprocessing import Pool, TimeoutError
import time
import os

def f(x):
    return x*x

if __name__ == '__main__':
    # start 4 worker processes
    with Pool(processes=4) as pool:

        # print "[0, 1, 4,..., 81]"
        print(pool.map(f, range(10)))

        # print same numbers in arbitrary order
        for i in pool.imap_unordered(f, range(10)):
            print(i)

        # evaluate "f(20)" asynchronously
        res = pool.apply_async(f, (20,))      # runs in *only* one process
        print(res.get(timeout=1))             # prints "400"

        # evaluate "os.getpid()" asynchronously
        res = pool.apply_async(os.getpid, ()) # runs in *only* one process
        print(res.get(timeout=1))             # prints the PID of that process

        # launching multiple evaluations asynchronously *may* use more processes
        multiple_results = [pool.apply_async(os.getpid, ()) for i in range(4)]
        print([res.get(timeout=1) for res in multiple_results])

        # make a single worker sleep for 10 seconds
        res = pool.apply_async(time.sleep, (10,))
        try:
            print(res.get(timeout=1))
        except TimeoutError:
            print("We lacked patience and got a multiprocessing.TimeoutError")

        print("For the moment, the pool remains available for more work")

    # exiting the 'with'-block has stopped the pool
    print("Now the pool is closed and no longer available")
"""


def test_the_multiprocessing_documentation_examples_run_unchanged(tmp_path):
    first = run_script(tmp_path, POOL_DOC_FIRST, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == "[1, 4, 9]"
    second = run_script(tmp_path, POOL_DOC_SECOND, timeout=120)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.strip().splitlines()
    assert lines[0] == "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"
    assert sorted(int(x) for x in lines[1:11]) == [x * x for x in range(10)]
    assert lines[11] == "400"
    assert int(lines[12]) > 0
    pids = eval(lines[13])  # noqa: S307 - our own script's printed list
    assert len(pids) == 4 and all(p > 0 for p in pids)
    assert lines[14:] == ["We lacked patience and got a multiprocessing.TimeoutError",
                          "For the moment, the pool remains available for more work",
                          "Now the pool is closed and no longer available"]


_initialized = {}


def _init_worker(tag):
    _initialized["tag"] = tag


def _tagged(x):
    return _initialized.get("tag"), x, os.getpid()


def _fails_on_three(x):
    if x == 3:
        raise ZeroDivisionError("three")
    return x


def _add(a, b):
    return a + b


def test_pool_methods_initializer_errors_callbacks_and_lifecycle(ray_module):
    from swiftray.util.multiprocessing import Pool, TimeoutError
    pool = Pool(processes=2, initializer=_init_worker, initargs=("ready",), maxtasksperchild=3)
    tagged = pool.map(_tagged, range(20), chunksize=1)
    assert [x for _, x, _ in tagged] == list(range(20)) and {t for t, _, _ in tagged} == {"ready"}
    assert len({p for _, _, p in tagged}) > 2, "actors are replaced after maxtasksperchild tasks"
    assert pool.starmap(_add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.apply(_add, (2,), {"b": 5}) == 7
    assert list(pool.imap(_tagged, range(5)))[4][1] == 4
    assert sorted(x for _, x, _ in pool.imap_unordered(_tagged, range(5), chunksize=2)) == list(range(5))
    # The first error is raised as the user's own exception; imap raises at its item.
    with pytest.raises(ZeroDivisionError, match="three"):
        pool.map(_fails_on_three, range(6))
    it = pool.imap(_fails_on_three, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ZeroDivisionError):
        next(it)
    # Callbacks run when results arrive, without anyone calling get.
    got, errors, done = [], [], threading.Event()
    pool.map_async(abs, [-1, -2, 3], callback=lambda v: (got.append(v), done.set()))
    assert done.wait(30) and got == [[1, 2, 3]]
    failed = threading.Event()
    r = pool.apply_async(_fails_on_three, (3,), error_callback=lambda e: (errors.append(e), failed.set()))
    assert failed.wait(30) and isinstance(errors[0], ZeroDivisionError)
    assert r.ready() and not r.successful()
    slow = pool.apply_async(time.sleep, (0.5,))
    with pytest.raises(TimeoutError):
        slow.get(timeout=0.01)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.map(abs, [1])
    pool.join()
    assert slow.ready()
    pool.terminate()
    with pytest.raises(ValueError, match="at least 1"):
        Pool(processes=0)
    with Pool(1) as p:
        assert p.map(abs, []) == []


def test_joblib_parallel_runs_on_the_cluster(ray_module):
    import joblib  # scripts/setup.sh installs it (a test dependency only)
    from joblib import Parallel, delayed

    from swiftray.util.joblib import register_ray
    register_ray()
    with joblib.parallel_backend("ray"):
        out = Parallel(n_jobs=-1)(delayed(_tagged)(i) for i in range(200))
    assert [x for _, x, _ in out] == list(range(200))
    assert os.getpid() not in {p for _, _, p in out}, "the calls ran in the cluster's processes"
    with joblib.parallel_backend("ray"):
        with pytest.raises(ZeroDivisionError):
            Parallel(n_jobs=2)(delayed(_fails_on_three)(x) for x in range(5))


# -- asyncio and concurrent futures ---------------------------------------------------


@swiftray.remote
def _slow_square(x, delay):
    time.sleep(delay)
    return x * x


@swiftray.remote
def _fail():
    raise KeyError("missing")


def test_awaiting_ten_thousand_refs_uses_a_bounded_number_of_threads(ray_module):
    refs = [swiftray.put(i) for i in range(10_000)]
    before = threading.active_count()
    peak = [before]

    async def main():
        async def watch():
            while True:
                peak[0] = max(peak[0], threading.active_count())
                await asyncio.sleep(0.001)
        w = asyncio.ensure_future(watch())
        values = await asyncio.gather(*refs)
        w.cancel()
        return values
    assert asyncio.run(main()) == list(range(10_000))
    assert peak[0] <= before + 2, f"{peak[0] - before} threads started for 10,000 awaits"


def test_await_gather_wait_and_future_of_task_results(ray_module):
    async def main():
        fast, slow = _slow_square.remote(3, 0), _slow_square.remote(4, 1.0)
        done, pending = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 1
        assert await fast == 9
        with pytest.raises(KeyError):
            await _fail.remote()
        return await asyncio.gather(slow, _slow_square.remote(5, 0))
    assert asyncio.run(main()) == [16, 25]
    fut = _slow_square.remote(6, 0.2).future()
    assert fut.result(timeout=30) == 36
    assert isinstance(_fail.remote().future().exception(timeout=30), KeyError)


@swiftray.remote
class _Echo:
    def echo(self, x):
        time.sleep(0.2)
        return x


@swiftray.remote
class _Caller:
    def __init__(self, echo):
        self.echo = echo

    async def ask(self, x):
        return await self.echo.echo.remote(x)

    async def tick(self):
        return "tick"


def test_an_async_actor_awaits_another_actor_without_blocking_its_loop(ray_module):
    caller = _Caller.remote(_Echo.remote())
    asked = [caller.ask.remote(i) for i in range(3)]
    # While its calls wait on the echo actor, the caller's loop answers others.
    assert swiftray.get(caller.tick.remote(), timeout=30) == "tick"
    assert swiftray.get(asked, timeout=60) == [0, 1, 2]


def test_awaiting_works_in_a_driver_holding_more_than_1024_descriptors():
    # select() cannot watch a descriptor numbered past FD_SETSIZE; the thread that
    # completes awaited refs must still see its core's.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    swiftray.shutdown()
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        swiftray.init(num_cpus=1)
        assert swiftray._core.available_fd() > 1024
        assert _slow_square.remote(4, 0).future().result(timeout=30) == 16

        async def one(ref):
            return await ref
        assert asyncio.run(asyncio.wait_for(one(_slow_square.remote(5, 0)), 30)) == 25
    finally:
        swiftray.shutdown()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_awaiting_works_again_after_shutdown_and_a_new_init():
    async def one(ref):
        return await ref
    swiftray.shutdown()
    for round_ in range(2):
        swiftray.init(num_cpus=1)
        assert asyncio.run(one(swiftray.put(round_))) == round_
        assert _slow_square.remote(3, 0).future().result(timeout=30) == 9
        swiftray.shutdown()

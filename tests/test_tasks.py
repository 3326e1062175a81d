"""Remote tasks, futures, get/put/wait on a local cluster (real worker processes)."""
import os
import pickle
import time

import pytest

import swiftray
from swiftray import exceptions


@swiftray.remote
def double(x):
    return x * 2


@swiftray.remote
def add(a, b):
    return a + b


@swiftray.remote
def pid():
    return os.getpid()


def test_remote_returns_a_future_whose_value_get_returns(ray_module):
    ref = double.remote(21)
    assert isinstance(ref, swiftray.ObjectRef)
    assert swiftray.get(ref) == 42


def test_get_of_a_list_keeps_order(ray_module):
    assert swiftray.get([double.remote(i) for i in range(50)]) == [i * 2 for i in range(50)]


def test_tasks_run_in_parallel(ray_module, tmp_path):
    # A barrier: each task announces itself and waits for the other. Run one after
    # the other, neither could pass (each gives up after 30 s and returns False).
    @swiftray.remote
    def meet(me, other, folder):
        open(os.path.join(folder, me), "w").close()
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(folder, other)):
            if time.time() > deadline:
                return False
            time.sleep(0.01)
        return True

    assert swiftray.get([meet.remote("a", "b", str(tmp_path)), meet.remote("b", "a", str(tmp_path))],
                        timeout=120) == [True, True]


def test_tasks_run_in_worker_processes_not_the_driver(ray_module):
    pids = set(swiftray.get([pid.remote() for _ in range(10)]))
    assert os.getpid() not in pids


def test_refs_as_arguments_are_resolved_and_chain(ray_module):
    a = double.remote(1)
    b = add.remote(a, double.remote(a))
    assert swiftray.get(b) == 2 + 4
    assert swiftray.get(add.remote(a, b=10)) == 12


def test_calls_of_refs_only_put_each_value_in_its_own_place(ray_module):
    # Calls whose arguments are all refs share one pickled call per number of refs:
    # each call still gets its own values, in order, whatever came before.
    @swiftray.remote
    def echo(*args):
        return args

    @swiftray.remote
    class Echo:
        def call(self, *args):
            return args

    e = Echo.remote()
    for n in [1, 3, 2, 1, 9, 3]:
        refs = [swiftray.put(f"v{n}.{i}") for i in range(n)]
        want = tuple(f"v{n}.{i}" for i in range(n))
        assert swiftray.get(echo.remote(*refs)) == want
        assert swiftray.get(e.call.remote(*refs)) == want
        assert swiftray.get(echo.remote(*reversed(refs))) == want[::-1]
    # A ref produced by a task, and refs beside plain values, as before.
    assert swiftray.get(echo.remote(double.remote(4), swiftray.put(1))) == (8, 1)
    assert swiftray.get(echo.remote(swiftray.put(1), 2)) == (1, 2)


def test_results_read_the_instant_they_arrive_are_never_lost(ray_module):
    # A get racing its task's reply once saw the object as freed.
    for i in range(3000):
        assert swiftray.get(double.remote(i)) == 2 * i


def test_put_and_get_round_trip_values(ray_module):
    for v in [1, "s", None, {"k": [1, 2]}, b"x" * 200_000, list(range(1000))]:
        assert swiftray.get(swiftray.put(v)) == v


def test_put_values_are_usable_as_task_arguments(ray_module):
    r = swiftray.put(20)
    assert swiftray.get(add.remote(r, 1)) == 21


def test_refs_nested_in_arguments_stay_refs(ray_module):
    @swiftray.remote
    def inner(refs):
        assert all(isinstance(r, swiftray.ObjectRef) for r in refs)
        return sum(swiftray.get(refs))

    refs = [swiftray.put(i) for i in range(5)]
    assert swiftray.get(inner.remote(refs)) == 10


def test_a_borrowed_ref_passed_on_as_a_top_level_argument_is_resolved_from_its_owner(ray_module):
    @swiftray.remote
    def forward(refs):
        # The worker borrows the driver's ref and passes it on: the core resolves it
        # from its owner (the driver) before `add` runs.
        return swiftray.get(add.remote(refs[0], 1))

    assert swiftray.get(forward.remote([swiftray.put(41)])) == 42


def test_num_returns(ray_module):
    @swiftray.remote(num_returns=3)
    def three():
        return 1, 2, 3

    a, b, c = three.remote()
    assert swiftray.get([a, b, c]) == [1, 2, 3]

    @swiftray.remote(num_returns=0)
    def nothing():
        return None

    assert nothing.remote() is None


def test_options_override_per_call(ray_module):
    @swiftray.remote
    def pair():
        return "x", "y"

    x, y = pair.options(num_returns=2).remote()
    assert swiftray.get([x, y]) == ["x", "y"]


def test_object_ref_api(ray_module):
    r = double.remote(1)
    assert len(r.hex()) == 56 and r.binary() == bytes.fromhex(r.hex())
    assert repr(r) == f"ObjectRef({r.hex()})"
    assert r == swiftray.ObjectRef(r.binary()) and hash(r) == hash(swiftray.ObjectRef(r.binary()))
    assert r.task_id() == r.hex()[:48]
    r2 = pickle.loads(pickle.dumps(r))
    assert r2 == r and swiftray.get(r2) == 2
    assert r.future().result(timeout=30) == 2


def test_object_ref_is_awaitable(ray_module):
    import asyncio

    async def main():
        return await double.remote(5)

    assert asyncio.run(main()) == 10


def test_get_timeout_raises_get_timeout_error(ray2):
    @swiftray.remote
    def slow():
        time.sleep(5)

    with pytest.raises(exceptions.GetTimeoutError) as ei:
        swiftray.get(slow.remote(), timeout=0.2)
    assert isinstance(ei.value, TimeoutError)


def test_wait_returns_ready_refs_in_input_order(ray2):
    @swiftray.remote
    def sleep(d):
        time.sleep(d)
        return d

    refs = [sleep.remote(2), sleep.remote(0), sleep.remote(0.1)]
    ready, not_ready = swiftray.wait(refs, num_returns=2, timeout=10)
    assert ready == [refs[1], refs[2]]
    assert not_ready == [refs[0]]
    ready, not_ready = swiftray.wait([sleep.remote(3)], timeout=0.1)
    assert ready == [] and len(not_ready) == 1


def test_wait_keeps_input_order_on_both_sides_when_ready_refs_are_interleaved(ray2):
    @swiftray.remote
    def sleep(d):
        time.sleep(d)
        return d

    slow = [sleep.remote(5) for _ in range(3)]
    put = [swiftray.put(i) for i in range(3)]
    refs = (slow[0], put[0], slow[1], put[1], put[2], slow[2])  # a tuple is accepted too
    ready, not_ready = swiftray.wait(refs, num_returns=3, timeout=10)
    assert ready == put and not_ready == slow
    with pytest.raises(TypeError, match="expects ObjectRefs, got int"):
        swiftray.wait([put[0], 7])
    with pytest.raises(ValueError, match="unique"):
        swiftray.wait([put[0], put[1], put[0]])
    for r in slow:
        swiftray.cancel(r)


def test_a_wait_loop_leaves_no_reader_registered_on_the_refs_still_pending(ray2):
    # The common `while refs: done, refs = wait(refs)` loop: each wait that returns
    # with fewer than all of its refs must unregister from the others, or every later
    # arrival pays for every earlier wait.
    @swiftray.remote
    def sleep(d):
        time.sleep(d)
        return d

    refs = [sleep.remote(0.02 * (i % 5)) for i in range(40)]
    slow = sleep.remote(3)
    pending, done = refs + [slow], []
    while len(pending) > 1:
        ready, pending = swiftray.wait(pending, num_returns=1, timeout=30)
        done += ready
    assert pending == [slow] and sorted(swiftray.get(done)) == sorted(swiftray.get(refs))
    assert swiftray._core.core_stats()["waited_objects"] == 0
    # A timed-out get unregisters too.
    with pytest.raises(exceptions.GetTimeoutError):
        swiftray.get(slow, timeout=0.1)
    assert swiftray._core.core_stats()["waited_objects"] == 0


def test_a_wait_loop_over_thousands_of_refs_hands_each_back_once_in_input_order(ray2):
    refs = [swiftray.put(i) for i in range(1500)] + [double.remote(i) for i in range(1500)]
    refs = refs[::2] + refs[1::2]  # puts and task returns interleaved
    pending, seen = list(refs), []
    while pending:
        before = list(pending)
        ready, rest = swiftray.wait(pending, num_returns=min(7, len(pending)), timeout=60)
        assert type(ready) is list and type(rest) is list and rest is not pending
        assert pending == before, "the caller's list is left as it was"
        where = {r: i for i, r in enumerate(before)}
        assert sorted(where[r] for r in ready + rest) == list(range(len(before)))
        assert [where[r] for r in ready] == sorted(where[r] for r in ready)  # both sides in input order
        assert [where[r] for r in rest] == sorted(where[r] for r in rest)
        seen += ready
        pending = rest
    assert sorted(seen, key={r: i for i, r in enumerate(refs)}.get) == refs and len(set(seen)) == len(refs)
    # A repeat far down a long list is still refused, and a tuple is still accepted.
    with pytest.raises(ValueError, match="unique"):
        swiftray.wait(refs[:2000] + [refs[1500]])
    ready, rest = swiftray.wait(tuple(refs[:10]), num_returns=10)
    assert ready == refs[:10] and rest == []


def test_a_get_over_thousands_of_refs_returns_every_value_in_order(ray_module):
    refs = [double.remote(i) for i in range(2500)]
    assert swiftray.get(refs) == [2 * i for i in range(2500)]
    # Repeated refs are one object, returned at each of their positions.
    assert swiftray.get([refs[7], refs[2499], refs[7]]) == [14, 4998, 14]


def test_calls_under_many_distinct_options_each_run_with_their_own(ray_module):
    # The core reuses what one function's calls under one set of options share; more
    # distinct sets than it keeps must still each reach the worker intact.
    @swiftray.remote
    def cpus():
        return swiftray.get_runtime_context().get_assigned_resources().get("CPU")

    refs = [cpus.options(num_cpus=(i + 1) / 1000).remote() for i in range(300)]
    refs.append(cpus.remote())
    got = swiftray.get(refs)
    assert got[:300] == pytest.approx([(i + 1) / 1000 for i in range(300)])
    assert got[300] == 1
    # What the function keeps per set of options is bounded: a program calling
    # `.options(...)` per call makes a new set each time.
    from swiftray import remote_function
    assert len(cpus._submissions) <= remote_function._CACHED_OPTIONS

    @swiftray.remote
    def pair(i):
        return i, -i

    one = [pair.remote(i) for i in range(5)]
    two = [pair.options(num_returns=2).remote(i) for i in range(5)]
    assert swiftray.get(one) == [(i, -i) for i in range(5)]
    assert [swiftray.get(list(t)) for t in two] == [[i, -i] for i in range(5)]


def test_wait_rejects_bad_arguments(ray_module):
    r = double.remote(1)
    with pytest.raises(TypeError):
        swiftray.wait(r)
    with pytest.raises(ValueError):
        swiftray.wait([r], num_returns=2)
    with pytest.raises(ValueError):
        swiftray.wait([r, r])


def test_runtime_context_ids(ray_module):
    ctx = swiftray.get_runtime_context()
    assert len(ctx.get_job_id()) == 8 and len(ctx.get_node_id()) == 56
    assert ctx.get_task_id() is None

    @swiftray.remote
    def inside():
        c = swiftray.get_runtime_context()
        return c.get_job_id(), c.get_node_id(), c.get_worker_id(), c.get_task_id()

    job, node, worker, task = swiftray.get(inside.remote())
    assert job == ctx.get_job_id() and node == ctx.get_node_id()
    assert worker != ctx.get_worker_id() and task is not None and len(task) == 48


def test_cluster_resources_and_nodes(ray_module):
    assert swiftray.cluster_resources()["CPU"] == 2
    nodes = swiftray.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"] and nodes[0]["Resources"]["CPU"] == 2
    deadline = time.time() + 5
    while swiftray.available_resources().get("CPU") != 2 and time.time() < deadline:
        time.sleep(0.05)
    assert swiftray.available_resources()["CPU"] == 2


def test_calling_a_remote_function_directly_is_an_error(ray_module):
    with pytest.raises(TypeError, match=r"double.remote\(\)"):
        double(1)


class _CountsPickles:
    """A callable whose every pickling is counted in the driver."""
    pickled = 0

    def __call__(self, x):
        return x + 100

    def __reduce__(self):
        type(self).pickled += 1
        return (_CountsPickles, ())


def test_a_function_is_pickled_once_per_definition(ray_module):
    f = swiftray.remote(_CountsPickles())
    assert swiftray.get([f.remote(i) for i in range(20)]) == [i + 100 for i in range(20)]
    assert swiftray.get(f.options(name="again").remote(1)) == 101
    assert _CountsPickles.pickled == 1

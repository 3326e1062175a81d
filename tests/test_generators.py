"""Streaming generators (num_returns="streaming", the default for functions that yield):
refs arrive as the values are produced, with back-pressure, errors at their item, retry
without repeats, sync and async generators in tasks and actors."""
import asyncio
import os
import threading
import time

import pytest
import swiftray
from swiftray import exceptions
from swiftray.object_ref import ObjectRefGenerator


@swiftray.remote
def ticks(n, pause):
    for i in range(n):
        time.sleep(pause)
        yield i, time.time()


@swiftray.remote
def fails_at(n):
    for i in range(n):
        yield i
    raise ValueError(f"broke after {n}")


@swiftray.remote(_generator_backpressure_num_objects=2)
def eager(n):
    for i in range(n):
        yield i, time.time()


@swiftray.remote
def endless():
    i = 0
    while True:
        yield i
        i += 1


@swiftray.remote
async def async_ticks(n):
    for i in range(n):
        await asyncio.sleep(0.01)
        yield i


@swiftray.remote(max_concurrency=2)
class ThreadedProducer:
    def numbers(self, n):
        yield from range(n)


@swiftray.remote
class Producer:
    def numbers(self, n):
        for i in range(n):
            yield i * 10

    def plain(self):
        return "plain"


@swiftray.remote
class AsyncProducer:
    async def numbers(self, n):
        for i in range(n):
            await asyncio.sleep(0.01)
            yield i + 100

    async def ping(self):
        return "pong"


def test_refs_arrive_while_the_generator_still_produces(ray_module):
    gen = ticks.remote(4, 0.3)
    assert isinstance(gen, ObjectRefGenerator)
    got = []
    for ref in gen:
        (i, made) = swiftray.get(ref)
        got.append((i, made, time.time()))
    assert [g[0] for g in got] == [0, 1, 2, 3]
    # The first value was in the reader's hands before the last one was even made.
    assert got[0][2] < got[-1][1]
    assert swiftray.get(gen.completed()) == 4
    with pytest.raises(StopIteration):
        next(gen)


def test_an_exception_is_raised_at_the_item_where_it_happened(ray_module):
    gen = fails_at.remote(2)
    assert swiftray.get(next(gen)) == 0
    assert swiftray.get(next(gen)) == 1
    with pytest.raises(ValueError, match="broke after 2") as ei:
        swiftray.get(next(gen))
    assert isinstance(ei.value, exceptions.RayTaskError)
    with pytest.raises(StopIteration):
        next(gen)


def test_back_pressure_pauses_the_generator_until_the_reader_catches_up(ray_module):
    gen = eager.remote(6)
    time.sleep(1.0)  # the generator could make all six meanwhile, were it not held back
    asked_at = []  # when the reader asked for each item (before it was taken)
    made_at = []
    while True:
        asked_at.append(time.time())
        ref = next(gen, None)
        if ref is None:
            break
        made_at.append(swiftray.get(ref)[1])
    assert len(made_at) == 6
    # Two items wait unread at most: item 3 can only be made once item 1 was asked for.
    assert made_at[3] >= asked_at[1]
    assert made_at[5] >= asked_at[3]


def test_a_killed_generator_worker_is_retried_and_the_stream_goes_on_without_repeats(ray_module, tmp_path):
    marker = str(tmp_path / "killed")

    @swiftray.remote(max_retries=2)
    def dies_once(n, marker):
        for i in range(n):
            if i == 3 and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), 9)
            yield i, os.getpid()
            time.sleep(0.2)  # the item's report leaves before the next one is made

    values = [swiftray.get(r) for r in dies_once.remote(6, marker)]
    assert [v[0] for v in values] == [0, 1, 2, 3, 4, 5], "every item once, in order"
    killed = int(open(marker).read())
    assert values[0][1] == killed, "the items reported before the kill were kept"
    assert values[-1][1] != killed, "the rest came from the retried attempt"


def test_actor_methods_stream_from_sync_and_async_generators(ray_module):
    p = Producer.remote()
    assert [swiftray.get(r) for r in p.numbers.remote(3)] == [0, 10, 20]
    assert swiftray.get(p.plain.remote()) == "plain"
    a = AsyncProducer.remote()
    gen = a.numbers.remote(3)
    # The async actor's loop answers other calls while the generator runs.
    assert swiftray.get(a.ping.remote()) == "pong"
    assert [swiftray.get(r) for r in gen] == [100, 101, 102]


def test_async_generator_tasks_and_threaded_actor_generators_stream_too(ray_module):
    assert [swiftray.get(r) for r in async_ticks.remote(3)] == [0, 1, 2]
    t = ThreadedProducer.remote()
    a, b = t.numbers.remote(3), t.numbers.remote(2)
    assert [swiftray.get(r) for r in a] == [0, 1, 2]
    assert [swiftray.get(r) for r in b] == [0, 1]


def test_async_for_reads_a_generator_on_an_event_loop(ray_module):
    async def main():
        out = []
        async for ref in ticks.remote(3, 0.05):
            out.append((await ref)[0])
        return out

    assert asyncio.run(asyncio.wait_for(main(), 60)) == [0, 1, 2]


def test_wait_takes_generators_ready_once_their_next_ref_is(ray_module):
    slow = ticks.remote(1, 3.0)
    fast = ticks.remote(1, 0.0)
    ready, not_ready = swiftray.wait([slow, fast], num_returns=1, timeout=30)
    assert ready == [fast] and not_ready == [slow]
    assert swiftray.get(next(fast))[0] == 0
    ready, _ = swiftray.wait([slow], timeout=30)
    assert ready == [slow]


def test_dropping_the_generator_stops_its_producer(ray_module):
    gen = endless.remote()
    assert swiftray.get(next(gen)) == 0
    done = gen.completed()
    del gen
    # The worker learns at its next report that nobody reads, and ends the task.
    assert swiftray.get(done, timeout=60) >= 1


def test_cancel_ends_a_running_generator(ray_module):
    gen = ticks.remote(1000, 0.05)
    next(gen)
    swiftray.cancel(gen)
    with pytest.raises(exceptions.TaskCancelledError):
        for ref in gen:
            swiftray.get(ref)


def test_a_value_that_does_not_pickle_fails_at_its_item(ray_module):
    @swiftray.remote
    def bad():
        yield 1
        yield threading.Lock()
        yield 2  # never made: the unpicklable item ended the stream

    gen = bad.remote()
    assert swiftray.get(next(gen)) == 1
    with pytest.raises(Exception, match="item 1 of generator"):
        swiftray.get(next(gen))
    with pytest.raises(StopIteration):  # the stream's last item
        next(gen)


@swiftray.remote(num_returns="dynamic")
def split(n):
    for i in range(n):
        yield i * i


@swiftray.remote
def total(gen):
    # A ref argument arrives as its value: the DynamicObjectRefGenerator.
    return sum(swiftray.get(list(gen)))


def test_a_dynamic_generator_returns_one_ref_whose_value_lists_every_item(ray_module):
    ref = split.remote(4)
    assert isinstance(ref, swiftray.ObjectRef)
    gen = swiftray.get(ref)
    assert isinstance(gen, swiftray.DynamicObjectRefGenerator) and len(gen) == 4
    assert [swiftray.get(r) for r in gen] == [0, 1, 4, 9]
    # Passed on, the ref lists the same items, read from this process (their owner).
    assert swiftray.get(total.remote(ref)) == 14
    # The items live while a ref to them does, not longer.
    items = list(gen)
    del gen, ref
    assert swiftray.get(items[-1]) == 9
    p = Producer.remote()
    assert [swiftray.get(r) for r in swiftray.get(p.numbers.options(num_returns="dynamic").remote(2))] == [0, 10]


def test_bad_generator_options_and_uses_are_clear_errors(ray_module):
    with pytest.raises(TypeError, match="num_returns"):
        ticks.options(num_returns="lots")
    with pytest.raises(ValueError, match="_generator_backpressure_num_objects"):
        ticks.options(_generator_backpressure_num_objects=0)
    gen = ticks.remote(1, 0)
    with pytest.raises(TypeError, match="iterate it"):
        swiftray.get(gen)

    @swiftray.remote(num_returns="streaming")
    def not_a_generator():
        return 5

    with pytest.raises(TypeError, match="not a generator"):
        swiftray.get(next(not_a_generator.remote()))
    list(gen)

"""Distributed reference counting (DESIGN §3): local refs, refs held by pending tasks,
refs inside other objects and borrowers keep an object alive until the last holder
drops it; then its owner frees it, inline or in the store."""
import gc
import time

import numpy as np

import swiftray

MiB = 1 << 20


def store_objects():
    return swiftray._core.store_stats()["num_objects"]


def settled(pred, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        gc.collect()
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def empty():
    c = swiftray._core.core_stats()
    return store_objects() == 0 and c["objects"] == 0 and c["references"] == 0


def test_a_ref_inside_a_put_value_lives_until_the_containing_value_is_dropped(ray2):
    inner = swiftray.put(np.ones(MiB))
    outer = swiftray.put([inner])
    del inner
    gc.collect()
    assert store_objects() == 1, "the outer value still holds the inner ref"
    got = swiftray.get(swiftray.get(outer)[0])
    assert got.sum() == MiB
    del got, outer
    assert settled(empty), swiftray._core.core_stats()


def test_a_ref_created_in_a_task_and_returned_outlives_the_task_until_dropped(ray2):
    @swiftray.remote
    def make():
        return [swiftray.put(np.full(MiB, 2.0))]  # owned by the worker

    lst = swiftray.get(make.remote())
    gc.collect()
    assert store_objects() == 1
    assert swiftray.get(lst[0]).sum() == 2.0 * MiB
    del lst
    # The driver's borrow is removed at the worker, which frees its object.
    assert settled(lambda: store_objects() == 0)
    assert settled(empty)


def test_refs_passed_inside_arguments_are_held_by_the_task_and_borrowed_by_the_worker(ray2):
    @swiftray.remote
    def total(lst):
        return float(sum(swiftray.get(r).sum() for r in lst))

    refs = [swiftray.put(np.full(MiB // 4, float(i))) for i in range(3)]
    out = total.remote(refs)
    del refs  # only the pending task (and then the worker's borrow) holds them
    gc.collect()
    assert swiftray.get(out) == float(sum(i * (MiB // 4) for i in range(3)))
    del out
    assert settled(empty), swiftray._core.core_stats()


def test_a_worker_that_keeps_a_borrowed_ref_keeps_the_object_alive(ray2):
    @swiftray.remote
    def stash(lst):
        import sys
        sys.swiftray_test_stash = lst[0]  # a process-wide place: each function pickles its own globals
        return True

    @swiftray.remote
    def read():
        import sys
        return float(swiftray.get(sys.swiftray_test_stash).sum())

    @swiftray.remote
    def drop():
        import sys
        del sys.swiftray_test_stash
        return True

    swiftray.shutdown()
    swiftray.init(num_cpus=1)  # one worker: the three tasks share its globals
    ref = swiftray.put(np.ones(MiB))
    assert swiftray.get(stash.remote([ref]))
    del ref
    gc.collect()
    time.sleep(0.2)
    assert store_objects() == 1, "the worker borrows it"
    assert swiftray.get(read.remote()) == MiB
    assert swiftray.get(drop.remote())
    assert settled(lambda: store_objects() == 0)


def test_a_borrower_that_dies_does_not_keep_the_object_alive(ray2):
    # A process that dies never removes its registrations itself: its node reports the
    # exit to the head, every node passes it on, and the owner drops the borrower.
    @swiftray.remote
    class Keeper:
        def keep(self, lst):
            self.ref = lst[0]
            return True

    @swiftray.remote(max_retries=0)
    def stash_then_die(lst):
        import os
        import sys
        sys.swiftray_test_stash = lst[0]
        swiftray.get(lst[0])  # in use: registered at the owner
        os._exit(3)

    ref = swiftray.put(np.ones(MiB))
    keeper = Keeper.remote()
    assert swiftray.get(keeper.keep.remote([ref]))
    try:
        swiftray.get(stash_then_die.remote([ref]))
    except swiftray.exceptions.WorkerCrashedError:
        pass
    del ref
    gc.collect()
    time.sleep(0.3)
    assert store_objects() == 1, "the actor still borrows it"
    swiftray.kill(keeper)
    del keeper
    assert settled(lambda: store_objects() == 0), swiftray._core.core_stats()
    assert settled(empty), swiftray._core.core_stats()


def test_a_value_holding_ten_thousand_refs_can_be_put_passed_and_got(ray2):
    refs = [swiftray.put(i) for i in range(10_000)]
    big = swiftray.put(refs)

    @swiftray.remote
    def add_all(lst):
        return sum(swiftray.get(lst))

    assert swiftray.get(add_all.remote(refs)) == sum(range(10_000))
    back = swiftray.get(big)
    assert len(back) == 10_000 and swiftray.get(back[1234]) == 1234
    del refs
    gc.collect()
    assert swiftray.get(swiftray.get(big)[9999]) == 9999, "the put value holds them"
    del back, big
    assert settled(empty), swiftray._core.core_stats()


def test_refs_unpickled_from_a_value_work_as_any_ref_and_cost_the_cyclic_collector_nothing(ray2):
    # An ObjectRef holds its id bytes only, so it can be in no cycle: the ones a value
    # brings back are left to reference counting (thousands at once made the collector
    # run pass after pass over them), and behave as any ref.
    import weakref

    @swiftray.remote
    def make(n):
        return [swiftray.put(i) for i in range(n)]

    back = swiftray.get(make.remote(2000))
    assert all(type(r) is swiftray.ObjectRef for r in back)
    assert not any(gc.is_tracked(r) for r in back)
    assert swiftray.get(back[::500]) == [0, 500, 1000, 1500]
    again = swiftray.get(swiftray.put(back))
    assert again == back and {hash(r) for r in again} == {hash(r) for r in back}
    probe = weakref.ref(back[7])
    assert probe() is back[7]
    del back, again
    gc.collect()
    assert probe() is None

"""The shared-memory object store: values over 100 KiB live in the node's arena,
are read zero-copy, spill to disk and come back, and fail clearly when nothing fits."""
import gc
import re
import os
import signal
import time

import numpy as np
import pytest

import swiftray
from conftest import wait_until
from swiftray import exceptions

MiB = 1 << 20
INLINE = 100 * 1024


@pytest.fixture
def store_cluster(request):
    """A 2-CPU local cluster with a small store (bytes from the test's param, default 512 MiB)."""
    swiftray.shutdown()
    cap = getattr(request, "param", 512 * MiB)
    swiftray.init(num_cpus=2, object_store_memory=cap)
    yield swiftray
    swiftray.shutdown()


def stats():
    return swiftray._core.store_stats()


def exporter(arr):
    """The type name of the object whose memory `arr` views."""
    base = arr
    while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
        base = base.base
    return type(base.obj).__name__


@swiftray.remote
def identity(x):
    return x


@swiftray.remote
def make_bytes(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def sizes():
    around_inline = [INLINE - 1, INLINE, INLINE + 1, INLINE + 4096]
    around_page = [4096 * 40 - 1, 4096 * 40, 4096 * 40 + 1]
    around_chunk = [5 * MiB - 1, 5 * MiB, 5 * MiB + 1]  # Ray's transfer chunk size
    return around_inline + around_page + around_chunk + [1, 1000, 64 * MiB + 3]


def test_values_of_many_sizes_come_back_identical_via_put_returns_and_args(store_cluster):
    for i, n in enumerate(sizes()):
        data = np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8)
        raw = data.tobytes()
        assert swiftray.get(swiftray.put(raw)) == raw, n
        assert np.array_equal(swiftray.get(swiftray.put(data)), data), n
        assert swiftray.get(make_bytes.remote(n, i)) == raw, n
        assert np.array_equal(swiftray.get(identity.remote(data)), data), n
    gc.collect()
    assert wait_until(lambda: stats()["num_objects"] == 0), stats()


def test_a_large_value_of_many_parts_is_copied_exactly(store_cluster):
    # Over 16 MiB a driver's put is copied by several threads, each a slice of the
    # object; these parts straddle the slices' edges at odd offsets.
    rng = np.random.default_rng(7)
    parts = [rng.integers(0, 256, n, dtype=np.uint8) for n in (9 * MiB + 7, 1, 13 * MiB + 1, 3 * MiB - 5, 0)]
    value = {"parts": parts, "meta": list(range(100))}
    back = swiftray.get(swiftray.put(value))
    assert back["meta"] == value["meta"]
    assert [len(b) for b in back["parts"]] == [len(p) for p in parts]
    assert all(np.array_equal(a, b) for a, b in zip(parts, back["parts"]))
    # The same value as a task's argument and its return (a worker copies on one thread).
    again = swiftray.get(identity.remote(value))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again["parts"]))


def test_large_values_live_in_the_store_and_small_ones_inline(store_cluster):
    small = swiftray.put(b"x" * (INLINE - 200))
    assert stats()["num_objects"] == 0
    big = swiftray.put(b"x" * (INLINE + 1))
    st = stats()
    assert st["num_objects"] == 1 and st["used"] >= INLINE
    del small, big
    assert wait_until(lambda: stats()["num_objects"] == 0 and stats()["used"] == 0)


def test_a_numpy_array_from_get_shares_store_memory_and_is_read_only(store_cluster):
    ref = swiftray.put(np.arange(10 * MiB // 8, dtype=np.int64))
    a = swiftray.get(ref)
    b = swiftray.get(ref)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1
    # Two gets map the same bytes: no copy was made for either.
    assert np.shares_memory(a, b)
    assert exporter(a) == "StoreView"
    # The mapping is pinned while a view lives, released when the last one dies.
    assert stats()["num_pinned"] == 1
    del a
    gc.collect()
    assert stats()["num_pinned"] == 1, "b still maps it"
    del b
    assert wait_until(lambda: stats()["num_pinned"] == 0)
    assert swiftray._core.core_stats()["live_store_views"] == 0


def test_workers_receive_large_arguments_zero_copy_and_read_only(store_cluster):
    @swiftray.remote
    def inspect(x):
        return x.flags.writeable, exporter(x), float(x.sum())

    arr = np.ones(4 * MiB // 8)
    assert swiftray.get(inspect.remote(arr)) == (False, "StoreView", float(arr.size))
    ref = swiftray.put(arr)
    assert swiftray.get(inspect.remote(ref)) == (False, "StoreView", float(arr.size))


def test_large_results_pass_between_tasks_without_coming_through_the_driver(store_cluster):
    @swiftray.remote
    def produce():
        return np.full(50 * MiB // 8, 3.0)

    @swiftray.remote
    def consume(x):
        return float(x.sum())

    r = produce.remote()
    assert swiftray.get(consume.remote(r)) == 3.0 * (50 * MiB // 8)
    core = swiftray._core.core_stats()
    # The driver owns the result but holds only its descriptor, not its bytes.
    assert core["object_bytes"] < MiB and core["stored_objects"] == 1
    assert stats()["num_objects"] == 1


@pytest.mark.parametrize("store_cluster", [512 * MiB], indirect=True)
def test_putting_and_dropping_100_mib_forty_times_stays_within_capacity_and_empties(store_cluster):
    cap = stats()["capacity"]
    arr = np.random.default_rng(0).random(100 * MiB // 8)
    for i in range(40):
        ref = swiftray.put(arr)
        if i % 10 == 0:
            assert np.array_equal(swiftray.get(ref), arr)
        st = stats()
        assert st["used"] <= cap
        del ref
    assert wait_until(lambda: stats()["used"] == 0 and stats()["num_objects"] == 0), stats()
    assert stats()["spilled_bytes"] == 0


@pytest.mark.parametrize("store_cluster", [256 * MiB], indirect=True)
def test_spilled_objects_restore_with_identical_bytes(store_cluster):
    arrays = [np.random.default_rng(i).random(60 * MiB // 8) for i in range(6)]  # 360 MiB > 256 MiB
    refs = [swiftray.put(a) for a in arrays]
    st = stats()
    assert st["spilled_bytes"] > 0 and st["used"] <= st["capacity"]
    spill_dir = st["spill_dir"]
    assert os.listdir(spill_dir)
    for a, r in zip(arrays, refs):
        got = swiftray.get(r)
        assert np.array_equal(got, a)
        del got
    assert stats()["bytes_restored_total"] > 0
    del refs, r
    gc.collect()
    assert wait_until(lambda: stats()["num_objects"] == 0 and stats()["spilled_bytes"] == 0)
    assert wait_until(lambda: not os.listdir(spill_dir))


def test_spill_directory_is_settable(tmp_path):
    swiftray.shutdown()
    try:
        swiftray.init(num_cpus=1, object_store_memory=64 * MiB, object_spilling_directory=str(tmp_path))
        refs = [swiftray.put(np.full(20 * MiB // 8, float(i))) for i in range(5)]
        assert stats()["spill_dir"].startswith(str(tmp_path))
        assert any(os.scandir(stats()["spill_dir"]))
        assert [float(swiftray.get(r)[0]) for r in refs] == [0.0, 1.0, 2.0, 3.0, 4.0]
    finally:
        swiftray.shutdown()
    assert not os.listdir(tmp_path), "spill files are removed at shutdown"


@pytest.mark.parametrize("store_cluster", [64 * MiB], indirect=True)
def test_a_full_store_raises_object_store_full_with_what_was_asked_and_pinned(store_cluster):
    keep = swiftray.get(swiftray.put(np.zeros(40 * MiB // 8)))  # pinned by this view
    with pytest.raises(exceptions.ObjectStoreFullError) as e:
        swiftray.put(np.zeros(40 * MiB // 8))
    msg = str(e.value)
    asked = int(re.search(r"of (\d+) bytes", msg).group(1))
    assert 40 * MiB <= asked < 40 * MiB + 4096  # the array plus the pickle's header
    assert "pinned by 1 reader(s)" in msg and f"pids {os.getpid()}" in msg
    assert "object_store_memory" in msg
    # Nothing already there was lost, and the store works again once the pin goes.
    assert keep.sum() == 0
    del keep
    gc.collect()
    assert wait_until(lambda: stats()["num_pinned"] == 0)
    assert swiftray.get(swiftray.put(np.ones(40 * MiB // 8))).sum() == 40 * MiB // 8


def test_an_object_larger_than_the_store_says_so(store_cluster):
    with pytest.raises(exceptions.ObjectStoreFullError, match="larger than the whole store"):
        swiftray.put(np.zeros(600 * MiB // 8))


def test_a_worker_killed_while_mapping_an_object_leaks_no_pin(store_cluster):
    @swiftray.remote(max_retries=0)
    def hold_and_die(x):
        assert x.sum() == x.size
        os.kill(os.getpid(), signal.SIGKILL)

    ref = swiftray.put(np.ones(8 * MiB // 8))
    with pytest.raises(exceptions.WorkerCrashedError):
        swiftray.get(hold_and_die.remote(ref))
    assert wait_until(lambda: stats()["num_pinned"] == 0), stats()
    assert float(swiftray.get(ref).sum()) == 8 * MiB // 8


def test_object_store_memory_is_validated():
    swiftray.shutdown()
    with pytest.raises(ValueError, match="object_store_memory"):
        swiftray.init(object_store_memory=-5)
    with pytest.raises(ValueError, match="object_store_memory"):
        swiftray.init(object_store_memory="1GB")
    assert not swiftray.is_initialized()


def test_swiftray_memory_reports_the_running_clusters_store(store_cluster, tmp_path):
    import subprocess
    import sys
    ref = swiftray.put(np.ones(2 * MiB // 8))  # 2 MiB
    view = swiftray.get(ref)
    session = swiftray._core.context()["session_dir"]
    out = subprocess.run([sys.executable, "-m", "swiftray", "memory", "--address", session],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "capacity:        512.0 MiB" in out.stdout
    assert "1 object(s)" in out.stdout and "mapped by 1 process(es)" in out.stdout
    summary = swiftray.util.memory_summary()
    assert "pinned:          2.0 MiB in 1 object(s)" in summary
    del view
    assert wait_until(lambda: "pinned:          0.0 MiB" in swiftray.util.memory_summary())
    bad = subprocess.run([sys.executable, "-m", "swiftray", "memory", "--address", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "Cannot reach the object store" in bad.stdout


def _truncate_spill_files():
    """A disk that lost the tail of every spill file; returns their names."""
    spill_dir = stats()["spill_dir"]
    files = sorted(os.listdir(spill_dir))
    assert files
    for name in files:
        path = os.path.join(spill_dir, name)
        os.truncate(path, os.path.getsize(path) // 2)
    return files


@pytest.mark.parametrize("store_cluster", [256 * MiB], indirect=True)
def test_a_spill_file_that_cannot_be_read_back_loses_the_object_instead_of_serving_garbage(store_cluster):
    arrays = [np.full(60 * MiB // 8, i, dtype=np.float64) for i in range(6)]  # 360 MiB > 256 MiB
    refs = [swiftray.put(a) for a in arrays]
    files = _truncate_spill_files()
    lost = 0
    for i, r in enumerate(refs):
        try:
            got = swiftray.get(r, timeout=60)
        except swiftray.exceptions.ObjectLostError as e:
            assert "spill file could not be read back" in str(e), e
            lost += 1
            continue
        assert np.array_equal(got, arrays[i]), "an object is served whole, or not at all"
        del got
    assert lost == len(files), (lost, files)
    # The store goes on serving.
    assert np.array_equal(swiftray.get(swiftray.put(arrays[0])), arrays[0])


@pytest.mark.parametrize("store_cluster", [256 * MiB], indirect=True)
def test_task_returns_whose_spill_file_is_corrupt_are_rebuilt_from_lineage(store_cluster):
    """Put objects cannot come back (above); a task's return can: its owner runs the
    task again and the reader gets the right value."""
    @swiftray.remote
    def fill(i):
        return np.full(60 * MiB // 8, i, dtype=np.float64)

    refs = [fill.remote(i) for i in range(6)]  # 360 MiB > 256 MiB: some are spilled
    swiftray.wait(refs, num_returns=len(refs), timeout=120, fetch_local=False)
    _truncate_spill_files()
    for i, r in enumerate(refs):
        got = swiftray.get(r, timeout=120)
        assert got[0] == i and got[-1] == i and got.size == 60 * MiB // 8
        del got

"""Clusters of several node daemons (distinct ports, resources, temp dirs), on 127.0.0.1
and again on network-namespace hosts of their own."""
import os
import time

import pytest

import swiftray
from conftest import recorder_on, run_script, signal_and_waiter, wait_until as _wait_until


@pytest.fixture
def cluster(any_cluster):
    """Each test here runs twice: all nodes on 127.0.0.1, then every node but the head on
    a network-namespace host of its own (tests/hosts.py)."""
    return any_cluster


def _node_of(session):
    return next(n for n in swiftray.nodes() if n["SessionDir"] == session)


@swiftray.remote
def where():
    return swiftray.get_runtime_context().get_node_id()


def test_nodes_join_the_head_and_are_listed_alive_with_their_resources(cluster):
    head = cluster.add_node(num_cpus=1)
    a = cluster.add_node(num_cpus=2, resources={"special": 1})
    b = cluster.add_node(num_cpus=1, resources={"disk": 3})
    swiftray.init(address=cluster.address)
    nodes = swiftray.nodes()
    assert len(nodes) == 3 and all(n["Alive"] for n in nodes)
    assert _node_of(a["session"])["Resources"]["special"] == 1.0
    assert _node_of(b["session"])["Resources"]["disk"] == 3.0
    total = swiftray.cluster_resources()
    assert total["CPU"] == 4.0 and total["special"] == 1.0 and total["disk"] == 3.0
    # A driver joining by address gets a node on this machine: the head here.
    assert swiftray.get(where.remote()) == _node_of(head["session"])["NodeID"]


def test_a_driver_started_on_a_worker_node_runs_its_tasks_there(cluster, tmp_path):
    cluster.add_node(num_cpus=1)
    worker = cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    worker_id = _node_of(worker["session"])["NodeID"]
    # A driver on that node's machine, joined through its session directory.
    out = cluster.run_driver(worker, tmp_path, """
        import sys
        import swiftray

        @swiftray.remote
        def where():
            return swiftray.get_runtime_context().get_node_id()

        swiftray.init(address=sys.argv[1])
        me = swiftray.get_runtime_context().get_node_id()
        # One at a time, its own idle node takes them (the hybrid policy packs locally first).
        print("RESULT", me, *[swiftray.get(where.remote()) for _ in range(4)])
    """)
    assert out.returncode == 0, out.stdout + out.stderr
    assert next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()[1:] == [worker_id] * 5


def test_a_killed_node_daemon_is_marked_dead_within_the_health_check_time(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    node_id = _node_of(victim["session"])["NodeID"]
    cluster.kill_node(victim)
    # 3 failed checks, 200 ms apart (each waits at most 1 s): dead well within 10 s.
    assert _wait_until(lambda: not _node_of(victim["session"])["Alive"], timeout=10)
    dead = next(n for n in swiftray.nodes() if n["NodeID"] == node_id)
    assert "health checks" in dead["DeathDetail"]
    assert swiftray.cluster_resources()["CPU"] == 1.0


def test_tasks_and_actors_needing_a_nodes_custom_resource_run_there(cluster):
    cluster.add_node(num_cpus=1)
    special = cluster.add_node(num_cpus=1, resources={"special": 2})
    disk = cluster.add_node(num_cpus=1, resources={"disk": 1})
    swiftray.init(address=cluster.address)
    special_id = _node_of(special["session"])["NodeID"]
    # Spilled back from the driver's node to the only node that has the resource.
    refs = [where.options(resources={"special": 1}).remote() for _ in range(6)]
    assert swiftray.get(refs, timeout=60) == [special_id] * 6

    @swiftray.remote(resources={"disk": 1})
    class Store:
        def __init__(self):
            self.items = {}

        def put(self, k, v):
            self.items[k] = v
            return swiftray.get_runtime_context().get_node_id()

        def get(self, k):
            return self.items[k]

    s = Store.remote()
    assert swiftray.get(s.put.remote("a", 1), timeout=60) == _node_of(disk["session"])["NodeID"]
    assert swiftray.get(s.get.remote("a")) == 1


def test_tasks_running_on_a_killed_node_are_retried_on_another(cluster):
    head = cluster.add_node(num_cpus=1)
    first = cluster.add_node(num_cpus=1, resources={"r": 1})
    second = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)
    started = recorder_on(_node_of(head["session"])["NodeID"])

    @swiftray.remote(resources={"r": 1}, max_retries=2)
    def slow(started):
        import time as t
        swiftray.get(started.add.remote(swiftray.get_runtime_context().get_node_id()))
        t.sleep(3)
        return swiftray.get_runtime_context().get_node_id()

    ref = slow.remote(started)
    assert _wait_until(lambda: swiftray.get(started.items.remote()), timeout=30)
    started_on = swiftray.get(started.items.remote())[0]
    victim = first if _node_of(first["session"])["NodeID"] == started_on else second
    survivor = second if victim is first else first
    cluster.kill_node(victim)
    assert swiftray.get(ref, timeout=60) == _node_of(survivor["session"])["NodeID"]


def test_spread_and_node_affinity_strategies(cluster):
    from swiftray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    nodes = [cluster.add_node(num_cpus=2) for _ in range(3)]
    swiftray.init(address=cluster.address)
    ids = [_node_of(n["session"])["NodeID"] for n in nodes]
    time.sleep(1)  # NodeManagers refresh their view of the cluster every 0.5 s

    @swiftray.remote
    def hold(seconds):
        time.sleep(seconds)
        return swiftray.get_runtime_context().get_node_id()

    spread = swiftray.get([hold.options(scheduling_strategy="SPREAD").remote(0.5) for _ in range(3)], timeout=60)
    assert sorted(spread) == sorted(ids)
    pinned = NodeAffinitySchedulingStrategy(ids[2], soft=False)
    assert swiftray.get([hold.options(scheduling_strategy=pinned).remote(0) for _ in range(3)], timeout=60) == [ids[2]] * 3

    @swiftray.remote
    class Where:
        def node(self):
            return swiftray.get_runtime_context().get_node_id()

    # Actors follow their strategy too.
    for i in (1, 2):
        a = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(ids[i], soft=False)).remote()
        assert swiftray.get(a.node.remote(), timeout=60) == ids[i]
    spread_actors = [Where.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert sorted(swiftray.get([a.node.remote() for a in spread_actors], timeout=60)) == sorted(ids)
    cluster.kill_node(nodes[2])
    assert _wait_until(lambda: not _node_of(nodes[2]["session"])["Alive"], timeout=10)
    time.sleep(1)  # the NodeManagers' view catches up
    soft = NodeAffinitySchedulingStrategy(ids[2], soft=True)
    assert swiftray.get(hold.options(scheduling_strategy=soft).remote(0), timeout=60) in ids[:2]
    import pytest
    with pytest.raises(ValueError, match="scheduling_strategy"):
        hold.options(scheduling_strategy="PACKED")


def test_swiftray_status_shows_each_node_its_resources_and_pending_demand(cluster):
    import subprocess
    import sys
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=2, resources={"special": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(num_cpus=1)
    def busy():
        time.sleep(3)

    refs = [busy.remote() for _ in range(4)]  # 3 CPUs: one request waits
    time.sleep(1.5)  # nodes report twice a second
    out = subprocess.run([sys.executable, "-m", "swiftray", "status", "--address", cluster.address],
                         capture_output=True, text=True, timeout=60).stdout
    assert "Nodes: 2 alive, 0 dead" in out, out
    assert "0/1 special" in out and "/2 CPU" in out, out
    assert "{CPU: 1}: " in out and "waiting" in out, out
    swiftray.get(refs, timeout=60)


def test_a_task_no_node_fits_waits_with_a_warning_until_a_node_that_fits_joins(cluster):
    cluster.add_node(num_cpus=1)
    script = """
import sys, swiftray
swiftray.init(address=sys.argv[1])
@swiftray.remote(resources={"accelerator": 1})
def accelerated():
    return swiftray.get_runtime_context().get_node_id()
ref = accelerated.remote()
print("submitted", flush=True)
print("ran on", swiftray.get(ref, timeout=60))
"""
    import subprocess
    import sys
    import tempfile
    fd, path = tempfile.mkstemp(suffix=".py", dir="/tmp")
    with os.fdopen(fd, "w") as f:
        f.write(script)
    proc = subprocess.Popen([sys.executable, path, cluster.address], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cluster.env)
    try:
        assert proc.stdout.readline().strip() == "submitted"
        time.sleep(2)  # pending, warned about
        assert proc.poll() is None
        joined = cluster.add_node(num_cpus=1, resources={"accelerator": 1})
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.unlink(path)
    assert "accelerator" in err and "cannot be scheduled right now" in err, err
    swiftray.init(address=cluster.address)
    assert f"ran on {_node_of(joined['session'])['NodeID']}" in out, out + err


def _pattern(n):
    import numpy as np
    return np.arange(n, dtype=np.uint64) * np.uint64(2654435761)


def test_arrays_of_100_mib_and_1_gib_made_on_one_node_are_read_intact_on_another(cluster):
    import numpy as np
    head = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1, resources={"far": 1})
    swiftray.init(address=cluster.address)  # the driver attaches to the head node

    @swiftray.remote(resources={"far": 1})
    def make(n):
        return _pattern(n)

    @swiftray.remote(resources={"far": 1})
    def check(a):
        return swiftray.get_runtime_context().get_node_id(), a.nbytes, bool(np.array_equal(a, _pattern(a.size)))

    head_id = _node_of(head["session"])["NodeID"]
    for nbytes in (100 << 20, 1 << 30):
        ref = make.remote(nbytes // 8)
        arr = swiftray.get(ref)  # pulled from the far node into the head's store
        assert arr.nbytes == nbytes and np.array_equal(arr, _pattern(arr.size))
        assert not arr.flags.writeable
        del arr, ref
    # The other way: a value put on the head, read by a task on the far node, as an
    # argument and as a ref inside a list (the task asks the driver, its owner, over TCP).
    src = swiftray.put(_pattern((100 << 20) // 8))
    node, nbytes, same = swiftray.get(check.remote(src))
    assert node != head_id and nbytes == 100 << 20 and same

    @swiftray.remote(resources={"far": 1})
    def check_nested(refs):
        return bool(np.array_equal(swiftray.get(refs[0]), _pattern((100 << 20) // 8)))

    assert swiftray.get(check_nested.remote([src]))


def test_a_pulled_copy_is_a_secondary_copy_that_goes_when_its_owner_frees_it(cluster):
    import numpy as np
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1, resources={"far": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"far": 1})
    def make():
        return np.ones(20 << 20, dtype=np.uint8)

    @swiftray.remote(resources={"far": 1})
    def far_store():
        from swiftray import _core
        return _core.store_stats()

    def here():
        from swiftray import _core
        return _core.store_stats()

    ref = make.remote()
    assert swiftray.get(ref).sum() == 20 << 20
    assert here()["num_secondary"] == 1 and here()["bytes_pulled_total"] >= 20 << 20
    assert swiftray.get(far_store.remote())["num_objects"] == 1
    del ref  # the owner (this driver) frees the primary on the far node and the copy here
    assert _wait_until(lambda: swiftray.get(far_store.remote())["num_objects"] == 0)
    assert _wait_until(lambda: here()["num_objects"] == 0)


def test_reading_an_object_whose_node_died_raises_object_lost(cluster):
    import numpy as np
    from swiftray.exceptions import ObjectLostError
    cluster.add_node(num_cpus=1)
    far = cluster.add_node(num_cpus=1, resources={"far": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"far": 1}, max_retries=0)
    def make():
        return np.ones(10 << 20, dtype=np.uint8)

    ref = make.remote()
    swiftray.wait([ref])
    cluster.kill_node(far)
    assert _wait_until(lambda: not _node_of(far["session"])["Alive"], timeout=15)
    time.sleep(0.5)  # the death reaches this node's processes within one report period
    try:
        swiftray.get(ref, timeout=30)
        raise AssertionError("the object's only copy died with its node")
    except ObjectLostError as e:
        assert ref.hex() in str(e) and "died" in str(e), str(e)


def test_a_driver_that_exits_busy_gives_its_leases_back_on_every_node(cluster, tmp_path):
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1, resources={"far": 1})
    # A driver whose last tasks (here and on the other node) held their workers when it
    # exited: the next driver gets both nodes' only CPU.
    code = f"""
import swiftray
swiftray.init(address="{cluster.address}")
@swiftray.remote
def here():
    return 1
@swiftray.remote(resources={{"far": 1}})
def far():
    return 1
for _ in range(50):
    swiftray.get([here.remote(), far.remote()])
"""
    for _ in range(2):
        out = run_script(tmp_path, code, timeout=120, env=cluster.env)
        assert out.returncode == 0, out.stdout + out.stderr

    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"far": 1})
    def far():
        return swiftray.get_runtime_context().get_node_id()

    @swiftray.remote
    def anywhere():
        return 1
    assert swiftray.get(far.remote(), timeout=30)
    assert swiftray.get([anywhere.remote() for _ in range(4)], timeout=30) == [1] * 4


def test_default_tasks_spill_to_idle_nodes_when_the_drivers_node_is_busy(cluster):
    cluster.add_node(num_cpus=1)
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    assert _wait_until(lambda: len([n for n in swiftray.nodes() if n["Alive"]]) == 3)
    time.sleep(0.5)  # the head's NodeManager refreshes its view of the others every 200 ms

    @swiftray.remote
    def hold():
        time.sleep(1.0)
        return swiftray.get_runtime_context().get_node_id()

    # The driver's node has one CPU: the hybrid policy sends the others' share elsewhere
    # instead of queueing all three here.
    assert len(set(swiftray.get([hold.remote() for _ in range(3)]))) >= 2


@swiftray.remote
def _held_interval():
    start = time.time()
    time.sleep(0.5)
    return swiftray.get_runtime_context().get_node_id(), start, time.time()


def test_overlapping_tasks_run_on_every_idle_node_at_once_round_after_round(cluster):
    """As in Ray: three one-CPU tasks that overlap in time, on three one-CPU nodes, run on
    all three at once — from the very first round after the nodes join, and in rounds
    that follow each other at once (the views of the nodes are stale then: a request
    queued on a busy node goes on to an idle one as soon as a node's view shows it)."""
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    assert _wait_until(lambda: len([n for n in swiftray.nodes() if n["Alive"]]) == 3)
    for round_ in range(6):
        out = swiftray.get([_held_interval.remote() for _ in range(3)], timeout=60)
        nodes = {o[0] for o in out}
        assert len(nodes) == 3, (round_, out)
        # All three ran at the same time: the latest start is before the earliest end.
        assert max(o[1] for o in out) < min(o[2] for o in out), (round_, out)


@swiftray.remote
def _ip_and_node():
    return swiftray.util.get_node_ip_address(), swiftray.get_runtime_context().get_node_id()


def test_get_node_ip_address_is_the_ip_of_the_callers_node(cluster):
    head = cluster.add_node(num_cpus=1)
    there = cluster.add_node(num_cpus=1, resources={"there": 1})
    swiftray.init(address=cluster.address)
    assert _wait_until(lambda: len([n for n in swiftray.nodes() if n["Alive"]]) == 2)
    by_id = {n["NodeID"]: n["NodeManagerAddress"] for n in swiftray.nodes()}
    assert swiftray.util.get_node_ip_address() == by_id[_node_of(head["session"])["NodeID"]]
    ip, node = swiftray.get(_ip_and_node.options(resources={"there": 1}).remote(), timeout=60)
    # On its own host, the node found its address itself (no --node-ip-address given).
    assert ip == by_id[node] == (there["host"].ip if there["host"] else "127.0.0.1")


def test_a_long_temp_dir_works_and_its_sockets_are_kept_short(tmp_path):
    import subprocess
    import sys
    root = tmp_path / ("a-rather-long-directory-name-for-the-sessions-" * 3)
    root.mkdir(parents=True)
    env = dict(os.environ, SWIFTRAY_PYTHON=sys.executable)
    out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--head", "--port", "0", "--num-cpus", "1",
                          "--temp-dir", str(root)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    address = next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Address:"))
    session = next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Session:"))
    sockets = os.path.join(session, "sockets")
    try:
        assert len(session) > 150 and os.path.islink(sockets)
        short = os.readlink(sockets)
        assert all(len(os.path.join(short, f)) <= 103 for f in os.listdir(short))
        swiftray.init(address=address)
        assert swiftray.get(where.remote(), timeout=60)
        # The ControlService socket it reports is a valid address too.
        assert swiftray.get_runtime_context().gcs_address.startswith("unix:" + short)
    finally:
        swiftray.shutdown()
        subprocess.run([sys.executable, "-m", "swiftray", "stop", "--temp-dir", str(root)], env=env, timeout=60)
    assert not os.path.exists(short), "the short socket directory goes with its session"


def test_a_task_runs_where_its_large_argument_is(cluster):
    import numpy as np
    head = cluster.add_node(num_cpus=2)
    far = cluster.add_node(num_cpus=1, resources={"far": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"far": 1})
    def make():
        return np.ones(8 << 20, dtype=np.uint8)

    @swiftray.remote
    def consume(a, small):
        return swiftray.get_runtime_context().get_node_id(), int(a.sum()) + small

    data = make.remote()
    swiftray.wait([data])
    time.sleep(0.5)  # the far node reports its CPU free again within 200 ms
    far_id = _node_of(far["session"])["NodeID"]
    # The driver's node is idle and could run it, but 8 MiB of its argument live on the
    # far node, which has a CPU free: it goes there (no transfer).
    for i in range(3):
        node, total = swiftray.get(consume.remote(data, i))
        assert node == far_id and total == (8 << 20) + i
    assert _node_of(head["session"])["Alive"]


def test_a_node_whose_head_is_gone_stops_after_the_reconnect_timeout(cluster):
    from conftest import pid_alive
    cluster.env["SWIFTRAY_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S"] = "2"
    head = cluster.add_node(num_cpus=1)
    node = cluster.add_node(num_cpus=1)
    cluster.kill_node(head)
    # Its workers would serve a cluster that no longer exists: it stops, cleanly.
    assert _wait_until(lambda: not pid_alive(node["pid"]), timeout=20)
    assert _wait_until(lambda: not os.path.exists(node["session"]), timeout=5)


def test_a_blocked_worker_on_another_node_hands_back_what_was_pipelined_behind_it(cluster):
    # The same as on one node (tests/test_scheduling.py), but the worker is on another
    # node: its tasks come over the data plane, not a lane.
    from swiftray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    cluster.add_node(num_cpus=1)
    far = cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address, _system_config={"task_pipeline_depth": 8, "task_pipeline_below_us": 10_000_000})
    far_id = _node_of(far["session"])["NodeID"]
    time.sleep(1)  # NodeManagers refresh their view of the cluster every 0.5 s
    pinned = NodeAffinitySchedulingStrategy(far_id, soft=False)

    Signal, wait_for, send = signal_and_waiter()

    @swiftray.remote
    def where():
        return swiftray.get_runtime_context().get_node_id()

    signal = Signal.remote()
    for _ in range(3):  # "short" (below 10 s): later tasks of this shape are pipelined
        assert set(swiftray.get([where.options(scheduling_strategy=pinned).remote() for _ in range(50)],
                                timeout=60)) == {far_id}
    waiter, sender = swiftray.get([wait_for.options(scheduling_strategy=pinned).remote(signal),
                                   send.options(scheduling_strategy=pinned).remote(signal)], timeout=90)
    assert waiter != sender

"""Recovery across node death (lineage reconstruction) and head restarts: real node daemons
on 127.0.0.1 and on network-namespace hosts."""
import os
import threading
import time

import numpy as np
import pytest

import swiftray
from conftest import wait_until

N = (4 << 20) // 8  # 4 MiB of float64: stored in the node's object store, not inline


@pytest.fixture
def cluster(any_cluster):
    """Each test here runs twice: all nodes on 127.0.0.1, then every node but the head on
    a network-namespace host of its own (tests/hosts.py)."""
    return any_cluster


def _dead(session):
    return wait_until(lambda: not next(n for n in swiftray.nodes() if n["SessionDir"] == session)["Alive"], timeout=20)


# The chains below run where resource "r" is: on the victim node, later on a spare one.
@swiftray.remote(resources={"r": 1})
def first():
    return np.arange(N, dtype=np.float64)


@swiftray.remote(resources={"r": 1})
def step(a):
    return a + 1


@swiftray.remote(resources={"r": 1})
def double(a):
    return a * 2


@swiftray.remote(resources={"r": 1})
def where():
    return swiftray.get_runtime_context().get_node_id()


def test_a_chain_whose_objects_lived_on_a_killed_node_is_rebuilt_on_another(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    a = first.remote()
    b = step.remote(a)
    c = step.remote(b)
    swiftray.wait([c])  # all three live only in the victim's store
    spare = cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.kill_node(victim)
    # Read at once: the read waits for the verdict on the node, then for the owner to
    # run first -> step -> step again on the spare node.
    out = swiftray.get(c, timeout=120)
    assert out.shape == (N,) and np.array_equal(out, np.arange(N, dtype=np.float64) + 2)
    assert np.array_equal(swiftray.get(a), np.arange(N, dtype=np.float64))
    spare_id = next(n["NodeID"] for n in swiftray.nodes() if n["SessionDir"] == spare["session"])
    assert swiftray.get(where.remote()) == spare_id


def test_lost_objects_are_rebuilt_through_intermediates_that_were_already_freed(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    # Only the last ref is kept: the intermediates are freed once used, their lineage
    # stays (pinned by the specs that name them).
    out = double.remote(double.remote(double.remote(first.remote())))
    swiftray.wait([out])
    cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.kill_node(victim)
    assert _dead(victim["session"])
    assert np.array_equal(swiftray.get(out, timeout=120), np.arange(N, dtype=np.float64) * 8)


def test_an_object_whose_task_has_max_retries_0_raises_reconstruction_failed(cluster):
    from swiftray.exceptions import ObjectReconstructionFailedError
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"r": 1}, max_retries=0)
    def once():
        return np.ones(N)

    never = once.remote()
    swiftray.wait([never])
    cluster.kill_node(victim)
    assert _dead(victim["session"])
    with pytest.raises(ObjectReconstructionFailedError, match="max_retries=0") as e:
        swiftray.get(never, timeout=60)
    assert never.hex() in str(e.value) and "died" in str(e.value)


def test_an_object_this_node_holds_a_copy_of_survives_its_nodes_death_without_a_rebuild(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)
    # max_retries=0: were it rebuilt rather than kept, reading it would raise.
    a = first.options(max_retries=0).remote()
    assert swiftray.get(a, timeout=60).sum() == np.arange(N, dtype=np.float64).sum()  # pulls a copy here
    spare = cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.kill_node(victim)
    assert _dead(victim["session"])
    # The driver's node copy is the object now: read here, and by a task on the spare.
    assert np.array_equal(swiftray.get(a, timeout=60), np.arange(N, dtype=np.float64))
    assert np.array_equal(swiftray.get(step.remote(a), timeout=60), np.arange(N, dtype=np.float64) + 1)
    assert swiftray.get(where.remote(), timeout=60) == _node_id(spare["session"])


def test_an_object_whose_lineage_was_evicted_raises_reconstruction_failed(cluster, monkeypatch):
    from swiftray.exceptions import ObjectReconstructionFailedError
    monkeypatch.setenv("SWIFTRAY_MAX_LINEAGE_BYTES", "1")  # keep no finished spec at all
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"r": 1})
    def make():
        return np.ones(N)

    ref = make.remote()
    swiftray.wait([ref])
    cluster.kill_node(victim)
    assert _dead(victim["session"])
    with pytest.raises(ObjectReconstructionFailedError, match="lineage evicted"):
        swiftray.get(ref, timeout=60)


def _node_id(session):
    return next(n["NodeID"] for n in swiftray.nodes() if n["SessionDir"] == session)


def test_an_actor_on_a_killed_node_restarts_on_another(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    # max_task_retries: a call sent before this driver learns of the death is resent.
    @swiftray.remote(resources={"r": 1}, max_restarts=1, max_task_retries=1)
    class Where:
        def __init__(self):
            self.calls = 0

        def node(self):
            self.calls += 1
            return swiftray.get_runtime_context().get_node_id(), self.calls

    w = Where.remote()
    assert swiftray.get(w.node.remote()) == (_node_id(victim["session"]), 1)
    spare = cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.kill_node(victim)
    assert _dead(victim["session"])
    # The call waits for the restart and runs on the spare node, with fresh state.
    assert swiftray.get(w.node.remote(), timeout=60) == (_node_id(spare["session"]), 1)


def test_a_node_paused_past_its_health_checks_is_fenced_when_it_wakes(cluster):
    # A node that stops answering (paused here; cut off by a partition is the same to the
    # head) is declared dead while it still runs, and its actor restarts elsewhere. When
    # it wakes, the head answers its next report "declared dead": it stops its workers
    # and exits (as Ray's raylet), so the old incarnation never acts again.
    import signal
    from conftest import _alive
    head = cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    from conftest import counter_actor
    c = counter_actor("r").remote()
    old_pid, node, calls = swiftray.get(c.hit.remote())
    assert (node, calls) == (_node_id(victim["session"]), 1)
    spare = cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.kill_node(victim, signal.SIGSTOP)
    try:
        assert _dead(victim["session"])
        spare_id = _node_id(spare["session"])
        # The driver hears of the death from its node's next view of the cluster (about
        # raylet_report_resources_period_milliseconds); from then on every call goes to
        # the new incarnation, none back to the paused node's.
        answers = []
        assert wait_until(lambda: answers.append(swiftray.get(c.hit.remote(), timeout=60)) or answers[-1][1] == spare_id,
                          timeout=30)
        pid, node, calls = answers[-1]
        assert calls == 1 and pid != old_pid, "a fresh incarnation"
        assert [swiftray.get(c.hit.remote(), timeout=60)[1:] for _ in range(3)] == [(spare_id, k) for k in (2, 3, 4)]
        assert _alive(old_pid), "the old incarnation still runs while its node is paused"
    finally:
        cluster.kill_node(victim, signal.SIGCONT)
    # Awake, it hears it was declared dead, and stops with its workers.
    assert wait_until(lambda: not _alive(victim["pid"]), timeout=30), "the fenced node did not exit"
    assert wait_until(lambda: not _alive(old_pid), timeout=30), "the old incarnation outlived its fenced node"
    with open(os.path.join(head["session"], "daemon.log")) as f:
        assert "node/fenced" in f.read(), "the head says it fenced the node"
    # The actor goes on where it was restarted; the node stays dead in the cluster's list.
    assert swiftray.get(c.hit.remote())[1:] == (spare_id, 5)
    assert not next(n for n in swiftray.nodes() if n["SessionDir"] == victim["session"])["Alive"]


def test_a_borrower_of_an_object_whose_owner_died_gets_owner_died(cluster):
    from swiftray.exceptions import OwnerDiedError
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"r": 1})
    def owner():
        return [swiftray.put(np.ones(N))]  # owned by this worker, on the victim node

    [inner] = swiftray.get(owner.remote())
    cluster.kill_node(victim)
    assert _dead(victim["session"])
    with pytest.raises(OwnerDiedError):
        swiftray.get(inner, timeout=60)


def test_a_head_on_redis_comes_back_with_its_tables_and_nodes_register_again(cluster, redis_address, tmp_path):
    from conftest import run_script
    from swiftray import _core
    cluster.env["SWIFTRAY_REDIS_ADDRESS"] = redis_address
    head = cluster.add_node(num_cpus=1)
    worker = cluster.add_node(num_cpus=1, resources={"w": 3})  # the actor and a placement group hold one each
    port = int(cluster.address.rsplit(":", 1)[1])
    # A first driver (its own process, gone before the restart) leaves a KV entry and a
    # named detached actor on the worker node.
    first = run_script(tmp_path, """
        import sys
        import swiftray
        from swiftray import _core
        swiftray.init(address=sys.argv[1], namespace="app")
        _core.kv_put("user", b"model", b"v1", True)

        @swiftray.remote(resources={"w": 1})
        class Keeper:
            def __init__(self):
                self.n = 0

            def add(self):
                self.n += 1
                return self.n

        k = Keeper.options(name="keeper", lifetime="detached").remote()
        assert swiftray.get(k.add.remote()) == 1
        from swiftray.util import placement_group
        assert placement_group([{"w": 1}], name="reserved", lifetime="detached").wait(30)
        print("job", swiftray.get_runtime_context().get_job_id())
    """, args=[cluster.address], env={"SWIFTRAY_REDIS_ADDRESS": redis_address})
    assert first.returncode == 0, first.stderr
    first_job = first.stdout.split()[-1]

    cluster.kill_node(head)  # kill -9: nothing is saved at exit
    cluster.add_node(num_cpus=1, head_port=port)  # same port, same Redis
    worker_id = lambda: next((n for n in swiftray.nodes() if n["SessionDir"] == worker["session"]), {})
    swiftray.init(address=cluster.address, namespace="app")
    assert wait_until(lambda: worker_id().get("Alive"), timeout=20), "the worker node registered again"
    # A new driver finds the detached actor by name; it kept its state (same process).
    again = run_script(tmp_path, """
        import sys
        import swiftray
        swiftray.init(address=sys.argv[1], namespace="app")
        print("count", swiftray.get(swiftray.get_actor("keeper").add.remote(), timeout=60))
    """, args=[cluster.address], env={"SWIFTRAY_REDIS_ADDRESS": redis_address})
    assert again.returncode == 0 and again.stdout.split()[-1] == "2", again.stdout + again.stderr
    assert _core.kv_get("user", b"model") == b"v1"
    assert int(swiftray.get_runtime_context().get_job_id(), 16) > int(first_job, 16), "job ids continue"

    @swiftray.remote(resources={"w": 1})
    def on_worker():
        return swiftray.get_runtime_context().get_node_id()

    assert swiftray.get(on_worker.remote(), timeout=60) == worker_id()["NodeID"]
    # The detached placement group is still reserved on the worker node, and usable.
    from swiftray.util import get_placement_group, placement_group_table
    from swiftray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    pg = get_placement_group("reserved")
    assert placement_group_table(pg)["state"] == "CREATED"
    inside = on_worker.options(num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0))
    assert swiftray.get(inside.remote(), timeout=60) == worker_id()["NodeID"]


def test_work_on_other_nodes_goes_on_while_the_head_is_down_and_the_driver_reconnects(cluster, redis_address):
    from swiftray import _core
    cluster.env["SWIFTRAY_REDIS_ADDRESS"] = redis_address
    head = cluster.add_node(num_cpus=1)
    worker = cluster.add_node(num_cpus=2, resources={"w": 4})
    mine = cluster.add_node(num_cpus=1, host="here")
    port = int(cluster.address.rsplit(":", 1)[1])
    swiftray.init(address=mine["session"], namespace="app")  # this driver lives on a node that is not the head

    @swiftray.remote(resources={"w": 1})
    def square(x):
        return x * x

    @swiftray.remote
    def anywhere(x):
        return x + 1

    @swiftray.remote(resources={"w": 1})
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    c = Counter.remote()
    assert swiftray.get(c.add.remote(1), timeout=60) == 1
    # Defined (exported to the KV) and loaded by the node's workers while the head is up.
    assert swiftray.get([square.remote(i) for i in range(4)], timeout=60) == [0, 1, 4, 9]
    assert swiftray.get(anywhere.remote(0), timeout=60) == 1
    stored = swiftray.put(np.ones(N))
    cluster.kill_node(head)
    # The head comes back on the same port and Redis 3 s later; meanwhile the actor and
    # the tasks on the worker node go on (a worker started meanwhile waits for the head to
    # load its function, as in Ray).
    back = {}

    def restart():
        time.sleep(3)
        back["at"] = time.monotonic()
        cluster.add_node(num_cpus=1, head_port=port)

    t = threading.Thread(target=restart)
    t.start()
    try:
        assert swiftray.get([c.add.remote(1) for _ in range(5)], timeout=60) == [2, 3, 4, 5, 6]
        assert "at" not in back, "actor calls answered while the head was down"
        assert swiftray.get([square.remote(i) for i in range(50)], timeout=60) == [i * i for i in range(50)]
        # Default tasks too, though the dead head's node is still in this node's view.
        assert swiftray.get([anywhere.remote(i) for i in range(50)], timeout=60) == list(range(1, 51))
        assert swiftray.get(square.remote(stored), timeout=60).sum() == N
    finally:
        t.join()
    # The driver's control calls reach the new head: a new named actor is placed, the
    # KV written.
    d = Counter.options(name="after").remote()
    assert swiftray.get(d.add.remote(7), timeout=60) == 7
    assert swiftray.get(swiftray.get_actor("after").add.remote(1), timeout=60) == 8
    _core.kv_put("user", b"k", b"v", True)
    assert _core.kv_get("user", b"k") == b"v"
    assert swiftray.get(c.add.remote(1), timeout=60) == 7


def test_an_actor_whose_driver_died_while_the_head_was_down_dies_when_the_head_is_back(cluster, redis_address, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from conftest import pid_alive
    cluster.env["SWIFTRAY_REDIS_ADDRESS"] = redis_address
    head = cluster.add_node(num_cpus=1)
    worker = cluster.add_node(num_cpus=1, resources={"w": 1})
    port = int(cluster.address.rsplit(":", 1)[1])
    script = tmp_path / "owner.py"
    script.write_text(
        "import os, sys, time, swiftray\n"
        "swiftray.init(address=sys.argv[1], namespace='app')\n"
        "@swiftray.remote(resources={'w': 1})\n"
        "class Held:\n"
        "    def pid(self):\n"
        "        return os.getpid()\n"
        "h = Held.options(name='held').remote()\n"
        "print(swiftray.get(h.pid.remote()), flush=True)\n"
        "time.sleep(600)\n")
    env = dict(os.environ, SWIFTRAY_REDIS_ADDRESS=redis_address)
    if worker["host"]:  # the driver runs on the worker node's machine
        owner = worker["host"].popen([sys.executable, "-c", script.read_text(), worker["session"]],
                                     stdout=subprocess.PIPE, text=True, env=env)
    else:
        owner = subprocess.Popen([sys.executable, str(script), worker["session"]], stdout=subprocess.PIPE, text=True,
                                 env=env)
    actor_pid = int(owner.stdout.readline())
    cluster.kill_node(head)
    owner.send_signal(signal.SIGKILL)  # no goodbye: its node notices within a second
    owner.wait()
    time.sleep(1.5)
    assert pid_alive(actor_pid), "nobody kills it while the head is down"
    cluster.add_node(num_cpus=1, head_port=port)
    # The node's report of the driver's death reaches the restarted head: its actor dies.
    assert wait_until(lambda: not pid_alive(actor_pid), timeout=20)
    swiftray.init(address=cluster.address, namespace="app")
    with pytest.raises(ValueError):
        swiftray.get_actor("held")


def test_a_head_restarted_without_storage_lets_nodes_take_back_what_it_forgot(cluster, tmp_path):
    # The new head knows no placement group and no actor: each node, told in the answers
    # to its reports which bundles and which of the head's actor leases it holds, gives
    # back the ones nobody holds any more (after a grace of 3 call deadlines plus 2 report
    # periods) instead of keeping them reserved forever; the forgotten actor's worker stops.
    from conftest import run_script
    cluster.env["SWIFTRAY_NODE_MANAGER_RPC_TIMEOUT_MS"] = "500"
    head = cluster.add_node(num_cpus=1)
    worker = cluster.add_node(num_cpus=1, resources={"w": 3})
    port = int(cluster.address.rsplit(":", 1)[1])
    first = run_script(tmp_path, """
        import sys
        import swiftray
        from swiftray.util import placement_group
        swiftray.init(address=sys.argv[1])
        assert placement_group([{"w": 2}], name="held", lifetime="detached").wait(30)

        @swiftray.remote(resources={"w": 1}, num_cpus=0)
        class Keeper:
            def pid(self):
                import os
                return os.getpid()

        k = Keeper.options(name="keeper", lifetime="detached").remote()
        print("pid", swiftray.get(k.pid.remote(), timeout=60))
    """, args=[cluster.address], env={"SWIFTRAY_NODE_MANAGER_RPC_TIMEOUT_MS": "500"})
    assert first.returncode == 0, first.stderr
    keeper_pid = int(first.stdout.split()[-1])
    cluster.kill_node(head)
    cluster.add_node(num_cpus=1, head_port=port)  # same port, no storage: the group and actor are forgotten
    swiftray.init(address=cluster.address)
    assert wait_until(lambda: any(n["Alive"] and n["SessionDir"] == worker["session"] for n in swiftray.nodes()),
                      timeout=20), "the worker node registered with the new head"

    @swiftray.remote(resources={"w": 3}, num_cpus=0)
    def everything():
        return swiftray.get_runtime_context().get_node_id()

    node = next(n["NodeID"] for n in swiftray.nodes() if n["SessionDir"] == worker["session"])
    assert swiftray.get(everything.remote(), timeout=60) == node
    assert wait_until(lambda: not os.path.exists(f"/proc/{keeper_pid}"), timeout=10), "the forgotten actor's worker stopped"


def test_a_node_that_dies_while_the_head_is_down_is_found_dead_by_the_new_head(cluster, redis_address):
    # The new head takes the nodes it knew from Redis and health-checks them at once: a
    # node that died while it was down is declared dead (and its objects rebuilt), while
    # the live ones, not registered again yet, are never announced dead meanwhile.
    cluster.env["SWIFTRAY_REDIS_ADDRESS"] = redis_address
    head = cluster.add_node(num_cpus=1)
    keeper = cluster.add_node(num_cpus=1, host="here")  # the driver's node
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    port = int(cluster.address.rsplit(":", 1)[1])
    swiftray.init(address=keeper["session"])
    a = first.remote()
    swiftray.wait([a])  # only in the victim's store
    spare = cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.kill_node(head)
    cluster.kill_node(victim)
    time.sleep(1)
    cluster.add_node(num_cpus=1, head_port=port)
    out = swiftray.get(a, timeout=120)
    assert np.array_equal(out, np.arange(N, dtype=np.float64)), "rebuilt on the spare node"
    nodes = {n["SessionDir"]: n for n in swiftray.nodes()}
    assert not nodes[victim["session"]]["Alive"]
    assert wait_until(lambda: all(n["Alive"] for n in swiftray.nodes() if n["SessionDir"] in (keeper["session"], spare["session"])),
                      timeout=20)
    spare_id = nodes[spare["session"]]["NodeID"]
    assert swiftray.get(where.remote(), timeout=60) == spare_id


def test_objects_borrowed_only_by_processes_of_a_dead_node_are_freed(cluster):
    # Processes on a node the cluster declares dead never remove their registrations
    # (killed with it, or fenced): the owner drops every borrower on that node. The node
    # is paused here, so its actor still runs and holds the ref when the verdict comes.
    import signal
    from conftest import _alive
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"r": 1})
    class Keeper:
        def keep(self, lst):
            self.ref = lst[0]
            return os.getpid(), swiftray.get_runtime_context().get_node_id()

    ref = swiftray.put(np.ones(N))
    keeper = Keeper.remote()
    pid, node = swiftray.get(keeper.keep.remote([ref]))
    assert node == _node_id(victim["session"])
    del ref
    time.sleep(0.5)
    stored = lambda: swiftray._core.store_stats()["num_objects"]
    assert stored() == 1, "the actor on the victim borrows it"
    cluster.kill_node(victim, signal.SIGSTOP)
    try:
        assert _dead(victim["session"])
        assert wait_until(lambda: stored() == 0, timeout=20), swiftray._core.core_stats()
        assert _alive(pid), "freed while the borrower still runs: its node's verdict decided"
    finally:
        cluster.kill_node(victim, signal.SIGCONT)

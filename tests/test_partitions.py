"""Network partitions between real node daemons, each on a host of its own (a network
namespace with its own IP, /tmp and /dev/shm: tests/hosts.py). The head and this test's
driver are on host 0. A cut is silent, as a real one: packets vanish, nobody is told.

What the user sees (README "Failures"): a node cut off longer than the health-check time
is declared dead, its tasks retried, its objects rebuilt, its actors restarted elsewhere,
its bundles placed again;
when the link heals it is fenced (its reports are refused with the reason, it stops its
workers and exits) and nothing of its old state comes back. A shorter cut loses nothing.
The head's verdict wins: a node cut off from the head alone is fenced though other nodes
still reach it. A driver whose machine is cut off gets a clear error, not a hang."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import swiftray
from conftest import GET_LOOP_DRIVER, counter_actor, pid_alive, wait_until
from swiftray.util import placement_group, placement_group_table
from swiftray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

N = (4 << 20) // 8  # 4 MiB of float64: stored in a node's object store, not inline

# Health checks every 200 ms, 3 failures (each waits at most 1 s) make a node dead.
FAST = dict(health_check_period_ms=200, health_check_failure_threshold=3)


def _node(session):
    return next(n for n in swiftray.nodes() if n["SessionDir"] == session)


def _declared_dead(session, timeout=20):
    return wait_until(lambda: not _node(session)["Alive"], timeout=timeout)


@swiftray.remote(resources={"r": 1}, max_retries=1)
def made():
    return swiftray.get_runtime_context().get_node_id(), np.arange(N, dtype=np.float64)


Counter = counter_actor("a")


@swiftray.remote(num_cpus=0)
def where_now():
    return swiftray.get_runtime_context().get_node_id()


def _restarted_on(counter, node_id, timeout=60):
    """Calls `counter` until an answer comes from `node_id`; returns that answer."""
    answers = []
    assert wait_until(lambda: answers.append(swiftray.get(counter.hit.remote(), timeout=60)) or answers[-1][1] == node_id,
                      timeout=timeout), f"the actor did not restart on {node_id}: {answers[-3:]}"
    return answers[-1]


def _fenced(cluster, victim, old_pids, timeout=30):
    """After the heal: the node hears it was declared dead, stops its workers, exits."""
    assert wait_until(lambda: not pid_alive(victim["pid"]), timeout=timeout), "the fenced node did not exit"
    assert wait_until(lambda: not any(pid_alive(p) for p in old_pids), timeout=timeout), \
        "a worker of the fenced node outlived it"
    with open(os.path.join(cluster.nodes[0]["files"], "daemon.log")) as f:
        assert "node/fenced" in f.read(), "the head says it fenced the node"


def test_a_node_cut_off_past_the_health_checks_is_declared_dead_and_fenced_when_it_heals(host_cluster):
    cluster = host_cluster(**FAST)
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1, "a": 1, "b": 1})
    swiftray.init(address=cluster.address)
    victim_id = _node(victim["session"])["NodeID"]
    group = placement_group([{"b": 1}])  # its bundle can only be on the victim
    assert group.wait(30)
    counter = Counter.remote()
    old_pid, node, calls = swiftray.get(counter.hit.remote(), timeout=60)
    assert (node, calls) == (victim_id, 1)
    obj = made.remote()
    swiftray.wait([obj], timeout=60)  # only in the victim's store
    spare = cluster.add_node(num_cpus=1, resources={"r": 1, "a": 1, "b": 1})
    spare_id = _node(spare["session"])["NodeID"]

    cluster.hosts.cut(victim["host"])
    cut_at = time.monotonic()
    assert _declared_dead(victim["session"]), "a node cut off for good was never declared dead"
    print(f"declared dead {time.monotonic() - cut_at:.1f} s after the cut")
    assert "health checks" in _node(victim["session"])["DeathDetail"]
    # Its object is rebuilt on the spare node (the copy says where it was made).
    where, array = swiftray.get(obj, timeout=60)
    assert where == spare_id and np.array_equal(array, np.arange(N, dtype=np.float64))
    # Its actor restarts there, fresh; the old incarnation still runs behind the cut.
    pid, _, calls = _restarted_on(counter, spare_id)
    assert calls == 1 and pid != old_pid
    # Its bundle is placed again on the spare, and work in the group runs there.
    in_group = PlacementGroupSchedulingStrategy(group, 0)
    assert swiftray.get(where_now.options(scheduling_strategy=in_group).remote(), timeout=60) == spare_id
    assert placement_group_table(group)["state"] == "CREATED"
    assert pid_alive(old_pid) and pid_alive(victim["pid"])

    cluster.hosts.heal()
    healed_at = time.monotonic()
    _fenced(cluster, victim, [old_pid])
    print(f"fenced node gone {time.monotonic() - healed_at:.1f} s after the heal")
    # Nothing of the old incarnation comes back: calls go on where the actor restarted,
    # the object is the rebuilt copy, the node stays dead in the cluster's list.
    assert [swiftray.get(counter.hit.remote(), timeout=60)[1:] for _ in range(3)] == [(spare_id, k) for k in (2, 3, 4)]
    assert swiftray.get(obj, timeout=60)[0] == spare_id
    assert not _node(victim["session"])["Alive"]


def test_a_task_queued_at_a_node_cut_off_runs_elsewhere_once_the_node_is_declared_dead(host_cluster):
    # The owner's lease request waits in the cut node's queue, behind a running task;
    # the silence would hold it until the connection's keep-alive gives up (~50 s). The
    # node's death ends it at once and the owner asks again: both tasks run on the spare.
    cluster = host_cluster(**FAST)
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"r": 1}, max_retries=1)
    def where(seconds):
        time.sleep(seconds)
        return swiftray.get_runtime_context().get_node_id()

    running = where.remote(3)
    queued = where.remote(0)
    time.sleep(1)
    cluster.hosts.cut(victim["host"])
    spare = cluster.add_node(num_cpus=1, resources={"r": 1})
    spare_id = _node(spare["session"])["NodeID"]
    cut_at = time.monotonic()
    assert swiftray.get([running, queued], timeout=40) == [spare_id, spare_id]
    print(f"both done {time.monotonic() - cut_at:.1f} s after the cut")


@swiftray.remote(resources={"r": 1}, max_retries=0)
def slow_square(x):
    time.sleep(0.2)
    return x * x


def test_a_cut_shorter_than_the_health_checks_loses_nothing(host_cluster):
    # Checks every second, 20 failures to be dead: a 2 s cut is far below.
    cluster = host_cluster(health_check_period_ms=1000, health_check_failure_threshold=20)
    cluster.add_node(num_cpus=1)
    node = cluster.add_node(num_cpus=2, resources={"r": 2, "a": 1})
    swiftray.init(address=cluster.address)
    counter = Counter.options(max_restarts=0, max_task_retries=0).remote()  # nothing may be retried
    pid, _, _ = swiftray.get(counter.hit.remote(), timeout=60)
    refs = [slow_square.remote(i) for i in range(30)]
    calls = [counter.hit.remote() for _ in range(20)]
    time.sleep(0.3)
    cluster.hosts.cut(node["host"])
    time.sleep(2)
    cluster.hosts.heal()
    assert swiftray.get(refs, timeout=60) == [i * i for i in range(30)]
    assert [c[2] for c in swiftray.get(calls, timeout=60)] == list(range(2, 22))
    assert {c[0] for c in swiftray.get(calls)} == {pid}, "the actor was never restarted"
    assert swiftray.get(slow_square.remote(7), timeout=60) == 49
    assert _node(node["session"])["Alive"]


def test_a_node_cut_off_from_the_head_alone_is_fenced_though_other_nodes_reach_it(host_cluster):
    cluster = host_cluster(**FAST)
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"a": 1})
    peer = cluster.add_node(num_cpus=1, resources={"a": 1})
    swiftray.init(address=cluster.address)
    victim_id, peer_id = _node(victim["session"])["NodeID"], _node(peer["session"])["NodeID"]
    counter = Counter.remote()
    answers = [swiftray.get(counter.hit.remote(), timeout=60)]
    if answers[0][1] != victim_id:  # placed on the peer: make the victim the actor's node
        victim, peer, victim_id, peer_id = peer, victim, peer_id, victim_id
    old_pid = answers[0][0]

    cluster.hosts.cut_between(0, victim["host"])
    assert _declared_dead(victim["session"])
    # The peer still reaches the node the head declared dead: the head's verdict wins.
    port = _node(victim["session"])["NodeManagerPort"]
    probe = peer["host"].run([sys.executable, "-c", f"import socket; socket.create_connection(('{victim['host'].ip}', {port}), timeout=2)"])
    assert probe.returncode == 0, probe.stderr
    pid, node, calls = _restarted_on(counter, peer_id)
    assert calls == 1 and pid != old_pid
    cluster.hosts.heal()
    _fenced(cluster, victim, [old_pid])
    assert swiftray.get(counter.hit.remote(), timeout=60)[1:] == (peer_id, 2)


def test_a_driver_whose_machine_is_cut_off_gets_a_clear_error_not_a_hang(host_cluster, tmp_path):
    cluster = host_cluster(**FAST, env={"SWIFTRAY_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S": "5"})
    cluster.add_node(num_cpus=1)
    node = cluster.add_node(num_cpus=1)
    host = node["host"]
    with open(host.path("/tmp/cut_driver.py"), "w") as f:
        f.write(GET_LOOP_DRIVER)
    env = dict(cluster.env, SWIFTRAY_PYTHON=sys.executable)
    driver = host.popen([sys.executable, "/tmp/cut_driver.py", node["session"]], cwd="/tmp", env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert driver.stdout.readline().startswith("ok")
        cluster.hosts.cut(host)
        cut_at = time.monotonic()
        lines = []
        while True:
            line = driver.stdout.readline()
            assert line, f"the driver ended without an error: {lines[-5:]}"
            lines.append(line)
            if line.startswith("ERROR"):
                break
            assert time.monotonic() - cut_at < 90, "the driver hangs"
        print(f"driver error {time.monotonic() - cut_at:.1f} s after the cut: {line.strip()}")
        # Its node gives up on the head after gcs_rpc_server_reconnect_timeout_s (5 s here)
        # and stops; the driver's wait ends with the reason.
        assert line.startswith("ERROR LocalRayletDiedError") and "gcs_rpc_server_reconnect_timeout_s" in line, line
    finally:
        driver.kill()
        driver.wait()


def test_a_node_whose_advertised_address_the_head_cannot_reach_fails_at_start(host_cluster):
    cluster = host_cluster()
    cluster.add_node(num_cpus=1)
    # 127.0.0.1 is an address of that host, but not one the head can reach it at.
    out = cluster.hosts[1].run([sys.executable, "-m", "swiftray", "start", "--address", cluster.address,
                                "--node-ip-address", "127.0.0.1", "--temp-dir", "/tmp/sr"], env=cluster.env, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "the head cannot reach this node at the address it advertises" in text and "--node-ip-address" in text, text
    swiftray.init(address=cluster.address)
    assert len(swiftray.nodes()) == 1, "the node was not listed"

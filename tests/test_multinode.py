"""Clusters of several node daemons on 127.0.0.1 (distinct ports, resources, temp dirs)."""
import time

import swiftray


def _wait_until(pred, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


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


def test_a_driver_started_on_a_worker_node_runs_its_tasks_there(cluster):
    cluster.add_node(num_cpus=1)
    worker = cluster.add_node(num_cpus=1)
    swiftray.init(address=worker["session"])
    me = swiftray.get_runtime_context().get_node_id()
    assert me == _node_of(worker["session"])["NodeID"]
    assert swiftray.get([where.remote() for _ in range(4)]) == [me] * 4


def test_a_killed_node_daemon_is_marked_dead_within_the_health_check_time(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    node_id = _node_of(victim["session"])["NodeID"]
    start = time.time()
    cluster.kill_node(victim)
    # 3 failed checks, 200 ms apart (each waits at most 1 s): dead well within 10 s.
    assert _wait_until(lambda: not _node_of(victim["session"])["Alive"], timeout=10)
    took = time.time() - start
    dead = next(n for n in swiftray.nodes() if n["NodeID"] == node_id)
    assert "health checks" in dead["DeathDetail"]
    assert took < 10
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

"""Bounded chaos runs: thousands of tasks with dependencies and a few actors on a 3-node
cluster while random workers, then one whole node, are killed; and on network-namespace
hosts while random partitions come and go (short ones, ones past the health checks,
head-only cuts, splits). Every result must be right and nothing may hang."""
import os
import random
import signal
import threading
import time

import numpy as np

import swiftray
from conftest import pid_alive, wait_until


def _children(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _workload(small_options=None):
    """The chaos workload, defined per run: leaves stored in node stores, pairs that each
    read two of them, small inline tasks, and calls to 3 restartable actors on the
    "pool" nodes. Returns `one_round(width, smalls)`, which runs a round and checks
    every result, and the `small` task."""
    @swiftray.remote(max_retries=-1)
    def leaf(i):
        return np.full(30_000, float(i))  # 240 KB: stored in a node's object store

    @swiftray.remote(max_retries=-1)
    def combine(a, b):
        return float(a[0] + b[-1])

    @swiftray.remote(max_retries=-1)
    def small(i):
        return i * i

    @swiftray.remote(resources={"pool": 0.1}, max_restarts=-1, max_task_retries=-1)
    class Squarer:
        def square(self, x):
            return x * x

    actors = [Squarer.remote() for _ in range(3)]
    small = small.options(**small_options) if small_options else small

    def one_round(width, n_small):
        leaves = [leaf.remote(i) for i in range(width)]
        pairs = [combine.remote(leaves[i], leaves[(i + 1) % width]) for i in range(width)]
        smalls = [small.remote(i) for i in range(n_small)]
        squares = [actors[i % 3].square.remote(i) for i in range(width)]
        assert swiftray.get(pairs, timeout=180) == [float(i + (i + 1) % width) for i in range(width)]
        assert swiftray.get(smalls, timeout=180) == [i * i for i in range(n_small)]
        assert swiftray.get(squares, timeout=180) == [i * i for i in range(width)]

    return one_round, small


def test_chaos_run_with_killed_workers_and_a_killed_node_yields_every_result(cluster, capfd):
    # Uncaptured: should the runtime trap, its message reaches the log (a captured fd 2
    # dies with the process).
    with capfd.disabled():
        _chaos(cluster)


def _chaos(cluster):
    cluster.add_node(num_cpus=2)
    doomed = cluster.add_node(num_cpus=2, resources={"pool": 2})
    cluster.add_node(num_cpus=2, resources={"pool": 2})
    swiftray.init(address=cluster.address)
    rng = random.Random(7)

    one_round, _ = _workload()
    stop = threading.Event()
    kills = {"workers": 0}

    def killer():
        # Random workers on every node, then the whole `doomed` node, then more workers.
        t0 = time.time()
        node_killed = False
        while not stop.is_set():
            time.sleep(0.25)
            if not node_killed and time.time() - t0 > 1.5:
                cluster.kill_node(doomed)
                node_killed = True
                continue
            daemons = [n["pid"] for n in cluster.nodes if n is not doomed or not node_killed]
            victims = [w for d in daemons for w in _children(d)]
            if victims:
                try:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                    kills["workers"] += 1
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    def doomed_dead():
        return not any(n["Alive"] for n in swiftray.nodes() if n["SessionDir"] == doomed["session"])

    try:
        rounds, after_death = 0, 0
        while after_death < 3 and rounds < 60:  # until 3 rounds ran after the node's death
            rounds += 1
            after_death += doomed_dead()
            one_round(60, 500)
    finally:
        stop.set()
        t.join()
    print(f"chaos: {rounds} rounds, {kills['workers']} workers killed, node {doomed['pid']} killed")
    assert kills["workers"] > 0 and doomed_dead() and after_death == 3


def test_chaos_run_with_random_partitions_and_heals_yields_every_result(host_cluster, capfd):
    with capfd.disabled():
        _partition_chaos(host_cluster)


def _partition_chaos(host_cluster):
    # Health checks every 200 ms, dead after 3 misses: a cut of 0.5-1.5 s is survived, one
    # of 5 s is not (that node is fenced when it heals, and a new node starts on its host).
    cluster = host_cluster(health_check_period_ms=200, health_check_failure_threshold=3)
    cluster.add_node(num_cpus=2)
    nodes = [cluster.add_node(num_cpus=2, resources={"pool": 2}) for _ in range(3)]
    swiftray.init(address=cluster.address)
    hosts = cluster.hosts
    rng = random.Random(11)

    one_round, small = _workload({"resources": {"pool": 0.1}})
    stop = threading.Event()
    done = {"short": 0, "long": 0, "head-only": 0, "split": 0, "replaced": 0}

    kinds = []

    def partitioner():
        while not stop.is_set():
            time.sleep(rng.uniform(0.5, 1.5))
            live = [n for n in nodes if pid_alive(n["pid"])]
            if len(live) < 2:
                continue
            if not kinds:
                kinds.extend(rng.sample(["short", "short", "head-only", "split", "long"], 5))
            kind = kinds.pop()
            if kind == "short":
                hosts.cut(rng.choice(live)["host"])
                length = rng.uniform(0.5, 1.5)
            elif kind == "head-only":
                hosts.cut_between(0, rng.choice(live)["host"])
                length = rng.uniform(0.5, 1.5)
            elif kind == "split":  # two nodes on one side, the head and the rest on the other
                hosts.split([n["host"] for n in rng.sample(live, 2)])
                length = rng.uniform(0.5, 1.5)
            else:
                victim = rng.choice(live)
                hosts.cut(victim["host"])
                length = 5.0
            stop.wait(length)
            hosts.heal()
            done[kind] += 1
            if kind == "long":
                # Fenced when it heals: it exits; its host starts a new node.
                if wait_until(lambda: not pid_alive(victim["pid"]), timeout=30):
                    nodes[nodes.index(victim)] = cluster.add_node(num_cpus=2, resources={"pool": 2}, host=victim["host"])
                    done["replaced"] += 1

    t = threading.Thread(target=partitioner, daemon=True)
    t.start()
    start = time.time()
    rounds = 0
    try:
        # Bounded: 40 s of partitions (at least 6 rounds), then everything healed.
        while rounds < 6 or time.time() - start < 40:
            rounds += 1
            one_round(40, 200)
    finally:
        stop.set()
        t.join()
    hosts.heal()
    print(f"partition chaos: {rounds} rounds in {time.time() - start:.0f} s; partitions {done}")
    assert all(done[k] >= 1 for k in ("short", "head-only", "split", "long")), done
    # Healed, the cluster still answers.
    assert swiftray.get([small.remote(i) for i in range(20)], timeout=120) == [i * i for i in range(20)]

"""A bounded chaos run: thousands of tasks with dependencies and a few actors on a 3-node
local cluster while random workers, then one whole node, are killed. Every result must
be right and nothing may hang."""
import os
import random
import signal
import threading
import time

import numpy as np

import swiftray


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
            leaves = [leaf.remote(i) for i in range(60)]
            pairs = [combine.remote(leaves[i], leaves[(i + 1) % 60]) for i in range(60)]
            smalls = [small.remote(i) for i in range(500)]
            squares = [actors[i % 3].square.remote(i) for i in range(60)]
            assert swiftray.get(pairs, timeout=120) == [float(i + (i + 1) % 60) for i in range(60)]
            assert swiftray.get(smalls, timeout=120) == [i * i for i in range(500)]
            assert swiftray.get(squares, timeout=120) == [i * i for i in range(60)]
            del leaves
    finally:
        stop.set()
        t.join()
    print(f"chaos: {rounds} rounds, {kills['workers']} workers killed, node {doomed['pid']} killed")
    assert kills["workers"] > 0 and doomed_dead() and after_death == 3

"""Partition figures with real node daemons on network-namespace hosts (tests/hosts.py;
needs root). Prints and writes JSON; asserts nothing. For each case, `--runs` times:

- cut:      a node's link goes down for good: seconds until the head declares it dead,
            until an object whose only copy was there is rebuilt on a spare node, until
            its actor answers from the spare;
- heal:     that link comes back: seconds until the fenced node's daemon has exited;
- queued:   a task waiting in the cut node's queue: seconds from the cut to its result;
- short:    a 2 s cut below the health checks: seconds after the heal until all of the
            work in flight has answered (nothing retried);
- head-only: the node loses only the head: seconds until declared dead;
- driver:   a driver on the cut host (gcs_rpc_server_reconnect_timeout_s=5): seconds
            until its `get` raises;
- default:  one cut with the default health checks (every 3 s, 10 s timeout, 5 misses).

    python3 benchmarks/partitions.py [--runs 3] [--out benchmarks/results/partitions.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("SWIFTRAY_AUTH_TOKEN", "bench-" + os.urandom(16).hex())

import numpy as np  # noqa: E402

import swiftray  # noqa: E402
from conftest import GET_LOOP_DRIVER, Cluster, clean_hosts, pid_alive, wait_until  # noqa: E402
from hosts import Hosts  # noqa: E402

FAST = dict(health_check_period_ms=200, health_check_failure_threshold=3)
N = (4 << 20) // 8


def node(session):
    return next(n for n in swiftray.nodes() if n["SessionDir"] == session)


def until(pred, timeout=120):
    t0 = time.monotonic()
    assert wait_until(pred, timeout=timeout), "did not happen within the bound"
    return time.monotonic() - t0


def run_cut(hosts, settings, check_timeout_ms=1000):
    c = Cluster(hosts=hosts, **settings)
    c.env["SWIFTRAY_HEALTH_CHECK_TIMEOUT_MS"] = str(check_timeout_ms)
    try:
        c.add_node(num_cpus=1)
        victim = c.add_node(num_cpus=1, resources={"r": 1, "a": 1})
        swiftray.init(address=c.address)

        @swiftray.remote(resources={"r": 1}, max_retries=1)
        def made():
            return swiftray.get_runtime_context().get_node_id(), np.arange(N, dtype=np.float64)

        @swiftray.remote(resources={"a": 1}, max_restarts=1, max_task_retries=1)
        class Where:
            def node(self):
                return swiftray.get_runtime_context().get_node_id()

        w = Where.remote()
        swiftray.get(w.node.remote(), timeout=60)
        obj = made.remote()
        swiftray.wait([obj], timeout=60)
        spare = c.add_node(num_cpus=1, resources={"r": 1, "a": 1})
        spare_id = node(spare["session"])["NodeID"]
        hosts.cut(victim["host"])
        t0 = time.monotonic()
        dead = until(lambda: not node(victim["session"])["Alive"])
        assert swiftray.get(obj, timeout=120)[0] == spare_id
        rebuilt = time.monotonic() - t0
        until(lambda: swiftray.get(w.node.remote(), timeout=60) == spare_id)
        actor = time.monotonic() - t0
        hosts.heal()
        fenced = until(lambda: not pid_alive(victim["pid"]))
        return {"declared_dead_s": dead, "object_rebuilt_s": rebuilt, "actor_restarted_s": actor, "fenced_exit_after_heal_s": fenced}
    finally:
        finish(hosts, c)


def run_queued(hosts):
    c = Cluster(hosts=hosts, **FAST)
    try:
        c.add_node(num_cpus=1)
        victim = c.add_node(num_cpus=1, resources={"r": 1})
        swiftray.init(address=c.address)

        @swiftray.remote(resources={"r": 1}, max_retries=1)
        def hold(seconds):
            time.sleep(seconds)
            return 1

        running, queued = hold.remote(3), hold.remote(0)
        time.sleep(1)
        hosts.cut(victim["host"])
        t0 = time.monotonic()
        c.add_node(num_cpus=1, resources={"r": 1})
        swiftray.get([running, queued], timeout=120)
        return {"queued_task_done_s": time.monotonic() - t0}
    finally:
        finish(hosts, c)


def run_short(hosts):
    c = Cluster(hosts=hosts, health_check_period_ms=1000, health_check_failure_threshold=20)
    try:
        c.add_node(num_cpus=1)
        n = c.add_node(num_cpus=2, resources={"r": 2})
        swiftray.init(address=c.address)

        @swiftray.remote(resources={"r": 1}, max_retries=0)
        def sq(x):
            time.sleep(0.2)
            return x * x

        refs = [sq.remote(i) for i in range(30)]
        time.sleep(0.3)
        hosts.cut(n["host"])
        time.sleep(2)
        hosts.heal()
        t0 = time.monotonic()
        assert swiftray.get(refs, timeout=120) == [i * i for i in range(30)]
        return {"short_cut_all_answered_after_heal_s": time.monotonic() - t0}
    finally:
        finish(hosts, c)


def run_head_only(hosts):
    c = Cluster(hosts=hosts, **FAST)
    try:
        c.add_node(num_cpus=1)
        victim = c.add_node(num_cpus=1)
        c.add_node(num_cpus=1)
        swiftray.init(address=c.address)
        hosts.cut_between(0, victim["host"])
        dead = until(lambda: not node(victim["session"])["Alive"])
        hosts.heal()
        fenced = until(lambda: not pid_alive(victim["pid"]))
        return {"head_only_declared_dead_s": dead, "head_only_fenced_exit_after_heal_s": fenced}
    finally:
        finish(hosts, c)


def run_driver(hosts):
    c = Cluster(hosts=hosts, **FAST, env={"SWIFTRAY_GCS_RPC_SERVER_RECONNECT_TIMEOUT_S": "5"})
    try:
        c.add_node(num_cpus=1)
        n = c.add_node(num_cpus=1)
        h = n["host"]
        with open(h.path("/tmp/bench_driver.py"), "w") as f:
            f.write(GET_LOOP_DRIVER)
        p = h.popen([sys.executable, "/tmp/bench_driver.py", n["session"]], cwd="/tmp", env=dict(c.env),
                    stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().startswith("ok")
            hosts.cut(h)
            t0 = time.monotonic()
            while True:
                line = p.stdout.readline()
                assert line, "the driver ended without an error"
                if line.startswith("ERROR"):
                    return {"driver_error_s": time.monotonic() - t0, "driver_error": line.split()[1]}
        finally:
            p.kill()
            p.wait()
    finally:
        finish(hosts, c)


def finish(hosts, c):
    hosts.heal()
    swiftray.shutdown()
    c.shutdown()
    clean_hosts(hosts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "partitions.json"))
    args = ap.parse_args()
    os.environ["SWIFTRAY_PYTHON"] = sys.executable
    hosts = Hosts(3)
    results = {}
    try:
        for name, fn in (("cut", lambda: run_cut(hosts, FAST)), ("queued", lambda: run_queued(hosts)),
                         ("short", lambda: run_short(hosts)), ("head-only", lambda: run_head_only(hosts)),
                         ("driver", lambda: run_driver(hosts))):
            for _ in range(args.runs):
                for k, v in fn().items():
                    results.setdefault(k, []).append(v)
            print(name, {k: v for k, v in results.items()}, flush=True)
        for k, v in run_cut(hosts, {"health_check_period_ms": 3000, "health_check_failure_threshold": 5}, 10_000).items():
            results.setdefault("default_" + k, []).append(v)
    finally:
        hosts.close()
    summary = {k: (round(statistics.median(v), 2) if all(isinstance(x, float) for x in v) else v) for k, v in results.items()}
    print("\nmedians (s), fast health checks (every 200 ms, 1 s timeout, 3 misses) unless 'default_':")
    for k, v in summary.items():
        print(f"  {k:42s} {v}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"runs": results, "median": summary}, f, indent=1)


if __name__ == "__main__":
    main()

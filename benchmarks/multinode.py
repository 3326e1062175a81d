"""Multi-node figures on this machine: the time from `start --head` to a usable cluster
(swiftray and, with --ray-python, Ray), noop tasks/s across a 3-node local cluster
against the same work on one node, and the cross-node transfer rate of a 1 GiB array
(a driver on one node gets an array a task made on another). Prints and writes JSON;
asserts nothing.

    python3 benchmarks/multinode.py [--ray-python /path/to/venv/bin/python] [--tasks 2000]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

DRIVER = """
import sys, time
import {mod} as ray
t0 = time.perf_counter()
ray.init(address=sys.argv[1]{extra})
@ray.remote
def noop():
    return 1
ray.get(noop.remote())
print("first_task_s", time.perf_counter() - t0)
"""

THROUGHPUT = """
import sys, time
import swiftray as ray
ray.init(address=sys.argv[1])
n, strategy = int(sys.argv[2]), sys.argv[3]
@ray.remote
def noop():
    return ray.get_runtime_context().get_node_id()
opts = noop.options(scheduling_strategy=strategy) if strategy != "DEFAULT" else noop
ray.get([opts.remote() for _ in range(200)])  # warm: workers started everywhere
time.sleep(1)
t0 = time.perf_counter()
nodes = ray.get([opts.remote() for _ in range(n)])
dt = time.perf_counter() - t0
print("tasks_per_s", n / dt)
print("nodes_used", len(set(nodes)))
"""

TRANSFER = """
import sys, time
import numpy as np
import {mod} as ray
ray.init(address=sys.argv[1])
nbytes, trials = int(sys.argv[2]), int(sys.argv[3])
@ray.remote(resources={{"far": 1}})
def make(n):
    return np.ones(n, dtype=np.uint8)
ray.get(make.remote(1))  # the far node's worker is up
for _ in range(trials):
    ref = make.remote(nbytes)
    ray.wait([ref], fetch_local=False)
    t0 = time.perf_counter()
    a = ray.get(ref)  # pulled from the far node's store into this node's
    dt = time.perf_counter() - t0
    assert a.nbytes == nbytes and a[0] == 1 and a[-1] == 1
    print("seconds", dt)
    del a, ref
"""


def sh(cmd, env=None, timeout=120):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def field(out, name):
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith(name)))


def swiftray_cluster(cpus_per_node):
    root = tempfile.mkdtemp(prefix="sr", dir="/tmp")
    cli = [sys.executable, "-m", "swiftray"]
    address = None
    for i, cpus in enumerate(cpus_per_node):
        args = cli + ["start", "--num-cpus", str(cpus), "--temp-dir", root]
        args += ["--head", "--port", "0"] if address is None else ["--address", address]
        out = sh(args)
        if address is None:
            address = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Address:"))
    return root, address


def swiftray_stop(root):
    sh([sys.executable, "-m", "swiftray", "stop", "--temp-dir", root])
    shutil.rmtree(root, ignore_errors=True)


def swiftray_startup():
    root = tempfile.mkdtemp(prefix="sr", dir="/tmp")
    t0 = time.perf_counter()
    out = sh([sys.executable, "-m", "swiftray", "start", "--head", "--port", "0", "--num-cpus", "2", "--temp-dir", root])
    start_s = time.perf_counter() - t0
    address = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Address:"))
    drv = sh([sys.executable, "-c", DRIVER.format(mod="swiftray", extra=""), address])
    total = time.perf_counter() - t0
    swiftray_stop(root)
    return {"start_s": start_s, "first_task_s": field(drv, "first_task_s"), "start_to_first_result_s": total}


def ray_startup(python):
    ray = os.path.join(os.path.dirname(python), "ray")
    port = 6390
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    t0 = time.perf_counter()
    sh([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"], env=env, timeout=300)
    start_s = time.perf_counter() - t0
    try:
        drv = sh([python, "-c", DRIVER.format(mod="ray", extra=""), "auto"], env=env, timeout=300)
        total = time.perf_counter() - t0
    finally:
        sh([ray, "stop", "--force"], env=env, timeout=300)
    return {"start_s": start_s, "first_task_s": field(drv, "first_task_s"), "start_to_first_result_s": total}


def throughput(cpus_per_node, tasks, strategy):
    root, address = swiftray_cluster(cpus_per_node)
    try:
        out = sh([sys.executable, "-c", THROUGHPUT, address, str(tasks), strategy], timeout=600)
    finally:
        swiftray_stop(root)
    return {"nodes": len(cpus_per_node), "cpus": sum(cpus_per_node), "strategy": strategy,
            "tasks_per_s": field(out, "tasks_per_s"), "nodes_used": int(field(out, "nodes_used"))}


def transfer_figures(out, nbytes):
    times = [float(line.split()[1]) for line in out.splitlines() if line.startswith("seconds")]
    best = min(times)
    return {"bytes": nbytes, "seconds": times, "best_gb_per_s": nbytes / best / 1e9,
            "mean_gb_per_s": nbytes / (sum(times) / len(times)) / 1e9}


def swiftray_transfer(nbytes, trials):
    root = tempfile.mkdtemp(prefix="sr", dir="/tmp")
    cli = [sys.executable, "-m", "swiftray", "start", "--num-cpus", "1", "--temp-dir", root]
    try:
        out = sh(cli + ["--head", "--port", "0"])
        address = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Address:"))
        sh(cli + ["--address", address, "--resources", '{"far": 1}'])
        out = sh([sys.executable, "-c", TRANSFER.format(mod="swiftray"), address, str(nbytes), str(trials)], timeout=600)
    finally:
        swiftray_stop(root)
    return transfer_figures(out, nbytes)


def ray_transfer(python, nbytes, trials):
    ray = os.path.join(os.path.dirname(python), "ray")
    # With ~/.ray/auth_token present, `ray start --head` turns token auth on by itself
    # while joining nodes and drivers given an address do not: keep it off everywhere.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    try:
        sh([ray, "start", "--head", "--port=6391", "--num-cpus=1", "--include-dashboard=false"], env=env, timeout=300)
        sh([ray, "start", "--address=127.0.0.1:6391", "--num-cpus=1", '--resources={"far": 1}'], env=env, timeout=300)
        out = sh([python, "-c", TRANSFER.format(mod="ray"), "127.0.0.1:6391", str(nbytes), str(trials)], env=env, timeout=900)
    finally:
        sh([ray, "stop", "--force"], env=env, timeout=300)
    return transfer_figures(out, nbytes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ray-python")
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--transfer-bytes", type=int, default=1 << 30)
    ap.add_argument("--transfer-trials", type=int, default=3)
    ap.add_argument("--only", choices=["startup", "throughput", "transfer"])
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "multinode.json"))
    args = ap.parse_args()
    results = {}
    if os.path.exists(args.json) and args.only:
        with open(args.json) as f:
            results = json.load(f)  # refresh one section, keep the others
    if args.only in (None, "startup"):
        results["startup"] = {"swiftray": swiftray_startup()}
        if args.ray_python:
            results["startup"]["ray"] = ray_startup(args.ray_python)
        for impl, r in results["startup"].items():
            print(f"{impl:9s} start --head: {r['start_s']:.2f} s; driver connect + first task: {r['first_task_s']:.2f} s; "
                  f"start to first result: {r['start_to_first_result_s']:.2f} s")
    if args.only in (None, "throughput"):
        results["throughput"] = [throughput([3], args.tasks, "DEFAULT"), throughput([1, 1, 1], args.tasks, "DEFAULT"),
                                 throughput([1, 1, 1], args.tasks, "SPREAD")]
        for r in results["throughput"]:
            print(f"{r['nodes']} node(s), {r['cpus']} CPUs, {r['strategy']}: {r['tasks_per_s']:,.0f} noop tasks/s "
                  f"(ran on {r['nodes_used']} node(s))")
    if args.only in (None, "transfer"):
        results["transfer"] = {"swiftray": swiftray_transfer(args.transfer_bytes, args.transfer_trials)}
        if args.ray_python:
            results["transfer"]["ray"] = ray_transfer(args.ray_python, args.transfer_bytes, args.transfer_trials)
        for impl, r in results["transfer"].items():
            print(f"{impl:9s} cross-node get of {r['bytes'] / (1 << 30):.2f} GiB: best {r['best_gb_per_s']:.2f} GB/s, "
                  f"mean {r['mean_gb_per_s']:.2f} GB/s ({', '.join(f'{t:.3f}' for t in r['seconds'])} s)")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""Recovery figures on this machine (prints and writes JSON; asserts nothing):
- node death to rebuilt objects: a chain first -> step -> step of 4 MiB arrays lives on a
  node that is killed (kill -9); the time until the driver's get of the last one returns
  the rebuilt value, split into the health-check verdict and the rebuild;
- head restart on Redis to a cluster accepting new actors: kill -9 the head, start it
  again on the same port with the same Redis, then a new driver creates an actor and
  calls it.

    python3 benchmarks/recovery.py [--health-check-period-ms 1000] [--failure-threshold 3]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from multinode import field, sh, swiftray_stop  # run as a script: benchmarks/ is on sys.path

REBUILD = """
import sys, time, os, signal
import numpy as np
import swiftray
swiftray.init(address=sys.argv[1])
victim_pid, victim_session, root = int(sys.argv[2]), sys.argv[3], sys.argv[4]
@swiftray.remote(resources={"r": 1})
def first():
    return np.arange((4 << 20) // 8, dtype=np.float64)
@swiftray.remote(resources={"r": 1})
def step(a):
    return a + 1
c = step.remote(step.remote(first.remote()))
swiftray.wait([c])  # all three live only on the victim node
import subprocess
subprocess.run([sys.executable, "-m", "swiftray", "start", "--num-cpus", "1", "--temp-dir", root,
                "--address", sys.argv[1], "--resources", '{"r": 1}'], check=True, capture_output=True)
t0 = time.perf_counter()
os.kill(victim_pid, signal.SIGKILL)
dead_at = None
import threading
def watch():
    global dead_at
    while dead_at is None:
        if any(not n["Alive"] for n in swiftray.nodes() if n["SessionDir"] == victim_session):
            dead_at = time.perf_counter()
        time.sleep(0.01)
threading.Thread(target=watch, daemon=True).start()
out = swiftray.get(c, timeout=300)
t1 = time.perf_counter()
assert out[0] == 2.0 and out[-1] == out.size + 1.0
print("total_s", t1 - t0)
print("verdict_s", (dead_at or t1) - t0)
"""

ACTOR = """
import sys, time
import swiftray
t0 = float(sys.argv[2])
swiftray.init(address=sys.argv[1])
@swiftray.remote
class A:
    def ping(self):
        return 1
assert swiftray.get(A.remote().ping.remote()) == 1
print("actor_s", time.time() - t0)
"""


def start(env, root, *extra):
    out = sh([sys.executable, "-m", "swiftray", "start", "--num-cpus", "1", "--temp-dir", root, *extra], env)
    info = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("Session:", "Address:")))
    session = info["Session"].strip()
    with open(os.path.join(session, "daemon.pid")) as f:
        pid = int(f.read())
    return info.get("Address", "").strip(), pid, session


def rebuild_figures(env):
    root = tempfile.mkdtemp(prefix="sr", dir="/tmp")
    try:
        address, _, _ = start(env, root, "--head", "--port", "0")
        _, victim, session = start(env, root, "--address", address, "--resources", '{"r": 1}')
        out = sh([sys.executable, "-c", REBUILD, address, str(victim), session, root], env, timeout=600)
        return {"kill_to_rebuilt_s": field(out, "total_s"), "kill_to_verdict_s": field(out, "verdict_s")}
    finally:
        swiftray_stop(root)


def head_restart_figures(env):
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        rport = sk.getsockname()[1]
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    root = tempfile.mkdtemp(prefix="sr", dir="/tmp")
    env = dict(env, SWIFTRAY_REDIS_ADDRESS=f"127.0.0.1:{rport}")
    try:
        time.sleep(0.3)
        address, head, _ = start(env, root, "--head", "--port", "0")
        start(env, root, "--address", address)
        port = address.rsplit(":", 1)[1]
        os.kill(head, signal.SIGKILL)
        time.sleep(0.5)
        t0 = time.time()
        start(env, root, "--head", "--port", port)
        started = time.time() - t0
        out = sh([sys.executable, "-c", ACTOR, address, repr(t0)], env)
        return {"head_start_s": started, "restart_to_actor_result_s": field(out, "actor_s")}
    finally:
        swiftray_stop(root)
        redis.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--health-check-period-ms", type=int, default=1000)
    ap.add_argument("--failure-threshold", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "recovery.json"))
    args = ap.parse_args()
    env = dict(os.environ, SWIFTRAY_PYTHON=sys.executable,
               SWIFTRAY_HEALTH_CHECK_PERIOD_MS=str(args.health_check_period_ms),
               SWIFTRAY_HEALTH_CHECK_FAILURE_THRESHOLD=str(args.failure_threshold),
               SWIFTRAY_HEALTH_CHECK_TIMEOUT_MS=str(args.health_check_period_ms))
    r = {"health_check_period_ms": args.health_check_period_ms, "failure_threshold": args.failure_threshold}
    r.update(rebuild_figures(env))
    r.update(head_restart_figures(env))
    print(f"node killed -> declared dead: {r['kill_to_verdict_s']:.2f} s; -> chain of 3 rebuilt and read: "
          f"{r['kill_to_rebuilt_s']:.2f} s (health checks every {args.health_check_period_ms} ms, "
          f"{args.failure_threshold} failures)")
    print(f"head restarted on Redis: start {r['head_start_s']:.2f} s; to a new actor's first result "
          f"{r['restart_to_actor_result_s']:.2f} s")
    # One entry per health-check setting, kept alongside the others already measured.
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    results = {}
    if os.path.exists(args.json):
        with open(args.json) as f:
            results = json.load(f)
    results[f"period_{args.health_check_period_ms}ms_threshold_{args.failure_threshold}"] = r
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

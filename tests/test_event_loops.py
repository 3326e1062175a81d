"""With `SWIFTRAY_TASKS_ON_EVENT_LOOPS=1` the core's async work runs on its event loops
(issue 18): a gRPC call does not hop through a second pool of threads (Swift
concurrency's default executor, whose threads libdispatch names "...-qos"), in drivers
and workers alike. Off by default (it slowed placement groups; see TasksOnEventLoops),
which shows the pool there."""
import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, os, swiftray

def threads():
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{t}/comm").read().strip())
        except OSError:
            pass  # ended meanwhile
    return sorted(names)

swiftray.init(num_cpus=1)

@swiftray.remote
def work():
    for _ in range(5):
        swiftray.nodes()  # control-plane calls from the worker (gRPC over a socket)
    return threads()

@swiftray.remote(num_cpus=0)
class A:
    def names(self):
        return threads()

worker = swiftray.get(work.remote())
actor = swiftray.get(A.remote().names.remote())
for _ in range(20):
    swiftray.nodes()  # a control-plane call each
print(json.dumps({"driver": threads(), "worker": worker, "actor": actor}))
swiftray.shutdown()
"""


def thread_names(env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def dispatch_threads(names):
    # libdispatch names its threads by queue ("com.apple.root.user-initiated-qos", ...),
    # cut to the kernel's 15 characters.
    return [n for n in names if "qos" in n]


def test_turned_on_async_work_runs_on_the_event_loops_in_drivers_and_workers():
    names = thread_names({"SWIFTRAY_TASKS_ON_EVENT_LOOPS": "1"})
    for who in ("worker", "actor"):
        # A worker's threads: its main thread, its task thread and the event loops; none
        # of a second pool.
        assert any(n.startswith("NIO-") for n in names[who]), (who, names[who])
        assert dispatch_threads(names[who]) == [], (who, names[who])
    # The driver (which hosts this local cluster's head and node) starts Tasks from its
    # own threads: none of them run in the pool Swift would otherwise give such Tasks.
    assert [n for n in names["driver"] if n.endswith("initiated-qos")] == [], names["driver"]


def test_by_default_the_default_pool_does_the_async_work():
    names = thread_names({})
    assert dispatch_threads(names["worker"]), names["worker"]

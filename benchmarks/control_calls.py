"""What a control-plane call costs a local driver (issue 18): a key-value read of the head
(`_core.kv_get`, one unary gRPC call) in a loop, per call: wall time, CPU time of the
driver process (which hosts the head and node it started) and voluntary context
switches; and a placement group's create / ready / remove, per group.

    python benchmarks/control_calls.py [--calls N] [--groups N] [--env K=V ...] [--json PATH]

Each `--env` setting (e.g. `SWIFTRAY_TASKS_ON_EVENT_LOOPS=0`) runs once more in a fresh
driver with that variable set, next to the default, alternating. Measures; asserts
nothing.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import child_output  # noqa: E402
import provenance  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import swiftray
from swiftray import _core
from swiftray.util import placement_group, remove_placement_group
calls, groups = int(sys.argv[1]), int(sys.argv[2])
swiftray.init(num_cpus=2)
for _ in range(50):
    _core.kv_get("bench", b"k")
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
for _ in range(calls):
    _core.kv_get("bench", b"k")
t1 = time.perf_counter(); r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
t2 = time.perf_counter()
pgs = [placement_group([{"CPU": 0.001}]) for _ in range(groups)]
t3 = time.perf_counter()
for pg in pgs:
    swiftray.get(pg.ready())
t4 = time.perf_counter()
for pg in pgs:
    remove_placement_group(pg)
t5 = time.perf_counter()
print(json.dumps({"kv_get_wall_us": 1e6 * (t1 - t0) / calls, "kv_get_cpu_us": 1e6 * cpu / calls,
                  "kv_get_voluntary_switches": (r1.ru_nvcsw - r0.ru_nvcsw) / calls,
                  "pg_create_us": 1e6 * (t3 - t2) / groups, "pg_ready_us": 1e6 * (t4 - t3) / groups,
                  "pg_remove_us": 1e6 * (t5 - t4) / groups}))
swiftray.shutdown()
"""


def run(calls, groups, env_extra):
    return child_output.run_child([sys.executable, "-c", CHILD, str(calls), str(groups)], "control_calls' driver",
                                  timeout=600, env=dict(os.environ, **env_extra))

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--env", action="append", default=[], help="K=V: also run with this variable set")
    ap.add_argument("--json")
    a = ap.parse_args()
    settings = [("default", {})] + [(e, dict([e.split("=", 1)])) for e in a.env]
    rows = []
    for _ in range(a.rounds):
        for name, extra in settings:
            r = run(a.calls, a.groups, extra)
            r["setting"] = name
            rows.append(r)
    print(f"{'setting':<36} {'kv_get wall µs':>15} {'CPU µs':>8} {'switches':>9} {'pg create µs':>13} {'ready µs':>9} {'remove µs':>10}")
    for r in rows:
        print(f"{r['setting']:<36} {r['kv_get_wall_us']:>15.0f} {r['kv_get_cpu_us']:>8.0f} {r['kv_get_voluntary_switches']:>9.1f} "
              f"{r['pg_create_us']:>13.0f} {r['pg_ready_us']:>9.0f} {r['pg_remove_us']:>10.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"measured": provenance.stamp(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""Cost per task as the work in flight grows (issue 18): N no-op tasks submitted at once,
then gathered with one `get`, for N = 1,000, 10,000 and 100,000. Each N runs in a fresh
driver process, so its peak RSS is that N's alone, in rounds (up to 10, at most 100,000
tasks in all: a single round of 1,000 lasts ~25 ms, and one preemption on a shared host
moved it by a fifth); tasks/s is the median round's. A per-event cost that grows with
the work in flight shows as tasks/s falling with N.

    python benchmarks/in_flight.py [--sizes 1000,10000,100000] [--ray-python PATH] [--json PATH]

`--ray-python`: also run Ray (2.60, in its own venv: never a project dependency).
Prints a table and optionally writes JSON. Measures; asserts nothing.
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import child_output  # noqa: E402
import provenance  # noqa: E402

CHILD = r"""
import json, resource, sys, time
impl, n = sys.argv[1], int(sys.argv[2])
if impl == "ray":
    import ray as api
else:
    import swiftray as api
api.init(num_cpus=2, **({"include_dashboard": False, "log_to_driver": False} if impl == "ray" else {}))

@api.remote
def noop():
    return None

for _ in range(5):  # workers started, leases warm, short tasks found short (pipelined)
    api.get([noop.remote() for _ in range(1000)])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rounds = []
for _ in range(max(1, min(10, 100_000 // n))):
    t0 = time.perf_counter()
    refs = [noop.remote() for _ in range(n)]
    t1 = time.perf_counter()
    api.get(refs)
    t2 = time.perf_counter()
    del refs
    rounds.append((n / (t2 - t0), t1 - t0, t2 - t0))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rate, submit_s, total_s = sorted(rounds)[len(rounds) // 2]
print(json.dumps({"n": n, "rounds": len(rounds), "submit_s": submit_s, "total_s": total_s, "tasks_per_s": rate,
                  "peak_rss_mib": peak / 1024, "rss_growth_kib_per_task": max(0, peak - base) / n}))
api.shutdown()
"""


def run(python, impl, n):
    env = dict(os.environ)
    r = subprocess.run([python, "-c", CHILD, impl, str(n)], capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"{impl} with N={n} failed:\n{r.stderr[-2000:]}")
    return child_output.last_json(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--ray-python")
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    impls = [("swiftray", sys.executable)] + ([("ray", args.ray_python)] if args.ray_python else [])
    rows = []
    for impl, python in impls:
        for n in sizes:
            r = run(python, impl, n)
            r["impl"] = impl
            rows.append(r)
    print(f"{'impl':<10}{'N':>9}{'tasks/s':>11}{'vs N=' + str(sizes[0]):>11}{'peak RSS MiB':>14}{'KiB/task':>10}")
    for impl, _ in impls:
        first = next(r for r in rows if r["impl"] == impl and r["n"] == sizes[0])
        for r in (r for r in rows if r["impl"] == impl):
            print(f"{impl:<10}{r['n']:>9,}{r['tasks_per_s']:>11,.0f}{r['tasks_per_s'] / first['tasks_per_s']:>11.2f}"
                  f"{r['peak_rss_mib']:>14.0f}{r['rss_growth_kib_per_task']:>10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"measured": provenance.stamp(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

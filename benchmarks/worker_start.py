"""How fast new worker processes come up (issue 18): N actors (num_cpus=0) created at
once, each answering one call; actors/s from the first creation to the last answer,
the memory each worker process costs (PSS, which splits shared pages fairly), and the
CPU each worker process used to start and answer (its utime + stime, the median over
rounds of the mean over workers; 10 ms clock ticks, so read it as a mean).

    python benchmarks/worker_start.py [--actors N] [--rounds R] [--ray-python PATH] [--json PATH]

Each implementation and round runs in a fresh driver process. `--ray-python`: also run
Ray 2.60 from its own venv (never a project dependency). Prints a table and optionally
writes JSON. Measures; asserts nothing.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import child_output  # noqa: E402
import provenance  # noqa: E402

CHILD = r"""
import json, os, sys, time
impl, n = sys.argv[1], int(sys.argv[2])
api = __import__(impl)
api.init(num_cpus=2, **({"include_dashboard": False, "log_to_driver": False} if impl == "ray" else {}))

@api.remote(num_cpus=0)
class Probe:
    def pid(self):
        return os.getpid()

@api.remote
def warm():
    return None

api.get(warm.remote())  # the cluster is up before the clock starts
t0 = time.perf_counter()
actors = [Probe.remote() for _ in range(n)]
pids = api.get([a.pid.remote() for a in actors])
elapsed = time.perf_counter() - t0

def pss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None

def cpu_ms(pid):
    # utime + stime (fields 14 and 15 of /proc/<pid>/stat, after the command's parentheses).
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None

pss = [p for p in (pss_kib(pid) for pid in set(pids)) if p is not None]
cpu = [c for c in (cpu_ms(pid) for pid in set(pids)) if c is not None]
print(json.dumps({"actors": n, "seconds": elapsed, "actors_per_s": n / elapsed,
                  "workers": len(set(pids)), "pss_mib_per_worker": sum(pss) / len(pss) / 1024 if pss else None,
                  "cpu_ms_per_worker": sum(cpu) / len(cpu) if cpu else None}))
api.shutdown()
"""


def run(python, impl, n):
    return child_output.run_child([python, "-c", CHILD, impl, str(n)], impl, timeout=900)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ray-python")
    ap.add_argument("--json")
    args = ap.parse_args()
    impls = [("swiftray", sys.executable)] + ([("ray", args.ray_python)] if args.ray_python else [])
    rows = []
    print(f"{'impl':10}{'actors':>8}{'actors/s (median)':>19}{'seconds':>9}{'PSS MiB/worker':>16}{'CPU ms/worker':>15}")
    for impl, python in impls:
        runs = [run(python, impl, args.actors) for _ in range(args.rounds)]
        best = sorted(runs, key=lambda r: r["actors_per_s"])[len(runs) // 2]
        row = dict(best, impl=impl, rounds=[r["actors_per_s"] for r in runs],
                   actors_per_s=statistics.median(r["actors_per_s"] for r in runs))
        rows.append(row)
        pss = f"{row['pss_mib_per_worker']:.1f}" if row["pss_mib_per_worker"] is not None else "-"
        cpus = [r["cpu_ms_per_worker"] for r in runs if r.get("cpu_ms_per_worker") is not None]
        row["cpu_ms_per_worker"] = statistics.median(cpus) if cpus else None
        cpu = f"{row['cpu_ms_per_worker']:.1f}" if cpus else "-"
        print(f"{impl:10}{args.actors:>8}{row['actors_per_s']:>19.1f}{row['seconds']:>9.2f}{pss:>16}{cpu:>15}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"measured": provenance.stamp(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

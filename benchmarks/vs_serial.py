"""The blog's scenario, generalised: N tasks of duration d, sleeping and CPU-bound,
run serially, with swiftray, with multiprocessing.Pool, concurrent.futures.ProcessPoolExecutor,
joblib (loky) and Dask distributed (LocalCluster), and with Ray (joblib, Dask and Ray from
the benchmark venv given by --ray-python, never project dependencies).

    python benchmarks/vs_serial.py [--tasks N] [--duration D]
        [--impl all|serial,swiftray,pool,executor,joblib,dask,ray]
        [--ray-python PATH] [--json PATH]

Each implementation runs in its own process, so "whole process" is the real wall time
a user waits, start-up included. Prints speedup over serial, per-task overhead
(wall time of the parallel section beyond the ideal N*d/cpus), init-to-first-result and
whole-process time. Measures; asserts nothing.
"""
import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, time
t_start = time.perf_counter()
impl, kind, n, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

def work(_):
    if kind == "sleep":
        time.sleep(d)
    else:
        end = time.perf_counter() + d
        x = 0
        while time.perf_counter() < end:
            x += 1
    return 1

out = {}
if impl == "serial":
    t0 = time.perf_counter(); work(0); out["first"] = time.perf_counter() - t0
    t0 = time.perf_counter(); [work(i) for i in range(n)]; out["section"] = time.perf_counter() - t0
elif impl == "pool":
    import multiprocessing
    t0 = time.perf_counter()
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(work, [0]); out["first"] = time.perf_counter() - t0
        t0 = time.perf_counter(); pool.map(work, range(n), chunksize=1); out["section"] = time.perf_counter() - t0
elif impl == "executor":
    from concurrent.futures import ProcessPoolExecutor
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as ex:
        list(ex.map(work, [0])); out["first"] = time.perf_counter() - t0
        t0 = time.perf_counter(); list(ex.map(work, range(n))); out["section"] = time.perf_counter() - t0
elif impl == "joblib":
    from joblib import Parallel, delayed
    t0 = time.perf_counter()
    with Parallel(n_jobs=os.cpu_count(), backend="loky") as par:
        par([delayed(work)(0)]); out["first"] = time.perf_counter() - t0
        t0 = time.perf_counter(); par(delayed(work)(i) for i in range(n)); out["section"] = time.perf_counter() - t0
elif impl == "dask":
    from distributed import Client, LocalCluster
    t0 = time.perf_counter()
    with LocalCluster(n_workers=os.cpu_count(), threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            Client(c) as client:
        client.submit(work, 0, pure=False).result(); out["first"] = time.perf_counter() - t0
        t0 = time.perf_counter(); client.gather(client.map(work, range(n), pure=False)); out["section"] = time.perf_counter() - t0
else:
    if impl == "ray":
        import ray
        kw = dict(include_dashboard=False, logging_level="ERROR")
    else:
        import swiftray as ray
        kw = {}
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False, **kw)
    remote_work = ray.remote(work)
    ray.get(remote_work.remote(0)); out["first"] = time.perf_counter() - t0
    t0 = time.perf_counter(); ray.get([remote_work.remote(i) for i in range(n)]); out["section"] = time.perf_counter() - t0
    ray.shutdown()
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=4 * (os.cpu_count() or 1))
    ap.add_argument("--duration", type=float, default=0.25)
    ap.add_argument("--impl", default="all")
    ap.add_argument("--ray-python", default=os.environ.get("SWIFTRAY_BENCH_RAY_PYTHON"))
    ap.add_argument("--json")
    args = ap.parse_args()
    impls = ["serial", "swiftray", "pool", "executor", "joblib", "dask", "ray"] if args.impl == "all" else args.impl.split(",")
    ray_py = args.ray_python
    # Ray and the peers that are not in the standard library run from the benchmark venv.
    venv_impls = [i for i in ("joblib", "dask", "ray") if i in impls]
    if venv_impls and not ray_py:
        if subprocess.run([sys.executable, "-c", "import ray, joblib, distributed"], capture_output=True).returncode == 0:
            ray_py = sys.executable
        else:
            impls = [i for i in impls if i not in venv_impls]
    cpus = os.cpu_count() or 1
    results = []
    print(f"{args.tasks} tasks of {args.duration} s on {cpus} CPUs (ideal parallel section "
          f"{args.tasks * args.duration / cpus:.2f} s)")
    print(f"{'kind':6} {'impl':9} {'section s':>9} {'speedup':>8} {'overhead/task ms':>17} "
          f"{'first result ms':>15} {'whole process s':>15}")
    for kind in ("sleep", "cpu"):
        serial_section = None
        for impl in impls:
            py = ray_py if impl in ("joblib", "dask", "ray") else sys.executable
            t0 = time.perf_counter()
            r = subprocess.run([py, "-c", CHILD, impl, kind, str(args.tasks), str(args.duration)],
                               capture_output=True, text=True, timeout=600)
            whole = time.perf_counter() - t0
            if r.returncode != 0:
                print(f"{kind:6} {impl:9} failed: {r.stderr.strip().splitlines()[-1:]}")
                continue
            out = json.loads(r.stdout.strip().splitlines()[-1])
            if impl == "serial":
                serial_section = out["section"]
            ideal = args.tasks * args.duration / (1 if impl == "serial" else cpus)
            rec = {"kind": kind, "impl": impl, "section_s": out["section"],
                   "speedup": (serial_section / out["section"]) if serial_section else None,
                   "overhead_per_task_ms": (out["section"] - ideal) / args.tasks * 1e3,
                   "first_result_ms": out["first"] * 1e3, "whole_process_s": whole}
            results.append(rec)
            sp = f"{rec['speedup']:.2f}x" if rec["speedup"] else "-"
            print(f"{kind:6} {impl:9} {rec['section_s']:9.3f} {sp:>8} {rec['overhead_per_task_ms']:17.2f} "
                  f"{rec['first_result_ms']:15.1f} {whole:15.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tasks": args.tasks, "duration": args.duration, "cpus": cpus, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

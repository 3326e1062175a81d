"""Task overhead side by side with what a Python user would otherwise reach for on one
machine (issue 18): swiftray, multiprocessing.Pool, concurrent.futures.ProcessPoolExecutor,
joblib (loky backend), Dask distributed (LocalCluster, 2 processes) and Ray, each with
2 worker processes, in one run.

    python benchmarks/task_peers.py [--peers-python PATH] [--impl swiftray,pool,...]
        [--sync N] [--batch N] [--rounds R] [--json PATH]

Workloads, for a no-op function:
  sync   one call at a time, waiting for each result (`get(f.remote())`, `pool.apply`,
         `executor.submit(f).result()`, ...): median and p99 round trip, calls/s;
  batch  N calls submitted at once, then gathered (`get([f.remote() ...])`,
         `apply_async` ×N, `executor.map`, joblib `Parallel`, Dask `client.map`): tasks/s,
         the median of R rounds.

`--peers-python`: a Python with joblib, distributed and ray installed (the benchmark venv,
never a project dependency); without it those peers are skipped. Each implementation
runs in its own process. Prints a table and optionally writes JSON. Measures; asserts
nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import child_output  # noqa: E402
import provenance  # noqa: E402

CHILD = r"""
import json, statistics, sys, time
impl, n_sync, n_batch, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def noop(*_):
    return None

def measure(call_sync, run_batch):
    for _ in range(50):
        call_sync()
    run_batch()
    lat = []
    for _ in range(n_sync):
        t = time.perf_counter(); call_sync(); lat.append(time.perf_counter() - t)
    lat.sort()
    rates = []
    for _ in range(rounds):
        t = time.perf_counter(); run_batch(); rates.append(n_batch / (time.perf_counter() - t))
    return {"sync_median_us": lat[len(lat) // 2] * 1e6, "sync_p99_us": lat[int(len(lat) * 0.99)] * 1e6,
            "sync_per_s": len(lat) / sum(lat), "batch_per_s": statistics.median(rates)}

if impl in ("swiftray", "ray"):
    api = __import__(impl)
    kw = {"include_dashboard": False, "log_to_driver": False} if impl == "ray" else {}
    api.init(num_cpus=2, **kw)
    f = api.remote(noop)
    out = measure(lambda: api.get(f.remote()), lambda: api.get([f.remote() for _ in range(n_batch)]))
    api.shutdown()
elif impl == "pool":
    import multiprocessing
    with multiprocessing.Pool(2) as pool:
        def batch():
            rs = [pool.apply_async(noop) for _ in range(n_batch)]
            [r.get() for r in rs]
        out = measure(lambda: pool.apply(noop), batch)
elif impl == "executor":
    from concurrent.futures import ProcessPoolExecutor, wait
    with ProcessPoolExecutor(2) as ex:
        def batch():
            fs = [ex.submit(noop) for _ in range(n_batch)]
            [f.result() for f in fs]
        out = measure(lambda: ex.submit(noop).result(), batch)
elif impl == "joblib":
    from joblib import Parallel, delayed
    with Parallel(n_jobs=2, backend="loky") as par:
        out = measure(lambda: par([delayed(noop)()]), lambda: par(delayed(noop)() for _ in range(n_batch)))
elif impl == "dask":
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        out = measure(lambda: client.submit(noop, pure=False).result(),
                      lambda: client.gather(client.map(noop, range(n_batch), pure=False)))
else:
    raise SystemExit(f"unknown impl {impl}")
print(json.dumps(out))
"""

ALL = ["swiftray", "pool", "executor", "joblib", "dask", "ray"]
NEEDS_PEERS = {"joblib", "dask", "ray"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", default=",".join(ALL))
    ap.add_argument("--peers-python", default=os.environ.get("SWIFTRAY_BENCH_RAY_PYTHON"))
    ap.add_argument("--sync", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"{'impl':10}{'sync median µs':>16}{'sync p99 µs':>13}{'sync /s':>10}{'batch tasks/s':>15}")
    for impl in args.impl.split(","):
        py = args.peers_python if impl in NEEDS_PEERS else sys.executable
        if not py:
            print(f"{impl:10} skipped: no --peers-python")
            continue
        r = subprocess.run([py, "-c", CHILD, impl, str(args.sync), str(args.batch), str(args.rounds)],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            print(f"{impl:10} failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        out = child_output.last_json(r.stdout)
        out["impl"] = impl
        rows.append(out)
        print(f"{impl:10}{out['sync_median_us']:16.0f}{out['sync_p99_us']:13.0f}{out['sync_per_s']:10,.0f}"
              f"{out['batch_per_s']:15,.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"measured": provenance.stamp(), "sync_calls": args.sync, "batch": args.batch, "rounds": args.rounds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

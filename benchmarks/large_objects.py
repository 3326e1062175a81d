"""Large objects: put/get of numpy arrays (100 MiB to 1 GiB) in GB/s, get latency, and
a memcpy of the same array in the same run as the physical limit.

    python benchmarks/large_objects.py [--impl swiftray|ray|both] [--sizes-mib 100,512,1024]
        [--repeat N] [--ray-python PATH] [--json PATH]

Each implementation runs in its own process. Measures; asserts nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, statistics
import numpy as np
impl, sizes, repeat = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], int(sys.argv[3])
if impl == "ray":
    import ray
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
else:
    import swiftray as ray
    ray.init(num_cpus=1, log_to_driver=False)
out = []
for mib in sizes:
    arr = np.ones(mib * 1024 * 1024 // 8, dtype=np.int64)
    dst = np.empty_like(arr)
    dst.fill(0)  # fault the pages in: memcpy should measure copying, not page faults
    nbytes = arr.nbytes
    copy, put, get = [], [], []
    for _ in range(repeat):
        t = time.perf_counter(); np.copyto(dst, arr); copy.append(time.perf_counter() - t)
        t = time.perf_counter(); ref = ray.put(arr); put.append(time.perf_counter() - t)
        t = time.perf_counter(); back = ray.get(ref); get.append(time.perf_counter() - t)
        assert back.shape == arr.shape
        del back, ref
    gb = nbytes / 1e9
    out.append({"mib": mib, "memcpy_gbps": gb / statistics.median(copy),
                "put_gbps": gb / statistics.median(put), "get_gbps": gb / statistics.median(get),
                # The first put of a size writes fresh (never touched) store pages.
                "put_first_gbps": gb / put[0],
                "get_latency_ms": statistics.median(get) * 1e3})
ray.shutdown()
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["swiftray", "ray", "both"], default="swiftray")
    ap.add_argument("--sizes-mib", default="100,512,1024")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ray-python", default=os.environ.get("SWIFTRAY_BENCH_RAY_PYTHON"))
    ap.add_argument("--json")
    args = ap.parse_args()
    impls = ["swiftray", "ray"] if args.impl == "both" else [args.impl]
    if "ray" in impls and not args.ray_python:
        if subprocess.run([sys.executable, "-c", "import ray"], capture_output=True).returncode == 0:
            args.ray_python = sys.executable
        else:
            impls = [i for i in impls if i != "ray"]
    records = []
    print(f"{'impl':9} {'MiB':>6} {'memcpy GB/s':>12} {'put GB/s':>9} {'put/memcpy':>10} {'get GB/s':>9} {'get ms':>8}")
    for impl in impls:
        py = args.ray_python if impl == "ray" else sys.executable
        r = subprocess.run([py, "-c", CHILD, impl, args.sizes_mib, str(args.repeat)],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            print(f"{impl:9} failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        for rec in json.loads(r.stdout.strip().splitlines()[-1]):
            rec["impl"] = impl
            records.append(rec)
            print(f"{impl:9} {rec['mib']:6d} {rec['memcpy_gbps']:12.2f} {rec['put_gbps']:9.2f} "
                  f"{rec['put_gbps'] / rec['memcpy_gbps']:10.2f} {rec['get_gbps']:9.2f} {rec['get_latency_ms']:8.2f}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()

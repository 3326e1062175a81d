"""The foundation's headline figures, measured on a local cluster (release build):

  init() to first result, a no-op task's sync round trip, 1000 no-op tasks submitted
  then gathered, and small put/get calls per second.

    python benchmarks/core_figures.py [--json PATH] [--repeat N]

Prints a table and optionally writes JSON. Measures; asserts nothing.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

FIRST_RESULT = r"""
import time
t0 = time.perf_counter()
import swiftray
t1 = time.perf_counter()
swiftray.init(num_cpus=2)
@swiftray.remote
def noop():
    return None
swiftray.get(noop.remote())
t2 = time.perf_counter()
print(t2 - t1, t2 - t0)
swiftray.shutdown()
"""


def init_to_first_result(repeat):
    out = []
    for _ in range(repeat):
        r = subprocess.run([sys.executable, "-c", FIRST_RESULT], capture_output=True, text=True, check=True)
        out.append(tuple(float(x) for x in r.stdout.split()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    args = ap.parse_args()
    k = 100 if args.quick else 1

    import swiftray

    first = init_to_first_result(args.repeat)
    swiftray.init(num_cpus=2)

    @swiftray.remote
    def noop():
        return None

    swiftray.get([noop.remote() for _ in range(100)])  # warm the pool

    lat = []
    for _ in range(2000 // k):
        t = time.perf_counter()
        swiftray.get(noop.remote())
        lat.append(time.perf_counter() - t)
    lat.sort()

    rates = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        swiftray.get([noop.remote() for _ in range(1000 // k)])
        rates.append(1000 // k / (time.perf_counter() - t))

    puts, gets = [], []
    r = swiftray.put(0)
    for _ in range(args.repeat):
        t = time.perf_counter()
        for i in range(10000 // k):
            swiftray.put(i)
        puts.append(10000 // k / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(10000 // k):
            swiftray.get(r)
        gets.append(10000 // k / (time.perf_counter() - t))
    swiftray.shutdown()

    results = {
        "init_to_first_result_ms": statistics.median(f[0] for f in first) * 1e3,
        "import_to_first_result_ms": statistics.median(f[1] for f in first) * 1e3,
        "sync_noop_task_median_us": lat[len(lat) // 2] * 1e6,
        "sync_noop_task_p99_us": lat[int(len(lat) * 0.99)] * 1e6,
        "noop_tasks_1000_per_s": statistics.median(rates),
        "put_small_per_s": statistics.median(puts),
        "get_small_per_s": statistics.median(gets),
    }
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"swiftray core figures ({machine}, {time.strftime('%Y-%m-%d')})")
    for k, v in results.items():
        print(f"  {k:32s} {v:12.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

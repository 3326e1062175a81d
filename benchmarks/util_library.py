"""Ray's utility library, swiftray against Ray (issue 22): util.queue.Queue put+get
round trips per second (one driver, one queue actor), util.multiprocessing.Pool.map
over 10,000 small items (items/s, pool start included and not), and a streaming
generator task's items per second (each small item read with `get` as it arrives).
Each implementation runs in a fresh driver process with 2 CPUs.

    python benchmarks/util_library.py [--items 10000] [--queue-ops 2000] [--stream-items 10000]
                                      [--rounds 3] [--ray-python PATH] [--json PATH]

`--ray-python`: also run Ray (2.60, in its own venv: never a project dependency;
scripts/ray-venv.sh makes one). Medians of the rounds. Measures; asserts nothing.
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
import json, sys, time
impl, items, ops, stream_items = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if impl == "ray":
    import ray as api
    from ray.util.queue import Queue
    from ray.util.multiprocessing import Pool
else:
    import swiftray as api
    from swiftray.util.queue import Queue
    from swiftray.util.multiprocessing import Pool
api.init(num_cpus=2, **({"include_dashboard": False, "log_to_driver": False} if impl == "ray" else {}))

def square(x):
    return x * x

out = {}
q = Queue()
for i in range(50):
    q.put(i); q.get()
t = time.perf_counter()
for i in range(ops):
    q.put(i)
    q.get()
out["queue_put_get_per_s"] = ops / (time.perf_counter() - t)
q.shutdown()
t = time.perf_counter()
pool = Pool(2)
started = time.perf_counter()
result = pool.map(square, range(items))
end = time.perf_counter()
assert result[-1] == (items - 1) ** 2
out["pool_map_items_per_s"] = items / (end - started)
out["pool_start_and_map_s"] = end - t
pool.terminate()

@api.remote(num_returns="streaming")
def produce(n):
    for i in range(n):
        yield i

assert [api.get(r) for r in produce.remote(10)] == list(range(10))  # warm: a worker is up
t = time.perf_counter()
n = 0
for ref in produce.remote(stream_items):
    api.get(ref)
    n += 1
assert n == stream_items
out["stream_items_per_s"] = stream_items / (time.perf_counter() - t)
print(json.dumps(out))
api.shutdown()
"""


def run(python, impl, items, ops, stream_items):
    r = subprocess.run([python, "-c", CHILD, impl, str(items), str(ops), str(stream_items)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"{impl} failed:\n{r.stderr[-2000:]}")
    return child_output.last_json(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--queue-ops", type=int, default=2000)
    ap.add_argument("--stream-items", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ray-python")
    ap.add_argument("--json")
    args = ap.parse_args()
    impls = [("swiftray", sys.executable)] + ([("ray", args.ray_python)] if args.ray_python else [])
    results = {}
    for _ in range(args.rounds):
        for impl, python in impls:  # interleaved: both see the same machine state
            for k, v in run(python, impl, args.items, args.queue_ops, args.stream_items).items():
                results.setdefault(impl, {}).setdefault(k, []).append(v)
    medians = {impl: {k: statistics.median(v) for k, v in r.items()} for impl, r in results.items()}
    print(f"{'impl':<10}{'Queue put+get/s':>17}{'Pool.map items/s':>18}{'Pool start+map s':>18}{'stream items/s':>16}")
    for impl, m in medians.items():
        print(f"{impl:<10}{m['queue_put_get_per_s']:>17,.0f}{m['pool_map_items_per_s']:>18,.0f}"
              f"{m['pool_start_and_map_s']:>18.3f}{m['stream_items_per_s']:>16,.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"measured": provenance.stamp(), "items": args.items, "queue_ops": args.queue_ops,
                       "stream_items": args.stream_items,
                       "rounds": args.rounds, "medians": medians, "all": results}, f, indent=1)


if __name__ == "__main__":
    main()

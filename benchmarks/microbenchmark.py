"""Ray's `ray microbenchmark` workloads (the names and the work per operation of Ray's
python/ray/_private/ray_perf.py), written anew, run against swiftray and/or Ray.

    python benchmarks/microbenchmark.py --impl swiftray|ray|both [--filter SUBSTRING]
        [--seconds S] [--trials N] [--json PATH] [--ray-python PATH]

`both` runs every workload once per implementation, each in its own subprocess,
alternating, and prints workload / swiftray per second / Ray per second / ratio.
Ray runs from `--ray-python` (default: $SWIFTRAY_BENCH_RAY_PYTHON, else this Python if
it can import ray). A workload whose feature an implementation lacks prints
`n/a (not implemented)`. Measures and prints; asserts nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


class NotImplementedFeature(Exception):
    pass


# --------------------------------------------------------------------------------------
# Workloads. Each takes the runtime module and returns (operation, count): the operation
# is timed repeatedly and each call counts as `count` units of work, as in ray_perf.py.
# `scale` < 1 shrinks data sizes for the smoke test only.


def _remote_class(ray, cls, **options):
    try:
        return ray.remote(**options)(cls) if options else ray.remote(cls)
    except TypeError as e:
        if "not supported" in str(e):
            raise NotImplementedFeature("actors") from None
        raise


def _need(ray, attr):
    obj = ray
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise NotImplementedFeature(attr)
        obj = getattr(obj, part)
    return obj


def single_client_get_calls(ray, scale):
    value = ray.put(0)
    return (lambda: ray.get(value)), 1


def single_client_put_calls(ray, scale):
    return (lambda: ray.put(0)), 1


def multi_client_put_calls(ray, scale):
    @ray.remote
    def do_put_small():
        for _ in range(100):
            ray.put(0)

    return (lambda: ray.get([do_put_small.remote() for _ in range(10)])), 1000


def single_client_put_gigabytes(ray, scale):
    import numpy as np
    arr = np.zeros(int(100 * 1024 * 1024 * scale), dtype=np.int64)
    return (lambda: ray.put(arr)), 8 * 0.1 * scale


def single_client_tasks_and_get_batch(ray, scale):
    @ray.remote
    def small_value():
        return b"ok"

    n = max(1, int(1000 * scale))
    return (lambda: ray.get([small_value.remote() for _ in range(n)])), 1


def multi_client_put_gigabytes(ray, scale):
    import numpy as np
    size = int(10 * 1024 * 1024 * scale)

    @ray.remote
    def do_put():
        for _ in range(10):
            ray.put(np.zeros(size, dtype=np.int64))

    return (lambda: ray.get([do_put.remote() for _ in range(10)])), 10 * 8 * 10 / 1024 * scale


def single_client_get_object_containing_10k_refs(ray, scale):
    n = max(1, int(10000 * scale))

    @ray.remote
    def create_object_containing_ref():
        return [ray.put(1) for _ in range(n)]

    obj = create_object_containing_ref.remote()
    ray.get(obj)
    return (lambda: ray.get(obj)), 1


def single_client_wait_1k_refs(ray, scale):
    @ray.remote
    def small_value():
        return b"ok"

    n = max(1, int(1000 * scale))

    def wait_multiple_refs():
        not_ready = [small_value.remote() for _ in range(n)]
        for _ in range(n):
            _ready, not_ready = ray.wait(not_ready)

    return wait_multiple_refs, 1


def single_client_tasks_sync(ray, scale):
    @ray.remote
    def small_value():
        return b"ok"

    return (lambda: ray.get(small_value.remote())), 1


def single_client_tasks_async(ray, scale):
    @ray.remote
    def small_value():
        return b"ok"

    n = max(1, int(1000 * scale))
    return (lambda: ray.get([small_value.remote() for _ in range(n)])), n


def _task_client(ray):
    @ray.remote
    def small_value():
        return b"ok"

    class Client:
        def small_value_batch(self, n):
            ray.get([small_value.remote() for _ in range(n)])

    return _remote_class(ray, Client)


def multi_client_tasks_async(ray, scale):
    Client = _task_client(ray)
    n, m = max(1, int(10000 * scale)), 4
    clients = [Client.remote() for _ in range(m)]
    return (lambda: ray.get([c.small_value_batch.remote(n) for c in clients])), n * m


class _Actor:
    def small_value(self):
        return b"ok"

    def small_value_arg(self, x):
        return b"ok"

    def small_value_batch(self, n):
        pass


class _AsyncActor:
    async def small_value(self):
        return b"ok"

    async def small_value_with_arg(self, x):
        return b"ok"


def _one_to_one_sync(ray, cls):
    a = _remote_class(ray, cls).remote()
    return (lambda: ray.get(a.small_value.remote())), 1


def _one_to_one_async(ray, scale, cls, **options):
    a = _remote_class(ray, cls, **options).remote()
    n = max(1, int(1000 * scale))
    return (lambda: ray.get([a.small_value.remote() for _ in range(n)])), n


def actor_calls_sync(ray, scale):
    return _one_to_one_sync(ray, _Actor)


def actor_calls_async(ray, scale):
    return _one_to_one_async(ray, scale, _Actor)


def actor_calls_concurrent(ray, scale):
    return _one_to_one_async(ray, scale, _Actor, max_concurrency=16)


def _caller_class(ray):
    class Caller:
        def __init__(self, actors):
            self.actors = actors

        def batch(self, n, with_arg=False):
            if with_arg:
                import numpy as np
                x = np.zeros(1)
                refs = [a.small_value_arg.remote(x) for a in self.actors for _ in range(n)]
            else:
                refs = [a.small_value.remote() for a in self.actors for _ in range(n)]
            ray.get(refs)

    return _remote_class(ray, Caller)


def _one_to_n(ray, scale, cls):
    """One driver calling n actors (n = half the CPUs, at least 2)."""
    actors = [_remote_class(ray, cls).remote() for _ in range(max(2, (os.cpu_count() or 2) // 2))]
    per_actor = max(1, int(1000 * scale)) // len(actors) or 1

    def op():
        ray.get([a.small_value.remote() for a in actors for _ in range(per_actor)])

    return op, per_actor * len(actors)


def _n_to_n(ray, scale, cls, with_arg=False):
    """n caller actors, each calling its own target actor."""
    actors = [_remote_class(ray, cls).remote() for _ in range(max(2, (os.cpu_count() or 2) // 2))]
    Caller = _caller_class(ray)
    callers = [Caller.remote([a]) for a in actors]
    n = max(1, int(1000 * scale))
    return (lambda: ray.get([c.batch.remote(n, with_arg) for c in callers])), n * len(callers)


def one_to_n_actor_calls_async(ray, scale):
    return _one_to_n(ray, scale, _Actor)


def n_to_n_actor_calls_async(ray, scale):
    return _n_to_n(ray, scale, _Actor)


def n_to_n_actor_calls_with_arg_async(ray, scale):
    return _n_to_n(ray, scale, _Actor, with_arg=True)


def async_actor_calls_sync(ray, scale):
    return _one_to_one_sync(ray, _AsyncActor)


def async_actor_calls_async(ray, scale):
    return _one_to_one_async(ray, scale, _AsyncActor)


def async_actor_calls_with_args_async(ray, scale):
    a = _remote_class(ray, _AsyncActor).remote()
    n = max(1, int(1000 * scale))
    arg = ray.put(0)
    return (lambda: ray.get([a.small_value_with_arg.remote(arg) for _ in range(n)])), n


def one_to_n_async_actor_calls_async(ray, scale):
    return _one_to_n(ray, scale, _AsyncActor)


def n_to_n_async_actor_calls_async(ray, scale):
    return _n_to_n(ray, scale, _AsyncActor)


def placement_group_create_removal(ray, scale):
    placement_group = _need(ray, "util.placement_group")
    remove = _need(ray, "util.remove_placement_group")
    n = max(1, int(100 * scale))

    def op():
        pgs = [placement_group([{"CPU": 0.001}]) for _ in range(n)]
        for pg in pgs:
            ray.get(pg.ready())
        for pg in pgs:
            remove(pg)

    return op, n


WORKLOADS = [
    ("single client get calls", single_client_get_calls),
    ("single client put calls", single_client_put_calls),
    ("multi client put calls", multi_client_put_calls),
    ("single client put gigabytes", single_client_put_gigabytes),
    ("single client tasks and get batch", single_client_tasks_and_get_batch),
    ("multi client put gigabytes", multi_client_put_gigabytes),
    ("single client get object containing 10k refs", single_client_get_object_containing_10k_refs),
    ("single client wait 1k refs", single_client_wait_1k_refs),
    ("single client tasks sync", single_client_tasks_sync),
    ("single client tasks async", single_client_tasks_async),
    ("multi client tasks async", multi_client_tasks_async),
    ("1:1 actor calls sync", actor_calls_sync),
    ("1:1 actor calls async", actor_calls_async),
    ("1:1 actor calls concurrent", actor_calls_concurrent),
    ("1:n actor calls async", one_to_n_actor_calls_async),
    ("n:n actor calls async", n_to_n_actor_calls_async),
    ("n:n actor calls with arg async", n_to_n_actor_calls_with_arg_async),
    ("1:1 async-actor calls sync", async_actor_calls_sync),
    ("1:1 async-actor calls async", async_actor_calls_async),
    ("1:1 async-actor calls with args async", async_actor_calls_with_args_async),
    ("1:n async-actor calls async", one_to_n_async_actor_calls_async),
    ("n:n async-actor calls async", n_to_n_async_actor_calls_async),
    ("placement group create/removal", placement_group_create_removal),
]


# --------------------------------------------------------------------------------------
# Child: one implementation, one workload.


def timeit(op, count, seconds, trials):
    """Warm up, then `trials` runs of about `seconds` each; per-second rates."""
    warm_end = time.perf_counter() + min(seconds, 1.0)
    op()
    while time.perf_counter() < warm_end:
        op()
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        n = 0
        while True:
            op()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        rates.append(n * count / elapsed)
    return statistics.mean(rates), (statistics.stdev(rates) if len(rates) > 1 else 0.0)


def run_child(impl, name, seconds, trials, scale, out):
    if impl == "ray":
        import ray
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    else:
        import swiftray as ray
        ray.init(log_to_driver=False)
    fn = dict(WORKLOADS)[name]
    record = {"workload": name, "impl": impl, "per_second": None, "stddev": None}
    try:
        op, count = fn(ray, scale)
        record["per_second"], record["stddev"] = timeit(op, count, seconds, trials)
    except NotImplementedFeature as e:
        record["missing"] = str(e)
    with open(out, "w") as f:
        json.dump(record, f)
    ray.shutdown()


# --------------------------------------------------------------------------------------
# Parent: subprocess per (workload, implementation), alternating; table and JSON.


def ray_python(arg):
    if arg:
        return arg
    env = os.environ.get("SWIFTRAY_BENCH_RAY_PYTHON")
    if env:
        return env
    ok = subprocess.run([sys.executable, "-c", "import ray"], capture_output=True).returncode == 0
    return sys.executable if ok else None


def run_one(python, impl, name, args):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [python, os.path.abspath(__file__), "--child", "--impl", impl, "--workload", name,
           "--seconds", str(args.seconds), "--trials", str(args.trials), "--scale", str(args.scale),
           "--json", out]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    try:
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            return {"workload": name, "impl": impl, "per_second": None, "stddev": None,
                    "error": " | ".join(tail)}
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def fmt(rec):
    if rec is None:
        return "-"
    if rec.get("per_second") is None:
        return "n/a (not implemented)" if "missing" in rec else "error"
    return f"{rec['per_second']:,.1f} ± {rec['stddev']:,.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["swiftray", "ray", "both"], default="swiftray")
    ap.add_argument("--filter", default="")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink data sizes (smoke test)")
    ap.add_argument("--json")
    ap.add_argument("--ray-python")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        run_child(args.impl, args.workload, args.seconds, args.trials, args.scale, args.json)
        return

    impls = ["swiftray", "ray"] if args.impl == "both" else [args.impl]
    pythons = {"swiftray": sys.executable, "ray": ray_python(args.ray_python)}
    if "ray" in impls and pythons["ray"] is None:
        print("Ray is not importable (set --ray-python or SWIFTRAY_BENCH_RAY_PYTHON); running swiftray only.",
              file=sys.stderr)
        impls = ["swiftray"]

    selected = [n for n, _ in WORKLOADS if args.filter.lower() in n.lower()]
    records = []
    width = max(len(n) for n in selected) if selected else 10
    header = f"{'workload':{width}}" + "".join(f"  {label:>24}" for impl, label in
                                               (("swiftray", "swiftray /s"), ("ray", "Ray /s")) if impl in impls)
    if len(impls) == 2:
        header += f"  {'ratio':>8}"
    print(header)
    print("-" * len(header))
    for i, name in enumerate(selected):
        order = impls if i % 2 == 0 else impls[::-1]  # alternate who goes first
        row = {}
        for impl in order:
            rec = run_one(pythons[impl], impl, name, args)
            row[impl] = rec
            records.append(rec)
        line = f"{name:{width}}" + "".join(f"  {fmt(row[impl]):>24}" for impl in ("swiftray", "ray") if impl in impls)
        if len(impls) == 2:
            s, r = row["swiftray"].get("per_second"), row["ray"].get("per_second")
            ratio = f"{s / r:.2f}x" if s and r else "-"
            line += f"  {ratio:>8}"
        print(line, flush=True)
        for rec in row.values():
            if rec.get("error"):
                print(f"    {rec['impl']} failed: {rec['error']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()

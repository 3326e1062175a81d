"""What metrics cost (issue 20): a user metric's record from Python, and a scrape of the
head's /metrics with many tasks and user series behind it.

    python benchmarks/metrics.py [--records 1000000] [--series 10000] [--tasks 20000] [--json PATH]

1. `Counter.inc()`, `Gauge.set()` and `Histogram.observe()` with one tag, `--records`
   times each in the driver: nanoseconds per call.
2. `--series` distinct counter series recorded, `--tasks` tiny tasks run; then the
   head's /metrics is scraped 20 times: the median time and the body's size.

Measures and prints; asserts nothing.
"""
import argparse
import json
import os
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import swiftray  # noqa: E402
from swiftray.util.metrics import Counter, Gauge, Histogram  # noqa: E402


def per_call_ns(fn, n):
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--series", type=int, default=10_000)
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--json")
    args = p.parse_args()
    swiftray.init(num_cpus=2, _metrics_export_port=0, log_to_driver=False)
    url = f"http://127.0.0.1:{swiftray.nodes()[0]['MetricsExportPort']}/metrics"
    figures = {}
    c = Counter("bench_counter", tag_keys=("k",))
    g = Gauge("bench_gauge", tag_keys=("k",))
    h = Histogram("bench_histogram", boundaries=[1, 10, 100], tag_keys=("k",))
    tags = {"k": "v"}
    figures["counter_inc_ns"] = per_call_ns(lambda: c.inc(tags=tags), args.records)
    figures["gauge_set_ns"] = per_call_ns(lambda: g.set(5, tags=tags), args.records)
    # Observations are kept until the next report (at most 100,000 wait): a report each 50,000.
    n = 0
    start = time.perf_counter_ns()
    for _ in range(args.records // 50_000 or 1):
        for _ in range(50_000):
            h.observe(7, tags=tags)
        n += 50_000
        swiftray._core.flush_task_events()
    figures["histogram_observe_ns_with_reports"] = (time.perf_counter_ns() - start) / n
    for i in range(args.series):
        c.inc(tags={"k": str(i)})
    swiftray._core.flush_task_events()

    @swiftray.remote
    def noop(i):
        return i

    for s in range(0, args.tasks, 10_000):
        swiftray.get([noop.remote(i) for i in range(s, min(args.tasks, s + 10_000))])
    swiftray._core.flush_task_events()
    times, size = [], 0
    for _ in range(20):
        t = time.perf_counter()
        body = urllib.request.urlopen(url, timeout=60).read()
        times.append(time.perf_counter() - t)
        size = len(body)
    figures.update(scrape_median_ms=statistics.median(times) * 1000, scrape_bytes=size,
                   series=args.series, tasks=args.tasks, records=args.records)
    swiftray.shutdown()
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()

"""Where the microseconds of a sync no-op task go (issue 18), a profile per side: a
driver with one worker calls `get(f.remote())` in a loop while `perf record -a -g`
samples both processes; each sample is put in a bucket by the frames on its stack,
and each bucket is shown as CPU microseconds per call (samples / rate / calls).

    python benchmarks/sync_breakdown.py [--seconds S] [--frequency HZ] [--json PATH]

Needs `perf` (linux-perf) and root or perf_event_paranoid <= 1. Under perf a call is
slower than without it (stack unwinding at each sample), so read the buckets as
shares; the sync benchmarks give the unperturbed round trip. Both sides spin between
tasks (`task_lane_spin_us`), so "waiting" is CPU a spinning thread burns, not time a
call spends. Measures; asserts nothing.
"""
import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

CHILD = r"""
import os, sys, time, swiftray
d = sys.argv[1]
swiftray.init(num_cpus=1)
@swiftray.remote
def noop():
    return os.getpid()
worker = swiftray.get(noop.remote())
for _ in range(2000):
    swiftray.get(noop.remote())
open(f"{d}/pids", "w").write(f"{os.getpid()} {worker}\n")
while not os.path.exists(f"{d}/go"):
    time.sleep(0.001)
n, t0 = 0, time.perf_counter()
while not os.path.exists(f"{d}/stop"):
    for _ in range(100):
        swiftray.get(noop.remote())
    n += 100
open(f"{d}/calls", "w").write(f"{n} {time.perf_counter() - t0}\n")
swiftray.shutdown()
"""

# First match wins, so the more specific buckets come first.
DRIVER = [
    ("submit: the core (spec, owner state, lease, encode, write)", r"CoreAPIO10submitTask"),
    ("get: the reply read, decoded, taken into the owner's state", r"readReplies|taskReplied|objectsArrived"),
    ("get: waiting for the reply (spin: poll + sched_yield)", r"CoreWorkerC4wait|readWhileWaiting"),
    ("get: the value to Python, the ref released", r"CoreAPIO3get|remove_local_ref|removeLocalRef"),
    ("Python: remote() and get() wrappers, the interpreter", r"_PyEval_EvalFrameDefault|Py"),
]
WORKER = [
    ("request read and decoded, queued", r"BinaryDecoder|decodeMessage|Lane.*decode|readFrames|TaskExecutorC.*push|accept"),
    ("waiting for the next task (spin: poll + sched_yield)", r"nextExecution|LaneServerC4poll|__sched_yield|__poll"),
    ("reply encoded and written", r"reply|Reply|encode"),
    ("the function run (Python)", r"_PyEval_EvalFrameDefault|Py"),
]


def samples(script_text):
    """(pid, [frames leaf first]) per sample of `perf script -F comm,pid,tid,ip,sym`."""
    cur = None
    for line in script_text.splitlines():
        if not line.strip():
            if cur:
                yield cur
            cur = None
            continue
        head = re.match(r"^\s*\S.*\s(\d+)/(\d+)\s*$", line)
        if head:
            cur = (int(head.group(1)), [])
        elif cur is not None:
            cur[1].append(line.strip().split(None, 1)[-1])
    if cur:
        yield cur


def bucket(frames, rules):
    joined = " ".join(frames)
    for name, rx in rules:
        if re.search(rx, joined):
            return name
    return "other (kernel entry, allocator, runtime)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--frequency", type=int, default=997)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not shutil.which("perf"):
        raise SystemExit("sync_breakdown: needs `perf` (apt-get install linux-perf)")
    d = tempfile.mkdtemp(prefix="sync-breakdown-")
    child = subprocess.Popen([sys.executable, "-c", CHILD, d])
    while not os.path.exists(f"{d}/pids"):
        if child.poll() is not None:
            raise SystemExit("sync_breakdown: the driver ended before it was ready")
        time.sleep(0.05)
    driver, worker = map(int, open(f"{d}/pids").read().split())
    data = f"{d}/perf.data"
    rec = subprocess.Popen(["perf", "record", "-a", "-g", "-F", str(a.frequency), "-o", data, "--", "sleep", str(a.seconds + 0.6)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    open(f"{d}/go", "w").close()
    time.sleep(a.seconds)
    open(f"{d}/stop", "w").close()
    rec.wait()
    child.wait(timeout=60)
    calls, secs = open(f"{d}/calls").read().split()
    calls, secs = int(calls), float(secs)
    text = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,ip,sym"], capture_output=True, text=True).stdout
    counts = {"driver": collections.Counter(), "worker": collections.Counter()}
    for pid, frames in samples(text):
        if pid == driver:
            counts["driver"][bucket(frames, DRIVER)] += 1
        elif pid == worker:
            counts["worker"][bucket(frames, WORKER)] += 1
    per_call = 1e6 / a.frequency / calls
    result = {"calls": calls, "seconds": secs, "round_trip_us_under_perf": 1e6 * secs / calls, "sides": {}}
    print(f"{calls} sync calls in {secs:.2f} s under perf: {1e6 * secs / calls:.0f} µs each")
    for side, c in counts.items():
        total = sum(c.values())
        print(f"\n{side} ({total * per_call:.1f} µs of CPU per call)")
        result["sides"][side] = {}
        for name, n in c.most_common():
            print(f"  {n * per_call:7.1f} µs  {name}")
            result["sides"][side][name] = round(n * per_call, 2)
    shutil.rmtree(d, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"measured": provenance.stamp(), **result}, f, indent=1)


if __name__ == "__main__":
    main()

"""Runtime-environment set-up times (issue 21): a 10 MiB working_dir and a pip
environment, first and cached, on a node daemon of this machine.

    python benchmarks/runtime_env.py [--mib 10] [--pip tabulate==0.9.0] [--rounds 3] [--json PATH]

Each round starts a fresh head (`swiftray start --head`), then runs two drivers one
after the other with the same runtime_env: the first packs, uploads, and has the node
fetch, unpack (or build the virtualenv) and start a worker in it; the second finds the
package in the head's store and the environment in the node's cache. For each driver:
`init` (packing, hashing, upload) and the first task's round trip (the node's set-up and
a worker start). Each driver is a fresh process. Prints a table and optionally writes
JSON. Measures; asserts nothing.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

DRIVER = r"""
import json, sys, time
import swiftray
address, env = sys.argv[1], json.loads(sys.argv[2])
t0 = time.perf_counter()
swiftray.init(address=address, runtime_env=env)
t1 = time.perf_counter()

@swiftray.remote
def probe():
    import os
    return os.getcwd()

swiftray.get(probe.remote(), timeout=900)
t2 = time.perf_counter()
print("RESULT", json.dumps({"init_s": t1 - t0, "first_task_s": t2 - t1}))
"""


def make_folder(root, mib):
    """`mib` MiB of incompressible data in 1 MiB files, and a module."""
    os.makedirs(root)
    with open(os.path.join(root, "mod.py"), "w") as f:
        f.write("X = 1\n")
    for i in range(mib):
        with open(os.path.join(root, f"blob{i}.bin"), "wb") as f:
            f.write(os.urandom(1 << 20))


def start_head(temp):
    out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--head", "--port", "0", "--num-cpus", "2",
                          "--temp-dir", temp, "--include-dashboard", "false"],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, SWIFTRAY_PYTHON=sys.executable))
    assert out.returncode == 0, out.stdout + out.stderr
    fields = dict(line.split(":", 1) for line in out.stdout.splitlines() if line.startswith(("Session:", "Address:")))
    session = fields["Session"].strip()
    with open(os.path.join(session, "daemon.pid")) as f:
        return fields["Address"].strip(), int(f.read())


def stop(pid):
    import signal
    import time
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def driver(address, env, script):
    out = subprocess.run([sys.executable, script, address, json.dumps(env)], capture_output=True, text=True,
                         timeout=1200, env=dict(os.environ, SWIFTRAY_PYTHON=sys.executable))
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"driver failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(line[7:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=10)
    ap.add_argument("--pip", default="tabulate==0.9.0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="srbench", dir="/tmp")
    script = os.path.join(work, "driver.py")
    with open(script, "w") as f:
        f.write(DRIVER)
    folder = os.path.join(work, "proj")
    make_folder(folder, a.mib)
    cases = {f"working_dir ({a.mib} MiB)": {"working_dir": folder}, f"pip [{a.pip}]": {"pip": [a.pip]}}
    results = {}
    try:
        for name, env in cases.items():
            runs = {"first": [], "cached": []}
            for r in range(a.rounds):
                temp = os.path.join(work, f"t{len(results)}{r}")
                address, pid = start_head(temp)
                try:
                    runs["first"].append(driver(address, env, script))
                    runs["cached"].append(driver(address, env, script))
                finally:
                    stop(pid)
            results[name] = {k: {m: statistics.median(x[m] for x in v) for m in ("init_s", "first_task_s")}
                             for k, v in runs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| runtime_env | set-up | init (s) | first task (s) | total (s) |")
    print("|---|---|---:|---:|---:|")
    for name, r in results.items():
        for k in ("first", "cached"):
            v = r[k]
            print(f"| {name} | {k} | {v['init_s']:.3f} | {v['first_task_s']:.3f} | {v['init_s'] + v['first_task_s']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"measured": provenance.stamp(), "rounds": a.rounds, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

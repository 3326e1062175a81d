"""Side-by-side benchmarks of two builds of swiftray, in one run.

    python benchmarks/compare_builds.py --a DIR_A --b DIR_B [--filter SUBSTRING ...]
        [--seconds S] [--trials N] [--rounds R] [--json PATH]

Each DIR holds a build's `_core.<EXT_SUFFIX>` and `swiftray` executable (as copied into
python/swiftray/ by the pip build). For each round, A and B take turns: the build is
copied into python/swiftray/ and `benchmarks/microbenchmark.py` runs the workloads in
its own process. Alternating in one run keeps the machine's drift out of the comparison.
The best figure of each build is printed side by side, with B/A. The build found in
python/swiftray/ at the start is put back at the end. Measures and prints; asserts nothing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join(os.path.dirname(HERE), "python", "swiftray")
CORE = "_core" + sysconfig.get_config_var("EXT_SUFFIX")
DEFAULT = ["single client tasks sync", "single client tasks async", "single client get calls",
           "single client put calls", "1:1 actor calls sync", "1:1 actor calls async",
           "single client wait 1k refs", "single client tasks and get batch"]


def install(src):
    shutil.copy2(os.path.join(src, CORE), os.path.join(PKG, CORE))
    shutil.copy2(os.path.join(src, "swiftray"), os.path.join(PKG, "_bin", "swiftray"))


def measure(workload, seconds, trials):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, os.path.join(HERE, "microbenchmark.py"), "--impl", "swiftray",
                        "--filter", workload, "--seconds", str(seconds), "--trials", str(trials), "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL)
        with open(out.name) as f:
            data = json.load(f)
    return {r["workload"]: r["per_second"] for r in data if isinstance(r.get("per_second"), (int, float))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--filter", action="append")
    p.add_argument("--seconds", type=float, default=2)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    saved = tempfile.mkdtemp()
    shutil.copy2(os.path.join(PKG, CORE), saved)
    shutil.copy2(os.path.join(PKG, "_bin", "swiftray"), saved)
    best = {"a": {}, "b": {}}
    try:
        for _ in range(args.rounds):
            for w in args.filter or DEFAULT:
                for side in ("a", "b"):
                    install(getattr(args, side))
                    for name, rate in measure(w, args.seconds, args.trials).items():
                        best[side][name] = max(best[side].get(name, 0.0), rate)
    finally:
        install(saved)
    print(f"{'workload':48} {'A /s':>12} {'B /s':>12} {'B/A':>6}")
    for name in best["a"]:
        a, b = best["a"][name], best["b"].get(name, 0.0)
        print(f"{name:48} {a:12,.0f} {b:12,.0f} {b / a if a else 0:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": args.a, "b": args.b, "best": best}, f, indent=2)


if __name__ == "__main__":
    main()

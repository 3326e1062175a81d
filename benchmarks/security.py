"""What authentication costs, side by side in one run: sync tasks/s (each task waited
for before the next: on the driver's node over Unix sockets, and on another node over
TCP) and the cross-node get rate of a 1 GiB array, on a 2-node local cluster with
authentication off, with the cluster token (the default), and with the token and mutual
TLS. The modes take turns round after round, so drift on this machine hits them alike.
Prints and writes JSON; asserts nothing.

    python3 benchmarks/security.py [--rounds 2] [--seconds 2] [--transfer-bytes 1073741824]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multinode import TRANSFER, field, sh, transfer_figures  # noqa: E402

SYNC = """
import sys, time
import swiftray as ray
ray.init(address=sys.argv[1])
seconds = float(sys.argv[2])
@ray.remote
def here():
    return 1
@ray.remote(resources={"far": 1})
def far():
    return 1
for f in (here, far):
    for _ in range(200):
        ray.get(f.remote())  # warm: workers up, leases held
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ray.get(f.remote())
        n += 1
    print(f.__name__ + "_tasks_per_s", n / (time.perf_counter() - t0))
"""


def certificates(folder):
    """A CA and a certificate it signed for 127.0.0.1 (openssl)."""
    ext = os.path.join(folder, "ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    p = {k: os.path.join(folder, k) for k in ("ca.key", "ca.crt", "node.key", "node.csr", "node.crt")}
    sh(["openssl", "req", "-x509", *ec, "-keyout", p["ca.key"], "-out", p["ca.crt"], "-days", "1", "-subj", "/CN=bench CA"])
    sh(["openssl", "req", *ec, "-keyout", p["node.key"], "-out", p["node.csr"], "-subj", "/CN=bench node"])
    sh(["openssl", "x509", "-req", "-in", p["node.csr"], "-CA", p["ca.crt"], "-CAkey", p["ca.key"], "-CAcreateserial",
        "-out", p["node.crt"], "-days", "1", "-extfile", ext])
    return {"SWIFTRAY_USE_TLS": "1", "SWIFTRAY_TLS_SERVER_CERT": p["node.crt"], "SWIFTRAY_TLS_SERVER_KEY": p["node.key"],
            "SWIFTRAY_TLS_CA_CERT": p["ca.crt"]}


def run_mode(env, seconds, nbytes, trials):
    root = tempfile.mkdtemp(prefix="sr", dir="/tmp")
    cli = [sys.executable, "-m", "swiftray", "start", "--num-cpus", "1", "--temp-dir", root]
    try:
        out = sh(cli + ["--head", "--port", "0"], env=env)
        address = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Address:"))
        sh(cli + ["--address", address, "--resources", '{"far": 1}'], env=env)
        sync = sh([sys.executable, "-c", SYNC, address, str(seconds)], env=env, timeout=600)
        moved = sh([sys.executable, "-c", TRANSFER.format(mod="swiftray"), address, str(nbytes), str(trials)],
                   env=env, timeout=600)
    finally:
        subprocess.run([sys.executable, "-m", "swiftray", "stop", "--temp-dir", root], env=env, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    return {"sync_same_node_tasks_per_s": field(sync, "here_tasks_per_s"),
            "sync_other_node_tasks_per_s": field(sync, "far_tasks_per_s"),
            "transfer": transfer_figures(moved, nbytes)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--transfer-bytes", type=int, default=1 << 30)
    ap.add_argument("--transfer-trials", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "security.json"))
    args = ap.parse_args()
    certs = tempfile.mkdtemp(prefix="srcerts")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SWIFTRAY_AUTH", "RAY_AUTH", "SWIFTRAY_TLS", "SWIFTRAY_USE_TLS", "RAY_TLS", "RAY_USE_TLS"))}
    token = {"SWIFTRAY_AUTH_TOKEN": "bench-" + os.urandom(16).hex()}
    modes = {"off": dict(base, SWIFTRAY_AUTH_MODE="disabled"), "token": dict(base, **token),
             "token+tls": dict(base, **token, **certificates(certs))}
    runs = {m: [] for m in modes}
    try:
        for r in range(args.rounds):
            for m, env in modes.items():
                runs[m].append(run_mode(env, args.seconds, args.transfer_bytes, args.transfer_trials))
                x = runs[m][-1]
                print(f"round {r + 1} {m:10s} sync tasks/s: same node {x['sync_same_node_tasks_per_s']:,.0f}, "
                      f"other node {x['sync_other_node_tasks_per_s']:,.0f}; cross-node get of "
                      f"{args.transfer_bytes / (1 << 30):.2f} GiB: best {x['transfer']['best_gb_per_s']:.2f} GB/s", flush=True)
    finally:
        shutil.rmtree(certs, ignore_errors=True)
    summary = {}
    for m, xs in runs.items():
        summary[m] = {"sync_same_node_tasks_per_s": max(x["sync_same_node_tasks_per_s"] for x in xs),
                      "sync_other_node_tasks_per_s": max(x["sync_other_node_tasks_per_s"] for x in xs),
                      "transfer_best_gb_per_s": max(x["transfer"]["best_gb_per_s"] for x in xs)}
        s = summary[m]
        print(f"best of {len(xs)} {m:10s}: sync tasks/s same node {s['sync_same_node_tasks_per_s']:,.0f}, other node "
              f"{s['sync_other_node_tasks_per_s']:,.0f}; cross-node get {s['transfer_best_gb_per_s']:.2f} GB/s")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"runs": runs, "best": summary}, f, indent=2)


if __name__ == "__main__":
    main()

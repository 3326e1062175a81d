"""Hosts for multi-node tests on one machine: each a Linux network namespace with its own
IP on a private bridge, and its own /tmp and /dev/shm (a mount namespace), so a node on
one host reaches another only over the network, as on separate machines.

Host 0 is this namespace (the bridge's address): the head and the test's own driver run
here. Hosts 1..N are namespaces `sr<tag>h<i>`; every command for one runs through
`nsenter` into its namespaces, and each of its processes (node daemons, their workers,
drivers) stays there. Partitions are made with the links and the neighbour tables:
`cut(h)` takes a host's link down (it reaches no one), `cut_between(a, b)` makes a and b
send to a MAC no one has (a silent, two-way cut between those two only, as a firewall
dropping packets would), `split(side)` cuts every pair across two groups, `heal()` undoes
them all. Every call is bounded in time.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN). Only the private range 10.213.0.0/16 is used,
and only addresses of the namespaces made here. Everything is torn down by pid and by
name in `close()`; harnesses left by a killed run are swept when the next one starts.

Manual use:  python3 tests/hosts.py up 3     (prints the hosts, waits for Ctrl-C)
             python3 tests/hosts.py sweep    (removes every harness whose owner is gone)
"""
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REGISTRY = "/run/swiftray-test-hosts"
NOWHERE = "02:00:5e:00:de:ad"  # a locally administered MAC no interface has
STEP_TIMEOUT = 20


def _sh(args, check=True, timeout=STEP_TIMEOUT):
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Host:
    """One machine of the harness: a network namespace with one address, and a private
    /tmp and /dev/shm (directories of this machine bound there, so the test can read a
    node's session through `path`)."""

    def __init__(self, harness, index):
        self.harness = harness
        self.index = index
        tag = harness.tag
        self.name = f"sr{tag}h{index}"
        self.veth = f"srv{tag}h{index}"  # this namespace's end, on the bridge
        self.ip = str(harness.network.network_address + 10 + index)
        self.tmp = os.path.join(harness.root, f"h{index}")
        self.shm = f"/dev/shm/srh-{tag}-h{index}"
        self.holder = None

    def __repr__(self):
        return f"<host {self.index} {self.ip} netns {self.name}>"

    def create(self):
        h = self.harness
        for d in (self.tmp, self.shm):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o1777)
        _sh(["ip", "netns", "add", self.name])
        _sh(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.name])
        _sh(["ip", "link", "set", self.veth, "master", h.bridge])
        _sh(["ip", "link", "set", self.veth, "up"])
        self.ip_cmd("addr", "add", f"{self.ip}/{h.network.prefixlen}", "dev", "eth0")
        self.ip_cmd("link", "set", "eth0", "up")
        self.ip_cmd("link", "set", "lo", "up")
        self.ip_cmd("route", "add", "default", "via", h.ip)
        # The holder keeps the mount namespace (its own /tmp and /dev/shm) for every later
        # command; `unshare` makes its mounts private, so nothing leaks to this machine.
        # The code under test stays visible when it lives under /tmp (a fresh clone in CI):
        # as on real machines that each have the project checked out at the same path.
        # Bound into the host's /tmp first, and carried along by its recursive bind.
        shares = ""
        for d in h.shared:
            inside = os.path.join(self.tmp, os.path.relpath(d, "/tmp"))
            os.makedirs(inside, exist_ok=True)
            shares += f"mount --bind {d} {inside} && "
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.name, "unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"{shares}mount --rbind {self.tmp} /tmp && mount --bind {self.shm} /dev/shm && echo ready && exec sleep 100000000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"host {self.index} did not come up: {self.holder.stderr.read()}")

    def ip_cmd(self, *args, check=True):
        return _sh(["ip", "netns", "exec", self.name, "ip", *args], check=check)

    def command(self, args, cwd="/"):
        """`args` as run on this host (for subprocess)."""
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", f"--wd={cwd}", "--", *args]

    def run(self, args, cwd="/", **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return subprocess.run(self.command(args, cwd), **kw)

    def popen(self, args, cwd="/", **kw):
        return subprocess.Popen(self.command(args, cwd), **kw)

    def path(self, inside):
        """Where a path of this host's /tmp or /dev/shm is, seen from this machine."""
        for mount, here in (("/tmp", self.tmp), ("/dev/shm", self.shm)):
            if inside == mount or inside.startswith(mount + "/"):
                return here + inside[len(mount):]
        return inside

    def pids(self):
        out = _sh(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in out.stdout.split() if p.isdigit()]

    def destroy(self):
        for p in self.pids() + ([self.holder.pid] if self.holder else []):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.holder:
            try:
                self.holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _sh(["ip", "netns", "del", self.name], check=False)
        _sh(["ip", "link", "del", self.veth], check=False)
        shutil.rmtree(self.shm, ignore_errors=True)


class Hosts:
    """`count` hosts on a fresh bridge, plus host 0 (this namespace). Index it: hosts[1]."""

    def __init__(self, count):
        if os.geteuid() != 0:
            raise RuntimeError("the network-namespace hosts need root (ip netns, mount)")
        sweep()
        self.tag = os.urandom(2).hex()
        self.network = _free_network()
        self.ip = str(self.network.network_address + 1)
        self.bridge = f"srb{self.tag}"
        self.root = f"/tmp/srh-{self.tag}"
        self.hosts = []
        self._cuts = set()  # pairs cut by cut_between
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.shared = [repo] if repo.startswith("/tmp/") else []
        os.makedirs(REGISTRY, exist_ok=True)
        self._record()
        try:
            _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
            _sh(["ip", "addr", "add", f"{self.ip}/{self.network.prefixlen}", "dev", self.bridge])
            _sh(["ip", "link", "set", self.bridge, "up"])
            for i in range(1, count + 1):
                self.add()
        except BaseException:
            self.close()
            raise

    def __getitem__(self, i):
        return self.hosts[i - 1]

    def __iter__(self):
        return iter(self.hosts)

    def add(self):
        h = Host(self, len(self.hosts) + 1)
        self.hosts.append(h)
        self._record()
        h.create()
        return h

    def _record(self):
        with open(os.path.join(REGISTRY, self.tag), "w") as f:
            json.dump({"owner": os.getpid(), "bridge": self.bridge, "root": self.root,
                       "hosts": [[h.name, h.veth, h.shm] for h in self.hosts]}, f)

    # Partitions. `a`, `b`: a Host, or 0 for this namespace.

    def _ip_of(self, h):
        return self.ip if h == 0 else h.ip

    def _neigh(self, at, other, op):
        args = ["neigh", op, self._ip_of(other)] + (["lladdr", NOWHERE, "nud", "permanent"] if op == "replace" else [])
        if at == 0:
            _sh(["ip", *args, "dev", self.bridge], check=op == "replace")
        else:
            at.ip_cmd(*args, "dev", "eth0", check=op == "replace")

    def cut(self, host):
        """`host` reaches no one and no one reaches it (its link is down)."""
        _sh(["ip", "link", "set", host.veth, "down"])

    def cut_between(self, a, b):
        """`a` and `b` no longer reach each other; both still reach everyone else."""
        self._neigh(a, b, "replace")
        self._neigh(b, a, "replace")
        self._cuts.add((a, b))

    def split(self, side):
        """Every host in `side` (host 0 may be in it) loses the hosts not in it."""
        everyone = [0, *self.hosts]
        for a in side:
            for b in everyone:
                if b not in side:
                    self.cut_between(a, b)

    def heal(self):
        """Undoes every cut: links up, neighbour entries learnt afresh."""
        for h in self.hosts:
            _sh(["ip", "link", "set", h.veth, "up"], check=False)
        for a, b in list(self._cuts):
            self._neigh(a, b, "del")
            self._neigh(b, a, "del")
        self._cuts.clear()

    def close(self):
        for h in reversed(self.hosts):
            h.destroy()
        _sh(["ip", "link", "del", self.bridge], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            os.unlink(os.path.join(REGISTRY, self.tag))
        except FileNotFoundError:
            pass


def _free_network():
    used = _sh(["ip", "-4", "-o", "addr"]).stdout
    for third in list(range(0, 256)):
        net = ipaddress.ip_network(f"10.213.{(os.getpid() + third) % 256}.0/24")
        if f" {net.network_address + 1}/" not in used:
            return net
    raise RuntimeError("no free /24 left in 10.213.0.0/16 for test hosts")


def sweep():
    """Tears down every harness whose owning process is gone (a killed test run)."""
    if not os.path.isdir(REGISTRY):
        return
    for tag in os.listdir(REGISTRY):
        path = os.path.join(REGISTRY, tag)
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if _alive(rec.get("owner", 0)):
            continue
        for name, veth, shm in rec.get("hosts", []):
            out = _sh(["ip", "netns", "pids", name], check=False)
            for p in out.stdout.split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _sh(["ip", "netns", "del", name], check=False)
            _sh(["ip", "link", "del", veth], check=False)
            shutil.rmtree(shm, ignore_errors=True)
        _sh(["ip", "link", "del", rec.get("bridge", "")], check=False)
        if str(rec.get("root", "")).startswith("/tmp/srh-"):
            shutil.rmtree(rec["root"], ignore_errors=True)
        os.unlink(path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["sweep"]:
        sweep()
    elif sys.argv[1:2] == ["up"]:
        hs = Hosts(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
        print(f"host 0: this namespace, {hs.ip} on bridge {hs.bridge}")
        for h in hs:
            print(f"host {h.index}: {h.ip}  run there: {' '.join(h.command(['bash']))}")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            hs.close()
    else:
        print(__doc__)

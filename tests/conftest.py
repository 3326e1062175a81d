import os
import subprocess
import sys
import textwrap

import pytest

# Every breach of the lock rule (Sources/Runtime/Concurrency/Locked.swift) traps with its
# reason, in this process and in every process it starts (workers, node daemons).
os.environ.setdefault("SWIFTRAY_LOCK_CHECKS", "1")
# One cluster token for every process the tests start (daemons, drivers, workers), so no
# test reads or writes ~/.swiftray; tests of the token's sources set their own.
os.environ.setdefault("SWIFTRAY_AUTH_TOKEN", "test-" + os.urandom(16).hex())

import swiftray  # noqa: E402


@pytest.fixture
def ray2():
    """A fresh local cluster with 2 CPUs, shut down after the test."""
    swiftray.shutdown()
    swiftray.init(num_cpus=2, _system_config={"infeasible_retry_ms": 200})
    yield swiftray
    swiftray.shutdown()


@pytest.fixture(scope="module")
def ray_module():
    """One 2-CPU local cluster shared by a module's fast tests."""
    swiftray.shutdown()
    swiftray.init(num_cpus=2)
    yield swiftray
    swiftray.shutdown()


def run_script(tmp_path, source, timeout=120, args=(), via=None, env=None):
    """Runs `source` as a separate driver process; returns CompletedProcess."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source))
    cmd = [sys.executable, str(path), *args] if via is None else [*via, str(path), *args]
    e = dict(os.environ, SWIFTRAY_PYTHON=sys.executable)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=str(tmp_path))


class Cluster:
    """Node daemons with their own ports, resources and temp dir (like Ray's
    cluster_utils.Cluster): the first added is the head. Stopped by pid.

    On 127.0.0.1 by default. Given `hosts` (a tests/hosts.py `Hosts`), the head runs here
    on the bridge's address and every other node on a host of its own (its own IP, /tmp
    and /dev/shm; its address detected, not given): `add_node(host=...)` picks one, else
    the next unused, `host="here"` this namespace (beside the head, as a driver's own node)."""

    def __init__(self, health_check_period_ms=200, health_check_failure_threshold=3, env=None, hosts=None):
        import tempfile
        self.root = tempfile.mkdtemp(prefix="sr", dir="/tmp")  # short: Unix socket paths are limited
        self.env = dict(os.environ, SWIFTRAY_PYTHON=sys.executable,
                        SWIFTRAY_HEALTH_CHECK_PERIOD_MS=str(health_check_period_ms),
                        SWIFTRAY_HEALTH_CHECK_FAILURE_THRESHOLD=str(health_check_failure_threshold),
                        SWIFTRAY_HEALTH_CHECK_TIMEOUT_MS="1000", **(env or {}))
        self.hosts = hosts
        self.address = None
        self.nodes = []  # dicts: pid, session (as its host names it), host (None: here), files (the session, from here)

    def add_node(self, num_cpus=1, resources=None, object_store_memory=None, head_port=None, host=None):
        """The first node is the head (a free port); `head_port` starts a head again there."""
        import json
        args = [sys.executable, "-m", "swiftray", "start", "--num-cpus", str(num_cpus)]
        head = head_port is not None or self.address is None
        if head:
            args += ["--head", "--port", str(head_port or 0),
                     "--node-ip-address", self.hosts.ip if self.hosts else "127.0.0.1"]
        else:
            args += ["--address", self.address]
        if self.hosts and not head and host != "here":
            if host is None:
                used = {n["host"] for n in self.nodes}
                host = next((h for h in self.hosts if h not in used), None) or self.hosts.add()
            args += ["--temp-dir", "/tmp/sr"]  # the host's own /tmp
        else:
            host = None
            args += ["--temp-dir", self.root]
        if resources:
            args += ["--resources", json.dumps(resources)]
        if object_store_memory:
            args += ["--object-store-memory", str(object_store_memory)]
        if host is None:
            out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=self.env)
        else:
            out = host.run(args, timeout=60, env=self.env)
        assert out.returncode == 0, out.stdout + out.stderr
        fields = dict(line.split(":", 1) for line in out.stdout.splitlines()
                      if line.startswith(("Session:", "Address:", "Metrics (Prometheus):", "Dashboard (login link")))
        if self.address is None:
            self.address = fields["Address"].strip()
        session = fields["Session"].strip()
        files = host.path(session) if host else session
        with open(os.path.join(files, "daemon.pid")) as f:
            node = {"pid": int(f.read()), "session": session, "host": host, "files": files,
                    "metrics": fields.get("Metrics (Prometheus)", "").strip(),
                    "dashboard": fields.get("Dashboard (login link, keep it private)", "").strip()}
        self.nodes.append(node)
        return node

    def run_driver(self, node, tmp_path, source, timeout=120, args=()):
        """`source` as a driver process on `node`'s machine, joined through its session."""
        if node["host"] is None:
            return run_script(tmp_path, source, timeout=timeout, args=(node["session"], *args))
        host = node["host"]
        name = f"driver-{os.urandom(4).hex()}.py"
        with open(host.path(f"/tmp/{name}"), "w") as f:
            f.write(textwrap.dedent(source))
        e = dict(os.environ, SWIFTRAY_PYTHON=sys.executable)
        return host.run([sys.executable, f"/tmp/{name}", node["session"], *args], cwd="/tmp", timeout=timeout, env=e)

    def kill_node(self, node, sig=9):
        os.kill(node["pid"], sig)

    def shutdown(self):
        import shutil
        import signal
        import time
        for n in self.nodes:
            try:
                os.kill(n["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + 10
        for n in self.nodes:
            while time.time() < end and _alive(n["pid"]):
                time.sleep(0.05)
            if _alive(n["pid"]):
                os.kill(n["pid"], signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def redis_address():
    """A real redis-server on a free loopback port for one test (Debian's redis-server)."""
    import socket
    import time
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    end = time.time() + 10
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.02)
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def make_certificates(folder, name="cluster", hosts=("127.0.0.1",)):
    """A CA and one certificate it signed (for the IPs `hosts`, usable by servers and
    clients), made with openssl into `folder`: {"ca", "cert", "key"} paths, and `env`,
    the variables that turn swiftray's mutual TLS on with them."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    ca_key, ca = f"{folder}/{name}-ca.key", f"{folder}/{name}-ca.crt"
    key, csr, cert = f"{folder}/{name}.key", f"{folder}/{name}.csr", f"{folder}/{name}.crt"
    ext = f"{folder}/{name}.ext"
    with open(ext, "w") as f:
        f.write("subjectAltName=" + ",".join(f"IP:{h}" for h in hosts) + "\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
                 "-subj", f"/CN={name} test CA"],
                ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={name} node"],
                ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-out", cert, "-days", "2", "-extfile", ext]):
        subprocess.run(cmd, check=True, capture_output=True)
    return {"ca": ca, "cert": cert, "key": key,
            "env": {"SWIFTRAY_USE_TLS": "1", "SWIFTRAY_TLS_SERVER_CERT": cert,
                    "SWIFTRAY_TLS_SERVER_KEY": key, "SWIFTRAY_TLS_CA_CERT": ca}}


def signal_and_waiter():
    """A `Signal` actor class (num_cpus=0) and two tasks on it: `wait_for(signal)` blocks in
    `get` until `send(signal)` has run; each returns its worker's pid. Defined per call,
    so they travel by value to any cluster."""
    import time

    @swiftray.remote(num_cpus=0)
    class Signal:
        def __init__(self):
            self.set = False

        def send(self):
            self.set = True

        def is_set(self):
            return self.set

    @swiftray.remote
    def wait_for(signal):
        deadline = time.time() + 60
        while not swiftray.get(signal.is_set.remote()):
            assert time.time() < deadline, "the task it waits for never ran"
            time.sleep(0.01)
        return os.getpid()

    @swiftray.remote
    def send(signal):
        swiftray.get(signal.send.remote())
        return os.getpid()

    return Signal, wait_for, send


def counter_actor(resource):
    """A `Counter` actor class needing one unit of `resource` (max_restarts=1,
    max_task_retries=1): `hit()` counts its calls and returns (pid, node id, count), so
    a test sees which incarnation answered and whether its state is fresh."""
    @swiftray.remote(resources={resource: 1}, max_restarts=1, max_task_retries=1)
    class Counter:
        def __init__(self):
            self.calls = 0

        def hit(self):
            self.calls += 1
            return os.getpid(), swiftray.get_runtime_context().get_node_id(), self.calls

    return Counter


def recorder_on(node_id):
    """A `Recorder` actor pinned to node `node_id` (num_cpus=0): tasks anywhere call
    `add.remote(x)`, the test reads `items.remote()`. For what tasks on other machines
    report, which a shared file cannot carry between hosts."""
    from swiftray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @swiftray.remote(num_cpus=0)
    class Recorder:
        def __init__(self):
            self.seen = []

        def add(self, x):
            self.seen.append(x)

        def items(self):
            return list(self.seen)

    return Recorder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()


def wait_until(pred, timeout=10.0, interval=0.02):
    """Polls `pred` every `interval` s until it holds or `timeout` passes; returns its
    last value."""
    import time
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def pid_alive(pid):
    """True while `pid` runs (a zombie counts as gone)."""
    return _alive(pid)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def cluster():
    swiftray.shutdown()
    c = Cluster()
    yield c
    swiftray.shutdown()
    c.shutdown()


@pytest.fixture(scope="session")
def hosts():
    """Network-namespace hosts (tests/hosts.py), made once per run and torn down after;
    more are added as clusters ask for them."""
    from hosts import Hosts
    hs = Hosts(3)
    yield hs
    hs.close()


# A driver (argv[1]: its node's session) that runs a no-op task after another, printing
# "ok" for each, until something raises: then "ERROR <type> <message>". For drivers on
# a host that is then cut off.
GET_LOOP_DRIVER = """
import sys, time
import swiftray
swiftray.init(address=sys.argv[1])

@swiftray.remote
def one():
    return 1

try:
    while True:
        assert swiftray.get(one.remote(), timeout=300) == 1
        print("ok", flush=True)
        time.sleep(0.05)
except Exception as e:
    print("ERROR", type(e).__name__, str(e).replace("\\n", " ")[:600], flush=True)
"""


def clean_hosts(hosts):
    """Heals every cut and kills what a test left on the hosts (their holders stay)."""
    hosts.heal()
    for h in hosts:
        for p in h.pids():
            if p != h.holder.pid:
                try:
                    os.kill(p, 9)
                except ProcessLookupError:
                    pass


@pytest.fixture(params=["loopback", "hosts"])
def any_cluster(request):
    """A `Cluster` on 127.0.0.1, and again with every node but the head on a host of its
    own: the same test runs on both."""
    swiftray.shutdown()
    hs = request.getfixturevalue("hosts") if request.param == "hosts" else None
    c = Cluster(hosts=hs)
    yield c
    if hs:
        hs.heal()
    swiftray.shutdown()
    c.shutdown()
    if hs:
        clean_hosts(hs)


@pytest.fixture
def host_cluster(hosts):
    """A `Cluster` factory on the network-namespace hosts: `host_cluster(**Cluster args)`;
    every cut is healed and everything stopped after the test."""
    made = []

    def make(**kw):
        made.append(Cluster(hosts=hosts, **kw))
        return made[-1]

    swiftray.shutdown()
    yield make
    hosts.heal()
    swiftray.shutdown()
    for c in made:
        c.shutdown()
    clean_hosts(hosts)

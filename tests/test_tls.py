"""Mutual TLS between machines (issue 15): with SWIFTRAY_USE_TLS=1 every TCP listener
(ControlService, NodeManager, object store, worker data plane) speaks TLS and accepts only
peers whose certificate the cluster's CA signed; a plaintext peer, or one from another CA,
is refused before anything it sends is read, and the cluster keeps serving. Certificates
are made here with openssl; the Redis connection can use TLS too."""
import os
import socket
import ssl
import subprocess
import sys

import grpc
import pytest

import swiftray
from conftest import Cluster, make_certificates, wait_until
from test_security import (READ_CHUNK, STORE_STATS, TOKEN, _can_connect, _exchange, _frame, _grpc_call, _grpc_target,
                           _listening_tcp_ports, _preamble)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    return {"cluster": make_certificates(folder, "cluster"), "rogue": make_certificates(folder, "rogue")}


@pytest.fixture
def tls_cluster(certs, monkeypatch):
    """Daemons and this driver with the cluster's certificates."""
    swiftray.shutdown()
    for k, v in certs["cluster"]["env"].items():
        monkeypatch.setenv(k, v)
    c = Cluster(env=certs["cluster"]["env"])
    yield c
    swiftray.shutdown()
    c.shutdown()


def _driver(code, env, timeout=120):
    """Runs `code` as another driver process with `env` on top of ours: (rc, output)."""
    e = dict(os.environ, SWIFTRAY_PYTHON=sys.executable)
    for k in list(e):
        if k.startswith(("SWIFTRAY_TLS_", "SWIFTRAY_USE_TLS")):
            del e[k]
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=e)
    return out.returncode, out.stdout + out.stderr


def _tls_exchange(endpoint, data, pem, wait=2.0):
    """As `_exchange`, inside TLS with the certificate `pem` (a make_certificates dict):
    (bytes, closed); a refused handshake counts as closed with nothing read."""
    host, _, port = endpoint[len("tcp:"):].rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the client side is not what is tested
    ctx.load_cert_chain(pem["cert"], pem["key"])
    raw = socket.create_connection((host, int(port)), timeout=10)
    try:
        s = ctx.wrap_socket(raw)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        raw.close()
        return b"", True
    try:
        s.sendall(data)
        s.settimeout(wait)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return got, False
            except (ssl.SSLError, ConnectionResetError):
                return got, True
            if not chunk:
                return got, True
            got += chunk
    finally:
        s.close()


def _only_a_tls_alert(got):
    """True when a plaintext peer got nothing, or only TLS's own alert record (type 21),
    never a reply of ours."""
    return got == b"" or (got[0] == 21 and len(got) <= 7)


def _tls_grpc_call(target, method, pem, ca, body=b"", token=TOKEN):
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read(),
                                         private_key=open(pem["key"], "rb").read(),
                                         certificate_chain=open(pem["cert"], "rb").read())
    # The cluster's certificates name IPs; gRPC checks the name, so name it as the cert does.
    opts = [("grpc.ssl_target_name_override", "127.0.0.1")]
    with grpc.secure_channel(target, creds, options=opts) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return call(body, metadata=[("authorization", f"Bearer {token}")], timeout=10)
        except grpc.RpcError as e:
            return e


def test_a_three_node_cluster_with_the_token_and_mutual_tls_runs_tasks_actors_big_objects_and_recovers(tls_cluster, certs):
    c = tls_cluster
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1, resources={"a": 2})  # the actor holds one
    doomed = c.add_node(num_cpus=1, resources={"b": 1})
    swiftray.init(address=c.address)
    assert len([n for n in swiftray.nodes() if n["Alive"]]) == 3

    @swiftray.remote
    def square(x):
        return x * x
    assert swiftray.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]

    @swiftray.remote(resources={"a": 1})
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n
    counter = Counter.remote()
    assert swiftray.get([counter.add.remote(1) for _ in range(10)], timeout=60)[-1] == 10

    @swiftray.remote(resources={"a": 1})
    def make(n):
        import numpy as np
        return np.arange(n, dtype=np.uint8)

    @swiftray.remote(resources={"b": 1})
    def checksum(a):
        return int(a.sum(dtype="uint64")), a.nbytes
    big = make.remote(100 << 20)  # made on the "a" node, read on the "b" node and here
    expected = int(sum(range(256))) * ((100 << 20) // 256)
    assert swiftray.get(checksum.remote(big), timeout=120) == (expected, 100 << 20)
    assert int(swiftray.get(big, timeout=120).sum(dtype="uint64")) == expected

    # Node death: a task running on the "b" node when it dies runs again on a node that
    # has "b" once one joins; the actor on "a" is untouched.
    @swiftray.remote(resources={"b": 1}, max_retries=2)
    def slow(path):
        import os
        import time
        open(path, "a").write("x")
        time.sleep(3)
        return os.getpid()
    marker = os.path.join(c.root, "ran")
    ref = slow.remote(marker)
    assert wait_until(lambda: os.path.exists(marker), 60)
    c.kill_node(doomed)
    assert wait_until(lambda: sum(1 for n in swiftray.nodes() if n["Alive"]) == 2, 30)
    c.add_node(num_cpus=1, resources={"b": 1})
    assert isinstance(swiftray.get(ref, timeout=120), int)
    assert open(marker).read() == "xx"
    assert swiftray.get(counter.add.remote(1), timeout=60) == 11

    # A driver without the token gets the clear error; one without TLS is refused too.
    no_token = {k: "" for k in ("SWIFTRAY_AUTH_TOKEN",)} | certs["cluster"]["env"] | {"HOME": c.root}
    rc, out = _driver(f"import swiftray; swiftray.init(address='{c.address}')", no_token)
    assert rc != 0 and "AuthenticationError" in out and "swiftray get-auth-token" in out, out
    rc, out = _driver(f"import swiftray; swiftray.init(address='{c.address}')", {})
    assert rc != 0 and "SWIFTRAY_USE_TLS" in out, out
    rc, out = _driver(f"import swiftray; swiftray.init(address='{c.address}')", certs["rogue"]["env"])
    assert rc != 0 and "CA" in out, out
    # And the cluster goes on serving.
    assert swiftray.get(square.remote(7), timeout=60) == 49


def test_every_tcp_listener_refuses_plaintext_and_certificates_of_another_ca(tls_cluster, certs):
    c = tls_cluster
    head = c.add_node(num_cpus=1)
    swiftray.init(address=c.address)
    good, rogue, ca = certs["cluster"], certs["rogue"], certs["cluster"]["ca"]
    node = next(n for n in swiftray.nodes() if n["SessionDir"] == head["session"])

    @swiftray.remote
    class Holder:
        def pid(self):
            return os.getpid()
    h = Holder.remote()
    worker_pid = swiftray.get(h.pid.remote(), timeout=60)
    store = swiftray.util.object_store_stats()
    (worker_port,) = _listening_tcp_ports(worker_pid)

    # gRPC: the right certificate and token are served; plaintext, or the right token
    # inside TLS with another CA's certificate, are not; a KVPut sent so is not obeyed.
    grpc_targets = {"ControlService": (c.address, "ControlService/GetAllNodes"),
                    "NodeManager": (_grpc_target(node["NodeManagerTCPAddress"]), "NodeManagerService/GetNodeStats")}
    for name, (target, method) in grpc_targets.items():
        assert isinstance(_tls_grpc_call(target, f"/swiftray.{method}", good, ca), bytes), name
        r = _grpc_call(target, f"/swiftray.{method}", token=TOKEN, timeout=5)
        assert isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.UNAVAILABLE, (name, r)
        r = _tls_grpc_call(target, f"/swiftray.{method}", rogue, ca)
        assert isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.UNAVAILABLE, (name, r)
    swiftray._core.kv_put("ns", b"key", b"good", True)
    evil = b"\x0a\x02ns\x12\x03key\x1a\x04evil\x20\x01"
    _grpc_call(c.address, "/swiftray.ControlService/KVPut", evil, token=TOKEN, timeout=5)
    _tls_grpc_call(c.address, "/swiftray.ControlService/KVPut", rogue, ca, body=evil)
    assert swiftray._core.kv_get("ns", b"key") == b"good"

    # Data plane: the store and a worker over TCP.
    probe = _preamble(TOKEN) + _frame(STORE_STATS)
    got, _ = _tls_exchange(store["remote_address"], probe, good, wait=1.0)
    assert len(got) > 4, "the store answers a member (the probe is sound)"
    (driver_port,) = _listening_tcp_ports(os.getpid())
    for name, ep in {"store": store["remote_address"], "worker": f"tcp:127.0.0.1:{worker_port}",
                     "driver": f"tcp:127.0.0.1:{driver_port}"}.items():
        got, closed = _exchange(ep, probe)
        assert closed and _only_a_tls_alert(got), (name, "plaintext", got)
        got, closed = _tls_exchange(ep, probe, rogue)
        assert closed and got == b"", (name, "another CA", got)
    big = swiftray.put(b"y" * (1 << 20))
    oid = big.binary()
    read = _preamble(TOKEN) + _frame(READ_CHUNK, b"\x0a" + bytes([len(oid)]) + oid + b"\x10\x00\x18\x80\x80\x01")
    got, closed = _exchange(store["remote_address"], read)
    assert closed and _only_a_tls_alert(got)
    assert _tls_exchange(store["remote_address"], read, rogue) == (b"", True)

    # The node serves its cluster as before.
    assert swiftray.get(h.pid.remote(), timeout=60) == worker_pid
    assert swiftray.get(big) == b"y" * (1 << 20)


def test_tls_settings_that_cannot_work_fail_at_start_naming_the_variable(tmp_path, certs):
    env = dict(certs["cluster"]["env"], SWIFTRAY_TLS_CA_CERT=str(tmp_path / "missing.pem"))
    c = Cluster(env=env)
    try:
        with pytest.raises(AssertionError) as e:
            c.add_node(num_cpus=1)
        assert "SWIFTRAY_TLS_CA_CERT" in str(e.value) and "missing.pem" in str(e.value)
        c.env = dict(c.env, SWIFTRAY_TLS_CA_CERT=certs["cluster"]["ca"], SWIFTRAY_USE_TLS="maybe")
        with pytest.raises(AssertionError) as e:
            c.add_node(num_cpus=1)
        assert "SWIFTRAY_USE_TLS" in str(e.value)
    finally:
        c.shutdown()


@pytest.fixture
def tls_redis(tmp_path, certs):
    """A redis-server that speaks only TLS, with the cluster's certificate, and demands
    a client certificate."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    pem = certs["cluster"]
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", pem["cert"], "--tls-key-file", pem["key"],
                             "--tls-ca-cert-file", pem["ca"], "--tls-auth-clients", "yes",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    assert wait_until(lambda: _can_connect(port), 10)
    yield port
    proc.kill()
    proc.wait()


def test_the_head_keeps_its_tables_in_redis_over_tls(tls_redis, certs, tmp_path):
    pem = certs["cluster"]
    redis_env = {"SWIFTRAY_REDIS_CA_CERT": pem["ca"], "SWIFTRAY_REDIS_CLIENT_CERT": pem["cert"],
                 "SWIFTRAY_REDIS_CLIENT_KEY": pem["key"]}
    # Plaintext to a TLS-only Redis fails at start, saying it cannot reach Redis.
    c = Cluster(env={"SWIFTRAY_REDIS_ADDRESS": f"127.0.0.1:{tls_redis}"})
    try:
        with pytest.raises(AssertionError) as e:
            c.add_node(num_cpus=1)
        assert "Redis" in str(e.value)
    finally:
        c.shutdown()
    c = Cluster(env={"SWIFTRAY_REDIS_ADDRESS": f"rediss://127.0.0.1:{tls_redis}", **redis_env})
    try:
        c.add_node(num_cpus=1)
        swiftray.init(address=c.address)
        swiftray._core.kv_put("ns", b"kept", b"in redis", True)
        keys = subprocess.run(["redis-cli", "-p", str(tls_redis), "--tls", "--cacert", pem["ca"], "--cert", pem["cert"],
                               "--key", pem["key"], "HGETALL", "swiftray:kv:ns"], capture_output=True, text=True, timeout=30)
        assert "in redis" in keys.stdout, keys.stdout + keys.stderr
    finally:
        swiftray.shutdown()
        c.shutdown()

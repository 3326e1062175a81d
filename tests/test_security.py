"""Token authentication on every listener (issue 15): nothing a peer without the
cluster's token sends is acted on, and the node keeps serving; where tokens come from;
the errors a node or driver with a wrong or missing token gets."""
import glob
import os
import socket
import stat
import struct
import subprocess
import sys
import time

import grpc
import pytest

import swiftray
from conftest import Cluster, wait_until

TOKEN = os.environ["SWIFTRAY_AUTH_TOKEN"]  # the tests' cluster token (conftest)


# ---------------------------------------------------------------- raw clients

def _grpc_call(target, method, body=b"", token=None, timeout=10):
    """One raw gRPC call (no generated stubs): the reply's bytes, or the grpc.RpcError."""
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else None
        try:
            return call(body, metadata=metadata, timeout=timeout)
        except grpc.RpcError as e:
            return e


def _grpc_target(endpoint):
    """A swiftray endpoint ("unix:/p", "tcp:h:p") as a gRPC target."""
    if endpoint.startswith("tcp:"):
        return endpoint[len("tcp:"):]
    return endpoint


def _encode_varint(n):
    """A protobuf varint; a negative int64 goes on the wire as its two's complement."""
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _frame(body_field, body=b"", id_=1):
    """A length-prefixed DataFrame: id, and one body field (tag number, message bytes)."""
    varint = _encode_varint
    msg = b"\x08" + varint(id_) + varint((body_field << 3) | 2) + varint(len(body)) + body
    return struct.pack(">I", len(msg)) + msg


STORE_STATS = 28   # DataFrame.store_stats
READ_CHUNK = 32    # DataFrame.read_chunk
PUSH_TASK = 10     # DataFrame.push_task


def _preamble(token):
    payload = b"SRA1" + token.encode()
    return struct.pack(">I", len(payload)) + payload


def _connect(endpoint):
    if endpoint.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(endpoint[len("unix:"):])
    else:
        host, _, port = endpoint[len("tcp:"):].rpartition(":")
        s = socket.create_connection((host, int(port)))
    s.settimeout(10)
    return s


def _exchange(endpoint, data, wait=2.0):
    """Sends `data`, then reads until the peer closes or `wait` passes: (bytes, closed)."""
    s = _connect(endpoint)
    try:
        s.sendall(data)
        s.settimeout(wait)
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return got, True
                got += chunk
        except socket.timeout:
            return got, False
        except ConnectionResetError:
            return got, True
    finally:
        s.close()


def _listening_tcp_ports(pid):
    """TCP ports process `pid` listens on (from /proc)."""
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                ports.append(int(f[1].rsplit(":", 1)[1], 16))
    return ports


# ---------------------------------------------------------------- the tests

def test_every_grpc_listener_refuses_calls_without_the_token(cluster):
    head = cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    node = next(n for n in swiftray.nodes() if n["SessionDir"] == head["session"])
    targets = {
        "ControlService over TCP": cluster.address,
        "ControlService over its Unix socket": "unix:" + os.path.join(head["session"], "sockets", "gcs.sock"),
        "NodeManager over TCP": _grpc_target(node["NodeManagerTCPAddress"]),
        "NodeManager over its Unix socket": _grpc_target(node["NodeManagerEndpoint"]),
    }
    for name, target in targets.items():
        service = "ControlService/GetAllNodes" if "Control" in name else "NodeManagerService/GetNodeStats"
        for token in (None, "wrong-token-of-the-right-length"):
            r = _grpc_call(target, f"/swiftray.{service}", token=token)
            assert isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.UNAUTHENTICATED, (name, token, r)
        assert isinstance(_grpc_call(target, f"/swiftray.{service}", token=TOKEN), bytes), name

    # Nothing sent without the token is acted on: a KV write, a lease (the attack's first step).
    swiftray._core.kv_put("ns", b"key", b"good", True)
    evil = b"\x0a\x02ns\x12\x03key\x1a\x04evil\x20\x01"  # KVPutRequest("ns", "key", "evil", overwrite)
    assert _grpc_call(cluster.address, "/swiftray.ControlService/KVPut", evil).code() == grpc.StatusCode.UNAUTHENTICATED
    assert swiftray._core.kv_get("ns", b"key") == b"good"
    # The same request with the token would have been obeyed (the bytes are a real KVPut).
    assert isinstance(_grpc_call(cluster.address, "/swiftray.ControlService/KVPut", evil, token=TOKEN), bytes)
    assert swiftray._core.kv_get("ns", b"key") == b"evil"
    before = swiftray._core.node_stats()["available"]
    lease = b"\x08\x07\x12\x0a\x0a\x08\x0a\x03CPU\x10\x90\x4e"  # RequestWorkerLeaseRequest(id 7, CPU: 1)
    r = _grpc_call(targets["NodeManager over TCP"], "/swiftray.NodeManagerService/RequestWorkerLease", lease)
    assert r.code() == grpc.StatusCode.UNAUTHENTICATED
    assert swiftray._core.node_stats()["available"] == before

    # And the node serves its cluster as before.
    @swiftray.remote
    def ping():
        return "pong"
    assert swiftray.get(ping.remote(), timeout=60) == "pong"


def test_every_data_plane_listener_closes_a_connection_without_the_token(cluster):
    head = cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)

    @swiftray.remote
    class Holder:
        def pid(self):
            return os.getpid()

    h = Holder.remote()
    worker_pid = swiftray.get(h.pid.remote(), timeout=60)
    big = swiftray.put(b"x" * (1 << 20))  # a stored object a foreign reader would want
    store = swiftray.util.object_store_stats()
    sockets = os.path.join(head["session"], "sockets")
    worker_unix = [p for p in glob.glob(os.path.join(sockets, "w-*.sock"))]
    # A worker holds no listening socket of its node or head (fds are not inherited).
    assert not set(_listening_tcp_ports(worker_pid)) & set(_listening_tcp_ports(head["pid"]))
    worker_tcp = [f"tcp:127.0.0.1:{p}" for p in _listening_tcp_ports(worker_pid)]
    assert len(worker_tcp) == 1, worker_tcp
    listeners = {
        "store over its Unix socket": "unix:" + os.path.join(sockets, "store.sock"),
        "store over TCP": store["remote_address"],
        "a worker over its Unix socket": "unix:" + worker_unix[0],
        "a worker over TCP": worker_tcp[0],
        "the driver over its Unix socket": "unix:" + glob.glob(os.path.join(sockets, "d-*.sock"))[0],
        "the driver over TCP": "tcp:127.0.0.1:%d" % _listening_tcp_ports(os.getpid())[0],
    }
    probe = _frame(STORE_STATS)
    for name, ep in listeners.items():
        # A frame first, or a wrong token first: closed, nothing answered.
        for data in (probe, _preamble("wrong-token-of-the-right-length") + probe):
            got, closed = _exchange(ep, data)
            assert closed and got == b"", (name, got)
    # The store answers a client that shows the token (the probe itself is sound).
    got, _ = _exchange(listeners["store over its Unix socket"], _preamble(TOKEN) + probe, wait=1.0)
    assert len(got) > 4, got
    # A foreign read of another driver's object's bytes gets nothing.
    oid = big.binary()
    read = _frame(READ_CHUNK, b"\x0a" + bytes([len(oid)]) + oid + b"\x10\x00\x18\x80\x80\x01")  # 16 KiB from 0
    got, closed = _exchange(store["remote_address"], read)
    assert closed and got == b""
    # A connection that says nothing is closed within a few seconds.
    s = _connect(store["remote_address"])
    s.settimeout(15)
    try:
        assert s.recv(1) == b""
    finally:
        s.close()
    # Everything still works for the cluster.
    assert swiftray.get(h.pid.remote(), timeout=60) == worker_pid
    assert len(swiftray.get(big)) == 1 << 20


def test_a_head_makes_its_token_and_nodes_and_drivers_without_it_are_told_where_to_look(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTRAY_AUTH", "RAY_AUTH"))}
    env = dict(base, HOME=str(home), SWIFTRAY_PYTHON=sys.executable)
    c = Cluster()
    c.env = {k: v for k, v in c.env.items() if k != "SWIFTRAY_AUTH_TOKEN"}
    c.env["HOME"] = str(home)
    try:
        c.add_node(num_cpus=1)
        token_file = home / ".swiftray" / "auth_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        token = token_file.read_text().strip()
        assert len(token) == 64
        out = subprocess.run([sys.executable, "-m", "swiftray", "get-auth-token"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == token

        # A node with a wrong token, and one with none, are refused at start, saying why.
        wrong = dict(env, SWIFTRAY_AUTH_TOKEN="wrong-token-of-the-right-length")
        out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--address", c.address, "--num-cpus", "1",
                              "--temp-dir", c.root], env=wrong, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "token" in (out.stdout + out.stderr), out.stdout + out.stderr
        nohome = tmp_path / "elsewhere"
        nohome.mkdir()
        out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--address", c.address, "--num-cpus", "1",
                              "--temp-dir", c.root], env=dict(env, HOME=str(nohome)), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode != 0
        assert "No cluster token was found" in out.stdout + out.stderr and "get-auth-token" in out.stdout + out.stderr

        # A driver with a wrong token gets AuthenticationError naming where tokens come from.
        script = tmp_path / "driver.py"
        script.write_text(
            "import sys, swiftray\n"
            "try:\n"
            f"    swiftray.init(address={c.address!r})\n"
            "except swiftray.exceptions.AuthenticationError as e:\n"
            "    print('REFUSED', e)\n"
            "    sys.exit(0)\n"
            "print('JOINED', swiftray.get(swiftray.remote(lambda: 7).remote()))\n")
        out = subprocess.run([sys.executable, str(script)], env=wrong, capture_output=True, text=True, timeout=120)
        assert "REFUSED" in out.stdout and "SWIFTRAY_AUTH_TOKEN" in out.stdout, out.stdout + out.stderr
        # With the head's token (its file, found by default) it joins.
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
        assert "JOINED 7" in out.stdout, out.stdout + out.stderr
    finally:
        c.shutdown()


def test_a_local_cluster_keeps_its_token_in_its_session_for_other_drivers():
    swiftray.shutdown()
    swiftray.init(num_cpus=1)
    try:
        session = swiftray._core.context()["session_dir"]
        token_file = os.path.join(session, "auth_token")
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        # A second driver of this user joins through the session (no token in its environment).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTRAY_AUTH", "RAY_AUTH"))}
        out = subprocess.run(
            [sys.executable, "-c", f"import swiftray; swiftray.init(address={session!r}); "
                                   f"print('JOINED', swiftray.get(swiftray.remote(lambda: 3).remote()))"],
            env=env, capture_output=True, text=True, timeout=120)
        assert "JOINED 3" in out.stdout, out.stdout + out.stderr
    finally:
        swiftray.shutdown()


def test_auth_can_be_turned_off_explicitly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTRAY_AUTH", "RAY_AUTH"))}
    env["SWIFTRAY_AUTH_MODE"] = "disabled"
    out = subprocess.run([sys.executable, "-c", "import swiftray; swiftray.init(num_cpus=1); "
                          "print(swiftray.get(swiftray.remote(lambda: 5).remote()))"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "5", out.stdout + out.stderr


DELETE_OBJECTS = 26  # DataFrame.delete_objects
ERROR = 16          # DataFrame.error


def _replies(got):
    """The DataFrames in `got`, as (body field number, body bytes) pairs."""
    out = []
    while len(got) >= 4:
        n = struct.unpack(">I", got[:4])[0]
        msg, got = got[4:4 + n], got[4 + n:]
        i = 0
        while i < len(msg):
            key, i = _varint(msg, i)
            if key & 7 == 0:
                _, i = _varint(msg, i)
            elif key & 7 == 2:
                ln, i = _varint(msg, i)
                out.append((key >> 3, msg[i:i + ln]))
                i += ln
            else:
                break
    return out


def _varint(b, i):
    v = shift = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return v, i


def test_members_get_only_what_they_need_a_stores_tcp_port_reads_and_a_worker_runs_only_leased_tasks(cluster):
    cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)

    @swiftray.remote
    def pid():
        return os.getpid()
    worker_pid = swiftray.get(pid.remote(), timeout=60)

    @swiftray.remote
    def lease_key_seen():
        return os.environ.get("SWIFTRAY_LEASE_KEY")
    assert swiftray.get(lease_key_seen.remote(), timeout=60) is None, "user code never sees the node's key"
    store = swiftray.util.object_store_stats()
    data = swiftray.put(b"z" * (1 << 20))
    oid = data.binary()

    # With the token, the store's TCP port still only serves chunk reads: a delete sent
    # there is answered with an error and the object stays.
    delete = _frame(DELETE_OBJECTS, b"\x0a" + bytes([len(oid)]) + oid)
    got, _ = _exchange(store["remote_address"], _preamble(TOKEN) + delete, wait=1.0)
    (reply,) = _replies(got)
    assert reply[0] == ERROR and b"only chunk reads" in reply[1], reply
    read = _frame(READ_CHUNK, b"\x0a" + bytes([len(oid)]) + oid + b"\x10\x00\x18\x80\x80\x01")
    got, _ = _exchange(store["remote_address"], _preamble(TOKEN) + read, wait=1.0)
    assert b"z" * 1000 in got, "a member reads chunks of it over TCP"
    assert swiftray.get(data) == b"z" * (1 << 20)

    # With the token, a push that no lease of the worker's node covers is refused: the
    # task never runs (its spec is empty: it would fail, but it is not even tried).
    (worker_port,) = _listening_tcp_ports(worker_pid)
    push = _frame(PUSH_TASK, b"\x0a\x00")  # PushTaskRequest{spec: {}}, no lease grant
    got, _ = _exchange(f"tcp:127.0.0.1:{worker_port}", _preamble(TOKEN) + push, wait=2.0)
    (reply,) = _replies(got)
    assert reply[0] == ERROR and b"refused" in reply[1] and b"not granted" in reply[1], reply
    # The worker goes on running the tasks its node leases to the cluster's owners.
    assert swiftray.get(pid.remote(), timeout=60) == worker_pid


PIN_OBJECT = 23        # DataFrame.pin_object
PIN_OBJECT_REPLY = 24


def test_a_store_pulls_only_from_stores_of_nodes_in_the_cluster(cluster):
    head = cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    # A listener no node owns: a pull from it must never even connect.
    bait = socket.socket()
    bait.bind(("127.0.0.1", 0))
    bait.listen(8)
    bait.settimeout(0.1)
    port = bait.getsockname()[1]
    oid = os.urandom(28)
    source = f"tcp:127.0.0.1:{port}".encode()
    # PinObjectRequest{object_id, reader_pid, pull_from, size: 1 MiB}, from a member (token).
    pin = (b"\x0a" + bytes([len(oid)]) + oid + b"\x10\x01" + b"\x1a" + bytes([len(source)]) + source
           + b"\x20\x80\x80\x40")
    store = "unix:" + os.path.join(head["session"], "sockets", "store.sock")
    got, _ = _exchange(store, _preamble(TOKEN) + _frame(PIN_OBJECT, pin), wait=3.0)
    (reply,) = _replies(got)
    assert reply[0] == PIN_OBJECT_REPLY and b"not the object store of a node" in reply[1], reply
    try:
        conn, _ = bait.accept()
        conn.close()
        raise AssertionError("the store connected to an address no node of the cluster has")
    except socket.timeout:
        pass
    finally:
        bait.close()
    # Pulls from the cluster's own stores go on working.
    cluster.add_node(num_cpus=1, resources={"far": 1})

    @swiftray.remote(resources={"far": 1})
    def make():
        return b"q" * (2 << 20)
    assert swiftray.get(make.remote(), timeout=60) == b"q" * (2 << 20)


def test_a_local_cluster_listens_on_no_tcp_port_and_workers_inherit_no_listener():
    swiftray.shutdown()
    swiftray.init(num_cpus=2)
    try:
        @swiftray.remote
        def pid():
            return os.getpid()

        workers = set(swiftray.get([pid.remote() for _ in range(4)], timeout=60))
        for p in [os.getpid(), *workers]:
            assert _listening_tcp_ports(p) == [], p
    finally:
        swiftray.shutdown()


def test_the_redis_password_never_reaches_a_command_line(tmp_path):
    import shutil
    import socket as sk
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
    with sk.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = "s3cret-" + os.urandom(6).hex()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--requirepass", password], stdout=subprocess.DEVNULL)
    c = Cluster()
    try:
        assert wait_until(lambda: _can_connect(port))
        c.env["SWIFTRAY_REDIS_ADDRESS"] = f"127.0.0.1:{port}"
        for how in ("flag", "env"):
            env = dict(c.env)
            args = [sys.executable, "-m", "swiftray", "start", "--head", "--port", "0", "--num-cpus", "1",
                    "--temp-dir", c.root]
            if how == "flag":
                args += ["--redis-password", password]
            else:
                env["SWIFTRAY_REDIS_PASSWORD"] = password
            out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
            assert out.returncode == 0, out.stdout + out.stderr
            session = next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Session:"))
            pid = int(open(os.path.join(session, "daemon.pid")).read())
            c.nodes.append({"pid": pid, "session": session})
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            assert password not in cmdline, cmdline
            os.kill(pid, 15)
            assert wait_until(lambda: not _alive_pid(pid), timeout=20)
    finally:
        c.shutdown()
        redis.kill()
        redis.wait()


def _can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _alive_pid(pid):
    from conftest import pid_alive
    return pid_alive(pid)


def test_sessions_sockets_and_logs_are_this_users_only_and_stop_signals_only_its_own_daemons(tmp_path):
    # A local init() cluster: its session lives in this user's own folder, 0700.
    swiftray.shutdown()
    swiftray.init(num_cpus=1)
    try:
        session = swiftray.nodes()[0]["SessionDir"]
        root = os.path.dirname(session)
        assert root == os.path.join(os.environ.get("TMPDIR") or "/tmp", f"swiftray-{os.getuid()}"), root
        st = os.lstat(root)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0, oct(st.st_mode)
        for sock in glob.glob(os.path.join(session, "sockets", "*.sock")):
            assert os.stat(sock).st_mode & 0o077 == 0, (sock, oct(os.stat(sock).st_mode))
    finally:
        swiftray.shutdown()

    c = Cluster()
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        head = c.add_node(num_cpus=1)
        session = head["session"]
        assert os.stat(os.path.dirname(session)).st_mode & 0o077 == 0
        for name in ("daemon.log", "daemon.identity"):
            assert os.stat(os.path.join(session, name)).st_mode & 0o077 == 0, name
        for sock in glob.glob(os.path.join(session, "sockets", "*.sock")):
            assert os.stat(sock).st_mode & 0o077 == 0, sock
        # The session says its daemon is another process (a recycled pid, a tampered
        # file): stop leaves that process alone and says why.
        identity = os.path.join(session, "daemon.identity")
        real = open(identity).read()
        pid_line, exe_line = real.splitlines()[:2]
        for fake in (f"{sleeper.pid} {pid_line.split()[1]}\n{exe_line}\n",      # another pid, the daemon's start time
                     f"{sleeper.pid} 1\n/usr/bin/sleep\n"):                    # the sleeper's exe, another start time
            open(identity, "w").write(fake)
            out = subprocess.run([sys.executable, "-m", "swiftray", "stop", "--temp-dir", c.root],
                                 capture_output=True, text=True, timeout=60, env=c.env)
            assert "Skipping session" in out.stdout, out.stdout + out.stderr
            assert sleeper.poll() is None, "a process that is not the daemon was signalled"
            assert _alive_pid(head["pid"])
        # With its true identity back, stop stops it.
        open(identity, "w").write(real)
        out = subprocess.run([sys.executable, "-m", "swiftray", "stop", "--temp-dir", c.root],
                             capture_output=True, text=True, timeout=60, env=c.env)
        assert "Stopped 1" in out.stdout, out.stdout + out.stderr
        assert wait_until(lambda: not _alive_pid(head["pid"]), timeout=20)
    finally:
        sleeper.kill()
        sleeper.wait()
        c.shutdown()

"""Hardening (issue 16): a message from an authenticated peer whose numbers are out of
range gets an error reply naming the field, and the daemon goes on serving. Each case
here used to trap the whole node (a Swift integer trap). Messages are built by hand
(raw protobuf) and sent with the cluster's token."""
import os
import signal
import socket
import struct
import threading
import time

import grpc
import pytest

import swiftray
from conftest import Cluster, pid_alive, wait_until
from test_security import (ERROR, READ_CHUNK, TOKEN, _connect, _encode_varint, _exchange, _frame, _grpc_call, _grpc_target,
                           _preamble, _replies)

CREATE_OBJECT = 20  # DataFrame.create_object


def _field(number, payload):
    """A length-delimited field."""
    return _encode_varint((number << 3) | 2) + _encode_varint(len(payload)) + payload


def _uint(number, value):
    return _encode_varint(number << 3) + _encode_varint(value)


def _shape(**quantities):
    """A ResourceShape of fixed-point quantities."""
    return b"".join(_field(1, _field(1, k.encode()) + _uint(2, v)) for k, v in quantities.items())


def _still_serves():
    @swiftray.remote
    def one():
        return 1
    assert swiftray.get([one.remote() for _ in range(4)], timeout=60) == [1] * 4
    assert swiftray.get(swiftray.put(b"x" * (1 << 20))) == b"x" * (1 << 20)


def test_store_requests_with_sizes_or_offsets_out_of_range_get_an_error_naming_the_field(cluster):
    head = cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    store_unix = "unix:" + os.path.join(head["session"], "sockets", "store.sock")
    oid = os.urandom(28)
    cases = {
        "size": (store_unix, CREATE_OBJECT, _field(1, oid) + _uint(2, (1 << 64) - 1) + _uint(3, os.getpid())),
        "creator_pid": (store_unix, CREATE_OBJECT, _field(1, oid) + _uint(2, 10) + _uint(3, -5)),
        "offset": (swiftray.util.object_store_stats()["remote_address"], READ_CHUNK,
                   _field(1, swiftray.put(b"y" * 100).binary()) + _uint(2, 1 << 63) + _uint(3, 16)),
        "length": (swiftray.util.object_store_stats()["remote_address"], READ_CHUNK,
                   _field(1, oid) + _uint(2, 0) + _uint(3, (1 << 64) - 1)),
    }
    for name, (endpoint, kind, body) in cases.items():
        got, closed = _exchange(endpoint, _preamble(TOKEN) + _frame(kind, body), wait=1.0)
        (reply,) = _replies(got)
        assert reply[0] == ERROR and name.encode() in reply[1], (name, reply)
        assert not closed, "the connection lives on after an error reply"
    _still_serves()


def test_resource_quantities_out_of_range_are_refused_by_nodemanager_and_controlservice(cluster):
    cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    node = swiftray.nodes()[0]
    before = swiftray._core.node_stats()["available"]
    for cpu in (-(1 << 63), -10_000, 1 << 62):
        lease = _uint(1, 77) + _field(2, _shape(CPU=cpu))  # RequestWorkerLeaseRequest
        r = _grpc_call(_grpc_target(node["NodeManagerTCPAddress"]), "/swiftray.NodeManagerService/RequestWorkerLease",
                       lease, token=TOKEN)
        assert isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.INVALID_ARGUMENT, (cpu, r)
        assert "resources" in r.details() and "CPU" in r.details(), r.details()
    assert swiftray._core.node_stats()["available"] == before, "no CPU was lent or made up"
    # A placement group with a negative bundle: refused whole, nothing placed.
    group = _field(1, _field(1, os.urandom(18)) + _field(4, b"PACK") + _field(5, _shape(CPU=10_000))
                   + _field(5, _shape(CPU=-10_000)))
    r = _grpc_call(cluster.address, "/swiftray.ControlService/CreatePlacementGroup", group, token=TOKEN)
    assert isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.INVALID_ARGUMENT and "bundle 1" in r.details()
    # A node reporting absurd resources is refused too (its view would feed scheduling).
    report = _field(1, bytes.fromhex(node["NodeID"])) + _field(2, _shape(CPU=-(1 << 63)))
    r = _grpc_call(cluster.address, "/swiftray.ControlService/ReportResources", report, token=TOKEN)
    assert isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.INVALID_ARGUMENT, r
    _still_serves()



def test_quantities_too_large_for_the_core_are_refused_where_they_are_given(tmp_path):
    import subprocess
    import sys

    import pytest

    @swiftray.remote
    def f():
        return 1
    for bad in (float("inf"), float("nan"), 1e30):
        with pytest.raises(ValueError, match="num_cpus"):
            f.options(num_cpus=bad)
        with pytest.raises(ValueError, match="disk"):
            f.options(resources={"disk": bad})
    for flag in (["--num-cpus", "1e30"], ["--num-gpus", "inf"], ["--resources", '{"disk": 1e300}']):
        out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--head", "--port", "0",
                              "--temp-dir", str(tmp_path), *flag], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and ("must be" in out.stderr + out.stdout), (flag, out.stdout + out.stderr)


# ---------------------------------------------------------------- floods

def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _tcp(endpoint):
    host, _, port = endpoint[len("tcp:"):].rpartition(":")
    return host, int(port)


def _flood(endpoint, count):
    """`count` connections that never send a byte: the sockets, open until closed."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(_tcp(endpoint))
        socks.append(s)
    return socks


def _closed_by_peer(s):
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _blast(endpoint, prefix, total, token=None):
    """Sends (after the token preamble, when given) a length prefix and then up to
    `total` bytes, until the peer closes: the bytes it took."""
    s = socket.create_connection(_tcp(endpoint))
    s.settimeout(10)
    sent = 0
    try:
        if token is not None:
            s.sendall(_preamble(token))
        s.sendall(struct.pack(">I", prefix))
        block = b"\xab" * (1 << 20)
        while sent < total:
            s.sendall(block)
            sent += len(block)
    except OSError:
        pass  # closed by the daemon: what we want
    finally:
        s.close()
    return sent


CAP = 512


def test_a_flood_of_silent_connections_and_huge_frames_leaves_the_daemon_bounded_and_serving():
    """2,000 connections that never authenticate on each of two listeners (a data-plane
    port and a gRPC port), then a 2^31-1 length prefix followed by 512 MiB, with and
    without the token: the daemon's descriptors stay under its listeners' caps, its
    memory grows by less than 64 MiB, and a workload is served all along."""
    c = Cluster(env={"SWIFTRAY_MAX_CONNECTIONS_PER_LISTENER": str(CAP),
                     "SWIFTRAY_CONNECTION_HANDSHAKE_TIMEOUT_MS": "8000"})
    try:
        head = c.add_node(num_cpus=1)
        swiftray.init(address=c.address)
        _still_serves()
        pid = head["pid"]
        store_tcp = swiftray.util.object_store_stats()["remote_address"]
        nm_tcp = swiftray.nodes()[0]["NodeManagerTCPAddress"]
        fds0, rss0 = _fds(pid), _rss_kib(pid)
        peak = [fds0]
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                peak[0] = max(peak[0], _fds(pid))
                time.sleep(0.01)
        sampler = threading.Thread(target=sample)
        sampler.start()
        socks = _flood(store_tcp, 2000) + _flood(nm_tcp, 2000)
        try:
            # Beyond the cap, connections are closed as they are accepted...
            wait_until(lambda: sum(_closed_by_peer(s) for s in socks) >= 2 * (2000 - CAP), timeout=8)
            _still_serves()  # ...and the flood does not stop the node's own work.
            # The silent ones left are dropped at the handshake deadline.
            wait_until(lambda: _fds(pid) <= fds0 + 16, timeout=20)
        finally:
            sampling.set()
            sampler.join()
            for s in socks:
                s.close()
        # (plus a few: a connection beyond the cap lives between its accept and its close)
        assert peak[0] <= fds0 + 2 * CAP + 64, (fds0, peak[0])
        print(f"flood: {fds0} fds before, peak {peak[0]} (cap {CAP} per listener)")
        # Huge frames: refused at their length prefix, nothing of them buffered.
        for endpoint, token in ((store_tcp, TOKEN), (store_tcp, None), (nm_tcp, None)):
            sent = _blast(endpoint, (1 << 31) - 1, 512 << 20, token=token)
            assert sent < (512 << 20), f"{endpoint} took all 512 MiB of a frame it cannot hold"
        grown = (_rss_kib(pid) - rss0) / 1024
        print(f"flood: resident memory {rss0 // 1024} MiB before, grew by {grown:.1f} MiB")
        assert grown < 64, f"the daemon grew by {grown:.0f} MiB"
        _still_serves()
        assert _fds(pid) <= fds0 + 16
    finally:
        swiftray.shutdown()
        c.shutdown()


def test_a_too_large_message_fails_its_task_with_a_clear_error_and_nothing_else(cluster):
    cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)

    @swiftray.remote(num_returns=200)
    def many():
        # 200 inline returns of 90 KiB: an 18 MiB reply, above the 16 MiB frame cap.
        return [bytes([i]) * (90 << 10) for i in range(200)]

    refs = many.remote()
    with pytest.raises(Exception, match="max_data_plane_frame_bytes"):
        swiftray.get(refs[0], timeout=60)
    # Stored values instead: fine; other work is untouched.
    @swiftray.remote(num_returns=3)
    def few():
        return [bytes([i]) * (1 << 20) for i in range(3)]
    assert [len(v) for v in swiftray.get(few.remote(), timeout=60)] == [1 << 20] * 3
    _still_serves()


# ---------------------------------------------------------------- Redis

class _PoisoningRedisProxy:
    """Forwards a head's Redis connections to a real Redis; once `poison()` is called,
    the next command is not forwarded but answered with a bulk length of 2^63-1 (a
    reply that used to trap the head)."""

    def __init__(self, redis):
        host, _, port = redis.rpartition(":")
        self.upstream = (host, int(port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.armed = threading.Event()
        self.fired = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def poison(self):
        self.armed.set()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
            threading.Thread(target=self._commands, args=(client, server), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def _commands(self, client, server):
        try:
            while data := client.recv(65536):
                if self.armed.is_set() and not self.fired.is_set():
                    self.fired.set()
                    client.sendall(b"$9223372036854775807\r\n")
                    continue
                server.sendall(data)
        except OSError:
            pass

    def close(self):
        self.listener.close()


def test_a_redis_reply_claiming_2_to_63_bytes_is_an_error_and_the_head_goes_on(redis_address):
    proxy = _PoisoningRedisProxy(redis_address)
    c = Cluster(env={"SWIFTRAY_REDIS_ADDRESS": proxy.address})
    try:
        head = c.add_node(num_cpus=1)
        swiftray.init(address=c.address)
        _still_serves()
        proxy.poison()

        @swiftray.remote
        class Named:
            def ping(self):
                return "pong"

        # Creating a named actor writes to Redis: that write meets the poisoned reply.
        first = Named.options(name="first", lifetime="detached").remote()
        wait_until(proxy.fired.is_set, timeout=30)
        log = os.path.join(head["session"], "daemon.log")
        wait_until(lambda: "storage" in open(log).read() and "Redis" in open(log).read(), timeout=30)
        os.kill(head["pid"], 0)  # the head is alive
        assert swiftray.get(first.ping.remote(), timeout=60) == "pong"
        # Later writes reconnect and land in Redis.
        second = Named.options(name="second", lifetime="detached").remote()
        assert swiftray.get(swiftray.get_actor("second").ping.remote(), timeout=60) == "pong"
        _still_serves()
        swiftray.kill(first)
        swiftray.kill(second)
    finally:
        swiftray.shutdown()
        c.shutdown()
        proxy.close()


# ---------------------------------------------------------------- silent peers

def test_a_store_that_goes_silent_during_a_pull_costs_the_reader_a_bounded_wait_not_a_hang():
    """Node B holds the only copy of an object and is SIGSTOPped (its TCP stays open):
    the reader's pull times out (object_manager_pull_timeout_ms), B is then declared
    dead, and the reader gets the object rebuilt elsewhere, or, for a task that may not
    be retried, an ObjectLostError naming what happened: never a hang."""
    from swiftray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    c = Cluster(health_check_period_ms=500, health_check_failure_threshold=4,
                env={"SWIFTRAY_OBJECT_MANAGER_PULL_TIMEOUT_MS": "2000"})
    try:
        c.add_node(num_cpus=1)
        b = c.add_node(num_cpus=1, resources={"b": 1})
        swiftray.init(address=c.address)
        wait_until(lambda: len([n for n in swiftray.nodes() if n["Alive"]]) == 2, timeout=30)
        b_id = next(n["NodeID"] for n in swiftray.nodes() if n["Resources"].get("b"))

        @swiftray.remote
        def make(tag):
            return bytes([tag]) * (2 << 20)  # stored in B's object store

        @swiftray.remote
        def where():
            return swiftray.get_runtime_context().get_node_id()

        on_b = NodeAffinitySchedulingStrategy(b_id, soft=True)
        # Soft affinity falls back to the head until the local node's view has B.
        wait_until(lambda: swiftray.get(where.options(scheduling_strategy=on_b).remote()) == b_id, timeout=30)
        rebuildable = make.options(scheduling_strategy=on_b).remote(1)
        final = make.options(scheduling_strategy=on_b, max_retries=0).remote(2)
        swiftray.wait([rebuildable, final], num_returns=2, timeout=60, fetch_local=False)
        os.kill(b["pid"], signal.SIGSTOP)
        try:
            # Bounded by the pull deadline and the health check; a hang fails the get's timeout.
            assert swiftray.get(rebuildable, timeout=90) == b"\x01" * (2 << 20)
            with pytest.raises(swiftray.exceptions.ObjectLostError):
                swiftray.get(final, timeout=90)
        finally:
            os.kill(b["pid"], signal.SIGCONT)
        _still_serves()
    finally:
        swiftray.shutdown()
        c.shutdown()


def test_a_hung_nodemanager_does_not_stall_placement_groups_on_other_nodes():
    """Node B is SIGSTOPped (not yet declared dead: a long health check) while a group
    that needs B is being reserved: a group that fits on node C is placed at once."""
    from swiftray.util.placement_group import placement_group
    c = Cluster(health_check_period_ms=1000, health_check_failure_threshold=60,
                env={"SWIFTRAY_NODE_MANAGER_RPC_TIMEOUT_MS": "60000"})
    try:
        c.add_node(num_cpus=1)
        b = c.add_node(num_cpus=1, resources={"b": 1})
        c.add_node(num_cpus=1, resources={"c": 1})
        swiftray.init(address=c.address)
        wait_until(lambda: len([n for n in swiftray.nodes() if n["Alive"]]) == 3, timeout=30)
        os.kill(b["pid"], signal.SIGSTOP)
        try:
            stuck = placement_group([{"b": 1}])  # its prepare waits on B
            time.sleep(1.0)
            elsewhere = placement_group([{"c": 1}])
            # (node_manager_rpc_timeout_ms is 60 s here: waiting for the hung node's answer would take longer)
            assert elsewhere.wait(timeout_seconds=20), "a group on a live node waited for the hung one"
            assert not stuck.wait(timeout_seconds=0.5)
        finally:
            os.kill(b["pid"], signal.SIGCONT)
        assert stuck.wait(timeout_seconds=60), "the group is placed once its node answers again"
    finally:
        swiftray.shutdown()
        c.shutdown()


# ---------------------------------------------------------------- lease request ids

def _varint_at(data, i):
    value, shift = 0, 0
    while True:
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def test_two_owners_with_the_same_lease_request_number_each_get_their_own_request(cluster):
    """Request numbers are the owner's own: another owner using the same number neither
    replaces a waiting request (which then hung) nor can cancel it; a lease is given
    back only by its owner."""
    cluster.add_node(num_cpus=1, resources={"slot": 1})
    swiftray.init(address=cluster.address)
    target = _grpc_target(swiftray.nodes()[0]["NodeManagerTCPAddress"])
    holder, a, b = os.urandom(28), os.urandom(28), os.urandom(28)

    def request(owner, number=77):
        body = _uint(1, number) + _field(2, _shape(slot=10_000)) + _field(3, _field(1, owner))
        return _grpc_call(target, "/swiftray.NodeManagerService/RequestWorkerLease", body, token=TOKEN, timeout=60)

    def cancel(owner):
        return _grpc_call(target, "/swiftray.NodeManagerService/CancelWorkerLease", _uint(1, 77) + _field(2, owner),
                          token=TOKEN)

    def give_back(lease_id, owner):
        return _grpc_call(target, "/swiftray.NodeManagerService/ReturnWorkerLease", _uint(1, lease_id) + _field(3, owner),
                          token=TOKEN)

    granted = request(holder, number=5)  # takes the only slot
    assert granted[:1] == b"\x10", granted  # GRANTED (status 0, omitted), then lease_id
    lease_id, _ = _varint_at(granted, 1)
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fa = pool.submit(request, a)
        time.sleep(0.5)
        fb = pool.submit(request, b)
        time.sleep(0.5)
        assert not fa.done() and not fb.done(), "both wait for the slot"
        assert cancel(a) == b"\x08\x01", "owner a cancels its own request"  # canceled: true
        assert fa.result(timeout=10) == b"\x08\x02"  # status CANCELED
        time.sleep(0.3)
        assert not fb.done(), "owner b's request with the same number still waits"
        assert cancel(a) == b"", "a's number is no longer waiting; b's is not a's to cancel"
        # A stranger cannot give the holder's lease back (b would get the slot).
        give_back(lease_id, a)
        time.sleep(0.3)
        assert not fb.done(), "a lease is given back only by its owner"
        give_back(lease_id, holder)
        reply = fb.result(timeout=30)
        assert reply[:1] == b"\x10", reply  # b is granted the slot its owner freed
        give_back(_varint_at(reply, 1)[0], b)
    _still_serves()


def test_an_actors_lease_is_given_back_only_by_the_controlservice_that_holds_it(cluster):
    """The head holds the leases of actor creations under its own id: a caller that
    gives leases back without naming an owner (or naming another) frees none of them."""
    cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    target = _grpc_target(swiftray.nodes()[0]["NodeManagerTCPAddress"])

    @swiftray.remote(num_cpus=1)
    class Holder:
        def ping(self):
            return "pong"

    h = Holder.remote()
    assert swiftray.get(h.ping.remote(), timeout=60) == "pong"
    assert wait_until(lambda: swiftray._core.node_stats()["available"].get("CPU", 0) == 0, timeout=30)
    for lease_id in range(1, 50):
        for owner in (b"", os.urandom(28)):
            _grpc_call(target, "/swiftray.NodeManagerService/ReturnWorkerLease",
                       _uint(1, lease_id) + (_field(3, owner) if owner else b""), token=TOKEN)
    assert swiftray._core.node_stats()["available"].get("CPU", 0) == 0, "the actor still holds its CPU"
    assert swiftray.get(h.ping.remote(), timeout=60) == "pong"


def test_a_node_keeps_a_bounded_number_of_lease_requests_waiting_and_refuses_the_rest_by_name():
    """Owners keep a few requests each; a flood of them from made-up owners fills the
    node's queue up to max_pending_lease_requests_per_node and no further: the rest are
    answered BUSY at once (their owners ask again later), and the waiting ones are still
    served."""
    c = Cluster(env={"SWIFTRAY_MAX_PENDING_LEASE_REQUESTS_PER_NODE": "3"})
    try:
        c.add_node(num_cpus=1, resources={"slot": 1})
        swiftray.init(address=c.address)
        target = _grpc_target(swiftray.nodes()[0]["NodeManagerTCPAddress"])

        def request(owner):
            body = _uint(1, 1) + _field(2, _shape(slot=10_000)) + _field(3, _field(1, owner))
            return _grpc_call(target, "/swiftray.NodeManagerService/RequestWorkerLease", body, token=TOKEN, timeout=60)

        holder = os.urandom(28)
        granted = request(holder)
        assert granted[:1] == b"\x10", granted
        import concurrent.futures
        owners = [os.urandom(28) for _ in range(5)]
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            calls = [pool.submit(request, o) for o in owners]
            assert wait_until(lambda: sum(f.done() for f in calls) >= 2, timeout=30)
            time.sleep(0.5)  # nothing else comes back: three wait
            done = [i for i, f in enumerate(calls) if f.done()]
            assert len(done) == 2, done
            for i in done:
                reply = calls[i].result()
                assert reply[:2] == b"\x08\x07", reply  # status BUSY
                assert b"max_pending_lease_requests_per_node" in reply
            for i, o in enumerate(owners):  # each waiting owner cancels its own: the queue drains
                if i not in done:
                    _grpc_call(target, "/swiftray.NodeManagerService/CancelWorkerLease", _uint(1, 1) + _field(2, o),
                               token=TOKEN)
            assert all(calls[i].result(timeout=30) == b"\x08\x02" for i in range(5) if i not in done), "canceled, not lost"
        _grpc_call(target, "/swiftray.NodeManagerService/ReturnWorkerLease",
                   _uint(1, _varint_at(granted, 1)[0]) + _field(3, holder), token=TOKEN)
        _still_serves()
    finally:
        swiftray.shutdown()
        c.shutdown()


def test_a_waiting_lease_request_of_a_client_that_stops_answering_pings_is_withdrawn():
    """gRPC keep-alive: a client whose lease request waits at a node and that then stops
    (SIGSTOP: its connection stays open, it answers no ping) loses the request once
    the node's pings go unanswered, so it holds no place in the node's bounded queue."""
    import subprocess
    import sys
    env = {"SWIFTRAY_MAX_PENDING_LEASE_REQUESTS_PER_NODE": "1",
           "SWIFTRAY_GRPC_CLIENT_KEEPALIVE_TIME_MS": "1000", "SWIFTRAY_GRPC_CLIENT_KEEPALIVE_TIMEOUT_MS": "1000"}
    c = Cluster(env=env)
    waiter = None
    try:
        c.add_node(num_cpus=1, resources={"slot": 1})
        swiftray.init(address=c.address)
        target = _grpc_target(swiftray.nodes()[0]["NodeManagerTCPAddress"])
        body = _uint(1, 1) + _field(2, _shape(slot=10_000))

        def request(owner, timeout=60):
            return _grpc_call(target, "/swiftray.NodeManagerService/RequestWorkerLease", body + _field(3, _field(1, owner)),
                              token=TOKEN, timeout=timeout)

        holder = os.urandom(28)
        assert request(holder)[:1] == b"\x10"  # the only slot is taken
        # Another process asks for it and waits (the queue's one place).
        waiter = subprocess.Popen([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_security import _grpc_call
while True:  # until it has the queue's place (a probe of the test may hold it a moment)
    r = _grpc_call({target!r}, "/swiftray.NodeManagerService/RequestWorkerLease", {body + _field(3, _field(1, os.urandom(28)))!r},
                   token={TOKEN!r}, timeout=600)
    if not (isinstance(r, bytes) and r[:2] == b"\\x08\\x07"):
        break
"""], stdout=subprocess.DEVNULL)

        def busy():
            r = request(os.urandom(28), timeout=0.5)  # queued then withdrawn by its deadline, or BUSY
            return isinstance(r, bytes) and r[:2] == b"\x08\x07"
        assert wait_until(busy, timeout=30), "the waiting process holds the queue's place"
        os.kill(waiter.pid, signal.SIGSTOP)
        # Bounded by the keep-alive (about 2 s here); a hang would keep answering BUSY.
        assert wait_until(lambda: not busy(), timeout=60), "the stopped client's request was withdrawn"
    finally:
        if waiter is not None:
            waiter.kill()
            waiter.wait()
        swiftray.shutdown()
        c.shutdown()


# ---------------------------------------------------------------- liveness of data-plane connections

KEEPALIVE = {"SWIFTRAY_DATA_PLANE_KEEPALIVE_MS": "200", "SWIFTRAY_DATA_PLANE_IDLE_TIMEOUT_MS": "1500"}


def test_an_authenticated_connection_that_goes_silent_is_closed_and_busy_ones_are_kept(monkeypatch, tmp_path):
    """A peer that shows the token and then says nothing is cut off after
    data_plane_idle_timeout_ms; connections of a real driver (whose keep-alives the
    workers answer from Swift even while Python holds the GIL for longer than the
    timeout) live on, also across an idle spell of the driver."""
    for k, v in KEEPALIVE.items():
        monkeypatch.setenv(k, v)
    c = Cluster(env=KEEPALIVE)
    try:
        head = c.add_node(num_cpus=1)
        swiftray.init(address=c.address)
        store_unix = "unix:" + os.path.join(head["session"], "sockets", "store.sock")
        for endpoint in (store_unix, swiftray.util.object_store_stats()["remote_address"]):
            s = _connect(endpoint)
            s.sendall(_preamble(TOKEN))
            s.settimeout(30)
            assert s.recv(1) == b"", f"{endpoint}: a silent, authenticated connection is closed"
            s.close()

        @swiftray.remote
        def spin(seconds):
            end = time.time() + seconds
            n = 0
            while time.time() < end:  # pure Python: the GIL is held throughout
                n += 1
            return os.getpid()

        first = swiftray.get(spin.remote(3.0), timeout=60)
        time.sleep(3.0)  # the driver idles for twice the timeout: its keep-alives go on
        assert swiftray.get(spin.remote(0.1), timeout=60) == first, "same worker, same lease path, no reconnect error"
        _still_serves()
    finally:
        swiftray.shutdown()
        c.shutdown()


def test_a_worker_that_stops_answering_is_treated_as_dead_and_its_task_retried(monkeypatch, tmp_path):
    """A SIGSTOPped worker keeps its TCP connection open but answers no keep-alive: its
    owner gives it up after data_plane_idle_timeout_ms, the node kills it, and the task
    runs again on another worker instead of waiting forever."""
    for k, v in KEEPALIVE.items():
        monkeypatch.setenv(k, v)
    c = Cluster(env=KEEPALIVE)
    marker = tmp_path / "first_attempt_pid"
    try:
        c.add_node(num_cpus=1)
        swiftray.init(address=c.address)

        @swiftray.remote(max_retries=2)
        def attempt(path):
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)  # stopped here by the test
            return os.getpid()

        ref = attempt.remote(str(marker))
        assert wait_until(lambda: marker.exists() and marker.read_text(), timeout=60)
        stopped = int(marker.read_text())
        os.kill(stopped, signal.SIGSTOP)
        try:
            second = swiftray.get(ref, timeout=120)
        finally:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert second != stopped
        assert wait_until(lambda: not pid_alive(stopped), timeout=30), "the silent worker was killed by its node"
        _still_serves()
    finally:
        swiftray.shutdown()
        c.shutdown()



# ---------------------------------------------------------------- bounded queues

def test_a_worker_refuses_pushes_beyond_its_queue_bound_naming_the_setting_and_keeps_serving():
    """Calls pushed to an actor faster than it runs queue up to
    max_queued_tasks_per_worker; the ones beyond fail with an error that names the
    setting and says what to do; the queued ones and later calls run."""
    swiftray.shutdown()
    swiftray.init(num_cpus=1, _system_config={"max_queued_tasks_per_worker": 5})
    try:
        @swiftray.remote
        class Busy:
            def slow(self):
                time.sleep(2)
                return "slow"

            def echo(self, i):
                return i

        a = Busy.remote()
        assert swiftray.get(a.echo.remote(-1), timeout=60) == -1
        slow = a.slow.remote()
        refs = [a.echo.remote(i) for i in range(20)]
        done, refused = [], []
        for i, r in enumerate(refs):
            try:
                done.append(swiftray.get(r, timeout=60))
            except swiftray.exceptions.RaySystemError as e:
                assert "max_queued_tasks_per_worker" in str(e) and "submit fewer at once" in str(e), e
                refused.append(i)
        assert swiftray.get(slow, timeout=60) == "slow"
        assert done and refused, (done, refused)
        assert done[:4] == [0, 1, 2, 3], "the calls that found room ran, in order"
        assert swiftray.get(a.echo.remote(99), timeout=60) == 99
    finally:
        swiftray.shutdown()


def test_the_kv_is_bounded_a_function_past_the_bound_fails_naming_the_setting_and_the_rest_run():
    swiftray.shutdown()
    swiftray.init(num_cpus=1, _system_config={"max_kv_bytes": 1 << 20})
    try:
        def make(i):
            blob = os.urandom(300_000)  # captured: each function exports ~300 KB

            @swiftray.remote
            def f():
                return len(blob) + i
            return f

        fs = [make(i) for i in range(5)]
        assert [swiftray.get(f.remote(), timeout=60) for f in fs[:3]] == [300_000, 300_001, 300_002]
        with pytest.raises(swiftray.exceptions.RaySystemError, match="max_kv_bytes"):
            swiftray.get(fs[3].remote(), timeout=60)
        assert swiftray.get(fs[0].remote(), timeout=60) == 300_000, "functions already exported still run"
        _still_serves()
    finally:
        swiftray.shutdown()


def test_liveness_and_bound_settings_are_range_checked_before_anything_starts():
    swiftray.shutdown()
    with pytest.raises(ValueError, match="data_plane_idle_timeout_ms .* at least twice data_plane_keepalive_ms"):
        swiftray.init(num_cpus=1, _system_config={"data_plane_keepalive_ms": 800, "data_plane_idle_timeout_ms": 1000})
    for key, bad in (("max_queued_tasks_per_worker", 0), ("max_kv_bytes", 1), ("grpc_client_keepalive_time_ms", -5),
                     ("max_pending_lease_requests_per_node", 0), ("task_reply_batch", 5000),
                     ("lease_idle_linger_ms", 10**15)):  # once a trap: 10^15 ms in ns overflowed 64 bits
        with pytest.raises(ValueError, match=f"{key} = {bad} is out of range"):
            swiftray.init(num_cpus=1, _system_config={key: bad})
    assert not swiftray.is_initialized()

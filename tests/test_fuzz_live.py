"""Live fuzzing (issue 16): a head and a node on loopback; thousands of malformed and
mutated messages, with and without the cluster token, go to every listener (both gRPC
services, the stores' data planes on Unix sockets and TCP, a worker's data plane). After
it, every node is alive and a normal workload returns right results. Seeded
(SWIFTRAY_FUZZ_SEED replays a run) and bounded in time."""
import os
import random
import socket
import struct
import time

import grpc

import swiftray
from conftest import Cluster, wait_until
from test_security import TOKEN, _encode_varint, _preamble
from test_security import _connect as _security_connect

SEED = int(os.environ.get("SWIFTRAY_FUZZ_SEED", random.randrange(1 << 32)))
BUDGET_S = 60  # for the whole barrage

EDGE = [0, 1, 127, 128, (1 << 31) - 1, (1 << 32) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 5, 1 << 62]

CONTROL = ["RegisterJob", "KVPut", "KVGet", "CreateActor", "WaitActorState", "GetNamedActor", "ListNamedActors",
           "KillActor", "ReportWorkerFailure", "MarkJobFinished", "CreatePlacementGroup", "RemovePlacementGroup",
           "GetPlacementGroup", "GetAllPlacementGroups", "WaitPlacementGroup", "GetAllNodes", "ReportResources"]
NODE = ["RequestWorkerLease", "ReturnWorkerLease", "CancelWorkerLease", "RegisterWorker", "WorkerBlocked",
        "GetWorkerFailureCause", "KillWorker", "GetNodeStats", "FreeObjects", "PrepareBundles", "CommitBundles",
        "ReturnBundles"]


def _message(rng, depth=0):
    """A random protobuf-shaped message: fields of every wire type with edge numbers,
    nested messages, lengths that lie, and junk."""
    out = b""
    for _ in range(rng.randrange(0, 8)):
        field = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 20, 536870911])
        kind = rng.randrange(6)
        if kind == 0:
            out += _encode_varint(field << 3) + _encode_varint(rng.choice(EDGE + [rng.randrange(1 << 64)]))
        elif kind == 1 and depth < 3:
            inner = _message(rng, depth + 1)
            out += _encode_varint((field << 3) | 2) + _encode_varint(len(inner)) + inner
        elif kind == 2:
            data = rng.randbytes(rng.choice([0, 1, 18, 28, 64]))
            out += _encode_varint((field << 3) | 2) + _encode_varint(len(data)) + data
        elif kind == 3:  # a length claiming more than follows
            out += _encode_varint((field << 3) | 2) + _encode_varint(rng.choice(EDGE))
        elif kind == 4:
            out += _encode_varint((field << 3) | rng.choice([1, 5])) + rng.randbytes(8)
        else:
            out += rng.randbytes(rng.randrange(1, 16))
    return out


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(0, 4)):
        if data and rng.random() < 0.5:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif data:
            del data[rng.randrange(len(data)):]
    return bytes(data)


def _grpc_barrage(rng, target, service, methods, count, deadline):
    """`count` calls of random methods with mutated bodies (a quarter without the
    token), 50 in flight at a time."""
    calls = 0
    with grpc.insecure_channel(target) as ch:
        stubs = {m: ch.unary_unary(f"/swiftray.{service}/{m}", request_serializer=None, response_deserializer=None)
                 for m in methods}
        while calls < count and time.time() < deadline:
            batch = []
            for i in range(min(50, count - calls)):
                metadata = None if (calls + i) % 4 == 0 else [("authorization", f"Bearer {TOKEN}")]
                batch.append(stubs[rng.choice(methods)].future(_mutate(rng, _message(rng)), metadata=metadata, timeout=1.0))
            for f in batch:
                try:
                    f.result()
                except grpc.RpcError:
                    pass
            calls += len(batch)
    return calls


def _connect(endpoint):
    """A non-blocking connection (test_security's, which speaks both endpoint forms)."""
    s = _security_connect(endpoint)
    s.setblocking(False)
    return s


def _closed(s):
    """Reads what the peer answered; True once it closed the connection."""
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _data_plane_barrage(rng, endpoint, count, deadline):
    """`count` mutated DataFrames on a connection that showed the token (a tenth on one
    that did not, or with a lying length prefix); reconnects whenever the peer closes."""
    sent, s = 0, None
    for i in range(count):
        if time.time() > deadline:
            break
        try:
            if s is None:
                s = _connect(endpoint)
                if i % 10:
                    s.setblocking(True)
                    s.sendall(_preamble(TOKEN))
                    s.setblocking(False)
            body = _encode_varint(8) + _encode_varint(rng.choice(EDGE)) + _encode_varint(
                (rng.choice([10, 11, 12, 14, 16, 20, 22, 23, 25, 26, 28, 30, 31, 32, 34]) << 3) | 2)
            inner = _mutate(rng, _message(rng))
            body += _encode_varint(len(inner)) + inner
            if rng.random() < 0.2:
                body = _mutate(rng, body)
            prefix = len(body) if rng.random() < 0.9 else rng.choice([0, 3, (1 << 31) - 1, (1 << 32) - 1])
            s.setblocking(True)
            s.settimeout(2)
            s.sendall(struct.pack(">I", prefix) + body)
            s.setblocking(False)
            sent += 1
            if i % 10 == 9 and _closed(s):
                s.close()
                s = None
        except OSError:
            if s is not None:
                s.close()
            s = None
    if s is not None:
        s.close()
    return sent


def test_thousands_of_malformed_messages_to_every_listener_leave_every_node_alive_and_right():
    rng = random.Random(SEED)
    print(f"live fuzz seed {SEED} (replay: SWIFTRAY_FUZZ_SEED={SEED})")
    c = Cluster()
    try:
        head = c.add_node(num_cpus=1)
        node = c.add_node(num_cpus=1, resources={"other": 1})
        swiftray.init(address=c.address)
        wait_until(lambda: len([n for n in swiftray.nodes() if n["Alive"]]) == 2, timeout=30)

        @swiftray.remote
        def square(x):
            return x * x

        @swiftray.remote
        class Counter:
            def __init__(self):
                self.n = 0

            def add(self, k):
                self.n += k
                return self.n

            def ports(self):
                """The TCP ports this worker listens on (its data plane)."""
                from test_security import _listening_tcp_ports
                return _listening_tcp_ports(os.getpid())

        counter = Counter.remote()
        assert swiftray.get(counter.add.remote(1)) == 1
        worker_tcp = [f"tcp:127.0.0.1:{p}" for p in swiftray.get(counter.ports.remote())]
        assert worker_tcp, "the actor's worker listens on TCP"
        stats = swiftray.util.object_store_stats()
        listeners = {
            "store unix": "unix:" + os.path.join(head["session"], "sockets", "store.sock"),
            "store tcp": stats["remote_address"],
            "other store unix": "unix:" + os.path.join(node["session"], "sockets", "store.sock"),
        }
        for e in worker_tcp:
            listeners["worker tcp"] = e
        start = time.time()
        deadline = start + BUDGET_S
        counts = {}
        nodes = [n for n in swiftray.nodes() if n["Alive"]]
        counts["ControlService"] = _grpc_barrage(rng, c.address, "ControlService", CONTROL, 2000, deadline)
        for n in nodes:
            target = n["NodeManagerTCPAddress"][4:]
            counts[f"NodeManager {n['NodeID'][:8]}"] = _grpc_barrage(rng, target, "NodeManagerService", NODE, 1000, deadline)
        for name, endpoint in listeners.items():
            counts[name] = _data_plane_barrage(rng, endpoint, 2000, deadline)
        took = time.time() - start
        total = sum(counts.values())
        print(f"live fuzz: {total} messages in {took:.1f} s ({total / took:.0f}/s): {counts}")
        assert total >= 3000, counts
        for n in (head, node):
            os.kill(n["pid"], 0)
        wait_until(lambda: len([n for n in swiftray.nodes() if n["Alive"]]) >= 2, timeout=30)
        assert swiftray.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]
        assert swiftray.get([square.options(resources={"other": 1}).remote(3)], timeout=60) == [9]
        assert swiftray.get(counter.add.remote(2), timeout=60) == 3
        big = swiftray.put(b"q" * (3 << 20))
        assert swiftray.get(big) == b"q" * (3 << 20)
    finally:
        swiftray.shutdown()
        c.shutdown()

"""Hardening (issue 16): a message from an authenticated peer whose numbers are out of
range gets an error reply naming the field, and the daemon goes on serving. Each case
here used to trap the whole node (a Swift integer trap). Messages are built by hand
(raw protobuf) and sent with the cluster's token."""
import os

import grpc

import swiftray
from test_security import (ERROR, READ_CHUNK, TOKEN, _encode_varint, _exchange, _frame, _grpc_call, _grpc_target,
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

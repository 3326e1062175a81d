"""The stored value layout (DESIGN §4): header, pickle stream, 64-byte-aligned
out-of-band buffers; arrays come back as read-only views, values bit-identical."""
import numpy as np
import pytest

import swiftray
from swiftray import _serialization as ser


def test_pack_aligns_out_of_band_buffers_and_unpack_returns_views():
    a = np.arange(1000, dtype=np.float64)
    b = np.ones((7, 3), dtype=np.uint8)
    data = ser.pack({"a": a, "b": b, "s": "text"}).tobytes()
    assert data[:4] == ser.MAGIC
    _, nbuf, _ = ser._HEAD.unpack_from(data, 0)
    offsets = [ser._ENTRY.unpack_from(data, ser._HEAD.size + i * ser._ENTRY.size)[0] for i in range(nbuf)]
    assert nbuf == 2 and all(off % ser.ALIGN == 0 for off in offsets)
    out = ser.unpack(data)
    assert out["s"] == "text" and np.array_equal(out["a"], a) and np.array_equal(out["b"], b)
    assert not out["a"].flags.writeable  # a view of the stored bytes, as in Ray


def test_a_call_of_small_arrays_is_one_pickle_and_a_large_array_stays_out_of_band():
    from swiftray.remote_function import pack_call
    from swiftray._worker import _args
    small = (np.arange(6, dtype="<i4").reshape(2, 3), np.array(3.5), np.zeros(0), 7, "text")
    (kind, blob), = pack_call("f", small, {})
    assert kind == 0 and isinstance(blob, bytes) and blob[:4] != ser.MAGIC  # no out-of-band buffer
    args, kwargs = _args([(0, blob)])
    assert kwargs == {} and args[3:] == (7, "text")
    for got, sent in zip(args[:3], small[:3]):
        assert got.dtype == sent.dtype and got.shape == sent.shape and np.array_equal(got, sent)
        assert not got.flags.writeable  # read-only, as an out-of-band view is
    large = np.arange(ser.SMALL_ARRAY // 8 + 1, dtype=np.float64)
    (kind, packed), = pack_call("f", (large, np.ones(2)), {})
    parts, offsets, total, refs = packed
    assert len(parts) == 2 and offsets[1] % ser.ALIGN == 0  # the large one alone, out of band
    data = ser.Packed(parts, offsets, total).tobytes()
    args, _ = _args([(0, data)])
    assert np.array_equal(args[0], large) and np.array_equal(args[1], np.ones(2))


def test_non_contiguous_arrays_round_trip():
    a = np.arange(100).reshape(10, 10)[:, ::3]
    assert np.array_equal(ser.unpack(ser.pack(a).tobytes()), a)


@pytest.mark.parametrize("size", [0, 1, 100 * 1024 - 1, 100 * 1024, 100 * 1024 + 1, 5 * 1024 * 1024 + 3])
def test_values_of_many_sizes_come_back_identical(ray_module, size):
    rng = np.random.default_rng(size)
    arr = rng.integers(0, 256, size=size, dtype=np.uint8)
    raw = arr.tobytes()
    got_arr, got_raw = swiftray.get([swiftray.put(arr), swiftray.put(raw)])
    assert np.array_equal(got_arr, arr) and got_raw == raw

    @swiftray.remote
    def echo(x):
        return x

    assert np.array_equal(swiftray.get(echo.remote(arr)), arr)


def test_arrays_from_get_are_read_only(ray_module):
    got = swiftray.get(swiftray.put(np.zeros(10)))
    with pytest.raises(ValueError):
        got[0] = 1


class Tagged(np.ndarray):
    """A subclass of ndarray: numpy's fast path must not take it for a plain array."""


def test_numpy_arguments_and_returns_of_every_kind_come_back_as_they_were(ray_module):
    # Arrays and scalars of numpy's own types go by the C pickler; object arrays (which
    # may hold refs) and subclasses go by cloudpickle. Both must give the same values.
    inner = swiftray.put("inner value")
    values = {
        "float": np.linspace(0, 1, 7), "int8": np.arange(-4, 4, dtype=np.int8),
        "bool": np.array([True, False]), "complex": np.array([1 + 2j]),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "zero-d": np.array(3.5),
        "strided": np.arange(20)[::3], "record": np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        "datetime": np.array(["2026-12-05"], dtype="datetime64[D]"), "empty": np.zeros((0, 3)),
        "f64 scalar": np.float64(2.5), "i8 scalar": np.int8(-3), "bool scalar": np.bool_(True),
        "objects": np.array([inner, "text", None], dtype=object),
        "subclass": np.arange(3.0).view(Tagged),
    }

    @swiftray.remote
    def describe(x):
        kind = type(x).__name__
        if isinstance(x, np.ndarray) and x.dtype == object:
            return kind, swiftray.get(x[0]), x[1:]
        writeable = x.flags.writeable if isinstance(x, np.ndarray) and x.size else None
        return kind, writeable, x

    for name, v in values.items():
        kind, first, back = swiftray.get(describe.remote(v))
        assert kind == type(v).__name__, name
        if name == "objects":
            assert first == "inner value" and list(back) == ["text", None]
            continue
        assert back.dtype == v.dtype and back.shape == v.shape and np.array_equal(back, v), name
        if type(v) is np.ndarray and v.size and v.flags.c_contiguous and v.dtype.kind in "biufc":
            assert first is False, name  # a view of the call's bytes, read-only as in Ray

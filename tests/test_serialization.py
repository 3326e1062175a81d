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

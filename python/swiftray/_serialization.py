"""Values <-> bytes with cloudpickle (pickle protocol 5). Refs inside values stay refs
(ObjectRef.__reduce__). Errors say which object could not be pickled and where."""
import collections
import io
import pickle
import struct
import sys
import types

import cloudpickle

from swiftray import exceptions
from swiftray.object_ref import collector
from swiftray.util import serialization as _custom

TASK_ERROR_METADATA = b"ERR:TASK_ERROR"


def dumps(value):
    """Plain cloudpickle (functions, errors, small control values)."""
    return _dumps(value)


def _code_reduce(code):
    """cloudpickle's reduction of a code object, keeping its file name: cloudpickle >= 3.1.3
    writes "<dynamic-code>" instead, and a remote traceback then names no file and shows
    no source line. The file name is argument 10 of types.CodeType on every Python we
    support (3.8 through 3.13)."""
    ctor, args = _cloudpickle_code_reduce(code)
    if len(args) > 10 and args[10] == "<dynamic-code>":
        args = args[:10] + (code.co_filename,) + args[11:]
    return ctor, args


_cloudpickle_code_reduce = cloudpickle.CloudPickler.dispatch_table[types.CodeType]


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, keeping code objects' file names, and pickling the classes of
    `util.register_serializer` their way."""

    dispatch_table = collections.ChainMap({types.CodeType: _code_reduce},
                                          cloudpickle.CloudPickler.dispatch_table)

    def reducer_override(self, obj):
        if _custom._serializers:
            custom = _custom.reducer(obj)
            if custom is not None:
                return custom
        return super().reducer_override(obj)


def _dumps(value, buffer_callback=None):
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffer_callback).dump(value)
    return out.getvalue()


# The stored layout of a value (DESIGN §4): a header, the pickle stream, then every
# out-of-band buffer (pickle protocol 5) at a 64-byte-aligned offset, so a reader can
# hand numpy a view of the stored bytes instead of a copy. A value without out-of-band
# buffers is its pickle stream alone (a protocol-5 pickle starts with b"\x80\x05").
#
#   b"SRV1" | u32 nbuffers | u64 pickle_len | nbuffers x (u64 offset, u64 length) | pickle | buffers
MAGIC = b"SRV1"
ALIGN = 64
_HEAD = struct.Struct("<4sIQ")
_ENTRY = struct.Struct("<QQ")
_HEAD_ONE = struct.Struct("<4sIQQQ")  # the header of a value with one buffer


class Packed:
    """A value laid out for the core without copying its buffers: `parts` are
    buffer-protocol objects to be written at `offsets`; `total` bytes in all; `refs`
    the ObjectRefs pickled inside it (kept alive with the packed value, so the refs
    outlive it until the core holds them)."""
    __slots__ = ("parts", "offsets", "total", "refs")

    def __init__(self, parts, offsets, total, refs=()):
        self.parts, self.offsets, self.total, self.refs = parts, offsets, total, refs

    def for_core(self):
        return (self.parts, self.offsets, self.total, self.refs)

    def tobytes(self):
        out = bytearray(self.total)
        for part, off in zip(self.parts, self.offsets):
            mv = memoryview(part).cast("B")
            out[off:off + mv.nbytes] = mv
        return bytes(out)


# Values made only of these (in tuples, lists and str-keyed dicts, a few levels deep)
# pickle the same with the C pickler as with cloudpickle, at a fraction of the cost:
# cloudpickle runs a Python hook for every object it meets.
_PLAIN = frozenset((int, float, str, bytes, bool, type(None)))


def register_plain(t):
    """Values holding instances of class `t` take the C pickler too: `t` must be
    importable by name and reduce to plain values (a call's argument slots)."""
    global _PLAIN
    _PLAIN = _PLAIN | {t}


def _is_plain(value, depth=0):
    t = type(value)
    if t in _PLAIN:
        return True
    if t.__module__ == "numpy":
        return _is_plain_numpy(value, t)
    if depth >= 3:
        return False
    if t is tuple or t is list:
        if len(value) > 64:
            return False
        for v in value:
            if type(v) not in _PLAIN and not _is_plain(v, depth + 1):
                return False
        return True
    if t is dict:
        if len(value) > 64:
            return False
        for k, v in value.items():
            if type(k) is not str or (type(v) not in _PLAIN and not _is_plain(v, depth + 1)):
                return False
        return True
    return False


def pack(value):
    buffers = []
    if _is_plain(value) and not _custom._serializers:
        # The C pickler alone: nothing in a plain value needs cloudpickle, and no ref
        # can hide in it.
        stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        refs = ()
    else:
        outer = getattr(collector, "refs", None)
        collector.refs = refs = []
        try:
            stream = _dumps(value, buffer_callback=buffers.append)
        finally:
            collector.refs = outer
    if not buffers:
        # No out-of-band buffer: the pickle stream alone (`unpack` tells it from the
        # header by its first bytes). Small values then fit inside the core's object
        # records without a separate allocation.
        return Packed([stream], [0], len(stream), _distinct(refs))
    return _laid_out(stream, buffers, refs)


def pack_plain(value, small_arrays=False):
    """`pack` for a value known to hold no ref (`is_plain`): the pickle stream itself
    (bytes, which the core takes as a packed value) when it has no out-of-band buffer,
    else its Packed layout. The cheapest way for a call's plain arguments.
    `small_arrays`: numpy arrays in it up to SMALL_ARRAY bytes go inside the stream."""
    buffers = []
    if small_arrays:
        out = io.BytesIO()
        p = pickle.Pickler(out, protocol=5, buffer_callback=buffers.append)
        p.dispatch_table = _small_array_table()
        p.dump(value)
        stream = out.getvalue()
    else:
        stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return _laid_out(stream, buffers, ()).for_core() if buffers else stream


# A numpy array up to this many bytes is pickled inside the stream, not as an
# out-of-band buffer: numpy's protocol-5 reduction and the buffer's own layout cost more
# than copying a few bytes (a call with np.zeros(1) took ~10 us to pack, ~4.5 to unpack).
SMALL_ARRAY = 4096
_small_table = None


def _small_array_table():
    global _small_table
    if _small_table is None:
        import copyreg
        np = sys.modules["numpy"]
        _small_table = dict(copyreg.dispatch_table)
        _small_table[np.ndarray] = _reduce_array
    return _small_table


def has_small_array(values):
    """True when one of `values` is a numpy array of at most SMALL_ARRAY bytes."""
    np = sys.modules.get("numpy")
    if np is None:
        return False
    nd = np.ndarray
    for v in values:
        if type(v) is nd and v.nbytes <= SMALL_ARRAY:
            return True
    return False


def _reduce_array(a):
    if a.nbytes <= SMALL_ARRAY and a.flags.c_contiguous and a.dtype.kind in "biufc":
        return _small_array, (a.tobytes(), a.dtype.str, a.shape)
    return a.__reduce_ex__(5)


def _small_array(data, dtype, shape):
    """A small array rebuilt from its bytes: a read-only view of them, as an array
    unpickled from an out-of-band buffer is (and as Ray's arguments are)."""
    np = sys.modules.get("numpy")
    if np is None:  # a worker that has not needed numpy yet
        import numpy as np
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def is_plain(value):
    """True for a value the C pickler writes as cloudpickle would, without any ref:
    builtins and numpy arrays of plain dtypes, in tuples, lists and str-keyed dicts."""
    return _is_plain(value) and not _custom._serializers


def _laid_out(stream, buffers, refs):
    raws = [_raw(b) for b in buffers]
    if len(raws) == 1:  # the common case (one array), without the general loop
        raw = raws[0]
        off = (_HEAD_ONE.size + len(stream) + ALIGN - 1) // ALIGN * ALIGN
        return Packed([_HEAD_ONE.pack(MAGIC, 1, len(stream), off, raw.nbytes) + stream, raw], [0, off],
                      off + raw.nbytes, _distinct(refs))
    header_len = _HEAD.size + _ENTRY.size * len(raws)
    pos = header_len + len(stream)
    entries = []
    for r in raws:
        pos = (pos + ALIGN - 1) // ALIGN * ALIGN
        entries.append((pos, r.nbytes))
        pos += r.nbytes
    header = bytearray(_HEAD.pack(MAGIC, len(raws), len(stream)))
    for off, n in entries:
        header += _ENTRY.pack(off, n)
    parts = [bytes(header) + stream] + raws
    offsets = [0] + [off for off, _ in entries]
    return Packed(parts, offsets, pos, _distinct(refs))


def _raw(buffer):
    try:
        return buffer.raw()
    except BufferError:  # not contiguous: let pickle copy it in-band order
        return memoryview(bytes(buffer))


def _distinct(refs):
    return list({r._id: r for r in refs}.values()) if refs else []


def unpack(data):
    """The value stored in `data` (bytes or a buffer); numpy arrays and other
    out-of-band buffers are views of `data`, read-only, not copies."""
    if type(data) is bytes and not data.startswith(MAGIC):
        return pickle.loads(data)  # a plain pickle (a small value): no view to make
    mv = memoryview(data).cast("B")
    if mv[:4] != MAGIC:
        return pickle.loads(mv)
    magic, nbuf, plen = _HEAD.unpack_from(mv, 0)
    pos = _HEAD.size
    bufs = []
    for i in range(nbuf):
        off, n = _ENTRY.unpack_from(mv, pos + i * _ENTRY.size)
        bufs.append(mv[off:off + n].toreadonly())
    start = pos + nbuf * _ENTRY.size
    return pickle.loads(mv[start:start + plen], buffers=bufs)


def loads(data, metadata=b""):
    """Returns the value stored by `pack` (or a plain pickle)."""
    return unpack(data)


def find_unpicklable(value, path, depth=0, seen=None):
    """The path and object of the innermost part of `value` that does not pickle."""
    seen = seen if seen is not None else set()
    if depth > 6 or id(value) in seen:
        return path, value
    seen.add(id(value))
    children = []
    if isinstance(value, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value):
        children = [(f"{path}.{k}", v) for k, v in vars(value).items()]
    elif callable(value) and getattr(value, "__closure__", None):
        names = value.__code__.co_freevars
        children = [(f"{path} (closure variable {n!r})", c.cell_contents)
                    for n, c in zip(names, value.__closure__) if _has_contents(c)]
    for child_path, child in children:
        try:
            cloudpickle.dumps(child, protocol=5)
        except Exception:
            return find_unpicklable(child, child_path, depth + 1, seen)
    return path, value


def _has_contents(cell):
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def serialization_error(value, what, error):
    path, obj = find_unpicklable(value, what)
    return TypeError(
        f"Could not serialize {path}: {type(obj).__module__}.{type(obj).__qualname__} object "
        f"{_short_repr(obj)} cannot be pickled ({type(error).__name__}: {error}). "
        "Pass a picklable value, or create the object inside the task.")


def _short_repr(obj):
    try:
        r = repr(obj)
    except Exception:
        r = f"<{type(obj).__name__}>"
    return r if len(r) <= 80 else r[:77] + "..."


def dumps_checked(value, what):
    try:
        return dumps(value)
    except Exception as e:
        raise serialization_error(value, what, e) from None


# Values that pack to the same bytes every time, packed once: a call without arguments
# and a task that returns None are the common small case, and pickling them again cost
# a few microseconds of every such round trip.
_CONSTANTS = {}


def pack_constant(key, value):
    """`pack(value)` for a value that never changes and holds no refs, packed once (the
    core only reads a packed value). Not cached while a custom serializer is registered:
    it may pack the value differently."""
    if _custom._serializers:
        return pack(value)
    packed = _CONSTANTS.get(key)
    if packed is None:
        packed = _CONSTANTS[key] = pack(value)
    return packed


def pack_checked(value, what):
    try:
        return pack(value)
    except Exception as e:
        raise serialization_error(value, what, e) from None


def error_to_bytes(err):
    """Pickles a RayTaskError; falls back to one without its (unpicklable) cause."""
    try:
        return dumps(err)
    except Exception:
        fallback = exceptions.RayTaskError(err.function_name, err.traceback_str, None, err.proctitle, err.pid, err.ip)
        return dumps(fallback)


def value_from_core(item):
    """One entry of `_core.get`'s result -> (is_error, value or exception). An entry is
    an exception, `(data, metadata)`, or the data alone when it has no metadata."""
    if isinstance(item, BaseException):
        return True, item
    if not isinstance(item, tuple):
        return False, loads(item)
    data, metadata = item
    if metadata == TASK_ERROR_METADATA:
        err = loads(data)
        if isinstance(err, exceptions.RayTaskError):
            return True, err.as_instanceof_cause()
        return True, err
    return False, loads(data, metadata)


def _is_plain_numpy(value, t):
    """numpy's own arrays and scalars of a dtype without Python objects: they reduce to
    numpy's functions and a buffer (out of band, protocol 5), which the C pickler writes
    as cloudpickle would. Subclasses may be defined in `__main__`: cloudpickle's."""
    np = sys.modules.get("numpy")
    if np is None:
        return False
    if t is not np.ndarray and not issubclass(t, np.generic):
        return False
    return not value.dtype.hasobject

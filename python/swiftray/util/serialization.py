"""Custom serializers for classes (Ray's ray.util.register_serializer): a value of a
registered class is pickled as `deserializer(serializer(value))`. The deserializer
travels with each value (pickled by value), so the processes that read it need no
registration. Applies to values pickled by this process from now on."""
import threading

_lock = threading.Lock()
_serializers = {}


def register_serializer(cls, *, serializer, deserializer):
    """Pickle instances of `cls` as serializer(obj), rebuilt with deserializer(data)."""
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer expects a class, got {cls!r}")
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("serializer and deserializer must be callables")
    with _lock:
        _serializers[cls] = (serializer, deserializer)


def deregister_serializer(cls):
    """Back to pickling `cls` the default way."""
    with _lock:
        _serializers.pop(cls, None)


def reducer(obj):
    """The (callable, args) for `obj` when its exact class is registered, else None."""
    entry = _serializers.get(type(obj)) if _serializers else None
    if entry is None:
        return None
    serializer, deserializer = entry
    return deserializer, (serializer(obj),)

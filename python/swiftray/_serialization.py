"""Values <-> bytes with cloudpickle (pickle protocol 5). Refs inside values stay refs
(ObjectRef.__reduce__). Errors say which object could not be pickled and where."""
import pickle

import cloudpickle

from swiftray import exceptions

TASK_ERROR_METADATA = b"ERR:TASK_ERROR"


def dumps(value):
    return cloudpickle.dumps(value, protocol=5)


def loads(data, metadata=b""):
    """Returns the value; an error object is returned as the exception instance."""
    return pickle.loads(data)


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


def error_to_bytes(err):
    """Pickles a RayTaskError; falls back to one without its (unpicklable) cause."""
    try:
        return dumps(err)
    except Exception:
        fallback = exceptions.RayTaskError(err.function_name, err.traceback_str, None, err.proctitle, err.pid, err.ip)
        return dumps(fallback)


def value_from_core(item):
    """One entry of `_core.get`'s result -> (is_error, value or exception)."""
    if isinstance(item, BaseException):
        return True, item
    data, metadata = item
    if metadata == TASK_ERROR_METADATA:
        err = loads(data)
        if isinstance(err, exceptions.RayTaskError):
            return True, err.as_instanceof_cause()
        return True, err
    return False, loads(data, metadata)

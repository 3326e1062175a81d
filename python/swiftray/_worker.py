"""The Python half of a worker process: runs the tasks the core hands it, on the main
thread. Started by the Swift host (`swiftray worker`), never by hand."""
import os
import pickle
import sys
import traceback

from swiftray import _core, _serialization, exceptions
from swiftray.remote_function import _ArgSlot

_functions = {}


def _function(fid):
    fn = _functions.get(fid)
    if fn is None:
        blob = _core.kv_get("fn", fid)
        if blob is None:
            raise exceptions.RaySystemError(f"function {fid.hex()} is not registered in the cluster")
        fn = pickle.loads(blob)
        _functions[fid] = fn
    return fn


class _ArgError(Exception):
    def __init__(self, error):
        self.error = error


def _resolve(v, values):
    if isinstance(v, _ArgSlot):
        return values[v.index]
    return v


def _args(arglist):
    """Rebuilds (args, kwargs): the pickled call with top-level refs' values put back."""
    blob = arglist[0][1]
    values = []
    for item in arglist[1:]:
        kind = item[0]
        if kind == 2:  # an error object: the task fails with it
            raise _ArgError(item[1])
        if kind == 0:
            is_error, v = _serialization.value_from_core((item[1], item[2]))
            if is_error:
                raise _ArgError(v)
            values.append(v)
        else:
            raise exceptions.RaySystemError("an object argument reached the worker unresolved")
    args, kwargs = _serialization.unpack(blob)
    return tuple(_resolve(a, values) for a in args), {k: _resolve(v, values) for k, v in kwargs.items()}


def _returns(result, num_returns, name):
    if num_returns == 1:
        return [(_serialization.pack_checked(result, f"the return value of task {name}").for_core(), b"")]
    if num_returns == 0:
        return []
    try:
        items = list(result)
    except TypeError:
        raise ValueError(f"Task {name} declared num_returns={num_returns} but returned a non-iterable "
                         f"{type(result).__name__}") from None
    if len(items) != num_returns:
        raise ValueError(f"Task {name} declared num_returns={num_returns} but returned {len(items)} values")
    return [(_serialization.pack_checked(v, f"return value {i} of task {name}").for_core(), b"")
            for i, v in enumerate(items)]


def execute(task):
    """(returns, is_application_error, is_retryable, was_cancelled) for one task."""
    task_id, fid, name, arglist, num_returns, retry_filter, attempt = task
    try:
        try:
            args, kwargs = _args(arglist)
        except _ArgError as e:
            # An argument is itself an error: the task fails with that same error.
            err = e.error
            if isinstance(err, exceptions.RayTaskError):
                data = _serialization.error_to_bytes(err)
            else:
                data = _serialization.error_to_bytes(exceptions.RayTaskError(
                    name, f"an argument of {name} failed: {type(err).__name__}: {err}", err))
            return [(data, _serialization.TASK_ERROR_METADATA)] * num_returns, True, False, False
        fn = _function(fid)
        result = fn(*args, **kwargs)
        return _returns(result, num_returns, name), False, False, False
    except KeyboardInterrupt:
        return [], False, False, True
    except Exception as e:
        tb = traceback.format_exc()
        err = exceptions.RayTaskError(name, tb, e)
        retryable = False
        if retry_filter:
            allowed = pickle.loads(retry_filter)
            retryable = allowed is True or isinstance(e, allowed)
        data = _serialization.error_to_bytes(err)
        return [(data, _serialization.TASK_ERROR_METADATA)] * num_returns, True, retryable, False


def main():
    _core.connect_worker()
    try:
        _core.worker_loop(execute)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0

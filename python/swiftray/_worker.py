"""The Python half of a worker process: runs the tasks the core hands it, on the main
thread. Started by the Swift host (`swiftray worker`), never by hand."""
import asyncio
import concurrent.futures
import inspect
import os
import pickle
import sys
import threading
import traceback

from swiftray import _core, _serialization, exceptions
from swiftray.remote_function import _ArgSlot

_functions = {}


class _ActorState:
    """The actor this worker hosts (a worker hosts at most one, for its whole life)."""
    instance = None
    actor_id = None
    class_name = ""
    reconstructed = False
    pool = None   # threaded actors: calls run here
    loop = None   # async actors: calls run as coroutines on this loop's thread
    slots = None  # async actors: bounds concurrent calls (max_concurrency)


actor = _ActorState()


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


def _fail(name, num_returns, exc_info_tb, e, retry_filter=b""):
    err = exceptions.RayTaskError(name, exc_info_tb, e)
    retryable = False
    if retry_filter:
        allowed = pickle.loads(retry_filter)
        retryable = allowed is True or isinstance(e, allowed)
    data = _serialization.error_to_bytes(err)
    return [(data, _serialization.TASK_ERROR_METADATA)] * num_returns, True, retryable, False


def _arg_failure(name, num_returns, err):
    # An argument is itself an error: the task fails with that same error.
    if isinstance(err, exceptions.RayTaskError):
        data = _serialization.error_to_bytes(err)
    else:
        data = _serialization.error_to_bytes(exceptions.RayTaskError(
            name, f"an argument of {name} failed: {type(err).__name__}: {err}", err))
    return [(data, _serialization.TASK_ERROR_METADATA)] * num_returns, True, False, False


_job = {"key": None}


def _enter_job(task_id):
    """A task of a job this worker has not served yet: add that driver's sys.path."""
    key = str(int.from_bytes(task_id[16:24], "big")).encode()
    if key == _job["key"]:
        return
    _job["key"] = key
    blob = _core.kv_get("job", key)
    if blob:
        for p in pickle.loads(blob):
            if p not in sys.path:
                sys.path.append(p)


def execute(task):
    """(returns, is_application_error, is_retryable, was_cancelled[, creation_error]) for
    one task; None when the reply comes later through _core.finish_task."""
    task_id, fid, name, arglist, num_returns, retry_filter, attempt, actor_id, method, creation, token = task
    _enter_job(task_id)
    if creation is not None:
        return _create_actor(fid, name, arglist, actor_id, creation)
    if method:
        return _call_actor(name, method, arglist, num_returns, token)
    try:
        try:
            args, kwargs = _args(arglist)
        except _ArgError as e:
            return _arg_failure(name, num_returns, e.error)
        fn = _function(fid)
        result = fn(*args, **kwargs)
        return _returns(result, num_returns, name), False, False, False
    except KeyboardInterrupt:
        return [], False, False, True
    except Exception as e:
        return _fail(name, num_returns, traceback.format_exc(), e, retry_filter)


def _create_actor(fid, name, arglist, actor_id, creation):
    """Runs the constructor; a raise fails the actor for good (its traceback goes back)."""
    try:
        try:
            args, kwargs = _args(arglist)
        except _ArgError as e:
            return [], True, False, False, f"an argument of the constructor failed: {type(e.error).__name__}: {e.error}"
        cls = _function(fid)
        actor.actor_id = actor_id
        actor.class_name = creation["class_name"]
        actor.reconstructed = creation["num_restarts"] > 0
        actor.instance = cls(*args, **kwargs)
    except BaseException as e:  # noqa: B036 - the constructor's failure is the actor's
        actor.instance = None
        tb = traceback.format_exc()
        return [], True, False, False, f"{type(e).__name__}: {e}\n{tb}"
    if creation["is_async"]:
        actor.slots = None
        actor.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(actor.loop)
            actor.slots = asyncio.Semaphore(creation["max_concurrency"])
            ready.set()
            actor.loop.run_forever()

        threading.Thread(target=run, name="swiftray-actor-loop", daemon=True).start()
        ready.wait()
    elif creation["max_concurrency"] > 1:
        actor.pool = concurrent.futures.ThreadPoolExecutor(creation["max_concurrency"],
                                                           thread_name_prefix="swiftray-actor")
    return [], False, False, False


def _run_method(name, method, arglist, num_returns):
    """One call on this thread (sync actors, and threaded actors' pool threads)."""
    try:
        try:
            args, kwargs = _args(arglist)
        except _ArgError as e:
            return _arg_failure(name, num_returns, e.error)
        result = getattr(actor.instance, method)(*args, **kwargs)
        return _returns(result, num_returns, name), False, False, False
    except KeyboardInterrupt:
        return [], False, False, True
    except Exception as e:
        return _fail(name, num_returns, traceback.format_exc(), e)


async def _run_async_method(name, method, arglist, num_returns, token):
    async with actor.slots:
        try:
            try:
                args, kwargs = _args(arglist)
            except _ArgError as e:
                out = _arg_failure(name, num_returns, e.error)
            else:
                result = getattr(actor.instance, method)(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                out = _returns(result, num_returns, name), False, False, False
        except asyncio.CancelledError:
            out = [], False, False, True
        except Exception as e:
            out = _fail(name, num_returns, traceback.format_exc(), e)
    _core.finish_task(token, out)


def _call_actor(name, method, arglist, num_returns, token):
    if actor.instance is None:
        err = exceptions.RaySystemError(f"no actor lives in this worker to run {name}")
        data = _serialization.error_to_bytes(exceptions.RayTaskError(name, str(err), err))
        return [(data, _serialization.TASK_ERROR_METADATA)] * num_returns, True, False, False
    if actor.loop is not None:
        asyncio.run_coroutine_threadsafe(_run_async_method(name, method, arglist, num_returns, token), actor.loop)
        return None
    if actor.pool is not None:
        def run():
            _core.finish_task(token, _run_method(name, method, arglist, num_returns))
        actor.pool.submit(run)
        return None
    return _run_method(name, method, arglist, num_returns)


def main():
    _core.connect_worker()
    try:
        _core.worker_loop(execute)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0

"""The Python half of a worker process: runs the tasks the core hands it, on the main
thread. Started by the Swift host (`swiftray worker`), never by hand."""
import collections
import collections.abc
import inspect
import json
import os
import pickle
import signal
import site
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
    pool = None   # threaded actors: calls run on these threads (_CallThreads)
    calls = None  # async actors: calls run as coroutines on the main thread (_AsyncCalls)


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
    """Rebuilds (args, kwargs): the pickled call with top-level refs' values put back.
    A call without arguments sends none at all."""
    if not arglist:
        return (), {}
    blob = arglist[0][1]
    if len(arglist) == 1:
        # No ref among the arguments, so no slot to fill: the call as it was pickled.
        return _serialization.unpack(blob)
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


# num_returns < 0: a generator. -1 streaming (its reply is the item count); DYNAMIC
# (num_returns="dynamic"): its reply unpickles as the DynamicObjectRefGenerator of its items.
DYNAMIC = -2


def _slots(num_returns):
    # A generator has one return: the stream's end.
    return 1 if num_returns < 0 else num_returns


def _item(value, index, name):
    """(item, ok): a value that does not pickle becomes an error item, the stream's last."""
    try:
        return (_serialization.pack_checked(value, f"item {index} of generator {name}").for_core(), b""), True
    except Exception as e:
        return _error_item(name, e), False


def _error_item(name, e):
    err = exceptions.RayTaskError(name, _user_traceback(), e)
    return (_serialization.error_to_bytes(err), _serialization.TASK_ERROR_METADATA)


def _not_a_generator(result, name):
    return TypeError(f"{name} was called with num_returns='streaming' but returned a {type(result).__name__}, "
                     "not a generator: use `yield` in it, or another num_returns.")


def _stream(result, token, name, dynamic_task=None):
    """Runs a streaming generator on this thread: each item is reported to the owner as
    it is yielded (the core pauses here while the reader is `generator_backpressure`
    items behind, and says when the reader dropped the generator). An exception the
    generator raises is its last item. The reply: the item count."""
    if inspect.isasyncgen(result):
        return _stream_async_on_own_loop(result, token, name, dynamic_task)
    if not inspect.isgenerator(result) and not isinstance(result, collections.abc.Iterator):
        raise _not_a_generator(result, name)
    index = 0
    while True:
        try:
            value = next(result)
        except StopIteration:
            break
        except Exception as e:
            _report(token, index, _error_item(name, e))
            index += 1
            break
        item, ok = _item(value, index, name)
        index += 1
        if _report(token, index - 1, item) or not ok:
            getattr(result, "close", lambda: None)()
            break
    return _count(index, token, dynamic_task)


def _report(token, index, item):
    """True when the reader dropped the generator (stop producing)."""
    step = _core.report_generator_item(token, index, item)
    if step == 2:  # paused: the reader is too far behind
        return _core.wait_generator_consumed(token, index)
    return step == 1


async def _report_async(token, index, item):
    step = _core.report_generator_item(token, index, item)
    if step == 2:  # paused, without blocking the actor's event loop
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(None, _core.wait_generator_consumed, token, index)
    return step == 1


async def _stream_async(result, token, name, dynamic_task=None):
    """As _stream, for an async generator (async actors)."""
    if not inspect.isasyncgen(result):
        if inspect.isgenerator(result):
            return _stream(result, token, name, dynamic_task)
        raise _not_a_generator(result, name)
    index = 0
    while True:
        try:
            value = await result.__anext__()
        except StopAsyncIteration:
            break
        except Exception as e:
            await _report_async(token, index, _error_item(name, e))
            index += 1
            break
        item, ok = _item(value, index, name)
        index += 1
        if await _report_async(token, index - 1, item) or not ok:
            await result.aclose()
            break
    return _count(index, token, dynamic_task)


def _stream_async_on_own_loop(result, token, name, dynamic_task=None):
    import asyncio
    return asyncio.run(_stream_async(result, token, name, dynamic_task))


def _count(n, token, task_id=None):
    # A dynamic generator's end unpickles, wherever it is read, as refs to its n items
    # (owned by its caller, which holds them for as long as this value lives).
    value = n if task_id is None else _DynamicRefs(task_id, n, _core.generator_owner(token))
    return [(_serialization.pack_checked(value, "a generator's item count").for_core(), b"")]


class _DynamicRefs:
    __slots__ = ("task_id", "count", "owner")

    def __init__(self, task_id, count, owner):
        self.task_id, self.count, self.owner = task_id, count, owner

    def __reduce__(self):
        from swiftray.object_ref import _dynamic_generator
        return (_dynamic_generator, (self.task_id, self.count, self.owner))


# Returned as they are most often: the pickle stream is the packed value (no layout, no
# out-of-band buffer, no ref can hide in them), made by the C pickler alone.
_SCALARS = frozenset((bytes, str, int, float, bool))


def _returns(result, num_returns, name):
    if num_returns == 1:
        if result is None:
            return [(_serialization.pack_constant("none", None).for_core(), b"")]
        if type(result) in _SCALARS and not _serialization._custom._serializers:
            return [(pickle.dumps(result, protocol=5), b"")]
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


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_traceback():
    """The traceback of the exception being handled, as the user wants it (as Ray
    shows it): the user's frames only, without swiftray's own (the worker loop, get)."""
    etype, value, tb = sys.exc_info()
    te = traceback.TracebackException(etype, value, tb)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if not os.path.abspath(f.filename).startswith(_PACKAGE_DIR)])
    lines = list(te.format())
    if lines and lines[0].startswith("Traceback (most recent call last)"):
        lines = lines[1:]
    return "".join(lines)


def _fail(name, num_returns, exc_info_tb, e, retry_filter=b""):
    err = exceptions.RayTaskError(name, exc_info_tb, e)
    retryable = False
    if retry_filter:
        allowed = pickle.loads(retry_filter)
        retryable = allowed is True or isinstance(e, allowed)
    data = _serialization.error_to_bytes(err)
    return [(data, _serialization.TASK_ERROR_METADATA)] * _slots(num_returns), True, retryable, False


def _arg_failure(name, num_returns, err):
    # An argument is itself an error: the task fails with that same error.
    if isinstance(err, exceptions.RayTaskError):
        data = _serialization.error_to_bytes(err)
    else:
        data = _serialization.error_to_bytes(exceptions.RayTaskError(
            name, f"an argument of {name} failed: {type(err).__name__}: {err}", err))
    return [(data, _serialization.TASK_ERROR_METADATA)] * _slots(num_returns), True, False, False


_job = {"key": None, "raw": None}
# This worker's runtime_env, as the core gave it (canonical JSON; "" for none).
_runtime_env_json = ""
# Whether the runtime_env ships code (a working_dir or py_modules): then that code, not
# the driver's sys.path on a shared filesystem, is what tasks import.
_ships_code = False


def _apply_runtime_env():
    """Applies what the node set up for this worker's runtime_env (env vars, working
    folder, shipped code and installed packages on sys.path) before any user code runs.
    The context is popped so the processes the user's code starts do not inherit it."""
    global _runtime_env_json, _ships_code
    raw = os.environ.pop("SWIFTRAY_RUNTIME_ENV_CONTEXT", "")
    if not raw:
        return
    try:
        context = json.loads(raw)
    except ValueError as e:
        raise RuntimeError(f"SWIFTRAY_RUNTIME_ENV_CONTEXT is not valid JSON ({e}); "
                           f"the node and this worker disagree on its format") from None
    os.environ.update(context.get("env_vars") or {})
    if context.get("cwd"):
        os.chdir(context["cwd"])
    # Site dirs first, then sys_path in front of them: shipped code wins over installed
    # packages, which win over the system's (as Ray, whose PYTHONPATH precedes the venv).
    for d in reversed(context.get("site_dirs") or ()):
        _add_site_dir_first(d)
    sys_path = list(context.get("sys_path") or ())
    sys.path[:] = sys_path + [p for p in sys.path if p not in sys_path]
    _runtime_env_json = context.get("runtime_env") or ""
    _ships_code = bool(context.get("cwd") or sys_path)


def _add_site_dir_first(d):
    """site.addsitedir appends (and runs the dir's .pth files); the entries it added move
    to the front so a venv's packages shadow the system's."""
    before = set(sys.path)
    site.addsitedir(d)
    added = [d] + [p for p in sys.path if p not in before and p != d]
    moved = set(added)
    sys.path[:] = added + [p for p in sys.path if p not in moved]


def _enter_job(task_id):
    """A task of a job this worker has not served yet: add that driver's sys.path (unless
    the runtime_env ships the code), and run in its namespace (an actor keeps its
    creator's, whoever calls it)."""
    raw = task_id[16:24]
    if raw == _job["raw"]:  # the job of the last task, as almost always: nothing to do
        return
    _job["raw"] = raw
    key = str(int.from_bytes(raw, "big")).encode()
    if key == _job["key"]:
        return
    _job["key"] = key
    blob = _core.kv_get("job", key)
    if not blob:
        return
    record = pickle.loads(blob)
    if isinstance(record, list):  # a driver of an earlier version
        record = {"sys_path": record}
    for p in () if _ships_code else record.get("sys_path", ()):
        if p not in sys.path:
            sys.path.append(p)
    if record.get("namespace") and actor.instance is None:
        from swiftray import _api
        _api._state["namespace"] = record["namespace"]


class _Assigned:
    """What the running task (or this worker's actor) holds: its GPU ids and resources."""
    gpu_ids = []
    resources = {}


assigned = _Assigned()
# CUDA_VISIBLE_DEVICES as the worker started: assigned ids index into it (as in Ray).
_original_visible = os.environ.get("CUDA_VISIBLE_DEVICES")


def _visible_ids(ids):
    if _original_visible is None:
        return list(ids)
    original = [x for x in _original_visible.split(",") if x.strip()]
    if all(0 <= i < len(original) for i in ids):
        return [original[i] for i in ids]
    return original


def _hold(gpu_ids, resources):
    """Records what the task holds and shows its GPUs to CUDA (only when it holds some,
    as Ray); returns what to restore after it."""
    assigned.gpu_ids = _visible_ids(gpu_ids)
    assigned.resources = resources
    if not gpu_ids:
        return None
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in assigned.gpu_ids)
    return (before,)


def _release(saved):
    assigned.gpu_ids, assigned.resources = [], {}
    if saved is None:
        return
    if saved[0] is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = saved[0]


def execute(task):
    """(returns, is_application_error, is_retryable, was_cancelled[, creation_error]) for
    one task; None when the reply comes later through _core.finish_task."""
    (task_id, fid, name, arglist, num_returns, retry_filter, attempt, actor_id, method, creation, token,
     gpu_ids, resources) = task
    _enter_job(task_id)
    if creation is not None:
        # The actor holds its GPUs and resources for its whole life.
        _hold(gpu_ids, resources)
        return _create_actor(fid, name, arglist, actor_id, creation)
    if method:
        return _call_actor(name, method, arglist, num_returns, token, task_id)
    saved = _hold(gpu_ids, resources)
    try:
        try:
            args, kwargs = _args(arglist)
        except _ArgError as e:
            return _arg_failure(name, num_returns, e.error)
        fn = _function(fid)
        result = fn(*args, **kwargs)
        if num_returns < 0:
            return _stream(result, token, name, task_id if num_returns == DYNAMIC else None), False, False, False
        return _returns(result, num_returns, name), False, False, False
    except KeyboardInterrupt:
        return [], False, False, True
    except Exception as e:
        return _fail(name, num_returns, _user_traceback(), e, retry_filter)
    finally:
        _release(saved)


class ActorExit(SystemExit):
    """Raised by exit_actor(): a SystemExit, so `except Exception` in user code lets it
    through to the worker, which ends the actor on purpose."""


def _exit_actor():
    """exit_actor() was called in this actor: the head records an intended death (no
    restart; its callers get ActorDiedError saying so), then the process ends."""
    try:
        # The calls that finished before this one still answer (a reply may be held to
        # go with the next one).
        _core.release_held_replies()
        _core.kill_actor(actor.actor_id, True, "exit_actor() was called in it (an intended exit; it is not restarted)")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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
    except ActorExit:
        _exit_actor()
    except BaseException as e:  # noqa: B036 - the constructor's failure is the actor's
        actor.instance = None
        tb = _user_traceback()
        return [], True, False, False, f"{type(e).__name__}: {e}\n{tb}"
    if creation["is_async"]:
        actor.calls = _AsyncCalls(creation["max_concurrency"])
        _core.leave_worker_loop()  # main() then serves its calls on the event loop
    elif creation["max_concurrency"] > 1:
        actor.pool = _CallThreads(creation["max_concurrency"])
    return [], False, False, False


def _run_method(name, method, arglist, num_returns, token, task_id=None):
    """One call on this thread (sync actors, and threaded actors' pool threads)."""
    try:
        try:
            args, kwargs = _args(arglist)
        except _ArgError as e:
            return _arg_failure(name, num_returns, e.error)
        result = getattr(actor.instance, method)(*args, **kwargs)
        if num_returns < 0:
            return _stream(result, token, name, task_id if num_returns == DYNAMIC else None), False, False, False
        return _returns(result, num_returns, name), False, False, False
    except ActorExit:
        _exit_actor()
    except KeyboardInterrupt:
        return [], False, False, True
    except Exception as e:
        return _fail(name, num_returns, _user_traceback(), e)


def _spinning_selector():
    import selectors

    class SpinningSelector(selectors.DefaultSelector):
        """Before the loop sleeps, looks for events without sleeping for a moment (the
        core's spin policy, GIL released): a caller in a loop sends its next call within
        microseconds, and a thread that has not gone to sleep needs no wake-up."""

        def select(self, timeout=None):
            if (timeout is None or timeout > 0) and _core.spin_until_readable(self.fileno(), timeout):
                timeout = 0
            return super().select(timeout)

    return SpinningSelector()


class _AsyncCalls:
    """An async actor's calls, run as coroutines on an event loop on the main thread.

    Threading: the main thread only. After the constructor, worker_loop hands the
    thread over (leave_worker_loop) and serve() runs the loop until shutdown; the loop
    watches the core's executions fd and takes every call queued at once, so a call
    costs no thread hand-off, and a burst one wake-up. At most max_concurrency run;
    the rest stay queued in the core (bounded, max_queued_tasks_per_worker)."""

    def __init__(self, max_concurrency):
        import asyncio  # only async actors pay for it (~30 ms of a worker's start)
        self.loop = asyncio.SelectorEventLoop(_spinning_selector())
        self.limit = max_concurrency
        self.running = 0
        self.more = False  # calls may wait in the core for a free slot

    def serve(self):
        import asyncio
        asyncio.set_event_loop(self.loop)
        fd = _core.executions_fd()
        self.loop.add_reader(fd, self.take)
        self.loop.call_soon(self.take)
        self.loop.call_later(1.0, self.watch)
        try:
            self.loop.run_forever()
        finally:
            self.loop.remove_reader(fd)

    def watch(self):
        if not _core.is_initialized():
            self.loop.stop()
        else:
            self.loop.call_later(1.0, self.watch)

    def take(self):
        room = self.limit - self.running
        tasks = _core.take_executions(max(room, 0))
        self.more = len(tasks) >= room
        start = self.loop.create_task
        for task in tasks:
            method, token = task[8], task[10]
            _enter_job(task[0])
            if not method or actor.instance is None:
                out = execute(task)
                if out is not None:
                    _core.finish_task(token, out)
                continue
            self.running += 1
            start(self.call(task[2], method, task[3], task[4], token, task[0]))

    async def call(self, name, method, arglist, num_returns, token, task_id):
        try:
            out = await _run_async_method(name, method, arglist, num_returns, token, task_id)
        finally:
            self.running -= 1
            if self.more:
                self.more = False
                self.loop.call_soon(self.take)
        _core.finish_task(token, out)


class _CallThreads:
    """A threaded actor's calls and the threads (at most max_concurrency) that run them.

    Threading: put() is called on the main thread; the rest runs on the runner threads
    and the watcher, all under `lock` for the counts.

    Runners are added lazily. One runner drains the queue while its calls keep
    finishing: no wake-up and no GIL hand-off to yet another thread per call (16
    threads woken in turn cost a no-op call 19-22 us of worker CPU where one thread
    costs 12). Concurrency comes as calls need it: while calls wait and none started
    for a whole `PATIENCE` (every runner is inside a call that blocks or runs long),
    the watcher wakes or starts one more runner, up to max_concurrency. So a call
    waits at most about `PATIENCE` per runner added behind calls that block."""

    PATIENCE = 0.001  # seconds without a call started, calls waiting: one more runner

    def __init__(self, max_concurrency):
        self.calls = collections.deque()
        self.limit = max_concurrency
        self.lock = threading.Lock()
        self.threads = 0       # runners started
        self.running = 0       # runners not parked
        self.parked = []       # a parked runner's gate (held; released to wake it)
        self.started = 0       # calls taken by a runner, ever (the watcher's clock)
        self.watching = False  # the watcher is awake (else parked on watch_gate)
        self.watch_gate = threading.Lock()
        self.watch_gate.acquire()
        self.watcher = None

    def put(self, call):
        with self.lock:
            self.calls.append(call)
            if self.running == 0:
                gate = self._runner_locked()
                watch = False
            else:
                # A runner is inside a call: if it blocks, the watcher adds another.
                gate, watch = None, not self.watching and self.running < self.limit
                if watch:
                    self.watching = True
        self._wake(gate)
        if watch:
            if self.watcher is None:
                self.watcher = threading.Thread(target=self.watch, name="swiftray-actor-watch", daemon=True)
                self.watcher.start()
            else:
                self.watch_gate.release()

    def _runner_locked(self):
        """One more runner counted as running: a parked one's gate to release, or
        True for a thread to start; None at max_concurrency. Under `lock`."""
        if self.parked:
            self.running += 1
            return self.parked.pop()
        if self.threads < self.limit:
            self.threads += 1
            self.running += 1
            return True
        return None

    def _wake(self, gate):
        if gate is True:
            threading.Thread(target=self.run, name=f"swiftray-actor-{self.threads}", daemon=True).start()
        elif gate is not None:
            gate.release()

    def run(self):
        calls, lock = self.calls, self.lock
        gate = threading.Lock()
        gate.acquire()
        while True:
            with lock:
                if not calls:
                    self.running -= 1
                    self.parked.append(gate)
                    call = None
                else:
                    call = calls.popleft()
                    self.started += 1
            if call is None:
                gate.acquire()  # until put() or the watcher releases it
                continue
            name, method, arglist, num_returns, token, task_id = call
            out = _run_method(name, method, arglist, num_returns, token, task_id)
            # More calls queued: this reply may leave with the next one's (bounded in
            # count and time by the core, so a call that then blocks holds none back).
            _core.finish_task(token, out, bool(calls))

    def watch(self):
        import time
        while True:
            seen = -1
            while True:
                time.sleep(self.PATIENCE)
                with self.lock:
                    if not self.calls or self.running >= self.limit:
                        self.watching = False
                        break
                    stuck, seen = self.started == seen, self.started
                    gate = self._runner_locked() if stuck else None
                self._wake(gate)
            self.watch_gate.acquire()  # until put() finds calls behind a busy runner


async def _run_async_method(name, method, arglist, num_returns, token, task_id=None):
    import asyncio
    try:
        try:
            args, kwargs = _args(arglist)
        except _ArgError as e:
            return _arg_failure(name, num_returns, e.error)
        result = getattr(actor.instance, method)(*args, **kwargs)
        if num_returns < 0:
            dynamic_task = task_id if num_returns == DYNAMIC else None
            return await _stream_async(result, token, name, dynamic_task), False, False, False
        if inspect.isawaitable(result):
            result = await result
        return _returns(result, num_returns, name), False, False, False
    except ActorExit:
        _exit_actor()
    except asyncio.CancelledError:
        return [], False, False, True
    except Exception as e:
        return _fail(name, num_returns, _user_traceback(), e)


def _call_actor(name, method, arglist, num_returns, token, task_id):
    if actor.instance is None:
        err = exceptions.RaySystemError(f"no actor lives in this worker to run {name}")
        data = _serialization.error_to_bytes(exceptions.RayTaskError(name, str(err), err))
        return [(data, _serialization.TASK_ERROR_METADATA)] * _slots(num_returns), True, False, False
    if actor.pool is not None:
        actor.pool.put((name, method, arglist, num_returns, token, task_id))
        return None
    return _run_method(name, method, arglist, num_returns, token, task_id)


def _on_sigint(signum, frame):
    # cancel() interrupts the running task with SIGINT; the core says whether this one
    # is for the task running now (one that lands after its task ended is dropped).
    # An async actor's calls share the main thread's event loop: an interrupt there
    # would end the loop, not the one call, so it is dropped.
    if _core.take_interrupt() and actor.calls is None:
        raise KeyboardInterrupt


_running_as_worker = False


def main():
    global _running_as_worker
    _running_as_worker = True
    _apply_runtime_env()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        _core.connect_worker()
    except exceptions.LocalRayletDiedError as e:
        # A node that stops while this worker starts refuses it: that is no failure to
        # report (a traceback on the driver's console at every shutdown would be noise).
        if "shutting down" not in str(e):
            print(f"swiftray worker: {e}", file=sys.stderr)
        return 1
    # The node's lease-grant key was for the core (which cleared its own copy); user
    # code and the processes it starts do not see it.
    os.environ.pop("SWIFTRAY_LEASE_KEY", None)
    try:
        if _core.worker_loop(execute) and actor.calls is not None:
            actor.calls.serve()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _adopt_environment(env):
    """In a worker just forked by the node's fork server: `env` becomes the whole
    environment (os.environ and the process's own, which the core reads)."""
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    os.environ.update(env)

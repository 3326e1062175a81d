"""The driver-facing calls: init, shutdown, get, put, wait, cancel, cluster queries.
Thin: validation and (de)serialization here, everything else in the Swift core."""
import atexit
import json
import logging
import operator
import os
import sys
import threading
import uuid

from swiftray import _core, _runtime_env, _serialization, exceptions
from swiftray import object_ref
from swiftray.object_ref import ObjectRef, ObjectRefGenerator

logger = logging.getLogger("swiftray")
_lock = threading.RLock()
_state = {"session": 0, "info": None}


def _bin_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "swiftray")


def _total_memory():
    """The memory a local cluster offers: its container's limit, else the machine's."""
    return _core.usable_memory()


def is_initialized():
    return _core.is_initialized()


def init(address=None, *, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
         namespace=None, ignore_reinit_error=False, logging_level=logging.INFO, log_to_driver=True,
         include_dashboard=None, dashboard_host="127.0.0.1", dashboard_port=None, object_spilling_directory=None,
         _system_config=None, _metrics_export_port=None, runtime_env=None, **kwargs):
    """Starts a local cluster of one node inside this process and connects to it.

    object_store_memory: bytes of the node's shared-memory object store (default 30 % of
    RAM, or SWIFTRAY_OBJECT_STORE_MEMORY). object_spilling_directory: where objects are
    spilled when the store passes 80 % (default: the session's temp dir).
    _metrics_export_port: serve Prometheus metrics at http://127.0.0.1:PORT/metrics (0: a
    free port, see `nodes()[0]["MetricsExportPort"]`). include_dashboard=True: serve the
    web dashboard on dashboard_host:dashboard_port (default 127.0.0.1:8265, or a free port
    when 8265 is taken; 0: a free one) and print its login link. By default a local
    cluster opens no TCP port. runtime_env: the job's runtime environment (env_vars,
    working_dir, py_modules, pip, excludes, config), which its tasks and actors inherit."""
    if kwargs:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
    _runtime_env.validate(runtime_env)  # bad input fails before any cluster starts
    with _lock:
        if _core.is_initialized():
            if ignore_reinit_error:
                return _state["info"]
            raise RuntimeError("Maybe you called swiftray.init twice by accident? "
                               "This error can be suppressed by passing in 'ignore_reinit_error=True' "
                               "or by calling 'swiftray.shutdown()' prior to 'swiftray.init()'.")
        address = address or os.environ.get("SWIFTRAY_ADDRESS") or _ray_address() or None
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise TypeError(f"namespace must be a non-empty str, got {namespace!r}")
        if address not in (None, "local"):
            if (num_cpus is not None or num_gpus is not None or resources is not None
                    or object_store_memory is not None or _metrics_export_port is not None):
                raise ValueError("When connecting to an existing cluster, num_cpus, num_gpus, resources and "
                                 "object_store_memory (nor _metrics_export_port) must not be provided: the "
                                 "cluster's nodes set them.")
            session = _resolve_address(address)
            info = _core.connect_driver(session, bool(log_to_driver))
            return _started(info, namespace, logging_level, runtime_env)
        for name, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"{name} must be a non-negative number, got {v!r}")
        if resources is not None:
            if not isinstance(resources, dict) or not all(isinstance(k, str) for k in resources):
                raise TypeError("resources must be a dict of str to number")
            if "CPU" in resources or "GPU" in resources:
                raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' in 'resources' keyword")
        if object_store_memory is None and os.environ.get("SWIFTRAY_OBJECT_STORE_MEMORY"):
            object_store_memory = int(os.environ["SWIFTRAY_OBJECT_STORE_MEMORY"])
        if object_store_memory is not None and (isinstance(object_store_memory, bool)
                                                or not isinstance(object_store_memory, int)
                                                or object_store_memory < (1 << 20)):
            raise ValueError(f"object_store_memory must be a number of bytes of at least 1 MiB, "
                             f"got {object_store_memory!r}")
        if object_spilling_directory is not None and not isinstance(object_spilling_directory, (str, os.PathLike)):
            raise TypeError(f"object_spilling_directory must be a path, got {object_spilling_directory!r}")
        if _metrics_export_port is not None and (isinstance(_metrics_export_port, bool)
                                                 or not isinstance(_metrics_export_port, int)
                                                 or not 0 <= _metrics_export_port <= 65535):
            raise ValueError(f"_metrics_export_port must be a port number 0-65535 (0: a free one), "
                             f"got {_metrics_export_port!r}")
        if include_dashboard not in (None, True, False):
            raise TypeError(f"include_dashboard must be True, False or None, got {include_dashboard!r}")
        if dashboard_port is not None and (isinstance(dashboard_port, bool) or not isinstance(dashboard_port, int)
                                           or not 0 <= dashboard_port <= 65535):
            raise ValueError(f"dashboard_port must be a port number 0-65535 (0: a free one), got {dashboard_port!r}")
        if not isinstance(dashboard_host, str) or not dashboard_host:
            raise TypeError(f"dashboard_host must be an IP address as a str, got {dashboard_host!r}")
        if _system_config is not None and not isinstance(_system_config, dict):
            raise TypeError("_system_config must be a dict")
        cpus = os.cpu_count() if num_cpus is None else num_cpus
        total = {"CPU": float(cpus), "GPU": float(num_gpus or 0), "memory": float(_total_memory())}
        for k, v in (resources or {}).items():
            total[k] = float(v)
        opts = {
            "resources": {k: v for k, v in total.items() if v},
            "worker_executable": _bin_path(),
            "python": sys.executable,
            "sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
            "prestart": int(cpus),
            "system_config": {k: v for k, v in (_system_config or {}).items()},
            "log_to_driver": bool(log_to_driver),
            "object_store_memory": object_store_memory,
            "object_spilling_directory": (os.path.abspath(os.fspath(object_spilling_directory))
                                          if object_spilling_directory is not None else None),
            "metrics_export_port": _metrics_export_port,
            "dashboard_host": dashboard_host if include_dashboard else None,
            "dashboard_port": dashboard_port,
        }
        info = _core.init(opts)
        if info.get("dashboard_login_url"):
            # As Ray prints where its dashboard is; the link signs a browser in (as Jupyter's).
            print(f"View the dashboard at {info['dashboard_login_url']}", file=sys.stderr, flush=True)
        return _started(info, namespace, logging_level, runtime_env)


class _PackageStore:
    """The head's package store as `_runtime_env.prepare` uses it."""

    @staticmethod
    def exists(uri):
        return _core.package_exists(uri)

    @staticmethod
    def upload(uri, data):
        _core.package_upload(uri, data)


_PACKAGES = _PackageStore()


def current_runtime_env():
    """The canonical runtime_env (JSON, "" for none) new tasks and actors inherit: the
    job's in a driver, the worker's own in a worker (as Ray's nested tasks)."""
    # Looked up, not imported: an import statement per task costs more than the rest
    # (and a process that never imported the worker module is no worker).
    _worker = sys.modules.get("swiftray._worker")
    if _worker is not None and _worker._running_as_worker:
        return _worker._runtime_env_json
    return _state.get("runtime_env", "")


def resolve_runtime_env(option):
    """A task's or actor's runtime_env option merged over the one it inherits, with its
    local folders packed and uploaded (once): the canonical JSON the core gets."""
    parent = current_runtime_env()
    if option is None:
        return parent
    return _runtime_env.resolve(option, parent, _PACKAGES)


def _started(info, namespace, logging_level, runtime_env=None):
    logging.getLogger("swiftray").setLevel(logging_level)
    _state["session"] += 1
    _state["info"] = info
    # A new cluster holds none of the packages uploaded to an earlier one.
    _runtime_env.forget_uploads()
    # A submitted job's driver: the head set the job's runtime_env up for it (its
    # packages are in the store); init's own runtime_env goes over it, as a task's would.
    job_env = os.environ.get("SWIFTRAY_JOB_RUNTIME_ENV", "")
    try:
        _state["runtime_env"] = _runtime_env.resolve(runtime_env, job_env, _PACKAGES) if runtime_env else job_env
    except BaseException:
        _core.shutdown()
        _state["info"] = None
        raise
    if _state["runtime_env"] and json.loads(_state["runtime_env"]).get("config", {}).get("eager_install", True):
        # As Ray: the job's environment is set up on this node now, not by its first task.
        _core.prepare_runtime_env(_state["runtime_env"])
    # As Ray: a job without a namespace gets an anonymous one of its own.
    _state["namespace"] = namespace or f"anonymous-{uuid.uuid4()}"
    # Workers import this driver's modules with its sys.path (they may have been
    # started for another driver).
    # Its tasks and actors run in its namespace.
    record = {"sys_path": [os.path.abspath(p) if p else os.getcwd() for p in sys.path],
              "namespace": _state["namespace"], "runtime_env": _state["runtime_env"]}
    _core.kv_put("job", job_key(info["job_id"]), _serialization.dumps(record), True)
    return info


def job_key(job_id_hex):
    return str(int(job_id_hex, 16)).encode()


def _sessions_root():
    """This user's sessions folder, as the core computes it ($TMPDIR/swiftray-<uid>)."""
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"swiftray-{os.getuid()}")


def _ray_address():
    """$RAY_ADDRESS, as Ray's init() reads it (KubeRay sets it in every pod: `kubectl exec`
    then `python script.py` joins the pod's cluster); an http:// one is the Jobs API's,
    for `ray job`, not a cluster to join."""
    a = os.environ.get("RAY_ADDRESS", "")
    return None if a.startswith(("http://", "https://")) else a


def _resolve_address(address):
    """The session directory of the running cluster `address` names: "auto" (the newest
    one running on this machine), its ControlService socket ("unix:.../gcs.sock", as
    get_runtime_context().gcs_address gives it), or the session directory itself."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a str, got {type(address).__name__}")
    if address == "auto":
        session = _core.newest_session(_sessions_root())
        if session is None:
            raise ConnectionError(
                "Could not find any running swiftray cluster on this machine (looked in "
                f"{_sessions_root()}). Start one with `swiftray start --head`, or call init() without "
                "an address to start a local cluster.")
        return session
    path = address[len("unix:"):] if address.startswith("unix:") else address
    if path.endswith(".sock"):
        sockets = os.path.dirname(path)
        back = os.path.join(sockets, "session")  # sockets kept apart from a long temp dir
        if os.path.exists(back):
            with open(back) as f:
                path = f.read().strip()
        else:
            path = os.path.dirname(sockets)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "sockets", "raylet.sock")):
        return path
    if ":" in address and not address.startswith("unix:"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address must be 'auto', HOST:PORT or a session directory, got {address!r}")
        try:
            session = _core.local_node_session(f"tcp:{host}:{port}")
        except exceptions.AuthenticationError:
            raise  # reached, and refused: it says which token and where to find the right one
        except Exception as e:
            raise ConnectionError(f"Cannot reach the swiftray cluster at {address}: {e}. Is its head running "
                                  "(`swiftray start --head --port ...`) and the port open?") from None
        if session is None:
            raise ConnectionError(
                f"The cluster at {address} has no node on this machine: a driver needs a local node. "
                f"Start one with `swiftray start --address={address}`.")
        return session
    raise ConnectionError(f"No running swiftray cluster at {address!r}: its ControlService socket "
                          f"({os.path.join(path, 'sockets', 'gcs.sock')}) does not exist. "
                          "Use address='auto' to join the cluster running on this machine.")


def current_namespace():
    return _state.get("namespace") or "default"


def _ensure_init():
    if not _core.is_initialized():
        init()


def shutdown():
    """Stops every worker and the local cluster; nothing is left behind."""
    with _lock:
        object_ref._availability.reset()
        _core.shutdown()
        _state["info"] = None


atexit.register(shutdown)


def _check_refs(object_refs, what):
    # At C speed when all are plain ObjectRefs (the usual case: no Python-level loop).
    if not set(map(type, object_refs)) - {ObjectRef}:
        return
    for r in object_refs:
        if isinstance(r, ObjectRefGenerator):
            raise TypeError(f"{what} expects ObjectRefs, got an ObjectRefGenerator: iterate it "
                            "(`for ref in gen: swiftray.get(ref)`), or pass it to wait().")
        if not isinstance(r, ObjectRef):
            raise TypeError(f"{what} expects ObjectRefs, got {type(r).__name__} {r!r}")


def put(value):
    _ensure_init()
    if isinstance(value, ObjectRef):
        raise TypeError("Calling 'put' on an ObjectRef is not allowed. If you really want to do this, "
                        "you can wrap the ObjectRef in a list and call 'put' on it.")
    packed = _serialization.pack_checked(value, "the value passed to put()")
    return ObjectRef(_core.put(packed.for_core()), _add_ref=False)


def get(object_refs, *, timeout=None):
    """The value of one ref, or a list of values for a list of refs."""
    _ensure_init()
    if type(object_refs) is ObjectRef and timeout is None:
        # `get(f.remote())`: nothing to check, no list to build.
        return _value(_core.get([object_refs._id], None)[0])
    single = isinstance(object_refs, ObjectRef)
    refs = [object_refs] if single or isinstance(object_refs, ObjectRefGenerator) else object_refs
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"get() expects an ObjectRef or a list of ObjectRefs, got {type(object_refs).__name__}")
    _check_refs(refs, "get()")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    values = [_value(item) for item in _core.get(list(map(_ref_id, refs)), timeout)]
    return values[0] if single else values


def _value(item):
    """The value of one entry of `_core.get`'s result; raises the error it holds."""
    is_error, v = _serialization.value_from_core(item)
    if is_error:
        raise v
    return v


def wait(object_refs, *, num_returns=1, timeout=None, fetch_local=True):
    """(ready, not_ready): at least `num_returns` ready refs in input order, unless
    `timeout` passes first."""
    _ensure_init()
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, (list, tuple)):
        raise TypeError("wait() expected a list of ObjectRef, got a single ObjectRef" if isinstance(object_refs, ObjectRef)
                        else f"wait() expected a list of ObjectRef, got {type(object_refs).__name__}")
    # A loop of waits over a shrinking list (the usual "process results as they come")
    # costs O(len) per call: for plain refs and valid options the core does all of it
    # (checks, ids, both lists); anything else takes the path below, which says what is wrong.
    if (type(num_returns) is int and 0 < num_returns <= len(object_refs)
            and (timeout is None or (type(timeout) in (int, float) and timeout >= 0))):
        both = _core.wait_refs(object_refs, num_returns, timeout)
        if both is not None:
            return both
    if set(map(type, object_refs)) - {ObjectRef}:
        if any(isinstance(r, ObjectRefGenerator) for r in object_refs):
            return _wait_with_generators(list(object_refs), num_returns, timeout)
        _check_refs(object_refs, "wait()")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    if not object_refs:  # as Ray: nothing to wait for, whatever num_returns says
        return [], []
    ids = list(map(_ref_id, object_refs))
    if len(set(ids)) != len(ids):
        raise ValueError("Wait requires a list of unique object refs.")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns!r}.")
    if num_returns > len(object_refs):
        raise ValueError("num_returns cannot be greater than the number of objects provided to wait().")
    positions = _core.wait(ids, num_returns, timeout)
    if not positions:
        return [], list(object_refs)
    return [object_refs[i] for i in positions], _without(object_refs, positions)


_ref_id = operator.attrgetter("_id")


def _wait_with_generators(items, num_returns, timeout):
    """wait() over refs and streaming generators: a generator is ready once its next ref
    can be taken without waiting (its item arrived, or its stream ended)."""
    import time
    for r in items:
        if not isinstance(r, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(f"wait() expects ObjectRefs or ObjectRefGenerators, got {type(r).__name__} {r!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns!r}.")
    if num_returns > len(items):
        raise ValueError("num_returns cannot be greater than the number of objects provided to wait().")
    if len(set(map(id, items))) != len(items):
        raise ValueError("Wait requires a list of unique object refs.")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        groups = [r._awaited_ids() if isinstance(r, ObjectRefGenerator) else [r._id] for r in items]
        ids = list(dict.fromkeys(i for g in groups for i in g))
        here = {ids[p] for p in _core.wait(ids, len(ids), 0)}
        ready = [i for i, g in enumerate(groups) if any(x in here for x in g)]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if len(ready) >= num_returns or left == 0:
            ready = ready[:num_returns]
            return [items[i] for i in ready], _without(items, ready)
        pending = [x for x in ids if x not in here]
        _core.wait(pending, 1, left)  # one more arrival (or the time is up), then count again


def _without(items, positions):
    """`items` (a list or tuple) as a list, less the ascending `positions`: slices
    joined, so taking few out of many costs no Python-level loop over the rest."""
    out = []
    start = 0
    for p in positions:
        out += items[start:p]
        start = p + 1
    out += items[start:]
    return out


def cancel(object_ref, *, force=False, recursive=True):
    """Cancels the task that creates `object_ref`: a queued task never runs, a running
    one gets KeyboardInterrupt (force=True kills its worker). `get` then raises
    TaskCancelledError."""
    _ensure_init()
    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = object_ref.completed()  # the generator's task
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(object_ref).__name__}")
    _core.cancel(object_ref._id, bool(force))


def nodes():
    _ensure_init()
    return _core.nodes()


def timeline(filename=None):
    """The cluster's task timeline as Chrome trace events (load the file in
    chrome://tracing or https://ui.perfetto.dev): a row per worker per node, a span per
    task and actor call. Writes JSON to `filename` when given, else returns the list."""
    from swiftray.util import state
    events = state._timeline_events()
    if filename is None:
        return events
    import json
    with open(filename, "w") as f:
        json.dump(events, f)
    return None


def cluster_resources():
    _ensure_init()
    total = {}
    for n in _core.nodes():
        if n["Alive"]:
            for k, v in n["Resources"].items():
                total[k] = total.get(k, 0) + v
    return total


def available_resources():
    """Resources free now on the live nodes (each node reports about twice a second;
    this node's own figure is exact)."""
    _ensure_init()
    here = _core.node_stats()
    total = {}
    for n in _core.nodes():
        if not n["Alive"]:
            continue
        free = here["available"] if n["NodeID"] == _state["info"]["node_id"] else n["Available"]
        for k, v in free.items():
            total[k] = total.get(k, 0) + v
    return {k: v for k, v in total.items() if v}

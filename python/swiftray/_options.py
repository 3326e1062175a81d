"""Task option names, defaults and validation, as Ray's ray_option_utils."""
import numbers

TASK_DEFAULTS = {
    "num_cpus": 1,
    "num_gpus": 0,
    "memory": None,
    "resources": None,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "name": None,
    "scheduling_strategy": None,
}

# Options that only make sense on an actor class (checked once the class is known).
ACTOR_ONLY = {
    "max_restarts", "max_task_retries", "max_concurrency", "max_pending_calls", "namespace",
    "lifetime", "get_if_exists", "concurrency_groups",
}

# Ray options that swiftray knows but does not implement yet: a clear error, not a no-op.
_NOT_YET = {
    "max_calls", "runtime_env", "accelerator_type", "label_selector", "_metadata",
    "concurrency_groups", "enable_task_events", "_labels", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks",
}


def _number(name, v, minimum=0):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"The option '{name}' must be a number, got {type(v).__name__} {v!r}.")
    if v < minimum:
        raise ValueError(f"The option '{name}' must be >= {minimum}, got {v!r}.")


def _int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"The option '{name}' must be an int, got {type(v).__name__} {v!r}.")
    if v < minimum:
        raise ValueError(f"The option '{name}' must be >= {minimum}, got {v!r}.")


def validate_task_options(options):
    """Checks names and types; raises ValueError/TypeError naming the option."""
    for k, v in options.items():
        if k in _NOT_YET:
            raise ValueError(f"The option '{k}' is not supported by swiftray yet.")
        if k not in TASK_DEFAULTS:
            raise ValueError(
                f"Invalid option keyword {k} for remote functions. "
                f"Valid ones are {sorted(TASK_DEFAULTS)}.")
        if v is None and k in ("memory", "resources", "name", "scheduling_strategy"):
            continue
        if k in ("num_cpus", "num_gpus", "memory"):
            _number(k, v)
        elif k == "num_returns":
            _int(k, v, 0)
        elif k == "max_retries":
            _int(k, v, -1)
        elif k == "resources":
            if not isinstance(v, dict):
                raise TypeError(f"The option 'resources' must be a dict, got {type(v).__name__}.")
            for rk, rv in v.items():
                if not isinstance(rk, str):
                    raise TypeError(f"Resource names must be str, got {rk!r}.")
                if rk in ("CPU", "GPU"):
                    raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' in 'resources' keyword")
                _number(f"resources[{rk!r}]", rv)
        elif k == "retry_exceptions":
            if not isinstance(v, bool):
                if not isinstance(v, (list, tuple)) or not all(
                        isinstance(c, type) and issubclass(c, BaseException) for c in v):
                    raise TypeError("The option 'retry_exceptions' must be a bool or a list of exception classes.")
        elif k == "name":
            if not isinstance(v, str):
                raise TypeError(f"The option 'name' must be a str, got {type(v).__name__}.")
        elif k == "scheduling_strategy":
            if v not in ("DEFAULT",):
                raise ValueError(f"scheduling_strategy={v!r} is not supported by swiftray yet; use None or 'DEFAULT'.")
    return options


def resource_shape(options):
    shape = {}
    if options.get("num_cpus"):
        shape["CPU"] = float(options["num_cpus"])
    if options.get("num_gpus"):
        shape["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        shape["memory"] = float(options["memory"])
    for k, v in (options.get("resources") or {}).items():
        if v:
            shape[k] = float(v)
    return shape

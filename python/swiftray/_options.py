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
    "accelerator_type": None,
    "runtime_env": None,
    # Ray's: a streaming generator pauses while this many items wait unread (-1: never).
    "_generator_backpressure_num_objects": -1,
}

ACTOR_DEFAULTS = {
    "num_cpus": None,  # None: 1 CPU to place the actor, 0 held while it lives (as Ray)
    "num_gpus": 0,
    "memory": None,
    "resources": None,
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": None,  # None: 1 for a sync actor, 1000 for an async one
    "max_pending_calls": -1,
    "name": None,
    "namespace": None,
    "lifetime": None,
    "get_if_exists": False,
    "scheduling_strategy": None,
    "accelerator_type": None,
    "runtime_env": None,
}

# Options that only make sense on an actor class (checked once the class is known).
ACTOR_ONLY = {
    "max_restarts", "max_task_retries", "max_concurrency", "max_pending_calls", "namespace",
    "lifetime", "get_if_exists", "concurrency_groups",
}
# ... and those only for functions.
TASK_ONLY = {"num_returns", "max_retries", "retry_exceptions", "_generator_backpressure_num_objects"}

METHOD_DEFAULTS = {"num_returns": 1, "max_task_retries": None, "name": None, "_generator_backpressure_num_objects": -1}

# Ray options that swiftray knows but does not implement yet: a clear error, not a no-op.
_NOT_YET = {
    "max_calls", "label_selector", "_metadata",
    "concurrency_groups", "enable_task_events", "_labels",
}
# Ray's older spelling of PlacementGroupSchedulingStrategy, still accepted.
_LEGACY_PG = ("placement_group", "placement_group_bundle_index", "placement_group_capture_child_tasks")


def _fold_legacy_placement(options):
    """options(placement_group=pg, placement_group_bundle_index=i, ...) -> the strategy."""
    if not any(k in options for k in _LEGACY_PG):
        return options
    from swiftray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    options = dict(options)
    pg = options.pop("placement_group", None)
    index = options.pop("placement_group_bundle_index", -1)
    capture = options.pop("placement_group_capture_child_tasks", None)
    if pg is None or pg == "default":
        return options
    if options.get("scheduling_strategy") is not None:
        raise ValueError("Use either scheduling_strategy or placement_group, not both.")
    options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, index, capture)
    return options


def _number(name, v, minimum=0):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"The option '{name}' must be a number, got {type(v).__name__} {v!r}.")
    if v < minimum:
        raise ValueError(f"The option '{name}' must be >= {minimum}, got {v!r}.")
    if not v <= _MAX_QUANTITY:  # also NaN and infinity
        raise ValueError(f"The option '{name}' must be at most {_MAX_QUANTITY:.3g}, got {v!r}.")


# The core's largest quantity of one resource (ResourceSet.maxQuantity, in units).
_MAX_QUANTITY = (1 << 60) / 10_000


def _int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"The option '{name}' must be an int, got {type(v).__name__} {v!r}.")
    if v < minimum:
        raise ValueError(f"The option '{name}' must be >= {minimum}, got {v!r}.")


DYNAMIC_RETURNS = -(1 << 31)  # num_returns="dynamic" for the core (CoreWorker.dynamicReturnsCode)


def _num_returns(v):
    if isinstance(v, str):
        if v not in ("streaming", "dynamic"):
            raise TypeError(f"The option 'num_returns' must be an int >= 0, 'streaming' or 'dynamic', got {v!r}.")
        return
    _int("num_returns", v, 0)


def _backpressure(v):
    _int("_generator_backpressure_num_objects", v, -1)
    if v == 0:
        raise ValueError("The option '_generator_backpressure_num_objects' must be -1 (no limit) or >= 1, got 0.")


def returns_code(num_returns, backpressure):
    """num_returns for the core: the count; for a streaming generator -1 (no
    back-pressure) or -(k + 1) (it pauses while k items wait unread); DYNAMIC_RETURNS."""
    if num_returns == "dynamic":
        return DYNAMIC_RETURNS
    if num_returns != "streaming":
        return num_returns
    return -1 if backpressure is None or backpressure < 1 else -(backpressure + 1)


def validate_task_options(options):
    """Checks names and types; raises ValueError/TypeError naming the option. Returns
    the options (the legacy placement group options folded into the strategy)."""
    options = _fold_legacy_placement(options)
    for k, v in options.items():
        if k in _NOT_YET:
            raise ValueError(f"The option '{k}' is not supported by swiftray yet.")
        if k not in TASK_DEFAULTS:
            raise ValueError(
                f"Invalid option keyword {k} for remote functions. "
                f"Valid ones are {sorted(TASK_DEFAULTS)}.")
        if v is None and k in ("memory", "resources", "name", "scheduling_strategy", "accelerator_type", "runtime_env"):
            continue
        if k in ("num_cpus", "num_gpus", "memory"):
            _number(k, v)
        elif k == "num_returns":
            _num_returns(v)
        elif k == "_generator_backpressure_num_objects":
            _backpressure(v)
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
        elif k == "accelerator_type":
            if not isinstance(v, str) or not v:
                raise TypeError(f"The option 'accelerator_type' must be a non-empty str such as "
                                f"swiftray.util.accelerators.NVIDIA_TESLA_V100, got {v!r}.")
        elif k == "runtime_env":
            from swiftray import _runtime_env
            _runtime_env.validate(v)
        elif k == "scheduling_strategy":
            from swiftray.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                                             PlacementGroupSchedulingStrategy)
            if v not in ("DEFAULT", "SPREAD") and not isinstance(
                    v, (NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy)):
                raise ValueError(f"Invalid scheduling_strategy {v!r}: use None, 'DEFAULT', 'SPREAD', "
                                 "NodeAffinitySchedulingStrategy(node_id, soft) or "
                                 "PlacementGroupSchedulingStrategy(placement_group, bundle_index).")
    return options


def validate_actor_options(options):
    """Checks an actor class's options (Ray's names, types and ranges). Returns the
    options (the legacy placement group options folded into the strategy)."""
    options = _fold_legacy_placement(options)
    for k, v in options.items():
        if k in _NOT_YET:
            raise ValueError(f"The option '{k}' is not supported by swiftray yet.")
        if k not in ACTOR_DEFAULTS:
            hint = " (num_returns is set per method with @swiftray.method(num_returns=...))" if k == "num_returns" else ""
            raise ValueError(f"Invalid option keyword {k} for actors{hint}. Valid ones are {sorted(ACTOR_DEFAULTS)}.")
        if v is None and k in ("num_cpus", "memory", "resources", "name", "namespace", "lifetime",
                               "scheduling_strategy", "max_concurrency", "accelerator_type", "runtime_env"):
            continue
        if k in ("num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy", "name", "accelerator_type",
                 "runtime_env"):
            validate_task_options({k: v})
        elif k in ("max_restarts", "max_task_retries", "max_pending_calls"):
            _int(k, v, -1)
        elif k == "max_concurrency":
            _int(k, v, 1)
        elif k == "namespace":
            if not isinstance(v, str) or not v:
                raise TypeError(f"The option 'namespace' must be a non-empty str, got {v!r}.")
        elif k == "lifetime":
            if v not in ("detached", "non_detached"):
                raise ValueError(f"actor `lifetime` argument must be one of 'detached', 'non_detached' and 'None', got {v!r}.")
        elif k == "get_if_exists":
            if not isinstance(v, bool):
                raise TypeError(f"The option 'get_if_exists' must be a bool, got {type(v).__name__}.")
    if options.get("get_if_exists") and not options.get("name"):
        raise ValueError("The actor name must be specified to use `get_if_exists`.")
    return options


def validate_method_options(options):
    for k, v in options.items():
        if k not in METHOD_DEFAULTS:
            raise ValueError(f"Invalid option keyword {k} for actor methods. Valid ones are {sorted(METHOD_DEFAULTS)}.")
        if k == "num_returns":
            _num_returns(v)
        elif k == "_generator_backpressure_num_objects":
            _backpressure(v)
        elif k == "max_task_retries" and v is not None:
            _int(k, v, -1)
        elif k == "name" and v is not None and not isinstance(v, str):
            raise TypeError(f"The option 'name' must be a str, got {type(v).__name__}.")
    return options


def actor_shapes(options):
    """(held while alive, needed to place) for an actor's options: an actor that does not
    say how many CPUs it needs takes 1 to be placed and holds none (as Ray)."""
    held = resource_shape(options)
    placement = dict(held)
    if options.get("num_cpus") is None:
        placement["CPU"] = max(placement.get("CPU", 0.0), 1.0)
    return held, placement


def strategy_for_core(strategy):
    """The core's form of a scheduling strategy: None, "SPREAD", (node_id_hex, soft) or
    ("PG", group_id_bytes, bundle_index, capture_child_tasks)."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return "SPREAD"
    if hasattr(strategy, "placement_group"):
        return ("PG", strategy.placement_group.id.binary(), strategy.placement_group_bundle_index,
                bool(strategy.placement_group_capture_child_tasks))
    return (strategy.node_id, bool(strategy.soft))


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
    if options.get("accelerator_type"):
        # As Ray: a sliver of the node's `accelerator_type:<name>` resource.
        shape[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return shape

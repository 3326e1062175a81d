"""Actors: @remote classes, their handles and methods. Thin: options and arguments are
checked and packed here; placement, ordering, restarts and retries are the core's."""
import inspect
import pickle
import weakref

from swiftray import _api, _core, _options, exceptions
from swiftray.object_ref import ObjectRef, ObjectRefGenerator
from swiftray.remote_function import BoundOptions, Exported, pack_call


def method(*args, **options):
    """@swiftray.method(num_returns=N): options for one actor method."""
    if args:
        raise TypeError("@method must be called with keyword arguments, e.g. @swiftray.method(num_returns=2).")
    _options.validate_method_options(options)

    def decorate(fn):
        fn.__swiftray_method_options__ = dict(options)
        return fn

    return decorate


def _methods_of(cls):
    """{name: options} for every public or dunder-free method, and whether any is async."""
    methods, is_async = {}, False
    for name, member in inspect.getmembers(cls):
        if not callable(member) or (name.startswith("__") and name.endswith("__")):
            continue
        fn = inspect.unwrap(member)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            is_async = True
        defaults = _options.METHOD_DEFAULTS
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            defaults = dict(defaults, num_returns="streaming")  # as Ray: a method that yields streams
        opts = dict(defaults, **getattr(member, "__swiftray_method_options__", {}))
        methods[name] = opts
    return methods, is_async


class ActorClass(Exported):
    """What @remote makes of a class: `.remote(...)` creates an actor, `.options(...)`
    overrides its options for one creation."""

    def __init__(self, cls, options):
        self._function = cls
        self._name = cls.__name__
        self._options = dict(_options.ACTOR_DEFAULTS, **options)
        self._methods, self._is_async = _methods_of(cls)
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__module__ = cls.__module__
        self.__qualname__ = cls.__qualname__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actors cannot be instantiated directly. Instead of '{self._name}()', "
                        f"use '{self._name}.remote()'.")

    def remote(self, *args, **kwargs):
        return self._remote(args, kwargs, self._options)

    def options(self, **options):
        options = _options.validate_actor_options(options)
        return BoundOptions(self, options, dict(self._options, **options))

    def _remote(self, args, kwargs, options):
        _api._ensure_init()
        name = options["name"] or ""
        namespace = options["namespace"] or _api.current_namespace()
        if options["get_if_exists"]:
            existing = _lookup(name, namespace)
            if existing is not None:
                return existing
        detached = options["lifetime"] == "detached"
        held, placement = _options.actor_shapes(options)
        concurrency = options["max_concurrency"] or (1000 if self._is_async else 1)
        meta = {"class_name": self._name, "methods": self._methods, "max_task_retries": options["max_task_retries"],
                "is_async": self._is_async, "max_pending_calls": options["max_pending_calls"]}
        core_options = {
            "max_restarts": options["max_restarts"], "max_task_retries": options["max_task_retries"],
            "max_concurrency": concurrency, "max_pending_calls": options["max_pending_calls"],
            "is_async": self._is_async, "name": name, "namespace": namespace, "detached": detached,
            "handle_meta": pickle.dumps(meta),
            "scheduling_strategy": _options.strategy_for_core(options["scheduling_strategy"]),
            "runtime_env": _api.resolve_runtime_env(options["runtime_env"]),
        }
        arglist = pack_call(self._name, args, kwargs, what="actor constructor")
        try:
            actor_id = _core.create_actor(self._function_id(), self._name, arglist, held, placement, core_options)
        except ValueError:
            if options["get_if_exists"]:  # another driver created it meanwhile
                existing = _lookup(name, namespace)
                if existing is not None:
                    return existing
            raise
        # The handle owns the actor's handle object: when every handle is gone, so is a
        # non-detached actor.
        ref = ObjectRef(actor_id + (1).to_bytes(4, "big"), _add_ref=False)
        return ActorHandle(actor_id, meta, ref)


class ActorMethod:
    """`handle.method`: `.remote(...)` calls it; `.options(...)` for one call. `_plan`:
    what every call sends besides its arguments (the handle keeps it per method)."""
    __slots__ = ("_handle", "_name", "_options", "_plan")

    def __init__(self, handle, name, options, plan=None):
        self._handle, self._name, self._options, self._plan = handle, name, options, plan

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly. Instead of running 'object.{self._name}()', "
                        f"try 'object.{self._name}.remote()'.")

    def remote(self, *args, **kwargs):
        plan = self._plan
        if plan is None:
            plan = self._plan = self._handle._plan(self._name, self._options)
        return self._handle._call(self._name, args, kwargs, plan)

    def options(self, **options):
        _options.validate_method_options(options)
        return ActorMethod(self._handle, self._name, dict(self._options, **options))


def _rebuild_handle(actor_id, meta, ref):
    return ActorHandle(actor_id, meta, ref, _received=True)


class _MethodAttribute:
    """`handle.method` on the handle class made for an actor's methods
    (`_handle_class`): found on the class, where `__getattr__` ran only after the
    ordinary lookup failed and built an AttributeError (0.9 us a call, 0.3 this way)."""
    __slots__ = ("_name",)

    def __init__(self, name):
        self._name = name

    def __get__(self, handle, owner=None):
        if handle is None:
            return self
        known = handle._method_plans.get(self._name)
        if known is None:
            return handle.__getattr__(self._name)
        return ActorMethod(handle, self._name, known[0], known[1])


_handle_classes = {}  # method names -> the ActorHandle subclass with them (one per actor class)
_MAX_HANDLE_CLASSES = 1024  # handles unpickled here name their methods: bounded all the same


def _handle_class(meta):
    names = frozenset(n for n in meta.get("methods", ()) if isinstance(n, str))
    cls = _handle_classes.get(names)
    if cls is None:
        if len(_handle_classes) >= _MAX_HANDLE_CLASSES:
            return ActorHandle  # its methods found through __getattr__, as before
        # A name the handle itself uses (`_call`, `_plan`, ...) stays the handle's.
        attrs = {n: _MethodAttribute(n) for n in names if not hasattr(ActorHandle, n)}
        attrs["__slots__"] = ()
        cls = _handle_classes[names] = type("ActorHandle", (ActorHandle,), attrs)
        cls.__qualname__ = ActorHandle.__qualname__
        cls.__module__ = ActorHandle.__module__
    return cls


class ActorHandle:
    """A handle to an actor: call its methods with `handle.method.remote(...)`. Picklable:
    pass it to tasks and other actors, or inside values."""

    def __new__(cls, actor_id, meta, ref=None, _received=False):
        # An instance of the subclass that has this actor's methods as attributes.
        return object.__new__(_handle_class(meta) if cls is ActorHandle else cls)

    def __init__(self, actor_id, meta, ref=None, _received=False):
        self._actor_id = actor_id
        self._meta = meta
        # None for a handle from get_actor: it does not keep the actor alive.
        self._ref = ref
        self._method_plans = {}  # name -> (options, plan): `__getattr__`
        if _received or ref is None:
            _core.actor_handle_added(actor_id, meta.get("max_pending_calls", -1))

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        # The plan of each method is worked out once per handle. Not the method object
        # itself: it refers to the handle, and a cycle would keep the actor alive after
        # its last handle is gone until the garbage collector runs.
        plans = self._method_plans
        known = plans.get(name)
        if known is None:
            opts = self._meta["methods"].get(name)
            if opts is None:
                raise AttributeError(f"'{self._meta['class_name']}' actor has no method '{name}'")
            known = plans[name] = (opts, self._plan(name, opts))
        return ActorMethod(self, name, known[0], known[1])

    def _plan(self, method_name, options):
        """(label, num_returns for the core, retries) of a method's calls under `options`."""
        num_returns = _options.returns_code(options["num_returns"], options.get("_generator_backpressure_num_objects"))
        retries = options["max_task_retries"]
        if retries is None:
            retries = self._meta.get("max_task_retries", 0)
        return options["name"] or f"{self._meta['class_name']}.{method_name}", num_returns, retries

    def _call(self, method_name, args, kwargs, plan):
        label, num_returns, retries = plan
        arglist = pack_call(label, args, kwargs, what="actor method")
        ids = _core.submit_actor_task(self._actor_id, method_name, label, arglist, num_returns, retries)
        if num_returns == 1:
            return ObjectRef(ids[0], _add_ref=False)
        out = [ObjectRef(i, _add_ref=False) for i in ids]
        if num_returns < 0:
            # "dynamic": the ref whose value lists the items; else the stream itself.
            return out[0] if num_returns == _options.DYNAMIC_RETURNS else ObjectRefGenerator(out[0])
        return out if num_returns else None

    def __reduce__(self):
        # The handle leaves this process: the head must know the actor by then (one
        # created here is registered in the background).
        if self._ref is not None and _core.is_initialized():
            _core.actor_registered(self._actor_id)
        return (_rebuild_handle, (self._actor_id, self._meta, self._ref))

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)

    def __repr__(self):
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"


def _lookup(name, namespace):
    info = _core.get_named_actor(name, namespace)
    if info is None:
        return None
    return ActorHandle(info["actor_id"], pickle.loads(info["handle_meta"]), None)


def get_actor(name, namespace=None):
    """The handle of the live actor called `name` in `namespace` (default: this job's)."""
    _api._ensure_init()
    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    if namespace is not None and not isinstance(namespace, str):
        raise TypeError(f"namespace must be None or a string, got {type(namespace).__name__}")
    handle = _lookup(name, namespace or _api.current_namespace())
    if handle is None:
        raise ValueError(f"Failed to look up actor with name '{name}'. This could because 1. You are trying to look "
                         "up a named actor you didn't create. 2. The named actor died. 3. You did not use a "
                         "namespace matching the namespace of the actor.")
    return handle


def kill(actor, *, no_restart=True):
    """Kills the actor at once (its pending calls fail with ActorDiedError). With
    no_restart=False it restarts if its max_restarts allows."""
    _api._ensure_init()
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"kill() only supported for actors. For tasks, try cancel(). Got: {type(actor).__name__}.")
    if not isinstance(no_restart, bool):
        raise TypeError("no_restart must be a bool")
    _core.kill_actor(actor._actor_id, no_restart)


def list_named_actors(all_namespaces=False):
    """Names of the live named actors in this job's namespace; with all_namespaces,
    dicts of name and namespace."""
    _api._ensure_init()
    infos = _core.list_named_actors(_api.current_namespace(), bool(all_namespaces))
    if all_namespaces:
        return [{"name": i["name"], "namespace": i["namespace"]} for i in infos]
    return [i["name"] for i in infos]


def exit_actor():
    """Ends the actor this is called in, on purpose (Ray's `ray.actor.exit_actor`): the
    call that runs it and every later call fail with ActorDiedError saying so, and the
    actor is not restarted whatever its max_restarts. Only inside an actor."""
    from swiftray.runtime_context import _worker_module
    worker = _worker_module()
    if worker is None or worker.actor.actor_id is None:
        raise TypeError("exit_actor API is called on a non-actor worker, it can only be called inside an actor "
                        "(a method or the constructor of a @remote class).")
    raise worker.ActorExit(0)

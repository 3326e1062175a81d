"""@remote functions: RemoteFunction.remote() submits a task to the Swift core."""
import functools
import hashlib
import inspect

from swiftray import _api, _core, _options, _serialization
from swiftray.object_ref import ObjectRef, ObjectRefGenerator


# Option sets whose derived call fields a function or handle keeps (a program usually
# has a few; one calling `.options(...)` per call makes a new set each time).
_CACHED_OPTIONS = 64


class _ArgSlot:
    """Stands in, inside the pickled call, for a top-level ObjectRef argument: the core
    resolves the ref and the worker puts its value back in this slot."""
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return (_ArgSlot, (self.index,))


# A call with ref arguments and plain values pickles without cloudpickle's per-object
# hooks (~15 us of an actor call with one ref argument).
_serialization.register_plain(_ArgSlot)


class Exported:
    """Something pickled once and published in the cluster's function table (a task's
    function, an actor's class), under the id of its pickle's hash."""
    _function = None
    _name = ""
    _export = None  # (session, function_id)
    _pickled = None

    def _function_id(self):
        session = _api._state["session"]
        if self._export and self._export[0] == session:
            return self._export[1]
        if self._pickled is None:  # pickled once per definition
            self._pickled = _serialization.dumps_checked(self._function, f"remote function {self._name}")
        fid = hashlib.sha256(self._pickled).digest()[:20]
        _core.kv_put("fn", fid, self._pickled, False)
        self._export = (session, fid)
        return fid


class BoundOptions:
    """`X.options(...)`: `.remote(...)` with those options merged over X's, and
    `.options(...)` to add more. X (a remote function or an actor class) provides
    `_remote(args, kwargs, options)` and `options(**options)`."""
    __slots__ = ("_target", "_given", "_merged")

    def __init__(self, target, given, merged):
        self._target, self._given, self._merged = target, given, merged

    def remote(self, *args, **kwargs):
        return self._target._remote(args, kwargs, self._merged)

    def options(self, **more):
        return self._target.options(**dict(self._given, **more))


_MAX_CACHED_SLOTS = 8
_NO_KWARGS = {}  # pickled, never changed
_refs_only_calls = {}  # number of refs -> the core's entry for the pickled call


def pack_call(name, args, kwargs, what="task"):
    """The core's argument list for a call: the pickled (args, kwargs) with each
    top-level ObjectRef replaced by a slot, then the refs themselves (resolved before
    the call runs); empty for a call without arguments."""
    if not args and not kwargs:
        # Nothing to send: the worker reads an empty list as `()`, `{}` (and the task
        # in flight holds no argument bytes).
        return []
    if not kwargs and len(args) <= _MAX_CACHED_SLOTS and all(isinstance(a, ObjectRef) for a in args):
        # Refs only (`f.remote(ref)`, a pipeline's usual call): the pickled call is the
        # same for every call of that many refs, made once.
        head = _refs_only_calls.get(len(args))
        if head is None:
            call = (tuple(_ArgSlot(i) for i in range(len(args))), {})
            head = _refs_only_calls[len(args)] = (0, _serialization.pack(call).tobytes())
        return [head] + [(1, r._id) for r in args]
    if not kwargs and _serialization.is_plain(args):
        # Plain values only (numbers, strings, bytes, arrays...): no ref can be among
        # them, so the call is pickled as it is, with no slots to make.
        small = _serialization.has_small_array(args)
        try:
            return [(0, _serialization.pack_plain((args, _NO_KWARGS), small_arrays=small))]
        except Exception as e:
            raise _locate_bad_argument(name, args, kwargs, e, what) from None
    refs = []

    def slot(v):
        if isinstance(v, ObjectRef):
            refs.append(v)
            return _ArgSlot(len(refs) - 1)
        return v

    call = (tuple(slot(a) for a in args), {k: slot(v) for k, v in kwargs.items()})
    try:
        packed = _serialization.pack(call)
    except Exception as e:
        raise _locate_bad_argument(name, args, kwargs, e, what) from None
    return [(0, packed.for_core())] + [(1, r._id) for r in refs]


class RemoteFunction(Exported):
    def __init__(self, function, options):
        self._function = function
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
        self._module = getattr(function, "__module__", "")
        defaults = _options.TASK_DEFAULTS
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            # As Ray: a function that yields streams its values unless told otherwise.
            defaults = dict(defaults, num_returns="streaming")
        self._options = dict(defaults, **options)
        self._submissions = {}  # id(options) -> (options, submit_task fields)
        functools.update_wrapper(self, function)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Remote functions cannot be called directly. Instead of running "
                        f"'{self._name}()', try '{self._name}.remote()'.")

    def remote(self, *args, **kwargs):
        return self._remote(args, kwargs, self._options)

    def options(self, **options):
        options = _options.validate_task_options(options)
        return BoundOptions(self, options, dict(self._options, **options))

    def _submission(self, options):
        """What submit_task needs from `options`, derived once per options dict (the
        retry filter is a pickle): nothing per call but the arguments."""
        key = id(options)
        parent_env = _api.current_runtime_env()
        cached = self._submissions.get(key)
        if cached is not None and cached[0] is options and cached[2] is parent_env:
            return cached[1]
        retry = options["retry_exceptions"]
        fields = (options["name"] or self._name,
                  _options.returns_code(options["num_returns"], options["_generator_backpressure_num_objects"]),
                  _options.resource_shape(options),
                  options["max_retries"], retry is not False,
                  b"" if retry is False else _serialization.dumps(True if retry is True else tuple(retry)),
                  _options.strategy_for_core(options["scheduling_strategy"]),
                  _api.resolve_runtime_env(options["runtime_env"]))
        if len(self._submissions) >= _CACHED_OPTIONS:  # `.options(...)` makes a dict per call
            self._submissions.clear()
        self._submissions[key] = (options, fields, parent_env)
        return fields

    def _remote(self, args, kwargs, options):
        _api._ensure_init()
        fid = self._function_id()
        arglist = pack_call(self._name, args, kwargs)
        name, num_returns, shape, max_retries, retry, retry_filter, strategy, env = self._submission(options)
        ids = _core.submit_task(fid, name, arglist, num_returns, shape, max_retries, retry, retry_filter, strategy, env)
        if num_returns == 1:
            return ObjectRef(ids[0], _add_ref=False)
        out = [ObjectRef(i, _add_ref=False) for i in ids]
        if num_returns < 0:
            # "dynamic": the ref whose value lists the items; else the stream itself.
            return out[0] if num_returns == _options.DYNAMIC_RETURNS else ObjectRefGenerator(out[0])
        return out if num_returns else None


def _locate_bad_argument(name, args, kwargs, error, what="task"):
    for i, a in enumerate(args):
        try:
            _serialization.dumps(a)
        except Exception as e:
            return _serialization.serialization_error(a, f"argument {i} of {what} {name}", e)
    for k, v in kwargs.items():
        try:
            _serialization.dumps(v)
        except Exception as e:
            return _serialization.serialization_error(v, f"keyword argument {k!r} of {what} {name}", e)
    return TypeError(f"Could not serialize the arguments of {what} {name}: {error}")


def remote(*args, **options):
    """@remote or @remote(**options) on a function."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError("The @remote decorator must be applied either with no arguments and no "
                        "parentheses, for example '@remote', or with keyword arguments, "
                        "for example '@remote(num_returns=2, resources={\"CustomResource\": 1})'.")
    # Check now what holds whatever is decorated; actor-only names wait for the target.
    _options.validate_task_options({k: v for k, v in options.items() if k not in _options.ACTOR_ONLY})
    return lambda f: _make(f, options)


def _make(target, options):
    """Options are checked against what is decorated: an actor's or a task's options."""
    if isinstance(target, type):
        from swiftray.actor import ActorClass
        return ActorClass(target, _options.validate_actor_options(options))
    if not callable(target):
        raise TypeError("The @remote decorator must be applied to a function or a class.")
    return RemoteFunction(target, _options.validate_task_options(options))

"""swiftray.util.multiprocessing (Ray's ray.util.multiprocessing): a drop-in for
`multiprocessing.Pool` whose worker processes are actors anywhere in the cluster.

Each of the pool's `processes` is an actor that ran `initializer(*initargs)` once.
Work goes out in chunks, dealt to the actors in turn (each actor runs its chunks in the
order it got them); results come back as objects, in order for map/imap and as they
finish for imap_unordered. Nothing runs in the driver but the dealing and the
gathering."""
import itertools
import threading
from multiprocessing import TimeoutError  # noqa: F401 - Ray's module exports it, as multiprocessing does

__all__ = ["Pool", "TimeoutError"]


class _PoolActor:
    """One of the pool's processes."""

    def __init__(self, initializer, initargs):
        if initializer is not None:
            initializer(*initargs)

    def ping(self):
        return None

    def run(self, func, chunk, star):
        return [func(*args) for args in chunk] if star else [func(x) for x in chunk]

    def apply(self, func, args, kwargs):
        return func(*args, **kwargs)

    def retire(self):
        from swiftray.actor import exit_actor
        exit_actor()


def _unwrapped(error):
    """The user's own exception, as multiprocessing raises it (a task error carries it)."""
    from swiftray.exceptions import RayTaskError
    if isinstance(error, RayTaskError) and isinstance(getattr(error, "cause", None), BaseException):
        return error.cause
    return error


class AsyncResult:
    """The result of apply_async/map_async/starmap_async (multiprocessing's API)."""

    def __init__(self, refs, single, callback=None, error_callback=None):
        self._refs = refs
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._outcome = None  # (ok, value) once known
        self._lock = threading.Lock()
        if callback is not None or error_callback is not None:
            self._fire_when_ready()

    def _fire_when_ready(self):
        """Runs the callback once every part has arrived, on the thread that completes
        awaited objects (no thread per result; as multiprocessing's result handler, a
        callback should return at once)."""
        from swiftray.object_ref import _availability
        if not self._refs:
            return self._fire()
        remaining = [len(self._refs)]
        lock = threading.Lock()

        def arrived(_ref):
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self._fire()

        for ref in self._refs:
            _availability.when_available(ref, arrived)

    def ready(self):
        """True once every part of the result has arrived."""
        if self._outcome is not None:
            return True
        from swiftray import _api
        ready, _ = _api.wait(self._refs, num_returns=len(self._refs), timeout=0)
        return len(ready) == len(self._refs)

    def wait(self, timeout=None):
        """Waits until the result is ready, or `timeout` seconds."""
        from swiftray import _api
        if self._outcome is None and self._refs:
            _api.wait(self._refs, num_returns=len(self._refs), timeout=timeout)

    def successful(self):
        """Whether it ended without an exception; ValueError while it is not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._resolve()[0]

    def get(self, timeout=None):
        """The value (apply) or the list of values (map), or the first exception raised;
        multiprocessing.TimeoutError when it is not ready within `timeout` seconds."""
        if self._outcome is None:
            self.wait(timeout)
            if not self.ready():
                raise TimeoutError
        ok, value = self._resolve()
        if not ok:
            raise value
        return value

    def _resolve(self):
        with self._lock:
            if self._outcome is None:
                from swiftray import _api
                try:
                    parts = _api.get(self._refs)
                    self._outcome = (True, parts[0] if self._single else list(itertools.chain.from_iterable(parts)))
                except Exception as e:  # the first task error, as the user raised it
                    self._outcome = (False, _unwrapped(e))
            return self._outcome

    def _fire(self):
        ok, value = self._resolve()
        hook = self._callback if ok else self._error_callback
        if hook is not None:
            hook(value)


class IMapIterator:
    """What imap returns: the values in order, each as soon as its chunk is done;
    `next(timeout)` as multiprocessing's."""

    def __init__(self, refs):
        self._refs = list(refs)
        self._chunk = 0
        self._buffer = []

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self, timeout=None):
        from swiftray import _api
        while not self._buffer:
            if self._chunk >= len(self._refs):
                raise StopIteration
            ref = self._refs[self._chunk]
            if timeout is not None and not _api.wait([ref], timeout=timeout)[0]:
                raise TimeoutError
            try:
                self._buffer = list(_api.get(ref))
            except Exception as e:
                self._chunk += 1
                raise _unwrapped(e) from None
            self._refs[self._chunk] = None  # the chunk's object can go
            self._chunk += 1
        return self._buffer.pop(0)


class IMapUnorderedIterator(IMapIterator):
    """What imap_unordered returns: the values of each chunk as soon as it is done,
    whichever finishes first."""

    def next(self, timeout=None):
        from swiftray import _api
        while not self._buffer:
            if not self._refs:
                raise StopIteration
            ready, self._refs = _api.wait(self._refs, num_returns=1, timeout=timeout)
            if not ready:
                raise TimeoutError
            try:
                self._buffer = list(_api.get(ready[0]))
            except Exception as e:
                raise _unwrapped(e) from None
        return self._buffer.pop(0)


class Pool:
    """multiprocessing.Pool over the cluster.

    processes: how many actors (default: the cluster's CPUs); initializer/initargs: run
    once in each; maxtasksperchild: an actor is replaced after that many tasks (chunks);
    ray_address: the cluster to join when none is joined yet; ray_remote_args: the
    actors' options (for example {"num_cpus": 2})."""

    def __init__(self, processes=None, initializer=None, initargs=None, maxtasksperchild=None,
                 context=None, ray_address=None, ray_remote_args=None):
        from swiftray import _api, remote
        if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool) or processes < 1):
            raise ValueError("Processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild < 1):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if ray_remote_args is not None and not isinstance(ray_remote_args, dict):
            raise TypeError("ray_remote_args must be a dict of actor options")
        if not _api.is_initialized():
            _api.init(address=ray_address)
        if processes is None:
            processes = max(1, int(_api.cluster_resources().get("CPU", 1)))
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs or ())
        self._maxtasks = maxtasksperchild
        self._actor_class = remote(_PoolActor).options(**(ray_remote_args or {}))
        self._actors = [self._new_actor() for _ in range(processes)]
        self._tasks_run = [0] * processes
        self._turn = itertools.count()
        self._outstanding = []
        self._prune_at = 1024
        self._state = "running"
        self._lock = threading.Lock()
        # As multiprocessing's: the pool is ready to work when the constructor returns.
        _api.get([a.ping.remote() for a in self._actors])

    def _new_actor(self):
        return self._actor_class.remote(self._initializer, self._initargs)

    def __repr__(self):
        return f"<swiftray.util.multiprocessing.Pool state={self._state} pool_size={self._processes}>"

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        self.terminate()

    # -- dealing work --------------------------------------------------------------

    def _check_running(self):
        if self._state != "running":
            raise ValueError("Pool not running")

    def _next_actor(self):
        """The actor whose turn it is (replaced first if it ran maxtasksperchild tasks:
        the old one retires after the work it has)."""
        with self._lock:
            self._check_running()
            i = next(self._turn) % self._processes
            if self._maxtasks is not None and self._tasks_run[i] >= self._maxtasks:
                self._actors[i].retire.remote()
                self._actors[i] = self._new_actor()
                self._tasks_run[i] = 0
            self._tasks_run[i] += 1
            return self._actors[i]

    def _track(self, refs):
        """Remembers work for join; what has finished is dropped whenever the list
        doubles, so it stays as long as the work in flight (amortized)."""
        from swiftray import _api
        with self._lock:
            self._outstanding.extend(refs)
            if len(self._outstanding) > self._prune_at:
                _, self._outstanding = _api.wait(self._outstanding, num_returns=len(self._outstanding), timeout=0)
                self._prune_at = max(1024, 2 * len(self._outstanding))
        return refs

    def _chunksize(self, n, chunksize):
        if chunksize is not None:
            if not isinstance(chunksize, int) or chunksize < 1:
                raise ValueError("Chunksize must be 1+, not {0:n}".format(chunksize) if isinstance(chunksize, int)
                                 else "chunksize must be a positive int")
            return chunksize
        # As multiprocessing: about four chunks per process.
        size, extra = divmod(n, self._processes * 4)
        return max(1, size + (1 if extra else 0))

    def _map_refs(self, func, iterable, chunksize, star):
        self._check_running()
        items = list(iterable)
        size = self._chunksize(len(items), chunksize)
        refs = [self._next_actor().run.remote(func, items[i:i + size], star) for i in range(0, len(items), size)]
        return self._track(refs)

    # -- multiprocessing.Pool's methods ----------------------------------------------

    def apply(self, func, args=(), kwds=None):
        """func(*args, **kwds) in one of the pool's processes; waits for its value."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        """apply, returning an AsyncResult at once."""
        self._check_running()
        ref = self._next_actor().apply.remote(func, tuple(args), dict(kwds or {}))
        return AsyncResult(self._track([ref]), True, callback, error_callback)

    def map(self, func, iterable, chunksize=None):
        """[func(x) for x in iterable], run in chunks across the pool; raises the first
        exception a call raised."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """map, returning an AsyncResult at once."""
        return AsyncResult(self._map_refs(func, iterable, chunksize, False), False, callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        """map, each item a tuple of arguments: [func(*args) for args in iterable]."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """starmap, returning an AsyncResult at once."""
        return AsyncResult(self._map_refs(func, iterable, chunksize, True), False, callback, error_callback)

    def imap(self, func, iterable, chunksize=1):
        """An iterator of func(x) for x in iterable, in order, each as soon as it is done."""
        return IMapIterator(self._map_refs(func, iterable, chunksize, False))

    def imap_unordered(self, func, iterable, chunksize=1):
        """imap, the values in the order they finish."""
        return IMapUnorderedIterator(self._map_refs(func, iterable, chunksize, False))

    def close(self):
        """No more work may be given; what was given still runs (join waits for it)."""
        if self._state == "running":
            self._state = "closed"

    def terminate(self):
        """Stops the pool's processes at once; work not finished is lost."""
        from swiftray.actor import kill
        self._state = "terminated"
        actors, self._actors = self._actors, []
        for a in actors:
            try:
                kill(a, no_restart=True)
            except Exception:
                pass  # already gone

    def join(self):
        """Waits for the work given to finish; after close() or terminate()."""
        from swiftray import _api
        if self._state == "running":
            raise ValueError("Pool is still running")
        if self._state == "closed":
            with self._lock:
                refs, self._outstanding = self._outstanding, []
            if refs:
                _api.wait(refs, num_returns=len(refs))


# multiprocessing's own names for these, for code that type-checks results.
ApplyResult = MapResult = AsyncResult

"""ActorPool: spread work over a fixed set of actors, as ray.util.ActorPool (same
methods, same results, same errors)."""
from swiftray import _api, exceptions


class ActorPool:
    """Hands values to idle actors with `fn(actor, value)` (which returns an ObjectRef, or
    a list of them for a method with num_returns > 1) and gives the results back in
    submission order (`map`, `get_next`) or as they finish (`map_unordered`,
    `get_next_unordered`). An actor is busy until its result is taken."""

    def __init__(self, actors):
        self._idle_actors = list(actors)
        self._future_to_actor = {}   # key of a submitted result -> (submission index, actor)
        self._index_to_future = {}   # submission index -> its ObjectRef (or list of them)
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits = []   # (fn, value) waiting for an idle actor

    @staticmethod
    def _key(future):
        return tuple(future) if isinstance(future, list) else future

    @staticmethod
    def _refs(future):
        return list(future) if isinstance(future, (list, tuple)) else [future]

    def _drop_outstanding(self):
        # Results submitted before a map are not part of it (as Ray): their actors go back
        # to the pool at once (calls to one actor run in order), so they do not hold up
        # the map's results.
        for _, actor in self._future_to_actor.values():
            self._idle_actors.append(actor)
        self._future_to_actor.clear()
        self._index_to_future.clear()
        self._next_return_index = self._next_task_index
        # Submits still waiting for an actor run too (as in Ray), outside the map.
        while self._pending_submits and self._idle_actors:
            fn, value = self._pending_submits.pop(0)
            actor = self._idle_actors.pop()
            fn(actor, value)
            self._idle_actors.insert(0, actor)

    def map(self, fn, values):
        """Runs fn(actor, v) for every value, submitted now, and returns an iterator of
        the results in the order of `values`."""
        self._drop_outstanding()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next()
        return results()

    def map_unordered(self, fn, values):
        """As map, the results in the order they finish."""
        self._drop_outstanding()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next_unordered()
        return results()

    def submit(self, fn, value):
        """Runs fn(actor, value) on an idle actor now, or as soon as one is free."""
        if self._idle_actors:
            actor = self._idle_actors.pop()
            future = fn(actor, value)
            self._future_to_actor[self._key(future)] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = future
            self._next_task_index += 1
        else:
            self._pending_submits.append((fn, value))

    def has_next(self):
        """Whether a submitted result has not been taken yet."""
        return bool(self._future_to_actor)

    def get_next(self, timeout=None, ignore_if_timedout=False):
        """The next result in submission order, waiting up to `timeout` seconds. With
        ignore_if_timedout=True a result that is not ready in time is skipped for good
        (TimeoutError says which), else it stays next."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        timed_out = False
        if timeout is not None:
            refs = self._refs(future)
            ready, _ = _api.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise TimeoutError("Timed out waiting for result")
                timed_out = True
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(self._key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"Timed out waiting for result. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(self, timeout=None, ignore_if_timedout=False):
        """Whichever result is ready first, waiting up to `timeout` seconds."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        by_ref = {}
        for key in self._future_to_actor:
            for r in self._refs(key):
                by_ref[r] = key
        ready, _ = _api.wait(list(by_ref), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError("Timed out waiting for result")
        key = by_ref[ready[0]]
        index, actor = self._future_to_actor.pop(key)
        future = self._index_to_future.pop(index)
        # Ordered results resume after the newest one taken here.
        self._next_return_index = max(self._next_return_index, index + 1)
        return self._get_result(future, actor)

    def _get_result(self, future, actor):
        alive = True
        try:
            return _api.get(future)
        except exceptions.ActorDiedError:
            alive = False  # a dead actor leaves the pool
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor, alive=True):
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.pop(0))

    def has_free(self):
        """Whether an actor is idle and no submit waits for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self):
        """Removes and returns an idle actor, or None."""
        return self._idle_actors.pop() if self.has_free() else None

    def push(self, actor):
        """Adds an actor to the pool; it takes a waiting submit at once. ValueError if
        it is already in the pool."""
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

"""ActorPool: spread work over a fixed set of actors, as ray.util.ActorPool."""
from swiftray import _api


class ActorPool:
    """Hands values to idle actors with `fn(actor, value)` (which returns an ObjectRef)
    and yields results in submission order (`map`, `get_next`) or as they finish
    (`map_unordered`, `get_next_unordered`)."""

    def __init__(self, actors):
        self._idle = list(actors)
        self._future_to_actor = {}   # ref -> (index, actor)
        self._index_to_future = {}   # submission index -> ref
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending = []           # (fn, value) waiting for an idle actor

    def map(self, fn, values):
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn, values):
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next_unordered()

    def submit(self, fn, value):
        """Runs fn(actor, value) on an idle actor, or queues it until one is idle."""
        if self._idle:
            actor = self._idle.pop()
            ref = fn(actor, value)
            self._future_to_actor[ref] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = ref
            self._next_task_index += 1
        else:
            self._pending.append((fn, value))

    def has_next(self):
        return bool(self._future_to_actor) or bool(self._pending)

    def has_free(self):
        return bool(self._idle) and not self._pending

    def get_next(self, timeout=None, ignore_if_timedout=False):
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        ref = self._index_to_future[self._next_return_index]
        if timeout is not None:
            ready, _ = _api.wait([ref], timeout=timeout)
            if not ready:
                if ignore_if_timedout:
                    return None
                raise TimeoutError("Timed out waiting for result")
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(ref)
        self._return_actor(actor)
        return _api.get(ref)

    def get_next_unordered(self, timeout=None, ignore_if_timedout=False):
        """Whichever result finishes first."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = _api.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError("Timed out waiting for result")
        ref = ready[0]
        index, actor = self._future_to_actor.pop(ref)
        self._index_to_future.pop(index, None)
        # Ordered results resume after the newest one taken here.
        self._next_return_index = max(self._next_return_index, index + 1)
        self._return_actor(actor)
        return _api.get(ref)

    def _return_actor(self, actor):
        self._idle.append(actor)
        if self._pending:
            fn, value = self._pending.pop(0)
            self.submit(fn, value)

    def push(self, actor):
        """Adds an actor to the pool."""
        self._return_actor(actor)

    def pop_idle(self):
        """Removes and returns an idle actor, or None."""
        return self._idle.pop() if self.has_free() else None

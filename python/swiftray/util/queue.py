"""swiftray.util.queue (Ray's ray.util.queue): a first-in, first-out queue that drivers,
tasks and actors share, held by an async actor of its own.

The queue object is a small handle: pass it to tasks and actors as an argument and they
use the same queue. A blocking `put` or `get` waits inside the actor (an awaited
asyncio.Queue operation), not in a polling loop; many callers wait at once, since the
actor is async."""
import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable


class Empty(_stdlib_queue.Empty):
    """Raised by get when the queue stays empty (no block, or the timeout passed)."""


class Full(_stdlib_queue.Full):
    """Raised by put when the queue stays full (no block, or the timeout passed)."""


def _check_timeout(timeout):
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError("'timeout' must be a non-negative number")


class _QueueActor:
    """The queue's state: an asyncio.Queue on the actor's event loop."""

    def __init__(self, maxsize):
        self.maxsize = maxsize
        self.queue = asyncio.Queue(maxsize)

    def qsize(self):
        return self.queue.qsize()

    def empty(self):
        return self.queue.empty()

    def full(self):
        return self.queue.full()

    async def put(self, item, timeout=None):
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full from None

    async def get(self, timeout=None):
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty from None

    def put_nowait(self, item):
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full from None

    def put_nowait_batch(self, items):
        # All or nothing: a batch that does not fit adds none of its items.
        if self.maxsize > 0 and len(items) + self.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size {self.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self):
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty from None

    def get_nowait_batch(self, num_items):
        if num_items > self.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]


class Queue:
    """A queue shared across the cluster (Ray's API).

    `maxsize` <= 0: unbounded. `actor_options`: options of the actor that holds the
    queue (for example `{"num_cpus": 1}` or a scheduling strategy)."""

    def __init__(self, maxsize=0, actor_options=None):
        from swiftray import remote
        if not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"actor_options must be a dict of actor options, got {type(actor_options).__name__}")
        self.maxsize = maxsize
        self.actor = remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def __len__(self):
        return self.size()

    def size(self):
        """The number of items in the queue."""
        return self._call("qsize")

    def qsize(self):
        """The number of items in the queue."""
        return self.size()

    def empty(self):
        return self._call("empty")

    def full(self):
        return self._call("full")

    def put(self, item, block=True, timeout=None):
        """Adds an item. With `block`, waits for room (at most `timeout` seconds, then
        Full); without, raises Full at once when there is none."""
        if not block:
            return self._call("put_nowait", item)
        _check_timeout(timeout)
        self._call("put", item, timeout)

    async def put_async(self, item, block=True, timeout=None):
        """put, awaited (for async actors and coroutines)."""
        if not block:
            return await self._call_async("put_nowait", item)
        _check_timeout(timeout)
        await self._call_async("put", item, timeout)

    def get(self, block=True, timeout=None):
        """Removes and returns the oldest item. With `block`, waits for one (at most
        `timeout` seconds, then Empty); without, raises Empty at once when there is none."""
        if not block:
            return self._call("get_nowait")
        _check_timeout(timeout)
        return self._call("get", timeout)

    async def get_async(self, block=True, timeout=None):
        """get, awaited (for async actors and coroutines)."""
        if not block:
            return await self._call_async("get_nowait")
        _check_timeout(timeout)
        return await self._call_async("get", timeout)

    def put_nowait(self, item):
        """put(item, block=False)."""
        return self.put(item, block=False)

    def put_nowait_batch(self, items):
        """Adds all of `items` at once, or none of them (Full) when they do not fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        self._call("put_nowait_batch", list(items))

    def get_nowait(self):
        """get(block=False)."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items):
        """Removes and returns `num_items` items at once, or none (Empty) when the queue
        holds fewer."""
        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return self._call("get_nowait_batch", num_items)

    def shutdown(self, force=False, grace_period_s=5):
        """Ends the queue's actor (its items go with it): at once with `force`, else once
        the calls already sent to it are answered, or after `grace_period_s`."""
        from swiftray import _api
        from swiftray.actor import kill
        if self.actor is None:
            return
        actor, self.actor = self.actor, None
        if not force:
            _api.wait([actor.qsize.remote()], timeout=grace_period_s)
        kill(actor, no_restart=True)

    # The actor's Empty and Full arrive as task errors that are also instances of
    # them; the caller gets them plain, as from a local queue.
    def _call(self, method, *args):
        from swiftray import _api
        try:
            return _api.get(getattr(self._actor(), method).remote(*args))
        except (Empty, Full) as e:
            raise _plain(e) from None

    async def _call_async(self, method, *args):
        try:
            return await getattr(self._actor(), method).remote(*args)
        except (Empty, Full) as e:
            raise _plain(e) from None

    def _actor(self):
        if self.actor is None:
            raise RuntimeError("this queue was shut down")
        return self.actor


def _plain(error):
    kind = Empty if isinstance(error, Empty) else Full
    cause = getattr(error, "cause", None)
    args = cause.args if isinstance(cause, kind) else ()
    return kind(*args)

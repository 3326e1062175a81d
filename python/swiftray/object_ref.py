"""ObjectRef: a future for a value owned by some process in the cluster."""
import threading
import weakref

from swiftray import _core

# While a value is packed for the core, the refs pickled inside it are collected here
# (per thread): the core holds them for as long as the value lives and registers
# whoever receives the value as their borrower.
collector = threading.local()


class ObjectRef:
    """A reference to an object. Hashable, picklable: pickling it inside a value makes
    the receiver a borrower that can `get` it from its owner."""

    __slots__ = ("_id", "__weakref__")

    def __init__(self, id_bytes, owner=None, _add_ref=True):
        self._id = id_bytes
        if _add_ref:
            _core.add_local_ref(id_bytes, owner)

    def __del__(self):
        # `set_ref_type` (below) replaces this with the core's own finalizer, which does
        # the same without a Python frame per ref dropped; subclasses keep this one.
        try:
            _core.remove_local_ref(self._id)
        except Exception:
            pass

    def binary(self):
        return self._id

    def hex(self):
        return self._id.hex()

    def task_id(self):
        return self._id[:24].hex()

    def owner_address(self):
        return _core.owner_address(self._id)

    def __hash__(self):
        return hash(self._id)

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self):
        return f"ObjectRef({self.hex()})"

    def __reduce__(self):
        refs = getattr(collector, "refs", None)
        if refs is not None:
            refs.append(self)
        else:  # pickled outside a value the core tracks: keep it for the owner's life
            _core.ref_escaped(self._id)
        return (_core.rebuild_ref, (self._id, _core.owner_address(self._id)))

    def future(self):
        """A concurrent.futures.Future resolved with the value (or its error), without a
        thread of its own (`_availability`)."""
        import concurrent.futures  # imported on first use: most programs never ask
        fut = concurrent.futures.Future()
        _availability.when_available(self, lambda ref: _settle(fut, ref))
        return fut

    def as_future(self):
        """The asyncio future of this ref on the running loop (one per ref and loop):
        completed on the loop (call_soon_threadsafe) when the core says the object is
        here."""
        import asyncio
        loop = asyncio.get_running_loop()
        fut = _loop_futures.get(self)
        if fut is None or fut.get_loop() is not loop:
            fut = loop.create_future()
            _loop_futures[self] = fut
            _availability.when_available(self, lambda ref: loop.call_soon_threadsafe(_settle, fut, ref))
        return fut

    def __await__(self):
        return self.as_future().__await__()

    # The asyncio future protocol, through `as_future`: asyncio takes a ref wherever it
    # takes a future (`asyncio.wait(refs)`, `gather`, `wait_for`), which Ray's refs
    # are not on Python 3.11.
    _asyncio_future_blocking = False

    def get_loop(self):
        return self.as_future().get_loop()

    def done(self):
        return self.as_future().done()

    def cancelled(self):
        return self.as_future().cancelled()

    def result(self):
        return self.as_future().result()

    def exception(self):
        return self.as_future().exception()

    def add_done_callback(self, fn, *, context=None):
        self.as_future().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn):
        return self.as_future().remove_done_callback(fn)

    def cancel(self, msg=None):
        """Cancels the awaiting (not the task: `swiftray.cancel(ref)` does that)."""
        return self.as_future().cancel(msg)


# Unpickling a ref is one core call (`rebuild_ref`) that makes an instance of this class.
_core.set_ref_type(ObjectRef)


def _settle(fut, ref):
    """Completes `fut` with the value of `ref`, which is available here (so `get`
    returns at once), or with its error; nothing when the future was cancelled."""
    from swiftray import _api
    if fut.cancelled() or fut.done():
        return
    try:
        value = _api.get(ref)
    except BaseException as e:  # the future carries the error
        fut.set_exception(e)
    else:
        fut.set_result(value)


class _Availability:
    """Awaits objects for asyncio and concurrent futures with one thread for the whole
    process, however many refs are awaited: each ref is registered with the core under
    a token (`notify_when_available`), and the thread, blocked in `select` on the core's
    eventfd with the GIL released, runs the callbacks of the tokens the core posts."""

    def __init__(self):
        self._lock = threading.Lock()
        self._callbacks = {}  # token -> (ref, callback)
        self._next = 0
        self._thread = None
        self._pid = None
        self._generation = 0

    def reset(self):
        """The core shut down: its fd and its registrations are gone; the thread ends
        within a second, and the next await starts another for the next core."""
        with self._lock:
            self._generation += 1
            self._callbacks.clear()
            self._thread = None

    def when_available(self, ref, callback):
        """Calls `callback(ref)` on this object's thread once `ref`'s object is here."""
        _core.notify_when_available(ref._id, self._register(ref, callback))

    def when_generator_ready(self, generator, callback):
        """Calls `callback(generator)` once its next item arrived or its stream ended."""
        _core.notify_when_generator_ready(generator._task_id, self._register(generator, callback))

    def _register(self, subject, callback):
        from swiftray import _api
        _api._ensure_init()
        import os
        with self._lock:
            self._next += 1
            token = self._next
            # The subject is kept until its callback ran, so its object stays in scope.
            self._callbacks[token] = (subject, callback)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, args=(_core.available_fd(), self._generation),
                                                daemon=True, name="swiftray-availability")
                self._thread.start()
        return token

    def _run(self, fd, generation):
        import select
        # poll, not select: a driver may hold more than FD_SETSIZE (1024) descriptors.
        # The timeout only notices a shutdown (`reset`): arrivals wake the poll.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while generation == self._generation:
            try:
                if not poller.poll(1000) or generation != self._generation:
                    continue
                tokens = _core.take_available()
            except Exception:
                return  # the core shut down (its fd closed)
            for token in tokens:
                with self._lock:
                    entry = self._callbacks.pop(token, None)
                if entry is not None:
                    try:
                        entry[1](entry[0])
                    except Exception:  # a loop closed meanwhile: its future is gone
                        pass


_availability = _Availability()
# The asyncio future of each awaited ref (as_future), for as long as the ref lives.
_loop_futures = weakref.WeakKeyDictionary()


class ObjectRefGenerator:
    """The refs of a streaming generator task or actor method (`num_returns="streaming"`,
    the default for functions that `yield`), in the order they were yielded, each as
    soon as it is: iterate it (`next`, `for`, `async for`), or pass it to `wait`.

    The worker reports every item to this process (the owner) as it is produced, and
    pauses while `_generator_backpressure_num_objects` items wait here unread. An
    exception the generator raises is its last item (`get` of that ref raises it); a
    task that failed otherwise (its worker died past its retries, it was cancelled)
    ends the stream with a ref holding that error. A task retried after its worker died
    yields again from the start, and the items already here are not repeated.

    Threading: one reader at a time; the value is consumed by iterating it."""

    def __init__(self, end_ref):
        # Return 0 of the task: resolved once the generator finished (with the item
        # count) or failed.
        self._end = end_ref
        self._task_id = end_ref.binary()[:24]
        self._finished = False

    def __iter__(self):
        return self

    def __next__(self):
        ref = self._next_sync(None)
        if ref is None:
            raise StopIteration
        return ref

    def _next_sync(self, timeout_s=None):
        """The next ref; None once the stream ended; `ObjectRef.nil()`-like None plus a
        timeout error when `timeout_s` passes first (Ray returns a nil ref there)."""
        if self._finished:
            return None
        kind, id_bytes = _core.generator_next(self._task_id, timeout_s)
        if kind == 2:
            self._finished = True
            return None
        if kind == 3:
            from swiftray import exceptions
            raise exceptions.GetTimeoutError(f"The generator's next item did not arrive within {timeout_s} s.")
        return ObjectRef(id_bytes, _add_ref=False)

    def __aiter__(self):
        return self

    async def __anext__(self):
        import asyncio
        while True:
            if self._finished:
                raise StopAsyncIteration
            kind, id_bytes = _core.generator_next(self._task_id, 0)
            if kind == 2:
                self._finished = True
                raise StopAsyncIteration
            if kind != 3:
                return ObjectRef(id_bytes, _add_ref=False)
            # Not yet: the core posts a token when it is (no thread of ours waits).
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            _availability.when_generator_ready(
                self, lambda gen: loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None)))
            await fut

    def completed(self):
        """A ref resolved once the generator task finished (or failed)."""
        return self._end

    def is_finished(self):
        """True once every item was read and the task ended."""
        return self._finished

    def task_id(self):
        return self._task_id.hex()

    def _awaited_ids(self):
        return _core.generator_awaited(self._task_id)

    def __repr__(self):
        return f"ObjectRefGenerator({self._task_id.hex()})"

    def __reduce__(self):
        raise TypeError("An ObjectRefGenerator cannot be passed to other tasks or actors: iterate it where it "
                        "was made and pass the refs it yields.")

    def __del__(self):
        try:
            _core.generator_close(self._task_id)
        except Exception:
            pass


class DynamicObjectRefGenerator:
    """What `get` returns for the ref of a `num_returns="dynamic"` task: the refs of
    every value its generator yielded, in order (owned by the caller, held for as long
    as the task's ref or this object is)."""

    def __init__(self, refs):
        self._refs = refs

    def __iter__(self):
        return iter(self._refs)

    def __len__(self):
        return len(self._refs)

    def __repr__(self):
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


def _dynamic_generator(task_id, count, owner):
    # The items are returns 1..count of the task (ObjectID = task id + big-endian
    # index, return i at index i + 1), owned by the task's caller (`owner`).
    return DynamicObjectRefGenerator([_core.rebuild_ref(task_id + (i + 2).to_bytes(4, "big"), owner) for i in range(count)])

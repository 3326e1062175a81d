"""ObjectRef: a future for a value owned by some process in the cluster."""
import threading

from swiftray import _core

# While a value is packed for the core, the refs pickled inside it are collected here
# (per thread): the core holds them for as long as the value lives and registers
# whoever receives the value as their borrower.
collector = threading.local()


def _rebuild(id_bytes, owner):
    # One Python frame per ref unpickled, not two (no __init__ call): a value holding
    # thousands of refs pays this for each.
    r = _new(ObjectRef)
    r._id = id_bytes
    _core.add_local_ref(id_bytes, owner)
    return r


_new = object.__new__


class ObjectRef:
    """A reference to an object. Hashable, picklable: pickling it inside a value makes
    the receiver a borrower that can `get` it from its owner."""

    __slots__ = ("_id", "__weakref__")

    def __init__(self, id_bytes, owner=None, _add_ref=True):
        self._id = id_bytes
        if _add_ref:
            _core.add_local_ref(id_bytes, owner)

    def __del__(self):
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
        return (_rebuild, (self._id, _core.owner_address(self._id)))

    def future(self):
        """A concurrent.futures.Future resolved with the value (or its error)."""
        import concurrent.futures  # imported on first use: most programs never ask

        from swiftray import _api
        fut = concurrent.futures.Future()

        def resolve():
            try:
                fut.set_result(_api.get(self))
            except BaseException as e:  # the future carries the error
                fut.set_exception(e)

        threading.Thread(target=resolve, daemon=True, name="swiftray-future").start()
        return fut

    def as_future(self):
        """An asyncio future for this ref, on the running loop."""
        import asyncio
        return asyncio.wrap_future(self.future())

    def __await__(self):
        return self.as_future().__await__()

"""Exceptions raised by swiftray, with Ray's names (ray.exceptions).

Which class a runtime error becomes is decided in one place, the core's ErrorMapping;
this module only defines the classes.
"""
import os


class RayError(Exception):
    """Base of every swiftray error."""


class RaySystemError(RayError):
    """The runtime itself failed."""


class RayTaskError(RayError):
    """A task raised. Carries the remote traceback; `as_instanceof_cause()` returns an
    error that is also an instance of the user's exception class when it can be."""

    def __init__(self, function_name="", traceback_str="", cause=None, proctitle=None, pid=None, ip=None):
        # A task that failed because a task it waited on failed: the cause is the user's
        # innermost exception (the traceback text carries both tasks'), as in Ray.
        while isinstance(cause, RayTaskError) and cause.cause is not None and cause is not self:
            cause = cause.cause
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle or f"swiftray::{function_name}"
        self.pid = pid if pid is not None else os.getpid()
        self.ip = ip or _node_ip()
        super().__init__(function_name, traceback_str, cause, self.proctitle, self.pid, self.ip)

    def __reduce__(self):
        return (RayTaskError, (self.function_name, self.traceback_str, self.cause, self.proctitle, self.pid, self.ip))

    def __str__(self):
        head = f"{self.proctitle} (pid={self.pid}, ip={self.ip})"
        return f"{head}\n{self.traceback_str}".rstrip()

    def as_instanceof_cause(self):
        """An error that is both a RayTaskError and an instance of the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, RayTaskError):
            return self
        try:
            cls = _dual_class(cause_cls)
            err = cls.__new__(cls)
            RayTaskError.__init__(err, self.function_name, self.traceback_str, self.cause,
                                  self.proctitle, self.pid, self.ip)
            err.__dict__.update(getattr(self.cause, "__dict__", {}))
            return err
        except Exception:
            return self


def _node_ip():
    """The IP of the node this process runs on (where the error happened)."""
    try:
        from swiftray import _core
        if _core.is_initialized():
            return _core.context()["node_ip"]
    except Exception:  # noqa: BLE001 - a message detail must never fail the error itself
        pass
    return "127.0.0.1"


_dual_classes = {}


def _dual_class(cause_cls):
    cls = _dual_classes.get(cause_cls)
    if cls is None:
        name = f"RayTaskError({cause_cls.__name__})"

        def __getattr__(self, attr):
            return getattr(self.cause, attr)

        cls = type(name, (RayTaskError, cause_cls), {
            "__init__": lambda self, *a, **k: RayTaskError.__init__(self, *a, **k),
            "__getattr__": __getattr__,
            "__str__": RayTaskError.__str__,
            "__reduce__": RayTaskError.__reduce__,
        })
        # Shown as swiftray.exceptions.RayTaskError(ValueError) in tracebacks, as Ray's.
        cls.__module__ = __name__
        cls.__qualname__ = name
        _dual_classes[cause_cls] = cls
    return cls


class TaskCancelledError(RayError):
    """The task was cancelled with `cancel()`."""


class WorkerCrashedError(RayError):
    """The worker running the task died (exit, signal) and no retries were left."""


class RayActorError(RayError):
    """An actor died or cannot be reached."""


class ActorDiedError(RayActorError):
    """The actor is dead."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable."""


class NodeDiedError(RayError):
    """A node died."""


class LocalRayletDiedError(RayError):
    """This process's NodeManager is gone."""


class ObjectStoreFullError(RayError):
    """The object store has no room and nothing can be spilled or evicted."""


class OutOfMemoryError(RayError):
    """A worker was killed because the node ran out of memory."""


class OutOfDiskError(RayError):
    """No disk left for spilling."""


class ObjectLostError(RayError):
    """Every copy of the object is gone and it cannot be rebuilt."""


class ObjectFetchTimedOutError(ObjectLostError):
    """The object could not be fetched in time."""


class OwnerDiedError(ObjectLostError):
    """The process that owned the object died."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Rebuilding the object from lineage failed."""


class ObjectFreedError(ObjectLostError):
    """The object was freed by its owner."""


class GetTimeoutError(RayError, TimeoutError):
    """`get` timed out."""


class TaskUnschedulableError(RayError):
    """The task can never be scheduled."""


class ActorUnschedulableError(RayError):
    """The actor can never be scheduled."""


class TaskPlacementGroupRemoved(RayError):
    """The task's placement group was removed."""


class ActorPlacementGroupRemoved(ActorDiedError):
    """The actor's placement group was removed (it died with it)."""


class PendingCallsLimitExceeded(RayError):
    """Too many calls are pending on the actor (max_pending_calls)."""


class RuntimeEnvSetupError(RayError):
    """The runtime environment could not be set up."""


class AuthenticationError(RayError):
    """The cluster refused this process's credentials."""

"""swiftray.util.state: Ray's state API (``ray.util.state``) — what the cluster is doing.

Every call asks the head, which keeps the tasks (from the events every owner and worker
sends it), actors, nodes, placement groups and jobs. Rows come back newest task first,
as dicts whose keys are also attributes (``t.state == t["state"]``).
"""
import json

from swiftray import _api, _core

DEFAULT_LIMIT = 100
_PREDICATES = ("=", "!=")


class RayStateApiException(Exception):
    """The state API could not answer (a bad filter, an unreachable head)."""


class StateRow(dict):
    """One row: a dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TaskState(StateRow):
    pass


class ActorState(StateRow):
    pass


class NodeState(StateRow):
    pass


class PlacementGroupState(StateRow):
    pass


class JobState(StateRow):
    pass


class WorkerState(StateRow):
    pass


class ObjectState(StateRow):
    pass


class ObjectEventState(StateRow):
    pass


class ClusterEventState(StateRow):
    pass


def _filters(filters):
    out = []
    for f in filters or ():
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(f"a filter is a (key, predicate, value) tuple such as ('state', '=', 'RUNNING'), not {f!r}")
        key, op, value = f
        if op not in _PREDICATES:
            raise ValueError(f"unknown filter predicate {op!r}: use one of {', '.join(_PREDICATES)}")
        out.append((str(key), op, str(value)))
    return out


def _query(kind, filters=None, limit=DEFAULT_LIMIT, detail=False, raise_on_missing_output=True):
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive int, not {limit!r}")
    _api._ensure_init()
    raw, total, returned, dropped, warnings = _core.query_state(kind, _filters(filters), limit, bool(detail))
    if raise_on_missing_output and warnings:
        import warnings as _w
        for w in warnings:
            _w.warn(w, stacklevel=3)
    return json.loads(raw), total


def _list(kind, cls, filters, limit, detail, raise_on_missing_output):
    rows, _ = _query(kind, filters, limit, detail, raise_on_missing_output)
    return [cls(r) for r in rows]


def _lister(kind, cls, what):
    def list_state(address=None, filters=None, limit=DEFAULT_LIMIT, timeout=30, detail=False,
                   raise_on_missing_output=True, _explain=False):
        return _list(kind, cls, filters, limit, detail, raise_on_missing_output)
    list_state.__name__ = list_state.__qualname__ = "list_" + kind.replace("-", "_")
    list_state.__doc__ = f"The cluster's {what}: at most `limit` rows matching every filter, e.g. {cls.example}."
    return list_state


TaskState.example = 'filters=[("state", "=", "RUNNING")] (newest first)'
ActorState.example = 'filters=[("state", "=", "ALIVE")]'
NodeState.example = 'filters=[("state", "=", "ALIVE")]'
PlacementGroupState.example = 'filters=[("state", "=", "CREATED")]'
JobState.example = 'filters=[("status", "=", "RUNNING")]'
WorkerState.example = 'filters=[("is_alive", "=", "true")] (asked of every node)'
ClusterEventState.example = 'filters=[("source_type", "=", "ACTOR")] (newest first)'
ObjectEventState.example = 'filters=[("event", "=", "PULLED")] (newest first)'
ObjectState.example = 'filters=[("reference_type", "=", "LOCAL_REFERENCE")] (asked of every worker and driver)'

list_tasks = _lister("tasks", TaskState, "task attempts")
list_actors = _lister("actors", ActorState, "actors")
list_nodes = _lister("nodes", NodeState, "nodes")
list_placement_groups = _lister("placement-groups", PlacementGroupState, "placement groups")
list_jobs = _lister("jobs", JobState, "jobs")
list_workers = _lister("workers", WorkerState, "worker and driver processes, and recent exits")
list_objects = _lister("objects", ObjectState, "object references each worker and driver holds")
list_cluster_events = _lister("cluster-events", ClusterEventState,
                              "actors', placement groups', nodes' and jobs' state changes")
list_object_events = _lister("object-events", ObjectEventState,
                             "objects' lifecycle in the nodes' stores (sealed, pulled, spilled, restored, freed, evicted)")


def _id_hex(id, what):
    if hasattr(id, "task_id") and callable(id.task_id):
        return id.task_id()  # an ObjectRef: the task that makes it
    if hasattr(id, "hex") and callable(id.hex):
        id = id.hex()
    if not isinstance(id, str):
        raise TypeError(f"{what} id must be a hex string, not {type(id).__name__}")
    return id


def get_task(id, address=None, timeout=30, _explain=False):
    """Every attempt of a task (by hex id or by an ObjectRef it returns), or None."""
    rows = _list("tasks", TaskState, [("task_id", "=", _id_hex(id, "task"))], 1000, True, False)
    return sorted(rows, key=lambda r: r["attempt_number"]) or None


def _get_one(kind, cls, key, id, what):
    rows = _list(kind, cls, [(key, "=", _id_hex(id, what))], 1, True, False)
    return rows[0] if rows else None


def get_actor(id, address=None, timeout=30, _explain=False):
    return _get_one("actors", ActorState, "actor_id", id, "actor")


def get_node(id, address=None, timeout=30, _explain=False):
    return _get_one("nodes", NodeState, "node_id", id, "node")


def get_placement_group(id, address=None, timeout=30, _explain=False):
    return _get_one("placement-groups", PlacementGroupState, "placement_group_id", id, "placement group")


def get_job(id, address=None, timeout=30, _explain=False):
    return _get_one("jobs", JobState, "job_id", id, "job")


def get_worker(id, address=None, timeout=30, _explain=False):
    return _get_one("workers", WorkerState, "worker_id", id, "worker")


def get_objects(id, address=None, timeout=30, _explain=False):
    """Every process's reference to an object (by hex id or ObjectRef): a list."""
    hex_id = id.hex() if hasattr(id, "hex") and callable(id.hex) else id
    if not isinstance(hex_id, str):
        raise TypeError(f"object id must be a hex string or an ObjectRef, not {type(id).__name__}")
    return _list("objects", ObjectState, [("object_id", "=", hex_id)], 10000, True, False)


def summarize_tasks(address=None, timeout=30, raise_on_missing_output=True, _explain=False):
    """Per function or class: its type and a count of attempts in each state."""
    out, _ = _query("summary-tasks", None, 1, False, raise_on_missing_output)
    return out


def summarize_actors(address=None, timeout=30, raise_on_missing_output=True, _explain=False):
    out, _ = _query("summary-actors", None, 1, False, raise_on_missing_output)
    return out


def summarize_objects(address=None, timeout=30, raise_on_missing_output=True, _explain=False):
    """Objects' counts, sizes, task states and reference types (one group: call sites are not recorded)."""
    out, _ = _query("summary-objects", None, 1, False, raise_on_missing_output)
    return out


def _timeline_events():
    out, _ = _query("timeline", None, 1, False, False)
    return out

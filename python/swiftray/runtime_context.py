"""get_runtime_context(): ids of the current job, node, worker and task."""
from swiftray import _api, _core


class RuntimeContext:
    def _ctx(self):
        _api._ensure_init()
        return _core.context()

    def get_job_id(self):
        return self._ctx()["job_id"]

    def get_node_id(self):
        return self._ctx()["node_id"]

    def get_worker_id(self):
        return self._ctx()["worker_id"]

    def get_task_id(self):
        return self._ctx()["task_id"]

    def get_actor_id(self):
        """The hex id of the actor this code runs in, else None."""
        a = _hosted_actor()
        return a.actor_id.hex() if a is not None and a.actor_id is not None else None

    @property
    def namespace(self):
        return _api._state.get("namespace")

    @property
    def gcs_address(self):
        return self._ctx()["control"]

    @property
    def was_current_actor_reconstructed(self):
        """True in an actor that was restarted (its constructor ran again on a new worker)."""
        a = _hosted_actor()
        return bool(a is not None and a.reconstructed)

    def get(self):
        c = self._ctx()
        return {"job_id": c["job_id"], "node_id": c["node_id"], "worker_id": c["worker_id"],
                "task_id": c["task_id"]}


def _hosted_actor():
    import sys
    worker = sys.modules.get("swiftray._worker")
    return getattr(worker, "actor", None) if worker is not None else None


def get_runtime_context():
    return RuntimeContext()

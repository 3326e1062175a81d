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

    def get_runtime_env_string(self):
        """The runtime_env this code runs in, as JSON (as Ray's): the job's in a driver,
        the task's or actor's in a worker; package URIs stand for shipped folders."""
        _api._ensure_init()
        return _api.current_runtime_env() or "{}"

    @property
    def runtime_env(self):
        """The runtime_env this code runs in, as a dict."""
        import json
        return json.loads(self.get_runtime_env_string())

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

    def get_assigned_resources(self):
        """What the running task (or this actor) holds, by resource name (a placement
        group's resources under their plain names): {"CPU": 1.0} for a default task, {}
        for a default actor. Only in a worker, as in Ray."""
        worker = _worker_module()
        assert worker is not None, "This method is only available when the process is a worker. Current mode: driver"
        return dict(worker.assigned.resources)

    def get_accelerator_ids(self):
        """The accelerator ids visible to this worker, by accelerator resource name
        (`{"GPU": ["0", "1"], ...}`); empty lists in a driver."""
        ids = {name: [] for name in _ACCELERATORS}
        ids["GPU"] = [str(i) for i in get_gpu_ids()]
        return ids

    def get(self):
        c = self._ctx()
        return {"job_id": c["job_id"], "node_id": c["node_id"], "worker_id": c["worker_id"],
                "task_id": c["task_id"]}


# The accelerator resource names Ray reports in get_accelerator_ids().
_ACCELERATORS = ("GPU", "TPU", "NPU", "HPU", "neuron_cores", "RBLN", "FURIOSA", "TTNPU", "MBLT")


def _worker_module():
    """swiftray._worker when this process is a worker (it imported it), else None."""
    import sys
    worker = sys.modules.get("swiftray._worker")
    return worker if worker is not None and getattr(worker, "_running_as_worker", False) else None


def get_gpu_ids():
    """The GPU ids the running task or actor holds (the ones in its CUDA_VISIBLE_DEVICES);
    [] in a driver or a task that asked for no GPU."""
    _api._ensure_init()
    worker = _worker_module()
    if worker is None:
        return []
    return sorted(worker.assigned.gpu_ids, key=lambda x: (isinstance(x, str), x))


def _hosted_actor():
    worker = _worker_module()
    return worker.actor if worker is not None else None


def get_runtime_context():
    return RuntimeContext()

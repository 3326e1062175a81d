"""swiftray.util: helpers mirroring ray.util (reachable after a bare `import swiftray`,
as `ray.util.X` is after `import ray`)."""
import os

from swiftray.util import accelerators, actor_pool, scheduling_strategies, state  # noqa: F401 - attributes, as in Ray
from swiftray.util.actor_pool import ActorPool
from swiftray.util.check_serialize import inspect_serializability
from swiftray.util.debug import disable_log_once_globally, enable_periodic_logging, log_once
from swiftray.util.helpers import as_completed, map_unordered
# After the submodule import, so that `util.placement_group` is the function (as in Ray);
# `from swiftray.util.placement_group import ...` still finds the module.
from swiftray.util.placement_group import (PlacementGroup, get_current_placement_group, get_placement_group,
                                           placement_group, placement_group_table, remove_placement_group)
from swiftray.util.serialization import deregister_serializer, register_serializer


def list_named_actors(all_namespaces=False):
    """Names of the live named actors in this job's namespace (dicts of name and
    namespace with all_namespaces=True)."""
    from swiftray.actor import list_named_actors as _list
    return _list(all_namespaces)


def get_node_ip_address():
    """The IP address of the node this process runs on, as the cluster lists it
    (`nodes()[i]["NodeManagerAddress"]`); 127.0.0.1 for a local cluster without networking."""
    from swiftray import _api, _core
    _api._ensure_init()
    return _core.context()["node_ip"]


def get_node_instance_id():
    """The id of the machine the node runs on, when a cloud provider gives one (Ray reads
    it from the node's environment); "" otherwise."""
    return os.environ.get("RAY_CLOUD_INSTANCE_ID", "")


def object_store_stats():
    """This node's shared-memory object store as a dict: capacity, used, pinned_bytes,
    spilled_bytes, num_objects, num_pinned, num_spilled, num_readers, totals spilled
    and restored, the arena and spill paths."""
    from swiftray import _api, _core
    _api._ensure_init()
    return _core.store_stats()


def memory_summary(stats_only=False):
    """The report `swiftray memory` prints, for this node's object store."""
    from swiftray import _api, _core
    _api._ensure_init()
    return _core.memory_summary()

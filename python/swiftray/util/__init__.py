"""swiftray.util: helpers mirroring ray.util."""
import socket

from swiftray.util.actor_pool import ActorPool
from swiftray.util.placement_group import (PlacementGroup, get_current_placement_group, get_placement_group,
                                           placement_group, placement_group_table, remove_placement_group)


def list_named_actors(all_namespaces=False):
    """Names of the live named actors in this job's namespace (dicts of name and
    namespace with all_namespaces=True)."""
    from swiftray.actor import list_named_actors as _list
    return _list(all_namespaces)


def get_node_ip_address():
    return "127.0.0.1"


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

"""Scheduling strategies, as ray.util.scheduling_strategies."""


class NodeAffinitySchedulingStrategy:
    """Run on the node `node_id` (hex, as get_runtime_context().get_node_id() gives it).
    soft=False: wait there (or fail when that node is dead); soft=True: run elsewhere
    when it is dead or cannot fit the task."""

    def __init__(self, node_id, soft, _spill_on_unavailable=False, _fail_on_unavailable=False):
        if not isinstance(node_id, str) or len(node_id) != 56:
            raise ValueError(f"node_id must be a node's hex id (56 hex digits), got {node_id!r}")
        self.node_id = node_id
        self.soft = bool(soft)

    def __repr__(self):
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run inside a placement group's reserved resources: in bundle
    `placement_group_bundle_index` (-1: any of its bundles). With
    `placement_group_capture_child_tasks=True`, the tasks and actors this one submits
    without a strategy of their own go into the same group."""

    def __init__(self, placement_group, placement_group_bundle_index=-1, placement_group_capture_child_tasks=None):
        from swiftray.util.placement_group import PlacementGroup
        if not isinstance(placement_group, PlacementGroup):
            raise TypeError("placement_group must be a PlacementGroup (from swiftray.util.placement_group()), "
                            f"got {type(placement_group).__name__}")
        if isinstance(placement_group_bundle_index, bool) or not isinstance(placement_group_bundle_index, int):
            raise TypeError(f"placement_group_bundle_index must be an int, got {placement_group_bundle_index!r}")
        if placement_group_bundle_index < -1:
            raise ValueError(f"placement_group_bundle_index must be -1 (any bundle) or >= 0, got {placement_group_bundle_index}")
        count = placement_group._known_bundle_count()
        if count is not None and placement_group_bundle_index >= count:
            raise ValueError(f"placement_group_bundle_index {placement_group_bundle_index} is out of range: "
                             f"the placement group has {count} bundle(s)")
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self):
        return (f"PlacementGroupSchedulingStrategy(placement_group={self.placement_group!r}, "
                f"placement_group_bundle_index={self.placement_group_bundle_index}, "
                f"placement_group_capture_child_tasks={self.placement_group_capture_child_tasks})")

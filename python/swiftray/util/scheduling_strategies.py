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

"""Placement groups, as ray.util.placement_group: reserve bundles of resources across the
cluster all at once, then run tasks and actors inside them. Where bundles go and how they
are reserved is the core's (the ControlService's two-phase reservation); this module
checks arguments and shapes results."""
import numbers

from swiftray import _api, _core, _serialization

VALID_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroupID:
    """A placement group's id (16 bytes)."""
    __slots__ = ("_binary",)

    def __init__(self, binary):
        self._binary = bytes(binary)

    def binary(self):
        return self._binary

    def hex(self):
        return self._binary.hex()

    def __eq__(self, other):
        return isinstance(other, PlacementGroupID) and other._binary == self._binary

    def __hash__(self):
        return hash(self._binary)

    def __repr__(self):
        return f"PlacementGroupID({self.hex()})"


class PlacementGroup:
    """A handle on a placement group. Picklable: pass it to tasks and actors."""

    def __init__(self, id, bundle_cache=None):
        self.id = id if isinstance(id, PlacementGroupID) else PlacementGroupID(id)
        self._bundle_cache = bundle_cache

    def ready(self):
        """An ObjectRef that resolves (to True) once every bundle is reserved; getting it
        raises TaskPlacementGroupRemoved if the group is removed first."""
        _api._ensure_init()
        packed = _serialization.pack_checked(True, "ready()")
        return _api.ObjectRef(_core.placement_group_ready(self.id.binary(), packed.for_core()), _add_ref=False)

    def wait(self, timeout_seconds=30):
        """True once every bundle is reserved; False after `timeout_seconds`, or if the
        group was removed or cannot be placed on the nodes there are."""
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, numbers.Real) or timeout_seconds < 0:
            raise ValueError(f"timeout_seconds must be a non-negative number, got {timeout_seconds!r}")
        _api._ensure_init()
        info = _core.wait_placement_group(self.id.binary(), float(timeout_seconds))
        return info is not None and info["state"] == "CREATED"

    @property
    def bundle_specs(self):
        """The bundles, as a list of resource dicts."""
        if self._bundle_cache is None:
            info = _table_entry(self)
            self._bundle_cache = [info["bundles"][i] for i in sorted(info["bundles"])]
        return [dict(b) for b in self._bundle_cache]

    @property
    def bundle_count(self):
        return len(self.bundle_specs)

    def _known_bundle_count(self):
        return None if self._bundle_cache is None else len(self._bundle_cache)

    def __eq__(self, other):
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"PlacementGroup(id={self.id.hex()})"

    def __reduce__(self):
        # Its id leaves this process: the head must know the group by then (an unnamed
        # group is registered in the background).
        if _core.is_initialized():
            _core.placement_group_registered(self.id.binary())
        return PlacementGroup, (self.id.binary(), self._bundle_cache)


def _check_bundles(bundles):
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("The placement group `bundles` argument must be a non-empty list of resource dicts, "
                         f"got {bundles!r}.")
    out = []
    for i, b in enumerate(bundles):
        if not isinstance(b, dict):
            raise ValueError(f"Bundle {i} must be a dict of resource name to amount, got {type(b).__name__} {b!r}.")
        shape = {}
        for k, v in b.items():
            if not isinstance(k, str):
                raise ValueError(f"Bundle {i}: resource names must be str, got {k!r}.")
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"Bundle {i}: the amount of {k!r} must be a number, got {v!r}.")
            if v < 0:
                raise ValueError(f"Bundle {i}: the amount of {k!r} must be >= 0, got {v!r}.")
            if v > 0:
                shape[k] = float(v)
        if not shape:
            raise ValueError(f"Bundle {i} is empty ({b!r}): bundles cannot be an empty dictionary or resources "
                             "with only 0 values.")
        out.append(shape)
    return out


def placement_group(bundles, strategy="PACK", name="", lifetime=None, _max_cpu_fraction_per_node=None,
                    _soft_target_node_id=None, bundle_label_selector=None):
    """Reserves `bundles` (a list of resource dicts) across the cluster, all or none:
    PACK prefers one node, SPREAD distinct nodes, STRICT_PACK requires one node,
    STRICT_SPREAD distinct nodes. Returns at once; `ready()` / `wait()` tell when it is
    placed. `lifetime="detached"` keeps it after this job ends."""
    _api._ensure_init()
    shapes = _check_bundles(bundles)
    if strategy not in VALID_STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}: use one of {', '.join(VALID_STRATEGIES)}.")
    if not isinstance(name, str):
        raise TypeError(f"The placement group `name` must be a str, got {type(name).__name__}.")
    if lifetime not in (None, "detached"):
        raise ValueError(f"Placement group `lifetime` must be None or 'detached', got {lifetime!r}.")
    for opt, v in (("_max_cpu_fraction_per_node", _max_cpu_fraction_per_node),
                   ("_soft_target_node_id", _soft_target_node_id), ("bundle_label_selector", bundle_label_selector)):
        if v is not None:
            raise ValueError(f"The placement group option {opt!r} is not supported by swiftray yet.")
    gid = _core.create_placement_group(shapes, strategy, name, _api.current_namespace() if name else "",
                                       lifetime == "detached")
    return PlacementGroup(gid, shapes)


def remove_placement_group(placement_group):
    """Frees the group's resources: its actors die (ActorPlacementGroupRemoved), its
    pending and running tasks fail (TaskPlacementGroupRemoved)."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() expects a PlacementGroup, got {type(placement_group).__name__}")
    _api._ensure_init()
    _core.remove_placement_group(placement_group.id.binary())


def get_placement_group(placement_group_name):
    """The live placement group named so in this job's namespace; ValueError if none."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError("get_placement_group() needs the group's name (a non-empty str).")
    _api._ensure_init()
    info = _core.get_placement_group(None, placement_group_name, _api.current_namespace())
    if info is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return PlacementGroup(bytes.fromhex(info["placement_group_id"]),
                          [info["bundles"][i] for i in sorted(info["bundles"])])


def placement_group_table(placement_group=None):
    """Every placement group by hex id (or one group's entry): state, strategy, bundles,
    the node of each bundle, and why it is not placed yet."""
    _api._ensure_init()
    if placement_group is not None:
        return _table_entry(placement_group)
    return {g["placement_group_id"]: g for g in _core.placement_group_table()}


def _table_entry(pg):
    _api._ensure_init()
    info = _core.get_placement_group(pg.id.binary(), "", "")
    if info is None:
        raise ValueError(f"Unknown placement group {pg.id.hex()}")
    return info


def get_current_placement_group():
    """The placement group the current task or actor runs in, when it captures its
    child tasks; None otherwise (and in a driver)."""
    _api._ensure_init()
    cur = _core.current_placement_group()
    if cur is None or not cur[1]:
        return None
    return PlacementGroup(cur[0])

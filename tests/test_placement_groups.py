"""Placement groups: bundles reserved all or nothing, tasks and actors confined to them,
removal, waiting, and rescheduling after a node dies. Single-node tests use a local
cluster; multi-node ones real node daemons, on 127.0.0.1 and again on network-namespace
hosts."""
import time

import pytest

import swiftray
from conftest import wait_until
from swiftray.exceptions import (ActorDiedError, ActorPlacementGroupRemoved, GetTimeoutError,
                                 TaskPlacementGroupRemoved)
from swiftray.util import (get_current_placement_group, get_placement_group, placement_group,
                           placement_group_table, remove_placement_group)
from swiftray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup


@pytest.fixture
def cluster(any_cluster):
    """The multi-node tests run twice: on 127.0.0.1, and with every node but the head on
    a network-namespace host of its own (tests/hosts.py)."""
    return any_cluster


@pytest.fixture
def ray4():
    swiftray.shutdown()
    swiftray.init(num_cpus=4)
    yield swiftray
    swiftray.shutdown()


@swiftray.remote(num_cpus=1)
def node_of():
    return swiftray.get_runtime_context().get_node_id()


@swiftray.remote(num_cpus=1)
def span(seconds):
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def _free_cpus():
    return swiftray.available_resources().get("CPU", 0.0)


def test_a_group_is_reserved_ready_and_released_on_removal(ray4):
    pg = placement_group([{"CPU": 1}, {"CPU": 2}], strategy="PACK", name="trainers")
    assert swiftray.get(pg.ready(), timeout=10) is True
    assert pg.wait(5) is True
    assert pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 2.0}] and pg.bundle_count == 2
    entry = placement_group_table(pg)
    assert entry["state"] == "CREATED" and entry["strategy"] == "PACK" and entry["name"] == "trainers"
    assert entry["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 2.0}}
    assert entry["placement_group_id"] == pg.id.hex() and pg.id.hex() in placement_group_table()
    # Reserved while it lives: 3 of the 4 CPUs are the group's.
    assert wait_until(lambda: _free_cpus() == 1.0)
    assert get_placement_group("trainers") == pg
    with pytest.raises(ValueError, match="already taken"):
        placement_group([{"CPU": 1}], name="trainers")
    remove_placement_group(pg)
    assert wait_until(lambda: _free_cpus() == 4.0), swiftray.available_resources()
    assert placement_group_table(pg)["state"] == "REMOVED"
    assert not any(k.endswith(pg.id.hex()) for k in swiftray.available_resources())
    with pytest.raises(ValueError):
        get_placement_group("trainers")


def test_bad_arguments_get_clear_errors(ray4):
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])
    with pytest.raises(ValueError, match="empty"):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="CLOSE")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    with pytest.raises(ValueError, match="must be a number"):
        placement_group([{"CPU": "one"}])
    pg = placement_group([{"CPU": 1}])
    with pytest.raises(ValueError, match="out of range"):
        InGroup(pg, 3)
    with pytest.raises(TypeError):
        InGroup("not a group")


def test_tasks_run_inside_their_bundle_and_are_limited_by_its_capacity(ray4):
    pg = placement_group([{"CPU": 2}])
    assert pg.wait(10)
    # Six one-CPU tasks in a two-CPU bundle: never more than two at once, though the
    # node has two more CPUs free outside the group.
    spans = swiftray.get([span.options(scheduling_strategy=InGroup(pg, 0)).remote(0.3) for _ in range(6)], timeout=60)
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap <= 2, spans
    # A task asking for more than its bundle holds waits, and says why.
    big = span.options(num_cpus=3, scheduling_strategy=InGroup(pg, 0)).remote(0)
    with pytest.raises(GetTimeoutError):
        swiftray.get(big, timeout=1)
    # The legacy spelling works too.
    assert swiftray.get(node_of.options(placement_group=pg).remote(), timeout=30)


def test_removal_kills_its_actors_and_fails_pending_tasks(ray4):
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(10)

    @swiftray.remote(num_cpus=1)
    class Worker:
        def ping(self):
            return "pong"

    a = Worker.options(scheduling_strategy=InGroup(pg, 0)).remote()
    assert swiftray.get(a.ping.remote(), timeout=30) == "pong"
    # The actor holds the bundle's CPU: this task waits for it.
    waiting = span.options(scheduling_strategy=InGroup(pg)).remote(0)
    with pytest.raises(GetTimeoutError):
        swiftray.get(waiting, timeout=0.5)
    remove_placement_group(pg)
    with pytest.raises(TaskPlacementGroupRemoved, match="was removed"):
        swiftray.get(waiting, timeout=30)
    with pytest.raises(ActorPlacementGroupRemoved, match="placement group .* was removed") as info:
        swiftray.get(a.ping.remote(), timeout=30)
    assert isinstance(info.value, ActorDiedError)
    with pytest.raises(TaskPlacementGroupRemoved):
        swiftray.get(node_of.options(scheduling_strategy=InGroup(pg)).remote(), timeout=30)
    with pytest.raises(TaskPlacementGroupRemoved):
        swiftray.get(pg.ready(), timeout=30)
    assert wait_until(lambda: _free_cpus() == 4.0)


def test_a_group_waits_for_resources_then_becomes_ready(ray4):
    first = placement_group([{"CPU": 3}])
    assert first.wait(10)
    second = placement_group([{"CPU": 2}])
    ready = second.ready()
    assert second.wait(0.5) is False
    assert placement_group_table(second)["state"] == "PENDING"
    assert "free" in placement_group_table(second)["detail"]
    remove_placement_group(first)
    assert swiftray.get(ready, timeout=10) is True


def test_strict_spread_cannot_be_placed_on_one_node_and_says_so(ray4, capfd):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(1) is False
    entry = placement_group_table(pg)
    assert entry["state"] == "PENDING" and entry["infeasible"], entry
    assert "distinct nodes" in entry["detail"]
    huge = placement_group([{"CPU": 64}])
    ref = huge.ready()
    assert huge.wait(1) is False
    assert "larger than any node" in placement_group_table(huge)["detail"]
    with pytest.raises(GetTimeoutError):
        swiftray.get(ref, timeout=1)
    assert wait_until(lambda: "cannot be placed" in capfd.readouterr().err, timeout=5)
    # Nothing was reserved for either.
    assert _free_cpus() == 4.0


def test_child_tasks_are_captured_into_the_group(ray4):
    pg = placement_group([{"CPU": 2}])
    assert pg.wait(10)

    @swiftray.remote(num_cpus=1)
    def child():
        g = get_current_placement_group()
        return g.id.hex() if g else None

    @swiftray.remote(num_cpus=1)
    def parent():
        return swiftray.get(child.remote(), timeout=30)

    inside = InGroup(pg, placement_group_capture_child_tasks=True)
    assert swiftray.get(parent.options(scheduling_strategy=inside).remote(), timeout=30) == pg.id.hex()
    assert swiftray.get(parent.remote(), timeout=30) is None
    assert get_current_placement_group() is None


# Multi-node: real node daemons.

def _bundle_nodes(pg):
    entry = placement_group_table(pg)
    return [entry["bundles_to_node_id"][i] for i in range(len(entry["bundles"]))]


def test_each_strategy_places_bundles_as_it_says(cluster):
    cluster.add_node(num_cpus=2)
    cluster.add_node(num_cpus=2)
    cluster.add_node(num_cpus=2)
    swiftray.init(address=cluster.address)
    pack = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    strict_pack = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert pack.wait(10) and strict_pack.wait(10)
    assert len(set(_bundle_nodes(pack))) == 1 and len(set(_bundle_nodes(strict_pack))) == 1
    remove_placement_group(pack)
    remove_placement_group(strict_pack)
    # The head credits a removed group's CPUs at once, and a node's report taken before
    # the node gave them back never takes them away again (its bundle epoch is older
    # than the return's answer): over a few report periods (200 ms) the view stays put.
    assert wait_until(lambda: _free_cpus() == 6.0), swiftray.available_resources()
    seen = []
    for _ in range(12):
        seen.append(_free_cpus())
        time.sleep(0.05)
    assert set(seen) == {6.0}, seen
    # SPREAD is best effort over the nodes with room: every node has room now.
    spread = placement_group([{"CPU": 1}] * 3, strategy="SPREAD")
    assert spread.wait(10) and len(set(_bundle_nodes(spread))) == 3
    strict_spread = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert strict_spread.wait(10) and len(set(_bundle_nodes(strict_spread))) == 3
    # Every CPU of the cluster is reserved now: a PACK group waits.
    late = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    assert late.wait(0.5) is False
    # Tasks and actors go to their bundle's node.
    nodes = _bundle_nodes(strict_spread)
    for i in range(3):
        assert swiftray.get(node_of.options(scheduling_strategy=InGroup(strict_spread, i)).remote(), timeout=30) == nodes[i]

    @swiftray.remote(num_cpus=1)
    class Where:
        def node(self):
            return swiftray.get_runtime_context().get_node_id()

    a = Where.options(scheduling_strategy=InGroup(spread, 2)).remote()
    assert swiftray.get(a.node.remote(), timeout=30) == _bundle_nodes(spread)[2]
    remove_placement_group(spread)
    assert late.wait(10)  # one CPU free per node now: PACK takes two nodes
    assert len(set(_bundle_nodes(late))) == 2


def test_a_strict_spread_group_waits_for_a_node_to_join(cluster):
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    ready = pg.ready()
    assert pg.wait(1) is False and placement_group_table(pg)["infeasible"]
    cluster.add_node(num_cpus=1)
    assert swiftray.get(ready, timeout=30) is True
    assert len(set(_bundle_nodes(pg))) == 3


def test_a_node_that_dies_takes_its_bundles_and_the_group_is_placed_again(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"victim": 1})
    cluster.add_node(num_cpus=1)
    swiftray.init(address=cluster.address)
    victim_id = next(n["NodeID"] for n in swiftray.nodes() if n["SessionDir"] == victim["session"])
    # Two bundles on distinct nodes, one of them the victim's (it is the only one with "victim").
    pg = placement_group([{"CPU": 1}, {"CPU": 1, "victim": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(10)
    assert _bundle_nodes(pg)[1] == victim_id

    @swiftray.remote(num_cpus=1, max_restarts=1)
    class Keeper:
        def node(self):
            return swiftray.get_runtime_context().get_node_id()

    k = Keeper.options(scheduling_strategy=InGroup(pg, 0)).remote()
    first_home = swiftray.get(k.node.remote(), timeout=30)
    cluster.kill_node(victim)
    # Bundle 1 needs "victim", which died with its node: the group waits, RESCHEDULING.
    assert wait_until(lambda: placement_group_table(pg)["state"] == "RESCHEDULING", timeout=20)
    assert swiftray.get(k.node.remote(), timeout=30) == first_home  # bundle 0 kept its node
    cluster.add_node(num_cpus=1, resources={"victim": 1})
    assert wait_until(lambda: placement_group_table(pg)["state"] == "CREATED", timeout=30)
    nodes = _bundle_nodes(pg)
    assert nodes[1] != victim_id and nodes[0] == first_home and len(set(nodes)) == 2


def test_an_actor_in_a_bundle_on_a_dead_node_restarts_when_the_bundle_is_placed_again(cluster):
    cluster.add_node(num_cpus=1)
    spots = [cluster.add_node(num_cpus=1, resources={"spot": 1}) for _ in range(2)]
    swiftray.init(address=cluster.address)
    ids = {next(n["NodeID"] for n in swiftray.nodes() if n["SessionDir"] == s["session"]): s for s in spots}
    pg = placement_group([{"CPU": 1, "spot": 1}], strategy="STRICT_PACK")
    assert pg.wait(10)

    @swiftray.remote(num_cpus=1, max_restarts=1, max_task_retries=-1)
    class Keeper:
        def node(self):
            return swiftray.get_runtime_context().get_node_id()

    k = Keeper.options(scheduling_strategy=InGroup(pg, 0)).remote()
    home = swiftray.get(k.node.remote(), timeout=30)
    assert home in ids and _bundle_nodes(pg) == [home]
    cluster.kill_node(ids[home])
    assert wait_until(lambda: not next(n for n in swiftray.nodes() if n["NodeID"] == home)["Alive"], timeout=20)
    # The bundle is placed again on the other "spot" node and the actor restarts in it.
    new_home = swiftray.get(k.node.remote(), timeout=60)
    assert new_home != home and new_home in ids
    assert placement_group_table(pg)["state"] == "CREATED" and _bundle_nodes(pg) == [new_home]


def test_swiftray_status_shows_each_groups_reserved_bundles(cluster):
    import subprocess
    import sys
    cluster.add_node(num_cpus=2)
    cluster.add_node(num_cpus=2)
    swiftray.init(address=cluster.address)
    pg = placement_group([{"CPU": 2}, {"CPU": 1}], strategy="SPREAD", name="gang")
    assert pg.wait(10)
    held = span.options(scheduling_strategy=InGroup(pg, 0)).remote(3)
    time.sleep(1)  # the bundle's node reports its use
    out = subprocess.run([sys.executable, "-m", "swiftray", "status", "--address", cluster.address],
                         capture_output=True, text=True, timeout=60).stdout
    assert f"{pg.id.hex()} 'gang' SPREAD CREATED" in out, out
    assert "bundle 0 on node" in out and "1/2 CPU used" in out, out
    assert "bundle 1 on node" in out and "0/1 CPU used" in out, out
    assert "_group_" not in out, out  # nodes list their own resources, not the bundles' names
    swiftray.get(held, timeout=30)


def test_a_node_that_refuses_its_bundles_leaves_nothing_half_reserved(cluster):
    from swiftray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    cluster.add_node(num_cpus=2)
    # This node does not report for a minute: the head believes its CPUs free while two
    # tasks hold them, so its prepare is refused after the other node's succeeded.
    cluster.env["SWIFTRAY_RAYLET_REPORT_RESOURCES_PERIOD_MILLISECONDS"] = "60000"
    stale = cluster.add_node(num_cpus=2)
    swiftray.init(address=cluster.address)
    stale_id = next(n["NodeID"] for n in swiftray.nodes() if n["SessionDir"] == stale["session"])
    on_stale = NodeAffinitySchedulingStrategy(stale_id, soft=False)
    time.sleep(0.5)  # the driver's node has the new node in its view
    busy = [span.options(scheduling_strategy=on_stale).remote(4) for _ in range(2)]
    time.sleep(1.5)  # both run now
    pg = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="STRICT_SPREAD")
    assert pg.wait(1) is False
    assert "refused" in placement_group_table(pg)["detail"], placement_group_table(pg)
    # The other node's bundle was given back: its 2 CPUs are free for anyone meanwhile.
    assert wait_until(lambda: swiftray.available_resources().get("CPU") == 4.0)
    swiftray.get(busy, timeout=30)
    assert pg.wait(10), placement_group_table(pg)
    remove_placement_group(pg)
    assert wait_until(lambda: swiftray.available_resources().get("CPU") == 4.0)

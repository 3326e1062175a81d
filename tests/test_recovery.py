"""Recovery across node death (lineage reconstruction): real node daemons on 127.0.0.1."""
import numpy as np
import pytest

import swiftray
from conftest import wait_until

N = (4 << 20) // 8  # 4 MiB of float64: stored in the node's object store, not inline


def _dead(session):
    return wait_until(lambda: not next(n for n in swiftray.nodes() if n["SessionDir"] == session)["Alive"], timeout=20)


def test_a_chain_whose_objects_lived_on_a_killed_node_is_rebuilt_on_another(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"r": 1})
    def first():
        return np.arange(N, dtype=np.float64)

    @swiftray.remote(resources={"r": 1})
    def step(a):
        return a + 1

    @swiftray.remote(resources={"r": 1})
    def where():
        return swiftray.get_runtime_context().get_node_id()

    a = first.remote()
    b = step.remote(a)
    c = step.remote(b)
    swiftray.wait([c])  # all three live only in the victim's store
    spare = cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.kill_node(victim)
    # Read at once: the read waits for the verdict on the node, then for the owner to
    # run first -> step -> step again on the spare node.
    out = swiftray.get(c, timeout=120)
    assert out.shape == (N,) and np.array_equal(out, np.arange(N, dtype=np.float64) + 2)
    assert np.array_equal(swiftray.get(a), np.arange(N, dtype=np.float64))
    spare_id = next(n["NodeID"] for n in swiftray.nodes() if n["SessionDir"] == spare["session"])
    assert swiftray.get(where.remote()) == spare_id


def test_lost_objects_are_rebuilt_through_intermediates_that_were_already_freed(cluster):
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"r": 1})
    def first():
        return np.arange(N, dtype=np.float64)

    @swiftray.remote(resources={"r": 1})
    def step(a):
        return a * 2

    # Only the last ref is kept: the intermediates are freed once used, their lineage
    # stays (pinned by the specs that name them).
    out = step.remote(step.remote(step.remote(first.remote())))
    swiftray.wait([out])
    cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.kill_node(victim)
    assert _dead(victim["session"])
    assert np.array_equal(swiftray.get(out, timeout=120), np.arange(N, dtype=np.float64) * 8)


def test_an_object_whose_task_has_max_retries_0_raises_reconstruction_failed(cluster):
    from swiftray.exceptions import ObjectReconstructionFailedError
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1, resources={"r": 1})
    swiftray.init(address=cluster.address)

    @swiftray.remote(resources={"r": 1}, max_retries=0)
    def once():
        return np.ones(N)

    never = once.remote()
    swiftray.wait([never])
    cluster.kill_node(victim)
    assert _dead(victim["session"])
    with pytest.raises(ObjectReconstructionFailedError, match="max_retries=0") as e:
        swiftray.get(never, timeout=60)
    assert never.hex() in str(e.value) and "died" in str(e.value)

"""`swiftray logs` and `list workers` (issue 20): what each worker printed is kept in
its node's session (`logs/worker-<id>-<pid>.out|.err`) and read from any node through
the cluster, by file name, process, task or actor; `--follow` keeps printing."""
import json
import os
import subprocess
import sys
import time

import pytest

import swiftray
from conftest import wait_until

CLI = [sys.executable, "-m", "swiftray"]


def cli(*args, session):
    return subprocess.run(CLI + list(args) + ["--address", session], capture_output=True, text=True, timeout=60)


@pytest.fixture
def two_nodes(cluster):
    """A head (1 CPU) and a second node with the resource 'far'; this process drives."""
    head = cluster.add_node(num_cpus=1)
    far = cluster.add_node(num_cpus=1, resources={"far": 1})
    swiftray.shutdown()
    swiftray.init(address=head["session"], _system_config={"task_events_report_interval_ms": 100})
    yield head, far
    swiftray.shutdown()


def test_logs_reads_what_a_worker_printed_on_another_node(two_nodes):
    head, far = two_nodes
    session = head["session"]

    @swiftray.remote(resources={"far": 1})
    def shout(word):
        print(f"out-{word}")
        print(f"err-{word}", file=sys.stderr)
        return os.getpid(), swiftray.get_runtime_context().get_task_id(), swiftray.get_runtime_context().get_node_id()

    @swiftray.remote(num_cpus=0)
    class Speaker:
        def say(self, word):
            print(f"actor-{word}")
            return os.getpid()

    pid, task_id, node_id = swiftray.get(shout.remote("alpha"), timeout=60)
    for w in ("beta", "gamma"):
        assert swiftray.get(shout.remote(w), timeout=60)[0] == pid
    speaker = Speaker.remote()
    actor_pid = swiftray.get(speaker.say.remote("delta"), timeout=60)
    far_node = json.loads(cli("list", "nodes", "--format", "json", "--filter", "state=ALIVE", session=session).stdout)
    assert node_id in {n["node_id"] for n in far_node}

    # The listing names each node and its workers' files, the far one included.
    listing = cli("logs", session=session)
    assert listing.returncode == 0, listing.stderr
    assert f"Node {node_id}" in listing.stdout
    assert f"-{pid}.out" in listing.stdout and f"-{pid}.err" in listing.stdout and "daemon.log" in listing.stdout

    def logs(*args):
        out = cli("logs", *args, session=session)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    # By process (on its node), by task, by stream, with a tail.
    def printed():
        return logs("--pid", str(pid), "--node-id", node_id)
    assert wait_until(lambda: printed() == ["out-alpha", "out-beta", "out-gamma"], timeout=10), printed()
    assert logs("--pid", str(pid), "--tail", "1") == ["out-gamma"]
    # Once the head has the task's events (sent every 100 ms here).
    assert wait_until(lambda: cli("logs", "--task-id", task_id, session=session).returncode == 0, timeout=10)
    assert logs("--task-id", task_id) == ["out-alpha", "out-beta", "out-gamma"]
    assert logs("--task-id", task_id, "--err", "--tail", "2") == ["err-beta", "err-gamma"]
    # By actor: its worker's file on the head.
    actors = json.loads(cli("list", "actors", "--format", "json", session=session).stdout)
    actor_id = actors[0]["actor_id"]
    assert logs("--actor-id", actor_id) == ["actor-delta"]
    assert actors[0]["pid"] == actor_pid
    # By name (a glob naming one file).
    assert logs(f"worker-*-{pid}.err", "--tail", "1") == ["err-gamma"]

    # Bad input: a clear error, exit status non-zero.
    for args, message in ((["nope.txt"], "no log file of 'nope.txt'"),
                          (["--pid", str(pid), "--task-id", task_id], "give one of --actor-id, --task-id and --pid"),
                          (["--task-id", "ff" * 24], "no worker known for task"),
                          (["--node-id", "00ff"], "no live node with id 00ff"),
                          (["--tail=-3"], "--tail must be 0 ... 1000000")):
        out = cli("logs", *args, session=session)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)


def test_logs_follow_prints_what_the_worker_prints_next(two_nodes):
    head, _ = two_nodes

    @swiftray.remote(resources={"far": 1})
    def say(word):
        print(f"said-{word}")
        return os.getpid()

    pid = swiftray.get(say.remote("first"), timeout=60)
    follower = subprocess.Popen(CLI + ["logs", "--pid", str(pid), "--follow", "--address", head["session"]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import queue
    import threading
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.strip()) for x in follower.stdout], daemon=True).start()

    def line(timeout=30):
        # A follower that printed nothing fails the test instead of hanging it.
        return lines.get(timeout=timeout)
    try:
        assert line() == "said-first"
        assert swiftray.get(say.remote("second"), timeout=60) == pid
        assert line() == "said-second"
        assert follower.poll() is None  # still following
    finally:
        follower.kill()
        follower.wait(timeout=10)


def test_list_workers_shows_live_workers_and_how_dead_ones_ended(two_nodes):
    head, _ = two_nodes
    session = head["session"]

    @swiftray.remote(resources={"far": 1}, max_retries=0)
    def die():
        os._exit(3)

    @swiftray.remote(num_cpus=0)
    def pid():
        return os.getpid(), swiftray.get_runtime_context().get_node_id()

    live_pid, live_node = swiftray.get(pid.remote(), timeout=60)
    with pytest.raises(swiftray.exceptions.WorkerCrashedError):
        swiftray.get(die.remote(), timeout=60)

    def rows():
        return json.loads(cli("list", "workers", "--format", "json", "--limit", "1000", session=session).stdout)

    def settled():
        r = rows()
        return any(w["pid"] == live_pid and w["is_alive"] for w in r) and any(not w["is_alive"] for w in r)
    assert wait_until(settled, timeout=20), rows()
    workers = rows()
    live = next(w for w in workers if w["pid"] == live_pid)
    assert live["worker_type"] == "WORKER" and live["node_id"] == live_node
    assert live["ip"] == "127.0.0.1"
    dead = [w for w in workers if not w["is_alive"]]
    assert dead[0]["exit_type"] == "SYSTEM_ERROR" and "exited with code 3" in dead[0]["exit_detail"], dead
    # This driver is a DRIVER of the head node.
    assert any(w["worker_type"] == "DRIVER" and w["pid"] == os.getpid() for w in workers)
    # One by id, and filters on its columns.
    one = cli("get", "worker", live["worker_id"], "--format", "json", session=session)
    assert json.loads(one.stdout)[0]["pid"] == live_pid
    alive = json.loads(cli("list", "workers", "--format", "json", "--filter", "is_alive=false", session=session).stdout)
    assert alive and all(not w["is_alive"] for w in alive)


def test_list_objects_shows_every_processes_references(two_nodes, tmp_path):
    import numpy as np
    from swiftray.util import state
    head, far = two_nodes
    release = str(tmp_path / "release")

    @swiftray.remote(num_cpus=0, resources={"far": 0.01})
    class Holder:
        def keep(self, refs):
            self.refs = refs  # a borrowed reference, held by this worker
            return os.getpid()

    @swiftray.remote
    def waits(x):
        while not os.path.exists(release):
            time.sleep(0.05)
        return len(x)

    big = swiftray.put(np.zeros(200_000))  # 1.6 MB: in the node's shared-memory store
    small = swiftray.put("tiny")           # inline in this driver
    holder = Holder.remote()
    holder_pid = swiftray.get(holder.keep.remote([big]), timeout=60)
    pending = waits.remote(swiftray.put("only the task holds this"))
    try:
        def rows():
            return {(r["object_id"], r["pid"]): r for r in state.list_objects(limit=10000, raise_on_missing_output=False)}
        me = os.getpid()
        assert wait_until(lambda: (big.hex(), holder_pid) in rows(), timeout=20), rows()
        r = rows()
        mine = r[(big.hex(), me)]
        assert mine["is_owner"] and mine["type"] == "DRIVER" and mine["in_object_store"] and mine["object_size"] >= 1_600_000
        assert mine["num_borrowers"] == 1 and mine["reference_type"] == "LOCAL_REFERENCE" and mine["task_status"] == "FINISHED"
        borrowed = r[(big.hex(), holder_pid)]
        assert not borrowed["is_owner"] and borrowed["type"] == "WORKER" and borrowed["node_id"] == far_node_id(head)
        tiny = r[(small.hex(), me)]
        assert not tiny["in_object_store"] and 0 < tiny["object_size"] < 100
        assert r[(pending.hex(), me)]["task_status"] == "PENDING"
        used = [x for x in r.values() if x["reference_type"] == "USED_BY_PENDING_TASK"]
        assert len(used) == 1 and used[0]["pid"] == me
        # By id, in every process that holds it; and from the CLI, filtered.
        assert {x["pid"] for x in state.get_objects(big)} == {me, holder_pid}
        got = cli("get", "object", big.hex(), "--format", "json", session=head["session"])
        assert {x["pid"] for x in json.loads(got.stdout)} == {me, holder_pid}, got.stderr
        out = cli("list", "objects", "--format", "json", "--filter", "reference_type=USED_BY_PENDING_TASK", session=head["session"])
        assert [x["object_id"] for x in json.loads(out.stdout)] == [used[0]["object_id"]], out.stderr
        summary = state.summarize_objects(raise_on_missing_output=False)["cluster"]
        assert summary["total_objects"] == len(rows()) and summary["total_size_mb"] >= 1.5  # big: its borrower has not read it, so counts no size
        group = summary["summary"]["disabled"]
        assert group["ref_type_counts"]["USED_BY_PENDING_TASK"] == 1 and group["task_state_counts"]["PENDING"] >= 1
        table = cli("summary", "objects", session=head["session"])
        assert table.returncode == 0 and "total_objects" in table.stdout
        # Workers from Python too.
        assert state.get_worker(borrowed["worker_id"])["pid"] == holder_pid
    finally:
        open(release, "w").close()
    assert swiftray.get(pending, timeout=60) == len("only the task holds this")


def far_node_id(head):
    nodes = json.loads(cli("list", "nodes", "--format", "json", session=head["session"]).stdout)
    return next(n["node_id"] for n in nodes if not n["is_head_node"])


def test_object_events_record_seals_pulls_spills_and_frees_and_the_timeline_shows_transfers(cluster, tmp_path):
    import numpy as np
    from swiftray.util import state
    head = cluster.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
    cluster.add_node(num_cpus=1, resources={"far": 1})
    swiftray.shutdown()
    swiftray.init(address=head["session"])
    try:
        @swiftray.remote(resources={"far": 1})
        def total(a):
            return float(a.sum())

        first = swiftray.put(np.ones(1_000_000))  # 8 MB, sealed on the head's store
        assert swiftray.get(total.remote(first), timeout=60) == 1_000_000.0  # pulled by the far node
        # More than the store's spill threshold (80 of 100 MB): older objects go to disk.
        more = [swiftray.put(np.full(2_500_000, i, dtype=np.float64)) for i in range(5)]  # 5 × 20 MB
        assert float(swiftray.get(first).sum()) == 1_000_000.0  # read back (restored if it was spilled)
        first_hex = first.hex()
        del first
        far_id = far_node_id(head)

        def events(**match):
            rows = state.list_object_events(limit=10000, raise_on_missing_output=False)
            return [r for r in rows if all(r[k] == v for k, v in match.items())]
        assert wait_until(lambda: events(object_id=first_hex, event="PULLED"), timeout=20), events(object_id=first_hex)
        pulled = events(object_id=first_hex, event="PULLED")[0]
        assert pulled["node_id"] == far_id and pulled["object_size"] >= 8_000_000 and pulled["peer"]
        assert pulled["end_time_ms"] >= pulled["start_time_ms"] > 0
        sealed = events(object_id=first_hex, event="SEALED")
        assert sealed and sealed[0]["node_id"] != far_id
        assert wait_until(lambda: events(event="SPILLED"), timeout=30), events()
        assert wait_until(lambda: events(object_id=first_hex, event="FREED"), timeout=30), events(object_id=first_hex)
        # The CLI lists the same, filtered.
        out = cli("list", "object-events", "--format", "json", "--filter", f"object_id={first_hex}", session=head["session"])
        assert {"SEALED", "PULLED", "FREED"} <= {r["event"] for r in json.loads(out.stdout)}, out.stderr
        # The timeline has the pull as a span on the far node's object-store row.
        trace = swiftray.timeline()
        spans = [e for e in trace if e.get("ph") == "X" and e.get("cat") == "object::pulled"]
        assert any(e["args"]["object_id"] == first_hex and e["args"]["node_id"] == far_id for e in spans), spans
        names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in trace if e.get("ph") == "M" and e["name"] == "thread_name"}
        assert any(names.get((e["pid"], e["tid"])) == "object store" for e in spans)
        del more
    finally:
        swiftray.shutdown()

"""The state API, summaries and the timeline (issue 20): a workload of known tasks,
actors, failures and retries shows up with the right states and counts, from Python
and from the CLI."""
import json
import os
import subprocess
import sys
import time

import pytest

import swiftray
from conftest import Cluster, run_script, wait_until
from swiftray.util import state

CLI = [sys.executable, "-m", "swiftray"]


def cli(*args, session):
    return subprocess.run(CLI + list(args) + ["--address", session], capture_output=True, text=True, timeout=60)


# Tasks are named by their function's qualified name (these are defined in a fixture).
Q = "workload.<locals>."


def by_name(rows, name):
    return [r for r in rows if r["name"] == name]


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """A 2-CPU cluster that ran: 6 `square`, a `boom` that raised, a `dies_once` whose
    first worker died (retried once), a `parent` that ran a `child`, an actor with 3
    calls, an actor that was killed; and a `waits` task still running until released."""
    swiftray.shutdown()
    swiftray.init(num_cpus=2, _system_config={"task_events_report_interval_ms": 100})
    folder = tmp_path_factory.mktemp("obs")
    marker, release = str(folder / "died-once"), str(folder / "release")

    @swiftray.remote
    def square(x):
        return x * x

    @swiftray.remote(max_retries=0)
    def boom():
        raise ValueError("boom")

    @swiftray.remote(max_retries=1)
    def dies_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return 7

    @swiftray.remote
    def child():
        return 1

    @swiftray.remote
    def parent():
        return swiftray.get(child.remote()) + 1

    @swiftray.remote
    def waits(path):
        while not os.path.exists(path):
            time.sleep(0.02)
        return "released"

    @swiftray.remote(num_cpus=0)
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    @swiftray.remote(num_cpus=0)
    class Victim:
        def ping(self):
            return "pong"

    assert swiftray.get([square.remote(i) for i in range(6)]) == [0, 1, 4, 9, 16, 25]
    b = boom.remote()
    with pytest.raises(swiftray.exceptions.RayTaskError):
        swiftray.get(b)
    retried = dies_once.remote(marker)
    assert swiftray.get(retried) == 7
    assert swiftray.get(parent.remote()) == 2
    c = Counter.remote()
    assert swiftray.get([c.add.remote(1) for _ in range(3)]) == [1, 2, 3]
    # A worker's events leave it every report interval: one killed before (Victim may
    # be placed on the idle worker that ran `parent` and owns `child`) loses them.
    assert wait_until(lambda: state.list_tasks(filters=[("name", "=", Q + "child")]), timeout=10)
    v = Victim.remote()
    assert swiftray.get(v.ping.remote()) == "pong"
    swiftray.kill(v)
    running = waits.remote(release)
    yield {"retried": retried, "boom": b, "running": running, "release": release, "counter": c,
           "session": swiftray._core.context()["session_dir"]}
    swiftray.shutdown()


def settled(names):
    """Every attempt of these functions has ended, and the workers' spans are in (but
    for an attempt whose worker died before it sent its start)."""
    mine = [r for r in state.list_tasks(limit=1000, detail=True) if r["name"] in names]
    return {r["name"] for r in mine} == set(names) and all(r["state"] in ("FINISHED", "FAILED") and r["worker_pid"]
                        and (r["start_time_ms"] or r["error_type"] == "WORKER_DIED") for r in mine)


ENDED = tuple(Q + n for n in ("square", "boom", "dies_once", "parent", "child")) + ("Counter.add",)


def wait_settled():
    ok = wait_until(lambda: settled(ENDED), timeout=15)
    rows = state.list_tasks(limit=1000, detail=True)
    assert ok, [(r["name"], r["attempt_number"], r["state"], r["worker_pid"], r["start_time_ms"]) for r in rows]
    return rows


def test_list_tasks_shows_each_task_with_its_state_type_and_worker(workload):
    rows = wait_settled()
    squares = by_name(rows, Q + "square")
    assert len(squares) == 6
    for r in squares:
        assert r["start_time_ms"] is not None, r
        assert (r["state"], r["type"], r["attempt_number"], r.func_or_class_name) == ("FINISHED", "NORMAL_TASK", 0, Q + "square")
        assert r["error_type"] is None and r["actor_id"] is None
        assert r["worker_pid"] > 0 and len(r["worker_id"]) == 56 and len(r["node_id"]) == 56
        assert r["job_id"] == swiftray.get_runtime_context().get_job_id()
        assert r["required_resources"] == {"CPU": 1}
        assert r["creation_time_ms"] <= r["start_time_ms"] <= r["end_time_ms"]
    assert len({r["task_id"] for r in squares}) == 6


def test_a_task_that_raised_is_failed_with_ray_error_type(workload):
    wait_settled()
    [r] = state.list_tasks(filters=[("name", "=", Q + "boom")])
    assert (r["state"], r["error_type"]) == ("FAILED", "TASK_EXECUTION_EXCEPTION")


def test_a_retried_task_has_an_attempt_per_try_with_the_cause(workload):
    wait_settled()
    attempts = state.get_task(workload["retried"])
    assert [a["attempt_number"] for a in attempts] == [0, 1]
    first, second = attempts
    assert (first["state"], first["error_type"]) == ("FAILED", "WORKER_DIED")
    assert "died" in first["error_message"]
    assert (second["state"], second["error_type"]) == ("FINISHED", None)
    assert first["worker_pid"] != second["worker_pid"]  # the first worker is gone
    assert state.get_task("00" * 24) is None


def test_a_nested_task_names_its_parent(workload):
    wait_settled()
    [p] = state.list_tasks(filters=[("name", "=", Q + "parent")])
    [c] = state.list_tasks(filters=[("name", "=", Q + "child")])
    assert c["parent_task_id"] == p["task_id"]
    assert p["parent_task_id"] is None


def test_a_running_task_is_listed_running_until_it_ends(workload):
    assert wait_until(lambda: [r["name"] for r in state.list_tasks(filters=[("state", "=", "RUNNING")])] == [Q + "waits"], timeout=15)
    open(workload["release"], "w").close()
    assert swiftray.get(workload["running"]) == "released"
    assert wait_until(lambda: state.list_tasks(filters=[("name", "=", Q + "waits")])[0]["state"] == "FINISHED", timeout=15)
    assert state.list_tasks(filters=[("state", "=", "running")]) == []  # values compare case-insensitively


def test_summary_counts_attempts_by_function_and_state(workload):
    wait_settled()
    s = state.summarize_tasks()["cluster"]
    summary = s["summary"]
    assert summary[Q + "square"] == {"func_or_class_name": Q + "square", "type": "NORMAL_TASK",
                                     "state_counts": {"FINISHED": 6}}
    assert summary[Q + "dies_once"]["state_counts"] == {"FAILED": 1, "FINISHED": 1}
    assert summary[Q + "boom"]["state_counts"] == {"FAILED": 1}
    assert summary["Counter.add"] == {"func_or_class_name": "Counter.add", "type": "ACTOR_TASK",
                                      "state_counts": {"FINISHED": 3}}
    assert summary["Counter"]["type"] == "ACTOR_CREATION_TASK"
    assert s["total_actor_tasks"] >= 4  # Counter.add x3, Victim.ping
    assert s["total_actor_scheduled"] == 2


def test_actors_are_listed_alive_or_dead_with_the_cause(workload):
    actors = {a["class_name"]: a for a in state.list_actors()}
    counter, victim = actors["Counter"], actors["Victim"]
    assert counter["state"] == "ALIVE" and counter["pid"] > 0 and counter["death_cause"] is None
    assert counter["actor_id"] == workload["counter"]._actor_id.hex()
    assert victim["state"] == "DEAD" and victim["death_cause"]["type"] == "KILLED"
    assert [a["class_name"] for a in state.list_actors(filters=[("state", "=", "DEAD")])] == ["Victim"]
    assert state.get_actor(counter["actor_id"])["class_name"] == "Counter"
    assert state.summarize_actors()["cluster"]["summary"]["Victim"]["state_counts"] == {"DEAD": 1}


def test_nodes_and_jobs_are_listed(workload):
    [node] = state.list_nodes()
    assert node["state"] == "ALIVE" and node["is_head_node"] is True
    assert node["resources_total"]["CPU"] == 2
    assert state.get_node(node["node_id"])["node_ip"] == node["node_ip"]
    job = swiftray.get_runtime_context().get_job_id()
    [j] = state.list_jobs(filters=[("job_id", "=", job)])
    assert j["status"] == "RUNNING" and j["type"] == "DRIVER"
    assert int(j["driver_info"]["pid"]) == os.getpid()
    assert "pytest" in j["entrypoint"] or "py.test" in j["entrypoint"]


def test_cluster_events_trace_each_actor_node_and_job_through_its_states(workload):
    actors = {a["class_name"]: a["actor_id"] for a in state.list_actors()}
    events = state.list_cluster_events(limit=1000)
    assert [e["time"] for e in events] == sorted((e["time"] for e in events), reverse=True)  # newest first

    def states(entity):
        return [e["state"] for e in reversed(events) if e["entity_id"] == entity]
    assert states(actors["Victim"]) == ["PENDING_CREATION", "ALIVE", "DEAD"]
    assert states(actors["Counter"]) == ["PENDING_CREATION", "ALIVE"]
    dead = next(e for e in events if e["entity_id"] == actors["Victim"] and e["state"] == "DEAD")
    assert dead["severity"] == "ERROR" and dead["source_type"] == "ACTOR" and "kill" in dead["message"].lower()
    [node] = state.list_nodes()
    assert states(node["node_id"]) == ["ALIVE"]
    job = swiftray.get_runtime_context().get_job_id()
    assert states(job) == ["RUNNING"]
    only = state.list_cluster_events(filters=[("source_type", "=", "NODE")])
    assert {e["entity_id"] for e in only} == {node["node_id"]}
    out = cli("list", "cluster-events", "--format", "json", "--filter", "state=DEAD", session=workload["session"])
    assert [e["entity_id"] for e in json.loads(out.stdout)] == [actors["Victim"]], out.stderr
    # A placement group's life.
    from swiftray.util import placement_group, remove_placement_group
    pg = placement_group([{"CPU": 0.5}])
    swiftray.get(pg.ready(), timeout=30)
    remove_placement_group(pg)
    pg_events = state.list_cluster_events(filters=[("source_type", "=", "PLACEMENT_GROUP")])
    assert [e["state"] for e in reversed(pg_events)] == ["PENDING", "CREATED", "REMOVED"]


def test_filters_and_limits(workload):
    wait_settled()
    assert len(state.list_tasks(limit=2)) == 2
    not_done = state.list_tasks(filters=[("state", "!=", "FINISHED"), ("type", "=", "NORMAL_TASK")], limit=1000)
    assert {r["name"] for r in not_done} == {Q + "boom", Q + "dies_once"}
    with pytest.raises(ValueError, match="cannot filter tasks on 'colour'.*state"):
        state.list_tasks(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="predicate"):
        state.list_tasks(filters=[("state", "~", "RUNNING")])
    with pytest.raises(ValueError, match="limit"):
        state.list_tasks(limit=0)


def test_cli_list_get_and_summary_match_the_python_api(workload):
    rows = wait_settled()
    session = workload["session"]
    r = cli("list", "tasks", "--format", "json", "--limit", "1000", "--detail", session=session)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    by_id = {(x["task_id"], x["attempt_number"]): x for x in rows}
    assert len(listed) == len(by_id)
    for x in listed:
        mine = by_id[(x["task_id"], x["attempt_number"])]
        for key in ("name", "state", "type", "job_id", "actor_id", "func_or_class_name", "parent_task_id",
                    "node_id", "worker_id", "worker_pid", "error_type", "required_resources", "creation_time_ms"):
            assert x[key] == mine[key], key
    table = cli("list", "tasks", "--filter", f"name={Q}square", session=session)
    assert table.returncode == 0 and "Total: 6" in table.stdout
    assert table.stdout.splitlines()[2].split()[:4] == ["TASK_ID", "ATTEMPT_NUMBER", "NAME", "STATE"]
    assert sum(line.split()[2:4] == [Q + "square", "FINISHED"] for line in table.stdout.splitlines()) == 6
    retried = workload["retried"].task_id()
    got = cli("get", "task", retried, session=session)
    assert got.returncode == 0 and "attempt_number: 1" in got.stdout and "error_type: WORKER_DIED" in got.stdout
    summary = cli("summary", "tasks", "--format", "json", session=session)
    assert json.loads(summary.stdout)["cluster"]["summary"][Q + "square"]["state_counts"] == {"FINISHED": 6}
    bad = cli("list", "tasks", "--filter", "colour=red", session=session)
    assert bad.returncode != 0 and "func_or_class_name" in bad.stderr
    missing = cli("get", "task", "ab" * 24, session=session)
    assert missing.returncode == 1 and "No task" in missing.stderr
    actors = json.loads(cli("list", "actors", "--format", "json", session=session).stdout)
    assert sorted(a["class_name"] for a in actors) == ["Counter", "Victim"]
    yaml = cli("list", "nodes", "--format", "yaml", session=session).stdout
    assert yaml.startswith("- node_id: ") and "is_head_node: true" in yaml


def test_timeline_is_a_chrome_trace_with_a_span_per_task_on_its_worker(workload, tmp_path):
    rows = wait_settled()
    path = tmp_path / "trace.json"
    assert swiftray.timeline(filename=str(path)) is None
    events = json.loads(path.read_text())
    spans = {e["args"]["task_id"] + "/" + str(e["args"]["attempt_number"]): e for e in events if e["ph"] == "X"}
    ran = [r for r in rows if r["state"] in ("FINISHED", "FAILED") and r["start_time_ms"] is not None]
    assert len(ran) == len([r for r in rows if r["state"] in ("FINISHED", "FAILED")]) - 1  # all but the died one
    for r in ran:
        if True:
            span = spans[r["task_id"] + "/" + str(r["attempt_number"])]
            assert span["name"] == r["name"] and span["tid"] == r["worker_pid"]
            assert span["dur"] >= 0 and span["ts"] > 1.6e15  # microseconds since 1970
            assert span["args"]["worker_id"] == r["worker_id"]
    threads = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {(s["pid"], s["tid"]) for s in spans.values()} <= threads
    assert any(e["name"] == "process_name" and e["args"]["name"].startswith("Node ") for e in events)
    square = next(s for s in spans.values() if s["name"] == Q + "square")
    assert square["args"]["arg_bytes"] > 0 and square["args"]["return_bytes"] > 0
    out = tmp_path / "cli-trace.json"
    r = cli("timeline", "--output", str(out), session=workload["session"])
    assert r.returncode == 0, r.stderr
    assert len([e for e in json.loads(out.read_text()) if e["ph"] == "X"]) >= len(spans)


def test_task_events_off_records_nothing(tmp_path):
    r = run_script(tmp_path, """
        import swiftray
        from swiftray.util import state
        swiftray.init(num_cpus=1, _system_config={"enable_task_events": 0})
        @swiftray.remote
        def f():
            return 1
        assert swiftray.get([f.remote() for _ in range(5)]) == [1] * 5
        print("rows", len(state.list_tasks()), "nodes", len(state.list_nodes()))
    """)
    assert r.returncode == 0, r.stderr
    assert "rows 0 nodes 1" in r.stdout


def test_the_head_keeps_the_newest_attempts_and_says_it_evicted(tmp_path):
    r = run_script(tmp_path, """
        import warnings
        import swiftray
        from swiftray.util import state
        swiftray.init(num_cpus=1, _system_config={"task_events_max_num_task_in_gcs": 100})
        @swiftray.remote
        def f(i):
            return i
        swiftray.get([f.remote(i) for i in range(250)])
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            rows = state.list_tasks(limit=1000)
        print("rows", len(rows), "warned", any("evicted" in str(x.message) for x in w))
    """)
    assert r.returncode == 0, r.stderr
    assert "rows 100 warned True" in r.stdout


def test_tasks_on_two_nodes_are_listed_on_their_nodes_and_timeline_rows(cluster):
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1, resources={"far": 1})
    swiftray.init(address=cluster.address, _system_config={"task_events_report_interval_ms": 100})

    @swiftray.remote
    def where():
        return swiftray.get_runtime_context().get_node_id()

    near, far = swiftray.get([where.remote(), where.options(resources={"far": 1}).remote()])
    assert near != far
    assert wait_until(lambda: settled((where._name,)), timeout=15)
    assert {r["node_id"] for r in state.list_tasks()} == {near, far}
    nodes = state.list_nodes()
    assert sorted(n["is_head_node"] for n in nodes) == [False, True]
    events = swiftray.timeline()
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert len(names) == 2 and all(n.startswith("Node 127.0.0.1 (") for n in names.values())
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["args"]["node_id"] for e in spans} == {near, far} and {e["pid"] for e in spans} == set(names)


LOG_DRIVER = """
import time, swiftray
swiftray.init(num_cpus=4, _system_config={"dedup_logs_agg_window_ms": 500})

@swiftray.remote(num_cpus=1)
class Loader:
    def load(self, i):
        print(f"loading model shard {i} took 0.{i}s", flush=True)
        for step in range(3):
            print(f"step {step} of worker {i}", flush=True)
        return i

loaders = [Loader.remote() for _ in range(4)]
swiftray.get([l.load.remote(i) for i, l in enumerate(loaders)])
time.sleep(1.5)
print("done", flush=True)
"""


@pytest.mark.parametrize("dedup", [True, False])
def test_the_driver_sums_up_a_line_many_workers_print(tmp_path, dedup):
    env = None if dedup else {"RAY_DEDUP_LOGS": "0"}
    r = run_script(tmp_path, LOG_DRIVER, env=env)
    assert r.returncode == 0, r.stderr
    shards = [l for l in r.stdout.splitlines() if "loading model shard" in l]
    if dedup:
        # The first at once; the other three in one line when the window ended.
        assert len(shards) == 2, r.stdout
        assert "[repeated 3x across cluster]" in shards[1] and "repeated" not in shards[0]
    else:
        assert len(shards) == 4 and not any("repeated" in l for l in shards), r.stdout
    # A worker's own repeats are all shown: the first to print a step prints all three.
    steps = [l for l in r.stdout.splitlines() if " of worker " in l and "repeated" not in l]
    origin = steps[0].split(")", 1)[0]
    assert len([l for l in steps if l.startswith(origin + ")")]) == 3, r.stdout
    assert r.stdout.strip().endswith("done")

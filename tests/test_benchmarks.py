"""The benchmark harness works: every workload runs (tiny counts) or reports that its
feature is not implemented yet. Completion only — timings are never asserted."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")


def run(args, timeout=600):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env={k: v for k, v in os.environ.items() if k != "SWIFTRAY_BENCH_RAY_PYTHON"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_microbenchmark_runs_every_workload(tmp_path):
    out = tmp_path / "mb.json"
    run([os.path.join(BENCH, "microbenchmark.py"), "--impl", "swiftray", "--seconds", "0.01",
         "--trials", "1", "--scale", "0.001", "--json", str(out)])
    records = json.loads(out.read_text())
    import importlib.util
    spec = importlib.util.spec_from_file_location("mb", os.path.join(BENCH, "microbenchmark.py"))
    mb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mb)
    assert [r["workload"] for r in records] == [name for name, _ in mb.WORKLOADS]
    for r in records:
        assert "error" not in r, r
        assert r["per_second"] is not None or "missing" in r, r
    assert sum(r["per_second"] is not None for r in records) >= 10


def test_vs_serial_large_objects_and_core_figures_run(tmp_path):
    run([os.path.join(BENCH, "vs_serial.py"), "--impl", "serial,swiftray,pool", "--tasks", "2",
         "--duration", "0.01", "--json", str(tmp_path / "vs.json")])
    vs = json.loads((tmp_path / "vs.json").read_text())
    assert {(r["kind"], r["impl"]) for r in vs["results"]} == {
        (k, i) for k in ("sleep", "cpu") for i in ("serial", "swiftray", "pool")}
    run([os.path.join(BENCH, "large_objects.py"), "--sizes-mib", "1", "--repeat", "1",
         "--json", str(tmp_path / "lo.json")])
    assert json.loads((tmp_path / "lo.json").read_text())[0]["mib"] == 1
    run([os.path.join(BENCH, "core_figures.py"), "--quick", "--repeat", "1", "--json", str(tmp_path / "cf.json")])
    run([os.path.join(BENCH, "multinode.py"), "--tasks", "20", "--transfer-bytes", str(1 << 20), "--transfer-trials", "1",
         "--json", str(tmp_path / "mn.json")])
    mn = json.loads((tmp_path / "mn.json").read_text())
    assert [r["nodes"] for r in mn["throughput"]] == [1, 3, 3]
    assert mn["transfer"]["swiftray"]["bytes"] == 1 << 20 and len(mn["transfer"]["swiftray"]["seconds"]) == 1
    assert "sync_noop_task_median_us" in json.loads((tmp_path / "cf.json").read_text())["results"]


def test_the_task_peers_and_worker_start_benchmarks_run(tmp_path):
    run([os.path.join(BENCH, "task_peers.py"), "--impl", "swiftray,pool,executor", "--sync", "20", "--batch", "20",
         "--rounds", "1", "--json", str(tmp_path / "tp.json")])
    rows = json.loads((tmp_path / "tp.json").read_text())["rows"]
    assert [r["impl"] for r in rows] == ["swiftray", "pool", "executor"]
    assert all(r["sync_per_s"] > 0 and r["batch_per_s"] > 0 and r["sync_p99_us"] >= r["sync_median_us"] for r in rows)
    run([os.path.join(BENCH, "worker_start.py"), "--actors", "3", "--rounds", "1", "--json", str(tmp_path / "ws.json")])
    ws = json.loads((tmp_path / "ws.json").read_text())["rows"][0]
    assert ws["workers"] == 3 and ws["pss_mib_per_worker"] > 0
    run([os.path.join(BENCH, "vs_serial.py"), "--impl", "executor", "--tasks", "2", "--duration", "0.01",
         "--json", str(tmp_path / "vs.json")])
    assert {r["impl"] for r in json.loads((tmp_path / "vs.json").read_text())["results"]} == {"executor"}


def test_the_security_benchmark_runs_every_mode(tmp_path):
    run([os.path.join(BENCH, "security.py"), "--rounds", "1", "--seconds", "0.1", "--transfer-bytes", str(1 << 20),
         "--transfer-trials", "1", "--json", str(tmp_path / "sec.json")])
    best = json.loads((tmp_path / "sec.json").read_text())["best"]
    assert set(best) == {"off", "token", "token+tls"}
    assert all(b["sync_other_node_tasks_per_s"] > 0 and b["transfer_best_gb_per_s"] > 0 for b in best.values())


def test_the_control_calls_benchmark_runs(tmp_path):
    out = tmp_path / "cc.json"
    run([os.path.join(BENCH, "control_calls.py"), "--calls", "10", "--groups", "3", "--rounds", "1",
         "--env", "SWIFTRAY_TASKS_ON_EVENT_LOOPS=1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["default", "SWIFTRAY_TASKS_ON_EVENT_LOOPS=1"]
    for r in rows:
        assert r["kv_get_wall_us"] > 0 and r["kv_get_cpu_us"] >= 0 and r["pg_ready_us"] > 0 and r["pg_remove_us"] > 0, r


def test_the_util_library_benchmark_runs(tmp_path):
    out = tmp_path / "ul.json"
    run([os.path.join(BENCH, "util_library.py"), "--items", "200", "--queue-ops", "20", "--stream-items", "50",
         "--rounds", "1", "--json", str(out)])
    m = json.loads(out.read_text())["medians"]["swiftray"]
    assert m["queue_put_get_per_s"] > 0 and m["pool_map_items_per_s"] > 0 and m["stream_items_per_s"] > 0

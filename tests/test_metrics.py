"""Prometheus metrics: each node's /metrics (Ray's names), the head's task, actor and
node counts, and user metrics (swiftray.util.metrics) from every process, checked with
prometheus_client's own parser."""
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import swiftray
from swiftray.util.metrics import Counter, Gauge, Histogram

from conftest import wait_until


def eventually(pred, timeout=20.0):
    """Polls `pred` (a scrape) every 0.2 s until it holds or `timeout` passes."""
    return wait_until(pred, timeout=timeout, interval=0.2)


def scrape(url):
    """Every sample: {(sample name, frozenset of labels): value}, and the raw text."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, text


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def task_count(samples, name, state, is_retry="0"):
    """ray_tasks of the function `name` (its Name is its qualified name, as Ray's)."""
    found = [v for (n, labels), v in samples.items() if n == "ray_tasks"
             and dict(labels).get("State") == state and dict(labels).get("IsRetry") == is_retry
             and dict(labels).get("Name", "").split(".")[-1] == name.split(".")[-1]
             and dict(labels).get("Name", "").endswith(name)]
    return sum(found) if found else None


def local_url():
    port = swiftray.nodes()[0]["MetricsExportPort"]
    assert port > 0
    return f"http://127.0.0.1:{port}/metrics"


@pytest.fixture
def metered():
    swiftray.shutdown()
    swiftray.init(num_cpus=2, _metrics_export_port=0)
    yield local_url()
    swiftray.shutdown()


def test_task_actor_and_user_metrics_match_the_workload(metered, tmp_path):
    marker = str(tmp_path / "failed-once")

    @swiftray.remote
    def work(i, secret):
        Counter("work_done", description="Work items done.", tag_keys=("kind",)).inc(tags={"kind": "even" if i % 2 == 0 else "odd"})
        Histogram("work_size", description="Sizes.", boundaries=[1, 3]).observe(i)
        return i

    @swiftray.remote(max_retries=0)
    def broken():
        raise ValueError("broken on purpose")

    @swiftray.remote(max_retries=1, retry_exceptions=True)
    def flaky(path):
        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError("first attempt fails")
        return "second attempt"

    @swiftray.remote
    class Keeper:
        def ping(self):
            return "pong"

    swiftray.get([work.remote(i, "s3cr3t-argument-value") for i in range(6)], timeout=60)
    # Recorded in workers, sent with their next report: in before any worker is killed
    # (a killed process loses what it recorded since its last report).
    assert eventually(lambda: value(scrape(metered)[0], "ray_work_size_count") == 6), scrape(metered)[1]
    for _ in range(2):
        with pytest.raises(swiftray.exceptions.RayTaskError):
            swiftray.get(broken.remote(), timeout=60)
    assert swiftray.get(flaky.remote(marker), timeout=60) == "second attempt"
    keep, gone = Keeper.remote(), Keeper.remote()
    assert swiftray.get([keep.ping.remote(), gone.ping.remote()], timeout=60) == ["pong", "pong"]
    swiftray.kill(gone)
    Gauge("queue_depth", description="Items waiting.").set(7)
    Counter("work_done", description="Work items done.", tag_keys=("kind",)).inc(2, tags={"kind": "even"})

    expected = {
        ("work", "FINISHED", "0"): 6,
        ("broken", "FAILED", "0"): 2,
        ("flaky", "FAILED", "0"): 1,
        ("flaky", "FINISHED", "1"): 1,
        ("Keeper.ping", "FINISHED", "0"): 2,
        ("Keeper.__init__", "FINISHED", "0"): 2,
    }

    def settled():
        swiftray._core.flush_task_events()
        s, _ = scrape(metered)
        return (all(task_count(s, n, st, r) == v for (n, st, r), v in expected.items())
                and value(s, "ray_actors", State="DEAD", Name="Keeper") == 1
                and value(s, "ray_work_done_total", kind="even") == 5
                and value(s, "ray_work_size_count") == 6)

    assert eventually(settled), scrape(metered)[1]
    s, text = scrape(metered)
    assert value(s, "ray_actors", State="ALIVE", Name="Keeper") == 1
    # Nothing left pending: every attempt ended (the killed actor's constructor too).
    assert not any(n == "ray_tasks" and dict(labels)["State"] not in ("FINISHED", "FAILED") and v
                   for (n, labels), v in s.items())
    # User metrics, summed over the workers that recorded them and the driver.
    assert value(s, "ray_work_done_total", kind="even") == 3 + 2
    assert value(s, "ray_work_done_total", kind="odd") == 3
    assert value(s, "ray_queue_depth") == 7
    assert value(s, "ray_work_size_bucket", le="1.0") == 2  # 0, 1
    assert value(s, "ray_work_size_bucket", le="3.0") == 4  # 0 … 3
    assert value(s, "ray_work_size_bucket", le="+Inf") == 6
    assert value(s, "ray_work_size_sum") == sum(range(6))
    # The node's own figures, under Ray's names.
    assert value(s, "ray_resources", Name="CPU", State="AVAILABLE", NodeAddress="127.0.0.1") is not None
    assert value(s, "ray_node_mem_total", NodeAddress="127.0.0.1") > 0
    assert 0 <= value(s, "ray_node_cpu_utilization", NodeAddress="127.0.0.1") <= 100
    assert value(s, "ray_object_store_available_memory", NodeAddress="127.0.0.1") > 0
    assert value(s, "ray_cluster_active_nodes") == 1
    assert value(s, "swiftray_user_metric_samples_dropped_total") == 0
    # Counts and sizes only: no argument or value of a task.
    assert "s3cr3t" not in text and "broken on purpose" not in text


def test_metrics_need_no_token_and_answer_only_gets(metered):
    # urllib sends no Authorization header: Prometheus scrapes without the token.
    base = metered.rsplit("/", 1)[0]
    assert urllib.request.urlopen(base + "/", timeout=10).status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/secrets", timeout=10)
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(metered, data=b"x" * 10, method="POST"), timeout=10)
    assert e.value.code in (405, 413)
    head = urllib.request.urlopen(urllib.request.Request(metered, method="HEAD"), timeout=10)
    assert head.status == 200 and head.read() == b""


def test_conflicting_and_reserved_user_metrics_are_refused_clearly(metered):
    with pytest.raises(ValueError, match="taken by swiftray's own metric ray_tasks"):
        Gauge("tasks").set(1)
    with pytest.raises(ValueError, match="'le' is the histogram's own"):
        Histogram("spread", boundaries=[1], tag_keys=("le",)).observe(1, tags={"le": "x"})
    # Two definitions of one name: the first stands at the head, the other is counted.
    Gauge("dual", description="first").set(1)
    swiftray._core.flush_task_events()
    Counter("dual", description="second").inc()

    def counted():
        swiftray._core.flush_task_events()
        s, _ = scrape(metered)
        return value(s, "ray_dual") == 1 and value(s, "swiftray_user_metric_samples_dropped_total") >= 1

    assert eventually(counted), scrape(metered)[1]
    s, _ = scrape(metered)
    assert value(s, "ray_dual_total") is None


def test_metric_arguments_are_checked_with_clear_errors(ray2):
    with pytest.raises(ValueError, match="Empty name"):
        Counter("")
    with pytest.raises(ValueError, match="Invalid metric name"):
        Counter("9lives")
    with pytest.raises(TypeError, match="tuple"):
        Counter("c", tag_keys=["a"])
    with pytest.raises(ValueError, match="boundaries argument should be provided"):
        Histogram("h")
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("h", boundaries=[2, 1])
    with pytest.raises(ValueError, match="positive"):
        Histogram("h", boundaries=[0, 1])
    c = Counter("c", tag_keys=("a",))
    with pytest.raises(ValueError, match="Missing value for tag key"):
        c.inc()
    with pytest.raises(ValueError, match="Unrecognized tag key"):
        c.inc(tags={"a": "1", "b": "2"})
    with pytest.raises(ValueError, match="value must be >0"):
        c.inc(0, tags={"a": "1"})
    with pytest.raises(TypeError, match="must be a number"):
        c.inc("1", tags={"a": "1"})
    with pytest.raises(TypeError, match="Tag values must be str"):
        c.set_default_tags({"a": 1})
    c.set_default_tags({"a": "x"}).inc()  # the default fills the key


def test_init_rejects_a_bad_metrics_port_before_starting_anything():
    swiftray.shutdown()
    for bad in (70000, -1, "8080", True):
        with pytest.raises(ValueError, match="_metrics_export_port must be a port number"):
            swiftray.init(num_cpus=1, _metrics_export_port=bad)
    assert not swiftray.is_initialized()


def test_every_node_of_a_cluster_serves_its_metrics_and_the_head_the_clusters(cluster):
    head = cluster.add_node(num_cpus=1)
    other = cluster.add_node(num_cpus=1, resources={"far": 1})
    assert head["metrics"].startswith("http://127.0.0.1:") and head["metrics"].endswith("/metrics")
    assert other["metrics"] and other["metrics"] != head["metrics"]
    swiftray.init(address=cluster.address)
    ports = sorted(n["MetricsExportPort"] for n in swiftray.nodes())
    assert ports == sorted(int(n["metrics"].rsplit(":", 1)[1].split("/")[0]) for n in (head, other))

    @swiftray.remote(resources={"far": 1})
    def far():
        Counter("far_work", tag_keys=("where",)).inc(tags={"where": "far"})
        return "done"

    assert swiftray.get([far.remote() for _ in range(3)], timeout=60) == ["done"] * 3

    def head_counts():
        s, _ = scrape(head["metrics"])
        return (task_count(s, "far", "FINISHED") == 3
                and value(s, "ray_far_work_total", where="far") == 3)

    assert eventually(head_counts), scrape(head["metrics"])[1]
    s, _ = scrape(head["metrics"])
    assert value(s, "ray_cluster_active_nodes") == 2
    o, _ = scrape(other["metrics"])
    # The other node shows its own resources, and no cluster-wide counts.
    assert value(o, "ray_resources", Name="far", State="AVAILABLE", NodeAddress="127.0.0.1") == 1
    assert not any(name == "ray_tasks" for name, _ in o)


def test_start_rejects_a_bad_metrics_port():
    out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--head", "--metrics-export-port", "70000"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--metrics-export-port must be 0-65535" in out.stderr

"""The dashboard: token-guarded pages and JSON API on the head, health endpoints open to
probes, and the UI itself in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium)."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import swiftray
from conftest import wait_until

ARTIFACTS = os.environ.get("SWIFTRAY_TEST_ARTIFACTS", "/tmp/swiftray-test-artifacts")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(url, headers=None):
    """(status, headers, body) without following redirects or raising on errors."""
    opener = urllib.request.build_opener(NoRedirect)
    try:
        r = opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10)
        return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture
def dashboard():
    swiftray.shutdown()
    info = swiftray.init(num_cpus=2, include_dashboard=True, dashboard_port=0)
    login = info["dashboard_login_url"]
    parts = urllib.parse.urlsplit(login)
    token = urllib.parse.parse_qs(parts.query)["token"][0]
    yield f"{parts.scheme}://{parts.netloc}", token, login
    swiftray.shutdown()


def test_every_page_and_api_call_needs_the_token_but_health_checks(dashboard):
    base, token, login = dashboard
    for path in ("/", "/static/app.js", "/api/v0/tasks", "/api/v0/nodes"):
        status, _, body = fetch(base + path)
        assert status == 401, path
        assert token.encode() not in body
    assert fetch(base + "/", {"Authorization": "Bearer wrong"})[0] == 401
    assert fetch(base + "/?token=wrong")[0] == 401
    # The health endpoints KubeRay probes, without a token, say only that.
    for path in ("/api/gcs_healthz", "/api/healthz", "/api/local_raylet_healthz"):
        status, _, body = fetch(base + path)
        assert (status, body.strip()) == (200, b"success"), path
    # Either header KubeRay or a client sends.
    for header in ("Authorization", "x-ray-authorization"):
        status, headers, body = fetch(base + "/", {header: f"Bearer {token}"})
        assert status == 200 and b"swiftray dashboard" in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
    # The login link sets a cookie and sends the browser on without the token in the URL.
    status, headers, _ = fetch(login)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, body = fetch(base + "/api/v0/nodes", {"Cookie": cookie.split(";")[0]})
    assert status == 200
    nodes = json.loads(body)["data"]["result"]["result"]
    assert len(nodes) == 1 and nodes[0]["state"] == "ALIVE" and nodes[0]["object_store_total_memory"] > 0
    # Only the UI's own files are served.
    auth = {"Authorization": f"Bearer {token}"}
    for path in ("/static/../index.html", "/static/.hidden.js", "/static/x.py", "/nope"):
        assert fetch(base + path, auth)[0] == 404, path
    status, _, body = fetch(base + "/api/v0/tasks?filter_keys=colour&filter_values=red", auth)
    assert status == 400 and "cannot filter tasks on 'colour'" in json.loads(body)["msg"]


def test_the_api_lists_workers_and_serves_their_logs(dashboard):
    base, token, _ = dashboard
    auth = {"Authorization": f"Bearer {token}"}

    @swiftray.remote
    def hello():
        print("hello-from-the-worker")
        return os.getpid()

    pid = swiftray.get(hello.remote(), timeout=60)
    node = swiftray.nodes()[0]["NodeID"]
    status, _, body = fetch(base + "/api/v0/workers", auth)
    workers = json.loads(body)["data"]["result"]["result"]
    mine = [w for w in workers if w["pid"] == pid]
    assert status == 200 and mine and mine[0]["is_alive"] and mine[0]["node_id"] == node
    listing = json.loads(fetch(base + f"/api/v0/logs?node_id={node}", auth)[2])["data"]["result"][node]
    name = f"worker-{mine[0]['worker_id']}-{pid}.out"
    assert name in [f["name"] for f in listing]

    def text():
        return fetch(base + f"/api/v0/logs/file?node_id={node}&filename={name}&lines=5", auth)
    assert wait_until(lambda: text()[2] == b"hello-from-the-worker\n", timeout=10), text()
    # The token guards logs as everything else; only plain file names of live nodes are read.
    assert fetch(base + f"/api/v0/logs/file?node_id={node}&filename={name}")[0] == 401
    for query, status in ((f"node_id={node}&filename=../daemon.log", 400), (f"node_id={node}&filename=nope.out", 404),
                          ("node_id=00ff&filename=daemon.log", 404), ("filename=daemon.log", 400)):
        assert fetch(base + "/api/v0/logs/file?" + query, auth)[0] == status, query


def test_a_plain_init_serves_no_dashboard():
    swiftray.shutdown()
    info = swiftray.init(num_cpus=1)
    try:
        assert info["dashboard_url"] is None and info["dashboard_login_url"] is None
    finally:
        swiftray.shutdown()


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--no-first-run", "--disable-background-networking", "--disable-sync", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def test_the_dashboard_shows_nodes_and_live_tasks_in_a_real_browser(dashboard, tmp_path):
    from selenium.webdriver.common.by import By
    base, token, login = dashboard
    release = str(tmp_path / "release")

    @swiftray.remote
    def crunch(path):
        while not os.path.exists(path):
            time.sleep(0.05)
        return 1

    @swiftray.remote
    def quick(i):
        print(f"quick-{i}-was-here")
        return os.getpid()

    quick_pid = swiftray.get([quick.remote(i) for i in range(20)], timeout=60)[-1]
    running = [crunch.remote(release) for _ in range(2)]
    node_id = swiftray.nodes()[0]["NodeID"]
    driver = browser()
    try:
        driver.get(login)
        # Signed in by the link: the overview lists this node.
        # Read in one script: the page replaces its tables every second.
        node_ids = "return [...document.querySelectorAll('#nodes-table td.node-id')].map(td => td.title)"
        assert wait_until(lambda: node_id in driver.execute_script(node_ids), timeout=30)
        assert "?token=" not in driver.current_url
        # The live task table: the two tasks running now, and the finished ones.
        driver.get(base + "/#tasks")

        def rows():
            return driver.execute_script(
                "return [...document.querySelectorAll('#tasks-table tbody tr')].map(tr => [...tr.cells].map(td => td.textContent))")

        def shows_running():
            r = rows()
            return (sum(1 for c in r if len(c) > 3 and c[2].endswith("crunch") and c[3] == "RUNNING") == 2
                    and sum(1 for c in r if len(c) > 3 and c[2].endswith("quick") and c[3] == "FINISHED") == 20)

        assert wait_until(shows_running, timeout=30), rows()
        os.makedirs(ARTIFACTS, exist_ok=True)
        driver.save_screenshot(os.path.join(ARTIFACTS, "dashboard-tasks.png"))
        # A filter on the state narrows the table.
        from selenium.webdriver.support.ui import Select
        Select(driver.find_element(By.ID, "task-state")).select_by_visible_text("RUNNING")
        assert wait_until(lambda: {c[3] for c in rows() if len(c) > 3} == {"RUNNING"}, timeout=30), rows()
        driver.get(base + "/#stream")
        assert wait_until(lambda: "crunch" in driver.execute_script(
            "return document.getElementById('stream-legend').textContent"), timeout=30)
        driver.save_screenshot(os.path.join(ARTIFACTS, "dashboard-stream.png"))
        # Workers and their logs: the worker that ran `quick` shows what it printed.
        driver.get(base + "/#logs")
        link = ("return [...document.querySelectorAll('#workers-table tbody tr')]"
                f".filter(tr => tr.cells[3].textContent === '{quick_pid}').length")
        assert wait_until(lambda: driver.execute_script(link) == 1, timeout=30)
        driver.execute_script("[...document.querySelectorAll('#workers-table tbody tr')]"
                              f".find(tr => tr.cells[3].textContent === '{quick_pid}').querySelector('a.log-link').click()")
        assert wait_until(lambda: "quick-19-was-here" in driver.execute_script(
            "return document.getElementById('log-text').textContent"), timeout=30)
        files = "return [...document.querySelectorAll('#logfiles-table td a')].map(a => a.textContent)"
        assert wait_until(lambda: any(f.endswith(f"-{quick_pid}.out") for f in driver.execute_script(files)), timeout=30)
        driver.save_screenshot(os.path.join(ARTIFACTS, "dashboard-logs.png"))
        # Objects: the references this driver holds (the running tasks' results among them).
        driver.get(base + "/#objects")
        held = "return [...document.querySelectorAll('#objects-table tbody tr')].map(tr => tr.cells[0].title)"
        assert wait_until(lambda: {r.hex() for r in running} <= set(driver.execute_script(held)), timeout=30)
        driver.save_screenshot(os.path.join(ARTIFACTS, "dashboard-objects.png"))
        # Nothing came from anywhere but the head.
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(base + "/") for u in urls), urls
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
        open(release, "w").close()
    assert swiftray.get(running, timeout=60) == [1, 1]


def test_start_serves_the_dashboard_on_the_head_and_prints_its_login_link(cluster):
    cluster.add_node(num_cpus=1)
    # The start command printed the link; the cluster's token opens it.
    link = cluster.nodes[0]["dashboard"]
    assert link.startswith("http://127.0.0.1:") and "?token=" in link, link
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
    base = link.split("/?", 1)[0]
    status, _, body = fetch(base + "/api/v0/nodes", {"Authorization": f"Bearer {token}"})
    assert status == 200 and json.loads(body)["data"]["result"]["total"] == 1
    assert fetch(base + "/api/v0/nodes")[0] == 401


def test_start_rejects_bad_dashboard_options():
    for args, message in ((["--dashboard-port", "70000"], "--dashboard-port must be 0-65535"),
                          (["--dashboard-host", "example.com"], "--dashboard-host must be an IP address")):
        out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--head", *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and message in out.stderr, out.stderr

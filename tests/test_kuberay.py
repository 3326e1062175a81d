"""The contract KubeRay (v1.7) imposes on a Ray image, run against swiftray without
Kubernetes: each pod is a network-namespace host (tests/hosts.py) whose /etc/hosts maps
the head Service's name to the head pod's address; the container commands, the worker's
init container, the probes and the RayJob submitter run verbatim as KubeRay writes them
(`ray` is swiftray's command under that name, `import ray` the alias package of
deploy/ray-alias, as in the image), with the environment KubeRay sets; the operator's
HTTP-mode calls are made as it makes them, and with real Ray's JobSubmissionClient."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import clean_hosts
from test_jobs import _ray_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME, NAMESPACE = "raycluster-kuberay", "default"
SVC = f"{NAME}-head-svc.{NAMESPACE}.svc.cluster.local"

# pod.go's container commands (flags sorted, `--key=value`, boolean flags bare); the head
# carries two user rayStartParams, one swiftray has no use for (noted, not fatal).
HEAD_COMMAND = ("ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}; ray start --head  --block  "
                "--dashboard-agent-listen-port=52365  --dashboard-host=0.0.0.0  --memory=5368709120  "
                "--metrics-export-port=8080  --no-monitor  --num-cpus=1  --object-manager-port=8076 ")
WORKER_COMMAND = (f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; ray start  --address={SVC}:6379  --block  "
                  "--dashboard-agent-listen-port=52365  --labels=zone=us-east-1a,tier=cpu  --memory=1073741824  "
                  "--metrics-export-port=8080  --num-cpus=1  --resources='{\"w\":2}' ")
# pod.go's worker init container ("wait-gcs-ready"), run by `/bin/bash -c --`.
INIT_CONTAINER = f"""SECONDS=0
while true; do
  if (( SECONDS <= 120 )); then
    if ray health-check --address {SVC}:6379 > /dev/null 2>&1; then
      echo "GCS is ready."
      break
    fi
    echo "$SECONDS seconds elapsed: Waiting for GCS to be ready."
  else
    if ray health-check --address {SVC}:6379; then
      echo "GCS is ready. Any error messages above can be safely ignored."
      break
    fi
    echo "$SECONDS seconds elapsed: Still waiting for GCS to be ready."
  fi
  sleep 5
done
"""
# The exec probes for rayVersion < 2.53 (workers: the first part; the head: both).
RAYLET_PROBE = "wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
GCS_PROBE = "wget --tries 1 -T 10 -q -O- http://localhost:8265/api/gcs_healthz | grep success"


def submitter(job_id, entrypoint):
    """common/job.go's submitter container command (default K8sJobMode)."""
    base = f"http://{SVC}:8265"
    return (f"until python -c \"import urllib.request; r=urllib.request.urlopen('{base}/api/gcs_healthz', timeout=10); "
            f"exit(0 if b'success' in r.read() else 1)\" > /dev/null 2>&1; do sleep 2; done; "
            f"if ! ray job status --address {base} {job_id} >/dev/null 2>&1; then "
            f"ray job submit --address {base} --no-wait "
            f"--runtime-env-json '{{\"env_vars\": {{\"GREETING\": \"hello\"}}}}' "
            f"--metadata-json '{{\"owner\": \"kuberay\"}}' --submission-id {job_id} --entrypoint-num-cpus 1 "
            f"-- {entrypoint}; fi; ray job logs --address {base} --follow {job_id}")


SAMPLE = """
import os
import ray

ray.init()

@ray.remote(resources={"w": 1})
def square(x):
    return x * x

print("squares", ray.get([square.remote(i) for i in range(8)]), os.environ["GREETING"], flush=True)
print("alive nodes", sum(1 for n in ray.nodes() if n["Alive"]), flush=True)
"""

SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n"

# Real Ray's JobSubmissionClient (its own venv) against the head, in the submitter pod.
RAY_CLIENT = """
import json, sys, time
from ray.job_submission import JobSubmissionClient, JobStatus
base, token, script = sys.argv[1:4]
c = JobSubmissionClient(base, headers={"x-ray-authorization": "Bearer " + token})
jid = c.submit_job(entrypoint="python " + script, submission_id="ray-client-job",
                   runtime_env={"env_vars": {"GREETING": "from-ray"}}, entrypoint_num_cpus=1)
end = time.time() + 120
while c.get_job_status(jid) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < end:
    time.sleep(0.5)
print(json.dumps({"id": jid, "status": str(c.get_job_status(jid).value), "logs": c.get_job_logs(jid)}))
"""


def _until(what, check, timeout=90, every=0.5):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = check()
        if last is True:
            return
        time.sleep(every)
    pytest.fail(f"{what} within {timeout} s (last: {last})")


def _http(method, url, body=None, token=None, timeout=10):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["x-ray-authorization"] = "Bearer " + token
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def pods(hosts):
    """Three pods (head, worker, RayJob submitter) with KubeRay's environment; `ray` and
    `python` on PATH; the head Service's name in each /etc/hosts. Everything started
    is stopped after."""
    head, worker, sub = hosts[1], hosts[2], hosts[3]
    bin_dir = tempfile.mkdtemp(prefix="kuberay-bin-", dir="/var/tmp")  # outside /tmp: every pod sees it
    scripts = os.path.join(os.path.dirname(os.path.realpath(sys.executable)))
    os.symlink(os.path.join(scripts, "swiftray"), os.path.join(bin_dir, "ray"))
    os.symlink(sys.executable, os.path.join(bin_dir, "python"))
    etc_hosts = os.path.join(bin_dir, "hosts")
    with open(etc_hosts, "w") as f:
        f.write(f"127.0.0.1 localhost\n{head.ip} {SVC}\n")
    os.chmod(bin_dir, 0o755)
    os.chmod(etc_hosts, 0o644)
    token = "kuberay-contract-" + os.urandom(12).hex()
    limit = "65536"
    if subprocess.run(["bash", "-c", "ulimit -n 65536"], capture_output=True).returncode != 0:
        # The sandbox forbids raising the limit: the hard limit, as the command allows.
        limit = subprocess.run(["bash", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip()

    def env(kind, h):
        e = dict(os.environ)
        for k in [k for k in e if k.startswith("SWIFTRAY_") and k != "SWIFTRAY_LOCK_CHECKS"]:
            del e[k]
        e.update(PATH=bin_dir + ":" + e["PATH"], PYTHONPATH=os.path.join(REPO, "deploy", "ray-alias"),
                 RAY_CLUSTER_NAME=NAME, RAY_CLUSTER_NAMESPACE=NAMESPACE, RAY_NODE_TYPE_NAME=kind,
                 RAY_CLOUD_INSTANCE_ID=f"{NAME}-{kind}-{h.index}", RAY_PORT="6379", RAY_IP=SVC, FQ_RAY_IP=SVC,
                 RAY_ADDRESS="127.0.0.1:6379" if kind == "headgroup" else f"{SVC}:6379",
                 RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
                 RAY_START_ULIMIT_OPEN_FILES=limit, HOME="/tmp")
        return e

    for h in (head, worker, sub):
        out = h.run(["mount", "--bind", etc_hosts, "/etc/hosts"])
        assert out.returncode == 0, out.stderr
    started = []

    def start(h, kind, command, **kw):
        p = h.popen(["/bin/bash", "-c", "--", command], env=env(kind, h), stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, **kw)
        started.append(p)
        return p

    yield dict(head=head, worker=worker, sub=sub, token=token, env=env, start=start)
    for p in started:
        if p.poll() is None:
            p.terminate()
    for p in started:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    for h in (head, worker, sub):
        h.run(["umount", "/etc/hosts"])
    clean_hosts(hosts)
    shutil.rmtree(bin_dir, ignore_errors=True)


def _sh(h, env, command, timeout=60):
    return h.run(["/bin/bash", "-c", "--", command], env=env, timeout=timeout)


def test_kuberay_runs_a_swiftray_cluster_and_a_rayjob_with_its_own_commands(pods):
    head, worker, sub, token, start = pods["head"], pods["worker"], pods["sub"], pods["token"], pods["start"]
    henv, wenv, senv = pods["env"]("headgroup", head), pods["env"]("workergroup", worker), pods["env"]("submitter", sub)

    # The worker's init container waits for the head: it must not pass before it answers.
    init = start(worker, "workergroup", INIT_CONTAINER)
    time.sleep(3)
    assert init.poll() is None, "ray health-check passed with no head: " + init.stdout.read()
    head_pod = start(head, "headgroup", HEAD_COMMAND)
    assert init.wait(timeout=90) == 0
    said = init.stdout.read()
    assert "Waiting for GCS to be ready." in said and said.rstrip().endswith("GCS is ready."), said
    worker_pod = start(worker, "workergroup", WORKER_COMMAND)

    # Readiness: the exec probes (rayVersion < 2.53) and the HTTP one (>= 2.53), no token.
    _until("the head's probe passes", lambda: _sh(head, henv, f"{RAYLET_PROBE} && {GCS_PROBE}").returncode == 0
           or head_pod.poll())
    _until("the worker's probe passes", lambda: _sh(worker, wenv, RAYLET_PROBE).returncode == 0 or worker_pod.poll())
    assert head_pod.poll() is None and worker_pod.poll() is None
    for h in (head, worker):
        status, body = _http("GET", f"http://{h.ip}:52365/api/healthz")
        assert (status, body) == (200, "raylet: success\ngcs: success")
    # The probes' ports show nothing else; the dashboard wants the token past its health check.
    assert _http("GET", f"http://{head.ip}:52365/api/v0/tasks")[0] == 404
    assert _http("GET", f"http://{head.ip}:8265/api/jobs/")[0] == 401

    # The cluster as the flags made it: two nodes, --memory and --resources and --labels honoured.
    nodes = json.loads(_sh(sub, senv, f"swiftray list nodes --address {SVC}:6379 --format json --detail").stdout)
    by_ip = {n["node_ip"]: n for n in nodes if n["state"] == "ALIVE"}
    assert set(by_ip) == {head.ip, worker.ip}
    assert by_ip[head.ip]["resources_total"]["memory"] == 5368709120
    assert by_ip[worker.ip]["resources_total"]["memory"] == 1073741824
    assert by_ip[worker.ip]["resources_total"]["w"] == 2
    assert by_ip[worker.ip]["labels"] == {"tier": "cpu", "zone": "us-east-1a"}
    status = _sh(sub, senv, f"ray status --address {SVC}:6379")
    assert status.returncode == 0 and "Nodes: 2 alive" in status.stdout, status.stdout + status.stderr

    # `kubectl exec` into a pod, then `python script.py`: init() joins the pod's cluster
    # through KubeRay's RAY_ADDRESS (127.0.0.1:6379 on the head, the Service on workers).
    with open(head.path("/tmp/sample.py"), "w") as f:
        f.write(SAMPLE)
    with open(worker.path("/tmp/sample.py"), "w") as f:
        f.write(SAMPLE)
    for h, e in ((head, henv), (worker, wenv)):
        ran = h.run(["python", "/tmp/sample.py"], env=dict(e, GREETING="exec"), timeout=120)
        assert ran.returncode == 0 and "squares [0, 1, 4, 9, 16, 25, 36, 49] exec" in ran.stdout, ran.stdout + ran.stderr
        assert "alive nodes 2" in ran.stdout, ran.stdout

    # The RayJob submitter, verbatim: waits for the dashboard, finds no such job, submits
    # it, follows its logs until it ends, and exits.
    run = _sh(sub, senv, submitter("rayjob-sample", "python /tmp/sample.py"), timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "squares [0, 1, 4, 9, 16, 25, 36, 49] hello" in run.stdout and "alive nodes 2" in run.stdout, run.stdout
    # Run again (a submitter pod restarted): the job is known, so it only follows it.
    again = _sh(sub, senv, submitter("rayjob-sample", "python /tmp/sample.py"), timeout=120)
    assert again.returncode == 0 and again.stdout.count("squares [0, 1") == 1, again.stdout + again.stderr
    st = _sh(sub, senv, f"ray job status --address http://{SVC}:8265 rayjob-sample")
    assert st.returncode == 0 and "SUCCEEDED" in st.stdout, st.stdout + st.stderr
    unknown = _sh(sub, senv, f"ray job status --address http://{SVC}:8265 no-such-job")
    assert unknown.returncode != 0

    # HTTP mode: the operator's own calls, with the token as KubeRay sends it.
    base = f"http://{head.ip}:8265"
    assert _http("GET", f"{base}/api/jobs/no-such-job", token=token)[0] == 404
    code, body = _http("POST", f"{base}/api/jobs/", token=token, body={
        "entrypoint": "python /tmp/sample.py", "submission_id": "http-mode-job", "metadata": {"owner": "operator"},
        "runtime_env": {"env_vars": {"GREETING": "http"}}, "entrypoint_num_cpus": 1, "entrypoint_num_gpus": 0,
        "entrypoint_resources": {}})
    assert code == 200 and json.loads(body)["job_id"], body

    def finished():
        info = json.loads(_http("GET", f"{base}/api/jobs/http-mode-job", token=token)[1])
        return info["status"] == "SUCCEEDED" or info["status"]
    _until("the HTTP-mode job succeeds", finished, timeout=120)
    info = json.loads(_http("GET", f"{base}/api/jobs/http-mode-job", token=token)[1])
    assert info["submission_id"] == "http-mode-job" and info["entrypoint"] == "python /tmp/sample.py"
    assert info["metadata"] == {"owner": "operator"} and info["start_time"] <= info["end_time"]
    assert info["runtime_env"]["env_vars"] == {"GREETING": "http"}
    assert info["status"] == "SUCCEEDED" and info["error_type"] is None and "message" in info
    # The job its driver registered, and that driver, as Ray's JobDetails name them.
    assert re.fullmatch(r"[0-9a-f]{8}", info["job_id"]) and info["driver_info"]["node_ip_address"] == head.ip, info
    jobs = json.loads(_sh(sub, senv, f"swiftray list jobs --address {SVC}:6379 --format json").stdout)
    mine = [j for j in jobs if j["job_id"] == info["job_id"]]
    assert mine and mine[0]["submission_id"] == "http-mode-job" and mine[0]["type"] == "SUBMISSION", jobs
    with open(head.path("/tmp/sleeper.py"), "w") as f:
        f.write(SLEEPER)
    code, _ = _http("POST", f"{base}/api/jobs/", token=token, body={"entrypoint": "python /tmp/sleeper.py",
                                                                    "submission_id": "to-stop"})
    assert code == 200
    _until("the job to stop runs", lambda: json.loads(_http("GET", f"{base}/api/jobs/to-stop", token=token)[1])["status"]
           == "RUNNING" or None, timeout=60)
    code, body = _http("POST", f"{base}/api/jobs/to-stop/stop", token=token)
    assert code == 200 and json.loads(body) == {"stopped": True}
    _until("the job stops", lambda: json.loads(_http("GET", f"{base}/api/jobs/to-stop", token=token)[1])["status"]
           == "STOPPED" or None, timeout=60)

    # Real Ray's JobSubmissionClient, from the submitter pod.
    # Ray's own `ray`, not the alias; and the URL given, not $RAY_ADDRESS (which Ray's
    # client prefers), as from the operator's side.
    ray_env = {k: v for k, v in senv.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    out = sub.run([_ray_python(), "-c", RAY_CLIENT, f"http://{SVC}:8265", token, "/tmp/sample.py"], env=ray_env, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] == "SUCCEEDED" and "squares [0, 1, 4, 9, 16, 25, 36, 49] from-ray" in seen["logs"], seen

    # `ray start`'s note on the option it does not use, in the head pod's output.
    head_pod.terminate()
    assert "ignoring --object-manager-port=8076" in head_pod.communicate(timeout=30)[0]


def test_swiftray_start_refuses_what_ray_start_only_notes(tmp_path):
    """As `swiftray start` a typo is an error; bad --labels and --memory say what to give."""
    for args, says in ((["--no-such-option"], "unknown option(s) --no-such-option"),
                       (["--labels", "zone"], "--labels must be KEY=VALUE pairs"),
                       (["--memory=-1"], "--memory must be a number of bytes"),
                       (["--dashboard-agent-listen-port", "70000"], "--dashboard-agent-listen-port must be 0-65535")):
        out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--head", "--port", "0",
                              "--temp-dir", str(tmp_path), *args], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and says in out.stderr, (args, out.stdout, out.stderr)


def _memory_cgroup():
    """A fresh memory cgroup under this process's own (v2 when it has the memory
    controller, else v1's), as a container's would be: its directory and limit file."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for hid, controllers, path in lines:
        if hid == "0" and not controllers:
            for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                base = mount + path.rstrip("/")
                try:
                    with open(os.path.join(base, "cgroup.subtree_control")) as f:
                        enabled = "memory" in f.read().split()
                except OSError:
                    continue
                if enabled:
                    return base + f"/swiftray-test-{os.getpid()}", "memory.max"
    for hid, controllers, path in lines:
        if "memory" in controllers.split(","):
            return f"/sys/fs/cgroup/memory{path.rstrip('/')}/swiftray-test-{os.getpid()}", "memory.limit_in_bytes"
    pytest.fail("no memory cgroup to make a container's limit in: " + str(lines))


def test_a_containers_memory_limit_is_what_a_node_counts(tmp_path):
    """Under a pod's memory limit (a cgroup's), the node's `memory` resource is the limit,
    not the machine's RAM, and its object store 30 % of it — as under KubeRay, where the
    machine may have far more than the pod may use."""
    directory, limit_file = _memory_cgroup()
    limit = 3 << 30
    os.mkdir(directory)
    try:
        with open(os.path.join(directory, limit_file), "w") as f:
            f.write(str(limit))
        probe = ("import swiftray as ray; from swiftray import _core; print(_core.usable_memory()); "
                 "ray.init(num_cpus=1); print(int(ray.cluster_resources()['memory'])); ray.shutdown()")
        out = subprocess.run(["sh", "-c", f'echo $$ > {directory}/cgroup.procs && exec "$0" -c "$1"', sys.executable, probe],
                             capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.split() == [str(limit), str(limit)], out.stdout
        # A node daemon started there counts the same, and sizes its store by it.
        node = subprocess.run(["sh", "-c", f'echo $$ > {directory}/cgroup.procs && exec "$0" -m swiftray start --head '
                               f'--port 0 --num-cpus 1 --include-dashboard false --temp-dir {tmp_path}', sys.executable],
                              capture_output=True, text=True, timeout=120)
        assert node.returncode == 0, node.stdout + node.stderr
        try:
            nodes = json.loads(subprocess.run([sys.executable, "-m", "swiftray", "list", "nodes", "--format", "json", "--detail",
                                               "--address", node.stdout.split("Session:")[1].split()[0]],
                                              capture_output=True, text=True, timeout=60).stdout)
            assert nodes[0]["resources_total"]["memory"] == limit
            assert nodes[0]["object_store_total_memory"] == limit // 10 * 3 // 4096 * 4096 or \
                abs(nodes[0]["object_store_total_memory"] - limit * 0.3) < (1 << 20), nodes[0]
        finally:
            subprocess.run([sys.executable, "-m", "swiftray", "stop", "--temp-dir", str(tmp_path)], capture_output=True, timeout=60)
    finally:
        # Empty once its processes are gone.
        for _ in range(100):
            try:
                os.rmdir(directory)
                break
            except OSError:
                time.sleep(0.1)


def test_a_head_reads_kuberays_redis_address(tmp_path):
    """KubeRay's GCS fault tolerance gives the head RAY_REDIS_ADDRESS: it is the head's
    storage (here one nothing answers at, so the start fails saying so)."""
    env = {k: v for k, v in os.environ.items() if k != "SWIFTRAY_REDIS_ADDRESS"}
    env["RAY_REDIS_ADDRESS"] = "127.0.0.1:1"
    out = subprocess.run([sys.executable, "-m", "swiftray", "start", "--head", "--port", "0", "--temp-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "127.0.0.1:1" in out.stdout + out.stderr, out.stdout + out.stderr

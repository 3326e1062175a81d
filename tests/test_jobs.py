"""Ray Jobs on a swiftray head: entrypoints run as supervised drivers with their
runtime_env, logs followed while they run, stop, failures, list and delete, over the
Jobs REST API (JobSubmissionClient) and the `swiftray job` CLI."""
import os
import subprocess
import sys
import textwrap
import time
import urllib.parse

import pytest

import swiftray
from conftest import pid_alive, wait_until
from swiftray.job_submission import JobStatus, JobSubmissionClient


@pytest.fixture
def head(cluster):
    node = cluster.add_node(num_cpus=2)
    link = urllib.parse.urlsplit(node["dashboard"])
    token = urllib.parse.parse_qs(link.query)["token"][0]
    base = f"{link.scheme}://{link.netloc}"
    client = JobSubmissionClient(base, headers={"Authorization": f"Bearer {token}"})
    return base, token, client, cluster


def _wait_status(client, job_id, statuses, timeout=120):
    wait_until(lambda: client.get_job_status(job_id) in statuses, timeout=timeout)
    return client.get_job_status(job_id)


def _project(tmp_path):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "helper.py").write_text("def square(x):\n    return x * x\n")
    (proj / "data" / "n.txt").write_text("7\n")
    (proj / "main.py").write_text(textwrap.dedent("""
        import os, sys, time
        import swiftray
        import helper

        swiftray.init()

        @swiftray.remote
        def sq(x):
            import helper  # shipped with the job's working_dir to the workers too
            return helper.square(x)

        n = int(open("data/n.txt").read())
        print("STAGE", os.environ.get("STAGE"), flush=True)
        for i in range(3):
            print("RESULT", i, swiftray.get(sq.remote(n + i)), flush=True)
            time.sleep(0.3)
        print("DONE", flush=True)
    """))
    return proj


def test_a_job_with_a_working_dir_runs_to_success_and_its_logs_are_followed(head, tmp_path):
    _, _, client, _ = head
    proj = _project(tmp_path)
    job = client.submit_job(entrypoint=f"{sys.executable} main.py", runtime_env={"working_dir": str(proj), "env_vars": {"STAGE": "job"}},
                            metadata={"owner": "test"})
    assert job.startswith("raysubmit_")
    followed = "".join(client.follow_job_logs(job))
    assert client.get_job_status(job) == JobStatus.SUCCEEDED
    assert "STAGE job" in followed and "RESULT 0 49" in followed and "RESULT 2 81" in followed and "DONE" in followed
    info = client.get_job_info(job)
    assert info.driver_exit_code == 0 and info.metadata == {"owner": "test"} and info.end_time >= info.start_time
    assert info.runtime_env["working_dir"].startswith("pkg://")
    assert client.get_job_logs(job) == followed
    # A given submission id; a taken one is refused.
    assert client.submit_job(entrypoint="true", submission_id="mine-1") == "mine-1"
    with pytest.raises(RuntimeError, match="already exists"):
        client.submit_job(entrypoint="true", submission_id="mine-1")


def test_a_stopped_job_ends_its_driver_and_its_actors(head, tmp_path):
    _, _, client, _ = head
    script = tmp_path / "forever.py"
    script.write_text(textwrap.dedent("""
        import os, time
        import swiftray
        swiftray.init()

        @swiftray.remote
        class Holder:
            def pid(self):
                return os.getpid()

        h = Holder.remote()
        print("ACTOR", swiftray.get(h.pid.remote()), "DRIVER", os.getpid(), flush=True)
        while True:
            time.sleep(1)
    """))
    job = client.submit_job(entrypoint=f"{sys.executable} {script}")
    wait_until(lambda: "ACTOR" in client.get_job_logs(job), timeout=60)
    fields = client.get_job_logs(job).split()
    actor_pid, driver_pid = int(fields[fields.index("ACTOR") + 1]), int(fields[fields.index("DRIVER") + 1])
    assert client.get_job_status(job) == JobStatus.RUNNING
    assert client.stop_job(job) is True
    assert _wait_status(client, job, {JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED}) == JobStatus.STOPPED
    assert wait_until(lambda: not pid_alive(driver_pid), timeout=10)
    assert wait_until(lambda: not pid_alive(actor_pid), timeout=15), "the driver's actor dies with it"
    assert client.stop_job(job) is False
    assert "stopped" in client.get_job_info(job).message


def test_a_failing_entrypoint_is_failed_with_its_exit_code_and_jobs_are_listed_and_deleted(head):
    _, _, client, _ = head
    bad = client.submit_job(entrypoint=f"{sys.executable} -c 'import sys; print(\"oops\"); sys.exit(3)'")
    assert _wait_status(client, bad, {JobStatus.FAILED, JobStatus.SUCCEEDED}) == JobStatus.FAILED
    info = client.get_job_info(bad)
    assert info.driver_exit_code == 3 and "exit code 3" in info.message and info.error_type == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert "oops" in client.get_job_logs(bad)
    running = client.submit_job(entrypoint="sleep 30")
    _wait_status(client, running, {JobStatus.RUNNING})
    listed = {j.submission_id: j.status for j in client.list_jobs()}
    assert listed[bad] == JobStatus.FAILED and listed[running] == JobStatus.RUNNING
    with pytest.raises(RuntimeError, match="non-terminal"):
        client.delete_job(running)
    assert client.delete_job(bad) is True
    assert bad not in {j.submission_id for j in client.list_jobs()}
    with pytest.raises(RuntimeError, match="does not exist"):
        client.get_job_info(bad)
    client.stop_job(running)
    # A bad runtime_env fails at submission, naming the field; nothing is submitted.
    with pytest.raises(ValueError, match="conda"):
        client.submit_job(entrypoint="true", runtime_env={"conda": "x"})


def test_the_api_needs_the_cluster_token(head):
    base, _, _, _ = head
    import urllib.request
    for method, path in (("GET", "/api/jobs/"), ("POST", "/api/jobs/")):
        req = urllib.request.Request(base + path, method=method, data=b'{"entrypoint": "true"}' if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code in (401, 413)


def test_the_cli_submits_follows_and_lists(head, tmp_path):
    base, token, client, _ = head
    proj = _project(tmp_path)
    env = dict(os.environ, SWIFTRAY_AUTH_TOKEN=token)
    cli = [sys.executable, "-m", "swiftray", "job"]
    out = subprocess.run(cli + ["submit", "--address", base, "--working-dir", str(proj), "--submission-id", "cli-1",
                                "--runtime-env-json", '{"env_vars": {"STAGE": "cli"}}', "--", sys.executable, "main.py"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Job 'cli-1' submitted successfully" in out.stdout and "STAGE cli" in out.stdout
    assert "Job 'cli-1' succeeded" in out.stdout
    status = subprocess.run(cli + ["status", "cli-1", "--address", base], capture_output=True, text=True, timeout=60, env=env)
    assert "SUCCEEDED" in status.stdout
    listed = subprocess.run(cli + ["list", "--address", base], capture_output=True, text=True, timeout=60, env=env)
    assert "cli-1\tSUCCEEDED" in listed.stdout
    failed = subprocess.run(cli + ["submit", "--address", base, "--", "false"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert failed.returncode == 1 and "failed" in failed.stdout
    refused = subprocess.run(cli + ["list", "--address", base], capture_output=True, text=True, timeout=60,
                             env=dict(env, SWIFTRAY_AUTH_TOKEN="0" * 64))
    assert refused.returncode == 1 and "401" in refused.stderr


def test_job_records_survive_a_head_restart_on_redis(cluster, redis_address):
    cluster.env["SWIFTRAY_REDIS_ADDRESS"] = redis_address
    node = cluster.add_node(num_cpus=1)
    port = int(cluster.address.rsplit(":", 1)[1])

    def client_of(n):
        link = urllib.parse.urlsplit(n["dashboard"])
        token = urllib.parse.parse_qs(link.query)["token"][0]
        return JobSubmissionClient(f"{link.scheme}://{link.netloc}", headers={"Authorization": f"Bearer {token}"})

    client = client_of(node)
    done = client.submit_job(entrypoint="echo finished", submission_id="before-done")
    assert _wait_status(client, done, {JobStatus.SUCCEEDED, JobStatus.FAILED}) == JobStatus.SUCCEEDED
    going = client.submit_job(entrypoint="sleep 600", submission_id="before-going")
    _wait_status(client, going, {JobStatus.RUNNING})
    cluster.kill_node(node)  # kill -9: the head saves nothing at exit
    again = cluster.add_node(num_cpus=1, head_port=port)
    client = client_of(again)
    jobs = {j.submission_id: j for j in client.list_jobs()}
    assert jobs["before-done"].status == JobStatus.SUCCEEDED and jobs["before-done"].driver_exit_code == 0
    assert jobs["before-going"].status == JobStatus.FAILED and "restarted" in jobs["before-going"].message


# Real Ray's client (Ray 2.60 in its own venv, made by scripts/ray-venv.sh; never a
# dependency of swiftray) against a swiftray head: it uploads the working_dir as Ray
# packs it (gcs://_ray_pkg_<hash>.zip), submits, follows the logs over the WebSocket
# route and reads the job back.
RAY_CLIENT = """
import asyncio, json, sys
from ray.job_submission import JobStatus, JobSubmissionClient
base, token, proj, py = sys.argv[1:5]
c = JobSubmissionClient(base, headers={"Authorization": f"Bearer {token}"})
job = c.submit_job(entrypoint=f"{py} main.py", runtime_env={"working_dir": proj, "env_vars": {"STAGE": "ray"}},
                   metadata={"via": "ray"})

async def follow():
    return "".join([lines async for lines in c.tail_job_logs(job)])

followed = asyncio.run(follow())
info = c.get_job_info(job)
# The package is not uploaded again (GET says it is there).
again = c.submit_job(entrypoint=f"{py} -c 'import helper; print(helper.square(5))'", runtime_env={"working_dir": proj})
while not c.get_job_status(again).is_terminal():
    pass
print(json.dumps({"followed": followed, "status": str(info.status), "exit": info.driver_exit_code,
                  "working_dir": info.runtime_env["working_dir"], "metadata": info.metadata,
                  "listed": sorted(j.submission_id for j in c.list_jobs()), "job": job,
                  "again": str(c.get_job_status(again)), "again_logs": c.get_job_logs(again)}))
"""


def _ray_python():
    """The Ray venv's python: $SWIFTRAY_TEST_RAY_PYTHON, else the repository's .bench-venv-ray."""
    py = os.environ.get("SWIFTRAY_TEST_RAY_PYTHON") or os.path.join(os.path.dirname(__file__), "..", ".bench-venv-ray", "bin", "python")
    if not os.path.exists(py):
        pytest.fail(f"no Ray venv at {py}: run scripts/ray-venv.sh (scripts/test.sh does) to make one")
    return py


def test_real_rays_client_submits_and_follows_a_job(head, tmp_path):
    base, token, client, _ = head
    proj = _project(tmp_path)
    out = subprocess.run([_ray_python(), "-c", RAY_CLIENT, base, token, str(proj), sys.executable],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    seen = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] == "SUCCEEDED" and seen["exit"] == 0
    followed = seen["followed"]
    assert "STAGE ray" in followed and "RESULT 0 49" in followed and "RESULT 2 81" in followed and "DONE" in followed
    # Ray's package, stored by the SHA-256 of its bytes, is what the job ran from.
    assert seen["working_dir"].startswith("pkg://") and seen["metadata"]["via"] == "ray"
    assert seen["job"] in seen["listed"]
    assert seen["again"] == "SUCCEEDED" and "25" in seen["again_logs"]
    # The same job, read by swiftray's own client, ran from the package stored for it.
    assert client.get_job_status(seen["job"]) == JobStatus.SUCCEEDED
    # Ray's `ray job submit` (token auth as Ray's: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN)
    # follows the job to its end.
    ray_cli = os.path.join(os.path.dirname(_ray_python()), "ray")
    out = subprocess.run([ray_cli, "job", "submit", "--address", base, "--working-dir", str(proj), "--submission-id", "ray-cli-1",
                          "--runtime-env-json", '{"env_vars": {"STAGE": "ray-cli"}}', "--", sys.executable, "main.py"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "STAGE ray-cli" in out.stdout and "RESULT 2 81" in out.stdout and "Job 'ray-cli-1' succeeded" in out.stderr + out.stdout


def test_the_logs_websocket_needs_the_cluster_token(head):
    base, _, client, _ = head
    job = client.submit_job(entrypoint="echo hi")
    import http.client
    host = urllib.parse.urlsplit(base).netloc
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.request("GET", f"/api/jobs/{job}/logs/tail", headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert conn.getresponse().status == 401


def test_entrypoint_resources_are_held_while_the_driver_runs(head):
    _, _, client, _ = head
    # Both of the head's CPUs for the first entrypoint: the second waits, PENDING, until
    # the first ends, as Ray's does while its supervisor cannot be placed.
    first = client.submit_job(entrypoint="sleep 600", entrypoint_num_cpus=2)
    _wait_status(client, first, {JobStatus.RUNNING})
    second = client.submit_job(entrypoint="echo second ran", entrypoint_num_cpus=1, entrypoint_resources={})
    waiting = client.submit_job(entrypoint="echo never", entrypoint_num_cpus=1.5)
    time.sleep(2)
    assert client.get_job_status(second) == JobStatus.PENDING
    assert "waiting for resources" in client.get_job_info(second).message
    assert client.get_job_info(second).entrypoint_num_cpus == 1
    # A stop ends a job that waits for its resources; the other still waits.
    assert client.stop_job(waiting) is True
    assert _wait_status(client, waiting, {JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED}) == JobStatus.STOPPED
    assert client.get_job_status(second) == JobStatus.PENDING
    client.stop_job(first)
    assert _wait_status(client, second, {JobStatus.SUCCEEDED, JobStatus.FAILED}) == JobStatus.SUCCEEDED
    assert "second ran" in client.get_job_logs(second)
    assert "never" not in client.get_job_logs(waiting)
    # The CPUs came back: a job that needs both runs again.
    again = client.submit_job(entrypoint="true", entrypoint_num_cpus=2)
    assert _wait_status(client, again, {JobStatus.SUCCEEDED, JobStatus.FAILED}) == JobStatus.SUCCEEDED
    # More than the head has at all fails at once, saying where entrypoints run.
    gpu = client.submit_job(entrypoint="true", entrypoint_num_gpus=1)
    assert _wait_status(client, gpu, {JobStatus.FAILED, JobStatus.SUCCEEDED}) == JobStatus.FAILED
    assert "head node" in client.get_job_info(gpu).message and "GPU" in client.get_job_info(gpu).message
    with pytest.raises(RuntimeError, match="entrypoint_num_cpus"):
        client.submit_job(entrypoint="true", entrypoint_resources={"CPU": 1})

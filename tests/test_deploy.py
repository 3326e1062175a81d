"""deploy/: the container image's steps and the Kubernetes manifests.

No container builder here can pull the Dockerfile's base images (no registry), so the
image's two stages are proven by running the very scripts its RUN steps run
(deploy/image/*.sh) in a fresh directory. The manifests are parsed and checked for what
KubeRay's contract and a plain cluster need (no RayCluster schema validator installs
offline)."""
import os
import re
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")


def _docs(*parts):
    with open(os.path.join(DEPLOY, "kubernetes", *parts)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def test_the_dockerfile_runs_the_scripts_that_are_proven_here():
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        text = f.read()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert [s[1] for s in stages] == ["build", ""], stages
    assert "RUN bash deploy/image/build-wheels.sh /wheels" in text
    assert "RUN bash /usr/local/bin/install-runtime.sh /wheels /opt/swiftray" in text
    assert "ENV PATH=/opt/swiftray/bin:$PATH" in text
    for tool in ("bash", "wget", "grep", "libpython3.11"):
        assert re.search(rf"apt-get install[^\n]*\b{re.escape(tool)}\b", text.split("FROM ${RUNTIME_IMAGE}")[1]), tool


def test_the_images_steps_make_a_runtime_with_ray_and_import_ray(tmp_path):
    wheels, prefix = tmp_path / "wheels", tmp_path / "opt-swiftray"
    build = subprocess.run(["bash", os.path.join(DEPLOY, "image", "build-wheels.sh"), str(wheels)],
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    names = os.listdir(wheels)
    assert any(n.startswith("swiftray-0.1.0-") for n in names) and any(n.startswith("swiftray_ray_alias") for n in names), names
    install = subprocess.run(["bash", os.path.join(DEPLOY, "image", "install-runtime.sh"), str(wheels), str(prefix)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTRAY_", "PYTHON"))}
    env.update(PATH=f"{prefix}/bin:" + os.environ["PATH"], HOME=str(tmp_path))
    # `import ray` is swiftray, from the runtime's own site-packages (not this checkout).
    run = subprocess.run(["python", "-c", "import ray, swiftray, ray.util.state as s; print(swiftray.__file__); "
                          "ray.init(num_cpus=1); print(ray.get(ray.remote(lambda x: x * 7).remote(6)))"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0].startswith(str(prefix)) and run.stdout.splitlines()[-1] == "42", run.stdout
    # `ray` is swiftray's command: its subcommands, and a health check that fails cleanly.
    help_ = subprocess.run(["ray", "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert help_.returncode == 0 and "health-check" in help_.stdout
    down = subprocess.run(["ray", "health-check", "--address", "127.0.0.1:1", "--timeout", "2"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert down.returncode == 1 and "does not answer" in down.stdout


def _container(pod_spec, name):
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def _token_from_secret(container, secret):
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def _shm_in_memory(pod_spec, container):
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"


def test_the_kuberay_manifests_give_kuberay_what_its_contract_needs():
    [secret] = _docs("secret.yaml")
    assert secret["kind"] == "Secret"
    [cluster] = _docs("raycluster.yaml")
    config_map, job = _docs("rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"], config_map["kind"]) == ("ray.io/v1", "RayJob", "ConfigMap")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        # >= 2.53: KubeRay's probes are GET /api/healthz on 52365.
        assert tuple(int(x) for x in spec["rayVersion"].split(".")) >= (2, 53, 0)
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
        pods = [(head["template"]["spec"], "ray-head")] + [(g["template"]["spec"], "ray-worker") for g in spec["workerGroupSpecs"]]
        for pod, name in pods:
            c = _container(pod, name)
            assert c["image"].startswith("swiftray:")
            _token_from_secret(c, secret)
            _shm_in_memory(pod, c)
        ports = {p["containerPort"] for p in _container(head["template"]["spec"], "ray-head")["ports"]}
        assert {6379, 8265, 8080} <= ports
    # The submitter pod needs the token for the Jobs API; the entrypoint's file is mounted.
    _token_from_secret(_container(job["spec"]["submitterPodTemplate"]["spec"], "ray-job-submitter"), secret)
    assert job["spec"]["entrypoint"] == "python /home/ray/samples/sample.py"
    assert "sample.py" in config_map["data"] and "import ray" in config_map["data"]["sample.py"]


def test_the_plain_manifests_run_kuberays_commands_and_probes():
    from test_kuberay import HEAD_COMMAND, INIT_CONTAINER  # the contract test's verbatim lines
    [secret] = _docs("secret.yaml")
    service, head = _docs("plain", "head.yaml")
    [workers] = _docs("plain", "workers.yaml")
    assert service["kind"] == "Service" and {p["port"] for p in service["spec"]["ports"]} == {6379, 8265, 8080, 10001, 8000}
    assert service["spec"]["selector"] == head["spec"]["template"]["metadata"]["labels"]
    hc = _container(head["spec"]["template"]["spec"], "ray-head")
    wc = _container(workers["spec"]["template"]["spec"], "ray-worker")
    svc = service["metadata"]["name"]
    # The head's line is the contract's without the test's two extra rayStartParams.
    expected_head = HEAD_COMMAND.replace("--no-monitor  ", "").replace("  --object-manager-port=8076", "")
    assert hc["command"] == ["/bin/bash", "-c", "--"] and hc["args"] == [expected_head]
    assert wc["command"] == ["/bin/bash", "-c", "--"]
    assert wc["args"][0].startswith(f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; ray start  --address={svc}:6379  --block  ")
    [init] = workers["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == [INIT_CONTAINER.replace("raycluster-kuberay-head-svc.default.svc.cluster.local", svc)]
    for pod, c in ((head["spec"]["template"]["spec"], hc), (workers["spec"]["template"]["spec"], wc)):
        _token_from_secret(c, secret)
        _shm_in_memory(pod, c)
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/api/healthz", "port": 52365}

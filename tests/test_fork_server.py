"""Workers forked from the node's fork server (issue 18): an interpreter that imported
the worker's modules once forks each new worker. What a user relies on: a forked
worker is a worker like any other (its own ids, environment, randomness, output and
exit codes), and work goes on when the fork server is gone or turned off."""
import os
import signal
import time

import pytest

import swiftray
from swiftray import exceptions


@swiftray.remote(num_cpus=0)
class Probe:
    def facts(self):
        import random
        ctx = swiftray.get_runtime_context()
        return {"pid": os.getpid(), "ppid": os.getppid(), "env_worker": os.environ.get("SWIFTRAY_WORKER_ID"),
                "worker": ctx.get_worker_id(), "random": random.random(),
                "bind_now": os.environ.get("LD_BIND_NOW"), "pgid": os.getpgid(0)}

    def say(self, text):
        print(text, flush=True)
        return True

    def exit(self, code):
        os._exit(code)


def _uptime_s():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _started_s(pid):
    """When the process started, in seconds since boot (/proc/<pid>/stat field 22)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


def forked_probes(n, deadline_s=30):
    """n actors forked by the fork server, with their facts."""
    found = []
    end = time.time() + deadline_s
    while len(found) < n and time.time() < end:
        actors = [Probe.remote() for _ in range(n)]
        for a, f in zip(actors, swiftray.get([a.facts.remote() for a in actors], timeout=60)):
            if f["ppid"] != os.getpid() and len(found) < n:
                found.append((a, f))
            else:
                swiftray.kill(a)
        if len(found) < n:
            time.sleep(0.2)
    assert len(found) == n, "the node's fork server never forked a worker"
    return found


def test_forked_workers_have_their_own_ids_environment_and_randomness(ray2):
    found = forked_probes(6)
    facts = [f for _, f in found]
    # One fork server (a child of the node: here, of this driver) is their parent.
    assert len({f["ppid"] for f in facts}) == 1
    server = facts[0]["ppid"]
    with open(f"/proc/{server}/status") as st:
        assert any(line.split()[1:] == [str(os.getpid())] for line in st if line.startswith("PPid:"))
    # The environment each was given, exactly: its own worker id, nothing of the server's.
    assert all(f["env_worker"] == f["worker"] for f in facts)
    assert len({f["worker"] for f in facts}) == 6 and len({f["pid"] for f in facts}) == 6
    assert all(f["bind_now"] is None for f in facts)
    # Each in its own process group (Ctrl-C at the driver's terminal is the driver's).
    assert all(f["pgid"] == f["pid"] for f in facts)
    # `random` is reseeded in each child, as after os.fork.
    assert len({f["random"] for f in facts}) == 6


def test_a_forked_worker_s_output_and_exit_code_reach_the_driver(ray2, capfd):
    [(actor, facts)] = forked_probes(1)
    assert swiftray.get(actor.say.remote("hello from a forked worker"), timeout=30)
    deadline = time.time() + 10
    out = ""
    while "hello from a forked worker" not in out and time.time() < deadline:
        time.sleep(0.1)
        out += capfd.readouterr().out
    assert "hello from a forked worker" in out
    actor.exit.remote(9)
    with pytest.raises(exceptions.ActorDiedError) as ei:
        swiftray.get(actor.facts.remote(), timeout=30)
    assert "exited with code 9" in str(ei.value) and f"pid {facts['pid']}" in str(ei.value)


def test_when_the_fork_server_dies_workers_are_spawned_and_its_orphans_still_seen_ending(ray2):
    [(orphan, facts)] = forked_probes(1)
    before = _uptime_s()
    time.sleep(0.05)
    os.kill(facts["ppid"], signal.SIGKILL)
    # Its worker lives on, and still serves.
    assert swiftray.get(orphan.facts.remote(), timeout=30)["pid"] == facts["pid"]
    # New workers start all the same: spawned by the node now. (Idle workers the server
    # forked before it died may take some of these actors: only the workers started
    # after the kill are looked at.)
    fresh = [Probe.remote() for _ in range(6)]
    got = swiftray.get([a.facts.remote() for a in fresh], timeout=60)
    new = [f for f in got if _started_s(f["pid"]) > before + 0.02]
    assert new, got
    assert all(f["ppid"] == os.getpid() for f in new), (os.getpid(), new)
    # The orphan's end is noticed (its status died with its parent) and its caller told.
    orphan.exit.remote(4)
    with pytest.raises(exceptions.ActorDiedError) as ei:
        swiftray.get(orphan.facts.remote(), timeout=30)
    assert f"pid {facts['pid']}" in str(ei.value)


def test_worker_fork_server_0_spawns_every_worker():
    swiftray.shutdown()
    swiftray.init(num_cpus=2, _system_config={"worker_fork_server": 0})
    try:
        time.sleep(1.0)  # a fork server, were there one, would be ready by now
        actors = [Probe.remote() for _ in range(4)]
        assert all(f["ppid"] == os.getpid() for f in swiftray.get([a.facts.remote() for a in actors], timeout=60))
    finally:
        swiftray.shutdown()

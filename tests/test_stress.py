"""Bounded stress: concurrency from several threads, large fan-out, long chains, no
leaked objects or task specs, Ctrl-C while blocked in get."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import swiftray
from conftest import run_script


@swiftray.remote
def inc(x):
    return x + 1


def _run_clients(client, n, timeout):
    """Runs client(k) for k < n on n threads at once; fails on any error or a hang."""
    errors = []

    def run(k):
        try:
            client(k)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors


def test_many_threads_submit_and_get_concurrently(ray_module):
    def client(k):
        refs = [inc.remote(k * 1000 + i) for i in range(300)]
        assert swiftray.get(refs, timeout=120) == [k * 1000 + i + 1 for i in range(300)]
        for i in range(50):
            assert swiftray.get(inc.remote(i), timeout=60) == i + 1

    _run_clients(client, 4, timeout=180)


def test_fan_out_of_ten_thousand_tasks(ray_module):
    refs = [inc.remote(i) for i in range(10_000)]
    assert sum(swiftray.get(refs, timeout=300)) == sum(range(1, 10_001))


def test_a_chain_of_dependent_tasks(ray_module):
    r = swiftray.put(0)
    for _ in range(300):
        r = inc.remote(r)
    assert swiftray.get(r, timeout=120) == 300


def test_dropped_results_and_finished_tasks_are_freed(ray_module):
    before = swiftray._core.core_stats()
    for _ in range(5):
        refs = [inc.remote(i) for i in range(1000)]
        swiftray.get(refs, timeout=120)
        del refs
    puts = [swiftray.put(i) for i in range(1000)]
    del puts
    fire_and_forget = [inc.remote(i) for i in range(500)]
    del fire_and_forget
    deadline = time.time() + 30
    while time.time() < deadline:
        after = swiftray._core.core_stats()
        if after["objects"] <= before["objects"] and after["tasks"] <= before["tasks"]:
            break
        time.sleep(0.05)
    assert after["objects"] <= before["objects"], (before, after)
    assert after["tasks"] <= before["tasks"], (before, after)
    assert after["references"] <= before["references"], (before, after)


def test_ctrl_c_interrupts_a_blocked_get_and_the_driver_exits_cleanly(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(
        "import os, time, swiftray\n"
        "swiftray.init(num_cpus=1)\n"
        "@swiftray.remote\n"
        "def forever():\n"
        "    time.sleep(600)\n"
        "ref = forever.remote()\n"
        "print('PIDS', *swiftray._core.node_stats()['worker_pids'], flush=True)\n"
        "try:\n"
        "    swiftray.get(ref)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PIDS")
    pids = [int(p) for p in line.split()[1:]]
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "interrupted" in out
    assert proc.returncode == 0
    for p in pids:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(p, 0)
                with open(f"/proc/{p}/stat") as f:
                    if f.read().split()[2] == "Z":
                        break
                time.sleep(0.05)
            except (ProcessLookupError, FileNotFoundError):
                break
        else:
            pytest.fail(f"worker {p} outlived its driver")


@swiftray.remote
class Accumulator:
    def __init__(self, start):
        self.total = start

    def add(self, *values):
        self.total += sum(values)
        return self.total


@swiftray.remote
def slow_value(x):
    time.sleep(0.01 * (x % 3))
    return x


def test_fresh_actors_called_at_once_with_results_of_running_tasks_from_several_threads(ray_module):
    """The shape of the issue-14 crash, hammered: each round makes fresh actors and calls
    each at once with arguments that are results of tasks still running (so the calls
    wait for them, then go out from the event loop that delivered the results, to
    actors whose connections are still being made), from several threads at once."""
    def client(k):
        for rnd in range(6):
            actors = [Accumulator.remote(k * 100 + rnd) for _ in range(3)]
            refs = []
            for j, a in enumerate(actors):
                args = [slow_value.remote(j + i) for i in range(3)]
                refs.append((a.add.remote(*args), k * 100 + rnd + sum(j + i for i in range(3))))
                refs.append((a.add.remote(swiftray.put(1)), None))
            for ref, want in refs:
                got = swiftray.get(ref, timeout=120)
                if want is not None:
                    assert got == want, (got, want)
            del actors

    _run_clients(client, 4, timeout=300)

"""Running a benchmark child process and reading its result."""
import json
import subprocess


def last_json(stdout):
    """The last line of `stdout` that is a JSON object: a library may print after the
    result (Ray does at shutdown)."""
    return next(json.loads(line) for line in reversed(stdout.splitlines()) if line.startswith("{"))


def run_child(argv, what, timeout, env=None):
    """Runs `argv` (a driver of one implementation and round) and returns its JSON
    result; exits with the tail of its stderr if it failed."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{what} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return last_json(r.stdout)

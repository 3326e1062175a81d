"""Reading a benchmark child process's result."""
import json


def last_json(stdout):
    """The last line of `stdout` that is a JSON object: a library may print after the
    result (Ray does at shutdown)."""
    return next(json.loads(line) for line in reversed(stdout.splitlines()) if line.startswith("{"))

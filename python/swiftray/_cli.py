"""The `swiftray` console command: hands over to the Swift executable in the package."""
import os
import sys


def binary_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "swiftray")


def main():
    if sys.argv[1:2] == ["job"]:  # Ray's `ray job …`: an HTTP client, in Python
        from swiftray import _job_cli
        sys.exit(_job_cli.main(sys.argv[2:]))
    exe = binary_path()
    env = dict(os.environ)
    # Hosted interpreters (`swiftray run`, workers) use this Python's environment.
    env.setdefault("SWIFTRAY_PYTHON", sys.executable)
    os.execve(exe, [exe] + sys.argv[1:], env)

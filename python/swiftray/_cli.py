"""The `swiftray` console command: hands over to the Swift executable in the package."""
import os
import sys


def binary_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "swiftray")


def main():
    exe = binary_path()
    env = dict(os.environ)
    # Hosted interpreters (`swiftray run`, workers) use this Python's environment.
    env.setdefault("SWIFTRAY_PYTHON", sys.executable)
    os.execve(exe, [exe] + sys.argv[1:], env)

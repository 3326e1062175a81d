"""The `swiftray` console command: hands over to the Swift executable in the package.

Run under the name `ray` (the `ray` entry point of the opt-in `swiftray-ray-alias`
package, or a link named `ray`, as in the container image), it is Ray's command line
for what KubeRay and Ray users' scripts call: `ray start` takes Ray's options and notes
the ones swiftray does not use instead of failing, `ray job …`, `ray health-check`,
`ray status`, `ray stop` work as swiftray's."""
import os
import sys


def binary_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "swiftray")


def main(name=None):
    as_ray = (name or os.path.basename(sys.argv[0])) == "ray"
    if sys.argv[1:2] == ["job"]:  # Ray's `ray job …`: an HTTP client, in Python
        from swiftray import _job_cli
        sys.exit(_job_cli.main(sys.argv[2:]))
    exe = binary_path()
    env = dict(os.environ)
    # Hosted interpreters (`swiftray run`, workers) use this Python's environment.
    env.setdefault("SWIFTRAY_PYTHON", sys.executable)
    if as_ray:
        env["SWIFTRAY_CLI_NAME"] = "ray"
    os.execve(exe, [exe] + sys.argv[1:], env)


def ray_main():
    """The `ray` command (opt-in: installed only by swiftray-ray-alias)."""
    main("ray")

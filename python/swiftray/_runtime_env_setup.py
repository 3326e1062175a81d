"""Sets up a runtime_env on a node; the node runs it (never the driver) as

    "$SWIFTRAY_PYTHON" -m swiftray._runtime_env_setup unpack <zip> <dest> [--flatten-single-top-dir]
    "$SWIFTRAY_PYTHON" -m swiftray._runtime_env_setup pip <venv_dir> <requirements_file> [--timeout S]

A separate process so that a slow or crashing setup (pip builds, huge zips) never stalls
the node, and so the node can kill it at its deadline. Exit 0 on success; on failure the
reason is the last line of stderr and the exit code is 1 (the node shows the user the last
lines of the output). Both commands are safe to run concurrently for the same target:
the result appears atomically, or under a lock.
"""
import argparse
import fcntl
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile

READY_MARKER = ".swiftray-ready"
SITE_PACKAGES_PREFIX = "SWIFTRAY_SITE_PACKAGES="


class SetupError(Exception):
    """A failure to report to the user as is (no traceback: it is not a swiftray bug)."""


# ---------------------------------------------------------------------------------------
# unpack


def unpack(zip_path, dest, flatten_single_top_dir=False):
    """Extracts zip_path to dest atomically: into a sibling temporary folder first, then
    renamed, so a reader never sees half a folder; if another process got there first,
    its folder is as good as ours."""
    dest = os.path.abspath(dest)
    if os.path.isdir(dest):
        return
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _extract(zip_path, tmp, flatten_single_top_dir)
        _publish(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(zip_path, target, flatten_single_top_dir):
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise SetupError(f"cannot open the package {zip_path}: {e}") from None
    with zf:
        infos = [i for i in zf.infolist() if not _is_macos_metadata(i.filename)]
        for info in infos:
            _check_safe(zip_path, info.filename)
        strip = _single_top_dir(infos) if flatten_single_top_dir else ""
        os.makedirs(target)
        dir_modes = []
        for info in infos:
            name = info.filename[len(strip):]
            if not name:
                continue
            path = os.path.join(target, *[p for p in name.split("/") if p])
            if info.is_dir():
                os.makedirs(path, exist_ok=True)
                dir_modes.append((path, _mode(info)))
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = _mode(info)
            if mode:
                os.chmod(path, mode)
        # Folders last, deepest first: a read-only folder must not stop its own extraction.
        for path, mode in sorted(dir_modes, key=lambda d: d[0].count(os.sep), reverse=True):
            if mode:
                os.chmod(path, mode | stat.S_IRWXU)


def _is_macos_metadata(name):
    """macOS's zip tool adds __MACOSX/ resource forks; they are never the user's files."""
    return name.startswith("__MACOSX/")


_DRIVE = re.compile(r"^[A-Za-z]:/")


def _check_safe(zip_path, name):
    """Refuses zip-slip: an entry that would land outside the destination folder."""
    normalized = name.replace("\\", "/")
    parts = normalized.split("/")
    if normalized.startswith("/") or _DRIVE.match(normalized) or ".." in parts:
        raise SetupError(f"refusing to unpack {zip_path}: the entry {name!r} would be written "
                         f"outside the destination folder")


def _single_top_dir(infos):
    """'top/' when every entry lies under that one folder (Ray then uses the folder itself
    as the working_dir), else ''."""
    tops = {i.filename.split("/", 1)[0] for i in infos}
    if len(tops) != 1:
        return ""
    top = tops.pop() + "/"
    if all(i.filename.startswith(top) for i in infos):
        return top
    return ""  # a single file at the root, not a folder


def _mode(info):
    """The entry's unix permission bits (0 when the zip was not made on unix)."""
    if info.create_system != 3:
        return 0
    return (info.external_attr >> 16) & 0o777


def _publish(tmp, dest):
    try:
        os.rename(tmp, dest)
    except OSError:
        if os.path.isdir(dest):
            return  # another process unpacked the same package first
        raise


# ---------------------------------------------------------------------------------------
# pip


_child = None  # the setup step running now, killed with us


def pip_install(venv_dir, requirements, timeout=None):
    """Installs the requirements into a virtualenv that sees the system's packages, once:
    a finished venv has the ready marker (holding its site-packages path); anything else
    at venv_dir is a partial one from an earlier failure, and is rebuilt. Returns the
    venv's site-packages path."""
    venv_dir = os.path.abspath(venv_dir)
    if not os.path.isfile(requirements):
        raise SetupError(f"the requirements file {requirements} does not exist")
    deadline = _Deadline(timeout)
    os.makedirs(os.path.dirname(venv_dir), exist_ok=True)
    with _Lock(venv_dir + ".lock"):
        site_packages = _ready_site_packages(venv_dir)
        if site_packages is not None:
            return site_packages
        shutil.rmtree(venv_dir, ignore_errors=True)
        pip_cmd = _create_venv(venv_dir, deadline)
        _run([*pip_cmd, "install", "--disable-pip-version-check", "--no-input", "-r", requirements],
             deadline, "pip install")
        site_packages = _site_packages(venv_dir, deadline)
        _write_marker(venv_dir, site_packages)
        return site_packages


class _Deadline:
    """The time left of the whole setup (None: no limit)."""

    def __init__(self, timeout):
        self.timeout = timeout if timeout is not None and timeout > 0 else None
        self.end = None if self.timeout is None else time.monotonic() + self.timeout

    def left(self):
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def expired_message(self):
        shown = int(self.timeout) if float(self.timeout).is_integer() else self.timeout
        return f"pip install timed out after {shown} s"


class _Lock:
    """An exclusive file lock: two setups of the same venv take turns (the second finds
    the first's result ready)."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _ready_site_packages(venv_dir):
    marker = os.path.join(venv_dir, READY_MARKER)
    if not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        path = f.read().strip()
    return path or _site_packages(venv_dir, _Deadline(None))


def _python_of(venv_dir):
    return os.path.join(venv_dir, "bin", "python")


def _create_venv(venv_dir, deadline):
    """Creates the venv; returns the command that runs pip for it. Without ensurepip (a
    Debian python without python3-venv) the venv is made without pip, and this
    interpreter's pip installs into it (pip >= 22.3's --python)."""
    base = [sys.executable, "-m", "venv", "--system-site-packages"]
    try:
        _run([*base, venv_dir], deadline, "creating the virtualenv")
        return [_python_of(venv_dir), "-m", "pip"]
    except SetupError as e:
        if "timed out" in str(e) or not _has_pip():
            raise
    print("swiftray: retrying the virtualenv without its own pip", file=sys.stderr, flush=True)
    shutil.rmtree(venv_dir, ignore_errors=True)
    _run([*base, "--without-pip", venv_dir], deadline, "creating the virtualenv")
    return [sys.executable, "-m", "pip", "--python", _python_of(venv_dir)]


def _has_pip():
    import importlib.util
    return importlib.util.find_spec("pip") is not None


def _site_packages(venv_dir, deadline):
    out = _run([_python_of(venv_dir), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
               deadline, "finding the virtualenv's site-packages", capture=True)
    return os.path.abspath(out.strip().splitlines()[-1])


def _write_marker(venv_dir, site_packages):
    marker = os.path.join(venv_dir, READY_MARKER)
    tmp = f"{marker}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(site_packages + "\n")
    os.rename(tmp, marker)


def _run(cmd, deadline, what, capture=False):
    """Runs one step with its output passed through (the node captures it), in its own
    process group so a timeout kills pip's build subprocesses too."""
    global _child
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        _child = subprocess.Popen(cmd, start_new_session=True, text=True,
                                  stdout=subprocess.PIPE if capture else None)
    except OSError as e:
        raise SetupError(f"{what} could not start {cmd[0]}: {e}") from None
    try:
        out, _ = _child.communicate(timeout=deadline.left())
    except subprocess.TimeoutExpired:
        _kill_child()
        raise SetupError(deadline.expired_message()) from None
    code = _child.returncode
    _child = None
    if code != 0:
        raise SetupError(f"{what} failed (exit code {code}); see its output above")
    return out or ""


def _kill_child():
    global _child
    child, _child = _child, None
    if child is None:
        return
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:
        pass
    child.wait()


def _on_sigterm(signum, frame):
    # The node gave up on us (its own deadline): take the step we started with us.
    _kill_child()
    raise SystemExit(1)


# ---------------------------------------------------------------------------------------
# command line


def _parser():
    parser = argparse.ArgumentParser(prog="python -m swiftray._runtime_env_setup",
                                     description="Sets up a runtime_env on this node.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("unpack", help="extract a package zip into a folder, atomically")
    p.add_argument("zip")
    p.add_argument("dest")
    p.add_argument("--flatten-single-top-dir", action="store_true",
                   help="if every entry lies under one top folder, use that folder's contents "
                        "(a user-supplied working_dir zip, as Ray)")
    p = commands.add_parser("pip", help="install requirements into a virtualenv, once")
    p.add_argument("venv_dir")
    p.add_argument("requirements_file")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds for the whole setup; none or <= 0 for no limit")
    return parser


def main(argv):
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "unpack":
            unpack(args.zip, args.dest, args.flatten_single_top_dir)
        else:
            site_packages = pip_install(args.venv_dir, args.requirements_file, args.timeout)
            print(SITE_PACKAGES_PREFIX + site_packages, flush=True)
    except SetupError as e:
        print(f"runtime_env setup failed: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        print(f"runtime_env setup failed: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

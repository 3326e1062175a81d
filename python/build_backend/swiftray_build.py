"""PEP 517 backend for swiftray: builds the Swift core, then writes the wheel.

The wheel holds the pure-Python package, the extension `swiftray/_core<EXT_SUFFIX>`
and the Swift host `swiftray/_bin/swiftray` (worker processes and `swiftray run`).
The build runs in the repository this folder belongs to (pip builds in-tree), so the
Swift build folder is shared with `swift test` and later builds are incremental.
"""
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

NAME = "swiftray"
VERSION = "0.1.0"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # python/
REPO = os.path.dirname(HERE)


def _tag():
    impl = f"cp{sys.version_info.major}{sys.version_info.minor}"
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{impl}-{impl}-{plat}"


def _build_swift():
    env = dict(os.environ, PYTHON=sys.executable)
    cmd = [os.path.join(REPO, "scripts", "swift.sh"), "build", "-c", "release",
           "--product", "swiftray"]
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
    cmd[-1] = "SwiftrayCoreExtension"
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
    out = subprocess.run([os.path.join(REPO, "scripts", "swift.sh"), "build", "-c", "release",
                          "--show-bin-path"], check=True, env=env, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def _files(bin_dir):
    """(archive name, source path or bytes) for everything in the wheel."""
    pkg = os.path.join(HERE, NAME)
    items = []
    for root, dirs, files in os.walk(pkg):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "_bin")]
        for f in files:
            if f.endswith((".py", ".typed", ".html", ".js", ".css")):
                full = os.path.join(root, f)
                items.append((os.path.relpath(full, HERE), full))
    items.append((f"{NAME}/_core{sysconfig.get_config_var('EXT_SUFFIX')}",
                  os.path.join(bin_dir, "libSwiftrayCoreExtension.so")))
    items.append((f"{NAME}/_bin/swiftray", os.path.join(bin_dir, "swiftray")))
    return items


def _stripped(path, tmp):
    """Release builds carry debug info (~100 MB); the wheel does not need it."""
    dst = os.path.join(tmp, os.path.basename(path))
    shutil.copy2(path, dst)
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-debug", dst], check=False)
    return dst


def _metadata():
    return (f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
            "Summary: Ray's programming model for Python with a Swift core\n"
            "Requires-Python: >=3.9\nRequires-Dist: cloudpickle>=2.0\n").encode()


def _write_wheel(wheel_directory, extra_files=()):
    bin_dir = _build_swift()
    tag = _tag()
    name = f"{NAME}-{VERSION}-{tag}.whl"
    dist_info = f"{NAME}-{VERSION}.dist-info"
    path = os.path.join(wheel_directory, name)
    record = []
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        def add(arcname, data, mode=0o644):
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (mode | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")

        for arcname, src in list(_files(bin_dir)) + list(extra_files):
            if isinstance(src, bytes):
                add(arcname, src)
                continue
            native = src.endswith(".so") or arcname.endswith("_bin/swiftray")
            if native:
                src = _stripped(src, tmp)
            with open(src, "rb") as f:
                add(arcname, f.read(), 0o755 if native else 0o644)
        add(f"{dist_info}/METADATA", _metadata())
        add(f"{dist_info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: swiftray_build\n"
                                   f"Root-Is-Purelib: false\nTag: {tag}\n").encode())
        add(f"{dist_info}/entry_points.txt",
            b"[console_scripts]\nswiftray = swiftray._cli:main\n")
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # Editable: a .pth pointing at python/, with the built binaries copied in place.
    bin_dir = _build_swift()
    pkg = os.path.join(HERE, NAME)
    os.makedirs(os.path.join(pkg, "_bin"), exist_ok=True)
    shutil.copy2(os.path.join(bin_dir, "libSwiftrayCoreExtension.so"),
                 os.path.join(pkg, f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"))
    shutil.copy2(os.path.join(bin_dir, "swiftray"), os.path.join(pkg, "_bin", "swiftray"))
    tag = _tag()
    name = f"{NAME}-{VERSION}-{tag}.whl"
    dist_info = f"{NAME}-{VERSION}.dist-info"
    path = os.path.join(wheel_directory, name)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"_{NAME}_editable.pth", HERE + "\n")
        zf.writestr(f"{dist_info}/METADATA", _metadata())
        zf.writestr(f"{dist_info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: swiftray_build\nRoot-Is-Purelib: false\nTag: {tag}\n")
        zf.writestr(f"{dist_info}/entry_points.txt", "[console_scripts]\nswiftray = swiftray._cli:main\n")
        zf.writestr(f"{dist_info}/RECORD", "")
    return name


def build_sdist(sdist_directory, config_settings=None):
    raise RuntimeError("swiftray builds from a checkout of its repository: pip install ./python")

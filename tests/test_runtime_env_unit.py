"""Unit tests of runtime_env's pure pieces, no cluster: the driver's validation, packing,
upload and inheritance (_runtime_env), the node's setup script (_runtime_env_setup) and
the worker's application of the node's context (_worker._apply_runtime_env)."""
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from swiftray import _runtime_env as rt
from swiftray import _runtime_env_setup

# The node runs the set-up script by its file, isolated (`python -I`), as here.
SETUP_SCRIPT = _runtime_env_setup.__file__


class FakeStore:
    """The store prepare() uploads to, backed by a dict, counting uploads."""

    def __init__(self, initial=None):
        self.blobs = dict(initial or {})
        self.uploads = []

    def exists(self, uri):
        return uri in self.blobs

    def upload(self, uri, data):
        self.uploads.append(uri)
        self.blobs[uri] = data


def _tree(root, files):
    """Writes {relative path: text or bytes} under root; returns root."""
    root = Path(root)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def _names(data):
    return sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())


def _file_names(data):
    return [n for n in _names(data) if not n.endswith("/")]


# ---------------------------------------------------------------------------------------
# validate


def test_validate_empty():
    assert rt.validate(None) == {}
    assert rt.validate({}) == {}
    assert rt.validate({"pip": None, "working_dir": None}) == {}


def test_validate_accepts_dict_subclass_and_to_dict():
    class RuntimeEnv(dict):
        pass

    class WithToDict:
        def to_dict(self):
            return {"env_vars": {"A": "1"}}

    assert rt.validate(RuntimeEnv(env_vars={"A": "1"})) == {"env_vars": {"A": "1"}}
    assert rt.validate(WithToDict()) == {"env_vars": {"A": "1"}}
    with pytest.raises(TypeError, match="runtime_env must be a dict"):
        rt.validate(["env_vars"])


def test_validate_env_vars():
    assert rt.validate({"env_vars": {"A": "1", "B": ""}}) == {"env_vars": {"A": "1", "B": ""}}
    with pytest.raises(TypeError, match=r"the key 1 is a int"):
        rt.validate({"env_vars": {1: "x"}})
    with pytest.raises(TypeError, match=r"the value of 'N' is a int"):
        rt.validate({"env_vars": {"N": 3}})
    with pytest.raises(TypeError, match=r"Dict\[str, str\]"):
        rt.validate({"env_vars": ["A=1"]})


def test_validate_working_dir(tmp_path, monkeypatch):
    (tmp_path / "wd").mkdir()
    monkeypatch.chdir(tmp_path)
    assert rt.validate({"working_dir": "wd"}) == {"working_dir": str(tmp_path / "wd")}
    archive = tmp_path / "wd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "a")
    assert rt.validate({"working_dir": str(archive)}) == {"working_dir": str(archive)}
    with pytest.raises(ValueError, match=r"working_dir .*missing does not exist"):
        rt.validate({"working_dir": "missing"})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="must be an existing directory or a zip package"):
        rt.validate({"working_dir": "notes.txt"})
    for uri in ("s3://bucket/wd.zip", "https://example.com/wd.zip", "gcs://bucket/wd.zip"):
        with pytest.raises(ValueError, match="supports only local folders and .zip files"):
            rt.validate({"working_dir": uri})
    with pytest.raises(TypeError, match="must be a string path"):
        rt.validate({"working_dir": 3})


def test_validate_py_modules(tmp_path, monkeypatch):
    _tree(tmp_path, {"mypkg/__init__.py": "", "single.py": "X = 1\n", "lib.whl": b"PK"})
    with zipfile.ZipFile(tmp_path / "mods.zip", "w") as zf:
        zf.writestr("m.py", "")
    monkeypatch.chdir(tmp_path)
    got = rt.validate({"py_modules": ["mypkg", "single.py", "mods.zip"]})
    assert got == {"py_modules": [str(tmp_path / "mypkg"), str(tmp_path / "single.py"), str(tmp_path / "mods.zip")]}
    with pytest.raises(ValueError, match="wheel"):
        rt.validate({"py_modules": ["lib.whl"]})
    with pytest.raises(ValueError, match="does not exist"):
        rt.validate({"py_modules": ["nope"]})
    with pytest.raises(ValueError, match="supports only local folders"):
        rt.validate({"py_modules": ["s3://bucket/m.zip"]})
    with pytest.raises(TypeError, match="must be a list"):
        rt.validate({"py_modules": "mypkg"})


def test_validate_py_modules_accepts_a_module_object(tmp_path, monkeypatch):
    _tree(tmp_path, {"modpkg_rt/__init__.py": ""})
    monkeypatch.syspath_prepend(str(tmp_path))
    import modpkg_rt
    assert rt.validate({"py_modules": [modpkg_rt]}) == {"py_modules": [str(tmp_path / "modpkg_rt")]}


def test_validate_excludes():
    assert rt.validate({"excludes": ["*.log"]}) == {"excludes": ["*.log"]}
    with pytest.raises(TypeError, match=r"List\[str\]"):
        rt.validate({"excludes": "*.log"})
    with pytest.raises(TypeError, match=r"List\[str\]"):
        rt.validate({"excludes": [1]})


def test_validate_pip(tmp_path):
    assert rt.validate({"pip": ["requests==2.31.0", " six "]}) == {"pip": {"packages": ["requests==2.31.0", "six"]}}
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned\nrequests==2.31.0\n\n  six\n")
    assert rt.validate({"pip": str(req)}) == {"pip": {"packages": ["requests==2.31.0", "six"]}}
    got = rt.validate({"pip": {"packages": ["six"], "pip_check": False, "pip_version": "==23.1"}})
    assert got == {"pip": {"packages": ["six"]}}
    assert rt.validate({"pip": {"packages": str(req)}}) == {"pip": {"packages": ["requests==2.31.0", "six"]}}
    with pytest.raises(ValueError, match="is not a valid file"):
        rt.validate({"pip": str(tmp_path / "missing.txt")})
    with pytest.raises(ValueError, match="pip_check"):
        rt.validate({"pip": {"packages": ["six"], "pip_check": True}})
    with pytest.raises(ValueError, match="needs 'packages'"):
        rt.validate({"pip": {"pip_check": False}})
    with pytest.raises(TypeError, match="list of strings"):
        rt.validate({"pip": ["six", 3]})


def test_validate_config():
    assert rt.validate({"config": {}}) == {"config": {"eager_install": True, "setup_timeout_seconds": 600}}
    got = rt.validate({"config": {"setup_timeout_seconds": -1, "eager_install": False}})
    assert got == {"config": {"eager_install": False, "setup_timeout_seconds": -1}}

    class RuntimeEnvConfig(dict):
        pass

    got = rt.validate({"config": RuntimeEnvConfig(setup_timeout_seconds=30, eager_install=True, log_files=[])})
    assert got == {"config": {"eager_install": True, "setup_timeout_seconds": 30}}
    with pytest.raises(ValueError, match="positive integer, or -1"):
        rt.validate({"config": {"setup_timeout_seconds": 0}})
    with pytest.raises(TypeError, match="must be of type int"):
        rt.validate({"config": {"setup_timeout_seconds": "10"}})
    with pytest.raises(TypeError, match="eager_install must be a boolean"):
        rt.validate({"config": {"eager_install": "yes"}})
    with pytest.raises(ValueError, match="unknown key"):
        rt.validate({"config": {"timeout": 3}})


def test_validate_unsupported_and_unknown_fields():
    with pytest.raises(ValueError, match="runtime_env field 'conda' is not supported by swiftray; use 'pip'"):
        rt.validate({"conda": {"dependencies": ["numpy"]}})
    for field in ("container", "image_uri", "uv", "nsight", "java_jars", "mpi", "rocprof_sys", "_ray_release"):
        with pytest.raises(ValueError, match=f"runtime_env field '{field}' is not supported by swiftray"):
            rt.validate({field: "x"})
    with pytest.raises(ValueError, match="'pip' field and 'conda' field of runtime_env cannot both be specified"):
        rt.validate({"pip": ["six"], "conda": "env"})
    with pytest.raises(ValueError, match=r"Unknown runtime_env field\(s\) 'wokring_dir'.*config, env_vars, "
                                         r"excludes, pip, py_modules, working_dir"):
        rt.validate({"wokring_dir": "."})


# ---------------------------------------------------------------------------------------
# merge, dumps


CONFIG = {"eager_install": True, "setup_timeout_seconds": 600}


def test_merge_inherits_as_ray():
    parent = {"config": {"eager_install": True, "setup_timeout_seconds": 30},
              "env_vars": {"A": "1", "B": "1"}, "pip": {"packages": ["six"]}, "working_dir": "pkg://p.zip"}
    child = {"config": CONFIG, "env_vars": {"B": "2", "C": "2"}, "working_dir": "pkg://c.zip"}
    assert rt.merge(parent, child) == {"config": CONFIG, "env_vars": {"A": "1", "B": "2", "C": "2"},
                                       "pip": {"packages": ["six"]}, "working_dir": "pkg://c.zip"}
    assert rt.merge(parent, {}) == parent
    assert rt.merge({}, {"env_vars": {"A": "1"}}) == {"config": CONFIG, "env_vars": {"A": "1"}}
    assert rt.merge({}, {}) == {}


def test_dumps_is_canonical():
    assert rt.dumps({}) == ""
    a = rt.dumps({"env_vars": {"B": "1", "A": "2"}, "config": CONFIG})
    b = rt.dumps({"config": dict(reversed(list(CONFIG.items()))), "env_vars": {"A": "2", "B": "1"}})
    assert a == b == ('{"config":{"eager_install":true,"setup_timeout_seconds":600},'
                      '"env_vars":{"A":"2","B":"1"}}')


def test_resolve_keeps_the_parents_config_unless_the_child_gives_one():
    store = FakeStore()
    parent = rt.resolve({"env_vars": {"A": "1"}, "config": {"setup_timeout_seconds": 30}}, "", store)
    child = json.loads(rt.resolve({"env_vars": {"B": "2"}}, parent, store))
    assert child == {"config": {"eager_install": True, "setup_timeout_seconds": 30},
                     "env_vars": {"A": "1", "B": "2"}}
    child = json.loads(rt.resolve({"config": {"setup_timeout_seconds": 5}}, parent, store))
    assert child["config"]["setup_timeout_seconds"] == 5
    assert rt.resolve(None, "", store) == ""
    assert rt.resolve({}, parent, store) == parent


# ---------------------------------------------------------------------------------------
# packaging


PROJECT = {
    "main.py": "print('hi')\n",
    "sub/util.py": "X = 1\n",
    "sub/data.bin": bytes(range(256)) * 4,
    ".git/HEAD": "ref: refs/heads/main\n",
    "__pycache__/main.cpython-311.pyc": b"\0",
    "sub/__pycache__/util.cpython-311.pyc": b"\0",
    ".venv/bin/python": "",
    "stray.pyc": b"\0",
}


def test_packing_is_deterministic_and_content_addressed(tmp_path):
    a = _tree(tmp_path / "a", PROJECT)
    uri1, data1 = rt.package_dir(str(a))
    uri2, data2 = rt.package_dir(str(a))
    assert (uri1, data1) == (uri2, data2)
    assert re.fullmatch(r"pkg://[0-9a-f]{64}\.zip", uri1)
    assert uri1 == "pkg://" + hashlib.sha256(data1).hexdigest() + ".zip"
    # A copy elsewhere, written at another time, packs to the same bytes.
    time.sleep(0.01)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert rt.package_dir(str(b)) == (uri1, data1)
    for info in zipfile.ZipFile(io.BytesIO(data1)).infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
    # Any change makes a new package.
    (b / "sub" / "util.py").write_text("X = 2\n")
    uri3, _ = rt.package_dir(str(b))
    assert uri3 != uri1


def test_default_excludes(tmp_path):
    root = _tree(tmp_path / "p", PROJECT)
    _, data = rt.package_dir(str(root))
    assert _file_names(data) == ["main.py", "sub/data.bin", "sub/util.py"]
    assert not any(n.startswith((".git", "__pycache__", ".venv")) for n in _names(data))


def test_gitignore_and_user_excludes(tmp_path):
    root = _tree(tmp_path / "p", {
        ".gitignore": "# build output\n\nbuild/\n*.log\n/top_only.txt\n!keep.log\n",
        "main.py": "", "run.log": "", "sub/deep.log": "", "build/out.o": "", "sub/build/x": "",
        "top_only.txt": "", "sub/top_only.txt": "", "data/big.csv": "", "sub/skip.txt": "", "sub/keep.txt": "",
        "nested/.gitignore": "secret.txt\n", "nested/secret.txt": "", "nested/ok.txt": "", "secret.txt": "",
    })
    _, data = rt.package_dir(str(root), ["data", "sub/skip.txt"])
    assert _file_names(data) == [".gitignore", "main.py", "nested/.gitignore", "nested/ok.txt", "secret.txt",
                                 "sub/keep.txt", "sub/top_only.txt"]


def test_modes_and_symlinks(tmp_path):
    root = _tree(tmp_path / "p", {"run.sh": "#!/bin/sh\necho hi\n", "plain.txt": "x"})
    os.chmod(root / "run.sh", 0o755)
    outside = _tree(tmp_path / "outside", {"shared.txt": "shared", "inner/file.txt": "no"})
    os.symlink(outside / "shared.txt", root / "link.txt")
    os.symlink(outside / "inner", root / "linkdir")
    os.symlink(tmp_path / "gone", root / "broken")
    _, data = rt.package_dir(str(root))
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(zf.namelist()) == ["link.txt", "plain.txt", "run.sh"]
    assert zf.read("link.txt") == b"shared"
    assert stat.S_IMODE(zf.getinfo("run.sh").external_attr >> 16) == 0o755
    assert stat.S_IMODE(zf.getinfo("plain.txt").external_attr >> 16) & 0o111 == 0


def test_size_limit(tmp_path, monkeypatch):
    root = _tree(tmp_path / "p", {"big.bin": os.urandom(2 * 2**20)})
    monkeypatch.setenv("SWIFTRAY_RUNTIME_ENV_MAX_PACKAGE_BYTES", str(2**20))
    message = (r"Package size \(2\.\d\dMiB\) exceeds the maximum size of 1\.00MiB\. You can exclude large "
               r"files using the 'excludes' option to the runtime_env\.")
    with pytest.raises(ValueError, match=message):
        rt.package_dir(str(root))
    assert rt.package_dir(str(root), ["big.bin"])[0]
    monkeypatch.setenv("SWIFTRAY_RUNTIME_ENV_MAX_PACKAGE_BYTES", "not a number")
    assert rt.max_package_bytes() == rt.MAX_PACKAGE_BYTES == 500 * 2**20


def test_unchanged_folder_is_zipped_once(tmp_path, monkeypatch):
    root = _tree(tmp_path / "p", {"a.py": "A = 1\n"})
    calls = []
    real_zip = rt._zip
    monkeypatch.setattr(rt, "_zip", lambda entries: calls.append(1) or real_zip(entries))
    first = rt.package_dir(str(root))
    assert rt.package_dir(str(root)) == first
    assert len(calls) == 1
    (root / "b.py").write_text("")
    rt.package_dir(str(root))
    assert len(calls) == 2


def test_zip_working_dir_is_shipped_as_is_unless_it_holds_one_top_folder(tmp_path):
    archive = tmp_path / "wd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "a")
        zf.writestr("sub/b.txt", "b")
    raw = archive.read_bytes()
    assert rt.package_dir(str(archive)) == ("pkg://" + hashlib.sha256(raw).hexdigest() + ".zip", raw)
    # As Ray: a working_dir zip with a single top-level folder is that folder's contents.
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        zf.writestr("top/a.txt", "a")
        zf.writestr("top/sub/b.txt", "b")
    uri, data = rt.package_dir(str(nested))
    assert _names(data) == ["a.txt", "sub/b.txt"] and uri == "pkg://" + hashlib.sha256(data).hexdigest() + ".zip"
    assert rt.package_module(str(nested))[1] == nested.read_bytes()


def test_py_modules_layout(tmp_path):
    _tree(tmp_path, {"mypkg/__init__.py": "from .core import VALUE\n", "mypkg/core.py": "VALUE = 42\n",
                     "mypkg/__pycache__/core.cpython-311.pyc": b"\0", "single.py": "X = 1\n"})
    _, data = rt.package_module(str(tmp_path / "mypkg"))
    assert _names(data) == ["mypkg/", "mypkg/__init__.py", "mypkg/core.py"]
    _, data = rt.package_module(str(tmp_path / "single.py"))
    assert _names(data) == ["single.py"]
    # Unpacked and put on sys.path, the package imports.
    _, data = rt.package_module(str(tmp_path / "mypkg"))
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(io.BytesIO(data)).extractall(unpacked)
    out = subprocess.run([sys.executable, "-c", "import mypkg; print(mypkg.VALUE)"], cwd=tmp_path / "unpacked",
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "42", out.stderr


# ---------------------------------------------------------------------------------------
# prepare


def test_prepare_canonical_form_and_upload_once(tmp_path, monkeypatch):
    _tree(tmp_path, {"wd/main.py": "", "wd/skip.txt": "", "mypkg/__init__.py": ""})
    monkeypatch.chdir(tmp_path)
    env = rt.validate({"working_dir": "wd", "py_modules": ["mypkg"], "env_vars": {"K": "V"},
                       "pip": ["requests==2.31.0"], "excludes": ["skip.txt"]})
    store = FakeStore()
    canonical = rt.prepare(env, store)
    wd_uri, _ = rt.package_dir(str(tmp_path / "wd"), ["skip.txt"])
    mod_uri, _ = rt.package_module(str(tmp_path / "mypkg"), ["skip.txt"])
    assert canonical == {"config": CONFIG, "env_vars": {"K": "V"}, "pip": {"packages": ["requests==2.31.0"]},
                         "py_modules": [mod_uri], "working_dir": wd_uri}
    assert sorted(store.uploads) == sorted([wd_uri, mod_uri])
    assert _file_names(store.blobs[wd_uri]) == ["main.py"]
    # Again: nothing new to upload (nor asked: the process remembers).
    assert rt.prepare(env, store) == canonical
    assert len(store.uploads) == 2
    # Another store that already holds the packages gets no upload; an empty one gets both.
    full = FakeStore(store.blobs)
    assert rt.prepare(env, full) == canonical and full.uploads == []
    empty = FakeStore()
    rt.prepare(env, empty)
    assert sorted(empty.uploads) == sorted([wd_uri, mod_uri])
    assert empty.blobs == store.blobs


def test_prepare_empty_and_config_only_with_others():
    store = FakeStore()
    assert rt.prepare({}, store) == {}
    assert rt.prepare(rt.validate({"excludes": ["x"], "env_vars": {}, "pip": []}), store) == {}
    assert rt.prepare(rt.validate({"env_vars": {"A": "1"}}), store) == {"config": CONFIG, "env_vars": {"A": "1"}}


def test_resolve_is_cheap_when_repeated(tmp_path, monkeypatch):
    _tree(tmp_path, {"wd/main.py": ""})
    monkeypatch.chdir(tmp_path)
    store = FakeStore()
    option = {"working_dir": "wd", "env_vars": {"A": "1"}}
    first = rt.resolve(option, "", store)
    start = time.perf_counter()
    for _ in range(200):
        assert rt.resolve(option, "", store) == first
    assert (time.perf_counter() - start) / 200 < 0.001
    assert len(store.uploads) == 1
    assert json.loads(first)["working_dir"] == store.uploads[0]


# ---------------------------------------------------------------------------------------
# the node's setup script


def _setup(*args, timeout=60):
    return subprocess.run([sys.executable, "-I", SETUP_SCRIPT, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def _zip_with(path, entries):
    """A zip of {name: (content, mode or None)}."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, (content, mode) in entries.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            if mode is not None:
                info.external_attr = (stat.S_IFREG | mode) << 16
            zf.writestr(info, content)
    return path


def test_unpack_restores_modes(tmp_path):
    root = _tree(tmp_path / "p", {"run.sh": "#!/bin/sh\n", "sub/a.txt": "a", "empty/.keep": ""})
    os.chmod(root / "run.sh", 0o750)
    archive = tmp_path / "p.zip"
    archive.write_bytes(rt.package_dir(str(root))[1])
    dest = tmp_path / "cache" / "p"
    out = _setup("unpack", archive, dest)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert (dest / "sub" / "a.txt").read_text() == "a"
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o750
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]
    # Already there (another process won): success, untouched.
    (dest / "marker").write_text("mine")
    assert _setup("unpack", archive, dest).returncode == 0
    assert (dest / "marker").read_text() == "mine"


@pytest.mark.parametrize("evil", ["../evil.txt", "sub/../../evil.txt", "/tmp/swiftray-evil-abs.txt"])
def test_unpack_refuses_zip_slip(tmp_path, evil):
    archive = _zip_with(tmp_path / "evil.zip", {"ok.txt": ("ok", 0o644), evil: ("bad", 0o644)})
    dest = tmp_path / "out" / "dest"
    out = _setup("unpack", archive, dest)
    assert out.returncode == 1
    assert "outside the destination" in out.stderr and evil in out.stderr
    assert not dest.exists()
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/swiftray-evil-abs.txt").exists()
    assert not [p for p in (tmp_path / "out").iterdir()]


def test_unpack_flattens_a_single_top_dir_only_when_asked(tmp_path):
    archive = _zip_with(tmp_path / "wd.zip", {"top/": (b"", None), "top/a.txt": ("a", 0o644),
                                              "top/sub/b.txt": ("b", 0o644), "__MACOSX/top/._a.txt": ("", None)})
    assert _setup("unpack", archive, tmp_path / "flat", "--flatten-single-top-dir").returncode == 0
    assert (tmp_path / "flat" / "a.txt").read_text() == "a"
    assert (tmp_path / "flat" / "sub" / "b.txt").read_text() == "b"
    assert not (tmp_path / "flat" / "__MACOSX").exists()
    assert _setup("unpack", archive, tmp_path / "kept").returncode == 0
    assert (tmp_path / "kept" / "top" / "a.txt").read_text() == "a"
    # Two top-level entries: nothing to flatten.
    archive = _zip_with(tmp_path / "two.zip", {"top/a.txt": ("a", None), "b.txt": ("b", None)})
    assert _setup("unpack", archive, tmp_path / "two", "--flatten-single-top-dir").returncode == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["b.txt", "top"]


def test_unpack_a_bad_zip_fails(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    out = _setup("unpack", tmp_path / "bad.zip", tmp_path / "dest")
    assert out.returncode == 1 and "cannot open the package" in out.stderr


def test_pip_with_a_missing_requirements_file_fails(tmp_path):
    out = _setup("pip", tmp_path / "venv", tmp_path / "missing.txt")
    assert out.returncode == 1
    assert "requirements file" in out.stderr and "does not exist" in out.stderr
    assert not (tmp_path / "venv").exists()


def test_pip_install_failure_exits_1_without_marking_ready(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("--no-index\nswiftray-no-such-package-xyz==0.0.1\n")
    start = time.monotonic()
    out = _setup("pip", tmp_path / "venv", req, "--timeout", "120", timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "pip install failed" in out.stderr
    assert "swiftray-no-such-package-xyz" in out.stdout + out.stderr  # pip's own output passed through
    assert "SWIFTRAY_SITE_PACKAGES=" not in out.stdout
    assert not (tmp_path / "venv" / ".swiftray-ready").exists()
    assert time.monotonic() - start < 60


# ---------------------------------------------------------------------------------------
# the worker


def test_worker_applies_the_context(tmp_path):
    site_dir = _tree(tmp_path / "site", {"venvmod_rt.py": "WHERE = 'venv'\n", "extra.pth": "extra_dir\n"})
    (site_dir / "extra_dir").mkdir()
    code = _tree(tmp_path / "code", {"codemod_rt.py": "WHERE = 'code'\n"})
    cwd = tmp_path / "wd"
    cwd.mkdir()
    context = {"env_vars": {"RT_TEST_VAR": "yes"}, "cwd": str(cwd), "sys_path": [str(code), str(cwd)],
               "site_dirs": [str(site_dir)], "runtime_env": '{"env_vars":{"RT_TEST_VAR":"yes"}}'}
    script = textwrap.dedent("""
        import json, os, sys
        from swiftray import _worker
        _worker._apply_runtime_env()
        import venvmod_rt, codemod_rt
        print(json.dumps({"var": os.environ.get("RT_TEST_VAR"), "cwd": os.getcwd(), "head": sys.path[:4],
                          "left": os.environ.get("SWIFTRAY_RUNTIME_ENV_CONTEXT"),
                          "json": _worker._runtime_env_json, "ships": _worker._ships_code}))
    """)
    env = dict(os.environ, SWIFTRAY_RUNTIME_ENV_CONTEXT=json.dumps(context))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"var": "yes", "cwd": str(cwd), "left": None, "json": context["runtime_env"], "ships": True,
                   "head": [str(code), str(cwd), str(site_dir), str(site_dir / "extra_dir")]}

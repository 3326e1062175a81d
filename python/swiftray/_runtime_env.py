"""The driver's half of runtime_env (Ray 2.x names and semantics): checks what the user
gave, packs local folders and modules into content-addressed zips, uploads each zip once,
and hands the core one canonical JSON string per environment.

The canonical string is the environment's identity: the core keys worker pools by it, so
two calls with the same environment share workers, and it must not change unless the
environment does. Everything here is deterministic for that reason (sorted keys, sorted
zip entries, fixed zip timestamps, URIs from the zip's sha256).

The node's half (unpacking zips, pip installs) is in _runtime_env_setup; the worker's
(env vars, cwd, sys.path) in _worker._apply_runtime_env.
"""
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import stat
import threading
import time
import types
import weakref
import zipfile
import zlib

logger = logging.getLogger(__name__)

# Ray's GCS limit for one package; SWIFTRAY_RUNTIME_ENV_MAX_PACKAGE_BYTES overrides it.
MAX_PACKAGE_BYTES = 500 * 2**20
MAX_PACKAGE_BYTES_ENV = "SWIFTRAY_RUNTIME_ENV_MAX_PACKAGE_BYTES"
# A single file this large is probably data the user did not mean to ship (Ray warns too).
LARGE_FILE_WARNING_BYTES = 10 * 2**20
# Never shipped: version-control state, bytecode and local virtualenvs are per machine.
DEFAULT_EXCLUDES = (".git", "__pycache__", ".venv", "*.pyc")
DEFAULT_SETUP_TIMEOUT_SECONDS = 600
URI_PREFIX = "pkg://"

SUPPORTED_FIELDS = ("config", "env_vars", "excludes", "pip", "py_modules", "working_dir")
# Ray's other fields, with what to do instead.
_UNSUPPORTED_FIELDS = {
    "conda": "use 'pip' for Python packages",
    "uv": "use 'pip' for Python packages",
    "container": "start the nodes inside the image instead",
    "image_uri": "start the nodes inside the image instead",
    "py_executable": "start the nodes with the interpreter you want instead",
    "java_jars": "swiftray runs Python tasks only",
    "mpi": "start MPI from inside the task instead",
    "nsight": "start the profiler from inside the task instead",
    "_nsight": "start the profiler from inside the task instead",
    "rocprof_sys": "start the profiler from inside the task instead",
    "worker_process_setup_hook": "call the setup function at the start of the task instead",
    "_ray_release": "install the package version you need with 'pip' instead",
    "_ray_commit": "install the package version you need with 'pip' instead",
    "_inject_current_ray": "install the package version you need with 'pip' instead",
}
_CONFIG_FIELDS = ("setup_timeout_seconds", "eager_install", "log_files")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# How long resolve() trusts an earlier answer for an environment that ships local files
# before looking at the files again: submitting many tasks must not walk the tree each time.
_RECHECK_SECONDS = 1.0
_MEMO_LIMIT = 1024


# ---------------------------------------------------------------------------------------
# Validation


def validate(runtime_env):
    """The user's runtime_env checked and normalized (absolute paths, pip as a list, config
    with its defaults), or a TypeError/ValueError that says what to change. Nothing is read
    beyond what checking needs: packing happens in prepare()."""
    env = _as_dict(runtime_env, "runtime_env")
    env = {k: v for k, v in env.items() if v is not None}  # Ray treats None as not given
    _check_fields(env)
    return {field: check(env[field]) for field, check in _VALIDATORS.items() if field in env}


def _as_dict(value, what):
    """Ray's RuntimeEnv and RuntimeEnvConfig are dict subclasses; other objects may offer
    to_dict(). A plain dict copy keeps later steps from mutating the user's object."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        value = to_dict()
        if isinstance(value, dict):
            return dict(value)
    raise TypeError(f"{what} must be a dict, got {type(value).__name__}.")


def _check_fields(env):
    if "pip" in env and "conda" in env:
        raise ValueError("The 'pip' field and 'conda' field of runtime_env cannot both be specified. "
                         "swiftray supports 'pip' only: list your packages there.")
    if "pip" in env and "uv" in env:
        raise ValueError("The 'pip' field and 'uv' field of runtime_env cannot both be specified. "
                         "swiftray supports 'pip' only: list your packages there.")
    for name in sorted(env, key=str):
        if name in _UNSUPPORTED_FIELDS:
            raise ValueError(f"runtime_env field '{name}' is not supported by swiftray; "
                             f"{_UNSUPPORTED_FIELDS[name]}. Supported fields: {', '.join(SUPPORTED_FIELDS)}.")
    unknown = sorted(str(k) for k in env if k not in SUPPORTED_FIELDS)
    if unknown:
        raise ValueError(f"Unknown runtime_env field(s) {', '.join(repr(k) for k in unknown)}; "
                         f"the valid fields are: {', '.join(SUPPORTED_FIELDS)}.")


def _validate_env_vars(env_vars):
    if not isinstance(env_vars, dict):
        raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str], "
                        f"got {type(env_vars).__name__}.")
    for key, value in env_vars.items():
        if not isinstance(key, str):
            raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str]: "
                            f"the key {key!r} is a {type(key).__name__}.")
        if not isinstance(value, str):
            raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str]: the value of "
                            f"{key!r} is a {type(value).__name__} ({value!r}); pass it as a string.")
    return dict(env_vars)


def _local_path(value, field):
    """An absolute local path (relative ones are from the driver's current directory), or
    an error for a remote URI, which swiftray does not fetch."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"runtime_env['{field}'] must be a string path, got {type(value).__name__}.")
    value = os.fspath(value)
    if _URI_SCHEME.match(value):
        raise ValueError(f"runtime_env['{field}'] is the remote URI {value!r}; swiftray supports only "
                         f"local folders and .zip files for {field}. Download it and give its local path.")
    return os.path.abspath(os.path.expanduser(value))


def _validate_working_dir(value):
    path = _local_path(value, "working_dir")
    if os.path.isdir(path):
        return path
    if not os.path.exists(path):
        raise ValueError(f"working_dir {path} does not exist; give an existing local folder or .zip file.")
    if path.endswith(".zip") and zipfile.is_zipfile(path):
        return path
    raise ValueError(f"working_dir {path} must be an existing directory or a zip package.")


def _validate_py_modules(value):
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"runtime_env['py_modules'] must be a list, got {type(value).__name__}.")
    return [_validate_py_module(m) for m in value]


def _validate_py_module(module):
    if isinstance(module, types.ModuleType):
        module = _module_source(module)
    path = _local_path(module, "py_modules")
    if os.path.isdir(path):
        return path
    if not os.path.exists(path):
        raise ValueError(f"py_modules entry {path} does not exist; give an existing local folder, "
                         f".py file or .zip file.")
    if path.endswith(".py"):
        return path
    if path.endswith(".zip") and zipfile.is_zipfile(path):
        return path
    if path.endswith(".whl"):
        raise ValueError(f"py_modules entry {path} is a wheel, which swiftray does not ship; "
                         f"give the package's folder instead.")
    raise ValueError(f"py_modules entry {path} must be a local folder, a .py file or a .zip file.")


def _module_source(module):
    """A module object stands for its package folder (or its .py file), as in Ray."""
    paths = getattr(module, "__path__", None)
    if paths:
        return list(paths)[0]
    source = getattr(module, "__file__", None)
    if not source:
        raise ValueError(f"py_modules: the module {module.__name__} has no file to ship "
                         f"(a built-in or namespace module); give its folder path instead.")
    return source


def _validate_excludes(value):
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"runtime_env['excludes'] must be of type List[str], got {type(value).__name__}.")
    for pattern in value:
        if not isinstance(pattern, str):
            raise TypeError(f"runtime_env['excludes'] must be of type List[str]: {pattern!r} is a "
                            f"{type(pattern).__name__}.")
    return list(value)


def _validate_pip(value):
    """pip as Ray takes it (a list, a requirements file, or a dict) -> {"packages": [...]}."""
    if isinstance(value, (str, os.PathLike)):
        return {"packages": _read_requirements(os.fspath(value))}
    if isinstance(value, (list, tuple)):
        return {"packages": _requirement_list(value)}
    if isinstance(value, dict):
        return _validate_pip_dict(value)
    raise TypeError(f"runtime_env['pip'] must be a list of requirements, a requirements file path "
                    f"or a dict, got {type(value).__name__}.")


def _validate_pip_dict(value):
    unknown = sorted(set(value) - {"packages", "pip_check", "pip_version"})
    if unknown:
        raise ValueError(f"runtime_env['pip'] has unknown key(s) {unknown}; the valid keys are "
                         f"'packages', 'pip_check' and 'pip_version'.")
    if "packages" not in value:
        raise ValueError("runtime_env['pip'] as a dict needs 'packages': a list of requirements "
                         "or a requirements file path.")
    if value.get("pip_check", False) not in (False, None):
        raise ValueError("runtime_env['pip']['pip_check'] = True is not supported by swiftray; "
                         "leave it False.")
    # pip_version is ignored: the node's own pip installs (documented, not an error).
    packages = value["packages"]
    if isinstance(packages, (str, os.PathLike)):
        return {"packages": _read_requirements(os.fspath(packages))}
    if isinstance(packages, (list, tuple)):
        return {"packages": _requirement_list(packages)}
    raise TypeError(f"runtime_env['pip']['packages'] must be a list or a requirements file path, "
                    f"got {type(packages).__name__}.")


def _requirement_list(items):
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"runtime_env['pip'] must be a list of strings: {item!r} is a "
                            f"{type(item).__name__}.")
    return [item.strip() for item in items if item.strip()]


def _read_requirements(path):
    """A requirements file, read on the driver so the nodes need not see it."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a valid file: runtime_env['pip'] as a string must be the "
                         f"path of a requirements file.")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def _validate_config(value):
    config = _as_dict(value, "runtime_env['config']")
    unknown = sorted(set(config) - set(_CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"runtime_env['config'] has unknown key(s) {unknown}; the valid keys are "
                         f"'setup_timeout_seconds' and 'eager_install'.")
    timeout = config.get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise TypeError(f"`setup_timeout_seconds` must be of type int, got: {type(timeout).__name__}")
    if timeout <= 0 and timeout != -1:
        raise ValueError("`setup_timeout_seconds` must be a positive integer, or -1 to disable the timeout.")
    eager = config.get("eager_install", True)
    if not isinstance(eager, bool):
        raise TypeError(f"eager_install must be a boolean. got {type(eager).__name__}")
    # log_files (Ray's files to show on setup failure) is accepted and ignored: the node
    # always shows the setup's own output.
    return {"eager_install": eager, "setup_timeout_seconds": timeout}


def _default_config():
    return {"eager_install": True, "setup_timeout_seconds": DEFAULT_SETUP_TIMEOUT_SECONDS}


# Each field's check, in the order they are checked.
_VALIDATORS = {
    "env_vars": _validate_env_vars,
    "working_dir": _validate_working_dir,
    "py_modules": _validate_py_modules,
    "excludes": _validate_excludes,
    "pip": _validate_pip,
    "config": _validate_config,
}


# ---------------------------------------------------------------------------------------
# Packaging


class _Package:
    """A packed zip: its uri and size, and its bytes until they are uploaded (then dropped
    to free memory; packing again gives the same bytes if another store needs them)."""

    def __init__(self, uri, size, data):
        self.uri = uri
        self.size = size
        self.data = data


_cache = {}  # (kind, path, excludes) -> (tree signature, _Package): the latest packing only
_cache_lock = threading.Lock()


def max_package_bytes():
    """The size limit of one package: MAX_PACKAGE_BYTES unless the env var sets a positive int."""
    raw = os.environ.get(MAX_PACKAGE_BYTES_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value > 0:
            return value
    return MAX_PACKAGE_BYTES


def _check_size(size):
    limit = max_package_bytes()
    if size > limit:
        raise ValueError(f"Package size ({size / 2**20:.2f}MiB) exceeds the maximum size of "
                         f"{limit / 2**20:.2f}MiB. You can exclude large files using the 'excludes' "
                         f"option to the runtime_env.")


def package_dir(path, excludes=()):
    """(uri, zip bytes) of a working_dir: a folder's contents at the zip's root, or a .zip
    file as is (the node uses its single top folder if it has one, as Ray)."""
    pkg = _packed("dir", os.path.abspath(path), tuple(excludes))
    return pkg.uri, _bytes_of(pkg, "dir", os.path.abspath(path), tuple(excludes))


def package_module(path, excludes=()):
    """(uri, zip bytes) of a py_modules entry: a package folder `mypkg` is packed as
    `mypkg/...` and a .py file at the root, so the unpacked folder on sys.path imports it;
    a .zip file is shipped as is."""
    pkg = _packed("module", os.path.abspath(path), tuple(excludes))
    return pkg.uri, _bytes_of(pkg, "module", os.path.abspath(path), tuple(excludes))


def _packed(kind, path, excludes):
    """The package of `path`, packed only when the tree changed since the last time in this
    process (the signature is each packed file's path, size, mtime and mode)."""
    entries = _entries(kind, path, excludes)
    key, signature = (kind, path, excludes), _signature(entries)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and hit[0] == signature:
        _check_size(hit[1].size)
        return hit[1]
    data = _zip_file_bytes(path, kind) if _is_zip_file(path) else _zip(entries)
    _check_size(len(data))
    pkg = _Package(URI_PREFIX + hashlib.sha256(data).hexdigest() + ".zip", len(data), data)
    with _cache_lock:
        _cache[key] = (signature, pkg)
    return pkg


def _bytes_of(pkg, kind, path, excludes):
    data = pkg.data
    if data is None:  # dropped after an upload: pack again (same content, same bytes)
        data = _zip_file_bytes(path, kind) if _is_zip_file(path) else _zip(_entries(kind, path, excludes))
        if URI_PREFIX + hashlib.sha256(data).hexdigest() + ".zip" != pkg.uri:
            raise ValueError(f"{path} changed while it was being packed for the runtime_env; try again.")
    return data


def _is_zip_file(path):
    return path.endswith(".zip") and os.path.isfile(path)


def _zip_file_bytes(path, kind="module"):
    """A user's .zip as shipped. As Ray, a working_dir zip whose entries all lie in one
    top-level folder is that folder: repacked here without it, so nodes unpack every
    package the same way."""
    with open(path, "rb") as f:
        data = f.read()
    if kind != "dir":
        return data
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
        tops = {i.filename.split("/", 1)[0] for i in infos}
        if len(tops) != 1 or not all("/" in i.filename for i in infos):
            return data
        top = tops.pop() + "/"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as out:
            for info in sorted(infos, key=lambda i: i.filename):
                name = info.filename[len(top):]
                if not name:
                    continue
                copy = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                copy.create_system, copy.external_attr = info.create_system, info.external_attr
                copy.compress_type = zipfile.ZIP_DEFLATED
                out.writestr(copy, zf.read(info))
        return buf.getvalue()


class _Entry:
    """One thing to put in the zip: its name there, and where it is on disk."""
    __slots__ = ("name", "source", "is_dir", "size", "mtime_ns", "mode")

    def __init__(self, name, source, st, is_dir):
        self.name = name
        self.source = source
        self.is_dir = is_dir
        self.size = 0 if is_dir else st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.mode = stat.S_IMODE(st.st_mode)


def _signature(entries):
    return tuple((e.name, e.size, e.mtime_ns, e.mode) for e in entries)


def _entries(kind, path, excludes):
    """The zip's entries for `path`, sorted by name."""
    if _is_zip_file(path):
        st = os.stat(path)
        return [_Entry("", path, st, False)]  # shipped as is; the entry only signs it
    if os.path.isfile(path):  # a single .py module
        return [_Entry(os.path.basename(path), path, os.stat(path), False)]
    prefix = os.path.basename(path.rstrip(os.sep)) + "/" if kind == "module" else ""
    entries = []
    if prefix:
        entries.append(_Entry(prefix, path, os.stat(path), True))
    for rel, source, st, is_dir in _walk(path, _Rules.for_root(excludes)):
        entries.append(_Entry(prefix + rel + ("/" if is_dir else ""), source, st, is_dir))
    entries.sort(key=lambda e: e.name)
    return entries


def _walk(root, rules):
    """(relative posix path, absolute path, stat, is_dir) of what to pack under root:
    excluded paths skipped (an excluded folder with all it holds), symlinked files followed,
    symlinked folders skipped (they may point anywhere, even at an ancestor)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        rules.read_gitignore(dirpath, rel_dir)
        kept = []
        for name in sorted(dirnames):
            source = os.path.join(dirpath, name)
            rel = rel_dir + "/" + name if rel_dir else name
            if os.path.islink(source) or rules.excluded(rel, True):
                continue
            kept.append(name)
            yield rel, source, os.stat(source), True
        dirnames[:] = kept
        for name in sorted(filenames):
            source = os.path.join(dirpath, name)
            rel = rel_dir + "/" + name if rel_dir else name
            if rules.excluded(rel, False):
                continue
            try:
                st = os.stat(source)  # follows a symlink
            except OSError:
                continue  # a broken symlink
            if not stat.S_ISREG(st.st_mode):
                continue  # sockets, fifos, devices
            yield rel, source, st, False


class _Rules:
    """Which paths not to pack: DEFAULT_EXCLUDES, the user's excludes (both relative to the
    packed folder) and the .gitignore files found while walking (each relative to its own
    folder). A subset of gitignore: `dir/` matches folders only, a leading or inner `/`
    anchors to the base folder, otherwise a pattern also matches any basename; `!` negation
    is not supported (such lines are ignored)."""

    def __init__(self):
        self.rules = []  # (base folder relative path, pattern, dir_only, anchored)

    @classmethod
    def for_root(cls, excludes):
        rules = cls()
        for pattern in (*DEFAULT_EXCLUDES, *excludes):
            rules.add("", pattern)
        return rules

    def add(self, base, pattern):
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#") or pattern.startswith("!"):
            return
        dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        anchored = "/" in pattern
        pattern = pattern.lstrip("/")
        if pattern:
            self.rules.append((base, pattern, dir_only, anchored))

    def read_gitignore(self, dirpath, rel_dir):
        path = os.path.join(dirpath, ".gitignore")
        if not os.path.isfile(path):
            return
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    self.add(rel_dir, line.rstrip("\n"))
        except OSError:
            pass

    def excluded(self, rel, is_dir):
        for base, pattern, dir_only, anchored in self.rules:
            if dir_only and not is_dir:
                continue
            if base:
                if not rel.startswith(base + "/"):
                    continue
                sub = rel[len(base) + 1:]
            else:
                sub = rel
            if _matches(sub, pattern, anchored):
                return True
        return False


def _matches(rel, pattern, anchored):
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    if pattern.startswith("**/") and _matches(rel, pattern[3:], anchored):
        return True
    return not anchored and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)


_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _warn_if_large(entry):
    """Warned when packing (not on every check of the tree), as Ray does."""
    if entry.size > LARGE_FILE_WARNING_BYTES:
        logger.warning("File %s is very large (%.2fMiB). Consider adding it to the runtime_env's "
                       "'excludes' list to skip uploading it.", entry.source, entry.size / 2**20)


def _compressible(head):
    """Whether deflating a file whose first bytes are `head` is worth it: data that is
    already compressed (arrays of floats, images, archives) is stored, which costs a CRC
    instead of ~25 ms per MiB of deflate. Decided from content only, so packing stays
    deterministic."""
    sample = head[:1 << 16]
    return len(sample) < 512 or len(zlib.compress(sample, 1)) < 0.9 * len(sample)


def _zip(entries):
    """Deterministic zip bytes: sorted entries, a fixed date, unix mode bits kept (so
    scripts stay executable); stops as soon as it is over the size limit."""
    limit = max_package_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=_ZIP_DATE)
            info.create_system = 3  # unix: external_attr holds the mode bits
            if entry.is_dir:
                info.external_attr = ((stat.S_IFDIR | entry.mode) << 16) | 0x10
                zf.writestr(info, b"")
            else:
                _warn_if_large(entry)
                info.external_attr = (stat.S_IFREG | entry.mode) << 16
                with open(entry.source, "rb") as src:
                    chunk = src.read(1 << 20)
                    info.compress_type = zipfile.ZIP_DEFLATED if _compressible(chunk) else zipfile.ZIP_STORED
                    with zf.open(info, "w", force_zip64=True) as dst:
                        while chunk:
                            dst.write(chunk)
                            chunk = src.read(1 << 20)
            if buf.tell() > limit:
                _check_size(buf.tell())
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# Canonical form, upload, inheritance


class _StoreState:
    """What this process knows about one store: the uris it holds, and resolve()'s
    earlier answers (only valid for that store, since they name uploaded packages)."""

    def __init__(self):
        self.uploaded = set()
        self.resolved = {}  # key -> (canonical json, time checked, reads local files)


_store_states = {}  # id(store) -> (weak reference to the store, its _StoreState)
_state_lock = threading.RLock()  # RLock: a store's weakref callback may run inside


def _state_of(store):
    """The store's state, by identity (a store need not be hashable); a fresh one each
    time for a store that cannot be weakly referenced (then nothing is remembered, which
    is correct, only slower)."""
    with _state_lock:
        entry = _store_states.get(id(store))
        if entry is not None and entry[0]() is store:
            return entry[1]
        try:
            ref = weakref.ref(store, lambda _, key=id(store): _forget_store(key))
        except TypeError:
            return _StoreState()
        state = _StoreState()
        _store_states[id(store)] = (ref, state)
        return state


def _forget_store(key):
    with _state_lock:
        entry = _store_states.get(key)
        if entry is not None and entry[0]() is None:
            del _store_states[key]


def forget_uploads():
    """Forgets which packages were uploaded (for a store object reused across clusters)."""
    with _state_lock:
        _store_states.clear()


def prepare(runtime_env, store):
    """The canonical dict of a validated runtime_env: local files packed and uploaded to
    `store` (only those it lacks), config present whenever anything else is."""
    return _complete(_prepare_fields(runtime_env, store))


def _prepare_fields(runtime_env, store):
    """The canonical fields without the default config: inheritance must know whether the
    user gave a config (a child's default must not replace the parent's)."""
    state = _state_of(store)
    excludes = tuple(runtime_env.get("excludes", ()))
    out = {}
    if runtime_env.get("env_vars"):
        out["env_vars"] = dict(runtime_env["env_vars"])
    if runtime_env.get("working_dir"):
        out["working_dir"] = _upload(state, store, "dir", runtime_env["working_dir"], excludes)
    if runtime_env.get("py_modules"):
        out["py_modules"] = [_upload(state, store, "module", m, excludes) for m in runtime_env["py_modules"]]
    packages = (runtime_env.get("pip") or {}).get("packages")
    if packages:
        out["pip"] = {"packages": list(packages)}
    if runtime_env.get("config"):
        out["config"] = dict(runtime_env["config"])
    return out


def _upload(state, store, kind, path, excludes):
    pkg = _packed(kind, path, excludes)
    if pkg.uri in state.uploaded:
        return pkg.uri
    if not store.exists(pkg.uri):
        store.upload(pkg.uri, _bytes_of(pkg, kind, path, excludes))
    state.uploaded.add(pkg.uri)
    pkg.data = None
    return pkg.uri


def _complete(canonical):
    if canonical and "config" not in canonical:
        canonical = dict(canonical, config=_default_config())
    return canonical


def merge(parent, child):
    """Ray's inheritance on canonical dicts: each field the child gives replaces the
    parent's, except env_vars, merged key by key with the child's winning."""
    if not child:
        return dict(parent or {})
    out = dict(parent or {})
    for key, value in child.items():
        if key == "env_vars":
            out["env_vars"] = {**out.get("env_vars", {}), **value}
        else:
            out[key] = value
    return _complete(out)


def dumps(canonical):
    """The string the core gets: stable for equal environments, "" for none."""
    if not canonical:
        return ""
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def resolve(option_value, parent_json, store):
    """The canonical JSON of a task's or actor's runtime_env option over its parent's.
    Repeated calls with equal values are cheap: answers are remembered per store, and one
    that ships local files is rechecked (a tree walk) at most every _RECHECK_SECONDS."""
    state = _state_of(store)
    key = _memo_key(option_value, parent_json)
    if key is not None:
        hit = state.resolved.get(key)
        if hit is not None and (not hit[2] or time.monotonic() - hit[1] < _RECHECK_SECONDS):
            return hit[0]
    validated = validate(option_value)
    child = _prepare_fields(validated, store)
    parent = json.loads(parent_json) if parent_json else {}
    result = dumps(merge(parent, child))
    if key is not None:
        if len(state.resolved) >= _MEMO_LIMIT:
            state.resolved.clear()
        reads_files = any(k in validated for k in ("working_dir", "py_modules", "pip"))
        state.resolved[key] = (result, time.monotonic(), reads_files)
    return result


def _memo_key(option_value, parent_json):
    """A key for resolve()'s memo, or None when the value has no stable text form. The
    current directory is part of it, since relative paths depend on it."""
    try:
        text = json.dumps(_as_dict(option_value, "runtime_env"), sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None
    return text, parent_json or "", os.getcwd()

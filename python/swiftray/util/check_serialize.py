"""inspect_serializability (Ray's ray.util.inspect_serializability): finds what in an
object cannot be pickled (a lock, a socket, a generator in a closure...)."""
import inspect
import sys

import cloudpickle


class FailureTuple:
    """One member that failed to pickle: the object, its name, and its parent's name."""

    def __init__(self, obj, name, parent):
        self.obj, self.name, self.parent = obj, name, parent

    def __repr__(self):
        return f"FailTuple({self.name} [obj={self.obj}, parent={self.parent}])"


def _picklable(obj):
    try:
        cloudpickle.dumps(obj)
        return True, None
    except Exception as e:  # noqa: BLE001 - any failure means "not serializable"
        return False, e


def _members(obj):
    """(name, value) of what `obj` holds: closure variables and globals it uses for a
    function, attributes for an object."""
    if inspect.isfunction(obj):
        out = []
        closure = inspect.getclosurevars(obj)
        for group in (closure.nonlocals, closure.globals):
            out += list(group.items())
        return out
    try:
        return list(vars(obj).items())
    except TypeError:
        return []


def _inspect(obj, name, parent, depth, failures, printer, indent):
    ok, err = _picklable(obj)
    if ok:
        return True
    printer(f"{'    ' * indent}Serializing {name!r} {obj!r}...")
    printer(f"{'    ' * indent}!!! FAIL serialization: {err}")
    found_deeper = False
    if depth > 0:
        for member_name, member in _members(obj):
            if not _inspect(member, member_name, obj, depth - 1, failures, printer, indent + 1):
                found_deeper = True
    if not found_deeper:
        failures.add(FailureTuple(obj, name, parent))
    return False


def inspect_serializability(base_obj, name=None, depth=3, print_file=None):
    """(serializable, failures): whether `base_obj` pickles, and the innermost members
    (up to `depth` levels down) that do not. Prints what it finds to `print_file`
    (default stdout)."""
    out = print_file or sys.stdout

    def printer(line):
        print(line, file=out)

    name = name or getattr(base_obj, "__name__", repr(base_obj))
    failures = set()
    printer("=" * 60)
    printer(f"Checking Serializability of {base_obj!r}")
    printer("=" * 60)
    ok = _inspect(base_obj, name, None, depth, failures, printer, 0)
    if ok:
        printer("Serialization succeeded.")
    else:
        printer("Variable: " + ", ".join(f.name for f in failures) + " failed to serialize.")
    printer("=" * 60)
    return ok, failures

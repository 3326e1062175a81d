"""User metrics, as Ray's `ray.util.metrics`: Counter, Gauge and Histogram.

Each process records into the Swift core (no lock in Python, no I/O on the call); the
core sends what was recorded to the head with its next report (about once a second),
and the head exports every process's metrics at its `/metrics` as `ray_<name>` (a
counter as `ray_<name>_total`), summed over processes. Start the head with
`swiftray start --head` (it serves `/metrics` on `--metrics-export-port`) or
`swiftray.init(_metrics_export_port=0)`.
"""
import re
from math import isfinite as _isfinite

from swiftray import _api, _core

__all__ = ["Counter", "Gauge", "Histogram"]

_VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_COUNTER, _GAUGE, _HISTOGRAM = 0, 1, 2


class Metric:
    """The parent of the three kinds: a name, a description, tag keys and default tags."""

    _kind = None

    def __init__(self, name, description="", tag_keys=None):
        if not isinstance(name, str):
            raise TypeError(f"a metric's name must be a str, got {type(name).__name__}")
        if len(name) == 0:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        if not _VALID_NAME.match(name):
            raise ValueError(f"Invalid metric name: {name!r}. Metric names can only contain letters, numbers, "
                             "_, and :, and cannot start with a number.")
        if not isinstance(description, str):
            raise TypeError(f"description must be a str, got {type(description).__name__}")
        if tag_keys is None:
            tag_keys = ()
        if not isinstance(tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(tag_keys)}")
        for key in tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")
        self._name = name
        self._description = description
        self._tag_keys = tag_keys
        self._default_tags = {}
        self._default_values = ()
        # The core's handle, per session (a new init() defines it again).
        self._handle = None
        self._session = None

    def set_default_tags(self, default_tags):
        """Tags used when a record gives none for a key (a dict of tag key to str)."""
        if not isinstance(default_tags, dict):
            raise TypeError(f"default_tags must be a dict, got {type(default_tags).__name__}")
        for key, value in default_tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key!r}: {self._name!r} has tag keys {self._tag_keys}.")
            if not isinstance(value, str):
                raise TypeError(f"Tag values must be str, got {type(value)}.")
        self._default_tags = dict(default_tags)
        self._default_values = tuple(self._default_tags.get(k) for k in self._tag_keys)
        return self

    @property
    def info(self):
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": dict(self._default_tags)}

    def _boundaries(self):
        return ()

    def _tag_values(self, tags):
        keys = self._tag_keys
        if not tags:
            if len(self._default_tags) == len(keys):
                return self._default_values
        elif type(tags) is dict and len(tags) == len(keys):
            # The common call: every key given, as str.
            try:
                values = tuple([tags[k] for k in keys])
            except KeyError:
                pass
            else:
                for v in values:
                    if type(v) is not str:
                        break
                else:
                    return values
        return self._checked_tag_values(tags)

    def _checked_tag_values(self, tags):
        if tags is not None and not isinstance(tags, dict):
            raise TypeError(f"tags must be a dict, got {type(tags).__name__}")
        merged = dict(self._default_tags)
        for key, value in (tags or {}).items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key!r}: {self._name!r} has tag keys {self._tag_keys}.")
            if not isinstance(value, str):
                raise TypeError(f"Tag values must be str, got {type(value)}.")
            merged[key] = value
        missing = [k for k in self._tag_keys if k not in merged]
        if missing:
            raise ValueError(f"Missing value for tag key(s): {', '.join(missing)}.")
        return tuple(merged[k] for k in self._tag_keys)

    def _record(self, value, tags):
        values = self._tag_values(tags)
        session = _api._state["session"]
        if self._handle is None or self._session != session:
            _api._ensure_init()
            self._handle = _core.metric_define(self._kind, self._name, self._description, self._tag_keys,
                                               self._boundaries())
            self._session = session
        # After shutdown() the core raises its "not initialized" error here.
        _core.metric_record(self._handle, float(value), values)


def _number(value, what):
    t = type(value)
    if t is float:
        if _isfinite(value):
            return value
    elif t is int:
        return value
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    elif _isfinite(value):
        return value
    raise ValueError(f"{what} must be finite, got {value!r}")


class Counter(Metric):
    """A cumulative metric that only goes up (Prometheus counter `ray_<name>_total`)."""

    _kind = _COUNTER

    def inc(self, value=1.0, tags=None):
        value = _number(value, "value")
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        self._record(value, tags)


class Gauge(Metric):
    """A value that goes up and down (Prometheus gauge `ray_<name>`); the latest set wins."""

    _kind = _GAUGE

    def set(self, value, tags=None):
        if value is None:
            return
        self._record(_number(value, "value"), tags)


class Histogram(Metric):
    """A distribution over buckets with these upper `boundaries` (Prometheus histogram
    `ray_<name>`)."""

    _kind = _HISTOGRAM

    def __init__(self, name, description="", boundaries=None, tag_keys=None):
        super().__init__(name, description, tag_keys)
        if boundaries is None or len(boundaries) == 0:
            raise ValueError("boundaries argument should be provided when using the Histogram class. "
                             "e.g., Histogram('name', boundaries=[1.0, 2.0])")
        bounds = []
        for i, b in enumerate(boundaries):
            b = _number(b, f"boundaries[{i}]")
            if b <= 0:
                raise ValueError(f"Invalid `boundaries` argument at index {i}, {boundaries}. "
                                 "Use positive values for the arguments.")
            if bounds and b <= bounds[-1]:
                raise ValueError(f"boundaries must be strictly increasing, got {boundaries}")
            bounds.append(float(b))
        self._bounds = tuple(bounds)

    def _boundaries(self):
        return self._bounds

    def observe(self, value, tags=None):
        self._record(_number(value, "value"), tags)

    @property
    def info(self):
        i = super().info
        i["boundaries"] = list(self._bounds)
        return i

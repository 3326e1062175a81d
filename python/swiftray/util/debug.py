"""log_once and friends (Ray's ray.util.debug): say a thing once per process."""
import threading
import time

_lock = threading.Lock()
_seen = set()
_disabled = False
_periodic_interval = None
_last_reset = time.monotonic()


def log_once(key):
    """True the first time `key` is seen in this process (again after each period when
    enable_periodic_logging() is on); always False after disable_log_once_globally()."""
    global _last_reset
    with _lock:
        if _disabled:
            return False
        if _periodic_interval is not None and time.monotonic() - _last_reset > _periodic_interval:
            _seen.clear()
            _last_reset = time.monotonic()
        if key in _seen:
            return False
        _seen.add(key)
        return True


def disable_log_once_globally():
    """log_once() returns False from now on (silences once-only messages)."""
    global _disabled
    _disabled = True


def enable_periodic_logging(interval_s=60.0):
    """log_once() says each key again every `interval_s` seconds."""
    global _periodic_interval
    _periodic_interval = float(interval_s)

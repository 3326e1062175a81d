"""When, where and how a benchmark result was measured (stored with its JSON)."""
import os
import platform
import shlex
import sys
import time


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def stamp():
    """The `measured` record of a result: today, this machine, the command that ran."""
    return {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
            "command": "python3 " + " ".join(shlex.quote(a) for a in sys.argv)}

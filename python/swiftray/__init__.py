"""swiftray: Ray's programming model for Python, with a core written in Swift.

    import swiftray as ray
    ray.init()

    @ray.remote
    def f(x):
        return x * 2

    ray.get([f.remote(i) for i in range(4)])
"""
from swiftray import _core, actor, exceptions, util
from swiftray._api import (available_resources, cancel, cluster_resources, get, init, is_initialized,
                           nodes, put, shutdown, timeline, wait)
from swiftray.actor import ActorHandle, exit_actor, get_actor, kill, method
from swiftray.object_ref import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator
from swiftray.remote_function import remote
from swiftray.runtime_context import get_gpu_ids, get_runtime_context

__version__ = _core.version()

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "cancel", "ObjectRef",
    "ObjectRefGenerator", "DynamicObjectRefGenerator",
    "get_runtime_context", "nodes", "timeline", "cluster_resources", "available_resources", "exceptions", "util",
    "method", "kill", "get_actor", "ActorHandle", "actor", "get_gpu_ids", "exit_actor",
]

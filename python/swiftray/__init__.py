"""swiftray: Ray's programming model for Python, with a core written in Swift."""
from swiftray import _core

__version__ = _core.version()

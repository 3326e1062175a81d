"""`import ray` (and `import ray.util.state`, …) resolves to swiftray: user code written
for Ray runs unchanged in the swiftray image."""
import sys

import swiftray
from swiftray._ray_alias import install

install()
sys.modules[__name__] = swiftray

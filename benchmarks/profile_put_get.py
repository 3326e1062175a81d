"""Profiling aid: one put and one get of the "put gigabytes" workload's 800 MB array,
with each step timed. Run it under `perf record -g python3 benchmarks/profile_put_get.py`
to see where the time goes (page faults, copies). Measures; asserts nothing."""
import time

import numpy as np

import swiftray as ray
from swiftray import _serialization

ray.init(num_cpus=1, log_to_driver=False)
arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)  # 800 MB, as ray_perf's put_large
for _ in range(2):
    ray.put(arr)
t0 = time.perf_counter()
packed = _serialization.pack(arr)
t1 = time.perf_counter()
ref = ray.ObjectRef(ray._core.put(packed.for_core()), _add_ref=False)
t2 = time.perf_counter()
items = ray._core.get([ref.binary()], None)
t3 = time.perf_counter()
value = _serialization.unpack(items[0][0])
t4 = time.perf_counter()
print(f"put: pack {t1 - t0:.3f} s, copy into the core {t2 - t1:.3f} s; "
      f"get: copy out of the core {t3 - t2:.3f} s, unpack {t4 - t3:.3f} s "
      f"(memcpy-equivalent at 20 GB/s: {arr.nbytes / 20e9:.3f} s)")
ray.shutdown()

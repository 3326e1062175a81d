"""The blog's second example as a Ray script, unchanged: run it with
`swiftray run examples/ray/fault_tolerance.py` (`import ray` resolves to swiftray).
"""
import logging
import os
import random
import ray

ray.init(logging_level=logging.WARNING)


@ray.remote(max_retries=-1)
def some_work():
    if random.randint(0, 2) == 1:
        return "some_result"
    os._exit(1)  # the worker process dies mid-task


print(f'result from Ray: {ray.get(some_work.remote())}')

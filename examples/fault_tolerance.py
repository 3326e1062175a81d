"""The blog's second example: the task's worker dies two times in three; the runtime
sees the death, warns, and runs the task again on a fresh worker.

`max_retries=-1` retries until it succeeds (the default, 3, would give up after four
deaths, which happens about one run in five at these odds).
"""
import logging
import os
import random
import swiftray as ray

ray.init(logging_level=logging.WARNING)


@ray.remote(max_retries=-1)
def some_work():
    if random.randint(0, 2) == 1:
        return "some_result"
    os._exit(1)  # the worker process dies mid-task


print(f'result from Ray: {ray.get(some_work.remote())}')

"""The blog's first example as a Ray script, unchanged: run it with
`swiftray run examples/ray/parallel_computing.py` (`import ray` resolves to swiftray).
"""
import os
import time
import logging
import ray


@ray.remote
def distributed_some_work():
    return some_work()


def some_work():
    time.sleep(1)
    return "some_result"


print(f'Number of CPUs: {os.cpu_count()}')


def run_local():
    results = [some_work() for _ in range(os.cpu_count())]
    return results


start_time = time.time()
print(f'result from local: {run_local()}')
end_time = time.time()
print(f'elapsed time (s): {(end_time - start_time)}')


def run_remote():
    results = ray.get([distributed_some_work.remote() for _ in range(os.cpu_count())])
    return results


start_time = time.time()
print(f'result from Ray: {run_remote()}')
end_time = time.time()
print(f'elapsed time (s): {(end_time - start_time)}')

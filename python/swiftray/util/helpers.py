"""as_completed and map_unordered (Ray's ray.util helpers): results as their tasks
finish, in batches of `chunk_size`, composed from wait and get."""
from swiftray import _api

DEFAULT_CHUNK_SIZE = 10
DEFAULT_BACKPRESSURE_SIZE = 100


def _next_batch(refs, chunk_size, yield_obj_refs, wait_kwargs):
    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    ready, rest = _api.wait(list(refs), num_returns=min(chunk_size, len(refs)), **wait_kwargs)
    return (ready if yield_obj_refs else _api.get(ready)), rest


def as_completed(refs, *, chunk_size=DEFAULT_CHUNK_SIZE, yield_obj_refs=False, **kwargs):
    """Yields the results of `refs` (or the refs, with yield_obj_refs=True) as batches of
    up to `chunk_size` of them are ready. Extra keyword arguments go to wait()
    (`timeout`, `fetch_local`)."""
    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    if "num_returns" in kwargs:
        raise ValueError("Use the `chunksize` argument instead of `num_returns`.")
    refs = list(refs)
    while refs:
        batch, refs = _next_batch(refs, chunk_size, yield_obj_refs, kwargs)
        yield from batch


def map_unordered(fn, items, *, backpressure_size=DEFAULT_BACKPRESSURE_SIZE, chunk_size=DEFAULT_CHUNK_SIZE,
                  yield_obj_refs=False, **kwargs):
    """Runs `fn.remote(item)` for each item with at most `backpressure_size` tasks in
    flight (None: no bound), yielding results as they finish."""
    if backpressure_size is None:
        backpressure_size = float("inf")
    elif backpressure_size <= 0:
        raise ValueError("backpressure_size must be positive.")
    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    if "num_returns" in kwargs:
        raise ValueError("Use the `chunk_size` argument instead of `num_returns`.")
    refs = []
    for item in items:
        refs.append(fn.remote(item))
        if len(refs) >= backpressure_size:
            batch, refs = _next_batch(refs, chunk_size, yield_obj_refs, kwargs)
            yield from batch
    yield from as_completed(refs, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs, **kwargs)

"""swiftray.util.joblib (Ray's ray.util.joblib): joblib's `Parallel` over the cluster.

    from swiftray.util.joblib import register_ray
    register_ray()
    with joblib.parallel_backend("ray"):
        Parallel(n_jobs=-1)(delayed(f)(x) for x in items)

joblib (and scikit-learn's `n_jobs`) then send their batches to a
`swiftray.util.multiprocessing.Pool` of actors, as many as `n_jobs` asks (-1: the
cluster's CPUs)."""


def register_ray():
    """Registers the "ray" backend with joblib (joblib must be installed)."""
    try:
        from joblib.parallel import register_parallel_backend
    except ImportError:
        raise ImportError("To use the ray backend you must install joblib (pip install joblib).") from None
    from swiftray.util.joblib.ray_backend import RayBackend
    register_parallel_backend("ray", RayBackend)


__all__ = ["register_ray"]

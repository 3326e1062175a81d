"""The joblib backend `register_ray` installs: joblib's multiprocessing backend, its pool
a `swiftray.util.multiprocessing.Pool` (whose processes are actors of the cluster)."""
from joblib._parallel_backends import MultiprocessingBackend


class RayBackend(MultiprocessingBackend):
    """joblib's pool-based backend over swiftray actors. Batches go to the pool with
    `apply_async`; joblib collects them through the callbacks the pool runs when each
    result has arrived (no thread per batch)."""

    supports_inner_max_num_threads = False

    def __init__(self, nesting_level=None, inner_max_num_threads=None, ray_remote_args=None, **kwargs):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)
        self._ray_remote_args = ray_remote_args

    def effective_n_jobs(self, n_jobs):
        """n_jobs of joblib's meaning over the cluster's CPUs (-1: all of them)."""
        from swiftray import _api
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            if not _api.is_initialized():
                _api.init()
            cpus = int(_api.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **unused_pool_args):
        """Makes the pool (joblib's memmapping options do not apply: arguments travel as
        objects of the cluster)."""
        from swiftray.util.multiprocessing import Pool
        n_jobs = self.effective_n_jobs(n_jobs)
        self._pool = Pool(processes=n_jobs, ray_remote_args=self._ray_remote_args)
        self.parallel = parallel
        return n_jobs

    def terminate(self):
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

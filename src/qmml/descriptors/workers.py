"""Worker processes for descriptor sums: a pool of spawned processes (each with its own
LAMMPS), kept for the life of the program."""
from __future__ import annotations

import os
from contextlib import contextmanager

from qmml import QmmlError


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise): an idle worker
    then holds ~100 MB instead of its last image's ~300 MB while the main process solves."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to release
        pass


# A pool of spawned processes, kept for the life of the program: starting a worker costs
# ~1 s of imports, paid once.  "spawn", not fork: LAMMPS has initialised MPI in the parent.
_POOL = None
_POOL_SIZE = 0


def parallel_map(func, potential, items: list, workers: int):
    """func(potential, item) for every item, in item order (in parallel when workers > 1)."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield func(potential, item)
        return
    from concurrent.futures.process import BrokenProcessPool

    pool = _pool(workers)
    with _one_blas_thread():
        futures = [pool.submit(func, potential, item) for item in items]  # largest first
    # results in submission order, so the caller's sums are added in the same order on
    # every run: the same inputs give a bit-identical potential.  Each future is dropped
    # once read: a finished one holds a 20 MB GᵀG (quadratic space) until released
    futures.reverse()
    while futures:
        future = futures.pop()
        try:
            yield future.result()
        except BrokenProcessPool:
            close_workers()
            raise QmmlError(f"descriptor worker processes died (workers={workers}); a "
                            "program read from stdin cannot start them, use workers=1 "
                            "there") from None


@contextmanager
def _one_blas_thread():
    """Workers start on demand during submit and inherit the environment: one BLAS thread
    each, so that they fill the cores without oversubscribing them."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_workers(workers: int) -> None:
    """Start the worker processes now, so their ~1 s of start-up and imports overlaps the
    caller's own work (reading the input files) instead of preceding the first job."""
    if workers > 1:
        pool = _pool(workers)
        with _one_blas_thread():
            for _ in range(workers):  # each submit finds no idle worker and spawns one
                pool.submit(_imported)


def _imported() -> int:
    """A no-op whose unpickling in a worker imports the descriptor modules (numpy, ASE,
    LAMMPS)."""
    return os.getpid()


def _pool(workers: int):
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE != workers:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        close_workers()
        _POOL = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        _POOL_SIZE = workers
    return _POOL


def close_workers() -> None:
    """Stop the worker processes (they are otherwise kept until the program exits)."""
    global _POOL, _POOL_SIZE
    if _POOL is not None:
        _POOL.shutdown(wait=True)
    _POOL, _POOL_SIZE = None, 0


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

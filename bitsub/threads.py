"""The engine's one thread policy beside BLAS, and its fork-safe pool.

Policy: one level of parallelism at a time.

- A large engine call is split into one part per engine thread (:func:`split`); the parts run on
  plain Python threads of one pool (:func:`engine_pool`) while the caller runs the first part.
  The Numba kernels release the GIL. Plain threads sleep when idle; Numba's OpenMP pool spins
  between parallel regions and, on few cores, stalls against BLAS's and torch's pools when the
  calls alternate.
- While a split runs, BLAS is held to one thread (threadpoolctl), so that parts which call BLAS
  (the decoded tiles of the large-batch matmul) do not each wake BLAS's own pool and
  oversubscribe the cores. The limit is process-wide while it lasts (another thread's BLAS call
  at that moment also runs on one thread) and is lifted when the last running split ends. A BLAS
  call the engine makes outside a split keeps BLAS's own threads.
- The number of engine threads is ``numba.config.NUMBA_NUM_THREADS`` (the environment variable
  ``NUMBA_NUM_THREADS``, by default the number of cores); set it to 1 for one core, and limit
  BLAS with threadpoolctl or ``OPENBLAS_NUM_THREADS`` as usual.

Fork: the pool's threads do not exist in a forked child (``os.fork``, multiprocessing's fork
start method, torch DataLoader workers); the child forgets the pool (``os.register_at_fork``)
and creates a fresh one on first use. The BLAS limit's bookkeeping is reset the same way.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba

__all__ = ["blas_one_thread", "engine_pool", "engine_threads", "split"]

_lock = threading.Lock()
_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_blas: Any = None  # threadpoolctl's BLAS controllers, found on first use (False: none)
_blas_users = 0
_blas_saved: list[int] = []


def engine_threads() -> int:
    """Number of threads a large engine call is split over (``NUMBA_NUM_THREADS``)."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def engine_pool() -> ThreadPoolExecutor:
    """The engine's pool of ``engine_threads() - 1`` worker threads (the caller is the other).

    Created on first use, and again in a forked child, whose copy of the parent's pool has no
    threads behind it.
    """
    global _pool
    pool = _pool
    if pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max(1, engine_threads() - 1),
                                           thread_name_prefix="bitsub")
            pool = _pool
    return pool


def _blas_controllers() -> list:
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover (a declared dependency)
            _blas = False
        else:
            _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas or []


@contextlib.contextmanager
def blas_one_thread() -> Iterator[None]:
    """Context manager: BLAS runs on one thread inside, with the threads it had outside.

    Nested and concurrent uses count: the first sets the limit, the last restores the threads
    BLAS had.
    """
    global _blas_users
    with _lock:
        if _blas_users == 0:
            libs = _blas_controllers()
            _blas_saved[:] = [lib.num_threads for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _lock:
            _blas_users -= 1
            if _blas_users == 0:
                _restore_blas()


def _restore_blas() -> None:
    for lib, n in zip(_blas_controllers(), _blas_saved):
        lib.set_num_threads(n)


def split(fn: Callable[..., Any], parts: Sequence[tuple]) -> list:
    """Run ``fn(*part)`` for every part, the first in the caller, the others on the pool.

    BLAS runs on one thread meanwhile (see the module's policy). Returns the results in the
    order of ``parts``; the first exception raised by a part is raised after all have ended.
    """
    if len(parts) < 2 or getattr(_local, "worker", False):
        # A part that splits again runs its parts itself: waiting on the pool from one of its
        # own threads could wait forever.
        return [fn(*p) for p in parts]
    with blas_one_thread():
        pool = engine_pool()
        futures = [pool.submit(_as_worker, fn, *p) for p in parts[1:]]
        try:
            first = fn(*parts[0])
        finally:
            rest = [f.exception() for f in futures]  # wait for every part
        for err in rest:
            if err is not None:
                raise err
        return [first, *(f.result() for f in futures)]


def _as_worker(fn: Callable[..., Any], *args: Any) -> Any:
    _local.worker = True
    return fn(*args)


def _after_fork_in_child() -> None:
    # The parent's pool threads and any split that was running do not exist here.
    global _pool, _lock, _blas_users
    _pool = None
    _lock = threading.Lock()
    if _blas_users:  # a split of another thread held BLAS at one thread: give them back
        _restore_blas()
    _blas_users = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""Numba compilation of every K-Means path up front, for long processes.

`kmeans_1d` takes one of several paths (exact DP, binned cells, coarse levels, Lloyd) by how
many values and centroids it gets, and Numba compiles a path's kernels the first time it runs.
"""

from __future__ import annotations

import numpy as np

from bitsub.quant.kmeans import METHODS, kmeans_1d

__all__ = ["compile_kernels"]

_COMPILED: set[str] = set()


def compile_kernels(method: str = "auto") -> None:
    """Run `kmeans_1d` once on each of its paths, so that Numba compiles their kernels now.

    Which path a call takes depends on how many values and centroids it gets, so a long process
    (a continual run's bit-width search, task after task) otherwise compiles a path the first
    time a later task takes it: 1-3 MiB of memory at that task, once per process. Calling this
    first moves that one-off cost before the first task. Once per process and method; the
    results of later calls do not depend on it.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in _COMPILED:
        return
    rng = np.random.default_rng(0)
    for n, k in ((1000, 2), (1000, 4), (20000, 16), (300000, 64), (300000, 256)):
        kmeans_1d(rng.standard_normal(n).astype(np.float32), k, method=method)
    _COMPILED.add(method)

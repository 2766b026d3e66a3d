"""Fine bins of 1-D values with their exact per-bin count, sum and sum of squares, in O(n).

The value range is cut into ``cells`` equal cells; one pass over the (unsorted) values gives,
per cell, the number of values and the sum and sum of squares of their offsets from the cell's
left edge ``lo + g * width`` (offsets, so that a cell's own SSE does not cancel against the
square of its position). The non-empty cells are then sufficient statistics for any clustering
whose boundaries lie on cell edges: :func:`cell_prefix` turns them into the prefix counts, sums
and sums of squares (centred, Kahan-compensated) that the exact dynamic program of
:mod:`bitsub.quant.dp` reads, as if every cell were one weighted group of sorted values.

Both passes over the values are split over the engine threads (:mod:`bitsub.threads`), one
private set of cells per part, added up afterwards.
"""

from __future__ import annotations

import numba
import numpy as np

from bitsub.config import NJIT
from bitsub.threads import engine_threads, split

__all__ = ["cell_prefix", "cell_stats", "value_range"]

# Values per part below which a pass is not split over threads (a hand-off costs ~50 us).
SPLIT_MIN = 1 << 16


@numba.njit(**NJIT)
def _range_part(x, out, row):
    lo = np.inf
    hi = -np.inf
    bad = False
    for i in range(x.size):
        v = np.float64(x[i])
        if v < lo:
            lo = v
        if v > hi:
            hi = v
        if v != v:
            bad = True
    out[row, 0] = lo
    out[row, 1] = hi
    out[row, 2] = 1.0 if bad else 0.0


@numba.njit(**NJIT)
def _stats_part(x, lo, scale, width, cnt, sl, ql):
    last = cnt.size - 1
    for i in range(x.size):
        v = np.float64(x[i])
        g = np.int64((v - lo) * scale)
        if g > last:
            g = last
        if g < 0:
            g = 0
        d = v - (lo + g * width)
        cnt[g] += 1.0
        sl[g] += d
        ql[g] += d * d


def _parts(n: int) -> list[tuple[int, int]]:
    p = max(1, min(engine_threads(), n // SPLIT_MIN))
    step = -(-n // p)
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def value_range(x: np.ndarray) -> tuple[float, float, bool]:
    """Least and greatest value of the flat array ``x`` and whether it holds a NaN."""
    parts = _parts(x.size)
    out = np.empty((len(parts), 3))
    split(lambda a, b, r: _range_part(x[a:b], out, r),
          [(a, b, r) for r, (a, b) in enumerate(parts)])
    return float(out[:, 0].min()), float(out[:, 1].max()), bool(out[:, 2].any())


def cell_stats(
    x: np.ndarray, lo: float, hi: float, cells: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-cell count, sum and sum of squares of offsets from the cell's left edge.

    Cell g covers ``[lo + g * width, lo + (g + 1) * width)`` with ``width = (hi - lo) / cells``
    (the last one also holds ``hi``; a value that rounds past an end goes to the end cell).
    Requires ``lo < hi`` and every value in ``[lo, hi]``. Returns ``cnt, sl, ql`` (float64,
    ``cells`` each) and ``width``.
    """
    width = (hi - lo) / cells
    scale = cells / (hi - lo)
    parts = _parts(x.size)
    acc = np.zeros((len(parts), 3, cells))
    split(lambda a, b, r: _stats_part(x[a:b], lo, scale, width, acc[r, 0], acc[r, 1], acc[r, 2]),
          [(a, b, r) for r, (a, b) in enumerate(parts)])
    tot = acc.sum(axis=0) if len(parts) > 1 else acc[0]
    return tot[0], tot[1], tot[2], width


@numba.njit(**NJIT)
def cell_prefix(cnt, sl, ql, lo, width, center):
    """Prefix sums over the non-empty cells, centred on ``center``, and each cell's own SSE.

    Returns ``w, s, q`` (length m + 1 for m non-empty cells: prefix counts, sums and sums of
    squares of ``value - center``, Kahan-compensated), ``u`` (each non-empty cell's mean minus
    ``center``, ascending) and ``own`` (each non-empty cell's SSE about its mean, clamped at 0).
    """
    cells = cnt.size
    m = 0
    for g in range(cells):
        if cnt[g] > 0.0:
            m += 1
    w = np.empty(m + 1)
    s = np.empty(m + 1)
    q = np.empty(m + 1)
    u = np.empty(m)
    own = np.empty(m)
    w[0] = 0.0
    s[0] = 0.0
    q[0] = 0.0
    cs = 0.0
    cq = 0.0
    es = 0.0
    eq = 0.0
    j = 0
    for g in range(cells):
        c = cnt[g]
        if c <= 0.0:
            continue
        e = (lo + g * width) - center
        a = sl[g]
        b = ql[g]
        own_j = b - a * a / c
        own[j] = own_j if own_j > 0.0 else 0.0
        u[j] = e + a / c
        gs = a + c * e
        gq = b + 2.0 * e * a + c * e * e
        y = gs - es
        t = cs + y
        es = (t - cs) - y
        cs = t
        y = gq - eq
        t = cq + y
        eq = (t - cq) - y
        cq = t
        j += 1
        w[j] = w[j - 1] + c
        s[j] = cs
        q[j] = cq
    return w, s, q, u, own

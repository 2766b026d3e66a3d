"""One-dimensional K-Means codebooks: exact dynamic programming and a sorted Lloyd.

In one dimension an optimal clustering splits the sorted values into contiguous runs; the exact
dynamic program over them lives in :mod:`bitsub.quant.dp` (O(k m log m) for m distinct values
on every input, prefix sums centred on the median and Kahan-compensated).

Methods
-------
``"optimal"``
    The exact DP over the distinct values (weighted by their counts); memory stays bounded for
    large k * m (the argmin rows are unary-coded, or checkpointed beyond that).
``"lloyd"``
    Lloyd's algorithm on the sorted distinct values, started from the quantiles: an assignment
    is k - 1 binary searches for the midpoints between centroids and an update is k prefix-sum
    differences, so an iteration costs O(k log n).
``"auto"``
    The exact DP when its cost (about k * m * log2(m) run costs) fits a budget: 10^6 run
    costs, and below 2^15 values at most 4 a value, so that the DP does not outweigh the
    O(n) passes on small inputs. Otherwise coarse to fine: the exact DP over coarse groups of
    consecutive distinct values, then exact DPs on finer groups with each boundary held within
    a band around the coarser solution, then Lloyd until no boundary moves. When even 4k
    coarse groups exceed the budget (large k for n), the top level is a lean one of about 2k
    to 3k groups, each holding at most half of a cluster's estimated SSE.
    From 2^15 values on (k > 1) the groups are not sorted distinct values but fine cells of the
    value range (:mod:`bitsub.quant.bins`: one O(n) pass over the unsorted values, about 16 a
    cell, at most 2^16 cells), whose exact counts, sums and sums of squares stand for their
    values; every boundary then lies on a cell edge, and the final nearest-centroid assignment
    moves each value to its nearest centroid. The cells are kept only when none holds more
    than 1e-4 of the estimated SSE per cluster; else (outliers stretching the range, too few
    values for k) the sorted path runs. The cell sums depend on how the values are split over
    the engine threads, so a result may differ in the last bits with ``NUMBA_NUM_THREADS``.

Every method ends with the nearest-centroid assignment to the float32 centroids, so
``centroids[codes]`` is each value's nearest codebook entry.
"""

from __future__ import annotations

import math
import operator

import numba
import numpy as np

from bitsub.config import NJIT
from bitsub.quant.bins import cell_prefix, cell_stats, value_range
from bitsub.quant.dp import distinct_prefix, partition, refine_band
from bitsub.threads import engine_threads, split
from bitsub.validate import check_int

__all__ = ["kmeans_1d", "quantize"]

MAX_K = 65536
METHODS = ("auto", "optimal", "lloyd")

# "auto" runs the exact DP when k * m * log2(m) is below this many cost evaluations.
_AUTO_EXACT_WORK = 1_000_000
_LLOYD_MAX_ITER = 2000
# "auto": the top level has as many groups as the exact-DP budget allows (at least
# _AUTO_GROUPS_PER_K * k); levels differ by a factor _AUTO_REFINE in group size, down to the
# distinct values; a group's SSE stays below the estimated SSE per cluster / _AUTO_TAU_DIV
# (times the cube of the group-size ratio on lower levels); a band spans _AUTO_BAND groups of
# the coarser level either side of its boundary.
_AUTO_GROUPS_PER_K = 4
_AUTO_REFINE = 4
_AUTO_TAU_DIV = 64.0
_AUTO_BAND = 8
_AUTO_MAX_RECENTRE = 20
_AUTO_LEAN_GROUPS_PER_K = 2
_AUTO_LEAN_MAX = 3
_AUTO_LEAN_TAU_DIV = 2.0
# "auto": run costs of the exact DP allowed per value (the budget is at most _AUTO_EXACT_WORK).
_AUTO_WORK_PER_VALUE = 4.0
# "auto" from _AUTO_BINS_MIN_N values on: fine cells instead of the sort (about _AUTO_PER_CELL
# values a cell, at most _AUTO_MAX_CELLS cells), kept when no cell's own SSE exceeds
# _AUTO_CELL_SSE times the estimated SSE per cluster (else the sorted path runs).
_AUTO_BINS_MIN_N = 1 << 15
_AUTO_PER_CELL = 16
_AUTO_MIN_CELLS = 1 << 12
_AUTO_MAX_CELLS = 1 << 16
_AUTO_CELL_SSE = 1e-4
# Values per thread below which the nearest-centroid assignment is not split.
_ASSIGN_SPLIT_MIN = 1 << 16


# ------------------------------------------------------------------------ kernels


@numba.njit(**NJIT)
def _merge_groups(w, s, q, b, target, tau):
    """Coarser groups from the groups with boundaries ``b`` (indices into the prefix sums).

    Merges consecutive groups while the merged group holds fewer than ``target`` values and its
    SSE stays within ``tau``. Returns the coarser boundaries, a subset of ``b``.
    """
    out = np.empty(b.size, dtype=np.int64)
    out[0] = b[0]
    no = 1
    g0 = b[0]
    for i in range(1, b.size - 1):
        close = w[b[i]] - w[g0] >= target
        if not close:
            e = b[i + 1]
            cw = w[e] - w[g0]
            cs = s[e] - s[g0]
            close = (q[e] - q[g0]) - cs * cs / cw > tau
        if close:
            out[no] = b[i]
            no += 1
            g0 = b[i]
    out[no] = b[b.size - 1]
    return out[: no + 1]


@numba.njit(**NJIT)
def _lloyd_weighted(u, w, s, c, max_iter):
    """Lloyd's iterations on sorted distinct values u (prefix counts w, sums s), in place on c.

    ``c`` holds ascending centroids in the same (centred) coordinates as u. An assignment is
    k - 1 binary searches for the midpoints between centroids; an update is k prefix-sum
    differences. Stops at a fixed point (no boundary moves) or after max_iter iterations.
    Returns the number of iterations run.
    """
    m = u.size
    k = c.size
    b = np.full(k + 1, -1, dtype=np.int64)
    nb = np.zeros(k + 1, dtype=np.int64)
    nb[k] = m
    it = 0
    while it < max_iter:
        it += 1
        for j in range(1, k):
            v = 0.5 * (c[j - 1] + c[j])
            lo = nb[j - 1]
            hi = m
            while lo < hi:
                mid = (lo + hi) >> 1
                if u[mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            nb[j] = lo
        changed = False
        for j in range(k + 1):
            if nb[j] != b[j]:
                changed = True
                b[j] = nb[j]
        if not changed:
            break
        for j in range(k):
            cnt = w[b[j + 1]] - w[b[j]]
            if cnt > 0:
                c[j] = (s[b[j + 1]] - s[b[j]]) / cnt
    return it


@numba.njit(**NJIT)
def _assign_nearest(values, mids, table, sure, base, scale, first, codes):
    """codes[i] = first[number of midpoints strictly below values[i]]: the nearest centroid.

    A uniform grid starts at ``base`` (at or below every value); a value falls in cell
    ``g = (v - base) * scale``. ``table[g]`` counts the midpoints below the cell's left edge;
    ``sure[g]`` is that count when no midpoint lies in the cell or its two neighbours (so a
    rounding error in g cannot matter), else -1 and the count is walked to from ``table[g]``.
    """
    nm = mids.size
    last = sure.size - 1
    for i in range(values.size):
        v = np.float64(values[i])
        g = np.int64((v - base) * scale)
        if g > last:
            g = last
        c = sure[g]
        if c < 0:
            c = table[g]
            while c < nm and mids[c] < v:
                c += 1
            while c > 0 and mids[c - 1] >= v:
                c -= 1
        codes[i] = first[c]


@numba.njit(**NJIT)
def _panter_dite(w, u, spread, k):
    """:func:`_sse_per_cluster_estimate` over groups (prefix counts w, ascending values u).

    The groups are cut at the 16 k quantiles by count; a bin from value a to value b (plus
    ``spread``, the width of one group) holding c of the n values adds
    ``(b - a + spread)^(2/3) (c / n)^(1/3)`` to the integral of f^(1/3).
    """
    m = u.size
    n = w[m]
    nb = 16 * k
    step = n / nb
    integral = 0.0
    prev = 0
    cut = 0
    for i in range(1, nb + 1):
        if i < nb:  # the first prefix count at or above i n / nb
            target = i * step
            while w[cut] < target:
                cut += 1
        else:
            cut = m
        if cut <= prev:
            continue
        width = u[cut - 1] - u[prev] + spread
        if width > 0.0:
            integral += np.cbrt(width * width * ((w[cut] - w[prev]) / n))
        prev = cut
    return n / (12.0 * k * k) * integral**3 / k


@numba.njit(**NJIT)
def _lookup(cent, lo, scale, cells):
    """Tables for :func:`_assign_nearest` from the ascending float32 codebook ``cent``.

    Returns the midpoints between its distinct entries (float64), ``first`` (the first index
    of each distinct entry), and over the grid of ``cells`` cells from ``lo`` (cell width
    1 / scale, or every edge at ``lo`` when scale is 0) ``table`` (midpoints below each of
    the cells + 1 edges) and ``sure`` (see :func:`_assign_nearest`).
    """
    nu = 1
    for i in range(1, cent.size):
        if cent[i] != cent[i - 1]:
            nu += 1
    first = np.empty(nu, dtype=np.int64)
    mids = np.empty(nu - 1)
    first[0] = 0
    j = 0
    for i in range(1, cent.size):
        if cent[i] != cent[i - 1]:
            mids[j] = 0.5 * (np.float64(cent[i - 1]) + np.float64(cent[i]))
            j += 1
            first[j] = i
    table = np.empty(cells + 1, dtype=np.int64)
    c = 0
    for g in range(cells + 1):
        e = lo + g / scale if scale > 0.0 else lo
        while c < nu - 1 and mids[c] < e:
            c += 1
        table[g] = c
    sure = np.empty(cells, dtype=np.int64)
    for g in range(cells):
        before = table[max(g - 1, 0)]
        after = table[min(g + 2, cells)]
        sure[g] = table[g] if before == after else -1
    sure[cells - 1] = -1  # where the top value lands when rounding carries it past the last edge
    return mids, first, table, sure


@numba.njit(**NJIT)
def _append(out, used, b):
    """``b`` written at ``out[used:]``, growing ``out`` when full; the array and its new fill."""
    if used + b.size > out.size:
        grown = np.empty(2 * (used + b.size), dtype=np.int64)
        grown[:used] = out[:used]
        out = grown
    out[used:used + b.size] = b
    return out, used + b.size


@numba.njit(**NJIT)
def _levels(w, s, q, k, top, tau, refine, lean_max, lean_top, lean_tau):
    """The levels of groups for :func:`_auto`, finest (the m groups of w, s, q) first.

    Level L + 1 merges level L's groups (:func:`_merge_groups`) up to ``refine`` times as many
    values, with the SSE cap ``tau * (size / top)^3``, up to about ``top`` values a group; a
    level of at most 2k groups is not kept. With ``lean_max`` > 0 and more than ``lean_max``
    groups at the top, one more level merges them up to ``lean_top`` values and SSE ``lean_tau``
    (kept when it has more than k groups). A level with more than 3/4 of the groups of the
    level below takes its place (the finest stays). Returns the boundaries of all levels in
    one array and the offsets of each level's in it.
    """
    m = w.size - 1
    cur = np.arange(m + 1)
    out = np.empty(2 * (m + 1), dtype=np.int64)
    offs = np.zeros(64, dtype=np.int64)
    nl = 0
    used = 0
    out, used = _append(out, used, cur)
    nl += 1
    offs[nl] = used
    target = 1.0
    while target < top and nl < 62:
        target *= refine
        b = _merge_groups(w, s, q, cur, target, tau * min(1.0, target / top) ** 3)
        if b.size - 1 <= 2 * k:
            break
        if nl > 1 and 4 * (b.size - 1) > 3 * (cur.size - 1):
            nl -= 1  # hardly coarser: it takes the place of the level below
            used = offs[nl]
        out, used = _append(out, used, b)
        nl += 1
        offs[nl] = used
        cur = b
    if lean_max > 0 and cur.size - 1 > lean_max:
        b = _merge_groups(w, s, q, cur, lean_top, lean_tau)
        if b.size - 1 > k:
            if nl > 1 and 4 * (b.size - 1) > 3 * (cur.size - 1):
                nl -= 1
                used = offs[nl]
            out, used = _append(out, used, b)
            nl += 1
            offs[nl] = used
    return out[:used], offs[: nl + 1]


@numba.njit(**NJIT)
def _refine_levels(w, s, q, flat, offs, t, band, max_recentre):
    """Boundaries ``t`` on the top level of :func:`_levels` carried down to the finest level.

    On each level the exact DP reruns with every boundary held within ``band`` groups (of the
    level above) either side of where it was (:func:`~bitsub.quant.dp.refine_band`).
    """
    nl = offs.size - 1
    for lev in range(nl - 2, -1, -1):
        coarse = flat[offs[lev + 1]:offs[lev + 2]]
        fine = flat[offs[lev]:offs[lev + 1]]
        mc = coarse.size - 1
        pos = np.searchsorted(fine, coarse[t])
        lo = np.searchsorted(fine, coarse[np.maximum(t - band, 0)])
        hi = np.searchsorted(fine, coarse[np.minimum(t + band, mc)])
        if lev == 0:  # the finest level: the groups of w, s, q themselves
            t = refine_band(w, s, q, pos, lo, hi, max_recentre)
        else:
            t = refine_band(w[fine], s[fine], q[fine], pos, lo, hi, max_recentre)
    return t


# ------------------------------------------------------------------------ Python layer


def _check_values(values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"values must be a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError("values is empty: K-Means needs at least one value")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64)
    return arr


def _check_sorted(x: np.ndarray) -> None:
    # NaN sorts last and -inf first, so the ends of the sorted values tell all.
    if not (np.isfinite(x[0]) and np.isfinite(x[-1])):
        raise ValueError("values contain NaN or inf; remove or replace them first")
    if max(-float(x[0]), float(x[-1])) > float(np.finfo(np.float32).max):
        raise ValueError("values exceed the float32 range of the codebook; rescale them first")


def _finish(
    values: np.ndarray, centroids64: np.ndarray, k: int, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 ascending codebook of length k (padded) and nearest-centroid codes.

    ``lo`` and ``hi`` are the least and greatest value (the range of the lookup grid).
    """
    cent = centroids64.astype(np.float32)
    cent = np.maximum.accumulate(cent)
    if cent.size < k:
        cent = np.concatenate([cent, np.full(k - cent.size, cent[-1], dtype=np.float32)])
    # Assign over the distinct centroids, then map to the first index of each value, so that
    # a code never names a later duplicate.
    codes = np.empty(values.size, dtype=np.uint8 if k <= 256 else np.uint16)
    cells = min(max(4096, 64 * k), 1 << 20)
    scale = cells / (hi - lo) if hi > lo else 0.0
    if not math.isfinite(scale):  # a subnormal range: one cell, and the walk does the rest
        scale = 0.0
    mids, first, table, sure = _lookup(cent, float(lo), scale, cells)
    flat = values.reshape(-1)
    n = flat.size
    parts = max(1, min(engine_threads(), n // _ASSIGN_SPLIT_MIN))
    step = -(-n // parts)
    split(lambda a, b: _assign_nearest(flat[a:b], mids, table, sure, float(lo), scale, first,
                                       codes[a:b]),
          [(a, min(n, a + step)) for a in range(0, n, step)])
    return cent, codes.reshape(values.shape)


class _Distinct:
    """Sorted groups of values (centred): prefix counts, sums and sums of squares, and u.

    Built from sorted values (:meth:`of_sorted`: one group per distinct value, ``u`` the
    values) or from fine bins (:func:`_binned`: one group per non-empty cell, ``u`` its mean).
    """

    def __init__(
        self, w: np.ndarray, s: np.ndarray, q: np.ndarray, u: np.ndarray, spread: float = 0.0
    ) -> None:
        self.w, self.s, self.q, self.u = w, s, q, u
        self.m = self.u.size
        self.spread = spread  # how wide one group may be: 0 for a value, a cell's width

    @classmethod
    def of_sorted(cls, x: np.ndarray, center: float) -> _Distinct:
        return cls(*distinct_prefix(x, center))

    def means(self, t: np.ndarray) -> np.ndarray:
        return (self.s[t[1:]] - self.s[t[:-1]]) / (self.w[t[1:]] - self.w[t[:-1]])


def _optimal(d: _Distinct, k: int) -> np.ndarray:
    """Exact DP over the distinct values; centred centroids (min(k, m) of them)."""
    kk = min(k, d.m)
    return d.means(partition(d.w, d.s, d.q, kk))


def _lloyd(d: _Distinct, k: int) -> np.ndarray:
    """Lloyd from the k quantiles (by count) of the values."""
    if d.m <= k:
        return d.u.copy()
    n = d.w[-1]
    idx = np.searchsorted(d.w, (np.arange(k) + 0.5) * n / k, side="right") - 1
    c = d.u[np.clip(idx, 0, d.m - 1)].copy()
    _lloyd_weighted(d.u, d.w, d.s, c, _LLOYD_MAX_ITER)
    return c


def _sse_per_cluster_estimate(d: _Distinct, k: int) -> float:
    """Panter-Dite estimate of the optimal SSE per cluster, from a coarse quantile histogram.

    High-rate theory: the optimal SSE is about ``n / (12 k^2) * (integral of f^(1/3))^3`` and
    every cluster contributes about the same share of it.
    """
    return _panter_dite(d.w, d.u, d.spread, k)


def _dp_work(k: int, m: int) -> float:
    """Run costs the exact DP evaluates for k runs of m groups: k m log2(m), 2m for k <= 2."""
    if k <= 2:
        return 2.0 * m
    return k * m * max(1.0, math.log2(m))


def _auto(d: _Distinct, k: int) -> np.ndarray:
    """Coarse-to-fine DP: exact over coarse groups, then exact within bands on finer groups.

    Groups of consecutive distinct values are capped by a count and by their own SSE (a small
    fraction of the estimated SSE per cluster), so that they stay small in the sparse tails,
    where optimal clusters hold few values. The top level is solved exactly; it has as many
    groups as the work budget allows (``_AUTO_WORK_PER_VALUE`` run costs a value below 2^15
    values, at most ``_AUTO_EXACT_WORK``), at least 4k; when 4k groups exceed the budget and
    the top holds more than 3k groups, one more merged level goes on top (the "lean" top, about
    2k groups: up to ``n / 2k`` values and ``1 / _AUTO_LEAN_TAU_DIV`` of the estimated SSE per
    cluster a group). Each lower level is re-solved exactly with every boundary held within
    ``_AUTO_BAND`` groups of the level above (bands move and the DP reruns while a boundary
    sits on an edge). Lloyd on the distinct values polishes the result.
    """
    m = d.m
    n = float(d.w[-1])
    work = _AUTO_EXACT_WORK
    if n < _AUTO_BINS_MIN_N:
        work = min(work, _AUTO_WORK_PER_VALUE * n)
    if m <= k or _dp_work(k, m) <= work:
        return _optimal(d, k)
    groups = _AUTO_GROUPS_PER_K * k
    while _dp_work(k, 2 * groups) <= work:
        groups *= 2
    est = _sse_per_cluster_estimate(d, k)
    tau = est / _AUTO_TAU_DIV
    lean = _dp_work(k, groups) > work
    top = max(1.0, n / groups)
    if lean:  # one more level of about _AUTO_LEAN_GROUPS_PER_K * k groups on top
        flat, offs = _levels(d.w, d.s, d.q, k, top, tau, _AUTO_REFINE, _AUTO_LEAN_MAX * k,
                             n / (_AUTO_LEAN_GROUPS_PER_K * k), est / _AUTO_LEAN_TAU_DIV)
    else:
        flat, offs = _levels(d.w, d.s, d.q, k, top, tau, _AUTO_REFINE, 0, 0.0, 0.0)
    b = flat[offs[-2]:offs[-1]]
    t = partition(d.w[b], d.s[b], d.q[b], k)
    t = _refine_levels(d.w, d.s, d.q, flat, offs, t, _AUTO_BAND, _AUTO_MAX_RECENTRE)
    c = d.means(t)
    _lloyd_weighted(d.u, d.w, d.s, c, _LLOYD_MAX_ITER)
    return c


def _binned(flat: np.ndarray, k: int, lo: float, hi: float) -> tuple[_Distinct, float] | None:
    """Fine cells of the values as groups for :func:`_auto` and their centre, or None.

    None when some cell holds more spread than a small fraction of the estimated SSE per
    cluster (outliers stretching the range, say), or the range is too small to be cut (a
    subnormal width): then the cells are too coarse for the contract of ``"auto"`` and the
    sorted path runs; also when at most k cells hold values (k or fewer distinct ones?).
    """
    n = flat.size
    cells = 1 << int(math.ceil(math.log2(max(1.0, n / _AUTO_PER_CELL))))
    cells = min(max(cells, _AUTO_MIN_CELLS), _AUTO_MAX_CELLS)
    if not math.isfinite(cells / (hi - lo)):  # a subnormal range
        return None
    cnt, sl, ql, width = cell_stats(flat, lo, hi, cells)
    if np.count_nonzero(cnt) <= k:  # maybe at most k distinct values: the sort keeps them exact
        return None
    g = int(np.searchsorted(np.cumsum(cnt), n // 2 + 1))  # the median's cell
    center = lo + min(g, cells - 1) * width
    w, s, q, u, own = cell_prefix(cnt, sl, ql, lo, width, center)
    d = _Distinct(w, s, q, u, width)
    if float(own.max()) > _AUTO_CELL_SSE * _sse_per_cluster_estimate(d, k):
        return None
    return d, center


def kmeans_1d(values: np.ndarray, k: int, *, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """One-dimensional K-Means: a codebook of k float32 centroids and one code per value.

    Parameters
    ----------
    values : array_like of float
        Values to cluster, any shape (flattened inside). Must be finite and non-empty.
    k : int
        Number of centroids, 1..65536.
    method : {"auto", "optimal", "lloyd"}
        ``"optimal"``: the exact minimum SSE (dynamic programming over the sorted distinct
        values). ``"lloyd"``: Lloyd's algorithm on the sorted values from quantiles (fast, a
        local optimum). ``"auto"``: exact when cheap, else exact over coarse groups of sorted
        values (or, for 2^15 values and more, of fine cells of their range) refined level by
        level within bands, then polished by Lloyd; not guaranteed optimal (see the module).

    Returns
    -------
    centroids : ndarray of float32, shape (k,)
        Ascending (non-decreasing) codebook. With fewer than k distinct values, the centroids
        are those values and the last one is repeated to fill k entries (unused codes).
    codes : ndarray of uint8 (k <= 256) or uint16, shape of ``values``
        Index of each value's nearest centroid (the first one on a tie), so that
        ``centroids[codes]`` is the quantized array.

    Raises
    ------
    TypeError
        If ``values`` is not numeric or ``k`` not an integer.
    ValueError
        If ``values`` is empty or not finite, ``k`` out of range or ``method`` unknown.
    """
    kk = check_int(k, "k", 1, MAX_K)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    arr = _check_values(values)
    if method == "auto" and arr.size >= _AUTO_BINS_MIN_N and kk > 1:
        flat = arr.reshape(-1)
        lo, hi, nan = value_range(flat)
        if nan or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("values contain NaN or inf; remove or replace them first")
        if max(-lo, hi) > float(np.finfo(np.float32).max):
            raise ValueError("values exceed the float32 range of the codebook; rescale them first")
        if lo == hi:
            return _finish(arr, np.array([lo]), kk, lo, hi)
        binned = _binned(flat, kk, lo, hi)
        if binned is not None:
            d, center = binned
            return _finish(arr, _auto(d, kk) + center, kk, lo, hi)
    x = np.sort(arr.reshape(-1))
    _check_sorted(x)
    center = float(x[x.size // 2])
    lo, hi = float(x[0]), float(x[-1])
    if lo == hi:
        return _finish(arr, np.array([lo]), kk, lo, hi)
    d = _Distinct.of_sorted(x, center)
    if d.m <= kk:
        # Each distinct value its own centroid, from the values: centred sums lose 1e-17 at -3.
        distinct = np.concatenate(([x[0]], x[1:][x[1:] != x[:-1]]))
        return _finish(arr, distinct.astype(np.float64), kk, lo, hi)
    if method == "optimal":
        c = _optimal(d, kk)
    elif method == "lloyd":
        c = _lloyd(d, kk)
    else:
        c = _auto(d, kk)
    return _finish(arr, c + center, kk, lo, hi)


def quantize(
    values: np.ndarray, bits: int, *, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """K-Means codebook of ``2**bits`` centroids: :func:`kmeans_1d` with ``k = 2**bits``.

    Parameters
    ----------
    values : array_like of float
        Values to quantize, any shape; finite and non-empty.
    bits : int
        Bit-width of the codes, 1..16.
    method : {"auto", "optimal", "lloyd"}
        See :func:`kmeans_1d`.

    Returns
    -------
    centroids : ndarray of float32, shape (2**bits,)
    codes : ndarray of uint8 (bits <= 8) or uint16, shape of ``values``
    """
    if isinstance(bits, (bool, np.bool_)):
        raise TypeError("bits must be an integer in 1..16, got a bool")
    try:
        b = operator.index(bits)
    except TypeError:
        raise TypeError(f"bits must be an integer in 1..16, got {type(bits).__name__}") from None
    if not 1 <= b <= 16:
        raise ValueError(f"bits must be in 1..16, got {b}")
    return kmeans_1d(values, 1 << b, method=method)

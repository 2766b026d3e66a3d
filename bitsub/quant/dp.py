"""The exact 1-D K-Means dynamic program over sorted, weighted groups of values.

In one dimension an optimal clustering splits the sorted values into contiguous runs, so the
least sum of squared errors (SSE) is ``D[j][i] = min_t D[j-1][t] + cost(t, i)``, where ``cost``
is the SSE of one run, read in O(1) from float64 prefix sums. The cost is a Monge array, so each
layer's argmins are non-decreasing in ``i`` and a divide-and-conquer layer costs O(m log m) for
m groups: O(k m log m) in all, whatever the input.

Numerics (the care Ckmeans.1d.dp takes, and one step more): the prefix sums are taken over the
values minus a centre (the median), which keeps ``q[b] - q[a] - s^2 / w`` from cancelling for
the bulk of the data, and they are accumulated with Kahan compensation, so that every stored
prefix is the correctly rounded running sum and the error of a run's cost does not grow with the
length of the data before it. A run's cost is clamped at zero.

Backtracking needs every layer's argmin row. Those rows are non-decreasing, so a row of m
argmins is stored as a unary code of its increments (a one per step up, a zero per entry: at
most 2m bits); with k * m too large even for that, every c-th DP row is kept and the rows in
between are recomputed during the backtrack.

:func:`partition_band` runs the DP with every boundary held in a band, and :func:`refine_band`
moves the bands onto its answer until no boundary rests on a band's edge (the refinement step
of ``kmeans_1d(method="auto")``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from bitsub.config import NJIT

__all__ = [
    "distinct_prefix",
    "partition",
    "partition_band",
    "partition_checkpointed",
    "refine_band",
    "rows_step",
    "run_costs",
]

# Keep all argmin rows as int32 when they fit in this many entries (128 MiB).
FULL_ENTRIES = 1 << 25
# Else keep them unary-coded when the code fits in this many bytes (256 MiB).
UNARY_BYTES = 1 << 28


@numba.njit(**NJIT)
def distinct_prefix(x, center):
    """Distinct values of sorted ``x`` and prefix sums over them, all centred on ``center``.

    Returns ``w, s, q`` (length m + 1: prefix counts, sums and sums of squares of
    ``x - center`` in float64, Kahan-compensated) and ``u`` (length m: the distinct values minus
    ``center``).
    """
    n = x.size
    w = np.empty(n + 1)
    s = np.empty(n + 1)
    q = np.empty(n + 1)
    u = np.empty(n)
    w[0] = 0.0
    s[0] = 0.0
    q[0] = 0.0
    m = 0
    cw = 0.0
    cs = 0.0
    cq = 0.0
    es = 0.0  # Kahan compensations of cs and cq
    eq = 0.0
    prev = x[0]
    u[0] = np.float64(prev) - center
    for i in range(n):
        xi = x[i]
        v = np.float64(xi) - center
        if xi != prev:
            m += 1
            w[m] = cw
            s[m] = cs
            q[m] = cq
            u[m] = v
            prev = xi
        cw += 1.0
        y = v - es
        t = cs + y
        es = (t - cs) - y
        cs = t
        y = v * v - eq
        t = cq + y
        eq = (t - cq) - y
        cq = t
    m += 1
    w[m] = cw
    s[m] = cs
    q[m] = cq
    return w[: m + 1], s[: m + 1], q[: m + 1], u[:m]


@numba.njit(**NJIT)
def _cost(w, s, q, a, b):
    # SSE of groups [a, b) around their mean.
    cw = w[b] - w[a]
    cs = s[b] - s[a]
    c = q[b] - q[a] - cs * cs / cw
    return c if c > 0.0 else 0.0


@numba.njit(**NJIT)
def _layer(w, s, q, prev, cur, arg, arg_prev, j, k):
    """Layer j (2..k) of the DP by divide and conquer over the monotone argmins.

    ``cur[i]`` for i in [j, m - k + j]: the least SSE of the first i groups in j runs;
    ``arg[i]`` the start of the last run. ``arg_prev`` holds layer j - 1's argmins, a lower
    bound for layer j's at the same i (the last of j runs starts no earlier than the last of
    j - 1).
    """
    m = w.size - 1
    hi0 = m - k + j
    # Depth of the recursion is log2(m) + 1 < 64; two children per level.
    stack = np.empty((130, 4), dtype=np.int64)
    stack[0, 0] = j
    stack[0, 1] = hi0
    stack[0, 2] = j - 1
    stack[0, 3] = hi0 - 1
    sp = 1
    while sp > 0:
        sp -= 1
        lo = stack[sp, 0]
        hi = stack[sp, 1]
        olo = stack[sp, 2]
        ohi = stack[sp, 3]
        mid = (lo + hi) // 2
        low = olo
        if mid < hi0 and arg_prev[mid] > low:
            low = arg_prev[mid]
        # The hot loop of the whole DP, written out here (a call measured slower).
        top = min(ohi, mid - 1)
        wi = w[mid]
        si = s[mid]
        qi = q[mid]
        best = np.inf
        bt = low
        for t in range(low, top + 1):
            cs = si - s[t]
            c = qi - q[t] - cs * cs / (wi - w[t])
            v = prev[t] + (c if c > 0.0 else 0.0)
            if v < best:
                best = v
                bt = t
        cur[mid] = best
        arg[mid] = bt
        if mid < hi:
            stack[sp, 0] = mid + 1
            stack[sp, 1] = hi
            stack[sp, 2] = bt
            stack[sp, 3] = ohi
            sp += 1
        if lo < mid:
            stack[sp, 0] = lo
            stack[sp, 1] = mid - 1
            stack[sp, 2] = olo
            stack[sp, 3] = bt
            sp += 1


@numba.njit(**NJIT)
def _first_layer(w, s, q, cur, arg, k):
    m = w.size - 1
    for i in range(1, m - k + 2):
        cur[i] = _cost(w, s, q, 0, i)
        arg[i] = 0


@numba.njit(**NJIT)
def _last_start(w, s, q, prev, b, end):
    """Start of the last of b runs that end at ``end``, given layer b - 1 in ``prev``."""
    best = np.inf
    bt = b - 1
    for tt in range(b - 1, end):
        v = prev[tt] + _cost(w, s, q, tt, end)
        if v < best:
            best = v
            bt = tt
    return bt


@numba.njit(**NJIT)
def _unary_put(arg, lo, hi, base, row):
    """Unary code of the non-decreasing ``arg[lo..hi]`` (from ``base``) into uint64 ``row``."""
    row[:] = 0
    pos = 0
    last = base
    for i in range(lo, hi + 1):
        pos += arg[i] - last  # ones: already zero-filled, so set them
        for p in range(pos - (arg[i] - last), pos):
            row[p >> 6] |= np.uint64(1) << np.uint64(p & 63)
        last = arg[i]
        pos += 1  # the zero that ends entry i


@numba.njit(**NJIT)
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(**NJIT)
def _unary_get(row, r, base):
    """Entry r of a unary-coded row: ``base`` plus the ones before its zero."""
    zeros = 0
    wd = 0
    while True:
        z = 64 - np.int64(_popcount(row[wd]))
        if zeros + z > r:
            break
        zeros += z
        wd += 1
    word = row[wd]
    p = 0
    while True:
        if (word >> np.uint64(p)) & np.uint64(1) == 0:
            if zeros == r:
                break
            zeros += 1
        p += 1
    pos = 64 * wd + p
    return base + pos - r


@numba.njit(**NJIT)
def _partition_full(w, s, q, k, unary):
    """Optimal split keeping every argmin row (int32, or unary-coded when ``unary``)."""
    m = w.size - 1
    t = np.zeros(k + 1, dtype=np.int64)
    t[k] = m
    if k == 1:
        return t
    prev = np.full(m + 1, np.inf)
    cur = np.full(m + 1, np.inf)
    width = m - k + 1  # entries per row
    if unary:
        args = np.zeros((2, m + 1), dtype=np.int32)  # the last two rows, alternating
        nwords = (2 * width + 63) // 64 + 1
        codes = np.zeros((k, nwords), dtype=np.uint64)
    else:
        args = np.zeros((k, m + 1), dtype=np.int32)
        codes = np.zeros((1, 1), dtype=np.uint64)
    for j in range(1, k):
        row = args[j & 1] if unary else args[j]
        if j == 1:
            _first_layer(w, s, q, cur, row, k)
        else:
            _layer(w, s, q, prev, cur, row, args[(j - 1) & 1] if unary else args[j - 1], j, k)
        if unary:
            _unary_put(row, j, m - k + j, j - 1, codes[j])
        prev, cur = cur, prev
    t[k - 1] = _last_start(w, s, q, prev, k, m)
    for j in range(k - 1, 1, -1):
        if unary:
            t[j - 1] = _unary_get(codes[j], t[j] - j, j - 1)
        else:
            t[j - 1] = args[j][t[j]]
    return t


@numba.njit(**NJIT)
def partition_checkpointed(w, s, q, k, c):
    """Optimal split of m weighted groups into k non-empty runs (1 <= k <= m).

    Keeps the DP row (and argmin row) of every c-th layer and recomputes the rows in between
    while backtracking (at most twice the work). Returns t (k + 1): run j covers groups
    [t[j], t[j+1]).
    """
    m = w.size - 1
    t = np.zeros(k + 1, dtype=np.int64)
    t[k] = m
    if k == 1:
        return t
    nseg = (k - 1) // c + 1
    saved = np.empty((nseg, m + 1))
    saved_arg = np.zeros((nseg, m + 1), dtype=np.int32)
    prev = np.full(m + 1, np.inf)
    cur = np.full(m + 1, np.inf)
    args = np.zeros((c, m + 1), dtype=np.int32)
    scratch = np.zeros((2, m + 1), dtype=np.int32)
    # Forward pass: rows of layers c, 2c, ... (layer 0 is implicit).
    last = (nseg - 1) * c
    for j in range(1, last + 1):
        if j == 1:
            _first_layer(w, s, q, cur, scratch[1], k)
        else:
            _layer(w, s, q, prev, cur, scratch[j & 1], scratch[(j - 1) & 1], j, k)
        if j % c == 0:
            saved[j // c, :] = cur
            saved_arg[j // c, :] = scratch[j & 1]
        prev, cur = cur, prev
    # Backtrack segment by segment, top first.
    for seg in range(nseg - 1, -1, -1):
        a = seg * c
        b = min(a + c, k)
        if a > 0:
            prev[:] = saved[seg]
        for j in range(a + 1, b):
            row = args[j - a - 1]
            if j == 1:
                _first_layer(w, s, q, cur, row, k)
            else:
                below = saved_arg[seg] if j == a + 1 else args[j - a - 2]
                _layer(w, s, q, prev, cur, row, below, j, k)
            prev, cur = cur, prev
        # Layer b at its known end t[b] only.
        if b == 1:
            t[0] = 0
        else:
            t[b - 1] = _last_start(w, s, q, prev, b, t[b])
        for j in range(b - 1, a, -1):
            t[j - 1] = args[j - a - 1][t[j]]
    return t


def rows_step(k: int, m: int) -> int:
    """Layers between two kept DP rows for :func:`partition_checkpointed`."""
    if k * (m + 1) <= FULL_ENTRIES:
        return k
    return max(1, math.isqrt(2 * k))


def partition(w: np.ndarray, s: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Optimal split of m weighted groups (prefix sums ``w, s, q``) into k runs, 1 <= k <= m.

    Returns the boundaries t (k + 1 int64): run j covers groups [t[j], t[j+1]). The argmin
    rows are kept as int32 when small, unary-coded when that fits, else checkpointed.
    """
    m = w.size - 1
    if k * (m + 1) <= FULL_ENTRIES:
        return _partition_full(w, s, q, k, False)
    if k * (2 * m + 128) // 8 <= UNARY_BYTES:
        return _partition_full(w, s, q, k, True)
    return partition_checkpointed(w, s, q, k, rows_step(k, m))


@numba.njit(**NJIT)
def partition_band(w, s, q, lo, hi):
    """Exact DP with boundary j restricted to [lo[j], hi[j]]; returns the boundaries t.

    Requires lo[0] = hi[0] = 0, lo[k] = hi[k] = m, both non-decreasing, and some strictly
    increasing choice within the bands.
    """
    k = lo.size - 1
    width = 1
    for j in range(k + 1):
        width = max(width, hi[j] - lo[j] + 1)
    prev = np.full(width, np.inf)
    prev[0] = 0.0
    cur = np.full(width, np.inf)
    args = np.zeros((k + 1, width), dtype=np.int64)
    stack = np.empty((130, 4), dtype=np.int64)
    for j in range(1, k + 1):
        plo = lo[j - 1]
        clo = lo[j]
        stack[0, 0] = clo
        stack[0, 1] = hi[j]
        stack[0, 2] = plo
        stack[0, 3] = hi[j - 1]
        sp = 1
        while sp > 0:
            sp -= 1
            a = stack[sp, 0]
            b = stack[sp, 1]
            olo = stack[sp, 2]
            ohi = stack[sp, 3]
            mid = (a + b) // 2
            top = min(ohi, mid - 1)
            best = np.inf
            bt = olo
            for tt in range(olo, top + 1):
                v = prev[tt - plo] + _cost(w, s, q, tt, mid)
                if v < best:
                    best = v
                    bt = tt
            cur[mid - clo] = best
            args[j, mid - clo] = bt
            if mid < b:
                stack[sp, 0] = mid + 1
                stack[sp, 1] = b
                stack[sp, 2] = bt
                stack[sp, 3] = ohi
                sp += 1
            if a < mid:
                stack[sp, 0] = a
                stack[sp, 1] = mid - 1
                stack[sp, 2] = olo
                stack[sp, 3] = bt
                sp += 1
        prev, cur = cur, prev
    t = np.zeros(k + 1, dtype=np.int64)
    t[k] = hi[k]
    for j in range(k, 0, -1):
        t[j - 1] = args[j, t[j] - lo[j]]
    return t


@numba.njit(**NJIT)
def refine_band(w, s, q, idx, lo_start, hi_start, max_recentre):
    """Exact DP with boundary j held in [lo_start[j], hi_start[j]] around idx[j].

    When a boundary ends on the edge of its band, the band is moved by its width and the DP
    run again (at most ``max_recentre`` times), until none does: a local optimum over all joint
    moves within the bands.
    """
    m = w.size - 1
    k = idx.size - 1
    t = np.empty(k + 1, dtype=np.int64)
    for j in range(k + 1):  # within [j, m - k + j], then strictly increasing both ways
        t[j] = min(max(idx[j], j), m - k + j)
    t[0] = 0
    t[k] = m
    for j in range(1, k + 1):
        t[j] = max(t[j], t[j - 1] + 1)
    for j in range(k - 1, -1, -1):
        t[j] = min(t[j], t[j + 1] - 1)
    below = np.empty(k + 1, dtype=np.int64)
    above = np.empty(k + 1, dtype=np.int64)
    for j in range(k + 1):
        below[j] = max(t[j] - lo_start[j], 1)
        above[j] = max(hi_start[j] - t[j], 1)
    lo = np.empty(k + 1, dtype=np.int64)
    hi = np.empty(k + 1, dtype=np.int64)
    for _ in range(max_recentre):
        for j in range(k + 1):
            lo[j] = max(j, t[j] - below[j])
            hi[j] = min(m - k + j, t[j] + above[j])
        for j in range(1, k + 1):
            lo[j] = max(lo[j], lo[j - 1])
        for j in range(k - 1, -1, -1):
            hi[j] = min(hi[j], hi[j + 1])
        t = partition_band(w, s, q, lo, hi)
        edge = False
        for j in range(k + 1):
            if (t[j] == lo[j] and lo[j] > j) or (t[j] == hi[j] and hi[j] < m - k + j):
                edge = True
                break
        if not edge:
            break
    return t


def run_costs(w: np.ndarray, s: np.ndarray, q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """SSE of each run [t[j], t[j+1]) from the prefix sums (clamped at zero)."""
    cw = w[t[1:]] - w[t[:-1]]
    cs = s[t[1:]] - s[t[:-1]]
    return np.maximum(q[t[1:]] - q[t[:-1]] - cs * cs / cw, 0.0)

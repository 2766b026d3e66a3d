"""1-D K-Means: exactness against brute force, auto vs optimal, edge cases, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bitsub.quant.bins as bins
import bitsub.quant.dp as dp
import bitsub.quant.kmeans as km
from bitsub.quant.kmeans import kmeans_1d, quantize
from tests.naive import (
    naive_band_dp,
    naive_cell_stats,
    naive_dp_min_sse,
    naive_kmeans_1d_min_sse,
    naive_levels,
    naive_lookup,
    naive_panter_dite,
    naive_refine_band,
    naive_run_sse,
    naive_sse,
)

METHODS = ["optimal", "auto", "lloyd"]


def check_codebook(values, k, centroids, codes):
    """Format invariants: shape, dtype, ascending finite codebook, nearest-centroid codes."""
    values = np.asarray(values)
    assert centroids.dtype == np.float32 and centroids.shape == (k,)
    assert np.all(np.isfinite(centroids))
    assert np.all(np.diff(centroids) >= 0)
    assert codes.dtype == (np.uint8 if k <= 256 else np.uint16)
    assert codes.shape == values.shape
    assert int(codes.max()) < k
    v = values.reshape(-1).astype(np.float64)
    cent = centroids.astype(np.float64)
    flat = codes.reshape(-1).astype(np.int64)
    dist = np.abs(v[:, None] - cent[None, :])
    # Nearest: no centroid strictly closer (up to float64 rounding of the distances) ...
    chosen = dist[np.arange(v.size), flat]
    assert np.all(chosen <= dist.min(axis=1) * (1 + 1e-12) + 1e-300)
    # ... and a code never names a later duplicate of its centroid.
    first = np.searchsorted(cent, cent[flat], side="left")
    assert np.array_equal(flat, first)
    # Values away from ties: exactly the first argmin.
    nearest = np.argmin(dist, axis=1)
    gap = np.sort(dist, axis=1)[:, 1] - dist.min(axis=1) if k > 1 else np.ones(v.size)
    clear = (gap > 1e-9 * (1 + np.abs(v))) | (cent[nearest] == cent[flat])
    assert np.array_equal(cent[flat][clear], cent[nearest][clear])


small_values = st.lists(
    st.sampled_from([-3.5, -1.0, -0.25, 0.0, 0.5, 0.75, 2.0, 8.0])
    | st.floats(-100, 100, allow_nan=False, width=32),
    min_size=1,
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(small_values, st.integers(1, 6))
def test_optimal_and_auto_reach_brute_force_minimum(vals, k):
    values = np.array(vals, dtype=np.float32)
    best = naive_kmeans_1d_min_sse(values, k)
    tol = 1e-6 * (1.0 + float(np.sum(values.astype(np.float64) ** 2)))
    for method in ("optimal", "auto"):
        c, codes = kmeans_1d(values, k, method=method)
        check_codebook(values, k, c, codes)
        assert abs(naive_sse(values, c, codes) - best) <= tol, method
    c, codes = kmeans_1d(values, k, method="lloyd")
    check_codebook(values, k, c, codes)
    assert naive_sse(values, c, codes) >= best - tol


@pytest.mark.parametrize("dist", ["normal", "laplace"])
# The README claims auto within 0.02% of the optimum for k <= 16 and 1% at k = 256.
@pytest.mark.parametrize(("n", "k", "tol"), [(20000, 4, 2e-4), (6000, 16, 2e-4), (8000, 256, 1e-2)])
def test_auto_within_bar_of_optimal(dist, n, k, tol):
    rng = np.random.default_rng(n + k)
    x = (rng.standard_normal(n) if dist == "normal" else rng.laplace(size=n)).astype(np.float32)
    # The grouped path, not the exact fallback, must be what "auto" runs here.
    assert k * n * np.log2(n) > km._AUTO_EXACT_WORK
    c_opt, codes_opt = kmeans_1d(x, k, method="optimal")
    c_auto, codes_auto = kmeans_1d(x, k, method="auto")
    check_codebook(x, k, c_auto, codes_auto)
    sse_opt = naive_sse(x, c_opt, codes_opt)
    sse_auto = naive_sse(x, c_auto, codes_auto)
    assert sse_opt <= sse_auto * (1 + 1e-9)
    assert sse_auto <= sse_opt * (1 + tol)


def test_auto_with_many_duplicates_and_k_above_256():
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal(20000) * 40) / 8  # about 300 distinct values
    for k in (64, 300):
        c_opt, codes_opt = kmeans_1d(x, k, method="optimal")
        c, codes = kmeans_1d(x, k)
        check_codebook(x, k, c, codes)
        assert naive_sse(x, c, codes) <= naive_sse(x, c_opt, codes_opt) * 1.01 + 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_fewer_distinct_values_than_k(method):
    values = np.array([[2.0, 1.0, 2.0], [1.0, 5.0, 2.0]])
    c, codes = kmeans_1d(values, 8, method=method)
    check_codebook(values, 8, c, codes)
    assert c[:3].tolist() == [1.0, 2.0, 5.0]
    assert np.all(c[3:] == 5.0)
    assert np.array_equal(c[codes], values.astype(np.float32))


@pytest.mark.parametrize("method", METHODS)
def test_edge_inputs(method):
    c, codes = kmeans_1d([3.0], 4, method=method)
    check_codebook(np.array([3.0]), 4, c, codes)
    assert np.all(c == 3.0) and codes.tolist() == [0]
    same = np.full((4, 5), -1.5, dtype=np.float32)
    c, codes = kmeans_1d(same, 2, method=method)
    check_codebook(same, 2, c, codes)
    assert np.all(codes == 0)
    values = np.arange(10, dtype=np.int32)
    c, codes = kmeans_1d(values, 1, method=method)
    assert c.tolist() == [4.5] and np.all(codes == 0)
    c, codes = kmeans_1d(np.array([True, False, True]), 2, method=method)
    assert c.tolist() == [0.0, 1.0] and codes.tolist() == [1, 0, 1]


@pytest.mark.parametrize("method", METHODS)
def test_any_shape_float64_and_uint16_codes(method):
    rng = np.random.default_rng(5)
    values = rng.standard_normal((3, 7, 11))
    c, codes = kmeans_1d(values, 300, method=method)
    check_codebook(values, 300, c, codes)
    c, codes = kmeans_1d(values, 5, method=method)
    check_codebook(values, 5, c, codes)


def test_permutation_and_large_offset():
    rng = np.random.default_rng(9)
    x = rng.standard_normal(3000)
    c1, codes1 = kmeans_1d(x, 8)
    perm = rng.permutation(x.size)
    c2, codes2 = kmeans_1d(x[perm], 8)
    assert np.array_equal(c1, c2) and np.array_equal(codes1[perm], codes2)
    c3, codes3 = kmeans_1d(x + 1000.0, 8, method="optimal")
    check_codebook(x + 1000.0, 8, c3, codes3)
    np.testing.assert_allclose(c3, c1 + 1000.0, rtol=0, atol=1e-3)


def test_quantize_is_kmeans_with_two_to_the_bits():
    rng = np.random.default_rng(1)
    x = rng.laplace(size=500).astype(np.float32)
    for bits in range(1, 17):
        c, codes = quantize(x, bits)
        c2, codes2 = kmeans_1d(x, 2**bits)
        assert np.array_equal(c, c2) and np.array_equal(codes, codes2)
        check_codebook(x, 2**bits, c, codes)


@pytest.mark.parametrize(
    ("values", "k", "kwargs", "exc"),
    [
        ([], 4, {}, ValueError),
        (np.zeros((0, 3)), 4, {}, ValueError),
        ([1.0, np.nan], 4, {}, ValueError),
        ([1.0, np.inf], 4, {}, ValueError),
        ([1.0, -np.inf], 4, {}, ValueError),
        ([1e39, 0.0], 2, {}, ValueError),
        ([1.0], 0, {}, ValueError),
        ([1.0], 65537, {}, ValueError),
        ([1.0], 2.0, {}, TypeError),
        ([1.0], True, {}, TypeError),
        ([1.0], 2, {"method": "kmeans++"}, ValueError),
        (["a", "b"], 2, {}, TypeError),
        ([1 + 2j], 2, {}, TypeError),
    ],
)
def test_kmeans_rejects_bad_input(values, k, kwargs, exc):
    with pytest.raises(exc):
        kmeans_1d(values, k, **kwargs)


@pytest.mark.parametrize(("bits", "exc"), [(0, ValueError), (17, ValueError), (2.0, TypeError)])
def test_quantize_rejects_bad_bits(bits, exc):
    with pytest.raises(exc):
        quantize([1.0, 2.0], bits)


def test_k_max_is_accepted():
    x = np.linspace(-1, 1, 70000, dtype=np.float32)
    c, codes = kmeans_1d(x, 65536, method="lloyd")
    assert c.shape == (65536,) and codes.dtype == np.uint16
    assert np.all(np.diff(c) >= 0)


# ------------------------------------------------------------------------ kernels


def _prefix(x):
    d = km._Distinct.of_sorted(np.sort(x), float(np.median(x)))
    return d


def test_every_argmin_store_gives_the_same_partition(monkeypatch):
    rng = np.random.default_rng(2)
    for x in (rng.standard_normal(700).astype(np.float32), rng.laplace(size=900)):
        d = _prefix(x)
        for k in (1, 2, 5, 17, 40):
            full = dp.partition(d.w, d.s, d.q, k)
            for step in (1, 2, 3, 7):
                got = dp.partition_checkpointed(d.w, d.s, d.q, k, step)
                assert np.array_equal(got, full), (k, step)
            # Unary-coded argmin rows: force that path with a tiny int32 budget.
            monkeypatch.setattr(dp, "FULL_ENTRIES", 10)
            assert np.array_equal(dp.partition(d.w, d.s, d.q, k), full), k
            monkeypatch.setattr(dp, "UNARY_BYTES", 10)
            assert np.array_equal(dp.partition(d.w, d.s, d.q, k), full), k
            monkeypatch.undo()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300), st.integers(0, 5))
def test_unary_rows_round_trip(steps, base):
    arg = np.cumsum(np.array(steps, dtype=np.int64)).astype(np.int32) + base
    row = np.zeros((2 * arg.size + int(arg[-1]) - base + 63) // 64 + 1, dtype=np.uint64)
    dp._unary_put(arg, 0, arg.size - 1, base, row)
    got = [dp._unary_get(row, r, base) for r in range(arg.size)]
    assert got == arg.tolist()


def test_band_dp_with_full_bands_is_exact():
    rng = np.random.default_rng(4)
    d = _prefix(rng.standard_normal(400).astype(np.float32))
    m = d.m
    for k in (1, 3, 12):
        j = np.arange(k + 1)
        t_band = dp.partition_band(d.w, d.s, d.q, j.copy(), m - k + j)
        t_full = dp.partition(d.w, d.s, d.q, k)
        cost_band = dp.run_costs(d.w, d.s, d.q, t_band).sum()
        cost_full = dp.run_costs(d.w, d.s, d.q, t_full).sum()
        assert cost_band == pytest.approx(cost_full, rel=1e-12, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=30),
    st.lists(st.floats(-60, 60, width=32), min_size=1, max_size=200),
)
def test_nearest_assignment_matches_argmin(cents, vals):
    centroids = np.sort(np.array(cents, dtype=np.float32))
    values = np.array(vals, dtype=np.float32)
    lo, hi = float(values.min()), float(values.max())
    c, codes = km._finish(values, centroids.astype(np.float64), centroids.size, lo, hi)
    check_codebook(values, centroids.size, c, codes)


@pytest.mark.parametrize("k", [2, 5, 64, 300])
def test_nearest_assignment_at_midpoints(k):
    rng = np.random.default_rng(k)
    centroids = np.sort(rng.standard_normal(k).astype(np.float32))
    centroids[k // 2] = centroids[k // 2 - 1]  # a duplicate
    mids = 0.5 * (centroids[:-1].astype(np.float64) + centroids[1:].astype(np.float64))
    near = np.concatenate([mids, np.nextafter(mids, -np.inf), np.nextafter(mids, np.inf)])
    values = np.concatenate([near, rng.standard_normal(5000) * 3, centroids.astype(np.float64)])
    lo, hi = float(values.min()), float(values.max())
    c, codes = km._finish(values, centroids.astype(np.float64), k, lo, hi)
    check_codebook(values, k, c, codes)


# ------------------------------------------------------------------ the exact DP's numerics

EPS = np.finfo(np.float64).eps


def partition_sse(x, k):
    """The DP's partition of the sorted values and its SSE, recomputed run by run (fsum)."""
    xs = np.sort(np.asarray(x, dtype=np.float64).reshape(-1))
    d = _prefix(xs)
    kk = min(k, d.m)
    t = dp.partition(d.w, d.s, d.q, kk)
    bounds = d.w[t].astype(np.int64)  # distinct-value boundaries -> value boundaries
    return sum(naive_run_sse(xs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])), d


def dp_tolerance(d, k, n, per_run):
    """How far a prefix-sum DP's partition may be from the optimum, from the float64 math.

    A run's cost ``q[b] - q[a] - (s[b] - s[a])^2 / w`` is read from prefix sums no larger than
    Q (the centred total sum of squares), so it is off by at most ``per_run * eps * Q``; any
    partition's computed SSE is then off by at most k times that, and the computed minimiser
    is within twice that of the true minimum.
    """
    return 2 * k * per_run * EPS * float(d.q[-1]) + 1e-300


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 3.0]) | st.floats(-1e3, 1e3), min_size=1,
             max_size=28),
    st.integers(1, 7),
)
def test_dp_matches_the_textbook_dp(vals, k):
    got, d = partition_sse(vals, k)
    best = naive_dp_min_sse(vals, k)
    assert abs(got - best) <= dp_tolerance(d, k, len(vals), 8)


def adversarial_inputs():
    rng = np.random.default_rng(11)
    n = 3000
    far = 1e8 + rng.integers(0, 40, n) + 1e-6 * rng.standard_normal(n)  # tight, far from zero
    dup = np.round(rng.standard_normal(n) * 3) / 4  # about 40 distinct values
    tiny = rng.standard_normal(n) * 1e-310  # subnormal float64
    mixed = np.concatenate([1e6 + 1e-3 * rng.standard_normal(n // 2), rng.laplace(size=n // 2)])
    f32 = (1e4 + 0.5 * rng.integers(0, 50, n) ** 1.5 + 1e-3 * rng.standard_normal(n))
    return {"far": far, "duplicates": dup, "subnormal": tiny, "mixed": mixed,
            "float32-clusters": f32.astype(np.float32)}


@pytest.mark.parametrize("k", [2, 5, 16, 60])
@pytest.mark.parametrize("name", list(adversarial_inputs()))
def test_optimal_sse_agrees_with_ckmeans(name, k):
    ckmeans = pytest.importorskip("ckmeans")
    x = adversarial_inputs()[name]
    ours, d = partition_sse(x, k)
    theirs = sum(naive_run_sse(c) for c in ckmeans.ckmeans(x, k))
    # ckmeans sums its prefixes without compensation: a prefix of i values is off by up to
    # i * eps * Q, so its runs are read with up to (n + 4) * eps * Q error; ours up to 8.
    tol = dp_tolerance(d, k, x.size, 8) + dp_tolerance(d, k, x.size, x.size + 4)
    assert abs(ours - theirs) <= tol, (ours, theirs, tol)
    # The public codebook: the same partition up to the float32 rounding of each centroid.
    c, codes = kmeans_1d(x, k, method="optimal")
    check_codebook(x, k, c, codes)
    ulp = float(np.max(np.abs(x))) * 2.0**-24
    assert naive_sse(x, c, codes) <= ours + tol + x.size * ulp**2 * 4


# ------------------------------------------------- "auto" on fine cells (bitsub.quant.bins)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([-3.0, 0.0, 0.5, 7.25]) | st.floats(-1e3, 1e3, width=32),
             min_size=2, max_size=300),
    st.sampled_from([1, 3, 16, 257]),
)
def test_cell_stats_match_the_naive_cells(vals, cells):
    x = np.array(vals, dtype=np.float32)
    lo, hi, nan = bins.value_range(x)
    assert (lo, hi, nan) == (float(x.min()), float(x.max()), False)
    if lo == hi:
        return
    cnt, sl, ql, width = bins.cell_stats(x, lo, hi, cells)
    ncnt, nsl, nql, nwidth = naive_cell_stats(x, lo, hi, cells)
    assert width == nwidth
    assert np.array_equal(cnt, ncnt)  # the same cell for every value
    # Both sides compute the same offsets; a running float64 sum of c terms is off by at most
    # (c - 1) eps times the sum of |terms|, and an offset is within [0, width] up to the
    # rounding of the cell index and edge (far below a width here), so |offset| <= 2 width.
    bound = cnt * cnt * EPS
    assert np.all(np.abs(sl - nsl) <= bound * 2 * width + 2 * EPS * np.abs(nsl) + 1e-300)
    assert np.all(np.abs(ql - nql) <= bound * 4 * width * width + 2 * EPS * nql + 1e-300)


def test_value_range_flags_nan_and_splits_over_threads():
    x = np.random.default_rng(4).standard_normal(300_000)
    assert bins.value_range(x) == (float(x.min()), float(x.max()), False)
    x[200_000] = np.nan
    assert bins.value_range(x)[2]


def test_cell_prefix_matches_the_groups_of_sorted_values():
    rng = np.random.default_rng(8)
    x = np.round(rng.standard_normal(5000) * 50) / 16  # point masses: one per cell at most
    lo, hi = float(x.min()), float(x.max())
    cells = int(round((hi - lo) * 16)) * 4
    cnt, sl, ql, width = bins.cell_stats(x, lo, hi, cells)
    center = float(np.median(x))
    w, s, q, u, own = bins.cell_prefix(cnt, sl, ql, lo, width, center)
    d = km._Distinct.of_sorted(np.sort(x), center)
    assert np.array_equal(w, d.w)
    tol = 64 * EPS * float(d.q[-1])
    assert np.all(np.abs(s - d.s) <= tol) and np.all(np.abs(q - d.q) <= tol)
    assert np.all(np.abs(u - d.u) <= 64 * EPS * (1 + np.abs(d.u)))
    assert np.all(own <= 64 * EPS * (1 + d.q[-1]))


class _Spy:
    def __init__(self, monkeypatch):
        self.results = []
        real = km._binned

        def spy(*args):
            out = real(*args)
            self.results.append(out is not None)
            return out

        monkeypatch.setattr(km, "_binned", spy)


@pytest.mark.parametrize("dist", ["normal", "laplace"])
# k = 256 needs finer cells than 16 values a cell at this n (else the sort runs).
@pytest.mark.parametrize(("n", "k", "per_cell", "tol"),
                         [(20000, 2, 16, 2e-4), (20000, 4, 16, 2e-4), (6000, 16, 16, 2e-4),
                          (40000, 256, 1, 1e-2)])
def test_auto_on_cells_within_bar_of_optimal(monkeypatch, dist, n, k, per_cell, tol):
    rng = np.random.default_rng(n + k + 1)
    x = (rng.standard_normal(n) if dist == "normal" else rng.laplace(size=n)).astype(np.float32)
    monkeypatch.setattr(km, "_AUTO_BINS_MIN_N", 1000)
    monkeypatch.setattr(km, "_AUTO_PER_CELL", per_cell)
    spy = _Spy(monkeypatch)
    c_opt, codes_opt = kmeans_1d(x, k, method="optimal")
    c_auto, codes_auto = kmeans_1d(x, k, method="auto")
    assert spy.results == [True]  # the cells, not the sort
    check_codebook(x, k, c_auto, codes_auto)
    sse_opt = naive_sse(x, c_opt, codes_opt)
    sse_auto = naive_sse(x, c_auto, codes_auto)
    assert sse_opt <= sse_auto * (1 + 1e-9)
    assert sse_auto <= sse_opt * (1 + tol)


def test_auto_on_cells_at_the_default_size(monkeypatch):
    n = km._AUTO_BINS_MIN_N
    x = np.random.default_rng(1).laplace(size=n).astype(np.float32) * 3 + 1e3
    spy = _Spy(monkeypatch)
    c, codes = kmeans_1d(x.reshape(64, -1), 4)
    assert spy.results == [True]
    assert codes.shape == (64, n // 64)
    c_opt, codes_opt = kmeans_1d(x, 4, method="optimal")
    assert naive_sse(x, c, codes) <= naive_sse(x, c_opt, codes_opt) * (1 + 2e-4)


def test_auto_falls_back_to_the_sort_when_cells_are_coarse(monkeypatch):
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.standard_normal(20000), [1e4]])  # one outlier stretches the range
    monkeypatch.setattr(km, "_AUTO_BINS_MIN_N", 1000)
    spy = _Spy(monkeypatch)
    c, codes = kmeans_1d(x, 4)
    assert spy.results == [False]
    c_opt, codes_opt = kmeans_1d(x, 4, method="optimal")
    assert naive_sse(x, c, codes) <= naive_sse(x, c_opt, codes_opt) * (1 + 2e-4)


def test_auto_on_cells_with_duplicates_constants_and_subnormals(monkeypatch):
    monkeypatch.setattr(km, "_AUTO_BINS_MIN_N", 1000)
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal(20000) * 40) / 8  # about 300 distinct values
    for k in (2, 64, 300):
        c_opt, codes_opt = kmeans_1d(x, k, method="optimal")
        c, codes = kmeans_1d(x, k)
        check_codebook(x[:3000], k, c, codes[:3000])
        assert naive_sse(x, c, codes) <= naive_sse(x, c_opt, codes_opt) * 1.01 + 1e-12
    c, codes = kmeans_1d(np.full(5000, 2.5), 4)
    assert np.all(c == 2.5) and np.all(codes == 0)
    tiny = rng.integers(0, 5, 5000) * 1e-310  # a subnormal range: the cells cannot be sized
    c, codes = kmeans_1d(tiny, 8)
    check_codebook(tiny[:2000], 8, c, codes[:2000])
    c, codes = kmeans_1d(np.array([0.0, 1.0] * 2500), 1)
    assert c.tolist() == [0.5] and np.all(codes == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])
def test_auto_on_cells_rejects_bad_values(monkeypatch, bad):
    monkeypatch.setattr(km, "_AUTO_BINS_MIN_N", 1000)
    x = np.random.default_rng(2).standard_normal(5000)
    x[4321] = bad
    with pytest.raises(ValueError, match="NaN or inf|float32 range"):
        kmeans_1d(x, 4)


# ------------------------------------------ "auto" below 2^15 values: budget, levels, lean top

# Values with duplicates, a constant stretch, wide and subnormal magnitudes.
group_values = st.lists(
    st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0, 1e-310, -2e-310, 7.25])
    | st.floats(-1e3, 1e3, allow_nan=False, width=32)
    | st.floats(-1e-305, 1e-305, allow_nan=False),
    min_size=1,
    max_size=120,
)


def _groups(vals):
    x = np.sort(np.array(vals, dtype=np.float64))
    return km._Distinct.of_sorted(x, float(x[x.size // 2]))


@settings(max_examples=80, deadline=None)
@given(group_values, st.integers(1, 40), st.sampled_from([0.0, 1e-3, 0.25]))
def test_panter_dite_matches_the_naive_estimate(vals, k, spread):
    d = _groups(vals)
    got = km._panter_dite(d.w, d.u, spread, k)
    want = naive_panter_dite(d.w, d.u, spread, k)
    # The kernel adds up to 16k cube roots in order (each within 1 ulp of numpy's): the sum is
    # off by at most (16k + 2) eps relative, its cube by three times that, a few more ops.
    rtol = (3 * (16 * k + 2) + 8) * EPS
    assert abs(got - want) <= rtol * abs(want) + 1e-300


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(-50, 50, width=32) | st.sampled_from([0.0, 1.5, 1e-40]), min_size=1,
             max_size=40),
    st.floats(-60, 60, width=32),
    st.sampled_from([0.0, 1e-300, 0.01, 3.7, 1e6]),
    st.sampled_from([1, 2, 3, 64, 4096]),
)
def test_lookup_tables_match_the_naive_tables(cents, lo, scale, cells):
    cent = np.maximum.accumulate(np.sort(np.array(cents, dtype=np.float32)))
    got = km._lookup(cent, float(lo), float(scale), cells)
    want = naive_lookup(cent, float(lo), float(scale), cells)
    for g, w_ in zip(got, want):
        assert np.array_equal(g, w_)


@settings(max_examples=80, deadline=None)
@given(
    group_values,
    st.integers(1, 12),
    st.sampled_from([1.0, 2.5, 9.0, 40.0]),
    st.sampled_from([0.0, 1e-6, 0.5, 1e9]),
    st.sampled_from([2.0, 4.0]),
    st.booleans(),
)
def test_levels_match_the_naive_levels(vals, k, top, tau, refine, lean):
    d = _groups(vals)
    lean_max, lean_top, lean_tau = (3 * k, 2 * top, 4 * tau) if lean else (0, 0.0, 0.0)
    flat, offs = km._levels(d.w, d.s, d.q, k, top, tau, refine, lean_max, lean_top, lean_tau)
    want = naive_levels(d.w, d.s, d.q, k, top, tau, refine, lean_max, lean_top, lean_tau)
    got = [flat[offs[i]:offs[i + 1]].tolist() for i in range(offs.size - 1)]
    assert got == want


def _band_tolerance(d, k):
    # A run's cost read from prefix sums no larger than Q is off by at most ~8 eps Q; two
    # partitions' computed sums of k runs, each off by k times that, then differ by twice it.
    return 2 * k * 8 * EPS * float(abs(d.q[-1])) + 1e-300


@settings(max_examples=80, deadline=None)
@given(
    group_values,
    st.integers(1, 6),
    st.data(),
)
def test_refine_band_matches_the_naive_band_dp(vals, k, data):
    d = _groups(vals)
    m = d.m
    if m < k:
        return
    idx = np.array(sorted(data.draw(st.lists(st.integers(-2, m + 2), min_size=k + 1,
                                             max_size=k + 1))), dtype=np.int64)
    reach = np.array(data.draw(st.lists(st.integers(0, 6), min_size=2 * (k + 1),
                                        max_size=2 * (k + 1))), dtype=np.int64)
    lo_start, hi_start = idx - reach[: k + 1], idx + reach[k + 1:]
    # One pass: the band DP's answer against the textbook DP over the same bands.
    t1 = dp.refine_band(d.w, d.s, d.q, idx, lo_start, hi_start, 1)
    want_t, want = naive_refine_band(d.w, d.s, d.q, idx, lo_start, hi_start, 1)
    assert t1[0] == 0 and t1[-1] == m and np.all(np.diff(t1) > 0)
    got = float(dp.run_costs(d.w, d.s, d.q, t1).sum())
    tol = _band_tolerance(d, k)
    assert abs(got - want) <= tol, (got, want)
    # Recentred: a feasible split, never worse than the first pass (each pass's bands hold the
    # previous answer).
    t = dp.refine_band(d.w, d.s, d.q, idx, lo_start, hi_start, 20)
    assert t[0] == 0 and t[-1] == m and np.all(np.diff(t) > 0)
    assert float(dp.run_costs(d.w, d.s, d.q, t).sum()) <= got + tol
    # Bands over everything: the exact optimum.
    j = np.arange(k + 1)
    t_all = dp.refine_band(d.w, d.s, d.q, idx, j, m - k + j, 1)
    t_naive, best = naive_band_dp(d.w, d.s, d.q, j.tolist(), (m - k + j).tolist())
    assert abs(float(dp.run_costs(d.w, d.s, d.q, t_all).sum()) - best) <= tol


@settings(max_examples=60, deadline=None)
@given(group_values, st.integers(1, 9))
def test_auto_coarse_and_lean_paths_on_odd_inputs(vals, k):
    """Tiny budgets force the coarse-to-fine path and the lean top on tiny, odd inputs."""
    x = np.array(vals, dtype=np.float64)
    saved = km._AUTO_WORK_PER_VALUE, km._AUTO_EXACT_WORK
    km._AUTO_WORK_PER_VALUE, km._AUTO_EXACT_WORK = 1e-3, 1e-3
    try:
        c, codes = kmeans_1d(x, k)
    finally:
        km._AUTO_WORK_PER_VALUE, km._AUTO_EXACT_WORK = saved
    check_codebook(x, k, c, codes)
    distinct = np.unique(x)
    if distinct.size <= k:  # every distinct value its own centroid (rounded to float32)
        assert np.array_equal(c[: distinct.size], distinct.astype(np.float32))
        own = float(np.sum((x - x.astype(np.float32)) ** 2))
        assert naive_sse(x, c, codes) <= own * (1 + 1e-9) + 1e-300
    c_opt, codes_opt = kmeans_1d(x, k, method="optimal")
    sse_opt = naive_sse(x, c_opt, codes_opt)
    assert naive_sse(x, c, codes) >= sse_opt * (1 - 1e-9) - 1e-300


class _LevelsSpy:
    def __init__(self, monkeypatch):
        self.lean = []
        real = km._levels

        def spy(*args):
            self.lean.append(args[7] > 0)
            return real(*args)

        monkeypatch.setattr(km, "_levels", spy)


@pytest.mark.parametrize("dist", ["normal", "laplace"])
@pytest.mark.parametrize(("n", "k", "lean", "tol"),
                         [(10000, 2, None, 2e-4), (10000, 8, False, 2e-4),
                          (10000, 16, False, 2e-4), (3001, 64, True, 1e-2),
                          (10000, 256, True, 1e-2), (30000, 256, True, 1e-2)])
def test_auto_below_the_cells_within_bar_of_optimal(monkeypatch, dist, n, k, lean, tol):
    """The sorted path at the bench's smallest size: budget 4 n, the lean top for large k."""
    rng = np.random.default_rng(7 * n + k)
    x = (rng.standard_normal(n) if dist == "normal" else rng.laplace(size=n)).astype(np.float32)
    spy = _LevelsSpy(monkeypatch)
    c_opt, codes_opt = kmeans_1d(x, k, method="optimal")
    c, codes = kmeans_1d(x, k)
    assert spy.lean == ([] if lean is None else [lean])  # k = 2: the exact DP (O(m))
    check_codebook(x[:2000], k, c, codes[:2000])
    sse_opt = naive_sse(x, c_opt, codes_opt)
    sse = naive_sse(x, c, codes)
    assert sse_opt <= sse * (1 + 1e-9)
    assert sse <= sse_opt * (1 + tol)


@pytest.mark.parametrize("method", ["auto", "optimal", "lloyd"])
def test_distinct_values_at_most_k_are_the_codebook_exactly(method):
    """A value 1e-17 beside a centre of -3 is lost by the centred prefix sums; with at most k
    distinct values the codebook is the values themselves (found by hypothesis in CI)."""
    x = np.array([-3.0, -3.0, 1.1881602466376988e-17])
    c, codes = kmeans_1d(x, 2, method=method)
    assert np.array_equal(c, np.array([-3.0, 1.1881602466376988e-17], dtype=np.float32))
    assert codes.tolist() == [0, 0, 1]


def test_binned_path_keeps_few_distinct_values_exactly():
    """From 2^15 values on, values in at most k cells go the sorted way and stay exact."""
    x = np.full(40000, 1000.0)
    x[::3] = 1000.0000001
    x[::7] = -1e-20
    c, codes = kmeans_1d(x, 4)
    want = np.unique(x).astype(np.float32)
    assert np.array_equal(c[:3], want) and c[3] == want[-1]
    assert np.array_equal(c[codes], x.astype(np.float32))


def test_compile_kernels_rejects_an_unknown_method_and_leaves_results_alone():
    from bitsub.quant.warmup import compile_kernels

    x = np.random.default_rng(5).standard_normal(5000).astype(np.float32)
    before = kmeans_1d(x, 8)
    with pytest.raises(ValueError, match="method must be one of"):
        compile_kernels("kmeans++")
    compile_kernels("lloyd")
    compile_kernels("lloyd")  # once per process: the second call returns at once
    after = kmeans_1d(x, 8)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])

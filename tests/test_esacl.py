"""EsaCL's kernels against tests/naive.py: top-k, the K-sparse LMO, SFW, pruning, IDS records."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bitsub_torch.cl.esacl import (
    SFW,
    ExampleStats,
    k_sparse_lmo,
    magnitude_mask,
    sam_radius,
    top_k_mask,
)
from bitsub_torch.cl.strategies import get_strategy
from tests.naive import naive_lmo_value, naive_sfw_step, naive_top_k

# small integers: many ties, exact zeros, both signs
_TIED = st.integers(1, 40).flatmap(
    lambda n: arrays(np.float32, n, elements=st.integers(-3, 3).map(float)))
_FLOATS = st.integers(1, 60).flatmap(
    lambda n: arrays(np.float32, n, elements=st.floats(-4, 4, width=32)))


@settings(max_examples=80, deadline=None)
@given(data=st.one_of(_TIED, _FLOATS), frac=st.floats(0, 1))
def test_top_k_mask_matches_naive(data, frac):
    k = int(round(frac * data.size))
    got = np.flatnonzero(top_k_mask(torch.from_numpy(data), k).numpy())
    assert got.tolist() == naive_top_k(data, k)


@settings(max_examples=50, deadline=None)
@given(data=st.one_of(_TIED, _FLOATS), frac=st.floats(0, 1), radius=st.floats(0.1, 10))
def test_lmo_is_a_minimising_vertex(data, frac, radius):
    k = int(round(frac * data.size))
    m = torch.from_numpy(data)
    v = k_sparse_lmo(m, k, radius).numpy().astype(np.float64)
    nz = np.flatnonzero(v)
    # a vertex: at most k entries, each +-radius, the sign opposite to m's
    assert len(nz) <= k
    assert np.all(np.abs(v[nz]) == np.float32(radius))
    assert np.all(np.sign(v[nz]) == -np.sign(data[nz]))
    # and the minimum of <m, v> over the polytope (float32 radius, exact sums of small ints)
    want = naive_lmo_value(data, k, float(np.float32(radius)))
    tol = 1e-6 * (1 + abs(want))
    assert abs(float(np.dot(data.astype(np.float64), v)) - want) <= tol


def test_lmo_edges():
    m = torch.tensor([0.0, -2.0, 1.0, 0.0])
    assert k_sparse_lmo(m, 0, 3.0).tolist() == [0, 0, 0, 0]
    assert k_sparse_lmo(m, 4, 3.0).tolist() == [0, 3, -3, 0]  # sign(0) = 0
    with pytest.raises(ValueError, match="k must be"):
        k_sparse_lmo(m, 5, 1.0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 50), frac=st.floats(0.01, 1), seed=st.integers(0, 10**6),
       lr=st.sampled_from([0.01, 0.1, 1.0, 100.0]), steps=st.integers(1, 3))
def test_sfw_matches_naive(n, frac, seed, lr, steps):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(np.float32)
    k = max(1, int(round(frac * n)))
    radius = sam_radius(torch.from_numpy(p0), k, 2.0)
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = SFW([{"params": [p], "radius": radius, "k": k}], lr=lr, momentum=0.9)
    ref, buf = p0.astype(np.float64), None
    for _ in range(steps):
        g = rng.standard_normal(n).astype(np.float32)
        p.grad = torch.from_numpy(g)
        opt.step()
        ref, buf = naive_sfw_step(ref, g, buf, k, radius, lr, 0.9)
    # float32 vs float64: each step is a convex combination of |p| <= max(|p|, radius)
    scale = max(np.abs(p0).max(), radius)
    assert np.allclose(p.detach().numpy(), ref, rtol=0, atol=steps * 64 * 2.0**-23 * scale)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 50), frac=st.floats(0.01, 1), seed=st.integers(0, 10**6),
       lr=st.sampled_from([0.01, 0.1, 1.0, 100.0]), steps=st.integers(1, 3))
def test_anchored_sfw_moves_the_offset_as_plain_sfw(n, frac, seed, lr, steps):
    # centred at a, the step is plain SFW on d = p - a: the anchor itself is never shrunk
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32)
    d0 = (rng.standard_normal(n) * (rng.random(n) < 0.5)).astype(np.float32)
    k = max(1, int(round(frac * n)))
    radius = sam_radius(torch.from_numpy(a), k, 1.0)
    p = torch.nn.Parameter(torch.from_numpy(a + d0))
    opt = SFW([{"params": [p], "radius": radius, "k": k, "anchor": torch.from_numpy(a)}],
              lr=lr, momentum=0.9)
    ref, buf = (a + d0).astype(np.float64) - a, None
    for _ in range(steps):
        g = rng.standard_normal(n).astype(np.float32)
        p.grad = torch.from_numpy(g)
        opt.step()
        ref, buf = naive_sfw_step(ref, g, buf, k, radius, lr, 0.9)
    scale = max(np.abs(a).max() + np.abs(d0).max(), radius)
    assert np.allclose(p.detach().numpy(), a + ref, rtol=0,
                       atol=steps * 64 * 2.0**-23 * scale)
    # eta = 1 lands on the vertex: p = a + v exactly where the anchor is kept
    q = torch.nn.Parameter(torch.from_numpy(a.copy()))
    one = SFW([{"params": [q], "radius": 2.0, "k": 1, "anchor": torch.from_numpy(a)}], lr=1e9)
    g = np.zeros(n, np.float32)
    g[0] = 1.0
    q.grad = torch.from_numpy(g)
    one.step()
    want = a.copy()
    want[0] -= 2.0
    assert np.array_equal(q.detach().numpy(), want)


def test_sfw_keeps_inactive_positions_at_zero():
    p = torch.nn.Parameter(torch.tensor([1.0, 0.0, -2.0, 0.0]))
    active = torch.tensor([1.0, 0.0, 1.0, 0.0])
    opt = SFW([{"params": [p], "radius": 5.0, "k": 1, "active": active}], lr=1.0)
    p.grad = torch.tensor([0.5, 9.0, 0.1, -9.0])
    opt.step()
    assert p[1] == 0 and p[3] == 0 and p[0] != 1.0


@settings(max_examples=60, deadline=None)
@given(data=st.one_of(_TIED, _FLOATS), sparsity=st.floats(0, 0.99))
def test_magnitude_mask_exact_count_and_naive(data, sparsity):
    w = torch.from_numpy(data)
    mask = magnitude_mask(w, sparsity)
    keep = data.size - int(round(sparsity * data.size))
    assert int(mask.sum()) == keep
    assert np.flatnonzero(mask.numpy()).tolist() == naive_top_k(np.abs(data), keep)


def test_magnitude_mask_prefers_allowed_positions():
    w = torch.tensor([5.0, 4.0, 0.1, 0.2])
    allowed = torch.tensor([False, True, True, True])
    assert magnitude_mask(w, 0.5, allowed).tolist() == [False, True, False, True]
    # more kept than allowed: the rest come from outside, lowest index first
    w5 = torch.tensor([5.0, 4.0, 0.1, 0.2, 3.0])
    allowed5 = torch.tensor([False, True, True, False, False])
    assert magnitude_mask(w5, 0.4, allowed5).tolist() == [True, True, True, False, False]


def test_example_stats_forgetting_support_and_drop():
    s = ExampleStats(6)
    s.update(np.array([0, 1, 2]), np.array([True, False, True]), np.array([0.1, 2.0, 0.3]))
    s.update(np.array([3, 4, 5]), np.array([True, True, False]), np.array([0.05, 0.2, 3.0]))
    s.update(np.array([0, 2]), np.array([False, True]), np.array([1.5, 0.2]))
    assert s.forgotten.tolist() == [True, False, False, False, False, False]
    assert s.first_learned.tolist() == [0, -1, 0, 1, 1, -1]
    # support: highest recorded loss first, ties (inf) by batch position, returned in order
    s2 = ExampleStats(4)
    s2.update(np.array([0, 1]), np.array([True, True]), np.array([0.5, 0.9]))
    assert s2.support(np.array([0, 1, 2, 3]), 0.5).tolist() == [2, 3]
    assert s2.support(np.array([1, 0]), 0.5).tolist() == [0]
    # minimum: at least that many (highest loss first), never more than the batch
    assert s2.support(np.array([1, 0]), 0.5, minimum=2).tolist() == [0, 1]
    assert s2.support(np.array([0, 1, 3]), 0.1, minimum=2).tolist() == [1, 2]
    assert s2.support(np.array([3]), 0.5, minimum=2).tolist() == [0]
    # drop: learned, never forgotten; earliest learned first, then lower loss; cap floor(f n)
    assert s.drop(0.5) == 3
    assert np.flatnonzero(s.dropped).tolist() == [2, 3, 4]
    assert s.kept(np.array([5, 4, 3, 2, 1, 0])).tolist() == [5, 1, 0]
    assert s.drop(0.5) == 3  # the cap holds


def test_strategy_arguments_are_checked():
    with pytest.raises(ValueError, match="sparsity"):
        get_strategy("esacl", sparsity=1.0)
    with pytest.raises(ValueError, match="dense model"):
        get_strategy("er", sparsity=0.9)
    with pytest.raises(ValueError, match="sfw_anchor"):
        get_strategy("esacl", sfw_anchor="centre")
    with pytest.raises(ValueError, match="ids must be"):
        get_strategy("esacl", ids="no")
    with pytest.raises(ValueError, match="buffer"):
        get_strategy("derpp", buffer=-5)
    with pytest.raises(ValueError, match="retrain_epochs"):
        get_strategy("prune-retrain", retrain_epochs=-1)
    s = get_strategy("esacl", ids=False)
    assert not s.sse and not s.ere
    assert math.isclose(get_strategy("esacl").sparsity, 0.9)

"""The KL gate: sound divergence estimates between task data distributions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub_torch.cl.divergence import KLGate, gaussian_kl, histogram_kl, task_divergence


def _kl_direct(p, q):
    # KL of two discrete distributions written out term by term.
    return sum(pi * np.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


counts = st.lists(st.integers(0, 50), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None)
@given(counts, st.data())
def test_histogram_kl_matches_definition_and_is_nonnegative(p, data):
    q = data.draw(st.lists(st.integers(0, 50), min_size=len(p), max_size=len(p)))
    alpha = 0.5
    ps = [(c + alpha) / (sum(p) + alpha * len(p)) for c in p]
    qs = [(c + alpha) / (sum(q) + alpha * len(q)) for c in q]
    got = histogram_kl(p, q, alpha=alpha)
    assert got >= 0.0
    assert got == pytest.approx(max(0.0, _kl_direct(ps, qs)), abs=1e-12)
    assert histogram_kl(p, p, alpha=alpha) == 0.0


def test_gaussian_kl_closed_form():
    # KL(N(0,1) || N(1,4)) = 0.5 * (log 4 + (1 + 1) / 4 - 1)
    want = 0.5 * (np.log(4.0) + 2.0 / 4.0 - 1.0)
    assert gaussian_kl([0.0], [1.0], [1.0], [4.0]) == pytest.approx(want)
    assert gaussian_kl([0.0, 3.0], [1.0, 2.0], [0.0, 3.0], [1.0, 2.0]) == 0.0


@pytest.mark.parametrize("method", ["histogram", "gaussian"])
def test_identical_distributions_near_zero_shifted_large(method):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 8))
    b = rng.normal(size=(4000, 8))
    shifted = rng.normal(loc=3.0, size=(4000, 8))
    same = task_divergence(a, b, method=method)
    far = task_divergence(a, shifted, method=method)
    assert same < 0.01
    assert far > 1.0
    assert far > 100 * same


@pytest.mark.parametrize("method", ["histogram", "gaussian"])
def test_symmetric_by_default_and_asymmetric_on_request(method):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3000, 4))
    b = rng.normal(loc=0.5, scale=2.0, size=(3000, 4))
    assert task_divergence(a, b, method=method) == pytest.approx(
        task_divergence(b, a, method=method), rel=1e-9
    )
    one = task_divergence(a, b, method=method, symmetric=False)
    other = task_divergence(b, a, method=method, symmetric=False)
    assert one != pytest.approx(other, rel=1e-3)


def test_histogram_is_permutation_invariant_gaussian_is_not():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(2000, 16)) * np.linspace(0.1, 1.0, 16)  # features with different scales
    perm = a[:, rng.permutation(16)]
    assert task_divergence(a, perm, method="histogram") < 1e-12
    assert task_divergence(a, perm, method="gaussian") > 0.5


def test_gate_opens_a_bank_only_for_a_far_task_and_pools_the_bank():
    rng = np.random.default_rng(3)
    gate = KLGate(threshold=0.5)
    bank = [gate.summarize(rng.normal(size=(1000, 10))) for _ in range(2)]
    near = gate.summarize(rng.normal(size=(1000, 10)))
    far = gate.summarize(rng.normal(loc=4.0, size=(1000, 10)))
    assert gate.decide(near, []) == (False, 0.0)
    open_near, d_near = gate.decide(near, bank)
    open_far, d_far = gate.decide(far, bank)
    assert not open_near and open_far
    assert d_near < gate.threshold < d_far
    pooled = gate.pool(bank)
    assert pooled["counts"].sum() == sum(s["counts"].sum() for s in bank)


def test_gaussian_pool_is_moment_matched():
    gate = KLGate(method="gaussian")
    rng = np.random.default_rng(4)
    x1, x2 = rng.normal(size=(500, 3)), rng.normal(loc=2.0, size=(300, 3))
    pooled = gate.pool([gate.summarize(x1), gate.summarize(x2)])
    both = np.concatenate([x1, x2])
    np.testing.assert_allclose(pooled["mean"], both.mean(axis=0))
    np.testing.assert_allclose(pooled["var"], both.var(axis=0))


def test_state_round_trip_keeps_edges():
    rng = np.random.default_rng(5)
    gate = KLGate(threshold=0.25, bins=16)
    gate.summarize(rng.normal(size=(100, 4)))
    other = KLGate()
    other.load_state_dict(gate.state_dict())
    x = rng.normal(size=(50, 4))
    np.testing.assert_array_equal(other.summarize(x)["counts"], gate.summarize(x)["counts"])
    assert other.threshold == 0.25 and other.bins == 16
    np.testing.assert_array_equal(other.edges, gate.edges)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="method"):
        KLGate(method="kl")
    with pytest.raises(ValueError, match="bins"):
        KLGate(bins=1)
    with pytest.raises(ValueError, match="NaN"):
        KLGate().summarize(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="at least one sample"):
        KLGate().summarize(np.zeros((0, 3)))
    with pytest.raises(TypeError):
        KLGate().summarize(np.array([["a"]]))
    with pytest.raises(ValueError, match="same"):
        histogram_kl([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="features"):
        gaussian_kl([0.0], [1.0], [0.0, 1.0], [1.0, 1.0])


def test_choose_bank_joins_revisits_or_opens():
    gate = KLGate(threshold=0.5)
    # the current bank (3) first, then earlier banks that may be revisited
    assert gate.choose_bank([(0.2, 3), (0.4, 0)]) == (3, "joins", 0.2)
    assert gate.choose_bank([(0.4, 3), (0.1, 1), (0.3, 0)]) == (1, "revisits", 0.1)
    # exactly at the threshold still joins; a tie goes to the lower bank
    assert gate.choose_bank([(0.5, 2)]) == (2, "joins", 0.5)
    assert gate.choose_bank([(0.3, 2), (0.3, 0)]) == (0, "revisits", 0.3)
    # every candidate over the threshold: a new bank, reported with the current bank's divergence
    assert gate.choose_bank([(0.9, 2), (0.6, 0)]) == (None, "kl", 0.9)
    with pytest.raises(ValueError, match="at least one candidate"):
        gate.choose_bank([])

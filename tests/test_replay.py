"""Reservoir buffer and the ER / DER++ losses against their obvious definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub_torch.cl.replay import ReservoirBuffer, derpp_loss, er_loss
from tests.naive import naive_reservoir


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 12), batches=st.lists(st.integers(1, 9), min_size=1, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_reservoir_matches_algorithm_r(size, batches, seed):
    buf = ReservoirBuffer(size, (3,), 4)
    rng_fast = np.random.default_rng(seed)
    rng_slow = np.random.default_rng(seed)
    stored = np.full(size, -1)  # which stream example each slot holds, by the naive loop
    seen = 0
    for count in batches:
        ids = np.arange(seen, seen + count)
        x = torch.from_numpy(np.repeat(ids[:, None], 3, axis=1).astype(np.float32))
        y = torch.from_numpy(ids % 4)
        z = torch.from_numpy(np.repeat(ids[:, None], 4, axis=1).astype(np.float32))
        if size:
            slots = naive_reservoir(size, seen, count, lambda n: int(rng_slow.integers(0, n + 1)))
            for i, s in enumerate(slots):
                if s >= 0:
                    stored[s] = ids[i]
        buf.add(x, y, z, rng_fast)
        seen += count
        assert len(buf) == min(seen, size) and buf.seen == seen
        live = stored[: len(buf)]
        assert (buf.x[: len(buf), 0].numpy() == live).all()
        assert (buf.y[: len(buf)].numpy() == live % 4).all()
        assert (buf.logits[: len(buf), 3].numpy() == live).all()


def test_reservoir_is_uniform_over_the_stream():
    # Each of 100 examples ends in a 10-slot buffer with probability 0.1: over 1000 runs the
    # count per example is Binomial(1000, 0.1) (sd 9.5); 6 sd bounds every one of the 100.
    hits = np.zeros(100)
    for r in range(1000):
        buf = ReservoirBuffer(10, (1,), 1)
        rng = np.random.default_rng(r)
        ids = torch.arange(100, dtype=torch.float32)[:, None]
        buf.add(ids, torch.zeros(100, dtype=torch.int64), ids, rng)
        hits[buf.x[:, 0].numpy().astype(int)] += 1
    assert np.abs(hits - 100).max() < 6 * np.sqrt(1000 * 0.1 * 0.9)


def test_buffer_rejects_bad_size_and_checkpoint():
    with pytest.raises(ValueError, match="buffer size"):
        ReservoirBuffer(-1, (2,), 2)
    a, b = ReservoirBuffer(4, (2,), 2), ReservoirBuffer(5, (2,), 2)
    with pytest.raises(ValueError, match="same --buffer"):
        b.load_state_dict(a.state_dict())
    assert a.nbytes == 4 * 2 * 4 + 4 * 8 + 4 * 2 * 4


def _setup():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 6)
    buf = ReservoirBuffer(8, (5,), 6)
    x = torch.randn(8, 5)
    buf.add(x, torch.arange(8) % 4, torch.randn(8, 6), np.random.default_rng(0))
    return lin, buf, torch.randn(3, 5), torch.tensor([0, 3, 1])


def test_er_loss_is_stream_plus_buffer_cross_entropy():
    lin, buf, x, y = _setup()
    loss, logits, replayed, per = er_loss(lin, x, y, buf, 4, 5, np.random.default_rng(1))
    bx, by, _ = buf.sample(5, np.random.default_rng(1))
    want = F.cross_entropy(lin(x)[:, :4], y) + F.cross_entropy(lin(bx)[:, :4], by)
    assert replayed == 5 and logits.shape == (3, 6)
    assert torch.equal(loss, want)
    assert torch.equal(per, F.cross_entropy(lin(x)[:, :4], y, reduction="none"))


def test_derpp_loss_is_its_three_terms():
    lin, buf, x, y = _setup()
    loss, _, replayed, _ = derpp_loss(lin, x, y, buf, 4, 3, np.random.default_rng(2), 0.1, 0.5)
    rng = np.random.default_rng(2)
    bx, _, bz = buf.sample(3, rng)
    bx2, by2, _ = buf.sample(3, rng)
    want = (F.cross_entropy(lin(x)[:, :4], y) + 0.1 * F.mse_loss(lin(bx), bz)
            + 0.5 * F.cross_entropy(lin(bx2)[:, :4], by2))
    assert replayed == 6 and torch.equal(loss, want)


def test_empty_buffer_replays_nothing():
    lin = torch.nn.Linear(5, 6)
    buf = ReservoirBuffer(0, (5,), 6)
    x, y = torch.randn(3, 5), torch.tensor([0, 1, 1])
    loss, _, replayed, _ = derpp_loss(lin, x, y, buf, 2, 3, np.random.default_rng(0))
    assert replayed == 0 and torch.equal(loss, F.cross_entropy(lin(x)[:, :2], y))

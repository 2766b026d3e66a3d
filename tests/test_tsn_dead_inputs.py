"""TinySubNets' ``skip_dead_inputs``: the first layer's top-k stays off inputs that are 0 in all
of a task's training images (mixed's zero-padded mnist1d tasks)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tinysubnets import digits_tasks
from test_tsn_scores import train_task0

from bitsub_torch.cl.strategies import TinySubNets
from bitsub_torch.cl.strategies.scores import dead_inputs
from bitsub_torch.nn.autograd import topk_count

torch.set_num_threads(1)


def naive_dead_inputs(x):
    """Slow twin: feature j is dead when no row has a nonzero value there."""
    rows = [np.asarray(r).reshape(-1) for r in x]
    if not rows:
        return np.zeros(0, dtype=bool)
    return np.array([all(r[j] == 0 for r in rows) for j in range(rows[0].size)], dtype=bool)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 30), shape=st.sampled_from([(1,), (5,), (2, 3), (1, 2, 2)]),
       chunk=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), p=st.floats(0.0, 1.0))
def test_dead_inputs_matches_the_naive_twin(n, shape, chunk, seed, p):
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, *shape)) < p, rng.normal(size=(n, *shape)), 0.0)
    x[:, ...] *= rng.random((1, *shape)) < 0.7  # whole columns zero as well
    x = x.astype(np.float32)
    got = dead_inputs(x, chunk=chunk)
    want = naive_dead_inputs(x) if n else np.zeros(0, dtype=bool)
    np.testing.assert_array_equal(got, want)


def test_dead_inputs_by_hand():
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = -0.0  # negative zero is zero
    x[3, 2] = 1e-30
    np.testing.assert_array_equal(dead_inputs(x, chunk=1), [True, True, False])


def _scenario(dead_cols):
    """Permuted digits, task 1 with the inputs ``dead_cols`` zero in every split."""
    scenario = digits_tasks(2)
    d = scenario.tasks[1]
    for x in (d.x_train, d.x_val, d.x_test):
        x[:, dead_cols] = 0.0
    return scenario


@pytest.mark.parametrize("live_cols", [40, 4])  # k below the live positions, and above them
def test_the_mask_stays_off_dead_inputs_and_the_scores_come_back(live_cols):
    dead_cols = np.arange(live_cols, 64)
    scenario = _scenario(dead_cols)
    strategy = TinySubNets(0.3, skip_dead_inputs=True, kl_threshold=float("inf"))
    model, trainer = train_task0(strategy, scenario)
    name, layer = next(iter(model.masked_layers().items()))
    before = layer.scores.detach().clone()
    assert before[:, dead_cols].abs().min() > 0  # task 0 had them live: scores are nonzero
    strategy.before_task(1, model, scenario.tasks[1])
    dead = naive_dead_inputs(scenario.tasks[1].x_train)  # digits has a few dead pixels of its own
    assert dead[dead_cols].all()
    mask = layer.score_mask()
    k = topk_count(layer.weight.numel(), 0.3)
    assert int(mask.sum()) == min(k, 48 * int((~dead).sum()))
    assert not mask[:, dead].any()
    assert strategy.log[1]["dead_inputs"] == int(dead.sum())
    strategy.after_task(1, model, scenario.tasks[1], trainer.evaluate)
    stored = layer.task_mask(1)
    assert not stored[:, dead].any()
    # the dead inputs' scores are put back bit for bit; training never moved them (zero gradient)
    assert torch.equal(layer.scores.detach()[:, dead], before[:, dead])


def test_off_by_default_and_kept_in_the_state():
    scenario = _scenario(np.arange(10, 64))
    strategy = TinySubNets(0.3, kl_threshold=float("inf"))
    model, trainer = train_task0(strategy, scenario)
    assert strategy.skip_dead_inputs is False
    scores = {n: m.scores.detach().clone() for n, m in model.masked_layers().items()}
    strategy.before_task(1, model, scenario.tasks[1])
    assert "dead_inputs" not in strategy.log[1]
    for name, layer in model.masked_layers().items():  # scores untouched, mask is task 0's
        assert torch.equal(layer.scores.detach(), scores[name])
    on = TinySubNets(skip_dead_inputs=True)
    again = TinySubNets()
    again.load_state_dict(on.state_dict())
    assert again.skip_dead_inputs is True
    with pytest.raises((ValueError, TypeError), match="skip_dead_inputs"):
        TinySubNets(skip_dead_inputs="yes")

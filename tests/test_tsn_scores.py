"""TinySubNets' score options for later tasks: ``new_share`` (admit_free) and ``score_reset``."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tinysubnets import digits_tasks

from bitsub_torch.cl.strategies import TinySubNets
from bitsub_torch.cl.strategies.scores import admit_free, redraw_scores
from bitsub_torch.cl.trainer import Trainer
from bitsub_torch.nn.autograd import topk_count, topk_mask_bool
from bitsub_torch.nn.models import mlp

torch.set_num_threads(1)


def naive_admit_free(scores, free, density, share):
    """Slow twin of `admit_free` on lists: rank by |score| (ties to the lower index), swap."""
    s = [float(v) for v in scores]
    n = len(s)
    k = topk_count(n, density)
    order = sorted(range(n), key=lambda i: (-abs(s[i]), i))
    top = set(order[:k])
    m = min(int(round(share * k)), sum(bool(f) for f in free))
    need = m - sum(1 for i in top if free[i])
    if need <= 0:
        return s, 0
    inc = [i for i in order if free[i] and i not in top]
    out = [i for i in reversed(order) if not free[i] and i in top]  # smallest |score| first
    need = min(need, len(inc), len(out))
    inc = inc[:need]
    out = sorted(out[:need], key=lambda i: (-abs(s[i]), i))  # the chosen ones, largest first
    new = list(s)
    for a, b in zip(inc, out, strict=True):
        new[a] = float(np.copysign(abs(s[b]), s[a]))
        new[b] = float(np.copysign(abs(s[a]), s[b]))
    return new, need


def test_admit_free_by_hand():
    s = torch.tensor([5.0, -4.0, 3.0, 2.0, -1.0, 0.5, 0.1, -0.2])
    free = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    # k = 4 (5, -4, 3, 2); m = 4; position 3 (free) is already in, so 3 free positions enter:
    # 4 (|1|), 7 (|0.2|), 6 (|0.1|) take the magnitudes of 0 (5), 1 (4), 2 (3), signs kept.
    assert admit_free(s, free, 0.5, 1.0) == 3
    want = torch.tensor([1.0, -0.2, 0.1, 2.0, -5.0, 0.5, 3.0, -4.0])
    assert torch.equal(s, want)
    assert torch.equal(topk_mask_bool(s, 0.5), torch.tensor([0, 0, 0, 1, 1, 0, 1, 1]).bool())
    # share 0.5: m = 2, one free already in, so only position 4 enters, against position 2 (3)
    s = torch.tensor([5.0, -4.0, 3.0, 2.0, -1.0, 0.5, 0.1, -0.2])
    assert admit_free(s, free, 0.5, 0.5) == 1
    assert torch.equal(s, torch.tensor([5.0, -4.0, 1.0, 2.0, -3.0, 0.5, 0.1, -0.2]))


def test_admit_free_leaves_enough_free_positions_alone():
    s = torch.tensor([0.1, 0.9, -0.8, 0.3])
    before = s.clone()
    free = torch.tensor([0, 1, 0, 0], dtype=torch.bool)  # k = 2: {1, 2}; position 1 is free
    assert admit_free(s, free, 0.5, 0.5) == 0
    assert torch.equal(s, before)
    assert admit_free(s, torch.zeros(4, dtype=torch.bool), 0.5, 1.0) == 0  # nothing free
    assert torch.equal(s, before)
    with pytest.raises(ValueError, match="free has 3 positions"):
        admit_free(s, torch.zeros(3, dtype=torch.bool), 0.5, 1.0)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 40),
    density=st.floats(0.01, 1.0),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
)
def test_admit_free_matches_the_naive_twin(n, density, share, seed, ties):
    rng = np.random.default_rng(seed)
    values = rng.integers(-3, 4, n).astype(np.float32) if ties else rng.normal(size=n)
    values = values.astype(np.float32)
    free = rng.random(n) < 0.5
    got = torch.from_numpy(values.copy())
    swapped = admit_free(got, torch.from_numpy(free), density, share)
    want, want_swapped = naive_admit_free(values.tolist(), free.tolist(), density, share)
    assert swapped == want_swapped
    np.testing.assert_array_equal(got.numpy(), np.asarray(want, dtype=np.float32))
    # the multiset of magnitudes is unchanged, and with distinct magnitudes the top-k holds
    # max(m, already) free positions
    np.testing.assert_array_equal(np.sort(np.abs(got.numpy())), np.sort(np.abs(values)))
    mags = np.abs(values)
    if not ties and len(np.unique(mags)) == n:
        k = topk_count(n, density)
        m = min(int(round(share * k)), int(free.sum()))
        before = topk_mask_bool(torch.from_numpy(values), density).numpy()
        after = topk_mask_bool(got, density).numpy()
        assert int((after & free).sum()) == max(m, int((before & free).sum()))
        assert int(after.sum()) == k


def test_redraw_scores_is_the_initial_law_and_seeded():
    a = torch.zeros(30, 50)
    redraw_scores(a, 7)
    bound = 1.0 / np.sqrt(50)
    assert float(a.abs().max()) <= bound
    assert float(a.abs().max()) > 0.9 * bound  # 1,500 uniform draws reach the edge
    gen = torch.Generator().manual_seed(7)
    want = ((2.0 * torch.rand((30, 50), generator=gen, dtype=torch.float64) - 1.0) * bound)
    assert torch.equal(a, want.float())
    b = torch.zeros(30, 50)
    redraw_scores(b, 8)
    assert not torch.equal(a, b)
    conv = torch.zeros(4, 3, 2, 2)  # fan_in 12
    redraw_scores(conv, 1)
    assert float(conv.abs().max()) <= 1.0 / np.sqrt(12)
    state = torch.get_rng_state()
    redraw_scores(conv, 2)
    assert torch.equal(torch.get_rng_state(), state)  # torch's global stream is untouched


def train_task0(strategy, scenario):
    """Set ``strategy`` up on a 2-task MLP and train task 0; returns (model, trainer)."""
    torch.manual_seed(0)
    model = mlp((64,), 10, 2, width=48)
    trainer = Trainer(model, strategy, scenario, epochs=1, batch_size=32, lr=1e-2,
                      progress=False)
    strategy.setup(model, scenario)
    trainer.train_task(0)
    return model, trainer


def _after_task0(strategy):
    """Train task 0 of permuted digits; returns (model, scenario)."""
    scenario = digits_tasks(2)
    return train_task0(strategy, scenario)[0], scenario


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_new_share_admits_free_positions_into_the_next_tasks_initial_mask(share):
    strategy = TinySubNets(0.3, new_share=share, kl_threshold=float("inf"))
    model, scenario = _after_task0(strategy)
    layers = model.masked_layers()
    prev = {n: layers[n].task_mask(0).clone() for n in layers}
    scores = {n: layers[n].scores.detach().clone() for n in layers}
    strategy.before_task(1, model, scenario.tasks[1])
    for name, layer in layers.items():
        free = ~prev[name]  # after one task, the free positions are those outside its mask
        k = topk_count(layer.weight.numel(), 0.3)
        m = min(int(round(share * k)), int(free.sum()))
        mask = layer.score_mask()
        assert int(mask.sum()) == k
        assert int((mask & free).sum()) == m, name
        np.testing.assert_array_equal(np.sort(layer.scores.detach().abs().numpy(), axis=None),
                                      np.sort(scores[name].abs().numpy(), axis=None))


def test_default_keeps_the_scores_and_score_reset_redraws_them():
    strategy = TinySubNets(0.3, kl_threshold=float("inf"))
    model, scenario = _after_task0(strategy)
    layers = model.masked_layers()
    scores = {n: layers[n].scores.detach().clone() for n in layers}
    strategy.before_task(1, model, scenario.tasks[1])
    for name, layer in layers.items():  # the default: scores persist, the mask is task 0's
        assert torch.equal(layer.scores.detach(), scores[name])
        assert torch.equal(layer.score_mask(), layer.task_mask(0))

    strategy = TinySubNets(0.3, score_reset=True, kl_threshold=float("inf"))
    model, scenario = _after_task0(strategy)
    torch.manual_seed(123)
    strategy.before_task(1, model, scenario.tasks[1])
    for i, (name, layer) in enumerate(model.masked_layers().items()):
        want = torch.zeros_like(layer.scores)
        redraw_scores(want, 123 * 1_000_003 + i)
        assert torch.equal(layer.scores.detach(), want), name
    again = TinySubNets()
    again.load_state_dict(strategy.state_dict())
    assert again.score_reset is True and again.new_share == 0.0


def test_bad_score_options_are_refused():
    with pytest.raises(ValueError, match="new_share"):
        TinySubNets(new_share=1.5)
    with pytest.raises((ValueError, TypeError), match="score_reset"):
        TinySubNets(score_reset="yes")

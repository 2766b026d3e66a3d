"""Multi-task pruning: soft thresholds, loss weighting, metrics, masks, export and the trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitsub
from bitsub_torch.data.multitask import MTLScenario, MTLTask
from bitsub_torch.data.scenes import render
from bitsub_torch.mtl.export import export_mtl, load_mtl, packed_metrics
from bitsub_torch.mtl.model import build_model
from bitsub_torch.mtl.objectives import (
    LOWER_IS_BETTER,
    AdaptiveWeights,
    delta_t,
    predict,
    task_loss,
    task_metrics,
)
from bitsub_torch.mtl.pruning import keep_top, magnitude_prune, snip_prune
from bitsub_torch.mtl.thetas import (
    fisher_gradient,
    per_weight_gradient,
    positive_task_sum,
    pruned_loss_gradient,
)
from bitsub_torch.mtl.trainer import MTLConfig, evaluate, train_mtl
from tests import naive

torch.set_num_threads(1)


def _tiny_scenes(n: int = 40, size: int = 8) -> MTLScenario:
    r = render(n, seed=1, size=size)
    x = (r["image"] - 0.5) / 0.25
    ys = {"segmentation": r["segmentation"], "normal": r["normal"], "depth": r["depth"]}
    tasks = [MTLTask("segmentation", "segmentation", 5), MTLTask("normal", "normal", 3),
             MTLTask("depth", "depth", 1)]
    half = n // 2
    split = {"train": (x[:half], {k: v[:half] for k, v in ys.items()}),
             "val": (x[half:], {k: v[half:] for k, v in ys.items()}),
             "test": (x[half:], {k: v[half:] for k, v in ys.items()})}
    return MTLScenario("scenes", tasks, (3, size, size), split)


def _tiny_pairs(n: int = 60) -> MTLScenario:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
    ys = {"left": rng.integers(0, 10, n), "right": rng.integers(0, 10, n)}
    tasks = [MTLTask("left", "class", 10), MTLTask("right", "class", 10)]
    s = (x, ys)
    return MTLScenario("multimnist", tasks, (1, 12, 12), {"train": s, "val": s, "test": s})


# ---------------------------------------------------------------------------- soft threshold
def test_soft_threshold_formula_and_gradient():
    torch.manual_seed(0)
    model = build_model(_tiny_scenes(4), width=4)
    model.attach_thresholds("component", init=-1.5)
    name, layer = model.prunable()[0]
    w = layer.weight.detach().numpy().astype(np.float64)
    s = 1.0 / (1.0 + math.exp(1.5))
    want = np.sign(w) * np.maximum(np.abs(w) - s, 0.0)
    np.testing.assert_allclose(layer.sparse_weight().detach().numpy(), want, atol=1e-7)
    # theta gets a gradient, and only the backbone's theta from a backbone layer
    layer.sparse_weight().abs().sum().backward()
    grads = {k: p.grad for k, p in model.thresholds.theta.items()}
    assert grads["backbone"] is not None and float(grads["backbone"]) < 0
    assert all(g is None for k, g in grads.items() if k != "backbone")


def test_threshold_granularities():
    model = build_model(_tiny_scenes(4), width=4)
    model.attach_thresholds("component", -3.0)
    assert sorted(model.thresholds.theta) == ["backbone", "depth", "normal", "segmentation"]
    model.attach_thresholds("uniform", -3.0)
    assert list(model.thresholds.theta) == ["all"]
    model.attach_thresholds("layer", -3.0)
    assert len(model.thresholds.theta) == len(model.prunable())
    with pytest.raises(ValueError, match="granularity"):
        model.attach_thresholds("head", -3.0)


def test_sparsity_counts_zero_effective_weights():
    model = build_model(_tiny_pairs(), width=4)
    for _, m in model.prunable():
        m.mask.zero_()
    sp = model.sparsity()
    assert sp["overall"] == 1.0 and set(sp["components"]) == {"backbone", "left", "right"}
    model.attach_thresholds("uniform", init=20.0)  # sigmoid(20) ~ 1 > every |w|
    for _, m in model.prunable():
        m.mask.fill_(True)
    assert model.sparsity()["overall"] == 1.0


# ------------------------------------------------------------------------- loss weighting
def test_adaptive_weights_follow_the_fifo_mean():
    aw = AdaptiveWeights(["a", "b"], start=2, window=2)
    assert aw.update(0, {"a": 1.0, "b": 1.0}) == {"a": 1.0, "b": 1.0}
    aw.update(1, {"a": 2.0, "b": 1.0})  # before start: nothing recorded
    aw.update(2, {"a": 1.0, "b": 2.0})  # r_a = |2-1|/1 = 1, r_b = |1-2|/2 = 0.5
    w = aw.update(3, {"a": 2.0, "b": 2.0})  # r_a = 0.5, r_b = 0 -> means 0.75, 0.25
    assert w == pytest.approx({"a": 1.5, "b": 0.5})
    w = aw.update(4, {"a": 4.0, "b": 1.0})  # window 2: a [0.5, 0.5], b [0, 1] -> 0.5, 0.5
    assert w == pytest.approx({"a": 1.0, "b": 1.0})
    assert sum(aw.weights().values()) == pytest.approx(2.0)
    state = aw.state_dict()
    other = AdaptiveWeights(["a", "b"], start=2, window=2)
    other.load_state_dict(state)
    assert other.weights() == aw.weights()
    off = AdaptiveWeights(["a", "b"], start=0, window=2, enabled=False)
    for i in range(4):
        assert off.update(i, {"a": float(i + 1), "b": 1.0}) == {"a": 1.0, "b": 1.0}


# -------------------------------------------------------------------------------- metrics
def test_segmentation_metrics_by_hand():
    target = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    m = task_metrics("segmentation", pred, target, 4)
    # class 0: tp 2, fp 1, fn 1 -> 2/4; class 1: tp 2, fp 1 -> 2/3; class 2: tp 2, fn 1 -> 2/3
    assert m["miou"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert m["pixel_acc"] == pytest.approx(6 / 8)


def test_normal_and_depth_metrics_by_hand():
    up = np.array([0.0, 1.0, 0.0])
    angles = np.radians([0.0, 10.0, 20.0, 40.0])
    pred = np.stack([np.sin(angles), np.cos(angles), np.zeros(4)])[None]  # (1, 3, 4)
    target = np.repeat(up[None, :, None], 4, axis=2)
    m = task_metrics("normal", pred, target)
    assert m["angle_mean"] == pytest.approx(17.5, abs=1e-6)
    assert m["angle_median"] == pytest.approx(15.0, abs=1e-6)
    assert (m["within_11.25"], m["within_22.5"], m["within_30"]) == (0.5, 0.75, 0.75)
    g = np.array([1.0, 2.0, 4.0, 1.0])
    p = np.array([1.1, 3.0, 4.0, -1.0])  # the last one clamps to 1e-3
    m = task_metrics("depth", p, g)
    assert m["abs_err"] == pytest.approx((0.1 + 1.0 + 0.0 + (1 - 1e-3)) / 4)
    assert m["rel_err"] == pytest.approx((0.1 + 0.5 + 0 + (1 - 1e-3)) / 4)
    assert m["delta_1.25"] == 0.5 and m["delta_1.25^2"] == 0.75 and m["delta_1.25^3"] == 0.75


def test_delta_t_signs():
    dense = {"seg": {"miou": 0.5, "pixel_acc": 0.8}, "depth": {"abs_err": 1.0}}
    ours = {"seg": {"miou": 0.55, "pixel_acc": 0.8}, "depth": {"abs_err": 0.9}}
    dt, per = delta_t(ours, dense)
    assert per == pytest.approx({"seg": 10.0, "depth": 10.0}) and dt == pytest.approx(10.0)
    worse = {"seg": {"miou": 0.5, "pixel_acc": 0.4}, "depth": {"abs_err": 1.5}}
    dt, per = delta_t(worse, dense)
    assert per == pytest.approx({"seg": -50.0, "depth": -50.0})
    assert LOWER_IS_BETTER["abs_err"] and not LOWER_IS_BETTER["miou"]


# ---------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.999])
def test_keep_top_exact_and_global(sparsity):
    torch.manual_seed(1)
    model = build_model(_tiny_pairs(), width=4)
    n = sum(m.weight.numel() for _, m in model.prunable())
    magnitude_prune(model, sparsity)
    kept = sum(int(m.mask.sum()) for _, m in model.prunable())
    assert kept == round((1 - sparsity) * n)
    # global: the smallest kept |w| is at least the largest pruned |w|
    allw = [(m.weight.detach().abs(), m.mask) for _, m in model.prunable()]
    kept_min = min(float(w[k].min()) for w, k in allw if k.any())
    pruned_max = max((float(w[~k].max()) for w, k in allw if (~k).any()), default=-1.0)
    assert kept_min >= pruned_max


def test_iterated_magnitude_never_revives_and_snip_scores():
    torch.manual_seed(2)
    model = build_model(_tiny_pairs(), width=4)
    magnitude_prune(model, 0.5)
    first = [m.mask.clone() for _, m in model.prunable()]
    magnitude_prune(model, 0.8)
    for a, (_, m) in zip(first, model.prunable()):
        assert not (m.mask & ~a).any()
    with pytest.raises(ValueError, match="sparsity"):
        keep_top(model, [m.weight for _, m in model.prunable()], 1.0)
    sc = _tiny_pairs()
    x, ys = sc.split("train")
    fresh = build_model(sc, width=4)

    def loss():
        out = fresh(torch.from_numpy(x))
        return sum(torch.nn.functional.cross_entropy(out[t], torch.from_numpy(ys[t]))
                   for t in ("left", "right"))

    snip_prune(fresh, loss, 0.7)
    n = sum(m.weight.numel() for _, m in fresh.prunable())
    assert sum(int(m.mask.sum()) for _, m in fresh.prunable()) == round(0.3 * n)


# --------------------------------------------------------------------------------- export
@pytest.mark.parametrize("make", [_tiny_scenes, _tiny_pairs])
def test_export_lossless_roundtrip_and_backbone_once(make, tmp_path):
    torch.manual_seed(3)
    sc = make()
    model = build_model(sc, width=4)
    model.attach_thresholds("component", init=-2.5)  # prunes part of every layer
    pm = export_mtl(model)
    pm.save(tmp_path / "m.h5")
    pm = bitsub.load(tmp_path / "m.h5")
    tasks = model.task_names
    x, _ = sc.split("test")
    want = predict(model, x, sc.tasks)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    for t, name in enumerate(tasks):
        loaded = load_mtl(pm, sc, t, 4)
        with torch.no_grad():
            got = loaded(torch.from_numpy(x))
        assert torch.equal(got[name], ref[name])  # bit for bit
        assert np.array_equal(predict(loaded, x, sc.tasks, only=name)[name], want[name])
    assert packed_metrics(pm, sc, 4) == evaluate(model, sc)
    for name, m in model.prunable():
        nz = int((m.sparse_weight() != 0).sum())
        fields = [pm.fields(t, name) for t in range(len(tasks))]
        if m.component == "backbone":
            assert fields == [nz] + [0] * (len(tasks) - 1)  # stored once, read by every task
            for t in range(len(tasks)):
                assert np.array_equal(pm.weights(t, name), m.sparse_weight().detach().numpy())
        else:
            owner = tasks.index(m.component)
            assert fields == [nz if t == owner else 0 for t in range(len(tasks))]


def test_export_quantized_and_bad_arguments(tmp_path):
    sc = _tiny_pairs()
    model = build_model(sc, width=4)
    magnitude_prune(model, 0.5)
    pm = export_mtl(model, bits=3)
    for t in range(2):
        for name, _ in model.prunable():
            cb = pm.codebook(t, name)
            if pm.fields(t, name):
                assert len(cb) <= 8
                assert np.isin(pm.weights(t, name)[pm.mask(t, name)], cb).all()
    with pytest.raises(ValueError, match="bits"):
        export_mtl(model, bits=17)
    other = build_model(_tiny_scenes(4), width=4)
    with pytest.raises(ValueError, match="does not hold"):
        load_mtl(export_mtl(other), sc, 0, 4)


# -------------------------------------------------------------------------------- trainer
def test_adapmtl_reaches_the_target_and_freezes(tmp_path):
    sc = _tiny_pairs()
    c = MTLConfig(strategy="adapmtl", scenario="multimnist", sparsity=0.5, iterations=60,
                  batch_size=8, theta_init=-4.0, theta_lr=0.1, theta_decay=0.5, width=4)
    model, res = train_mtl(c, sc, out=tmp_path / "a", cache=tmp_path / "cache", progress=False)
    assert res["thresholds_frozen_at"] is not None
    assert res["sparsity"]["overall"] >= 0.5
    assert res["delta_t_reference"] == "trained by this command"
    assert set(res["metrics"]) == {"left", "right"}
    frozen = {k: float(p) for k, p in model.thresholds.theta.items()}
    # Re-run with the same command: resumed from the finished checkpoint, same model.
    again, res2 = train_mtl(c, sc, out=tmp_path / "a", cache=tmp_path / "cache", progress=False)
    assert res2["resumed"] and res2["metrics"] == res["metrics"]
    assert frozen == {k: float(p) for k, p in again.thresholds.theta.items()}
    # The dense reference is cached now.
    m, res3 = train_mtl(MTLConfig(**{**c.__dict__, "strategy": "magnitude"}), sc, out=None,
                        cache=tmp_path / "cache", progress=False)
    assert res3["delta_t_reference"].startswith("reused from cache")
    assert res3["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="another configuration"):
        train_mtl(MTLConfig(**{**c.__dict__, "seed": 5}), sc, out=tmp_path / "a",
                  cache=tmp_path / "cache", progress=False)


def test_adapmtl_follows_the_ramp_at_equal_budgets():
    sc = _tiny_scenes(24)
    base = dict(scenario="scenes", sparsity=0.8, iterations=8, finetune=12, ramp=0.5,
                batch_size=4, width=4)
    _, res = train_mtl(MTLConfig(strategy="adapmtl", **base), sc, progress=False)
    n = sum(m.weight.numel() for _, m in build_model(sc, width=4).prunable())
    ramp = 6
    assert res["thresholds_frozen_at"] == 8 + ramp
    for h in res["history"]:
        k = h["iteration"] - 8
        if 0 < k <= ramp:  # on the cubic ramp, just reaching it (the common shift is minimal)
            goal = 0.8 * (1 - (1 - k / ramp) ** 3)
            assert goal <= h["overall"] <= goal + 3 / n, h
        if k >= ramp:
            assert h["overall"] == res["sparsity"]["overall"]
    assert 0.8 <= res["sparsity"]["overall"] <= 0.8 + 3 / n
    # every pruning strategy trains iterations + finetune iterations in all
    assert res["history"][-1]["iteration"] == 20
    for strategy in ("magnitude", "snip", "adapmtl-uniform"):
        _, r = train_mtl(MTLConfig(strategy=strategy, **base), sc, progress=False)
        assert r["history"][-1]["iteration"] == 20, strategy
    # the same schedule for every other rule: thetas learning from the weighted relative
    # losses, the Fisher saliency rule (thetas per layer), the per-task rule, the measured loss
    # per pruned weight, and STR's loss gradient against the decay (other thetas: below)
    variants = [{"weighted_thetas": True},
                {"theta_gradient": "fisher", "granularity": "layer"},
                {"theta_gradient": "per-task"},
                {"theta_gradient": "pruned-loss"},
                {"theta_gradient": "loss"}]
    for variant in variants:
        _, r2 = train_mtl(MTLConfig(strategy="adapmtl", **variant, **base), sc, progress=False)
        assert r2["thresholds_frozen_at"] == 8 + ramp, variant
        assert 0.8 <= r2["sparsity"]["overall"] <= 0.8 + 3 / n, variant
    assert r2["history"][-1]["thetas"] != res["history"][-1]["thetas"]


def _thresholded_model(seed, granularity, init):
    """A tiny scenes model with thresholds attached, a generator of the seed, and theta keys."""
    torch.manual_seed(seed)
    model = build_model(_tiny_scenes(4), width=4)
    model.attach_thresholds(granularity, init=init, hard=True)
    return model, np.random.default_rng(seed), list(model.thresholds.theta)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["component", "layer", "uniform"]),
       st.floats(-3.0, -0.5), st.floats(0.01, 0.5))
def test_per_weight_gradient_matches_a_loop(seed, granularity, init, band):
    model, rng, keys = _thresholded_model(seed, granularity, init)
    with torch.no_grad():
        for _, m in model.prunable():
            m.mask.copy_(torch.from_numpy(rng.random(m.weight.shape) < 0.8))
        for i, p in enumerate(model.thresholds.theta.values()):
            p.add_(float(rng.normal(0, 0.3)))
            p.grad = None if i == 1 else torch.tensor(float(rng.normal()))
    grads = {k: 0.0 if p.grad is None else float(p.grad)
             for k, p in model.thresholds.theta.items()}
    cost = {}
    for k in keys:
        theta = model.thresholds.theta[k].detach()
        lo, hi = float(torch.sigmoid(theta - band)), float(torch.sigmoid(theta + band))
        n = 0
        for _, m in model.prunable():
            if m.theta_key.replace(".", "/") != k:
                continue
            w = m.weight.detach().numpy().ravel()
            for x, keep in zip(w.tolist(), m.mask.numpy().ravel()):
                n += bool(keep) and lo < abs(x) <= hi
        cost[k] = grads[k] * 2 * band / max(n, 1)
    mean = sum(cost.values()) / len(cost)
    per_weight_gradient(model, band)
    # the gradients are float32: one rounding of a value at most twice the largest cost
    ulp = 2.0 ** -23 * 2 * max(abs(v) for v in cost.values())
    for k, p in model.thresholds.theta.items():
        assert abs(float(p.grad) - (cost[k] - mean)) <= ulp, k
    # centred: the gradients cancel, so the common shift of the schedule is unchanged
    total = sum(float(p.grad) for p in model.thresholds.parameters())
    assert abs(total) <= len(keys) * ulp


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["component", "layer"]),
       st.floats(-3.0, -1.0), st.floats(0.05, 0.5))
def test_pruned_loss_gradient_matches_a_loop(seed, granularity, init, band):
    model, rng, keys = _thresholded_model(seed, granularity, init)
    sc = _tiny_scenes(4)
    x, ys = sc.split("train")

    def loss():
        with torch.no_grad():
            outs = model(torch.from_numpy(x))
            return sum(float(task_loss(t.kind, outs[t.name], torch.from_numpy(ys[t.name])))
                       for t in sc.tasks)

    def zeros():
        with torch.no_grad():
            return sum(int((m.sparse_weight() == 0).sum()) for _, m in model.prunable())

    with torch.no_grad():
        for p in model.thresholds.theta.values():
            p.add_(float(rng.normal(0, 0.3)))
    before = {k: float(p.detach()) for k, p in model.thresholds.theta.items()}
    base, z0 = loss(), zeros()
    cost = {}
    for k in keys:  # one theta raised at a time, by hand
        with torch.no_grad():
            model.thresholds.theta[k].add_(2 * band)
        cost[k] = (loss() - base) / max(zeros() - z0, 1)
        with torch.no_grad():
            model.thresholds.theta[k].fill_(before[k])
    mean = sum(cost.values()) / len(cost)
    pruned_loss_gradient(model, loss, band)
    assert {k: float(p.detach()) for k, p in model.thresholds.theta.items()} == before
    ulp = 2.0 ** -23 * 2 * max(abs(v) for v in cost.values())
    for k, p in model.thresholds.theta.items():
        assert abs(float(p.grad) - (cost[k] - mean)) <= ulp, k


def test_positive_task_sum_counts_each_task_harm_without_credit():
    t = torch.tensor
    # two tasks, three thetas: the shared one (both read it), one head each
    got = positive_task_sum([(t(0.5), t(-2.0), None), (t(-1.0), None, t(3.0))])
    assert [None if g is None else float(g) for g in got] == [0.5, 0.0, 3.0]
    got = positive_task_sum([(t(0.25), None), (t(0.5), None)])
    assert float(got[0]) == 0.75 and got[1] is None


def test_per_task_thetas_see_each_task_separately():
    # the backbone's theta is read by every task: its gradient is the sum of the positive
    # parts of the tasks' own gradients, computed here one task at a time
    sc = _tiny_scenes(8)
    torch.manual_seed(0)
    model = build_model(sc, width=4)
    model.attach_thresholds("component", init=-3.0, hard=True)
    x, ys = sc.split("train")
    outs = model(torch.from_numpy(x[:4]))
    thetas = list(model.thresholds.parameters())
    per = []
    for task in sc.tasks:
        loss = task_loss(task.kind, outs[task.name], torch.from_numpy(ys[task.name][:4]))
        per.append(torch.autograd.grad(loss, thetas, retain_graph=True, allow_unused=True))
    got = positive_task_sum(per)
    keys = list(model.thresholds.theta)
    for i, k in enumerate(keys):
        readers = [g[i] for g in per if g is not None and g[i] is not None]
        if k == "backbone":
            assert len(readers) == len(sc.tasks)
        else:
            assert len(readers) == 1
        want = sum(max(float(g), 0.0) for g in readers)
        # float32 sums of at most three terms: two roundings of at most the sum of magnitudes
        assert abs(float(got[i]) - want) <= 2.0 ** -23 * 2 * sum(abs(float(g)) for g in readers)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["component", "layer", "uniform"]),
       st.floats(-3.0, -0.5), st.floats(0.01, 0.5))
def test_fisher_gradient_matches_a_loop(seed, granularity, init, band):
    model, rng, keys = _thresholded_model(seed, granularity, init)
    fisher = {}
    with torch.no_grad():
        for i, (name, m) in enumerate(model.prunable()):
            m.mask.copy_(torch.from_numpy(rng.random(m.weight.shape) < 0.8))
            if i != 1:  # a layer without a running mean counts its weights, at no cost
                fisher[name] = torch.from_numpy(rng.random(m.weight.shape)).float()
        for p in model.thresholds.theta.values():
            p.add_(float(rng.normal(0, 0.3)))
    total, count = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0)
    for name, m in model.prunable():
        k = m.theta_key.replace(".", "/")
        theta = model.thresholds.theta[k].detach()
        lo = float(torch.sigmoid(theta))
        hi = float(torch.sigmoid(theta + 2 * band))
        w = m.weight.detach().numpy().ravel().tolist()
        f = fisher[name].numpy().ravel().tolist() if name in fisher else [0.0] * len(w)
        for x, keep, fx in zip(w, m.mask.numpy().ravel(), f):
            if bool(keep) and lo < abs(x) <= hi:
                total[k] += 0.5 * x * x * fx
                count[k] += 1
    cost = {k: total[k] / count[k] if count[k] else 0.0 for k in keys}
    mean = sum(cost.values()) / len(cost)
    fisher_gradient(model, fisher, band)
    # float32 gradients: one rounding of a value at most twice the largest cost (and the
    # float64 sums differ from the loop's only in their order)
    ulp = 2.0 ** -23 * 2 * max(abs(v) for v in cost.values()) + 1e-12
    for k, p in model.thresholds.theta.items():
        assert abs(float(p.grad) - (cost[k] - mean)) <= ulp, k
    # centred: the common shift of the schedule is unchanged
    assert abs(sum(float(p.grad) for p in model.thresholds.parameters())) <= len(keys) * ulp


class _Stop(Exception):
    pass


class _Fuse(np.ndarray):
    """Training inputs that raise on the n-th fancy-indexed read: a run killed mid-phase."""

    left = -1

    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            _Fuse.left -= 1
            if _Fuse.left == 0:
                raise _Stop
        return np.asarray(self).__getitem__(key)


def test_resume_mid_phase_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import bitsub_torch.mtl.trainer as tr

    sc = _tiny_pairs()
    c = MTLConfig(strategy="snip", scenario="multimnist", sparsity=0.6, iterations=12,
                  batch_size=8, width=4)
    whole, _ = train_mtl(c, sc, out=tmp_path / "whole", progress=False)
    monkeypatch.setattr(tr, "CHECKPOINT_EVERY", 7)
    x, ys = sc.split("train")
    cut = MTLScenario(sc.name, sc.tasks, sc.input_shape,
                      {**sc.splits, "train": (x.view(_Fuse), ys)})
    _Fuse.left = 10  # the SNIP batch, then iterations 0..8: killed after the checkpoint at 7
    with pytest.raises(_Stop):
        train_mtl(c, cut, out=tmp_path / "cut", progress=False)
    _Fuse.left = -1
    resumed, res = train_mtl(c, cut, out=tmp_path / "cut", progress=False)
    assert res["resumed"]
    for (n, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


def test_budgets_are_the_scenarios():
    # multimnist: 1,800 dense iterations of batch 16 (2.9 passes over its 10,000 pairs), the
    # pruning phase a half, its window a tenth; scenes keeps 600 (4.8 passes over 2,000 scenes)
    mm = MTLConfig(strategy="adapmtl", scenario="multimnist").resolved()
    assert (mm.iterations, mm.finetune, mm.warmup, mm.window) == (1800, 900, 1800, 180)
    assert mm.iterations * mm.batch_size >= 2.5 * 10000
    sc = MTLConfig(strategy="magnitude", scenario="scenes").resolved()
    assert (sc.iterations, sc.finetune, sc.window) == (600, 300, 60)
    fixed = MTLConfig(scenario="multimnist", iterations=40).resolved()
    assert (fixed.iterations, fixed.finetune) == (40, 20)


@pytest.mark.parametrize("bad", [dict(strategy="lth"), dict(sparsity=1.0), dict(iterations=0),
                                 dict(lr=0.0), dict(ramp=0.0), dict(ramp=1.5),
                                 dict(threshold="sharp"), dict(theta_decay=0.0),
                                 dict(theta_gradient="slope")])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        MTLConfig(**bad).resolved()


# --------------------------------------------------------------------- against tests/naive
@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 6), seed=st.integers(0, 2**16), scale=st.sampled_from([0.0, 1.0, 255.0]))
def test_overlay_pairs_matches_naive(n, seed, scale):
    from bitsub_torch.data.multitask import overlay_pairs

    rng = np.random.default_rng(seed)
    images = (rng.random((5, 28, 28)) * scale).astype(np.float32)
    labels = rng.integers(0, 10, 5)
    got = overlay_pairs(images, labels, n, np.random.default_rng(seed + 1))
    want = naive.naive_overlay_pairs(images, labels, n, np.random.default_rng(seed + 1))
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from([(1,), (3, 5), (2, 1, 3, 3)]), theta=st.floats(-8, 3),
       seed=st.integers(0, 2**16))
def test_soft_threshold_matches_naive(shape, theta, seed):
    from bitsub_torch.mtl.model import SoftThreshold, SparseLinear

    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.1
    layer = SparseLinear(1, 1, "backbone")
    layer.weight = torch.nn.Parameter(torch.from_numpy(w))
    layer.mask = torch.ones(shape, dtype=torch.bool)
    th = SoftThreshold(["backbone"], theta)
    layer.attach(th, "backbone")
    got = layer.sparse_weight().detach().numpy()
    want = naive.naive_soft_threshold(w, theta)
    # float32 sigmoid and subtraction: within a few ulp of the float64 answer
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.finfo(np.float32).eps)
    near = np.abs(np.abs(w) - 1 / (1 + np.exp(-theta))) < 1e-6  # a tie may round either way
    assert ((got == 0) == (want == 0))[~near].all()


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from([(1,), (3, 5), (2, 1, 3, 3)]), theta=st.floats(-8, 3),
       seed=st.integers(0, 2**16))
def test_hard_threshold_forward_and_straight_through_gradients(shape, theta, seed):
    from bitsub_torch.mtl.model import SoftThreshold, SparseLinear

    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * 0.1
    c = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    out = {}
    for hard in (True, False):
        layer = SparseLinear(1, 1, "backbone")
        layer.weight = torch.nn.Parameter(torch.from_numpy(w.copy()))
        layer.mask = torch.ones(shape, dtype=torch.bool)
        th = SoftThreshold(["backbone"], theta, hard=hard)
        layer.attach(th, "backbone")
        eff = layer.sparse_weight()
        (eff * c).sum().backward()
        out[hard] = (eff.detach().numpy(), layer.weight.grad.numpy(),
                     float(th.theta["backbone"].grad))
    s = float(torch.sigmoid(torch.tensor(float(theta))))  # the float32 threshold
    kept = np.abs(w) > s
    # forward: the kept weights unchanged, the others exactly +0.0
    assert np.array_equal(out[True][0], np.where(kept, w, np.float32(0)))
    assert not np.signbit(out[True][0][~kept]).any()
    # backward: the soft threshold's gradients, bit for bit
    assert np.array_equal(out[True][1], out[False][1])
    assert np.array_equal(out[True][1], np.where(kept, c.numpy(), np.float32(0)))
    assert out[True][2] == out[False][2]


def test_adaptive_bits_exports_exactly_what_it_evaluated(tmp_path):
    from bitsub_torch.mtl.export import adaptive_bits

    torch.manual_seed(4)
    sc = _tiny_pairs()
    model = build_model(sc, width=4)
    magnitude_prune(model, 0.6)
    bits, reached = adaptive_bits(model, sc, delta=5.0, max_bits=6)
    assert set(bits) == {n for n, _ in model.prunable()} and all(1 <= b <= 6 for b in bits.values())
    assert reached >= -5.0 or max(bits.values()) == 6
    for name, m in model.prunable():
        w = m.sparse_weight().detach().numpy()
        assert len(np.unique(w[w != 0])) <= 2 ** bits[name]
    pm = export_mtl(model, bits=bits)
    pm.save(tmp_path / "q.h5")
    assert packed_metrics(bitsub.load(tmp_path / "q.h5"), sc) == evaluate(model, sc)

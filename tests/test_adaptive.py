"""Adaptive bit-width search (Algorithm 1 of TinySubNets) with a NumPy accuracy callback."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import bitsub
from bitsub import AdaptiveResult, adaptive_bitwidth, quantize


def make_layers(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "fc1": rng.standard_normal((16, 8)).astype(np.float32),
        "fc2": rng.laplace(size=(4, 16)).astype(np.float32),
    }


def error_accuracy(layers):
    """Accuracy = 1 - RMS quantization error relative to the weights: rises with the bits."""

    def evaluate(quantized):
        assert set(quantized) == set(layers)
        err = 0.0
        ref = 0.0
        for name, w in layers.items():
            q = quantized[name]
            assert q.dtype == np.float32 and q.shape == w.shape
            err += float(((q - w) ** 2).sum())
            ref += float((w**2).sum())
        return 1.0 - np.sqrt(err / ref)

    return evaluate


def test_uniform_search_finds_smallest_bits_and_caches():
    layers = make_layers()
    evaluate = error_accuracy(layers)
    calls = []

    def counting(q):
        calls.append(1)
        return evaluate(q)

    res = adaptive_bitwidth(layers, counting, baseline=1.0, delta=0.05, max_bits=8)
    assert isinstance(res, AdaptiveResult)
    b = res.bits["fc1"]
    assert res.bits == {"fc1": b, "fc2": b}
    # The slow reference: evaluate every uniform bit-width directly.
    accs = {}
    for bits in range(1, 9):
        q = {n: quantize(w, bits)[0][quantize(w, bits)[1]] for n, w in layers.items()}
        accs[bits] = evaluate(q)
    expected = next(bits for bits in range(1, 9) if accs[bits] >= 0.95)
    assert b == expected
    assert res.accuracy == pytest.approx(accs[b])
    assert res.accuracy >= 0.95
    assert [h[0]["fc1"] for h in res.history] == list(range(1, b + 1))
    assert len(calls) == len(res.history) == b
    for name, w in layers.items():
        assert res.codebooks[name].shape == (2**b,)
        assert res.codes[name].shape == w.shape
        c, codes = quantize(w, b)
        assert np.array_equal(res.codebooks[name], c) and np.array_equal(res.codes[name], codes)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.accuracy = 0.0


def test_stops_at_max_bits_when_bar_not_reached():
    layers = make_layers(1)
    res = adaptive_bitwidth(layers, lambda q: 0.0, baseline=1.0, delta=0.1, min_bits=2, max_bits=4)
    assert res.bits == {"fc1": 4, "fc2": 4}
    assert res.accuracy == 0.0
    assert [h[0]["fc1"] for h in res.history] == [2, 3, 4]


def test_min_bits_enough_evaluates_once():
    layers = make_layers(2)
    res = adaptive_bitwidth(layers, lambda q: 0.9, baseline=0.9, delta=0.0, min_bits=3)
    assert res.bits == {"fc1": 3, "fc2": 3} and len(res.history) == 1


def test_per_layer_lowers_only_the_layer_that_can_go_lower():
    rng = np.random.default_rng(3)
    layers = {
        "sensitive": rng.standard_normal(64).astype(np.float32),
        "tolerant": rng.standard_normal(64).astype(np.float32),
    }

    def evaluate(q):
        # Only the sensitive layer matters for accuracy.
        w = layers["sensitive"]
        return 1.0 - float(np.sqrt(((q["sensitive"] - w) ** 2).mean() / (w**2).mean()))

    uniform = adaptive_bitwidth(layers, evaluate, baseline=1.0, delta=0.1)
    res = adaptive_bitwidth(layers, evaluate, baseline=1.0, delta=0.1, per_layer=True)
    b = uniform.bits["sensitive"]
    assert b > 1
    assert res.bits == {"sensitive": b, "tolerant": 1}
    assert res.accuracy >= 0.9
    assert res.codebooks["tolerant"].shape == (2,)
    # Every state evaluated once: the uniform climb, then one lowering step per bit of "tolerant"
    # and one rejected step for "sensitive".
    keys = [tuple(sorted(h[0].items())) for h in res.history]
    assert len(keys) == len(set(keys)) == b + (b - 1) + 1


def test_layers_of_any_shape_and_float64():
    layers = {"conv": np.random.default_rng(4).standard_normal((3, 2, 3, 3))}
    res = adaptive_bitwidth(layers, lambda q: 1.0, baseline=1.0, delta=0.0)
    assert res.codes["conv"].shape == (3, 2, 3, 3)
    assert bitsub.adaptive_bitwidth is adaptive_bitwidth


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"layers": {}}, ValueError),
        ({"layers": [np.ones(3)]}, ValueError),
        ({"layers": {1: np.ones(3)}}, TypeError),
        ({"layers": {"a": np.array([])}}, ValueError),
        ({"layers": {"a": np.array([1.0, np.nan])}}, ValueError),
        ({"layers": {"a": np.array(["x"])}}, TypeError),
        ({"evaluate": 3}, TypeError),
        ({"evaluate": lambda q: "high"}, TypeError),
        ({"evaluate": lambda q: float("nan")}, ValueError),
        ({"min_bits": 0}, ValueError),
        ({"max_bits": 17}, ValueError),
        ({"min_bits": 5, "max_bits": 4}, ValueError),
        ({"min_bits": 1.5}, TypeError),
        ({"delta": -0.1}, ValueError),
        ({"baseline": float("inf")}, ValueError),
        ({"method": "em"}, ValueError),
    ],
)
def test_rejects_bad_arguments(kwargs, exc):
    args = {
        "layers": {"a": np.arange(5.0)},
        "evaluate": lambda q: 0.5,
        "baseline": 1.0,
        "delta": 0.1,
    }
    args.update(kwargs)
    layers = args.pop("layers")
    evaluate = args.pop("evaluate")
    with pytest.raises(exc):
        adaptive_bitwidth(layers, evaluate, **args)

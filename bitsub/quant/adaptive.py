"""Adaptive bit-width search: Algorithm 1 of TinySubNets, with an optional per-layer pass.

Quantize every layer at the smallest bit-width, ask a callback for the accuracy of the quantized
layers, and raise the bit-width until the accuracy drop is within ``delta``. The accuracy comes
from any callable, so bitsub stays free of torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from bitsub.quant.kmeans import METHODS, quantize
from bitsub.validate import check_int

__all__ = ["AdaptiveResult", "adaptive_bitwidth"]


@dataclass(frozen=True)
class AdaptiveResult:
    """Outcome of :func:`adaptive_bitwidth`.

    Attributes
    ----------
    bits : dict of str to int
        Chosen bit-width per layer (all equal unless ``per_layer=True``).
    codebooks : dict of str to ndarray of float32
        Per layer, ``2**bits`` ascending centroids.
    codes : dict of str to ndarray
        Per layer, the codes (uint8, or uint16 above 8 bits), shaped like the layer.
    accuracy : float
        Accuracy returned by ``evaluate`` for the chosen bit-widths.
    history : list of (dict of str to int, float)
        Every evaluation in order: the bit-widths tried and the accuracy they gave.
    """

    bits: dict[str, int]
    codebooks: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    accuracy: float
    history: list[tuple[dict[str, int], float]]


def adaptive_bitwidth(
    layers: Mapping[str, np.ndarray],
    evaluate: Callable[[dict[str, np.ndarray]], float],
    *,
    baseline: float,
    delta: float,
    min_bits: int = 1,
    max_bits: int = 8,
    per_layer: bool = False,
    method: str = "auto",
) -> AdaptiveResult:
    """Smallest bit-width whose K-Means quantization keeps accuracy within ``delta``.

    Algorithm 1 of TinySubNets: quantize every layer at ``min_bits``; while
    ``evaluate(quantized) < baseline - delta`` and the bit-width is below ``max_bits``, add one
    bit to every layer and evaluate again. When ``max_bits`` is reached the result is that
    bit-width even if the accuracy is still short (check ``result.accuracy``).

    With ``per_layer=True`` a greedy pass follows: layer by layer (in the mapping's order, each
    layer visited once), lower that layer's bit-width one bit at a time, down to ``min_bits``,
    for as long as the accuracy stays at or above ``baseline - delta``; the first bit-width
    that breaks it is put back and the pass moves on to the next layer. Skipped when the uniform
    search ended below the bar.

    Every (layer, bit-width) is quantized once and cached; ``evaluate`` is called once per
    distinct assignment of bit-widths tried.

    Parameters
    ----------
    layers : mapping of str to array_like of float
        Per layer name, the task's weights to quantize (any shape; finite, non-empty).
    evaluate : callable
        ``evaluate(quantized) -> accuracy``, where ``quantized`` maps every layer name to a
        float32 array of the layer's shape (``codebook[codes]``). Higher is better.
    baseline : float
        Accuracy of the unquantized model.
    delta : float
        Largest accepted accuracy drop, ``>= 0``.
    min_bits, max_bits : int
        Bit-width range searched, ``1 <= min_bits <= max_bits <= 16``.
    per_layer : bool
        Run the greedy per-layer lowering pass afterwards.
    method : {"auto", "optimal", "lloyd"}
        K-Means method, see :func:`bitsub.kmeans_1d`.

    Returns
    -------
    AdaptiveResult
        Chosen bit-widths, codebooks, codes, the accuracy reached and the history.

    Raises
    ------
    TypeError, ValueError
        For bad arguments (empty ``layers``, non-string names, bits out of range, a
        non-callable ``evaluate`` or one that returns a non-finite number).
    """
    if not isinstance(layers, Mapping) or len(layers) == 0:
        raise ValueError("layers must be a non-empty mapping of layer name -> weight array")
    if not callable(evaluate):
        raise TypeError("evaluate must be a callable: evaluate(quantized_layers) -> accuracy")
    lo = check_int(min_bits, "min_bits", 1, 16)
    hi = check_int(max_bits, "max_bits", 1, 16)
    if lo > hi:
        raise ValueError(f"min_bits ({lo}) must not exceed max_bits ({hi})")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    baseline = float(baseline)
    delta = float(delta)
    if not (np.isfinite(baseline) and np.isfinite(delta)) or delta < 0:
        raise ValueError("baseline must be finite and delta finite and >= 0")
    weights: dict[str, np.ndarray] = {}
    for name, value in layers.items():
        if not isinstance(name, str):
            raise TypeError(f"layer names must be str, got {type(name).__name__}")
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"layer {name!r} must be a real numeric array, got {arr.dtype}")
        if arr.size == 0 or not np.isfinite(arr).all():
            raise ValueError(f"layer {name!r} must be non-empty and finite")
        weights[name] = arr
    names = list(weights)
    cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    history: list[tuple[dict[str, int], float]] = []
    seen: dict[tuple[int, ...], float] = {}

    def layer_at(name: str, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (name, b)
        if key not in cache:
            centroids, codes = quantize(weights[name], b, method=method)
            cache[key] = (centroids, codes, centroids[codes])
        return cache[key]

    def accuracy(bits: dict[str, int]) -> float:
        key = tuple(bits[n] for n in names)
        if key not in seen:
            quantized = {n: layer_at(n, bits[n])[2] for n in names}
            acc = evaluate(quantized)
            try:
                acc = float(acc)
            except (TypeError, ValueError):
                kind = type(acc).__name__
                raise TypeError(f"evaluate must return a number, got {kind}") from None
            if not np.isfinite(acc):
                raise ValueError(f"evaluate returned a non-finite accuracy: {acc}")
            seen[key] = acc
            history.append((dict(bits), acc))
        return seen[key]

    bar = baseline - delta
    b = lo
    bits = {n: b for n in names}
    acc = accuracy(bits)
    while acc < bar and b < hi:
        b += 1
        bits = {n: b for n in names}
        acc = accuracy(bits)
    if per_layer and acc >= bar:
        for n in names:
            while bits[n] > lo:
                trial = {**bits, n: bits[n] - 1}
                trial_acc = accuracy(trial)
                if trial_acc < bar:
                    break
                bits, acc = trial, trial_acc
    return AdaptiveResult(
        bits=dict(bits),
        codebooks={n: layer_at(n, bits[n])[0] for n in names},
        codes={n: layer_at(n, bits[n])[1] for n in names},
        accuracy=acc,
        history=history,
    )

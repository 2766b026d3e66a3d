"""Activation quantization of a task network's task layers (TinySubNets' Table 7).

Two ways to run the task layers at low precision: :class:`quantized_inference` rounds every
input and the weight values read to a ``bits``-bit grid per sample (``<b, b>`` inference), and
:class:`quantized_activations` rounds every input on a grid fixed per tensor by ranges that
:func:`calibrate_activations` measures (as a fixed-point accelerator would run it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bitsub.validate import check_int

__all__ = [
    "ACTIVATION_SCHEME",
    "calibrate_activations",
    "fake_quantize",
    "fake_quantize_range",
    "quantized_activations",
    "quantized_inference",
]


def fake_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``x`` to a uniform ``bits``-bit grid, one max-abs scale per sample (row of dim 0).

    Signed (``2**(bits-1) - 1`` levels each side) where the sample has negative values, unsigned
    (``2**bits - 1`` levels, e.g. after a ReLU) otherwise. A scale per sample keeps predictions
    independent of the batch. A 0-D or 1-D tensor (weights, codebooks) gets one scale.
    """
    bits = check_int(bits, "bits", 2, 32)
    if bits >= 32:
        return x
    flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
    amax = flat.abs().amax(dim=1, keepdim=True)
    signed = (flat < 0).any(dim=1, keepdim=True)
    levels = torch.where(signed, 2.0 ** (bits - 1) - 1, 2.0**bits - 1).to(flat.dtype)
    scale = torch.where(amax > 0, amax / levels, torch.ones_like(amax))
    return (torch.round(flat / scale) * scale).reshape(x.shape)


class quantized_inference:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Context in which every task layer runs at ``<bits, bits>`` (TinySubNets' Table 7).

    Inside it, each task layer's input activations are fake-quantized with :func:`fake_quantize`
    and the weight values it reads (the K-Means centroids of quantizing strategies) are rounded to
    a ``bits``-bit grid per layer. Heads, norms and pooling stay in float.

    Examples
    --------
    >>> with quantized_inference(model, 8):  # doctest: +SKIP
    ...     acc = trainer.evaluate(model, task, "test")
    """

    def __init__(self, model: nn.Module, bits: int) -> None:
        self.model = model
        self.bits = check_int(bits, "bits", 2, 32)
        self._handles: list[Any] = []
        self._saved: list[tuple[nn.Module, Any]] = []

    def __enter__(self) -> quantized_inference:
        bits = self.bits

        def pre_hook(module: nn.Module, args: tuple) -> tuple:
            return (fake_quantize(args[0], bits), *args[1:])

        for layer in self.model.masked_layers().values():
            self._handles.append(layer.register_forward_pre_hook(pre_hook))
            original = layer.values
            self._saved.append((layer, layer.__dict__.get("values")))

            def values(task: int, f: Any = original) -> torch.Tensor:
                v = f(task)
                return fake_quantize(v.reshape(-1), bits).reshape(v.shape)

            layer.values = values
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        for layer, values in self._saved:
            if values is None:
                layer.__dict__.pop("values", None)
            else:
                layer.values = values
        self._handles, self._saved = [], []


ACTIVATION_SCHEME = (
    "static per-tensor activation quantization of every task layer's input: range calibrated "
    "per task on its validation split (train split where it has none, never test) as the min and "
    "max of the float input; unsigned [0, max] with 2**b - 1 levels where min >= 0 (after a "
    "ReLU), else symmetric [-a, a] with 2**(b-1) - 1 levels each side, a = max(|min|, |max|); "
    "inputs outside the range are clamped; weights as stored, heads and norms in float"
)


def fake_quantize_range(x: torch.Tensor, bits: int, lo: float, hi: float) -> torch.Tensor:
    """Quantize ``x`` to ``bits`` bits on a fixed, calibrated range (see `ACTIVATION_SCHEME`).

    Unsigned grid ``k * hi / (2**bits - 1)``, k in 0..2**bits-1, where ``lo >= 0``; otherwise
    symmetric grid ``k * a / (2**(bits-1) - 1)``, ``|k| <= 2**(bits-1) - 1``,
    ``a = max(-lo, hi)``. Values outside the grid's range are clamped to it.
    """
    bits = check_int(bits, "bits", 2, 32)
    if bits >= 32:
        return x
    lo, hi = float(lo), float(hi)
    if lo >= 0:
        levels, amax, kmin = 2.0**bits - 1, hi, 0.0
    else:
        levels = 2.0 ** (bits - 1) - 1
        amax = max(-lo, hi)
        kmin = -levels
    if not amax > 0:
        return torch.zeros_like(x)
    scale = amax / levels
    return torch.clamp(torch.round(x / scale), kmin, levels) * scale


@torch.no_grad()
def calibrate_activations(
    model: nn.Module, task: int, x: np.ndarray, *, batch_size: int = 1024
) -> dict[str, tuple[float, float]]:
    """The (min, max) of every task layer's float input over ``x`` in the forward of ``task``.

    Pass a validation split: the ranges then fix the activation grids used on the test split.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("calibrate_activations needs at least one sample (pass the val split)")
    ranges: dict[str, list[float]] = {}

    def record(name: str, inp: torch.Tensor) -> None:
        lo, hi = float(inp.min()), float(inp.max())
        old = ranges.get(name)
        ranges[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]

    hooks = [
        layer.register_forward_pre_hook(lambda m, a, name=name: record(name, a[0]))
        for name, layer in model.masked_layers().items()
    ]
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(x), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size])).to(dev), task)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: (lo, hi) for name, (lo, hi) in ranges.items()}


class quantized_activations:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Context in which every task layer's input is quantized to ``bits`` on calibrated ranges.

    ``ranges`` come from :func:`calibrate_activations` (per layer (min, max)); the weights are
    left as the layers read them (the stored values). Unlike :class:`quantized_inference` the
    grid is fixed per tensor, not per sample, as a fixed-point accelerator would run it.
    """

    def __init__(
        self, model: nn.Module, bits: int, ranges: dict[str, tuple[float, float]]
    ) -> None:
        self.model = model
        self.bits = check_int(bits, "bits", 2, 32)
        layers = model.masked_layers()
        missing = sorted(set(layers) - set(ranges))
        if missing:
            raise ValueError(
                f"no calibrated range for layers {missing}: run calibrate_activations for the "
                "same task first"
            )
        self.ranges = {n: (float(ranges[n][0]), float(ranges[n][1])) for n in layers}
        self._handles: list[Any] = []

    def __enter__(self) -> quantized_activations:
        for name, layer in self.model.masked_layers().items():
            lo, hi = self.ranges[name]

            def pre_hook(m: nn.Module, args: tuple, lo: float = lo, hi: float = hi) -> tuple:
                return (fake_quantize_range(args[0], self.bits, lo, hi), *args[1:])

            self._handles.append(layer.register_forward_pre_hook(pre_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

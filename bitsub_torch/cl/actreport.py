"""Accuracy of every task of a run with its task layers' activations quantized (Table 7)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from bitsub.validate import check_int
from bitsub_torch.cl.strategies.base import Evaluate, val_split
from bitsub_torch.nn.actquant import ACTIVATION_SCHEME, calibrate_activations, quantized_activations

__all__ = ["ACTIVATION_BITS", "activation_accuracy"]

ACTIVATION_BITS = (4, 8, 16)
"""Default activation bit-widths of a run's ``activation_quantization`` report (Table 7)."""


def activation_accuracy(
    model: nn.Module,
    tasks: Any,
    evaluate: Evaluate,
    bits: tuple[int, ...] = ACTIVATION_BITS,
) -> dict[str, Any]:
    """Per-task test accuracy with activations quantized to each of ``bits`` (Table 7).

    Parameters
    ----------
    model : TaskNetwork
        The trained model (weights as stored by its strategy).
    tasks : sequence
        The scenario's tasks (``x_val`` / ``x_train`` for calibration).
    evaluate : callable
        ``evaluate(model, task, "test")`` -> accuracy, e.g. ``Trainer.evaluate``.
    bits : tuple of int
        Activation bit-widths, each 2..16.

    Returns
    -------
    dict
        ``"float"`` and ``str(b)`` for each b: per-task accuracies; ``"mean"``: their means by
        the same keys; ``"bits"``, ``"calibration"`` (split per task) and ``"scheme"``
        (`ACTIVATION_SCHEME`).
    """
    bits = tuple(check_int(b, "activation bits", 2, 16) for b in bits)
    out: dict[str, Any] = {"float": []}
    out.update({str(b): [] for b in bits})
    splits = []
    for t, data in enumerate(tasks):
        split = val_split(data)
        splits.append(split)
        ranges = calibrate_activations(model, t, getattr(data, f"x_{split}"))
        out["float"].append(float(evaluate(model, t, "test")))
        for b in bits:
            with quantized_activations(model, b, ranges):
                out[str(b)].append(float(evaluate(model, t, "test")))
    out["mean"] = {k: float(np.mean(v)) if v else None for k, v in out.items()}
    out.update({"bits": list(bits), "calibration": splits, "scheme": ACTIVATION_SCHEME})
    return out

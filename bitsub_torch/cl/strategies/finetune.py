"""Finetune: train every task on all weights, nothing frozen (the forgetting baseline)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bitsub_torch.cl.strategies.base import Strategy

__all__ = ["Finetune"]


class Finetune(Strategy):
    """All tasks share and overwrite all weights; only the heads and norms are per task.

    Shows catastrophic forgetting (BWT < 0). For export, task 0 writes every position with the
    current weights and every task reads all of them, which is exactly the torch model.
    """

    name = "finetune"

    def before_task(self, task: int, model: nn.Module, data: Any) -> None:
        """Nothing is frozen."""

    def after_backward(self, task: int, model: nn.Module) -> None:
        """Nothing is frozen."""

    def after_step(self, task: int, model: nn.Module) -> None:
        """Nothing is frozen."""

    def export_layers(self, model: nn.Module, task: int) -> dict[str, dict]:  # noqa: D102
        out = {}
        for name, layer in model.masked_layers().items():
            mask = np.ones(tuple(layer.weight.shape), dtype=np.bool_)
            with torch.no_grad():
                values = layer.values(task).detach().cpu().numpy().astype(np.float32, copy=True)
            write = mask.copy() if task == 0 else np.zeros_like(mask)
            out[name] = {"mask": mask, "write": write, "values": values}
        return out

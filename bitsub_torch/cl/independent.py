"""The upper bound of the results table: one independent float32 model per task."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from bitsub_torch.cl.strategies.base import Evaluate, Strategy

__all__ = ["Independent"]


class Independent(Strategy):
    """One independent float32 model per task: the upper bound of the table.

    Every task starts from freshly initialised weights (seeded by the trainer), trains all of
    them, and keeps its own copy afterwards: ``layer.values(t)`` returns task t's copy, so no
    task can disturb another. Export puts each task in its own bank, every position written with
    a raw float32 field: the capacity is about ``tasks x 100%``.
    """

    name = "independent"
    word_bits = 64
    prefix_bits = 1

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, dict[int, torch.Tensor]] = {}

    def setup(self, model: nn.Module, scenario: Any) -> None:
        """Route every task layer's ``values(t)`` to task t's own copy once it has one."""
        for name, layer in model.masked_layers().items():
            self.stored.setdefault(name, {})
            copies = self.stored[name]

            def values(self_layer: nn.Module, task: int, copies: dict = copies) -> torch.Tensor:
                return copies.get(task, self_layer.weight)

            layer.values = values.__get__(layer)

    def before_task(self, task: int, model: nn.Module, data: Any) -> None:
        """Fresh weights, as the layers initialise them; nothing frozen."""
        with torch.no_grad():
            for layer in model.masked_layers().values():
                if layer.weight.dim() > 1:
                    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
                else:  # pragma: no cover - task layers are 2-D or 4-D
                    nn.init.zeros_(layer.weight)

    def after_backward(self, task: int, model: nn.Module) -> None:
        """Nothing is frozen."""

    def after_step(self, task: int, model: nn.Module) -> None:
        """Nothing is frozen."""

    def after_task(self, task: int, model: nn.Module, data: Any, evaluate: Evaluate) -> None:
        """Keep a copy of the task's weights."""
        for name, layer in model.masked_layers().items():
            self.stored.setdefault(name, {})[task] = layer.weight.detach().clone()
        if task not in self.finished:
            self.finished.append(task)

    def export_layers(self, model: nn.Module, task: int) -> dict[str, dict]:
        """Every position used and written, with the task's own values."""
        out = {}
        for name, layer in model.masked_layers().items():
            values = self.stored.get(name, {}).get(task, layer.weight)
            mask = np.ones(tuple(layer.weight.shape), dtype=np.bool_)
            out[name] = {
                "mask": mask,
                "write": mask.copy(),
                "values": values.detach().cpu().numpy().astype(np.float32, copy=True),
            }
        return out

    def bank(self, task: int) -> str | None:
        """Each task in a bank of its own."""
        return None if task == 0 else "new"

    def state_dict(self) -> dict:  # noqa: D102
        return {
            **super().state_dict(),
            "stored": {n: {int(t): v for t, v in c.items()} for n, c in self.stored.items()},
        }

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        super().load_state_dict(state)
        for name, copies in state["stored"].items():
            target = self.stored.setdefault(name, {})
            target.clear()  # the values hooks hold this very dict
            target.update({int(t): v for t, v in copies.items()})

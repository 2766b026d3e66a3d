"""The strategy interface: hooks around one task's training, and the per-task layers for export.

The trainer calls, for each task t:

1. ``before_task(t, model, data)``;
2. for every step: backward, ``after_backward(t, model)``, ``optimizer.step()``,
   ``after_step(t, model)``;
3. ``prune(t, model, data, evaluate)``; then, when ``retrain_epochs(t) > 0``, that many more
   epochs with the same step hooks (PackNet's retraining after pruning);
4. ``after_task(t, model, data, evaluate)`` (prune / quantize / consolidate).

``evaluate(model, task, split="val")`` returns an accuracy in [0, 1]; strategies decide on the
validation split, never on the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Evaluate", "Strategy", "val_split"]

Evaluate = Callable[..., float]


class Strategy:
    """Base strategy: no masks; owned positions (if any) frozen while a task trains.

    Subclasses override the hooks they need. The model's buffers (masks, owners) carry the
    consolidated state; ``state_dict`` holds only the strategy's own bookkeeping.
    """

    name: str = "base"
    quantizes: bool = False
    uses_scores: bool = False

    def __init__(self) -> None:
        self.finished: list[int] = []

    # ------------------------------------------------------------------ hooks
    def setup(self, model: nn.Module, scenario: Any) -> None:
        """Called once before the first task (also on resume)."""

    def before_task(self, task: int, model: nn.Module, data: Any) -> None:
        """Freeze owned positions of every task layer."""
        for layer in model.task_layers().values():
            layer.freeze_owned()

    def parameters(self, model: nn.Module, task: int) -> list[nn.Parameter]:
        """What the optimizer of task ``task`` updates: shared weights, scores if used, private."""
        params = list(model.shared_parameters())
        if self.uses_scores:
            params += list(model.score_parameters())
        return params + list(model.private_parameters(task))

    def after_backward(self, task: int, model: nn.Module) -> None:
        """Zero the gradients of positions owned by earlier tasks."""
        for layer in model.task_layers().values():
            layer.zero_owned_grads()

    def after_step(self, task: int, model: nn.Module) -> None:
        """Write back owned positions, so no optimizer state or weight decay can move them."""
        for layer in model.task_layers().values():
            layer.restore_owned()

    def prune(self, task: int, model: nn.Module, data: Any, evaluate: Evaluate) -> None:
        """Called after the task's training epochs, before retraining (default: nothing)."""

    def retrain_epochs(self, task: int) -> int:
        """Epochs of retraining after `prune` (default 0)."""
        return 0

    def after_task(self, task: int, model: nn.Module, data: Any, evaluate: Evaluate) -> None:
        """Consolidate: unfreeze and record the task as finished."""
        for layer in model.task_layers().values():
            layer.unfreeze()
        if task not in self.finished:
            self.finished.append(task)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The strategy's own state (the model holds masks and owners)."""
        return {"name": self.name, "finished": list(self.finished)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict`."""
        if state.get("name") != self.name:
            raise ValueError(
                f"state is for strategy {state.get('name')!r}, not {self.name!r}: "
                "resume with the same --strategy"
            )
        self.finished = [int(t) for t in state["finished"]]

    # ------------------------------------------------------------------ export
    def task_layers(self, model: nn.Module, task: int) -> dict[str, dict]:
        """Per layer: task ``task``'s ``mask``, the positions it ``write``s, and its ``values``.

        Default (masked strategies): the mask is the stored task mask, the task writes the
        positions it owns, and the values are ``layer.values(task)``.
        """
        out = {}
        for name, layer in model.task_layers().items():
            mask = layer.task_mask(task).cpu().numpy()
            write = (layer.owner == task).cpu().numpy()
            with torch.no_grad():
                values = layer.values(task).detach().cpu().numpy().astype(np.float32, copy=True)
            out[name] = {"mask": mask, "write": write & mask, "values": values}
        return out


def val_split(data: Any) -> str:
    """The split strategy decisions use: "val", or "train" when the task has no validation data."""
    return "val" if len(getattr(data, "y_val", ())) else "train"

"""PackNet: train on free weights with earlier ones frozen, prune by magnitude, retrain."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitsub_torch.cl.strategies.base import Evaluate, Strategy

__all__ = ["PackNet"]


class PackNet(Strategy):
    """PackNet (Mallya & Lazebnik 2018).

    Task t trains on every position: the free ones learn, the ones owned by earlier tasks are
    used but frozen. Then, per layer, it keeps the ``keep`` fraction of the free positions with
    the largest magnitude (its own new weights) and retrains ``retrain_epochs`` epochs with that
    mask. Its mask is its kept weights plus all earlier tasks' weights; the kept positions become
    owned by t. Pruned positions stay free for later tasks (their values are left as they are:
    no task reads them).

    Parameters
    ----------
    keep : float
        Fraction of the free positions each task keeps, in (0, 1].
    retrain_epochs : int
        Epochs of retraining after pruning.
    """

    name = "packnet"

    def __init__(self, keep: float = 0.5, retrain_epochs: int = 1) -> None:
        super().__init__()
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
            raise ValueError(f"keep must be a float in (0, 1], got {keep!r}")
        if isinstance(retrain_epochs, bool) or not isinstance(retrain_epochs, int):
            raise TypeError("retrain_epochs must be an int")
        if retrain_epochs < 0:
            raise ValueError(f"retrain_epochs must be >= 0, got {retrain_epochs}")
        self.keep = float(keep)
        self._retrain = retrain_epochs

    def before_task(self, task: int, model: nn.Module, data: Any) -> None:  # noqa: D102
        super().before_task(task, model, data)
        for layer in model.masked_layers().values():
            layer.clear_task_mask(task)  # dense while training: free + earlier weights

    def prune(  # noqa: D102
        self, task: int, model: nn.Module, data: Any, evaluate: Evaluate
    ) -> None:
        for layer in model.masked_layers().values():
            owned = layer.owner >= 0
            free = ~owned
            n_free = int(free.sum())
            k = min(n_free, int(round(self.keep * n_free)))
            kept = torch.zeros_like(free)
            if k > 0:
                magnitude = layer.weight.detach().abs().masked_fill(owned, -1.0).reshape(-1)
                kept.view(-1)[torch.topk(magnitude, k, sorted=False).indices] = True
            layer.set_task_mask(task, owned | kept)

    def retrain_epochs(self, task: int) -> int:  # noqa: D102
        return self._retrain

    def after_task(  # noqa: D102
        self, task: int, model: nn.Module, data: Any, evaluate: Evaluate
    ) -> None:
        for layer in model.masked_layers().values():
            layer.consolidate(task)
        super().after_task(task, model, data, evaluate)

    def state_dict(self) -> dict:  # noqa: D102
        return {**super().state_dict(), "keep": self.keep, "retrain_epochs": self._retrain}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        super().load_state_dict(state)
        self.keep = float(state["keep"])
        self._retrain = int(state["retrain_epochs"])

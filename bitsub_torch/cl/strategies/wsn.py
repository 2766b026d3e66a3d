"""WSN (Winning SubNetworks): learned scores, top-c% mask per layer, reuse, consolidation."""

from __future__ import annotations

from typing import Any

from torch import nn

from bitsub_torch.cl.strategies.base import Evaluate, Strategy
from bitsub_torch.nn.autograd import topk_count

__all__ = ["WSN"]


class WSN(Strategy):
    """Winning SubNetworks (Kang et al. 2022), as in its public code.

    While task t trains, every task layer computes with ``weight * topk(|scores|, density)``
    (straight-through, `bitsub_torch.nn.autograd.topk_mask`); weights and scores train together, but
    weights owned by earlier tasks are frozen (their gradient is zeroed and their value restored
    after each step), so a task may reuse them without changing them. After the task, its mask is
    the final top-k mask; the free positions in it become owned by the task (consolidation).
    Scores persist from task to task (not re-initialised).

    Parameters
    ----------
    density : float
        The layer capacity c: fraction of each layer's positions a task uses, in (0, 1].
    """

    name = "wsn"
    uses_scores = True

    def __init__(self, density: float = 0.5) -> None:
        super().__init__()
        topk_count(1, density)  # validates
        self.density = float(density)

    def before_task(self, task: int, model: nn.Module, data: Any) -> None:  # noqa: D102
        super().before_task(task, model, data)
        for layer in model.masked_layers().values():
            layer.start_scores(task, self.density)

    def after_task(  # noqa: D102
        self, task: int, model: nn.Module, data: Any, evaluate: Evaluate
    ) -> None:
        for layer in model.masked_layers().values():
            mask = layer.score_mask(self.density)
            layer.stop_scores()
            layer.set_task_mask(task, mask)
            layer.consolidate(task, mask)
        super().after_task(task, model, data, evaluate)

    def state_dict(self) -> dict:  # noqa: D102
        return {**super().state_dict(), "density": self.density}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        super().load_state_dict(state)
        self.density = float(state["density"])

"""The convergence protocol: per task, train until the validation accuracy stops improving.

Every method is trained alike: the trainer evaluates the task being trained on its validation
split every ``eval_every`` optimizer steps (at least one epoch), keeps the best state seen
(accuracy first, validation loss to break ties, so a task that saturates at 100% still keeps
its lowest-loss state), and when ``patience`` evaluations in a row bring no improvement it goes
back to that best state and halves the learning rate, at most ``decays`` times, then stops. The
budget is counted in optimizer steps, ``max(max_epochs x steps per epoch, min_steps)``, so that a
small scenario (splitdigits has about 4 steps per epoch at batch 64) is not starved while a large
one is still bounded by epochs. The reference code of WSN (the public code of TinySubNets forks
it) does the same with the validation loss: keep the best model, halve the learning rate after a
plateau of 6 epochs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["Protocol"]


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class Protocol:
    """Early stopping on validation accuracy, counted in optimizer steps.

    Parameters
    ----------
    patience : int
        Evaluations without improvement before the learning rate is halved (or training stops).
    max_epochs : int
        Epochs of the step budget.
    min_steps : int
        Floor of the step budget, for scenarios with few steps per epoch.
    eval_every : int
        Optimizer steps between evaluations (at least one epoch is used).
    decays : int
        Times the learning rate is halved (from the best state) before stopping.
    """

    patience: int = 3
    max_epochs: int = 40
    min_steps: int = 600
    eval_every: int = 50
    decays: int = 1

    def __post_init__(self) -> None:
        _int("patience", self.patience, 1)
        _int("max_epochs", self.max_epochs, 1)
        _int("min_steps", self.min_steps, 0)
        _int("eval_every", self.eval_every, 1)
        _int("decays", self.decays, 0)

    def budget(self, steps_per_epoch: int) -> tuple[int, int]:
        """``(max_steps, eval_every)`` for a task with ``steps_per_epoch`` steps per epoch."""
        spe = max(1, int(steps_per_epoch))
        every = max(spe, self.eval_every)
        total = max(self.max_epochs * spe, self.min_steps)
        return int(math.ceil(total / every) * every), every

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict."""
        return asdict(self)

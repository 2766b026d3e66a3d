"""Per-sample task labels: run each task's samples of a batch through that task, in order.

Torch and Avalanche users pass a task label per sample (``model(x, task_labels)`` with a
LongTensor of shape ``(batch,)``); the task layers and networks also take one int for the whole
batch, their fast path. `by_task` bridges the two: it groups the batch by label, calls the
one-task function on each group and scatters the outputs back to the samples' order. A group
sees only its own samples, so a per-task BatchNorm in training mode takes its batch statistics
from its task's samples alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bitsub.validate import check_int

__all__ = ["by_task", "check_task_labels"]


def check_task_labels(labels: torch.Tensor, batch: int, num_tasks: int) -> torch.Tensor:
    """Validate per-sample task labels: integer, shape ``(batch,)``, each in ``0..num_tasks-1``.

    Returns
    -------
    torch.Tensor
        The labels as a 1-D int64 tensor.
    """
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"task labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"task labels must have shape ({batch},), one per sample, got {tuple(labels.shape)}"
        )
    labels = labels.long()
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_tasks):
        raise ValueError(
            f"task labels must be in 0..{num_tasks - 1}, got {int(labels.min())}.."
            f"{int(labels.max())}; grow the model (model.grow(n)) to take more tasks"
        )
    return labels


def by_task(
    fn: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    task: int | torch.Tensor,
    num_tasks: int,
) -> torch.Tensor:
    """``fn(x, task)`` for an int task; for per-sample labels, ``fn`` per task, outputs in order.

    Parameters
    ----------
    fn : callable
        The one-task function ``fn(x, task: int)``; its output's first dimension is the batch.
    x : torch.Tensor
        The batch.
    task : int or torch.Tensor
        One task for the batch, or a label per sample (a 0-d tensor counts as one task).
    num_tasks : int
        Labels must be below it.
    """
    if not isinstance(task, torch.Tensor):
        return fn(x, task)
    if task.dim() == 0:
        return fn(x, check_int(int(task), "task", 0, num_tasks - 1))
    labels = check_task_labels(task, x.shape[0], num_tasks)
    tasks = torch.unique(labels).tolist()
    if len(tasks) <= 1:
        return fn(x, int(tasks[0]) if tasks else 0)
    out: torch.Tensor | None = None
    for t in tasks:
        idx = torch.nonzero(labels == t).reshape(-1).to(x.device)
        y = fn(x.index_select(0, idx), int(t))
        if out is None:
            out = y.new_empty((x.shape[0], *y.shape[1:]))
        out = out.index_copy(0, idx, y)
    return out

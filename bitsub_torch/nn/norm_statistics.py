"""BatchNorm running statistics gathered again for the network as it is evaluated.

Training updates a BatchNorm's running mean and variance with a moving average of the batches it
normalises, in training mode: with dropout on, and while the weights move. Where dropout comes
before a BatchNorm (the reduced AlexNet: dropout after each conv block, then the next conv and its
BatchNorm) the variance seen through dropout is not the variance seen at evaluation, when dropout
is off ("variance shift", Li et al., CVPR 2019, *Understanding the disharmony between dropout and
batch normalization*). A sparse sub-network amplifies it: on the split Fashion-MNIST CNN rows some
two-class tasks read 53-85% on validation with the statistics training gathered, 99.8-100% with
statistics gathered again with dropout off (`bench/bn_shift.py`, README).

`gather` recomputes one task's statistics from scratch over given images: every other module in
evaluation mode (dropout off), the task's BatchNorms in training mode with ``momentum=None`` (a
plain average over the batches: the running mean is the mean of the batch means, the running
variance the mean of the unbiased batch variances). It is the recalibration that
``torch.optim.swa_utils.update_bn`` does, except that ``update_bn`` puts the whole model in
training mode, dropout included. Other tasks' statistics are not touched, so the finished tasks of
a continual run keep theirs bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bitsub_torch.nn.layers import TaskBatchNorm

__all__ = ["gather", "task_batchnorms"]


def task_batchnorms(model: nn.Module, task: int) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorms that normalise task ``task``'s forward pass.

    Task ``task``'s norm of every `TaskBatchNorm`, and every plain BatchNorm that is not one of
    a `TaskBatchNorm`'s norms (shared by all tasks).
    """
    owned, found = set(), []
    for module in model.modules():
        if isinstance(module, TaskBatchNorm):
            owned.update(id(m) for m in module.norms)
            if task < len(module.norms):
                found.append(module.norms[task])
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in owned:
            found.append(module)
    return found


@torch.no_grad()
def gather(model: nn.Module, x: Any, task: int, *, batch_size: int = 128,
           rows: np.ndarray | None = None, dropout: bool = False) -> int:
    """Gather task ``task``'s BatchNorm running statistics again over ``x[rows]``.

    Parameters
    ----------
    model : nn.Module
        Called as ``model(xb, task)``.
    x : array-like
        Inputs (an ndarray or anything sliced like one, such as a streaming `LazyRows`).
    task : int
        The task whose statistics are gathered.
    batch_size : int
        Images per forward pass (the batch statistics normalise each batch, as in training).
    rows : array of int, optional
        The rows of ``x`` to use, in order (default all). A last batch of one image is left
        out when there are others (BatchNorm cannot take the variance of one value).
    dropout : bool
        Keep dropout on while gathering, as training does (for diagnostics only).

    Returns the number of BatchNorms gathered (0, and nothing changed, when the model has none or
    there are no images). Modes, momenta and torch's random state are restored afterwards.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}")
    norms = task_batchnorms(model, task)
    rows = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
    starts = list(range(0, len(rows), batch_size))
    if len(starts) > 1 and len(rows) - starts[-1] < 2:
        starts.pop()
    if not norms or not starts or len(rows) - starts[0] < 2:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [n.momentum for n in norms]
    device = next(model.parameters()).device
    try:
        model.eval()
        for m in model.modules():
            if dropout and isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        for n in norms:
            n.reset_running_stats()
            n.momentum = None
            n.train()
        with torch.random.fork_rng(devices=[]):
            for s in starts:
                xb = np.ascontiguousarray(x[rows[s : s + batch_size]], dtype=np.float32)
                model(torch.from_numpy(xb).to(device), task)
    finally:
        for n, momentum in zip(norms, momenta):
            n.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return len(norms)

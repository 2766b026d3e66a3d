"""Hard masks of the baselines: global magnitude pruning and SNIP, to an exact overall sparsity.

Both rank every prunable weight of the network in one list (global, not per layer) and keep the
``round((1 - sparsity) * n)`` highest scores, ties broken by position, so the overall sparsity is
exact; the mask of each layer is written into its ``mask`` buffer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["keep_top", "magnitude_prune", "snip_prune"]


def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (
            0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def keep_top(model, scores: list[torch.Tensor], sparsity: float) -> None:
    """Set each prunable layer's mask to keep the globally highest ``scores``.

    ``scores`` holds one tensor per layer of ``model.prunable()``, in that order; positions
    already masked out should score ``-inf`` so that they stay out.
    """
    sparsity = _check_sparsity(sparsity)
    layers = [m for _, m in model.prunable()]
    flat = torch.cat([s.detach().reshape(-1).double() for s in scores])
    keep = round((1.0 - sparsity) * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep:
        # stable sort: equal scores are kept in position order, so the result is reproducible
        order = torch.sort(flat, descending=True, stable=True).indices
        chosen[order[:keep]] = True
    start = 0
    with torch.no_grad():
        for m in layers:
            n = m.weight.numel()
            m.mask.copy_(chosen[start:start + n].reshape(m.weight.shape))
            start += n


def magnitude_prune(model, sparsity: float) -> None:
    """One global magnitude pruning step: keep the largest |effective weight|."""
    scores = []
    for _, m in model.prunable():
        w = m.sparse_weight().detach().abs().double()
        scores.append(torch.where(m.mask, w, torch.tensor(float("-inf"), dtype=torch.float64)))
    keep_top(model, scores, sparsity)


def snip_prune(model, loss_fn: Callable[[], torch.Tensor], sparsity: float) -> None:
    """SNIP at initialisation: keep the largest connection sensitivities |dL/dW * W|.

    ``loss_fn()`` returns the joint multi-task loss on a batch of training data.
    """
    layers = [m for _, m in model.prunable()]
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    scores = [(m.weight.grad * m.weight).detach().abs() if m.weight.grad is not None
              else torch.zeros_like(m.weight) for m in layers]
    model.zero_grad(set_to_none=True)
    keep_top(model, scores, sparsity)

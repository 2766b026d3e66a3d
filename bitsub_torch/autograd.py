"""Small autograd Functions with straight-through gradients: the top-k mask and quantization.

`topk_mask` is WSN's subnetwork selection: the forward keeps the ``density`` fraction of positions
with the largest ``|scores|`` (exactly ``round(density * n)`` of them, ties to the lower index;
NaN scores are never kept, so they may leave it short); the backward passes the gradient through
unchanged, so the scores learn from ``dL/d(mask)``.
`quantize_ste` rounds to the nearest codebook centroid in the forward and is the identity in the
backward (the straight-through estimator used for quantization-aware training).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["quantize_ste", "topk_count", "topk_mask", "topk_mask_bool"]


def topk_count(numel: int, density: float) -> int:
    """Number of positions the top-k mask keeps: ``round(density * numel)``, at least 1.

    Parameters
    ----------
    numel : int
        Number of positions in the layer.
    density : float
        Fraction of positions to keep, in (0, 1].

    Returns
    -------
    int
        k, between 1 and ``numel`` (0 when ``numel`` is 0).
    """
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(f"density must be a float in (0, 1], got {type(density).__name__}")
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}; pass e.g. 0.5 for 50%")
    if numel == 0:
        return 0
    return min(numel, max(1, int(round(float(density) * numel))))


def _topk_bool(scores: torch.Tensor, k: int) -> torch.Tensor:
    # Threshold at the k-th largest |score|, then break ties by position (lowest index first).
    # On CPU, NumPy's introselect partition is ~15x faster than torch.topk / torch.kthvalue.
    flat = scores.detach().abs().reshape(-1)
    n = flat.numel()
    if k >= n or k <= 0:
        return torch.full(scores.shape, k >= n, dtype=torch.bool, device=flat.device)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        a = flat.numpy()
        threshold = np.partition(a, n - k)[n - k]
        mask = a > threshold
        need = k - int(np.count_nonzero(mask))
        if need > 0:
            mask[np.flatnonzero(a == threshold)[:need]] = True
        return torch.from_numpy(mask).view(scores.shape)
    threshold = torch.kthvalue(flat.float(), n - k + 1).values.to(flat.dtype)
    mask = flat > threshold
    need = k - int(mask.sum())
    if need > 0:
        mask[torch.nonzero(flat == threshold).view(-1)[:need]] = True
    return mask.view(scores.shape)


class _TopKMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:  # noqa: D102
        return _topk_bool(scores, k).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad, None


def topk_mask_bool(scores: torch.Tensor, density: float) -> torch.Tensor:
    """The top-k mask as a bool tensor (no gradient): the positions with largest ``|scores|``.

    Parameters
    ----------
    scores : torch.Tensor
        Float scores, any shape.
    density : float
        Fraction of positions to keep, in (0, 1].

    Returns
    -------
    torch.Tensor
        Bool tensor of the shape of ``scores`` with exactly ``topk_count(scores.numel(), density)``
        True entries.
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    return _topk_bool(scores, topk_count(scores.numel(), density))


def topk_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Straight-through top-k mask: forward keeps the top ``density`` of ``|scores|``.

    Parameters
    ----------
    scores : torch.Tensor
        Float scores (a Parameter usually), any shape.
    density : float
        Fraction of positions to keep, in (0, 1].

    Returns
    -------
    torch.Tensor
        A 0/1 tensor of the dtype and shape of ``scores``; its gradient flows to ``scores``
        unchanged (straight-through).
    """
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError("scores must be a floating-point torch.Tensor")
    return _TopKMask.apply(scores, topk_count(scores.numel(), density))


class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:  # noqa: D102
        centroids, _ = torch.sort(codebook.detach().reshape(-1))
        if centroids.numel() == 1:
            return centroids.expand_as(x).clone()
        edges = (centroids[1:] + centroids[:-1]) / 2
        index = torch.bucketize(x.detach(), edges)
        return centroids[index].to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad, None


def quantize_ste(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Round each value to its nearest codebook centroid; straight-through in the backward.

    Parameters
    ----------
    x : torch.Tensor
        Float values to quantize.
    codebook : torch.Tensor
        1-D float tensor of centroids (any order), at least one entry.

    Returns
    -------
    torch.Tensor
        Tensor of the shape of ``x`` holding centroid values; ``d out / d x`` is the identity.
        A value exactly halfway between two centroids goes to the lower one.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    if not isinstance(codebook, torch.Tensor) or codebook.ndim != 1 or codebook.numel() == 0:
        raise ValueError("codebook must be a non-empty 1-D torch.Tensor of centroids")
    return _QuantizeSTE.apply(x, codebook)

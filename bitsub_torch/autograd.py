"""Small autograd Functions with straight-through gradients: the top-k mask and quantization.

`topk_mask` is WSN's subnetwork selection: the forward keeps the ``density`` fraction of positions
with the largest ``|scores|`` (exactly ``round(density * n)`` of them, ties to the lower index;
NaN scores are never kept, so they may leave it short); the backward passes the gradient through
unchanged, so the scores learn from ``dL/d(mask)``.
`quantize_ste` rounds to the nearest codebook centroid in the forward and is the identity in the
backward (the straight-through estimator used for quantization-aware training).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from bitsub._config import NJIT

__all__ = ["quantize_ste", "topk_count", "topk_mask", "topk_mask_bool", "topk_masked_weight"]


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


@numba.njit(**NJIT)
def _mask_pass(s, w, t, k, m, out):  # pragma: no cover - compiled
    # m = (|s| > t) as 0/1 of s's dtype, out = w * m; then the first k - count ties |s| == t.
    c = 0
    for i in range(s.size):
        keep = abs(s[i]) > t
        c += keep
        m[i] = keep
        out[i] = w[i] * m[i]
    need = k - c
    start = 0
    block = 256
    while need > 0 and start < s.size:
        stop = min(start + block, s.size)
        hits = 0
        for i in range(start, stop):  # vectorised look for a tie in the block
            hits += abs(s[i]) == t
        if hits > 0:
            for i in range(start, stop):
                if need > 0 and abs(s[i]) == t:
                    m[i] = 1
                    out[i] = w[i] * m[i]
                    need -= 1
        start = stop


@numba.njit(**NJIT)
def _mask_grads(g, w, m, gw, gs):  # pragma: no cover - compiled
    # The two products of the backward of w * m in one pass: dL/dw = g * m, dL/dscores = g * w.
    for i in range(g.size):
        gw[i] = g[i] * m[i]
        gs[i] = g[i] * w[i]


def _fast_ok(weight: torch.Tensor, scores: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and scores.device.type == "cpu"
        and weight.dtype == scores.dtype
        and weight.dtype in (torch.float32, torch.float64)
        and weight.shape == scores.shape
        and weight.is_contiguous()
        and scores.is_contiguous()
        and weight.layout == torch.strided
        and scores.layout == torch.strided
    )


class _TopKMaskedWeight(torch.autograd.Function):
    """``weight * topk_mask(scores)`` in one pass; the backward is the product rule of ``*``."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, k: int):  # noqa: D102
        w = weight.detach()
        s = scores.detach()
        mask = torch.empty_like(s)
        out = torch.empty_like(w)
        a = s.numpy().reshape(-1)
        n = a.size
        if k >= n:  # keep every position (NaN scores included, as `topk_mask`)
            mask.fill_(1)
            torch.mul(w, mask, out=out)
        else:  # threshold at the k-th largest |score| (NumPy introselect, in place)
            buf = np.abs(a)
            buf.partition(n - k)
            m = mask.numpy().reshape(-1)
            _mask_pass(a, w.numpy().reshape(-1), buf[n - k], k, m, out.numpy().reshape(-1))
        ctx.save_for_backward(weight)
        ctx.mask = mask
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (weight,) = ctx.saved_tensors
        mask = ctx.mask
        need_w, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_w and need_s) or grad.dtype != mask.dtype or grad.device.type != "cpu":
            return (grad * mask if need_w else None), (grad * weight if need_s else None), None
        g = grad.contiguous()
        gw = torch.empty_like(g)
        gs = torch.empty_like(g)
        _mask_grads(g.numpy().reshape(-1), weight.detach().numpy().reshape(-1),
                    mask.numpy().reshape(-1), gw.numpy().reshape(-1), gs.numpy().reshape(-1))
        return gw, gs, None


def topk_masked_weight(
    weight: torch.Tensor, scores: torch.Tensor, density: float
) -> torch.Tensor:
    """``weight * topk_mask(scores, density)``, computed in one pass on CPU.

    The same values and gradients as the composition (``dL/dweight = g * mask``,
    ``dL/dscores = g * weight``, straight-through), without the intermediate tensors.

    Parameters
    ----------
    weight : torch.Tensor
        Float weights.
    scores : torch.Tensor
        Float scores of the same shape.
    density : float
        Fraction of positions to keep, in (0, 1].

    Returns
    -------
    torch.Tensor
        The masked weight, of the shape of ``weight``.
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("weight must be a floating-point torch.Tensor")
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError("scores must be a floating-point torch.Tensor")
    if tuple(weight.shape) != tuple(scores.shape):
        raise ValueError(
            f"weight {tuple(weight.shape)} and scores {tuple(scores.shape)} must have one shape"
        )
    k = topk_count(scores.numel(), density)
    if not _fast_ok(weight, scores):
        return weight * _TopKMask.apply(scores, k)
    return _TopKMaskedWeight.apply(weight, scores, k)


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

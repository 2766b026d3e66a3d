"""Small autograd Functions with straight-through gradients: the top-k mask and quantization.

`topk_mask` is WSN's subnetwork selection: the forward keeps the ``density`` fraction of positions
with the largest ``|scores|`` (exactly ``round(density * n)`` of them, ties to the lower index;
NaN scores are never kept, so they may leave it short); the backward passes the gradient through
unchanged, so the scores learn from ``dL/d(mask)``.
`topk_masked_weight` is ``weight * topk_mask(scores)`` as WSN's layers use it, with the same bits
in the values and the gradients, computed on CPU in a few vectorised passes (Numba): the k-th
largest ``|score|`` is bracketed by counting passes that start from the last step's threshold
(kept by the caller), the mask and the masked weight are written in one pass, and the backward
writes both products in one pass.
`quantize_ste` rounds to the nearest codebook centroid in the forward and is the identity in the
backward (the straight-through estimator used for quantization-aware training).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from bitsub.config import NJIT
from bitsub.validate import check_float

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
    if check_float(density, "density", 0.0, 1.0) == 0.0:
        raise ValueError("density must be in (0, 1], got 0; pass e.g. 0.5 for 50%")
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
def _count_above(s, t):  # pragma: no cover - compiled
    # Number of |s| > t (t of s's dtype; vectorised).
    c = 0
    for i in range(s.size):
        c += abs(s[i]) > t
    return c


@numba.njit(**NJIT)
def _count_above_nan(s, t):  # pragma: no cover - compiled
    # Number of |s| > t, and of NaN entries.
    c = 0
    nan = 0
    for i in range(s.size):
        v = abs(s[i])
        c += v > t
        nan += v != v
    return c, nan


@numba.njit(**NJIT)
def _count_above2(s, ta, tb):  # pragma: no cover - compiled
    # Numbers of |s| > ta and of |s| > tb, in one vectorised pass.
    ca = 0
    cb = 0
    for i in range(s.size):
        v = abs(s[i])
        ca += v > ta
        cb += v > tb
    return ca, cb


@numba.njit(**NJIT)
def _bracket_kth_abs(s, k, guess, dens, gap):  # pragma: no cover - compiled
    # The k-th largest |s| (1 <= k <= s.size), exact: counting passes starting at `guess` (the
    # last step's threshold plus its drift) narrow a bracket (lo, hi], count(|s| > lo) >= k >
    # count(|s| > hi), until it holds <= gap values, which are then gathered and sorted. Each
    # pass after the first counts at two probes aimed a little either side of k (slope `dens`,
    # values per unit of |s|, then the bracket's secant); a pass that does not halve the bracket
    # is followed by a bisection. Returns (lo, hi, c_lo, c_hi, density seen, passes); lo is NaN
    # when s holds a NaN (the caller then takes NumPy's partition, whose NaN order it keeps).
    n = s.size
    tb = np.empty(2, s.dtype)  # rounds probes to s's dtype, so counts and bounds agree
    tb[0] = np.finfo(s.dtype).max
    fmax = float(tb[0])
    lo, c_lo = -1.0, n  # count(|s| > -1) = n >= k
    hi, c_hi = np.inf, 0  # count(|s| > inf) = 0 < k
    tb[0] = min(max(guess, 0.0), fmax) if guess == guess else 0.0
    t = float(tb[0])
    c, nan = _count_above_nan(s, tb[0])
    if nan:
        return np.nan, np.nan, 0, 0, 0.0, 1
    if c >= k:
        lo, c_lo = t, c
    else:
        hi, c_hi = t, c
    passes = 1
    third = max(gap // 3, 1)
    step = 0.0
    dens_out = 0.0
    halve = False
    while c_lo - c_hi > gap and passes < 64:
        old_gap = c_lo - c_hi
        one_sided = hi == np.inf or lo == -1.0
        slope = dens
        if not one_sided:
            slope = (c_lo - c_hi) / (hi - lo)
            if dens_out == 0.0:
                dens_out = slope
        ta = tb_ = np.nan
        if not halve and slope > 0.0 and (step == 0.0 or not one_sided):
            ref, c_ref = (lo, c_lo) if lo != -1.0 else (hi, c_hi)
            tb[0] = min(max(ref + (c_ref - (k + third)) / slope, 0.0), fmax)
            tb[1] = min(max(ref + (c_ref - (k - third)) / slope, 0.0), fmax)
            ta, tb_ = float(tb[0]), float(tb[1])
            if one_sided:
                step = abs(tb_ - ta) + abs((ta if lo == -1.0 else tb_) - ref)
        ok_a = lo < ta < hi
        ok_b = lo < tb_ < hi and tb_ != ta
        if not (ok_a or ok_b):  # one probe: bisect, or step outwards (doubling) when one-sided
            if one_sided:
                step = (
                    2.0 * step if step > 0.0 else max(abs(lo if lo != -1.0 else hi) * 1e-3, 1e-30)
                )
                if hi == np.inf:
                    if lo >= fmax:
                        break  # the k-th largest is inf: gather (fmax, inf]
                    tb[0] = min(lo + step, fmax)
                    while float(tb[0]) <= lo:
                        step *= 1e6
                        tb[0] = min(lo + step, fmax)
                else:
                    if hi <= 0.0:
                        break  # the k-th largest is 0: gather (-1, 0]
                    tb[0] = max(hi - step, 0.0)
                    while float(tb[0]) >= hi:
                        step *= 1e6
                        tb[0] = max(hi - step, 0.0)
            else:
                tb[0] = lo + (hi - lo) * 0.5
                if not lo < float(tb[0]) < hi:
                    break  # no value of the dtype between lo and hi
            ta = float(tb[0])
            ok_a, ok_b = True, False
            tb[1] = tb[0]
        if ok_a and ok_b:
            ca, cb = _count_above2(s, tb[0], tb[1])
        elif ok_a:
            ca = cb = _count_above(s, tb[0])
            tb_ = ta
        else:
            ca = cb = _count_above(s, tb[1])
            ta = tb_
        passes += 1
        for t, c in ((ta, ca), (tb_, cb)):
            if c >= k:
                if t > lo:
                    lo, c_lo = t, c
            elif t < hi:
                hi, c_hi = t, c
        halve = not one_sided and (c_lo - c_hi) * 2 > old_gap
    return lo, hi, c_lo, c_hi, dens_out, passes


@numba.njit(**NJIT)
def _mask_from_bracket(s, w, lo, hi, k, c_lo, c_hi, m, out):  # pragma: no cover - compiled
    # The top-k mask and w * mask in one pass, given a bracket (lo, hi] of the k-th largest |s|
    # with c_lo = count(|s| > lo), c_hi = count(|s| > hi): |s| > hi is kept, |s| <= lo is not;
    # the few values inside are gathered with their indices (a vectorised count per block of 256
    # skips the blocks without one) and the k - c_hi largest of them kept, ties to the lower
    # index. Returns the k-th largest |s|.
    tb = np.empty(2, s.dtype)
    tb[0] = lo
    tb[1] = hi
    lo_t = tb[0]
    hi_t = tb[1]
    one = np.ones(1, w.dtype)[0]
    zero = one - one
    vals = np.empty(c_lo - c_hi + 1, s.dtype)  # room for all plus one scratch slot
    idx = np.empty(c_lo - c_hi + 1, np.int64)
    nb = 0
    n = s.size
    for base in range(0, n - n % 256, 256):
        h = 0
        for j in range(256):
            i = base + j
            v = abs(s[i])
            keep = v > hi_t
            h += (v > lo_t) & (v <= hi_t)
            m[i] = keep
            out[i] = w[i] * (one if keep else zero)
        if h:
            for j in range(256):
                i = base + j
                v = abs(s[i])
                vals[nb] = v
                idx[nb] = i
                nb += (v > lo_t) & (v <= hi_t)
    for i in range(n - n % 256, n):
        v = abs(s[i])
        keep = v > hi_t
        m[i] = keep
        out[i] = w[i] * (one if keep else zero)
        vals[nb] = v
        idx[nb] = i
        nb += (v > lo_t) & (v <= hi_t)
    order = np.argsort(-vals[:nb], kind="mergesort")  # largest first, ties by index
    for r in range(k - c_hi):
        i = idx[order[r]]
        m[i] = True
        out[i] = w[i] * one
    return float(vals[order[k - c_hi - 1]])


@numba.njit(**NJIT)
def _mask_pass(s, w, t, m, out):  # pragma: no cover - compiled
    # m = (|s| > t) as 0/1 of s's dtype and out = w * m, in one vectorised pass. Returns the
    # count kept and the first index where |s| == t (s.size if none).
    one = np.ones(1, w.dtype)[0]
    zero = one - one
    c = 0
    first = s.size
    for i in range(s.size):
        v = abs(s[i])
        keep = v > t
        c += keep
        first = min(first, i if v == t else s.size)
        m[i] = keep
        out[i] = w[i] * (one if keep else zero)
    return c, first


@numba.njit(**NJIT)
def _keep_ties(s, w, t, need, first, m, out):  # pragma: no cover - compiled
    # Keep the first `need` positions (from `first` on) where |s| == t: ties go to the lower index.
    one = np.ones(1, w.dtype)[0]
    for i in range(first, s.size):
        if need == 0:
            break
        if abs(s[i]) == t:
            m[i] = True
            out[i] = w[i] * one
            need -= 1


@numba.njit(**NJIT)
def _mask_grads(g, w, m, gw, gs):  # pragma: no cover - compiled
    # The two products of the backward of w * m in one pass: dL/dw = g * m, dL/dscores = g * w.
    one = np.ones(1, g.dtype)[0]
    zero = one - one
    for i in range(g.size):
        gw[i] = g[i] * (one if m[i] else zero)
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
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, k: int, state: list):  # noqa: D102
        w = weight.detach()
        s = scores.detach()
        mask = torch.empty(s.shape, dtype=torch.bool)
        out = torch.empty_like(w)
        a = s.numpy().reshape(-1)
        n = a.size
        if k >= n:  # keep every position (NaN scores included, as `topk_mask`)
            mask.fill_(True)
            torch.mul(w, torch.ones_like(w), out=out)
        else:  # threshold at the k-th largest |score|
            t = np.nan
            last, dens, drift = state
            wa, m, o = w.numpy().reshape(-1), mask.numpy().reshape(-1), out.numpy().reshape(-1)
            if last == last:  # start from the last threshold plus its drift (exact, faster)
                lo, hi, c_lo, c_hi, local, _ = _bracket_kth_abs(a, k, last + drift, dens, 32)
                if lo == lo:
                    t = _mask_from_bracket(a, wa, lo, hi, k, c_lo, c_hi, m, o)
                if local > 0.0:
                    state[1] = local if dens <= 0.0 else 0.5 * (dens + local)
            if t != t:  # first step, or NaN scores: NumPy's introselect (NaN sorts last)
                buf = np.abs(a)
                buf.partition(n - k)
                t = float(buf[n - k])
                threshold = buf[n - k]
                count, first = _mask_pass(a, wa, threshold, m, o)
                if count < k:
                    _keep_ties(a, wa, threshold, k - count, first, m, o)
            state[2] = t - last if last == last and t == t and abs(t) < 1e300 else 0.0
            state[0] = t
        ctx.save_for_backward(weight)
        ctx.mask = mask
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (weight,) = ctx.saved_tensors
        mask = ctx.mask
        need_w, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_w and need_s) or grad.dtype != weight.dtype or grad.device.type != "cpu":
            gw = grad * mask.to(grad.dtype) if need_w else None
            return gw, (grad * weight if need_s else None), None, None
        g = grad.contiguous()
        gw = torch.empty_like(g)
        gs = torch.empty_like(g)
        _mask_grads(
            g.numpy().reshape(-1),
            weight.detach().numpy().reshape(-1),
            mask.numpy().reshape(-1),
            gw.numpy().reshape(-1),
            gs.numpy().reshape(-1),
        )
        return gw, gs, None, None


def topk_masked_weight(
    weight: torch.Tensor, scores: torch.Tensor, density: float, state: list | None = None
) -> torch.Tensor:
    """``weight * topk_mask(scores, density)``, computed in one pass on CPU.

    The same bits as the composition, for the values and for the gradients
    (``dL/dweight = g * mask``, ``dL/dscores = g * weight``, straight-through), without the
    intermediate tensors. On CPU float32/float64 the k-th largest ``|score|`` is found exactly by
    counting passes that start from the last call's threshold (kept in ``state``) and a sort of
    the few values left in the final bracket; other devices and dtypes take the composition.

    Parameters
    ----------
    weight : torch.Tensor
        Float weights.
    scores : torch.Tensor
        Float scores of the same shape.
    density : float
        Fraction of positions to keep, in (0, 1].
    state : list, optional
        ``[threshold, density, drift]`` that the caller keeps between calls on the same scores
        (start with ``[nan, 0.0, 0.0]``); updated in place. Only a starting point: a stale or wrong
        state costs time, never exactness. Without it each call selects from scratch.

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
    if state is None:
        state = [np.nan, 0.0, 0.0]
    elif not isinstance(state, list) or len(state) != 3:
        raise TypeError("state must be a list [threshold, density, drift] kept between calls")
    return _TopKMaskedWeight.apply(weight, scores, k, state)


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

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
def _gather_between(s, lo, hi, out):  # pragma: no cover - compiled
    # Copy the |s| in (lo, hi] into out (room for all of them plus one): a vectorised count per
    # block of 256 skips the blocks without one; stores are branch-free (out[nb] is scratch).
    nb = 0
    nblk = s.size // 256
    for b in range(nblk):
        base = b * 256
        h = 0
        for j in range(256):
            v = abs(s[base + j])
            h += (v > lo) & (v <= hi)
        if h:
            for j in range(256):
                v = abs(s[base + j])
                out[nb] = v
                nb += (v > lo) & (v <= hi)
    for i in range(nblk * 256, s.size):
        v = abs(s[i])
        out[nb] = v
        nb += (v > lo) & (v <= hi)
    return nb


@numba.njit(**NJIT)
def _kth_largest_abs(s, k, guess, dens, gap):  # pragma: no cover - compiled
    # The k-th largest |s| (1 <= k <= s.size), exact, from counting passes around `guess` (the
    # last step's threshold) that narrow a bracket (lo, hi] until it holds <= gap values, which
    # are then gathered and sorted. Returns (value, density estimate, passes); the value is NaN
    # when s holds a NaN (the caller then takes NumPy's partition, whose NaN order it keeps).
    n = s.size
    tb = np.empty(1, s.dtype)  # rounds a probe to s's dtype, so counts and bounds agree
    tb[0] = np.finfo(s.dtype).max
    fmax = float(tb[0])
    lo, c_lo = -1.0, n  # count(|s| > -1) = n >= k
    hi, c_hi = np.inf, 0  # count(|s| > inf) = 0 < k
    tb[0] = min(max(guess, 0.0), fmax)
    t = float(tb[0])
    c, nan = _count_above_nan(s, tb[0])
    if nan:
        return np.nan, 0.0, 1
    passes = 1
    step = 0.0
    third = max(gap // 3, 1)
    interpolated = False
    dens_out = 0.0
    while True:
        old_gap = c_lo - c_hi
        if c >= k:
            lo, c_lo = t, c
        else:
            hi, c_hi = t, c
        if c_lo - c_hi <= gap or passes >= 64:
            break
        if hi == np.inf:  # only lower bounds so far: step up from lo, aiming past k
            step = 2.0 * step if step > 0 else (c - k + third) / dens if dens > 0 else 0.0
            step = max(step, abs(lo) * 1e-3, 1e-30)
            tb[0] = min(lo + step, fmax)
            if float(tb[0]) <= lo:
                if lo >= fmax:
                    break  # the k-th largest is inf: gather (fmax, inf]
                step *= 1e6
                continue
        elif lo == -1.0:  # only upper bounds so far: step down from hi, aiming past k
            step = 2.0 * step if step > 0 else (k - c + third) / dens if dens > 0 else 0.0
            step = max(step, hi * 1e-3, 1e-30)
            tb[0] = max(hi - step, 0.0)
            if float(tb[0]) >= hi:
                if hi <= 0.0:
                    break  # the k-th largest is 0: gather (-1, 0]
                step *= 1e6
                continue
        else:
            local = (c_lo - c_hi) / (hi - lo)
            if dens_out == 0.0:
                dens_out = local
            if interpolated and (c_lo - c_hi) * 2 > old_gap:
                tb[0] = lo + (hi - lo) * 0.5  # the last guess did not halve the bracket
                interpolated = False
            else:  # secant, aimed a little past k on the side whose bound is looser
                target = k + third if c_lo - k >= k - c_hi else k - third
                target = min(max(target, c_hi + 1), c_lo - 1)
                tb[0] = lo + (c_lo - target) / local
                interpolated = True
            if not lo < float(tb[0]) < hi:
                tb[0] = lo + (hi - lo) * 0.5
                if not lo < float(tb[0]) < hi:
                    break  # no value of the dtype between lo and hi
        t = float(tb[0])
        c = _count_above(s, tb[0])
        passes += 1
    out = np.empty(c_lo - c_hi + 1, s.dtype)
    tb[0] = lo
    lo_t = tb[0]
    tb[0] = hi
    nb = _gather_between(s, lo_t, tb[0], out)
    vals = np.sort(out[:nb])
    # the k-th largest overall is the (k - c_hi)-th largest within (lo, hi]
    return float(vals[nb - (k - c_hi)]), dens_out, passes


@numba.njit(**NJIT)
def _mask_pass(s, w, t, m, out):  # pragma: no cover - compiled
    # m = (|s| > t) as 0/1 of s's dtype and out = w * m, in one vectorised pass. Returns the
    # count kept and the first index where |s| == t (s.size if none).
    c = 0
    first = s.size
    for i in range(s.size):
        v = abs(s[i])
        keep = v > t
        c += keep
        first = min(first, i if v == t else s.size)
        m[i] = keep
        out[i] = w[i] * m[i]
    return c, first


@numba.njit(**NJIT)
def _keep_ties(s, w, t, need, first, m, out):  # pragma: no cover - compiled
    # Keep the first `need` positions (from `first` on) where |s| == t: ties go to the lower index.
    for i in range(first, s.size):
        if need == 0:
            break
        if abs(s[i]) == t:
            m[i] = 1
            out[i] = w[i] * m[i]
            need -= 1


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
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, k: int, state: list):  # noqa: D102
        w = weight.detach()
        s = scores.detach()
        mask = torch.empty_like(s)
        out = torch.empty_like(w)
        a = s.numpy().reshape(-1)
        n = a.size
        if k >= n:  # keep every position (NaN scores included, as `topk_mask`)
            mask.fill_(1)
            torch.mul(w, mask, out=out)
        else:  # threshold at the k-th largest |score|
            t = np.nan
            last, dens, drift = state
            if last == last:  # start from the last threshold plus its drift (exact, faster)
                t, local, _ = _kth_largest_abs(a, k, last + drift, dens, 32)
                if local > 0.0:
                    state[1] = local if dens <= 0.0 else 0.5 * (dens + local)
            if t != t:  # first step, or NaN scores: NumPy's introselect (NaN sorts last)
                buf = np.abs(a)
                buf.partition(n - k)
                t = float(buf[n - k])
            state[2] = t - last if last == last and t == t and abs(t) < 1e300 else 0.0
            state[0] = t
            t = a.dtype.type(t)
            wa, m, o = w.numpy().reshape(-1), mask.numpy().reshape(-1), out.numpy().reshape(-1)
            count, first = _mask_pass(a, wa, t, m, o)
            if count < k:
                _keep_ties(a, wa, t, k - count, first, m, o)
        ctx.save_for_backward(weight)
        ctx.mask = mask
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (weight,) = ctx.saved_tensors
        mask = ctx.mask
        need_w, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_w and need_s) or grad.dtype != mask.dtype or grad.device.type != "cpu":
            gw = grad * mask if need_w else None
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

"""Packed sparse matmul on the CPU: y = x @ W_t.T straight from a task's :class:`~bitsub.plan.Plan`.

Two kernels, chosen by shape (thresholds measured with ``bench/test_bench_matmul.py``):

- small batches (``batch < BATCH_MIN``): the fused decode-in-the-loop kernel. Each slice of
  ``SLICE`` rows runs in SIMD lanes; every step loads one entry per row (column, code), looks the
  code up in the combined codebook and multiplies by the gathered input.
- large batches: the input is transposed once to (in, batch) and each used position adds
  ``w * x[:, col]`` to its output row over the whole batch, so the inner loop is a dense
  contiguous multiply-add (the dense micro-kernel) and the position's code is decoded once per
  batch, not once per sample.

Everything runs in Numba's thread pool; no BLAS call is interleaved with a Numba parallel region
(on 2 cores the two pools fight and stall).

NaN and inf in ``x`` propagate as in a dense product: a dense W has ``0 * x[j]`` at every position
a task does not use, which is NaN for a non-finite ``x[j]``. The kernels skip unused positions, so
rows of a sample with a non-finite entry are recomputed exactly (a rare, slower path).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from bitsub._config import FASTMATH, NJIT, NJIT_PARALLEL
from bitsub.plan import SLICE, Plan

__all__ = ["BATCH_MIN", "PARALLEL_MIN", "conv2d", "matmul"]

BATCH_MIN = 8
"""Batches of at least this many samples use the transposed (batch-inner) kernel."""

PARALLEL_MIN = 1 << 16
"""Stored entries times batch below which the serial kernels are used (thread start-up costs)."""


# --------------------------------------------------------------------------- kernels


def _vec_kernel(slice_ptr, slice_len, cols, codes, codebook, x, y):  # pragma: no cover (njit)
    n_batch, out = y.shape
    for s in prange(slice_len.shape[0]):
        acc = np.empty(SLICE, np.float32)
        base = slice_ptr[s]
        length = slice_len[s]
        r_hi = min(SLICE, out - s * SLICE)
        for b in range(n_batch):
            xb = x[b]
            for r in range(SLICE):
                acc[r] = 0.0
            for k in range(length):
                o = base + k * SLICE
                for r in range(SLICE):
                    acc[r] += codebook[codes[o + r]] * xb[cols[o + r]]
            for r in range(r_hi):
                y[b, s * SLICE + r] = acc[r]


def _batch_kernel(slice_ptr, row_len, cols, codes, codebook, xt, yt):  # pragma: no cover (njit)
    out, n_batch = yt.shape
    for i in prange(out):
        s = i // SLICE
        base = slice_ptr[s] + (i - s * SLICE)
        acc = yt[i]
        for b in range(n_batch):
            acc[b] = 0.0
        for k in range(row_len[i]):
            o = base + k * SLICE
            w = codebook[codes[o]]
            xr = xt[cols[o]]
            for b in range(n_batch):
                acc[b] += w * xr[b]


# Numba's on-disk cache keys a function by its name and line, not by its options: the serial twin
# of a cached parallel kernel is compiled without the cache so the two never share an entry.
_SERIAL = {**NJIT, "cache": False}
_vec_par = numba.njit(**NJIT_PARALLEL, fastmath=set(FASTMATH))(_vec_kernel)
_vec_ser = numba.njit(**_SERIAL, fastmath=set(FASTMATH))(_vec_kernel)
_batch_par = numba.njit(**NJIT_PARALLEL, fastmath=set(FASTMATH))(_batch_kernel)
_batch_ser = numba.njit(**_SERIAL, fastmath=set(FASTMATH))(_batch_kernel)


@numba.njit(**NJIT)
def _fix_nonfinite(slice_ptr, row_len, cols, codes, codebook, x, y):  # pragma: no cover
    """Recompute, exactly as a dense product would, the samples that hold a non-finite entry."""
    n_batch, n_in = x.shape
    out = y.shape[1]
    stamp = np.zeros(n_in, np.int64)
    for b in range(n_batch):
        xb = x[b]
        n_bad = 0
        for j in range(n_in):
            if not np.isfinite(xb[j]):
                n_bad += 1
        if n_bad == 0:
            continue
        for i in range(out):
            s = i // SLICE
            base = slice_ptr[s] + (i - s * SLICE)
            acc = np.float32(0.0)
            seen = 0
            tag = b * out + i + 1
            for k in range(row_len[i]):
                o = base + k * SLICE
                j = cols[o]
                acc += codebook[codes[o]] * xb[j]
                if not np.isfinite(xb[j]) and stamp[j] != tag:
                    stamp[j] = tag
                    seen += 1
            if seen < n_bad:  # an unused position meets a non-finite input: 0 * inf or 0 * nan
                acc = np.float32(np.nan)
            y[b, i] = acc


@numba.njit(**NJIT)
def _any_nonfinite(x):  # pragma: no cover (njit)
    t = np.float32(0.0)
    for v in x.ravel():
        t += v * np.float32(0.0)
    return t != t


@numba.njit(**NJIT)
def _im2col(x, kh, kw, stride, padding, oh, ow, cols):  # pragma: no cover (njit)
    n, c, h, w = x.shape
    for b in range(n):
        for p in range(oh):
            for q in range(ow):
                row = (b * oh + p) * ow + q
                for ch in range(c):
                    for u in range(kh):
                        hi = p * stride + u - padding
                        for v in range(kw):
                            wi = q * stride + v - padding
                            val = np.float32(0.0)
                            if 0 <= hi < h and 0 <= wi < w:
                                val = x[b, ch, hi, wi]
                            cols[row, (ch * kh + u) * kw + v] = val


# --------------------------------------------------------------------------- checks


def _check_plan(plan: object) -> Plan:
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a bitsub.plan.Plan (see build_plan or PackedModel.plan), "
                        f"got {type(plan).__name__}")
    return plan


def _check_x(x: object, n_in: int, what: str = "x") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of float32, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{what} must have dtype float32, got {x.dtype}; use x.astype(np.float32)")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous; use np.ascontiguousarray({what})")
    if x.ndim not in (1, 2) or x.shape[-1] != n_in:
        raise ValueError(f"{what} must have shape ({n_in},) or (batch, {n_in}), got {x.shape}")
    return x


def _run(plan: Plan, x2: np.ndarray) -> np.ndarray:
    """Return x @ W.T, shape (batch, out), for a checked 2-D x."""
    n_batch = x2.shape[0]
    out = plan.shape[0]
    work = plan.cols.size * n_batch
    if n_batch < BATCH_MIN:
        y = np.empty((n_batch, out), np.float32)
        kernel = _vec_par if work >= PARALLEL_MIN else _vec_ser
        kernel(plan.slice_ptr, plan.slice_len, plan.cols, plan.codes, plan.codebook, x2, y)
    else:
        xt = np.ascontiguousarray(x2.T)
        yt = np.empty((out, n_batch), np.float32)
        kernel = _batch_par if work >= PARALLEL_MIN else _batch_ser
        kernel(plan.slice_ptr, plan.row_len, plan.cols, plan.codes, plan.codebook, xt, yt)
        y = np.ascontiguousarray(yt.T)
    if _any_nonfinite(x2):
        _fix_nonfinite(plan.slice_ptr, plan.row_len, plan.cols, plan.codes, plan.codebook, x2, y)
    return y


# --------------------------------------------------------------------------- public


def matmul(plan: Plan, x: np.ndarray) -> np.ndarray:
    """Packed sparse matmul: ``x @ W.T`` for the weights W of a plan, on the CPU.

    Parameters
    ----------
    plan : Plan
        A 2-D layer's plan (:func:`bitsub.plan.build_plan` or ``PackedModel.plan``). A 4-D
        (conv) plan is used as its (out, in*kh*kw) flattening.
    x : ndarray of float32, (in,) or (batch, in), C-contiguous

    Returns
    -------
    ndarray of float32, (out,) or (batch, out)
    """
    plan = _check_plan(plan)
    x = _check_x(x, plan.cols_in)
    if x.ndim == 1:
        return _run(plan, x.reshape(1, -1))[0]
    return _run(plan, x)


def _conv_geometry(plan: Plan, x: object, stride: object, padding: object
                   ) -> tuple[np.ndarray, int, int, int, int]:
    plan = _check_plan(plan)
    if len(plan.shape) != 4:
        raise ValueError(f"conv2d needs a 4-D (out, in, kh, kw) layer, got shape {plan.shape}")
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    _, c, kh, kw = plan.shape
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array of float32, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != c:
        raise ValueError(f"x must have shape (batch, {c}, height, width) (NCHW), got {x.shape}")
    if x.dtype != np.float32:
        raise TypeError(f"x must have dtype float32, got {x.dtype}; use x.astype(np.float32)")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous; use np.ascontiguousarray(x)")
    h, w = x.shape[2] + 2 * int(padding), x.shape[3] + 2 * int(padding)
    if h < kh or w < kw:
        raise ValueError(f"input {x.shape[2:]} with padding {padding} is smaller than the "
                         f"kernel {(kh, kw)}")
    oh = (h - kh) // int(stride) + 1
    ow = (w - kw) // int(stride) + 1
    return x, int(stride), int(padding), oh, ow


def conv2d(plan: Plan, x: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """2-D convolution (cross-correlation, NCHW) with a conv layer's packed weights, on the CPU.

    Runs through :func:`matmul` on im2col patches.

    Parameters
    ----------
    plan : Plan
        Plan of a 4-D layer of shape (out, in, kh, kw).
    x : ndarray of float32, (batch, in, height, width), C-contiguous
    stride, padding : int
        As in ``torch.nn.functional.conv2d`` with int arguments (zero padding).

    Returns
    -------
    ndarray of float32, (batch, out, out_height, out_width)
    """
    x, stride, padding, oh, ow = _conv_geometry(plan, x, stride, padding)
    _, c, kh, kw = plan.shape
    n = x.shape[0]
    patches = np.empty((n * oh * ow, c * kh * kw), np.float32)
    _im2col(x, kh, kw, stride, padding, oh, ow, patches)
    y = _run(plan, patches)
    return np.ascontiguousarray(y.reshape(n, oh, ow, plan.shape[0]).transpose(0, 3, 1, 2))

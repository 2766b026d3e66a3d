"""Argument checks, conv geometry and host-side helpers shared by the CPU and CUDA kernels.

:mod:`bitsub.kernels.matmul` and :mod:`bitsub.kernels.gpu_matmul` take the same arguments and
must reject the same bad ones with the same messages, so both call these.
"""

from __future__ import annotations

import numba
import numpy as np

from bitsub.config import NJIT
from bitsub.kernels.plan import SLICE, Plan

__all__ = ["check_plan", "check_x", "conv_geometry", "fix_nonfinite", "patches"]


@numba.njit(**NJIT)
def fix_nonfinite(slice_ptr, row_len, cols, codes, codebook, x, y):  # pragma: no cover
    """Recompute, as a dense product would, the samples of a "sell" plan with a non-finite x."""
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



def check_plan(plan: object) -> Plan:
    """Return ``plan`` if it is a :class:`~bitsub.kernels.plan.Plan`, else raise TypeError."""
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a bitsub.kernels.plan.Plan (see build_plan or "
                        f"PackedModel.plan), "
                        f"got {type(plan).__name__}")
    return plan


def check_x(x: object, n_in: int, what: str = "x") -> np.ndarray:
    """Return ``x`` if it is a C-contiguous float32 array of shape (n_in,) or (batch, n_in)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of float32, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{what} must have dtype float32, got {x.dtype}; use x.astype(np.float32)")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous; use np.ascontiguousarray({what})")
    if x.ndim not in (1, 2) or x.shape[-1] != n_in:
        raise ValueError(f"{what} must have shape ({n_in},) or (batch, {n_in}), got {x.shape}")
    return x


def conv_geometry(plan: object, x: object, stride: object, padding: object
                   ) -> tuple[np.ndarray, int, int, int, int]:
    """Check a conv2d call; return ``x, stride, padding, out_height, out_width``."""
    plan = check_plan(plan)
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


def patches(plan: Plan, x: np.ndarray, stride: int, padding: int, oh: int, ow: int
             ) -> np.ndarray:
    """im2col: the (batch * oh * ow, in * kh * kw) float32 patches of ``x`` (zero padding)."""
    _, c, kh, kw = plan.shape
    patches = np.empty((x.shape[0] * oh * ow, c * kh * kw), np.float32)
    _im2col(x, kh, kw, stride, padding, oh, ow, patches)
    return patches



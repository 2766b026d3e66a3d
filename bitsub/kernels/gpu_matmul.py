"""Packed sparse matmul on an NVIDIA GPU with numba.cuda: the twin of :mod:`bitsub.kernels.matmul`.

Same signatures as :func:`bitsub.kernels.matmul.matmul` and
:func:`bitsub.kernels.matmul.conv2d`. One thread per
(output row, sample); the threads of a warp take consecutive rows, so with the ``"sell"`` layout
(``SLICE`` rows stored column-major) their loads of columns and codes are coalesced. A ``"lut"``
plan is decoded per position (mask bit, 4-bit code) in the same loop.

``numba.cuda`` is imported on first use only, so ``import bitsub`` never touches CUDA. Without a
GPU (and without ``NUMBA_ENABLE_CUDASIM=1``, Numba's simulator) a call raises RuntimeError.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from bitsub.kernels.common import check_plan, check_x, conv_geometry, fix_nonfinite, patches
from bitsub.kernels.plan import SLICE, Plan

__all__ = ["gpu_conv2d", "gpu_matmul"]

_THREADS = (32, 4)  # rows x samples per block
_state: dict[str, Any] = {}
_device_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# numba.cuda once loaded; a module global because the simulator swaps globals of its kernels.
cuda: Any = None


def _cuda() -> Any:
    """numba.cuda and the compiled kernel, loaded on first use; RuntimeError without a GPU."""
    global cuda
    if "kernel" not in _state:
        try:
            from numba import cuda as numba_cuda
        except ImportError as exc:  # pragma: no cover (numba always ships numba.cuda)
            raise RuntimeError(f"numba.cuda cannot be imported: {exc}") from None
        if not numba_cuda.is_available():
            raise RuntimeError(
                "device='cuda' needs an NVIDIA GPU with a working CUDA driver, and none was "
                "found; use device='cpu', or set NUMBA_ENABLE_CUDASIM=1 (before numba is "
                "imported) to run on Numba's CUDA simulator")
        from numba import float32, int32

        cuda = numba_cuda

        @cuda.jit
        def kernel(slice_ptr, row_len, cols, codes, codebook, x, y):  # pragma: no cover
            i, b = cuda.grid(2)
            if i < y.shape[1] and b < y.shape[0]:
                s = i // SLICE
                base = slice_ptr[s] + (i - s * SLICE)
                acc = float32(0.0)
                for k in range(row_len[i]):
                    o = base + k * SLICE
                    acc += codebook[codes[o]] * x[b, cols[o]]
                y[b, i] = acc

        @cuda.jit
        def lut_kernel(codes, mask, book, x, y):  # pragma: no cover
            i, b = cuda.grid(2)
            n_in = x.shape[1]
            if i < y.shape[1] and b < y.shape[0]:
                s = i // 16
                r = i - 16 * s
                acc = float32(0.0)
                for j in range(n_in):
                    byte = codes[(s * n_in + j) * 8 + (r & 7)]
                    code = (int32(byte) >> (4 * (r >> 3))) & 15
                    w = book[code] if (mask[s * n_in + j] >> r) & 1 else float32(0.0)
                    acc += w * x[b, j]  # every position, as a dense product
                y[b, i] = acc

        _state["kernel"] = kernel
        _state["lut_kernel"] = lut_kernel
    return cuda


def _device_arrays(cuda: Any, plan: Plan) -> tuple:
    # Plans never change (tasks are only added), so their device copies can be kept with them.
    arrays = _device_plans.get(plan)
    if arrays is None:
        host = ((plan.lut_codes, plan.lut_mask, plan.codebook) if plan.layout != "sell" else
                (plan.slice_ptr, plan.row_len, plan.cols, plan.codes, plan.codebook))
        arrays = tuple(cuda.to_device(a) for a in host)
        _device_plans[plan] = arrays
    return arrays


def _run(plan: Plan, x2: np.ndarray) -> np.ndarray:
    cuda = _cuda()
    n_batch, out = x2.shape[0], plan.shape[0]
    y = np.empty((n_batch, out), np.float32)
    if n_batch and out:
        d_y = cuda.device_array((n_batch, out), np.float32)
        blocks = (-(-out // _THREADS[0]), -(-n_batch // _THREADS[1]))
        if plan.layout != "sell":
            _state["lut_kernel"][blocks, _THREADS](*_device_arrays(cuda, plan),
                                                   cuda.to_device(x2), d_y)
        else:
            _state["kernel"][blocks, _THREADS](*_device_arrays(cuda, plan), cuda.to_device(x2),
                                               d_y)
        d_y.copy_to_host(y)
    if plan.layout == "sell" and not np.isfinite(x2).all():
        fix_nonfinite(plan.slice_ptr, plan.row_len, plan.cols, plan.codes, plan.codebook, x2, y)
    return y


def gpu_matmul(plan: Plan, x: np.ndarray) -> np.ndarray:
    """Packed sparse matmul ``x @ W.T`` on the GPU; see :func:`bitsub.kernels.matmul.matmul`.

    Parameters
    ----------
    plan : Plan
    x : ndarray of float32, (in,) or (batch, in), C-contiguous

    Returns
    -------
    ndarray of float32, (out,) or (batch, out)

    Raises
    ------
    RuntimeError
        No GPU (and the CUDA simulator is off).
    """
    plan = check_plan(plan)
    x = check_x(x, plan.cols_in)
    if x.ndim == 1:
        return _run(plan, x.reshape(1, -1))[0]
    return _run(plan, x)


def gpu_conv2d(plan: Plan, x: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """2-D convolution (NCHW) on the GPU; see :func:`bitsub.kernels.matmul.conv2d`.

    The im2col patches are gathered on the host and multiplied on the GPU.
    """
    x, stride, padding, oh, ow = conv_geometry(plan, x, stride, padding)
    y = _run(plan, patches(plan, x, stride, padding, oh, ow))
    return np.ascontiguousarray(y.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2))

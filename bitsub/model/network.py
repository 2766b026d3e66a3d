"""A packed model's sequential network: the op vocabulary, its validation and a NumPy forward.

A network is a JSON-serialisable list of steps (dicts), applied in order to a batch:

- ``{"op": "linear", "layer": L, "bias": KEY|None}``: ``x @ W_t.T (+ b)``, W_t the packed layer L.
- ``{"op": "conv2d", "layer": L, "stride": s, "padding": p, "bias": KEY|None}``: NCHW
  convolution with the packed 4-D layer L (stride 1 and padding 0 when left out).
- ``{"op": "relu"}``: ``max(x, 0)``.
- ``{"op": "maxpool2d", "kernel": k, "stride": s}`` and ``{"op": "avgpool2d", ...}``: pooling
  without padding (stride None or left out: ``k``).
- ``{"op": "flatten"}``: ``x.reshape(batch, -1)``.
- ``{"op": "batchnorm", "mean": KEY|None, "var": KEY|None, "weight": KEY|None,
  "bias": KEY|None, "eps": float}``: ``(x - mean) / sqrt(var + eps) * weight + bias`` per
  channel; mean and var None: the batch's own statistics (biased variance, as WSN's BatchNorm
  with affine=False and no running statistics).
- ``{"op": "dropout"}``: identity (inference).
- ``{"op": "head", "weight": KEY, "bias": KEY|None}``: ``x @ W.T (+ b)``, W a private parameter.

KEY names a task-private parameter (``model.private(task)[KEY]``), so every task has its own heads,
biases and norms while the packed layers are shared.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["OPS", "forward", "validate_network"]

# op -> {key: (required, kind)}; kinds: "layer", "key" (private name or None), "int", "float"
OPS: dict[str, dict[str, tuple[bool, str]]] = {
    "linear": {"layer": (True, "layer"), "bias": (False, "key")},
    "conv2d": {"layer": (True, "layer"), "stride": (False, "int"), "padding": (False, "int0"),
               "bias": (False, "key")},
    "relu": {},
    "maxpool2d": {"kernel": (True, "int"), "stride": (False, "int")},
    "avgpool2d": {"kernel": (True, "int"), "stride": (False, "int")},
    "flatten": {},
    "batchnorm": {"mean": (False, "key"), "var": (False, "key"), "weight": (False, "key"),
                  "bias": (False, "key"), "eps": (False, "float")},
    "dropout": {},
    "head": {"weight": (True, "reqkey"), "bias": (False, "key")},
}
"""The op vocabulary: for each op, its keys as (required, kind)."""


def _bad(k: int, step: object, why: str) -> ValueError:
    return ValueError(f"network step {k} {step!r}: {why}")


def validate_network(steps: object, layers: dict[str, tuple[int, ...]] | None = None) -> None:
    """Check a network against the op vocabulary; raise ValueError naming the bad step.

    Parameters
    ----------
    steps : list of dict
        The network (see the module docstring).
    layers : dict str -> shape, optional
        The packed layers and their shapes; given, every ``"layer"`` must be one of them, 2-D for
        ``linear`` and 4-D for ``conv2d``.
    """
    if not isinstance(steps, (list, tuple)):
        raise TypeError(f"network must be a list of dicts, got {type(steps).__name__}")
    for k, step in enumerate(steps):
        if not isinstance(step, dict):
            raise _bad(k, step, "must be a dict")
        op = step.get("op")
        if op not in OPS:
            raise _bad(k, step, f"unknown op {op!r}; ops are {sorted(OPS)}")
        spec = OPS[op]
        extra = sorted(set(step) - set(spec) - {"op"})
        if extra:
            raise _bad(k, step, f"unknown key(s) {extra} for op {op!r}; keys are {sorted(spec)}")
        for key, (required, kind) in spec.items():
            if key not in step:
                if required:
                    raise _bad(k, step, f"op {op!r} needs key {key!r}")
                continue
            v = step[key]
            if kind == "layer":
                if not isinstance(v, str):
                    raise _bad(k, step, f"{key!r} must be a layer name (str)")
                if layers is not None:
                    if v not in layers:
                        raise _bad(k, step, f"no layer {v!r}; layers are {sorted(layers)}")
                    want = 2 if op == "linear" else 4
                    if len(layers[v]) != want:
                        raise _bad(k, step, f"op {op!r} needs a {want}-D layer, {v!r} has shape "
                                            f"{tuple(layers[v])}")
            elif kind in ("key", "reqkey"):
                if not (isinstance(v, str) or (v is None and kind == "key")):
                    raise _bad(k, step, f"{key!r} must name a private parameter (str)"
                                        + (" or be null" if kind == "key" else ""))
            elif kind in ("int", "int0"):
                lo = 0 if kind == "int0" else 1
                if v is None and key == "stride":
                    continue
                if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                    raise _bad(k, step, f"{key!r} must be an int >= {lo}")
            elif kind == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 \
                        or not math.isfinite(v):
                    raise _bad(k, step, f"{key!r} must be a finite float >= 0")


def _private(priv: dict[str, np.ndarray], key: str | None, task: int, k: int, op: str
             ) -> np.ndarray | None:
    if key is None:
        return None
    if key not in priv:
        raise KeyError(f"network step {k} ({op}) needs private parameter {key!r}, which task "
                       f"{task} does not have; its private parameters are {sorted(priv)}")
    return priv[key]


def _pool(x: np.ndarray, kernel: int, stride: int, how: str, k: int) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError(f"network step {k} ({how}) needs NCHW input, got shape {x.shape}")
    n, c, h, w = x.shape
    if h < kernel or w < kernel:
        raise ValueError(f"network step {k} ({how}): input {h}x{w} is smaller than the kernel "
                         f"{kernel}")
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
    win = win[:, :, ::stride, ::stride][:, :, :oh, :ow]
    red = win.max(axis=(4, 5)) if how == "maxpool2d" else win.mean(axis=(4, 5), dtype=np.float32)
    return np.ascontiguousarray(red, dtype=np.float32)


def _batchnorm(x: np.ndarray, step: dict[str, Any], priv: dict[str, np.ndarray], task: int,
               k: int) -> np.ndarray:
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    if x.ndim not in (2, 4):
        raise ValueError(f"network step {k} (batchnorm) needs 2-D or 4-D input, got {x.shape}")
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = _private(priv, step.get("mean"), task, k, "batchnorm")
    var = _private(priv, step.get("var"), task, k, "batchnorm")
    mean = x.mean(axis=axes, dtype=np.float32) if mean is None else mean
    var = x.var(axis=axes, dtype=np.float32) if var is None else var  # biased, as torch's BN
    eps = np.float32(step.get("eps", 1e-5))
    y = (x - np.reshape(mean, shape)) / np.sqrt(np.reshape(var, shape) + eps)
    weight = _private(priv, step.get("weight"), task, k, "batchnorm")
    bias = _private(priv, step.get("bias"), task, k, "batchnorm")
    if weight is not None:
        y = y * np.reshape(weight, shape)
    if bias is not None:
        y = y + np.reshape(bias, shape)
    return np.ascontiguousarray(y, dtype=np.float32)


def forward(model: Any, task: int, x: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """Run ``model.network`` for ``task`` on a batch, from the packed weights, with NumPy alone.

    Parameters
    ----------
    model : PackedModel
        Anything with ``network``, ``plan(task, layer)``, ``private(task)`` and ``shape(layer)``.
    task : int
    x : ndarray of float32
        A batch: (batch, features) or (batch, channels, height, width).
    device : {"cpu", "cuda"}
        Where the packed layers run; the other steps run in NumPy.

    Returns
    -------
    ndarray of float32
        The output of the last step (logits for a network that ends in a head).
    """
    if device == "cpu":
        from bitsub.kernels.matmul import conv2d, matmul
    elif device == "cuda":
        from bitsub.kernels.gpu_matmul import gpu_conv2d as conv2d
        from bitsub.kernels.gpu_matmul import gpu_matmul as matmul
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    steps = model.network
    if not steps:
        raise ValueError("the model has no network; record one with set_network(steps)")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2:
        raise TypeError("x must be a float32 array with a leading batch axis, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} of shape "
                        f"{getattr(x, 'shape', None)}")
    layers = {step["layer"]: model.shape(step["layer"]) for step in steps
              if isinstance(step, dict) and isinstance(step.get("layer"), str)}
    validate_network(steps, layers)
    priv = model.private(task)
    y = np.ascontiguousarray(x)
    for k, step in enumerate(steps):
        op = step["op"]
        if op in ("linear", "conv2d"):
            plan = model.plan(task, step["layer"])
            if op == "linear":
                if y.ndim != 2:
                    raise ValueError(f"network step {k} (linear) needs (batch, features) input, "
                                     f"got shape {y.shape}; add a flatten step")
                y = matmul(plan, y)
            else:
                y = conv2d(plan, y, int(step.get("stride") or 1), int(step.get("padding", 0)))
            bias = _private(priv, step.get("bias"), task, k, op)
            if bias is not None:
                y = y + (bias if op == "linear" else bias.reshape(1, -1, 1, 1))
        elif op == "relu":
            y = np.maximum(y, np.float32(0.0))
        elif op in ("maxpool2d", "avgpool2d"):
            kernel = int(step["kernel"])
            y = _pool(y, kernel, int(step.get("stride") or kernel), op, k)
        elif op == "flatten":
            y = y.reshape(y.shape[0], -1)
        elif op == "batchnorm":
            y = _batchnorm(y, step, priv, task, k)
        elif op == "head":
            w = _private(priv, step["weight"], task, k, op)
            if y.ndim != 2 or w.ndim != 2 or w.shape[1] != y.shape[1]:
                raise ValueError(f"network step {k} (head): weight {step['weight']!r} of shape "
                                 f"{w.shape} does not fit input of shape {y.shape}")
            y = y @ w.T
            bias = _private(priv, step.get("bias"), task, k, op)
            if bias is not None:
                y = y + bias
        y = np.ascontiguousarray(y, dtype=np.float32)
    return y

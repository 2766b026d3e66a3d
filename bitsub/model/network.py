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

This module is the one interpreter of that list: :func:`parse_network` validates it and fills in
every default (so ``"stride": null`` means the same everywhere), and :func:`run_network` walks the
parsed steps over a :class:`NetworkOps` backend. The NumPy forward (:func:`forward`), the torch
``bitsub_torch.PackedModule`` and the tests' float64 twin differ only in their backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OPS", "NetworkOps", "Step", "forward", "missing_param", "parse_network", "run_network",
           "validate_network"]

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


@dataclass(frozen=True)
class Step:
    """One network step with every default filled in (see the module docstring).

    Attributes
    ----------
    index : int
        Position of the step in the network (for error messages).
    op : str
        One of :data:`OPS`.
    layer : str or None
        The packed layer of ``linear`` / ``conv2d``.
    stride, padding, kernel : int
        Convolution stride and padding (1 and 0 by default); pooling kernel and stride (the
        kernel by default).
    weight, bias, mean, var : str or None
        Names of task-private parameters (None: absent; for ``mean``/``var``: batch statistics).
    eps : float
        BatchNorm epsilon (1e-5 by default).
    """

    index: int
    op: str
    layer: str | None = None
    stride: int = 1
    padding: int = 0
    kernel: int = 0
    weight: str | None = None
    bias: str | None = None
    mean: str | None = None
    var: str | None = None
    eps: float = 1e-5


def parse_network(steps: object, layers: dict[str, tuple[int, ...]] | None = None
                  ) -> tuple[Step, ...]:
    """Validate a network (:func:`validate_network`) and return its steps with defaults filled in.

    The one place that decides what a left-out or null key means: conv stride 1, padding 0;
    pooling stride the kernel; BatchNorm eps 1e-5.
    """
    validate_network(steps, layers)
    out = []
    for k, s in enumerate(steps):  # type: ignore[arg-type]  # validated above
        op = s["op"]
        kw: dict[str, Any] = {key: s.get(key) for key in ("layer", "weight", "bias", "mean", "var")}
        if op == "conv2d":
            kw["stride"] = s.get("stride") or 1
            kw["padding"] = s.get("padding") or 0
        elif op in ("maxpool2d", "avgpool2d"):
            kw["kernel"] = s["kernel"]
            kw["stride"] = s.get("stride") or s["kernel"]
        elif op == "batchnorm":
            kw["eps"] = float(s.get("eps", 1e-5))
        out.append(Step(index=k, op=op, **kw))
    return tuple(out)


class NetworkOps:
    """The backend of :func:`run_network`: how one forward path computes each op.

    Subclasses implement the methods below on their own array type (NumPy float32, torch,
    float64 reference); ``x`` is the running batch and ``step`` the :class:`Step` being run.
    """

    def param(self, step: Step, key: str | None) -> Any:
        """The task-private parameter ``key`` (None when ``key`` is None)."""
        raise NotImplementedError

    def linear(self, step: Step, x: Any) -> Any:
        """``x @ W.T`` with the packed layer ``step.layer``."""
        raise NotImplementedError

    def conv2d(self, step: Step, x: Any) -> Any:
        """NCHW convolution with the packed layer ``step.layer``, ``step.stride``/``padding``."""
        raise NotImplementedError

    def relu(self, step: Step, x: Any) -> Any:
        """``max(x, 0)``."""
        raise NotImplementedError

    def pool(self, step: Step, x: Any) -> Any:
        """``step.op`` (maxpool2d / avgpool2d) with ``step.kernel`` and ``step.stride``."""
        raise NotImplementedError

    def batchnorm(self, step: Step, x: Any, mean: Any, var: Any, weight: Any, bias: Any) -> Any:
        """Per-channel normalisation; ``mean``/``var`` None: the batch's own statistics."""
        raise NotImplementedError

    def matmul_t(self, step: Step, x: Any, w: Any) -> Any:
        """``x @ w.T`` for a head; raise a clear error when the shapes do not fit."""
        raise NotImplementedError

    def finish(self, step: Step, x: Any) -> Any:
        """Called on every step's output (e.g. to keep a dtype); identity by default."""
        return x


def run_network(steps: Sequence[Step], x: Any, ops: NetworkOps) -> Any:
    """Apply parsed ``steps`` (:func:`parse_network`) to the batch ``x`` through ``ops``."""
    for step in steps:
        op = step.op
        if op in ("linear", "conv2d"):
            x = ops.linear(step, x) if op == "linear" else ops.conv2d(step, x)
            b = ops.param(step, step.bias)
            if b is not None:
                x = x + (b if op == "linear" else b.reshape(1, -1, 1, 1))
        elif op == "relu":
            x = ops.relu(step, x)
        elif op in ("maxpool2d", "avgpool2d"):
            x = ops.pool(step, x)
        elif op == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif op == "batchnorm":
            x = ops.batchnorm(step, x, ops.param(step, step.mean), ops.param(step, step.var),
                              ops.param(step, step.weight), ops.param(step, step.bias))
        elif op == "head":
            x = ops.matmul_t(step, x, ops.param(step, step.weight))
            b = ops.param(step, step.bias)
            if b is not None:
                x = x + b
        # "dropout": identity at inference
        x = ops.finish(step, x)
    return x


def missing_param(step: Step, key: str, task: int, have: Sequence[str]) -> KeyError:
    """The error for a private parameter the network names but the task does not have."""
    return KeyError(f"network step {step.index} ({step.op}) needs private parameter {key!r}, "
                    f"which task {task} does not have; its private parameters are "
                    f"{sorted(have)}")


class _NumpyOps(NetworkOps):
    """float32 NumPy backend over the packed kernels (CPU or the CUDA twin)."""

    def __init__(self, model: Any, task: int, device: str) -> None:
        if device == "cpu":
            from bitsub.kernels.matmul import conv2d, matmul
        elif device == "cuda":
            from bitsub.kernels.gpu_matmul import gpu_conv2d as conv2d
            from bitsub.kernels.gpu_matmul import gpu_matmul as matmul
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self._matmul, self._conv2d = matmul, conv2d
        self.model, self.task = model, task
        self.priv = model.private(task)

    def param(self, step: Step, key: str | None) -> np.ndarray | None:
        if key is None:
            return None
        if key not in self.priv:
            raise missing_param(step, key, self.task, list(self.priv))
        return self.priv[key]

    def linear(self, step: Step, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2:
            raise ValueError(f"network step {step.index} (linear) needs (batch, features) input, "
                             f"got shape {x.shape}; add a flatten step")
        return self._matmul(self.model.plan(self.task, step.layer), x)

    def conv2d(self, step: Step, x: np.ndarray) -> np.ndarray:
        return self._conv2d(self.model.plan(self.task, step.layer), x, step.stride, step.padding)

    def relu(self, step: Step, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, np.float32(0.0))

    def pool(self, step: Step, x: np.ndarray) -> np.ndarray:
        return _pool(x, step.kernel, step.stride, step.op, step.index)

    def batchnorm(self, step: Step, x: np.ndarray, mean: Any, var: Any, weight: Any,
                  bias: Any) -> np.ndarray:
        k = step.index
        if x.ndim not in (2, 4):
            raise ValueError(f"network step {k} (batchnorm) needs 2-D or 4-D input, got {x.shape}")
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=axes, dtype=np.float32) if mean is None else mean
        var = x.var(axis=axes, dtype=np.float32) if var is None else var  # biased, as torch's BN
        y = (x - np.reshape(mean, shape)) / np.sqrt(np.reshape(var, shape) + np.float32(step.eps))
        if weight is not None:
            y = y * np.reshape(weight, shape)
        if bias is not None:
            y = y + np.reshape(bias, shape)
        return y

    def matmul_t(self, step: Step, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or w.ndim != 2 or w.shape[1] != x.shape[1]:
            raise ValueError(f"network step {step.index} (head): weight {step.weight!r} of shape "
                             f"{w.shape} does not fit input of shape {x.shape}")
        return x @ w.T

    def finish(self, step: Step, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)


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
    steps = model.network
    if not steps:
        raise ValueError("the model has no network; record one with set_network(steps)")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2:
        raise TypeError("x must be a float32 array with a leading batch axis, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} of shape "
                        f"{getattr(x, 'shape', None)}")
    layers = {step["layer"]: model.shape(step["layer"]) for step in steps
              if isinstance(step, dict) and isinstance(step.get("layer"), str)}
    parsed = parse_network(steps, layers)
    ops = _NumpyOps(model, task, device)
    return run_network(parsed, np.ascontiguousarray(x), ops)

r"""A bitsub packed model inside PyTorch: inference, and gradients with respect to the input.

:class:`PackedModule` runs the packed model's recorded network (``pm.network``) in torch, through
bitsub's one network interpreter (:func:`bitsub.model.network.run_network`). The
shared layers run through bitsub's packed sparse kernels (:func:`bitsub.kernels.matmul.matmul` and
:func:`bitsub.kernels.matmul.conv2d` over a per-(task, layer) plan: column indices and small codes
into a codebook; no dense float32 weight is ever built) inside small ``torch.autograd.Function``\ s;
heads, biases and norms are the task's private parameters, applied with torch ops.

The backward pass of a packed layer gives the gradient with respect to its input only (packed
weights are not trainable), computed from packed data too: ``grad_x = grad_y @ W_t`` is the same
packed matmul over a *transposed plan* (built from ``pm.resolve`` with the mask, sources and codes
transposed); for a convolution, the transposed plan of the (out, in*kh*kw) flattening maps the
output gradient to patch gradients, which a col2im sum folds back onto the input.

Inputs may be float32 or float64 (the kernels compute in float32; results are cast back), on any
device (the kernels run on the CPU; results move back to the input's device).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bitsub
from bitsub.kernels.matmul import conv2d as packed_conv2d
from bitsub.kernels.matmul import matmul as packed_matmul
from bitsub.kernels.plan import Plan
from bitsub.model.network import NetworkOps, Step, missing_param, parse_network, run_network
from bitsub.validate import check_int
from bitsub_torch.export import layer_plan

__all__ = ["PackedModule"]


def _to_numpy32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


def _from_numpy(y: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y)).to(device=like.device, dtype=like.dtype)


def _col2im(cols: np.ndarray, shape: tuple[int, ...], kh: int, kw: int, stride: int,
            padding: int, oh: int, ow: int) -> np.ndarray:
    """Sum patch gradients ``cols`` (n*oh*ow, c*kh*kw) back onto an input of ``shape`` (NCHW)."""
    n, c, h, w = shape
    patches = cols.reshape(n, oh, ow, c, kh, kw)
    out = np.zeros((n, c, h + 2 * padding, w + 2 * padding), np.float32)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += (
                patches[:, :, :, :, i, j].transpose(0, 3, 1, 2)
            )
    return out[:, :, padding : padding + h, padding : padding + w]


class _PackedLinear(torch.autograd.Function):
    """y = x W_t^T from the packed fields; gradient with respect to x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: PackedModule, task: int, layer: str):  # noqa: D102
        ctx.module, ctx.task, ctx.layer = module, task, layer
        return _from_numpy(packed_matmul(module.plan(task, layer), _to_numpy32(x)), x)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # noqa: D102
        plan_t = ctx.module.plan(ctx.task, ctx.layer, transposed=True)
        return _from_numpy(packed_matmul(plan_t, _to_numpy32(grad_y)), grad_y), None, None, None


class _PackedConv2d(torch.autograd.Function):
    """NCHW convolution with the packed weights; gradient with respect to x only."""

    @staticmethod
    def forward(  # noqa: D102
        ctx, x: torch.Tensor, module: PackedModule, task: int, layer: str, stride: int, padding: int
    ):
        ctx.module, ctx.task, ctx.layer = module, task, layer
        ctx.stride, ctx.padding, ctx.shape = stride, padding, tuple(x.shape)
        y = packed_conv2d(module.plan(task, layer), _to_numpy32(x), stride, padding)
        return _from_numpy(y, x)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # noqa: D102
        plan_t = ctx.module.plan(ctx.task, ctx.layer, transposed=True)
        _, _, kh, kw = ctx.module.pm.shape(ctx.layer)
        n, out, oh, ow = grad_y.shape
        g = _to_numpy32(grad_y).transpose(0, 2, 3, 1).reshape(n * oh * ow, out)
        cols = packed_matmul(plan_t, np.ascontiguousarray(g))
        grad_x = _col2im(cols, ctx.shape, kh, kw, ctx.stride, ctx.padding, oh, ow)
        return _from_numpy(grad_x, grad_y), None, None, None, None, None


class _TorchOps(NetworkOps):
    """torch backend of the network interpreter: packed layers via the autograd functions."""

    def __init__(self, module: PackedModule, task: int, like: torch.Tensor) -> None:
        self.module, self.task, self.like = module, task, like

    def param(self, step: Step, key: str | None) -> torch.Tensor | None:
        if key is None:
            return None
        private = self.module.private_tensors(self.task)
        if key not in private:
            raise missing_param(step, key, self.task, list(private))
        return private[key].to(device=self.like.device, dtype=self.like.dtype)

    def linear(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        return _PackedLinear.apply(x, self.module, self.task, step.layer)

    def conv2d(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        return _PackedConv2d.apply(x, self.module, self.task, step.layer, step.stride,
                                   step.padding)

    def relu(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)

    def pool(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if step.op == "maxpool2d" else F.avg_pool2d
        return pool(x, step.kernel, step.stride)

    def batchnorm(self, step: Step, x: torch.Tensor, mean: Any, var: Any, weight: Any,
                  bias: Any) -> torch.Tensor:
        return F.batch_norm(x, mean, var, weight, bias, training=mean is None or var is None,
                            eps=step.eps)

    def matmul_t(self, step: Step, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)


class PackedModule(nn.Module):
    """Run a packed model (or a saved file) as a torch module: ``forward(x, task) -> logits``.

    Parameters
    ----------
    pm_or_path : bitsub.PackedModel or path-like
        A packed model with a recorded network, or the path of a file saved by ``pm.save``.

    Notes
    -----
    Inference only: the module has no trainable parameters, but gradients flow to the input
    (for saliency, adversarial examples, or training something in front of it). BatchNorm steps
    with stored statistics use them; steps without (``mean``/``var`` null) use the batch's own.
    Plans and private tensors are cached per task; :meth:`clear_cache` drops both.
    """

    def __init__(self, pm_or_path: bitsub.PackedModel | str | os.PathLike) -> None:
        super().__init__()
        if isinstance(pm_or_path, (str, os.PathLike)):
            pm = bitsub.load(pm_or_path)
        elif isinstance(pm_or_path, bitsub.PackedModel):
            pm = pm_or_path
        else:
            raise TypeError(
                "PackedModule takes a bitsub.PackedModel or the path of a saved one, got "
                f"{type(pm_or_path).__name__}"
            )
        steps = pm.network
        if not steps:
            raise ValueError(
                "the packed model has no recorded network; record one with pm.set_network(steps) "
                "(bitsub_torch.export does)"
            )
        self.pm = pm
        self.steps = parse_network(steps, {name: pm.shape(name) for name in pm.layers})
        self._plans: dict[tuple[int, str, bool], Plan] = {}
        self._private: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def num_tasks(self) -> int:
        """Number of tasks in the packed model."""
        return len(self.pm.tasks)

    def clear_cache(self) -> None:
        """Drop the cached plans and private tensors (they are rebuilt on demand)."""
        self._plans.clear()
        self._private.clear()

    def plan(self, task: int, layer: str, *, transposed: bool = False) -> Plan:
        """The packed plan of (task, layer), cached; ``transposed`` gives that of W_t^T.

        A conv layer's transposed plan is that of its (out, in*kh*kw) flattening, transposed.
        Plans stay valid: tasks are only ever added and earlier tasks never change.
        """
        key = (task, layer, transposed)
        if key not in self._plans:
            self._plans[key] = layer_plan(self.pm, task, layer, transposed=transposed)
        return self._plans[key]

    def private_tensors(self, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s private parameters as float32 CPU tensors, cached per task."""
        if task not in self._private:
            # copies: the packed model hands out read-only arrays
            self._private[task] = {
                k: torch.from_numpy(np.array(v, dtype=np.float32))
                for k, v in self.pm.private(task).items()
            }
        return self._private[task]

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Logits of task ``task`` for the batch ``x`` (float32 or float64)."""
        task = check_int(task, "task", 0, self.num_tasks - 1)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"x must be float32 or float64, got {x.dtype}")
        return run_network(self.steps, x, _TorchOps(self, task, x))

    def extra_repr(self) -> str:  # noqa: D102
        return f"tasks={self.num_tasks}, layers={self.pm.layers}, steps={len(self.steps)}"

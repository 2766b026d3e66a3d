"""Task-aware layers: one float weight tensor shared by every task, a mask per task, and ownership.

A task layer holds

- ``weight``: the float weights (full shape), shared by all tasks;
- ``owner``: an int16 buffer of the weight's shape, the task that wrote each position (-1 = free).
  Ownership is consolidated after a task; owned positions are never changed again;
- ``memory``: a `bitsub_torch.nn.taskmemory.TaskMemory`, what the layer keeps of each task in
  bits: its Huffman-coded mask and, for the quantizing strategies, its stored fields (coded write
  positions, codes packed at their bit-width, codebook). A task without a mask reads the dense
  weight (Finetune; tasks not trained yet); finished tasks cost bits, not float copies;
- ``scores``: float scores for WSN's learned top-k mask, allocated only by `enable_scores` (the
  strategies that learn masks), used while a task trains in score mode;
- optional per-task biases (private to their task).

``forward(x, task)`` computes with ``values(task) * mask(task)``; ``task`` is an int or a LongTensor
of one label per sample (`bitsub_torch.nn.tasklabels`). ``values(t)`` is the weight, a task's
stored values, or the view of the task a quantizing strategy is training. `grow` makes room for
more tasks, and ``load_state_dict`` grows a layer to the tasks of the state it loads.

Freezing: between ``freeze_owned()`` and ``unfreeze()`` the layer zeroes the gradient of owned
positions (``zero_owned_grads``) and, after every optimizer step, restores their bit patterns from
a snapshot taken at freeze time (``restore_owned``). The restore makes owned weights
bit-identical whatever the optimizer does (Adam moments, momentum, coupled or decoupled weight
decay), for any value including signed zeros, NaN and inf.

BatchNorm policy: `TaskBatchNorm` keeps one affine BatchNorm per task with its own running
statistics, trained only with that task and used in eval mode with its running statistics. It is
private to its task (exported as private parameters), so later tasks cannot change an earlier
task's normalisation and results do not depend on the evaluation batch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitsub.validate import check_int
from bitsub_torch.nn.autograd import topk_mask_bool, topk_masked_weight
from bitsub_torch.nn.tasklabels import by_task
from bitsub_torch.nn.taskmemory import TaskMemory, code_mask

__all__ = ["TaskBatchNorm", "TaskConv2d", "MaskedLayerMixin", "TaskLinear"]

# Integer dtypes of the same width, to restore frozen weights by their bits.
_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


class MaskedLayerMixin:
    """Per-task masks, stored values, ownership, scores and freezing (TaskLinear, TaskConv2d)."""

    weight: nn.Parameter
    scores: nn.Parameter | None
    owner: torch.Tensor
    memory: TaskMemory
    biases: nn.ParameterList | None

    def _init_task_state(self, num_tasks: int, bias: bool, out_features: int) -> None:
        shape = tuple(self.weight.shape)
        self.num_tasks = num_tasks
        self.register_buffer("owner", torch.full(shape, -1, dtype=torch.int16))
        self.memory = TaskMemory(shape)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        # Scores are allocated by `enable_scores` only (the strategies that learn masks); they get
        # the values they would have had if drawn here, and the random stream moves on as if so.
        self._scores_rng = torch.get_rng_state()
        nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5))
        self.register_parameter("scores", None)
        self._out_features = out_features
        if bias:
            self.biases = nn.ParameterList(
                [nn.Parameter(torch.zeros(out_features)) for _ in range(num_tasks)]
            )
        else:
            self.biases = None
        self._score_task: int | None = None
        self._density: float | None = None
        self._topk_state: list = [float("nan"), 0.0, 0.0]
        self._frozen: dict[str, torch.Tensor] | None = None
        self._training_values: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._values_override: torch.Tensor | None = None
        self._fresh_caches()

    def _fresh_caches(self) -> None:
        # float copies of decoded masks (float multiplies are ~5x faster than bool ones) and
        # dense stored values, for the few tasks used last; keyed by the memory's version
        self._mask_cache: OrderedDict[int, tuple[int, torch.Tensor]] = OrderedDict()
        self._values_cache: OrderedDict[int, tuple[int, torch.Tensor]] = OrderedDict()

    def release_caches(self) -> None:
        """Drop the decoded masks and values of the layer and its `TaskMemory` (decoded on use)."""
        self._fresh_caches()
        self.memory.release_caches()

    # ------------------------------------------------------------------ checks
    def _check_task(self, task: int) -> int:
        return check_int(task, "task", 0, self.num_tasks - 1)

    def grow(self, num_tasks: int) -> None:
        """Make room for ``num_tasks`` tasks (private biases of the new ones start at zero)."""
        num_tasks = check_int(num_tasks, "num_tasks", 1)
        if num_tasks <= self.num_tasks:
            return
        if self.biases is not None:
            like = self.biases[0]
            for _ in range(self.num_tasks, num_tasks):
                self.biases.append(nn.Parameter(torch.zeros_like(like, requires_grad=False)))
        self.num_tasks = num_tasks

    # ------------------------------------------------------------------ masks
    def has_task_mask(self, task: int) -> bool:
        """Whether task ``task`` has a stored mask (else it reads the dense weight)."""
        return self.memory.has_mask(self._check_task(task))

    def task_mask(self, task: int) -> torch.Tensor:
        """The bool mask task ``task`` uses (all True when it has none stored)."""
        self._check_task(task)
        if self.memory.has_mask(task):
            return torch.from_numpy(np.array(self.memory.mask(task))).to(self.weight.device)
        return torch.ones(self.weight.shape, dtype=torch.bool, device=self.weight.device)

    def set_task_mask(self, task: int, mask: torch.Tensor) -> None:
        """Store the mask of task ``task`` (bool tensor of the weight's shape)."""
        self._check_task(task)
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"mask must be a bool tensor of shape {tuple(self.weight.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        self.memory.set_mask(task, mask.detach().cpu().numpy())

    def clear_task_mask(self, task: int) -> None:
        """Forget the mask of task ``task`` (it reads the dense weight again)."""
        self.memory.clear_mask(self._check_task(task))

    def values(self, task: int) -> torch.Tensor:
        """The weight values task ``task`` reads (full shape).

        The task being trained by a quantizing strategy reads its trainable positions from
        ``weight`` and the others frozen (`set_training_values`); a task whose values are stored
        in `memory` reads them; any other task reads ``weight``.
        """
        view = self._training_values
        if view is not None and view[0] == task:
            if self._values_override is not None:
                return self._values_override
            return torch.where(view[1], self.weight, view[2])
        if self.memory.has_values(task):
            return self._stored_values(task)
        return self.weight

    def _stored_values(self, task: int) -> torch.Tensor:
        version = self.memory.version
        hit = self._values_cache.get(task)
        w = self.weight
        if hit is not None and hit[0] == version and hit[1].device == w.device:
            self._values_cache.move_to_end(task)
            return hit[1]
        t = torch.from_numpy(np.array(self.memory.values(task))).to(w.device, w.dtype)
        self._values_cache[task] = (version, t)
        while len(self._values_cache) > 2:
            self._values_cache.popitem(last=False)
        return t

    def set_training_values(
        self, task: int, trainable: torch.Tensor, frozen: torch.Tensor
    ) -> None:
        """While ``task`` trains it reads ``where(trainable, weight, frozen)`` (not saved)."""
        self._training_values = (int(task), trainable, frozen)
        self._values_override = None

    def set_values_override(self, values: torch.Tensor | None) -> None:
        """Values the task being trained reads instead (a candidate under evaluation), or None."""
        if values is not None and self._training_values is None:
            raise RuntimeError("set_training_values first: an override is for the task in training")
        self._values_override = values

    def clear_training_values(self) -> None:
        """End the training view (the task reads its stored values, or ``weight``)."""
        self._training_values = None
        self._values_override = None

    def task_bias(self, task: int) -> torch.Tensor | None:
        """The private bias of task ``task``, or None for a bias-free layer."""
        return None if self.biases is None else self.biases[task]

    # ------------------------------------------------------------------ scores (WSN)
    def enable_scores(self) -> nn.Parameter:
        """Allocate ``scores`` (once), for the strategies that learn masks; returns them."""
        if self.scores is None:
            gen = torch.Generator()
            gen.set_state(self._scores_rng)
            scores = torch.empty(tuple(self.weight.shape))
            nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=gen)
            w = self.weight
            self.scores = nn.Parameter(scores.to(device=w.device, dtype=w.dtype))
        return self.scores

    def start_scores(self, task: int, density: float) -> None:
        """Train task ``task`` through the straight-through top-``density`` mask of ``scores``."""
        self._check_task(task)
        topk_mask_bool(self.enable_scores(), density)  # validates density
        self._score_task = task
        self._density = float(density)
        # [last threshold, density, drift]: where the next step's exact selection starts
        self._topk_state = [float("nan"), 0.0, 0.0]

    def stop_scores(self) -> None:
        """Leave score mode; tasks read their stored masks again."""
        self._score_task = None
        self._density = None

    def score_mask(self, density: float | None = None) -> torch.Tensor:
        """The current top-k mask of ``scores`` as bool (density defaults to the training one)."""
        density = self._density if density is None else density
        if density is None:
            raise ValueError("no density: pass one or call start_scores first")
        return topk_mask_bool(self.enable_scores(), density)

    def _float_mask(self, task: int, like: torch.Tensor) -> torch.Tensor:
        version = self.memory.version
        hit = self._mask_cache.get(task)
        if (
            hit is not None
            and hit[0] == version
            and hit[1].dtype == like.dtype
            and hit[1].device == like.device
        ):
            return hit[1]
        mask = torch.from_numpy(np.array(self.memory.mask(task))).to(like.device, like.dtype)
        self._mask_cache[task] = (version, mask)
        while len(self._mask_cache) > 2:
            self._mask_cache.popitem(last=False)
        return mask

    def effective_weight(self, task: int) -> torch.Tensor:
        """``values(task)`` times the task's mask (its score mask while it trains on scores)."""
        values = self.values(task)
        if self._score_task == task:
            return topk_masked_weight(values, self.scores, self._density, self._topk_state)
        if self.memory.has_mask(task):
            return values * self._float_mask(task, values)
        return values

    # ------------------------------------------------------------------ torch habits
    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        if prefix + "scores" in state_dict and self.scores is None:
            self.enable_scores()
        biases = [k for k in state_dict if k.startswith(prefix + "biases.")]
        if biases and self.biases is not None:
            self.grow(1 + max(int(k[len(prefix) + 7:].split(".")[0]) for k in biases))
        legacy = state_dict.pop(prefix + "masks", None)
        legacy_set = state_dict.pop(prefix + "mask_set", None)
        if legacy is not None and legacy_set is not None:
            # a checkpoint from before the coded masks: one bool mask per task
            for t in torch.nonzero(legacy_set.cpu()).reshape(-1).tolist():
                state_dict[f"{prefix}memory.meta{t}"] = torch.tensor([-1, -1, 0, 0])
                state_dict[f"{prefix}memory.mask{t}"] = torch.from_numpy(
                    code_mask(legacy[t].cpu().numpy(), None)[0]
                )
        self._fresh_caches()
        super()._load_from_state_dict(state_dict, prefix, *args)

    def __getstate__(self) -> dict:
        """Pickle / deepcopy without the decoded caches."""
        state = dict(self.__dict__)
        state.pop("_mask_cache", None)
        state.pop("_values_cache", None)
        return state

    def __setstate__(self, state: dict) -> None:  # noqa: D105
        super().__setstate__(state)
        self._fresh_caches()

    # ------------------------------------------------------------------ ownership
    def consolidate(self, task: int, mask: torch.Tensor | None = None) -> int:
        """Give task ``task`` ownership of the free positions of ``mask`` (default: its mask).

        Returns
        -------
        int
            Number of positions newly owned.
        """
        self._check_task(task)
        mask = self.task_mask(task) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(f"mask must have shape {tuple(self.weight.shape)}")
        with torch.no_grad():
            new = (self.owner < 0) & mask.to(self.owner.device)
            self.owner[new] = task
        return int(new.sum())

    def owned(self) -> torch.Tensor:
        """Bool tensor: positions owned by some task."""
        return self.owner >= 0

    def freeze_owned(self) -> None:
        """Freeze every owned position until `unfreeze` (snapshot of their current values)."""
        frozen = self.owner >= 0
        if not bool(frozen.any()):
            self._frozen = None
            return
        w = self.weight.detach()
        itype = _INT_VIEW[w.dtype]
        keep = torch.where(frozen, 0, -1).to(itype)  # all bits set where trainable, 0 if frozen
        self._frozen = {
            "keep": keep,
            "part": w.contiguous().view(itype) & ~keep,  # the frozen values' bits, 0 elsewhere
        }

    def unfreeze(self) -> None:
        """Drop the freeze snapshot."""
        self._frozen = None

    def zero_owned_grads(self) -> None:
        """Zero the weight gradient at frozen positions (call after backward)."""
        grad = self.weight.grad
        if self._frozen is not None and grad is not None:
            grad.view(self._frozen["keep"].dtype).bitwise_and_(self._frozen["keep"])

    def restore_owned(self) -> None:
        """Write the frozen snapshot back at frozen positions (call after the optimizer step).

        Works on the bit patterns (``w = (w & keep) | part``), so it is exact for every value
        (signed zeros, NaN, inf) and branch-free.
        """
        if self._frozen is None:
            return
        with torch.no_grad():
            bits = self.weight.data.view(self._frozen["keep"].dtype)
            bits.bitwise_and_(self._frozen["keep"]).bitwise_or_(self._frozen["part"])


class TaskLinear(MaskedLayerMixin, nn.Module):
    """Linear layer whose forward depends on the task: ``y = x (values(t) * mask_t)^T + b_t``.

    Parameters
    ----------
    in_features, out_features : int
        Shape of the weight ``(out_features, in_features)``.
    num_tasks : int
        Number of tasks (masks, biases and ownership are sized for them).
    bias : bool
        One private bias per task (default False, as in WSN's bias-free networks).
    """

    def __init__(self, in_features: int, out_features: int, num_tasks: int, *, bias: bool = False):
        super().__init__()
        self.in_features = check_int(in_features, "in_features", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        check_int(num_tasks, "num_tasks", 1)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self._init_task_state(num_tasks, bias, out_features)

    def forward(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """Apply the layer as task ``task`` (an int, or a LongTensor of one label per sample)."""
        if isinstance(task, torch.Tensor):
            return by_task(self.forward, x, task, self.num_tasks)
        self._check_task(task)
        return F.linear(x, self.effective_weight(task), self.task_bias(task))

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_tasks={self.num_tasks}, bias={self.biases is not None}"
        )


class TaskConv2d(MaskedLayerMixin, nn.Module):
    """2-D convolution whose forward depends on the task (square kernel, stride, padding).

    Parameters
    ----------
    in_channels, out_channels, kernel_size : int
        Weight shape ``(out_channels, in_channels, kernel_size, kernel_size)``.
    num_tasks : int
        Number of tasks.
    stride, padding : int
        As in `torch.nn.Conv2d` (one int each).
    bias : bool
        One private bias per task (default False).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_tasks: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.out_channels = check_int(out_channels, "out_channels", 1)
        self.kernel_size = check_int(kernel_size, "kernel_size", 1)
        self.stride = check_int(stride, "stride", 1)
        self.padding = check_int(padding, "padding", 0)
        check_int(num_tasks, "num_tasks", 1)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self._init_task_state(num_tasks, bias, out_channels)

    def forward(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """Apply the convolution as task ``task`` (an int, or one label per sample)."""
        if isinstance(task, torch.Tensor):
            return by_task(self.forward, x, task, self.num_tasks)
        self._check_task(task)
        return F.conv2d(
            x, self.effective_weight(task), self.task_bias(task), self.stride, self.padding
        )

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, num_tasks={self.num_tasks}, "
            f"bias={self.biases is not None}"
        )


class TaskBatchNorm(nn.Module):
    """One affine BatchNorm per task, each with its own running statistics (private to its task).

    Parameters
    ----------
    num_features : int
        Channels (dimension 1 of the input).
    num_tasks : int
        Number of tasks.
    dims : int
        1 for ``(N, C)`` / ``(N, C, L)`` inputs (BatchNorm1d), 2 for ``(N, C, H, W)`` (BatchNorm2d).
    eps, momentum : float
        As in `torch.nn.BatchNorm2d`.
    """

    def __init__(
        self,
        num_features: int,
        num_tasks: int,
        *,
        dims: int = 2,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ):
        super().__init__()
        check_int(num_features, "num_features", 1)
        check_int(num_tasks, "num_tasks", 1)
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.num_features = num_features
        self.num_tasks = num_tasks
        self.eps = float(eps)
        self.norms = nn.ModuleList(
            [cls(num_features, eps=eps, momentum=momentum) for _ in range(num_tasks)]
        )

    def forward(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """Normalise with task ``task``'s statistics (batch statistics while training).

        ``task`` is an int, or a LongTensor of one label per sample.
        """
        if isinstance(task, torch.Tensor):
            return by_task(self.forward, x, task, self.num_tasks)
        return self.norms[check_int(task, "task", 0, self.num_tasks - 1)](x)

    def grow(self, num_tasks: int) -> None:
        """Make room for ``num_tasks`` tasks (new norms as a fresh BatchNorm)."""
        num_tasks = check_int(num_tasks, "num_tasks", 1)
        first = self.norms[0]
        for _ in range(self.num_tasks, num_tasks):
            norm = type(first)(self.num_features, eps=first.eps, momentum=first.momentum)
            self.norms.append(norm.to(first.weight.device, first.weight.dtype).train(self.training))
        self.num_tasks = max(self.num_tasks, num_tasks)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        keys = [k for k in state_dict if k.startswith(prefix + "norms.")]
        if keys:
            self.grow(1 + max(int(k[len(prefix) + 6:].split(".")[0]) for k in keys))
        super()._load_from_state_dict(state_dict, prefix, *args)

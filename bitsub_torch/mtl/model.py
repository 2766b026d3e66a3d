"""Multi-task networks: a shared conv backbone, one head per task, prunable weight layers.

Every conv / linear weight is a *prunable* layer (:class:`SparseConv2d`, :class:`SparseLinear`)
that belongs to one *component*: ``"backbone"`` or the name of the task whose head holds it.
Its effective weight is ``where(mask, W, 0)``, and when a soft threshold is attached (AdapMTL)
``S(W, theta) = sign(W) relu(|W| - sigmoid(theta))`` on top (STR's soft threshold; or its hard
variant, see :class:`SoftThreshold`); biases are never pruned. Sparsity is counted over the
effective weights of the prunable layers.

The effective weight is the one the forward pass uses and the one export stores, so a packed
file decoded back into the network reproduces its outputs bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GRANULARITIES", "MTLNet", "SoftThreshold", "SparseConv2d", "SparseLinear",
           "build_model"]

#: Which layers share one theta: one per component (AdapMTL), one per layer, one for all.
GRANULARITIES = ("component", "layer", "uniform")
BACKBONE = "backbone"


class SoftThreshold(nn.Module):
    """The learnable thetas; ``threshold(key) = sigmoid(theta[key])``.

    ``hard=True``: the forward pass keeps the weights above the threshold unchanged
    (``W 1[|W| > sigmoid(theta)]``) while the gradients are the soft threshold's (a
    straight-through estimator), so theta learns exactly as with STR's soft threshold.
    """

    def __init__(self, keys: Sequence[str], init: float, hard: bool = False) -> None:
        super().__init__()
        self.hard = bool(hard)
        # ParameterDict keys may not contain dots: layer names are stored with "/".
        self.theta = nn.ParameterDict(
            {k.replace(".", "/"): nn.Parameter(torch.tensor(float(init))) for k in keys})

    def threshold(self, key: str) -> torch.Tensor:
        """``sigmoid(theta[key])``."""
        return torch.sigmoid(self.theta[key.replace(".", "/")])


class _Prunable:
    """Shared by the two prunable layers: the mask buffer and the effective weight."""

    weight: torch.Tensor
    mask: torch.Tensor

    def _setup(self, component: str) -> None:
        self.component = component
        self.theta_key: str | None = None
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        # Not a submodule: the thresholds belong to the network, a layer only reads them.
        object.__setattr__(self, "_thresholds", None)

    def attach(self, thresholds: SoftThreshold | None, key: str | None) -> None:
        """Use ``thresholds.threshold(key)`` as this layer's soft threshold (None: none)."""
        object.__setattr__(self, "_thresholds", thresholds)
        self.theta_key = key

    def sparse_weight(self) -> torch.Tensor:
        """The effective weight: masked, then soft-thresholded when a threshold is attached."""
        w = torch.where(self.mask, self.weight, torch.zeros((), dtype=self.weight.dtype))
        if self._thresholds is not None:
            s = self._thresholds.threshold(self.theta_key)
            soft = torch.sign(w) * F.relu(w.abs() - s)
            if not self._thresholds.hard:
                return soft
            # forward: the hard threshold; backward: the soft one (soft - soft is exactly 0)
            keep = torch.where(w.abs() > s, w, torch.zeros((), dtype=w.dtype))
            w = keep.detach() + (soft - soft.detach())
        return w


class SparseConv2d(nn.Conv2d, _Prunable):
    """``nn.Conv2d`` whose weight is the effective weight of a prunable layer."""

    def __init__(self, cin: int, cout: int, kernel: int, component: str, stride: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2)
        self._setup(component)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.conv2d(x, self.sparse_weight(), self.bias, self.stride, self.padding)


class SparseLinear(nn.Linear, _Prunable):
    """``nn.Linear`` whose weight is the effective weight of a prunable layer."""

    def __init__(self, cin: int, cout: int, component: str) -> None:
        super().__init__(cin, cout)
        self._setup(component)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.linear(x, self.sparse_weight(), self.bias)


class MTLNet(nn.Module):
    """A shared backbone and one head per task; ``forward(x)`` gives ``{task: output}``.

    Parameters
    ----------
    backbone : nn.Module
        Shared by every task.
    heads : dict str -> nn.Module
        One head per task, in task order.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.thresholds: SoftThreshold | None = None

    @property
    def task_names(self) -> list[str]:
        """The tasks, in order."""
        return list(self.heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: D102
        f = self.backbone(x)
        return {t: h(f) for t, h in self.heads.items()}

    def prunable(self) -> list[tuple[str, nn.Module]]:
        """``(name, layer)`` of every prunable layer, backbone first, then head by head."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, _Prunable)]

    def components(self) -> list[str]:
        """``"backbone"`` then the task names."""
        return [BACKBONE] + self.task_names

    def attach_thresholds(self, granularity: str = "component", init: float = -5.0,
                          hard: bool = False) -> None:
        """Give every prunable layer a soft threshold: one theta per component / layer / all.

        ``hard``: see :class:`SoftThreshold`.

        Raises
        ------
        ValueError
            An unknown granularity.
        """
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        layers = self.prunable()
        if granularity == "component":
            keys = {n: m.component for n, m in layers}
        elif granularity == "layer":
            keys = {n: n for n, _ in layers}
        else:
            keys = {n: "all" for n, _ in layers}
        self.thresholds = SoftThreshold(sorted(set(keys.values())), init, hard)
        for n, m in layers:
            m.attach(self.thresholds, keys[n])

    def fold_thresholds(self) -> None:
        """Freeze the pruning: ``W <- S(W, theta)``, mask ``W != 0``, thresholds detached.

        The effective weights, hence the outputs and the sparsity, do not change; the thetas
        stay in the state dict.
        """
        with torch.no_grad():
            for _, m in self.prunable():
                w = m.sparse_weight()
                m.weight.copy_(w)
                m.mask.copy_(w != 0)
        self.detach_thresholds()

    def detach_thresholds(self) -> None:
        """Stop using the soft thresholds (weights restored from a folded checkpoint)."""
        for _, m in self.prunable():
            m.attach(None, None)
        if self.thresholds is not None:
            for p in self.thresholds.parameters():
                p.requires_grad_(False)

    def sparsity(self) -> dict[str, float]:
        """Fraction of zero effective weights: ``{"overall": x, "components": {c: x}}``."""
        zeros = dict.fromkeys(self.components(), 0)
        total = dict.fromkeys(self.components(), 0)
        with torch.no_grad():
            for _, m in self.prunable():
                w = m.sparse_weight()
                zeros[m.component] += int((w == 0).sum())
                total[m.component] += w.numel()
        overall = sum(zeros.values()) / max(1, sum(total.values()))
        return {"overall": overall,
                "components": {c: zeros[c] / max(1, total[c]) for c in zeros}}


def _dense_head(outputs: int, width: int, task: str) -> nn.Module:
    return nn.Sequential(
        SparseConv2d(width, width, 3, task), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="nearest"),
        SparseConv2d(width, outputs, 3, task))


def _class_head(outputs: int, width: int, side: int, task: str) -> nn.Module:
    return nn.Sequential(
        SparseConv2d(width, width, 3, task), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        SparseLinear(width * (side // 2) ** 2, 64, task), nn.ReLU(),
        SparseLinear(64, outputs, task))


def build_model(scenario, width: int = 32) -> MTLNet:
    """The network of a multi-task scenario (:class:`bitsub_torch.data.multitask.MTLScenario`).

    Dense tasks (segmentation, depth, normals) get a backbone that halves the resolution once
    and heads that bring it back (conv, ReLU, nearest x2, conv); classification tasks get a
    backbone of two conv + max-pool stages and heads of conv, max-pool and two linear layers.
    """
    channels, side = scenario.input_shape[0], scenario.input_shape[-1]
    half = width // 2
    if all(t.kind == "class" for t in scenario.tasks):
        backbone = nn.Sequential(
            SparseConv2d(channels, half, 3, BACKBONE), nn.ReLU(), nn.MaxPool2d(2),
            SparseConv2d(half, width, 3, BACKBONE), nn.ReLU(), nn.MaxPool2d(2))
        heads = {t.name: _class_head(t.outputs, width, side // 4, t.name) for t in scenario.tasks}
    elif any(t.kind == "class" for t in scenario.tasks):
        raise ValueError("a scenario mixing per-example and per-pixel tasks has no model here")
    else:
        backbone = nn.Sequential(
            SparseConv2d(channels, half, 3, BACKBONE), nn.ReLU(),
            SparseConv2d(half, width, 3, BACKBONE, stride=2), nn.ReLU(),
            SparseConv2d(width, width, 3, BACKBONE), nn.ReLU())
        heads = {t.name: _dense_head(t.outputs, width, t.name) for t in scenario.tasks}
    return MTLNet(backbone, heads)

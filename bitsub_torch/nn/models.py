"""The papers' networks built from task layers; each is a `TaskNetwork` with one head per task.

- `mlp`: 784-100-100 without bias (p-MNIST, as in the WSN / TinySubNets code).
- `alexnet`: the reduced AlexNet of GPM / WSN for s-CIFAR100 (3 convs 64-128-256, 2 FC 2048).
- `tinynet`: 4 conv layers (3x3, stride 2, 160 channels) + 2 FC 640 for TinyImageNet, after
  the La-MAML / WSN TinyImageNet network.
- `resnet18`: the reduced ResNet-18 of GPM for 5-datasets (20 base channels).

Every network takes ``input_shape``, ``num_classes`` (head width), ``num_tasks`` and a width
argument. BatchNorm is per task (`TaskBatchNorm`); heads are bias-free `nn.Linear`. A network's
forward takes one task for the batch or a task label per sample; `TaskNetwork.grow` adds tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitsub.validate import check_int
from bitsub_torch.nn.layers import (
    MaskedLayerMixin,
    TaskBatchNorm,
    TaskConv2d,
    TaskLinear,
)
from bitsub_torch.nn.tasklabels import by_task

__all__ = [
    "SCENARIO_NETWORKS", "ResNet18", "TaskNetwork", "alexnet", "build", "default_network", "mlp",
    "resnet18", "tinynet",
]

MaskedLayer = TaskLinear | TaskConv2d
"""A shared layer with a mask per task (not the engine's ``bitsub.TaskLayer`` record)."""
_TASK_AWARE = (TaskLinear, TaskConv2d, TaskBatchNorm)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=True)


def _bn_steps(name: str, bn: TaskBatchNorm) -> dict:
    return {
        "op": "batchnorm",
        "mean": f"{name}.mean",
        "var": f"{name}.var",
        "weight": f"{name}.weight",
        "bias": f"{name}.bias",
        "eps": bn.eps,
    }


def _bn_params(name: str, bn: TaskBatchNorm, task: int) -> dict[str, np.ndarray]:
    norm = bn.norms[task]
    return {
        f"{name}.mean": _np(norm.running_mean),
        f"{name}.var": _np(norm.running_var),
        f"{name}.weight": _np(norm.weight),
        f"{name}.bias": _np(norm.bias),
    }


class TaskNetwork(nn.Module):
    """A network whose forward takes the task: shared task layers, one head per task.

    The default forward runs ``blocks`` in order (task-aware ones get the task) and then
    ``heads[task]``.

    Parameters
    ----------
    blocks : sequence of (str, nn.Module)
        Named blocks in forward order: `TaskLinear`, `TaskConv2d`, `TaskBatchNorm`, `nn.ReLU`,
        `nn.MaxPool2d`, `nn.AvgPool2d`, `nn.Flatten`, `nn.Dropout`.
    features : int
        Input width of the heads.
    num_classes : int
        Output width of each head.
    num_tasks : int
        Number of tasks (heads).
    input_shape : sequence of int
        Shape of one sample.
    """

    def __init__(
        self,
        blocks: Sequence[tuple[str, nn.Module]],
        features: int,
        num_classes: int,
        num_tasks: int,
        input_shape: Sequence[int],
    ):
        super().__init__()
        self.num_tasks = check_int(num_tasks, "num_tasks", 1)
        self.num_classes = check_int(num_classes, "num_classes", 1)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.blocks = nn.ModuleDict(dict(blocks))
        self.heads = nn.ModuleList(
            [nn.Linear(features, num_classes, bias=False) for _ in range(num_tasks)]
        )

    def _check_task(self, task: int) -> int:
        return check_int(task, "task", 0, self.num_tasks - 1)

    def features(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """The body's output for task ``task`` (the heads' input); int or one label per sample."""
        if isinstance(task, torch.Tensor):
            return by_task(self.features, x, task, self.num_tasks)
        for block in self.blocks.values():
            x = block(x, task) if isinstance(block, _TASK_AWARE) else block(x)
        return x

    def forward(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` of task ``task``.

        ``task`` is one int for the whole batch (the fast path), or a LongTensor of shape
        ``(batch,)`` with one task label per sample (the Avalanche convention): the batch is
        grouped by label, each group runs through its task's sub-network and head, and the
        logits come back in the samples' order.
        """
        if isinstance(task, torch.Tensor):
            return by_task(self.forward, x, task, self.num_tasks)
        self._check_task(task)
        return self.heads[task](self.features(x, task))

    def grow(self, num_tasks: int) -> None:
        """Make room for ``num_tasks`` tasks: new heads, norms and biases (no-op if fewer).

        A model built without knowing the final number of tasks takes more this way; the
        trainer grows it to its scenario, and ``load_state_dict`` to the state it loads.
        """
        num_tasks = check_int(num_tasks, "num_tasks", 1)
        if num_tasks <= self.num_tasks:
            return
        first = self.heads[0]
        for _ in range(self.num_tasks, num_tasks):
            head = nn.Linear(first.in_features, first.out_features, bias=first.bias is not None)
            self.heads.append(head.to(first.weight.device, first.weight.dtype))
        for module in self.blocks.modules():
            if isinstance(module, (MaskedLayerMixin, TaskBatchNorm)):
                module.grow(num_tasks)
        self.num_tasks = num_tasks

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        heads = [k for k in state_dict if k.startswith(prefix + "heads.")]
        if heads:
            self.grow(1 + max(int(k[len(prefix) + 6:].split(".")[0]) for k in heads))
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ------------------------------------------------------------------ introspection
    def masked_layers(self) -> dict[str, MaskedLayer]:
        """Shared masked layers (TaskLinear / TaskConv2d) in forward order, by stable name."""
        # cached: the strategies' hooks ask for it twice per training step
        cache = self.__dict__.get("_masked_layers")
        if cache is None:
            cache = {
                name: m for name, m in self.blocks.named_modules()
                if isinstance(m, MaskedLayerMixin)
            }
            self.__dict__["_masked_layers"] = cache
        return dict(cache)

    def task_norms(self) -> dict[str, TaskBatchNorm]:
        """Per-task BatchNorms by name."""
        return {name: m for name, m in self.blocks.named_modules() if isinstance(m, TaskBatchNorm)}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The shared weights of the task layers."""
        return [layer.weight for layer in self.masked_layers().values()]

    def score_parameters(self) -> list[nn.Parameter]:
        """The WSN scores of the task layers (those that have them: see ``enable_scores``)."""
        return [layer.scores for layer in self.masked_layers().values() if layer.scores is not None]

    def private_parameters(self, task: int) -> list[nn.Parameter]:
        """Parameters private to task ``task``: its head, its BatchNorms and its biases."""
        self._check_task(task)
        params = list(self.heads[task].parameters())
        for norm in self.task_norms().values():
            params.extend(norm.norms[task].parameters())
        for layer in self.masked_layers().values():
            bias = layer.task_bias(task)
            if bias is not None:
                params.append(bias)
        return params

    def network_steps(self, task: int) -> list[dict]:
        """The forward of task ``task`` in bitsub's op vocabulary (private keys for head/norms).

        Raises
        ------
        NotImplementedError
            For networks that are not a plain sequence (ResNet-18's skip connections).
        """
        self._check_task(task)
        steps: list[dict] = []
        for name, block in self.blocks.items():
            if isinstance(block, TaskLinear):
                bias = f"{name}.bias" if block.biases is not None else None
                steps.append({"op": "linear", "layer": name, "bias": bias})
            elif isinstance(block, TaskConv2d):
                bias = f"{name}.bias" if block.biases is not None else None
                steps.append(
                    {
                        "op": "conv2d",
                        "layer": name,
                        "stride": block.stride,
                        "padding": block.padding,
                        "bias": bias,
                    }
                )
            elif isinstance(block, TaskBatchNorm):
                steps.append(_bn_steps(name, block))
            elif isinstance(block, nn.ReLU):
                steps.append({"op": "relu"})
            elif isinstance(block, (nn.MaxPool2d, nn.AvgPool2d)):
                op = "maxpool2d" if isinstance(block, nn.MaxPool2d) else "avgpool2d"
                kernel, stride = _int(block.kernel_size), _int(block.stride)
                steps.append({"op": op, "kernel": kernel, "stride": stride})
            elif isinstance(block, nn.Flatten):
                steps.append({"op": "flatten"})
            elif isinstance(block, nn.Dropout):
                steps.append({"op": "dropout"})
            else:
                kind = type(block).__name__
                raise NotImplementedError(f"block {name!r} ({kind}) has no bitsub op")
        steps.append({"op": "head", "weight": "head.weight", "bias": None})
        return steps

    def private_params(self, task: int) -> dict[str, np.ndarray]:
        """Float32 arrays of exactly the private keys `network_steps` names for task ``task``."""
        self._check_task(task)
        out: dict[str, np.ndarray] = {"head.weight": _np(self.heads[task].weight)}
        for name, norm in self.task_norms().items():
            out.update(_bn_params(name, norm, task))
        for name, layer in self.masked_layers().items():
            bias = layer.task_bias(task)
            if bias is not None:
                out[f"{name}.bias"] = _np(bias)
        return out


def _int(v: int | tuple[int, ...]) -> int:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise NotImplementedError(f"non-square pooling {v} has no bitsub op")
        return int(v[0])
    return int(v)


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _scaled(channels: int, width: float) -> int:
    if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    return max(1, int(round(channels * width)))


def _check_image(input_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} needs input_shape (channels, height, width), got {shape}")
    return shape  # type: ignore[return-value]


def mlp(
    input_shape: Sequence[int] = (784,),
    num_classes: int = 10,
    num_tasks: int = 10,
    *,
    width: int = 100,
    depth: int = 2,
) -> TaskNetwork:
    """Bias-free MLP ``in-width-...-width`` with ReLUs and one bias-free head per task.

    The default is WSN's / TinySubNets' p-MNIST network 784-100-100. Blocks are named
    ``fc1, relu1, fc2, relu2, ...``; inputs with more than one dimension are flattened first.
    """
    check_int(width, "width", 1)
    check_int(depth, "depth", 1)
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be non-empty positive ints, got {shape}")
    blocks: list[tuple[str, nn.Module]] = []
    if len(shape) > 1:
        blocks.append(("flatten", nn.Flatten()))
    fan_in = math.prod(shape)
    for i in range(1, depth + 1):
        blocks.append((f"fc{i}", TaskLinear(fan_in, width, num_tasks)))
        blocks.append((f"relu{i}", nn.ReLU()))
        fan_in = width
    return TaskNetwork(blocks, fan_in, num_classes, num_tasks, shape)


def alexnet(
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    num_tasks: int = 10,
    *,
    width: float = 1.0,
) -> TaskNetwork:
    """Reduced AlexNet (GPM / WSN, s-CIFAR100): convs 64-128-256 (k 4, 3, 2), FC 2048-2048.

    Each conv / FC is followed by a per-task BatchNorm and ReLU; convs by dropout and 2x2
    max-pooling. ``width`` scales every channel / unit count.
    """
    c, h, w = _check_image(input_shape, "alexnet")
    ch = [_scaled(64, width), _scaled(128, width), _scaled(256, width)]
    fc = _scaled(2048, width)
    blocks: list[tuple[str, nn.Module]] = []
    drops = (0.2, 0.2, 0.5)
    for i, (cout, k) in enumerate(zip(ch, (4, 3, 2)), start=1):
        blocks += [
            (f"conv{i}", TaskConv2d(c, cout, k, num_tasks)),
            (f"bn{i}", TaskBatchNorm(cout, num_tasks)),
            (f"relu{i}", nn.ReLU()),
            (f"drop{i}", nn.Dropout(drops[i - 1])),
            (f"pool{i}", nn.MaxPool2d(2, 2)),
        ]
        h, w = _conv_out(h, k) // 2, _conv_out(w, k) // 2
        if min(h, w) < 1:
            raise ValueError(f"input_shape {tuple(input_shape)} is too small for alexnet")
        c = cout
    blocks.append(("flatten", nn.Flatten()))
    fan_in = c * h * w
    for i in (4, 5):
        blocks += [
            (f"fc{i - 3}", TaskLinear(fan_in, fc, num_tasks)),
            (f"bn{i}", TaskBatchNorm(fc, num_tasks, dims=1)),
            (f"relu{i}", nn.ReLU()),
            (f"drop{i}", nn.Dropout(0.5)),
        ]
        fan_in = fc
    return TaskNetwork(blocks, fan_in, num_classes, num_tasks, tuple(input_shape))


def tinynet(
    input_shape: Sequence[int] = (3, 64, 64),
    num_classes: int = 5,
    num_tasks: int = 40,
    *,
    width: float = 1.0,
) -> TaskNetwork:
    """TinyImageNet network: 4 convs 3x3 stride 2 padding 1 (160 channels) + FC 640-640.

    After the La-MAML / WSN TinyImageNet network (40 tasks x 5 classes by default); each conv and
    FC is followed by a per-task BatchNorm and ReLU. ``width`` scales channel / unit counts.
    """
    c, h, w = _check_image(input_shape, "tinynet")
    ch = _scaled(160, width)
    fc = _scaled(640, width)
    blocks: list[tuple[str, nn.Module]] = []
    for i in range(1, 5):
        blocks += [
            (f"conv{i}", TaskConv2d(c, ch, 3, num_tasks, stride=2, padding=1)),
            (f"bn{i}", TaskBatchNorm(ch, num_tasks)),
            (f"relu{i}", nn.ReLU()),
        ]
        h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        c = ch
    blocks.append(("flatten", nn.Flatten()))
    fan_in = c * h * w
    for i in (1, 2):
        blocks += [
            (f"fc{i}", TaskLinear(fan_in, fc, num_tasks)),
            (f"bn{i + 4}", TaskBatchNorm(fc, num_tasks, dims=1)),
            (f"relu{i + 4}", nn.ReLU()),
        ]
        fan_in = fc
    return TaskNetwork(blocks, fan_in, num_classes, num_tasks, tuple(input_shape))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, num_tasks: int):
        super().__init__()
        self.conv1 = TaskConv2d(cin, cout, 3, num_tasks, stride=stride, padding=1)
        self.bn1 = TaskBatchNorm(cout, num_tasks)
        self.conv2 = TaskConv2d(cout, cout, 3, num_tasks, stride=1, padding=1)
        self.bn2 = TaskBatchNorm(cout, num_tasks)
        if stride != 1 or cin != cout:
            self.shortcut = TaskConv2d(cin, cout, 1, num_tasks, stride=stride)
            self.shortcut_bn = TaskBatchNorm(cout, num_tasks)
        else:
            self.shortcut = None
            self.shortcut_bn = None

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, task), task))
        out = self.bn2(self.conv2(out, task), task)
        if self.shortcut is not None:
            out = out + self.shortcut_bn(self.shortcut(x, task), task)
        else:
            out = out + x
        return F.relu(out)


class ResNet18(TaskNetwork):
    """Reduced ResNet-18 (GPM, 5-datasets): 20 base channels, blocks [2, 2, 2, 2].

    conv 3x3 (stride 1) + BN + ReLU, four stages (strides 1, 2, 2, 2) of two basic blocks with
    1x1 projection shortcuts, 2x2 average pooling, flatten, heads. `network_steps` raises
    NotImplementedError: bitsub's op vocabulary has no skip connection.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        num_tasks: int = 5,
        *,
        width: int = 20,
    ):
        c, h, w = _check_image(input_shape, "resnet18")
        check_int(width, "width", 1)
        nf = width
        blocks: list[tuple[str, nn.Module]] = [
            ("conv1", TaskConv2d(c, nf, 3, num_tasks, stride=1, padding=1)),
            ("bn1", TaskBatchNorm(nf, num_tasks)),
            ("relu1", nn.ReLU()),
        ]
        cin = nf
        for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
            for j in range(2):
                s = stride if j == 0 else 1
                blocks.append((f"layer{stage}_{j}", _BasicBlock(cin, nf * mult, s, num_tasks)))
                cin = nf * mult
                h, w = _conv_out(h, 3, s, 1), _conv_out(w, 3, s, 1)
        if min(h, w) < 2:
            raise ValueError(f"input_shape {tuple(input_shape)} is too small for resnet18")
        blocks += [("pool", nn.AvgPool2d(2)), ("flatten", nn.Flatten())]
        features = cin * (h // 2) * (w // 2)
        super().__init__(blocks, features, num_classes, num_tasks, tuple(input_shape))

    def features(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:  # noqa: D102
        if isinstance(task, torch.Tensor):
            return by_task(self.features, x, task, self.num_tasks)
        for block in self.blocks.values():
            x = block(x, task) if isinstance(block, (*_TASK_AWARE, _BasicBlock)) else block(x)
        return x

    def network_steps(self, task: int) -> list[dict]:  # noqa: D102
        raise NotImplementedError(
            "ResNet-18's skip connections are not expressible in bitsub's op vocabulary"
        )


def resnet18(
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    num_tasks: int = 5,
    *,
    width: int = 20,
) -> ResNet18:
    """Reduced ResNet-18 of GPM for 5-datasets (``width`` = base channels, 20 by default)."""
    return ResNet18(input_shape, num_classes, num_tasks, width=width)


#: Scenario name -> (model, width) built when ``bitsub-train`` is given no ``--model`` and no
#: ``--width``: the network of the scenario's rows in the README's table, so the command without
#: flags is the table's run. ``splitfmnist2d`` runs the reduced AlexNet at a quarter of its width:
#: at full width (6.5 M task-layer weights, 16x as many) one training step with score masks took
#: 6.7 s on a 2-core machine under load (0.9 s at 0.25), hours a run.
SCENARIO_NETWORKS: dict[str, tuple[str, float]] = {"splitfmnist2d": ("alexnet", 0.25)}


def default_network(scenario: str, input_shape: Sequence[int], model: str | None = None,
                    width: float | None = None) -> tuple[str, float | None]:
    """The (model, width) a run builds for ``scenario`` from the user's ``model`` and ``width``.

    ``model`` None: the scenario's entry of `SCENARIO_NETWORKS`, else by input shape (``mlp``
    for flat inputs, ``tinynet`` for 64 x 64 images, ``alexnet`` for other images). ``width``
    None: the scenario's width when the model is the scenario's own, else None (the model's
    default). So ``--model alexnet`` on ``splitfmnist2d`` is width 0.25 as well, and ``--width
    1`` asks for the full network.
    """
    shape = tuple(input_shape)
    if scenario in SCENARIO_NETWORKS:
        own, own_width = SCENARIO_NETWORKS[scenario]
    elif len(shape) == 3:
        own, own_width = ("tinynet" if shape[1:] == (64, 64) else "alexnet"), None
    else:
        own, own_width = "mlp", None
    name = own if model is None else model
    if width is None and name == own:
        width = own_width
    return name, width


def build(name: str, scenario: Any, width: float | None = None, *,
          num_classes: int | None = None, num_tasks: int | None = None) -> TaskNetwork:
    """The network ``name`` (``mlp``, ``alexnet``, ``tinynet``, ``resnet18``) for a scenario.

    Input shape, classes per task and number of tasks come from ``scenario`` unless given
    (the one-model runs: one head over every class, ``num_tasks=1``); ``width`` None is
    the model's default. ``mlp`` and ``resnet18`` take a whole number of units (ValueError
    otherwise), the others a float scale; another ``name`` is a ValueError. This is what
    ``bitsub-train --model --width`` builds.
    """
    factories = {"mlp": mlp, "alexnet": alexnet, "tinynet": tinynet, "resnet18": resnet18}
    if name not in factories:
        raise ValueError(f"model must be one of {', '.join(factories)}, got {name!r}")
    kwargs: dict[str, Any] = {}
    if width is not None:
        if name in ("mlp", "resnet18"):
            if width != int(width) or width < 1:
                raise ValueError(f"--width for {name} is a whole number of units, got {width}")
            kwargs["width"] = int(width)
        else:
            kwargs["width"] = float(width)
    shape = scenario.input_shape
    classes = scenario.num_classes if num_classes is None else num_classes
    tasks = len(scenario.tasks) if num_tasks is None else num_tasks
    return factories[name](shape, classes, tasks, **kwargs)

"""The task-incremental trainer: strategy hooks, the re-tested accuracy matrix, checkpoints.

After each task i the trainer re-tests EVERY task j (seen or not) on its test split, so row i of
``R`` is measured, never copied forward; the row of the untrained model (``random_init``) gives
FWT's baseline. Strategies decide on the validation split only.

Reproducibility: the data order of task t, epoch e comes from ``numpy.random.default_rng((seed,
t, phase, e))`` and torch's generator is re-seeded from ``(seed, t)`` at the start of each task,
so a task's training does not depend on how the run got there. This is what lets a resumed run
(a new Trainer with the same arguments over the same checkpoint directory) end with the same
results as an uninterrupted one.

BatchNorm statistics: before every evaluation of the task being trained (the protocol's and the
strategy's) and once its ``after_task`` is over, the task's BatchNorm running statistics are
gathered again over `NORM_IMAGES` of its training images with dropout off
(`Trainer.gather_norms`), so that they are those of the network evaluated and stored, not a
moving average taken through dropout while the weights moved. Models without BatchNorm skip it.

Checkpoints: after each task, ``task_XXX.pt`` holds the run's full configuration (`Trainer.config`:
the trainer's arguments, the strategy's arguments, the model's parameter shapes and the caller's
``run_config``), the model's state_dict, the strategy's state_dict, the accuracy rows so far,
``random_init`` and timings. It is serialised in memory and written by `bitsub.atomic.write_bytes`
(a full disk is an ``OSError`` and leaves no temporary file), then the previous task's file is
removed. A resume whose configuration differs in anything is refused with the differences named.
Strategy state must be made of tensors, numbers, strings, lists and dicts (loaded with
``weights_only=True``).

Data-parallel (``distributed``, a `bitsub_torch.cl.distributed.Distributed`): training steps run
through DistributedDataParallel on each rank's share of every global batch, the ranks agree on
early stopping and on every mask decision through the hooks of that module, and rank 0 alone
writes checkpoints.

Length: the module is the `Trainer` (whose docstring says why it is long) plus the `Results`
record and the configuration comparison that guards a resume; splitting them would scatter one
concept, the run and its checkpoints, over modules.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import pickle
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bitsub.atomic import write_bytes
from bitsub_torch.cl import metrics
from bitsub_torch.cl.protocol import Protocol
from bitsub_torch.cl.strategies.base import Strategy
from bitsub_torch.data.streaming import TaskDataset, batch_loader
from bitsub_torch.nn import norm_statistics

__all__ = ["NORM_IMAGES", "Results", "Trainer", "added_arguments", "config_differences",
           "norm_sample"]

_OPTIMIZERS = ("adam", "adamw", "sgd")
_CKPT = re.compile(r"^task_(\d{3,})\.pt$")
_NORM_SAMPLE = 1 << 20  # the seed stream of the statistics' sample (training orders use 0, 1)
# A task's BatchNorm statistics are gathered over this many of its training images (a seeded
# sample): on the CNN rows' stuck runs, at 128 images per batch, every task's validation
# accuracy is that of a pass over all 10,800 images to within 0.08 point (README, "CNN rows,
# 3 seeds, after the fix").
NORM_IMAGES = 2048


def norm_sample(n: int, seed: int, task: int) -> np.ndarray:
    """Rows of task ``task``'s training images its BatchNorm statistics are gathered over.

    `NORM_IMAGES` of its ``n`` images (all, if fewer), sorted: the same seeded sample every time.
    """
    return np.sort(np.random.default_rng((seed, task, _NORM_SAMPLE)).permutation(n)[:NORM_IMAGES])


@dataclass
class Results:
    """What a run measured.

    Attributes
    ----------
    accuracy_matrix : np.ndarray
        T x T, ``R[i, j]`` = test accuracy on task j after training task i (re-tested).
    random_init_accuracy : np.ndarray
        Length T: test accuracy of the untrained model on each task (FWT's ``b``).
    acc, bwt, fwt, forgetting : float
        See `bitsub_torch.cl.metrics`.
    timings : dict
        Seconds: ``train`` and ``eval`` per task, ``total``; and ``steps``: per task, the
        optimizer steps of each training phase.
    config : dict
        The run's arguments.
    """

    accuracy_matrix: np.ndarray
    random_init_accuracy: np.ndarray
    acc: float
    bwt: float
    fwt: float
    forgetting: float
    timings: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays as nested lists, NaN as None)."""
        d = asdict(self)
        d["accuracy_matrix"] = self.accuracy_matrix.tolist()
        d["random_init_accuracy"] = self.random_init_accuracy.tolist()
        return _nan_to_none(d)

    def to_json(self, **kwargs: Any) -> str:
        """The results as a JSON string (keyword arguments go to `json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _share_tensors(state: Any, reference: dict[str, torch.Tensor]) -> Any:
    """``state`` with each tensor bitwise equal to a tensor of ``reference`` replaced by that one.

    Bitwise equal: same dtype, shape and bytes. The quantizing strategies' `FieldStore` holds the
    same coded masks, write sets, codes and codebooks as the model's `TaskMemory` buffers;
    torch.save writes a storage once however many times it is referenced, so the checkpoint
    stores them once and loads them back with the same bytes.
    """
    def tensors(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from tensors(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from tensors(v)

    def key(t: torch.Tensor) -> tuple:
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        return t.dtype, tuple(t.shape), t.device, hashlib.sha256(raw).digest()

    wanted = {(t.dtype, tuple(t.shape), t.device) for t in tensors(state) if t.numel()}
    index = {key(t): t for t in reference.values() if isinstance(t, torch.Tensor) and t.numel()
             and (t.dtype, tuple(t.shape), t.device) in wanted}

    def swap(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return index.get(key(value), value) if value.numel() else value
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return value

    return swap(state)


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Name what differs between two configurations: ``["lr (0.001 -> 0.01)", ...]``.

    Nested dicts are compared key by key (``strategy_args.density``); a key present on one side
    only shows as missing on the other.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name} (not recorded -> {new[key]!r})")
            elif key not in new:
                out.append(f"{name} ({old[key]!r} -> not given)")
            else:
                out += config_differences(old[key], new[key], name)
        return out
    if isinstance(old, tuple):
        old = list(old)
    if isinstance(new, tuple):
        new = list(new)
    return [] if old == new else [f"{prefix or 'value'} ({old!r} -> {new!r})"]


def added_arguments(previous: dict, current: dict, defaults: Mapping[str, Any]) -> dict:
    """``previous`` (a run's recorded configuration) with the strategy arguments added since.

    Every ``strategy_args`` entry of ``current`` that ``previous`` lacks and whose value is the
    strategy's default (``defaults``) is filled in: an option added to a strategy after a run
    began, left at its default (which keeps the old behaviour), does not block resuming that
    run. Any other difference is left for `config_differences` to name.
    """
    if not isinstance(previous, dict) or not isinstance(current, dict):
        return previous
    old, new = previous.get("strategy_args"), current.get("strategy_args")
    if not isinstance(old, dict) or not isinstance(new, dict):
        return previous
    filled = {k: v for k, v in new.items() if k not in old and k in defaults and defaults[k] == v}
    return {**previous, "strategy_args": {**old, **filled}} if filled else previous


class Trainer:
    """Task-incremental training of a `TaskNetwork` with a `Strategy` over a scenario.

    Length: one loop with its phases (train, convergence protocol, strategy hooks, re-test of
    every task), checkpoints and resume checks; each part is short, and splitting the class
    would spread one run's state over several objects.

    Parameters
    ----------
    model : TaskNetwork
        The network (one head per task; ``model.num_tasks >= len(scenario.tasks)``).
    strategy : Strategy
        The continual-learning strategy.
    scenario : Scenario
        The task stream (``scenario.tasks``: list of TaskData).
    epochs : int
        Training epochs per task when ``protocol`` is None (and the retraining epochs a strategy
        asks for are epochs then too).
    batch_size : int
        Training batch size.
    lr : float
        Learning rate.
    optimizer : {"adam", "adamw", "sgd"}
        A fresh optimizer is made for every task, over ``strategy.parameters(model, task)``.
    weight_decay, momentum : float
        Optimizer settings (momentum for SGD only).
    seed : int
        Seed of the data order and of torch's generator (re-seeded per task).
    checkpoint_dir : str or path, optional
        Where to save a checkpoint after each task and resume from.
    progress : bool
        Show tqdm progress bars.
    eval_batch_size : int
        Batch size of evaluation.
    device : str
        Torch device of the model and batches.
    run_config : dict, optional
        More of the run's configuration that the trainer cannot see (``bitsub-train`` passes its
        data, model and export arguments): stored in every checkpoint and compared on resume.
        Numbers, strings, None, lists and dicts only.
    protocol : Protocol, optional
        Train every phase of every task until its validation accuracy stops improving (see
        `bitsub_torch.cl.protocol`), instead of a fixed number of epochs.
    score_lr : float, optional
        Learning rate of the mask scores of score-based strategies (default: ``lr``, as in the
        reference code of WSN).
    distributed : Distributed, optional
        Train data-parallel over a torch.distributed process group (see
        `bitsub_torch.cl.distributed`); ``batch_size`` is the global batch.
    workers : int
        DataLoader worker processes gathering the training batches (0: in this process). The
        batches are the same whatever the number; not part of `config`.
    pin_memory : bool
        Page-locked batches for asynchronous copies to a CUDA device (ignored without CUDA).
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        scenario: Any,
        *,
        epochs: int = 1,
        batch_size: int = 128,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = True,
        eval_batch_size: int = 1024,
        device: str = "cpu",
        run_config: dict | None = None,
        protocol: Protocol | None = None,
        score_lr: float | None = None,
        distributed: Any = None,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a Strategy, got {type(strategy).__name__}")
        if not hasattr(model, "masked_layers") or not hasattr(model, "num_tasks"):
            raise TypeError("model must be a bitsub_torch TaskNetwork")
        tasks = getattr(scenario, "tasks", None)
        if not tasks:
            raise ValueError("scenario has no tasks")
        if model.num_tasks < len(tasks):
            if not hasattr(model, "grow"):
                raise ValueError(
                    f"model has {model.num_tasks} heads but the scenario has {len(tasks)} tasks: "
                    "build the model with num_tasks=len(scenario.tasks)"
                )
            model.grow(len(tasks))  # heads grow as tasks arrive
        for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1),
                                 ("workers", workers, 0),
                                 ("eval_batch_size", eval_batch_size, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        for name, value in (("weight_decay", weight_decay), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 <= value < math.inf
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if run_config is not None and not isinstance(run_config, dict):
            raise TypeError(f"run_config must be a dict, got {type(run_config).__name__}")
        if score_lr is not None and not score_lr > 0:
            raise ValueError(f"score_lr must be > 0, got {score_lr}")
        if protocol is not None and not isinstance(protocol, Protocol):
            raise TypeError(f"protocol must be a Protocol, got {type(protocol).__name__}")
        if protocol is not None and any(len(t.y_val) == 0 for t in tasks):
            raise ValueError("the protocol stops on validation accuracy, but a task has no "
                             "validation split: give the scenario one, or train fixed epochs")
        self.model = model.to(device)
        self.strategy = strategy
        self.scenario = scenario
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = float(lr)
        self.optimizer = optimizer
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.seed = seed
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.progress = bool(progress)
        self.eval_batch_size = eval_batch_size
        self.device = torch.device(device)
        self.run_config = dict(run_config or {})
        self.protocol = protocol
        self.score_lr = None if score_lr is None else float(score_lr)
        self.distributed = distributed
        if distributed is not None and batch_size < distributed.world_size:
            raise ValueError(f"batch_size ({batch_size}) must be at least the number of "
                             f"processes ({distributed.world_size}): it is the global batch")
        # the model as built: its state grows with the tasks (coded masks, stored values, scores)
        self._shapes = {k: list(v.shape) for k, v in self.model.state_dict().items()}
        self._has_norms = bool(norm_statistics.task_batchnorms(self.model, 0))
        if self._has_norms and batch_size < 2:
            raise ValueError("a network with BatchNorm trains on batches of two or more: give "
                             "batch_size >= 2 (a batch of one has no batch statistics)")
        self._training: int | None = None  # the task in training, while its hooks run
        self.workers = workers
        self.pin_memory = bool(pin_memory)

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """The run's full configuration, recorded in every checkpoint and checked on resume."""
        return {
            "strategy": self.strategy.name,
            "strategy_args": self.strategy.arguments(),
            "scenario": getattr(self.scenario, "name", None),
            "tasks": len(self.scenario.tasks),
            "model": type(self.model).__name__,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
            "seed": self.seed,
            "parameters": self._shapes,
            "run": self.run_config,
            "protocol": None if self.protocol is None else self.protocol.to_dict(),
            "score_lr": self.score_lr,
            # recorded for models with BatchNorm only, so that runs of models without any
            # (their results unchanged) still resume from checkpoints made before it
            **({"norm_statistics": {"dropout": False, "images": NORM_IMAGES}}
               if self._has_norms else {}),
        }

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, task: int, split: str = "val") -> float:
        """Accuracy in [0, 1] of ``model`` as task ``task`` on ``split`` ("val" or "test")."""
        if split not in ("val", "test", "train"):
            raise ValueError(f"split must be 'val', 'test' or 'train', got {split!r}")
        data = self.scenario.tasks[task]
        x = getattr(data, f"x_{split}")  # an ndarray or a streaming view: sliced per batch
        y = np.asarray(getattr(data, f"y_{split}"), dtype=np.int64)
        if len(y) == 0:
            return float("nan")
        was_training = model.training
        model.eval()
        correct = 0
        for start in range(0, len(y), self.eval_batch_size):
            xb = np.ascontiguousarray(x[start : start + self.eval_batch_size], dtype=np.float32)
            xb = torch.from_numpy(xb).to(self.device)
            pred = model(xb, task).argmax(dim=1).cpu().numpy()
            correct += int(np.sum(pred == y[start : start + self.eval_batch_size]))
        model.train(was_training)
        return correct / len(y)

    def gather_norms(self, task: int) -> None:
        """Gather task ``task``'s BatchNorm statistics again for the network as it is now.

        Over `NORM_IMAGES` of its training images (the same seeded sample every time), dropout
        off (`bitsub_torch.nn.norm_statistics`). The trainer calls it before every evaluation of
        the task being trained (the protocol's validations, the strategy's decisions) and once
        its training and the strategy's ``after_task`` are over, so the statistics kept are
        those of the network stored. Nothing happens for a model without BatchNorm.
        """
        if not self._has_norms:
            return
        rows = norm_sample(len(self.scenario.tasks[task].y_train), self.seed, task)
        # batch_size >= 2 on a network with BatchNorm (checked at construction)
        norm_statistics.gather(self.model, self.scenario.tasks[task].x_train, task,
                               batch_size=self.batch_size, rows=rows)

    def _evaluate_training(self, model: nn.Module, task: int, split: str = "val") -> float:
        """`evaluate` for the strategy's hooks: the task being trained gets its statistics first."""
        if task == self._training and model is self.model and split != "test":
            self.gather_norms(task)
        return self.evaluate(model, task, split)

    def _test_row(self) -> np.ndarray:
        return np.array(
            [self.evaluate(self.model, j, "test") for j in range(len(self.scenario.tasks))]
        )

    # ------------------------------------------------------------------ training
    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        # The fused kernels are faster, and unlike the foreach path they do not slow down on the
        # many exact zeros (sqrt(0)) that masked and frozen positions put into Adam's moments.
        if self.optimizer == "sgd":
            cls, kw = torch.optim.SGD, {"momentum": self.momentum}
        else:
            cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
            kw = {}
        groups: Any = params
        if self.score_lr is not None:
            scores = {id(p) for p in self.model.score_parameters()}
            groups = [{"params": [p for p in params if id(p) not in scores]},
                      {"params": [p for p in params if id(p) in scores], "lr": self.score_lr}]
            groups = [g for g in groups if g["params"]]
        try:
            return cls(groups, lr=self.lr, weight_decay=self.weight_decay, fused=True, **kw)
        except (RuntimeError, ValueError, TypeError):
            return cls(groups, lr=self.lr, weight_decay=self.weight_decay, **kw)

    def _starts(self, n: int) -> list[int]:
        starts = list(range(0, n, self.batch_size))
        smallest = 2  # a batch of one breaks BatchNorm's batch statistics
        if self.distributed is not None and getattr(self.model, "task_norms", dict)():
            smallest = 2 * self.distributed.world_size  # ... and so does a share of one
        if len(starts) > 1 and n - starts[-1] < smallest:
            starts.pop()
        return starts

    def _order(self, task: int, phase: int, n: int) -> Any:
        """Index vectors of the training batches, epoch after epoch, in the seeded orders."""
        starts = self._starts(n)
        epoch = 0
        while True:
            order = np.random.default_rng((self.seed, task, phase, epoch)).permutation(n)
            for start in starts:
                yield order[start : start + self.batch_size]
            epoch += 1

    def _batches(self, task: int, phase: int) -> Any:
        """Training batches of ``task`` through a DataLoader (`bitsub_torch.data.streaming`).

        Yields ``(x, y, n)``: the batch (this rank's share of it when distributed) and the size
        ``n`` of the global batch.
        """
        data = self.scenario.tasks[task]
        n = len(data.y_train)
        dist = self.distributed
        shares = self._order(task, phase, n)
        if dist is not None:
            shares = (dist.shard(idx) for idx in shares)
        # the global batch sizes repeat epoch after epoch: derived, not re-drawn
        sizes = itertools.cycle([min(self.batch_size, n - start) for start in self._starts(n)])
        loader = batch_loader(TaskDataset(data.x_train, data.y_train), shares,
                              workers=self.workers, pin_memory=self.pin_memory)
        for (xb, yb), size in zip(loader, sizes):
            yield (xb.to(self.device, non_blocking=self.pin_memory),
                   yb.to(self.device, non_blocking=self.pin_memory), size)

    def _steps(self, task: int, opt: torch.optim.Optimizer, batches: Any, count: int,
               bar: Any) -> None:
        model, strategy = self.model, self.strategy
        dist = self.distributed
        forward = model if dist is None else dist.wrap(model)  # DDP averages the gradients
        model.train()
        for _ in range(count):
            xb, yb, size = next(batches)
            opt.zero_grad(set_to_none=True)
            if dist is None:
                loss = F.cross_entropy(model(xb, task), yb)
            else:
                loss = dist.loss(forward(xb, task), yb, size)
            loss.backward()
            strategy.after_backward(task, model)
            opt.step()
            strategy.after_step(task, model)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)

    @torch.no_grad()
    def _val_score(self, task: int) -> tuple[float, float]:
        """(accuracy, -mean loss) of the task on its validation split: larger is better."""
        self.gather_norms(task)
        data = self.scenario.tasks[task]
        x = data.x_val
        y = torch.from_numpy(np.asarray(data.y_val, dtype=np.int64))
        self.model.eval()
        correct, loss = 0, 0.0
        for start in range(0, len(y), self.eval_batch_size):
            xb = np.ascontiguousarray(x[start : start + self.eval_batch_size], dtype=np.float32)
            xb = torch.from_numpy(xb).to(self.device)
            yb = y[start : start + self.eval_batch_size].to(self.device)
            out = self.model(xb, task)
            correct += int((out.argmax(dim=1) == yb).sum())
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
        self.model.train()
        score = (correct / len(y), -loss / len(y))
        # Early stopping follows rank 0's score, so every rank takes the same number of steps.
        return score if self.distributed is None else self.distributed.agree(score)

    def _train_phase(self, task: int, opt: torch.optim.Optimizer, phase: int, epochs: int,
                     bar: Any) -> int:
        """Train one phase (0: training, 1: retraining); return the optimizer steps taken."""
        spe = len(self._starts(len(self.scenario.tasks[task].y_train)))
        batches = self._batches(task, phase)
        if self.protocol is None:
            self._steps(task, opt, batches, epochs * spe, bar)
            return epochs * spe
        max_steps, every = self.protocol.budget(spe)
        best = self._val_score(task)
        # The best state is kept whole: weights, scores, heads and norms of the task.
        best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        steps = bad = decays = 0
        while steps < max_steps:
            self._steps(task, opt, batches, every, bar)
            steps += every
            score = self._val_score(task)
            if score > best:
                best, bad = score, 0
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                continue
            bad += 1
            if bad < self.protocol.patience:
                continue
            if decays >= self.protocol.decays:
                break
            self.model.load_state_dict(best_state)
            for group in opt.param_groups:
                group["lr"] /= 2
            decays, bad = decays + 1, 0
        self.model.load_state_dict(best_state)
        return steps

    def train_task(self, task: int) -> list[int]:
        """Train one task (all its phases and strategy hooks), without testing or checkpoints.

        For callers that drive the stream themselves (`bitsub_torch.avalanche`); call
        ``strategy.setup(model, scenario)`` once first, as `run` does. Returns the optimizer
        steps of each phase.
        """
        return self._train_task(task)

    def _train_task(self, task: int) -> list[int]:
        data = self.scenario.tasks[task]
        torch.manual_seed(self.seed * 1_000_003 + task)
        self.strategy.before_task(task, self.model, data)
        self.release_memory()  # what before_task decoded (the bank's fields) is not trained on
        params = self.strategy.parameters(self.model, task)
        spe = len(self._starts(len(data.y_train)))
        retrain = self.strategy.retrain_epochs(task)
        if self.protocol is None:
            total = spe * (self.epochs + retrain)
        else:
            total = self.protocol.budget(spe)[0] * (2 if retrain > 0 else 1)
        steps = []
        self._training = task
        try:
            with tqdm(
                total=total, desc=f"task {task}", leave=False, disable=not self.progress
            ) as bar:
                opt = self._make_optimizer(params)
                steps.append(self._train_phase(task, opt, 0, self.epochs, bar))
                self.strategy.prune(task, self.model, data, self._evaluate_training)
                if self.distributed is not None:  # rank 0's pruned masks and weights
                    self.distributed.sync(self.model)
                if retrain > 0:
                    if self.protocol is not None:
                        opt = self._make_optimizer(params)  # the learning rate may have been halved
                    steps.append(self._train_phase(task, opt, 1, retrain, bar))
            self.strategy.after_task(task, self.model, data, self._evaluate_training)
        finally:
            self._training = None
        self.gather_norms(task)  # for the network stored: pruned, quantized, fine-tuned
        if self.distributed is not None:  # rank 0's masks, fields, bit-widths and banks
            self.distributed.sync(self.model, self.strategy)
        self.release_memory()
        return steps

    def release_memory(self) -> None:
        """Drop gradients and the decoded masks and values that layers and strategy cache.

        The caches are decoded again from the coded task memory when next needed; no value
        changes. The trainer calls it after a strategy's ``before_task``, after each task and
        after each re-test of every task, so the caches of one phase are not resident through
        the next (dense copies of a few tasks per layer: up to ~40 bytes per weight position).
        Gradients are set to None: each task's optimizer starts from none, and without this
        every finished task's private head and norms kept theirs (4 bytes per parameter).
        """
        self.model.zero_grad(set_to_none=True)
        for module in self.model.modules():
            release = getattr(module, "release_caches", None)
            if callable(release):
                release()
        release = getattr(getattr(self.strategy, "store", None), "release_caches", None)
        if callable(release):
            release()

    # ------------------------------------------------------------------ checkpoints
    def _latest_checkpoint(self) -> tuple[int, Path] | None:
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return None
        found = [
            (int(m.group(1)), p)
            for p in self.checkpoint_dir.iterdir()
            if (m := _CKPT.match(p.name))
        ]
        return max(found) if found else None

    def _save(self, task: int, rows: np.ndarray, random_init: np.ndarray, timings: dict) -> None:
        if self.checkpoint_dir is None or not getattr(self.distributed, "writer", True):
            return  # rank 0 alone writes
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        model_state = self.model.state_dict()
        state = {
            "task": task,
            "config": self.config(),
            "model": model_state,
            "strategy": _share_tensors(self.strategy.state_dict(), model_state),
            "rows": torch.from_numpy(rows.copy()),
            "random_init": torch.from_numpy(random_init.copy()),
            "timings": timings,
        }
        path = self.checkpoint_dir / f"task_{task:03d}.pt"
        # Serialised in memory first: torch.save on a full disk fails with an opaque
        # RuntimeError, a plain file write with OSError(ENOSPC) naming the cause.
        buf = io.BytesIO()
        torch.save(state, buf)
        try:
            write_bytes(path, buf.getbuffer())
        except OSError as exc:
            if exc.filename or exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        for t in range(task):
            old = self.checkpoint_dir / f"task_{t:03d}.pt"
            if old.exists():
                old.unlink()

    def check_resume(self) -> int:
        """Check the latest checkpoint (if any) against this run; return the next task to train.

        Raises ValueError, naming every difference, when the checkpoint was made with another
        configuration (`config`), or when it cannot be read. Writes nothing.
        """
        latest = self._latest_checkpoint()
        return 0 if latest is None else int(self._read(latest[1])["task"]) + 1

    def _read(self, path: Path) -> dict:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            keys = {"task", "config", "model", "strategy", "rows", "random_init", "timings"}
            if not isinstance(state, dict) or not keys <= set(state):
                raise ValueError("it is not a checkpoint of this trainer")
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ValueError(
                f"checkpoint {path} cannot be read ({reason}): delete it to redo that task, or "
                "use another checkpoint_dir"
            ) from exc
        now = self.config()
        changed = config_differences(
            added_arguments(state["config"], now, type(self.strategy).check_arguments({})), now)
        if changed:
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            raise ValueError(
                f"checkpoint {path} was made with other arguments: {'; '.join(changed[:5])}"
                f"{more}. Resume with the same arguments, or use another checkpoint_dir"
            )
        return state

    def _load(self, path: Path) -> dict:
        state = self._read(path)
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        return state

    # ------------------------------------------------------------------ run
    def run(self) -> Results:
        """Train every task in order (skipping those a checkpoint says are done); return Results."""
        t_start = time.perf_counter()
        num = len(self.scenario.tasks)
        rows = np.full((num, num), np.nan)
        timings: dict = {"train": [float("nan")] * num, "eval": [float("nan")] * num,
                         "steps": [[] for _ in range(num)]}
        first = 0
        self.strategy.setup(self.model, self.scenario)
        latest = self._latest_checkpoint()
        if latest is not None:
            state = self._load(latest[1])
            first = int(state["task"]) + 1
            rows = state["rows"].numpy().astype(np.float64)
            random_init = state["random_init"].numpy().astype(np.float64)
            timings = state["timings"]
        else:
            torch.manual_seed(self.seed)
            random_init = self._test_row()
            self.release_memory()
        for task in tqdm(range(first, num), desc="tasks", disable=not self.progress):
            t0 = time.perf_counter()
            steps = self._train_task(task)
            t1 = time.perf_counter()
            timings.setdefault("steps", [[] for _ in range(num)])[task] = steps
            rows[task] = self._test_row()
            self.release_memory()
            timings["train"][task] = t1 - t0
            timings["eval"][task] = time.perf_counter() - t1
            if self.checkpoint_dir is not None:
                self._save(task, rows, random_init, timings)
        timings["total"] = time.perf_counter() - t_start
        return Results(
            accuracy_matrix=rows,
            random_init_accuracy=random_init,
            acc=metrics.acc(rows),
            bwt=metrics.bwt(rows),
            fwt=metrics.fwt(rows, random_init),
            forgetting=metrics.forgetting(rows),
            timings=timings,
            config=self.config(),
        )

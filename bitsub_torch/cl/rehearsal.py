"""The class-incremental trainer of one-model methods (ER, DER++, EsaCL, prune-then-retrain).

One network, one head over every class of the scenario; the head *grows*: while task t trains,
and when the model is tested after task t, only the logits of the classes seen so far (tasks
0..t, global class ids in order) take part. After every task every task j is re-tested twice:

- class-IL: argmax over the classes seen so far, no task label (a task not seen yet scores 0);
- task-IL: argmax over task j's own classes (the task label masks the logits).

Both T x T accuracy matrices are kept, with ACC and BWT (`bitsub_torch.cl.metrics`).

Accounting (all in the results):

- ``train_flops``: 2 x the multiply-adds of training, counted as a sparse kernel would perform
  them (RigL-style), not as the dense torch ops that simulate the mask do: one example's forward
  costs the MACs of each shared layer times the density of its trained set (the mask while
  training on one, 1 when dense), plus the dense head; its backward twice that. SAM's ascent
  pass on the support examples, every replayed example, the dense gradient of EsaCL's regrowth
  and the retraining epochs are included; examples dropped by data selection cost nothing.
  ``train_flops_dense`` is the same run counted at density 1.
- ``examples_processed``: stream plus replayed examples of every training step (SAM's second
  look at an example is in the FLOPs, not here).
- ``memory``: peak resident memory of the process, and the bytes of the training state
  (weights, optimizer state, replay buffer).

BatchNorm (the reduced AlexNet of the image scenarios): once a task's training (and pruning,
retraining) is over, the running statistics are gathered again with dropout off
(`bitsub_torch.nn.norm_statistics`) over the replay buffer, a reservoir sample of every example
seen so far and so of every class the class-IL test asks about (with an empty buffer, over the
task's own training images, sampled as `bitsub_torch.cl.trainer.norm_sample` samples them).
Training's moving average is of the last task's batches, taken through dropout: on
``splitfmnist2d`` (EsaCL, seed 0, buffer 500) the final model's class-IL validation accuracy
read 52.55% with it and 77.40% with the buffer's statistics (README). Models without BatchNorm
skip it. The gather's forward passes are counted in ``train_flops``.

Reproducibility and resume as in `bitsub_torch.cl.trainer`: the data order, the buffer's draws
and torch's generator are re-seeded per (seed, task, phase, epoch), and a checkpoint after each
task (model, buffer, strategy, matrices, counters) lets a re-run continue to the same results.
"""

from __future__ import annotations

import math
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bitsub.atomic import atomic_path
from bitsub_torch.cl import metrics
from bitsub_torch.cl.esacl import SFW, ExampleStats, magnitude_mask, sam_radius, top_k_mask
from bitsub_torch.cl.replay import ReservoirBuffer
from bitsub_torch.cl.trainer import norm_sample
from bitsub_torch.nn import norm_statistics

__all__ = ["RehearsalTrainer", "class_ranges"]

_CKPT = re.compile(r"^task_(\d{3,})\.pt$")
_OPTIMIZERS = ("adam", "adamw", "sgd")


def class_ranges(scenario: Any) -> tuple[list[tuple[int, ...]], list[int]]:
    """Each task's global classes, and the number of classes seen after each task.

    Raises ValueError unless the tasks hold disjoint classes numbered 0, 1, ... in task order
    (the split scenarios' layout), which is what lets one head grow.
    """
    classes = [tuple(int(c) for c in t.classes) for t in scenario.tasks]
    seen, nxt = [], 0
    for t, cs in enumerate(classes):
        if list(cs) != list(range(nxt, nxt + len(cs))):
            raise ValueError(
                f"class-incremental learning needs split tasks with new classes in id order; "
                f"task {t} of {getattr(scenario, 'name', 'the scenario')} holds classes {cs}: "
                "use a split scenario (splitfmnist, splitmnist5k, scifar10, ...)"
            )
        nxt += len(cs)
        seen.append(nxt)
    return classes, seen


def _layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[dict[str, int], int]:
    """Multiply-adds per example of each shared task layer, and of the head.

    One example goes through in eval mode (every module's mode restored after): in train mode a
    BatchNorm refuses a batch of one and would fold the zeros into its running statistics.
    """
    macs: dict[str, int] = {}
    hooks = []
    for name, layer in model.masked_layers().items():
        def hook(mod, inp, out, name=name):
            per_out = mod.weight[0].numel()  # fan-in of one output unit
            macs[name] = int(out[0].numel()) * int(per_out)
        hooks.append(layer.register_forward_hook(hook))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)), 0)
    finally:
        for m, training in modes.items():
            m.training = training
        for h in hooks:
            h.remove()
    return macs, int(model.heads[0].weight.numel())


class RehearsalTrainer:
    """Train one network over a class-incremental stream with a `OneModelStrategy`.

    Length: the class-IL twin of `Trainer` (replay, SAM and data selection per step, class-IL and
    task-IL re-tests, FLOP and example accounting, checkpoints); one run's state in one object.

    Parameters
    ----------
    model : TaskNetwork
        A network with one head (``num_tasks`` 1) as wide as the scenario's classes.
    strategy : OneModelStrategy
        ER, DER++, EsaCL or prune-then-retrain.
    scenario : Scenario
        A split scenario.
    epochs, batch_size, lr, optimizer, momentum, seed, checkpoint_dir, progress, device
        As for `bitsub_torch.cl.trainer.Trainer`.

    Notes
    -----
    The class runs to about 360 lines: the training step (SAM ascent, replay loss, optimizer
    steps, data-selection records, buffer), the task phases (regrowth, pruning, retraining) and
    the resumable run all update the same counters, buffer and masks. The algorithms
    (`bitsub_torch.cl.esacl`), the losses (`bitsub_torch.cl.replay`) and the CLI driver
    (`bitsub_torch.cl.rehearsal_run`) live outside it.
    """

    def __init__(self, model: nn.Module, strategy: Any, scenario: Any, *, epochs: int = 1,
                 batch_size: int = 32, lr: float = 1e-3, optimizer: str = "adam",
                 momentum: float = 0.9, seed: int = 0,
                 checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
                 eval_batch_size: int = 1024, device: str = "cpu") -> None:
        if not getattr(strategy, "one_model", False):
            raise TypeError("strategy must be a one-model strategy (er, derpp, esacl, "
                            "prune-retrain)")
        self.classes, self.seen = class_ranges(scenario)
        if model.num_classes < self.seen[-1]:
            raise ValueError(f"the head has {model.num_classes} outputs, the scenario "
                             f"{self.seen[-1]} classes")
        for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 2),
                                 ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.model = model.to(device)
        self.strategy = strategy
        self.scenario = scenario
        self.epochs, self.batch_size, self.lr = epochs, batch_size, float(lr)
        self.optimizer, self.momentum, self.seed = optimizer, float(momentum), seed
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.progress = progress
        self.eval_batch_size = eval_batch_size
        self.device = torch.device(device)
        self.buffer = ReservoirBuffer(strategy.buffer, tuple(scenario.input_shape),
                                      model.num_classes)
        self.layer_macs, self.head_macs = _layer_macs(self.model, tuple(scenario.input_shape))
        self._has_norms = bool(norm_statistics.task_batchnorms(self.model, 0))
        if self._has_norms and 1 in (strategy.buffer, getattr(strategy, "replay_batch", None)):
            raise ValueError("a network with BatchNorm trains on batches of two or more: give "
                             "buffer 0 or >= 2 and replay_batch >= 2 (a batch of one has no "
                             "batch statistics)")
        self.counters = {"flops": 0.0, "flops_dense": 0.0, "examples": 0, "retrain_epochs": 0,
                         "dropped": []}
        self.opt_bytes = 0

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """The run's arguments (checked on resume)."""
        s = self.strategy
        return {"strategy": s.name, "scenario": getattr(self.scenario, "name", None),
                "tasks": len(self.scenario.tasks), "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "optimizer": self.optimizer,
                "seed": self.seed, "buffer": s.buffer, "sparsity": s.sparsity,
                **({"norm_statistics": {"over": "buffer", "dropout": False}}
                   if self._has_norms else {})}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        """All-class logits of the model for inputs ``x`` (float32 NumPy)."""
        self.model.eval()
        out = [np.zeros((0, self.model.num_classes), np.float32)]
        for i in range(0, len(x), self.eval_batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i: i + self.eval_batch_size],
                                                       dtype=np.float32)).to(self.device)
            out.append(self.model(xb, 0).cpu().numpy())
        return np.concatenate(out)

    def test_rows(self, after: int, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """Class-IL and task-IL accuracy of every task, after training task ``after``."""
        num = len(self.scenario.tasks)
        ci, ti = np.zeros(num), np.zeros(num)
        for j, data in enumerate(self.scenario.tasks):
            x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
            if len(y) == 0:
                ci[j] = ti[j] = np.nan
                continue
            z = self.logits(x)
            ci[j], ti[j] = accuracies(z, y, self.classes[j], self.seen[after])
        return ci, ti

    # ------------------------------------------------------------------ helpers
    def _shared(self) -> dict[str, nn.Module]:
        return self.model.masked_layers()

    def _density(self) -> dict[str, float]:
        out = {}
        for name, layer in self._shared().items():
            out[name] = float(layer.task_mask(0).float().mean())  # all True without a mask
        return out

    def _count(self, examples: int, passes: float = 3.0, dense: bool = False) -> None:
        # passes: 1 forward + 2 backward (input and weight gradients)
        d = self._density()
        sparse = sum(self.layer_macs[n] * (1.0 if dense else d[n]) for n in d) + self.head_macs
        full = sum(self.layer_macs.values()) + self.head_macs
        self.counters["flops"] += 2.0 * passes * examples * sparse
        self.counters["flops_dense"] += 2.0 * passes * examples * full

    def _set_mask(self, masks: dict[str, torch.Tensor] | None) -> None:
        with torch.no_grad():
            for name, layer in self._shared().items():
                if masks is None:
                    layer.clear_task_mask(0)
                else:
                    layer.set_task_mask(0, masks[name])
                    layer.weight.mul_(masks[name].to(layer.weight.dtype))

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr)

    def _optimizers(self, use_sfw: bool) -> list[torch.optim.Optimizer]:
        s, layers = self.strategy, self._shared()
        head = list(self.model.private_parameters(0))
        if not use_sfw:
            return [self._make_optimizer([*self.model.shared_parameters(), *head])]
        groups = []
        for name, layer in layers.items():
            active = layer.task_mask(0) if layer.has_task_mask(0) else None
            n_active = layer.weight.numel() if active is None else int(active.sum())
            # polytope centred at the weights the previous task left ("task"), or the origin
            anchor = (layer.weight.detach().clone()
                      if active is not None and s.sfw_anchor == "task" else None)
            k = max(1, int(round(s.k * n_active)))
            radius = s.radius[name] if anchor is None else sam_radius(anchor, k, s.tau_task)
            groups.append({"params": [layer.weight], "radius": radius, "k": k,
                           "active": None if active is None else active.to(layer.weight.dtype),
                           "anchor": anchor})
        return [SFW(groups, lr=s.sfw_lr, momentum=s.sfw_momentum), self._make_optimizer(head)]

    # ------------------------------------------------------------------ training
    def _step(self, task: int, xb, yb, idx, opts, stats, rng) -> float:
        s, model = self.strategy, self.model
        seen = self.seen[task]
        params = [p for o in opts for g in o.param_groups for p in g["params"]]

        def forward(x):
            return model(x, 0)

        perturb = None
        if getattr(s, "sam", False):
            # BatchNorm needs two examples a batch; a network without keeps the paper's count
            sel = (stats.support(idx, s.support_fraction, minimum=2 if self._has_norms else 1)
                   if stats is not None and s.sse else np.arange(len(idx)))
            sel_t = torch.from_numpy(sel)
            for o in opts:
                o.zero_grad(set_to_none=True)
            F.cross_entropy(forward(xb[sel_t])[:, :seen], yb[sel_t]).backward()
            self._count(len(sel))
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
            if float(norm) > 0:
                perturb = [s.rho * g / norm for g in grads]
                with torch.no_grad():
                    for p, e in zip(params, perturb):
                        p.add_(e)
        for o in opts:
            o.zero_grad(set_to_none=True)
        rb = s.replay_batch or self.batch_size
        loss, logits, replayed, per = s.replay_loss(forward, xb, yb, self.buffer, seen, rb, rng)
        loss.backward()
        if perturb is not None:
            with torch.no_grad():
                for p, e in zip(params, perturb):
                    p.sub_(e)
        for o in opts:
            o.step()
        self._count(len(idx) + replayed)
        self.counters["examples"] += len(idx) + replayed
        if stats is not None:
            correct = (logits.detach()[:, :seen].argmax(1) == yb).cpu().numpy()
            stats.update(idx, correct, per.cpu().numpy())
        self.buffer.add(xb, yb, logits.detach(), rng)
        return float(loss.detach())

    def _epochs(self, task: int, epochs: int, phase: int, opts, bar, ids: bool) -> None:
        data = self.scenario.tasks[task]
        x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
        offset = self.classes[task][0]
        y = torch.from_numpy(np.ascontiguousarray(data.y_train, dtype=np.int64) + offset)
        n = len(y)
        s = self.strategy
        stats = ExampleStats(n) if ids else None
        for epoch in range(epochs):
            self.model.train()
            order = np.random.default_rng((self.seed, task, phase, epoch)).permutation(n)
            rng = np.random.default_rng((self.seed, task, phase, epoch, 1))
            if stats is not None and s.ere and epoch >= s.ere_start:
                stats.drop(s.drop_fraction)
                order = stats.kept(order)
            starts = list(range(0, len(order), self.batch_size))
            if len(order) > 1 and len(order) - starts[-1] == 1:
                starts.pop()  # a batch of one breaks BatchNorm's batch statistics
            for start in starts:
                idx = order[start: start + self.batch_size]
                it = torch.from_numpy(idx)
                loss = self._step(task, x[it].to(self.device), y[it].to(self.device), idx, opts,
                                  stats, rng)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if stats is not None:
            self.counters["dropped"].append(int(stats.dropped.sum()))

    def _regrow(self, task: int) -> None:
        # Dense gradient of the task's first batch at the pruned positions (RigL-style growth),
        # taken in eval mode (dropout off, the BatchNorm statistics gathered after the previous
        # task), whether or not the run was resumed before this task.
        s, data = self.strategy, self.scenario.tasks[task]
        self.model.eval()
        masks = {n: layer.task_mask(0) for n, layer in self._shared().items()}
        self._set_mask(None)
        order = np.random.default_rng((self.seed, task, 9)).permutation(len(data.y_train))
        it = torch.from_numpy(order[: self.batch_size])
        xb = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))[it]
        yb = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))[it] + self.classes[task][0]
        self.model.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(xb.to(self.device), 0)[:, : self.seen[task]],
                        yb.to(self.device)).backward()
        self._count(len(it), dense=True)
        active = {}
        for name, layer in self._shared().items():
            grow = int(round(s.regrow * layer.weight.numel()))
            free = ~masks[name]
            score = torch.where(free, layer.weight.grad.abs(),
                                torch.full_like(layer.weight, -math.inf))
            grow = min(grow, int(free.sum()))
            active[name] = masks[name] | top_k_mask(score, grow)
        self.model.zero_grad(set_to_none=True)
        self._set_mask(active)

    def _prune(self) -> None:
        s, masks = self.strategy, {}
        for name, layer in self._shared().items():
            allowed = layer.task_mask(0) if layer.has_task_mask(0) else None
            masks[name] = magnitude_mask(layer.weight, s.sparsity, allowed)
        self._set_mask(masks)

    def _train_task(self, task: int) -> None:
        s = self.strategy
        torch.manual_seed(self.seed * 1_000_003 + task)
        n = len(self.scenario.tasks[task].y_train)
        steps = max(1, math.ceil(n / self.batch_size))
        retrain = s.retrain_epochs(task) if s.sparse else 0
        esacl = s.name == "esacl"
        with tqdm(total=steps * (self.epochs + retrain), desc=f"task {task}", leave=False,
                  disable=not self.progress) as bar:
            if esacl and task > 0 and s.sparsity > 0:
                self._regrow(task)
            elif s.sparse and not esacl:
                self._set_mask(None)  # prune-then-retrain trains dense, pruned weights at 0
            opts = self._optimizers(esacl and s.uses_sfw(task))
            self._epochs(task, self.epochs, 0, opts, bar, esacl and (s.sse or s.ere))
            self.opt_bytes = max(self.opt_bytes, _state_bytes(opts))
            if s.sparse and s.sparsity > 0:
                self._prune()
                if retrain:
                    opts = self._optimizers(False)
                    self._epochs(task, retrain, 1, opts, bar, False)
                    self.counters["retrain_epochs"] += retrain
                    self._set_mask({n: la.task_mask(0) for n, la in self._shared().items()})
        self.gather_norms(task)

    def gather_norms(self, task: int) -> None:
        """Gather the BatchNorm statistics again for the network as it is after task ``task``.

        Over the replay buffer (every class seen so far), dropout off; with an empty buffer
        (``buffer`` 0), over the task's training images of `bitsub_torch.cl.trainer.norm_sample`.
        Nothing happens for a model without BatchNorm.
        """
        if not self._has_norms:
            return
        # a buffer of 1 is refused on these networks, and each step adds a batch of >= 2
        if len(self.buffer):
            x, rows = self.buffer.x[: len(self.buffer)].numpy(), None
        else:
            x = self.scenario.tasks[task].x_train
            rows = norm_sample(len(x), self.seed, task)
        norm_statistics.gather(self.model, x, 0, batch_size=self.batch_size, rows=rows)
        self._count(len(x) if rows is None else len(rows), passes=1.0)

    def sparsity(self) -> float:
        """Fraction of the shared weights outside the model's mask (0 for a dense model)."""
        total = kept = 0
        for layer in self._shared().values():
            total += layer.weight.numel()
            kept += int(layer.task_mask(0).sum())  # all True without a mask
        return 1.0 - kept / total

    def zero_fraction(self) -> float:
        """Fraction of the shared weights the model reads as exactly zero."""
        total = zeros = 0
        for layer in self._shared().values():
            w = layer.effective_weight(0).detach()
            total += w.numel()
            zeros += int((w == 0).sum())
        return zeros / total

    # ------------------------------------------------------------------ checkpoints
    def _latest(self) -> Path | None:
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return None
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir()
                 if (m := _CKPT.match(p.name))]
        return max(found)[1] if found else None

    def _save(self, task: int, state: dict) -> None:
        if self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"task_{task:03d}.pt"
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        for t in range(task):
            old = self.checkpoint_dir / f"task_{t:03d}.pt"
            if old.exists():
                old.unlink()

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        """Train every task (resuming from a checkpoint); return the measured results."""
        t_start = time.perf_counter()
        s, num = self.strategy, len(self.scenario.tasks)
        ci = np.full((num, num), np.nan)
        ti = np.full((num, num), np.nan)
        sparsity: list[float] = []
        zeros: list[float] = []
        timings: dict = {"train": [], "eval": []}
        if getattr(s, "sfw", False) is not False and not s.radius:
            for name, layer in self._shared().items():
                s.radius[name] = sam_radius(layer.weight, max(1, round(s.k * layer.weight.numel())),
                                            s.tau)
        first = 0
        latest = self._latest()
        if latest is not None:
            st = torch.load(latest, map_location=self.device, weights_only=True)
            if st["config"] != self.config():
                raise ValueError(f"checkpoint {latest} was made with {st['config']}, this run is "
                                 f"{self.config()}: use the same arguments or another --out")
            self.model.load_state_dict(st["model"])
            self.buffer.load_state_dict(st["buffer"])
            s.load_state_dict(st["strategy"])
            first = int(st["task"]) + 1
            ci, ti = st["class_il"].numpy().copy(), st["task_il"].numpy().copy()
            sparsity, zeros = list(st["sparsity"]), list(st["zeros"])
            self.counters, timings = dict(st["counters"]), dict(st["timings"])
            self.opt_bytes = int(st["opt_bytes"])
        for task in tqdm(range(first, num), desc="tasks", disable=not self.progress):
            t0 = time.perf_counter()
            self._train_task(task)
            t1 = time.perf_counter()
            ci[task], ti[task] = self.test_rows(task)
            sparsity.append(self.sparsity())
            zeros.append(self.zero_fraction())
            timings["train"].append(t1 - t0)
            timings["eval"].append(time.perf_counter() - t1)
            if task not in s.finished:
                s.finished.append(task)
            self._save(task, {
                "task": task, "config": self.config(), "model": self.model.state_dict(),
                "buffer": self.buffer.state_dict(), "strategy": s.state_dict(),
                "class_il": torch.from_numpy(ci.copy()), "task_il": torch.from_numpy(ti.copy()),
                "sparsity": sparsity, "zeros": zeros, "counters": self.counters,
                "timings": timings, "opt_bytes": self.opt_bytes,
            })
        timings["total"] = time.perf_counter() - t_start
        used = [*self.model.shared_parameters(), *self.model.private_parameters(0)]
        weights = sum(p.numel() * p.element_size() for p in used)
        # a sparse store: each kept shared weight as a float32 value and an int32 index
        sparse = weights - sum(
            (layer.weight.numel() - int(layer.task_mask(0).sum())) * 4
            for layer in self._shared().values()
        ) + sum(4 * int(layer.task_mask(0).sum()) for layer in self._shared().values())
        return {
            "class_il": _summary(ci), "task_il": _summary(ti),
            "sparsity": sparsity, "zero_fraction": zeros,
            "retrain_epochs": int(self.counters["retrain_epochs"]),
            "train_flops": float(self.counters["flops"]),
            "train_flops_dense": float(self.counters["flops_dense"]),
            "examples_processed": int(self.counters["examples"]),
            "examples_dropped": list(self.counters["dropped"]),
            "memory": {"peak_rss_bytes": _peak_rss(), "weights_bytes": int(weights),
                       "sparse_weights_bytes": int(sparse),
                       "optimizer_state_bytes": int(self.opt_bytes),
                       "buffer_bytes": int(self.buffer.nbytes)},
            "timings": timings, "trainer": self.config(),
        }


def accuracies(logits: np.ndarray, y: np.ndarray, classes: tuple[int, ...], seen: int
               ) -> tuple[float, float]:
    """Class-IL and task-IL accuracy of all-class ``logits`` on task-local labels ``y``.

    Class-IL: argmax over the first ``seen`` classes against the global label; task-IL: argmax
    over the task's ``classes`` against the local label.
    """
    glob = np.asarray(y) + classes[0]
    ci = float(np.mean(np.argmax(logits[:, :seen], axis=1) == glob))
    ti = float(np.mean(np.argmax(logits[:, list(classes)], axis=1) == np.asarray(y)))
    return ci, ti


def _summary(r: np.ndarray) -> dict:
    return {"accuracy_matrix": r.tolist(), "acc": metrics.acc(r), "bwt": metrics.bwt(r)}


def _state_bytes(opts: list[torch.optim.Optimizer]) -> int:
    return sum(v.numel() * v.element_size() for o in opts for st in o.state.values()
               for v in st.values() if isinstance(v, torch.Tensor))


def _peak_rss() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)

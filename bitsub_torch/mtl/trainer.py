"""The multi-task trainer: joint batches, the pruning strategies, checkpoints, results.

Strategies (``STRATEGIES``), all at the same target overall sparsity and, except ``dense``, the
same total number of training iterations, ``iterations + finetune``:

- ``dense``: ``iterations`` without pruning; the reference of Delta_T.
- ``adapmtl``: the dense model of the same seed is the warm-up; then one phase of ``finetune``
  iterations with a threshold ``sigmoid(theta)`` per component (backbone, each head) and adaptive
  loss weighting. After every step a common shift of all the thetas (the smallest, found by
  bisection) puts the overall sparsity on the cubic ramp ``s_t = s (1 - (1 - t / R)^3)``,
  ``R = ramp x finetune``: the schedule sets how much is pruned when, the learned thetas where.
  The thetas learn by Adam from the task losses, each divided by the dense model's loss on the
  same 256 training examples (relative losses, as Delta_T is relative), without the adaptive
  weights (``weighted_thetas=False``: the weights balance the training of the weights, while
  Delta_T weighs every task alike). With ``theta_gradient="fisher"`` each theta's
  gradient is the cost of the next weights its rise would prune, the Fisher saliency ``w^2
  E[g^2] / 2`` (Optimal Brain Damage with a running mean of the squared gradients of the
  relative losses) of its component's weights just above the threshold, centred over the
  components (:func:`fisher_gradient`): the thresholds move until pruning one more weight
  costs the same in every component (a backbone weight's gradient sums every task's).
  ``"pruned-loss"`` (the scenes default, ``DEFAULT_THETA_GRADIENT``) measures that cost: the
  batch loss change when one theta is raised, per weight the rise zeroes
  (:func:`pruned_loss_gradient`). ``"per-weight"`` (the default of the other scenarios) infers it
  from the theta's own loss gradient per weight in a band around the threshold
  (:func:`per_weight_gradient`), a shrinkage of every kept weight rather than a pruning of the
  next ones; ``"per-task"`` is the same with the sum over tasks of the positive parts of each
  task's gradient (:func:`positive_task_sum`). ``"loss"`` is STR's rule, the loss gradient
  against an L2 decay ``theta_decay``; its updates are almost the same for every theta (Adam
  normalises each scalar theta's step, and the decay term dominates), so the shift erases them.
  At the end of the ramp the overall sparsity is the target; the thresholds are folded into
  the weights, the mask fixed and the thetas frozen, and the rest of the phase fine-tunes the
  weights.
  ``threshold="hard"`` (default) keeps the weights above a threshold unchanged in the forward
  pass and gives the soft threshold's gradients (straight-through); ``"soft"`` is STR's
  ``S(W, theta)``, whose shrinkage of every kept weight the short CPU budget cannot train
  away.
- ``adapmtl-uniform``: the same with one theta for every layer (no adaptive thresholds).
- ``adapmtl-noweighting``: the same without adaptive loss weighting.
- ``magnitude``: the dense model of the same seed, one-shot global magnitude pruning, then
  ``finetune`` iterations with the mask fixed.
- ``imp``: the dense model, ``rounds`` rounds of global magnitude pruning to
  ``1 - (1 - s)^(r / rounds)``, each followed by ``finetune // rounds`` iterations.
- ``snip``: SNIP's connection sensitivity on one batch at initialisation, then
  ``iterations + finetune`` iterations with the mask fixed.

Every iteration draws one batch of training examples and sums the per-task losses on it (times
the adaptive weights when they are on). The optimiser is Adam with betas (0.5, 0.999) and L2
weight decay on the weights, AdapMTL's settings; the learning rate drops tenfold for the last
quarter of each training phase. Training is split into named phases (``train``, ``prune``,
``finetune1`` ...); a checkpoint is written every ``CHECKPOINT_EVERY`` iterations and at the end
of each phase, and a run restarted with the same configuration resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bitsub.atomic import atomic_path
from bitsub_torch.mtl.model import MTLNet, build_model
from bitsub_torch.mtl.objectives import (
    LOWER_IS_BETTER,
    AdaptiveWeights,
    delta_t,
    predict,
    task_loss,
    task_metrics,
)
from bitsub_torch.mtl.pruning import magnitude_prune, snip_prune
from bitsub_torch.mtl.thetas import (
    THETA_GRADIENTS,
    fisher_gradient,
    per_weight_gradient,
    positive_task_sum,
    pruned_loss_gradient,
)

__all__ = ["DEFAULT_ITERATIONS", "DEFAULT_THETA_GRADIENT", "STRATEGIES", "THRESHOLDS",
           "MTLConfig", "evaluate", "train_mtl"]

STRATEGIES = ("adapmtl", "dense", "magnitude", "imp", "snip", "adapmtl-uniform",
              "adapmtl-noweighting")
#: AdapMTL's forward pass: the weights above the threshold kept ("hard", straight-through
#: gradients of the soft threshold) or shrunk by it ("soft", STR's S(W, theta)).
THRESHOLDS = ("hard", "soft")
#: Decay of the running mean of the squared weight gradients ("fisher").
FISHER_BETA = 0.98
#: A checkpoint is written every this many iterations of a phase (and at its end).
CHECKPOINT_EVERY = 200
#: The budget is a property of the scenario: the dense model's training iterations (batch 16),
#: about three passes or more over its training split, so that the dense reference is trained to
#: near convergence: scenes 600 (4.8 passes over 2,000 scenes), multimnist and multifashion 1,800
#: (2.9 passes over 10,000 pairs). Every other count follows from it (:meth:`MTLConfig.resolved`):
#: the pruning phase / fine-tuning a half, the total of every pruning method 1.5 times, the ramp
#: ``ramp`` of the pruning phase, the adaptive weighting's window a tenth.
DEFAULT_ITERATIONS = {"scenes": 600, "multimnist": 1800, "multifashion": 1800}
#: The thetas' rule of each scenario, chosen on its validation seeds (0, 1 and 4): scenes the
#: measured loss per pruned weight, the others the loss gradient per weight (not searched there
#: since the budgets changed).
DEFAULT_THETA_GRADIENT = {"scenes": "pruned-loss", "multimnist": "per-weight",
                          "multifashion": "per-weight"}


@dataclass
class MTLConfig:
    """Everything that defines a run (hashed for the dense cache and checked on resume).

    Iteration counts left as None are scaled to ``iterations``, itself the scenario's budget
    (``DEFAULT_ITERATIONS``) when None: ``finetune`` (the pruning phase of AdapMTL, the
    fine-tuning of magnitude / imp) a half, ``warmup`` (start of adaptive weighting) the end of
    the dense warm-up (``iterations``), ``window`` a tenth. ``ramp`` is
    the fraction of AdapMTL's pruning phase by which the sparsity schedule reaches the target;
    ``theta_decay`` is the L2 decay on the thetas, ``threshold`` one of ``THRESHOLDS``.
    """

    strategy: str = "adapmtl"
    scenario: str = "scenes"
    sparsity: float = 0.9
    seed: int = 0
    iterations: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    theta_init: float = -8.0
    theta_lr: float = 0.01
    theta_decay: float = 1.0
    threshold: str = "hard"
    weighted_thetas: bool = False
    theta_gradient: str | None = None
    ramp: float = 0.5
    granularity: str = "component"
    warmup: int | None = None
    window: int | None = None
    finetune: int | None = None
    rounds: int = 3
    width: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> MTLConfig:
        """A copy with every None filled in and the arguments checked."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        it = self.iterations
        if it is None:
            it = DEFAULT_ITERATIONS.get(self.scenario, 600)
        for name, v in (("iterations", it), ("batch-size", self.batch_size),
                        ("rounds", self.rounds), ("width", self.width)):
            if v < 1:
                raise ValueError(f"--{name} must be >= 1, got {v}")
        if self.lr <= 0 or self.theta_lr <= 0 or self.theta_decay <= 0:
            raise ValueError("--lr, --theta-lr and --theta-decay must be > 0")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        rule = self.theta_gradient
        if rule is None:
            rule = DEFAULT_THETA_GRADIENT.get(self.scenario, "per-weight")
        if rule not in THETA_GRADIENTS:
            raise ValueError(f"theta gradient must be one of {THETA_GRADIENTS}, got {rule!r}")
        if not 0.0 < self.ramp <= 1.0:
            raise ValueError(f"--ramp must be in (0, 1], got {self.ramp}")
        c = MTLConfig(**asdict(self))
        c.iterations = it
        c.theta_gradient = rule
        c.warmup = it if self.warmup is None else self.warmup
        c.window = max(1, it // 10) if self.window is None else self.window
        c.finetune = it // 2 if self.finetune is None else self.finetune
        if c.warmup < 0 or c.window < 1 or c.finetune < 0:
            raise ValueError("--warmup and --finetune must be >= 0 and --window >= 1")
        return c


def evaluate(model: MTLNet, scenario, split: str = "test") -> dict[str, dict[str, float]]:
    """Every task metric of ``model`` on a split of ``scenario``."""
    x, ys = scenario.split(split)
    preds = predict(model, x, scenario.tasks)
    return {t.name: task_metrics(t.kind, preds[t.name], ys[t.name], t.outputs)
            for t in scenario.tasks}


def _dense_key(c: MTLConfig) -> str:
    fields = (c.scenario, c.seed, c.iterations, c.batch_size, c.lr, c.weight_decay, c.width, 3)
    return hashlib.sha256(repr(fields).encode()).hexdigest()[:12]


class _Run:
    """One strategy on one scenario: phases, checkpoints, history."""

    def __init__(self, config: MTLConfig, scenario, out: Path | None, cache: Path | None,
                 progress: bool) -> None:
        self.c, self.sc, self.out, self.progress = config, scenario, out, progress
        torch.manual_seed(config.seed)
        self.model = build_model(scenario, width=config.width)
        if config.strategy.startswith("adapmtl"):
            gran = "uniform" if config.strategy == "adapmtl-uniform" else config.granularity
            self.model.attach_thresholds(gran, config.theta_init,
                                         hard=config.threshold == "hard")
        self.weighting = AdaptiveWeights(
            self.model.task_names, config.warmup, config.window,
            enabled=config.strategy in ("adapmtl", "adapmtl-uniform"))
        self.done: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.frozen_at: int | None = None
        # AdapMTL's task losses are divided by the dense model's (relative losses)
        self.scale = dict.fromkeys(self.model.task_names, 1.0)
        self.resume: dict[str, Any] | None = None
        self.clock = 0  # iterations over all phases, for the history
        # running mean of the squared weight gradients (theta_gradient "fisher"), and its count
        self.fisher: dict[str, torch.Tensor] = {}
        self.fisher_n = 0
        self.x, self.ys = scenario.split("train")

    # ----------------------------------------------------------------------- checkpoints
    def _ckpt_path(self) -> Path | None:
        return None if self.out is None else self.out / "checkpoint.pt"

    def _save(self, phase: str, iteration: int, opt: torch.optim.Optimizer | None) -> None:
        path = self._ckpt_path()
        if path is None:
            return
        state = {"config": json.dumps(asdict(self.c), sort_keys=True), "done": list(self.done),
                 "phase": phase, "iteration": iteration, "model": self.model.state_dict(),
                 "opt": None if opt is None else opt.state_dict(),
                 "weighting": self.weighting.state_dict(), "history": self.history,
                 "frozen_at": self.frozen_at, "clock": self.clock, "scale": self.scale,
                 "fisher": self.fisher, "fisher_n": self.fisher_n}
        with atomic_path(path) as f:
            torch.save(state, f)

    def load_checkpoint(self) -> bool:
        """Resume from ``out/checkpoint.pt`` when it exists; False when there is none."""
        path = self._ckpt_path()
        if path is None or not path.is_file():
            return False
        state = torch.load(path, weights_only=True)
        if state["config"] != json.dumps(asdict(self.c), sort_keys=True):
            raise ValueError(f"{path} belongs to a run with another configuration; give another "
                             "--out or delete the checkpoint")
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        self.done, self.history = list(state["done"]), list(state["history"])
        self.frozen_at, self.clock = state["frozen_at"], state["clock"]
        self.scale = dict(state["scale"])
        self.fisher, self.fisher_n = dict(state.get("fisher", {})), int(state.get("fisher_n", 0))
        if self.frozen_at is not None:
            self.model.detach_thresholds()  # the saved weights are folded already
        self.resume = {"phase": state["phase"], "iteration": state["iteration"],
                       "opt": state["opt"]}
        return True

    # --------------------------------------------------------------------------- training
    def _optimizer(self) -> torch.optim.Optimizer:
        thetas = [] if self.model.thresholds is None else list(self.model.thresholds.parameters())
        ids = {id(p) for p in thetas}
        weights = [p for p in self.model.parameters() if id(p) not in ids]
        groups = [{"params": weights, "lr": self.c.lr, "weight_decay": self.c.weight_decay}]
        if thetas:
            decay = self.c.theta_decay if self.c.theta_gradient == "loss" else 0.0
            groups.append({"params": thetas, "lr": self.c.theta_lr, "weight_decay": decay})
        return torch.optim.Adam(groups, betas=(0.5, 0.999))

    def _joint_loss(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        outs = self.model(torch.from_numpy(self.x[idx]))
        return {t.name: task_loss(t.kind, outs[t.name], torch.from_numpy(self.ys[t.name][idx]))
                for t in self.sc.tasks}

    def _theta_loss(self, idx: np.ndarray, weights: dict[str, float]) -> float:
        """The loss the thetas learn from on batch ``idx``: weighted relative task losses."""
        return sum(float(v) * weights[t] / self.scale[t]
                   for t, v in self._joint_loss(idx).items())

    def _batch(self, phase: str, i: int) -> np.ndarray:
        # One generator per (seed, phase, iteration): a resumed run draws the same batches.
        key = int(hashlib.sha256(phase.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([self.c.seed, key, i])
        return rng.integers(0, len(self.x), self.c.batch_size)

    def _thetas(self) -> dict[str, float]:
        if self.model.thresholds is None:
            return {}
        return {k: float(p.detach()) for k, p in self.model.thresholds.theta.items()}

    def _record(self) -> None:
        sp = self.model.sparsity()
        self.history.append({"iteration": self.clock, "overall": sp["overall"],
                             **sp["components"], "weights": self.weighting.weights(),
                             "thetas": self._thetas()})

    def _schedule(self, i: int, ramp: int) -> None:
        """AdapMTL's pruning schedule after iteration ``i`` of a ramp of ``ramp`` iterations.

        A common shift of every theta puts the overall sparsity on the cubic ramp; at its end
        the thresholds are folded.
        """
        goal = self.c.sparsity * (1.0 - (1.0 - min(1.0, (i + 1) / ramp)) ** 3)
        self._shift_to(goal)
        if i + 1 >= ramp:
            self._freeze()

    def _shift_to(self, goal: float) -> None:
        """Shift every theta by the same amount (bisection) so the sparsity just reaches goal."""
        thetas = list(self.model.thresholds.parameters())
        base = [p.detach().clone() for p in thetas]

        def reach(delta: float) -> bool:
            with torch.no_grad():
                for p, b in zip(thetas, base):
                    p.copy_(b + delta)
            return self.model.sparsity()["overall"] >= goal

        lo, hi = -1.0, 1.0
        while reach(lo) and lo > -64:
            lo *= 2
        while not reach(hi) and hi < 64:  # sigmoid(theta) < 1: |w| >= 1 is never pruned
            hi *= 2
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if reach(mid) else (mid, hi)
        reach(hi)

    def _freeze(self) -> None:
        self.frozen_at = self.clock
        self.model.fold_thresholds()

    def phase(self, name: str, iters: int, ramp: int | None = None) -> None:
        """Train for ``iters`` iterations as phase ``name`` (skipped when already done).

        With ``ramp``, AdapMTL's thetas are trained and pruned by :meth:`_schedule`.
        """
        if name in self.done:
            return
        opt = self._optimizer()
        start = 0
        if self.resume is not None and self.resume["phase"] == name:
            if self.resume["opt"] is not None:
                opt.load_state_dict(self.resume["opt"])
            start = self.resume["iteration"]
        self.resume = None
        thetas = [] if self.model.thresholds is None else list(self.model.thresholds.parameters())
        record_every = max(1, iters // 30)
        self.model.train()
        bar = tqdm(range(start, iters), desc=f"{self.c.strategy} {name}", leave=False,
                   disable=not self.progress)
        for i in bar:
            lr = self.c.lr * (0.1 if i >= 0.75 * iters else 1.0)
            opt.param_groups[0]["lr"] = lr
            losses = self._joint_loss(self._batch(name, i))
            w = self.weighting.update(self.clock, {t: v.item() for t, v in losses.items()})
            loss = sum(w[t] * v / self.scale[t] for t, v in losses.items())
            opt.zero_grad(set_to_none=True)
            live = thetas and self.frozen_at is None
            fisher = live and self.c.theta_gradient == "fisher"
            layers = [(n, m.weight) for n, m in self.model.prunable()] if fisher else []
            per_task = live and self.c.theta_gradient == "per-task"
            if per_task:
                grads = positive_task_sum([
                    torch.autograd.grad(v * (w[t] if self.c.weighted_thetas else 1.0)
                                        / self.scale[t], thetas, retain_graph=True,
                                        allow_unused=True) for t, v in losses.items()])
            elif live and not self.c.weighted_thetas:
                plain = sum(v / self.scale[t] for t, v in losses.items())
                grads = torch.autograd.grad(plain, thetas + [w for _, w in layers],
                                            retain_graph=True, allow_unused=True)
            loss.backward()
            if per_task or (live and not self.c.weighted_thetas):
                for p, g in zip(thetas, grads):
                    p.grad = g
                wgrads = grads[len(thetas):]
            else:
                wgrads = [w.grad for _, w in layers]
            if fisher:
                self._update_fisher([n for n, _ in layers], wgrads)
                fisher_gradient(self.model, self._fisher_mean())
            if live and self.c.theta_gradient in ("per-weight", "per-task"):
                per_weight_gradient(self.model)
            if live and self.c.theta_gradient == "pruned-loss":
                ws = w if self.c.weighted_thetas else dict.fromkeys(w, 1.0)
                pruned_loss_gradient(self.model, partial(self._theta_loss, self._batch(name, i),
                                                         ws))
            if not live:
                for p in thetas:
                    p.grad = None  # frozen: Adam skips a parameter without gradient
            opt.step()
            self.clock += 1
            if ramp is not None and self.frozen_at is None:
                self._schedule(i, ramp)
            if i % record_every == 0:
                self._record()
                bar.set_postfix(loss=f"{loss.item():.3f}",
                                sparsity=f"{self.history[-1]['overall']:.3f}")
            if (i + 1) % CHECKPOINT_EVERY == 0 and i + 1 < iters:
                self._save(name, i + 1, opt)
        self._record()
        self.done.append(name)
        self._save(name, iters, None)

    def _update_fisher(self, names: list[str], grads) -> None:
        """Fold this iteration's squared weight gradients into the running mean."""
        b = FISHER_BETA
        with torch.no_grad():
            for n, g in zip(names, grads):
                if g is None:
                    continue
                prev = self.fisher.get(n)
                sq = g.detach() ** 2
                self.fisher[n] = (1 - b) * sq if prev is None else b * prev + (1 - b) * sq
        self.fisher_n += 1

    def _fisher_mean(self) -> dict[str, torch.Tensor]:
        """The bias-corrected running means (as Adam corrects its second moment)."""
        corr = 1.0 - FISHER_BETA ** max(1, self.fisher_n)
        return {n: f / corr for n, f in self.fisher.items()}

    def warm_start(self, state: dict[str, torch.Tensor]) -> None:
        """Start from the dense model's weights (the thetas keep their initial value)."""
        self.model.load_state_dict({**self.model.state_dict(), **state})
        self.clock = self.c.iterations
        if self.model.thresholds is not None:
            idx = np.random.default_rng([self.c.seed, 7]).integers(0, len(self.x), 256)
            with torch.no_grad():
                self.scale = {t: max(float(v), 1e-12) for t, v in self._joint_loss(idx).items()}

    def step(self, name: str, action) -> None:
        """A one-off step (a pruning) as phase ``name``."""
        if name in self.done:
            return
        action()
        self._record()
        self.done.append(name)
        self._save(name, 0, None)


def _dense_reference(c: MTLConfig, scenario, cache: Path | None, progress: bool
                     ) -> tuple[dict, dict, str]:
    """The dense model of this seed: (state_dict, test metrics, where it came from)."""
    dc = MTLConfig(**{**asdict(c), "strategy": "dense"}).resolved()
    path = None if cache is None else (
        cache / f"mtl-dense-{c.scenario}-s{c.seed}-{_dense_key(dc)}.pt")
    if path is not None and path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            return blob["model"], json.loads(blob["metrics"]), f"reused from cache {path}"
        except (OSError, RuntimeError, KeyError, ValueError):
            pass  # a damaged cache entry is retrained
    run = _Run(dc, scenario, None, cache, progress)
    run.phase("train", dc.iterations)
    metrics = evaluate(run.model, scenario)
    _store_dense(path, run.model, metrics)
    return run.model.state_dict(), metrics, "trained by this command"


def _store_dense(path: Path | None, model: MTLNet, metrics: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as f:
        torch.save({"model": model.state_dict(), "metrics": json.dumps(metrics)}, f)


def train_mtl(config: MTLConfig, scenario, out: str | Path | None = None,
              cache: str | Path | None = None, progress: bool = True
              ) -> tuple[MTLNet, dict[str, Any]]:
    """Train one strategy; return the model and the results (see :mod:`bitsub_torch.mtl.cli`).

    Parameters
    ----------
    config : MTLConfig
        The run.
    scenario : MTLScenario
        Its data.
    out : path, optional
        Where ``checkpoint.pt`` goes (resumed from when present); None: no checkpoints.
    cache : path, optional
        Where the dense model of each seed is kept for Delta_T and the magnitude baselines.
    progress : bool
        tqdm bars.
    """
    c = config.resolved()
    out = None if out is None else Path(out)
    cache = None if cache is None else Path(cache)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = _Run(c, scenario, out, cache, progress)
    resumed = run.load_checkpoint()
    reference = "this model"
    dense_metrics = None
    if c.strategy == "dense":
        run.phase("train", c.iterations)
    elif c.strategy != "snip":
        state, dense_metrics, reference = _dense_reference(c, scenario, cache, progress)
        run.step("dense", lambda: run.warm_start(state))
        if c.strategy == "magnitude":
            run.step("prune", lambda: magnitude_prune(run.model, c.sparsity))
            run.phase("finetune", c.finetune)
        for r in range(1, c.rounds + 1 if c.strategy == "imp" else 0):
            target = 1.0 - (1.0 - c.sparsity) ** (r / c.rounds)
            run.step(f"prune{r}", lambda t=target: magnitude_prune(run.model, t))
            run.phase(f"finetune{r}", max(1, c.finetune // c.rounds))
    else:
        def snip() -> None:
            idx = np.random.default_rng([c.seed, 99]).integers(0, len(run.x), 4 * c.batch_size)
            snip_prune(run.model, lambda: sum(run._joint_loss(idx).values()), c.sparsity)
        run.step("snip", snip)
        run.phase("train", c.iterations + c.finetune)
    if c.strategy.startswith("adapmtl"):
        run.phase("prune", c.finetune, ramp=max(1, round(c.ramp * c.finetune)))
    train_s = time.perf_counter() - t0
    metrics = evaluate(run.model, scenario)
    if c.strategy == "dense":
        dense_metrics = metrics
        if cache is not None:
            dc = MTLConfig(**{**asdict(c), "strategy": "dense"}).resolved()
            _store_dense(cache / f"mtl-dense-{c.scenario}-s{c.seed}-{_dense_key(dc)}.pt",
                         run.model, metrics)
    elif dense_metrics is None:
        _, dense_metrics, reference = _dense_reference(c, scenario, cache, progress)
    dt, dt_tasks = delta_t(metrics, dense_metrics)
    names = {m for ms in metrics.values() for m in ms}
    results = {
        "config": asdict(c), "scenario": c.scenario, "strategy": c.strategy, "seed": c.seed,
        "metrics": metrics, "dense_metrics": dense_metrics,
        "lower_is_better": {m: LOWER_IS_BETTER[m] for m in sorted(names)},
        "delta_t": dt, "delta_t_tasks": dt_tasks, "delta_t_reference": reference,
        "sparsity": run.model.sparsity(), "target_sparsity": c.sparsity,
        "thresholds_frozen_at": run.frozen_at, "loss_weights": run.weighting.weights(),
        "val_metrics": evaluate(run.model, scenario, "val"), "history": run.history,
        "resumed": resumed, "train_seconds": train_s,
    }
    return run.model, results

"""The multi-task trainer: joint batches, the pruning strategies, checkpoints, results.

Strategies (``STRATEGIES``), all at the same target overall sparsity:

- ``dense``: no pruning; the reference of Delta_T.
- ``adapmtl``: a soft threshold per component (backbone, each head), adaptive loss weighting
  after ``warmup`` iterations, thetas frozen once the overall sparsity reaches the target
  (weights go on training). At that point the threshold is folded into the weights
  (``W <- S(W, theta)``) and the mask fixed, so that the sparsity stays at the target: with the
  soft threshold left in place, weight decay would keep pushing weights under it.
- ``adapmtl-uniform``: the same with one theta for every layer (no adaptive thresholds).
- ``adapmtl-noweighting``: the same without adaptive loss weighting.
- ``magnitude``: the dense model of the same seed, one-shot global magnitude pruning, then
  ``finetune`` iterations with the mask fixed.
- ``imp``: the dense model, ``rounds`` rounds of global magnitude pruning to
  ``1 - (1 - s)^(r / rounds)``, each followed by ``finetune // rounds`` iterations.
- ``snip``: SNIP's connection sensitivity on one batch at initialisation, then ``iterations``
  with the mask fixed.

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

__all__ = ["DEFAULT_ITERATIONS", "STRATEGIES", "MTLConfig", "evaluate", "train_mtl"]

STRATEGIES = ("adapmtl", "dense", "magnitude", "imp", "snip", "adapmtl-uniform",
              "adapmtl-noweighting")
#: Training iterations per scenario (batch 16); sized for a shared 2-core CPU.
#: A checkpoint is written every this many iterations of a phase (and at its end).
CHECKPOINT_EVERY = 200
DEFAULT_ITERATIONS = {"scenes": 600, "multimnist": 600, "multifashion": 600}


@dataclass
class MTLConfig:
    """Everything that defines a run (hashed for the dense cache and checked on resume).

    Iteration counts left as None are scaled to ``iterations``: ``warmup`` (start of adaptive
    weighting) a quarter, ``window`` a tenth, ``finetune`` a half.
    """

    strategy: str = "adapmtl"
    scenario: str = "scenes"
    sparsity: float = 0.9
    seed: int = 0
    iterations: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    theta_init: float = -5.0
    theta_lr: float = 0.02
    theta_decay: float = 2.0
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
        if self.lr <= 0 or self.theta_lr <= 0:
            raise ValueError("--lr and --theta-lr must be > 0")
        c = MTLConfig(**asdict(self))
        c.iterations = it
        c.warmup = it // 4 if self.warmup is None else self.warmup
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
            self.model.attach_thresholds(gran, config.theta_init)
        self.weighting = AdaptiveWeights(
            self.model.task_names, config.warmup, config.window,
            enabled=config.strategy in ("adapmtl", "adapmtl-uniform"))
        self.done: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.frozen_at: int | None = None
        self.resume: dict[str, Any] | None = None
        self.clock = 0  # iterations over all phases, for the history
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
                 "frozen_at": self.frozen_at, "clock": self.clock}
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
            groups.append({"params": thetas, "lr": self.c.theta_lr,
                           "weight_decay": self.c.theta_decay})
        return torch.optim.Adam(groups, betas=(0.5, 0.999))

    def _joint_loss(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        outs = self.model(torch.from_numpy(self.x[idx]))
        return {t.name: task_loss(t.kind, outs[t.name], torch.from_numpy(self.ys[t.name][idx]))
                for t in self.sc.tasks}

    def _batch(self, phase: str, i: int) -> np.ndarray:
        # One generator per (seed, phase, iteration): a resumed run draws the same batches.
        key = int(hashlib.sha256(phase.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([self.c.seed, key, i])
        return rng.integers(0, len(self.x), self.c.batch_size)

    def _record(self) -> None:
        sp = self.model.sparsity()
        self.history.append({"iteration": self.clock, "overall": sp["overall"],
                             **sp["components"], "weights": self.weighting.weights()})

    def phase(self, name: str, iters: int) -> None:
        """Train for ``iters`` iterations as phase ``name`` (skipped when already done)."""
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
            loss = sum(w[t] * v for t, v in losses.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.frozen_at is not None:
                for p in thetas:
                    p.grad = None  # frozen: Adam skips a parameter without gradient
            opt.step()
            self.clock += 1
            if thetas and self.frozen_at is None:
                if self.model.sparsity()["overall"] >= self.c.sparsity:
                    self.frozen_at = self.clock
                    self.model.fold_thresholds()
            if i % record_every == 0:
                self._record()
                bar.set_postfix(loss=f"{loss.item():.3f}",
                                sparsity=f"{self.history[-1]['overall']:.3f}")
            if (i + 1) % CHECKPOINT_EVERY == 0 and i + 1 < iters:
                self._save(name, i + 1, opt)
        self._record()
        self.done.append(name)
        self._save(name, iters, None)

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
    elif c.strategy in ("magnitude", "imp"):
        state, dense_metrics, reference = _dense_reference(c, scenario, cache, progress)
        run.step("dense", lambda: run.model.load_state_dict(state))
        if c.strategy == "magnitude":
            run.step("prune", lambda: magnitude_prune(run.model, c.sparsity))
            run.phase("finetune", c.finetune)
        for r in range(1, c.rounds + 1 if c.strategy == "imp" else 0):
            target = 1.0 - (1.0 - c.sparsity) ** (r / c.rounds)
            run.step(f"prune{r}", lambda t=target: magnitude_prune(run.model, t))
            run.phase(f"finetune{r}", max(1, c.finetune // c.rounds))
    elif c.strategy == "snip":
        def snip() -> None:
            idx = np.random.default_rng([c.seed, 99]).integers(0, len(run.x), 4 * c.batch_size)
            snip_prune(run.model, lambda: sum(run._joint_loss(idx).values()), c.sparsity)
        run.step("snip", snip)
        run.phase("train", c.iterations)
    else:
        run.phase("train", c.iterations)
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

"""Ada-QPacknet (arXiv 2308.07939): lottery-ticket pruning, adaptive bits, fields per word.

Several tasks' fields share one weight word; each task reads only its own.

Per task t:

1. **Bank** (``before_task``): t trains on the positions whose word in the current bank still has
   room for one more field of ``max_bits`` code bits (``P + max_bits``), so whatever bit-width it
   ends with fits. When a layer has fewer than ``min_free`` of its positions left, or the bank
   has no free prefix, a new bank is opened.
2. **Training** on those positions (dense over them; the layer's ``weight`` is t's scratch; earlier
   tasks' values live in their own fields and are not read by t: no value sharing).
3. **Fast lottery-ticket search** (``prune``): ``population`` random per-layer prune ratios drawn
   uniformly in ``[v_min, v_max]``; each candidate keeps, per layer, the largest-magnitude
   ``1 - ratio`` of t's trained weights, is fine-tuned ``search_epochs`` epochs from the trained
   weights (a rewind to the trained point, not to initialisation: with one-epoch budgets a rewind
   to init cannot be judged) and scored by ``fitness_acc * val_acc + fitness_size * pruned``,
   where ``pruned`` is the fraction of the available positions removed. The best candidate's mask
   is kept, the weights go back to the trained ones, and the trainer retrains ``retrain_epochs``.
4. **Adaptive quantization**: `bitsub.adaptive_bitwidth` over t's weights, one bit-width per task
   by default (``per_layer=False``), searched upward from ``min_bits`` to ``max_bits = 6``
   (the paper's 64 clusters) until the validation drop is below ``delta`` (the paper's 2
   points). Searching up from the bottom and halving down from 64 clusters pick the same
   bit-width whenever accuracy grows with the bit-width; the upward search evaluates fewer
   candidates at the low bit-widths that usually win.
5. The codes are stored as t's own fields: every position of t's mask is written by t.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from bitsub.validate import check_float, check_int
from bitsub_torch.cl.strategies.base import Evaluate, val_split
from bitsub_torch.cl.strategies.quantized import QuantizedStrategy

__all__ = ["AdaQPacknet"]


def magnitude_mask(weight: torch.Tensor, available: torch.Tensor, keep: float) -> torch.Tensor:
    """The ``keep`` fraction (rounded, at least 1) of available positions with largest |weight|."""
    n = int(available.sum())
    out = torch.zeros_like(available)
    k = min(n, max(1, round(keep * n))) if n else 0
    if k:
        mag = weight.detach().abs().masked_fill(~available, -1.0).reshape(-1)
        out.view(-1)[torch.topk(mag, k, sorted=False).indices] = True
    return out


class AdaQPacknet(QuantizedStrategy):
    """Ada-QPacknet: per-layer sparsity by a fast lottery-ticket search, per-task bit-widths.

    Parameters
    ----------
    v_min, v_max : float
        Range of the per-layer prune ratios (paper: 0.4 and 0.7).
    population : int
        Candidates of the lottery-ticket search (paper: 16).
    search_epochs : int
        Fine-tuning epochs per candidate (paper: 5).
    retrain_epochs : int
        Epochs the trainer retrains the chosen subnetwork.
    fitness_acc, fitness_size : float
        Fitness weights of validation accuracy and pruned fraction (paper: 0.8 and 0.2).
    search_lr, search_batch_size : float, int
        Adam learning rate and batch size of the candidates' fine-tuning.
    search_samples : int, optional
        Fine-tune candidates on at most this many training samples (all by default).
    delta : float
        Accuracy drop quantization may cost (fraction; paper: 2 points).
    min_bits, max_bits : int
        Bit-width search range (paper: up to 64 clusters = 6 bits).
    per_layer : bool
        One bit-width per layer instead of per task.
    min_free : float
        Open a new bank when some layer has fewer than this fraction of positions with room.
    seed : int
        Seed of the candidates' ratios and data order.
    word_bits, prefix_bits, kmeans_method
        See `QuantizedStrategy`.
    """

    name = "adaqpacknet"
    uses_scores = False

    def __init__(
        self,
        *,
        v_min: float = 0.4,
        v_max: float = 0.7,
        population: int = 4,
        search_epochs: int = 1,
        retrain_epochs: int = 1,
        fitness_acc: float = 0.8,
        fitness_size: float = 0.2,
        search_lr: float = 1e-3,
        search_batch_size: int = 128,
        search_samples: int | None = None,
        delta: float = 0.02,
        min_bits: int = 1,
        max_bits: int = 6,
        per_layer: bool = False,
        min_free: float = 0.1,
        seed: int = 0,
        word_bits: int = 32,
        prefix_bits: int | None = None,
        kmeans_method: str = "auto",
    ) -> None:
        super().__init__(
            delta=delta,
            min_bits=min_bits,
            max_bits=max_bits,
            per_layer=per_layer,
            word_bits=word_bits,
            prefix_bits=prefix_bits,
            kmeans_method=kmeans_method,
        )
        self.v_min = check_float(v_min, "v_min", 0.0, 1.0)
        self.v_max = check_float(v_max, "v_max", 0.0, 1.0)
        if self.v_min > self.v_max or self.v_max >= 1.0:
            raise ValueError(f"need 0 <= v_min <= v_max < 1, got {v_min}, {v_max}")
        self.population = check_int(population, "population", 1)
        self.search_epochs = check_int(search_epochs, "search_epochs", 0)
        self._retrain = check_int(retrain_epochs, "retrain_epochs", 0)
        self.fitness_acc = check_float(fitness_acc, "fitness_acc", 0.0)
        self.fitness_size = check_float(fitness_size, "fitness_size", 0.0)
        self.search_lr = check_float(search_lr, "search_lr", 0.0)
        if self.search_lr == 0.0:
            raise ValueError("search_lr must be > 0")
        self.search_batch_size = check_int(search_batch_size, "search_batch_size", 1)
        self.search_samples = (
            None if search_samples is None else check_int(search_samples, "search_samples", 1)
        )
        self.min_free = check_float(min_free, "min_free", 0.0, 1.0)
        self.seed = check_int(seed, "seed", 0)

    # ------------------------------------------------------------------ hooks
    def _available(self, bank: int) -> dict[str, np.ndarray]:
        store = self._require_store()
        return {n: store.writable(bank, n, self.max_bits) for n in store.shapes}

    def before_task(self, task: int, model: nn.Module, data: Any) -> None:
        """Pick the bank by the word-level bit budget; train densely on the positions with room."""
        store = self._require_store()
        bank, reason = store.current_bank(), "joins"
        if bank is None:
            bank, reason = store.open_bank(), "first"
        elif store.bank_full(bank):
            bank, reason = store.open_bank(), "full"
        else:
            free = self._available(bank)
            if any(a.mean() < self.min_free for a in free.values()):
                bank, reason = store.open_bank(), "no room"
        available = self._available(bank)
        self._begin(task, model, bank, available)
        for name, layer in model.masked_layers().items():
            layer.set_task_mask(task, self._cur.trainable[name])
        self.log[task] = {
            "bank": int(bank),
            "bank_reason": reason,
            "available": {n: float(a.mean()) for n, a in available.items()},
        }

    def prune(self, task: int, model: nn.Module, data: Any, evaluate: Evaluate) -> None:
        """The fast lottery-ticket search over per-layer prune ratios."""
        cur = self._current(task)
        layers = model.masked_layers()
        split = val_split(data)
        snapshot = copy.deepcopy(model.state_dict())
        trained = {n: layer.weight.detach().clone() for n, layer in layers.items()}
        total = sum(int(cur.trainable[n].sum()) for n in layers) or 1
        rng = np.random.default_rng((self.seed, task))
        candidates = []
        for p in range(self.population):
            ratios = {n: float(rng.uniform(self.v_min, self.v_max)) for n in layers}
            masks = {
                n: magnitude_mask(trained[n], cur.trainable[n], 1.0 - ratios[n]) for n in layers
            }
            for n, layer in layers.items():
                layer.set_task_mask(task, masks[n])
            self._train(
                model,
                task,
                data,
                epochs=self.search_epochs,
                lr=self.search_lr,
                batch_size=self.search_batch_size,
                seed=(self.seed, task, p),
                samples=self.search_samples,
            )
            acc = float(evaluate(model, task, split))
            pruned = 1.0 - sum(int(m.sum()) for m in masks.values()) / total
            fitness = self.fitness_acc * acc + self.fitness_size * pruned
            candidates.append((fitness, p, ratios, masks, acc, pruned))
            model.load_state_dict(snapshot)
        fitness, p, ratios, masks, acc, pruned = max(candidates, key=lambda c: (c[0], -c[1]))
        for n, layer in layers.items():
            layer.set_task_mask(task, masks[n])
        self.log[task].update(
            {
                "ratios": ratios,
                "search_val": acc,
                "search_pruned": pruned,
                "fitness": fitness,
                "candidates": [[c[0], c[4], c[5]] for c in candidates],
            }
        )

    def retrain_epochs(self, task: int) -> int:  # noqa: D102
        return self._retrain

    def after_task(  # noqa: D102
        self, task: int, model: nn.Module, data: Any, evaluate: Evaluate
    ) -> None:
        layers = model.masked_layers()
        masks = {n: layer.task_mask(task) for n, layer in layers.items()}
        split = val_split(data)
        trained = float(evaluate(model, task, split))
        result = self._quantize(task, model, masks, evaluate, split, trained)
        self._commit(task, model, masks, masks, result)
        stored = float(evaluate(model, task, split))
        self.log[task].update(
            {
                "val_trained": trained,
                "val_stored": stored,
                "val_quantized": None if result is None else float(result.accuracy),
                "bits": {n: int(b) for n, b in self.bits(task).items()},
                "written": {n: int(masks[n].sum()) for n in layers},
            }
        )
        super().after_task(task, model, data, evaluate)

    # ------------------------------------------------------------------ state
    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "v_min": self.v_min,
            "v_max": self.v_max,
            "population": self.population,
            "search_epochs": self.search_epochs,
            "_retrain": self._retrain,
            "fitness_acc": self.fitness_acc,
            "fitness_size": self.fitness_size,
            "search_lr": self.search_lr,
            "search_batch_size": self.search_batch_size,
            "search_samples": self.search_samples,
            "min_free": self.min_free,
            "seed": self.seed,
        }

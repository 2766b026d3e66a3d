"""Shared machinery of the quantizing strategies (TinySubNets, Ada-QPacknet).

A quantizing strategy keeps a :class:`bitsub_torch.cl.taskvalues.FieldStore`: after a task ends, its
new weights are quantized per layer with K-Means codebooks whose bit-width comes from
`bitsub.adaptive_bitwidth` (Algorithm 1 of TinySubNets), and stored as fields. From then on the
task reads exactly those stored values (the values its bit-width was validated with), and later
tasks train against them frozen: the layer's ``weight`` is only the scratch of the task being
trained.

While task t trains, its layers read ``where(trainable, weight, frozen)``: ``trainable`` are the
positions where t may write a new field, ``frozen`` the values of the latest fields of t's bank
(what t reuses). Gradients therefore reach ``weight`` only at trainable positions, whatever the
optimizer does elsewhere; no ownership freezing is needed. Once t is stored, each layer's
`bitsub_torch.nn.taskmemory.TaskMemory` takes t's coded mask and fields (the store's arrays,
shared): the model alone then computes t's forward, and its ``state_dict`` restores it.

Activation quantization lives in :mod:`bitsub_torch.nn.actquant` and its per-run report in
:mod:`bitsub_torch.cl.actreport`; operation counts in :mod:`bitsub_torch.cl.ops`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitsub.quant.kmeans import METHODS as KMEANS_METHODS
from bitsub.quant.warmup import compile_kernels
from bitsub.validate import check_bool, check_float, check_int
from bitsub_torch.cl.strategies.base import Evaluate, Strategy
from bitsub_torch.cl.taskvalues import FieldStore, LayerFields

__all__ = ["QuantizedStrategy"]



@dataclass
class _Current:
    task: int
    bank: int
    trainable: dict[str, torch.Tensor]  # bool, layer shape
    frozen: dict[str, torch.Tensor]  # float32, layer shape: latest field values of the bank
    override: dict[str, torch.Tensor] | None = None  # values under evaluation (quantized, ...)


class QuantizedStrategy(Strategy):
    """Base of the strategies that store each task as K-Means codes in banks of fields.

    Parameters
    ----------
    delta : float
        Algorithm 1's threshold: the largest accuracy drop (fraction, e.g. 0.01 = 1 point) that
        quantization may cost on the validation split.
    min_bits, max_bits : int
        Range of the adaptive bit-width search (1..8).
    per_layer : bool
        After the common bit-width is found, lower layers one at a time while the drop stays
        within ``delta`` (``bitsub.adaptive_bitwidth(per_layer=True)``).
    word_bits : {32, 64}
        Word width of the packed model the tasks are accounted in.
    prefix_bits : int, optional
        P; default the smallest P with ``2**P - 1 >= model.num_tasks`` (export's default), so
        that one bank can hold every task.
    kmeans_method : str
        ``method`` of `bitsub.kmeans_1d`.
    """

    quantizes = True

    def __init__(
        self,
        *,
        delta: float,
        min_bits: int = 1,
        max_bits: int = 8,
        per_layer: bool = True,
        word_bits: int = 32,
        prefix_bits: int | None = None,
        kmeans_method: str = "auto",
    ) -> None:
        super().__init__()
        self.delta = check_float(delta, "delta", 0.0, 1.0)
        self.min_bits = check_int(min_bits, "min_bits", 1, 8)
        self.max_bits = check_int(max_bits, "max_bits", 1, 8)
        if self.min_bits > self.max_bits:
            raise ValueError(f"min_bits ({min_bits}) must be <= max_bits ({max_bits})")
        self.per_layer = check_bool(per_layer, "per_layer")
        if word_bits not in (32, 64) or isinstance(word_bits, bool):
            raise ValueError(f"word_bits must be 32 or 64, got {word_bits!r}")
        self.word_bits = int(word_bits)
        self.prefix_bits = (
            None if prefix_bits is None else check_int(prefix_bits, "prefix_bits", 1, 8)
        )
        if self.prefix_bits is not None and self.prefix_bits + self.max_bits > self.word_bits:
            raise ValueError("prefix_bits + max_bits must fit in word_bits")
        if kmeans_method not in KMEANS_METHODS:
            raise ValueError(
                f"kmeans_method must be one of {KMEANS_METHODS}, got {kmeans_method!r}"
            )
        self.kmeans_method = kmeans_method
        self.store: FieldStore | None = None
        self.log: dict[int, dict[str, Any]] = {}
        self._cur: _Current | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self, model: nn.Module, scenario: Any) -> None:
        """Create the field store for the model's layers (once; kept on resume)."""
        layers = model.masked_layers()
        shapes = {n: tuple(int(s) for s in layer.weight.shape) for n, layer in layers.items()}
        if self.prefix_bits is None:
            self.prefix_bits = max(1, int(model.num_tasks).bit_length())
        if self.prefix_bits + self.max_bits > self.word_bits:
            raise ValueError(
                f"a field of prefix_bits={self.prefix_bits} + max_bits={self.max_bits} does not "
                f"fit a {self.word_bits}-bit word: lower max_bits or use word_bits=64"
            )
        if self.store is None or self.store.shapes != shapes:
            self.store = FieldStore(shapes, word_bits=self.word_bits, prefix_bits=self.prefix_bits)
        # Every K-Means path compiled now, not at the first later task whose search takes it.
        compile_kernels(self.kmeans_method)
        super().setup(model, scenario)

    def _require_store(self) -> FieldStore:
        if self.store is None:
            raise RuntimeError(f"{type(self).__name__}.setup(model, scenario) was not called")
        return self.store

    # ------------------------------------------------------------------ values while training
    def _begin(self, task: int, model: nn.Module, bank: int, trainable: dict[str, Any]) -> None:
        store = self._require_store()
        cur_train, frozen = {}, {}
        for name, layer in model.masked_layers().items():
            dev = layer.weight.device
            tr = torch.as_tensor(np.asarray(trainable[name]), dtype=torch.bool).to(dev)
            fz = torch.from_numpy(store.visible(bank, name)).to(dev)
            with torch.no_grad():  # scratch agrees with what the task reads
                layer.weight.copy_(torch.where(tr, layer.weight, fz))
            layer.set_training_values(task, tr, fz)
            cur_train[name], frozen[name] = tr, fz
        self._cur = _Current(task, bank, cur_train, frozen)

    def _current(self, task: int) -> _Current:
        if self._cur is None or self._cur.task != task:
            raise RuntimeError(f"task {task} is not being trained (before_task was not called)")
        return self._cur

    # ------------------------------------------------------------------ quantize and store
    def _quantize(
        self,
        task: int,
        model: nn.Module,
        write: dict[str, torch.Tensor],
        evaluate: Evaluate,
        split: str,
        baseline: float,
    ) -> Any:
        """Algorithm 1 over the task's written weights; returns the AdaptiveResult (or None)."""
        from bitsub.quant.adaptive import adaptive_bitwidth

        cur = self._current(task)
        layers = model.masked_layers()
        names = [n for n in layers if bool(write[n].any())]
        if not names:
            return None
        values = {
            n: layers[n].weight.detach()[write[n]].cpu().numpy().astype(np.float32) for n in names
        }

        def accuracy(quantized: dict[str, np.ndarray]) -> float:
            override = {}
            for n in names:
                layer = layers[n]
                dense = torch.where(cur.trainable[n], layer.weight.detach(), cur.frozen[n]).clone()
                q = np.asarray(quantized[n], dtype=np.float32).reshape(-1)
                dense[write[n]] = torch.from_numpy(q).to(dense.device)
                override[n] = dense
            for n in names:
                layers[n].set_values_override(override[n])
            try:
                return float(evaluate(model, task, split))
            finally:
                for n in names:
                    layers[n].set_values_override(None)

        return adaptive_bitwidth(
            values,
            accuracy,
            baseline=float(baseline),
            delta=self.delta,
            min_bits=self.min_bits,
            max_bits=self.max_bits,
            per_layer=self.per_layer,
            method=self.kmeans_method,
        )

    def _commit(
        self,
        task: int,
        model: nn.Module,
        masks: dict[str, torch.Tensor],
        write: dict[str, torch.Tensor],
        result: Any,
    ) -> None:
        """Store the task's fields; from now on it reads them (and later tasks reuse them)."""
        store = self._require_store()
        cur = self._current(task)
        fields = {}
        for name in model.masked_layers():
            m = masks[name].detach().cpu().numpy().astype(bool)
            w = write[name].detach().cpu().numpy().astype(bool)
            if w.any():
                bits = int(result.bits[name])
                codebook = np.asarray(result.codebooks[name], dtype=np.float32).reshape(-1)
                codes = np.asarray(result.codes[name]).reshape(-1)
                codes = codes.astype(np.uint16 if bits > 8 else np.uint8)
                fields[name] = LayerFields(m, w, bits, codebook, codes)
            else:
                empty = np.zeros(0, np.float32)
                fields[name] = LayerFields(m, w, 0, empty, np.zeros(0, np.uint8))
        store.add_task(task, cur.bank, fields)
        self._cur = None
        for name, layer in model.masked_layers().items():
            layer.clear_training_values()
            c = store.coded(task, name)
            layer.memory.adopt_mask(task, c.mask, c.mask_context)
            layer.memory.adopt_values(task, cur.bank, c.write, c.codebook, c.codes, c.bits,
                                      c.written, c.write_context)
            stored = layer.values(task)
            with torch.no_grad():
                layer.weight.copy_(torch.where(write[name].to(stored.device), stored, layer.weight))

    # ------------------------------------------------------------------ short training (searches)
    def _train(
        self,
        model: nn.Module,
        task: int,
        data: Any,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        seed: tuple[int, ...],
        samples: int | None = None,
    ) -> None:
        """A few epochs of Adam on the task's shared weights and private parameters."""
        if epochs <= 0:
            return
        # The rows are gathered batch by batch (a streaming task is never materialised whole).
        x, y = data.x_train, np.ascontiguousarray(data.y_train, dtype=np.int64)
        rng = np.random.default_rng(seed)
        keep = np.arange(len(y))
        if samples is not None and samples < len(y):
            keep = np.sort(rng.choice(len(y), samples, replace=False))
        dev = next(model.parameters()).device
        params = list(model.shared_parameters()) + list(model.private_parameters(task))
        opt = torch.optim.Adam(params, lr=lr)
        was_training = model.training
        model.train()
        n = len(keep)
        for _ in range(epochs):
            order = rng.permutation(n)
            starts = list(range(0, n, batch_size))
            if n > 1 and n - starts[-1] == 1:
                starts.pop()  # a batch of one breaks BatchNorm's batch statistics
            for s in starts:
                idx = keep[order[s : s + batch_size]]
                xb = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))
                yb = torch.from_numpy(y[idx])
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb.to(dev), task), yb.to(dev))
                loss.backward()
                opt.step()
        model.train(was_training)

    # ------------------------------------------------------------------ export
    def export_layers(self, model: nn.Module, task: int) -> dict[str, dict]:
        """Per layer: ``mask``, ``write``, ``codebook``, ``codes`` (layer shape), ``bits``."""
        store = self._require_store()
        if task not in store.tasks:
            raise ValueError(
                f"task {task} has not been trained by {self.name} (finished: {store.tasks}); "
                "export only finished tasks (export(..., tasks=N))"
            )
        return store.export_layers(task)

    def bank(self, task: int) -> int | str:
        """The ``bank`` argument for ``PackedModel.add_task``: "new" where the task opened one."""
        return self._require_store().export_bank(task)

    def bits(self, task: int) -> dict[str, int]:
        """The bit-width of each layer of a finished task (0 where it wrote nothing)."""
        store = self._require_store()
        return {n: store.fields(task, n).bits for n in store.shapes}

    # ------------------------------------------------------------------ state
    def _settings(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "min_bits": self.min_bits,
            "max_bits": self.max_bits,
            "per_layer": self.per_layer,
            "word_bits": self.word_bits,
            "prefix_bits": self.prefix_bits,
            "kmeans_method": self.kmeans_method,
        }

    def state_dict(self) -> dict:  # noqa: D102
        return {
            **super().state_dict(),
            "settings": self._settings(),
            "store": None if self.store is None else self.store.state_dict(),
            "log": {int(t): dict(v) for t, v in self.log.items()},
        }

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        super().load_state_dict(state)
        for key, value in state["settings"].items():
            setattr(self, key, value)
        self.store = None if state["store"] is None else FieldStore.from_state_dict(state["store"])
        self.log = {int(t): dict(v) for t, v in state["log"].items()}
        self._cur = None

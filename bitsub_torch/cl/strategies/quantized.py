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
optimizer does elsewhere; no ownership freezing is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitsub.quant.kmeans import METHODS as KMEANS_METHODS
from bitsub_torch.cl.strategies.base import Evaluate, Strategy, check_flag
from bitsub_torch.cl.taskvalues import FieldStore, LayerFields, install_values

__all__ = [
    "ACTIVATION_BITS",
    "ACTIVATION_SCHEME",
    "OPS_ACTIVATION_BITS",
    "QuantizedStrategy",
    "activation_accuracy",
    "calibrate_activations",
    "fake_quantize",
    "fake_quantize_range",
    "op_counts",
    "ops_report",
    "quantized_activations",
    "quantized_inference",
    "stored_weight_bits",
    "val_split",
]


@dataclass
class _Current:
    task: int
    bank: int
    trainable: dict[str, torch.Tensor]  # bool, layer shape
    frozen: dict[str, torch.Tensor]  # float32, layer shape: latest field values of the bank
    override: dict[str, torch.Tensor] | None = None  # values under evaluation (quantized, ...)


def _check_int(value: object, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_float(value: object, name: str, lo: float, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v) or v < lo or (hi is not None and v > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return v


def val_split(data: Any) -> str:
    """The split strategy decisions use: "val", or "train" when the task has no validation data."""
    return "val" if len(getattr(data, "y_val", ())) else "train"


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
        self.delta = _check_float(delta, "delta", 0.0, 1.0)
        self.min_bits = _check_int(min_bits, "min_bits", 1, 8)
        self.max_bits = _check_int(max_bits, "max_bits", 1, 8)
        if self.min_bits > self.max_bits:
            raise ValueError(f"min_bits ({min_bits}) must be <= max_bits ({max_bits})")
        self.per_layer = check_flag(per_layer, "per_layer")
        if word_bits not in (32, 64) or isinstance(word_bits, bool):
            raise ValueError(f"word_bits must be 32 or 64, got {word_bits!r}")
        self.word_bits = int(word_bits)
        self.prefix_bits = (
            None if prefix_bits is None else _check_int(prefix_bits, "prefix_bits", 1, 8)
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
        """Create the field store for the model's layers and route their ``values`` through it."""
        layers = model.task_layers()
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
        install_values(model, self)

    def _require_store(self) -> FieldStore:
        if self.store is None:
            raise RuntimeError(f"{type(self).__name__}.setup(model, scenario) was not called")
        return self.store

    # ------------------------------------------------------------------ values while training
    def current_values(self, name: str, task: int, layer: nn.Module) -> torch.Tensor | None:
        """The values the task being trained reads in layer ``name`` (None for other tasks)."""
        cur = self._cur
        if cur is None or task != cur.task:
            return None
        if cur.override is not None and name in cur.override:
            return cur.override[name]
        return torch.where(cur.trainable[name], layer.weight, cur.frozen[name])

    def _begin(self, task: int, model: nn.Module, bank: int, trainable: dict[str, Any]) -> None:
        store = self._require_store()
        cur_train, frozen = {}, {}
        for name, layer in model.task_layers().items():
            dev = layer.weight.device
            tr = torch.as_tensor(np.asarray(trainable[name]), dtype=torch.bool).to(dev)
            fz = torch.from_numpy(store.visible(bank, name)).to(dev)
            with torch.no_grad():  # scratch agrees with what the task reads
                layer.weight.copy_(torch.where(tr, layer.weight, fz))
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
        layers = model.task_layers()
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
            cur.override = override
            try:
                return float(evaluate(model, task, split))
            finally:
                cur.override = None

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
        for name in model.task_layers():
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
        for name, layer in model.task_layers().items():
            stored = torch.from_numpy(store.visible(cur.bank, name, upto=task))
            stored = stored.to(layer.weight.device)
            with torch.no_grad():
                layer.weight.copy_(torch.where(write[name].to(stored.device), stored, layer.weight))
            layer.set_task_mask(task, masks[name].to(layer.masks.device))

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
        x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(data.y_train, dtype=np.int64))
        rng = np.random.default_rng(seed)
        if samples is not None and samples < len(y):
            keep = torch.from_numpy(np.sort(rng.choice(len(y), samples, replace=False)))
            x, y = x[keep], y[keep]
        dev = next(model.parameters()).device
        params = list(model.shared_parameters()) + list(model.private_parameters(task))
        opt = torch.optim.Adam(params, lr=lr)
        was_training = model.training
        model.train()
        n = len(y)
        for _ in range(epochs):
            order = rng.permutation(n)
            starts = list(range(0, n, batch_size))
            if n > 1 and n - starts[-1] == 1:
                starts.pop()  # a batch of one breaks BatchNorm's batch statistics
            for s in starts:
                idx = torch.from_numpy(order[s : s + batch_size])
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[idx].to(dev), task), y[idx].to(dev))
                loss.backward()
                opt.step()
        model.train(was_training)

    # ------------------------------------------------------------------ export
    def task_layers(self, model: nn.Module, task: int) -> dict[str, dict]:
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


# ---------------------------------------------------------------------- activations and op counts


def fake_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``x`` to a uniform ``bits``-bit grid, one max-abs scale per sample (row of dim 0).

    Signed (``2**(bits-1) - 1`` levels each side) where the sample has negative values, unsigned
    (``2**bits - 1`` levels, e.g. after a ReLU) otherwise. A scale per sample keeps predictions
    independent of the batch. A 0-D or 1-D tensor (weights, codebooks) gets one scale.
    """
    bits = _check_int(bits, "bits", 2, 32)
    if bits >= 32:
        return x
    flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
    amax = flat.abs().amax(dim=1, keepdim=True)
    signed = (flat < 0).any(dim=1, keepdim=True)
    levels = torch.where(signed, 2.0 ** (bits - 1) - 1, 2.0**bits - 1).to(flat.dtype)
    scale = torch.where(amax > 0, amax / levels, torch.ones_like(amax))
    return (torch.round(flat / scale) * scale).reshape(x.shape)


class quantized_inference:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Context in which every task layer runs at ``<bits, bits>`` (TinySubNets' Table 7).

    Inside it, each task layer's input activations are fake-quantized with :func:`fake_quantize`
    and the weight values it reads (the K-Means centroids of quantizing strategies) are rounded to
    a ``bits``-bit grid per layer. Heads, norms and pooling stay in float.

    Examples
    --------
    >>> with quantized_inference(model, 8):  # doctest: +SKIP
    ...     acc = trainer.evaluate(model, task, "test")
    """

    def __init__(self, model: nn.Module, bits: int) -> None:
        self.model = model
        self.bits = _check_int(bits, "bits", 2, 32)
        self._handles: list[Any] = []
        self._saved: list[tuple[nn.Module, Any]] = []

    def __enter__(self) -> quantized_inference:
        bits = self.bits

        def pre_hook(module: nn.Module, args: tuple) -> tuple:
            return (fake_quantize(args[0], bits), *args[1:])

        for layer in self.model.task_layers().values():
            self._handles.append(layer.register_forward_pre_hook(pre_hook))
            original = layer.values
            self._saved.append((layer, layer.__dict__.get("values")))

            def values(task: int, f: Any = original) -> torch.Tensor:
                v = f(task)
                return fake_quantize(v.reshape(-1), bits).reshape(v.shape)

            layer.values = values
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        for layer, values in self._saved:
            if values is None:
                layer.__dict__.pop("values", None)
            else:
                layer.values = values
        self._handles, self._saved = [], []


ACTIVATION_BITS = (4, 8, 16)
"""Default activation bit-widths of a run's ``activation_quantization`` report (Table 7)."""

OPS_ACTIVATION_BITS = (4, 8, 16, 32)
"""Activation bit-widths of a run's ``ops`` report (32 = float activations)."""

ACTIVATION_SCHEME = (
    "static per-tensor activation quantization of every task layer's input: range calibrated "
    "per task on its validation split (train split where it has none, never test) as the min and "
    "max of the float input; unsigned [0, max] with 2**b - 1 levels where min >= 0 (after a "
    "ReLU), else symmetric [-a, a] with 2**(b-1) - 1 levels each side, a = max(|min|, |max|); "
    "inputs outside the range are clamped; weights as stored, heads and norms in float"
)


def _layer_geometry(
    model: nn.Module, task: int, input_shape: tuple[int, ...]
) -> tuple[dict[str, float], float]:
    """Output positions per weight of each task layer, and the MACs of the other layers.

    One forward of a zero batch records every layer's output shape: a conv weight is applied at
    ``prod(out.shape[2:])`` positions, a linear weight once. "Other layers" are the plain
    `nn.Linear` / `nn.Conv2d` modules the forward of ``task`` runs (its head), counted dense.
    """
    task_layers = model.task_layers()
    ids = {id(m) for m in task_layers.values()}
    shapes: dict[str, tuple[int, ...]] = {}
    private = [0.0]

    def spatial(out: torch.Tensor) -> float:
        return float(np.prod(out.shape[2:])) if out.dim() > 2 else 1.0

    def other(m: nn.Module, a: tuple, out: torch.Tensor) -> None:
        private[0] += m.weight.numel() * spatial(out)

    hooks = [
        layer.register_forward_hook(
            lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
        for name, layer in task_layers.items()
    ]
    hooks += [
        m.register_forward_hook(other)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and id(m) not in ids
    ]
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((2, *input_shape), device=dev), task)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    geometry = {
        name: float(np.prod(shapes[name][2:])) if len(shapes[name]) > 2 else 1.0
        for name in task_layers
        if name in shapes
    }
    return geometry, private[0]


def op_counts(
    model: nn.Module,
    task: int,
    input_shape: tuple[int, ...],
    *,
    weight_bits: dict[str, int | np.ndarray] | None = None,
    act_bits: int = 32,
    masks: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Multiply-accumulates and bit-operations of one sample's forward for ``task`` (Table 6).

    Counts the task layers only (heads and norms are a small, fixed part). ``macs_dense`` is the
    dense network; ``macs_masked`` counts only the positions in the task's mask (the "+p",
    pruned, variant); ``flops_dense`` / ``flops_masked`` are 2 x MACs; ``bops`` are the
    bit-operations ``sum_layers masked MACs x weight bits x activation bits`` (32 for float),
    and ``bops_float`` the same with 32-bit weights and activations, for the ratio.

    ``weight_bits[layer]`` is one bit-width for the layer (0 or missing: 32, float) or an array
    of the layer's shape with the bit-width of the field read at each position. ``masks``
    replaces the torch layers' task masks (e.g. the masks of the exported packed model).
    """
    act_bits = _check_int(act_bits, "act_bits", 1, 32)
    geometry, _ = _layer_geometry(model, task, tuple(input_shape))
    macs_dense = macs_masked = bops = bops_float = 0.0
    for name, layer in model.task_layers().items():
        spatial = geometry[name]
        n = layer.weight.numel()
        if masks is not None and name in masks:
            keep = np.asarray(masks[name], dtype=bool).reshape(tuple(layer.weight.shape))
        else:
            keep = layer.task_mask(task).cpu().numpy()
        kept = float(keep.sum())
        macs_dense += n * spatial
        macs_masked += kept * spatial
        wb = 32 if weight_bits is None else weight_bits.get(name, 32)
        if np.ndim(wb) == 0:
            wbits = kept * (int(wb) or 32)
        else:
            per = np.asarray(wb, dtype=np.int64).reshape(keep.shape)
            wbits = float(np.where(per > 0, per, 32)[keep].sum())
        bops += wbits * spatial * act_bits
        bops_float += kept * spatial * 32 * 32
    return {
        "macs_dense": macs_dense,
        "macs_masked": macs_masked,
        "flops_dense": 2 * macs_dense,
        "flops_masked": 2 * macs_masked,
        "bops": bops,
        "bops_float": bops_float,
    }


def stored_weight_bits(pm: Any, task: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per layer of a packed model: the task's mask, and the bit-width of the field read there.

    The bit-width at a position is that of the field the read rule picks
    (``PackedModel.resolve``): a task that reuses an earlier task's weight multiplies by that
    task's b-bit centroid. 32 marks a raw float32 field; 0 a position outside the mask.
    """
    masks, bits = {}, {}
    for name in pm.layers:
        mask, source, _ = pm.resolve(task, name)
        table = np.zeros(max(len(pm.tasks), 1) + 1, np.int64)
        for u in set(np.unique(source[mask]).tolist()):
            table[u] = pm.bits(int(u), name)
        masks[name] = mask
        bits[name] = np.where(mask, table[np.where(mask, source, 0)], 0)
    return masks, bits


def ops_report(
    model: nn.Module,
    pm: Any,
    input_shape: tuple[int, ...],
    act_bits: tuple[int, ...] = OPS_ACTIVATION_BITS,
) -> dict[str, Any]:
    """Operation counts of every task of a run, from its packed model (results.json ``ops``).

    Per task, for one sample's forward through the task layers:

    - ``macs_dense``: multiply-accumulates of the dense float model (every weight position);
    - ``macs``: those of the task's sub-network, only the positions of its mask;
    - ``flops_dense`` / ``flops``: 2 x MACs (a multiply and an add);
    - ``bops[b_a]``: bit-operations at ``<b_w, b_a>``, ``sum over masked MACs of b_w x b_a``,
      b_w the bit-width of the stored field the MAC reads (the task's own bit-width where it
      wrote, the earlier task's where it reuses; 32 for raw float32 fields), b_a the
      activation bit-width (32 = float);
    - ``bops_float``: the sub-network at ``<32, 32>`` (``macs x 1024``) and
      ``bops_dense_float`` the dense model at ``<32, 32>``;
    - ``weight_bits``: per layer, the distinct b_w the task reads; ``mean_weight_bits``: the
      MAC-weighted mean b_w;
    - ``macs_private``: the dense float MACs of the task's head (not in the figures above).

    The bit-operation count makes float ``(32 x 32) / (8 x 8) = 16x`` the cost of ``<8, 8>``; the
    TinySubNets paper puts the real ratio at about 9-10x (24-bit mantissas, 3x the bits, plus
    exponent handling), so ``bops_float`` over-states float's cost by about 1.6-1.8x.
    """
    act = [_check_int(b, "act_bits", 1, 32) for b in act_bits]
    tasks = []
    for t in pm.tasks:
        masks, bits = stored_weight_bits(pm, t)
        geometry, private = _layer_geometry(model, t, tuple(input_shape))
        macs_dense = macs = wmacs = 0.0
        used: dict[str, list[int]] = {}
        for name, layer in model.task_layers().items():
            spatial = geometry[name]
            macs_dense += layer.weight.numel() * spatial
            if name not in masks:
                continue
            macs += float(masks[name].sum()) * spatial
            wmacs += float(bits[name].sum()) * spatial
            used[name] = sorted(int(b) for b in np.unique(bits[name][masks[name]]))
        tasks.append({
            "macs_dense": macs_dense,
            "macs": macs,
            "flops_dense": 2 * macs_dense,
            "flops": 2 * macs,
            "bops": {str(b): wmacs * b for b in act},
            "bops_float": macs * 32 * 32,
            "bops_dense_float": macs_dense * 32 * 32,
            "weight_bits": used,
            "mean_weight_bits": wmacs / macs if macs else 0.0,
            "macs_private": private,
        })
    return {"act_bits": act, "tasks": tasks}


def fake_quantize_range(x: torch.Tensor, bits: int, lo: float, hi: float) -> torch.Tensor:
    """Quantize ``x`` to ``bits`` bits on a fixed, calibrated range (see `ACTIVATION_SCHEME`).

    Unsigned grid ``k * hi / (2**bits - 1)``, k in 0..2**bits-1, where ``lo >= 0``; otherwise
    symmetric grid ``k * a / (2**(bits-1) - 1)``, ``|k| <= 2**(bits-1) - 1``,
    ``a = max(-lo, hi)``. Values outside the grid's range are clamped to it.
    """
    bits = _check_int(bits, "bits", 2, 32)
    if bits >= 32:
        return x
    lo, hi = float(lo), float(hi)
    if lo >= 0:
        levels, amax, kmin = 2.0**bits - 1, hi, 0.0
    else:
        levels = 2.0 ** (bits - 1) - 1
        amax = max(-lo, hi)
        kmin = -levels
    if not amax > 0:
        return torch.zeros_like(x)
    scale = amax / levels
    return torch.clamp(torch.round(x / scale), kmin, levels) * scale


@torch.no_grad()
def calibrate_activations(
    model: nn.Module, task: int, x: np.ndarray, *, batch_size: int = 1024
) -> dict[str, tuple[float, float]]:
    """The (min, max) of every task layer's float input over ``x`` in the forward of ``task``.

    Pass a validation split: the ranges then fix the activation grids used on the test split.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("calibrate_activations needs at least one sample (pass the val split)")
    ranges: dict[str, list[float]] = {}

    def record(name: str, inp: torch.Tensor) -> None:
        lo, hi = float(inp.min()), float(inp.max())
        old = ranges.get(name)
        ranges[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]

    hooks = [
        layer.register_forward_pre_hook(lambda m, a, name=name: record(name, a[0]))
        for name, layer in model.task_layers().items()
    ]
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(x), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size])).to(dev), task)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: (lo, hi) for name, (lo, hi) in ranges.items()}


class quantized_activations:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Context in which every task layer's input is quantized to ``bits`` on calibrated ranges.

    ``ranges`` come from :func:`calibrate_activations` (per layer (min, max)); the weights are
    left as the layers read them (the stored values). Unlike :class:`quantized_inference` the
    grid is fixed per tensor, not per sample, as a fixed-point accelerator would run it.
    """

    def __init__(
        self, model: nn.Module, bits: int, ranges: dict[str, tuple[float, float]]
    ) -> None:
        self.model = model
        self.bits = _check_int(bits, "bits", 2, 32)
        layers = model.task_layers()
        missing = sorted(set(layers) - set(ranges))
        if missing:
            raise ValueError(
                f"no calibrated range for layers {missing}: run calibrate_activations for the "
                "same task first"
            )
        self.ranges = {n: (float(ranges[n][0]), float(ranges[n][1])) for n in layers}
        self._handles: list[Any] = []

    def __enter__(self) -> quantized_activations:
        for name, layer in self.model.task_layers().items():
            lo, hi = self.ranges[name]

            def pre_hook(m: nn.Module, args: tuple, lo: float = lo, hi: float = hi) -> tuple:
                return (fake_quantize_range(args[0], self.bits, lo, hi), *args[1:])

            self._handles.append(layer.register_forward_pre_hook(pre_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def activation_accuracy(
    model: nn.Module,
    tasks: Any,
    evaluate: Evaluate,
    bits: tuple[int, ...] = ACTIVATION_BITS,
) -> dict[str, Any]:
    """Per-task test accuracy with activations quantized to each of ``bits`` (Table 7).

    Parameters
    ----------
    model : TaskNetwork
        The trained model (weights as stored by its strategy).
    tasks : sequence
        The scenario's tasks (``x_val`` / ``x_train`` for calibration).
    evaluate : callable
        ``evaluate(model, task, "test")`` -> accuracy, e.g. ``Trainer.evaluate``.
    bits : tuple of int
        Activation bit-widths, each 2..16.

    Returns
    -------
    dict
        ``"float"`` and ``str(b)`` for each b: per-task accuracies; ``"mean"``: their means by
        the same keys; ``"bits"``, ``"calibration"`` (split per task) and ``"scheme"``
        (`ACTIVATION_SCHEME`).
    """
    bits = tuple(_check_int(b, "activation bits", 2, 16) for b in bits)
    out: dict[str, Any] = {"float": []}
    out.update({str(b): [] for b in bits})
    splits = []
    for t, data in enumerate(tasks):
        split = val_split(data)
        splits.append(split)
        ranges = calibrate_activations(model, t, getattr(data, f"x_{split}"))
        out["float"].append(float(evaluate(model, t, "test")))
        for b in bits:
            with quantized_activations(model, b, ranges):
                out[str(b)].append(float(evaluate(model, t, "test")))
    out["mean"] = {k: float(np.mean(v)) if v else None for k, v in out.items()}
    out.update({"bits": list(bits), "calibration": splits, "scheme": ACTIVATION_SCHEME})
    return out

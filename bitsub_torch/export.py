"""Export a trained task network into a :class:`bitsub.PackedModel`, and test tasks from the file.

For each task t in order, ``strategy.export_layers(model, t)`` gives per layer the mask the task
uses, the positions it writes, and either its float values or its codebook and codes. These
become ``bitsub.TaskLayer`` records; the task's heads, biases and norms become its private
parameters (``model.private_params(t)``) and the network is recorded once with
``pm.set_network(model.network_steps(0))``.

- Strategies that do not quantize (Finetune, PackNet, WSN) export losslessly by default: raw
  float32 fields (``bits=32``) in 64-bit words, so the file reproduces the torch model exactly.
- ``bits=b`` (1..16) stores b-bit K-Means codes instead: each task's newly written values in each
  layer are clustered into ``2**b`` centroids by the ``TaskLayer(values, bits)`` path of bitsub.
- Quantizing strategies (``strategy.quantizes``) hand over their own codebooks and codes, which
  are stored as they are; ``bits`` must then be left as None.

The prefix width defaults to the smallest P with ``2**P - 1 >= tasks`` (at least 1), so every task
fits in one bank: a task that reuses earlier tasks' weights must live in their bank. A strategy
that plans its own banks of fields states its layout, which export follows unless told otherwise:
integer attributes ``word_bits`` and ``prefix_bits``, and a method ``bank(t)`` giving the ``bank``
argument of ``PackedModel.add_task`` for task t (an int, ``"new"`` or None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import bitsub
from bitsub.kernels.plan import Plan, build_plan

__all__ = ["export", "layer_plan", "packed_accuracy", "packed_predictions"]

RAW_BITS = 32


def _check_opt_int(value: object, name: str, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi} (or None), got {value}")
    return int(value)


def _np(a: Any, dtype: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a), dtype=dtype)


def _count_tasks(model: torch.nn.Module, tasks: int | None) -> int:
    available = getattr(model, "num_tasks", None)
    if available is None and hasattr(model, "heads"):
        available = len(model.heads)
    if tasks is None:
        if available is None:
            raise ValueError("cannot tell how many tasks the model has: pass tasks=")
        return int(available)
    if isinstance(tasks, bool) or not isinstance(tasks, (int, np.integer)) or tasks < 1:
        raise ValueError(f"tasks must be a positive int, got {tasks!r}")
    if available is not None and tasks > available:
        raise ValueError(f"the model has {available} tasks, cannot export tasks={tasks}")
    return int(tasks)


def _task_layer(
    name: str, entry: dict[str, Any], bits: int | None, quantizing: bool
) -> bitsub.TaskLayer:
    if not isinstance(entry, dict) or "mask" not in entry or "write" not in entry:
        raise ValueError(f"strategy.export_layers(model, task)[{name!r}] must be a dict with "
                         "'mask' and 'write'")
    mask = _np(entry["mask"], np.bool_)
    write = _np(entry["write"], np.bool_)
    if entry.get("codebook") is not None:
        if bits is not None:
            raise ValueError(
                "this strategy quantizes its weights itself (its codebooks are exported as they "
                "are): leave bits=None / drop --export-bits"
            )
        return bitsub.TaskLayer(
            mask,
            write,
            bits=None if entry.get("bits") is None else int(entry["bits"]),
            codebook=_np(entry["codebook"], np.float32),
            codes=np.asarray(_np(entry["codes"], np.int64)),
        )
    if "values" not in entry and not write.any():
        # a layer where the task wrote nothing (every position it uses is reused): no fields
        return bitsub.TaskLayer(mask, write)
    if "values" not in entry:
        raise ValueError(
            f"strategy.export_layers(model, task)[{name!r}] needs 'values' or 'codebook' and "
            "'codes'"
        )
    if quantizing and bits is None and write.any():
        raise ValueError(
            f"a quantizing strategy gave float values for layer {name!r}: pass bits= to quantize"
        )
    values = _np(entry["values"], np.float32)
    return bitsub.TaskLayer(mask, write, values=values, bits=RAW_BITS if bits is None else bits)


def export(
    model: torch.nn.Module,
    strategy: Any,
    *,
    bits: int | None = None,
    word_bits: int | None = None,
    prefix_bits: int | None = None,
    tasks: int | None = None,
) -> bitsub.PackedModel:
    """Turn a trained task network and its strategy's masks into a packed model.

    Parameters
    ----------
    model : TaskNetwork
        The trained network (``masked_layers()``, ``private_params(t)``, ``network_steps(t)``).
    strategy : Strategy
        The strategy that trained it (``export_layers(model, t)`` gives masks and values).
    bits : int, optional
        None: lossless raw float32 fields (non-quantizing strategies) or the strategy's own
        codebooks. 1..16: store b-bit K-Means codes of each task's written values.
    word_bits : {32, 64}, optional
        Default: the strategy's ``word_bits`` if it states one, else 64 when raw float32 fields
        are stored, else 32.
    prefix_bits : int, optional
        Default: the strategy's ``prefix_bits`` if it states one, else the smallest P (>= 1)
        with ``2**P - 1 >= tasks``, so all tasks share one bank.
    tasks : int, optional
        Export tasks ``0 .. tasks-1`` (default all the model's tasks).

    Returns
    -------
    bitsub.PackedModel
        With one packed task per model task, its private parameters and the recorded network.
    """
    bits = _check_opt_int(bits, "bits", 1, RAW_BITS)
    if bits is not None and 16 < bits < RAW_BITS:
        raise ValueError(f"bits must be 1..16 (codes) or 32 (raw float32), got {bits}")
    word_bits = _check_opt_int(word_bits, "word_bits", 32, 64)
    if word_bits not in (None, 32, 64):
        raise ValueError(f"word_bits must be 32 or 64, got {word_bits}")
    prefix_bits = _check_opt_int(prefix_bits, "prefix_bits", 1, 8)
    n_tasks = _count_tasks(model, tasks)
    quantizing = bool(getattr(strategy, "quantizes", False))

    layers = model.masked_layers()
    per_task = []
    for t in range(n_tasks):
        entries = strategy.export_layers(model, t)
        unknown = set(entries) - set(layers)
        if unknown:
            raise ValueError("strategy.export_layers(model, task) names unknown layers "
                             f"{sorted(unknown)}")
        per_task.append({n: _task_layer(n, entries[n], bits, quantizing) for n in entries})

    # A strategy that planned its own banks of fields (TinySubNets, Ada-QPacknet) states the
    # layout it planned for: its word and prefix widths, and the bank of each task.
    if word_bits is None and isinstance(getattr(strategy, "word_bits", None), int):
        word_bits = strategy.word_bits
    if prefix_bits is None and isinstance(getattr(strategy, "prefix_bits", None), int):
        prefix_bits = strategy.prefix_bits
    bank_of = getattr(strategy, "bank", None)
    raw = any(tl.bits == RAW_BITS for task in per_task for tl in task.values())
    if word_bits is None:
        word_bits = 64 if raw else 32
    if raw and word_bits != 64:
        raise ValueError("raw float32 fields need word_bits=64 (or pass bits= to quantize)")
    if prefix_bits is None:
        prefix_bits = max(1, int(n_tasks).bit_length())

    steps = model.network_steps(0)
    for t in range(1, n_tasks):
        if model.network_steps(t) != steps:
            raise ValueError(
                "model.network_steps(t) differs between tasks; a packed model records one network"
            )

    pm = bitsub.PackedModel(word_bits=word_bits, prefix_bits=prefix_bits)
    for name, layer in layers.items():
        pm.add_layer(name, tuple(int(s) for s in layer.weight.shape))
    for t in range(n_tasks):
        private = {k: _np(v, np.float32) for k, v in model.private_params(t).items()}
        bank = bank_of(t) if callable(bank_of) else None
        tid = pm.add_task(per_task[t], private=private, bank=bank)
        if tid != t:  # pragma: no cover - PackedModel numbers tasks 0, 1, 2, ...
            raise RuntimeError(f"packed task id {tid} != model task {t}")
    pm.set_network(steps)
    return pm


def layer_plan(pm: bitsub.PackedModel, task: int, layer: str, *, transposed: bool = False) -> Plan:
    """The matmul plan of one (task, layer) of a packed model, or of its transpose.

    ``transposed=True`` gives the plan of ``W_t^T`` (for a conv layer, of the transposed
    (out, in*kh*kw) flattening): ``matmul(plan_t, g)`` is ``g @ W_t``, the input gradient of a
    packed layer, computed from the packed fields like the forward pass.
    """
    if not transposed:
        return pm.plan(task, layer)
    mask, source, codes = pm.resolve(task, layer)
    codebooks = {int(s): pm.codebook(int(s), layer) for s in np.unique(source[mask])}
    if transposed:
        out = mask.shape[0]
        mask, source, codes = (
            np.ascontiguousarray(a.reshape(out, -1).T) for a in (mask, source, codes)
        )
    return build_plan(mask, source, codes, codebooks)


def packed_predictions(
    pm: bitsub.PackedModel, task: int, x: np.ndarray, *, batch_size: int = 1024
) -> np.ndarray:
    """Predicted labels of task ``task`` for inputs ``x`` from bitsub's NumPy forward (no torch).

    Runs ``pm.forward`` (:func:`bitsub.model.network.forward`) over the recorded network.

    Parameters
    ----------
    pm : bitsub.PackedModel
        A packed model with a recorded network.
    task : int
        Task id.
    x : np.ndarray
        float32 inputs, shape (n, *input_shape).
    batch_size : int
        Rows per forward call.

    Returns
    -------
    np.ndarray
        int64 labels, shape (n,).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = [np.zeros(0, np.int64)]
    for i in range(0, len(x), batch_size):  # batch by batch: x may be a streaming view
        logits = pm.forward(task, np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))
        out.append(np.asarray(logits).argmax(axis=1).astype(np.int64))
    return np.concatenate(out)


def packed_accuracy(
    pm: bitsub.PackedModel,
    tasks: Sequence[Any],
    *,
    split: str = "test",
    batch_size: int = 1024,
) -> list[float]:
    """Per-task accuracy measured from the packed model alone (bitsub's NumPy forward).

    Parameters
    ----------
    pm : bitsub.PackedModel
        The packed model; its task t is tested on ``tasks[t]``.
    tasks : sequence of TaskData
        The scenario's tasks (``scenario.tasks``), at most ``len(pm.tasks)`` of them.
    split : {"test", "val", "train"}
        Which split to test on.
    batch_size : int
        Rows per forward call.

    Returns
    -------
    list of float
        Accuracy in [0, 1] per task (NaN for an empty split).
    """
    if split not in ("test", "val", "train"):
        raise ValueError(f"split must be 'test', 'val' or 'train', got {split!r}")
    if len(tasks) > len(pm.tasks):
        raise ValueError(f"the packed model holds {len(pm.tasks)} tasks, got {len(tasks)} to test")
    accs = []
    for t, data in enumerate(tasks):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if len(y) == 0:
            accs.append(float("nan"))
            continue
        pred = packed_predictions(pm, t, x, batch_size=batch_size)
        accs.append(float(np.mean(pred == y)))
    return accs

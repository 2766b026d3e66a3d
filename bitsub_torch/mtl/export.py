"""A pruned multi-task network as one packed model, and the network back from the file.

Task t of the packed model is the t-th task of the network. Task 0 writes the backbone's fields
(its nonzero effective weights) and its own head; every later task reads the backbone through
the read rule (its mask is the backbone's nonzeros, it writes nothing there) and writes only its
head. So the backbone is stored once, whatever the number of tasks. The biases of the backbone
are private parameters of task 0 (``backbone.*``), those of a head private parameters of its
task; biases and the layer names are what :func:`load_mtl` needs besides the fields.

- ``bits=None``: raw float32 fields in 64-bit words: the file reproduces the network exactly.
- ``bits=b`` (1..16): each task's written values in each layer are clustered into ``2**b``
  K-Means centroids by bitsub (``TaskLayer(values=, bits=)``), 32-bit words; ``bits`` may also
  map layer names to bit-widths, as :func:`adaptive_bits` (Algorithm 1 of TinySubNets with the
  task metrics as its evaluate callback) chooses them.
"""

from __future__ import annotations

import numpy as np
import torch

import bitsub
from bitsub_torch.mtl.model import MTLNet, build_model

__all__ = ["adaptive_bits", "export_mtl", "file_width", "load_mtl", "packed_metrics"]


def _owner(component: str, tasks: list[str]) -> int:
    return 0 if component == "backbone" else tasks.index(component)


def export_mtl(model: MTLNet, bits: int | dict[str, int] | None = None) -> bitsub.PackedModel:
    """Pack the effective weights of ``model`` (see the module docstring).

    Raises
    ------
    ValueError
        ``bits`` not None and not in 1..16.
    """
    names = [n for n, _ in model.prunable()]
    per = bits if isinstance(bits, dict) else dict.fromkeys(names, bits)
    for b in per.values():
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16):
            raise ValueError(f"bits must be None (lossless), an int in 1..16 or a dict of them, "
                             f"got {bits!r}")
    if set(per) != set(names):
        raise ValueError(f"bits must give a bit-width for every layer {names}")
    tasks = model.task_names
    prefix_bits = max(1, int(np.ceil(np.log2(len(tasks) + 1))))
    pm = bitsub.PackedModel(word_bits=64 if bits is None else 32, prefix_bits=prefix_bits)
    layers = model.prunable()
    weights = {}
    with torch.no_grad():
        for name, m in layers:
            pm.add_layer(name, tuple(m.weight.shape))
            weights[name] = m.sparse_weight().detach().numpy().astype(np.float32)
    biases = {n: m.bias.detach().numpy().astype(np.float32)
              for n, m in layers if m.bias is not None}
    for t, task in enumerate(tasks):
        entries, private = {}, {}
        for name, m in layers:
            owner = _owner(m.component, tasks)
            if m.component != "backbone" and owner != t:
                continue
            nz = weights[name] != 0
            write = nz if owner == t else np.zeros_like(nz)
            entries[name] = bitsub.TaskLayer(mask=nz, write=write, values=weights[name],
                                             bits=32 if bits is None else per[name])
            if owner == t and name in biases:
                private[name + ".bias"] = biases[name]
        got = pm.add_task(entries, private=private)
        if got != t:
            raise RuntimeError(f"packed task id {got} for task {task!r} (expected {t})")
    return pm


def file_width(pm: bitsub.PackedModel) -> int:
    """The ``width`` of the network in a file: twice the channels of its first layer."""
    first = "backbone.0"
    if first not in pm.layers:
        raise ValueError(f"the packed model has no layer {first!r}: not a bitsub-mtl file")
    return 2 * pm.shape(first)[0]


def load_mtl(pm: bitsub.PackedModel, scenario, task: int, width: int | None = None) -> MTLNet:
    """The network as task ``task`` of ``pm`` reads it: backbone and head ``task`` from the file.

    Other heads are left as built (they are not task ``task``'s and are never read for it).
    ``width`` defaults to the file's (:func:`file_width`).

    Raises
    ------
    ValueError
        The file's layers do not match the scenario's network (another scenario or width).
    """
    width = file_width(pm) if width is None else width
    model = build_model(scenario, width=width)
    layers = model.prunable()
    want = {n: tuple(m.weight.shape) for n, m in layers}
    have = {n: pm.shape(n) for n in pm.layers}
    if want != have or len(pm.tasks) != len(model.task_names):
        raise ValueError(f"the packed model does not hold a {scenario.name} network of width "
                         f"{width} with {len(model.task_names)} tasks; its layers are "
                         f"{sorted(have)}: give the scenario and --width it was trained with")
    tasks = model.task_names
    private0, private = pm.private(0), pm.private(task)
    with torch.no_grad():
        for name, m in layers:
            owner = _owner(m.component, tasks)
            if m.component != "backbone" and owner != task:
                continue
            w = torch.from_numpy(np.array(pm.weights(task, name), dtype=np.float32))
            m.weight.copy_(w)
            m.mask.copy_(w != 0)
            src = private0 if m.component == "backbone" else private
            if m.bias is not None:
                m.bias.copy_(torch.from_numpy(np.array(src[name + ".bias"], dtype=np.float32)))
    return model


def packed_metrics(pm: bitsub.PackedModel, scenario, width: int | None = None,
                   split: str = "test") -> dict[str, dict[str, float]]:
    """Every task metric computed from the packed model, each task reading its own network."""
    from bitsub_torch.mtl.objectives import predict, task_metrics

    x, ys = scenario.split(split)
    out = {}
    for t, spec in enumerate(scenario.tasks):
        model = load_mtl(pm, scenario, t, width)
        pred = predict(model, x, scenario.tasks, only=spec.name)[spec.name]
        out[spec.name] = task_metrics(spec.kind, pred, ys[spec.name], spec.outputs)
    return out


def adaptive_bits(model: MTLNet, scenario, delta: float, max_bits: int = 8
                  ) -> tuple[dict[str, int], float]:
    """Algorithm 1 on the pruned network; the chosen K-Means weights are put into ``model``.

    The score of a quantization is its Delta_T on the validation split against the unquantized
    network (0 for the network itself), so ``delta`` is the accepted Delta_T loss in %.
    Each layer's nonzero weights are quantized with bitsub's K-Means; the model then holds at
    most ``2**b`` distinct values per layer, which export's K-Means at the same bit-width
    reproduces exactly, so ``export_mtl(model, bits=chosen)`` stores the weights evaluated here.

    Returns
    -------
    (dict, float)
        Bit-width per layer and the Delta_T reached.
    """
    from bitsub_torch.mtl.objectives import delta_t
    from bitsub_torch.mtl.trainer import evaluate

    layers = dict(model.prunable())
    with torch.no_grad():
        dense_w = {n: m.sparse_weight().detach().clone() for n, m in layers.items()}
    nonzero = {n: (w != 0) for n, w in dense_w.items()}
    values = {n: dense_w[n][nonzero[n]].numpy() for n in layers if nonzero[n].any()}
    reference = evaluate(model, scenario, "val")

    def put(quantized: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for n, m in layers.items():
                w = dense_w[n].clone()
                if n in quantized:
                    w[nonzero[n]] = torch.from_numpy(np.asarray(quantized[n], np.float32))
                m.weight.copy_(w)
                m.mask.copy_(nonzero[n])

    def score(quantized: dict[str, np.ndarray]) -> float:
        put(quantized)
        return delta_t(evaluate(model, scenario, "val"), reference)[0]

    result = bitsub.adaptive_bitwidth(values, score, baseline=0.0, delta=delta,
                                      max_bits=max_bits)
    put({n: result.codebooks[n][result.codes[n]] for n in result.bits})
    chosen = {n: int(result.bits[n]) if n in result.bits else 1 for n in layers}
    return chosen, float(result.accuracy)

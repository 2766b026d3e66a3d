"""A pruned multi-task network as one packed model, and the network back from the file.

Task t of the packed model is the t-th task of the network. Task 0 writes the backbone's fields
(its nonzero effective weights) and its own head; every later task reads the backbone through
the read rule (its mask is the backbone's nonzeros, it writes nothing there) and writes only its
head. So the backbone is stored once, whatever the number of tasks. The biases of the backbone
are private parameters of task 0 (``backbone.*``), those of a head private parameters of its
task; biases and the layer names are what :func:`load_mtl` needs besides the fields.

- ``bits=None``: raw float32 fields in 64-bit words: the file reproduces the network exactly.
- ``bits=b`` (1..16): each task's written values in each layer are clustered into ``2**b``
  K-Means centroids by bitsub (``TaskLayer(values=, bits=)``), 32-bit words.
"""

from __future__ import annotations

import numpy as np
import torch

import bitsub
from bitsub_torch.mtl.model import MTLNet, build_model

__all__ = ["export_mtl", "file_width", "load_mtl", "packed_metrics"]


def _owner(component: str, tasks: list[str]) -> int:
    return 0 if component == "backbone" else tasks.index(component)


def export_mtl(model: MTLNet, bits: int | None = None) -> bitsub.PackedModel:
    """Pack the effective weights of ``model`` (see the module docstring).

    Raises
    ------
    ValueError
        ``bits`` not None and not in 1..16.
    """
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)
                             or not 1 <= bits <= 16):
        raise ValueError(f"bits must be None (lossless) or an int in 1..16, got {bits!r}")
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
                                             bits=32 if bits is None else bits)
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

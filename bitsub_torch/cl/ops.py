"""Operation counts of a task's sub-network: MACs, FLOPs and bit-operations (TinySubNets' Table 6).

:func:`op_counts` counts one task of a torch model; :func:`ops_report` every task of a run from
its packed model, with the bit-width of the stored field each multiply reads
(:func:`stored_weight_bits`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bitsub.validate import check_int

__all__ = ["OPS_ACTIVATION_BITS", "op_counts", "ops_report", "stored_weight_bits"]

OPS_ACTIVATION_BITS = (4, 8, 16, 32)
"""Activation bit-widths of a run's ``ops`` report (32 = float activations)."""


def _layer_geometry(
    model: nn.Module, task: int, input_shape: tuple[int, ...]
) -> tuple[dict[str, float], float]:
    """Output positions per weight of each task layer, and the MACs of the other layers.

    One forward of a zero batch records every layer's output shape: a conv weight is applied at
    ``prod(out.shape[2:])`` positions, a linear weight once. "Other layers" are the plain
    `nn.Linear` / `nn.Conv2d` modules the forward of ``task`` runs (its head), counted dense.
    """
    masked = model.masked_layers()
    ids = {id(m) for m in masked.values()}
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
        for name, layer in masked.items()
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
        for name in masked
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
    act_bits = check_int(act_bits, "act_bits", 1, 32)
    geometry, _ = _layer_geometry(model, task, tuple(input_shape))
    macs_dense = macs_masked = bops = bops_float = 0.0
    for name, layer in model.masked_layers().items():
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
    act = [check_int(b, "act_bits", 1, 32) for b in act_bits]
    tasks = []
    for t in pm.tasks:
        masks, bits = stored_weight_bits(pm, t)
        geometry, private = _layer_geometry(model, t, tuple(input_shape))
        macs_dense = macs = wmacs = 0.0
        used: dict[str, list[int]] = {}
        for name, layer in model.masked_layers().items():
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

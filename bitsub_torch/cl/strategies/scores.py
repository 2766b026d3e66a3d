"""Score edits at the start of a task, for score-based masks (TinySubNets' options).

WSN and TinySubNets learn one score tensor per task layer, carried from task to task; the
papers' methods leave it as the previous task left it. These functions change it before a task
trains (all are our options, off by default): `admit_free` lets positions still free compete
with reused ones, `redraw_scores` redraws every score, and `dead_inputs` finds the input
features a task never feeds (exactly 0 in all its training images), whose scores TinySubNets'
``skip_dead_inputs`` keeps out of the first layer's top-k.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bitsub_torch.nn.autograd import topk_count, topk_mask_bool

__all__ = ["admit_free", "dead_inputs", "redraw_scores"]


def dead_inputs(x: Any, chunk: int = 4096) -> np.ndarray:
    """Bool per input feature: True where every row of ``x`` is exactly 0 there.

    ``x`` is any row-indexable array of samples (a streaming task too: read ``chunk`` rows at a
    time); each sample is flattened. An empty ``x`` has no evidence: nothing is dead.
    """
    n = len(x)
    live: np.ndarray | None = None
    for start in range(0, n, chunk):
        rows = np.asarray(x[start : min(n, start + chunk)])
        rows = rows.reshape(len(rows), -1)
        seen = np.any(rows != 0, axis=0)
        live = seen if live is None else (live | seen)
    if live is None:
        return np.zeros(0, dtype=bool)
    return ~live


def redraw_scores(scores: torch.Tensor, seed: int) -> None:
    """Overwrite ``scores`` in place with uniform draws in +-1/sqrt(fan_in) (their initial law).

    ``fan_in`` is the size of one output unit's slice (``scores[0].numel()``); the draws come
    from a generator seeded with ``seed`` (torch's global stream is untouched).
    """
    bound = 1.0 / float(np.sqrt(max(1, scores[0].numel())))
    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    fresh = torch.rand(tuple(scores.shape), generator=gen, dtype=torch.float64)
    with torch.no_grad():
        scores.copy_(((2.0 * fresh - 1.0) * bound).to(scores.dtype))


def admit_free(scores: torch.Tensor, free: torch.Tensor, density: float, share: float) -> int:
    """Give free positions at least ``share`` of the top-``density`` mask of ``scores``; in place.

    With ``k = topk_count(n, density)``, ``m = min(round(share * k), free.sum())`` and ``a`` free
    positions already in the top-k mask, the ``m - a`` free positions outside it with the largest
    ``|score|`` exchange magnitudes (each keeps its sign) with the ``m - a`` non-free positions in
    it with the smallest ``|score|`` (the i-th largest incoming with the i-th largest outgoing;
    ties ranked as the top-k ranks them, the lower index first). With distinct magnitudes the
    top-k mask then holds exactly ``max(m, a)`` free positions, and the multiset of magnitudes
    is unchanged. Returns the number of exchanges (0 when none is needed).
    """
    free = free.reshape(-1).to(torch.bool)
    flat = scores.detach().reshape(-1)
    if free.numel() != flat.numel():
        raise ValueError(f"free has {free.numel()} positions, scores {flat.numel()}")
    k = topk_count(flat.numel(), density)
    m = min(int(round(share * k)), int(free.sum()))
    cur = topk_mask_bool(scores, density).reshape(-1).cpu()
    free = free.cpu()
    need = m - int((cur & free).sum())
    if need <= 0:
        return 0
    mag = flat.abs().cpu()
    idx = torch.arange(flat.numel())
    cand_in = idx[free & ~cur]
    cand_out = idx[cur & ~free]
    need = min(need, int(cand_in.numel()), int(cand_out.numel()))
    # largest |score| first among the free outside; ties to the lower index (stable sort)
    inc = cand_in[torch.sort(-mag[cand_in], stable=True).indices[:need]]
    # the lowest-ranked reused positions inside: smallest |score| first, ties to the higher
    # index (the top-k ranks ties to the lower); then listed largest first to pair
    back = cand_out.flip(0)
    out = back[torch.sort(mag[back], stable=True).indices[:need]].flip(0)
    with torch.no_grad():
        dev = flat.device
        inc_d, out_d = inc.to(dev), out.to(dev)
        m_in, m_out = flat[inc_d].abs().clone(), flat[out_d].abs().clone()
        flat[inc_d] = torch.copysign(m_out, flat[inc_d])
        flat[out_d] = torch.copysign(m_in, flat[out_d])
    return need

"""EsaCL's parts: sharpness-aware directional pruning (SDP) and intelligent data selection (IDS).

The seed (arXiv 2401.05667, abstract level only: its body and code are not public) names the
parts; what is below follows the methods it builds on (stochastic Frank-Wolfe pruning, SAM,
SparCL's forgetting-event data selection), and every choice the seed leaves open is a parameter
of `bitsub_torch.cl.strategies.onemodel.EsaCL`.

SDP, per training step:

1. SAM ascent: the gradient ``g`` of the loss on the *support examples* of the batch; every
   trained parameter moves to ``w + rho g / ||g||`` (one global norm, rho 0.05).
2. The gradient there, on the whole batch plus the replay batches, is the step's gradient.
3. Shared weight tensors take a stochastic Frank-Wolfe step over the K-sparse polytope
   (`SFW`): momentum ``m <- mu m + (1 - mu) grad``; the linear minimisation oracle
   (`k_sparse_lmo`) gives ``v = -radius * sign(m)`` on the K entries of largest ``|m|`` and 0
   elsewhere; ``p <- (1 - eta) p + eta v`` with ``eta = lr * ||grad|| / ||p - v||`` clamped to
   [0, 1]. ``radius = tau * ||p_0|| / sqrt(K)`` from the tensor's norm when the run starts
   (a vertex of the polytope then has norm ``tau * ||p_0||``). Every step pulls all weights
   toward the sparse vertex, so most of them drift toward zero while the model trains. The
   polytope may be centred at an *anchor* ``a`` instead of the origin (``p - a`` then moves
   as ``p`` would). Which tasks take this step, and where their polytope is centred, is the
   strategy's choice (``sfw``, ``sfw_anchor``: by default the first task only).
4. At the end of the task: one-shot magnitude pruning of each shared tensor to the target
   sparsity (`magnitude_mask`), with no retraining.

IDS:

- Support-example selection (`ExampleStats.support`): the fraction of the batch whose loss was
  highest the last time it was evaluated at the perturbed point ``w + e`` (unseen examples
  first) feeds the ascent step; the others only the descent step. SAM's extra pass then costs
  that fraction of a pass instead of a whole one.
- Redundant-example elimination (`ExampleStats.drop`): an example is *learned* at the first
  step it is classified correctly and *forgotten* when a later step gets it wrong (a forgetting
  event, Toneva et al.); from a set epoch on, up to a fraction of the task's examples, those
  learned earliest and never forgotten (ties: lowest recorded loss), leave the later epochs.
  Correctness is read from the descent step's forward at ``w + e`` (when SAM is on), the one
  pass every example goes through.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["SFW", "ExampleStats", "k_sparse_lmo", "magnitude_mask", "sam_radius", "top_k_mask"]


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest ``scores`` (ties: the lower flat index first).

    Parameters
    ----------
    scores : torch.Tensor
        Any shape; ``-inf`` entries are chosen last.
    k : int
        Number of entries kept, ``0 <= k <= scores.numel()``.
    """
    n = scores.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n}, got {k}")
    flat = scores.detach().reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    mask[order[:k]] = True
    return mask.reshape(scores.shape)


def k_sparse_lmo(m: torch.Tensor, k: int, radius: float) -> torch.Tensor:
    """The vertex of the K-sparse polytope of ``radius`` minimising ``<m, v>``.

    ``v = -radius * sign(m)`` on the ``k`` entries of largest ``|m|``, 0 elsewhere. It runs
    every training step, so it uses `torch.topk`, which breaks ties between equal ``|m|`` in no
    fixed order; ``<m, v> = -radius * (sum of the k largest |m|)`` whatever the tie-break.
    """
    n = m.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n}, got {k}")
    flat = m.reshape(-1)
    v = torch.zeros_like(flat)
    if k:
        idx = torch.topk(flat.abs(), k, sorted=False).indices
        v[idx] = -radius * torch.sign(flat[idx])
    return v.reshape(m.shape)


def magnitude_mask(weight: torch.Tensor, sparsity: float, allowed: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """One-shot magnitude pruning: keep ``n - round(sparsity * n)`` entries of largest ``|w|``.

    Parameters
    ----------
    weight : torch.Tensor
        The weight tensor (n entries).
    sparsity : float
        Fraction of the tensor to prune, in [0, 1).
    allowed : torch.Tensor, optional
        Bool mask of the positions that may be kept (default all); positions outside are
        chosen only if fewer than the number kept are allowed.

    Returns
    -------
    torch.Tensor
        Bool mask with exactly ``n - round(sparsity * n)`` True entries (ties: lower index).
    """
    n = weight.numel()
    keep = n - int(round(float(sparsity) * n))
    scores = weight.detach().abs().float()
    if allowed is not None:
        scores = torch.where(allowed, scores, torch.full_like(scores, -math.inf))
    return top_k_mask(scores, keep)


def sam_radius(weight: torch.Tensor, k: int, tau: float) -> float:
    """SFW's "initialization" radius: ``tau * ||weight|| / sqrt(k)`` (vertex norm tau ||w||)."""
    return float(tau * weight.detach().float().norm() / math.sqrt(max(k, 1)))


class SFW(torch.optim.Optimizer):
    """Stochastic Frank-Wolfe over a K-sparse polytope per tensor, with momentum.

    Parameters
    ----------
    groups : list of dict
        One group per tensor: ``params`` (the tensor), its ``radius`` and ``k``, and optionally
        ``active`` (0/1 tensor: the positions trained; the gradient is masked by it) and
        ``anchor`` (the polytope's centre, a tensor like the weight; default the origin).
        With an anchor ``a`` the step moves ``d = p - a`` as plain SFW moves ``p``:
        ``p <- a + (1 - eta) d + eta v``, so it shrinks only the movement since ``a``, not
        ``a`` itself.
    lr : float
        Base step size; the step is ``lr * ||grad|| / ||p - v||`` clamped to [0, 1].
    momentum : float
        Momentum ``mu`` of the gradient average fed to the oracle.
    """

    def __init__(self, groups: list[dict], lr: float = 1.0, momentum: float = 0.9) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(groups, {"lr": lr, "momentum": momentum, "active": None,
                                  "anchor": None})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            mu, lr = group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                active = group.get("active")
                if active is not None:
                    grad = grad * active
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(mu).add_(grad, alpha=1.0 - mu)
                v = k_sparse_lmo(buf, group["k"], group["radius"])
                anchor = group.get("anchor")
                d = p if anchor is None else p - anchor
                gap = float((d - v).norm())
                if gap == 0.0:
                    continue
                eta = min(max(lr * float(grad.norm()) / gap, 0.0), 1.0)
                if anchor is None:
                    p.mul_(1.0 - eta).add_(v, alpha=eta)
                else:
                    p.copy_(anchor + (1.0 - eta) * d + eta * v)
        return None


class ExampleStats:
    """Per-example records of one task's training set for support selection and elimination.

    Parameters
    ----------
    n : int
        Number of training examples of the task.
    """

    def __init__(self, n: int) -> None:
        self.first_learned = np.full(n, -1, dtype=np.int64)  # step count when first correct
        self.correct = np.zeros(n, dtype=bool)
        self.forgotten = np.zeros(n, dtype=bool)
        self.loss = np.full(n, np.inf, dtype=np.float64)  # last loss at the perturbed point
        self.dropped = np.zeros(n, dtype=bool)
        self.step = 0

    def update(self, idx: np.ndarray, correct: np.ndarray, loss: np.ndarray) -> None:
        """Record one step's correctness and losses of examples ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        correct = np.asarray(correct, dtype=bool)
        self.forgotten[idx] |= self.correct[idx] & ~correct
        new = correct & (self.first_learned[idx] < 0)
        self.first_learned[idx[new]] = self.step
        self.correct[idx] = correct
        self.loss[idx] = np.asarray(loss, dtype=np.float64)
        self.step += 1

    def support(self, idx: np.ndarray, fraction: float, minimum: int = 1) -> np.ndarray:
        """Positions in the batch ``idx`` of its ``ceil(fraction * len)`` support examples.

        At least ``minimum`` of them (a network with BatchNorm needs two), at most the batch.
        Highest recorded loss first (never-evaluated examples count as infinite loss; ties:
        earlier batch position), returned in batch order.
        """
        count = min(len(idx), max(minimum, math.ceil(fraction * len(idx))))
        order = np.argsort(-self.loss[np.asarray(idx, dtype=np.int64)], kind="stable")
        return np.sort(order[:count])

    def drop(self, fraction: float) -> int:
        """Drop learned, never-forgotten examples, up to ``fraction`` of all; returns the total.

        Those learned earliest go first (ties: lower loss, then lower index).
        """
        n = len(self.dropped)
        room = int(math.floor(fraction * n)) - int(self.dropped.sum())
        cand = np.flatnonzero((self.first_learned >= 0) & ~self.forgotten & ~self.dropped)
        if room > 0 and len(cand):
            order = np.lexsort((cand, self.loss[cand], self.first_learned[cand]))
            self.dropped[cand[order[:room]]] = True
        return int(self.dropped.sum())

    def kept(self, order: np.ndarray) -> np.ndarray:
        """``order`` without the dropped examples."""
        return order[~self.dropped[order]]

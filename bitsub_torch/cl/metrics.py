"""Continual-learning metrics from an accuracy matrix R (NumPy).

``R[i, j]`` is the test accuracy on task j after training task i (T x T, re-tested, never copied
forward). With T tasks:

- ACC: mean of the last row, ``mean_j R[T-1, j]``.
- BWT (backward transfer, Lopez-Paz & Ranzato 2017): ``mean_{j<T-1} (R[T-1, j] - R[j, j])``.
- FWT (forward transfer, Lopez-Paz & Ranzato 2017): ``mean_{j>0} (R[j-1, j] - b_j)``, with
  ``b_j`` the accuracy of the randomly initialised model on task j.
- Forgetting (Chaudhry et al. 2018): ``mean_{j<T-1} (max_{j<=l<T-1} R[l, j] - R[T-1, j])``;
  the max runs over the rows after task j was learned (rows before it hold the untrained
  task's accuracy, which is no knowledge to forget).

With a single task, BWT, FWT and forgetting are 0.0 (no pairs to average).
"""

from __future__ import annotations

import numpy as np

__all__ = ["acc", "bwt", "forgetting", "fwt"]


def _matrix(r: object) -> np.ndarray:
    m = np.asarray(r, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {m.shape}")
    return m


def acc(r: object) -> float:
    """Average accuracy ACC: the mean of the last row of R."""
    m = _matrix(r)
    return float(np.mean(m[-1]))


def bwt(r: object) -> float:
    """Backward transfer BWT (Lopez-Paz & Ranzato 2017): mean_{j<T-1} R[T-1,j] - R[j,j]."""
    m = _matrix(r)
    t = m.shape[0]
    if t == 1:
        return 0.0
    j = np.arange(t - 1)
    return float(np.mean(m[t - 1, j] - m[j, j]))


def fwt(r: object, random_init: object) -> float:
    """Forward transfer FWT (Lopez-Paz & Ranzato 2017): mean_{j>0} R[j-1,j] - b_j.

    Parameters
    ----------
    r : array_like
        The T x T accuracy matrix.
    random_init : array_like
        ``b``: length-T accuracies of the randomly initialised model on each task.
    """
    m = _matrix(r)
    b = np.asarray(random_init, dtype=np.float64)
    t = m.shape[0]
    if b.shape != (t,):
        raise ValueError(f"random_init must have shape ({t},), got {b.shape}")
    if t == 1:
        return 0.0
    j = np.arange(1, t)
    return float(np.mean(m[j - 1, j] - b[j]))


def forgetting(r: object) -> float:
    """Average forgetting (Chaudhry et al. 2018): mean_{j<T-1} max_{j<=l<T-1} R[l,j] - R[T-1,j]."""
    m = _matrix(r)
    t = m.shape[0]
    if t == 1:
        return 0.0
    best = np.array([np.max(m[j : t - 1, j]) for j in range(t - 1)])
    return float(np.mean(best - m[t - 1, : t - 1]))

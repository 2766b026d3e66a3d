"""The KL-divergence gate of TinySubNets: does a new task differ too much from a bank's tasks.

Formula 7 of the TinySubNets appendix, ``D_KL(D_t || D_{t-1}) = P(D_t) * P(D_t) / Q(D_{t-1})``, is
not a divergence as printed (no logarithm, no sum, not zero for identical distributions). We use
sound, finite estimates of the Kullback-Leibler divergence between two tasks' *input feature*
distributions instead, both computed from small sufficient statistics so that a task's summary can
be kept in a checkpoint without keeping its data:

``"histogram"`` (default)
    One histogram over the pooled values of all features of a task (for images: the intensity
    histogram), additively smoothed with ``alpha`` per bin so that every bin has mass and the KL is
    finite: ``p_i = (c_i + alpha) / (n + alpha * bins)``. It is invariant to permutations of the
    features, so permuted-MNIST tasks share a bank (their pixels are the same set of values), while
    tasks from another domain (another data set) are far apart. Bin edges are fixed from the first
    summarised task (its range, widened by 5% each side); values outside fall in the end bins.
``"gaussian"``
    A diagonal Gaussian fitted per feature; the closed-form KL between diagonal Gaussians, averaged
    over features (nats per feature). Sensitive to which feature carries which statistics (a
    permutation of the pixels counts as a shift).

Both are reported in nats. With ``symmetric=True`` (default) the gate uses the Jeffreys form
``(KL(P||Q) + KL(Q||P)) / 2``, so the order of the two tasks does not matter. A bank is represented
by the pooled distribution of its tasks (histogram counts added; Gaussian: the moment-matched
mixture), and a new bank is opened when the new task's divergence from it exceeds ``threshold``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["KLGate", "evenly_spaced_rows", "gaussian_kl", "histogram_kl", "task_divergence"]


def evenly_spaced_rows(x: Any, limit: int) -> np.ndarray:
    """At most ``limit`` samples of ``x``, evenly spaced (deterministic), flattened to float32.

    The sample the gate summarises. The rows are gathered first, so a streaming task is not
    materialised whole.
    """
    if len(x) > limit:
        x = x[np.linspace(0, len(x) - 1, limit).astype(np.int64)]
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(len(x), -1)

_METHODS = ("histogram", "gaussian")


def _as_features(x: Any, name: str = "x") -> np.ndarray:
    """Return a float64 (n, d) array of features from an array of samples."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array of samples, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must hold at least one sample (first axis), got shape {arr.shape}"
        )
    arr = arr.reshape(arr.shape[0], -1).astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf; clean the features before comparing tasks")
    return arr


def _smoothed(counts: np.ndarray, alpha: float) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + alpha) / (counts.sum() + alpha * counts.size)


def histogram_kl(p_counts: Any, q_counts: Any, *, alpha: float = 0.5) -> float:
    """KL(P || Q) in nats between two additively smoothed histograms over the same bins.

    Parameters
    ----------
    p_counts, q_counts : array_like
        Non-negative counts per bin, same length.
    alpha : float
        Pseudo-count added to every bin (> 0), which keeps the divergence finite.

    Returns
    -------
    float
        ``sum_i p_i log(p_i / q_i)`` with ``p = (c + alpha) / (n + alpha * bins)``; 0 when the two
        histograms are proportional.
    """
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape or p.size == 0:
        raise ValueError(
            f"histograms must be 1-D and of the same non-zero length, got {p.shape} and {q.shape}"
        )
    if (p < 0).any() or (q < 0).any() or not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError("histogram counts must be finite and non-negative")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (a pseudo-count per bin), got {alpha}")
    ps, qs = _smoothed(p, alpha), _smoothed(q, alpha)
    return float(max(0.0, np.sum(ps * (np.log(ps) - np.log(qs)))))


def gaussian_kl(
    p_mean: Any, p_var: Any, q_mean: Any, q_var: Any, *, min_var: float = 1e-4
) -> float:
    """KL(P || Q) in nats per feature between two diagonal Gaussians.

    ``0.5 * mean_d( log(vq/vp) + (vp + (mp - mq)^2) / vq - 1 )``; variances are floored at
    ``min_var`` so that constant features (blank image borders) do not make it infinite.
    """
    arrays = (p_mean, p_var, q_mean, q_var)
    mp, vp, mq, vq = (np.asarray(a, dtype=np.float64).ravel() for a in arrays)
    if not (mp.shape == vp.shape == mq.shape == vq.shape) or mp.size == 0:
        raise ValueError("means and variances must have the same non-zero number of features")
    if (vp < 0).any() or (vq < 0).any():
        raise ValueError("variances must be non-negative")
    if not min_var > 0:
        raise ValueError(f"min_var must be > 0, got {min_var}")
    vp, vq = np.maximum(vp, min_var), np.maximum(vq, min_var)
    kl = 0.5 * (np.log(vq / vp) + (vp + (mp - mq) ** 2) / vq - 1.0)
    return float(max(0.0, kl.mean()))


class KLGate:
    """Decide whether a task joins the current bank or opens a new one, by a KL divergence.

    Parameters
    ----------
    threshold : float
        Open a new bank when the divergence (nats; per feature for ``"gaussian"``) between the new
        task and the bank's pooled distribution exceeds this. ``inf`` disables the gate.
    method : {"histogram", "gaussian"}
        The estimate; see the module docstring.
    bins : int
        Histogram bins (``"histogram"`` only).
    alpha : float
        Pseudo-count per histogram bin.
    symmetric : bool
        Use ``(KL(P||Q) + KL(Q||P)) / 2`` (default) instead of ``KL(new || bank)``.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        method: str = "histogram",
        bins: int = 32,
        alpha: float = 0.5,
        symmetric: bool = True,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if not (isinstance(bins, int | np.integer) and bins >= 2):
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0 (inf disables the gate), got {threshold}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.threshold = float(threshold)
        self.method = method
        self.bins = int(bins)
        self.alpha = float(alpha)
        self.symmetric = bool(symmetric)
        self.edges: np.ndarray | None = None

    # -- summaries -------------------------------------------------------------------------------
    def summarize(self, x: Any) -> dict[str, np.ndarray]:
        """Sufficient statistics of one task's samples (first axis = samples)."""
        feats = _as_features(x)
        if self.method == "gaussian":
            return {
                "n": np.array(feats.shape[0], dtype=np.float64),
                "mean": feats.mean(axis=0),
                "var": feats.var(axis=0),
            }
        if self.edges is None:
            lo, hi = float(feats.min()), float(feats.max())
            pad = 0.05 * (hi - lo) if hi > lo else 0.5
            self.edges = np.linspace(lo - pad, hi + pad, self.bins + 1)
        # Out-of-range values go to the end bins (the edges were fixed by the first task).
        idx = np.searchsorted(self.edges, feats.ravel(), side="right") - 1
        idx = np.clip(idx, 0, self.bins - 1)
        counts = np.bincount(idx, minlength=self.bins).astype(np.float64)
        return {"n": np.array(feats.shape[0], dtype=np.float64), "counts": counts}

    def pool(self, summaries: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The summary of the union of several tasks' samples (the bank's distribution)."""
        if not summaries:
            raise ValueError("pool needs at least one summary")
        n = np.array([float(s["n"]) for s in summaries])
        if self.method == "histogram":
            return {"n": np.array(n.sum()), "counts": sum(s["counts"] for s in summaries)}
        w = n / n.sum()
        mean = sum(wi * s["mean"] for wi, s in zip(w, summaries, strict=True))
        second = sum(wi * (s["var"] + s["mean"] ** 2) for wi, s in zip(w, summaries, strict=True))
        return {"n": np.array(n.sum()), "mean": mean, "var": np.maximum(second - mean**2, 0.0)}

    def divergence(self, p: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> float:
        """The divergence between two summaries (symmetric or ``KL(p || q)``)."""
        if self.method == "histogram":
            one = histogram_kl(p["counts"], q["counts"], alpha=self.alpha)
            two = histogram_kl(q["counts"], p["counts"], alpha=self.alpha) if self.symmetric else 0
        else:
            one = gaussian_kl(p["mean"], p["var"], q["mean"], q["var"])
            two = gaussian_kl(q["mean"], q["var"], p["mean"], p["var"]) if self.symmetric else 0
        return 0.5 * (one + two) if self.symmetric else one

    def decide(
        self, summary: dict[str, np.ndarray], bank_summaries: list[dict[str, np.ndarray]]
    ) -> tuple[bool, float]:
        """Return (open a new bank?, divergence from the bank's pooled distribution).

        An empty bank (no summaries) never asks for a new bank.
        """
        if not bank_summaries:
            return False, 0.0
        d = self.divergence(summary, self.pool(bank_summaries))
        return d > self.threshold, d

    def choose_bank(self, scored: list[tuple[float, int]]) -> tuple[int | None, str, float]:
        """The gate's choice among candidate banks: ``(bank, reason, divergence)``.

        ``scored`` holds ``(divergence, bank)`` per candidate, the current bank first, then any
        earlier banks a task may revisit. The candidate of least divergence (ties: the lower
        bank) is taken when it is within the threshold: reason ``"joins"`` for the current
        bank, ``"revisits"`` for an earlier one. Otherwise ``bank`` is None (open a new bank),
        reason ``"kl"``, and the divergence is the current bank's.
        """
        if not scored:
            raise ValueError("choose_bank needs at least one candidate bank")
        divergence, best = min(scored)
        if divergence <= self.threshold:
            return best, ("joins" if best == scored[0][1] else "revisits"), divergence
        return None, "kl", scored[0][0]

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Settings and the fixed histogram edges, for checkpoints."""
        return {
            "threshold": self.threshold,
            "method": self.method,
            "bins": self.bins,
            "alpha": self.alpha,
            "symmetric": self.symmetric,
            "edges": None if self.edges is None else self.edges.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.__init__(  # type: ignore[misc]
            state["threshold"],
            method=state["method"],
            bins=state["bins"],
            alpha=state["alpha"],
            symmetric=state["symmetric"],
        )
        edges = state.get("edges")
        self.edges = None if edges is None else np.asarray(edges, dtype=np.float64)


def task_divergence(
    x_p: Any,
    x_q: Any,
    *,
    method: str = "histogram",
    bins: int = 32,
    alpha: float = 0.5,
    symmetric: bool = True,
) -> float:
    """The divergence between the feature distributions of two sample arrays.

    Histogram edges span both arrays. See :class:`KLGate` for the parameters.
    """
    gate = KLGate(np.inf, method=method, bins=bins, alpha=alpha, symmetric=symmetric)
    p, q = _as_features(x_p, "x_p"), _as_features(x_q, "x_q")
    if method == "histogram":
        gate.summarize(np.concatenate([p.ravel(), q.ravel()])[:, None])  # fixes joint edges
    return gate.divergence(gate.summarize(p), gate.summarize(q))

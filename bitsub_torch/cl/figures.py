"""Figures of a continual-learning run: the accuracy matrix as a heat map (PNG, atomic write)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bitsub.atomic import atomic_path

__all__ = ["plot_accuracy_matrix"]


def plot_accuracy_matrix(matrix: np.ndarray, path: Path, title: str = "") -> None:
    """Save a heat map of the accuracy matrix R (rows: after training task i; columns: task j)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    r = np.asarray(matrix, dtype=float)
    n = r.shape[0]
    size = min(12.0, 1.5 + 0.6 * n)
    fig = Figure(figsize=(size, size * 0.85))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(r), vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(im, ax=ax, label="test accuracy")
    ax.set_xlabel("task j (tested)")
    ax.set_ylabel("after training task i")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if not math.isnan(r[i, j]):
                    ax.text(j, i, f"{100 * r[i, j]:.1f}", ha="center", va="center", fontsize=7,
                            color="white" if r[i, j] < 0.6 else "black")
    ax.set_title(title or "accuracy matrix R")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")

"""Per-task losses and metrics, Delta_T against the dense model, adaptive loss weighting.

Metrics (the NYU-v2 set of AdapMTL, and accuracy for classification):

- segmentation: ``miou`` (mean over classes present in the targets or predictions of the
  intersection over union, from the confusion matrix of the whole split) and ``pixel_acc``;
- normal: angle between predicted (normalised) and true normals in degrees: ``angle_mean``,
  ``angle_median``, ``within_11.25``, ``within_22.5``, ``within_30`` (fractions of pixels);
- depth: ``abs_err`` (mean |d - d*|), ``rel_err`` (mean |d - d*| / d*) and ``delta_1.25``,
  ``delta_1.25^2``, ``delta_1.25^3`` (fraction with max(d/d*, d*/d) below the bound; predicted
  depths are clamped to at least 1e-3 first);
- class: ``accuracy``.

``Delta_T_i = sum over task i's metrics of (-1)^l (M - M_dense) / M_dense x 100``, l = 1 when
lower is better; ``Delta_T`` is the mean over tasks (the definition used by AdapMTL's code).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LOWER_IS_BETTER", "AdaptiveWeights", "delta_t", "predict", "task_loss",
           "task_metrics"]

#: metric -> True when a lower value is better.
LOWER_IS_BETTER = {
    "miou": False, "pixel_acc": False,
    "angle_mean": True, "angle_median": True, "within_11.25": False, "within_22.5": False,
    "within_30": False,
    "abs_err": True, "rel_err": True, "delta_1.25": False, "delta_1.25^2": False,
    "delta_1.25^3": False,
    "accuracy": False,
}


def task_loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Training loss: cross-entropy (class, segmentation), L1 (normal, depth)."""
    if kind in ("class", "segmentation"):
        return F.cross_entropy(out, target)
    if kind == "normal":
        # L1 to the unit normal, not 1 - cosine: a loss blind to the output's scale would let
        # weight decay shrink this head for free, and any magnitude criterion prune it first.
        return F.l1_loss(out, target)
    if kind == "depth":
        return F.l1_loss(out[:, 0], target)
    raise ValueError(f"unknown task kind {kind!r}")


def _to_prediction(kind: str, out: torch.Tensor) -> np.ndarray:
    if kind in ("class", "segmentation"):
        return out.argmax(1).numpy()
    if kind == "normal":
        return F.normalize(out, dim=1, eps=1e-6).numpy()
    return out[:, 0].numpy()


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, tasks: Sequence, batch: int = 256,
            only: str | None = None) -> dict[str, np.ndarray]:
    """Predictions per task (labels, unit normals or depths) for inputs ``x``.

    ``only`` restricts the result to one task (the network still runs every head).
    """
    was = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks if only in (None, t.name)}
    for i in range(0, len(x), batch):
        outs = model(torch.from_numpy(x[i:i + batch]))
        for t in tasks:
            if t.name in parts:
                parts[t.name].append(_to_prediction(t.kind, outs[t.name]))
    model.train(was)
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def task_metrics(kind: str, pred: np.ndarray, target: np.ndarray, classes: int = 0
                 ) -> dict[str, float]:
    """The metrics of one task from its predictions and targets over a whole split."""
    if kind == "class":
        return {"accuracy": float((pred == target).mean())}
    if kind == "segmentation":
        k = classes
        conf = np.bincount(k * target.ravel() + pred.ravel(), minlength=k * k).reshape(k, k)
        tp = np.diag(conf).astype(np.float64)
        union = conf.sum(0) + conf.sum(1) - tp
        seen = union > 0
        return {"miou": float((tp[seen] / union[seen]).mean()),
                "pixel_acc": float(tp.sum() / conf.sum())}
    if kind == "normal":
        cos = np.clip((pred.astype(np.float64) * target).sum(1), -1.0, 1.0)
        ang = np.degrees(np.arccos(cos)).ravel()
        return {"angle_mean": float(ang.mean()), "angle_median": float(np.median(ang)),
                "within_11.25": float((ang < 11.25).mean()),
                "within_22.5": float((ang < 22.5).mean()), "within_30": float((ang < 30).mean())}
    if kind == "depth":
        p = np.maximum(pred.astype(np.float64), 1e-3).ravel()
        g = target.astype(np.float64).ravel()
        ratio = np.maximum(p / g, g / p)
        return {"abs_err": float(np.abs(p - g).mean()),
                "rel_err": float((np.abs(p - g) / g).mean()),
                "delta_1.25": float((ratio < 1.25).mean()),
                "delta_1.25^2": float((ratio < 1.25 ** 2).mean()),
                "delta_1.25^3": float((ratio < 1.25 ** 3).mean())}
    raise ValueError(f"unknown task kind {kind!r}")


def delta_t(metrics: dict[str, dict[str, float]], dense: dict[str, dict[str, float]]
            ) -> tuple[float, dict[str, float]]:
    """``(Delta_T, {task: Delta_T_i})`` of ``metrics`` against the dense model's, in %."""
    per = {}
    for task, ms in metrics.items():
        total = 0.0
        for name, m in ms.items():
            ref = dense[task][name]
            sign = -1.0 if LOWER_IS_BETTER[name] else 1.0
            # A zero reference (e.g. no pixel within 11.25 degrees) has no relative change.
            total += 0.0 if ref == 0 else sign * (m - ref) / abs(ref) * 100.0
        per[task] = total
    return float(np.mean(list(per.values()))), per


class AdaptiveWeights:
    """AdapMTL's task-loss weights from the fluctuation of each task's loss.

    After ``start`` iterations, ``r_t = |L_t(i-1) - L_t(i)| / L_t(i)`` goes into a FIFO of
    ``window`` values per task, and ``w_t`` is its mean, renormalised so that the weights sum to
    the number of tasks; before that (or with ``enabled=False``) every weight is 1.
    """

    def __init__(self, tasks: Sequence[str], start: int, window: int, enabled: bool = True) -> None:
        if start < 0 or window < 1:
            raise ValueError(f"start must be >= 0 and window >= 1, got {start}, {window}")
        self.tasks = list(tasks)
        self.start, self.window, self.enabled = int(start), int(window), bool(enabled)
        self.last: dict[str, float] = {}
        self.fifo = {t: deque(maxlen=self.window) for t in self.tasks}

    def update(self, iteration: int, losses: dict[str, float]) -> dict[str, float]:
        """Record this iteration's scalar losses; return the weights to use for them."""
        if self.enabled and iteration >= self.start:
            for t in self.tasks:
                if t in self.last and losses[t] > 0:
                    self.fifo[t].append(abs(self.last[t] - losses[t]) / losses[t])
        self.last = dict(losses)
        return self.weights()

    def weights(self) -> dict[str, float]:
        """The current weights (sum = number of tasks)."""
        if not self.enabled or not all(self.fifo[t] for t in self.tasks):
            return dict.fromkeys(self.tasks, 1.0)
        raw = {t: float(np.mean(self.fifo[t])) for t in self.tasks}
        total = sum(raw.values())
        if total <= 0:
            return dict.fromkeys(self.tasks, 1.0)
        return {t: len(self.tasks) * v / total for t, v in raw.items()}

    def state_dict(self) -> dict:
        """For checkpoints."""
        return {"last": dict(self.last), "fifo": {t: list(q) for t, q in self.fifo.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.last = dict(state["last"])
        for t in self.tasks:
            self.fifo[t] = deque(state["fifo"][t], maxlen=self.window)

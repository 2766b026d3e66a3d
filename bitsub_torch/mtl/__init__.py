"""Multi-task learning: AdapMTL and its baselines on a shared backbone with per-task heads.

``bitsub-mtl`` (:mod:`bitsub_torch.mtl.cli`) trains a strategy and writes the packed model; from
Python: :func:`build_model`, :class:`MTLConfig`, :func:`train_mtl`, :func:`export_mtl`,
:func:`load_mtl`, :func:`packed_metrics`.
"""

from __future__ import annotations

from bitsub_torch.mtl.export import export_mtl, load_mtl, packed_metrics
from bitsub_torch.mtl.model import MTLNet, SoftThreshold, build_model
from bitsub_torch.mtl.objectives import AdaptiveWeights, delta_t, task_metrics
from bitsub_torch.mtl.trainer import STRATEGIES, MTLConfig, evaluate, train_mtl

__all__ = ["STRATEGIES", "AdaptiveWeights", "MTLConfig", "MTLNet", "SoftThreshold",
           "build_model", "delta_t", "evaluate", "export_mtl", "load_mtl", "packed_metrics",
           "task_metrics", "train_mtl"]

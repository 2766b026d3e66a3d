"""One-model strategies for class-incremental learning: ER, DER++, EsaCL, prune-then-retrain.

These are trained by `bitsub_torch.cl.rehearsal.RehearsalTrainer` (one head over all classes,
class-IL and task-IL re-tested after every task), not by the task-incremental `Trainer`. Each is
a configuration the trainer reads: the replay loss, whether the model is pruned, and for EsaCL
the SAM / Frank-Wolfe / data-selection settings. See `bitsub_torch.cl.esacl` for the algorithms.

How the sparsity mask evolves between tasks (the seed does not say; parameters of the classes):

- ``esacl``: task 0 trains all weights; at its end each shared tensor is pruned once by magnitude
  to the target sparsity. Task t > 0 trains on its mask plus a regrown set: the ``regrow``
  fraction of each tensor with the largest dense-gradient magnitude among the pruned positions,
  on the task's first batch (regrown weights start at 0). At its end the whole trained set is
  pruned again, so positions kept for earlier tasks stay prunable and new ones can enter.
- ``prune-retrain``: every task trains all weights (pruned ones restart at 0), is pruned by
  magnitude to the target sparsity, then fine-tuned on its mask for ``retrain_epochs`` epochs.
- ``er`` / ``derpp``: dense, never pruned.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bitsub_torch.cl.replay import derpp_loss, er_loss
from bitsub_torch.cl.strategies.base import Strategy

__all__ = ["DERpp", "ER", "EsaCL", "OneModelStrategy", "PruneRetrain"]


def _check_fraction(value: object, name: str, *, closed: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        span = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{name} must be a number in {span}, got {value!r}")
    return float(value)


class OneModelStrategy(Strategy):
    """A method that trains ONE model over the whole stream (class-incremental learning).

    It is trained by `bitsub_torch.cl.rehearsal.RehearsalTrainer`, not by the task-incremental
    `Trainer`: the network has a single head over all classes, task 0 of the network is the
    model, and its task-0 mask is the model's sparsity mask. Subclasses set the replay loss and
    whether, how and when the model is pruned.

    Parameters
    ----------
    buffer : int
        Replay buffer slots (reservoir sampling; 0 turns replay off).
    replay_batch : int, optional
        Buffer examples per draw (default: the training batch size).
    alpha, beta : float
        DER++'s logit-matching and label weights (unused by ER).
    """

    name = "one-model"
    one_model = True
    replay = "er"
    sparse = False

    def __init__(self, buffer: int = 500, replay_batch: int | None = None, alpha: float = 0.1,
                 beta: float = 0.5, sparsity: float | None = None) -> None:
        super().__init__()
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 0:
            raise ValueError(f"buffer must be an int >= 0, got {buffer!r}")
        if replay_batch is not None and (
            isinstance(replay_batch, bool) or not isinstance(replay_batch, int) or replay_batch < 1
        ):
            raise ValueError(f"replay_batch must be an int >= 1, got {replay_batch!r}")
        for name, v in (("alpha", alpha), ("beta", beta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if sparsity is not None:
            sparsity = _check_fraction(sparsity, "sparsity")
            if not self.sparse and sparsity > 0:
                raise ValueError(
                    f"{self.name} trains a dense model: drop --sparsity, or use esacl or "
                    "prune-retrain for a sparse one"
                )
        self.buffer = int(buffer)
        self.replay_batch = replay_batch
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.sparsity = 0.0 if sparsity is None else float(sparsity)

    def replay_loss(self, forward, x, y, buffer, seen, batch, rng):
        """The training loss of one step (see `er_loss` / `derpp_loss`)."""
        if self.replay == "derpp":
            return derpp_loss(forward, x, y, buffer, seen, batch, rng, self.alpha, self.beta)
        return er_loss(forward, x, y, buffer, seen, batch, rng)

    def export_layers(self, model: nn.Module, task: int) -> dict[str, dict]:
        """The one model: its mask (all True when dense) is read and written by packed task 0."""
        if task != 0:
            raise ValueError(f"a one-model strategy exports a single packed task, not {task}")
        out = {}
        codebooks = getattr(self, "codebooks", None) or {}
        for name, layer in model.masked_layers().items():
            mask = layer.task_mask(0).cpu().numpy()
            if name in codebooks:  # Algorithm 1's codes (rehearsal_run.adaptive_codes)
                out[name] = {"mask": mask, "write": mask.copy(), **codebooks[name]}
                continue
            with torch.no_grad():
                values = (layer.weight.detach() * torch.from_numpy(mask).to(layer.weight))
            out[name] = {"mask": mask, "write": mask.copy(),
                         "values": values.cpu().numpy().astype(np.float32)}
        return out


class ER(OneModelStrategy):
    """Dense experience replay (reservoir buffer, CE on stream and buffer batches)."""

    name = "er"
    replay = "er"


class DERpp(OneModelStrategy):
    """Dense DER++ (reservoir buffer of inputs, labels and logits)."""

    name = "derpp"
    replay = "derpp"


class PruneRetrain(OneModelStrategy):
    """Dense training with replay, magnitude pruning at each task's end, then retraining.

    The baseline EsaCL's "no retraining" is measured against.

    Parameters
    ----------
    sparsity : float
        Target fraction of zero weights in every shared tensor after each task (default 0.9).
    retrain_epochs : int
        Fine-tuning epochs on the pruned mask after each task's pruning (default 1).
    replay : {"derpp", "er"}
        Replay loss (default DER++, as EsaCL).
    **kwargs
        Buffer and replay settings of `OneModelStrategy`.
    """

    name = "prune-retrain"
    sparse = True

    def __init__(self, sparsity: float = 0.9, retrain_epochs: int = 1, replay: str = "derpp",
                 **kwargs) -> None:
        super().__init__(sparsity=sparsity, **kwargs)
        if isinstance(retrain_epochs, bool) or not isinstance(retrain_epochs, int) \
                or retrain_epochs < 0:
            raise ValueError(f"retrain_epochs must be an int >= 0, got {retrain_epochs!r}")
        if replay not in ("er", "derpp"):
            raise ValueError(f"replay must be 'er' or 'derpp', got {replay!r}")
        self.retrain = int(retrain_epochs)
        self.replay = replay

    def retrain_epochs(self, task: int) -> int:  # noqa: D102
        return self.retrain


class EsaCL(OneModelStrategy):
    """EsaCL: sharpness-aware directional pruning + intelligent data selection, no retraining.

    Parameters
    ----------
    sparsity : float
        Target fraction of zero weights in every shared tensor after each task (default 0.9).
    replay : {"derpp", "er"}
        Replay loss (default DER++, the SparCL set-up EsaCL is compared in).
    sam : bool
        Take the SAM ascent step (default True); ``rho`` its radius (0.05).
    sfw : bool or "first"
        Train the shared weights with stochastic Frank-Wolfe during every task (True), during
        the first task only ("first", the default: the dense task, before the first pruning),
        or never (False: the trainer's optimizer throughout). ``sfw_lr`` (0.1),
        ``sfw_momentum`` (0.9), ``k`` (fraction of the trained positions in a vertex, 0.05)
        and ``tau`` (5.0: a vertex has norm tau x the tensor's initial norm) set it.
        Why the first task only: Frank-Wolfe's step ``p <- (1 - eta) p + eta v`` pulls every
        trained weight toward a vertex of the polytope, and on a later task that erases what
        the kept weights hold (``sfw_anchor``). Why tau 5: the radius sets the scale of the
        weights Frank-Wolfe leaves, and the later tasks' optimizer moves weights by absolute
        steps, so small weights forget faster (class-IL validation ACC, splitfmnist seed 3:
        tau 1 75.9%, 2.5 76.8%, 5 78.4%, 8 78.4%, 15 76.7%; ``"sfw": false`` 78.1%).
    sfw_anchor : {"origin", "task"}
        With ``"sfw": true``, the centre of a later task's polytope: the origin (plain SFW,
        default) or the weights the task starts from (`SFW` with an anchor: the step shrinks
        only the task's own movement, and ``tau_task`` (0.3) x the norm of those weights is
        the norm of a vertex, so it bounds how far the task moves). Measured (class-IL
        validation ACC, seed 3): tau_task 0.1 30.5%, 0.3 49.0% (the later tasks either
        barely move or overwrite the earlier classes), against 78.4% with "first".
    regrow : float
        Fraction of each tensor regrown at the start of every task after the first (0.1).
    ids : bool
        Master switch of data selection (default True); ``sse`` and ``ere`` switch its two
        parts. ``support_fraction`` (0.5) of each batch feeds the ascent step; from epoch
        ``ere_start`` (1, i.e. the second) up to ``drop_fraction`` (0.6) of a task's examples
        may be dropped.
    **kwargs
        Buffer and replay settings of `OneModelStrategy`.
    """

    name = "esacl"
    sparse = True

    def __init__(self, sparsity: float = 0.9, replay: str = "derpp", sam: bool = True,
                 rho: float = 0.05, sfw: bool | str = "first", sfw_lr: float = 0.1,
                 sfw_momentum: float = 0.9, k: float = 0.05, tau: float = 5.0,
                 sfw_anchor: str = "origin", tau_task: float = 0.3,
                 regrow: float = 0.1, ids: bool = True, sse: bool = True, ere: bool = True,
                 support_fraction: float = 0.5, drop_fraction: float = 0.6, ere_start: int = 1,
                 **kwargs) -> None:
        super().__init__(sparsity=sparsity, **kwargs)
        if replay not in ("er", "derpp"):
            raise ValueError(f"replay must be 'er' or 'derpp', got {replay!r}")
        if sfw not in (True, False, "first"):
            raise ValueError(f"sfw must be true, false or \"first\", got {sfw!r}")
        if sfw_anchor not in ("origin", "task"):
            raise ValueError(f"sfw_anchor must be \"origin\" or \"task\", got {sfw_anchor!r}")
        for name, v in (("sam", sam), ("ids", ids), ("sse", sse), ("ere", ere)):
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be true or false, got {v!r}")
        for name, v in (("rho", rho), ("sfw_lr", sfw_lr), ("tau", tau), ("tau_task", tau_task)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if isinstance(ere_start, bool) or not isinstance(ere_start, int) or ere_start < 0:
            raise ValueError(f"ere_start must be an int >= 0, got {ere_start!r}")
        self.replay = replay
        self.sam = sam
        self.rho = float(rho)
        self.sfw = sfw
        self.sfw_lr = float(sfw_lr)
        self.sfw_momentum = _check_fraction(sfw_momentum, "sfw_momentum")
        self.sfw_anchor = sfw_anchor
        self.tau_task = float(tau_task)
        self.k = _check_fraction(k, "k", closed=True)
        if self.k == 0:
            raise ValueError("k must be > 0 (the fraction of positions in a Frank-Wolfe vertex)")
        self.tau = float(tau)
        self.regrow = _check_fraction(regrow, "regrow", closed=True)
        self.sse = ids and sse
        self.ere = ids and ere
        self.support_fraction = _check_fraction(support_fraction, "support_fraction",
                                                closed=True)
        if self.support_fraction == 0:
            raise ValueError("support_fraction must be > 0")
        self.drop_fraction = _check_fraction(drop_fraction, "drop_fraction")
        self.ere_start = ere_start
        self.radius: dict[str, float] = {}

    def uses_sfw(self, task: int) -> bool:
        """Whether task ``task`` trains its shared weights with stochastic Frank-Wolfe."""
        return self.sfw is True or (self.sfw == "first" and task == 0)

    def state_dict(self) -> dict:  # noqa: D102
        return {**super().state_dict(), "radius": dict(self.radius)}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        super().load_state_dict(state)
        self.radius = {str(k): float(v) for k, v in state.get("radius", {}).items()}

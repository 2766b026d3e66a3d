"""Replay for one-model continual learning: a reservoir buffer, and the ER and DER++ losses.

- `ReservoirBuffer`: a fixed-size buffer filled by reservoir sampling (Vitter's algorithm R):
  the n-th example of the stream replaces a uniformly chosen slot with probability size / n, so
  at any time every example seen so far is in the buffer with the same probability. It stores the
  input, the global class label and the logits the model gave the example when it was stored
  (DER++ replays them). Its memory is counted in `nbytes`.
- ER (experience replay): ``CE(f(x), y) + CE(f(x_b), y_b)`` with ``(x_b, y_b)`` drawn from the
  buffer.
- DER++ (Buzzega et al. 2020): ``CE(f(x), y) + alpha * MSE(f(x_b1), z_b1) + beta * CE(f(x_b2),
  y_b2)``, two independent draws from the buffer; ``z`` are the stored logits. Defaults alpha
  0.1, beta 0.5 (the values the SparCL set-up uses).

The buffer's draws come from a NumPy generator the caller passes, so a run is reproducible and
resumable.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ReservoirBuffer", "derpp_loss", "er_loss"]


class ReservoirBuffer:
    """A reservoir-sampled replay buffer of (input, label, logits).

    Parameters
    ----------
    size : int
        Number of slots (0 disables replay).
    input_shape : tuple of int
        Shape of one input.
    num_classes : int
        Width of the stored logits.
    """

    def __init__(self, size: int, input_shape: tuple[int, ...], num_classes: int) -> None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"buffer size must be an int >= 0, got {size!r}")
        self.size = int(size)
        self.x = torch.zeros((self.size, *input_shape), dtype=torch.float32)
        self.y = torch.zeros(self.size, dtype=torch.int64)
        self.logits = torch.zeros((self.size, int(num_classes)), dtype=torch.float32)
        self.seen = 0

    def __len__(self) -> int:
        return min(self.seen, self.size)

    @property
    def nbytes(self) -> int:
        """Bytes the buffer holds (inputs, labels, logits)."""
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, self.logits))

    def slots(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Where the next ``count`` stream examples go: a slot, or -1 if not kept (Algorithm R)."""
        out = np.full(count, -1, dtype=np.int64)
        for i in range(count):
            n = self.seen + i  # examples seen before this one
            if n < self.size:
                out[i] = n
            else:
                j = int(rng.integers(0, n + 1))
                if j < self.size:
                    out[i] = j
        return out

    def add(
        self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, rng: np.random.Generator
    ) -> None:
        """Offer a batch of stream examples to the reservoir (later ones overwrite earlier)."""
        if self.size == 0:
            self.seen += len(y)
            return
        where = self.slots(len(y), rng)
        keep = np.flatnonzero(where >= 0)
        if len(keep):
            # a later example of the same batch that lands on the same slot wins, as in a loop
            slot = torch.from_numpy(where[keep])
            src = torch.from_numpy(keep)
            self.x[slot] = x.detach().cpu()[src]
            self.y[slot] = y.detach().cpu()[src]
            self.logits[slot] = logits.detach().cpu().float()[src]
        self.seen += len(y)

    def sample(self, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """``count`` distinct stored examples (all of them if fewer): ``(x, y, logits)``."""
        n = len(self)
        idx = torch.from_numpy(rng.choice(n, size=min(count, n), replace=False).astype(np.int64))
        return self.x[idx], self.y[idx], self.logits[idx]

    def state_dict(self) -> dict:
        """Tensors and counters (checkpointable with ``weights_only=True``)."""
        return {"x": self.x.clone(), "y": self.y.clone(), "logits": self.logits.clone(),
                "seen": int(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict`."""
        if tuple(state["x"].shape) != tuple(self.x.shape):
            raise ValueError(
                f"buffer checkpoint holds {tuple(state['x'].shape)}, this run's buffer is "
                f"{tuple(self.x.shape)}: resume with the same --buffer and scenario"
            )
        self.x.copy_(state["x"])
        self.y.copy_(state["y"])
        self.logits.copy_(state["logits"])
        self.seen = int(state["seen"])


def _seen_logits(logits: torch.Tensor, seen: int) -> torch.Tensor:
    # The head grows over the classes seen so far: later classes do not compete in the softmax.
    return logits[:, :seen]


def er_loss(
    forward, x: torch.Tensor, y: torch.Tensor, buffer: ReservoirBuffer, seen: int,
    batch: int, rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Experience replay: CE on the stream batch plus CE on a buffer batch.

    Parameters
    ----------
    forward : callable
        ``forward(x) -> logits`` of the model (all classes).
    x, y : torch.Tensor
        The stream batch (global labels).
    buffer : ReservoirBuffer
        The replay buffer.
    seen : int
        Number of classes seen so far (the head's live width).
    batch : int
        Buffer examples per step.
    rng : numpy.random.Generator
        Draws the buffer batch.

    Returns
    -------
    loss, stream_logits, replayed, stream_losses
        The loss, the stream batch's logits (all classes, for the buffer and data selection),
        the number of buffer examples replayed, and the per-example stream losses (detached).
    """
    logits = forward(x)
    loss = F.cross_entropy(_seen_logits(logits, seen), y, reduction="none")
    total = loss.mean()
    replayed = 0
    if len(buffer) and batch:
        bx, by, _ = buffer.sample(batch, rng)
        total = total + F.cross_entropy(_seen_logits(forward(bx), seen), by)
        replayed = len(by)
    return total, logits, replayed, loss.detach()


def derpp_loss(
    forward, x: torch.Tensor, y: torch.Tensor, buffer: ReservoirBuffer, seen: int,
    batch: int, rng: np.random.Generator, alpha: float = 0.1, beta: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """DER++: CE on the stream batch + alpha MSE to stored logits + beta CE on buffer labels.

    Arguments and returns as `er_loss`; the two buffer batches are independent draws.
    """
    logits = forward(x)
    loss = F.cross_entropy(_seen_logits(logits, seen), y, reduction="none")
    total = loss.mean()
    replayed = 0
    if len(buffer) and batch:
        bx, _, bz = buffer.sample(batch, rng)
        total = total + alpha * F.mse_loss(forward(bx), bz)
        bx2, by2, _ = buffer.sample(batch, rng)
        total = total + beta * F.cross_entropy(_seen_logits(forward(bx2), seen), by2)
        replayed = len(bx) + len(bx2)
    return total, logits, replayed, loss.detach()


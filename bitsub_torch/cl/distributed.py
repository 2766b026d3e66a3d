"""Data-parallel training over torch.distributed: DistributedDataParallel, one shard per rank.

Every communication goes through torch's own engine (``torch.distributed`` and
`torch.nn.parallel.DistributedDataParallel`): gloo on the CPU, NCCL when the ranks have GPUs.
`Distributed.from_environment` joins the process group that ``torchrun`` describes in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``).

The sampler: every rank builds the same global batch sequence (the trainer's seeded order) and
takes its contiguous share of each global batch (`Distributed.shard`). Each rank's loss is its
share's summed cross-entropy divided by the global batch size, times the world size, so DDP's
average of the ranks' gradients is exactly the gradient of the mean loss over the global batch:
a run at global batch B on N ranks trains like one process at batch B (up to the order of
floating-point sums). BatchNorm layers see their rank's share (DDP's default), and rank 0's
running statistics are broadcast at every forward.

How the ranks agree on every decision (the trainer calls these hooks):

- **top-k masks** (WSN, TinySubNets' score masks; PackNet's and Ada-QPacknet's magnitude masks):
  every rank computes them from weights and scores that DDP keeps identical (same start, same
  averaged gradients); then `Distributed.sync` broadcasts rank 0's model state (weights, scores,
  masks, owners, norms: every tensor of its ``state_dict``, bit for bit) after ``prune`` and after
  ``after_task``, so rank 0 decides;
- **lottery-ticket search** (Ada-QPacknet), **post-pruning**, **bit-width search** (Algorithm 1)
  and the **KL gate** (TinySubNets): every rank runs them on its own full copy of the task's data
  with local evaluation (no collective inside, so no rank can wait on another), and rank 0's
  outcome is broadcast: its model state after ``prune``, its model and strategy state (banks,
  fields, codebooks, bit-widths, gate summaries) after ``after_task``;
- **early stopping** (`bitsub_torch.cl.protocol`): rank 0's validation score is broadcast at
  every evaluation (`Distributed.agree`), so every rank takes the same branch and the same number
  of steps.

At each sync the ranks first all-gather a SHA-256 of their own state; rank 0's state is broadcast
when some rank differs (equal hashes mean equal states, so nothing would change), and
`Distributed.diverged` counts those syncs (0 in every run measured: the ranks reach the same
decisions on their own, and the broadcast only guarantees it).

Evaluation: each rank evaluates every task on its own (the scenarios' test splits are small).
Rank 0 alone writes checkpoints and the run's files; on resume every rank reads the same
checkpoint (``--out`` must be on a file system all ranks see).

`launch` starts the ranks on this machine for ``bitsub-train --nproc N`` (torch's elastic
launcher, what ``torchrun --standalone`` runs).
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import io
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["Distributed", "check_nproc", "choose_backend", "launch", "packed_digest"]


def packed_digest(pm: Any) -> str:
    """SHA-256 of the file `bitsub.PackedModel.save` writes for ``pm`` (deterministic bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.h5"
        pm.save(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()


def _state_bytes(model: nn.Module) -> tuple[list[torch.Tensor], torch.Tensor]:
    # Every tensor of the state_dict as raw bytes, concatenated (bool, int16, float32 alike).
    tensors = [t for t in model.state_dict(keep_vars=False).values() if t.numel()]
    views = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    flat = torch.cat(views) if views else torch.zeros(0, dtype=torch.uint8)
    return tensors, flat


def _strategy_bytes(strategy: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(strategy.state_dict(), buf)
    return buf.getvalue()


def choose_backend(cuda_available: bool, device_count: int, local_rank: int,
                   ) -> tuple[str, torch.device]:
    """The backend and device of a rank: NCCL on ``cuda:LOCAL_RANK`` when CUDA is there, else gloo.

    Ranks beyond the GPUs of the machine share them round robin (``local_rank % device_count``).
    """
    if cuda_available and device_count > 0:
        return "nccl", torch.device("cuda", int(local_rank) % int(device_count))
    return "gloo", torch.device("cpu")


def check_nproc(nproc: Any, distributed: Distributed | None, one_model: bool) -> int:
    """``bitsub-train --nproc``: a count >= 1, for a task-incremental strategy, torchrun's count."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be an int >= 1, got {nproc!r}")
    if one_model:
        raise ValueError("--nproc and torchrun are for the task-incremental strategies; the "
                         "one-model strategies (esacl, er, derpp, prune-retrain) train in one "
                         "process")
    if distributed is not None and nproc not in (1, distributed.world_size):
        raise ValueError(f"--nproc {nproc} but torchrun started {distributed.world_size} "
                         "processes: drop --nproc under torchrun")
    return nproc


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``torchrun --standalone --nproc-per-node nproc -m bitsub_torch.train argv``.

    Through torch's launcher API (`torch.distributed.launcher.api.elastic_launch`, what torchrun
    runs), so that a rank's failure ends in that rank's own one-line error and its exit status
    (2 for a user error, 130 for Ctrl-C), without torchrun's report of the failed worker.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun; --threads sets torch's
    # The ranks print their own errors; the agent's log lines about a failed worker would repeat
    # them with process ids.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=int(nproc),
                          run_id=f"bitsub-{uuid.uuid4().hex[:12]}", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", "bitsub_torch.train", *argv)
    except ChildFailedError as exc:
        code = exc.get_first_failure()[1].exitcode
        return code if code > 0 else 1
    except (KeyboardInterrupt, SignalException):
        return 130
    return 0


@dataclass
class Distributed:
    """The place of this process in a torch.distributed process group.

    Parameters
    ----------
    rank, world_size : int
        As torch.distributed numbers them.
    device : torch.device
        Where this rank's model and batches live (``cuda:LOCAL_RANK`` under NCCL).
    backend : str
        "gloo" or "nccl".
    """

    rank: int
    world_size: int
    device: torch.device
    backend: str
    diverged: int = 0
    syncs: int = 0
    packed: list = field(default_factory=list)
    _ddp: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_environment(cls, timeout_s: float = 1800.0) -> Distributed:
        """Join the process group torchrun describes: NCCL on GPUs if there are any, else gloo."""
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        backend, device = choose_backend(cuda, torch.cuda.device_count() if cuda else 0, local)
        if backend == "nccl":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group(
                backend, timeout=datetime.timedelta(seconds=timeout_s),
                **({"device_id": device} if backend == "nccl" else {}),
            )
        return cls(dist.get_rank(), dist.get_world_size(), device, backend)

    def close(self) -> None:
        """Leave the process group, once every rank has called this (a barrier first).

        The DDP wrappers go first: a reducer freed after the group was destroyed (when this
        object is) would hold the group's last reference, and its teardown was seen to block.
        """
        self._ddp.clear()
        gc.collect()
        if dist.is_initialized():
            self.barrier()
            dist.destroy_process_group()
        gc.collect()

    @property
    def writer(self) -> bool:
        """Whether this rank writes the run's files (rank 0)."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """``world_size``, ``backend``, the sync counts and the ranks' packed-file SHA-256s."""
        return {"world_size": self.world_size, "backend": self.backend, "syncs": self.syncs,
                "diverged_syncs": self.diverged, "packed_sha256": list(self.packed)}

    def same_packed(self, pm: Any) -> list[str]:
        """All-gather every rank's SHA-256 of the file of ``pm``; raise if any differs."""
        self.packed = self.gather(packed_digest(pm))
        if len(set(self.packed)) != 1:
            raise RuntimeError(f"the ranks exported different packed models: {self.packed}")
        return self.packed

    # ------------------------------------------------------------------ training
    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (built once per model; broadcasts rank 0's state).

        ``find_unused_parameters``: a task's forward uses its own head and, for some strategies,
        no scores; the other parameters get no gradient. DDP's broadcast at construction makes
        every rank start from rank 0's weights.
        """
        key = id(model)
        if key not in self._ddp:
            ids = None if self.device.type == "cpu" else [self.device]
            # Masks, mask flags and owners (bool, int16: gloo cannot broadcast them) change only
            # at the decisions `sync` covers; DDP broadcasts the other buffers (BatchNorm's).
            fixed = [name for name, buf in model.named_buffers()
                     if buf.dtype in (torch.bool, torch.int16, torch.int8, torch.uint8)]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, fixed)
            self._ddp[key] = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=True)
        return self._ddp[key]

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """The contiguous share of a global batch's indices this rank trains on (sizes +- 1)."""
        return np.array_split(indices, self.world_size)[self.rank]

    def loss(self, logits: torch.Tensor, target: torch.Tensor, batch: int) -> torch.Tensor:
        """The loss of this rank: DDP's average of them is the global batch's mean loss."""
        return F.cross_entropy(logits, target, reduction="sum") * (self.world_size / batch)

    # ------------------------------------------------------------------ agreement
    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier(**({"device_ids": [self.device.index]} if self.backend == "nccl" else {}))

    def sync(self, model: nn.Module, strategy: Any = None) -> bool:
        """Give every rank rank 0's model state (and strategy state); return whether all agreed.

        Every rank first hashes its own state; the hashes are all-gathered and a difference from
        rank 0 is counted in `diverged`. Then rank 0's state overwrites the others' bit for bit.
        """
        tensors, flat = _state_bytes(model)
        blob = _strategy_bytes(strategy) if strategy is not None else b""
        digest = hashlib.sha256(flat.cpu().numpy().tobytes() + blob).hexdigest()
        agreed = len(set(self.gather(digest))) == 1
        self.syncs += 1
        self.diverged += 0 if agreed else 1
        if agreed or self.world_size == 1:
            return agreed
        flat = flat.to(self.device)
        dist.broadcast(flat, src=0)
        if self.rank != 0:
            start = 0
            with torch.no_grad():
                for t in tensors:
                    size = t.numel() * t.element_size()
                    chunk = flat[start : start + size].clone()  # aligned for the dtype view
                    t.copy_(chunk.view(t.dtype).reshape(t.shape))
                    start += size
        if strategy is not None:
            blob = self.agree(blob)
            if self.rank != 0:
                # Strategy state is host-side bookkeeping (NumPy arrays saved as tensors).
                state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                strategy.load_state_dict(state)
        return agreed

    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None

"""Data-parallel ``bitsub-train``: ``torchrun --nproc-per-node N -m bitsub_torch.train ARGS``.

ARGS are ``bitsub-train``'s. Each process torchrun starts joins the process group (gloo on the
CPU, NCCL on GPUs: `bitsub_torch.cl.distributed`), trains its share of every global batch of
``--batch-size`` under DistributedDataParallel, and agrees with the others on every mask
decision; rank 0 alone writes checkpoints, ``config.json``, ``results.json`` (with
``config.world_size`` and a ``distributed`` section: backend, syncs, and every rank's SHA-256 of
the packed file it exported), ``model.h5`` and the figure. Killed and rerun with the same
command, the run resumes from rank 0's last checkpoint.

``bitsub-train --nproc N ARGS`` runs the same command for you (one machine). Without torchrun's
environment, ``python -m bitsub_torch.train ARGS`` is plain ``bitsub-train ARGS``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from bitsub_torch.cpukernels import pin_cpu_kernels

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bitsub_torch.train`` (under torchrun or alone)."""
    from bitsub_torch.cli import train_main

    if argv is None:  # this process is the command: pinned before the process group's first op
        pin_cpu_kernels()

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return train_main(argv)
    from bitsub_torch.cl.distributed import Distributed

    try:
        distributed = Distributed.from_environment()
    except (RuntimeError, ValueError) as exc:
        line = " ".join(str(exc).split()) or type(exc).__name__
        print(f"bitsub-train: error: cannot join the process group ({line})", file=sys.stderr)
        return 2
    code = train_main(argv, distributed=distributed)
    if code == 0:  # every rank got here: leave together (after a failure, torchrun ends them)
        distributed.close()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

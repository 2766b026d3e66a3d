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
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["launch", "main"]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``torchrun --standalone --nproc-per-node nproc -m bitsub_torch.train argv``.

    Returns the exit status of torchrun (that of the failed rank: 2 for a user error).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={int(nproc)}", "-m", "bitsub_torch.train", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # --threads sets torch's threads per process
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached the ranks too
        try:
            proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bitsub_torch.train`` (under torchrun or alone)."""
    from bitsub_torch.cli import train_main

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return train_main(argv)
    from bitsub_torch.cl.distributed import Distributed

    try:
        distributed = Distributed.from_environment()
    except (RuntimeError, ValueError) as exc:
        line = " ".join(str(exc).split()) or type(exc).__name__
        print(f"bitsub-train: error: cannot join the process group ({line})", file=sys.stderr)
        return 2
    try:
        return train_main(argv, distributed=distributed)
    finally:
        distributed.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

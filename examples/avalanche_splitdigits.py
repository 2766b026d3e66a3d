"""A bitsub strategy on an Avalanche benchmark, reported through Avalanche's EvaluationPlugin.

Needs ``avalanche-lib`` (not a dependency of bitsub; see the README's "Streaming data and
Avalanche"). The benchmark is split digits (scikit-learn's 8x8 digits, 5 experiences x 2 classes,
one task label per experience), built with Avalanche's ``nc_benchmark`` from tensors so that
nothing downloads::

    python examples/avalanche_splitdigits.py [--strategy wsn] [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from bitsub_torch.avalanche import run_stream
from bitsub_torch.cl.strategies import get_strategy
from bitsub_torch.nn.models import mlp


def digits_benchmark(experiences: int = 5):
    """Split digits as an Avalanche task-incremental benchmark (fixed 80/20 split)."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    test = np.zeros(len(y), bool)
    test[np.random.default_rng(0).permutation(len(y))[: len(y) // 5]] = True
    train_set, test_set = TensorDataset(x[~test], y[~test]), TensorDataset(x[test], y[test])
    train_set.targets, test_set.targets = y[~test].tolist(), y[test].tolist()
    return nc_benchmark(train_set, test_set, experiences, task_labels=True, shuffle=False,
                        fixed_class_order=list(range(10)))


def main(argv: list[str] | None = None) -> int:
    """Train on the benchmark and print both views of the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategy", default="wsn", help="a task-incremental bitsub strategy")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    benchmark = digits_benchmark()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 loggers=[TextLogger(sys.stdout)])
    torch.manual_seed(args.seed)
    model = mlp((64,), 2, len(benchmark.train_stream), width=64)
    run = run_stream(model, get_strategy(args.strategy), benchmark, evaluator=evaluator,
                     epochs=args.epochs, seed=args.seed)
    print("bitsub accuracy matrix (row i: after experience i):")
    print(np.array2string(run.results.accuracy_matrix, precision=3))
    print(f"ACC {run.results.acc:.4f}  BWT {run.results.bwt:+.4f}")
    final = run.metrics["Top1_Acc_Stream/eval_phase/test_stream/Task004"][1][-1]
    print(f"Avalanche Top1_Acc_Stream after the last experience: {final:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

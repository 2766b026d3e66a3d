"""Per-task figures of a finished TinySubNets run, and its capacity after tasks 0..n-1.

Usage::

    PYTHONPATH=. python bench/tsn_upto.py RUN_DIR --scenario pfmnist --seed 0 \
        --data-dir FMNIST_DIR [--tasks 6]

Prints, per task: the validation accuracy read from ``model.h5``
(``bitsub_torch.cli.evaluate_file(..., split="val")``), the trained (unquantized) validation
accuracy from the strategy's log in the last checkpoint, the bit-widths, the positions the task
wrote per layer, and the capacity of tasks 0..t in % of the dense float32 model as the table
counts it (``bitsub_torch.experiments.summarize``): fields and codebooks as stored
(``bitsub.model.capacity.capacity(pm, upto=t)``) plus each mask at the smallest of its three
codings (alone, in the context of the bank's previous mask, of the union of the bank's earlier
masks). Then the means over the first ``--tasks`` tasks.
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import torch

import bitsub
from bitsub.codecs.maskcodec import encode_mask
from bitsub.model.capacity import capacity
from bitsub_torch.cli import evaluate_file


def best_mask_bits(pm: bitsub.PackedModel, t: int) -> int:
    """Bits of task t's masks, each at the smallest of the table's three codings."""
    earlier = [u for u in pm.tasks if u < t and pm.bank(u) == pm.bank(t)]
    total = 0
    for name in pm.layers:
        mask = pm.mask(t, name)
        sizes = [8 * len(encode_mask(mask))]
        if earlier:
            sizes.append(8 * len(encode_mask(mask, context=pm.mask(earlier[-1], name))))
            if len(earlier) > 1:
                union = np.logical_or.reduce([pm.mask(u, name) for u in earlier])
                sizes.append(8 * len(encode_mask(mask, context=union)))
        total += min(sizes)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--tasks", type=int, default=None, help="count tasks 0..N-1 (default: all)")
    args = ap.parse_args()
    pm = bitsub.load(f"{args.run_dir}/model.h5")
    tasks = [t for t in pm.tasks if args.tasks is None or t < args.tasks]
    val = evaluate_file(f"{args.run_dir}/model.h5", args.scenario, seed=args.seed,
                        data_dir=args.data_dir, split="val")["accuracy"]
    last = sorted(glob.glob(f"{args.run_dir}/checkpoints/task_*.pt"))[-1]
    log = torch.load(last, weights_only=False)["strategy"]["log"]
    dense = capacity(pm).dense_bits
    masks = 0
    trained = []
    pct = 0.0
    for t in tasks:
        cap = capacity(pm, upto=t)
        masks += best_mask_bits(pm, t)
        pct = 100.0 * (cap.bits["fields"] + cap.bits["codebooks"] + masks) / dense
        entry = log[t]
        trained.append(entry["val_trained"])
        print(f"task {t}: val {100 * val[t]:.2f}  trained {100 * entry['val_trained']:.2f}  "
              f"bits {entry['bits']}  written {entry['written']}  "
              f"fields {100 * cap.bits['fields'] / dense:.2f}%  masks {100 * masks / dense:.2f}%  "
              f"capacity {pct:.2f}%")
    n = len(tasks)
    print(f"tasks 0-{n - 1}: val {100 * np.mean(val[:n]):.2f}  trained "
          f"{100 * np.mean(trained):.2f}  capacity {pct:.2f}%")


if __name__ == "__main__":
    main()

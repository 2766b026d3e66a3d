"""Which images a one-model run's BatchNorm statistics should be gathered over (a diagnostic).

Usage::

    PYTHONPATH=. python bench/bn_shift_one_model.py RUN_DIR --data-dir FMNIST_DIR

For a finished class-incremental run of ``bitsub-train --strategy esacl|er|derpp|prune-retrain``
(its scenario, seed, model, width and batch size from ``RUN_DIR/config.json``), loads the last
checkpoint (model and replay buffer) and prints the final model's class-IL and task-IL accuracy
(mean over the tasks, validation and test) with

- the statistics the run kept;
- the statistics gathered again (`bitsub_torch.nn.norm_statistics.gather`, a plain average in
  batches of the run's batch size) over: the last task's training images (a seeded sample of
  2,048), the replay buffer, the buffer and that sample together, and 2,048 training images of
  every task seen (which the method does not hold), each with dropout off and on.

Since the one-model trainer gathers over the buffer with dropout off after every task, a run made
since reads the same on the first line and on "buffer, dropout off"; a run made before reads what
the training's moving average gave (README, One model).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import torch

from bitsub_torch.cl.rehearsal import RehearsalTrainer, class_ranges
from bitsub_torch.cl.strategies import get_strategy
from bitsub_torch.data.scenarios import get_scenario
from bitsub_torch.nn import models, norm_statistics

SAMPLE = 2048


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = json.loads((args.run / "config.json").read_text())
    sc = get_scenario(cfg["scenario"], tasks=cfg["tasks"], seed=cfg["seed"],
                      data_dir=args.data_dir, val_fraction=cfg["val_fraction"])
    _, seen = class_ranges(sc)
    last = sorted(glob.glob(str(args.run / "checkpoints" / "task_*.pt")))[-1]
    state = torch.load(last, weights_only=True)
    upto = int(state["task"])
    net = models.build(cfg["model"], sc, cfg["width"], num_classes=seen[-1], num_tasks=1)
    net.load_state_dict(state["model"])
    # the run's own re-test (RehearsalTrainer.test_rows) reads the accuracies
    trainer = RehearsalTrainer(net, get_strategy(cfg["strategy"], **cfg["strategy_args"]), sc,
                               batch_size=int(cfg["batch_size"]), progress=False)
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    buffer = state["buffer"]
    held = buffer["x"][: min(int(buffer["seen"]), int(buffer["x"].shape[0]))].numpy()
    current = sc.tasks[upto].x_train
    rows = np.sort(np.random.default_rng(upto).permutation(len(current))[:SAMPLE])
    sample = np.asarray(current[rows], dtype=np.float32)
    every = np.concatenate([np.asarray(sc.tasks[j].x_train[:SAMPLE], dtype=np.float32)
                            for j in range(upto + 1)])
    sets = {"the last task's 2,048 images": sample, "buffer": held,
            "buffer + the last task's 2,048": np.concatenate([held, sample]),
            "2,048 of every task seen": every}

    def show(name: str) -> None:
        r = {}
        for split in ("val", "test"):
            ci, ti = trainer.test_rows(upto, split)
            r[f"class-IL {split}"] = 100 * float(np.mean(ci[: upto + 1]))
            r[f"task-IL {split}"] = 100 * float(np.mean(ti[: upto + 1]))
        print(f"{name}: " + "  ".join(f"{k} {v:.2f}%" for k, v in r.items()), flush=True)

    show("statistics kept")
    for name, x in sets.items():
        for dropout in (False, True):
            net.load_state_dict(kept)
            torch.manual_seed(0)  # the dropout masks, so that the figure repeats
            norm_statistics.gather(net, x, 0, batch_size=int(cfg["batch_size"]), dropout=dropout)
            show(f"{name}, dropout {'on' if dropout else 'off'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

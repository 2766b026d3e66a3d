"""Whether a finished run's BatchNorm statistics fit the network it evaluates (a diagnostic).

Usage::

    PYTHONPATH=. python bench/bn_shift.py RUN_DIR --data-dir FMNIST_DIR [--tasks 2 3] [--images N]

Loads the last checkpoint of a ``bitsub-train`` run (its scenario, seed, model and width from
``RUN_DIR/config.json``) and prints, per task, the validation accuracy of the torch model

- as evaluated (each task's BatchNorm running statistics, dropout off);
- with those statistics gathered again over one pass of the task's training images, dropout
  off (a plain average, ``momentum=None``);
- gathered again the same way with dropout on, as training gathers them;
- with ``--images N``: gathered with dropout off over a seeded sample of N training images
  only (how many the trainer uses is `bitsub_torch.cl.trainer.NORM_IMAGES`).

The seconds each dropout-off gather took follow its accuracy (one torch thread, as the
trainer's runs use).

Where the second is far above the first and the third, the statistics that training gathered
through dropout do not fit the network evaluated without it (README, CNN rows).
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitsub_torch.data.scenarios import get_scenario
from bitsub_torch.nn import models, norm_statistics


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray, task: int) -> float:
    """Eval-mode accuracy of ``task`` on (x, y)."""
    net.eval()
    with torch.no_grad():
        pred = net(torch.as_tensor(np.asarray(x, dtype=np.float32)), task).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--tasks", type=int, nargs="*", default=None)
    p.add_argument("--images", type=int, default=None,
                   help="also gather (dropout off) over a seeded sample of this many images")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = json.loads((args.run / "config.json").read_text())
    sc = get_scenario(cfg["scenario"], tasks=cfg["tasks"], seed=cfg["seed"],
                      data_dir=args.data_dir, val_fraction=cfg["val_fraction"])
    net = models.build(cfg["model"], sc, cfg["width"])
    last = sorted(glob.glob(str(args.run / "checkpoints" / "task_*.pt")))[-1]
    state = torch.load(last, weights_only=False)["model"]
    for task in args.tasks if args.tasks is not None else range(len(sc.tasks)):
        data = sc.tasks[task]
        net.load_state_dict(state)
        as_run = accuracy(net, data.x_val, data.y_val, task)
        t0 = time.perf_counter()
        norm_statistics.gather(net, data.x_train, task, dropout=False)
        full_s = time.perf_counter() - t0
        off = accuracy(net, data.x_val, data.y_val, task)
        net.load_state_dict(state)
        torch.manual_seed(task)  # the dropout masks, so that the figure repeats
        norm_statistics.gather(net, data.x_train, task, dropout=True)
        on = accuracy(net, data.x_val, data.y_val, task)
        line = (f"task {task}: val {100 * as_run:.2f}%  statistics regathered, dropout off "
                f"{100 * off:.2f}% ({full_s:.2f} s)  dropout on {100 * on:.2f}%")
        if args.images is not None:
            net.load_state_dict(state)
            n = len(data.y_train)
            rows = np.sort(np.random.default_rng(task).permutation(n)[: args.images])
            t0 = time.perf_counter()
            norm_statistics.gather(net, data.x_train, task, batch_size=128, rows=rows)
            sample_s = time.perf_counter() - t0
            line += (f"  dropout off, {len(rows)} images "
                     f"{100 * accuracy(net, data.x_val, data.y_val, task):.2f}% ({sample_s:.2f} s)")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

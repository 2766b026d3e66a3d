"""Probe of TinySubNets' bit-width search: what each uniform bit-width costs, per task.

Runs ``bitsub_torch.cli.train`` (TinySubNets, the given scenario, tasks and strategy arguments)
and, at the end of every task, before the strategy's own search, quantizes the task's new
weights at every uniform bit-width b = 1..8 (K-Means, as the search does) and records:

- ``agreement``: share of the search's pool (at most ``agreement_samples`` training images,
  evenly spaced) whose predicted class is unchanged against the unquantized sub-network;
- ``train_acc``: accuracy on the same pool, with its labels (unquantized: ``train_acc_float``);
- ``val_acc``: accuracy on the task's validation split (unquantized: ``val_acc_float``).

Nothing of the run changes (the probe only reads the model between training and the search).
One JSON line per task goes to ``--probe-out``. Usage::

    PYTHONPATH=. python bench/tsn_probe.py --scenario pfmnist --tasks 1 --seed 0 \
        --data-dir FMNIST_DIR --out /tmp/probe_run --probe-out /tmp/probe.jsonl \
        --strategy-args '{"density": 0.2}'
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bitsub.quant.kmeans import quantize
from bitsub_torch.cl.strategies.base import val_split
from bitsub_torch.cl.strategies.quantized import QuantizedStrategy
from bitsub_torch.cl.strategies.tinysubnets import TinySubNets


def _predict(model, x, idx, task):
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), 1024):
            xb = np.ascontiguousarray(x[idx[s : s + 1024]], dtype=np.float32)
            out.append(model(torch.from_numpy(xb), task).argmax(dim=1))
    model.train(was)
    return torch.cat(out).numpy()


def install(path: str) -> None:
    """Wrap TinySubNets.after_task / QuantizedStrategy._quantize to write the probe lines."""
    original_after = TinySubNets.after_task
    original_quantize = QuantizedStrategy._quantize

    def after_task(self, task, model, data, evaluate):
        self._probe = (data, evaluate)
        try:
            return original_after(self, task, model, data, evaluate)
        finally:
            self._probe = None

    def _quantize(self, task, model, write, judge, split, baseline):
        probe = getattr(self, "_probe", None)
        if probe is not None:
            t0 = time.perf_counter()
            data, evaluate = probe
            cur = self._current(task)
            layers = model.masked_layers()
            names = [n for n in layers if bool(write[n].any())]
            n = len(data.y_train)
            idx = np.unique(np.linspace(0, n - 1, min(n, self.agreement_samples)).astype(np.int64))
            y = np.asarray(data.y_train)[idx]
            ref = _predict(model, data.x_train, idx, task)
            row = {"task": task, "written": {k: int(write[k].sum()) for k in names},
                   "train_acc_float": float((ref == y).mean()),
                   "val_acc_float": float(evaluate(model, task, val_split(data))), "bits": {}}
            for b in range(1, 9):
                for k in names:
                    layer = layers[k]
                    v = layer.weight.detach()[write[k]].cpu().numpy().astype(np.float32)
                    cb, codes = quantize(v, b, method=self.kmeans_method)
                    dense = torch.where(cur.trainable[k], layer.weight.detach(),
                                        cur.frozen[k]).clone()
                    dense[write[k]] = torch.from_numpy(cb[codes].astype(np.float32).reshape(-1))
                    layer.set_values_override(dense)
                try:
                    pred = _predict(model, data.x_train, idx, task)
                    val = float(evaluate(model, task, val_split(data)))
                finally:
                    for k in names:
                        layers[k].set_values_override(None)
                row["bits"][b] = {"agreement": float((pred == ref).mean()),
                                  "train_acc": float((pred == y).mean()), "val_acc": val}
            row["probe_s"] = time.perf_counter() - t0
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return original_quantize(self, task, model, write, judge, split, baseline)

    TinySubNets.after_task = after_task
    QuantizedStrategy._quantize = _quantize


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", default="pfmnist")
    p.add_argument("--tasks", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--probe-out", required=True)
    p.add_argument("--strategy-args", default="{}")
    p.add_argument("--score-lr", type=float, default=None)
    a = p.parse_args()
    install(a.probe_out)
    from bitsub_torch.cli import train

    t0 = time.perf_counter()
    train(strategy="tinysubnets", scenario=a.scenario, out=a.out, tasks=a.tasks, seed=a.seed,
          data_dir=a.data_dir, strategy_args=json.loads(a.strategy_args), score_lr=a.score_lr,
          progress=False)
    state = torch.load(f"{a.out}/checkpoints/task_{a.tasks - 1:03d}.pt", weights_only=False)
    log = state["strategy"]["log"]
    with open(a.probe_out, "a") as f:
        f.write(json.dumps({"run": a.out, "wall_s": time.perf_counter() - t0,
                            "timings": state["timings"],
                            "log": {int(t): {k: v[k] for k in ("val_trained", "val_stored",
                                                               "agreement", "bits", "written")}
                                    for t, v in log.items()}}) + "\n")


if __name__ == "__main__":
    main()

"""``bitsub-train`` / ``bitsub-eval`` for the one-model methods (esacl, er, derpp, prune-retrain).

``bitsub-train --strategy esacl --scenario splitfmnist --setting class-il --buffer 500
--sparsity 0.9 --out D`` trains one network over the split scenario with
`bitsub_torch.cl.rehearsal.RehearsalTrainer`, exports it and writes to ``D``:

- ``results.json``: ``class_il`` and ``task_il`` (each ``accuracy_matrix``, ``acc``, ``bwt``),
  ``accuracy_matrix`` / ``acc`` / ``bwt`` of the ``--setting`` chosen (the headline; both are
  always measured), ``sparsity`` (fraction of the shared weights pruned after each task),
  ``zero_fraction`` (fraction read as exactly 0), ``retrain_epochs`` (total), ``train_flops``
  and ``train_flops_dense`` (see the trainer's docstring for how they are counted),
  ``examples_processed``, ``examples_dropped`` (per task, by data selection), ``memory``,
  ``validation`` (class-IL and task-IL accuracy of the final model on each task's validation
  split, and their means: what the defaults were chosen on),
  ``capacity`` of the packed file, ``export`` (class-IL and task-IL accuracy of every task
  re-tested from ``model.h5`` with bitsub's NumPy forward, and the fraction of test samples where
  file and torch predict the same class), ``config``, ``timings``;
- ``model.h5``: the final model as ONE packed task: its mask (the pruned positions are not
  stored), raw float32 fields (lossless), ``--export-bits b`` K-Means codes, or ``--export-bits
  auto``: the bit-width Algorithm 1 (`bitsub.adaptive_bitwidth`) finds on the class-IL
  validation accuracy, within 1 point of the float model (`adaptive_codes`); the head is the
  task's private parameter;
- ``accuracy_matrix.png``: the matrix of the chosen setting.

``bitsub-eval D/model.h5 --scenario splitfmnist --seed S --setting class-il`` re-tests from the
file alone. The number of tasks is read from the head's width (the first tasks of the scenario
whose classes fill it).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bitsub.atomic import write_bytes

__all__ = [
    "SETTINGS",
    "adaptive_codes",
    "evaluate_one_model_file",
    "file_accuracies",
    "format_one_model_report",
    "refuse_one_model_file",
    "train_one_model",
]

SETTINGS = ("class-il", "task-il")


def _safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return _safe(v.tolist())
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(float(v)) else float(v)
    return v


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=float)
    return float(np.mean(v[~np.isnan(v)])) if np.any(~np.isnan(v)) else math.nan


def _check_setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    return setting


def file_accuracies(pm: Any, tasks: list, split: str = "test", batch_size: int = 1024
                    ) -> tuple[list[float], list[float], list[np.ndarray]]:
    """Class-IL and task-IL accuracy of every task from a one-model packed file (NumPy only).

    Returns the two per-task lists and each task's class-IL predictions (global class ids).
    """
    from bitsub_torch.cl.rehearsal import accuracies, class_ranges

    class _Sc:
        pass

    sc = _Sc()
    sc.tasks = tasks
    classes, seen = class_ranges(sc)
    ci, ti, preds = [], [], []
    for j, data in enumerate(tasks):
        x = np.ascontiguousarray(getattr(data, f"x_{split}"), dtype=np.float32)
        y = getattr(data, f"y_{split}")
        z = np.concatenate([np.zeros((0, seen[-1]), np.float32)] + [
            np.asarray(pm.forward(0, x[i: i + batch_size]))
            for i in range(0, len(x), batch_size)])
        if z.shape[1] != seen[-1]:
            raise ValueError(f"the file's head has {z.shape[1]} outputs, the tasks tested "
                             f"{seen[-1]} classes")
        a, b = accuracies(z, y, classes[j], seen[-1])
        ci.append(a)
        ti.append(b)
        preds.append(np.argmax(z, axis=1))
    return ci, ti, preds


def adaptive_codes(trainer: Any, delta: float = 0.01, max_bits: int = 8) -> tuple[Any, float]:
    """Algorithm 1 over the final model's kept weights; hands the codebooks to the strategy.

    The bit-width (one for all shared layers) is the smallest whose K-Means codes keep the
    class-IL validation accuracy (all tasks, all classes) within ``delta`` of the float model's.
    The model's weights are restored afterwards; export then stores those codebooks and codes.
    Returns the `bitsub.AdaptiveResult` and the float model's validation accuracy.
    """
    import torch

    import bitsub

    layers = trainer.model.masked_layers()
    masks = {n: layer.task_mask(0) for n, layer in layers.items()}
    original = {n: layer.weight.detach().clone() for n, layer in layers.items()}
    kept = {n: original[n][masks[n]].cpu().numpy() for n in layers}
    last = len(trainer.scenario.tasks) - 1

    def evaluate(q: dict[str, np.ndarray]) -> float:
        with torch.no_grad():
            for n, layer in layers.items():
                w = original[n].clone()
                w[masks[n]] = torch.from_numpy(np.asarray(q[n], dtype=np.float32)).to(w)
                layer.weight.copy_(w)
        return float(np.nanmean(trainer.test_rows(last, "val")[0]))

    try:
        base = evaluate(kept)
        res = bitsub.adaptive_bitwidth(kept, evaluate, baseline=base, delta=delta,
                                       max_bits=max_bits)
    finally:
        with torch.no_grad():
            for n, layer in layers.items():
                layer.weight.copy_(original[n])
    trainer.strategy.codebooks = {
        n: {"codebook": res.codebooks[n], "codes": np.asarray(res.codes[n]).reshape(-1),
            "bits": int(res.bits[n])} for n in layers
    }
    return res, base


def train_one_model(
    *, strategy: str, scenario: str, out: str | os.PathLike, setting: str = "class-il",
    buffer: int | None = None, sparsity: float | None = None, tasks: int | None = None,
    epochs: int = 1, seed: int = 0, data_dir: str | os.PathLike | None = None,
    export_bits: int | None = None, batch_size: int = 32, lr: float = 1e-3,
    optimizer: str = "adam", model: str | None = None, width: float | None = None,
    strategy_args: dict[str, Any] | None = None, val_fraction: float = 0.1, threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a one-model strategy, export, re-test from the file, write the run's files.

    Keyword arguments as ``bitsub-train``; ``buffer`` and ``sparsity`` (None: the strategy's
    default) join ``strategy_args``. Every argument is checked before anything is written.
    Returns the dict written to ``out/results.json``.
    """
    import torch

    import bitsub
    from bitsub_torch.cl.figures import plot_accuracy_matrix
    from bitsub_torch.cl.rehearsal import RehearsalTrainer, class_ranges
    from bitsub_torch.cl.strategies import get_strategy
    from bitsub_torch.data.scenarios import get_scenario
    from bitsub_torch.export import export
    from bitsub_torch.nn import models

    _check_setting(setting)
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    args = dict(strategy_args or {})
    for key, value in (("buffer", buffer), ("sparsity", sparsity)):
        if value is not None:
            if key in args and args[key] != value:
                raise ValueError(f"--{key} {value} and --strategy-args {key}={args[key]} differ: "
                                 "give it once")
            args[key] = value
    strat = get_strategy(strategy, **args)
    if not getattr(strat, "one_model", False):
        raise ValueError(f"{strategy} is a task-incremental strategy: train_one_model runs "
                         "esacl, er, derpp and prune-retrain")
    if export_bits is not None and export_bits != "auto" and (
        isinstance(export_bits, bool) or not isinstance(export_bits, int)
        or not (1 <= export_bits <= 16 or export_bits == 32)
    ):
        raise ValueError(f"--export-bits must be 1..16, 32 (raw float32) or auto (Algorithm 1), "
                         f"got {export_bits!r}")
    torch.set_num_threads(threads)
    out = Path(out)
    sc = get_scenario(scenario, tasks=tasks, seed=seed, data_dir=data_dir,
                      val_fraction=val_fraction)
    _, seen = class_ranges(sc)
    model_name, width = models.default_network(scenario, sc.input_shape, model, width)
    if model_name == "resnet18":
        raise ValueError("resnet18's skip connections have no packed export yet: use --model "
                         "mlp, alexnet or tinynet")
    config = {"strategy": strategy, "strategy_args": args, "scenario": scenario,
              "setting": setting, "tasks": len(sc.tasks), "epochs": epochs, "seed": seed,
              "export_bits": export_bits, "batch_size": batch_size, "lr": lr,
              "optimizer": optimizer, "model": model_name, "width": width,
              "val_fraction": val_fraction,
              "data_dir": None if data_dir is None else str(data_dir)}
    torch.manual_seed(seed)
    net = models.build(model_name, sc, width, num_classes=seen[-1], num_tasks=1)
    trainer = RehearsalTrainer(net, strat, sc, epochs=epochs, batch_size=batch_size, lr=lr,
                               optimizer=optimizer, seed=seed,
                               checkpoint_dir=out / "checkpoints", progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        if previous != _safe(config):
            changed = sorted(k for k in set(previous) | set(config)
                             if previous.get(k) != _safe(config).get(k))
            raise ValueError(f"{out} holds a run with other arguments ({', '.join(changed)} "
                             "differ): run the same command to resume it, or choose another --out")
    else:
        write_bytes(config_path, json.dumps(_safe(config), indent=2).encode())

    res = trainer.run()
    # the final model on the validation split (what settings are chosen on; empty: null)
    val_ci, val_ti = trainer.test_rows(len(sc.tasks) - 1, "val")
    t0 = time.perf_counter()
    adaptive = None
    if export_bits == "auto":
        found, base = adaptive_codes(trainer)
        adaptive = {"bits": found.bits, "val_class_il": found.accuracy, "val_float": base,
                    "history": [[b, a] for b, a in found.history]}
    pm = export(net, strat, bits=None if export_bits in (32, "auto") else export_bits)
    pm.save(out / "model.h5")
    pm = bitsub.load(out / "model.h5")
    file_ci, file_ti, preds = file_accuracies(pm, sc.tasks)
    agreement = []
    for j, data in enumerate(sc.tasks):
        torch_pred = np.argmax(trainer.logits(data.x_test), axis=1)
        agreement.append(float(np.mean(torch_pred == preds[j])))
    file_time = time.perf_counter() - t0
    cap = pm.capacity()
    head = res["class_il"] if setting == "class-il" else res["task_il"]
    report = {
        "setting": setting,
        "accuracy_matrix": head["accuracy_matrix"], "acc": head["acc"], "bwt": head["bwt"],
        **{k: v for k, v in res.items() if k not in ("timings", "trainer")},
        "capacity": {"percent": cap.percent, "bits": dict(cap.bits),
                     "private_percent": cap.private_percent, "dense_bits": cap.dense_bits},
        "export": {"bits": export_bits if export_bits is not None else "float32",
                   "adaptive": adaptive,
                   "class_il": file_ci, "task_il": file_ti,
                   "acc_class_il": float(np.mean(file_ci)),
                   "acc_task_il": float(np.mean(file_ti)), "agreement": agreement},
        "validation": {"class_il": val_ci, "task_il": val_ti,
                       "acc_class_il": _nanmean(val_ci), "acc_task_il": _nanmean(val_ti)},
        "config": {**config, "trainer": res["trainer"]},
        "timings": {**res["timings"], "export_and_file_eval": file_time},
    }
    report = _safe(report)
    write_bytes(out / "results.json", json.dumps(report, indent=2).encode())
    matrix = np.array([[np.nan if v is None else v for v in row]
                       for row in head["accuracy_matrix"]])
    plot_accuracy_matrix(matrix, out / "accuracy_matrix.png",
                         f"{strategy} on {scenario} ({setting}): ACC "
                         f"{100 * (report['acc'] or 0):.2f}%")
    return report


def format_one_model_report(report: dict[str, Any]) -> str:
    """A plain-text summary of a one-model run."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    ci, ti, ex = report["class_il"], report["task_il"], report["export"]
    r_ci = np.array(ci["accuracy_matrix"], dtype=float)
    r_ti = np.array(ti["accuracy_matrix"], dtype=float)
    n = r_ci.shape[0]
    lines = [f"{'task':>4}  {'class-IL':>9}  {'file':>7}  {'task-IL':>8}  {'file':>7}  "
             f"{'same pred.':>10}"]
    for j in range(n):
        lines.append(f"{j:>4}  {100 * r_ci[-1, j]:>8.2f}%  {100 * ex['class_il'][j]:>6.2f}%  "
                     f"{100 * r_ti[-1, j]:>7.2f}%  {100 * ex['task_il'][j]:>6.2f}%  "
                     f"{100 * ex['agreement'][j]:>9.2f}%")
    mem = report["memory"]
    lines += [
        "",
        f"class-IL ACC {pct(ci['acc'])} BWT {pct(ci['bwt'])}   task-IL ACC {pct(ti['acc'])} "
        f"BWT {pct(ti['bwt'])}   (from file: {pct(ex['acc_class_il'])} / "
        f"{pct(ex['acc_task_il'])})",
        "sparsity after each task: " + ", ".join(f"{100 * s:.2f}%" for s in report["sparsity"]),
        f"retrain epochs {report['retrain_epochs']}   training FLOPs {report['train_flops']:.4g} "
        f"({report['train_flops'] / max(report['train_flops_dense'], 1):.3f} of the same steps "
        f"dense)   examples processed {report['examples_processed']:,}",
        f"memory: peak RSS {mem['peak_rss_bytes'] / 2**20:.0f} MiB; weights "
        f"{mem['weights_bytes']:,} B dense, {mem['sparse_weights_bytes']:,} B as value+index "
        f"pairs, optimizer state {mem['optimizer_state_bytes']:,} B, "
        f"buffer {mem['buffer_bytes']:,} B   capacity {report['capacity']['percent']:.2f}% of "
        "the dense float32 model",
    ]
    return "\n".join(lines)


def evaluate_one_model_file(
    path: str | os.PathLike, scenario: str, *, setting: str = "class-il", seed: int = 0,
    data_dir: str | os.PathLike | None = None, split: str = "test", val_fraction: float = 0.1,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Class-IL or task-IL accuracy of every task from a one-model packed file (NumPy only)."""
    import bitsub
    from bitsub_torch.data.scenarios import get_scenario

    _check_setting(setting)
    pm = bitsub.load(path)
    if len(pm.tasks) != 1:
        raise ValueError(f"{path} holds {len(pm.tasks)} packed tasks (a task-incremental "
                         "model): drop --setting to re-test it task by task")
    width = int(pm.private(0)["head.weight"].shape[0]) if "head.weight" in pm.private(0) else 0
    sc = get_scenario(scenario, seed=seed, data_dir=data_dir, val_fraction=val_fraction)
    total, count = 0, 0
    for data in sc.tasks:
        if total >= width:
            break
        total += len(data.classes)
        count += 1
    if total != width:
        raise ValueError(f"the head of {path} has {width} outputs, which no first tasks of "
                         f"{scenario} fill: is this file from that scenario?")
    ci, ti, _ = file_accuracies(pm, sc.tasks[:count], split=split, batch_size=batch_size)
    accs = ci if setting == "class-il" else ti
    return _safe({"model": str(path), "scenario": scenario, "seed": seed, "split": split,
                  "setting": setting, "accuracy": accs, "acc": float(np.mean(accs)),
                  "class_il": ci, "task_il": ti})


def refuse_one_model_file(path: str | os.PathLike, scenario: str, *, seed: int = 0,
                          data_dir: str | os.PathLike | None = None) -> None:
    """Raise ValueError if ``path`` holds a one-model network tested as a task-IL file would be.

    A one-model file holds one packed task whose head is wider than a task's classes; re-testing
    it task by task would compare all-class predictions with task-local labels.
    """
    import bitsub
    from bitsub_torch.data.scenarios import get_scenario

    pm = bitsub.load(path)
    head = pm.private(pm.tasks[0]).get("head.weight") if len(pm.tasks) == 1 else None
    if head is None:
        return
    sc = get_scenario(scenario, tasks=1, seed=seed, data_dir=data_dir)
    if head.shape[0] != sc.num_classes:
        raise ValueError(f"{path} holds one model over {head.shape[0]} classes (esacl, er, "
                         "derpp, prune-retrain): pass --setting class-il or --setting task-il")

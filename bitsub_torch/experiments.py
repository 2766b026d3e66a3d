"""The results table of issue 6: every method on every scenario, trained, exported, re-tested.

Run it as::

    python -m bitsub_torch.experiments --out runs/table

(``--scenarios``, ``--strategies``, ``--seed``, ``--epochs``, ``--data-dir`` choose what runs).
For each scenario (``pmnist5k`` and ``pfmnist`` with 10 tasks, ``splitfmnist`` with 5 x 2 classes)
and each method (Finetune, PackNet, WSN, Ada-QPacknet, TinySubNets, and Independent: one
independent float32 model per task, the upper bound) it calls :func:`bitsub_torch.cli.train`
(the code behind ``bitsub-train``: the trainer with its re-tested accuracy matrix, export to a
packed model, re-test of every task from ``model.h5`` with bitsub's NumPy forward) into
``OUT/<scenario>/<method>/``, so an interrupted table resumes where it stopped. From the packed
file it then measures the capacity and writes ``OUT/table.json`` and ``OUT/table.md``.

What the table reports, per run:

- ACC and BWT (Lopez-Paz) from the re-tested accuracy matrix R; ``ACC file`` and ``BWT file``
  from ``model.h5``: the final accuracy of every task measured from the file, and
  ``mean_{j<T-1} (file_acc[j] - R[j, j])``; ``val ACC``: the final validation accuracy from the
  file (the only figure the defaults were chosen on).
- Capacity, in % of the dense float32 model (32 bits x weight positions, one copy), from the
  file: ``fields`` (prefix + code bits of every field), ``codebooks`` (float32 centroids) and
  ``masks``, Huffman-coded by ``bitsub.encode_mask``, each mask in the smallest of three codings
  a decoder reading the tasks in order can invert: alone, in the context of the previous task's
  mask of the same bank, or of the union of the bank's earlier masks (see `mask_bits`; the
  packed file is moving to the same rule). ``capacity`` is their sum. Beside it: the masks
  coded alone, ``stored`` = the capacity as ``pm.capacity()`` counts the file today, and the
  **paper-style** figure: code bits of all fields without prefixes, codebooks or masks over
  32 x positions, which for methods with one field per position and bank is the paper's union
  density x bit-width / 32.
- ``mask saving``: 1 - (mask bits / (tasks x positions)), the saving against one plain bit per
  weight and task.
- Bit-widths of the fields (per task, the range over layers), banks, training time (the
  trainer's per-task training seconds, summed) and wall time of the whole run.

Defaults (``DEFAULTS``) were chosen on validation accuracy only; see their comments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bitsub.atomic import write_bytes
from bitsub_torch.cl.strategies.base import Evaluate, Strategy

__all__ = [
    "DEFAULTS",
    "METHODS",
    "PAPER_PMNIST",
    "SCENARIOS",
    "Independent",
    "format_table",
    "main",
    "mask_bits",
    "run",
    "summarize",
]

#: Scenario -> number of tasks of the table.
SCENARIOS: dict[str, int] = {"pmnist5k": 10, "pfmnist": 10, "splitfmnist": 5}

#: Method name in the table -> strategy name of the CLI registry.
METHODS: dict[str, str] = {
    "Finetune": "finetune",
    "PackNet": "packnet",
    "WSN": "wsn",
    "Ada-QPacknet": "adaqpacknet",
    "TinySubNets": "tinysubnets",
    "Independent": "independent",
}

#: Default strategy arguments per strategy name, chosen on pfmnist (10 tasks, seed 0) by the
#: final VALIDATION accuracy measured from the packed file, never the test accuracy:
#: PackNet: keep in {0.1, 0.2, 0.3, 0.5, 0.7} -> 0.2 (val 86.73%; 0.5 gave 83.86%).
#: WSN: density c in {0.1, 0.2, 0.3, 0.5, 0.7} -> 0.2 (val 85.47%, 0.3 within 0.01 point).
#: TinySubNets: the best validation accuracy among the settings whose capacity is <= 23%:
#: density in {0.1, 0.15, 0.2, 0.3} x Algorithm 1's delta in {0.01, 0.005, 0.002} (partly)
#: -> density 0.15, delta 0.002 (val 85.56%, capacity 17.4%; c=0.3 was over 23%).
#: Ada-QPacknet: the class defaults (the paper's ratios, fitness and 6-bit ceiling, with a
#: population of 4 and 1 search epoch for time), not tuned.
DEFAULTS: dict[str, dict[str, Any]] = {
    "finetune": {},
    "packnet": {"keep": 0.2, "retrain_epochs": 1},
    "wsn": {"density": 0.2},
    "adaqpacknet": {},
    "tinysubnets": {"density": 0.15, "delta": 0.002},
    "independent": {},
}

#: Training settings of the table (those of the TinySubNets author's pmnist5k runs).
TRAIN: dict[str, Any] = {"epochs": 3, "batch_size": 64, "lr": 1e-3, "optimizer": "adam"}

#: The papers' own p-MNIST figures (ACC %, capacity % of the float32 model), for reference.
PAPER_PMNIST: dict[str, dict[str, Any]] = {
    "TinySubNets": {"acc": 97.14, "capacity": 22.65, "source": "seeds/001 (TinySubNets)"},
    "Ada-QPacknet": {"acc": 97.1, "capacity": 81.25, "source": "seeds/000 (Ada-QPacknet)"},
    "WSN": {"acc": None, "capacity": 77.73, "source": "seeds/001 (TinySubNets), discussion"},
    "PackNet": {"acc": 95.52, "capacity": 96.38, "source": "seeds/000 (Ada-QPacknet)"},
}


# ------------------------------------------------------------------------------------ Independent


class Independent(Strategy):
    """One independent float32 model per task: the upper bound of the table.

    Every task starts from freshly initialised weights (seeded by the trainer), trains all of
    them, and keeps its own copy afterwards: ``layer.values(t)`` returns task t's copy, so no
    task can disturb another. Export puts each task in its own bank, every position written with
    a raw float32 field: the capacity is about ``tasks x 100%``.
    """

    name = "independent"
    word_bits = 64
    prefix_bits = 1

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, dict[int, torch.Tensor]] = {}

    def setup(self, model: nn.Module, scenario: Any) -> None:
        """Route every task layer's ``values(t)`` to task t's own copy once it has one."""
        for name, layer in model.task_layers().items():
            self.stored.setdefault(name, {})
            copies = self.stored[name]

            def values(self_layer: nn.Module, task: int, copies: dict = copies) -> torch.Tensor:
                return copies.get(task, self_layer.weight)

            layer.values = values.__get__(layer)

    def before_task(self, task: int, model: nn.Module, data: Any) -> None:
        """Fresh weights, as the layers initialise them; nothing frozen."""
        with torch.no_grad():
            for layer in model.task_layers().values():
                if layer.weight.dim() > 1:
                    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
                else:  # pragma: no cover - task layers are 2-D or 4-D
                    nn.init.zeros_(layer.weight)

    def after_backward(self, task: int, model: nn.Module) -> None:
        """Nothing is frozen."""

    def after_step(self, task: int, model: nn.Module) -> None:
        """Nothing is frozen."""

    def after_task(self, task: int, model: nn.Module, data: Any, evaluate: Evaluate) -> None:
        """Keep a copy of the task's weights."""
        for name, layer in model.task_layers().items():
            self.stored.setdefault(name, {})[task] = layer.weight.detach().clone()
        if task not in self.finished:
            self.finished.append(task)

    def task_layers(self, model: nn.Module, task: int) -> dict[str, dict]:
        """Every position used and written, with the task's own values."""
        out = {}
        for name, layer in model.task_layers().items():
            values = self.stored.get(name, {}).get(task, layer.weight)
            mask = np.ones(tuple(layer.weight.shape), dtype=np.bool_)
            out[name] = {
                "mask": mask,
                "write": mask.copy(),
                "values": values.detach().cpu().numpy().astype(np.float32, copy=True),
            }
        return out

    def bank(self, task: int) -> str | None:
        """Each task in a bank of its own."""
        return None if task == 0 else "new"

    def state_dict(self) -> dict:  # noqa: D102
        return {
            **super().state_dict(),
            "stored": {n: {int(t): v for t, v in c.items()} for n, c in self.stored.items()},
        }

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        super().load_state_dict(state)
        for name, copies in state["stored"].items():
            target = self.stored.setdefault(name, {})
            target.clear()  # the values hooks hold this very dict
            target.update({int(t): v for t, v in copies.items()})


def _register() -> None:
    """Make ``independent`` a strategy name of the CLI registry (idempotent)."""
    from bitsub_torch.cl.strategies import STRATEGIES

    STRATEGIES.setdefault("independent", Independent)


# ------------------------------------------------------------------------------------ accounting


def mask_bits(pm: Any) -> dict[str, int]:
    """Huffman-coded size in bits of every task's masks in a packed model, per coding.

    Every mask is coded with ``bitsub.encode_mask`` alone (``"alone"``), in the context of the
    mask of the previous task of the same bank and layer (``"previous"``), and in the context
    of the union of the bank's earlier masks (``"union"``); ``"best"`` takes the smallest of the
    three per mask (a decoder that reads the tasks in order holds every context; which one was
    used costs 2 bits, not counted). The first task of a bank is coded alone in every case.

    Parameters
    ----------
    pm : bitsub.PackedModel
        The model.

    Returns
    -------
    dict
        Bits (8 x encoded bytes) over all tasks and layers for ``"alone"``, ``"previous"``,
        ``"union"`` and ``"best"``.
    """
    from bitsub.codecs.maskcodec import encode_mask

    total = dict.fromkeys(("alone", "previous", "union", "best"), 0)
    for t in pm.tasks:
        earlier = [u for u in pm.bank_tasks(pm.bank(t)) if u < t]
        for name in pm.layers:
            mask = pm.mask(t, name)
            alone = 8 * len(encode_mask(mask))
            sizes = {"alone": alone, "previous": alone, "union": alone}
            if earlier:
                prev = pm.mask(earlier[-1], name)
                sizes["previous"] = 8 * len(encode_mask(mask, context=prev))
                union = np.logical_or.reduce([pm.mask(u, name) for u in earlier])
                sizes["union"] = (sizes["previous"] if len(earlier) == 1
                                  else 8 * len(encode_mask(mask, context=union)))
            for key, value in sizes.items():
                total[key] += value
            total["best"] += min(sizes.values())
    return total


def summarize(pm: Any, report: dict[str, Any], val_acc: list[float] | None = None) -> dict:
    """One table row from a packed model and the ``results.json`` of its run (see module doc)."""
    cap = pm.capacity()
    dense = cap.dense_bits
    positions = dense // 32
    n_tasks = len(pm.tasks)
    masks = mask_bits(pm)
    code_bits = sum(pm.fields(t, n) * pm.bits(t, n) for t in pm.tasks for n in pm.layers)
    fields = cap.bits["fields"]
    codebooks = cap.bits["codebooks"]

    def pct(bits: float) -> float:
        return 100.0 * bits / dense

    r = np.array([[np.nan if v is None else v for v in row] for row in report["accuracy_matrix"]])
    file_acc = np.asarray(report["export"]["accuracy"], dtype=float)
    diag = np.diag(r)
    bwt_file = float(np.mean(file_acc[:-1] - diag[:-1])) if n_tasks > 1 else 0.0
    bits = [sorted({pm.bits(t, n) for n in pm.layers if pm.fields(t, n)}) for t in pm.tasks]
    timings = report.get("timings", {})
    train_s = float(np.nansum([np.nan if v is None else v for v in timings.get("train", [])]))
    return {
        "acc": report["acc"],
        "bwt": report["bwt"],
        "fwt": report["fwt"],
        "forgetting": report["forgetting"],
        "acc_file": float(np.mean(file_acc)),
        "bwt_file": bwt_file,
        "agreement_min": float(min(report["export"]["agreement"])),
        "val_acc_file": None if val_acc is None else float(np.mean(val_acc)),
        "accuracy_matrix": report["accuracy_matrix"],
        "file_accuracy": file_acc.tolist(),
        "capacity": {
            "percent": pct(fields + codebooks + masks["best"]),
            "fields": pct(fields),
            "codebooks": pct(codebooks),
            "masks": pct(masks["best"]),
            "masks_alone": pct(masks["alone"]),
            "masks_previous": pct(masks["previous"]),
            "masks_union": pct(masks["union"]),
            "masks_stored": pct(cap.bits["masks"]),
            "stored_percent": cap.percent,
            "paper_style": pct(code_bits),
            "private": cap.private_percent,
            "dense_bits": dense,
            "file_bytes": pm.file_bytes,
            "dense_file_bytes": cap.dense_file_bytes,
            "bits": {"fields": fields, "codebooks": codebooks, "masks": masks["best"],
                     **{f"masks_{k}": v for k, v in masks.items() if k != "best"},
                     "masks_stored": cap.bits["masks"], "private": cap.bits["private"]},
        },
        "mask_saving": 1.0 - masks["best"] / (n_tasks * positions),
        "mask_saving_alone": 1.0 - masks["alone"] / (n_tasks * positions),
        "mask_saving_stored": 1.0 - cap.bits["masks"] / (n_tasks * positions),
        "bits": bits,
        "banks": int(pm.banks),
        "prefix_bits": int(pm.prefix_bits),
        "word_bits": int(pm.word_bits),
        "train_s": train_s,
        "timings": timings,
    }


# ------------------------------------------------------------------------------------ running


def run(
    scenarios: Sequence[str] = tuple(SCENARIOS),
    methods: Sequence[str] = tuple(METHODS),
    *,
    out: str | os.PathLike,
    seed: int = 0,
    epochs: int | None = None,
    tasks: dict[str, int] | int | None = None,
    data_dir: str | os.PathLike | None = None,
    strategy_args: dict[str, dict[str, Any]] | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    threads: int = 1,
    progress: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Train, export and re-test every (scenario, method); write ``table.json`` and ``table.md``.

    Parameters
    ----------
    scenarios : sequence of str
        Scenario names (any of `bitsub_torch.data.scenarios.SCENARIOS`).
    methods : sequence of str
        Method names of `METHODS` (or strategy names).
    out : path-like
        Output directory; each run goes to ``out/<scenario>/<strategy>/`` (resumable).
    seed : int
        Seed of the data order, the initialisation and the scenario's permutations and splits.
    epochs, batch_size, lr : optional
        Training settings; default `TRAIN`.
    tasks : int or dict, optional
        Number of tasks (one for all, or per scenario); default `SCENARIOS`, else the scenario's.
    data_dir : path-like, optional
        Directory of the on-disk data sets (Fashion-MNIST defaults to the Debian package's).
    strategy_args : dict, optional
        Per strategy name, arguments that replace `DEFAULTS` for that strategy.
    threads : int
        Torch threads (1 is the fastest for these small MLPs).
    progress : bool
        Progress bars.
    log : callable, optional
        Called with one line of text after each run (default: print to stderr).

    Returns
    -------
    dict
        What ``table.json`` holds: ``config`` and ``rows``.
    """
    import bitsub
    from bitsub_torch.cli import evaluate_file, train

    _register()
    if log is None:
        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
    from bitsub_torch.data.scenarios import SCENARIOS as KNOWN

    names = {**METHODS, **{s: s for s in METHODS.values()}}
    unknown = [m for m in methods if m not in names]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    unknown = [s for s in scenarios if s not in KNOWN]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; choose from {sorted(KNOWN)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    display = {s: m for m, s in METHODS.items()}
    settings = {
        "epochs": TRAIN["epochs"] if epochs is None else int(epochs),
        "batch_size": TRAIN["batch_size"] if batch_size is None else int(batch_size),
        "lr": TRAIN["lr"] if lr is None else float(lr),
        "optimizer": TRAIN["optimizer"],
    }
    overrides = dict(strategy_args or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    config = {"seed": seed, **settings, "threads": threads,
              "data_dir": None if data_dir is None else str(data_dir), "scenarios": {},
              "wall_s": 0.0}
    for scenario in scenarios:
        if isinstance(tasks, int):
            n_tasks = tasks
        elif isinstance(tasks, dict) and scenario in tasks:
            n_tasks = tasks[scenario]
        else:
            n_tasks = SCENARIOS.get(scenario)
        config["scenarios"][scenario] = n_tasks
        for method in methods:
            strategy = names[method]
            args = dict(overrides.get(strategy, DEFAULTS.get(strategy, {})))
            run_dir = out / scenario / strategy
            t0 = time.perf_counter()
            report = train(strategy=strategy, scenario=scenario, out=run_dir, tasks=n_tasks,
                           seed=seed, data_dir=data_dir, strategy_args=args, threads=threads,
                           progress=progress, **settings)
            wall = time.perf_counter() - t0
            pm = bitsub.load(run_dir / "model.h5")
            val = evaluate_file(run_dir / "model.h5", scenario, seed=seed, data_dir=data_dir,
                                split="val")["accuracy"]
            row = {"scenario": scenario, "method": display.get(strategy, strategy),
                   "strategy": strategy, "strategy_args": args, "tasks": len(pm.tasks),
                   "seed": seed, **settings, **summarize(pm, report, val),
                   "wall_s": wall, "dir": str(run_dir)}
            rows.append(row)
            config["wall_s"] += wall
            log(f"{scenario:<12} {row['method']:<13} ACC {100 * row['acc']:6.2f}  "
                f"BWT {100 * row['bwt']:+6.2f}  file BWT {100 * row['bwt_file']:+6.2f}  "
                f"val {100 * (row['val_acc_file'] or 0):6.2f}  "
                f"capacity {row['capacity']['percent']:8.2f}%  ({wall:.0f} s)")
            table = {"config": config, "rows": rows, "paper_pmnist": PAPER_PMNIST}
            write_bytes(out / "table.json", json.dumps(_json_safe(table), indent=2).encode())
            write_bytes(out / "table.md", format_table(table).encode())
    return _json_safe({"config": config, "rows": rows, "paper_pmnist": PAPER_PMNIST})


def _json_safe(v: Any) -> Any:
    from bitsub_torch.cli import _json_safe as safe

    return safe(v)


# ------------------------------------------------------------------------------------ the table


def _bits_text(bits: list[list[int]]) -> str:
    flat = sorted({b for task in bits for b in task})
    if not flat:
        return "-"
    if flat == [32]:
        return "32 (float)"
    per_task = "/".join("-".join(str(b) for b in sorted({min(t), max(t)})) if t else "0"
                        for t in bits)
    return per_task


def _bar_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 6's bars, measured on one scenario's rows (those that are present)."""
    by = {r["method"]: r for r in rows}
    out = []
    free = [m for m in ("PackNet", "WSN", "Ada-QPacknet", "TinySubNets", "Independent") if m in by]
    if free:
        exact = all(by[m]["bwt"] == 0.0 and by[m]["bwt_file"] == 0.0 for m in free)
        out.append(f"- BWT exactly 0.0 (matrix and file) for {', '.join(free)}: "
                   f"{'yes' if exact else 'NO'}")
    for method, ref, cap_bar in (("TinySubNets", "WSN", 23.0), ("Ada-QPacknet", "PackNet", None)):
        if method not in by or ref not in by:
            continue
        m, r = by[method], by[ref]
        gap = 100 * (m["acc"] - r["acc"])
        limit = cap_bar if cap_bar is not None else r["capacity"]["percent"]
        cap_ok = m["capacity"]["percent"] <= limit if cap_bar else m["capacity"]["percent"] < limit
        out.append(
            f"- {method}: capacity {m['capacity']['percent']:.2f}% "
            f"({'<=' if cap_bar else '<'} {limit:.2f}%: {'yes' if cap_ok else 'NO'}), "
            f"ACC {100 * m['acc']:.2f} vs {ref} {100 * r['acc']:.2f}: {gap:+.2f} points "
            f"(>= -1: {'yes' if gap >= -1.0 else 'NO'})"
        )
    return out


def format_table(table: dict[str, Any]) -> str:
    """The markdown table of ``table.json``: one section per scenario, papers' figures beside."""
    rows = table["rows"]
    cfg = table["config"]
    lines = [
        "# bitsub results table",
        "",
        f"Seed {cfg['seed']}; {cfg['epochs']} epochs per task, batch {cfg['batch_size']}, "
        f"Adam lr {cfg['lr']}, {cfg['threads']} torch thread(s); MLP 784-100-100 without bias, "
        "one head per task. ACC / BWT from the re-tested accuracy matrix; *file* columns from "
        "model.h5 through bitsub's NumPy forward. Capacity in % of the dense float32 model "
        "(fields + codebooks + masks; each mask Huffman-coded alone or in the context of the "
        "previous task's mask or of the union of the earlier masks of its bank, whichever is "
        "smallest); *masks alone*: every mask coded alone; *stored*: the capacity as "
        "`pm.capacity()` counts the file; *file KB*: model.h5 as `ls -l` shows it; *dense npz KB*: "
        "`np.savez` of one dense float32 copy of the weights and heads; "
        "*paper-style*: code bits of the fields only (= union density x bit-width / 32 for one "
        "field per position). Mask saving vs 1 bit per weight and task. Bits: per task, the range "
        f"over layers. Wall time of the runs: {cfg.get('wall_s', 0.0):.0f} s.",
        "",
    ]
    head = ("| method | args | ACC % | BWT % | ACC file % | BWT file % | val ACC % | capacity % "
            "| fields | codebooks | masks | masks alone | stored % | file KB | dense npz KB "
            "| paper-style % | mask saving | bits | banks | train s |")
    sep = "|" + "---|" * (head.count("|") - 1)
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        n = cfg["scenarios"].get(scenario)
        lines += [f"## {scenario} ({n} tasks)", "", head, sep]
        for r in (r for r in rows if r["scenario"] == scenario):
            c = r["capacity"]
            args = ", ".join(f"{k}={v}" for k, v in r["strategy_args"].items()) or "-"
            lines.append(
                f"| {r['method']} | {args} | {100 * r['acc']:.2f} | {100 * r['bwt']:+.2f} "
                f"| {100 * r['acc_file']:.2f} | {100 * r['bwt_file']:+.2f} "
                f"| {100 * (r['val_acc_file'] or 0):.2f} | **{c['percent']:.2f}** "
                f"| {c['fields']:.2f} | {c['codebooks']:.3f} | {c['masks']:.2f} "
                f"| {c['masks_alone']:.2f} "
                f"| {c['stored_percent']:.2f} | {(c.get('file_bytes') or 0) / 1024:.1f} "
                f"| {c.get('dense_file_bytes', 0) / 1024:.1f} | {c['paper_style']:.2f} "
                f"| {100 * r['mask_saving']:.1f}% | {_bits_text(r['bits'])} | {r['banks']} "
                f"| {r['train_s']:.0f} |"
            )
        lines += ["", *_bar_lines([r for r in rows if r["scenario"] == scenario]), ""]
    paper = table.get("paper_pmnist", PAPER_PMNIST)
    lines += ["## The papers' own p-MNIST figures (full MNIST, for reference)", "",
              "| method | ACC % | capacity % | source |", "|---|---|---|---|"]
    for method, p in paper.items():
        acc = "-" if p["acc"] is None else f"{p['acc']:.2f}"
        lines.append(f"| {method} | {acc} | {p['capacity']:.2f} | {p['source']} |")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bitsub_torch.experiments",
        description="Train every method on every scenario, export, re-test from the file, and "
        "write OUT/table.json and OUT/table.md (resumable: run the same command again).",
    )
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS),
                   help=f"scenarios (default: {' '.join(SCENARIOS)})")
    p.add_argument("--strategies", nargs="+", default=list(METHODS.values()),
                   help=f"methods or strategy names (default: {' '.join(METHODS.values())})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs per task (default {TRAIN['epochs']})")
    p.add_argument("--tasks", type=int, default=None,
                   help="tasks per scenario (default: 10 for the permuted ones, 5 for split)")
    p.add_argument("--out", type=Path, default=Path("runs/table"))
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--strategy-args", default="{}",
                   help='JSON: per strategy name, arguments replacing the defaults, e.g. '
                   '\'{"tinysubnets": {"density": 0.15}}\'')
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true", help="progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m bitsub_torch.experiments``."""
    args = _parser().parse_args(argv)
    try:
        overrides = json.loads(args.strategy_args)
        if not isinstance(overrides, dict) or not all(
                isinstance(v, dict) for v in overrides.values()):
            raise ValueError("--strategy-args must be a JSON object of objects")
        table = run(args.scenarios, args.strategies, out=args.out, seed=args.seed,
                    epochs=args.epochs, tasks=args.tasks, data_dir=args.data_dir,
                    strategy_args=overrides, threads=args.threads, progress=args.progress)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"experiments: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(table))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

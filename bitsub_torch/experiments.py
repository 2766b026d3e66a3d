"""The results table: every method on every scenario, over seeds, trained, exported, re-tested.

Run it as::

    python -m bitsub_torch.experiments --out runs/table

(``--scenarios``, ``--strategies``, ``--seeds``, ``--epochs``, ``--data-dir`` choose what runs).
For each scenario (``pmnist5k``, ``pfmnist`` and ``mixed`` with 10 tasks, ``splitfmnist`` with
5 x 2 classes, and the CNN row set: ``splitfmnist2d``, the same tasks as images, on the reduced
AlexNet at width 0.25, the network ``bitsub-train`` builds for it without flags:
`bitsub_torch.nn.models.SCENARIO_NETWORKS`), each method (Finetune, PackNet, WSN, Ada-QPacknet,
TinySubNets, the variants of `VARIANTS`, and Independent: one independent float32 model per
task, the upper bound)
and each seed it calls :func:`bitsub_torch.cli.train` (the code behind ``bitsub-train``, with its
defaults: the convergence protocol of `bitsub_torch.cl.protocol`, the trainer with its re-tested
accuracy matrix, export to a packed model, re-test of every task from ``model.h5`` with bitsub's
NumPy forward) into ``OUT/<scenario>/<method>/seed<k>/``, so an interrupted table resumes where it
stopped: finished runs are read back, a run cut short continues from its last finished task.
``--no-train`` trains nothing and writes nothing in the run directories: it only reads finished
runs back (e.g. another table's runs linked into ``OUT``) and writes the table.

Length: one concept, the table, from its runs to its Markdown: the scenario and method tables,
the runner (training or reading back finished runs), the per-run summary of a packed file and
the formatting with its bars; splitting them would only move private helpers across modules.
From the packed file it then measures the capacity and writes ``OUT/table.json`` (one row per
run) and ``OUT/table.md`` (mean +- sample std over the seeds present, with their number).

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

Every method runs with its strategy's class defaults and the CLI's training defaults (what a
user of ``bitsub-train`` gets); those were chosen on validation accuracy only (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bitsub.atomic import write_bytes
from bitsub_torch.checks import is_user_error
from bitsub_torch.cl.independent import Independent
from bitsub_torch.cl.strategies.wsn import WSN
from bitsub_torch.cpukernels import pin_cpu_kernels

__all__ = [
    "DEFAULTS",
    "METHODS",
    "PAPER_PMNIST",
    "SCENARIOS",
    "VARIANTS",
    "Independent",
    "format_table",
    "main",
    "mask_bits",
    "run",
    "summarize",
]

#: Scenario -> number of tasks of the table.
SCENARIOS: dict[str, int] = {"pmnist5k": 10, "pfmnist": 10, "splitfmnist": 5, "mixed": 10,
                             "splitfmnist2d": 5}

#: Method name in the table -> strategy name of the CLI registry.
METHODS: dict[str, str] = {
    "Finetune": "finetune",
    "PackNet": "packnet",
    "WSN": "wsn",
    "Ada-QPacknet": "adaqpacknet",
    "TinySubNets": "tinysubnets",
    "Independent": "independent",
}

#: Strategy arguments of the table per strategy name, on top of the class defaults (none: the
#: table measures what ``bitsub-train`` gives).
DEFAULTS: dict[str, dict[str, Any]] = {s: {} for s in METHODS.values()}

#: Variants of a method (display name -> strategy name, its arguments): TinySubNets at WSN's
#: density (it adds compression to WSN, so it must not lose more than its delta to it), with the
#: paper's post-pruning (off by default: see the README) and with a replay memory of 100 samples
#: per task (Table 5 of TinySubNets); and with the first layer's masks kept off inputs that are 0
#: in all of a task's training images (``skip_dead_inputs``, an option: see the README, mixed).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "TinySubNets @ WSN density": ("tinysubnets", {"density": WSN().density}),
    "TinySubNets + post-pruning": ("tinysubnets", {"post_prune_iters": 20}),
    "TinySubNets + replay": ("tinysubnets", {"replay": 100}),
    "TinySubNets + dead inputs": ("tinysubnets", {"skip_dead_inputs": True}),
    "TinySubNets + dead inputs + post-pruning": (
        "tinysubnets", {"skip_dead_inputs": True, "post_prune_iters": 20}),
}

#: Training settings of the table: None means the CLI's default (the convergence protocol).
TRAIN: dict[str, Any] = {"epochs": None, "batch_size": None, "lr": None, "optimizer": "adam"}

#: The papers' own p-MNIST figures (ACC %, capacity % of the float32 model), for reference.
PAPER_PMNIST: dict[str, dict[str, Any]] = {
    "TinySubNets": {"acc": 97.14, "capacity": 22.65, "source": "seeds/001 (TinySubNets)"},
    "Ada-QPacknet": {"acc": 97.1, "capacity": 81.25, "source": "seeds/000 (Ada-QPacknet)"},
    "WSN": {"acc": None, "capacity": 77.73, "source": "seeds/001 (TinySubNets), discussion"},
    "PackNet": {"acc": 95.52, "capacity": 96.38, "source": "seeds/000 (Ada-QPacknet)"},
}


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
        "run_s": float(timings.get("total") or 0.0) + float(timings.get("export") or 0.0),
        "steps": [int(sum(x)) for x in timings.get("steps", [])],
        "timings": timings,
    }


# ------------------------------------------------------------------------------------ running


def _slug(method: str) -> str:
    """The directory name of a method: lower case, runs of other characters as one dash."""
    return "-".join("".join(c if c.isalnum() else " " for c in method.lower()).split())


def _resolve(method: str) -> tuple[str, str, dict[str, Any]]:
    """(display name, strategy name, arguments) of a method, variant or strategy name."""
    by_slug = {_slug(v): v for v in VARIANTS}
    if method in VARIANTS or method in by_slug:
        method = by_slug.get(method, method)
        strategy, args = VARIANTS[method]
        return method, strategy, dict(args)
    display = {s: m for m, s in METHODS.items()}
    if method in METHODS:
        return method, METHODS[method], {}
    if method in display:
        return display[method], method, {}
    raise ValueError(f"unknown methods [{method!r}]; choose from {list(METHODS) + list(VARIANTS)}")


def run(
    scenarios: Sequence[str] = tuple(SCENARIOS),
    methods: Sequence[str] = tuple(METHODS),
    *,
    out: str | os.PathLike,
    seed: int | Sequence[int] = 0,
    epochs: int | None = None,
    tasks: dict[str, int] | int | None = None,
    data_dir: str | os.PathLike | None = None,
    strategy_args: dict[str, dict[str, Any]] | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    threads: int = 1,
    progress: bool = False,
    log: Any = None,
    train_runs: bool = True,
) -> dict[str, Any]:
    """Train, export and re-test every (scenario, method, seed); write ``table.json``/``.md``.

    Parameters
    ----------
    scenarios : sequence of str
        Scenario names (any of `bitsub_torch.data.scenarios.SCENARIOS`).
    methods : sequence of str
        Method names of `METHODS` or `VARIANTS` (or strategy names).
    out : path-like
        Output directory; each run goes to ``out/<scenario>/<method>/seed<k>/`` (resumable).
    seed : int or sequence of int
        Seed(s) of the data order, the initialisation and the scenario's permutations and splits.
    epochs, batch_size, lr : optional
        Training settings; default `TRAIN` (None: the CLI's defaults, the convergence protocol).
    tasks : int or dict, optional
        Number of tasks (one for all, or per scenario); default `SCENARIOS`, else the scenario's.
    data_dir : path-like, optional
        Directory of the on-disk data sets (Fashion-MNIST defaults to the Debian package's).
    strategy_args : dict, optional
        Per strategy name, arguments added to every run of that strategy.
    threads : int
        Torch threads (1 is the fastest for these small MLPs).
    progress : bool
        Progress bars.
    log : callable, optional
        Called with one line of text after each run (default: print to stderr).
    train_runs : bool
        False: train nothing and write nothing in the run directories; every run must be
        finished (``results.json`` and ``model.h5`` present, made with the same strategy,
        scenario, seed, number of tasks and data directory), and is only read back and
        re-evaluated (``--no-train``: a table over finished runs, some of them possibly links
        to another table's directories).

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

    resolved = []
    unknown = []
    for m in methods:
        try:
            resolved.append(_resolve(m))
        except ValueError:
            unknown.append(m)
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS) + list(VARIANTS)}")
    unknown = [s for s in scenarios if s not in KNOWN]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; choose from {sorted(KNOWN)}")
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if not seeds or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in seeds):
        raise ValueError(f"seed must be a non-negative int or a list of them, got {seed!r}")
    settings = {
        "epochs": TRAIN["epochs"] if epochs is None else int(epochs),
        "batch_size": TRAIN["batch_size"] if batch_size is None else int(batch_size),
        "lr": TRAIN["lr"] if lr is None else float(lr),
        "optimizer": TRAIN["optimizer"],
    }
    given = {k: v for k, v in settings.items() if v is not None or k == "epochs"}
    overrides = dict(strategy_args or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    config = {"seeds": seeds, **settings, "threads": threads,
              "data_dir": None if data_dir is None else str(data_dir), "scenarios": {},
              "wall_s": 0.0}
    t_all = time.perf_counter()
    for scenario in scenarios:
        if isinstance(tasks, int):
            n_tasks = tasks
        elif isinstance(tasks, dict) and scenario in tasks:
            n_tasks = tasks[scenario]
        else:
            n_tasks = SCENARIOS.get(scenario)
        config["scenarios"][scenario] = n_tasks
        features = None
        for display, strategy, variant in resolved:
            args = {**DEFAULTS.get(strategy, {}), **variant, **overrides.get(strategy, {})}
            for k in seeds:
                run_dir = out / scenario / _slug(display) / f"seed{k}"
                t0 = time.perf_counter()
                if train_runs:
                    report = train(strategy=strategy, scenario=scenario, out=run_dir,
                                   tasks=n_tasks, seed=k, data_dir=data_dir, strategy_args=args,
                                   threads=threads, progress=progress, **given)
                else:
                    report = _finished(run_dir, strategy, scenario, k, n_tasks, data_dir)
                wall = time.perf_counter() - t0
                pm = bitsub.load(run_dir / "model.h5")
                val = evaluate_file(run_dir / "model.h5", scenario, seed=k, data_dir=data_dir,
                                    split="val")["accuracy"]
                used = report["config"]
                row = {"scenario": scenario, "method": display, "strategy": strategy,
                       "strategy_args": args, "tasks": len(pm.tasks), "seed": k,
                       "epochs": used["epochs"], "batch_size": used["batch_size"],
                       "lr": used["lr"], "optimizer": used["optimizer"],
                       "model": used["model"], "width": used["width"],
                       **summarize(pm, report, val), "wall_s": wall, "dir": str(run_dir),
                       "file_bytes": (run_dir / "model.h5").stat().st_size}
                replay = int(args.get("replay", 0))
                if replay and features is None:
                    from bitsub_torch.data.scenarios import get_scenario

                    shape = get_scenario(scenario, tasks=n_tasks, data_dir=data_dir).input_shape
                    features = int(np.prod(shape))
                # the replay memory: float32 samples kept per task (Table 5's last column)
                replay_pct = (100.0 * replay * (features or 0) * 32 * len(pm.tasks)
                              / row["capacity"]["dense_bits"])
                row["capacity"]["with_replay"] = row["capacity"]["percent"] + replay_pct
                rows.append(row)
                config["wall_s"] = time.perf_counter() - t_all
                log(f"{scenario:<12} {display:<28} seed {k} ACC {100 * row['acc']:6.2f}  "
                    f"BWT {100 * row['bwt']:+6.2f}  file BWT {100 * row['bwt_file']:+6.2f}  "
                    f"val {100 * (row['val_acc_file'] or 0):6.2f}  "
                    f"capacity {row['capacity']['percent']:8.2f}%  ({wall:.0f} s)")
                table = {"config": config, "rows": rows, "paper_pmnist": PAPER_PMNIST}
                write_bytes(out / "table.json", json.dumps(json_safe(table), indent=2).encode())
                write_bytes(out / "table.md", format_table(table).encode())
    return json_safe({"config": config, "rows": rows, "paper_pmnist": PAPER_PMNIST})


def _finished(run_dir: Path, strategy: str, scenario: str, seed: int, tasks: int | None,
              data_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The ``results.json`` of a finished run, checked to be the run asked for; reads only."""
    files = [run_dir / "results.json", run_dir / "model.h5"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"run {run_dir} is not finished (no {', '.join(missing)}): run it "
                         "without --no-train first")
    try:
        report = json.loads(files[0].read_text())
        used = report["config"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{files[0]} is not a results.json of bitsub-train ({exc})") from None
    want = {"strategy": strategy, "scenario": scenario, "seed": seed,
            "data_dir": None if data_dir is None else str(data_dir)}
    if tasks is not None:
        want["tasks"] = tasks
    differ = [f"{key} {used.get(key)!r} (asked {value!r})" for key, value in want.items()
              if used.get(key) != value]
    if differ:
        raise ValueError(f"run {run_dir} was made with other arguments: {'; '.join(differ)}")
    return report


def json_safe(v: Any) -> Any:
    from bitsub_torch.cli import json_safe as safe

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


def _mean_std(values: list[float], scale: float = 100.0, fmt: str = ".2f") -> str:
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 1:
        return f"{v[0]:{fmt}}"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}"


def _group(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    return out


def _bar_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's bars on one scenario's rows, on the means over the seeds present."""
    by = {m: (float(np.mean([r["acc"] for r in rs])),
              float(np.mean([r["capacity"]["percent"] for r in rs])), rs)
          for m, rs in _group(rows).items()}
    out = []
    free = [m for m in by if m != "Finetune"]
    if free:
        exact = all(r["bwt"] == 0.0 and r["bwt_file"] == 0.0 for m in free for r in by[m][2])
        out.append(f"- BWT exactly 0.0 in every run (matrix and file) for {', '.join(free)}: "
                   f"{'yes' if exact else 'NO'}")
    if "TinySubNets" in by and "Independent" in by:
        (acc, cap, _), ind = by["TinySubNets"], by["Independent"][0]
        gap = 100 * (acc - ind)
        out.append(f"- TinySubNets {100 * acc:.2f} vs Independent {100 * ind:.2f}: {gap:+.2f} "
                   f"points (>= -2: {'yes' if gap >= -2 else 'NO'}), capacity {cap:.2f}% "
                   f"(<= 25%: {'yes' if cap <= 25 else 'NO'})")
    for method, ref in (("TinySubNets", "WSN"), ("TinySubNets", "PackNet"),
                        ("Ada-QPacknet", "PackNet")):
        if method in by and ref in by:
            gap = 100 * (by[method][0] - by[ref][0])
            out.append(f"- {method} vs {ref}: ACC {gap:+.2f} points, capacity "
                       f"{by[method][1]:.2f}% vs {by[ref][1]:.2f}%")
    return out


def format_table(table: dict[str, Any]) -> str:
    """The markdown table of ``table.json``: per scenario and method, mean ± std over seeds."""
    rows = table["rows"]
    cfg = table["config"]
    run_s = sum(r.get("run_s", 0.0) for r in rows)
    lines = [
        "# bitsub results table",
        "",
        f"Seeds {cfg.get('seeds')}; training: "
        + ("the convergence protocol (bitsub_torch.cl.protocol) with the CLI defaults"
           if cfg.get("epochs") is None else f"{cfg['epochs']} epochs per task")
        + f"; {cfg['threads']} torch thread(s); one head per task; the network is the MLP "
        "784-100-100 without bias unless a scenario's heading names another. Mean ± sample std "
        "over the seeds run (column *n*). ACC / BWT from the re-tested "
        "accuracy matrix; *BWT file* from model.h5 through bitsub's NumPy forward. Capacity in % "
        "of the dense float32 model (fields + codebooks + masks, each mask Huffman-coded alone or "
        "in the context of an earlier mask of its bank, whichever is smallest); *paper-style*: "
        "code bits of the fields only; *with replay*: plus a replay memory of float32 samples "
        "per task where the method keeps one. *file*: model.h5 bytes (`ls -l`); *dense npz*: "
        "`np.savez` of one dense float32 copy of the weights and heads. *steps*: optimizer "
        f"steps per task (mean). Time of the runs, summed: {run_s:.0f} s; wall time of this "
        f"invocation {cfg.get('wall_s', 0.0):.0f} s.",
        "",
    ]
    head = ("| method | n | ACC % | BWT % | BWT file % | val ACC % | capacity % | fields | masks "
            "| with replay % | paper-style % | file KiB | dense npz KiB | bits | banks | steps "
            "| train s |")
    sep = "|" + "---|" * (head.count("|") - 1)
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        n = cfg["scenarios"].get(scenario)
        here = [r for r in rows if r["scenario"] == scenario]
        net = ""
        if here[0].get("model", "mlp") != "mlp":
            width = here[0].get("width")
            net = f", {here[0]['model']}" + ("" if width is None else f" at width {width:g}")
        lines += [f"## {scenario} ({n} tasks{net})", "", head, sep]
        for method, rs in _group(here).items():
            cap = [r["capacity"] for r in rs]
            steps = [np.mean(r["steps"]) for r in rs if r.get("steps")]
            with_replay = [c.get("with_replay", c["percent"]) for c in cap]
            replayed = ("-" if with_replay == [c["percent"] for c in cap]
                        else _mean_std(with_replay, 1.0))
            lines.append(
                f"| {method} | {len(rs)} | {_mean_std([r['acc'] for r in rs])} "
                f"| {_mean_std([r['bwt'] for r in rs])} "
                f"| {_mean_std([r['bwt_file'] for r in rs])} "
                f"| {_mean_std([r['val_acc_file'] or 0 for r in rs])} "
                f"| **{_mean_std([c['percent'] for c in cap], 1.0)}** "
                f"| {_mean_std([c['fields'] for c in cap], 1.0)} "
                f"| {_mean_std([c['masks'] for c in cap], 1.0)} "
                f"| {replayed} "
                f"| {_mean_std([c['paper_style'] for c in cap], 1.0)} "
                f"| {_mean_std([r.get('file_bytes', 0) / 1024 for r in rs], 1.0, '.0f')} "
                f"| {_mean_std([c.get('dense_file_bytes', 0) / 1024 for c in cap], 1.0, '.0f')} "
                f"| {_bits_text(rs[0]['bits'])} | {'/'.join(str(r['banks']) for r in rs)} "
                f"| {np.mean(steps) if steps else 0:.0f} "
                f"| {_mean_std([r['train_s'] for r in rs], 1.0, '.0f')} |"
            )
        lines += ["", *_bar_lines(here), ""]
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
    p.add_argument("--strategies", nargs="+",
                   default=[*METHODS.values(), *(_slug(v) for v in VARIANTS)],
                   help="strategy names or variants (default: all of "
                   f"{' '.join([*METHODS.values(), *(_slug(v) for v in VARIANTS)])})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help="a fixed number of epochs per task (default: the convergence protocol)")
    p.add_argument("--tasks", type=int, default=None,
                   help="tasks per scenario (default: 10, 5 for splitfmnist)")
    p.add_argument("--out", type=Path, default=Path("runs/table"))
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--strategy-args", default="{}",
                   help='JSON: per strategy name, arguments replacing the defaults, e.g. '
                   '\'{"tinysubnets": {"density": 0.15}}\' (tinysubnets\' post_prune_iters, '
                   'retrain_epochs and post_prune_first default to the scenario\'s: 20, 1, true '
                   'on pfmnist, 0, 0, false elsewhere)')
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--no-train", action="store_true",
                   help="only read back finished runs and write the table: nothing is trained "
                   "and nothing is written in the run directories")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m bitsub_torch.experiments``."""
    args = _parser().parse_args(argv)
    if argv is None:  # this process is the command: its CPU kernels are ours to pin
        pin_cpu_kernels()
    try:
        overrides = json.loads(args.strategy_args)
        if not isinstance(overrides, dict) or not all(
                isinstance(v, dict) for v in overrides.values()):
            raise ValueError("--strategy-args must be a JSON object of objects")
        table = run(args.scenarios, args.strategies, out=args.out, seed=args.seeds,
                    epochs=args.epochs, tasks=args.tasks, data_dir=args.data_dir,
                    strategy_args=overrides, threads=args.threads, progress=args.progress,
                    train_runs=not args.no_train)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        if not is_user_error(exc):
            raise
        print(f"experiments: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(table))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

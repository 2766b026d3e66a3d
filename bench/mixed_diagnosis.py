"""Where TinySubNets loses on ``mixed``: per-task figures read back from finished table runs.

Reads, for each method directory ``RUNS/<method>/seed<k>/`` (as written by
``python -m bitsub_torch.experiments``), nothing but the run's own files:

- ``results.json``: the final row of the re-tested accuracy matrix (test accuracy of every task
  after the last task);
- ``checkpoints/task_<last>.pt``: the strategy's per-task log (bank, why it was chosen, the KL
  divergence to the bank, validation accuracy of the trained sub-network and of the stored,
  quantized one, bit-widths, positions written and reused per layer), where the strategy keeps
  one (TinySubNets, Ada-QPacknet);
- ``model.h5``: each task's mask density per layer and its bank, and the first layer's mask
  density on the first `SIGNAL` inputs (where mnist1d's 40 features lie; the other 744 inputs
  are zero on mnist1d tasks) and on the others, and there the share of the task's positions
  that the previous task's mask holds too (*kept s/p*).

It trains nothing. Per task it prints the mean over the seeds of each method's final test
accuracy, the differences to the reference method, and the log's figures; then the same
differences grouped by what the KL gate did to the task (opened a bank, joined one), and the
mean change of validation accuracy through quantization. Usage::

    PYTHONPATH=. python bench/mixed_diagnosis.py --runs /work/table_runs4/mixed \\
        --methods tinysubnets ada-qpacknet independent --seeds 0 1 2

``--json FILE`` also writes every figure as JSON.

``--gate THRESHOLD ...`` (with ``--data-dir``) instead replays the KL gate alone, without training:
for every seed it builds the scenario, summarises each task's training inputs as TinySubNets does
(at most ``--kl-samples`` evenly spaced samples, a histogram of the pixel values) and prints,
per threshold, with and without ``kl_revisit``, the bank every task gets and its divergence. The
gate reads only the data, so these are the decisions a training run with that setting makes
(a bank that runs out of prefixes also opens a new one; no run here comes near that)::

    PYTHONPATH=. python bench/mixed_diagnosis.py --gate 0.5 0.001 inf --data-dir FMNIST_DIR

``--probe-min-steps N --probe-out DIR`` (with ``--data-dir``, optional ``--strategy-args`` and
``--probe-strategy``, default TinySubNets) trains that strategy on the scenario, one run per
seed into ``DIR/seed<k>/``, with the convergence protocol's step floor raised to N
(`bitsub_torch.cl.protocol.Protocol`'s ``min_steps``; everything else as ``bitsub-train``): a
probe of whether the step budget, which binds on most mixed tasks at 600 steps, is what a
method lacks. Not a table setting::

    PYTHONPATH=. python bench/mixed_diagnosis.py --probe-min-steps 1200 --probe-out DIR \
        --seeds 0 1 --data-dir FMNIST_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: mnist1d's 40 features fill the first 40 of mixed's 784 inputs; the other 744 are zero there.
SIGNAL = 40


def final_row(run: Path) -> list[float]:
    """Test accuracy of every task after the last one (the re-tested matrix's last row)."""
    matrix = json.loads((run / "results.json").read_text())["accuracy_matrix"]
    return [float(a) for a in matrix[-1]]


def strategy_log(run: Path) -> dict[int, dict]:
    """The strategy's per-task log from the last checkpoint ({} if it keeps none)."""
    import torch

    last = sorted((run / "checkpoints").glob("task_*.pt"))
    if not last:
        return {}
    state = torch.load(last[-1], weights_only=False)["strategy"]
    log = state.get("log", {}) if isinstance(state, dict) else {}
    return {int(t): dict(v) for t, v in log.items()}


def mask_density(run: Path) -> list[dict[str, float]]:
    """Per task, the share of each layer's positions its mask uses, from ``model.h5``."""
    import bitsub

    pm = bitsub.load(run / "model.h5")
    out = []
    before = None
    for t in pm.tasks:
        row = {name: float(np.asarray(pm.mask(t, name)).mean()) for name in pm.layers}
        first = pm.layers[0]  # (outputs, inputs): its columns are the network's inputs
        mask = np.asarray(pm.mask(t, first))
        row["signal"] = float(mask[:, :SIGNAL].mean())
        row["padding"] = float(mask[:, SIGNAL:].mean())
        if before is not None:  # share of t's positions there that task t-1's mask also holds
            for key, cols in (("signal_kept", slice(None, SIGNAL)),
                              ("padding_kept", slice(SIGNAL, None))):
                mine = mask[:, cols]
                row[key] = float((mine & before[:, cols]).sum() / max(1, mine.sum()))
        before = mask
        out.append(row)
    return out


def collect(runs: Path, methods: list[str], seeds: list[int]) -> dict:
    """Every figure, per method and seed."""
    out: dict = {}
    for m in methods:
        out[m] = {}
        for k in seeds:
            run = runs / m / f"seed{k}"
            out[m][k] = {"final": final_row(run), "log": strategy_log(run),
                         "density": mask_density(run)}
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def report(data: dict, methods: list[str], seeds: list[int]) -> list[str]:
    """The printed lines."""
    ref, other = methods[0], methods[1:]
    tasks = len(data[ref][seeds[0]]["final"])
    lines = []
    head = f"{'task':>4} " + " ".join(f"{m[:12]:>12}" for m in methods)
    head += " " + " ".join(f"{'d ' + m[:10]:>12}" for m in other)
    head += f" {'banks/reason':>16} {'KL nats':>22} {'val tr':>6} {'val st':>6}"
    head += f" {'dens fc1':>8} " + " ".join(f"{'dens ' + m[:4]:>9}" for m in other)
    head += f" {'own fc1':>8} {'sig/pad':>11} {'kept s/p':>11}"
    lines.append(head)
    for t in range(tasks):
        acc = {m: [data[m][k]["final"][t] for k in seeds] for m in methods}
        logs = [data[ref][k]["log"].get(t, {}) for k in seeds]
        reasons = "/".join(f"{lg.get('bank', '-')}{lg.get('bank_reason', '-')[0]}" for lg in logs)
        kls = "/".join(f"{lg.get('kl', float('nan')):.3g}" for lg in logs)
        val_tr = _mean([lg["val_trained"] for lg in logs if "val_trained" in lg])
        val_st = _mean([lg["val_stored"] for lg in logs if "val_stored" in lg])
        dens = _mean([data[ref][k]["density"][t]["fc1"] for k in seeds])
        odens = [_mean([data[m][k]["density"][t]["fc1"] for k in seeds]) for m in other]
        own = _mean([lg["written"]["fc1"] / max(1, lg["written"]["fc1"] + lg["reused"]["fc1"])
                     for lg in logs if "written" in lg and "reused" in lg])
        row = f"{t:>4} " + " ".join(f"{100 * _mean(acc[m]):12.2f}" for m in methods)
        row += " " + " ".join(f"{100 * (_mean(acc[ref]) - _mean(acc[m])):+12.2f}" for m in other)
        row += f" {reasons:>16} {kls:>22} {100 * val_tr:6.2f} {100 * val_st:6.2f}"
        sig = _mean([data[ref][k]["density"][t].get("signal", float("nan")) for k in seeds])
        pad = _mean([data[ref][k]["density"][t].get("padding", float("nan")) for k in seeds])
        row += f" {dens:8.3f} " + " ".join(f"{d:9.3f}" for d in odens) + f" {own:8.3f}"
        row += f" {sig:5.3f}/{pad:5.3f}"
        kept = [_mean([data[ref][k]["density"][t].get(key, float("nan")) for k in seeds])
                for key in ("signal_kept", "padding_kept")]
        row += f" {kept[0]:5.3f}/{kept[1]:5.3f}"
        lines.append(row)
    # grouped by the gate's decision on the reference method (per seed)
    for m in other:
        groups: dict[str, list[float]] = {}
        for k in seeds:
            for t in range(tasks):
                reason = data[ref][k]["log"].get(t, {}).get("bank_reason", "-")
                key = "opens a bank" if reason in ("first", "kl", "full") else reason
                groups.setdefault(key, []).append(
                    data[ref][k]["final"][t] - data[m][k]["final"][t])
        parts = [f"{g}: {100 * _mean(v):+.2f} ({len(v)} task-seeds)"
                 for g, v in sorted(groups.items())]
        lines.append(f"{ref} - {m} by gate decision: " + "; ".join(parts))
        per_seed = [100 * (_mean(data[ref][k]["final"]) - _mean(data[m][k]["final"]))
                    for k in seeds]
        lines.append(f"{ref} - {m} ACC per seed: " + " / ".join(f"{d:+.2f}" for d in per_seed))
    for m in methods:
        drops = []
        for k in seeds:
            lg = data[m][k]["log"]
            if lg and all("val_trained" in lg[t] and "val_stored" in lg[t] for t in lg):
                drops.append(100 * _mean([lg[t]["val_stored"] - lg[t]["val_trained"] for t in lg]))
        if drops:
            lines.append(f"{m}: validation change through quantization (stored - trained), mean "
                         "over tasks, per seed: " + " / ".join(f"{d:+.3f}" for d in drops))
        banks = [len({lg.get("bank") for lg in data[m][k]["log"].values()})
                 for k in seeds if data[m][k]["log"]]
        if banks:
            lines.append(f"{m}: banks per seed: " + "/".join(str(b) for b in banks))
    return lines


def gate_banks(feats: list[np.ndarray], threshold: float,
               revisit: bool = False) -> list[tuple[int, str, float]]:
    """The KL gate's decisions alone: per task ``(bank, reason, divergence)``.

    ``feats``: each task's gate sample in task order. Reasons as in TinySubNets' log:
    ``"first"``, ``"joins"``, ``"revisits"``, ``"kl"`` (a new bank); a bank never runs out of
    prefixes here.
    """
    from bitsub_torch.cl.divergence import KLGate

    gate = KLGate(threshold)
    summaries = [gate.summarize(f) for f in feats]
    banks: list[list[int]] = []
    out = []
    for t, summary in enumerate(summaries):
        if not banks:
            banks.append([t])
            out.append((0, "first", 0.0))
            continue
        current = len(banks) - 1
        candidates = [current] + (list(range(current)) if revisit else [])
        scored = [(gate.decide(summary, [summaries[u] for u in banks[b]])[1], b)
                  for b in candidates]
        chosen, reason, d = gate.choose_bank(scored)
        if chosen is None:
            banks.append([])
            chosen = len(banks) - 1
        banks[chosen].append(t)
        out.append((chosen, reason, d))
    return out


def replay_gate(scenario: str, seeds: list[int], thresholds: list[float], data_dir: str | None,
                kl_samples: int = 2000, tasks: int = 10) -> list[str]:
    """The KL gate's bank and divergence per task, per seed, threshold and ``kl_revisit``."""
    from bitsub_torch.cl.divergence import evenly_spaced_rows
    from bitsub_torch.data.scenarios import get_scenario

    lines = []
    for k in seeds:
        sc = get_scenario(scenario, tasks=tasks, seed=k, data_dir=data_dir)
        feats = [evenly_spaced_rows(t.x_train, kl_samples) for t in sc.tasks]
        for threshold in thresholds:
            for revisit in (False, True):
                decisions = gate_banks(feats, threshold, revisit)
                cells = [f"{b}{r[0]}" + ("" if r == "first" else f"({d:.3g})")
                         for b, r, d in decisions]
                lines.append(f"seed {k} threshold {threshold:g} revisit {int(revisit)}: "
                             f"{1 + max(b for b, _, _ in decisions)} banks: " + " ".join(cells))
    return lines


def probe_budget(scenario: str, seeds: list[int], min_steps: int, out: Path,
                 data_dir: str | None, strategy_args: dict, tasks: int = 10,
                 strategy: str = "tinysubnets") -> None:
    """Runs with the protocol's ``min_steps`` raised (see the module docstring)."""
    import functools

    from bitsub_torch import cli
    from bitsub_torch.cl import protocol
    from bitsub_torch.cl.strategies import STRATEGIES
    from bitsub_torch.experiments import Independent

    STRATEGIES.setdefault("independent", Independent)  # as the table registers it

    original = protocol.Protocol
    # cli.train builds ``Protocol()`` from the module at call time; the instance stays an
    # instance of the original class (the trainer checks that)
    protocol.Protocol = functools.partial(original, min_steps=min_steps)  # type: ignore[misc]
    try:
        for k in seeds:
            cli.train(strategy=strategy, scenario=scenario, out=out / f"seed{k}", tasks=tasks,
                      seed=k, data_dir=data_dir, strategy_args=strategy_args, progress=False)
    finally:
        protocol.Protocol = original  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, help="the scenario's directory of runs")
    p.add_argument("--methods", nargs="+",
                   help="method directories; the first is compared with the others")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--gate", nargs="+", type=float,
                   help="replay the KL gate alone at these thresholds (no runs read)")
    p.add_argument("--scenario", default="mixed", help="the scenario of --gate")
    p.add_argument("--data-dir", help="data directory of --gate")
    p.add_argument("--kl-samples", type=int, default=2000, help="samples per task of --gate")
    p.add_argument("--probe-min-steps", type=int, help="train probe runs with this step floor")
    p.add_argument("--probe-out", type=Path, help="directory of the probe runs")
    p.add_argument("--strategy-args", default="{}", help="JSON arguments of the probe runs")
    p.add_argument("--probe-strategy", default="tinysubnets",
                   help="strategy of the probe runs (or independent)")
    a = p.parse_args(argv)
    if a.probe_min_steps is not None:
        if a.probe_out is None or a.probe_min_steps < 1:
            p.error("--probe-min-steps needs a positive number and --probe-out")
        probe_budget(a.scenario, a.seeds, a.probe_min_steps, a.probe_out, a.data_dir,
                     json.loads(a.strategy_args), strategy=a.probe_strategy)
        return 0
    if a.gate:
        for line in replay_gate(a.scenario, a.seeds, a.gate, a.data_dir, a.kl_samples):
            print(line)
        return 0
    if not a.runs or not a.methods:
        p.error("--runs and --methods are needed (or --gate)")
    missing = [str(a.runs / m / f"seed{k}") for m in a.methods for k in a.seeds
               if not (a.runs / m / f"seed{k}" / "results.json").is_file()]
    if missing:
        p.error(f"no finished run (results.json) in {missing}; run the table for them first")
    data = collect(a.runs, a.methods, a.seeds)
    for line in report(data, a.methods, a.seeds):
        print(line)
    if a.json:
        blob = {m: {str(k): {"final": v["final"], "density": v["density"],
                             "log": {str(t): lg for t, lg in v["log"].items()}}
                    for k, v in d.items()} for m, d in data.items()}
        a.json.write_text(json.dumps(blob, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

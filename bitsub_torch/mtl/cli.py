"""``bitsub-mtl``: train a multi-task pruning strategy, export it packed, write the results.

``bitsub-mtl --strategy adapmtl --scenario scenes --sparsity 0.9 --seed S --out D`` writes to D:

- ``results.json``: ``metrics`` ({task: {metric: value}} on the test split, from the torch model),
  ``lower_is_better`` ({metric: bool}), ``delta_t`` and ``delta_t_tasks`` (against the dense
  model of the same seed; ``delta_t_reference`` says whether that model was trained by this
  command or reused from the cache), ``sparsity`` ({"overall": x, "components": {"backbone":
  x, task: x, ...}}), ``file_metrics`` (the same metrics computed from ``model.h5``) and
  ``file_metrics_equal``, the packed sizes, the history of sparsity per component, the config;
- ``model.h5``: the packed model (backbone once, each head by its task);
- ``table.md``: a Table-2-like markdown table (this method beside the dense model);
- ``sparsity.png``: the sparsity of each component over training;
- ``checkpoint.pt``: killed and re-run with the same command, the run resumes from it.

``bitsub-eval model.h5 --scenario scenes --seed S`` prints the ``metrics`` JSON from the file
(:func:`evaluate_mtl_file`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bitsub_torch.checks import is_user_error
from bitsub_torch.cpukernels import pin_cpu_kernels

__all__ = ["evaluate_mtl_file", "main", "markdown_table", "plot_sparsity"]


def _parser() -> argparse.ArgumentParser:
    from bitsub_torch.data.multitask import MTL_SCENARIOS
    from bitsub_torch.mtl.thetas import THETA_GRADIENTS
    from bitsub_torch.mtl.trainer import DEFAULT_ITERATIONS, DEFAULT_THETA_GRADIENT, STRATEGIES

    p = argparse.ArgumentParser(
        prog="bitsub-mtl",
        description="Prune a multi-task network (AdapMTL or a baseline) to a target overall "
        "sparsity, export it to a packed model file and write results.json.")
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--scenario", required=True, choices=sorted(MTL_SCENARIOS))
    p.add_argument("--sparsity", type=float, default=0.9, help="target overall sparsity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    budgets = ", ".join(f"{k} {v}" for k, v in sorted(DEFAULT_ITERATIONS.items()))
    p.add_argument("--iterations", type=int, default=None, help="training iterations of the "
                   "dense model, AdapMTL's warm-up; the default is the scenario's budget, about "
                   f"3 passes or more over its training split ({budgets}); every pruning method "
                   "trains --iterations + --finetune in all")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--theta-init", type=float, default=-8.0,
                   help="initial theta of every component (threshold sigmoid(theta))")
    p.add_argument("--theta-lr", type=float, default=0.01)
    p.add_argument("--threshold", choices=("hard", "soft"), default="hard",
                   help="forward pass of AdapMTL's thresholds: weights above it kept (hard, "
                   "straight-through gradients of the soft threshold) or shrunk by it (soft, "
                   "STR's S(W, theta))")
    p.add_argument("--theta-decay", type=float, default=1.0,
                   help="L2 decay on theta (--theta-gradient loss only)")
    p.add_argument("--weighted-thetas", action="store_true",
                   help="the thetas learn from the relative task losses times the adaptive "
                   "weights (default: without them; the weights always learn from the "
                   "weighted loss)")
    rules = ", ".join(f"{k} {v}" for k, v in sorted(DEFAULT_THETA_GRADIENT.items()))
    p.add_argument("--theta-gradient", choices=THETA_GRADIENTS, default=None,
                   help="what the thetas descend: the loss gradient against the L2 decay (loss, "
                   "STR); each component's loss per pruned weight, centred over components: "
                   "from the soft threshold's gradient (per-weight; per-task: each task's "
                   "harm without the others' credit) or measured by raising each theta "
                   "(pruned-loss); or the Fisher saliency of its next pruned weights (fisher). "
                   f"Default: the scenario's ({rules})")
    p.add_argument("--ramp", type=float, default=0.5,
                   help="fraction of AdapMTL's pruning phase by which the sparsity schedule "
                   "reaches the target (default 0.5)")
    p.add_argument("--granularity", choices=("component", "layer"), default="component",
                   help="one theta per component (AdapMTL) or per layer")
    p.add_argument("--warmup", type=int, default=None,
                   help="iteration where adaptive weighting starts (default: the end of the "
                   "dense warm-up, --iterations)")
    p.add_argument("--window", type=int, default=None,
                   help="loss-fluctuation window (default: a tenth of the iterations)")
    p.add_argument("--finetune", type=int, default=None,
                   help="iterations after the dense model: AdapMTL's pruning phase, the "
                   "fine-tuning of magnitude / imp (default: half of --iterations)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of imp")
    p.add_argument("--width", type=int, default=16, help="channels of the network")
    p.add_argument("--bits", type=int, default=None,
                   help="store K-Means codes of this bit-width (1..16) instead of float32")
    p.add_argument("--adaptive-bits", type=float, default=None, metavar="DELTA",
                   help="choose the bit-widths by Algorithm 1 (validation Delta_T loss <= DELTA "
                   "%%) and store K-Means codes; metrics are then those of the quantized model")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="scenes and dense models (default $BITSUB_CACHE or ~/.cache/bitsub)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-progress", action="store_true")
    return p


def markdown_table(results: dict[str, Any]) -> str:
    """The Table-2-like rows of a run: metrics per task, Delta_T, sparsity per component."""
    metrics, dense = results["metrics"], results["dense_metrics"]
    lib = results["lower_is_better"]
    cols = [(t, m) for t, ms in metrics.items() for m in ms]
    comps = list(results["sparsity"]["components"])
    head = ["method"] + [f"{t} {m} {'↓' if lib[m] else '↑'}" for t, m in cols] + ["Δ_T %"] + [
        f"sparsity {c} %" for c in comps] + ["sparsity overall %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, ms: dict, dt: float, sp: dict) -> str:
        cells = [name] + [f"{ms[t][m]:.4f}" for t, m in cols] + [f"{dt:+.2f}"]
        cells += [f"{100 * sp['components'][c]:.1f}" for c in comps]
        cells += [f"{100 * sp['overall']:.1f}"]
        return "| " + " | ".join(cells) + " |"

    zero = {"overall": 0.0, "components": dict.fromkeys(comps, 0.0)}
    if results["strategy"] != "dense":
        lines.append(row("dense", dense, 0.0, zero))
    lines.append(row(results["strategy"], metrics, results["delta_t"], results["sparsity"]))
    return "\n".join(lines) + "\n"


def plot_sparsity(history: list[dict[str, Any]], components: list[str], path: Path,
                  title: str) -> None:
    """Sparsity of each component (and overall) against the training iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bitsub.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 3.5))
    its = [h["iteration"] for h in history]
    for c in ["overall"] + components:
        ax.plot(its, [100 * h[c] for h in history], label=c, lw=2.5 if c == "overall" else 1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("sparsity %")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, export, evaluate from the file, write everything; return results."""
    import torch

    import bitsub
    from bitsub.atomic import write_bytes
    from bitsub_torch.data.multitask import get_mtl_scenario
    from bitsub_torch.mtl.export import export_mtl, packed_metrics
    from bitsub_torch.mtl.trainer import MTLConfig, train_mtl

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.bits is not None and not 1 <= args.bits <= 16:
        raise ValueError(f"--bits must be in 1..16 (or left out for float32), got {args.bits}")
    if args.adaptive_bits is not None and (args.bits is not None or args.adaptive_bits < 0):
        raise ValueError("--adaptive-bits takes a Delta_T loss >= 0 and excludes --bits")
    torch.set_num_threads(args.threads)
    config = MTLConfig(
        strategy=args.strategy, scenario=args.scenario, sparsity=args.sparsity, seed=args.seed,
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
        theta_init=args.theta_init, theta_lr=args.theta_lr,
        theta_decay=args.theta_decay, threshold=args.threshold, ramp=args.ramp,
        weighted_thetas=args.weighted_thetas, theta_gradient=args.theta_gradient,
        granularity=args.granularity,
        warmup=args.warmup, window=args.window, finetune=args.finetune, rounds=args.rounds,
        width=args.width).resolved()  # checks the arguments before anything is written
    cache = args.cache_dir or Path(os.environ.get("BITSUB_CACHE",
                                                  Path.home() / ".cache" / "bitsub"))
    scenario = get_mtl_scenario(args.scenario, args.seed, data_dir=args.data_dir, cache_dir=cache)
    out = args.out
    model, results = train_mtl(config, scenario, out=out, cache=cache,
                               progress=not args.no_progress)
    bits = args.bits
    if args.adaptive_bits is not None:
        from bitsub_torch.mtl.export import adaptive_bits
        from bitsub_torch.mtl.objectives import delta_t
        from bitsub_torch.mtl.trainer import evaluate

        bits, reached = adaptive_bits(model, scenario, args.adaptive_bits)
        results["metrics_float"] = results["metrics"]
        results["metrics"] = evaluate(model, scenario)
        results["delta_t"], results["delta_t_tasks"] = delta_t(results["metrics"],
                                                               results["dense_metrics"])
        results["adaptive_bits"] = {"bits": bits, "val_delta_t": reached}
    pm = export_mtl(model, bits=bits)
    pm.save(out / "model.h5")
    loaded = bitsub.load(out / "model.h5")
    file_metrics = packed_metrics(loaded, scenario)
    results["file_metrics"] = file_metrics
    results["file_metrics_equal"] = file_metrics == results["metrics"]
    results["bits"] = bits
    results["file_bytes"] = (out / "model.h5").stat().st_size
    results["packed_fields"] = {t: {n: loaded.fields(t, n) for n in loaded.layers if
                                    loaded.fields(t, n)} for t in loaded.tasks}
    write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    write_bytes(out / "table.md", markdown_table(results).encode())
    plot_sparsity(results["history"], list(results["sparsity"]["components"]),
                  out / "sparsity.png", f"{args.strategy} on {args.scenario}, seed {args.seed}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bitsub-mtl``."""
    args = _parser().parse_args(argv)
    if argv is None:  # this process is the command: its CPU kernels are ours to pin
        pin_cpu_kernels()
    try:
        results = run(args)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        if not is_user_error(exc):
            raise
        print(f"bitsub-mtl: error: {exc}", file=sys.stderr)
        return 2
    sp = results["sparsity"]
    print(markdown_table(results), end="")
    print(f"Delta_T {results['delta_t']:+.2f}% (dense {results['delta_t_reference']}); overall "
          f"sparsity {100 * sp['overall']:.2f}%; metrics from model.h5 equal: "
          f"{results['file_metrics_equal']}; {results['file_bytes']} bytes -> {args.out}")
    return 0


def evaluate_mtl_file(path: str | os.PathLike, scenario: str, seed: int = 0,
                      data_dir: str | os.PathLike | None = None, split: str = "test",
                      cache_dir: str | os.PathLike | None = None
                      ) -> dict[str, Any]:
    """``{"model", "scenario", "seed", "split", "metrics"}`` of a packed multi-task model file."""
    import bitsub
    from bitsub_torch.data.multitask import get_mtl_scenario
    from bitsub_torch.mtl.export import packed_metrics

    pm = bitsub.load(path)
    sc = get_mtl_scenario(scenario, seed, data_dir=data_dir, cache_dir=cache_dir)
    return {"model": str(path), "scenario": scenario, "seed": seed, "split": split,
            "metrics": packed_metrics(pm, sc, split=split)}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

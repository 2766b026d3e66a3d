"""The README table of the multi-task runs: ``python -m bitsub_torch.mtl.table ROOT``.

Reads every ``ROOT/<scenario>/<strategy>/s<seed>/results.json`` written by ``bitsub-mtl`` and
prints, per scenario, one row per strategy: the mean and the standard deviation over seeds
(``ddof=1``) of Delta_T, of each task's first metric and of the sparsity of every component, the
Delta_T of each seed, for classification the mean accuracy over the tasks, and for ``scenes``
the Delta_T that AdapMTL's Table 2 reports on NYU-v2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["collect", "main", "markdown"]

ORDER = ("dense", "adapmtl", "adapmtl-uniform", "adapmtl-noweighting", "magnitude", "imp", "snip")
#: Delta_T % of AdapMTL's Table 2 (NYU-v2, about 90% overall sparsity); "-" where it has no row.
PAPER_TABLE2 = {"dense": "0 (reference)", "adapmtl": "+2.66", "adapmtl-uniform": "-7.30",
                "adapmtl-noweighting": "-", "magnitude": "-", "imp": "-3.41", "snip": "-9.99"}


def collect(root: Path) -> dict[str, dict[str, list[dict]]]:
    """``{scenario: {strategy: [results per seed]}}``."""
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(Path(root).glob("*/*/s*/results.json")):
        r = json.loads(path.read_text())
        out.setdefault(r["scenario"], {}).setdefault(r["strategy"], []).append(r)
    return out


def _cell(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    sd = float(np.std(values, ddof=1))
    return f"{format(float(np.mean(values)), fmt)} ±{format(sd, fmt.lstrip('+'))}"


def markdown(runs: dict[str, list[dict]], paper: bool = False) -> str:
    """One scenario's table (``paper``: with the column of AdapMTL's Table 2)."""
    first = next(iter(runs.values()))[0]
    cols = [(t, next(iter(ms))) for t, ms in first["metrics"].items()]
    comps = list(first["sparsity"]["components"])
    accuracy = all(m == "accuracy" for _, m in cols)
    head = (["method", "seeds", "Δ_T %", "Δ_T per seed"] + [f"{t} {m}" for t, m in cols]
            + [f"sp. {c} %" for c in comps] + ["sp. overall %"])
    if accuracy:
        head += ["mean accuracy %", "mean accuracy per seed"]
    if paper:
        head.append("paper Table 2 Δ_T % (NYU-v2)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy in [s for s in ORDER if s in runs]:
        rs = sorted(runs[strategy], key=lambda r: r["seed"])
        cells = [strategy, ",".join(str(r["seed"]) for r in rs),
                 _cell([r["delta_t"] for r in rs], "+.2f"),
                 ", ".join(f"{r['delta_t']:+.2f}" for r in rs)]
        cells += [_cell([r["metrics"][t][m] for r in rs], ".4f") for t, m in cols]
        cells += [_cell([100 * r["sparsity"]["components"][c] for r in rs], ".1f") for c in comps]
        cells += [_cell([100 * r["sparsity"]["overall"] for r in rs], ".1f")]
        if accuracy:
            acc = [100 * float(np.mean([r["metrics"][t][m] for t, m in cols])) for r in rs]
            cells += [_cell(acc, ".2f"), ", ".join(f"{a:.2f}" for a in acc)]
        if paper:
            cells.append(PAPER_TABLE2[strategy])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the tables of every scenario under the root directory."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bitsub_torch.mtl.table ROOT", file=sys.stderr)
        return 2
    found = collect(Path(argv[0]))
    if not found:
        print(f"no */*/s*/results.json under {argv[0]}", file=sys.stderr)
        return 2
    for scenario, runs in found.items():
        print(f"{scenario}:\n\n{markdown(runs, paper=scenario == 'scenes')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

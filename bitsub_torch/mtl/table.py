"""The README table of the multi-task runs: ``python -m bitsub_torch.mtl.table ROOT``.

Reads every ``ROOT/<scenario>/<strategy>/s<seed>/results.json`` written by ``bitsub-mtl`` and
prints, per scenario, one row per strategy: the mean (and the spread, max - min, over seeds) of
Delta_T, of each task's first metric and of the sparsity of every component.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["collect", "main", "markdown"]

ORDER = ("dense", "adapmtl", "adapmtl-uniform", "adapmtl-noweighting", "magnitude", "imp", "snip")


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
    return f"{format(float(np.mean(values)), fmt)} ±{format(float(np.ptp(values)) / 2, fmt)}"


def markdown(runs: dict[str, list[dict]]) -> str:
    """One scenario's table."""
    first = next(iter(runs.values()))[0]
    cols = [(t, next(iter(ms))) for t, ms in first["metrics"].items()]
    comps = list(first["sparsity"]["components"])
    head = (["method", "seeds", "Δ_T %"] + [f"{t} {m}" for t, m in cols]
            + [f"sp. {c} %" for c in comps] + ["sp. overall %"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy in [s for s in ORDER if s in runs]:
        rs = runs[strategy]
        cells = [strategy, ",".join(str(r["seed"]) for r in rs),
                 _cell([r["delta_t"] for r in rs], "+.2f")]
        cells += [_cell([r["metrics"][t][m] for r in rs], ".4f") for t, m in cols]
        cells += [_cell([100 * r["sparsity"]["components"][c] for r in rs], ".1f") for c in comps]
        cells += [_cell([100 * r["sparsity"]["overall"] for r in rs], ".1f")]
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
        print(f"{scenario}:\n\n{markdown(runs)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

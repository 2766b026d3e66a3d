"""The README table of the multi-task runs: mean, standard deviation and per-seed values."""

from __future__ import annotations

import json

import numpy as np

from bitsub_torch.mtl.table import collect, main, markdown


def _result(strategy: str, seed: int, dt: float, acc: tuple[float, float]) -> dict:
    return {"scenario": "multimnist", "strategy": strategy, "seed": seed, "delta_t": dt,
            "metrics": {"left": {"accuracy": acc[0]}, "right": {"accuracy": acc[1]}},
            "sparsity": {"overall": 0.9, "components": {"backbone": 0.5, "left": 0.95,
                                                        "right": 0.95}}}


def test_table_cells_and_collect(tmp_path, capsys):
    runs = [_result("adapmtl", 3, -2.0, (0.5, 0.75)), _result("adapmtl", 2, 1.0, (0.25, 0.5))]
    for r in runs + [_result("dense", 2, 0.0, (0.5, 0.5))]:
        d = tmp_path / r["scenario"] / r["strategy"] / f"s{r['seed']}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(r))
    found = collect(tmp_path)
    assert sorted(found["multimnist"]) == ["adapmtl", "dense"]
    table = markdown(found["multimnist"])
    row = next(line for line in table.splitlines() if line.startswith("| adapmtl "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    sd = float(np.std([1.0, -2.0], ddof=1))  # 2.1213...
    assert cells[1] == "2,3"  # seeds in order
    assert cells[2] == f"-0.50 ±{sd:.2f}"
    assert cells[3] == "+1.00, -2.00"  # per seed, seed order
    assert cells[-2] == f"50.00 ±{float(np.std([37.5, 62.5], ddof=1)):.2f}"
    assert cells[-1] == "37.50, 62.50"
    assert "paper Table 2" not in table
    assert main([str(tmp_path)]) == 0
    assert "multimnist:" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 2

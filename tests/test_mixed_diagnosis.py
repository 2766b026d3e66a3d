"""bench/mixed_diagnosis.py: its replay of the KL gate makes TinySubNets' own decisions."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tinysubnets import digits_tasks, train

from bitsub_torch.cl.divergence import evenly_spaced_rows
from bitsub_torch.cl.strategies import TinySubNets

torch.set_num_threads(1)

_PATH = Path(__file__).resolve().parents[1] / "bench" / "mixed_diagnosis.py"
_SPEC = importlib.util.spec_from_file_location("mixed_diagnosis", _PATH)
diag = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(diag)


@pytest.mark.parametrize(("threshold", "revisit"),
                         [(0.5, False), (0.5, True), (float("inf"), False), (0.0, False)])
def test_gate_replay_equals_the_strategys_log(threshold, revisit):
    # tasks 2 and 4 from another 'domain' (3 + 4x): a new bank at 2, then 3 (back to x) and 4
    # test opening, revisiting and joining
    scenario = digits_tasks(5, shifted=(2, 4))
    strategy = TinySubNets(0.5, post_prune_iters=0, kl_threshold=threshold, kl_revisit=revisit)
    train(strategy, scenario, epochs=1)
    feats = [evenly_spaced_rows(t.x_train, strategy.kl_samples) for t in scenario.tasks]
    replay = diag.gate_banks(feats, threshold, revisit)
    logged = [(strategy.log[t]["bank"], strategy.log[t]["bank_reason"], strategy.log[t]["kl"])
              for t in range(len(scenario.tasks))]
    assert replay == logged  # the same sums in the same order: the divergences bit for bit
    expected = {  # (bank, reason) per task; the current bank is the last one opened
        (0.5, False): [(0, "first"), (0, "joins"), (1, "kl"), (2, "kl"), (3, "kl")],
        (0.5, True): [(0, "first"), (0, "joins"), (1, "kl"), (0, "revisits"), (1, "joins")],
        (float("inf"), False): [(0, "first")] + [(0, "joins")] * 4,
        # threshold 0: task 1 (task 0's images, pixels permuted) still joins: the histogram of
        # pixel values does not see a permutation (divergence exactly 0)
        (0.0, False): [(0, "first"), (0, "joins"), (1, "kl"), (2, "kl"), (3, "kl")],
    }[threshold, revisit]
    assert [(b, r) for b, r, _ in logged] == expected
    if threshold == 0.0:
        assert logged[1][2] == 0.0


def test_gate_replay_revisits_where_the_current_bank_is_too_far():
    # a histogram of pixel values: task 1 (x) and task 2 (3 + 4x) differ, task 3 is x again
    rng = np.random.default_rng(0)
    x = rng.random((200, 16)).astype(np.float32)
    feats = [x, 3 + 4 * x, x[::-1].copy()]
    assert [b for b, _, _ in diag.gate_banks(feats, 0.5)] == [0, 1, 2]
    again = diag.gate_banks(feats, 0.5, revisit=True)
    assert [(b, r) for b, r, _ in again] == [(0, "first"), (1, "kl"), (0, "revisits")]
    assert again[2][2] == 0.0  # the same values in another row order: the same histogram


def test_report_reads_runs_back(tmp_path):
    # two fake methods, one seed: the final row, the gap and the gate's grouping
    for method, final in (("a", [0.9, 0.5]), ("b", [0.8, 0.7])):
        run = tmp_path / method / "seed0"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"accuracy_matrix": [[final[0], 0.1],
                                                                          final]}))
    assert diag.final_row(tmp_path / "a" / "seed0") == [0.9, 0.5]
    data = {m: {0: {"final": diag.final_row(tmp_path / m / "seed0"),
                    "log": {0: {"bank": 0, "bank_reason": "first", "kl": 0.0},
                            1: {"bank": 0, "bank_reason": "joins", "kl": 0.1}} if m == "a"
                    else {}, "density": [{"fc1": 0.2}, {"fc1": 0.2}]}} for m in ("a", "b")}
    lines = diag.report(data, ["a", "b"], [0])
    assert "a - b by gate decision: joins: -20.00 (1 task-seeds); opens a bank: +10.00 " \
        "(1 task-seeds)" in lines
    assert "a - b ACC per seed: -5.00" in lines

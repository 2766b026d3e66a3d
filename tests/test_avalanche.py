"""The Avalanche adapter: importable without avalanche-lib; with it (skipped otherwise), a bitsub
strategy trained on an Avalanche stream reports through Avalanche's EvaluationPlugin the same
per-experience accuracies as bitsub's own accuracy matrix."""

import importlib.util
import io
import sys
import warnings

import numpy as np
import pytest
import torch

import bitsub_torch.avalanche as adapter

HAVE_AVALANCHE = importlib.util.find_spec("avalanche") is not None
if HAVE_AVALANCHE:  # its optional dependencies warn at import (no QP solver, ...): not ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import avalanche.benchmarks
        import avalanche.evaluation.metrics
        import avalanche.logging
        import avalanche.training.plugins
        import avalanche.training.templates  # noqa: F401


@pytest.mark.skipif(HAVE_AVALANCHE, reason="checks the message shown without avalanche-lib")
def test_without_avalanche_a_clear_error():
    assert "avalanche" not in sys.modules  # importing the adapter imported nothing of it
    with pytest.raises(ModuleNotFoundError, match="pip install avalanche-lib"):
        adapter.task_label_model(torch.nn.Linear(1, 1), None, [])


def digits_benchmark(task_labels=True):
    from avalanche.benchmarks import nc_benchmark
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    test = np.arange(len(y)) % 5 == 0
    sets = []
    for rows in (~test, test):
        s = TensorDataset(x[rows], y[rows])
        s.targets = y[rows].tolist()
        sets.append(s)
    return nc_benchmark(sets[0], sets[1], 3, task_labels=task_labels, shuffle=False,
                        fixed_class_order=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                        per_exp_classes={0: 4, 1: 3, 2: 3})


@pytest.mark.skipif(not HAVE_AVALANCHE, reason="avalanche-lib is not installed")
def test_run_stream_reports_bitsubs_accuracies_through_the_evaluation_plugin():
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    from bitsub_torch.cl.strategies import get_strategy
    from bitsub_torch.nn.models import mlp

    bench = digits_benchmark()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True),
                                 loggers=[TextLogger(io.StringIO())])
    torch.manual_seed(0)
    model = mlp((64,), 4, 3, width=32)
    run = adapter.run_stream(model, get_strategy("wsn"), bench, evaluator=evaluator, epochs=4,
                             lr=1e-2)
    R = run.results.accuracy_matrix
    assert R.shape == (3, 3) and run.results.bwt == 0.0  # WSN's frozen masks: no forgetting
    assert R[-1].min() > 0.5  # chance is 1/3 or 1/4
    for j, exp in enumerate(bench.test_stream):
        key = f"Top1_Acc_Exp/eval_phase/test_stream/Task{j:03d}/Exp{j:03d}"
        reported = np.array(run.metrics[key][1])
        # the same count of correct samples: closer than one sample in len(test set)
        assert reported.shape == (3,)
        assert np.abs(reported - R[:, j]).max() < 0.5 / len(exp.dataset)


@pytest.mark.skipif(not HAVE_AVALANCHE, reason="avalanche-lib is not installed")
def test_stream_scenario_needs_one_task_label_per_experience():
    bench = digits_benchmark()
    sc, labels = adapter.stream_scenario(bench.train_stream, bench.test_stream)
    assert labels == [0, 1, 2]
    assert [t.classes for t in sc.tasks] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert sc.num_classes == 4 and sc.input_shape == (64,)
    assert all(set(np.unique(t.y_test)) <= set(range(len(t.classes))) for t in sc.tasks)
    with pytest.raises(ValueError, match="task-incremental"):
        adapter.stream_scenario(digits_benchmark(False).train_stream,
                                digits_benchmark(False).test_stream)

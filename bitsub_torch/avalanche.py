"""Run a bitsub strategy on an Avalanche benchmark stream, reporting through Avalanche's evaluator.

`Avalanche <https://avalanche.continualai.org>`_ (``avalanche-lib``) is not a dependency of
bitsub: this module imports it only when called. `run_stream` takes a task-incremental Avalanche
benchmark (every experience with its own task label, e.g. ``SplitMNIST(5, return_task_id=True)``)
and

1. reads each experience's samples once (``stream_scenario``: the training stream through its
   *eval* transforms, so no random augmentation is frozen into the arrays; labels made
   task-local, the experience's classes kept in ``TaskData.classes``; a validation split drawn
   as bitsub's own scenarios draw it),
2. trains the bitsub strategy on experience after experience with its task label (bitsub's
   `Trainer`: the same phases, pruning and hooks as ``bitsub-train``),
3. after each experience evaluates the model on the whole test stream with Avalanche's own eval
   loop (``SupervisedTemplate.eval``) so that an ``EvaluationPlugin`` and its loggers report the
   usual metrics (``Top1_Acc_Exp/eval_phase/test_stream/Task00k/Exp00k`` ...), and records bitsub's
   accuracy matrix beside them.

The model seen by Avalanche is `task_label_model`: an ``avalanche.models.MultiTaskModule`` that
routes each sample to the head of its task label and writes that head's logits at the
experience's original class ids (the other classes get ``-inf``), so Avalanche's accuracy of the
global labels equals bitsub's accuracy of the task-local ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bitsub_torch.cl import metrics
from bitsub_torch.cl.strategies.base import Strategy
from bitsub_torch.cl.trainer import Results, Trainer
from bitsub_torch.data.scenarios import Scenario, task_data

__all__ = ["StreamRun", "run_stream", "stream_scenario", "task_label_model"]

_INSTALL = ("this needs avalanche-lib (pip install avalanche-lib; see the README's 'Streaming data "
            "and Avalanche')")


def _avalanche() -> Any:
    try:
        import avalanche.models
        import avalanche.training.templates
    except ImportError as exc:
        raise ModuleNotFoundError(f"{_INSTALL}: {exc}", name="avalanche") from exc
    return avalanche


def _arrays(dataset: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray, set[int]]:
    """All samples of an Avalanche dataset as (float32 x, int64 y, task labels seen)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys, labels = [], [], set()
    for batch in loader:
        xs.append(torch.as_tensor(batch[0]).float().numpy())
        ys.append(torch.as_tensor(batch[1]).long().numpy())
        if len(batch) > 2:
            labels.update(int(t) for t in torch.as_tensor(batch[2]).unique())
    if not xs:
        raise ValueError("an Avalanche experience holds no samples")
    return np.concatenate(xs), np.concatenate(ys), labels


def stream_scenario(
    train_stream: Any,
    test_stream: Any,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    name: str = "avalanche",
    batch_size: int = 1024,
) -> tuple[Scenario, list[int]]:
    """A bitsub `Scenario` from an Avalanche train / test stream, and the task label of each task.

    Experience i of both streams becomes task i; its labels are made task-local in the order of
    the sorted class ids of the training experience (``TaskData.classes``).

    Raises
    ------
    ValueError
        If the streams differ in length, an experience has several task labels or two share one
        (bitsub strategies are task-incremental: build the benchmark with task labels), or a test
        experience holds classes its training experience does not.
    """
    train, test = list(train_stream), list(test_stream)
    if not train or len(train) != len(test):
        raise ValueError(f"the train stream has {len(train)} experiences and the test stream "
                         f"{len(test)}: give two non-empty streams of the same benchmark")
    tasks, labels = [], []
    shape = None
    for t, (tr, te) in enumerate(zip(train, test)):
        dataset = tr.dataset.eval() if hasattr(tr.dataset, "eval") else tr.dataset
        x_tr, y_tr, seen = _arrays(dataset, batch_size)
        x_te, y_te, seen_te = _arrays(te.dataset, batch_size)
        seen |= seen_te
        if len(seen) > 1:
            raise ValueError(f"experience {t} holds task labels {sorted(seen)}; bitsub needs one "
                             "task label per experience")
        label = int(seen.pop()) if seen else int(getattr(tr, "task_label", t))
        if label in labels:
            raise ValueError(
                f"experiences {labels.index(label)} and {t} share task label {label}: bitsub "
                "strategies are task-incremental; build the benchmark with task labels (e.g. "
                "return_task_id=True)")
        classes = np.unique(y_tr)
        if not np.isin(y_te, classes).all():
            raise ValueError(f"test experience {t} holds classes that training experience {t} "
                             "does not")
        shape = shape or x_tr.shape[1:]
        if x_tr.shape[1:] != shape or x_te.shape[1:] != shape:
            raise ValueError(f"experience {t} has inputs of shape {x_tr.shape[1:]}, the first "
                             f"{shape}")
        tasks.append(task_data(t, x_tr, np.searchsorted(classes, y_tr), x_te,
                               np.searchsorted(classes, y_te), tuple(int(c) for c in classes),
                               seed=seed, val_fraction=val_fraction))
        labels.append(label)
    width = max(len(task.classes) for task in tasks)
    return Scenario(name, tuple(int(s) for s in shape), width, tasks), labels


def task_label_model(model: torch.nn.Module, scenario: Scenario, labels: list[int]) -> Any:
    """``model`` (a bitsub ``TaskNetwork``) as an Avalanche ``MultiTaskModule`` (see the module).

    The wrapper holds ``model`` itself (no copy): training ``model`` changes what it predicts.
    """
    avalanche = _avalanche()
    route = {int(lab): t for t, lab in enumerate(labels)}
    width = 1 + max(max(task.classes) for task in scenario.tasks)
    classes = [torch.tensor(task.classes, dtype=torch.long) for task in scenario.tasks]

    class TaskLabelModel(avalanche.models.MultiTaskModule):
        """A bitsub TaskNetwork answering per-sample task labels with global class logits."""

        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
            if int(task_label) not in route:
                raise ValueError(f"task label {task_label} is not one of the stream's {labels}")
            t = route[int(task_label)]
            local = self.net(x, t)
            out = torch.full((len(x), width), float("-inf"), device=local.device,
                             dtype=local.dtype)
            cls = classes[t].to(local.device)
            out[:, cls] = local[:, : len(cls)]
            return out

        def forward(self, x: torch.Tensor, task_labels: Any = None) -> torch.Tensor:
            if task_labels is None:
                raise ValueError("a bitsub model needs task labels")
            if isinstance(task_labels, int):
                return self.forward_single_task(x, task_labels)
            out = None
            for task in torch.unique(task_labels):
                rows = task_labels == task
                part = self.forward_single_task(x[rows], int(task))
                if out is None:
                    out = torch.empty((len(x), width), device=part.device, dtype=part.dtype)
                out[rows] = part
            return out

    return TaskLabelModel()


@dataclass
class StreamRun:
    """What `run_stream` measured: bitsub's results and the Avalanche evaluator's metrics."""

    results: Results
    metrics: dict


def run_stream(
    model: torch.nn.Module,
    strategy: Strategy,
    benchmark: Any,
    *,
    evaluator: Any = None,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.1,
    eval_mb_size: int = 1024,
    device: str = "cpu",
    progress: bool = False,
    **trainer_args: Any,
) -> StreamRun:
    """Train ``strategy`` on ``benchmark``'s train stream, evaluating after every experience.

    Parameters
    ----------
    model : TaskNetwork
        A bitsub network with a head per experience (``num_tasks >= len(train_stream)``) at
        least as wide as the largest experience's class count.
    strategy : Strategy
        A task-incremental bitsub strategy (``get_strategy("wsn")`` ...).
    benchmark : avalanche benchmark
        With ``train_stream`` and ``test_stream`` of the same length, one task label per
        experience.
    evaluator : avalanche.training.plugins.EvaluationPlugin, optional
        Receives the test-stream evaluation after each experience (default: Avalanche's
        ``default_evaluator()``, accuracy and loss to the console).
    epochs, batch_size, lr, seed, val_fraction, device, progress, **trainer_args
        As for `bitsub_torch.cl.trainer.Trainer` and `bitsub_torch.data.scenarios.get_scenario`.
    eval_mb_size : int
        Mini-batch size of Avalanche's evaluation loop.

    Returns
    -------
    StreamRun
        bitsub's `Results` (the re-tested accuracy matrix, ACC, BWT, ...) and
        ``evaluator.get_all_metrics()``.
    """
    avalanche = _avalanche()
    scenario, labels = stream_scenario(benchmark.train_stream, benchmark.test_stream, seed=seed,
                                       val_fraction=val_fraction)
    trainer = Trainer(model, strategy, scenario, epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=seed, device=device, progress=progress, **trainer_args)
    wrapped = task_label_model(trainer.model, scenario, labels)
    kwargs = {} if evaluator is None else {"evaluator": evaluator}
    template = avalanche.training.templates.SupervisedTemplate(
        model=wrapped, optimizer=torch.optim.SGD(wrapped.parameters(), lr=0.0),
        eval_mb_size=eval_mb_size, device=device, **kwargs)
    num = len(scenario.tasks)
    strategy.setup(trainer.model, scenario)
    torch.manual_seed(seed)
    random_init = np.array([trainer.evaluate(trainer.model, j, "test") for j in range(num)])
    rows = np.full((num, num), np.nan)
    for task in range(num):
        trainer.train_task(task)
        rows[task] = [trainer.evaluate(trainer.model, j, "test") for j in range(num)]
        template.eval(benchmark.test_stream)
    results = Results(accuracy_matrix=rows, random_init_accuracy=random_init,
                      acc=metrics.acc(rows), bwt=metrics.bwt(rows),
                      fwt=metrics.fwt(rows, random_init), forgetting=metrics.forgetting(rows),
                      config=trainer.config())
    return StreamRun(results, template.evaluator.get_all_metrics())

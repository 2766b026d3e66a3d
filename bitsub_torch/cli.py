"""Command-line tools: ``bitsub-train`` (train, export, report), ``bitsub-eval`` (re-test a file).

``bitsub-train --strategy S --scenario C --out DIR`` trains the tasks of scenario C one after the
other with strategy S, then writes

- ``DIR/results.json``: ``accuracy_matrix`` (R[i][j], test accuracy on task j after training task
  i, re-tested), ``acc``, ``bwt``, ``fwt``, ``forgetting``, ``random_init_accuracy``, ``capacity``
  (``percent`` and ``bits`` per component of the packed file), ``export`` (the accuracy of every
  task measured from the file with bitsub's NumPy forward, and the fraction of test samples on
  which the file and the torch model predict the same label), ``config`` and ``timings``;
  ``activation_quantization`` (per-task test accuracy with every task layer's input quantized to
  b bits on a per-tensor range calibrated on the validation split, weights as stored: Table 7 of
  TinySubNets; ``--activation-bits``, default 4 8 16 for the quantizing strategies and none
  otherwise) and ``ops`` (per task: MACs, FLOPs and bit-operations of the dense model and of the
  task's sub-network at <b_w, b_a>; see ``bitsub_torch.cl.ops.ops_report``);
- ``DIR/model.h5``: the packed model (lossless raw float32 fields, or ``--export-bits b`` codes);
- ``DIR/accuracy_matrix.png``: a heat map of R.

The trainer checkpoints after every task under ``DIR/checkpoints``: running the same command again
after an interruption continues from the last finished task and ends with the same results.
``DIR/config.json`` records the arguments (the strategy's with every default filled in, and so
does every checkpoint); a different command on the same DIR is refused, naming what differs.

Every argument, the strategy's included (by the strategy's own checks), is checked before
anything is written; a user mistake, missing data or package, or an I/O error (full disk,
permission, a directory where a file belongs) ends in a one-line error and exit status 2; Ctrl-C
in one line and exit status 130 (the same command then resumes).

``bitsub-train --nproc N`` (``torchrun --nproc-per-node N -m bitsub_torch.train``) trains
data-parallel at the same global ``--batch-size`` (`bitsub_torch.cl.distributed`).

Run as a command, ``bitsub-train`` first fixes glibc's mmap threshold at 64 KiB so that freed
tensors go back to the system (`bitsub_torch.allocator`; ``--system-malloc`` or
``BITSUB_MALLOC=system`` opts out); called as ``train_main(argv)`` from Python it does not.

Length: two tools (training, single-process or one rank of a data-parallel run, and re-testing)
share their checks and the report; each function is short.

``bitsub-eval DIR/model.h5 --scenario C --seed K`` re-tests every task from the file alone with
bitsub's NumPy forward pass and prints the per-task accuracy as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bitsub.atomic import write_bytes
from bitsub_torch.checks import (
    MODELS,
    USER_ERRORS,
    check_int,
    check_out,
    check_positive,
    check_train_arguments,
    error_line,
    is_user_error,
    naming,
)
from bitsub_torch.cl.figures import plot_accuracy_matrix
from bitsub_torch.cpukernels import PINNED, pin_cpu_kernels

__all__ = ["eval_main", "json_safe", "train", "train_main"]

# The arguments of a run that the Trainer cannot see; the CLI hands them to its checkpoints.
RUN_ONLY = ("model", "width", "val_fraction", "data_dir", "export_bits")


# ------------------------------------------------------------------------------------ helpers


def json_safe(v: Any) -> Any:
    """``v`` with dict keys as strings and NumPy scalars/arrays as plain JSON values."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(float(v)) else float(v)
    return v


def _torch_predictions(model: Any, task: int, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    import torch

    model.eval()
    device = next(model.parameters()).device
    out = [np.zeros(0, np.int64)]
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))
            pred = model(xb.to(device), task).argmax(dim=1).cpu()
            out.append(pred.numpy().astype(np.int64))
    return np.concatenate(out)


# ------------------------------------------------------------------------------------ training


def _export_bits(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a bit-width or 'auto', got {text!r}") from None


def _train_parser() -> argparse.ArgumentParser:
    from bitsub_torch.cl.strategies import STRATEGIES
    from bitsub_torch.data.scenarios import SCENARIOS

    p = argparse.ArgumentParser(
        prog="bitsub-train",
        description="Train a continual-learning strategy on a scenario, export the packed model, "
        "write results.json, model.h5 and accuracy_matrix.png to --out (resumable).",
    )
    p.add_argument("--strategy", required=True, choices=sorted(STRATEGIES))
    p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    p.add_argument("--out", required=True, type=Path, help="output directory (also checkpoints)")
    p.add_argument("--tasks", type=int, default=None, help="number of tasks (scenario default)")
    p.add_argument("--epochs", type=int, default=None,
                   help="a fixed number of training epochs per task (default: train each task "
                   "until its validation accuracy stops improving, bitsub_torch.cl.protocol; "
                   "2 epochs for the one-model strategies)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None, help="directory of on-disk data sets")
    p.add_argument("--export-bits", type=_export_bits, default=None,
                   help="store b-bit K-Means codes (1..16) instead of lossless float32 fields; "
                   "one-model strategies also take 'auto' (Algorithm 1 on validation)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 128; 32 for the one-model strategies")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--score-lr", type=float, default=None,
                   help="learning rate of the mask scores of wsn and tinysubnets (default: --lr, "
                   "as in WSN's reference code)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd"))
    p.add_argument("--model", default=None, choices=MODELS,
                   help="network (default: alexnet at width 0.25 on splitfmnist2d, else mlp "
                   "for flat inputs, alexnet for 28x28 and 32x32 images, tinynet for 64x64)")
    p.add_argument("--width", type=float, default=None,
                   help="network width (default: 0.25 for splitfmnist2d's alexnet, else the "
                   "model's own; 1 is the full network)")
    p.add_argument("--strategy-args", default="{}",
                   help='JSON keyword arguments of the strategy, e.g. \'{"density": 0.3}\' '
                   '(tinysubnets\' post_prune_iters, retrain_epochs and post_prune_first '
                   'default to the scenario\'s: 20, 1, true on pfmnist, 0, 0, false elsewhere)')
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: for the small MLPs of these scenarios, 2 "
                        "threads measured about 10x slower on a shared 2-core machine)")
    p.add_argument("--activation-bits", type=int, nargs="*", default=None, metavar="B",
                   help="after training, re-test every task with layer inputs quantized to each "
                   "B bits (2..16; range calibrated on the val split); default 4 8 16 for "
                   "quantizing strategies (tinysubnets, adaqpacknet), none otherwise; give the "
                   "flag alone for none")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=int, default=1, help="train data-parallel on N processes "
                   "(torchrun --nproc-per-node N -m bitsub_torch.train); --batch-size is global")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes gathering the training batches (default 0: "
                   "in the training process; the batches are the same whatever the number)")
    p.add_argument("--pin-memory", action="store_true",
                   help="page-locked training batches for asynchronous copies to a CUDA device")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's allocator as it is (default: its mmap threshold is fixed "
                   "at 64 KiB so that freed tensors go back to the system, "
                   "bitsub_torch.allocator; also BITSUB_MALLOC=system)")
    # one-model (class-incremental) strategies: esacl, er, derpp, prune-retrain
    p.add_argument("--setting", default=None, choices=("class-il", "task-il"),
                   help="one-model strategies: the headline setting of results.json (both "
                   "class-IL and task-IL are always measured; default class-il)")
    p.add_argument("--buffer", type=int, default=None,
                   help="one-model strategies: replay buffer slots (default 500)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="esacl, prune-retrain: fraction of the weights pruned (default 0.9)")
    return p


def train(
    *,
    strategy: str,
    scenario: str,
    out: str | os.PathLike,
    tasks: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    export_bits: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    score_lr: float | None = None,
    optimizer: str = "adam",
    model: str | None = None,
    width: float | None = None,
    strategy_args: dict[str, Any] | None = None,
    val_fraction: float = 0.1,
    threads: int = 1,
    progress: bool = True,
    activation_bits: Sequence[int] | None = None,
    distributed: Any = None,
    workers: int = 0,
    pin_memory: bool = False,
) -> dict[str, Any] | None:
    """Train, export and write the run's files to ``out`` (resuming from its checkpoints).

    The keyword arguments are those of ``bitsub-train``; ``epochs`` None trains every task with
    the convergence protocol (`bitsub_torch.cl.protocol.Protocol`, its defaults).
    ``activation_bits`` None means ``ACTIVATION_BITS`` (4, 8, 16) for a strategy that quantizes
    and none otherwise; it is a post-training evaluation, so it is not part of the resumable
    ``config.json``. Returns the dict written to ``out/results.json``.
    ``distributed``: a rank of a data-parallel run; rank 0 writes, the others return None.
    """
    import torch

    import bitsub
    from bitsub_torch.cl.actreport import ACTIVATION_BITS, activation_accuracy
    from bitsub_torch.cl.ops import ops_report
    from bitsub_torch.cl.protocol import Protocol
    from bitsub_torch.cl.strategies import get_strategy
    from bitsub_torch.cl.trainer import Trainer, added_arguments, config_differences
    from bitsub_torch.data.scenarios import get_scenario
    from bitsub_torch.export import export, packed_predictions

    strategy_args = check_train_arguments(
        strategy=strategy, scenario=scenario, tasks=tasks, epochs=epochs, seed=seed,
        export_bits=export_bits, batch_size=batch_size, lr=lr, optimizer=optimizer, model=model,
        width=width, strategy_args=strategy_args if strategy_args is not None else {},
        val_fraction=val_fraction, threads=threads, activation_bits=activation_bits,
    )
    if activation_bits is not None:
        activation_bits = tuple(int(b) for b in activation_bits)
    if score_lr is not None:
        check_positive("score_lr", score_lr)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"--workers must be an int >= 0, got {workers!r}")
    out = Path(out)
    check_out(out)
    torch.set_num_threads(threads)
    # Reading the data and building the model and trainer write nothing; they run their own
    # checks (missing data or package, --width for the model) before the run claims --out.
    writer = distributed is None or distributed.writer
    sc = get_scenario(scenario, tasks=tasks, seed=seed, data_dir=data_dir,
                      val_fraction=val_fraction)
    from bitsub_torch.nn.models import build, default_network

    model_name, width = default_network(scenario, sc.input_shape, model, width)
    config = {
        "strategy": strategy, "strategy_args": strategy_args, "scenario": scenario,
        "tasks": len(sc.tasks), "epochs": epochs, "seed": seed, "export_bits": export_bits,
        "batch_size": batch_size, "lr": lr, "score_lr": score_lr, "optimizer": optimizer,
        "model": model_name, "protocol": None if epochs is not None else Protocol().to_dict(),
        "width": width, "val_fraction": val_fraction,
        "data_dir": None if data_dir is None else str(data_dir),
    }
    strat = get_strategy(strategy, **strategy_args)
    torch.manual_seed(seed)
    net = build(model_name, sc, width)
    trainer = Trainer(net, strat, sc, epochs=1 if epochs is None else epochs,
                      protocol=None if epochs is not None else Protocol(), score_lr=score_lr,
                      batch_size=batch_size, lr=lr,
                      optimizer=optimizer, seed=seed, checkpoint_dir=out / "checkpoints",
                      progress=progress and writer, workers=workers, pin_memory=pin_memory,
                      run_config=json_safe({k: config[k] for k in RUN_ONLY}),
                      device=getattr(distributed, "device", "cpu"), distributed=distributed)

    if writer:
        out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.exists():
        try:
            previous = json.loads(config_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{config_path} is not a config.json of bitsub-train ({exc}); delete it or "
                "choose another --out"
            ) from None
        now = json_safe(config)
        changed = config_differences(
            added_arguments(previous, now, json_safe(type(strat).check_arguments({}))), now)
        if changed:
            raise ValueError(
                f"{out} holds a run with other arguments ({'; '.join(changed)}): run the "
                "same command to resume it, or choose another --out"
            )
    else:
        # Without config.json the checkpoints still record the run: refuse a different one
        # before a new config.json would block the corrected command.
        trainer.check_resume()
        if writer:
            write_bytes(config_path, json.dumps(json_safe(config), indent=2).encode())
    results = trainer.run()

    t0 = time.perf_counter()
    pm = export(net, strat, bits=export_bits)
    if distributed is not None:  # every rank's packed file, checked equal to rank 0's
        distributed.same_packed(pm)
    if not writer:
        return None
    with naming(out / "model.h5"):
        pm.save(out / "model.h5")
    export_time = time.perf_counter() - t0
    if activation_bits is None:
        activation_bits = ACTIVATION_BITS if getattr(strat, "quantizes", False) else ()
    input_shape = tuple(sc.input_shape)
    tests = [(task.x_test, task.y_test) for task in sc.tasks]
    if not activation_bits:  # only the test splits are read from here on: the rest may go
        sc = trainer = None
        gc.collect()
    # Re-test every task from the file alone (bitsub's NumPy forward), and compare predictions.
    t0 = time.perf_counter()
    pm = bitsub.load(out / "model.h5")
    file_acc, agreement = [], []
    for t, (x_test, y_test) in enumerate(tests):
        pred_file = packed_predictions(pm, t, x_test)
        pred_torch = _torch_predictions(net, t, x_test)
        file_acc.append(float(np.mean(pred_file == y_test)))
        agreement.append(float(np.mean(pred_file == pred_torch)))
    file_time = time.perf_counter() - t0
    cap = pm.capacity()
    # Table 7 (activation quantization, calibrated on val, tested on test) and Table 6 (ops).
    t0 = time.perf_counter()
    act = (activation_accuracy(net, sc.tasks, trainer.evaluate, activation_bits)
           if activation_bits else None)
    ops = ops_report(net, pm, input_shape)
    act_time = time.perf_counter() - t0

    res = results.to_dict()
    timings = dict(res.get("timings", {}))
    timings.update({"export": export_time, "file_eval": file_time,
                    "activation_quantization_and_ops": act_time})
    report = {
        "accuracy_matrix": res["accuracy_matrix"],
        "acc": res["acc"],
        "bwt": res["bwt"],
        "fwt": res["fwt"],
        "forgetting": res["forgetting"],
        "random_init_accuracy": res["random_init_accuracy"],
        "capacity": {"percent": cap.percent, "bits": dict(cap.bits),
                     "private_percent": cap.private_percent, "dense_bits": cap.dense_bits,
                     "file_bytes": pm.file_bytes, "payload_bytes": cap.payload_bytes,
                     "dense_file_bytes": cap.dense_file_bytes},
        "export": {
            "bits": export_bits if export_bits is not None else "float32",
            "accuracy": file_acc,
            "acc": float(np.mean(file_acc)),
            "agreement": agreement,
        },
        "activation_quantization": act,
        "ops": ops,
        "config": {**config, "activation_bits": list(activation_bits),
                   "trainer": res.get("config", {}),
                   "world_size": getattr(distributed, "world_size", 1)},
        "timings": timings,
        "cpu_kernels": {"capability": torch.backends.cpu.get_cpu_capability(),
                        **{k: os.environ.get(k) for k in PINNED}},
    }
    if distributed is not None:
        report["distributed"] = distributed.describe()
    report = json_safe(report)
    with naming(out / "results.json"):
        write_bytes(out / "results.json", json.dumps(report, indent=2).encode())
    title = f"{strategy} on {scenario}: ACC {100 * (report['acc'] or 0):.2f}%"
    # The figure needs only the accuracy matrix: the data, the models and the trainer are let go
    # first, so that matplotlib's import and drawing do not add to them (the peak RSS).
    matrix = results.accuracy_matrix
    sc = trainer = net = strat = pm = results = tests = x_test = None
    gc.collect()
    with naming(out / "accuracy_matrix.png"):
        plot_accuracy_matrix(matrix, out / "accuracy_matrix.png", title)
    return report


def format_report(report: dict[str, Any], capacity_table: str | None = None) -> str:
    """A plain-text table of a run: per-task accuracies, ACC / BWT / FWT, capacity."""
    r = np.array([[np.nan if v is None else v for v in row] for row in report["accuracy_matrix"]])
    n = r.shape[0]
    file_acc = report["export"]["accuracy"]
    agree = report["export"]["agreement"]
    lines = [f"{'task':>4}  {'just trained':>12}  {'at the end':>10}  {'from file':>9}  "
             f"{'same pred.':>10}"]
    for j in range(n):
        lines.append(f"{j:>4}  {100 * r[j, j]:>11.2f}%  {100 * r[n - 1, j]:>9.2f}%  "
                     f"{100 * file_acc[j]:>8.2f}%  {100 * agree[j]:>9.2f}%")

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines += [
        "",
        f"ACC {pct(report['acc'])}   BWT {pct(report['bwt'])}   FWT {pct(report['fwt'])}   "
        f"forgetting {pct(report['forgetting'])}   ACC from file {pct(report['export']['acc'])}",
    ]
    cap = report["capacity"]
    bits = cap["bits"]
    dense = cap["dense_bits"] or 1
    lines += ["", f"capacity {cap['percent']:.2f}% of the dense float32 model "
              f"({dense} bits):"]
    for comp in ("fields", "codebooks", "masks"):
        v = bits.get(comp, 0)
        lines.append(f"  {comp:<10}{v:>12} bits  {100 * v / dense:8.3f}%")
    lines.append(f"  {'private':<10}{bits.get('private', 0):>12} bits  "
                 f"{100 * bits.get('private', 0) / dense:8.3f}%  (heads, norms; separate)")
    lines += _act_ops_lines(report)
    if capacity_table:
        lines += ["", capacity_table]
    return "\n".join(lines)


def _act_ops_lines(report: dict[str, Any]) -> list[str]:
    # Short summary of Table 7 (activation bits) and Table 6 (ops), means over the tasks.
    lines: list[str] = []
    act = report.get("activation_quantization")
    if act:
        mean = act["mean"]
        parts = [f"<b_w,{b}> {100 * mean[str(b)]:.2f}%" for b in act["bits"]]
        lines += ["", f"activations quantized (ACC, calibrated on val): float "
                  f"{100 * mean['float']:.2f}%   " + "   ".join(parts)]
    ops = report.get("ops")
    if ops and ops.get("tasks"):
        tasks = ops["tasks"]

        def avg(key: str) -> float:
            return float(np.mean([t[key] for t in tasks]))

        dense, sub, wb = avg("macs_dense"), avg("macs"), avg("mean_weight_bits")
        b8 = float(np.mean([t["bops"].get("8", np.nan) for t in tasks]))
        ratio = avg("bops_float") / b8 if b8 else float("nan")
        lines += ["", f"ops per sample (mean over tasks): dense {dense:,.0f} MACs, sub-network "
                  f"{sub:,.0f} MACs ({100 * sub / max(dense, 1):.1f}%), mean b_w {wb:.2f} bits",
                  f"  bit-ops (MACs x b_w x b_a): sub-network <32,32> = {ratio:.1f}x <b_w,8> "
                  "(a bit-op count puts float at 16x <8,8>; the paper estimates ~9-10x)"]
    return lines


def train_main(argv: Sequence[str] | None = None, distributed: Any = None) -> int:
    """Entry point of ``bitsub-train`` (``distributed``: one rank of ``bitsub_torch.train``).

    ``argv`` None: this process is the command, and its allocator and CPU kernels are set as
    the command sets them (`bitsub_torch.cpukernels.pin_cpu_kernels`). With an explicit
    ``argv`` (a library call, as in the tests) the process's own settings are left alone, so a
    script that calls ``train_main([...])`` runs on the machine's own kernels and may not
    reproduce the command's files byte for byte; ``python -c "...; train_main()" ARGS`` does.
    """
    args = _train_parser().parse_args(argv)
    writer = distributed is None or distributed.writer
    who = "bitsub-train" if writer else f"bitsub-train (rank {distributed.rank})"
    try:
        if argv is None:  # this process is the command: its allocator and kernels are ours
            from bitsub_torch.allocator import tune_allocator

            pin_cpu_kernels()
            tune_allocator(opt_out=args.system_malloc)
        try:
            strategy_args = json.loads(args.strategy_args)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"--strategy-args is not valid JSON ({exc}); give an object such as "
                "'{\"density\": 0.3}'"
            ) from None
        if not isinstance(strategy_args, dict):
            raise ValueError("--strategy-args must be a JSON object")
        if args.nproc != 1 or distributed is not None:
            from bitsub_torch.cl.distributed import check_nproc, launch

            check_nproc(args.nproc, distributed, _one_model(args.strategy))
            if distributed is None:
                return launch(args.nproc, sys.argv[1:] if argv is None else list(argv))
        if _one_model(args.strategy):
            if args.workers or args.pin_memory:
                raise ValueError("--workers and --pin-memory are for the task-incremental "
                                 "strategies, not the one-model ones")
            return _train_one_model(args, strategy_args)
        if (args.setting is not None or args.buffer is not None or args.sparsity is not None
                or args.export_bits == "auto"):
            raise ValueError("--setting, --buffer, --sparsity and --export-bits auto are for the "
                             "one-model strategies (esacl, er, derpp, prune-retrain)")
        report = train(
            strategy=args.strategy, scenario=args.scenario, out=args.out, tasks=args.tasks,
            epochs=args.epochs, seed=args.seed, data_dir=args.data_dir,
            export_bits=args.export_bits,
            batch_size=128 if args.batch_size is None else args.batch_size, lr=args.lr,
            score_lr=args.score_lr, optimizer=args.optimizer, model=args.model, width=args.width,
            strategy_args=strategy_args, val_fraction=args.val_fraction, threads=args.threads,
            progress=not args.no_progress, activation_bits=args.activation_bits,
            distributed=distributed,
            workers=args.workers, pin_memory=args.pin_memory,
        )
        if report is not None:
            print(format_report(report))
            print(f"\nwrote {args.out / 'results.json'}, {args.out / 'model.h5'}, "
                  f"{args.out / 'accuracy_matrix.png'}")
    except USER_ERRORS as exc:
        if not is_user_error(exc):
            raise
        print(f"{who}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if writer:
            print("bitsub-train: interrupted; run the same command to continue from the last "
                  "finished task", file=sys.stderr)
        return 130
    return 0


def _one_model(strategy: str) -> bool:
    from bitsub_torch.cl.strategies import STRATEGIES

    return bool(getattr(STRATEGIES.get(strategy), "one_model", False))


def _train_one_model(args: argparse.Namespace, strategy_args: dict[str, Any]) -> int:
    # esacl, er, derpp, prune-retrain: one network over the stream (bitsub_torch.cl.rehearsal)
    from bitsub_torch.cl.rehearsal_run import format_one_model_report, train_one_model

    report = train_one_model(
        strategy=args.strategy, scenario=args.scenario, out=args.out,
        setting=args.setting or "class-il", buffer=args.buffer, sparsity=args.sparsity,
        tasks=args.tasks, epochs=2 if args.epochs is None else args.epochs, seed=args.seed,
        data_dir=args.data_dir, export_bits=args.export_bits,
        batch_size=32 if args.batch_size is None else args.batch_size, lr=args.lr,
        optimizer=args.optimizer, model=args.model, width=args.width,
        strategy_args=strategy_args, val_fraction=args.val_fraction, threads=args.threads,
        progress=not args.no_progress,
    )
    print(format_one_model_report(report))
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'model.h5'}, "
          f"{args.out / 'accuracy_matrix.png'}")
    return 0


# ------------------------------------------------------------------------------------ eval


def _eval_parser() -> argparse.ArgumentParser:
    from bitsub_torch.data.scenarios import SCENARIOS

    p = argparse.ArgumentParser(
        prog="bitsub-eval",
        description="Re-test every task of a packed model file with bitsub's NumPy forward pass "
        "(no torch in the forward) and print the per-task accuracy as JSON.",
    )
    p.add_argument("model", type=Path, help="a packed model file (bitsub-train's model.h5)")
    from bitsub_torch.data.multitask import MTL_SCENARIOS

    p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS) + sorted(MTL_SCENARIOS))
    p.add_argument("--seed", type=int, default=0, help="the seed the model was trained with")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--setting", default=None, choices=("class-il", "task-il"),
                   help="re-test a one-model file (esacl, er, derpp, prune-retrain) class- or "
                   "task-incrementally")
    return p


def evaluate_file(
    path: str | os.PathLike,
    scenario: str,
    *,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    val_fraction: float = 0.1,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Per-task accuracy of a packed model file on a scenario, from bitsub's NumPy forward."""
    import bitsub
    from bitsub_torch.data.scenarios import get_scenario
    from bitsub_torch.export import packed_accuracy

    pm = bitsub.load(path)
    sc = get_scenario(scenario, tasks=len(pm.tasks), seed=seed, data_dir=data_dir,
                      val_fraction=val_fraction)
    accs = packed_accuracy(pm, sc.tasks, split=split, batch_size=batch_size)
    return json_safe({
        "model": str(path), "scenario": scenario, "seed": seed, "split": split,
        "accuracy": accs, "acc": float(np.mean(accs)),
    })


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bitsub-eval``."""
    args = _eval_parser().parse_args(argv)
    from bitsub_torch.data.multitask import MTL_SCENARIOS

    if args.scenario in MTL_SCENARIOS:  # multi-task: every task metric, from bitsub-mtl's file
        from bitsub_torch.mtl.cli import evaluate_mtl_file

        try:
            report = evaluate_mtl_file(args.model, args.scenario, seed=args.seed,
                                       data_dir=args.data_dir, split=args.split)
        except (FileNotFoundError, ValueError, TypeError, KeyError) as exc:
            if not (isinstance(exc, KeyError) or is_user_error(exc)):
                raise
            print(f"bitsub-eval: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(report["metrics"]))
        return 0
    try:
        if args.model.is_dir():
            inside = args.model / "model.h5"
            hint = f" such as {inside}" if inside.is_file() else ""
            raise ValueError(f"{args.model} is a directory; give a model file{hint}")
        check_int("batch_size", args.batch_size, 1)

        from bitsub_torch.cl.rehearsal_run import evaluate_one_model_file, refuse_one_model_file

        if args.setting is not None:
            print(json.dumps(evaluate_one_model_file(
                args.model, args.scenario, setting=args.setting, seed=args.seed,
                data_dir=args.data_dir, split=args.split, val_fraction=args.val_fraction,
                batch_size=args.batch_size)))
            return 0
        refuse_one_model_file(args.model, args.scenario, seed=args.seed, data_dir=args.data_dir)
        report = evaluate_file(args.model, args.scenario, seed=args.seed, data_dir=args.data_dir,
                               split=args.split, val_fraction=args.val_fraction,
                               batch_size=args.batch_size)
        print(json.dumps(report))
    except USER_ERRORS as exc:
        if not is_user_error(exc):
            raise
        print(f"bitsub-eval: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bitsub-eval: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())

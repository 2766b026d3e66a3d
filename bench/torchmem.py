"""Torch-side memory of a many-task TinySubNets run: what each finished task adds, against its bits.

Trains TinySubNets (default arguments) task after task on the reduced AlexNet
(`bitsub_torch.nn.models.alexnet`, 3x32x32 inputs, 6.5 M weight positions) with a short budget
per task, and after every task records

- ``state_dict``: bytes of ``torch.save(model.state_dict())`` (the model alone restores every
  finished task: see tests/test_torchhabits.py);
- ``memory``: bytes of the layers' `TaskMemory` buffers (coded masks and stored fields);
  ``store``: the strategy's `FieldStore` (the same arrays, shared with ``memory``);
  ``live_tensors``: bytes of every live CPU torch tensor (each storage once);
- ``rss`` / ``peak_rss``: the process's resident set after a garbage collection, and its high
  water mark (VmRSS / VmHWM of /proc/self/status);
- at the end, each task's capacity bits as the packed store counts them
  (``bitsub_torch.export(model, strategy).capacity().by_task``: fields + codebooks + masks; the
  private heads and norms are allocated for every task when the run starts, so they are not part
  of any task's growth).

The data are synthetic (no download): per task, 10 classes of smooth random 3x32x32 prototypes
plus noise, a fixed generator. Growth per task is the mean increase from task 2 to the last one
(by then the caches of decoded masks and values, two tasks per layer, are full; the growth from
task 0 is reported beside it), and its ratio to the mean capacity of tasks 3..T-1.

Run: ``PYTHONPATH=. python bench/torchmem.py --tasks 20 --out torchmem.json`` (``--width 0.5
--tasks 6`` for a quick look). The process sets glibc's allocator as ``bitsub-train`` does
(`bitsub_torch.allocator`: mmap threshold fixed at 64 KiB; ``--system-malloc`` leaves it as it is).
``--warm`` runs every K-Means path once before task 0, so that Numba compiles its kernels there
and not at the first task whose bit-width search takes a path (a one-off, not per task).
``--phases`` adds the peak RSS of each phase of a task (VmHWM reset through
``/proc/self/clear_refs``), ``--diagnose`` glibc's heap statistics (``mallinfo2``), the Numba
specialisations compiled so far, the growth of object counts by type and of large NumPy arrays
by dtype and shape, and with ``--tracemalloc`` the Python and NumPy allocation sites that grew.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import time
import tracemalloc

import numpy as np
import torch

from bitsub_torch.allocator import tune_allocator
from bitsub_torch.cl.strategies import TinySubNets
from bitsub_torch.cl.trainer import Trainer
from bitsub_torch.data.scenarios import Scenario, TaskData
from bitsub_torch.export import export
from bitsub_torch.nn.models import alexnet


def synthetic(tasks: int, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Scenario:
    """Tasks of 10 classes: smooth random prototypes (3x32x32) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(tasks):
        coarse = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
        protos = coarse.repeat(4, axis=2).repeat(4, axis=3)

        def draw(n: int, protos: np.ndarray = protos) -> tuple[np.ndarray, np.ndarray]:
            y = rng.integers(0, 10, n)
            x = protos[y] + 1.5 * rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
            return x.astype(np.float32), y.astype(np.int64)

        xs = [draw(n) for n in (n_train, n_val, n_test)]
        out.append(TaskData(t, xs[0][0], xs[0][1], xs[1][0], xs[1][1], xs[2][0], xs[2][1],
                            tuple(range(10))))
    return Scenario("synthetic-alexnet", (3, 32, 32), 10, out)


def warm_kernels() -> None:
    """Run `bitsub.kmeans_1d` once on each of its paths, so Numba compiles them before task 0.

    Which path a task's bit-width search takes depends on how many values it writes and at how
    many bits: a path first taken at task 13 compiles (or loads from Numba's cache) its kernels
    then, 1-3 MiB each time, once per process whatever the number of tasks.
    """
    from bitsub.quant.kmeans import kmeans_1d

    rng = np.random.default_rng(0)
    for n, k in ((1000, 2), (1000, 4), (20000, 16), (300000, 64), (300000, 256)):
        kmeans_1d(rng.standard_normal(n).astype(np.float32), k)


def mallinfo() -> dict:
    """glibc's heap statistics (``mallinfo2``): heap bytes, mmapped bytes, in use, free."""
    try:
        import ctypes

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        fn = ctypes.CDLL(None).mallinfo2
        fn.restype = Info
        info = fn()
    except (OSError, AttributeError):
        return {}
    return {"heap": info.arena, "mmapped": info.hblkhd, "in_use": info.uordblks,
            "free": info.fordblks}


def pymalloc_arenas() -> int:
    """Bytes of Python's small-object arenas in use (``sys._debugmallocstats``, read from fd 2)."""
    import os
    import sys
    import tempfile

    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        for line in f.read().decode().splitlines():
            if "bytes/arena" in line:
                return int(line.split("=")[1].replace(",", ""))
    return -1


def numba_overloads() -> dict[str, int]:
    """Compiled specialisations of every Numba dispatcher alive (name -> count)."""
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return {}
    out: dict[str, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, Dispatcher):
            name = f"{obj.py_func.__module__}.{obj.py_func.__qualname__}"
            out[name] = out.get(name, 0) + len(obj.overloads)
    return out


class Peaks:
    """Peak RSS per phase: VmHWM is reset (``/proc/self/clear_refs``) after each phase."""

    def __init__(self) -> None:
        self.overall = 0
        self.phases: dict[str, int] = {}
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.can_reset = True
        except OSError:
            self.can_reset = False

    def mark(self, phase: str) -> None:
        """Close ``phase``: record its peak and its end RSS, reset the high water mark."""
        peak = status_kib("VmHWM") * 1024
        self.overall = max(self.overall, peak)
        self.phases[phase] = peak
        self.phases[phase + "_end"] = status_kib("VmRSS") * 1024
        if self.can_reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")


def status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


class Measured(TinySubNets):
    """TinySubNets that records the model's footprint after each task."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()
        self.diagnose = False
        self.peaks: Peaks | None = None
        self._types: dict[str, int] = {}
        self._overloads: dict[str, int] = {}
        self._shapes: dict[str, int] = {}
        self._maps: dict[int, int] = {}

    def before_task(self, task, model, data) -> None:  # noqa: D102
        if self.peaks is not None:
            self.peaks.mark("eval")  # the previous task's test row (or the random-init row)
        super().before_task(task, model, data)

    def prune(self, task, model, data, evaluate) -> None:  # noqa: D102
        if self.peaks is not None:
            self.peaks.mark("train")
        super().prune(task, model, data, evaluate)
        if self.peaks is not None:
            self.peaks.mark("prune")

    def _quantize(self, *args, **kwargs):  # noqa: D102 (phases inside after_task)
        if self.peaks is not None:
            self.peaks.mark("masks")
        out = super()._quantize(*args, **kwargs)
        if self.peaks is not None:
            self.peaks.mark("quantize")
        return out

    def _commit(self, *args, **kwargs) -> None:  # noqa: D102
        super()._commit(*args, **kwargs)
        if self.peaks is not None:
            self.peaks.mark("commit")

    def after_task(self, task, model, data, evaluate) -> None:  # noqa: D102
        if self.peaks is not None:
            self.peaks.mark("retrain")
        super().after_task(task, model, data, evaluate)
        if self.peaks is not None:
            self.peaks.mark("after_task")
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        gc.collect()
        live = {}
        for obj in gc.get_objects():  # live torch tensors, each storage once
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                live[st.data_ptr()] = st.nbytes()
        memory = sum(getattr(la, "memory", None).nbytes() for la in model.masked_layers().values()
                     if getattr(la, "memory", None) is not None)
        self.rows.append({
            "task": task,
            "state_dict": buf.getbuffer().nbytes,
            "memory": memory,
            "store": self.store.nbytes(),
            "live_tensors": sum(live.values()),
            "rss": status_kib("VmRSS") * 1024,
            "peak_rss": status_kib("VmHWM") * 1024,
            "bank": self.log[task]["bank"],
            "numba_overloads": sum(numba_overloads().values()),  # compiled specialisations
            "seconds": time.perf_counter() - self.t0,
        })
        if self.peaks is not None:
            self.rows[-1]["peak_rss"] = self.peaks.overall
            self.rows[-1]["phases"] = dict(self.peaks.phases)
        if self.diagnose:
            self._diagnose()
        print(json.dumps(self.rows[-1]), flush=True)


    def _diagnose(self) -> None:
        row = self.rows[-1]
        row["malloc"] = mallinfo()
        row["rss_anon"] = status_kib("RssAnon") * 1024
        row["rss_file"] = status_kib("RssFile") * 1024
        row["pymalloc_arenas"] = pymalloc_arenas()
        over = numba_overloads()
        row["numba_overloads"] = sum(over.values())
        row["numba_new"] = {k: v - self._overloads.get(k, 0) for k, v in over.items()
                            if v != self._overloads.get(k, 0)}
        self._overloads = over
        types: dict[str, int] = {}
        for obj in gc.get_objects():
            name = type(obj).__name__
            types[name] = types.get(name, 0) + 1
        grew = {k: v - self._types.get(k, 0) for k, v in types.items()
                if v - self._types.get(k, 0) > 0}
        row["objects_grew"] = dict(sorted(grew.items(), key=lambda kv: -kv[1])[:8])
        self._types = types
        arrays: dict[int, np.ndarray] = {}  # NumPy arrays owning their data, held by containers
        for obj in gc.get_objects():
            for ref in gc.get_referents(obj):
                if type(ref) is np.ndarray and ref.base is None and ref.nbytes >= 65536:
                    arrays[id(ref)] = ref
        shapes: dict[str, int] = {}
        for a in arrays.values():
            key = f"{a.dtype}{list(a.shape)}"
            shapes[key] = shapes.get(key, 0) + 1
        try:
            from numba.core.runtime import rtsys

            stats = rtsys.get_allocation_stats()  # counted with NUMBA_NRT_STATS=1
            row["numba_nrt_live"] = stats.alloc - stats.free
        except (ImportError, RuntimeError, AttributeError):
            pass
        maps: dict[int, int] = {}  # anonymous mappings by size (glibc's mmapped blocks among them)
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 5:
                    lo, hi = (int(v, 16) for v in parts[0].split("-"))
                    maps[hi - lo] = maps.get(hi - lo, 0) + 1
        row["maps_new"] = {k: v - self._maps.get(k, 0) for k, v in maps.items()
                           if v != self._maps.get(k, 0)}
        self._maps = maps
        row["numpy_large"] = sum(a.nbytes for a in arrays.values())
        row["numpy_new"] = {k: v - self._shapes.get(k, 0) for k, v in shapes.items()
                            if v != self._shapes.get(k, 0)}
        self._shapes = shapes
        if tracemalloc.is_tracing():
            cur, _ = tracemalloc.get_traced_memory()
            row["traced"] = cur
            snap = tracemalloc.take_snapshot()
            if self._snap is not None:
                top = snap.compare_to(self._snap, "lineno")[:6]
                row["traced_grew"] = [f"{d.size_diff} {d.traceback}" for d in top]
            self._snap = snap
        print(json.dumps({k: row[k] for k in row if k not in ("phases",)}), flush=True)
        print(json.dumps(row.get("phases", {})), flush=True)


def main() -> None:
    """Run the measurement and print / write the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--train", type=int, default=256, help="training samples per task")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--width", type=float, default=1.0, help="alexnet width (1.0: the paper's)")
    ap.add_argument("--out", default=None, help="write the rows and summary as JSON here")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's allocator as it is (default: as bitsub-train sets it, "
                    "bitsub_torch.allocator)")
    ap.add_argument("--phases", action="store_true",
                    help="peak RSS per phase (train, prune, retrain, after_task, eval)")
    ap.add_argument("--diagnose", action="store_true",
                    help="also record glibc heap statistics, Numba compilations, object counts")
    ap.add_argument("--warm", action="store_true",
                    help="compile the K-Means kernels of every path before task 0 (one-off "
                    "compilations are then not counted as per-task growth)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="with --diagnose: trace Python and NumPy allocations (slow)")
    args = ap.parse_args()
    allocator = tune_allocator(opt_out=args.system_malloc)
    print(f"allocator: {allocator}", flush=True)
    if args.warm:
        warm_kernels()
    torch.manual_seed(0)
    scenario = synthetic(args.tasks, args.train, 128, 128)
    model = alexnet((3, 32, 32), 10, num_tasks=1, width=args.width)  # grows to the scenario
    strategy = Measured()
    strategy.diagnose = args.diagnose
    strategy._snap = None
    if args.phases:
        strategy.peaks = Peaks()
    if args.tracemalloc:
        tracemalloc.start(4)
    trainer = Trainer(model, strategy, scenario, epochs=args.epochs, batch_size=64,
                      progress=False, eval_batch_size=256)
    res = trainer.run()
    cap = export(model, strategy).capacity()
    rows = strategy.rows
    for row, by in zip(rows, cap.by_task, strict=True):
        row["capacity_bits"] = int(by["fields"] + by["codebooks"] + by["masks"])
    later = rows[min(2, len(rows) - 2) + 1:]
    mean_cap = float(np.mean([r["capacity_bits"] for r in later])) / 8
    summary = {"allocator": allocator, "tasks": args.tasks, "weights": int(cap.dense_bits // 32),
               "acc": res.acc, "bwt": res.bwt, "mean_capacity_bytes": mean_cap}
    # From task `first` on: the caches of decoded masks and values (two tasks per layer) are full.
    first = min(2, len(rows) - 2)
    summary["growth_from_task"] = first
    for key in ("state_dict", "memory", "live_tensors", "rss", "peak_rss"):
        growth = (rows[-1][key] - rows[first][key]) / (len(rows) - 1 - first)
        summary[f"{key}_growth_per_task"] = growth
        summary[f"{key}_growth_over_capacity"] = growth / mean_cap
        summary[f"{key}_growth_from_task0_per_task"] = (rows[-1][key] - rows[0][key]) / (
            len(rows) - 1)
    summary["dense_float32_copy_bytes"] = int(cap.dense_bits // 8)
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "summary": summary, "argv": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()

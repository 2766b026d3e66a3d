"""Peak resident memory of a ``bitsub-train`` run (Linux): RSS after the imports, peak at the end.

    python bench/peak_rss.py --strategy wsn --scenario pfmnist --data-dir DIR --epochs 1 --out OUT

takes ``bitsub-train``'s arguments and prints ``VmRSS`` after importing torch, numba and bitsub
and ``VmHWM`` (the peak) after the run, both from ``/proc/self/status``. The run is this
process's command, as ``bitsub-train`` is: the allocator is set as ``bitsub-train`` sets it
(`bitsub_torch.allocator`; ``--system-malloc`` leaves it as it is).

With ``BITSUB_PEAK_PHASES=1`` in the environment it also prints the peak of each phase of the
command (VmHWM reset through ``/proc/self/clear_refs`` at each boundary): ``data`` (reading the
scenario, building the model and trainer), ``train`` (`Trainer.run`: training and the re-tests),
``export_pack`` (`bitsub_torch.export`), ``retest`` (writing ``model.h5``, re-testing from the
file, activation quantization, operation counts, results.json), ``figure`` (the accuracy-matrix
PNG) and ``end``.

The data's share: ``--reference-rows N`` (a bench option, not ``bitsub-train``'s) runs, after this
run, the same command in a fresh process with the MNIST / Fashion-MNIST scenario cut to the first
N training and N test images of its files (``--cut-rows N``, output in ``OUT-reference``): same
model, same tasks, same code path, almost no data. It prints the budget of issue 13's bar,
2 x (the base arrays as held + the model's ``state_dict``), and three readings against it: the
peak, the peak above the imports, and the peak minus the reference run's peak.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys


def status(key: str) -> float:
    """A ``/proc/self/status`` memory field in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


class Phases:
    """Peak RSS per phase: VmHWM is read and reset at each boundary."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.reset()

    @staticmethod
    def reset() -> None:
        """Reset VmHWM to the current RSS."""
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def mark(self, phase: str) -> None:
        """Close ``phase``: record its peak (MiB), reset the high water mark."""
        self.peaks[phase] = max(self.peaks.get(phase, 0.0), status("VmHWM"))
        self.reset()

    def wrap(self, owner: object, name: str, before: str | None, after: str) -> None:
        """Mark ``before`` when ``owner.name`` is called and ``after`` when it returns."""
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def marked(*args, **kwargs):
            if before is not None:
                self.mark(before)
            out = fn(*args, **kwargs)
            self.mark(after)
            return out

        setattr(owner, name, marked)


def bench_option(argv: list[str], name: str) -> int | None:
    """Remove ``name N`` from ``argv`` and return N (None when absent)."""
    if name not in argv:
        return None
    i = argv.index(name)
    if i + 1 >= len(argv) or not argv[i + 1].isdigit() or int(argv[i + 1]) < 1:
        raise SystemExit(f"peak_rss.py: {name} takes a number of images >= 1")
    n = int(argv[i + 1])
    del argv[i : i + 2]
    return n


def cut_images(module: object, rows: int) -> None:
    """Let ``module.load_idx_images`` return only the first ``rows`` training and test images."""
    load = module.load_idx_images

    @functools.wraps(load)
    def first_rows(*args, **kwargs):
        x_train, y_train, x_test, y_test = load(*args, **kwargs)
        return (x_train[:rows].copy(), y_train[:rows].copy(), x_test[:rows].copy(),
                y_test[:rows].copy())

    module.load_idx_images = first_rows


def data_and_model(trainer_cls: type, seen: dict) -> None:
    """Record the bytes of the scenario's base arrays and of the model's ``state_dict``."""
    run = trainer_cls.run

    @functools.wraps(run)
    def recorded(self, *args, **kwargs):
        from bitsub_torch.data.streaming import LazyRows

        bases = {}
        for task in self.scenario.tasks:
            for x in (task.x_train, task.x_val, task.x_test):
                for a in ((x.base, x.table) if isinstance(x, LazyRows) else (x,)):
                    if a is not None:
                        bases[id(a)] = a.nbytes
        seen["data"] = sum(bases.values())
        out = run(self, *args, **kwargs)
        seen["model"] = sum(t.numel() * t.element_size()
                            for t in self.model.state_dict().values())
        return out

    trainer_cls.run = recorded


def main() -> int:
    """Run bitsub-train with this process's arguments and print the figures."""
    reference = bench_option(sys.argv, "--reference-rows")
    cut = bench_option(sys.argv, "--cut-rows")
    import numba  # noqa: F401
    import torch  # noqa: F401

    import bitsub  # noqa: F401
    import bitsub_torch.cl.strategies  # noqa: F401
    import bitsub_torch.cl.trainer  # noqa: F401
    import bitsub_torch.data.scenarios
    import bitsub_torch.export  # noqa: F401
    from bitsub_torch.cli import train_main

    after_imports = status("VmRSS")
    if cut is not None:
        cut_images(bitsub_torch.data.scenarios, cut)
    seen: dict = {}
    data_and_model(sys.modules["bitsub_torch.cl.trainer"].Trainer, seen)
    phases = None
    if os.environ.get("BITSUB_PEAK_PHASES") == "1":
        phases = Phases()
        phases.wrap(sys.modules["bitsub_torch.cl.trainer"].Trainer, "run", "data", "train")
        phases.wrap(sys.modules["bitsub_torch.export"], "export", None, "export_pack")
        phases.wrap(sys.modules["bitsub_torch.cli"], "plot_accuracy_matrix", "retest", "figure")
    command = list(sys.argv[1:])
    rc = train_main()  # this process's command line, as bitsub-train
    peak = status("VmHWM")
    if phases is not None:
        phases.mark("end")
        peak = max(phases.peaks.values())
        print("peak RSS per phase (MiB): " + ", ".join(
            f"{k} {v:.0f}" for k, v in phases.peaks.items()), file=sys.stderr)
    print(f"RSS after imports {after_imports:.0f} MiB; peak RSS (VmHWM) {peak:.0f} "
          f"MiB; exit status {rc}", file=sys.stderr)
    if rc or "data" not in seen:
        return rc
    mib = 2.0**20
    budget = 2 * (seen["data"] + seen.get("model", 0)) / mib
    print(f"base arrays as held {seen['data'] / mib:.1f} MiB, model state_dict "
          f"{seen.get('model', 0) / mib:.1f} MiB: budget 2 x (arrays + model) {budget:.1f} MiB",
          file=sys.stderr)
    if reference is None:
        return rc
    ref_peak, ref_phases, ref_rc = reference_run(command, reference)
    if ref_rc:
        return ref_rc
    readings = {"peak RSS": peak, "peak - RSS after imports": peak - after_imports,
                f"peak - peak of the {reference}-image reference run ({ref_peak:.0f} MiB)":
                    peak - ref_peak}
    if phases is not None and ref_phases:  # the data's part where each run holds it
        gap, phase = max((phases.peaks[k] - ref_phases[k], k) for k in ref_phases
                         if k in phases.peaks)
        readings[f"largest phase-by-phase difference to the reference run ({phase})"] = gap
    for name, value in readings.items():
        verdict = "met" if value <= budget else "not met"
        print(f"{name}: {value:.0f} MiB vs budget {budget:.1f} MiB: {verdict}", file=sys.stderr)
    return rc


def reference_run(command: list[str], rows: int) -> tuple[float, dict[str, float], int]:
    """The same command in a fresh process, its scenario cut to ``rows`` images.

    Returns its peak (MiB), its peak per phase (with ``BITSUB_PEAK_PHASES=1``) and its status.
    """
    command = list(command)
    for i, arg in enumerate(command):  # the reference run writes to OUT-reference
        if arg == "--out" and i + 1 < len(command):
            command[i + 1] = command[i + 1].rstrip("/") + "-reference"
        elif arg.startswith("--out="):
            command[i] = arg.rstrip("/") + "-reference"
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *command, "--cut-rows",
                           str(rows)], capture_output=True, text=True, check=False)
    sys.stderr.write("".join(f"reference run: {line}\n" for line in proc.stderr.splitlines()))
    found = re.findall(r"peak RSS \(VmHWM\) (\d+) MiB", proc.stderr)
    if proc.returncode or not found:
        print(f"peak_rss.py: the reference run failed (exit status {proc.returncode})",
              file=sys.stderr)
        return 0.0, {}, proc.returncode or 1
    line = re.findall(r"peak RSS per phase \(MiB\): (.*)", proc.stderr)
    per_phase = {k: float(v) for k, v in re.findall(r"(\w+) (\d+)", line[-1])} if line else {}
    return float(found[-1]), per_phase, 0


if __name__ == "__main__":
    sys.exit(main())

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
"""

from __future__ import annotations

import functools
import os
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


def main() -> int:
    """Run bitsub-train with this process's arguments and print the figures."""
    import numba  # noqa: F401
    import torch  # noqa: F401

    import bitsub  # noqa: F401
    import bitsub_torch.cl.strategies  # noqa: F401
    import bitsub_torch.cl.trainer  # noqa: F401
    import bitsub_torch.export  # noqa: F401
    from bitsub_torch.cli import train_main

    after_imports = status("VmRSS")
    phases = None
    if os.environ.get("BITSUB_PEAK_PHASES") == "1":
        phases = Phases()
        phases.wrap(sys.modules["bitsub_torch.cl.trainer"].Trainer, "run", "data", "train")
        phases.wrap(sys.modules["bitsub_torch.export"], "export", None, "export_pack")
        phases.wrap(sys.modules["bitsub_torch.cli"], "plot_accuracy_matrix", "retest", "figure")
    rc = train_main()  # this process's command line, as bitsub-train
    peak = status("VmHWM")
    if phases is not None:
        phases.mark("end")
        peak = max(phases.peaks.values())
        print("peak RSS per phase (MiB): " + ", ".join(
            f"{k} {v:.0f}" for k, v in phases.peaks.items()), file=sys.stderr)
    print(f"RSS after imports {after_imports:.0f} MiB; peak RSS (VmHWM) {peak:.0f} "
          f"MiB; exit status {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())

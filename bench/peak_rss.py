"""Peak resident memory of a ``bitsub-train`` run (Linux): RSS after the imports, peak at the end.

    python bench/peak_rss.py --strategy wsn --scenario pfmnist --data-dir DIR --epochs 1 --out OUT

takes ``bitsub-train``'s arguments and prints ``VmRSS`` after importing torch, numba and bitsub
and ``VmHWM`` (the peak) after the run, both from ``/proc/self/status``. The run is this
process's command, as ``bitsub-train`` is: the allocator is set as ``bitsub-train`` sets it
(`bitsub_torch.allocator`; ``--system-malloc`` leaves it as it is).
"""

from __future__ import annotations

import sys


def status(key: str) -> float:
    """A ``/proc/self/status`` memory field in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def main() -> int:
    """Run bitsub-train with this process's arguments and print the two figures."""
    import numba  # noqa: F401
    import torch  # noqa: F401

    import bitsub  # noqa: F401
    import bitsub_torch.cl.strategies  # noqa: F401
    import bitsub_torch.cl.trainer  # noqa: F401
    import bitsub_torch.export  # noqa: F401
    from bitsub_torch.cli import train_main

    after_imports = status("VmRSS")
    rc = train_main()  # this process's command line, as bitsub-train
    print(f"RSS after imports {after_imports:.0f} MiB; peak RSS (VmHWM) {status('VmHWM'):.0f} "
          f"MiB; exit status {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())

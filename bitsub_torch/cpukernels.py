"""The CPU kernels of bitsub's own commands: AVX2 on every x86-64 machine that has it.

PyTorch picks its CPU kernels by the machine it runs on: ATen's vectorised loops (reductions,
element-wise ops) by the widest instruction set the CPU offers (AVX-512 where there is one),
MKL's matrix products and oneDNN's convolutions likewise. Kernels of different vector widths add
the same numbers in a different order, so the same command with the same seed trains a
different network on an AVX-512 machine than on an AVX2 one: measured here, ``make demo`` gave
ACC 80.45% and a 129,212-byte ``model.h5`` on an AMD EPYC with AVX-512 against the README's
80.83% and 129,745 bytes, which the same machine reproduces byte for byte once ATen and MKL are
held to AVX2. A figure a user cannot reproduce with the printed command is a defect, so bitsub's
commands (``bitsub-train``, ``torchrun -m bitsub_torch.train``, ``bitsub-demo``, ``bitsub-mtl``,
``python -m bitsub_torch.experiments``) and the test suite call `pin_cpu_kernels` first: it sets

- ``ATEN_CPU_CAPABILITY=avx2`` (ATen's dispatch),
- ``MKL_CBWR=AVX2`` (MKL's conditional numerical reproducibility: the AVX2 code path),
- ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's convolutions),

each read once, at the library's first use: the call must come before the first torch
operation, which is why it is made at the start of a command and never on import (a program
that imports bitsub keeps torch's kernels as it chose them; it can set the same variables before
importing torch to reproduce the commands' figures). What the AVX2 kernels cost in time is
measured in the README's Set-up. It does nothing

- with ``BITSUB_CPU_KERNELS=native`` in the environment (the machine's own kernels);
- for a variable the user already set: theirs wins;
- on a CPU that is not x86-64 or lacks AVX2 and FMA (read from ``/proc/cpuinfo``; where that
  file is missing, nothing is pinned): its kernels are its own, and its figures may differ.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping

__all__ = ["ENV", "PINNED", "cpu_flags", "pin_cpu_kernels"]

#: Environment variable: ``native`` leaves torch's kernels to the machine.
ENV = "BITSUB_CPU_KERNELS"
#: What is set, and to what.
PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags from the first ``flags`` line of ``path`` (empty if unreadable)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def pin_cpu_kernels(environ: MutableMapping[str, str] | None = None, *,
                    machine: str | None = None, flags: frozenset[str] | None = None) -> str:
    """Hold torch's CPU kernels to AVX2 (see the module docstring); say what was done.

    Parameters
    ----------
    environ : mutable mapping, optional
        The environment to read and set (default ``os.environ``).
    machine, flags : optional
        The CPU architecture (default ``platform.machine()``) and feature flags (default
        `cpu_flags`), for tests.

    Returns
    -------
    str
        One line: which variables were set, or why none was.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV, "").strip().lower() == "native":
        return f"CPU kernels: the machine's own ({ENV}=native)"
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in ("x86_64", "amd64"):
        return f"CPU kernels: the machine's own ({machine} is not x86-64)"
    flags = cpu_flags() if flags is None else flags
    if not {"avx2", "fma"} <= flags:
        return "CPU kernels: the machine's own (no AVX2 and FMA found in /proc/cpuinfo)"
    done, kept = [], []
    for key, value in PINNED.items():
        if key in env:
            kept.append(f"{key}={env[key]}")
        else:
            env[key] = value
            done.append(f"{key}={value}")
    line = "CPU kernels: " + (", ".join(done) if done else "nothing set")
    return line + (f" (the user's {', '.join(kept)} kept)" if kept else "")

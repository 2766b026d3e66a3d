"""The C allocator setting of bitsub's own commands: glibc's mmap threshold fixed at 64 KiB.

glibc serves an allocation at or above its mmap threshold with its own mapping, returned to the
system when freed, and smaller ones from its heap, which keeps freed blocks resident. The
threshold starts at 128 KiB but rises, after a large mapped block is freed, up to 32 MiB: from
then on the dense per-layer temporaries of a task (decoded masks and values, gradients, optimizer
moments) come from the heap, and the heap's resident size creeps up task after task as it
fragments. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD, 65536)``, which also turns the
dynamic rise off) gives every block of 64 KiB or more its own mapping (the README's "Torch habits
and memory" has the measurements).

`tune_allocator` is called at the start of the processes bitsub owns (``bitsub-train`` and
``torchrun -m bitsub_torch.train`` as commands), never on import: a program that imports bitsub
keeps its allocator as it set it. It changes no value a run computes, only where memory comes
from. It does nothing

- with ``BITSUB_MALLOC=system`` in the environment or ``bitsub-train --system-malloc``;
- when the user already set glibc's own knobs (``MALLOC_MMAP_THRESHOLD_`` or a ``glibc.malloc``
  tunable in ``GLIBC_TUNABLES``): theirs win;
- where the C library is not glibc (no ``mallopt``).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["ENV", "MMAP_THRESHOLD", "glibc", "tune_allocator"]

#: Environment variable: ``system`` leaves the C allocator as it is.
ENV = "BITSUB_MALLOC"
#: The fixed mmap threshold in bytes.
MMAP_THRESHOLD = 64 * 1024
M_MMAP_THRESHOLD = -3  # glibc's malloc.h parameter number


def glibc() -> Any:
    """The process's C library when it is glibc (has ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator(environ: Mapping[str, str] | None = None, *, opt_out: bool = False,
                   libc: Any = None) -> str:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD` unless opted out; say what was done.

    Parameters
    ----------
    environ : mapping, optional
        The environment to read (default ``os.environ``).
    opt_out : bool
        True leaves the allocator alone (``--system-malloc``).
    libc : optional
        The C library (default `glibc`); for tests.

    Returns
    -------
    str
        ``"mmap_threshold=65536"`` when set, else why not: ``"opted out"``, ``"user setting"``,
        ``"not glibc"`` or ``"refused"`` (mallopt returned 0).
    """
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "").strip().lower()
    if choice not in ("", "system", "tuned"):
        raise ValueError(f"{ENV} must be 'system' or 'tuned', got {env.get(ENV)!r}")
    if opt_out or choice == "system":
        return "opted out"
    if "MALLOC_MMAP_THRESHOLD_" in env or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return "user setting"
    libc = glibc() if libc is None else libc
    if libc is None:
        return "not glibc"
    if not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return "refused"
    return f"mmap_threshold={MMAP_THRESHOLD}"

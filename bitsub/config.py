"""Numba options in one place, so that a kernel's behaviour does not depend on who wrote it."""

from __future__ import annotations

# Fast-math flags we allow: never "nnan" or "ninf", so that NaN and inf propagate as in NumPy.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

# Options for every CPU kernel. `cache=True` keeps compiled code between runs (in __pycache__).
NJIT = {"nogil": True, "cache": True, "error_model": "numpy"}

# No kernel uses prange: large calls split over the engine threads (bitsub.threads), which
# stay usable after fork (Numba's OpenMP layer is not).

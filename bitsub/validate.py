"""Argument checks shared by the public functions of bitsub and bitsub_torch.

One place for the rule every public entry point follows: a wrong argument gets a one-line
TypeError (wrong kind) or ValueError (out of range) that names it and says what to pass.
"""

from __future__ import annotations

import math
import operator

import numpy as np

__all__ = ["check_bool", "check_float", "check_int"]


def _bounds(low: float, high: float | None, ints: bool) -> str:
    if high is None:
        return f">= {low}"
    return f"in {low}..{high}" if ints else f"in [{low}, {high}]"


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int in ``low..high`` (no upper bound when ``high`` is None).

    Raises TypeError for a non-integer (bools included) and ValueError out of range.
    """
    what = f"{name} must be an integer {_bounds(low, high, True)}"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what}, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what}, got {type(value).__name__}") from None
    if v < low or (high is not None and v > high):
        raise ValueError(f"{name} must be {_bounds(low, high, True)}, got {v}")
    return v


def check_float(value: object, name: str, low: float, high: float | None = None) -> float:
    """Return ``value`` as a finite float in ``[low, high]`` (no upper bound when ``high`` is None).

    Raises TypeError for a non-number (bools included) and ValueError for NaN or out of range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a number {_bounds(low, high, False)}, got "
                        f"{type(value).__name__}")
    v = float(value)
    if not (v >= low and (high is None or v <= high) and math.isfinite(v)):
        raise ValueError(f"{name} must be {_bounds(low, high, False)}, got {value}")
    return v


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` as a bool; TypeError for anything but a Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)

"""Argument checks shared by the public functions of bitsub."""

from __future__ import annotations

import operator

import numpy as np


def check_int(value: object, name: str, low: int, high: int) -> int:
    """Return ``value`` as an int in ``low..high``; TypeError / ValueError saying what to pass."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer in {low}..{high}, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer in {low}..{high}, got {type(value).__name__}"
        ) from None
    if not low <= v <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {v}")
    return v

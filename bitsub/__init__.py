"""bitsub: many tasks' sub-networks packed into one network's weights, at a few bits per weight.

The engine (NumPy + Numba); it never imports torch. See README.md for a tour.
"""

from __future__ import annotations

from bitsub.errors import FormatError

__version__ = "0.1.0"

__all__ = [
    "FormatError",
]

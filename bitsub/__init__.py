"""bitsub: many tasks' sub-networks packed into one network's weights, at a few bits per weight.

The engine (NumPy + Numba); it never imports torch. See README.md for a tour.
"""

from __future__ import annotations

from bitsub.bitfield import pack_bits, unpack_bits
from bitsub.capacity import Capacity
from bitsub.errors import FormatError
from bitsub.maskcodec import decode_mask, encode_mask
from bitsub.packed import PackedModel, TaskLayer
from bitsub.storage import load

__version__ = "0.1.0"

__all__ = [
    "Capacity",
    "FormatError",
    "PackedModel",
    "TaskLayer",
    "decode_mask",
    "encode_mask",
    "load",
    "pack_bits",
    "unpack_bits",
]

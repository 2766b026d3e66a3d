"""bitsub: many tasks' sub-networks packed into one network's weights, at a few bits per weight.

The engine (NumPy + Numba); it never imports torch. See README.md for a tour.
"""

from __future__ import annotations

from bitsub.adaptive import AdaptiveResult, adaptive_bitwidth
from bitsub.bitfield import pack_bits, unpack_bits
from bitsub.capacity import Capacity
from bitsub.errors import FormatError
from bitsub.kmeans import kmeans_1d, quantize
from bitsub.maskcodec import decode_mask, encode_mask
from bitsub.network import validate_network
from bitsub.packed import PackedModel, TaskLayer
from bitsub.plan import Plan, build_plan
from bitsub.storage import load

__version__ = "0.1.0"

__all__ = [
    "AdaptiveResult",
    "Capacity",
    "FormatError",
    "PackedModel",
    "Plan",
    "TaskLayer",
    "adaptive_bitwidth",
    "build_plan",
    "decode_mask",
    "encode_mask",
    "kmeans_1d",
    "load",
    "pack_bits",
    "quantize",
    "unpack_bits",
    "validate_network",
]

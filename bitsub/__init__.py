"""bitsub: many tasks' sub-networks packed into one network's weights, at a few bits per weight.

The engine (NumPy + Numba); it never imports torch. See README.md for a tour.
"""

from __future__ import annotations

from bitsub.codecs.bitfield import pack_bits, unpack_bits
from bitsub.codecs.maskcodec import decode_mask, encode_mask
from bitsub.errors import FormatError
from bitsub.kernels.plan import Plan, build_plan
from bitsub.model.capacity import Capacity
from bitsub.model.network import validate_network
from bitsub.model.packed import PackedModel, TaskLayer
from bitsub.quant.adaptive import AdaptiveResult, adaptive_bitwidth
from bitsub.quant.kmeans import kmeans_1d, quantize
from bitsub.storage.hdf5 import load
from bitsub.version import __version__ as __version__

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

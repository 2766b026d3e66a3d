"""Decoding stored masks for load: bounded by the layer's shape, straight into packed bits."""

from __future__ import annotations

import math

import numba
import numpy as np

from bitsub.codecs.maskcodec import SCHEME_NAMES, decode_mask, decode_stream, parse_mask
from bitsub.config import NJIT
from bitsub.errors import FormatError

__all__ = ["decode_packed_mask"]


@numba.njit(**NJIT)
def _merge_context_streams(ctx, s0, s1, out):
    # A mask coded in a context (maskcodec): positions where ctx is 0 take the bits of s0 in
    # order, the others those of s1. Writes np.packbits of the mask into out. The caller pads s0
    # and s1 with one element beyond their counts (len(s0) = count(~ctx) + 1, len(s1) =
    # count(ctx) + 1), so that both loads below stay in bounds and the choice is branch-free.
    n = ctx.size
    j0 = 0
    j1 = 0
    for byte in range(out.size):
        v = np.uint8(0)
        for k in range(8):
            i = byte * 8 + k
            bit = np.uint8(0)
            if i < n:
                c = ctx[i]
                bit = np.uint8(s1[j1]) if c else np.uint8(s0[j0])
                j1 += np.int64(c)
                j0 += 1 - np.int64(c)
            v = (v << np.uint8(1)) | bit
        out[byte] = v


def decode_packed_mask(enc: bytes, context: np.ndarray | None,
                       shape: tuple[int, ...]) -> np.ndarray:
    """``np.packbits`` of the flat mask that ``enc`` codes, which must have ``shape``.

    The declared shape is checked against ``shape`` before anything is decoded, so a crafted
    header cannot make the decoder allocate more than the layer's size. A constant mask (a task
    using all or none of a layer) is packed straight from its header. ``context``: the bool
    context (``shape``) the mask was coded with, or None.

    Raises
    ------
    FormatError
        Any malformed encoding, a shape other than ``shape``, or a context mismatch.
    """
    got, sizes, streams, ctx = parse_mask(enc, context, max_positions=math.prod(shape))
    if got != shape:
        raise FormatError(f"mask of shape {got}, expected {shape}")
    n = math.prod(shape)
    if context is None:
        scheme = SCHEME_NAMES[streams[0][0]]
        if scheme in ("zeros", "ones"):
            packed = np.full((n + 7) // 8, 0xFF if scheme == "ones" else 0, np.uint8)
            if n & 7 and scheme == "ones":
                packed[-1] = (0xFF << (8 - (n & 7))) & 0xFF
            return packed
        mask = decode_mask(enc, max_positions=math.prod(shape))
        if mask.shape != shape or mask.dtype != np.bool_:  # cannot happen: checked above
            raise FormatError(f"mask of shape {mask.shape}, expected {shape}")
        return np.packbits(mask.reshape(-1))
    # the two streams (context 0, context 1 positions) merged straight into packed bits:
    # decode_mask's boolean scatter costs ~5x more on large masks
    bits = [decode_stream(p, size) for p, size in zip(streams, sizes)]
    if [b.size for b in bits] != sizes:  # cannot happen: the decoder checks it
        raise FormatError("mask streams do not match the context")
    out = np.empty((ctx.size + 7) // 8, np.uint8)
    _merge_context_streams(ctx, *(np.append(b, False) for b in bits), out)
    return out

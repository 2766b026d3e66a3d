"""Mask references: how a task's mask and write mask are coded given its bank's earlier tasks.

A task's stored mask of a layer is Huffman-coded (:func:`bitsub.codecs.maskcodec.encode_mask`)
in the context a decoder holding the bank's earlier tasks already has: none, the previous
task's mask, or the union of the earlier masks, whichever codes smallest (``MASK_REFERENCES``).
Tasks largely reuse their predecessors' positions, so this is much smaller than coding each mask
alone. Its write mask is usually implied: the mask minus what the bank's earlier tasks wrote, or
the whole mask; otherwise the difference from the first is coded (``WRITE_REFERENCES``).
Masks here are ``np.packbits`` of the flattened bool arrays.
"""

from __future__ import annotations

import math

import numpy as np

from bitsub.codecs.maskcodec import encode_mask, encode_mask_best

__all__ = ["MASK_REFERENCES", "WRITE_REFERENCES", "choose_mask_coding", "code_write",
           "default_write", "reference_context"]

# What a task's stored mask of a layer is coded against (maskcodec context), by code:
# 0 nothing, 1 the mask of the previous task of the same bank, 2 the union of the masks of all
# earlier tasks of the same bank. The decoder holds both once it decoded the earlier tasks.
MASK_REFERENCES = ("alone", "previous", "union")
# Which positions a task writes in a layer, given its mask (what a file stores, by code): 0 its
# mask minus the positions its bank's earlier tasks wrote (the usual case: nothing stored), 1 its
# whole mask, 2 coded: the difference from code 0, Huffman-coded (maskcodec).
WRITE_REFERENCES = ("new", "mask", "coded")


def reference_context(earlier: list[np.ndarray], ref: int, n: int) -> np.ndarray | None:
    """The flat bool context of reference ``ref`` given the earlier tasks' packed masks.

    None for ``"alone"``; ``earlier`` must not be empty otherwise.
    """
    if ref == 0:
        return None
    packed = earlier[-1] if ref == 1 or len(earlier) == 1 else np.bitwise_or.reduce(earlier)
    return np.unpackbits(packed, count=n).view(bool)


def choose_mask_coding(mask: np.ndarray, earlier: list[np.ndarray]) -> tuple[bytes, int, int]:
    """The stored coding of a mask (bool, layer shape): (bytes, reference, bytes coded alone).

    The smallest encoding among the references the decoder will hold; ties go to the simpler.
    """
    refs = () if not earlier else (1,) if len(earlier) == 1 else (1, 2)
    contexts = [reference_context(earlier, r, mask.size).reshape(mask.shape) for r in refs]
    coding = encode_mask_best(mask, contexts)
    return bytes(coding.data), 0 if coding.index == 0 else refs[coding.index - 1], coding.sizes[0]


def default_write(mask: np.ndarray, earlier_writes: list[np.ndarray]) -> np.ndarray:
    """Write reference ``"new"``: the packed mask minus the earlier tasks' packed writes."""
    if not earlier_writes:
        return mask.copy()
    return mask & ~np.bitwise_or.reduce(earlier_writes)


def code_write(write: np.ndarray, new: np.ndarray, mask: np.ndarray,
               shape: tuple[int, ...]) -> tuple[int, bytes]:
    """How a file stores a packed write mask: (index into ``WRITE_REFERENCES``, bytes)."""
    if np.array_equal(write, new):
        return 0, b""
    if np.array_equal(write, mask):
        return 1, b""
    diff = np.unpackbits(write ^ new, count=math.prod(shape)).view(bool).reshape(shape)
    return 2, bytes(encode_mask(diff))

"""Decoding stored masks for load: bounded by the layer's shape, straight into packed bits."""

from __future__ import annotations

import math

import numba
import numpy as np

from bitsub.codecs.maskcodec import SCHEME_NAMES, decode_stream, parse_mask
from bitsub.config import NJIT
from bitsub.errors import FormatError

__all__ = ["decode_packed_mask", "unpack_context", "write_mask"]


def _deposit_table() -> np.ndarray:
    # _DEPOSIT[c, v]: the popcount(c) low bits of v placed, most significant first, at the set
    # bits of c, most significant first (a byte-wide "parallel bit deposit")
    table = np.zeros((256, 256), np.uint8)
    for c in range(256):
        at = [7 - k for k in range(8) if c >> (7 - k) & 1]
        k = len(at)
        for v in range(1 << k):
            table[c, v] = sum(1 << at[j] for j in range(k) if v >> (k - 1 - j) & 1)
    return table


_DEPOSIT = _deposit_table()


def _interleave_table(deposit: np.ndarray) -> np.ndarray:
    # _INTERLEAVE[256 * c + v]: the byte whose bits at the set bits of c are the popcount(c)
    # high bits of v and whose other bits are the remaining low bits of v, each most
    # significant first (both deposits of a context byte in one look-up)
    table = np.zeros((256, 256), np.uint8)
    for c in range(256):
        k0 = 8 - bin(c).count("1")
        v = np.arange(256)
        table[c] = deposit[c, v >> k0] | deposit[255 - c, v & ((1 << k0) - 1)]
    return table.reshape(-1)


_INTERLEAVE = _interleave_table(_DEPOSIT)
STREAM_SLACK = 9  # zero bytes after each packed stream: _window reads 9 bytes


@numba.njit(**NJIT)
def _window(stream, pos):
    # the 64 bits of the packed stream from bit pos, the first the most significant
    j = np.uint64(pos >> 3)
    v = np.uint64(0)
    for k in range(8):  # unsigned index: the eight loads fuse into one
        v = (v << np.uint64(8)) | np.uint64(stream[j + np.uint64(k)])
    r = np.uint64(pos & 7)
    return (v << r) | ((np.uint64(stream[j + np.uint64(8)]) << r) >> np.uint64(8))


@numba.njit(**NJIT)
def _merge_context_streams(ctx, s0, s1, out, popc, interleave):
    # A mask coded in a context (maskcodec): positions where the context is 0 take the bits of
    # stream 0 in order, the others those of stream 1. All packed (np.packbits order): ctx the
    # context, s0 and s1 the streams followed by at least STREAM_SLACK zero bytes; writes the
    # mask's packed bits into out. Eight output bytes take at most 64 bits of each stream: one
    # window of each per eight bytes, then per byte the context's bits of each window, shifted
    # out, and one table look-up that interleaves them (pad bits from stream 0's zero padding).
    nb = out.size
    p0 = 0
    p1 = 0
    for g in range(0, nb, 8):
        w1 = _window(s1, p1)
        w0 = _window(s0, p0)
        e = min(g + 8, nb)
        t1 = 0
        for q in range(g, e):
            c = np.uint64(ctx[q])
            k1 = np.uint64(popc[c])
            k0 = np.uint64(8) - k1
            v1 = (w1 >> np.uint64(56)) >> k0
            v0 = (w0 >> np.uint64(56)) >> k1
            w1 <<= k1
            w0 <<= k0
            out[q] = interleave[(c << np.uint64(8)) | (v1 << k0) | v0]
            t1 += np.int64(k1)
        p1 += t1
        p0 += 8 * (e - g) - t1


@numba.njit(**NJIT)
def _pack_bools(bits, out):
    # out[: ceil(n / 8)] = np.packbits(bits) (bits: n bytes of 0 or 1), eight at a time: the
    # multiply gathers the low bit of each byte of a little-endian uint64, the first byte's
    # into the top bit; without the GIL, unlike np.packbits
    n = bits.size
    full = n >> 3
    v = bits[: 8 * full].view(np.uint64)
    mul = np.uint64(0x8040201008040201)
    for q in range(full):
        out[q] = np.uint8((v[q] * mul) >> np.uint64(56))
    if n & 7:
        x = 0
        for k in range(n & 7):
            x |= np.int64(bits[8 * full + k]) << (7 - k)
        out[full] = x


@numba.njit(**NJIT)
def _unpack_bools(packed, out):
    # out[i] = bit i of packed (np.packbits order) for the full bytes of out, eight at a time,
    # then the rest; without the GIL, unlike np.unpackbits
    n = out.size
    full = n >> 3
    v = out[: 8 * full].view(np.uint64)
    spread = np.uint64(0x0101010101010101)
    pick = np.uint64(0x0102040810204080)  # byte k (little-endian) keeps bit 7 - k
    low7 = np.uint64(0x7F7F7F7F7F7F7F7F)
    top = np.uint64(0x8080808080808080)
    for q in range(full):
        t = (np.uint64(packed[q]) * spread) & pick
        v[q] = ((t + low7) & top) >> np.uint64(7)
    for i in range(8 * full, n):
        out[i] = (packed[i >> 3] >> (7 - (i & 7))) & 1


def _packed(bits: np.ndarray, slack: int) -> np.ndarray:
    # np.packbits of a 1-D bool array followed by slack zero bytes
    out = np.zeros((bits.size + 7) // 8 + slack, np.uint8)
    _pack_bools(np.ascontiguousarray(bits).view(np.uint8), out)
    return out


def unpack_context(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The bool array of ``shape`` whose ``np.packbits`` is ``packed``: a context to decode in.

    ``np.unpackbits`` without holding the GIL (the load decodes the banks on threads).
    """
    out = np.empty(math.prod(shape), np.bool_)
    _unpack_bools(packed, out.view(np.uint8))
    return out.reshape(shape)


def decode_packed_mask(enc: bytes, context: np.ndarray | None, shape: tuple[int, ...],
                       context_bits: np.ndarray | None = None) -> np.ndarray:
    """``np.packbits`` of the flat mask that ``enc`` codes, which must have ``shape``.

    The declared shape is checked against ``shape`` before anything is decoded, so a crafted
    header cannot make the decoder allocate more than the layer's size. A constant mask (a task
    using all or none of a layer) is packed straight from its header. ``context``: the bool
    context (``shape``) the mask was coded with, or None; ``context_bits``: optionally,
    ``np.packbits`` of it (saves packing it again).

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
        # decode_mask's steps, without parsing (and checking the crc of) the bytes again
        bits = decode_stream(streams[0], sizes[0])
        if bits.shape != (n,) or bits.dtype != np.bool_:  # cannot happen: checked above
            raise FormatError(f"mask of {bits.size} positions, expected {n}")
        return _packed(bits, 0)
    # the two streams (context 0, context 1 positions) merged straight into packed bits:
    # decode_mask's boolean scatter costs ~5x more on large masks
    bits = [decode_stream(p, size) for p, size in zip(streams, sizes)]
    if [b.size for b in bits] != sizes:  # cannot happen: the decoder checks it
        raise FormatError("mask streams do not match the context")
    out = np.empty((n + 7) // 8, np.uint8)
    packed = [_packed(b, STREAM_SLACK) for b in bits]
    ctx_bits = np.packbits(ctx.reshape(-1)) if context_bits is None else context_bits
    _merge_context_streams(ctx_bits, *packed, out, _POP8, _INTERLEAVE)
    return out


@numba.njit(**NJIT)
def _write_kernel(mask, written, diff, ref, out):
    # out = the write mask (packed) that reference ref implies, written |= out; returns
    # (its set bits, its set bits outside mask)
    count = 0
    outside = 0
    for q in range(mask.size):
        m = mask[q]
        if ref == 0:
            v = m & ~written[q]
        elif ref == 1:
            v = m
        else:
            v = (m & ~written[q]) ^ diff[q]
        out[q] = v
        written[q] |= v
        count += _POP8[v]
        outside += _POP8[v & ~m]
    return count, outside


_POP8 = np.array([bin(v).count("1") for v in range(256)], np.int64)


def write_mask(mask: np.ndarray, written: np.ndarray, reference: int,
               diff: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """A task's packed write mask from its stored reference, in one pass over the layer.

    ``mask``: the task's packed mask; ``written``: the packed union of what the bank's earlier
    tasks wrote in the layer, updated in place (``|=`` the write mask); ``reference``: index
    into ``WRITE_REFERENCES`` (0: ``"new"``, the mask minus ``written``; 1: ``"mask"``; 2:
    ``"coded"``, ``"new"`` xor the decoded ``diff``). Returns (write mask, its positions, its
    positions outside ``mask``); for ``"mask"`` the write mask is ``mask`` itself.
    """
    out = mask if reference == 1 else np.empty_like(mask)
    zeros = np.zeros(0, np.uint8)
    count, outside = _write_kernel(mask, written, zeros if diff is None else diff,
                                   int(reference), out)
    return out, int(count), int(outside)

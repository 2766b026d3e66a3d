"""Bytes scheme decoding kernels: one symbol a look-up, or up to three for short codes.

A bytes stream codes each 8 positions of the mask as one byte symbol (position i of the block is
bit i). The kernels decode one or two segments interleaved ("lanes", as in
`bitsub.codecs.maskdecode`) straight into the mask's bools, 8 at a time as one uint64; where the
codes are short (i.i.d. densities up to about 0.2), a 13-bit table gives up to three symbols a
look-up (`byte_triples`). The stream parser and the checks around them are in
`bitsub.codecs.maskdecode`.
"""

from __future__ import annotations

import numba
import numpy as np

from bitsub.codecs.maskio import ERR_CODE, ERR_OVERRUN
from bitsub.config import NJIT

__all__ = [
    "BYTE_BITS",
    "TRIPLES_MAX_MEAN_LENGTH",
    "TRIPLES_MIN_BYTES",
    "TRIPLE_TABLE_BITS",
    "byte_triples",
    "decode_bytes_kernel",
    "decode_bytes_triples_kernel",
]

_U64 = np.uint64

# The bytes scheme's three-symbol look-up (`byte_triples`): its table bits (8192 int32 entries,
# 32 KiB), and where it is used: streams of at least TRIPLES_MIN_BYTES bytes whose codes' mean
# length is at most TRIPLES_MAX_MEAN_LENGTH bits (i.i.d. densities up to about 0.22).
TRIPLE_TABLE_BITS = 13
TRIPLES_MIN_BYTES = 1 << 14
TRIPLES_MAX_MEAN_LENGTH = 6.2

# BYTE_BITS[b]: byte b of the bytes scheme as 8 bools (position i of the block is bit i, as
# np.packbits(bitorder="little") packs them), read as one native uint64.
BYTE_BITS = np.unpackbits(
    np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little"
).view(np.uint64).reshape(-1).copy()


@numba.njit(**NJIT)
def _byte_triples_kernel(table, table_bits):
    out = np.zeros(table.shape[0], dtype=np.int32)
    mask = table.shape[0] - 1
    for v in range(table.shape[0]):
        e = table[v]
        if e == 0:
            continue
        total = e & 31
        entry = (e >> 5) << 7
        cnt = 1
        while cnt < 3:
            nxt = table[(v << total) & mask]
            ln = nxt & 31
            if nxt == 0 or total + ln > table_bits:
                break
            entry |= (nxt >> 5) << (7 + 8 * cnt)
            total += ln
            cnt += 1
        out[v] = entry | total | cnt << 5
    return out


def byte_triples(table: np.ndarray, table_bits: int) -> np.ndarray:
    """Up-to-three-symbol look-up table of the bytes scheme from a one-symbol `decode_table`.

    Entry for the next `table_bits` bits: ``total | count << 5 | b1 << 7 | b2 << 15 | b3 << 23``:
    the `count` (1-3) byte symbols whose codes all fit in those bits, in stream order (unused
    ones 0), and their total length. 0 marks a first code longer than `table_bits`.
    """
    return _byte_triples_kernel(table, int(table_bits))


@numba.njit(**NJIT)
def decode_bytes_kernel(words, wb, bounds, out, byte_bits, table, table_bits, max_length, first,
                        count, offset, symbols):
    """Decode byte symbols into out[bounds[i]:bounds[i + 1]] (lanes: `bitsub.codecs.maskdecode`).

    `out` is the mask's bools viewed as uint64: symbol b is stored as byte_bits[b], its 8
    positions at once (cheaper than packed bytes and np.unpackbits after). Returns the bits read
    from each stream, or an error code in the first slot. Indices are unsigned (every one is
    within its array): Numba then skips the negative-index wrap, 15-20% of the loop.
    """
    shift = _U64(64 - table_bits)
    two = bounds.shape[0] == 3
    acc0, n0, k0, j0 = _U64(0), 0, wb[0], bounds[0]
    acc1, n1, k1, j1 = _U64(0), 0, wb[1], bounds[1] if two else bounds[-1]
    while j0 < bounds[1] or j1 < bounds[-1]:
        for lane in range(2):
            if lane == 0:
                acc, n, k, j, kend, end = acc0, n0, k0, j0, wb[1], bounds[1]
            else:
                acc, n, k, j, kend, end = acc1, n1, k1, j1, wb[2], bounds[-1]
            if j < end:
                if n < 32:
                    if k >= kend:
                        return ERR_OVERRUN, 0
                    acc |= _U64(words[_U64(k)]) << _U64(32 - n)
                    k += 1
                    n += 32
                e = table[acc >> shift]
                if e != 0:
                    ln = np.int64(e & 31)
                    out[_U64(j)] = byte_bits[_U64(e >> 5)]
                else:
                    # The long-code walk of `long_symbol`, written out: called, it costs the
                    # loop 20% (reference counting of its arrays spills registers).
                    s = 0
                    ln = 0
                    for bits in range(table_bits + 1, max_length + 1):
                        c = np.int64(acc >> _U64(64 - bits)) - first[bits]
                        if 0 <= c < count[bits]:
                            s = np.int64(symbols[offset[bits] + c])
                            ln = bits
                            break
                    if ln == 0:
                        return ERR_CODE, 0
                    out[_U64(j)] = byte_bits[_U64(s)]
                j += 1
                acc <<= _U64(ln)
                n -= ln
            if lane == 0:
                acc0, n0, k0, j0 = acc, n, k, j
            else:
                acc1, n1, k1, j1 = acc, n, k, j
    return 32 * (k0 - wb[0]) - n0, 32 * (k1 - wb[1]) - n1


@numba.njit(**NJIT)
def decode_bytes_triples_kernel(words, wb, bounds, out, byte_bits, triples, table, table_bits,
                                max_length, first, count, offset, symbols):
    """`decode_bytes_kernel` taking up to three symbols a look-up, for short codes.

    Each look-up in `triples` (see `byte_triples`) yields up to three symbols; both lanes run
    while each has room for three, then each lane runs to its end alone, the last symbols one by
    one from `table`. Returns the bits read from each stream, or an error code in the first slot.
    """
    shift = _U64(64 - table_bits)
    two = bounds.shape[0] == 3
    acc0, n0, k0, j0 = _U64(0), 0, wb[0], bounds[0]
    acc1, n1, k1, j1 = _U64(0), 0, wb[1], bounds[1] if two else bounds[-1]
    while j0 + 3 <= bounds[1] and j1 + 3 <= bounds[-1]:
        for lane in range(2):
            if lane == 0:
                acc, n, k, j, kend = acc0, n0, k0, j0, wb[1]
            else:
                acc, n, k, j, kend = acc1, n1, k1, j1, wb[2]
            if n < 32:
                if k >= kend:
                    return ERR_OVERRUN, 0
                acc |= _U64(words[_U64(k)]) << _U64(32 - n)
                k += 1
                n += 32
            e = triples[acc >> shift]
            if e != 0:
                ln = np.int64(e & 31)
                out[_U64(j)] = byte_bits[_U64((e >> 7) & 255)]
                out[_U64(j + 1)] = byte_bits[_U64((e >> 15) & 255)]
                out[_U64(j + 2)] = byte_bits[_U64(e >> 23)]
                j += (e >> 5) & 3
            else:
                # The long-code walk of `long_symbol`, written out: called, it costs the
                # loop 20% (reference counting of its arrays spills registers).
                s = 0
                ln = 0
                for bits in range(table_bits + 1, max_length + 1):
                    c = np.int64(acc >> _U64(64 - bits)) - first[bits]
                    if 0 <= c < count[bits]:
                        s = np.int64(symbols[offset[bits] + c])
                        ln = bits
                        break
                if ln == 0:
                    return ERR_CODE, 0
                out[_U64(j)] = byte_bits[_U64(s)]
                j += 1
            acc <<= _U64(ln)
            n -= ln
            if lane == 0:
                acc0, n0, k0, j0 = acc, n, k, j
            else:
                acc1, n1, k1, j1 = acc, n, k, j
    for lane in range(2):
        if lane == 0:
            acc, n, k, j, kend, end = acc0, n0, k0, j0, wb[1], bounds[1]
        else:
            acc, n, k, j, kend, end = acc1, n1, k1, j1, wb[2], bounds[-1]
        while j < end:
            if n < 32:
                if k >= kend:
                    return ERR_OVERRUN, 0
                acc |= _U64(words[_U64(k)]) << _U64(32 - n)
                k += 1
                n += 32
            v = acc >> shift
            e = triples[v] if j + 3 <= end else 0
            if e != 0:
                ln = np.int64(e & 31)
                out[_U64(j)] = byte_bits[_U64((e >> 7) & 255)]
                out[_U64(j + 1)] = byte_bits[_U64((e >> 15) & 255)]
                out[_U64(j + 2)] = byte_bits[_U64(e >> 23)]
                j += (e >> 5) & 3
            else:
                e = table[v]
                if e != 0:
                    ln = np.int64(e & 31)
                    s = np.int64(e >> 5)
                else:
                    # The long-code walk of `long_symbol`, written out: called, it costs the
                    # loop 20% (reference counting of its arrays spills registers).
                    s = 0
                    ln = 0
                    for bits in range(table_bits + 1, max_length + 1):
                        c = np.int64(acc >> _U64(64 - bits)) - first[bits]
                        if 0 <= c < count[bits]:
                            s = np.int64(symbols[offset[bits] + c])
                            ln = bits
                            break
                    if ln == 0:
                        return ERR_CODE, 0
                out[_U64(j)] = byte_bits[_U64(s)]
                j += 1
            acc <<= _U64(ln)
            n -= ln
        if lane == 0:
            k0, n0 = k, n
        else:
            k1, n1 = k, n
    return 32 * (k0 - wb[0]) - n0, 32 * (k1 - wb[1]) - n1

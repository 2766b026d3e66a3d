"""zlib's CRC-32 of a large buffer computed in parts on the engine threads, and combined.

``crc32(a + b)`` follows from ``crc32(a)``, ``crc32(b)`` and ``len(b)``: the CRC is the remainder
of a polynomial division over GF(2), so appending ``len(b)`` bytes multiplies ``a``'s remainder
by ``x**(8 * len(b))`` modulo the CRC polynomial before ``b``'s remainder is added (zlib's
``crc32_combine``, which Python's ``zlib`` module does not expose; the pre- and post-inversion
of the CRC cancel out). So the CRC of each task's payload and of the whole file come from one
pass over the bytes, split over threads (``zlib.crc32`` releases the GIL on large buffers).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from bitsub.threads import engine_threads, split

__all__ = ["crc32_combine", "crc32_segments"]

_POLY = 0xEDB88320  # the CRC-32 polynomial, bit-reversed: bit 31 holds x**0, bit 0 x**31
_PARALLEL_MIN = 1 << 20  # bytes below which one thread does it all


def _times(a: int, b: int) -> int:
    # a * b modulo the polynomial, both in the bit-reversed representation
    out = 0
    top = 1 << 31
    while a:
        if a & top:
            out ^= b
            a ^= top
        top >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return out


# _SQUARES[k] = x**(2**k) modulo the polynomial (x**1 is bit 30)
_SQUARES = [1 << 30]
for _ in range(63):
    _SQUARES.append(_times(_SQUARES[-1], _SQUARES[-1]))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """``zlib.crc32(a + b)`` from ``crc1 = zlib.crc32(a)``, ``crc2 = zlib.crc32(b)``, ``len(b)``."""
    n = 8 * len2  # x**n: the product of x**(2**k) over the set bits k of n
    power = 1 << 31  # x**0
    k = 0
    while n:
        if n & 1:
            power = _times(_SQUARES[k], power)
        n >>= 1
        k += 1
    return _times(power, crc1) ^ crc2


def _crcs(data: memoryview, cuts: Sequence[int]) -> list[int]:
    return [zlib.crc32(data[a:b]) for a, b in zip(cuts, cuts[1:])]


def crc32_segments(data: memoryview, cuts: Sequence[int]) -> tuple[list[int], int]:
    """The CRC-32 of each segment ``data[cuts[i]:cuts[i + 1]]`` and of ``data[cuts[0]:cuts[-1]]``.

    ``cuts`` increase. The bytes are split into one run of segments per engine thread of about
    equal size (a segment cut in two where needed, its halves combined).
    """
    start, end = cuts[0], cuts[-1]
    k = engine_threads() if end - start >= _PARALLEL_MIN else 1
    even = [start + j * (end - start) // k for j in range(1, k)]
    fine = sorted(set(cuts) | set(even))
    groups, j = [], 0
    for edge in [*even, end]:
        g = [fine[j]]
        while fine[j] < edge:
            j += 1
            g.append(fine[j])
        groups.append((data, g))
    parts = [c for cs in split(_crcs, groups) for c in cs]
    lengths = [b - a for a, b in zip(fine, fine[1:])]
    whole = 0
    for c, n in zip(parts, lengths):
        whole = crc32_combine(whole, c, n)
    out, i = [], 0
    for b in cuts[1:]:
        crc = 0
        while i < len(lengths) and fine[i] < b:
            crc = crc32_combine(crc, parts[i], lengths[i])
            i += 1
        out.append(crc)
    return out, whole

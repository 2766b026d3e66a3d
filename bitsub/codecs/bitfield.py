"""Bit fields: dense b-bit code streams and b-bit fields inside unsigned word arrays.

Two layers:

- ``pack_bits`` / ``unpack_bits`` turn an array of b-bit codes (b = 1..16) into a dense byte
  stream and back, most significant bit first: code 0 occupies the top ``bits`` bits of byte 0.
- ``read_field`` / ``write_field`` / ``field_shift`` are plain Numba functions over uint32 or
  uint64 word arrays, callable from Python and from other ``@njit`` kernels. A word holds fields
  packed from the most significant bit down; ``field_shift`` says where the next one sits.

All arithmetic inside the kernels is explicit ``np.uint64``: Numba turns ``uint64 op int64`` into
float64, and a shift by the full word width is undefined, so masks are built by shifting an
all-ones word right instead of shifting 1 left.
"""

from __future__ import annotations

import operator

import numba
import numpy as np

from bitsub.config import NJIT
from bitsub.validate import check_int

__all__ = [
    "field_shift",
    "pack_bits",
    "read_field",
    "unpack_bits",
    "write_field",
]

MAX_PACK_BITS = 16
MAX_FIELD_BITS = 64

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_U64_64 = np.uint64(64)


# ------------------------------------------------------------------------ field primitives


@numba.njit(**NJIT)
def field_mask(bits):
    """All-ones mask of the low ``bits`` bits (1..64) as uint64, safe for ``bits == 64``."""
    return _ALL_ONES >> (_U64_64 - np.uint64(bits))


@numba.njit(**NJIT)
def read_field(words, index, shift, bits):
    """Value of bits ``[shift, shift + bits)`` of ``words[index]``, as uint64.

    Parameters
    ----------
    words : ndarray of uint32 or uint64, 1-D
        Word array.
    index : int
        Word index; not bounds-checked.
    shift : int
        Position of the field's least significant bit, counted from the word's LSB.
    bits : int
        Field width, 1..32 (up to 64 for uint64 words); ``shift + bits`` must not exceed the
        word width. Not checked: callers validate once, outside the kernel.

    Returns
    -------
    numpy.uint64
        The field value.
    """
    return (np.uint64(words[index]) >> np.uint64(shift)) & field_mask(bits)


@numba.njit(**NJIT)
def write_field(words, index, shift, bits, value):
    """Clear bits ``[shift, shift + bits)`` of ``words[index]`` and write ``value`` there.

    ``value`` is taken modulo ``2**bits`` so that a wide value can never spill into the
    neighbouring fields. Same argument rules as :func:`read_field`.
    """
    ushift = np.uint64(shift)
    mask = field_mask(bits) << ushift
    w = np.uint64(words[index])
    w = (w & ~mask) | ((np.uint64(value) << ushift) & mask)
    words[index] = w


@numba.njit(**NJIT)
def field_shift(word_bits, used_bits, bits):
    """Shift (from the LSB) of a ``bits``-wide field placed after ``used_bits`` occupied bits.

    Fields are packed from the most significant bit down, so the result is
    ``word_bits - used_bits - bits``; it is negative when the field does not fit.
    """
    return np.int64(word_bits) - np.int64(used_bits) - np.int64(bits)


# ------------------------------------------------------------------------ dense code streams


@numba.njit(**NJIT)
def _pack_kernel(codes, bits, out):
    # Bit accumulator: at most 7 + 16 live bits, so the uint64 never loses a pending bit.
    ubits = np.uint64(bits)
    acc = np.uint64(0)
    nacc = np.uint64(0)
    pos = 0
    eight = np.uint64(8)
    byte_mask = np.uint64(0xFF)
    for i in range(codes.size):
        acc = (acc << ubits) | np.uint64(codes[i])
        nacc += ubits
        while nacc >= eight:
            nacc -= eight
            out[pos] = np.uint8((acc >> nacc) & byte_mask)
            pos += 1
    if nacc > np.uint64(0):
        out[pos] = np.uint8((acc << (eight - nacc)) & byte_mask)


@numba.njit(**NJIT)
def _pack_bytes_kernel(codes, bits, out):
    # bits in {1, 2, 4}: codes never straddle a byte, so build each byte from 8 // bits codes.
    per = 8 // bits
    n = codes.size
    full = n // per
    for j in range(full):
        b = 0
        base = j * per
        for t in range(per):
            b = (b << bits) | codes[base + t]
        out[j] = b
    rest = n - full * per
    if rest > 0:
        b = 0
        for t in range(rest):
            b = (b << bits) | codes[full * per + t]
        out[full] = b << (bits * (per - rest))


@numba.njit(**NJIT)
def _unpack_kernel(data, bits, count, out):
    ubits = np.uint64(bits)
    mask = field_mask(bits)
    acc = np.uint64(0)
    nacc = np.uint64(0)
    pos = 0
    eight = np.uint64(8)
    for i in range(count):
        while nacc < ubits:
            acc = (acc << eight) | np.uint64(data[pos])
            pos += 1
            nacc += eight
        nacc -= ubits
        out[i] = (acc >> nacc) & mask


@numba.njit(**NJIT)
def _unpack_bytes_kernel(data, bits, count, out):
    # bits in {1, 2, 4}: each byte holds 8 // bits whole codes.
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    full = count // per
    for j in range(full):
        byte = data[j]
        base = j * per
        for t in range(per):
            out[base + t] = (byte >> np.uint8(8 - bits * (t + 1))) & mask
    for i in range(full * per, count):
        t = i - full * per
        out[i] = (data[full] >> np.uint8(8 - bits * (t + 1))) & mask


def packed_size(count: int, bits: int) -> int:
    """Number of bytes :func:`pack_bits` produces for ``count`` codes of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integer codes of ``bits`` bits each into a dense byte stream.

    Parameters
    ----------
    codes : array_like of int
        Codes, any shape (flattened in C order); every code in ``0 .. 2**bits - 1``.
    bits : int
        Bit-width of every code, 1..16.

    Returns
    -------
    ndarray of uint8
        ``ceil(codes.size * bits / 8)`` bytes, most significant bit first; the unused low bits
        of the last byte are zero.

    Raises
    ------
    TypeError
        If ``codes`` is not an integer array or ``bits`` not an integer.
    ValueError
        If ``bits`` is out of range or a code is negative or ``>= 2**bits``.
    """
    b = check_int(bits, "bits", 1, MAX_PACK_BITS)
    arr = np.asarray(codes)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"codes must be an integer array, got dtype {arr.dtype}; cast it first")
    flat = np.ascontiguousarray(arr).reshape(-1)
    lo = flat.min()
    hi = flat.max()
    if lo < 0:
        raise ValueError(f"codes must be non-negative, found {lo}")
    if hi >= (1 << b):
        raise ValueError(f"code {hi} does not fit in {b} bits (max {(1 << b) - 1}); raise bits")
    if flat.dtype.itemsize > 4 or flat.dtype.kind == "i":
        flat = flat.astype(np.uint32 if b > 8 else np.uint8)
    if b == 8:
        return flat.astype(np.uint8)
    if b == 16:
        return flat.astype(">u2").view(np.uint8)
    out = np.empty(packed_size(flat.size, b), dtype=np.uint8)
    if b in (1, 2, 4) and flat.dtype == np.uint8:
        _pack_bytes_kernel(flat, b, out)
    else:
        _pack_kernel(flat, b, out)
    return out


def unpack_bits(data: np.ndarray | bytes, bits: int, count: int) -> np.ndarray:
    """Unpack ``count`` codes of ``bits`` bits each from a stream made by :func:`pack_bits`.

    Parameters
    ----------
    data : bytes-like or ndarray of uint8
        The packed stream; at least ``ceil(count * bits / 8)`` bytes. Extra bytes are ignored.
    bits : int
        Bit-width of every code, 1..16.
    count : int
        Number of codes to read.

    Returns
    -------
    ndarray
        1-D codes, uint8 when ``bits <= 8`` else uint16.

    Raises
    ------
    TypeError
        If ``data`` is not bytes-like / uint8, or ``bits`` or ``count`` not integers.
    ValueError
        If ``bits`` or ``count`` is out of range or ``data`` is too short.
    """
    b = check_int(bits, "bits", 1, MAX_PACK_BITS)
    if isinstance(count, (bool, np.bool_)):
        raise TypeError("count must be a non-negative integer, got a bool")
    try:
        n = operator.index(count)
    except TypeError:
        raise TypeError(
            f"count must be a non-negative integer, got {type(count).__name__}"
        ) from None
    if n < 0:
        raise ValueError(f"count must be non-negative, got {n}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(data, dtype=np.uint8)
    elif isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"data must be bytes or a uint8 array, got dtype {data.dtype}")
        buf = np.ascontiguousarray(data).reshape(-1)
    else:
        raise TypeError(f"data must be bytes or a uint8 array, got {type(data).__name__}")
    need = packed_size(n, b)
    if buf.size < need:
        raise ValueError(
            f"data too short: {n} codes of {b} bits need {need} bytes, got {buf.size}"
        )
    if b == 8:
        return buf[:n].copy()
    if b == 16:
        return buf[: 2 * n].view(">u2").astype(np.uint16)
    out = np.empty(n, dtype=np.uint8 if b <= 8 else np.uint16)
    if n == 0:
        return out
    if b in (1, 2, 4):
        _unpack_bytes_kernel(buf, b, n, out)
    else:
        _unpack_kernel(buf, b, n, out)
    return out

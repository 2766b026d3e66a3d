"""Byte-level pieces of the mask format shared by its encoder and decoder.

Varints, a bounds-checked reader, the delta-coded code-length tables, segment bounds and the
checks of where a decoded stream ended. The format itself is described in `bitsub.codecs.maskcodec`.
"""

from __future__ import annotations

import numba
import numpy as np

from bitsub.codecs.huffman import MAX_CODE_LENGTH, check_code_lengths
from bitsub.config import NJIT
from bitsub.errors import FormatError

__all__ = [
    "ERR_CODE",
    "ERR_OVERRUN",
    "ERR_RUN",
    "Reader",
    "check_coverage",
    "check_end",
    "length_table_bits",
    "length_table_kernel",
    "read_length_table",
    "read_length_table_kernel",
    "segment_bounds",
    "segment_count",
    "segment_payloads",
    "varint",
    "write_length_table",
]

# Error codes of the decoding kernels (a kernel returns one in place of a bit count).
ERR_OVERRUN = -1
ERR_CODE = -2
ERR_RUN = -3

_U64 = np.uint64


def varint(value: int) -> bytes:
    """LEB128 bytes of a non-negative integer."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Reader:
    """Bounds-checked reader over the bytes being decoded; raises FormatError past `end`."""

    def __init__(self, data, end: int) -> None:
        self.data = data
        self.pos = 0
        self.end = end

    def take(self, count: int, what: str) -> bytes:
        """The next `count` bytes."""
        if count < 0 or self.pos + count > self.end:
            raise FormatError(f"truncated: {what} needs {count} bytes at offset {self.pos}")
        out = self.data[self.pos : self.pos + count]
        self.pos += count
        return out

    def u8(self, what: str) -> int:
        """The next byte."""
        pos = self.pos
        if pos >= self.end:
            raise FormatError(f"truncated: {what} needs 1 bytes at offset {pos}")
        self.pos = pos + 1
        return self.data[pos]

    def varint(self, what: str, limit: int) -> int:
        """The next varint, refused above `limit`."""
        data, pos, end = self.data, self.pos, self.end
        value = 0
        for i in range(10):
            if pos >= end:
                raise FormatError(f"truncated: {what} needs 1 bytes at offset {pos}")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                self.pos = pos
                if value > limit:
                    raise FormatError(f"{what} is {value}, more than the limit {limit}")
                return value
        self.pos = pos
        raise FormatError(f"{what} is not a valid varint")


# ------------------------------------------------------------------------ code-length tables


@numba.njit(**NJIT)
def length_table_kernel(lengths, out):
    """Delta-code `lengths` into `out` (zeroed bytes, MSB-first); returns the bit count.

    With an empty `out` only the bits are counted.
    """
    bit = 0
    prev = 0
    write = out.shape[0] > 0
    for i in range(lengths.shape[0]):
        length = np.int64(lengths[i])
        d = length - prev
        if d == 0:
            code, nb = 0, 1
        elif d == 1:
            code, nb = 2, 2
        elif d == -1:
            code, nb = 6, 3
        else:
            code, nb = (7 << 5) | (length & 31), 8
        if write:
            for j in range(nb - 1, -1, -1):
                if (code >> j) & 1:
                    out[bit >> 3] |= np.uint8(0x80 >> (bit & 7))
                bit += 1
        else:
            bit += nb
        prev = length
    return bit


def length_table_bits(lengths: np.ndarray) -> int:
    """Bits the code-length table of `lengths` takes (before byte padding)."""
    return int(length_table_kernel(np.ascontiguousarray(lengths), np.zeros(0, np.uint8)))


def write_length_table(lengths: np.ndarray) -> bytes:
    """Code lengths as deltas ("0": same, "10": +1, "110": -1, "111" + 5 bits), zero padded."""
    lengths = np.ascontiguousarray(lengths)
    out = np.zeros(lengths.shape[0] + 1, dtype=np.uint8)  # at most 8 bits a length
    nbits = length_table_kernel(lengths, out)
    return out[: (nbits + 7) // 8].tobytes()


@numba.njit(**NJIT)
def _bit(data, bit):
    return (data[bit >> 3] >> (7 - (bit & 7))) & 1


@numba.njit(**NJIT)
def read_length_table_kernel(data, start, end, out):
    """Parse len(out) code lengths from data[start:end]; the end byte, -1 (truncated) or -2."""
    bit = start * 8
    limit = end * 8
    prev = 0
    for i in range(out.shape[0]):
        # Each prefix bit is checked against the limit before it is read.
        if bit + 1 > limit:
            return -1
        bit += 1
        if _bit(data, bit - 1) == 0:
            out[i] = prev
            continue
        if bit + 1 > limit:
            return -1
        bit += 1
        if _bit(data, bit - 1) == 0:
            prev += 1
            out[i] = prev
            continue
        if bit + 1 > limit:
            return -1
        bit += 1
        if _bit(data, bit - 1) == 0:
            prev -= 1
            if prev < 0:
                return -1
            out[i] = prev
            continue
        if bit + 5 > limit:
            return -1
        v = 0
        for _ in range(5):
            v = (v << 1) | _bit(data, bit)
            bit += 1
        prev = v
        out[i] = prev
    # Padding bits up to the byte boundary must be zero.
    while bit & 7:
        if bit >= limit:
            return -1
        if _bit(data, bit):
            return -2
        bit += 1
    return bit >> 3


def read_length_table(reader: Reader, count: int) -> np.ndarray:
    """Read and validate `count` code lengths (a complete code within MAX_CODE_LENGTH)."""
    data = np.frombuffer(reader.data, dtype=np.uint8)
    out = np.zeros(count, dtype=np.int64)
    end = read_length_table_kernel(data, reader.pos, reader.end, out)
    if end == -1:
        raise FormatError("truncated: the code-length table runs past the end of the data")
    if end == -2:
        raise FormatError("the code-length table has nonzero padding bits")
    reader.pos = end
    why = check_code_lengths(out, MAX_CODE_LENGTH)
    if why is not None:
        raise FormatError(f"invalid code-length table: {why}")
    return out


# ---------------------------------------------------------------------------------- segments


def segment_count(size: int) -> int:
    """Segments for a stream of `size` positions (runs) or bytes (bytes scheme).

    Two segments let the decoder interleave two bit streams; small streams keep one.
    """
    return 2 if size >= 1 << 15 else 1


def segment_bounds(size: int, n_seg: int) -> np.ndarray:
    """Start of each of `n_seg` equal shares of `size`, and `size` at the end."""
    return np.array([(j * size) // n_seg for j in range(n_seg + 1)], dtype=np.int64)


def segment_payloads(words: np.ndarray, seg_bits: np.ndarray) -> list[bytes]:
    """Split a word stream whose segments each start on a fresh word into byte payloads."""
    stream = words.astype(">u4").tobytes()
    payloads = []
    offset = 0
    for bits in seg_bits.tolist():
        payloads.append(stream[offset : offset + (bits + 7) // 8])
        offset += 4 * ((bits + 31) // 32)
    return payloads


def check_end(end: int, payload: bytes, what: str) -> None:
    """The bit stream must end in the payload's last byte, with zero padding after it."""
    if end == ERR_OVERRUN or end > 8 * len(payload):
        raise FormatError(f"truncated or corrupt {what}: the bit stream runs past its payload")
    if end == ERR_CODE:
        raise FormatError(f"corrupt {what}: an invalid Huffman code")
    if end == ERR_RUN:
        raise FormatError(f"corrupt {what}: a run goes past the end of the mask")
    if (end + 7) // 8 != len(payload):
        raise FormatError(f"corrupt {what}: payload longer than its bit stream")
    if end & 7 and payload[-1] & ((1 << (8 - (end & 7))) - 1):
        raise FormatError(f"corrupt {what}: nonzero padding bits")


def check_coverage(n: int, payloads: list, per_bit: int) -> None:
    """Refuse, before allocating the mask, payloads too short to cover its n positions."""
    bits = 8 * sum(len(p) for p in payloads)
    if n > bits * max(per_bit, 1):
        raise FormatError(
            f"corrupt: {bits} payload bits cannot cover the declared {n} positions"
        )

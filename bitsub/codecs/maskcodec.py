"""Huffman-coded binary masks: `encode_mask` / `decode_mask` and the byte format.

A mask (one bit per weight position: does the task use it) is flattened in C order and coded by
the smallest of several symbol schemes, each Huffman-coded with a canonical code (see
`bitsub.codecs.huffman`):

- ``zeros`` / ``ones``: a constant mask, no payload.
- ``raw``: one bit per position.
- ``bytes``: 8-bit blocks, 256 symbols; close to the entropy for densities near 1/2.
- ``runs1`` / ``runs0``: the runs of the majority value between two occurrences of the minority
  value (1 for ``runs1``, 0 for ``runs0``). Symbol s < M-1 is "s majority bits then one minority
  bit"; symbol M-1 is "M-1 majority bits" (an escape for long runs). With e extra bits, the
  symbols count runs in units of 2**e and each non-escape symbol is followed by the run's e low
  bits as they are (for very sparse masks, whose long runs would need a huge alphabet). A
  virtual minority bit ends every segment. Near the entropy for sparse and dense masks.
- ``runs01``: alternating runs (0s, maybe none, then 1s, 0s, ...), one code for the runs of 0s
  and one for the runs of 1s, escapes as above (lengths stored minus 1, but for the first run).
  For clustered masks (rows, blocks or channels pruned together).

With a `context` (for example the union of earlier tasks' masks), the positions where the context
is 0 and those where it is 1 are coded as two separate streams, each by its own best scheme.

Byte format, version 1 (integers are LEB128 varints unless a width is given)::

    magic "BSMK" | version u8 | flags u8 (bit 0: context) | ndim u8 | shape: ndim varints
    [context checksum: crc32 of the packed context, u32 little-endian]
    stream, once (no context) or twice (context 0 positions, then context 1 positions):
        scheme u8
        runs1, runs0: extra bits u8 | M varint | code lengths | segments u8 | payload length
            per segment | payloads
        runs01: M0 varint | code lengths | M1 varint | code lengths | segments u8 | payload
            length per segment | payloads
        bytes: code lengths (256 symbols) | segments u8 | payload length per segment | payloads
        raw: ceil(n / 8) bytes, positions in little-endian bit order
    crc32 of everything before it, u32 little-endian

Code lengths are bit-packed MSB-first, each as its difference d from the previous one
("0": d = 0, "10": d = +1, "110": d = -1, "111" + 5 bits: the length itself), zero padded to a
byte. Each segment is an independent Huffman bit stream (MSB-first, zero padded) over an equal
share of the positions (runs) or bytes (bytes); two segments (streams of 2**15 positions or
bytes and more) let the decoder interleave them.

Decoders check the structure before they index (declared sizes against the data, code lengths
against the Kraft equality, every run against the mask's end) and then the checksum, so any bytes
that are not an encoding raise `FormatError`.
"""

from __future__ import annotations

import zlib

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

if numba.config.DISABLE_JIT:  # the intrinsic only exists compiled

    def trailing_zeros(x):  # noqa: D103
        return (int(x) & -int(x)).bit_length() - 1


from bitsub.codecs.huffman import (
    MAX_CODE_LENGTH,
    TABLE_BITS,
    canonical_codes,
    check_code_lengths,
    code_lengths,
    stream_words,
)
from bitsub.codecs.huffman import _encode_kernel as _encode_bytes_kernel
from bitsub.codecs.huffman import decode_table as _decode_table
from bitsub.config import NJIT
from bitsub.errors import FormatError

__all__ = ["MAX_POSITIONS", "decode_mask", "encode_mask", "mask_scheme"]

MAGIC = b"BSMK"
VERSION = 1
# Largest mask (positions) we encode or decode: guards decoders against absurd declared shapes.
MAX_POSITIONS = 1 << 32
# Largest runs alphabet (M); also the longest run one symbol covers is M - 1.
MAX_RUN_SYMBOLS = 4096
# Most low bits of a run sent as they are (runs1 / runs0).
MAX_EXTRA_BITS = 24
_FLAG_CONTEXT = 1

ZEROS, ONES, RAW, BYTES, RUNS1, RUNS0, RUNS01 = range(7)
SCHEME_NAMES = ("zeros", "ones", "raw", "bytes", "runs1", "runs0", "runs01")

# Error codes of the decoding kernels.
_ERR_OVERRUN = -1
_ERR_CODE = -2
_ERR_RUN = -3

_U64 = np.uint64


# ------------------------------------------------------------------------------ byte helpers


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    """Bounds-checked reader over the bytes being decoded; raises FormatError past the end."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data = data
        self.pos = 0
        self.end = end

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.pos + count > self.end:
            raise FormatError(f"truncated: {what} needs {count} bytes at offset {self.pos}")
        out = self.data[self.pos : self.pos + count]
        self.pos += count
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str, limit: int) -> int:
        value = 0
        for i in range(10):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value > limit:
                    raise FormatError(f"{what} is {value}, more than the limit {limit}")
                return value
        raise FormatError(f"{what} is not a valid varint")


# ------------------------------------------------------------------------ code-length tables


def _length_table_bits(lengths: np.ndarray) -> int:
    """Bits the code-length table of `lengths` takes (before byte padding)."""
    d = np.diff(lengths.astype(np.int64), prepend=0)
    return int(np.sum(np.where(d == 0, 1, np.where(d == 1, 2, np.where(d == -1, 3, 8)))))


def _write_length_table(lengths: np.ndarray) -> bytes:
    bits = []
    prev = 0
    for length in lengths.tolist():
        d = length - prev
        if d == 0:
            bits.append("0")
        elif d == 1:
            bits.append("10")
        elif d == -1:
            bits.append("110")
        else:
            bits.append(f"111{length:05b}")
        prev = length
    s = "".join(bits)
    s += "0" * (-len(s) % 8)
    return int(s, 2).to_bytes(len(s) // 8, "big") if s else b""


@numba.njit(**NJIT)
def _read_length_table_kernel(data, start, end, out):
    """Parse len(out) code lengths from data[start:end]; returns the end byte or -1."""
    bit = start * 8
    limit = end * 8
    prev = 0
    for i in range(out.shape[0]):
        if bit + 1 > limit:
            return -1
        b0 = (data[bit >> 3] >> (7 - (bit & 7))) & 1
        bit += 1
        if b0 == 0:
            out[i] = prev
            continue
        if bit + 1 > limit:
            return -1
        b1 = (data[bit >> 3] >> (7 - (bit & 7))) & 1
        bit += 1
        if b1 == 0:
            prev += 1
            out[i] = prev
            continue
        if bit + 1 > limit:
            return -1
        b2 = (data[bit >> 3] >> (7 - (bit & 7))) & 1
        bit += 1
        if b2 == 0:
            prev -= 1
            if prev < 0:
                return -1
            out[i] = prev
            continue
        if bit + 5 > limit:
            return -1
        v = 0
        for _ in range(5):
            v = (v << 1) | ((data[bit >> 3] >> (7 - (bit & 7))) & 1)
            bit += 1
        prev = v
        out[i] = prev
    # Padding bits up to the byte boundary must be zero.
    while bit & 7:
        if bit >= limit:
            return -1
        if (data[bit >> 3] >> (7 - (bit & 7))) & 1:
            return -2
        bit += 1
    return bit >> 3


def _read_length_table(reader: _Reader, count: int) -> np.ndarray:
    data = np.frombuffer(reader.data, dtype=np.uint8)
    out = np.zeros(count, dtype=np.int64)
    end = _read_length_table_kernel(data, reader.pos, reader.end, out)
    if end == -1:
        raise FormatError("truncated: the code-length table runs past the end of the data")
    if end == -2:
        raise FormatError("the code-length table has nonzero padding bits")
    reader.pos = end
    why = check_code_lengths(out, MAX_CODE_LENGTH)
    if why is not None:
        raise FormatError(f"invalid code-length table: {why}")
    return out


# ----------------------------------------------------------------------------- kernels: scan


@numba.njit(**NJIT)
def _scan_bytes(packed):
    """Histogram of the packed bytes and the number of one bits."""
    # Four sub-histograms, so that runs of equal bytes do not serialize on one counter.
    sub = np.zeros((4, 256), dtype=np.int64)
    n = packed.shape[0]
    n4 = n - n % 4
    for i in range(0, n4, 4):
        sub[0, packed[i]] += 1
        sub[1, packed[i + 1]] += 1
        sub[2, packed[i + 2]] += 1
        sub[3, packed[i + 3]] += 1
    for i in range(n4, n):
        sub[0, packed[i]] += 1
    hist = np.zeros(256, dtype=np.int64)
    ones = 0
    for b in range(256):
        hist[b] = sub[0, b] + sub[1, b] + sub[2, b] + sub[3, b]
        bits = 0
        v = b
        while v:
            bits += v & 1
            v >>= 1
        ones += bits * hist[b]
    return hist, ones


@numba.njit(**NJIT)
def _find_runs(words, n, invert, seg_ends, n_marks, hist_size):
    """The runs scheme's runs (see `_encode_runs_kernel`), their histogram and count per segment.

    `words` hold the stream packed little-endian (position i is bit i % 64 of word i // 64); the
    minority value is 1 (0 when `invert`), `n_marks` its count. Runs shorter than hist_size - 1
    are counted in hist[run]; hist[-1] counts the longer ones.
    """
    n_seg = seg_ends.shape[0]
    runs = np.empty(n_marks + n_seg, dtype=np.uint32)
    hist = np.zeros(hist_size, dtype=np.int64)
    seg_runs = np.zeros(n_seg, dtype=np.int64)
    big = hist_size - 1
    k = 0
    seg = 0
    seg_end = seg_ends[0]
    prev = -1
    n_words = words.shape[0]
    for wi in range(n_words):
        w = words[wi]
        if invert:
            w = ~w
            if wi == n_words - 1 and (n & 63) != 0:
                w &= (_U64(1) << _U64(n & 63)) - _U64(1)
        base = wi * 64
        while w != 0:
            p = base + np.int64(trailing_zeros(w))
            w &= w - _U64(1)
            while p >= seg_end:
                r = seg_end - prev - 1
                runs[k] = r
                k += 1
                hist[min(r, big)] += 1
                seg_runs[seg] = k
                prev = seg_end - 1
                seg += 1
                seg_end = seg_ends[seg]
            r = p - prev - 1
            runs[k] = r
            k += 1
            hist[min(r, big)] += 1
            prev = p
    while seg < n_seg:
        seg_end = seg_ends[seg]
        r = seg_end - prev - 1
        runs[k] = r
        k += 1
        hist[min(r, big)] += 1
        seg_runs[seg] = k
        prev = seg_end - 1
        seg += 1
    return runs[:k], hist, seg_runs


# --------------------------------------------------------------------------- kernels: encode


@numba.njit(**NJIT)
def _encode_runs_kernel(runs, seg_runs, codes, lengths, esc, extra, out, seg_bits):
    """Huffman-code the runs of every segment into `out` (uint32 words, MSB-first).

    A run r is written as its high part q = r >> extra, as q // esc escape symbols (symbol esc)
    and the symbol q % esc, followed by its `extra` low bits as they are. Each segment's runs
    (ending at index seg_runs[j]) start on a fresh word; its bit count goes to seg_bits[j].
    """
    acc = _U64(0)
    n_acc = 0
    k = 0
    n_bits = 0
    esc_code = _U64(codes[esc])
    esc_len = np.int64(lengths[esc])
    low_mask = (np.int64(1) << extra) - 1
    start = 0
    for seg in range(seg_runs.shape[0]):
        for i in range(start, seg_runs[seg]):
            r = np.int64(runs[i])
            q = r >> extra
            while q >= esc:
                q -= esc
                acc = (acc << _U64(esc_len)) | esc_code
                n_acc += esc_len
                n_bits += esc_len
                f = n_acc >> 5
                n_acc &= 31
                out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
                k += f
            ln = np.int64(lengths[q])
            acc = (acc << _U64(ln)) | _U64(codes[q])
            n_acc += ln
            n_bits += ln
            # Branch-free flush: always store the top word, advance only when it is full.
            f = n_acc >> 5
            n_acc &= 31
            out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
            k += f
            if extra > 0:
                acc = (acc << _U64(extra)) | _U64(r & low_mask)
                n_acc += extra
                n_bits += extra
                f = n_acc >> 5
                n_acc &= 31
                out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
                k += f
        start = seg_runs[seg]
        if n_acc > 0:
            out[k] = np.uint32((acc << _U64(32 - n_acc)) & _U64(0xFFFFFFFF))
            k += 1
            n_acc = 0
        seg_bits[seg] = n_bits
        n_bits = 0
    return k


# --------------------------------------------------------------------------- kernels: decode


def _pair_table(table: np.ndarray, table_bits: int, esc: int, pairs: bool) -> np.ndarray:
    """Two-symbol look-up table for the runs decoder, from a one-symbol `decode_table` table.

    Entry for the next `table_bits` bits: ``total | len1 << 5 | s1 << 10 | adv2 << 22`` where s1
    is the first symbol (of length len1) and, when a second non-escape symbol s2 also fits in the
    bits, adv2 = s2 + 1 and total = len1 + its length; otherwise adv2 = 0 and total = len1.
    0 marks a first code longer than `table_bits`. No pairs unless `pairs` (extra bits follow
    each run otherwise).
    """
    t = table.astype(np.int64)
    len1 = t & 31
    s1 = t >> 5
    v = np.arange(t.size, dtype=np.int64)
    nxt = t[(v << len1) & (t.size - 1)]
    len2 = nxt & 31
    s2 = nxt >> 5
    pair = (len1 > 0) & (len2 > 0) & (len1 + len2 <= table_bits) & (s1 != esc) & (s2 != esc)
    pair &= pairs
    total = np.where(pair, len1 + len2, len1)
    adv2 = np.where(pair, s2 + 1, 0)
    return np.where(len1 > 0, total | len1 << 5 | s1 << 10 | adv2 << 22, 0)


@numba.njit(**NJIT)
def _decode_runs_kernel(
    w0, start0, stop0, w1, start1, stop1, two, out, value, esc, extra, pairs, table_bits,
    max_length, first, count, offset, symbols,
):
    """Decode one or two runs segments, interleaved, into out (pre-filled with the majority).

    Two independent bit streams let the CPU overlap their table look-ups, and each look-up in
    `pairs` (see `_pair_table`) yields up to two runs when `extra` is 0. Returns the bits read
    from each stream, or a negative error code in the first slot.
    """
    shift = _U64(64 - table_bits)
    esc_span = esc << extra
    acc0 = _U64(0)
    n0 = 0
    k0 = 0
    pos0 = start0
    done0 = False
    acc1 = _U64(0)
    n1 = 0
    k1 = 0
    pos1 = start1
    done1 = not two
    while not (done0 and done1):
        if not done0:
            if n0 < 32:
                if k0 >= w0.shape[0]:
                    return _ERR_OVERRUN, 0
                acc0 |= _U64(w0[k0]) << _U64(32 - n0)
                k0 += 1
                n0 += 32
            e = pairs[np.int64(acc0 >> shift)]
            if e != 0:
                total = e & 31
                ln = (e >> 5) & 31
                s = (e >> 10) & 0xFFF
                adv2 = e >> 22
            else:
                ln = 0
                s = 0
                for bits in range(table_bits + 1, max_length + 1):
                    c = np.int64(acc0 >> _U64(64 - bits)) - first[bits]
                    if 0 <= c < count[bits]:
                        s = np.int64(symbols[offset[bits] + c])
                        ln = bits
                        break
                if ln == 0:
                    return _ERR_CODE, 0
                total = ln
                adv2 = 0
            if s == esc:
                pos0 += esc_span
                if pos0 > stop0:
                    return _ERR_RUN, 0
                consume = ln
            else:
                if extra > 0:
                    acc0 <<= _U64(ln)
                    n0 -= ln
                    if n0 < extra:
                        if k0 >= w0.shape[0]:
                            return _ERR_OVERRUN, 0
                        acc0 |= _U64(w0[k0]) << _U64(32 - n0)
                        k0 += 1
                        n0 += 32
                    s = (s << extra) | np.int64(acc0 >> _U64(64 - extra))
                    acc0 <<= _U64(extra)
                    n0 -= extra
                    consume = 0
                    ln = 0
                else:
                    consume = total
                pos0 += s
                if pos0 >= stop0:
                    if pos0 > stop0:
                        return _ERR_RUN, 0
                    done0 = True
                    consume = ln
                else:
                    out[pos0] = value
                    pos0 += 1 + adv2
                    if pos0 > stop0:
                        if pos0 - 1 > stop0:
                            return _ERR_RUN, 0
                        done0 = True
                    else:
                        # adv2 = 0 rewrites the bit just written; no branch on the pair.
                        out[pos0 - 1] = value
            acc0 <<= _U64(consume)
            n0 -= consume
        if not done1:
            if n1 < 32:
                if k1 >= w1.shape[0]:
                    return _ERR_OVERRUN, 0
                acc1 |= _U64(w1[k1]) << _U64(32 - n1)
                k1 += 1
                n1 += 32
            e = pairs[np.int64(acc1 >> shift)]
            if e != 0:
                total = e & 31
                ln = (e >> 5) & 31
                s = (e >> 10) & 0xFFF
                adv2 = e >> 22
            else:
                ln = 0
                s = 0
                for bits in range(table_bits + 1, max_length + 1):
                    c = np.int64(acc1 >> _U64(64 - bits)) - first[bits]
                    if 0 <= c < count[bits]:
                        s = np.int64(symbols[offset[bits] + c])
                        ln = bits
                        break
                if ln == 0:
                    return _ERR_CODE, 0
                total = ln
                adv2 = 0
            if s == esc:
                pos1 += esc_span
                if pos1 > stop1:
                    return _ERR_RUN, 0
                consume = ln
            else:
                if extra > 0:
                    acc1 <<= _U64(ln)
                    n1 -= ln
                    if n1 < extra:
                        if k1 >= w1.shape[0]:
                            return _ERR_OVERRUN, 0
                        acc1 |= _U64(w1[k1]) << _U64(32 - n1)
                        k1 += 1
                        n1 += 32
                    s = (s << extra) | np.int64(acc1 >> _U64(64 - extra))
                    acc1 <<= _U64(extra)
                    n1 -= extra
                    consume = 0
                    ln = 0
                else:
                    consume = total
                pos1 += s
                if pos1 >= stop1:
                    if pos1 > stop1:
                        return _ERR_RUN, 0
                    done1 = True
                    consume = ln
                else:
                    out[pos1] = value
                    pos1 += 1 + adv2
                    if pos1 > stop1:
                        if pos1 - 1 > stop1:
                            return _ERR_RUN, 0
                        done1 = True
                    else:
                        # adv2 = 0 rewrites the bit just written; no branch on the pair.
                        out[pos1 - 1] = value
            acc1 <<= _U64(consume)
            n1 -= consume
    return 32 * k0 - n0, 32 * k1 - n1


@numba.njit(**NJIT)
def _decode_bytes_kernel(
    w0, out0, w1, out1, table, table_bits, max_length, first, count, offset, symbols
):
    """Decode two byte segments, interleaved; returns the bits read from each (or an error)."""
    shift = _U64(64 - table_bits)
    acc0 = _U64(0)
    n0 = 0
    k0 = 0
    acc1 = _U64(0)
    n1 = 0
    k1 = 0
    m0 = out0.shape[0]
    m1 = out1.shape[0]
    for i in range(max(m0, m1)):
        if i < m0:
            if n0 < 32:
                if k0 >= w0.shape[0]:
                    return _ERR_OVERRUN, 0
                acc0 |= _U64(w0[k0]) << _U64(32 - n0)
                k0 += 1
                n0 += 32
            e = table[np.int64(acc0 >> shift)]
            if e != 0:
                ln = np.int64(e & 31)
                out0[i] = np.uint8(e >> 5)
            else:
                ln = 0
                for bits in range(table_bits + 1, max_length + 1):
                    c = np.int64(acc0 >> _U64(64 - bits)) - first[bits]
                    if 0 <= c < count[bits]:
                        out0[i] = np.uint8(symbols[offset[bits] + c])
                        ln = bits
                        break
                if ln == 0:
                    return _ERR_CODE, 0
            acc0 <<= _U64(ln)
            n0 -= ln
        if i < m1:
            if n1 < 32:
                if k1 >= w1.shape[0]:
                    return _ERR_OVERRUN, 0
                acc1 |= _U64(w1[k1]) << _U64(32 - n1)
                k1 += 1
                n1 += 32
            e = table[np.int64(acc1 >> shift)]
            if e != 0:
                ln = np.int64(e & 31)
                out1[i] = np.uint8(e >> 5)
            else:
                ln = 0
                for bits in range(table_bits + 1, max_length + 1):
                    c = np.int64(acc1 >> _U64(64 - bits)) - first[bits]
                    if 0 <= c < count[bits]:
                        out1[i] = np.uint8(symbols[offset[bits] + c])
                        ln = bits
                        break
                if ln == 0:
                    return _ERR_CODE, 0
            acc1 <<= _U64(ln)
            n1 -= ln
    return 32 * k0 - n0, 32 * k1 - n1


# ------------------------------------------------------------------- kernels: alternating runs


@numba.njit(**NJIT, inline="always")
def _popcount64(x):
    x = x - ((x >> _U64(1)) & _U64(0x5555555555555555))
    x = (x & _U64(0x3333333333333333)) + ((x >> _U64(2)) & _U64(0x3333333333333333))
    x = (x + (x >> _U64(4))) & _U64(0x0F0F0F0F0F0F0F0F)
    x += x >> _U64(8)
    x += x >> _U64(16)
    x += x >> _U64(32)
    return np.int64(x & _U64(0x7F))


@numba.njit(**NJIT)
def _count_transitions(words, n):
    """Positions 1..n-1 whose bit differs from the previous one (packed little-endian words)."""
    total = 0
    carry = _U64(0)
    n_words = words.shape[0]
    for wi in range(n_words):
        w = words[wi]
        t = w ^ ((w << _U64(1)) | carry)
        carry = w >> _U64(63)
        if wi == 0:
            t &= ~_U64(1)
        if wi == n_words - 1 and (n & 63) != 0:
            t &= (_U64(1) << _U64(n & 63)) - _U64(1)
        total += _popcount64(t)
    return total


@numba.njit(**NJIT)
def _find_alt_runs(words, bounds, n_transitions, hist_size):
    """Alternating runs of each segment: a run of 0s (maybe empty), of 1s, of 0s, ...

    Returns (values, hist, big, n_big, seg_runs): the value of a run is its length, minus 1 for
    every run but a segment's first (those cannot be empty); hist[parity, v] counts values
    below hist_size - 1 per parity (0: runs of 0s), big[parity, :n_big[parity]] lists the rest.
    """
    n_seg = bounds.shape[0] - 1
    values = np.empty(n_transitions + 2 * n_seg + 1, dtype=np.uint32)
    limit = hist_size - 1
    hist = np.zeros((2, hist_size), dtype=np.int64)
    n_max_big = bounds[n_seg] // limit + 2 * n_seg + 1
    big = np.empty((2, n_max_big), dtype=np.int64)
    n_big = np.zeros(2, dtype=np.int64)
    seg_runs = np.zeros(n_seg, dtype=np.int64)
    k = 0
    for seg in range(n_seg):
        a = bounds[seg]
        b = bounds[seg + 1]
        run_start = a
        cur = 0
        first = True
        if a < b:
            wa = a >> 6
            wb = (b - 1) >> 6
            for wi in range(wa, wb + 1):
                w = words[wi]
                prev_bit = words[wi - 1] >> _U64(63) if wi > 0 else _U64(0)
                t = w ^ ((w << _U64(1)) | prev_bit)
                if wi == wa:
                    # The segment starts as if after a 0: a transition at a iff bit a is set.
                    bit = _U64(1) << _U64(a & 63)
                    t &= ~(bit - _U64(1))
                    t = (t & ~bit) | (w & bit)
                if wi == wb and b - wi * 64 < 64:
                    t &= (_U64(1) << _U64(b - wi * 64)) - _U64(1)
                while t != 0:
                    p = wi * 64 + np.int64(trailing_zeros(t))
                    t &= t - _U64(1)
                    v = p - run_start - (0 if first else 1)
                    values[k] = v
                    k += 1
                    if v < limit:
                        hist[cur, v] += 1
                    else:
                        big[cur, n_big[cur]] = v
                        n_big[cur] += 1
                    first = False
                    cur ^= 1
                    run_start = p
        v = b - run_start - (0 if first else 1)
        values[k] = v
        k += 1
        if v < limit:
            hist[cur, v] += 1
        else:
            big[cur, n_big[cur]] = v
            n_big[cur] += 1
        seg_runs[seg] = k
    return values[:k], hist, big, n_big, seg_runs


@numba.njit(**NJIT)
def _encode_alt_kernel(values, seg_runs, codes, lengths, esc, out, seg_bits):
    """Huffman-code alternating runs, code `parity` for the runs of 0s (0) and of 1s (1)."""
    acc = _U64(0)
    n_acc = 0
    k = 0
    n_bits = 0
    start = 0
    for seg in range(seg_runs.shape[0]):
        par = 0
        for i in range(start, seg_runs[seg]):
            v = np.int64(values[i])
            e = esc[par]
            while v >= e:
                v -= e
                ln = np.int64(lengths[par, e])
                acc = (acc << _U64(ln)) | _U64(codes[par, e])
                n_acc += ln
                n_bits += ln
                f = n_acc >> 5
                n_acc &= 31
                out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
                k += f
            ln = np.int64(lengths[par, v])
            acc = (acc << _U64(ln)) | _U64(codes[par, v])
            n_acc += ln
            n_bits += ln
            f = n_acc >> 5
            n_acc &= 31
            out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
            k += f
            par ^= 1
        start = seg_runs[seg]
        if n_acc > 0:
            out[k] = np.uint32((acc << _U64(32 - n_acc)) & _U64(0xFFFFFFFF))
            k += 1
            n_acc = 0
        seg_bits[seg] = n_bits
        n_bits = 0
    return k


@numba.njit(**NJIT)
def _decode_alt_kernel(
    w0, start0, stop0, w1, start1, stop1, two, out, esc, table, table_bits, max_length, first,
    count, offset, symbols,
):
    """Decode one or two alternating-runs segments, interleaved, into out (pre-filled with 0).

    `esc`, `table`, `first`, `count`, `offset` and `symbols` have one row per code (0: runs of
    0s, 1: runs of 1s). Returns the bits read from each stream, or an error code.
    """
    shift = _U64(64 - table_bits)
    acc0 = _U64(0)
    n0 = 0
    k0 = 0
    pos0 = start0
    par0 = 0
    off0 = 0
    done0 = False
    acc1 = _U64(0)
    n1 = 0
    k1 = 0
    pos1 = start1
    par1 = 0
    off1 = 0
    done1 = not two
    while not (done0 and done1):
        if not done0:
            if n0 < 32:
                if k0 >= w0.shape[0]:
                    return _ERR_OVERRUN, 0
                acc0 |= _U64(w0[k0]) << _U64(32 - n0)
                k0 += 1
                n0 += 32
            e = table[par0, np.int64(acc0 >> shift)]
            if e != 0:
                ln = np.int64(e & 31)
                s = np.int64(e >> 5)
            else:
                ln = 0
                s = 0
                for bits in range(table_bits + 1, max_length + 1):
                    c = np.int64(acc0 >> _U64(64 - bits)) - first[par0, bits]
                    if 0 <= c < count[par0, bits]:
                        s = np.int64(symbols[par0, offset[par0, bits] + c])
                        ln = bits
                        break
                if ln == 0:
                    return _ERR_CODE, 0
            acc0 <<= _U64(ln)
            n0 -= ln
            is_esc = s == esc[par0]
            r = s if is_esc else s + off0
            if pos0 + r + (off0 if is_esc else 0) > stop0:
                return _ERR_RUN, 0
            if par0 == 1:
                out[pos0 : pos0 + r] = True
            pos0 += r
            if not is_esc:
                if pos0 == stop0:
                    done0 = True
                par0 ^= 1
                off0 = 1
        if not done1:
            if n1 < 32:
                if k1 >= w1.shape[0]:
                    return _ERR_OVERRUN, 0
                acc1 |= _U64(w1[k1]) << _U64(32 - n1)
                k1 += 1
                n1 += 32
            e = table[par1, np.int64(acc1 >> shift)]
            if e != 0:
                ln = np.int64(e & 31)
                s = np.int64(e >> 5)
            else:
                ln = 0
                s = 0
                for bits in range(table_bits + 1, max_length + 1):
                    c = np.int64(acc1 >> _U64(64 - bits)) - first[par1, bits]
                    if 0 <= c < count[par1, bits]:
                        s = np.int64(symbols[par1, offset[par1, bits] + c])
                        ln = bits
                        break
                if ln == 0:
                    return _ERR_CODE, 0
            acc1 <<= _U64(ln)
            n1 -= ln
            is_esc = s == esc[par1]
            r = s if is_esc else s + off1
            if pos1 + r + (off1 if is_esc else 0) > stop1:
                return _ERR_RUN, 0
            if par1 == 1:
                out[pos1 : pos1 + r] = True
            pos1 += r
            if not is_esc:
                if pos1 == stop1:
                    done1 = True
                par1 ^= 1
                off1 = 1
    return 32 * k0 - n0, 32 * k1 - n1


# ------------------------------------------------------------------------------ stream coder


def _segments(size: int) -> int:
    """Segments for a stream of `size` positions (runs) or bytes (bytes scheme).

    Two segments let the decoder interleave two bit streams; small streams keep one.
    """
    return 2 if size >= 1 << 15 else 1


def _bounds(size: int, n_seg: int) -> np.ndarray:
    return np.array([(j * size) // n_seg for j in range(n_seg + 1)], dtype=np.int64)


def _run_symbol_counts(hist: np.ndarray, big_runs: np.ndarray, m: int) -> np.ndarray:
    """Symbol frequencies of the runs scheme with alphabet size m, from the run histogram."""
    esc = m - 1
    r = np.arange(hist.size)
    counts = np.bincount(r % esc, weights=hist, minlength=m).astype(np.int64)
    counts[esc] += int(np.dot(r // esc, hist))
    if big_runs.size:
        counts += np.bincount(big_runs % esc, minlength=m)[:m]
        counts[esc] += int(np.sum(big_runs // esc))
    return counts[:m]


def _huffman_cost(counts: np.ndarray) -> tuple[int, np.ndarray]:
    """(bytes of code-length table + payload bits rounded up, lengths) for the counts."""
    lengths = code_lengths(counts, MAX_CODE_LENGTH)
    payload_bits = int(np.dot(counts, lengths.astype(np.int64)))
    return (_length_table_bits(lengths) + 7) // 8 + (payload_bits + 7) // 8, lengths


class _Plan:
    """A chosen scheme for one stream and what is needed to write it."""

    def __init__(self, scheme: int, size: int, **kw) -> None:
        self.scheme = scheme
        self.size = size
        self.__dict__.update(kw)


@numba.njit(**NJIT)
def _estimate_run_codes(hist, big_runs, extras, sizes):
    """Estimated bytes of the runs code for each (extras[i], sizes[i]) (see `_choose_run_code`).

    Code lengths are estimated as -log2 of the symbol frequencies; the table as those lengths'
    delta code. Fewer symbols decode faster: the estimate adds a byte per 2048 symbols.
    """
    out = np.empty(extras.shape[0])
    n_runs = big_runs.shape[0]
    for r in range(hist.shape[0]):
        n_runs += hist[r]
    for i in range(extras.shape[0]):
        extra = extras[i]
        m = sizes[i]
        esc = m - 1
        counts = np.zeros(m, dtype=np.int64)
        for r in range(hist.shape[0]):
            if hist[r]:
                q = r >> extra
                counts[q % esc] += hist[r]
                counts[esc] += hist[r] * (q // esc)
        for j in range(big_runs.shape[0]):
            q = big_runs[j] >> extra
            counts[q % esc] += 1
            counts[esc] += q // esc
        total = 0
        for j in range(m):
            total += counts[j]
        bits = 0.0
        table = 0
        prev = 0
        for j in range(m):
            length = 0
            if counts[j] > 0:
                info = np.log2(total / counts[j])
                bits += counts[j] * info
                length = min(max(int(np.rint(info)), 1), MAX_CODE_LENGTH)
            d = length - prev
            table += 1 if d == 0 else (2 if d == 1 else (3 if d == -1 else 8))
            prev = length
        out[i] = (bits + table + extra * n_runs) / 8 + total / 2048
    return out


def _choose_run_code(hist: np.ndarray, big_runs: np.ndarray, extra_bits=(0,)):
    """Best runs code: (size in bytes, M, lengths, counts, extra bits).

    `hist[v]` counts the run values v < len(hist); `big_runs` lists the others. A run is coded
    as its high part (run >> extra, by a Huffman code of M symbols, the last an escape) and its
    `extra` low bits as they are; the choice is over M and over `extra_bits`. The size counts
    the code-length table, the payload bits and the M varint.
    """
    used = np.flatnonzero(hist)
    hist = np.ascontiguousarray(hist[: (int(used[-1]) + 1 if used.size else 0)], dtype=np.int64)
    big_runs = np.ascontiguousarray(big_runs, dtype=np.int64)
    n_runs = int(hist.sum()) + big_runs.size
    max_run = max(int(big_runs.max(initial=0)), hist.size - 1)
    extras = []
    sizes = []
    for extra in sorted(set(extra_bits)):
        max_q = max_run >> extra
        candidates = {min(max_q + 2, MAX_RUN_SYMBOLS)}
        m = 4
        while m <= MAX_RUN_SYMBOLS and m < max_q + 2:
            candidates.add(m)
            m *= 2
        extras += [extra] * len(candidates)
        sizes += sorted(candidates)
    estimates = _estimate_run_codes(
        hist, big_runs, np.array(extras, dtype=np.int64), np.array(sizes, dtype=np.int64)
    )
    # Build the exact code for the two best estimates only.
    best = None
    for i in np.argsort(estimates, kind="stable")[:2]:
        extra, m = extras[i], sizes[i]
        counts = _run_symbol_counts(np.bincount(np.arange(hist.size) >> extra, weights=hist)
                                    .astype(np.int64), big_runs >> extra, m)
        size, lengths = _huffman_cost(counts)
        size += len(_varint(m)) + (extra * n_runs + 7) // 8
        score = size + int(counts.sum()) / 2048
        if best is None or score < best[0]:
            best = (score, size, m, lengths, counts, extra)
    return best[1:]


def _plan_stream(bits: np.ndarray) -> _Plan:
    """Pick the smallest scheme for a 1-D bool stream; `size` is its estimated byte count."""
    n = bits.size
    packed = np.packbits(bits, bitorder="little")
    hist, ones = _scan_bytes(packed)
    if ones == 0:
        return _Plan(ZEROS, 1)
    if ones == n:
        return _Plan(ONES, 1)
    best = _Plan(RAW, 1 + packed.size, packed=packed)
    n_seg = _segments(packed.size)
    size, lengths = _huffman_cost(hist)
    size += 2 + 3 * n_seg
    if size < best.size:
        best = _Plan(BYTES, size, packed=packed, lengths=lengths, n_seg=n_seg)
    minority = min(ones, n - ones)
    p = minority / n
    h_bits = -n * (p * np.log2(p) + (1 - p) * np.log2(1 - p))
    words = np.zeros((packed.size + 7) // 8 * 8, dtype=np.uint8)
    words[: packed.size] = packed
    words = words.view("<u8")
    n_seg = _segments(n)
    bounds = _bounds(n, n_seg)
    # Alternating runs pay off on clustered masks: far fewer changes of value than an i.i.d.
    # mask of the same density would have.
    transitions = _count_transitions(words, n)
    if transitions < n * p * (1 - p):
        values, ahist, big, n_big, seg_runs = _find_alt_runs(
            words, bounds, transitions, MAX_RUN_SYMBOLS + 1
        )
        codes = [
            _choose_run_code(ahist[par, :-1], big[par, : n_big[par]])[:4] for par in (0, 1)
        ]
        size = codes[0][0] + codes[1][0] + 2 + 3 * n_seg
        if size < best.size:
            best = _Plan(RUNS01, size, values=values, seg_runs=seg_runs, codes=codes)
    # Runs of the majority pay off on skewed densities and on structure beyond 8-bit blocks;
    # on i.i.d. masks of density near 1/2 they cannot, so we skip the scan there. They code
    # each minority bit with at least one bit: skip them too when that is already too much.
    if (p <= 0.3 or 8 * best.size < 0.97 * h_bits) and (minority + n_seg) // 8 < best.size:
        invert = ones > n - ones
        runs, rhist, seg_runs = _find_runs(
            words, n, invert, bounds[1:], minority, MAX_RUN_SYMBOLS + 1
        )
        big_runs = runs[runs >= MAX_RUN_SYMBOLS].astype(np.int64) if rhist[-1] else runs[:0]
        # Low bits sent as they are suit long runs (mean 16 and more): try up to log2 of the
        # mean run.
        top = int(np.log2(max((n - minority) / (minority + n_seg), 1.0)))
        extra_bits = {0, *range(max(top - 3, 1), min(top, MAX_EXTRA_BITS) + 1)} if top >= 4 else {0}
        size, m, lengths, counts, extra = _choose_run_code(rhist[:-1], big_runs, extra_bits)
        size += 3 + 3 * n_seg
        if size < best.size:
            best = _Plan(
                RUNS0 if invert else RUNS1, size, runs=runs, seg_runs=seg_runs, m=m,
                lengths=lengths, counts=counts, extra=extra,
            )
    return best


def _segment_payloads(words: np.ndarray, seg_bits: np.ndarray) -> list[bytes]:
    """Split a word stream whose segments each start on a fresh word into byte payloads."""
    stream = words.astype(">u4").tobytes()
    payloads = []
    offset = 0
    for bits in seg_bits.tolist():
        payloads.append(stream[offset : offset + (bits + 7) // 8])
        offset += 4 * ((bits + 31) // 32)
    return payloads


def _write_stream(plan: _Plan) -> bytes:
    scheme = plan.scheme
    out = [bytes([scheme])]
    if scheme == RAW:
        out.append(plan.packed.tobytes())
    elif scheme == BYTES:
        out.append(_write_length_table(plan.lengths))
        codes = canonical_codes(plan.lengths)
        lengths8 = plan.lengths.astype(np.uint8)
        bounds = _bounds(plan.packed.size, plan.n_seg)
        out.append(bytes([plan.n_seg]))
        payloads = []
        for j in range(plan.n_seg):
            seg = plan.packed[bounds[j] : bounds[j + 1]]
            words = np.zeros(seg.size * MAX_CODE_LENGTH // 32 + 2, dtype=np.uint32)
            n_bits = _encode_bytes_kernel(seg, codes, lengths8, words)
            payloads.append(words.astype(">u4").tobytes()[: (n_bits + 7) // 8])
        out += [_varint(len(p)) for p in payloads] + payloads
    elif scheme in (RUNS0, RUNS1):
        out.append(bytes([plan.extra]))
        out.append(_varint(plan.m))
        out.append(_write_length_table(plan.lengths))
        codes = canonical_codes(plan.lengths)
        lengths8 = plan.lengths.astype(np.uint8)
        n_seg = plan.seg_runs.size
        out.append(bytes([n_seg]))
        total_bits = int(np.dot(plan.counts, plan.lengths.astype(np.int64)))
        total_bits += plan.extra * plan.runs.size
        words = np.zeros(total_bits // 32 + n_seg + 2, dtype=np.uint32)
        seg_bits = np.zeros(n_seg, dtype=np.int64)
        _encode_runs_kernel(
            plan.runs, plan.seg_runs, codes, lengths8, plan.m - 1, plan.extra, words, seg_bits
        )
        payloads = _segment_payloads(words, seg_bits)
        out += [_varint(len(p)) for p in payloads] + payloads
    elif scheme == RUNS01:
        width = max(plan.codes[0][1], plan.codes[1][1])
        codes = np.zeros((2, width), dtype=np.uint32)
        lengths8 = np.zeros((2, width), dtype=np.uint8)
        total_bits = 0
        for par, (_, m, lengths, counts) in enumerate(plan.codes):
            out.append(_varint(m))
            out.append(_write_length_table(lengths))
            codes[par, :m] = canonical_codes(lengths)
            lengths8[par, :m] = lengths
            total_bits += int(np.dot(counts, lengths.astype(np.int64)))
        n_seg = plan.seg_runs.size
        out.append(bytes([n_seg]))
        words = np.zeros(total_bits // 32 + n_seg + 2, dtype=np.uint32)
        seg_bits = np.zeros(n_seg, dtype=np.int64)
        esc = np.array([plan.codes[0][1] - 1, plan.codes[1][1] - 1], dtype=np.int64)
        _encode_alt_kernel(plan.values, plan.seg_runs, codes, lengths8, esc, words, seg_bits)
        payloads = _segment_payloads(words, seg_bits)
        out += [_varint(len(p)) for p in payloads] + payloads
    return b"".join(out)


def _read_segments(reader: _Reader) -> list[bytes]:
    n_seg = reader.u8("segment count")
    if n_seg not in (1, 2):
        raise FormatError(f"segment count {n_seg} is not 1 or 2")
    sizes = [reader.varint("segment payload length", reader.end) for _ in range(n_seg)]
    return [reader.take(size, "segment payload") for size in sizes]


def _check_end(end: int, payload: bytes, what: str) -> None:
    """The bit stream must end in the payload's last byte, with zero padding after it."""
    if end == _ERR_OVERRUN or end > 8 * len(payload):
        raise FormatError(f"truncated or corrupt {what}: the bit stream runs past its payload")
    if end == _ERR_CODE:
        raise FormatError(f"corrupt {what}: an invalid Huffman code")
    if end == _ERR_RUN:
        raise FormatError(f"corrupt {what}: a run goes past the end of the mask")
    if (end + 7) // 8 != len(payload):
        raise FormatError(f"corrupt {what}: payload longer than its bit stream")
    if end & 7 and payload[-1] & ((1 << (8 - (end & 7))) - 1):
        raise FormatError(f"corrupt {what}: nonzero padding bits")


def _check_coverage(n: int, payloads: list, per_bit: int) -> None:
    """Refuse, before allocating the mask, payloads too short to cover its n positions."""
    bits = 8 * sum(len(p) for p in payloads)
    if n > bits * max(per_bit, 1):
        raise FormatError(
            f"corrupt: {bits} payload bits cannot cover the declared {n} positions"
        )


def _parse_stream(reader: _Reader, n: int):
    """Read one stream's header and payloads (validated structure, nothing decoded yet)."""
    scheme = reader.u8("scheme")
    if scheme in (ZEROS, ONES):
        return (scheme,)
    if scheme == RAW:
        return (scheme, reader.take((n + 7) // 8, "raw payload"))
    if scheme == BYTES:
        lengths = _read_length_table(reader, 256)
        return (scheme, 0, lengths, _read_segments(reader), 0)
    if scheme in (RUNS0, RUNS1):
        extra = reader.u8("extra bits")
        if extra > MAX_EXTRA_BITS:
            raise FormatError(f"{extra} extra bits per run, more than {MAX_EXTRA_BITS}")
        m = reader.varint("runs alphabet size", MAX_RUN_SYMBOLS)
        if m < 2:
            raise FormatError(f"runs alphabet size {m} is below 2")
        lengths = _read_length_table(reader, m)
        return (scheme, m, lengths, _read_segments(reader), extra)
    if scheme == RUNS01:
        codes = []
        for value in (0, 1):
            m = reader.varint(f"alphabet size of the runs of {value}s", MAX_RUN_SYMBOLS)
            if m < 2:
                raise FormatError(f"alphabet size {m} of the runs of {value}s is below 2")
            codes.append((m, _read_length_table(reader, m)))
        return (scheme, codes, _read_segments(reader))
    raise FormatError(f"unknown mask scheme {scheme}")


def _decode_alt_stream(parsed, n: int) -> np.ndarray:
    _, codes, payloads = parsed
    if not codes[0][1].any():
        raise FormatError("invalid code-length table: no run of 0s has a code")
    _check_coverage(n, payloads, max(codes[0][0], codes[1][0]) - 1)
    max_length = max(max(int(lengths.max()), 1) for _, lengths in codes)
    table_bits = min(max_length, TABLE_BITS)
    tables = [_decode_table(lengths, table_bits, max_length) for _, lengths in codes]
    width = max(m for m, _ in codes)
    symbols = np.zeros((2, width), dtype=np.int32)
    for par, t in enumerate(tables):
        symbols[par, : t[6].size] = t[6]
    stacked = [np.stack([t[i] for t in tables]) for i in (0, 3, 4, 5)]
    esc = np.array([codes[0][0] - 1, codes[1][0] - 1], dtype=np.int64)
    words = [stream_words(p) for p in payloads]
    two = len(payloads) == 2
    if not two:
        words.append(words[0])
    bounds = _bounds(n, len(payloads))
    stop1 = bounds[2] if two else bounds[1]
    out = np.zeros(n, dtype=np.bool_)
    ends = _decode_alt_kernel(
        words[0], 0, bounds[1], words[1], bounds[1], stop1, two, out, esc, stacked[0],
        table_bits, max_length, stacked[1], stacked[2], stacked[3], symbols,
    )
    if ends[0] < 0:
        _check_end(ends[0], payloads[0], "runs payload")
    for end, payload in zip(ends, payloads):
        _check_end(end, payload, "runs payload")
    return out


def _decode_stream(parsed, n: int) -> np.ndarray:
    scheme = parsed[0]
    if scheme == ZEROS:
        return np.zeros(n, dtype=np.bool_)
    if scheme == ONES:
        return np.ones(n, dtype=np.bool_)
    if scheme == RAW:
        payload = np.frombuffer(parsed[1], dtype=np.uint8)
        if n & 7 and payload[-1] >> (n & 7):
            raise FormatError("corrupt raw payload: nonzero padding bits")
        return np.unpackbits(payload, count=n, bitorder="little").view(np.bool_)
    if scheme == RUNS01:
        return _decode_alt_stream(parsed, n)
    _, m, lengths, payloads, extra = parsed
    if not lengths.any():
        raise FormatError("invalid code-length table: no symbol has a code")
    # Every symbol takes at least one bit and covers at most 8 positions (bytes) or
    # (M-1) << extra (runs).
    _check_coverage(n + len(payloads), payloads, 8 if scheme == BYTES else (m - 1) << extra)
    table = _decode_table(lengths)
    words = [stream_words(p) for p in payloads]
    two = len(payloads) == 2
    if not two:
        words.append(words[0])
    if scheme == BYTES:
        n_bytes = (n + 7) // 8
        bounds = _bounds(n_bytes, len(payloads))
        packed = np.empty(n_bytes, dtype=np.uint8)
        out1 = packed[bounds[1] : bounds[2]] if two else packed[:0]
        ends = _decode_bytes_kernel(words[0], packed[: bounds[1]], words[1], out1, *table)
        what = "bytes payload"
    else:
        value = scheme == RUNS1
        out = np.zeros(n, dtype=np.bool_) if value else np.ones(n, dtype=np.bool_)
        bounds = _bounds(n, len(payloads))
        stop1 = bounds[2] if two else bounds[1]
        pairs = _pair_table(table[0], table[1], m - 1, extra == 0)
        ends = _decode_runs_kernel(
            words[0], 0, bounds[1], words[1], bounds[1], stop1, two, out, value, m - 1, extra,
            pairs, *table[1:],
        )
        what = "runs payload"
    if ends[0] < 0:
        _check_end(ends[0], payloads[0], what)
    for end, payload in zip(ends, payloads):
        _check_end(end, payload, what)
    if scheme == RUNS0 or scheme == RUNS1:
        return out
    if n & 7 and packed[-1] >> (n & 7):
        raise FormatError("corrupt bytes payload: nonzero padding bits")
    return np.unpackbits(packed, count=n, bitorder="little").view(np.bool_)


# ------------------------------------------------------------------------------ public API


def _as_mask(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{name} holds integers other than 0 and 1; pass a boolean array")
        return arr.astype(np.bool_)
    raise TypeError(f"{name} must be a boolean array (or integers 0/1), got dtype {arr.dtype}")


def _context_checksum(context: np.ndarray) -> int:
    return zlib.crc32(np.packbits(context.reshape(-1)).tobytes())


def encode_mask(mask: np.ndarray, context: np.ndarray | None = None) -> bytes:
    """Encode a binary mask of any shape into self-describing bytes.

    Parameters
    ----------
    mask : array_like of bool
        The mask; integer arrays holding only 0 and 1 are accepted too. Any shape, empty included,
        at most `MAX_POSITIONS` positions.
    context : array_like of bool, optional
        A mask of the same shape known to the decoder (for example the union of earlier tasks'
        masks). The positions where it is 1 and where it is 0 are coded separately, which is much
        smaller when `mask` largely reuses (or avoids) the context. `decode_mask` needs the same
        context.

    Returns
    -------
    bytes
        The encoding; `decode_mask` returns an identical array.
    """
    mask = _as_mask(mask, "mask")
    if mask.ndim > 255:
        raise ValueError("mask has more than 255 dimensions")
    if mask.size > MAX_POSITIONS:
        raise ValueError(f"mask has {mask.size} positions; at most {MAX_POSITIONS} are supported")
    flat = np.ascontiguousarray(mask).reshape(-1)
    header = [MAGIC, bytes([VERSION, _FLAG_CONTEXT if context is not None else 0, mask.ndim])]
    header += [_varint(d) for d in mask.shape]
    if context is None:
        streams = [flat]
    else:
        context = _as_mask(context, "context")
        if context.shape != mask.shape:
            raise ValueError(
                f"context shape {context.shape} differs from the mask shape {mask.shape}"
            )
        ctx = np.ascontiguousarray(context).reshape(-1)
        header.append(_context_checksum(ctx).to_bytes(4, "little"))
        streams = [flat[~ctx], flat[ctx]]
    body = b"".join(header) + b"".join(_write_stream(_plan_stream(s)) for s in streams)
    return body + zlib.crc32(body).to_bytes(4, "little")


def _parse(data, context):
    """Validate and parse an encoding (structure, checksum, context) without decoding payloads.

    Returns (shape, stream sizes, parsed streams, flat context or None).
    """
    if isinstance(data, np.void):  # h5py's opaque values
        data = data.tobytes()
    elif isinstance(data, np.ndarray):
        if data.dtype not in (np.uint8, np.int8) or data.ndim != 1:
            raise TypeError(f"data as an array must be 1-D uint8, got {data.dtype} {data.shape}")
        data = np.ascontiguousarray(data).view(np.uint8)
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = memoryview(data)
    if not data.c_contiguous:
        data = memoryview(data.tobytes())
    data = data.cast("B")
    if len(data) < 4 + 3 + 4:
        raise FormatError(f"truncated: {len(data)} bytes is shorter than any mask encoding")
    if bytes(data[:4]) != MAGIC:
        raise FormatError("not a bitsub mask encoding (bad magic bytes)")
    if data[4] != VERSION:
        raise FormatError(f"mask format version {data[4]} is not supported (this reads {VERSION})")
    reader = _Reader(data, len(data) - 4)
    reader.pos = 5
    flags = reader.u8("flags")
    if flags & ~_FLAG_CONTEXT:
        raise FormatError(f"unknown flags {flags:#x}")
    ndim = reader.u8("ndim")
    if ndim > 64:
        raise FormatError(f"{ndim} dimensions; NumPy arrays have at most 64")
    shape = tuple(reader.varint("shape", MAX_POSITIONS) for _ in range(ndim))
    n = 1
    for d in shape:
        n *= d
    if n > MAX_POSITIONS:
        raise FormatError(f"declared shape {shape} has more than {MAX_POSITIONS} positions")
    ctx = None
    if flags & _FLAG_CONTEXT:
        ctx_sum = int.from_bytes(reader.take(4, "context checksum"), "little")
        if context is None:
            raise FormatError("this mask was encoded with a context; pass the same context")
        context = _as_mask(context, "context")
        if context.shape != shape:
            raise FormatError(f"context shape {context.shape} differs from the mask's {shape}")
        ctx = np.ascontiguousarray(context).reshape(-1)
        n1 = int(np.count_nonzero(ctx))
        sizes = [n - n1, n1]
    else:
        sizes = [n]
    parsed = [_parse_stream(reader, size) for size in sizes]
    if reader.pos != reader.end:
        raise FormatError(f"{reader.end - reader.pos} unexpected bytes after the last stream")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise FormatError("checksum mismatch: the data is corrupted")
    if ctx is None and context is not None:
        raise FormatError("this mask was encoded without a context; pass context=None")
    if ctx is not None and _context_checksum(ctx) != ctx_sum:
        raise FormatError("the context differs from the one the mask was encoded with")
    return shape, sizes, parsed, ctx


def decode_mask(data: bytes, context: np.ndarray | None = None) -> np.ndarray:
    """Decode bytes from `encode_mask` back into the boolean mask.

    Parameters
    ----------
    data : bytes, bytearray, memoryview or 1-D uint8 array
        The encoding.
    context : array_like of bool, optional
        The context the mask was encoded with, if any (the same array).

    Returns
    -------
    np.ndarray of bool
        The mask, with its original shape (C-contiguous).

    Raises
    ------
    FormatError
        If `data` is not a valid encoding (truncated, corrupted, unknown version, ...) or the
        context is missing, unexpected or not the one the mask was encoded with.
    """
    shape, sizes, parsed, ctx = _parse(data, context)
    streams = [_decode_stream(p, size) for p, size in zip(parsed, sizes)]
    if ctx is None:
        return streams[0].reshape(shape)
    out = np.empty(ctx.size, dtype=np.bool_)
    out[~ctx] = streams[0]
    out[ctx] = streams[1]
    return out.reshape(shape)


def mask_scheme(data: bytes, context: np.ndarray | None = None) -> list[str]:
    """Names of the schemes an encoding's streams use, e.g. ``["runs1"]`` (for reports, tests).

    A context-coded mask has two streams (context 0 positions, then context 1 positions) and
    needs its context.
    """
    return [SCHEME_NAMES[p[0]] for p in _parse(data, context)[2]]

"""Huffman-coded binary masks: `encode_mask` / `decode_mask` and the byte format.

A mask (one bit per weight position: does the task use it) is flattened in C order and coded by
the smallest of several symbol schemes, each Huffman-coded with a canonical code (see
`bitsub.huffman`):

- ``zeros`` / ``ones``: a constant mask, no payload.
- ``raw``: one bit per position.
- ``bytes``: 8-bit blocks, 256 symbols; close to the entropy for densities near 1/2.
- ``runs1`` / ``runs0``: the runs of the majority value between two occurrences of the minority
  value (1 for ``runs1``, 0 for ``runs0``). Symbol s < M-1 is "s majority bits then one minority
  bit"; symbol M-1 is "M-1 majority bits" (an escape for long runs). A virtual minority bit ends
  every segment. Near the entropy for sparse and dense masks, and small on masks with long runs.

With a `context` (for example the union of earlier tasks' masks), the positions where the context
is 0 and those where it is 1 are coded as two separate streams, each by its own best scheme.

Byte format, version 1 (integers are LEB128 varints unless a width is given)::

    magic "BSMK" | version u8 | flags u8 (bit 0: context) | ndim u8 | shape: ndim varints
    [context checksum: crc32 of the packed context, u32 little-endian]
    stream, once (no context) or twice (context 0 positions, then context 1 positions):
        scheme u8
        runs: M varint | code lengths | segments u8 | payload length varint per segment | payloads
        bytes: code lengths (256 symbols) | segments u8 | payload length per segment | payloads
        raw: ceil(n / 8) bytes, positions in little-endian bit order
    crc32 of everything before it, u32 little-endian

Code lengths are bit-packed MSB-first, each as its difference d from the previous one
("0": d = 0, "10": d = +1, "110": d = -1, "111" + 5 bits: the length itself), zero padded to a
byte. Each segment is an independent Huffman bit stream (MSB-first, zero padded) over an equal
share of the positions (runs) or bytes (bytes); several segments let the decoder interleave them.
"""

from __future__ import annotations

import zlib

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from bitsub._config import NJIT
from bitsub.errors import FormatError
from bitsub.huffman import MAX_CODE_LENGTH, canonical_codes, check_code_lengths, code_lengths
from bitsub.huffman import decode_table as _decode_table

__all__ = ["MAX_POSITIONS", "decode_mask", "encode_mask", "mask_scheme"]

MAGIC = b"BSMK"
VERSION = 1
# Largest mask (positions) we encode or decode: guards decoders against absurd declared shapes.
MAX_POSITIONS = 1 << 32
# Largest runs alphabet (M); also the longest run one symbol covers is M - 1.
MAX_RUN_SYMBOLS = 4096
MAX_SEGMENTS = 8
_FLAG_CONTEXT = 1

ZEROS, ONES, RAW, BYTES, RUNS1, RUNS0 = range(6)
SCHEME_NAMES = ("zeros", "ones", "raw", "bytes", "runs1", "runs0")

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
def _byte_histogram(packed):
    hist = np.zeros(256, dtype=np.int64)
    for i in range(packed.shape[0]):
        hist[packed[i]] += 1
    return hist


@numba.njit(**NJIT)
def _find_runs(words, n, invert, seg_ends, n_marks, hist_size):
    """Runs of the majority value before each minority bit and each segment end.

    `words`: the stream packed little-endian (position i is bit i % 64 of word i // 64), the
    minority value is 1 (or 0 when `invert`). Returns (runs, hist) where hist counts the runs
    shorter than hist_size - 1 and hist[-1] counts the rest.
    """
    runs = np.empty(n_marks + seg_ends.shape[0], dtype=np.int64)
    hist = np.zeros(hist_size, dtype=np.int64)
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
                prev = seg_end - 1
                seg += 1
                seg_end = seg_ends[seg]
            r = p - prev - 1
            runs[k] = r
            k += 1
            hist[min(r, big)] += 1
            prev = p
    while seg < seg_ends.shape[0]:
        seg_end = seg_ends[seg]
        r = seg_end - prev - 1
        runs[k] = r
        k += 1
        hist[min(r, big)] += 1
        prev = seg_end - 1
        seg += 1
    return runs[:k], hist


# --------------------------------------------------------------------------- kernels: encode


@numba.njit(**NJIT)
def _encode_runs_kernel(runs, codes, lengths, esc_run, out):
    """Huffman-code runs (escape symbol = esc_run majority bits); returns the bits written."""
    acc = _U64(0)
    n_acc = 0
    k = 0
    n_bits = 0
    esc_code = _U64(codes[esc_run])
    esc_len = np.int64(lengths[esc_run])
    for i in range(runs.shape[0]):
        r = runs[i]
        while r >= esc_run:
            r -= esc_run
            acc = (acc << _U64(esc_len)) | esc_code
            n_acc += esc_len
            n_bits += esc_len
            if n_acc >= 32:
                n_acc -= 32
                out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
                k += 1
        ln = np.int64(lengths[r])
        acc = (acc << _U64(ln)) | _U64(codes[r])
        n_acc += ln
        n_bits += ln
        if n_acc >= 32:
            n_acc -= 32
            out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
            k += 1
    if n_acc > 0:
        out[k] = np.uint32((acc << _U64(32 - n_acc)) & _U64(0xFFFFFFFF))
    return n_bits


@numba.njit(**NJIT)
def _encode_bytes_kernel(symbols, codes, lengths, out):
    acc = _U64(0)
    n_acc = 0
    k = 0
    n_bits = 0
    for i in range(symbols.shape[0]):
        s = symbols[i]
        ln = np.int64(lengths[s])
        acc = (acc << _U64(ln)) | _U64(codes[s])
        n_acc += ln
        n_bits += ln
        if n_acc >= 32:
            n_acc -= 32
            out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
            k += 1
    if n_acc > 0:
        out[k] = np.uint32((acc << _U64(32 - n_acc)) & _U64(0xFFFFFFFF))
    return n_bits


def _words_to_bytes(words: np.ndarray, n_bits: int) -> bytes:
    return words.astype(">u4").tobytes()[: (n_bits + 7) // 8]


# --------------------------------------------------------------------------- kernels: decode


def _payload_words(payload: bytes) -> np.ndarray:
    """An MSB-first byte stream as native uint32 words, with two zero words of padding."""
    n_words = (len(payload) + 3) // 4 + 2
    buf = np.zeros(n_words * 4, dtype=np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    return buf.view(">u4").astype(np.uint32)


@numba.njit(**NJIT)
def _decode_runs_kernel(
    words, n_bits, out, start, stop, value, esc_run, table, table_bits, max_length, first,
    count, offset, symbols,
):
    """Decode one runs segment into out[start:stop] (pre-filled with the majority value).

    Returns the number of bits read, or a negative error code.
    """
    acc = _U64(0)
    n_acc = 0
    k = 0
    shift = _U64(64 - table_bits)
    pos = start
    while True:
        if n_acc < 32:
            acc |= _U64(words[k]) << _U64(32 - n_acc)
            k += 1
            n_acc += 32
        if 32 * k - n_acc > n_bits:
            return _ERR_OVERRUN
        e = table[np.int64(acc >> shift)]
        if e != 0:
            ln = np.int64(e & 31)
            s = np.int64(e >> 5)
        else:
            ln = 0
            s = 0
            for bits in range(table_bits + 1, max_length + 1):
                c = np.int64(acc >> _U64(64 - bits)) - first[bits]
                if 0 <= c < count[bits]:
                    s = np.int64(symbols[offset[bits] + c])
                    ln = bits
                    break
            if ln == 0:
                return _ERR_CODE
        acc <<= _U64(ln)
        n_acc -= ln
        if s == esc_run:
            pos += esc_run
            if pos > stop:
                return _ERR_RUN
        else:
            pos += s
            if pos >= stop:
                if pos > stop:
                    return _ERR_RUN
                break
            out[pos] = value
            pos += 1
    return 32 * k - n_acc


@numba.njit(**NJIT)
def _decode_bytes_kernel(
    words, n_bits, out, table, table_bits, max_length, first, count, offset, symbols
):
    acc = _U64(0)
    n_acc = 0
    k = 0
    shift = _U64(64 - table_bits)
    for i in range(out.shape[0]):
        if n_acc < 32:
            acc |= _U64(words[k]) << _U64(32 - n_acc)
            k += 1
            n_acc += 32
        if 32 * k - n_acc > n_bits:
            return _ERR_OVERRUN
        e = table[np.int64(acc >> shift)]
        if e != 0:
            ln = np.int64(e & 31)
            out[i] = np.uint8(e >> 5)
        else:
            ln = 0
            for bits in range(table_bits + 1, max_length + 1):
                c = np.int64(acc >> _U64(64 - bits)) - first[bits]
                if 0 <= c < count[bits]:
                    out[i] = np.uint8(symbols[offset[bits] + c])
                    ln = bits
                    break
            if ln == 0:
                return _ERR_CODE
        acc <<= _U64(ln)
        n_acc -= ln
    return 32 * k - n_acc


# ------------------------------------------------------------------------------ stream coder


def _segments(size: int) -> int:
    """Number of segments for a stream of `size` symbols' worth of positions or bytes."""
    return 1


def _bounds(size: int, n_seg: int) -> np.ndarray:
    return np.array([(j * size) // n_seg for j in range(n_seg + 1)], dtype=np.int64)


def _run_symbol_counts(hist: np.ndarray, big_runs: np.ndarray, m: int) -> np.ndarray:
    """Symbol frequencies of the runs scheme with alphabet size m, from the run histogram."""
    esc = m - 1
    r = np.arange(hist.size - 1)
    h = hist[:-1]
    counts = np.bincount(r % esc, weights=h, minlength=m).astype(np.int64)
    counts[esc] += int(np.dot(r // esc, h))
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


def _plan_stream(bits: np.ndarray) -> _Plan:
    """Pick the smallest scheme for a 1-D bool stream; `size` is its estimated byte count."""
    n = bits.size
    ones = int(np.count_nonzero(bits))
    if ones == 0:
        return _Plan(ZEROS, 1)
    if ones == n:
        return _Plan(ONES, 1)
    packed = np.packbits(bits, bitorder="little")
    best = _Plan(RAW, 1 + packed.size, packed=packed)
    hist = _byte_histogram(packed)
    size, lengths = _huffman_cost(hist)
    if size + 1 + 2 < best.size:
        best = _Plan(BYTES, size + 3, packed=packed, lengths=lengths)
    minority = min(ones, n - ones)
    p = minority / n
    h_bits = -n * (p * np.log2(p) + (1 - p) * np.log2(1 - p))
    # Runs pay off on skewed densities and on structure beyond 8-bit blocks; on i.i.d. masks of
    # density near 1/2 they cannot, so we skip the scan there.
    if p <= 0.3 or 8 * best.size < 0.97 * h_bits:
        invert = ones > n - ones
        n_seg = _segments(n)
        ends = _bounds(n, n_seg)[1:]
        words = np.zeros((packed.size + 7) // 8 * 8, dtype=np.uint8)
        words[: packed.size] = packed
        runs, rhist = _find_runs(
            words.view("<u8"), n, invert, ends, minority, MAX_RUN_SYMBOLS + 1
        )
        big_runs = runs[runs >= MAX_RUN_SYMBOLS] if rhist[-1] else runs[:0]
        max_run = int(big_runs.max()) if big_runs.size else int(np.flatnonzero(rhist)[-1])
        candidates = {min(max_run + 2, MAX_RUN_SYMBOLS)}
        m = 4
        while m <= MAX_RUN_SYMBOLS and m < max_run + 2:
            candidates.add(m)
            m *= 2
        best_runs = None
        for m in sorted(candidates):
            counts = _run_symbol_counts(rhist, big_runs, m)
            size, lengths = _huffman_cost(counts)
            size += 1 + len(_varint(m)) + 1 + 2 * n_seg
            # Fewer symbols code and decode faster: a byte of size buys 2048 fewer symbols.
            score = size + int(counts.sum()) / 2048
            if best_runs is None or score < best_runs[0]:
                best_runs = (score, size, m, lengths, counts)
        _, size, m, lengths, counts = best_runs
        if size < best.size:
            best = _Plan(
                RUNS0 if invert else RUNS1, size, runs=runs, m=m, lengths=lengths, n_seg=n_seg,
                counts=counts,
            )
    return best


def _write_stream(plan: _Plan) -> bytes:
    scheme = plan.scheme
    out = [bytes([scheme])]
    if scheme == RAW:
        out.append(plan.packed.tobytes())
    elif scheme == BYTES:
        out.append(_write_length_table(plan.lengths))
        codes = canonical_codes(plan.lengths)
        lengths8 = plan.lengths.astype(np.uint8)
        bounds = _bounds(plan.packed.size, 1)
        out.append(b"\x01")
        words = np.zeros(plan.packed.size * MAX_CODE_LENGTH // 32 + 2, dtype=np.uint32)
        payloads = []
        for j in range(bounds.size - 1):
            seg = plan.packed[bounds[j] : bounds[j + 1]]
            n_bits = _encode_bytes_kernel(seg, codes, lengths8, words)
            payloads.append(_words_to_bytes(words, n_bits))
        out += [_varint(len(p)) for p in payloads] + payloads
    elif scheme in (RUNS0, RUNS1):
        m = plan.m
        out.append(_varint(m))
        out.append(_write_length_table(plan.lengths))
        codes = canonical_codes(plan.lengths)
        lengths8 = plan.lengths.astype(np.uint8)
        out.append(bytes([plan.n_seg]))
        n_bits_total = int(np.dot(plan.counts, plan.lengths.astype(np.int64)))
        words = np.zeros(n_bits_total // 32 + 2 + plan.n_seg, dtype=np.uint32)
        payloads = []
        # Each segment's runs end with its virtual minority bit: split after those.
        runs = plan.runs
        if plan.n_seg == 1:
            pieces = [runs]
        else:
            raise NotImplementedError
        for seg in pieces:
            n_bits = _encode_runs_kernel(seg, codes, lengths8, m - 1, words)
            payloads.append(_words_to_bytes(words, n_bits))
        out += [_varint(len(p)) for p in payloads] + payloads
    return b"".join(out)


def _read_segments(reader: _Reader, max_bytes: int) -> list[bytes]:
    n_seg = reader.u8("segment count")
    if not 1 <= n_seg <= MAX_SEGMENTS:
        raise FormatError(f"segment count {n_seg} is not in 1..{MAX_SEGMENTS}")
    sizes = [reader.varint("segment payload length", max_bytes) for _ in range(n_seg)]
    return [reader.take(size, "segment payload") for size in sizes]


def _check_end(end: int, payload: bytes, words: np.ndarray, what: str) -> None:
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


def _parse_stream(reader: _Reader, n: int):
    """Read one stream's header and payloads (validated structure, nothing decoded yet)."""
    scheme = reader.u8("scheme")
    if scheme in (ZEROS, ONES):
        return (scheme,)
    if scheme == RAW:
        return (scheme, reader.take((n + 7) // 8, "raw payload"))
    if scheme == BYTES:
        lengths = _read_length_table(reader, 256)
        return (scheme, lengths, _read_segments(reader, reader.end))
    if scheme in (RUNS0, RUNS1):
        m = reader.varint("runs alphabet size", MAX_RUN_SYMBOLS)
        if m < 2:
            raise FormatError(f"runs alphabet size {m} is below 2")
        lengths = _read_length_table(reader, m)
        return (scheme, m, lengths, _read_segments(reader, reader.end))
    raise FormatError(f"unknown mask scheme {scheme}")


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
    if scheme == BYTES:
        _, lengths, payloads = parsed
        if not lengths.any():
            raise FormatError("invalid code-length table: no symbol has a code")
        n_bytes = (n + 7) // 8
        bounds = _bounds(n_bytes, len(payloads))
        table = _decode_table(lengths)
        packed = np.empty(n_bytes, dtype=np.uint8)
        for j, payload in enumerate(payloads):
            words = _payload_words(payload)
            end = _decode_bytes_kernel(
                words, 8 * len(payload), packed[bounds[j] : bounds[j + 1]], *table
            )
            _check_end(end, payload, words, "bytes payload")
        if n & 7 and packed[-1] >> (n & 7):
            raise FormatError("corrupt bytes payload: nonzero padding bits")
        return np.unpackbits(packed, count=n, bitorder="little").view(np.bool_)
    _, m, lengths, payloads = parsed
    if not lengths.any():
        raise FormatError("invalid code-length table: no symbol has a code")
    value = scheme == RUNS1
    out = np.zeros(n, dtype=np.bool_) if value else np.ones(n, dtype=np.bool_)
    bounds = _bounds(n, len(payloads))
    table = _decode_table(lengths)
    for j, payload in enumerate(payloads):
        words = _payload_words(payload)
        end = _decode_runs_kernel(
            words, 8 * len(payload), out, bounds[j], bounds[j + 1], value, m - 1, *table
        )
        _check_end(end, payload, words, "runs payload")
    return out


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


def decode_mask(data: bytes, context: np.ndarray | None = None) -> np.ndarray:
    """Decode bytes from `encode_mask` back into the boolean mask.

    Parameters
    ----------
    data : bytes-like
        The encoding.
    context : array_like of bool, optional
        The context the mask was encoded with, if any (the same array).

    Returns
    -------
    np.ndarray of bool
        The mask, with its original shape.

    Raises
    ------
    FormatError
        If `data` is not a valid encoding (truncated, corrupted, unknown version, ...) or the
        context is missing, unexpected or not the one the mask was encoded with.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 4 + 3 + 4:
        raise FormatError(f"truncated: {len(data)} bytes is shorter than any mask encoding")
    if data[:4] != MAGIC:
        raise FormatError("not a bitsub mask encoding (bad magic bytes)")
    if data[4] != VERSION:
        raise FormatError(f"mask format version {data[4]} is not supported (this reads {VERSION})")
    reader = _Reader(data, len(data) - 4)
    reader.pos = 5
    flags = reader.u8("flags")
    if flags & ~_FLAG_CONTEXT:
        raise FormatError(f"unknown flags {flags:#x}")
    ndim = reader.u8("ndim")
    shape = tuple(reader.varint("shape", MAX_POSITIONS) for _ in range(ndim))
    n = 1
    for d in shape:
        n *= d
    if n > MAX_POSITIONS:
        raise FormatError(f"declared shape {shape} has more than {MAX_POSITIONS} positions")
    ctx_sum = None
    if flags & _FLAG_CONTEXT:
        ctx_sum = int.from_bytes(reader.take(4, "context checksum"), "little")
    if ctx_sum is None:
        sizes = [n]
    else:
        if context is None:
            raise FormatError("this mask was encoded with a context; pass the same context")
        context = _as_mask(context, "context")
        if context.shape != shape:
            raise FormatError(f"context shape {context.shape} differs from the mask's {shape}")
        ctx = np.ascontiguousarray(context).reshape(-1)
        n1 = int(np.count_nonzero(ctx))
        sizes = [n - n1, n1]
    parsed = [_parse_stream(reader, size) for size in sizes]
    if reader.pos != reader.end:
        raise FormatError(f"{reader.end - reader.pos} unexpected bytes after the last stream")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise FormatError("checksum mismatch: the data is corrupted")
    if ctx_sum is None and context is not None:
        raise FormatError("this mask was encoded without a context; pass context=None")
    if ctx_sum is not None and _context_checksum(ctx) != ctx_sum:
        raise FormatError("the context differs from the one the mask was encoded with")
    streams = [_decode_stream(p, size) for p, size in zip(parsed, sizes)]
    if ctx_sum is None:
        return streams[0].reshape(shape)
    out = np.empty(n, dtype=np.bool_)
    out[~ctx] = streams[0]
    out[ctx] = streams[1]
    return out.reshape(shape)


def mask_scheme(data: bytes) -> list[str]:
    """Names of the schemes used by an encoding's streams (for reports and tests)."""
    names = []
    reader = _Reader(bytes(data), len(data) - 4)
    reader.pos = 5
    flags = reader.u8("flags")
    ndim = reader.u8("ndim")
    shape = tuple(reader.varint("shape", MAX_POSITIONS) for _ in range(ndim))
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if flags & _FLAG_CONTEXT:
        reader.take(4, "context checksum")
        raise ValueError("mask_scheme needs the context for a context-coded mask")
    names.append(SCHEME_NAMES[_parse_stream(reader, n)[0]])
    return names

"""Canonical Huffman codes: optimal length-limited code lengths, table-driven Numba coder.

The bit stream is MSB-first: the first code's first bit is the top bit of the first byte, so a
canonical code compares numerically with the next bits of the stream. A decoder looks the next
``TABLE_BITS`` bits up in a table; the rare longer codes fall back to the canonical
first-code-per-length walk.

Decoders keep up to 64 stream bits in a register, refilled 32 bits at a time from the stream as
native uint32 words with two zero words of padding (see `stream_words`).
"""

from __future__ import annotations

import numba
import numpy as np

from bitsub.config import NJIT

__all__ = [
    "MAX_CODE_LENGTH",
    "TABLE_BITS",
    "DecodeTable",
    "canonical_codes",
    "check_code_lengths",
    "code_lengths",
    "code_lengths_kernel",
    "decode_symbols",
    "decode_table",
    "decode_table_kernel",
    "encode_symbols",
    "stream_words",
    "write_codes",
]

# Longest code we emit or accept. Package-merge keeps codes within it at minimal cost.
MAX_CODE_LENGTH = 20
# Codes up to this length decode in one table look-up (a 2**TABLE_BITS int32 table, 8 KiB).
TABLE_BITS = 11

_U64 = np.uint64


# ------------------------------------------------------------------------------- code lengths


@numba.njit(**NJIT)
def _package_merge(weights: np.ndarray, max_length: int) -> np.ndarray:
    """Optimal code lengths within `max_length` for weights sorted ascending (n >= 2)."""
    n = weights.shape[0]
    is_package = np.zeros((max_length, 2 * n), dtype=np.bool_)
    prev = np.empty(2 * n, dtype=np.int64)
    cur = np.empty(2 * n, dtype=np.int64)
    prev_size = 0
    # Level 0 is the deepest (codes of length max_length); each level merges the leaves with the
    # pairs ("packages") of the level below.
    for level in range(max_length):
        n_packages = prev_size // 2
        i = 0
        j = 0
        k = 0
        while i < n or j < n_packages:
            if j < n_packages:
                package = prev[2 * j] + prev[2 * j + 1]
            else:
                package = 0
            if j >= n_packages or (i < n and weights[i] <= package):
                cur[k] = weights[i]
                i += 1
            else:
                cur[k] = package
                is_package[level, k] = True
                j += 1
            k += 1
        prev, cur = cur, prev
        prev_size = k
    lengths = np.zeros(n, dtype=np.uint8)
    take = 2 * n - 2
    for level in range(max_length - 1, -1, -1):
        leaves = 0
        packages = 0
        for k in range(take):
            if is_package[level, k]:
                packages += 1
            else:
                leaves += 1
        # Leaves enter each level in ascending weight order, so the lightest get the extra bit.
        for s in range(leaves):
            lengths[s] += 1
        take = 2 * packages
    return lengths


def code_lengths(freqs: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths for symbol frequencies, no code longer than `max_length`.

    Parameters
    ----------
    freqs : array_like of int
        Frequency of each symbol (>= 0). Symbols of frequency 0 get length 0 (no code).
    max_length : int
        Longest allowed code, 1..32; needs ``2**max_length >=`` the number of used symbols.

    Returns
    -------
    np.ndarray of uint8
        Code length per symbol. One used symbol gets length 1; none used gives all zeros.
    """
    freqs = np.asarray(freqs)
    if freqs.ndim != 1 or not (freqs.dtype.kind in "iu" or freqs.size == 0):
        raise TypeError("freqs must be a 1-D array of integer frequencies")
    if freqs.size and freqs.min() < 0:
        raise ValueError("freqs must be >= 0")
    if not 1 <= int(max_length) <= 32:
        raise ValueError(f"max_length must be in 1..32, got {max_length}")
    freqs = freqs.astype(np.int64)
    used = int(np.count_nonzero(freqs))
    if used > 2 ** int(max_length):
        raise ValueError(f"{used} used symbols need codes longer than max_length={max_length}")
    return code_lengths_kernel(freqs, int(max_length))


@numba.njit(**NJIT)
def code_lengths_kernel(freqs, max_length):
    """`code_lengths` without the checks: int64 frequencies >= 0, at most 2**max_length used.

    The used symbols enter package-merge in ascending frequency, ties by symbol (a stable sort).
    """
    lengths = np.zeros(freqs.shape[0], dtype=np.uint8)
    used = np.flatnonzero(freqs)
    if used.shape[0] == 1:
        lengths[used[0]] = 1
    elif used.shape[0] > 1:
        order = used[np.argsort(freqs[used], kind="mergesort")]
        got = _package_merge(freqs[order], max_length)
        for i in range(order.shape[0]):
            lengths[order[i]] = got[i]
    return lengths


@numba.njit(**NJIT)
def _code_stats(lengths, max_length):
    """(longest, used symbols, length of the last used one, Kraft sum scaled by 2**max_length)."""
    longest = 0
    used = 0
    last = 0
    kraft = 0
    for i in range(lengths.shape[0]):
        ln = np.int64(lengths[i])
        if ln <= 0:
            continue
        used += 1
        last = ln
        longest = max(longest, ln)
        if ln <= max_length:
            kraft += np.int64(1) << (max_length - ln)
    return longest, used, last, kraft


def check_code_lengths(lengths: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> str | None:
    """Why `lengths` is not a usable canonical code, or None when it is.

    A usable code is complete (the Kraft sum is exactly 1) with every length in 0..max_length, or
    has a single used symbol of length 1.
    """
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return None
    # One Numba pass: decoders call this for every table they read.
    longest, used, last, kraft = _code_stats(np.ascontiguousarray(lengths, dtype=np.int64),
                                             int(max_length))
    if used == 0:
        return None
    if longest > max_length:
        return f"a code length of {longest} exceeds the maximum {max_length}"
    if used == 1:
        return None if last == 1 else "a single used symbol must have code length 1"
    if kraft != 1 << max_length:
        relation = "over" if kraft > 1 << max_length else "under"
        return f"code lengths are not a complete prefix code (Kraft sum {relation} 1)"
    return None


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol: codes ordered by (length, symbol), consecutive per length.

    Parameters
    ----------
    lengths : array_like of int
        Code length per symbol (0 = unused); must pass `check_code_lengths`.

    Returns
    -------
    np.ndarray of uint32
        The code of each symbol, right-aligned in `lengths[s]` bits (0 for unused symbols).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    why = check_code_lengths(lengths, 32)
    if why is not None:
        raise ValueError(why)
    return _canonical_kernel(lengths)


@numba.njit(**NJIT)
def _canonical_kernel(lengths):
    # Deflate's construction: the first code of each length, then consecutive in symbol order.
    codes = np.zeros(lengths.shape[0], dtype=np.uint32)
    bl_count = np.zeros(34, dtype=np.int64)
    for s in range(lengths.shape[0]):
        bl_count[lengths[s]] += 1
    bl_count[0] = 0
    next_code = np.zeros(34, dtype=np.int64)
    code = 0
    for bits in range(1, 33):
        code = (code + bl_count[bits - 1]) << 1
        next_code[bits] = code
    for s in range(lengths.shape[0]):
        ln = lengths[s]
        if ln > 0:
            codes[s] = np.uint32(next_code[ln])
            next_code[ln] += 1
    return codes


# ------------------------------------------------------------------------------------- writer


@numba.njit(**NJIT)
def write_codes(symbols, codes, lengths, out):
    """Write the codes of `symbols` MSB-first into uint32 words; returns the bits written."""
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
        # Branch-free flush: always store the top word, advance only when it is full.
        f = n_acc >> 5
        n_acc &= 31
        out[k] = np.uint32((acc >> _U64(n_acc)) & _U64(0xFFFFFFFF))
        k += f
    if n_acc > 0:
        out[k] = np.uint32((acc << _U64(32 - n_acc)) & _U64(0xFFFFFFFF))
    return n_bits


def encode_symbols(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Huffman-code `symbols` with the canonical code of `lengths` (MSB-first, zero padded).

    Parameters
    ----------
    symbols : array_like of int
        Symbols in ``0..len(lengths)-1``, each with a nonzero length.
    lengths : array_like of int
        Code lengths (see `code_lengths`), at most `MAX_CODE_LENGTH`.

    Returns
    -------
    bytes
        ceil(total bits / 8) bytes.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    why = check_code_lengths(lengths)
    if why is not None:
        raise ValueError(why)
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or not (symbols.dtype.kind in "iu" or symbols.size == 0):
        raise TypeError("symbols must be a 1-D integer array")
    symbols = symbols.astype(np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= lengths.size):
        raise ValueError(f"symbols must be in 0..{lengths.size - 1}")
    if symbols.size and np.any(lengths[symbols] == 0):
        raise ValueError("every symbol to encode needs a nonzero code length")
    codes = canonical_codes(lengths)
    out = np.zeros(int(np.sum(lengths[symbols])) // 32 + 2, dtype=np.uint32)
    n_bits = write_codes(symbols, codes, lengths.astype(np.uint8), out)
    return out.astype(">u4").tobytes()[: (n_bits + 7) // 8]


# ------------------------------------------------------------------------------------- reader


def stream_words(payload) -> np.ndarray:
    """An MSB-first byte stream as native uint32 words, with two zero words of padding.

    Decoders refill their bit buffer a word at a time and check the index against the array.
    """
    n_words = (len(payload) + 3) // 4 + 2
    buf = np.zeros(n_words * 4, dtype=np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    return buf.view(">u4").astype(np.uint32)


class DecodeTable(tuple):
    """(table, table_bits, max_length, first, count, offset, sorted_symbols) of a code.

    `table[v]` for the next `table_bits` bits v is ``symbol << 5 | length``, or 0 when the code
    is longer than `table_bits` (or unused); `first[l]`, `count[l]`, `offset[l]` describe the
    codes of length l in canonical order within `sorted_symbols`.
    """

    __slots__ = ()


@numba.njit(**NJIT)
def decode_table_kernel(lengths, table_bits, max_length):
    """`decode_table`'s arrays in one pass (NumPy calls on a few hundred symbols cost more).

    For kernels that build several tables at once; `decode_table` is the checked entry.
    """
    n = lengths.shape[0]
    count = np.zeros(max_length + 1, dtype=np.int64)
    for s in range(n):
        count[lengths[s]] += 1
    count[0] = 0
    first = np.zeros(max_length + 1, dtype=np.int64)
    offset = np.zeros(max_length + 1, dtype=np.int64)
    code = 0
    pos = 0
    for bits in range(1, max_length + 1):
        code = (code + count[bits - 1]) << 1
        first[bits] = code
        offset[bits] = pos
        pos += count[bits]
    sorted_symbols = np.empty(pos, dtype=np.int32)
    table = np.zeros(1 << table_bits, dtype=np.int32)
    next_code = first.copy()
    fill = offset.copy()
    # Canonical order: by length, then by symbol; each code is the previous one + 1.
    for s in range(n):
        ln = lengths[s]
        if ln == 0:
            continue
        c = next_code[ln]
        next_code[ln] += 1
        sorted_symbols[fill[ln]] = s
        fill[ln] += 1
        if ln <= table_bits:
            # A code of length l <= table_bits fills the 2**(table_bits - l) entries it prefixes.
            span = 1 << (table_bits - ln)
            start = c * span
            table[start : start + span] = (s << 5) | ln
    return table, first, count, offset, sorted_symbols


def decode_table(
    lengths: np.ndarray, table_bits: int | None = None, max_length: int | None = None
) -> DecodeTable:
    """Decoding tables for a code that passed `check_code_lengths`.

    `table_bits` (default: the longest code, at most `TABLE_BITS`) and `max_length` (default:
    the longest code) may be raised so that several codes' tables have the same shapes.
    """
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    longest = max(int(lengths.max()) if lengths.size else 0, 1)
    max_length = longest if max_length is None else max(int(max_length), longest)
    if table_bits is None:
        table_bits = min(max_length, TABLE_BITS)
    table, first, count, offset, sorted_symbols = decode_table_kernel(
        lengths, int(table_bits), max_length
    )
    return DecodeTable((table, table_bits, max_length, first, count, offset, sorted_symbols))


@numba.njit(**NJIT)
def _decode_kernel(words, out, table, table_bits, max_length, first, count, offset, symbols):
    """Decode len(out) symbols; returns the bits read or -1 (invalid code, or out of data)."""
    shift = _U64(64 - table_bits)
    acc = _U64(0)
    n_acc = 0
    k = 0
    for i in range(out.shape[0]):
        if n_acc < 32:
            if k >= words.shape[0]:
                return -1
            acc |= _U64(words[k]) << _U64(32 - n_acc)
            k += 1
            n_acc += 32
        e = table[np.int64(acc >> shift)]
        if e != 0:
            ln = np.int64(e & 31)
            out[i] = e >> 5
        else:
            ln = 0
            for bits in range(table_bits + 1, max_length + 1):
                c = np.int64(acc >> _U64(64 - bits)) - first[bits]
                if 0 <= c < count[bits]:
                    out[i] = symbols[offset[bits] + c]
                    ln = bits
                    break
            if ln == 0:
                return -1
        acc <<= _U64(ln)
        n_acc -= ln
    return 32 * k - n_acc


def decode_symbols(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """Decode `count` symbols coded by `encode_symbols` with the same `lengths`.

    Raises
    ------
    ValueError
        If the lengths are not a valid code, or `data` is not `count` symbols of it (too short,
        an invalid code, or bytes left over).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    why = check_code_lengths(lengths)
    if why is not None:
        raise ValueError(why)
    count = int(count)
    if count < 0:
        raise ValueError("count must be >= 0")
    out = np.zeros(count, dtype=np.int32)
    if count == 0:
        if len(data):
            raise ValueError("bytes left over after the last symbol")
        return out
    if not lengths.any():
        raise ValueError("no symbol has a code")
    n_bits = 8 * len(data)
    end = _decode_kernel(stream_words(data), out, *decode_table(lengths))
    if end < 0 or end > n_bits:
        raise ValueError("the data ends before the last symbol, or holds an invalid code")
    if (end + 7) // 8 != len(data):
        raise ValueError("bytes left over after the last symbol")
    return out

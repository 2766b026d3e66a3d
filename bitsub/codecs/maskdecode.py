"""Mask stream decoder: parse one stream's header, then decode its payloads with Numba.

One kernel a scheme (runs1 / runs0, runs01 here; bytes in `bitsub.codecs.maskbytes`), each
decoding one or two segments interleaved so that the CPU overlaps their table look-ups; the runs
look-up table gives up to four runs at once (`run_groups`). Kernels check the stream and the
mask's bounds before they write, and the callers check where each stream ended
(`bitsub.codecs.maskio.check_end`).
"""

from __future__ import annotations

import numba
import numpy as np

from bitsub.codecs.huffman import TABLE_BITS, decode_table, decode_table_kernel
from bitsub.codecs.maskbytes import (
    BYTE_BITS,
    TRIPLE_TABLE_BITS,
    TRIPLES_MAX_MEAN_LENGTH,
    TRIPLES_MIN_BYTES,
    byte_triples,
    decode_bytes_kernel,
    decode_bytes_triples_kernel,
)
from bitsub.codecs.maskencode import (
    BYTES,
    MAX_EXTRA_BITS,
    MAX_RUN_SYMBOLS,
    ONES,
    RAW,
    RUNS0,
    RUNS01,
    RUNS1,
    ZEROS,
)
from bitsub.codecs.maskio import (
    ERR_CODE,
    ERR_OVERRUN,
    ERR_RUN,
    Reader,
    check_coverage,
    check_end,
    read_length_table,
    segment_bounds,
)
from bitsub.config import NJIT
from bitsub.errors import FormatError

__all__ = [
    "decode_alt_kernel",
    "decode_runs_kernel",
    "decode_stream",
    "GROUP_OFFSET_BITS",
    "GROUP_RUNS",
    "alt_tables",
    "lane_words",
    "long_symbol",
    "run_groups",
    "parse_stream",
]

_U64 = np.uint64


# A run-groups entry (`run_groups`) holds up to GROUP_RUNS runs, as the offsets of their minority
# bits from the group's start (each below 2**GROUP_OFFSET_BITS).
GROUP_RUNS = 4
GROUP_OFFSET_BITS = 10


@numba.njit(**NJIT)
def _run_groups_kernel(table, table_bits, esc, extra):
    out = np.zeros(table.shape[0], dtype=np.int64)
    mask = table.shape[0] - 1
    limit = (1 << GROUP_OFFSET_BITS) - 1
    offsets = np.zeros(GROUP_RUNS, dtype=np.int64)
    for v in range(table.shape[0]):
        total = 0
        after = 0
        cnt = 0
        while cnt < GROUP_RUNS:
            e = np.int64(table[(v << total) & mask])
            ln = e & 31
            if e == 0 or total + ln + extra > table_bits or e >> 5 == esc:
                break
            # The run's extra low bits follow its code, inside the same table_bits.
            low = ((v << (total + ln)) & mask) >> (table_bits - extra)
            r = ((e >> 5) << extra) | low
            if after + r > limit:
                break
            offsets[cnt] = after + r
            after += r + 1
            total += ln + extra
            cnt += 1
        if cnt == 0:
            continue
        for j in range(cnt, GROUP_RUNS):
            offsets[j] = offsets[cnt - 1]
        out[v] = total | after << 5
        for j in range(GROUP_RUNS):
            out[v] |= offsets[j] << (16 + GROUP_OFFSET_BITS * j)
    return out


def run_groups(table: np.ndarray, table_bits: int, esc: int, extra: int) -> np.ndarray:
    """Multi-run look-up table of the runs schemes from a one-symbol `decode_table` table.

    Entry for the next `table_bits` bits: ``total | advance << 5 | o1 << 16 | o2 << 26 | o3 << 36
    | o4 << 46``: the runs (up to `GROUP_RUNS`) whose codes and `extra` low bits all fit in those
    bits, in stream order, none the escape `esc`, as the offsets o1 <= o2 <= ... of their minority
    bits from the current position (the unused ones repeat the last), `advance` the position
    after the last of them and `total` the bits they take. 0 where not even one run fits.
    """
    return _run_groups_kernel(table, int(table_bits), int(esc), int(extra))


@numba.njit(**NJIT, inline="always")
def long_symbol(acc, table_bits, max_length, first, count, offset, symbols):
    """(symbol, length) of a code longer than `table_bits` at the top of `acc`; length 0: none.

    The canonical first-code-per-length walk over `bitsub.codecs.huffman.decode_table`'s arrays.
    """
    # One return only: Numba compiles early returns of inlined code into much slower loops.
    s = 0
    ln = 0
    for bits in range(table_bits + 1, max_length + 1):
        c = np.int64(acc >> _U64(64 - bits)) - first[bits]
        if 0 <= c < count[bits]:
            s = symbols[offset[bits] + c]
            ln = bits
            break
    return np.int64(s), np.int64(ln)


# Each kernel decodes one or two segments, interleaved ("lanes"): the body is written once
# inside `for lane in range(2)`, the lane's state is loaded into scalars and stored back. LLVM
# unrolls the two-trip loop and keeps both lanes' state in registers, so the CPU overlaps the two
# streams' table look-ups (an inlined step function would do the same, but Numba passes the
# arrays to it with reference counting on every call, ten times slower). `words` holds both
# streams' words (see `_lanes`): lane i reads words[wb[i]:wb[i + 1]].


@numba.njit(**NJIT)
def decode_runs_kernel(words, wb, bounds, out, value, esc, extra, groups, table, table_bits,
                       max_length, first, count, offset, symbols):
    """Decode runs segments (out[bounds[i]:bounds[i + 1]]) into out (pre-filled with the majority).

    Each look-up in `groups` (see `run_groups`) yields up to four runs, taken at once when their
    last minority bit lies before the segment's end; escapes, codes longer than `table_bits` and
    the segment's last run go one by one through `table`. Returns the bits read from each
    stream, or a negative error code in the first slot. Indices into `out` and `words` are
    unsigned (each is checked against its bound first): Numba then skips the negative-index wrap.
    """
    shift = _U64(64 - table_bits)
    esc_span = esc << extra
    two = bounds.shape[0] == 3
    acc0, n0, k0, pos0, done0 = _U64(0), 0, wb[0], bounds[0], False
    acc1, n1, k1, pos1, done1 = _U64(0), 0, wb[1], bounds[1], not two
    while not (done0 and done1):
        for lane in range(2):
            if lane == 0:
                acc, n, k, pos, done, kend, stop = acc0, n0, k0, pos0, done0, wb[1], bounds[1]
            else:
                acc, n, k, pos, done, kend, stop = acc1, n1, k1, pos1, done1, wb[2], bounds[-1]
            if not done:
                if n < 32:
                    if k >= kend:
                        return ERR_OVERRUN, 0
                    acc |= _U64(words[_U64(k)]) << _U64(32 - n)
                    k += 1
                    n += 32
                v = acc >> shift
                g = groups[v]
                if g != 0 and pos + ((g >> 5) & 2047) <= stop:
                    # Unused offsets repeat the last: no branch on the count.
                    out[_U64(pos + ((g >> 16) & 1023))] = value
                    out[_U64(pos + ((g >> 26) & 1023))] = value
                    out[_U64(pos + ((g >> 36) & 1023))] = value
                    out[_U64(pos + (g >> 46))] = value
                    pos += (g >> 5) & 2047
                    ln = g & 31
                    acc <<= _U64(ln)
                    n -= ln
                else:
                    e = table[v]
                    if e != 0:
                        s = np.int64(e >> 5)
                        ln = np.int64(e & 31)
                    else:
                        s, ln = long_symbol(acc, table_bits, max_length, first, count, offset,
                                            symbols)
                        if ln == 0:
                            return ERR_CODE, 0
                    acc <<= _U64(ln)
                    n -= ln
                    if s == esc:
                        pos += esc_span
                        if pos > stop:
                            return ERR_RUN, 0
                    else:
                        if extra > 0:
                            # The run's low bits follow its code as they are.
                            if n < extra:
                                if k >= kend:
                                    return ERR_OVERRUN, 0
                                acc |= _U64(words[_U64(k)]) << _U64(32 - n)
                                k += 1
                                n += 32
                            s = (s << extra) | np.int64(acc >> _U64(64 - extra))
                            acc <<= _U64(extra)
                            n -= extra
                        pos += s
                        if pos >= stop:
                            if pos > stop:
                                return ERR_RUN, 0
                            done = True
                        else:
                            out[_U64(pos)] = value
                            pos += 1
            if lane == 0:
                acc0, n0, k0, pos0, done0 = acc, n, k, pos, done
            else:
                acc1, n1, k1, pos1, done1 = acc, n, k, pos, done
    return 32 * (k0 - wb[0]) - n0, 32 * (k1 - wb[1]) - n1


@numba.njit(**NJIT)
def decode_alt_kernel(words, wb, bounds, out, esc, table, table_bits, max_length, first, count,
                      offset, symbols):
    """Decode alternating-runs segments into out (pre-filled with 0); lanes as above.

    `esc`, `table`, `first`, `count`, `offset` and `symbols` have one row per code (0: runs of
    0s, 1: runs of 1s). Returns the bits read from each stream, or an error code.
    """
    shift = _U64(64 - table_bits)
    two = bounds.shape[0] == 3
    acc0, n0, k0, pos0, par0, off0, done0 = _U64(0), 0, wb[0], bounds[0], 0, 0, False
    acc1, n1, k1, pos1, par1, off1, done1 = _U64(0), 0, wb[1], bounds[1], 0, 0, not two
    while not (done0 and done1):
        for lane in range(2):
            if lane == 0:
                acc, n, k, pos, par, off, done = acc0, n0, k0, pos0, par0, off0, done0
                kend, stop = wb[1], bounds[1]
            else:
                acc, n, k, pos, par, off, done = acc1, n1, k1, pos1, par1, off1, done1
                kend, stop = wb[2], bounds[-1]
            if not done:
                if n < 32:
                    if k >= kend:
                        return ERR_OVERRUN, 0
                    acc |= _U64(words[_U64(k)]) << _U64(32 - n)
                    k += 1
                    n += 32
                e = table[par, acc >> shift]
                if e != 0:
                    ln = np.int64(e & 31)
                    s = np.int64(e >> 5)
                else:
                    s, ln = long_symbol(acc, table_bits, max_length, first[par], count[par],
                                        offset[par], symbols[par])
                    if ln == 0:
                        return ERR_CODE, 0
                acc <<= _U64(ln)
                n -= ln
                is_esc = s == esc[par]
                r = s if is_esc else s + off
                if pos + r + (off if is_esc else 0) > stop:
                    return ERR_RUN, 0
                if par == 1:
                    # A loop, not a slice: Numba's slice set costs more on runs this short.
                    for i in range(_U64(pos), _U64(pos + r)):
                        out[i] = True
                pos += r
                if not is_esc:
                    done = pos == stop
                    par ^= 1
                    off = 1
            if lane == 0:
                acc0, n0, k0, pos0, par0, off0, done0 = acc, n, k, pos, par, off, done
            else:
                acc1, n1, k1, pos1, par1, off1, done1 = acc, n, k, pos, par, off, done
    return 32 * (k0 - wb[0]) - n0, 32 * (k1 - wb[1]) - n1


# ----------------------------------------------------------------------------------- streams


def _read_segments(reader: Reader) -> list[bytes]:
    n_seg = reader.u8("segment count")
    if n_seg not in (1, 2):
        raise FormatError(f"segment count {n_seg} is not 1 or 2")
    sizes = [reader.varint("segment payload length", reader.end) for _ in range(n_seg)]
    return [reader.take(size, "segment payload") for size in sizes]


def parse_stream(reader: Reader, n: int) -> tuple:
    """Read one stream's header and payloads (validated structure, nothing decoded yet).

    Returns ``(scheme,)`` for zeros / ones, ``(RAW, payload)``, ``(scheme, M, lengths,
    payloads, extra)`` for bytes and runs1 / runs0 (M = 0 for bytes), or ``(RUNS01, [(M0,
    lengths0), (M1, lengths1)], payloads)``.
    """
    scheme = reader.u8("scheme")
    if scheme in (ZEROS, ONES):
        return (scheme,)
    if scheme == RAW:
        return (scheme, reader.take((n + 7) // 8, "raw payload"))
    if scheme == BYTES:
        lengths = read_length_table(reader, 256)
        return (scheme, 0, lengths, _read_segments(reader), 0)
    if scheme in (RUNS0, RUNS1):
        extra = reader.u8("extra bits")
        if extra > MAX_EXTRA_BITS:
            raise FormatError(f"{extra} extra bits per run, more than {MAX_EXTRA_BITS}")
        m = reader.varint("runs alphabet size", MAX_RUN_SYMBOLS)
        if m < 2:
            raise FormatError(f"runs alphabet size {m} is below 2")
        lengths = read_length_table(reader, m)
        return (scheme, m, lengths, _read_segments(reader), extra)
    if scheme == RUNS01:
        codes = []
        for value in (0, 1):
            m = reader.varint(f"alphabet size of the runs of {value}s", MAX_RUN_SYMBOLS)
            if m < 2:
                raise FormatError(f"alphabet size {m} of the runs of {value}s is below 2")
            codes.append((m, read_length_table(reader, m)))
        return (scheme, codes, _read_segments(reader))
    raise FormatError(f"unknown mask scheme {scheme}")


def _check_ends(ends, payloads: list, what: str) -> None:
    if ends[0] < 0:
        check_end(ends[0], payloads[0], what)
    for end, payload in zip(ends, payloads):
        check_end(end, payload, what)


@numba.njit(**NJIT)
def lane_words(first, second, two):
    """Payload bytes (MSB-first streams) as the kernels read them, in one pass.

    `first` and, when `two`, `second` become native uint32 words back to back, each stream
    followed by two zero words (as `bitsub.codecs.huffman.stream_words` lays one out); returns
    them and where each stream's words start (and end).
    """
    sizes = np.zeros(2, dtype=np.int64)
    sizes[0] = (first.shape[0] + 3) // 4 + 2
    if two:
        sizes[1] = (second.shape[0] + 3) // 4 + 2
    words = np.empty(sizes[0] + sizes[1], dtype=np.uint32)
    wb = np.zeros(3, dtype=np.int64)
    wb[1] = sizes[0]
    wb[2] = sizes[0] + sizes[1]
    for lane in range(2 if two else 1):
        src = second if lane else first
        start = wb[lane]
        full = src.shape[0] // 4
        for i in range(full):
            j = 4 * i
            words[start + i] = (
                (np.uint32(src[j]) << np.uint32(24)) | (np.uint32(src[j + 1]) << np.uint32(16))
                | (np.uint32(src[j + 2]) << np.uint32(8)) | np.uint32(src[j + 3])
            )
        for i in range(full, wb[lane + 1] - start):
            w = np.uint32(0)
            for j in range(4):
                if 4 * i + j < src.shape[0]:
                    w |= np.uint32(src[4 * i + j]) << np.uint32(24 - 8 * j)
            words[start + i] = w
    return words, wb


def _lanes(payloads: list) -> tuple[np.ndarray, np.ndarray]:
    """The payloads' words back to back, and where each stream's words start (and end)."""
    first = np.frombuffer(payloads[0], dtype=np.uint8)
    two = len(payloads) == 2
    return lane_words(first, np.frombuffer(payloads[1], dtype=np.uint8) if two else first, two)


@numba.njit(**NJIT)
def alt_tables(lengths0, lengths1, max_table_bits):
    """Both codes' `decode_table` arrays stacked (row 0: runs of 0s), in one call.

    Returns (table, first, count, offset, symbols, table_bits, max_length): the longest code of
    either sets max_length, table_bits is min(max_length, max_table_bits).
    """
    max_length = 1
    for lengths in (lengths0, lengths1):
        for i in range(lengths.shape[0]):
            max_length = max(max_length, np.int64(lengths[i]))
    table_bits = min(max_length, max_table_bits)
    width = max(lengths0.shape[0], lengths1.shape[0])
    table = np.empty((2, 1 << table_bits), dtype=np.int32)
    first = np.empty((2, max_length + 1), dtype=np.int64)
    count = np.empty((2, max_length + 1), dtype=np.int64)
    offset = np.empty((2, max_length + 1), dtype=np.int64)
    symbols = np.zeros((2, width), dtype=np.int32)
    for par in range(2):
        t, f, c, o, s = decode_table_kernel(lengths1 if par else lengths0, table_bits, max_length)
        table[par] = t
        first[par] = f
        count[par] = c
        offset[par] = o
        symbols[par, : s.shape[0]] = s
    return table, first, count, offset, symbols, table_bits, max_length


def _decode_alt(parsed, n: int) -> np.ndarray:
    _, codes, payloads = parsed
    if not codes[0][1].any():
        raise FormatError("invalid code-length table: no run of 0s has a code")
    check_coverage(n, payloads, max(codes[0][0], codes[1][0]) - 1)
    table, first, count, offset, symbols, table_bits, max_length = alt_tables(
        codes[0][1], codes[1][1], TABLE_BITS
    )
    esc = np.array([codes[0][0] - 1, codes[1][0] - 1], dtype=np.int64)
    words, wb = _lanes(payloads)
    out = np.zeros(n, dtype=np.bool_)
    ends = decode_alt_kernel(
        words, wb, segment_bounds(n, len(payloads)), out, esc, table, table_bits, max_length,
        first, count, offset, symbols,
    )
    _check_ends(ends, payloads, "runs payload")
    return out


def _decode_runs(parsed, n: int) -> np.ndarray:
    scheme, m, lengths, payloads, extra = parsed
    # A full-size table even for short codes: more runs a look-up.
    table = decode_table(lengths, TABLE_BITS)
    words, wb = _lanes(payloads)
    value = scheme == RUNS1
    out = np.zeros(n, dtype=np.bool_) if value else np.ones(n, dtype=np.bool_)
    groups = run_groups(table[0], table[1], m - 1, extra)
    ends = decode_runs_kernel(
        words, wb, segment_bounds(n, len(payloads)), out, value, m - 1, extra, groups, *table,
    )
    _check_ends(ends, payloads, "runs payload")
    return out


def _decode_bytes(parsed, n: int) -> np.ndarray:
    payloads, lengths = parsed[3], parsed[2]
    words, wb = _lanes(payloads)
    n_bytes = (n + 7) // 8
    out = np.empty(n_bytes, dtype=np.uint64)
    bounds = segment_bounds(n_bytes, len(payloads))
    # Three symbols a look-up pay off where codes are short (mean length, weighting each code
    # by 2**-length, its probability under the code) and the stream long enough to amortize the
    # larger table; elsewhere they cost more than they save (measured; see the bench).
    longest = int(lengths.max())
    mean_length = float(np.dot(lengths, np.exp2(-lengths.astype(np.float64))))
    if n_bytes >= TRIPLES_MIN_BYTES and mean_length <= TRIPLES_MAX_MEAN_LENGTH:
        table = decode_table(lengths, min(TRIPLE_TABLE_BITS, longest))
        ends = decode_bytes_triples_kernel(
            words, wb, bounds, out, BYTE_BITS, byte_triples(table[0], table[1]), *table
        )
    else:
        ends = decode_bytes_kernel(words, wb, bounds, out, BYTE_BITS, *decode_table(lengths))
    _check_ends(ends, payloads, "bytes payload")
    bits = out.view(np.bool_)
    if bits[n:].any():
        raise FormatError("corrupt bytes payload: nonzero padding bits")
    return bits[:n]


def decode_stream(parsed: tuple, n: int) -> np.ndarray:
    """The n positions (1-D bool) of a stream parsed by `parse_stream` for n positions."""
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
        return _decode_alt(parsed, n)
    _, m, lengths, payloads, extra = parsed
    if not lengths.any():
        raise FormatError("invalid code-length table: no symbol has a code")
    # Every symbol takes at least one bit and covers at most 8 positions (bytes) or
    # (M-1) << extra (runs).
    check_coverage(n + len(payloads), payloads, 8 if scheme == BYTES else (m - 1) << extra)
    if scheme == BYTES:
        return _decode_bytes(parsed, n)
    return _decode_runs(parsed, n)

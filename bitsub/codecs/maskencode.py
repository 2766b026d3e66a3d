"""Mask stream encoder: the choice of scheme for one stream and the writers of each scheme.

`plan_stream` picks the smallest scheme for a 1-D bool stream (estimating the sizes, and
skipping scans that cannot pay off); `write_stream` writes it in the format described in
`bitsub.codecs.maskcodec`.
"""

from __future__ import annotations

import numba
import numpy as np

from bitsub.codecs.huffman import (
    MAX_CODE_LENGTH,
    canonical_codes,
    code_lengths,
    code_lengths_kernel,
    write_codes,
)
from bitsub.codecs.maskio import (
    length_table_bits,
    length_table_kernel,
    segment_bounds,
    segment_count,
    segment_payloads,
    varint,
    write_length_table,
)
from bitsub.codecs.maskscan import count_transitions, find_alt_runs, find_runs, scan_bytes
from bitsub.config import NJIT

__all__ = [
    "BYTES",
    "MAX_EXTRA_BITS",
    "MAX_RUN_SYMBOLS",
    "ONES",
    "RAW",
    "RUNS0",
    "RUNS01",
    "RUNS1",
    "SCHEME_NAMES",
    "ZEROS",
    "StreamPlan",
    "choose_run_code",
    "code_table",
    "plan_stream",
    "write_stream",
]

ZEROS, ONES, RAW, BYTES, RUNS1, RUNS0, RUNS01 = range(7)
SCHEME_NAMES = ("zeros", "ones", "raw", "bytes", "runs1", "runs0", "runs01")
# Largest runs alphabet (M); also the longest run one symbol covers is M - 1.
MAX_RUN_SYMBOLS = 4096
# Most low bits of a run sent as they are (runs1 / runs0).
MAX_EXTRA_BITS = 24
# A stream coded within this factor of n H(p) (its order-0 entropy) skips the runs scan; the
# size bar of the codec is 1.02 n H(p) + 64 bytes.
NEAR_ENTROPY = 1.02

_U64 = np.uint64


def code_table(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """One uint64 entry per symbol for the encoders: its code << 8 | its length."""
    return (codes.astype(np.uint64) << _U64(8)) | lengths.astype(np.uint64)


@numba.njit(**NJIT)
def encode_runs_kernel(runs, seg_runs, table, esc, extra, out, seg_bits):
    """Huffman-code the runs of every segment into `out` (uint32 words, MSB-first).

    ``table[s]`` is symbol s's code << 8 | its length (`code_table`). A run r is written as its
    high part q = r >> extra, as q // esc escape symbols (symbol esc) and the symbol q % esc,
    followed by its `extra` low bits as they are. Each segment's runs (ending at index
    seg_runs[j]) start on a fresh word; its bit count goes to seg_bits[j]. The bit buffer, its
    fill and the word index are unsigned, so Numba skips the negative-index wrap of every store
    (about half the loop's time).
    """
    acc = _U64(0)
    n_acc = _U64(0)
    k = _U64(0)
    esc_code = table[esc] >> _U64(8)
    esc_len = table[esc] & _U64(255)
    ex = _U64(extra)
    uesc = _U64(esc)
    low_mask = (_U64(1) << ex) - _U64(1)
    start = 0
    for seg in range(seg_runs.shape[0]):
        k0 = k
        stop = seg_runs[seg]
        for i in range(start, stop):
            r = _U64(runs[i])
            q = r >> ex
            while q >= uesc:
                q -= uesc
                acc = (acc << esc_len) | esc_code
                n_acc += esc_len
                # Branch-free flush: always store the top word, advance only when it is full.
                f = n_acc >> _U64(5)
                n_acc &= _U64(31)
                out[k] = np.uint32((acc >> n_acc) & _U64(0xFFFFFFFF))
                k += f
            e = table[q]
            ln = e & _U64(255)
            acc = (acc << ln) | (e >> _U64(8))
            n_acc += ln
            f = n_acc >> _U64(5)
            n_acc &= _U64(31)
            out[k] = np.uint32((acc >> n_acc) & _U64(0xFFFFFFFF))
            k += f
            if extra > 0:
                acc = (acc << ex) | (r & low_mask)
                n_acc += ex
                f = n_acc >> _U64(5)
                n_acc &= _U64(31)
                out[k] = np.uint32((acc >> n_acc) & _U64(0xFFFFFFFF))
                k += f
        start = stop
        seg_bits[seg] = np.int64(k - k0) * 32 + np.int64(n_acc)
        if n_acc > _U64(0):
            out[k] = np.uint32((acc << (_U64(32) - n_acc)) & _U64(0xFFFFFFFF))
            k += _U64(1)
            n_acc = _U64(0)
    return np.int64(k)


@numba.njit(**NJIT)
def encode_alt_kernel(values, seg_runs, table, esc, out, seg_bits):
    """Huffman-code alternating runs, ``table[parity]`` for the runs of 0s (0) and of 1s (1).

    Entries as in `encode_runs_kernel`; unsigned state as there.
    """
    acc = _U64(0)
    n_acc = _U64(0)
    k = _U64(0)
    start = 0
    for seg in range(seg_runs.shape[0]):
        k0 = k
        par = 0
        stop = seg_runs[seg]
        for i in range(start, stop):
            v = _U64(values[i])
            e = _U64(esc[par])
            while v >= e:
                v -= e
                ee = table[par, e]
                ln = ee & _U64(255)
                acc = (acc << ln) | (ee >> _U64(8))
                n_acc += ln
                f = n_acc >> _U64(5)
                n_acc &= _U64(31)
                out[k] = np.uint32((acc >> n_acc) & _U64(0xFFFFFFFF))
                k += f
            ee = table[par, v]
            ln = ee & _U64(255)
            acc = (acc << ln) | (ee >> _U64(8))
            n_acc += ln
            f = n_acc >> _U64(5)
            n_acc &= _U64(31)
            out[k] = np.uint32((acc >> n_acc) & _U64(0xFFFFFFFF))
            k += f
            par ^= 1
        start = stop
        seg_bits[seg] = np.int64(k - k0) * 32 + np.int64(n_acc)
        if n_acc > _U64(0):
            out[k] = np.uint32((acc << (_U64(32) - n_acc)) & _U64(0xFFFFFFFF))
            k += _U64(1)
            n_acc = _U64(0)
    return np.int64(k)


# ------------------------------------------------------------------------------ stream coder


@numba.njit(**NJIT)
def _run_symbol_counts(hist, big_runs, extra, m):
    """Symbol frequencies of the runs scheme: alphabet size m, high parts run >> extra.

    `hist[r]` counts the runs r < len(hist), `big_runs` lists the others.
    """
    esc = m - 1
    counts = np.zeros(m, dtype=np.int64)
    for r in range(hist.shape[0]):
        h = hist[r]
        if h:
            q = r >> extra
            counts[q % esc] += h
            counts[esc] += h * (q // esc)
    for j in range(big_runs.shape[0]):
        q = big_runs[j] >> extra
        counts[q % esc] += 1
        counts[esc] += q // esc
    return counts


def _huffman_cost(counts: np.ndarray) -> tuple[int, np.ndarray]:
    """(bytes of code-length table + payload bits rounded up, lengths) for the counts."""
    lengths = code_lengths(counts, MAX_CODE_LENGTH)
    payload_bits = int(np.dot(counts, lengths.astype(np.int64)))
    return (length_table_bits(lengths) + 7) // 8 + (payload_bits + 7) // 8, lengths


class StreamPlan:
    """A chosen scheme for one stream and what is needed to write it."""

    def __init__(self, scheme: int, size: int, **kw) -> None:
        self.scheme = scheme
        self.size = size
        self.__dict__.update(kw)


@numba.njit(**NJIT)
def _estimate_run_codes(hist, big_runs, extras, sizes):
    """Estimated bytes of the runs code for each (extras[i], sizes[i]) (see `choose_run_code`).

    Code lengths are estimated as -log2 of the symbol frequencies; the table as those lengths'
    delta code. Fewer symbols decode faster: the estimate adds a byte per 2048 symbols.
    """
    out = np.empty(extras.shape[0])
    n_runs = big_runs.shape[0]
    # The run values that occur, once (most of a long histogram is empty).
    used = np.empty(hist.shape[0], dtype=np.int64)
    n_used = 0
    for r in range(hist.shape[0]):
        n_runs += hist[r]
        if hist[r]:
            used[n_used] = r
            n_used += 1
    for i in range(extras.shape[0]):
        extra = extras[i]
        m = sizes[i]
        esc = m - 1
        counts = np.zeros(m, dtype=np.int64)
        for t in range(n_used):
            r = used[t]
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


def choose_run_code(hist: np.ndarray, big_runs: np.ndarray, extra_bits=(0,)):
    """Best runs code: (size in bytes, M, lengths, counts, extra bits).

    `hist[v]` counts the run values v < len(hist); `big_runs` lists the others. A run is coded
    as its high part (run >> extra, by a Huffman code of M symbols, the last an escape) and its
    `extra` low bits as they are; the choice is over M and over `extra_bits`. The size counts
    the code-length table, the payload bits and the M varint.
    """
    extras = np.array(sorted(set(extra_bits)), dtype=np.int64)
    size, m, lengths, counts, extra = _choose_run_code_kernel(
        np.ascontiguousarray(hist, dtype=np.int64), np.ascontiguousarray(big_runs, dtype=np.int64),
        extras,
    )
    return int(size), int(m), lengths, counts, int(extra)


@numba.njit(**NJIT)
def _choose_run_code_kernel(hist, big_runs, extra_bits):
    """`choose_run_code` in one call; `extra_bits` sorted, without repeats."""
    used = hist.shape[0]
    while used > 0 and hist[used - 1] == 0:
        used -= 1
    hist = hist[:used]
    n_runs = big_runs.shape[0]
    for r in range(used):
        n_runs += hist[r]
    max_run = used - 1
    for j in range(big_runs.shape[0]):
        max_run = max(max_run, big_runs[j])
    # Candidates: for each extra, M = 4, 8, 16, ... below max_q + 2, and min(max_q + 2, MAX).
    extras = np.empty(extra_bits.shape[0] * 16, dtype=np.int64)
    sizes = np.empty(extra_bits.shape[0] * 16, dtype=np.int64)
    k = 0
    for e in range(extra_bits.shape[0]):
        extra = extra_bits[e]
        max_q = max_run >> extra
        last = min(max_q + 2, MAX_RUN_SYMBOLS)
        m = 4
        while m <= MAX_RUN_SYMBOLS and m < max_q + 2:
            if m != last:
                extras[k] = extra
                sizes[k] = m
                k += 1
            m *= 2
        extras[k] = extra
        sizes[k] = last
        k += 1
    extras = extras[:k]
    sizes = sizes[:k]
    estimates = _estimate_run_codes(hist, big_runs, extras, sizes)
    # Build the exact code for the two best estimates only (stable order on ties).
    top = np.argsort(estimates, kind="mergesort")[:2]
    i, size, lengths, counts = _exact_run_code(hist, big_runs, extras[top], sizes[top], n_runs)
    return size, sizes[top[i]], lengths, counts, extras[top[i]]


@numba.njit(**NJIT)
def _exact_run_code(hist, big_runs, extras, sizes, n_runs):
    """The best of the runs codes (extras[i], sizes[i]) by exact size (ties: the first).

    Returns (i, size in bytes, lengths, counts). The size counts the code-length table, the
    payload bits, the low bits and the M varint; the score adds a byte per 2048 symbols.
    """
    best = 0
    best_score = np.inf
    best_size = 0
    best_lengths = np.zeros(0, dtype=np.uint8)
    best_counts = np.zeros(0, dtype=np.int64)
    none = np.zeros(0, dtype=np.uint8)
    for i in range(extras.shape[0]):
        extra = extras[i]
        m = sizes[i]
        counts = _run_symbol_counts(hist, big_runs, extra, m)
        lengths = code_lengths_kernel(counts, MAX_CODE_LENGTH)
        payload = 0
        total = 0
        for j in range(m):
            payload += counts[j] * np.int64(lengths[j])
            total += counts[j]
        table = length_table_kernel(lengths, none)
        varint_bytes = 1
        v = m >> 7
        while v:
            varint_bytes += 1
            v >>= 7
        size = (table + 7) // 8 + (payload + 7) // 8 + varint_bytes + (extra * n_runs + 7) // 8
        score = size + total / 2048
        if score < best_score:
            best, best_score, best_size = i, score, size
            best_lengths, best_counts = lengths, counts
    return best, best_size, best_lengths, best_counts


def plan_stream(bits: np.ndarray) -> StreamPlan:
    """Pick the smallest scheme for a 1-D bool stream; `size` is its estimated byte count."""
    n = bits.size
    packed = np.packbits(bits, bitorder="little")
    hist, ones = scan_bytes(packed)
    if ones == 0:
        return StreamPlan(ZEROS, 1)
    if ones == n:
        return StreamPlan(ONES, 1)
    best = StreamPlan(RAW, 1 + packed.size, packed=packed)
    n_seg = segment_count(packed.size)
    size, lengths = _huffman_cost(hist)
    size += 2 + 3 * n_seg
    if size < best.size:
        best = StreamPlan(BYTES, size, packed=packed, lengths=lengths, n_seg=n_seg)
    minority = min(ones, n - ones)
    p = minority / n
    h_bits = -n * (p * np.log2(p) + (1 - p) * np.log2(1 - p))
    if packed.size % 8:
        words = np.zeros((packed.size + 7) // 8 * 8, dtype=np.uint8)
        words[: packed.size] = packed
    else:
        words = packed  # whole words already (n a multiple of 64): no copy
    words = words.view("<u8")
    n_seg = segment_count(n)
    bounds = segment_bounds(n, n_seg)
    # Alternating runs pay off on clustered masks: far fewer changes of value than an i.i.d.
    # mask of the same density would have.
    transitions = count_transitions(words, n)
    if transitions < n * p * (1 - p):
        values, ahist, big, n_big, seg_runs = find_alt_runs(
            words, bounds, transitions, MAX_RUN_SYMBOLS + 1
        )
        codes = [
            choose_run_code(ahist[par, :-1], big[par, : n_big[par]])[:4] for par in (0, 1)
        ]
        size = codes[0][0] + codes[1][0] + 2 + 3 * n_seg
        if size < best.size:
            best = StreamPlan(RUNS01, size, values=values, seg_runs=seg_runs, codes=codes)
    # Runs of the majority pay off on skewed densities and on structure beyond 8-bit blocks.
    # Where the best code so far is within NEAR_ENTROPY of n H(p) and shows no structure
    # (not below 0.97 n H(p)), runs could save at most that margin: skip their scan, which
    # costs more than all the rest at densities 0.1-0.3. They code each minority bit with at
    # least one bit: skip them too when that is already too much.
    near = 0.97 * h_bits <= 8 * best.size <= NEAR_ENTROPY * h_bits
    skewed = p <= 0.3 or 8 * best.size < 0.97 * h_bits
    if skewed and not near and (minority + n_seg) // 8 < best.size:
        invert = ones > n - ones
        runs, rhist, seg_runs, big_runs = find_runs(
            words, n, invert, bounds[1:], minority, MAX_RUN_SYMBOLS + 1
        )
        # Low bits sent as they are suit long runs (mean 16 and more): try up to log2 of the
        # mean run.
        top = int(np.log2(max((n - minority) / (minority + n_seg), 1.0)))
        extra_bits = {0, *range(max(top - 3, 1), min(top, MAX_EXTRA_BITS) + 1)} if top >= 4 else {0}
        size, m, lengths, counts, extra = choose_run_code(rhist[:-1], big_runs, extra_bits)
        size += 3 + 3 * n_seg
        if size < best.size:
            best = StreamPlan(
                RUNS0 if invert else RUNS1, size, runs=runs, seg_runs=seg_runs, m=m,
                lengths=lengths, counts=counts, extra=extra,
            )
    return best


def write_stream(plan: StreamPlan) -> bytes:
    """The bytes of one stream (scheme byte onwards) as `plan_stream` planned it."""
    scheme = plan.scheme
    out = [bytes([scheme])]
    if scheme == RAW:
        out.append(plan.packed.tobytes())
    elif scheme == BYTES:
        out.append(write_length_table(plan.lengths))
        codes = canonical_codes(plan.lengths)
        lengths8 = plan.lengths.astype(np.uint8)
        bounds = segment_bounds(plan.packed.size, plan.n_seg)
        out.append(bytes([plan.n_seg]))
        payloads = []
        for j in range(plan.n_seg):
            seg = plan.packed[bounds[j] : bounds[j + 1]]
            words = np.zeros(seg.size * MAX_CODE_LENGTH // 32 + 2, dtype=np.uint32)
            n_bits = write_codes(seg, codes, lengths8, words)
            payloads.append(words.astype(">u4").tobytes()[: (n_bits + 7) // 8])
        out += [varint(len(p)) for p in payloads] + payloads
    elif scheme in (RUNS0, RUNS1):
        out.append(bytes([plan.extra]))
        out.append(varint(plan.m))
        out.append(write_length_table(plan.lengths))
        table = code_table(canonical_codes(plan.lengths), plan.lengths)
        n_seg = plan.seg_runs.size
        out.append(bytes([n_seg]))
        total_bits = int(np.dot(plan.counts, plan.lengths.astype(np.int64)))
        total_bits += plan.extra * plan.runs.size
        words = np.zeros(total_bits // 32 + n_seg + 2, dtype=np.uint32)
        seg_bits = np.zeros(n_seg, dtype=np.int64)
        encode_runs_kernel(plan.runs, plan.seg_runs, table, plan.m - 1, plan.extra, words, seg_bits)
        payloads = segment_payloads(words, seg_bits)
        out += [varint(len(p)) for p in payloads] + payloads
    elif scheme == RUNS01:
        width = max(plan.codes[0][1], plan.codes[1][1])
        table = np.zeros((2, width), dtype=np.uint64)
        total_bits = 0
        for par, (_, m, lengths, counts) in enumerate(plan.codes):
            out.append(varint(m))
            out.append(write_length_table(lengths))
            table[par, :m] = code_table(canonical_codes(lengths), lengths)
            total_bits += int(np.dot(counts, lengths.astype(np.int64)))
        n_seg = plan.seg_runs.size
        out.append(bytes([n_seg]))
        words = np.zeros(total_bits // 32 + n_seg + 2, dtype=np.uint32)
        seg_bits = np.zeros(n_seg, dtype=np.int64)
        esc = np.array([plan.codes[0][1] - 1, plan.codes[1][1] - 1], dtype=np.int64)
        encode_alt_kernel(plan.values, plan.seg_runs, table, esc, words, seg_bits)
        payloads = segment_payloads(words, seg_bits)
        out += [varint(len(p)) for p in payloads] + payloads
    return b"".join(out)

"""Numba scans of a packed mask stream: byte histogram, runs, alternating runs, transitions.

They feed the scheme choice and the encoders of `bitsub.codecs.maskencode`. Streams are packed
little-endian (position i is bit i % 64 of word i // 64, as ``np.packbits(bitorder="little")``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from bitsub.config import NJIT

if numba.config.DISABLE_JIT:  # the intrinsic only exists compiled

    def trailing_zeros(x):  # noqa: D103
        return (int(x) & -int(x)).bit_length() - 1


__all__ = ["count_transitions", "find_alt_runs", "find_runs", "run_histogram", "scan_bytes"]

_U64 = np.uint64


@numba.njit(**NJIT)
def scan_bytes(packed):
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
def run_histogram(runs, hist_size):
    """hist[r] counts the runs r < hist_size - 1, hist[-1] the longer ones, listed in `big`.

    Returns (hist, big): four sub-histograms, so that equal runs in a row do not serialize on
    one counter; `big` (int64) keeps the long runs in stream order.
    """
    limit = hist_size - 1
    sub = np.zeros((4, hist_size), dtype=np.int64)
    n = runs.shape[0]
    n4 = n - n % 4
    for i in range(0, n4, 4):
        r0 = min(np.int64(runs[i]), limit)
        r1 = min(np.int64(runs[i + 1]), limit)
        r2 = min(np.int64(runs[i + 2]), limit)
        r3 = min(np.int64(runs[i + 3]), limit)
        sub[0, r0] += 1
        sub[1, r1] += 1
        sub[2, r2] += 1
        sub[3, r3] += 1
    for i in range(n4, n):
        sub[0, min(np.int64(runs[i]), limit)] += 1
    hist = np.zeros(hist_size, dtype=np.int64)
    for b in range(hist_size):
        hist[b] = sub[0, b] + sub[1, b] + sub[2, b] + sub[3, b]
    n_big = hist[limit]
    big = np.empty(n_big, dtype=np.int64)
    if n_big:
        j = 0
        for i in range(n):
            if runs[i] >= limit:
                big[j] = runs[i]
                j += 1
    return hist, big


@numba.njit(**NJIT)
def find_runs(words, n, invert, seg_ends, n_marks, hist_size):
    """The runs of the runs1 / runs0 schemes, their histogram and their count per segment.

    `words` hold the stream packed little-endian (position i is bit i % 64 of word i // 64); the
    minority value is 1 (0 when `invert`), `n_marks` its count. Returns (runs, hist, seg_runs,
    big) with hist and big as `run_histogram` gives them. Positions and the run index are
    unsigned, so Numba skips the negative-index wrap of the stores.
    """
    n_seg = seg_ends.shape[0]
    runs = np.empty(n_marks + n_seg, dtype=np.uint32)
    seg_runs = np.zeros(n_seg, dtype=np.int64)
    k = _U64(0)
    seg = 0
    seg_end = _U64(seg_ends[0])
    after = _U64(0)  # the position after the last mark
    n_words = words.shape[0]
    flip = ~_U64(0) if invert else _U64(0)
    tail = _U64(n & 63)
    for wi in range(n_words):
        w = words[wi] ^ flip
        if wi == n_words - 1 and tail != _U64(0):
            w &= (_U64(1) << tail) - _U64(1)
        base = _U64(wi) << _U64(6)
        while w != _U64(0):
            p = base + _U64(trailing_zeros(w))
            w &= w - _U64(1)
            while p >= seg_end:
                runs[k] = np.uint32(seg_end - after)
                k += _U64(1)
                seg_runs[seg] = np.int64(k)
                after = seg_end
                seg += 1
                seg_end = _U64(seg_ends[seg])
            runs[k] = np.uint32(p - after)
            k += _U64(1)
            after = p + _U64(1)
    while seg < n_seg:
        seg_end = _U64(seg_ends[seg])
        runs[k] = np.uint32(seg_end - after)
        k += _U64(1)
        seg_runs[seg] = np.int64(k)
        after = seg_end
        seg += 1
    runs = runs[: np.int64(k)]
    hist, big = run_histogram(runs, hist_size)
    return runs, hist, seg_runs, big


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
def count_transitions(words, n):
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
def find_alt_runs(words, bounds, n_transitions, hist_size):
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

"""Rebuilding a bank's words from its tasks' stored fields, one pass per layer.

What a file stores per task and layer (:mod:`bitsub.storage.hdf5`) is a write mask and the codes
of the written positions, packed at the task's bit-width. A bank's word at position i is the
fields of the bank's tasks that wrote i, in prefix order, from the most significant bit down:
``[prefix 1][code][prefix 2][code]...``. :func:`build_words` writes every word of one bank and
layer in one pass over the positions, reading each task's codes as it goes (instead of one pass
per task through :meth:`bitsub.model.packed.PackedModel.add_task`), and in the same pass checks
every field (a code below its codebook's size, room left in the word) and sums the words' hash
(:func:`bitsub.model.readrule.words_hash`), so the words are verified as they are made.

The positions are walked in chunks of :data:`CHUNK_BYTES` write-mask bytes, built in scratch
arrays that stay in cache: per task, its codes of the chunk are unpacked in one run; where every
task so far wrote all or none of the chunk (the regular layout) a task's fields go in with one
shift for the whole chunk, elsewhere with branch-free loops per position (or visiting only the
written positions when a task wrote few); the chunk's words are then copied to the output (its
first touch) and hashed from the scratch. Large layers are split over the engine threads.
:func:`gather_codes` (save) is the inverse, chunk by chunk the same way.

The caller gives one byte buffer holding every task's code stream (``pack_bits`` order, most
significant bit first) with at least :data:`SLACK` readable bytes after each stream's end; the
bits read past a stream are never used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np

from bitsub.codecs.bitfield import pack_bits, packed_size
from bitsub.config import NJIT
from bitsub.model.placement import RAW_BITS, Bank, PreparedLayer
from bitsub.model.readrule import sum_mix
from bitsub.threads import engine_threads, split

__all__ = ["SLACK", "build_banks", "build_words", "gather_codes", "popcount"]

SLACK = 8  # readable bytes needed after the end of each code stream
PARALLEL_MIN_BYTES = 1 << 13  # write-mask bytes per part below which one thread does it all

_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], np.int64)


CHUNK_BYTES = 512  # write-mask bytes (4096 positions) per chunk: the scratch stays in cache


@numba.njit(**NJIT)
def _unpack(data, bitpos, count, b, out):
    # out[0 : count] = the count codes of b bits (1..16, or 32: big-endian uint32) that start
    # at bit bitpos of data, most significant bit first; reads at most 2 bytes past the last
    # code's byte (the caller's SLACK)
    o = bitpos >> 3
    r = bitpos & 7
    if b == 32:  # raw fields, byte-aligned (every stream starts on a byte)
        for k in range(count):
            j = o + 4 * k
            out[k] = ((np.uint32(data[j]) << np.uint32(24))
                      | (np.uint32(data[j + 1]) << np.uint32(16))
                      | (np.uint32(data[j + 2]) << np.uint32(8)) | np.uint32(data[j + 3]))
    elif b == 8 and r == 0:
        for k in range(count):
            out[k] = data[o + k]
    elif b == 4 and r == 0:
        for k in range(count >> 1):
            x = data[o + k]
            out[2 * k] = x >> 4
            out[2 * k + 1] = x & 15
        if count & 1:
            out[count - 1] = data[o + (count >> 1)] >> 4
    elif b == 2 and r == 0:
        for k in range(count >> 2):
            x = data[o + k]
            out[4 * k] = x >> 6
            out[4 * k + 1] = (x >> 4) & 3
            out[4 * k + 2] = (x >> 2) & 3
            out[4 * k + 3] = x & 3
        for k in range(count & ~3, count):
            out[k] = (data[o + (k >> 2)] >> (6 - 2 * (k & 3))) & 3
    elif b == 1 and r == 0:
        for k in range(count):
            out[k] = (data[o + (k >> 3)] >> (7 - (k & 7))) & 1
    elif b <= 7:
        # eight codes (b bytes) per big-endian 8-byte load
        cmask = (np.uint64(1) << np.uint64(b)) - np.uint64(1)
        groups = count >> 3
        for g in range(groups):
            j = np.uint64(o + g * b)  # unsigned: the eight loads fuse into one
            v = np.uint64(0)
            for k in range(8):
                v = (v << np.uint64(8)) | np.uint64(data[j + np.uint64(k)])
            v <<= np.uint64(r)
            for k in range(8):
                out[8 * g + k] = (v >> np.uint64(64 - (k + 1) * b)) & cmask
        cmask2 = (1 << b) - 1
        for k in range(8 * groups, count):
            bp = bitpos + k * b
            j2 = bp >> 3
            v2 = (np.int64(data[j2]) << 8) | np.int64(data[j2 + 1])
            out[k] = (v2 >> (16 - (bp & 7) - b)) & cmask2
    else:
        cmask = (1 << b) - 1
        for k in range(count):
            bp = bitpos + k * b
            j = bp >> 3
            v = (np.int64(data[j]) << 16) | (np.int64(data[j + 1]) << 8) | np.int64(data[j + 2])
            out[k] = (v >> (24 - (bp & 7) - b)) & cmask


@numba.njit(**NJIT)
def _expand(wrow, c0, m, dense, w, out):
    # Positions 8 * c0 .. 8 * c0 + m - 1: w[i] = 1 where the task wrote (bit i of the packed
    # row wrow from byte c0), out[i] = its next code from dense (in order), else any value;
    # dense has one readable element after the codes, w room for m rounded up to 8
    for q in range((m + 7) >> 3):
        x = wrow[c0 + q]
        for k in range(8):
            w[8 * q + k] = (x >> (7 - k)) & 1
    j = 0
    for i in range(m):
        out[i] = dense[j]
        j += w[i]


@numba.njit(**NJIT)
def _add_fields(acc, uacc, w, spread, m, room, width, head):
    # One task's fields at the positions i < m where w[i] is 1: code spread[i] under prefix
    # head, below the uacc[i] bits used so far (room: word bits minus prefix and code bits);
    # returns the fields that do not fit (branch-free: the loop vectorizes)
    full = 0
    for i in range(m):
        s = room - uacc[i]
        wi = np.int64(w[i])
        full += wi & np.int64(s < 0)
        keep = np.uint64(0) - np.uint64(wi)
        acc[i] |= ((head | np.uint64(spread[i])) << np.uint64(max(s, 0))) & keep
        uacc[i] += width * wi
    return full


@numba.njit(**NJIT)
def _build_kernel(words, used, writes, data, bitpos0, bits, limits, prefix_bits, word_bits,
                  q0, q1, popc, bad_by_task):
    # Words and used bits of positions 8 * q0 .. 8 * q1 (clipped to words.size). Task p
    # (prefix p + 1) wrote where bit i of writes[p] is set; its codes start at bit bitpos0[p]
    # of data. Returns (hash of the words, fields without room) of the range; bad_by_task[p]
    # counts task p's codes >= limits[p].
    # By chunks of CHUNK_BYTES mask bytes, built in scratch arrays that stay in cache: per task
    # its codes of the chunk are unpacked in one run; where every task so far wrote all or none
    # of the chunk's positions (the regular layout), all of them have the same used bits and
    # a task's fields go in with one shift; elsewhere the codes are spread over the written
    # positions and each position keeps its own used bits (branch-free loops). The chunk's
    # words are then copied out (first touch of the output) and hashed from the scratch.
    n = words.size
    n_tasks = writes.shape[0]
    cpos = 8 * CHUNK_BYTES
    acc = np.empty(cpos, words.dtype)
    uacc = np.empty(cpos, np.int64)
    dense = np.zeros(cpos + 1, np.uint32)
    spread = np.empty(cpos, np.uint32)
    w = np.empty(cpos, np.uint8)
    bitpos = bitpos0.copy()
    step = np.int64(prefix_bits)
    top = np.int64(word_bits - prefix_bits)
    h = np.uint64(0)
    full = 0
    for c0 in range(q0, q1, CHUNK_BYTES):
        c1 = min(c0 + CHUNK_BYTES, q1)
        i0 = 8 * c0
        m = min(8 * c1, n) - i0
        u = np.int64(0)
        uniform = True
        started = False
        for p in range(n_tasks):
            cnt = np.int64(0)
            for q in range(c0, c1):
                cnt += popc[writes[p, q]]
            if cnt == 0:
                continue
            b = np.int64(bits[p])
            _unpack(data, bitpos[p], cnt, b, dense)
            bitpos[p] += cnt * b
            limit = np.uint32(min(limits[p], 0xFFFFFFFF))
            if limits[p] < (np.int64(1) << b):
                bad = 0
                for k in range(cnt):
                    bad += np.int64(dense[k] >= limit)
                bad_by_task[p] += bad
            head = np.uint64(p + 1) << np.uint64(b)
            if uniform and cnt == m:
                s = top - u - b
                if s < 0:
                    full += m
                sh = np.uint64(max(s, 0))
                if started:
                    for i in range(m):
                        acc[i] |= (head | np.uint64(dense[i])) << sh
                else:
                    for i in range(m):
                        acc[i] = (head | np.uint64(dense[i])) << sh
                    started = True
                u += step + b
                continue
            if not started:
                acc[:m] = 0
                started = True
            if uniform:
                uniform = False
                uacc[:m] = u
            if 4 * cnt < m:  # few fields: visit only the written positions
                j = 0
                for q in range(c0, c1):
                    x = writes[p, q]
                    if x == 0:
                        continue
                    for k in range(8):
                        if (x >> (7 - k)) & 1:
                            i = 8 * (q - c0) + k
                            s = top - uacc[i] - b
                            full += np.int64(s < 0)
                            acc[i] |= (head | np.uint64(dense[j])) << np.uint64(max(s, 0))
                            uacc[i] += step + b
                            j += 1
                continue
            _expand(writes[p], c0, m, dense, w, spread)
            full += _add_fields(acc, uacc, w, spread, m, top - b, step + b, head)
        if not started:
            acc[:m] = 0
        words[i0 : i0 + m] = acc[:m]
        if uniform:
            used[i0 : i0 + m] = u
        else:
            used[i0 : i0 + m] = uacc[:m]
        h += sum_mix(acc[:m], i0)
    return h, full


@numba.njit(**NJIT)
def _pack_run(out, dense, cnt, b, p, pos, acc, nacc, side, n_side):
    # Append dense[0 : cnt] at b bits to task p's stream: full bytes go to out[pos[p]], ...;
    # the first byte this part emits goes to side instead (it may hold an earlier part's bits)
    k = 0
    if n_side[p] == 0:  # the first byte is not yet out: code by code until it is
        while k < cnt and n_side[p] == 0:
            a = (acc[p] << np.uint64(b)) | np.uint64(dense[k])
            na = nacc[p] + b
            k += 1
            while na >= 8:
                na -= 8
                byte = np.uint8((a >> np.uint64(na)) & np.uint64(0xFF))
                if n_side[p] == 0:
                    side[p, 0, 0] = pos[p]
                    side[p, 0, 1] = byte
                    n_side[p] = 1
                else:
                    out[pos[p]] = byte
                pos[p] += 1
            acc[p] = a
            nacc[p] = na
    o = pos[p]
    if nacc[p] == 0 and b == 4:
        half = (cnt - k) >> 1
        for j in range(half):
            out[o + j] = np.uint8((dense[k + 2 * j] << 4) | dense[k + 2 * j + 1])
        k += 2 * half
        pos[p] = o + half
    elif nacc[p] == 0 and b == 8:
        for j in range(cnt - k):
            out[o + j] = np.uint8(dense[k + j])
        pos[p] = o + cnt - k
        k = cnt
    a = acc[p]
    na = nacc[p]
    o = pos[p]
    ub = np.uint64(b)
    for j in range(k, cnt):
        a = (a << ub) | np.uint64(dense[j])
        na += b
        while na >= 8:
            na -= 8
            out[o] = np.uint8((a >> np.uint64(na)) & np.uint64(0xFF))
            o += 1
    acc[p] = a
    nacc[p] = na
    pos[p] = o


@numba.njit(**NJIT)
def _gather_kernel(words, writes, bits, prefix_bits, word_bits, q0, q1, popc, out, pos, side):
    # The inverse of _build_kernel over positions 8 * q0 .. 8 * q1: task p's codes of the range
    # are packed into out from byte pos[p] (its bits before the range: side[p, 0] is the first
    # byte this part emits, side[p, 1] its last, partial one, each (index, value), index -1 for
    # none; the caller merges them). Returns the number of fields whose prefix is not their
    # task's (0 for words built by add_task).
    n = words.size
    n_tasks = writes.shape[0]
    cpos = 8 * CHUNK_BYTES
    uacc = np.empty(cpos, np.int64)
    dense = np.empty(cpos + 1, np.uint32)
    w = np.empty(cpos, np.uint8)
    acc = np.zeros(n_tasks, np.uint64)
    nacc = np.zeros(n_tasks, np.int64)
    n_side = np.zeros(n_tasks, np.int64)
    for p in range(n_tasks):
        nacc[p] = pos[p] & 7  # bits of the first byte that an earlier part holds
        pos[p] >>= 3
        side[p, 0, 0] = -1
        side[p, 1, 0] = -1
    step = np.int64(prefix_bits)
    top = np.int64(word_bits - prefix_bits)
    pmask = (np.uint64(1) << np.uint64(prefix_bits)) - np.uint64(1)
    wrong = 0
    for c0 in range(q0, q1, CHUNK_BYTES):
        c1 = min(c0 + CHUNK_BYTES, q1)
        i0 = 8 * c0
        m = min(8 * c1, n) - i0
        u = np.int64(0)
        uniform = True
        for p in range(n_tasks):
            cnt = np.int64(0)
            for q in range(c0, c1):
                cnt += popc[writes[p, q]]
            if cnt == 0:
                continue
            b = np.int64(bits[p])
            cmask = (np.uint64(1) << np.uint64(b)) - np.uint64(1)
            head = np.uint64(p + 1)
            if uniform and cnt == m:
                s = top - u - b
                if s < 0:
                    return np.int64(m)
                sh = np.uint64(s)
                shp = np.uint64(s + b)
                bad = 0
                for i in range(m):
                    v = np.uint64(words[i0 + i])
                    dense[i] = (v >> sh) & cmask
                    bad += np.int64(((v >> shp) & pmask) != head)
                wrong += bad
                u += step + b
            else:
                if uniform:
                    uniform = False
                    uacc[:m] = u
                if 4 * cnt < m:  # few fields: visit only the written positions
                    j = 0
                    bad = 0
                    for q in range(c0, c1):
                        x = writes[p, q]
                        if x == 0:
                            continue
                        for k in range(8):
                            if (x >> (7 - k)) & 1:
                                i = 8 * (q - c0) + k
                                s = top - uacc[i] - b
                                v = np.uint64(words[i0 + i])
                                sh = np.uint64(max(s, 0))
                                dense[j] = (v >> sh) & cmask
                                bad += np.int64((((v >> (sh + np.uint64(b))) & pmask) != head)
                                                | (s < 0))
                                j += 1
                                uacc[i] += step + b
                    wrong += bad
                    _pack_run(out, dense, cnt, b, p, pos, acc, nacc, side, n_side)
                    continue
                for q in range((m + 7) >> 3):
                    x = writes[p, c0 + q]
                    for k in range(8):
                        w[8 * q + k] = (x >> (7 - k)) & 1
                j = 0
                bad = 0
                for i in range(m):
                    s = top - uacc[i] - b
                    wi = np.int64(w[i])
                    v = np.uint64(words[i0 + i])
                    sh = np.uint64(max(s, 0))
                    dense[j] = (v >> sh) & cmask
                    bad += wi & np.int64((((v >> (sh + np.uint64(b))) & pmask) != head)
                                         | (s < 0))
                    j += wi
                    uacc[i] += (step + b) * wi
                wrong += bad
            _pack_run(out, dense, cnt, b, p, pos, acc, nacc, side, n_side)
    for p in range(n_tasks):
        if nacc[p] > 0:
            side[p, 1, 0] = pos[p]
            side[p, 1, 1] = np.int64((acc[p] << np.uint64(8 - nacc[p])) & np.uint64(0xFF))
    return wrong


def gather_codes(words: np.ndarray, writes: np.ndarray, bits: Sequence[int],
                 prefix_bits: int, word_bits: int) -> list[np.ndarray]:
    """Every task's codes of one bank and layer, packed: the inverse of :func:`build_words`.

    ``writes``: as for :func:`build_words` (row p: the packed write mask of the task with
    prefix p + 1); ``bits``: per task, its bit-width (any value for a task writing nothing).
    Entry p is ``pack_bits`` of task p's codes in position order at ``bits[p]`` bits (raw
    fields: big-endian uint32), gathered from the words in one pass split over the engine
    threads. Raises RuntimeError if a field's prefix is not its task's (words not built by
    ``add_task``: cannot happen).
    """
    n_tasks, n_bytes = writes.shape
    b = np.asarray(bits, np.int64)
    counts = np.bitwise_count(writes).sum(axis=1, dtype=np.int64)
    sizes = (counts * b + 7) // 8
    offsets = np.zeros(n_tasks + 1, np.int64)
    offsets[1:] = np.cumsum(sizes)
    out = np.empty(int(offsets[-1]), np.uint8)
    k = engine_threads() if n_bytes >= 2 * PARALLEL_MIN_BYTES else 1
    cuts = [j * n_bytes // k for j in range(k)] + [n_bytes]
    parts = []
    for q0, q1 in zip(cuts, cuts[1:]):
        before = np.bitwise_count(writes[:, :q0]).sum(axis=1, dtype=np.int64)
        parts.append((words, writes, b, prefix_bits, word_bits, q0, q1, _POPCOUNT, out,
                      8 * offsets[:-1] + before * b, np.zeros((n_tasks, 2, 2), np.int64)))
    wrong = sum(int(x) for x in split(_gather_kernel, parts))
    if wrong:
        raise RuntimeError(f"{wrong} fields of the words do not carry their task's prefix")
    edges = [(int(i), int(v)) for part in parts for i, v in part[-1].reshape(-1, 2) if i >= 0]
    for i, _ in edges:
        out[i] = 0
    for i, v in edges:
        out[i] |= v
    return [out[offsets[p] : offsets[p + 1]] for p in range(n_tasks)]


def build_words(writes: np.ndarray, data: np.ndarray, starts: Sequence[int],
                bits: Sequence[int], limits: Sequence[int], prefix_bits: int, word_bits: int,
                n_positions: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, int]:
    """One bank's words of one layer, from its tasks' packed write masks and code streams.

    Parameters
    ----------
    writes : ndarray of uint8, (tasks, ceil(n_positions / 8))
        Row p: ``np.packbits`` of the flat write mask of the task with prefix p + 1 (pad bits
        zero). Rows of tasks that write nothing are all zero.
    data : ndarray of uint8, 1-D, writable
        Holds every task's codes: task p's ``popcount(writes[p])`` codes of ``bits[p]`` bits
        start at byte ``starts[p]``, most significant bit first, and the stream is followed by at
        least :data:`SLACK` bytes of ``data`` (the caller checks both).
    bits, limits : per task
        Bit-width (1..16, or 32 for raw fields as big-endian uint32) and the bound its codes must
        stay below (the codebook's size; ``2**32`` for no bound).

    Returns
    -------
    (words, used, hash, bad, full)
        The word array (uint32 or uint64), the bits used per word (uint8), their
        :func:`bitsub.model.readrule.words_hash`, per task the number of codes at or above its
        bound, and the number of fields that did not fit their word (all 0 for valid input).
    """
    n_bytes = writes.shape[1]
    n_tasks = writes.shape[0]
    dtype = np.uint32 if word_bits == 32 else np.uint64
    words = np.empty(n_positions, dtype)
    used = np.empty(n_positions, np.uint8)
    bitpos = np.array([8 * s for s in starts], np.int64)
    b = np.asarray(bits, np.int64)
    lim = np.asarray(limits, np.int64)
    k = engine_threads() if n_bytes >= 2 * PARALLEL_MIN_BYTES else 1
    cuts = [j * n_bytes // k for j in range(k)] + [n_bytes]
    parts = []
    for q0, q1 in zip(cuts, cuts[1:]):
        before = np.bitwise_count(writes[:, :q0]).sum(axis=1, dtype=np.int64)
        parts.append((words, used, writes, data, bitpos + before * b, b, lim, prefix_bits,
                      word_bits, q0, q1, _POPCOUNT, np.zeros(n_tasks, np.int64)))
    h, full = 0, 0
    bad = np.zeros(n_tasks, np.int64)
    for part, (ph, pfull) in zip(parts, split(_build_kernel, parts)):
        h, full = h + int(ph), full + int(pfull)
        bad += part[-1]
    return words, used, h % (1 << 64), bad, full


def popcount(packed: np.ndarray) -> int:
    """Number of set bits of a uint8 array."""
    return int(np.bitwise_count(packed).sum(dtype=np.int64))


@numba.njit(**NJIT)
def _any_lost(mask, write, written):
    # whether a position is in mask, not in write and not in written (packed, same size):
    # (mask & ~write & ~written).any() in one pass, without the temporaries
    acc = np.uint8(0)
    for q in range(mask.size):
        acc |= mask[q] & ~write[q] & ~written[q]
    return acc != 0


def _first_set(packed: np.ndarray) -> int:
    # index of the first set bit of a packed bit array (one exists)
    q = int(np.flatnonzero(packed)[0])
    return 8 * q + 7 - int(packed[q]).bit_length() + 1


def _streams(layers: list[PreparedLayer | None]) -> tuple[np.ndarray, list[int]]:
    # One buffer holding every task's code stream with SLACK bytes after each, and the starts:
    # the array the packed codes came in when they all share one with room after them (a file
    # read into memory: no copy), else a new one.
    coded = [pl for pl in layers if pl is not None and pl.n_write]
    if coded and all(pl.packed and pl.codes is coded[0].codes for pl in coded):
        data = coded[0].codes
        if all(pl.start + packed_size(pl.n_write, pl.bits) + SLACK <= data.size for pl in coded):
            return data, [pl.start if pl is not None and pl.n_write else 0 for pl in layers]
    parts, starts, pos = [], [], 0
    for pl in layers:
        starts.append(pos)
        if pl is None or not pl.n_write:
            continue
        if pl.packed:
            part = pl.codes[pl.start : pl.start + packed_size(pl.n_write, pl.bits)]
        else:
            codes = pl.codes if pl.compact else pl.codes[pl.write]
            part = (np.asarray(codes, ">u4").view(np.uint8) if pl.bits == RAW_BITS
                    else pack_bits(codes, pl.bits))
        parts.append(part)
        pos += part.size
    parts.append(np.zeros(SLACK, np.uint8))
    return np.concatenate(parts), starts


def build_banks(shapes: dict[str, tuple[int, ...]], members: list[list[int]],
                prepared: list[dict[str, PreparedLayer]], prefix_bits: int,
                word_bits: int) -> list[Bank]:
    """New banks holding tasks prepared with ``prepare_layer(..., packed=True)``.

    ``members[k]``: the indices into ``prepared`` of bank k's tasks, in prefix order (the
    caller fills ``Bank.tasks``). Checks what ``add_task`` checks when it adds each task in
    turn to its bank: reused positions written by an earlier task of the bank, room in every
    word, codes below their codebook's size. Raises ValueError, naming the bank, layer and task
    (its index into ``prepared``).
    """
    banks = []
    for k, idx in enumerate(members):
        bank = Bank(words={}, used={}, tasks=[])
        for name, shape in shapes.items():
            n = math.prod(shape)
            layers = [prepared[j].get(name) for j in idx]
            writes = np.zeros((len(idx), (n + 7) // 8), np.uint8)
            written = writes[0].copy()
            for p, pl in enumerate(layers):
                if pl is None:
                    continue
                if pl.n_reuse and _any_lost(pl.mask_bits, pl.write_bits, written):
                    lost = pl.mask_bits & ~pl.write_bits & ~written
                    i = _first_set(lost)
                    where = tuple(int(x) for x in np.unravel_index(i, shape))
                    raise ValueError(
                        f"task {idx[p]}, layer {name!r}: position {where} is in mask but not "
                        f"in write, and no earlier task of bank {k} wrote it "
                        f"({popcount(lost)} such positions); add it to write")
                if pl.n_write:
                    writes[p] = pl.write_bits
                    written |= pl.write_bits
            data, starts = _streams(layers)
            bits = [pl.bits if pl is not None and pl.n_write else 1 for pl in layers]
            limits = [pl.codebook.size if pl is not None and pl.codebook is not None
                      and pl.n_write else 1 << 32 for pl in layers]
            words, used, h, bad, full = build_words(writes, data, starts, bits, limits,
                                                    prefix_bits, word_bits, n)
            if full:
                raise ValueError(f"layer {name!r}: {full} fields of bank {k} do not fit their "
                                 f"{word_bits}-bit words; lower the bit-widths")
            for p in np.flatnonzero(bad):
                raise ValueError(f"task {idx[p]}, layer {name!r}: codes must be in "
                                 f"0..{limits[p] - 1} (codebook size)")
            bank.words[name], bank.used[name], bank.hashes[name] = words, used, h
        banks.append(bank)
    return banks

"""The read rule over a bank's words: which field a task reads, its value, the words' hash.

Kernels shared by :class:`bitsub.model.packed.PackedModel` (``resolve``, ``weights``, ``codes``)
and the file format (``words_hash``). A word is a sequence of fields ``[prefix][code]`` from the
most significant bit down; prefix 0 ends it; prefixes within a word increase.
"""

from __future__ import annotations

import numba
import numpy as np

from bitsub.codecs.bitfield import read_field
from bitsub.config import NJIT
from bitsub.threads import engine_threads, split

__all__ = ["PARALLEL_MIN", "bank_packed_codes", "codes_of", "decode_weights", "resolve_fields",
           "sum_mix", "word_mix", "words_hash"]


@numba.njit(**NJIT)
def codes_of(words, write, prefix, prefix_bits, word_bits, bits_by_prefix, out):
    """The codes of the fields with ``prefix`` at the positions where ``write``, in order.

    Writes them into ``out``; returns how many were found (the caller compares it with the
    count it expects).
    """
    j = 0
    for i in range(write.size):
        if write[i]:
            used = 0
            while used + prefix_bits <= word_bits and j < out.size:
                p = np.int64(read_field(words, i, word_bits - used - prefix_bits, prefix_bits))
                if p == 0 or p > prefix:
                    break
                b = bits_by_prefix[p]
                used += prefix_bits
                if p == prefix:
                    out[j] = read_field(words, i, word_bits - used - b, b)
                    j += 1
                    break
                used += b
    return j


@numba.njit(**NJIT)
def bank_packed_codes(words, prefix_bits, word_bits, bits_by_prefix, counts, offsets, out):
    """Every task's codes of one bank and layer, packed, in one pass over the words.

    A field with prefix p at position i is the field task p wrote there, so walking each word's
    fields once sends every code to its task's stream: task p's ``counts[p]`` codes go, packed
    at ``bits_by_prefix[p]`` bits as :func:`bitsub.pack_bits` packs them, into
    ``out[offsets[p]:offsets[p + 1]]`` (``packed_size(counts[p], bits)`` bytes; prefixes with
    no codes have an empty range). Returns the number of fields found per prefix (codes past
    ``counts[p]`` are counted, not written; the caller compares).
    """
    n_p = bits_by_prefix.size
    acc = np.zeros(n_p, np.uint64)
    nacc = np.zeros(n_p, np.uint64)
    pos = offsets[:n_p].copy()
    found = np.zeros(n_p, np.int64)
    eight = np.uint64(8)
    byte = np.uint64(0xFF)
    pmask = (np.uint64(1) << np.uint64(prefix_bits)) - np.uint64(1)
    for i in range(words.size):
        # the word in a register, its fields cut off from the top by shifts
        w = np.uint64(words[i])
        left = np.int64(word_bits)  # bits of w not yet walked
        while left >= prefix_bits:
            left -= prefix_bits
            p = np.int64((w >> np.uint64(left)) & pmask)
            if p == 0:
                break
            b = bits_by_prefix[p]
            if b == 0 or b > left:  # cannot happen in words built by add_task
                found[0] += 1
                break
            left -= b
            c = (w >> np.uint64(left)) & ((np.uint64(1) << np.uint64(b)) - np.uint64(1))
            if found[p] < counts[p]:
                ub = np.uint64(b)
                a = (acc[p] << ub) | c
                na = nacc[p] + ub
                while na >= eight:
                    na -= eight
                    out[pos[p]] = np.uint8((a >> na) & byte)
                    pos[p] += 1
                acc[p] = a
                nacc[p] = na
            found[p] += 1
    for p in range(1, n_p):
        if nacc[p] > np.uint64(0):
            out[pos[p]] = np.uint8((acc[p] << (eight - nacc[p])) & byte)
    return found


def _resolve_kernel_py(words, mask, prefix, prefix_bits, word_bits, bits_by_prefix, task_by_prefix,
                    source, codes):
    # Walk each used word's fields from the MSB; keep the latest field whose prefix <= prefix.
    # Prefixes within a word increase (tasks append in order), so stop at the first larger one.
    missing = 0
    for i in range(words.size):
        src = -1
        code = np.uint64(0)
        if mask[i]:
            used = 0
            while used + prefix_bits <= word_bits:
                p = np.int64(read_field(words, i, word_bits - used - prefix_bits, prefix_bits))
                if p == 0 or p > prefix:
                    break
                b = bits_by_prefix[p]
                used += prefix_bits
                code = read_field(words, i, word_bits - used - b, b)
                used += b
                src = task_by_prefix[p]
            if src < 0:
                missing += 1
        source[i] = src
        codes[i] = np.uint32(code)
    return missing


def _weights_kernel_py(words, mask, prefix, prefix_bits, word_bits, bits_by_prefix,
                       offset_by_prefix, raw_by_prefix, table_bits, out_bits):
    # resolve + decode in one pass (same walk as _resolve_kernel_py, written out again on
    # purpose: a shared njit helper returning (prefix, code) made both kernels about 2-4x
    # slower), without the source and codes arrays. Works on float32 bit patterns (table_bits,
    # out_bits are uint32 views), so a raw field is its code. Returns the number of used
    # positions with no field (0 if valid).
    missing = 0
    for i in range(words.size):
        value = np.uint32(0)
        if mask[i]:
            used = 0
            best = 0
            code = np.uint64(0)
            while used + prefix_bits <= word_bits:
                p = np.int64(read_field(words, i, word_bits - used - prefix_bits, prefix_bits))
                if p == 0 or p > prefix:
                    break
                b = bits_by_prefix[p]
                used += prefix_bits
                code = read_field(words, i, word_bits - used - b, b)
                used += b
                best = p
            if best == 0:
                missing += 1
            elif raw_by_prefix[best]:
                value = np.uint32(code)
            else:
                value = table_bits[offset_by_prefix[best] + np.int64(code)]
        out_bits[i] = value
    return missing


_HASH_K1 = np.uint64(0x9E3779B97F4A7C15)
_HASH_K2 = np.uint64(0xBF58476D1CE4E5B9)


@numba.njit(**NJIT)
def word_mix(word, i):
    """The term of word ``word`` at position ``i`` in :func:`words_hash` (a uint64).

    A bijection of the word for a fixed position i: changing any one word always changes the
    sum of the mixes.
    """
    m = np.uint64(word) + (np.uint64(i) + np.uint64(1)) * _HASH_K1
    m ^= m >> np.uint64(31)
    m *= _HASH_K2
    m ^= m >> np.uint64(29)
    return m


@numba.njit(**NJIT)
def sum_mix(words, start):
    """Sum of :func:`word_mix` over ``words`` at positions start, start + 1, ... (uint64).

    A loop over a whole array, which the compiler vectorizes (written inline over a range of a
    larger array, it does not).
    """
    h = np.uint64(0)
    for k in range(words.size):
        h += word_mix(words[k], start + k)
    return h


PARALLEL_MIN = 1 << 16
_resolve_kernel = numba.njit(**NJIT)(_resolve_kernel_py)
_weights_kernel = numba.njit(**NJIT)(_weights_kernel_py)


def _ranges(n: int) -> list[tuple[int, int]]:
    # One range per engine thread for a large array (the kernels release the GIL), else one.
    k = engine_threads() if n >= PARALLEL_MIN else 1
    return [(j * n // k, (j + 1) * n // k) for j in range(k)]


def resolve_fields(words, mask, prefix, prefix_bits, word_bits, bits_by_prefix, task_by_prefix,
                   source, codes):
    """Per position: the task and code read by the read rule; returns the positions with none.

    ``words``, ``mask``, ``source`` and ``codes`` are flat arrays of one layer; a large layer is
    split over the engine threads (:func:`bitsub.threads.split`, safe after fork).
    """
    parts = [(words[a:b], mask[a:b], prefix, prefix_bits, word_bits, bits_by_prefix,
              task_by_prefix, source[a:b], codes[a:b]) for a, b in _ranges(words.size)]
    return sum(split(_resolve_kernel, parts))


def decode_weights(words, mask, prefix, prefix_bits, word_bits, bits_by_prefix,
                   offset_by_prefix, raw_by_prefix, table_bits, out_bits):
    """Per position: the float32 bit pattern read by the read rule (resolve + decode).

    Flat arrays of one layer, split over the engine threads like :func:`resolve_fields`;
    returns the number of used positions with no field.
    """
    parts = [(words[a:b], mask[a:b], prefix, prefix_bits, word_bits, bits_by_prefix,
              offset_by_prefix, raw_by_prefix, table_bits, out_bits[a:b])
             for a, b in _ranges(words.size)]
    return sum(split(_weights_kernel, parts))


def words_hash(words: np.ndarray) -> int:
    """The 64-bit hash a bitsub file stores for a word array (uint32 or uint64, 1-D).

    ``sum(mix(word_i, i) for i) mod 2**64`` with ``mix(w, i) = g(w + (i + 1) * K1)``, where
    ``g(m) = f29(f31(m) * K2)``, ``fk(m) = m ^ (m >> k)``, all modulo 2**64,
    ``K1 = 0x9E3779B97F4A7C15``, ``K2 = 0xBF58476D1CE4E5B9``. Changing any single word always
    changes it (``mix`` is a bijection of the word); it is computed in the load's one pass.
    """
    words = np.ascontiguousarray(words)
    if words.dtype not in (np.uint32, np.uint64) or words.ndim != 1:
        raise TypeError(f"words must be a 1-D uint32 or uint64 array, got {words.dtype} "
                        f"{words.shape}")
    if not words.flags.writeable:
        # numba (with cache=True) dispatches read-only arrays ~1000x slower; only read here
        try:
            words = words.view()
            words.flags.writeable = True
        except ValueError:
            words = words.copy()
    parts = [(words[a:b], a) for a, b in _ranges(words.size)]
    return sum(int(h) for h in split(sum_mix, parts)) % (1 << 64)

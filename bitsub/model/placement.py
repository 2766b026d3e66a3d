"""Placement: checking a task's layers and choosing its bank, then writing its fields.

What :meth:`bitsub.model.packed.PackedModel.add_task` does before it changes anything (every
check, so that a failed call leaves the model unchanged) and the kernel that then writes the
fields into the bank's words.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from bitsub.codecs.bitfield import field_shift, packed_size, write_field
from bitsub.config import NJIT
from bitsub.quant.kmeans import kmeans_1d

__all__ = ["MAX_CODE_BITS", "MAX_VALUE", "RAW_BITS", "Bank", "PackedCodes", "PackedMask",
           "PreparedLayer",
           "TaskLayer", "bank_problem", "check_index", "check_private", "check_values",
           "choose_bank", "place_fields", "prepare_layer", "reuse_problem"]

MAX_CODE_BITS = 16
RAW_BITS = 32
# Largest magnitude of a stored value (centroid or raw float32 field). With |value| <= 2**60, a
# product with an input of magnitude < 2**40 summed over up to 2**24 terms stays below the
# float32 maximum (2**128), so every kernel and the dense reference agree instead of one
# overflowing to inf where another makes NaN; trained weights are many orders below it.
MAX_VALUE = float(2**60)


@dataclass(eq=False)
class TaskLayer:
    """What one task stores in, and reads from, one layer.

    Parameters
    ----------
    mask : array_like of bool, layer shape, or PackedMask
        Positions the task uses (its weight is 0 elsewhere).
    write : array_like of bool, layer shape, or PackedMask
        Positions where the task writes new fields; a subset of ``mask``. Positions in ``mask``
        but not in ``write`` reuse what the latest earlier task of the same bank wrote there.
    values : array_like of float, layer shape, optional
        Weights, read at the written positions. With ``bits`` in 1..16 they are quantized with
        :func:`bitsub.quant.kmeans.kmeans_1d` into ``2**bits`` centroids; with ``bits=32`` (and no
        codebook) they are stored as raw float32 fields, which needs ``word_bits=64``.
    bits : int, optional
        Bit-width of the task's codes in this layer: 1..16, or 32 for raw float32 fields.
        With ``codebook`` it defaults to ``ceil(log2(len(codebook)))`` (at least 1).
    codebook : array_like of float, optional
        A ready codebook (at most ``2**bits`` float32 centroids), given with ``codes``.
    codes : array_like of int, optional
        Codebook indices: either the layer shape (read at the written positions) or 1-D with one
        code per written position in C order.
        Or a :class:`PackedCodes`: the latter, already packed at ``bits`` (how load passes
        them).

    Notes
    -----
    A layer with no written position stores no fields and no codebook (its bit-width reads 0).
    Inputs are checked when the task is added (:meth:`PackedModel.add_task`), where the layer
    shape is known.
    """

    mask: Any
    write: Any
    values: Any = None
    bits: int | None = None
    codebook: Any = None
    codes: Any = None


@dataclass(frozen=True, eq=False)
class PackedCodes:
    """Codes already packed at the layer's bit-width, for ``TaskLayer(codes=...)``.

    ``data`` holds ``pack_bits(codes, bits)`` of the ``count`` codes of the written positions
    in C order (what a format 4 file stores); ``add_task`` writes the fields straight from these
    bytes, without unpacking them into a code array first. Checked like compact codes (count,
    byte length, every code below the codebook's size).
    """

    data: Any
    count: int
    #: None: ``data`` is exactly the packed codes. An int: they begin at byte ``start`` of
    #: ``data``, which may hold other bytes around them (a whole file read into memory).
    start: int | None = None


@dataclass(frozen=True, eq=False)
class PackedMask:
    """A mask as ``np.packbits`` of its flat bool array (C order), for ``TaskLayer``.

    ``data``: 1-D uint8, ``ceil(positions / 8)`` bytes, the pad bits of the last byte zero.
    :meth:`bitsub.model.packed.PackedModel.add_banks` uses it as it is, without unpacking.
    """

    data: Any


@dataclass
class Bank:
    """One bank: its word arrays per layer, their used bits, its tasks in prefix order."""

    words: dict[str, np.ndarray]  # layer -> 1-D word array
    used: dict[str, np.ndarray]  # layer -> 1-D uint8, bits occupied per word (cache of words)
    tasks: list[int]  # task ids by prefix - 1
    hashes: dict[str, int] = field(default_factory=dict)  # layer -> words_hash (a cache)


@dataclass
class PreparedLayer:
    """One layer of a task being added, checked."""

    name: str
    mask: np.ndarray  # bool, flat
    write: np.ndarray  # bool, flat: positions of new fields
    n_write: int
    n_reuse: int  # positions in mask but not in write
    bits: int
    codebook: np.ndarray | None
    codes: np.ndarray  # unsigned ints: one per written position (compact) or per position
    compact: bool
    packed: bool = False  # codes holds pack_bits bytes of the compact codes
    start: int = 0  # packed: the codes begin at byte start of codes
    mask_bits: np.ndarray | None = None  # np.packbits of mask (prepare_layer(packed=True))
    write_bits: np.ndarray | None = None




@numba.njit(**NJIT)
def _write_fields(words, used, write, codes, compact, prefix, prefix_bits, bits, word_bits):
    # Room was checked by the caller for every position: used[i] + prefix_bits + bits <= word_bits.
    # codes holds one code per written position (compact) or one per position.
    j = 0
    for i in range(write.size):
        if write[i]:
            c = codes[j] if compact else codes[i]
            s = field_shift(word_bits, used[i], prefix_bits)
            write_field(words, i, s, prefix_bits, prefix)
            write_field(words, i, s - bits, bits, c)
            used[i] = used[i] + prefix_bits + bits
            j += 1


@numba.njit(**NJIT)
def _write_packed_fields(words, used, write, data, prefix, prefix_bits, bits, word_bits):
    # _write_fields reading its codes from pack_bits bytes (MSB first) as it goes: one pass,
    # no code array. Room was checked; the caller checked len(data) = packed_size(n, bits).
    # The bits below a word's used bits are zero (fields are only ever appended), so the
    # prefix and code go in with one OR, in the word's own dtype.
    ubits = np.uint64(bits)
    cmask = (np.uint64(1) << ubits) - np.uint64(1)
    head = np.uint64(prefix) << ubits
    step = np.uint8(prefix_bits + bits)
    top = np.int64(word_bits - prefix_bits - bits)
    eight = np.uint64(8)
    acc = np.uint64(0)
    nacc = np.uint64(0)
    pos = 0
    for i in range(write.size):
        if write[i]:
            while nacc < ubits:
                acc = (acc << eight) | np.uint64(data[pos])
                pos += 1
                nacc += eight
            nacc -= ubits
            u = used[i]
            field = head | ((acc >> nacc) & cmask)
            words[i] |= words.dtype.type(field << np.uint64(top - np.int64(u)))
            used[i] = u + step


@numba.njit(**NJIT)
def _packed_max(data, bits, count):
    # Largest of the count codes in pack_bits bytes (-1 if none).
    ubits = np.uint64(bits)
    cmask = (np.uint64(1) << ubits) - np.uint64(1)
    eight = np.uint64(8)
    acc = np.uint64(0)
    nacc = np.uint64(0)
    pos = 0
    top = np.int64(-1)
    for _ in range(count):
        while nacc < ubits:
            acc = (acc << eight) | np.uint64(data[pos])
            pos += 1
            nacc += eight
        nacc -= ubits
        c = np.int64((acc >> nacc) & cmask)
        if c > top:
            top = c
    return top


@numba.njit(**NJIT)
def _max_at(values, where):
    # Largest values[i] where where[i] (-1 if none), and the number of such positions.
    # Branch-free (a select, not a jump): on random masks the jump mispredicts half the time.
    top = np.int64(-1)
    count = 0
    for i in range(where.size):
        w = np.int64(where[i])
        count += w
        top = max(top, w * (np.int64(values[i]) + 1) - 1)
    return top, count


@numba.njit(**NJIT)
def _min_at(values, where):
    low = np.int64(0)
    for i in range(where.size):
        if where[i]:
            v = np.int64(values[i])
            if v < low:
                low = v
    return low


@numba.njit(**NJIT)
def _mask_stats(mask, write):
    # (positions in write but not in mask, positions in mask but not in write, positions in
    # write): one pass instead of this and a count_nonzero
    # Branch-free (sums of 0/1), as _max_at.
    outside = 0
    reuse = 0
    written = 0
    for i in range(mask.size):
        w = np.int64(write[i])
        m = np.int64(mask[i])
        written += w
        outside += w & (1 - m)
        reuse += m & (1 - w)
    return outside, reuse, written


@numba.njit(**NJIT)
def _packed_mask_stats(mask, write):
    # _mask_stats of two packed masks (same size), eight bytes at a time (the last group
    # padded with zero bytes), each count a SWAR popcount (no table: it vectorizes)
    counts = np.zeros(3, np.int64)  # outside, reuse, written
    n = mask.size
    for g in range(0, n, 8):
        m = np.uint64(0)
        w = np.uint64(0)
        for k in range(8):  # unsigned index: the eight loads fuse into one
            j = np.uint64(min(g + k, n - 1))
            keep = np.uint64(g + k < n)
            m = (m << np.uint64(8)) | (np.uint64(mask[j]) * keep)
            w = (w << np.uint64(8)) | (np.uint64(write[j]) * keep)
        for c, x in enumerate((w & ~m, m & ~w, w)):
            x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
            x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2))
                                                       & np.uint64(0x3333333333333333))
            x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
            counts[c] += np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))
    return counts[0], counts[1], counts[2]


@numba.njit(**NJIT)
def _unwritten_reuse(used, mask, write):
    # Positions in mask but not in write whose word holds no field: (count, first index).
    # The count branch-free, as _max_at; the branch for the first is taken only on bad input.
    count = 0
    first = -1
    for i in range(mask.size):
        hit = np.int64(mask[i]) & (1 - np.int64(write[i])) & np.int64(used[i] == 0)
        if hit and first < 0:
            first = i
        count += hit
    return count, first


def place_fields(bank: Bank, pl: PreparedLayer, prefix: int, prefix_bits: int,
                 word_bits: int) -> None:
    """Write the checked layer's fields into the bank's words (room was checked)."""
    bank.hashes.pop(pl.name, None)
    if pl.n_write and pl.packed:
        _write_packed_fields(bank.words[pl.name], bank.used[pl.name], pl.write, pl.codes,
                             prefix, prefix_bits, pl.bits, word_bits)
    elif pl.n_write:
        _write_fields(bank.words[pl.name], bank.used[pl.name], pl.write, pl.codes, pl.compact,
                      prefix, prefix_bits, pl.bits, word_bits)


def check_index(value: object, name: str) -> int:
    """``value`` as an int (any sign; the caller says which range it means), TypeError if not."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _check_packed_mask(pm: PackedMask, shape: tuple[int, ...], what: str) -> np.ndarray:
    data = np.asarray(pm.data)
    n = math.prod(shape)
    if data.dtype != np.uint8 or data.shape != ((n + 7) // 8,):
        raise TypeError(f"{what}: a PackedMask of the layer shape {shape} is {(n + 7) // 8} "
                        f"uint8 bytes, got {data.dtype} {data.shape}")
    if n % 8 and data[-1] & (0xFF >> (n % 8)):
        raise ValueError(f"{what}: the pad bits of a PackedMask must be zero")
    return data


def _as_packed(arr: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    # np.packbits of a mask given as a PackedMask (checked, not copied) or a bool array
    if isinstance(arr, PackedMask):
        return _check_packed_mask(arr, shape, what)
    return np.packbits(_as_bool(arr, shape, what))


def _as_bool(arr: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    if isinstance(arr, PackedMask):
        data = _check_packed_mask(arr, shape, what)
        return np.unpackbits(data, count=math.prod(shape)).view(bool)
    a = np.asarray(arr)
    if a.dtype != np.bool_:
        if a.dtype.kind not in "iu" or (a.size and not np.isin(a, (0, 1)).all()):
            raise TypeError(f"{what} must be a boolean array (or 0/1 integers), got {a.dtype}")
        a = a.astype(bool)
    if a.shape != shape:
        raise ValueError(f"{what} has shape {a.shape}, the layer has shape {shape}")
    return np.ascontiguousarray(a).reshape(-1)


def _check_packed(pc: PackedCodes, n: int, bits: int, what: str, whole: bool = False
                  ) -> tuple[np.ndarray, int]:
    # (array, start): the codes as an array of their own (start 0), or with ``whole`` the
    # given array with the start of the codes in it (no copy)
    data = np.asarray(pc.data)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise TypeError(f"{what}: packed codes must be a 1-D uint8 array, got {data.dtype} "
                        f"{data.shape}")
    count = check_index(pc.count, f"{what}: packed codes count")
    if count != n:
        raise ValueError(f"{what}: {count} packed codes for {n} written positions")
    size = packed_size(n, bits)
    if pc.start is None:
        start = 0
        if data.size != size:
            raise ValueError(f"{what}: {n} codes of {bits} bits take {size} bytes, got "
                             f"{data.size}")
    else:
        start = check_index(pc.start, f"{what}: packed codes start")
        if not 0 <= start <= data.size - size:
            raise ValueError(f"{what}: {n} codes of {bits} bits take {size} bytes from byte "
                             f"{start}, the array holds {data.size}")
        if not whole:
            data, start = data[start : start + size], 0
    if not data.flags.writeable or not data.flags.c_contiguous:
        # numba (cache=True) dispatches read-only arrays far slower; a copy costs n * bits / 8
        data = np.array(data)
    return data, start


def check_private(private: object) -> dict[str, np.ndarray]:
    """The task-private parameters as read-only float32 copies (TypeError on bad input)."""
    if private is None:
        return {}
    if not isinstance(private, Mapping):
        raise TypeError(f"private must be a dict str -> array, got {type(private).__name__}")
    out = {}
    for key, val in private.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"private parameter names must be non-empty strings, got {key!r}")
        a = np.asarray(val)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"private parameter {key!r} must be a real array, got {a.dtype}")
        out[key] = np.array(a, dtype=np.float32, copy=True)
        out[key].flags.writeable = False
    return out


def check_values(values: np.ndarray, what: str) -> None:
    """ValueError unless every value is finite and at most ``MAX_VALUE`` in magnitude."""
    bad = ~(np.abs(values) <= MAX_VALUE)  # NaN compares False: caught too
    if bad.any():
        v = values[bad][0]
        raise ValueError(f"{what}: {v!r} is not a finite value of magnitude <= 2**60; "
                         "stored weights must be finite and below 2**60")


def prepare_layer(name: str, tl: TaskLayer, shape: tuple[int, ...], prefix_bits: int,
                  word_bits: int, packed: bool = False) -> PreparedLayer:
    """Check one layer of a task being added; its mask, write mask, bit-width, codebook, codes.

    ``packed``: for :meth:`PackedModel.add_banks`: the masks are kept packed (``mask_bits``,
    ``write_bits``; ``mask`` and ``write`` are None) and packed codes stay in the array they
    were given in (``start``).
    """
    what = f"layer {name!r}"
    mask_bits = write_bits = None
    if packed:
        mask_bits = _as_packed(tl.mask, shape, f"{what}: mask")
        write_bits = _as_packed(tl.write, shape, f"{what}: write")
        if write_bits is mask_bits:  # one array given for both (a file's "mask" reference)
            n = _packed_mask_stats(write_bits, write_bits)[2]
            outside = n_reuse = 0
        else:
            outside, n_reuse, n = _packed_mask_stats(mask_bits, write_bits)
        mask = write = None
        if not isinstance(tl.codes, PackedCodes) and (tl.codes is not None
                                                       or tl.values is not None):
            write = np.unpackbits(write_bits, count=math.prod(shape)).view(bool)
    else:
        mask = _as_bool(tl.mask, shape, f"{what}: mask")
        write = _as_bool(tl.write, shape, f"{what}: write")
        outside, n_reuse, n = _mask_stats(mask, write)
    if outside:
        raise ValueError(f"{what}: write must be a subset of mask (write implies mask); "
                         f"{outside} written positions are outside the mask")
    n = int(n)
    compact = True
    bits = None if tl.bits is None else check_index(tl.bits, f"{what}: bits")
    codebook = None
    if tl.codebook is not None or tl.codes is not None:
        if tl.codebook is None or tl.codes is None:
            raise ValueError(f"{what}: give codebook and codes together")
        if tl.values is not None:
            raise ValueError(f"{what}: give values + bits, or codebook + codes, not both")
        codebook = np.asarray(tl.codebook)
        if codebook.dtype.kind not in "iuf" or codebook.ndim != 1:
            raise TypeError(f"{what}: codebook must be a 1-D float array")
        codebook = np.array(codebook, dtype=np.float32)
        check_values(codebook, f"{what}: codebook")
        k = codebook.size
        if not 1 <= k <= 1 << MAX_CODE_BITS:
            raise ValueError(f"{what}: codebook needs 1..{1 << MAX_CODE_BITS} entries, got {k}")
        if bits is None:
            bits = max(1, (k - 1).bit_length())
        if not 1 <= bits <= MAX_CODE_BITS:
            raise ValueError(f"{what}: bits with a codebook must be in 1..{MAX_CODE_BITS}, "
                             f"got {bits}")
        if k > 1 << bits:
            raise ValueError(f"{what}: a codebook of {k} entries does not fit {bits} bits")
        if isinstance(tl.codes, PackedCodes):
            data, start = _check_packed(tl.codes, n, bits, what, whole=packed)
            # every code of a full-size codebook fits: only a smaller one needs the pass (the
            # packed path checks them as it writes them)
            high = _packed_max(data, bits, n) if k < 1 << bits and not packed else 0
            if high >= k:
                raise ValueError(f"{what}: codes must be in 0..{k - 1} (codebook size)")
            codebook.flags.writeable = False
            if n == 0:
                return PreparedLayer(name, mask, write, 0, n_reuse, 0, np.zeros(0, np.float32),
                                     np.zeros(0, np.uint32), True, mask_bits=mask_bits,
                                     write_bits=write_bits)
            if prefix_bits + bits > word_bits:
                raise ValueError(f"{what}: a field of {prefix_bits} + {bits} bits does not fit "
                                 f"a {word_bits}-bit word")
            return PreparedLayer(name, mask, write, n, n_reuse, bits, codebook, data, True, True,
                                 start, mask_bits, write_bits)
        codes = np.asarray(tl.codes)
        if codes.dtype.kind not in "iu":
            raise TypeError(f"{what}: codes must be an integer array, got {codes.dtype}")
        if codes.shape == shape and codes.dtype.itemsize <= 4:
            # full layer shape: read in place by the kernels, no gather
            codes = np.ascontiguousarray(codes).reshape(-1)
            compact = False
            low = _min_at(codes, write) if codes.dtype.kind == "i" else 0
            high = _max_at(codes, write)[0]
        else:
            if codes.shape == shape:
                codes = np.ascontiguousarray(codes).reshape(-1)[write]
            elif codes.shape != (n,):
                raise ValueError(f"{what}: codes must have the layer shape {shape} or one "
                                 f"code per written position ({n},), got {codes.shape}")
            codes = np.ascontiguousarray(codes)
            low, high = (int(codes.min()), int(codes.max())) if n else (0, 0)
        if low < 0 or high >= k:
            raise ValueError(f"{what}: codes must be in 0..{k - 1} (codebook size)")
        if codes.dtype.itemsize > 4:
            codes = codes.astype(np.uint32)  # values checked < k <= 2**16 above
    elif tl.values is not None:
        if bits is None:
            raise ValueError(f"{what}: values need bits (1..{MAX_CODE_BITS}, or 32 for raw)")
        values = np.asarray(tl.values)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"{what}: values must be a float array, got {values.dtype}")
        if values.shape != shape:
            raise ValueError(f"{what}: values have shape {values.shape}, expected {shape}")
        chosen = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)[write]
        if bits == RAW_BITS:
            check_values(chosen, f"{what}: raw values")
            codes = chosen.view(np.uint32)
        elif 1 <= bits <= MAX_CODE_BITS:
            if n:
                if not np.isfinite(chosen).all():
                    raise ValueError(f"{what}: values to quantize must be finite")
                codebook, c = kmeans_1d(chosen, 1 << bits)
                codebook = np.asarray(codebook, dtype=np.float32)
                check_values(codebook, f"{what}: codebook of the values")
                codes = np.ascontiguousarray(c).reshape(-1)
            else:
                codes = np.zeros(0, np.uint32)
        else:
            raise ValueError(f"{what}: bits must be 1..{MAX_CODE_BITS} or 32 (raw float32), "
                             f"got {bits}")
    elif n:
        raise ValueError(f"{what}: the task writes {n} positions; give values + bits or "
                         "codebook + codes")
    else:
        codes = np.zeros(0, np.uint32)
    if n == 0:
        # Nothing written: no fields, no codebook.
        return PreparedLayer(name, mask, write, 0, n_reuse, 0, np.zeros(0, np.float32),
                             codes, True, mask_bits=mask_bits, write_bits=write_bits)
    if prefix_bits + bits > word_bits:
        hint = " (raw float32 fields need word_bits=64)" if bits == RAW_BITS else ""
        raise ValueError(f"{what}: a field of {prefix_bits} + {bits} bits does not fit "
                         f"a {word_bits}-bit word{hint}")
    if codebook is not None:
        codebook.flags.writeable = False
    return PreparedLayer(name, mask, write, n, n_reuse, bits, codebook, codes, compact,
                         mask_bits=mask_bits, write_bits=write_bits)

def bank_problem(banks: list[Bank], k: int, prepared: list[PreparedLayer], prefix_bits: int,
                 word_bits: int) -> str | None:
    """Why the task cannot go into existing bank k (None if it can)."""
    b = banks[k]
    if len(b.tasks) >= (1 << prefix_bits) - 1:
        return (f"bank {k} is full: it holds {len(b.tasks)} tasks, the most that "
                f"{prefix_bits}-bit prefixes allow")
    for pl in prepared:
        if pl.n_write:
            top = int(_max_at(b.used[pl.name], pl.write)[0])
            if top + prefix_bits + pl.bits > word_bits:
                return (f"layer {pl.name!r}: some written words of bank {k} have only "
                        f"{word_bits - top} free bits, a field needs "
                        f"{prefix_bits + pl.bits}")
    return None

def reuse_problem(banks: list[Bank], k: int | None, prepared: list[PreparedLayer],
                  shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why the task's reused positions are not all written in bank k (None if they are)."""
    for pl in prepared:
        if not pl.n_reuse:
            continue
        if k is None:
            return (f"layer {pl.name!r}: the task reuses {pl.n_reuse} positions "
                    "(in mask but not in write) but goes to a new bank, where no earlier "
                    "task wrote; write them or add the task to an existing bank")
        count, i = _unwritten_reuse(banks[k].used[pl.name], pl.mask, pl.write)
        if count:
            idx = np.unravel_index(i, shapes[pl.name])
            return (f"layer {pl.name!r}: position {tuple(int(x) for x in idx)} is in mask "
                    f"but not in write, and no earlier task of bank {k} wrote it "
                    f"({count} such positions); add it to write")
    return None

def choose_bank(banks: list[Bank], prepared: list[PreparedLayer], bank: int | str | None,
                shapes: dict[str, tuple[int, ...]], prefix_bits: int, word_bits: int) -> int:
    """The bank a task goes to (``len(banks)``: a new one), by the rules of ``add_task``."""
    nb = len(banks)
    if isinstance(bank, str):
        if bank != "new":
            raise ValueError(f"bank must be None, 'new' or a bank index, got {bank!r}")
        problem = reuse_problem(banks, None, prepared, shapes)
        if problem:
            raise ValueError(problem)
        return nb
    if bank is not None:
        k = check_index(bank, "bank")
        if not 0 <= k < nb:
            raise ValueError(f"bank {k} does not exist (there are {nb}); use bank='new' "
                             "to open one")
        problem = (bank_problem(banks, k, prepared, prefix_bits, word_bits)
                   or reuse_problem(banks, k, prepared, shapes))
        if problem:
            raise ValueError(problem)
        return k
    if nb == 0:
        problem = reuse_problem(banks, None, prepared, shapes)
        if problem:
            raise ValueError(problem)
        return 0
    k = nb - 1
    reuses = any(pl.n_reuse for pl in prepared)
    problem = bank_problem(banks, k, prepared, prefix_bits, word_bits)
    if problem is None:
        problem = reuse_problem(banks, k, prepared, shapes)
        if problem:
            raise ValueError(problem)
        return k
    if reuses:
        raise ValueError(f"{problem}; the task reuses positions of bank {k}, so it cannot "
                         "move to a new bank: lower its bit-widths or write those positions")
    return nb

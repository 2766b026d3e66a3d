"""The packed multi-task model: banks of prefix-encoded fields, the read rule, task table.

A :class:`PackedModel` is a list of layers plus a task table. Each layer has one word array per
bank (uint32 or uint64, one word per weight position). A word is a sequence of fields packed from
the most significant bit down; a field is ``[prefix: P bits][code: b bits]``. The prefix names the
task of the bank that wrote the field (1 .. 2**P - 1, in the order the tasks were added); prefix 0
ends the word. The code indexes that task's codebook for the layer (or, for ``bits=32`` with no
codebook, is the raw float32 bit pattern).

The read rule: task t's weight at position i is 0 where t's mask is 0; otherwise it is the value of
the field of word i of t's bank written by the latest task <= t that wrote there. Fields are never
rewritten, so adding tasks never changes an earlier task's weights.

Masks are stored Huffman-coded (:mod:`bitsub.codecs.maskcodec`), each in the context a decoder
holding the earlier tasks already has: none, the previous task's mask of the same bank, or the
union of the bank's earlier masks, whichever codes smallest (:meth:`PackedModel.encoded_mask`,
:meth:`PackedModel.mask_reference`). Tasks largely reuse their predecessors' positions, so this
is much smaller than coding each mask alone.
"""

from __future__ import annotations

import copy
import json
import math
import operator
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from bitsub.codecs.bitfield import field_shift, read_field, write_field
from bitsub.codecs.maskcodec import encode_mask
from bitsub.config import NJIT, NJIT_PARALLEL
from bitsub.quant.kmeans import kmeans_1d

if TYPE_CHECKING:
    from bitsub.model.capacity import Capacity

__all__ = ["MASK_REFERENCES", "MAX_VALUE", "WRITE_REFERENCES", "PackedModel", "TaskLayer"]

MAX_PREFIX_BITS = 8
_NO_CODEBOOK = np.zeros(0, np.float32)  # a layer where the task wrote no field
_NO_CODEBOOK.flags.writeable = False
MAX_CODE_BITS = 16
RAW_BITS = 32
# What a task's stored mask of a layer is coded against (maskcodec context), by code:
# 0 nothing, 1 the mask of the previous task of the same bank, 2 the union of the masks of all
# earlier tasks of the same bank. The decoder holds both once it decoded the earlier tasks.
MASK_REFERENCES = ("alone", "previous", "union")
# Which positions a task writes in a layer, given its mask (what a file stores, by code): 0 its
# mask minus the positions its bank's earlier tasks wrote (the usual case: nothing stored), 1 its
# whole mask, 2 coded: the difference from code 0, Huffman-coded (maskcodec).
WRITE_REFERENCES = ("new", "mask", "coded")
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
    mask : array_like of bool, layer shape
        Positions the task uses (its weight is 0 elsewhere).
    write : array_like of bool, layer shape
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


@dataclass
class _Bank:
    words: dict[str, np.ndarray]  # layer -> 1-D word array
    used: dict[str, np.ndarray]  # layer -> 1-D uint8, bits occupied per word (cache of words)
    tasks: list[int]  # task ids by prefix - 1


@dataclass
class _Task:
    bank: int
    prefix: int
    bits: dict[str, int]  # layer -> bit-width of its fields (0: no fields)
    fields: dict[str, int]  # layer -> number of fields the task wrote
    codebooks: dict[str, np.ndarray | None]  # layer -> float32 centroids, None for raw fields
    masks: dict[str, np.ndarray]  # layer -> np.packbits of the flattened mask
    private: dict[str, np.ndarray]
    encoded_masks: dict[str, bytes]  # stored mask bytes: filled on demand, or by load
    mask_refs: dict[str, int] = field(default_factory=dict)  # index into MASK_REFERENCES
    alone_sizes: dict[str, int] = field(default_factory=dict)  # bytes of the mask coded alone
    writes: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> packbits of write
    write_codings: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # filled on demand


@dataclass
class _PreparedLayer:
    name: str
    mask: np.ndarray  # bool, flat
    write: np.ndarray  # bool, flat: positions of new fields
    n_write: int
    n_reuse: int  # positions in mask but not in write
    bits: int
    codebook: np.ndarray | None
    codes: np.ndarray  # unsigned ints: one per written position (compact) or per position
    compact: bool


# ------------------------------------------------------------------------------- kernels


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
def _codes_of(words, write, prefix, prefix_bits, word_bits, bits_by_prefix, out):
    # The codes of the fields with this prefix at the written positions, in position order;
    # returns how many were found (the caller compares it with the count it expects).
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
def _max_at(values, where):
    # Largest values[i] where where[i] (-1 if none), and the number of such positions.
    top = -1
    count = 0
    for i in range(where.size):
        if where[i]:
            count += 1
            v = np.int64(values[i])
            if v > top:
                top = v
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
    # (positions in write but not in mask, positions in mask but not in write)
    outside = 0
    reuse = 0
    for i in range(mask.size):
        if write[i] and not mask[i]:
            outside += 1
        elif mask[i] and not write[i]:
            reuse += 1
    return outside, reuse


@numba.njit(**NJIT)
def _unwritten_reuse(used, mask, write):
    # Positions in mask but not in write whose word holds no field: (count, first index).
    count = 0
    first = -1
    for i in range(mask.size):
        if mask[i] and not write[i] and used[i] == 0:
            if count == 0:
                first = i
            count += 1
    return count, first


def _resolve_kernel_py(words, mask, prefix, prefix_bits, word_bits, bits_by_prefix, task_by_prefix,
                    source, codes):
    # Walk each used word's fields from the MSB; keep the latest field whose prefix <= prefix.
    # Prefixes within a word increase (tasks append in order), so stop at the first larger one.
    missing = 0
    for i in numba.prange(words.size):
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
    for i in numba.prange(words.size):
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
def _word_mix(word, i):
    # A bijection of the word for a fixed position i: changing any one word always changes the
    # sum of the mixes (see words_hash).
    m = np.uint64(word) + (np.uint64(i) + np.uint64(1)) * _HASH_K1
    m ^= m >> np.uint64(31)
    m *= _HASH_K2
    m ^= m >> np.uint64(29)
    return m


@numba.njit(**NJIT)
def _sum_mix(words, start):
    # sum of _word_mix over words (positions start, start + 1, ...); a loop over a whole array
    # that the compiler vectorizes (written inline over a range of a larger array, it does not)
    h = np.uint64(0)
    for k in range(words.size):
        h += _word_mix(words[k], start + k)
    return h


def _words_hash_py(words):
    n = words.size
    n_chunks = min(256, n // 16384 + 1)
    part = np.zeros(n_chunks, np.uint64)
    for c in numba.prange(n_chunks):
        lo = c * n // n_chunks
        part[c] = _sum_mix(words[lo : (c + 1) * n // n_chunks], lo)
    h = np.uint64(0)
    for c in range(n_chunks):
        h += part[c]
    return h


PARALLEL_MIN = 1 << 16
_resolve_serial = numba.njit(**NJIT)(_resolve_kernel_py)
_resolve_parallel = numba.njit(**NJIT_PARALLEL)(_resolve_kernel_py)
_weights_serial = numba.njit(**NJIT)(_weights_kernel_py)
_weights_parallel = numba.njit(**NJIT_PARALLEL)(_weights_kernel_py)
_hash_serial = numba.njit(**NJIT)(_words_hash_py)
_hash_parallel = numba.njit(**NJIT_PARALLEL)(_words_hash_py)


def _resolve_kernel(words, *args):
    fn = _resolve_parallel if words.size >= PARALLEL_MIN else _resolve_serial
    return fn(words, *args)


def _weights_kernel(words, *args):
    fn = _weights_parallel if words.size >= PARALLEL_MIN else _weights_serial
    return fn(words, *args)


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
    fn = _hash_parallel if words.size >= PARALLEL_MIN else _hash_serial
    return int(fn(words))


# ------------------------------------------------------------------------------- helpers


def _check_int(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _as_bool(arr: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype != np.bool_:
        if a.dtype.kind not in "iu" or (a.size and not np.isin(a, (0, 1)).all()):
            raise TypeError(f"{what} must be a boolean array (or 0/1 integers), got {a.dtype}")
        a = a.astype(bool)
    if a.shape != shape:
        raise ValueError(f"{what} has shape {a.shape}, the layer has shape {shape}")
    return np.ascontiguousarray(a).reshape(-1)


def _check_private(private: object) -> dict[str, np.ndarray]:
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


def _check_values(values: np.ndarray, what: str) -> None:
    bad = ~(np.abs(values) <= MAX_VALUE)  # NaN compares False: caught too
    if bad.any():
        v = values[bad][0]
        raise ValueError(f"{what}: {v!r} is not a finite value of magnitude <= 2**60; "
                         "stored weights must be finite and below 2**60")


def check_network(steps: object) -> list[dict[str, Any]]:
    """Check that ``steps`` is a JSON-serialisable list of dicts, each with an ``"op"`` string.

    Returns a deep copy (through JSON). Op semantics are checked by :mod:`bitsub.model.network`.
    """
    if not isinstance(steps, (list, tuple)):
        raise TypeError(f"network must be a list of dicts, got {type(steps).__name__}")
    for k, step in enumerate(steps):
        if not isinstance(step, dict):
            raise TypeError(f"network step {k} must be a dict, got {type(step).__name__}")
        if not isinstance(step.get("op"), str):
            raise ValueError(f"network step {k} needs an 'op' string, got {step!r}")
    try:
        text = json.dumps(list(steps), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"network must be JSON-serialisable: {exc}") from None
    return json.loads(text)


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


# ------------------------------------------------------------------------------- model


class PackedModel:
    """Many tasks' weights packed into one set of words (banks of prefix-encoded fields).

    Parameters
    ----------
    word_bits : {32, 64}
        Width of a word (uint32 or uint64 arrays). Raw float32 fields need 64.
    prefix_bits : int
        P, the width of a field's prefix, 1..8. A bank holds at most ``2**P - 1`` tasks.

    Examples
    --------
    >>> import numpy as np, bitsub
    >>> pm = bitsub.PackedModel(word_bits=32, prefix_bits=3)
    >>> pm.add_layer("fc1", (2, 3))
    >>> m = np.ones((2, 3), bool)
    >>> t = pm.add_task({"fc1": bitsub.TaskLayer(m, m, codebook=[-1.0, 1.0],
    ...                                           codes=np.eye(2, 3, dtype=int))})
    >>> pm.weights(t, "fc1")
    array([[ 1., -1., -1.],
           [-1.,  1., -1.]], dtype=float32)
    """

    def __init__(self, word_bits: int = 32, prefix_bits: int = 3) -> None:
        word_bits = _check_int(word_bits, "word_bits")
        prefix_bits = _check_int(prefix_bits, "prefix_bits")
        if word_bits not in (32, 64):
            raise ValueError(f"word_bits must be 32 or 64, got {word_bits}")
        if not 1 <= prefix_bits <= MAX_PREFIX_BITS:
            raise ValueError(f"prefix_bits must be in 1..{MAX_PREFIX_BITS}, got {prefix_bits}")
        self._word_bits = word_bits
        self._prefix_bits = prefix_bits
        self._dtype = np.dtype(np.uint32 if word_bits == 32 else np.uint64)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._banks: list[_Bank] = []
        self._tasks: list[_Task] = []
        self._network: list[dict[str, Any]] = []
        #: Bytes of the file this model was last saved to or loaded from (None before either).
        self.file_bytes: int | None = None

    # --------------------------------------------------------------------- structure

    @property
    def word_bits(self) -> int:
        """Width of a word in bits (32 or 64)."""
        return self._word_bits

    @property
    def prefix_bits(self) -> int:
        """P, the width of every field's prefix."""
        return self._prefix_bits

    @property
    def max_tasks_per_bank(self) -> int:
        """``2**P - 1``: prefix 0 marks the end of a word's fields."""
        return (1 << self._prefix_bits) - 1

    @property
    def layers(self) -> list[str]:
        """Layer names, in the order they were added."""
        return list(self._shapes)

    @property
    def tasks(self) -> list[int]:
        """Task ids, ``[0, 1, ..., n - 1]``."""
        return list(range(len(self._tasks)))

    @property
    def banks(self) -> int:
        """Number of banks."""
        return len(self._banks)

    @property
    def network(self) -> list[dict[str, Any]]:
        """The recorded network steps (a copy); see :meth:`set_network`."""
        return copy.deepcopy(self._network)

    def set_network(self, steps: list[dict[str, Any]]) -> None:
        """Record the network as a JSON-serialisable list of op dicts (each with an ``"op"``).

        The ops are checked against :data:`bitsub.model.network.OPS` and this model's layer shapes
        now, so a bad network is refused when it is recorded rather than at ``forward``.
        """
        from bitsub.model.network import validate_network

        checked = check_network(steps)
        validate_network(checked, dict(self._shapes))
        self._network = checked
        self.file_bytes = None

    def shape(self, layer: str) -> tuple[int, ...]:
        """Weight shape of ``layer``."""
        self._check_layer(layer)
        return self._shapes[layer]

    def add_layer(self, name: str, shape: Iterable[int]) -> None:
        """Add a layer with weight shape (out, in) or (out, in, kh, kw).

        Tasks added earlier have an empty mask in it; every bank gets zero words for it.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"layer name must be a non-empty string, got {name!r}")
        if name in self._shapes:
            raise ValueError(f"layer {name!r} already exists")
        try:
            shp = tuple(_check_int(s, "shape entries") for s in shape)
        except TypeError as exc:
            raise TypeError(f"shape must be a tuple of ints: {exc}") from None
        if len(shp) not in (2, 4):
            raise ValueError(f"shape must be (out, in) or (out, in, kh, kw), got {shp}")
        if any(s < 1 for s in shp):
            raise ValueError(f"shape entries must be >= 1, got {shp}")
        self._shapes[name] = shp
        self.file_bytes = None
        n = math.prod(shp)
        for bank in self._banks:
            bank.words[name] = np.zeros(n, self._dtype)
            bank.used[name] = np.zeros(n, np.uint8)

    # --------------------------------------------------------------------- adding tasks

    def add_task(
        self,
        layers: Mapping[str, TaskLayer],
        private: Mapping[str, np.ndarray] | None = None,
        bank: int | str | None = None,
    ) -> int:
        """Add a task; return its id (0, 1, 2, ...).

        Parameters
        ----------
        layers : dict str -> TaskLayer
            What the task uses and writes per layer. A layer not mentioned gets an empty mask.
        private : dict str -> array, optional
            Task-private parameters (heads, biases, norms), stored as float32.
        bank : None, "new" or int
            None: the latest bank if every written word has room for the new fields and a
            prefix is free, else a new bank (a task that reuses positions cannot move to a new
            bank: then it is an error). ``"new"``: always open a new bank. An int: that
            existing bank, or an error.

        Returns
        -------
        int
            The new task id.

        Raises
        ------
        ValueError
            Bad shapes or bit-widths, ``write`` not inside ``mask``, a reused position that no
            earlier task of the bank wrote, no room, or no free prefix in the requested bank.
            A failed call leaves the model unchanged.
        """
        if not isinstance(layers, Mapping):
            raise TypeError(f"layers must be a dict str -> TaskLayer, got {type(layers).__name__}")
        prepared = []
        for name, tl in layers.items():
            if not isinstance(name, str) or name not in self._shapes:
                raise ValueError(f"no layer {name!r}; add it with add_layer first (layers are "
                                 f"{list(self._shapes)})")
            if not isinstance(tl, TaskLayer):
                raise TypeError(f"layers[{name!r}] must be a TaskLayer, got {type(tl).__name__}")
            prepared.append(self._prepare(name, tl))
        priv = _check_private(private)
        target = self._choose_bank(prepared, bank)

        # Everything checked: from here on nothing can fail.
        if target == len(self._banks):
            self._banks.append(_Bank(
                words={n: np.zeros(math.prod(s), self._dtype) for n, s in self._shapes.items()},
                used={n: np.zeros(math.prod(s), np.uint8) for n, s in self._shapes.items()},
                tasks=[],
            ))
        b = self._banks[target]
        tid = len(self._tasks)
        prefix = len(b.tasks) + 1
        task = _Task(bank=target, prefix=prefix, bits={}, fields={}, codebooks={}, masks={},
                     private=priv, encoded_masks={})
        for pl in prepared:
            if pl.n_write:
                _write_fields(b.words[pl.name], b.used[pl.name], pl.write, pl.codes, pl.compact,
                              prefix, self._prefix_bits, pl.bits, self._word_bits)
            task.bits[pl.name] = pl.bits
            task.fields[pl.name] = pl.n_write
            task.codebooks[pl.name] = pl.codebook
            task.masks[pl.name] = np.packbits(pl.mask)
            task.writes[pl.name] = np.packbits(pl.write)
        b.tasks.append(tid)
        self._tasks.append(task)
        self.file_bytes = None  # the model no longer is what a file holds
        return tid

    def _prepare(self, name: str, tl: TaskLayer) -> _PreparedLayer:
        shape = self._shapes[name]
        what = f"layer {name!r}"
        mask = _as_bool(tl.mask, shape, f"{what}: mask")
        write = _as_bool(tl.write, shape, f"{what}: write")
        outside, n_reuse = _mask_stats(mask, write)
        if outside:
            raise ValueError(f"{what}: write must be a subset of mask (write implies mask); "
                             f"{outside} written positions are outside the mask")
        n = int(np.count_nonzero(write))
        compact = True
        bits = None if tl.bits is None else _check_int(tl.bits, f"{what}: bits")
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
            _check_values(codebook, f"{what}: codebook")
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
                _check_values(chosen, f"{what}: raw values")
                codes = chosen.view(np.uint32)
            elif 1 <= bits <= MAX_CODE_BITS:
                if n:
                    if not np.isfinite(chosen).all():
                        raise ValueError(f"{what}: values to quantize must be finite")
                    codebook, c = kmeans_1d(chosen, 1 << bits)
                    codebook = np.asarray(codebook, dtype=np.float32)
                    _check_values(codebook, f"{what}: codebook of the values")
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
            return _PreparedLayer(name, mask, write, 0, n_reuse, 0, np.zeros(0, np.float32),
                                  codes, True)
        if self._prefix_bits + bits > self._word_bits:
            hint = " (raw float32 fields need word_bits=64)" if bits == RAW_BITS else ""
            raise ValueError(f"{what}: a field of {self._prefix_bits} + {bits} bits does not fit "
                             f"a {self._word_bits}-bit word{hint}")
        if codebook is not None:
            codebook.flags.writeable = False
        return _PreparedLayer(name, mask, write, n, n_reuse, bits, codebook, codes, compact)

    def _bank_problem(self, k: int, prepared: list[_PreparedLayer]) -> str | None:
        """Why the task cannot go into existing bank k (None if it can)."""
        b = self._banks[k]
        if len(b.tasks) >= self.max_tasks_per_bank:
            return (f"bank {k} is full: it holds {len(b.tasks)} tasks, the most that "
                    f"{self._prefix_bits}-bit prefixes allow")
        for pl in prepared:
            if pl.n_write:
                top = int(_max_at(b.used[pl.name], pl.write)[0])
                if top + self._prefix_bits + pl.bits > self._word_bits:
                    return (f"layer {pl.name!r}: some written words of bank {k} have only "
                            f"{self._word_bits - top} free bits, a field needs "
                            f"{self._prefix_bits + pl.bits}")
        return None

    def _reuse_problem(self, k: int | None, prepared: list[_PreparedLayer]) -> str | None:
        for pl in prepared:
            if not pl.n_reuse:
                continue
            if k is None:
                return (f"layer {pl.name!r}: the task reuses {pl.n_reuse} positions "
                        "(in mask but not in write) but goes to a new bank, where no earlier "
                        "task wrote; write them or add the task to an existing bank")
            count, i = _unwritten_reuse(self._banks[k].used[pl.name], pl.mask, pl.write)
            if count:
                idx = np.unravel_index(i, self._shapes[pl.name])
                return (f"layer {pl.name!r}: position {tuple(int(x) for x in idx)} is in mask "
                        f"but not in write, and no earlier task of bank {k} wrote it "
                        f"({count} such positions); add it to write")
        return None

    def _choose_bank(self, prepared: list[_PreparedLayer], bank: int | str | None) -> int:
        nb = len(self._banks)
        if isinstance(bank, str):
            if bank != "new":
                raise ValueError(f"bank must be None, 'new' or a bank index, got {bank!r}")
            problem = self._reuse_problem(None, prepared)
            if problem:
                raise ValueError(problem)
            return nb
        if bank is not None:
            k = _check_int(bank, "bank")
            if not 0 <= k < nb:
                raise ValueError(f"bank {k} does not exist (there are {nb}); use bank='new' "
                                 "to open one")
            problem = self._bank_problem(k, prepared) or self._reuse_problem(k, prepared)
            if problem:
                raise ValueError(problem)
            return k
        if nb == 0:
            problem = self._reuse_problem(None, prepared)
            if problem:
                raise ValueError(problem)
            return 0
        k = nb - 1
        reuses = any(pl.n_reuse for pl in prepared)
        problem = self._bank_problem(k, prepared)
        if problem is None:
            problem = self._reuse_problem(k, prepared)
            if problem:
                raise ValueError(problem)
            return k
        if reuses:
            raise ValueError(f"{problem}; the task reuses positions of bank {k}, so it cannot "
                             "move to a new bank: lower its bit-widths or write those positions")
        return nb

    # --------------------------------------------------------------------- reading

    def _check_layer(self, layer: object) -> None:
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str), got {type(layer).__name__}")
        if layer not in self._shapes:
            raise KeyError(f"no layer {layer!r}; layers are {list(self._shapes)}")

    def _check_task(self, task: object) -> int:
        t = _check_int(task, "task")
        if not 0 <= t < len(self._tasks):
            raise IndexError(f"no task {t}; tasks are 0..{len(self._tasks) - 1}")
        return t

    def bank(self, task: int) -> int:
        """The bank that holds ``task``."""
        return self._tasks[self._check_task(task)].bank

    def prefix(self, task: int) -> int:
        """The prefix of ``task`` in its bank (1 .. 2**P - 1)."""
        return self._tasks[self._check_task(task)].prefix

    def bank_tasks(self, bank: int) -> list[int]:
        """Task ids of ``bank``, in prefix order."""
        k = _check_int(bank, "bank")
        if not 0 <= k < len(self._banks):
            raise IndexError(f"no bank {k}; there are {len(self._banks)}")
        return list(self._banks[k].tasks)

    def bits(self, task: int, layer: str) -> int:
        """Bit-width of the task's fields in ``layer`` (0 when it writes none; 32 = raw)."""
        t = self._check_task(task)
        self._check_layer(layer)
        return self._tasks[t].bits.get(layer, 0)

    def fields(self, task: int, layer: str) -> int:
        """Number of fields the task wrote in ``layer``."""
        t = self._check_task(task)
        self._check_layer(layer)
        return self._tasks[t].fields.get(layer, 0)

    def codebook(self, task: int, layer: str) -> np.ndarray | None:
        """The task's codebook for ``layer`` (read-only float32), None for raw float32 fields.

        Empty when the task writes no field in ``layer``.
        """
        t = self._check_task(task)
        self._check_layer(layer)
        return self._tasks[t].codebooks.get(layer, _NO_CODEBOOK)

    def mask(self, task: int, layer: str) -> np.ndarray:
        """The task's mask in ``layer``: bool, layer shape (a copy)."""
        t = self._check_task(task)
        self._check_layer(layer)
        return self._mask_flat(t, layer).reshape(self._shapes[layer])

    def _mask_flat(self, t: int, layer: str) -> np.ndarray:
        n = math.prod(self._shapes[layer])
        packed = self._tasks[t].masks.get(layer)
        if packed is None:
            return np.zeros(n, bool)
        return np.unpackbits(packed, count=n).view(bool)

    def encoded_mask(self, task: int, layer: str, alone: bool = False) -> bytes:
        """The task's mask in ``layer`` as stored: Huffman-coded by :func:`encode_mask`.

        The stored coding is the smallest of: the mask alone, in the context of the previous
        task's mask of the same bank, in the context of the union of the bank's earlier masks
        (:meth:`mask_reference` says which; :meth:`mask_context` gives the context to pass to
        :func:`bitsub.codecs.maskcodec.decode_mask`). ``alone=True``: the mask coded alone, whatever
        is stored (for comparison).
        """
        t = self._check_task(task)
        self._check_layer(layer)
        if not isinstance(alone, bool):
            raise TypeError(f"alone must be True or False, got {alone!r}")
        rec = self._tasks[t]
        if layer not in rec.encoded_masks or (alone and layer not in rec.alone_sizes):
            self._code_mask(t, layer)
        if alone:
            if rec.mask_refs[layer] == 0:
                return rec.encoded_masks[layer]
            return bytes(encode_mask(self.mask(t, layer)))
        return rec.encoded_masks[layer]

    def mask_reference(self, task: int, layer: str) -> int:
        """What the stored mask is coded against: an index into ``MASK_REFERENCES``.

        0 ``"alone"``, 1 ``"previous"`` (the previous task of the same bank), 2 ``"union"`` (of
        the masks of all earlier tasks of the same bank).
        """
        t = self._check_task(task)
        self._check_layer(layer)
        if layer not in self._tasks[t].mask_refs:
            self._code_mask(t, layer)
        return self._tasks[t].mask_refs[layer]

    def mask_context(self, task: int, layer: str) -> np.ndarray | None:
        """The context the stored mask was coded with (bool, layer shape), None if alone."""
        ref = self.mask_reference(task, layer)
        ctx = self._reference_mask(int(task), layer, ref)
        return None if ctx is None else ctx.reshape(self._shapes[layer])

    def alone_mask_bytes(self, task: int, layer: str) -> int:
        """Bytes of the task's mask of ``layer`` coded alone (cached; capacity compares it)."""
        t = self._check_task(task)
        self._check_layer(layer)
        if layer not in self._tasks[t].alone_sizes:
            self._code_mask(t, layer)
        return self._tasks[t].alone_sizes[layer]

    def _reference_mask(self, t: int, layer: str, ref: int) -> np.ndarray | None:
        # The flat bool context of reference `ref` for task t (None for "alone"); the caller
        # made sure that t has an earlier task in its bank when ref != 0.
        if ref == 0:
            return None
        rec = self._tasks[t]
        earlier = self._banks[rec.bank].tasks[: rec.prefix - 1]
        if ref == 1 or len(earlier) == 1:
            return self._mask_flat(earlier[-1], layer)
        n = math.prod(self._shapes[layer])
        packed = [m for u in earlier if (m := self._tasks[u].masks.get(layer)) is not None]
        if not packed:
            return np.zeros(n, bool)
        return np.unpackbits(np.bitwise_or.reduce(packed), count=n).view(bool)

    def _code_mask(self, t: int, layer: str) -> None:
        # Choose and cache the stored coding of one mask: the smallest encoding among the
        # references the decoder will hold (ties go to the simpler reference).
        rec = self._tasks[t]
        if layer in rec.encoded_masks and rec.mask_refs[layer] == 0:  # loaded, coded alone
            rec.alone_sizes[layer] = len(rec.encoded_masks[layer])
            return
        mask = self.mask(t, layer)
        alone = bytes(encode_mask(mask))
        rec.alone_sizes[layer] = len(alone)
        if layer in rec.encoded_masks:  # loaded from a file: keep what it stores
            return
        best, best_ref = alone, 0
        if mask.any() and not mask.all():  # constant masks cost only a header alone
            refs = (1,) if rec.prefix == 2 else (1, 2) if rec.prefix > 2 else ()
            for ref in refs:
                ctx = self._reference_mask(t, layer, ref).reshape(mask.shape)
                enc = bytes(encode_mask(mask, context=ctx))
                if len(enc) < len(best):
                    best, best_ref = enc, ref
        rec.encoded_masks[layer] = best
        rec.mask_refs[layer] = best_ref

    def write_mask(self, task: int, layer: str) -> np.ndarray:
        """Positions where the task wrote fields in ``layer``: bool, layer shape (a copy)."""
        t = self._check_task(task)
        self._check_layer(layer)
        return self._write_flat(t, layer).reshape(self._shapes[layer])

    def _write_flat(self, t: int, layer: str) -> np.ndarray:
        packed = self._tasks[t].writes.get(layer)
        if packed is None:
            return np.zeros(math.prod(self._shapes[layer]), bool)
        return np.unpackbits(packed, count=math.prod(self._shapes[layer])).view(bool)

    def codes(self, task: int, layer: str) -> np.ndarray:
        """The codes of the task's fields in ``layer``, one per written position in C order.

        uint32; for raw float32 fields (bit-width 32) the float32 bit patterns.
        """
        t = self._check_task(task)
        self._check_layer(layer)
        rec = self._tasks[t]
        n = rec.fields.get(layer, 0)
        out = np.zeros(n, np.uint32)
        if n:
            bits_by_prefix, _ = self._prefix_tables(rec.bank, layer)
            got = _codes_of(self._banks[rec.bank].words[layer], self._write_flat(t, layer),
                            rec.prefix, self._prefix_bits, self._word_bits, bits_by_prefix, out)
            if got != n:  # cannot happen for a model built by add_task or accepted by load
                raise RuntimeError(f"task {t}, layer {layer!r}: {got} of {n} fields found")
        return out

    def default_write(self, task: int, layer: str) -> np.ndarray:
        """Write reference ``"new"``: the task's mask minus what its bank's earlier tasks wrote.

        Flat packed bits (``np.packbits`` of the flattened bool array).
        """
        t = self._check_task(task)
        self._check_layer(layer)
        rec = self._tasks[t]
        n = math.prod(self._shapes[layer])
        mask = rec.masks.get(layer, np.zeros((n + 7) // 8, np.uint8))
        written = [w for u in self._banks[rec.bank].tasks[: rec.prefix - 1]
                   if (w := self._tasks[u].writes.get(layer)) is not None]
        if not written:
            return mask.copy()
        return mask & ~np.bitwise_or.reduce(written)

    def write_coding(self, task: int, layer: str) -> tuple[int, bytes]:
        """How a file stores the task's write mask of ``layer``: (reference, bytes).

        The reference indexes ``WRITE_REFERENCES``: 0 ``"new"`` and 1 ``"mask"`` store no bytes;
        2 ``"coded"`` stores :func:`encode_mask` of the write mask XOR the ``"new"`` one.
        """
        t = self._check_task(task)
        self._check_layer(layer)
        rec = self._tasks[t]
        if layer not in rec.write_codings:
            n = math.prod(self._shapes[layer])
            write = rec.writes.get(layer, np.zeros((n + 7) // 8, np.uint8))
            new = self.default_write(t, layer)
            mask = rec.masks.get(layer, np.zeros((n + 7) // 8, np.uint8))
            if np.array_equal(write, new):
                rec.write_codings[layer] = (0, b"")
            elif np.array_equal(write, mask):
                rec.write_codings[layer] = (1, b"")
            else:
                diff = np.unpackbits(write ^ new, count=n).view(bool)
                diff = diff.reshape(self._shapes[layer])
                rec.write_codings[layer] = (2, bytes(encode_mask(diff)))
        return rec.write_codings[layer]

    def keep_stored_coding(self, task: int, layer: str, mask_data: bytes, reference: int,
                           write_coding: tuple[int, bytes]) -> None:
        """Record how a file stored the task's masks of ``layer`` (used by load).

        The caller has decoded ``mask_data`` in the context of ``reference`` to this task's
        mask, and ``write_coding`` to its write mask; :meth:`encoded_mask` and
        :meth:`write_coding` then return these, so capacity counts what the file holds and a
        re-save stores the same bytes.
        """
        t = self._check_task(task)
        self._check_layer(layer)
        if not isinstance(mask_data, bytes) or reference not in range(len(MASK_REFERENCES)):
            raise TypeError("mask_data must be bytes and reference an index into "
                            "MASK_REFERENCES")
        rec = self._tasks[t]
        rec.encoded_masks[layer] = mask_data
        rec.mask_refs[layer] = reference
        rec.alone_sizes.pop(layer, None)
        rec.write_codings[layer] = (int(write_coding[0]), bytes(write_coding[1]))

    def private(self, task: int) -> dict[str, np.ndarray]:
        """The task's private parameters (read-only float32 arrays)."""
        return dict(self._tasks[self._check_task(task)].private)

    def words(self, layer: str, bank: int) -> np.ndarray:
        """The word array of ``layer`` in ``bank`` (read-only view, flat, one word a position)."""
        self._check_layer(layer)
        k = _check_int(bank, "bank")
        if not 0 <= k < len(self._banks):
            raise IndexError(f"no bank {k}; there are {len(self._banks)}")
        return _readonly(self._banks[k].words[layer])

    def _prefix_tables(self, k: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
        size = 1 << self._prefix_bits
        bits_by_prefix = np.zeros(size, np.int64)
        task_by_prefix = np.full(size, -1, np.int32)
        for j, tid in enumerate(self._banks[k].tasks):
            bits_by_prefix[j + 1] = self._tasks[tid].bits.get(layer, 0)
            task_by_prefix[j + 1] = tid
        return bits_by_prefix, task_by_prefix

    def resolve(self, task: int, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which field the task reads at every position of ``layer``, by the read rule.

        Returns
        -------
        mask : ndarray of bool, layer shape
            The task's mask.
        source : ndarray of int32, layer shape
            Id of the task whose field is read at each position; -1 where mask is 0.
        codes : ndarray of uint32, layer shape
            That field's code (the float32 bit pattern for a raw field); 0 where mask is 0.
        """
        t = self._check_task(task)
        self._check_layer(layer)
        rec = self._tasks[t]
        shape = self._shapes[layer]
        mask = self._mask_flat(t, layer)
        bits_by_prefix, task_by_prefix = self._prefix_tables(rec.bank, layer)
        source = np.empty(mask.size, np.int32)
        codes = np.empty(mask.size, np.uint32)
        missing = _resolve_kernel(self._banks[rec.bank].words[layer], mask, rec.prefix,
                                  self._prefix_bits, self._word_bits, bits_by_prefix,
                                  task_by_prefix, source, codes)
        if missing:  # cannot happen for a model built by add_task or accepted by load
            raise RuntimeError(f"task {t}, layer {layer!r}: {missing} used positions have no field")
        return mask.reshape(shape), source.reshape(shape), codes.reshape(shape)

    def weights(self, task: int, layer: str) -> np.ndarray:
        """Dense float32 weights of ``task`` in ``layer``: the reference decode.

        The value at each position is the codebook entry (or raw float32) of the field that
        :meth:`resolve` names there, 0 where the mask is 0; one fused pass over the words.
        """
        t = self._check_task(task)
        self._check_layer(layer)
        rec = self._tasks[t]
        mask = self._mask_flat(t, layer)
        bits_by_prefix, _ = self._prefix_tables(rec.bank, layer)
        size = bits_by_prefix.size
        offset_by_prefix = np.zeros(size, np.int64)
        raw_by_prefix = np.zeros(size, np.bool_)
        parts = []
        pos = 0
        for j, tid in enumerate(self._banks[rec.bank].tasks[: rec.prefix]):
            cb = self._tasks[tid].codebooks.get(layer, _NO_CODEBOOK)
            if cb is None:
                raw_by_prefix[j + 1] = True
                continue
            offset_by_prefix[j + 1] = pos
            parts.append(cb)
            pos += cb.size
        table = np.concatenate(parts) if parts else np.zeros(1, np.float32)
        out = np.empty(mask.size, np.float32)
        missing = _weights_kernel(self._banks[rec.bank].words[layer], mask, rec.prefix,
                                  self._prefix_bits, self._word_bits, bits_by_prefix,
                                  offset_by_prefix, raw_by_prefix, table.view(np.uint32),
                                  out.view(np.uint32))
        if missing:  # cannot happen for a model built by add_task or accepted by load
            raise RuntimeError(f"task {t}, layer {layer!r}: {missing} used positions have no field")
        return out.reshape(self._shapes[layer])

    def capacity(self, **options: Any) -> Capacity:
        """Bits used per component, task and layer; see :func:`bitsub.model.capacity.capacity`."""
        from bitsub.model.capacity import capacity

        return capacity(self, **options)

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the model to one HDF5 file, atomically; return its size in bytes.

        See :func:`bitsub.storage.hdf5.save`; sets :attr:`file_bytes`.
        """
        from bitsub.storage.hdf5 import save

        return save(self, path)

    # --------------------------------------------------------------------- misc

    def __repr__(self) -> str:
        return (f"PackedModel(word_bits={self._word_bits}, prefix_bits={self._prefix_bits}, "
                f"layers={len(self._shapes)}, tasks={len(self._tasks)}, banks={len(self._banks)})")

    def __eq__(self, other: object) -> bool:
        """Bit-exact equality of everything stored (words, task table, private, network)."""
        if not isinstance(other, PackedModel):
            return NotImplemented
        if (self._word_bits, self._prefix_bits, self._shapes, self._network) != (
                other._word_bits, other._prefix_bits, other._shapes, other._network):
            return False
        if len(self._banks) != len(other._banks) or len(self._tasks) != len(other._tasks):
            return False
        for a, b in zip(self._banks, other._banks):
            if a.tasks != b.tasks:
                return False
            for name in self._shapes:
                if not np.array_equal(a.words[name], b.words[name]):
                    return False
        for t, (a, b) in enumerate(zip(self._tasks, other._tasks)):
            if (a.bank, a.prefix) != (b.bank, b.prefix):
                return False
            if sorted(a.private) != sorted(b.private):
                return False
            for key in a.private:
                pa, pb = a.private[key], b.private[key]
                if pa.shape != pb.shape or pa.tobytes() != pb.tobytes():
                    return False
            for name in self._shapes:
                if a.bits.get(name, 0) != b.bits.get(name, 0):
                    return False
                ca = self.codebook(t, name)
                cb = other.codebook(t, name)
                if (ca is None) != (cb is None):
                    return False
                if ca is not None and ca.tobytes() != cb.tobytes():
                    return False
                if not np.array_equal(self._mask_flat(t, name), other._mask_flat(t, name)):
                    return False
        return True

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------ matmul / forward (bitsub.kernels.matmul) below
    # (issue 4) A task's plan for a layer is built once and cached. Tasks are only ever added
    # and an earlier task's fields, masks and codebooks never change, so a cached plan stays
    # valid for the life of the model (a new layer or a new task only adds cache entries).

    def plan(self, task: int, layer: str) -> Any:
        """The task's matmul plan for ``layer`` (a ``bitsub.kernels.plan.Plan``, built once)."""
        from bitsub.kernels.plan import model_plan

        t = self._check_task(task)
        self._check_layer(layer)
        cache = self.__dict__.setdefault("_plans", {})
        plan = cache.get((t, layer))
        if plan is None:
            plan = cache[(t, layer)] = model_plan(self, t, layer)
        return plan

    def plan_bytes(self, task: int) -> int:
        """Bytes held by the task's plans, all layers (building those not yet cached)."""
        return sum(self.plan(task, name).nbytes for name in self._shapes)

    def matmul(self, task: int, layer: str, x: np.ndarray, *, device: str = "cpu"
               ) -> np.ndarray:
        """``x @ weights(task, layer).T`` from the packed data (``bitsub.kernels.matmul.matmul``).

        Parameters
        ----------
        task : int
        layer : str
            A layer of shape (out, in), or a conv layer used as (out, in*kh*kw).
        x : ndarray of float32, (in,) or (batch, in), C-contiguous
        device : {"cpu", "cuda"}
            "cuda" runs the numba.cuda twin (RuntimeError without a GPU or the simulator).
        """
        plan = self.plan(task, layer)
        if device == "cpu":
            from bitsub.kernels.matmul import matmul
        elif device == "cuda":
            from bitsub.kernels.gpu_matmul import gpu_matmul as matmul
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        return matmul(plan, x)

    def conv2d(self, task: int, layer: str, x: np.ndarray, stride: int = 1, padding: int = 0,
               *, device: str = "cpu") -> np.ndarray:
        """NCHW convolution with the task's packed 4-D layer (``bitsub.kernels.matmul.conv2d``)."""
        plan = self.plan(task, layer)
        if device == "cpu":
            from bitsub.kernels.matmul import conv2d
        elif device == "cuda":
            from bitsub.kernels.gpu_matmul import gpu_conv2d as conv2d
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        return conv2d(plan, x, stride, padding)

    def forward(self, task: int, x: np.ndarray, *, device: str = "cpu") -> np.ndarray:
        """Run the recorded network (:meth:`set_network`) for ``task`` on a batch, NumPy only.

        See :func:`bitsub.model.network.forward` for the op vocabulary.
        """
        from bitsub.model.network import forward

        return forward(self, self._check_task(task), x, device=device)

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

The model is data plus read accessors; the work lives beside it: :mod:`bitsub.model.placement`
(checking a task's layers, choosing its bank, writing its fields), :mod:`bitsub.model.readrule`
(the read-rule kernels and the words' hash), :mod:`bitsub.model.maskrefs` (how masks and write
masks are coded against a bank's earlier tasks), :mod:`bitsub.model.capacity` and
:mod:`bitsub.storage.hdf5` (imported only inside ``capacity()`` and ``save()``).

Length: the module and its class are about 600-850 lines because the class is the one public face
of the model: some fifty short accessors, each with its checks and docstring.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bitsub.codecs.maskcodec import encode_mask
from bitsub.model.maskrefs import (
    MASK_REFERENCES,
    WRITE_REFERENCES,
    choose_mask_coding,
    code_write,
    default_write,
    reference_context,
)
from bitsub.model.placement import (
    MAX_CODE_BITS,
    MAX_VALUE,
    RAW_BITS,
    Bank,
    TaskLayer,
    check_index,
    check_private,
    choose_bank,
    place_fields,
    prepare_layer,
)
from bitsub.model.readrule import (
    codes_of,
    decode_weights,
    resolve_fields,
    words_hash,
)
from bitsub.model.rebuild import build_banks, gather_codes

if TYPE_CHECKING:
    from bitsub.model.capacity import Capacity

__all__ = ["MASK_REFERENCES", "MAX_CODE_BITS", "MAX_VALUE", "RAW_BITS", "WRITE_REFERENCES",
           "PackedModel", "TaskLayer", "check_network", "words_hash"]

MAX_PREFIX_BITS = 8
_NO_CODEBOOK = np.zeros(0, np.float32)  # a layer where the task wrote no field
_NO_CODEBOOK.flags.writeable = False


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


# ------------------------------------------------------------------------------- helpers


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

    Length: the one public face of the model (some fifty short checked accessors); the work
    lives in placement, readrule and maskrefs.

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
        word_bits = check_index(word_bits, "word_bits")
        prefix_bits = check_index(prefix_bits, "prefix_bits")
        if word_bits not in (32, 64):
            raise ValueError(f"word_bits must be 32 or 64, got {word_bits}")
        if not 1 <= prefix_bits <= MAX_PREFIX_BITS:
            raise ValueError(f"prefix_bits must be in 1..{MAX_PREFIX_BITS}, got {prefix_bits}")
        self._word_bits = word_bits
        self._prefix_bits = prefix_bits
        self._dtype = np.dtype(np.uint32 if word_bits == 32 else np.uint64)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._banks: list[Bank] = []
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
            shp = tuple(check_index(s, "shape entries") for s in shape)
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
            prepared.append(prepare_layer(name, tl, self._shapes[name], self._prefix_bits,
                                          self._word_bits))
        priv = check_private(private)
        target = choose_bank(self._banks, prepared, bank, self._shapes, self._prefix_bits,
                             self._word_bits)

        # Everything checked: from here on nothing can fail.
        if target == len(self._banks):
            self._banks.append(Bank(
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
            place_fields(b, pl, prefix, self._prefix_bits, self._word_bits)
            task.bits[pl.name] = pl.bits
            task.fields[pl.name] = pl.n_write
            task.codebooks[pl.name] = pl.codebook
            task.masks[pl.name] = np.packbits(pl.mask)
            task.writes[pl.name] = np.packbits(pl.write)
        b.tasks.append(tid)
        self._tasks.append(task)
        self.file_bytes = None  # the model no longer is what a file holds
        return tid

    def add_banks(
        self,
        tasks: Sequence[Mapping[str, TaskLayer]],
        banks: Sequence[int],
        private: Sequence[Mapping[str, np.ndarray] | None] | None = None,
    ) -> list[int]:
        """Add tasks into new banks at once; return their ids.

        Task j goes into the ``banks[j]``-th new bank (numbered 0, 1, ... in order of first
        use), after the bank's earlier tasks in the list. The model is the one that
        :meth:`add_task` builds from the same tasks in order (``bank="new"`` for the first task
        of each bank, that bank after), with the same checks, but each bank's words of a layer
        are written in one pass over the positions (:func:`bitsub.model.rebuild.build_banks`)
        instead of one per task. The fast way in for masks given as
        :class:`~bitsub.model.placement.PackedMask` and codes as
        :class:`~bitsub.model.placement.PackedCodes` (how a file holds them: nothing is
        unpacked); :meth:`words_hash` of the new banks is computed in the same pass.

        Raises
        ------
        ValueError, TypeError
            As :meth:`add_task` would for any of the tasks, or bank numbers out of order. A
            failed call leaves the model unchanged.
        """
        tasks = list(tasks)
        bank_of = [check_index(b, "banks entries") for b in banks]
        private = [None] * len(tasks) if private is None else list(private)
        if not len(bank_of) == len(private) == len(tasks):
            raise ValueError(f"{len(tasks)} tasks, {len(bank_of)} banks and {len(private)} "
                             "private dicts: give one of each per task")
        members: list[list[int]] = []
        for j, k in enumerate(bank_of):
            if k == len(members):
                members.append([])
            elif not 0 <= k < len(members):
                raise ValueError(f"banks[{j}] = {k}: new banks are numbered 0, 1, ... in order "
                                 f"of first use (next: {len(members)})")
            members[k].append(j)
            if len(members[k]) > self.max_tasks_per_bank:
                raise ValueError(f"new bank {k} would hold more than {self.max_tasks_per_bank} "
                                 f"tasks, the most that {self._prefix_bits}-bit prefixes allow")
        prepared = []
        for layers in tasks:
            if not isinstance(layers, Mapping):
                raise TypeError("tasks must be dicts str -> TaskLayer")
            pls = {}
            for name, tl in layers.items():
                if not isinstance(name, str) or name not in self._shapes:
                    raise ValueError(f"no layer {name!r}; add it with add_layer first")
                if not isinstance(tl, TaskLayer):
                    raise TypeError(f"layers[{name!r}] must be a TaskLayer, got "
                                    f"{type(tl).__name__}")
                pls[name] = prepare_layer(name, tl, self._shapes[name], self._prefix_bits,
                                          self._word_bits, packed=True)
            prepared.append(pls)
        privs = [check_private(p) for p in private]
        new = build_banks(self._shapes, members, prepared, self._prefix_bits, self._word_bits)

        # Everything checked: from here on nothing can fail.
        first_bank, first_task = len(self._banks), len(self._tasks)
        for j, pls in enumerate(prepared):
            k = bank_of[j]
            bank = new[k]
            task = _Task(bank=first_bank + k, prefix=len(bank.tasks) + 1, bits={}, fields={},
                         codebooks={}, masks={}, private=privs[j], encoded_masks={})
            for pl in pls.values():
                task.bits[pl.name] = pl.bits
                task.fields[pl.name] = pl.n_write
                task.codebooks[pl.name] = pl.codebook
                mask = np.array(pl.mask_bits)
                task.masks[pl.name] = mask
                # one copy where the write mask is the mask (the file's "mask" reference)
                task.writes[pl.name] = (mask if pl.write_bits is pl.mask_bits
                                        else np.array(pl.write_bits))
            bank.tasks.append(first_task + j)
            self._tasks.append(task)
        self._banks.extend(new)
        self.file_bytes = None
        return list(range(first_task, len(self._tasks)))

    def bank_codes(self, bank: int, layer: str) -> dict[int, np.ndarray]:
        """The codes of every task of ``bank`` that writes fields in ``layer``, packed.

        Task t's entry is ``pack_bits(codes(t, layer), bits(t, layer))`` (for raw float32
        fields, the codes as big-endian uint32), all gathered from the words in one pass
        (:func:`bitsub.model.rebuild.gather_codes`): how a file stores them.
        """
        self._check_layer(layer)
        k = check_index(bank, "bank")
        if not 0 <= k < len(self._banks):
            raise IndexError(f"no bank {k}; there are {len(self._banks)}")
        tasks = self._banks[k].tasks
        words = self._banks[k].words[layer]
        writes = np.zeros((len(tasks), (words.size + 7) // 8), np.uint8)
        bits = []
        for p, t in enumerate(tasks):
            bits.append(self._tasks[t].bits.get(layer, 0))
            if self._tasks[t].fields.get(layer, 0):
                writes[p] = self._tasks[t].writes[layer]
        streams = gather_codes(words, writes, bits, self._prefix_bits, self._word_bits)
        return {t: streams[p] for p, t in enumerate(tasks) if self._tasks[t].fields.get(layer, 0)}

    def words_hash(self, layer: str, bank: int) -> int:
        """:func:`bitsub.model.readrule.words_hash` of the bank's words of ``layer`` (cached)."""
        self._check_layer(layer)
        k = check_index(bank, "bank")
        if not 0 <= k < len(self._banks):
            raise IndexError(f"no bank {k}; there are {len(self._banks)}")
        hashes = self._banks[k].hashes
        if layer not in hashes:
            hashes[layer] = words_hash(self._banks[k].words[layer])
        return hashes[layer]

    # --------------------------------------------------------------------- reading

    def _check_layer(self, layer: object) -> None:
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str), got {type(layer).__name__}")
        if layer not in self._shapes:
            raise KeyError(f"no layer {layer!r}; layers are {list(self._shapes)}")

    def _check_task(self, task: object) -> int:
        t = check_index(task, "task")
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
        k = check_index(bank, "bank")
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
        ctx = reference_context(self._earlier(int(task), layer, "masks"), ref,
                                math.prod(self._shapes[layer]))
        return None if ctx is None else ctx.reshape(self._shapes[layer])

    def alone_mask_bytes(self, task: int, layer: str) -> int:
        """Bytes of the task's mask of ``layer`` coded alone (cached; capacity compares it)."""
        t = self._check_task(task)
        self._check_layer(layer)
        if layer not in self._tasks[t].alone_sizes:
            self._code_mask(t, layer)
        return self._tasks[t].alone_sizes[layer]

    def _earlier(self, t: int, layer: str, what: str) -> list[np.ndarray]:
        # The packed masks ("masks") or write masks ("writes") of the earlier tasks of t's bank
        rec = self._tasks[t]
        zeros = np.zeros((math.prod(self._shapes[layer]) + 7) // 8, np.uint8)
        return [getattr(self._tasks[u], what).get(layer, zeros)
                for u in self._banks[rec.bank].tasks[: rec.prefix - 1]]

    def _code_mask(self, t: int, layer: str) -> None:
        # Choose and cache the stored coding of one mask (maskrefs.choose_mask_coding); a mask
        # loaded from a file keeps the coding the file stores.
        rec = self._tasks[t]
        if layer in rec.encoded_masks and rec.mask_refs[layer] == 0:  # loaded, coded alone
            rec.alone_sizes[layer] = len(rec.encoded_masks[layer])
            return
        best, ref, alone = choose_mask_coding(self.mask(t, layer), self._earlier(t, layer, "masks"))
        rec.alone_sizes[layer] = alone
        if layer not in rec.encoded_masks:
            rec.encoded_masks[layer] = best
            rec.mask_refs[layer] = ref

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
            got = codes_of(self._banks[rec.bank].words[layer], self._write_flat(t, layer),
                            rec.prefix, self._prefix_bits, self._word_bits, bits_by_prefix, out)
            if got != n:  # cannot happen for a model built by add_task or accepted by load
                raise RuntimeError(f"task {t}, layer {layer!r}: {got} of {n} fields found")
        return out

    def write_coding(self, task: int, layer: str) -> tuple[int, bytes]:
        """How a file stores the task's write mask of ``layer``: (reference, bytes).

        The reference indexes ``WRITE_REFERENCES``: 0 ``"new"`` (the mask minus what the bank's
        earlier tasks wrote) and 1 ``"mask"`` store no bytes; 2 ``"coded"`` stores
        :func:`encode_mask` of the write mask XOR the ``"new"`` one.
        """
        t = self._check_task(task)
        self._check_layer(layer)
        rec = self._tasks[t]
        if layer not in rec.write_codings:
            zeros = np.zeros((math.prod(self._shapes[layer]) + 7) // 8, np.uint8)
            mask = rec.masks.get(layer, zeros)
            new = default_write(mask, self._earlier(t, layer, "writes"))
            rec.write_codings[layer] = code_write(rec.writes.get(layer, zeros), new, mask,
                                                  self._shapes[layer])
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
        k = check_index(bank, "bank")
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
        missing = resolve_fields(self._banks[rec.bank].words[layer], mask, rec.prefix,
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
        missing = decode_weights(self._banks[rec.bank].words[layer], mask, rec.prefix,
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
    # A task's plan for a layer is built once and cached. Tasks are only ever added
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

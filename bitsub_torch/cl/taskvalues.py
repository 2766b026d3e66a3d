"""Per-task stored values for the quantizing strategies: banks of fields, mirrored in torch.

TinySubNets and Ada-QPacknet store a task's new weights as K-Means codes once the task ends, and
"the quantized values a task was validated with are exactly the values stored; later tasks train
against them frozen". :class:`FieldStore` is the bookkeeping of that storage on the torch side,
with the same rules as :class:`bitsub.PackedModel` so that export always succeeds and reproduces
the values bit for bit:

- a task lives in one bank; it writes a field ``[prefix: P][code: b]`` at each position of its
  ``write`` set and reads, at the other positions of its ``mask``, the field of the latest earlier
  task of the same bank that wrote there (the read rule);
- a field fits in a word while ``used + P + b <= word_bits`` (first fit from the MSB down), and a
  bank holds at most ``2**P - 1`` tasks.

Per task and layer it keeps, in bits (:class:`CodedFields`): the mask Huffman-coded (alone or in
the context of the previous task of its bank), the write set coded in the context of the mask,
the bit-width, the codebook and the codes packed at the bit-width. Masks, write sets and dense
values are decoded on demand into small caches, so neither memory nor checkpoints hold a dense
copy per task. The quantizing strategies hand the same arrays to the model's layers
(`bitsub_torch.nn.taskmemory.TaskMemory.adopt_values`: shared, not copied), so that the model's
``state_dict`` alone holds what its forward pass needs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bitsub.codecs.bitfield import pack_bits, unpack_bits
from bitsub.validate import check_int
from bitsub_torch.nn.taskmemory import code_mask, code_write, decode_coded_mask

__all__ = ["CodedFields", "FieldStore", "LayerFields"]

_CACHE = 2  # decoded masks / values a store keeps per layer


@dataclass(frozen=True)
class LayerFields:
    """What one finished task stores in one layer.

    Attributes
    ----------
    mask : np.ndarray of bool
        Positions the task uses (layer shape).
    write : np.ndarray of bool
        Positions where it wrote a field (a subset of ``mask``).
    bits : int
        Bit-width of its codes in this layer (0 when it wrote nothing).
    codebook : np.ndarray of float32
        ``2**bits`` centroids (empty when it wrote nothing).
    codes : np.ndarray of uint8/uint16
        One code per written position, in C order.
    """

    mask: np.ndarray
    write: np.ndarray
    bits: int
    codebook: np.ndarray
    codes: np.ndarray

    def values(self) -> np.ndarray:
        """The written values ``codebook[codes]`` (1-D float32, C order of ``write``)."""
        if self.codes.size == 0:
            return np.zeros(0, np.float32)
        return self.codebook[self.codes]


@dataclass(frozen=True)
class CodedFields:
    """What one finished task stores in one layer, in bits (what `FieldStore` keeps).

    Attributes
    ----------
    mask : np.ndarray of uint8
        The mask, coded by `bitsub_torch.nn.taskmemory.code_mask`.
    mask_context : int
        The task whose mask it is coded in (the previous task of the bank), or -1.
    write : np.ndarray of uint8
        The write set coded by `code_write`, in the context of the mask (``write_context`` 0) or
        of the mask's positions no earlier task of the bank wrote (1).
    bits : int
        Bit-width of the codes (0 when nothing was written).
    codebook : np.ndarray of float32
        The centroids.
    codes : np.ndarray of uint8
        ``written`` codes packed at ``bits`` bits (`bitsub.pack_bits`).
    written : int
        Number of written positions.
    """

    mask: np.ndarray
    mask_context: int
    write: np.ndarray
    bits: int
    codebook: np.ndarray
    codes: np.ndarray
    written: int
    write_context: int = 0

    def nbytes(self) -> int:
        """Bytes of the coded arrays."""
        return self.mask.nbytes + self.write.nbytes + self.codebook.nbytes + self.codes.nbytes


def _bool(arr: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    a = np.asarray(arr)
    if a.dtype != np.bool_:
        raise TypeError(f"{what} must be a bool array, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a)


def _checked_fields(name: str, f: Any, shape: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Mask, write set and written count of one layer's fields, each checked on its own."""
    if not isinstance(f, LayerFields):
        raise TypeError(f"layers[{name!r}] must be a LayerFields")
    mask = _bool(f.mask, shape, f"layer {name!r}: mask")
    write = _bool(f.write, shape, f"layer {name!r}: write")
    if (write & ~mask).any():
        raise ValueError(f"layer {name!r}: write must be a subset of mask")
    n = int(write.sum())
    if not n:
        if f.codes.size:
            raise ValueError(f"layer {name!r}: codes given but nothing written")
        return mask, write, n
    if not 1 <= f.bits <= 16:
        raise ValueError(f"layer {name!r}: bits must be in 1..16, got {f.bits}")
    if f.codebook.dtype != np.float32 or f.codebook.ndim != 1:
        raise TypeError(f"layer {name!r}: codebook must be 1-D float32")
    if not 1 <= f.codebook.size <= 1 << f.bits:
        raise ValueError(f"layer {name!r}: codebook size must be 1..2**bits")
    if f.codes.shape != (n,) or f.codes.dtype.kind != "u":
        raise ValueError(f"layer {name!r}: codes must be unsigned, one per written position ({n})")
    if int(f.codes.max()) >= f.codebook.size:
        raise ValueError(f"layer {name!r}: a code exceeds the codebook")
    return mask, write, n


class FieldStore:
    """Banks of fields per layer: who wrote what, with which codes, and how many bits are used.

    Length: the bank rules (check, add), the coded per-task records with their decoding caches
    (masks chained through contexts, write sets through the bank's earlier writes), export and
    state each take a few short methods over the same records.

    Parameters
    ----------
    shapes : dict str -> tuple of int
        Layer name -> weight shape.
    word_bits : {32, 64}
        Width of a word, as in :class:`bitsub.PackedModel`.
    prefix_bits : int
        P, the prefix width; a bank holds at most ``2**P - 1`` tasks.
    """

    def __init__(
        self, shapes: Mapping[str, tuple[int, ...]], *, word_bits: int = 32, prefix_bits: int = 3
    ) -> None:
        if word_bits not in (32, 64) or isinstance(word_bits, bool):
            raise ValueError(f"word_bits must be 32 or 64, got {word_bits!r}")
        check_int(prefix_bits, "prefix_bits", 1, 8)
        if not shapes:
            raise ValueError("a FieldStore needs at least one layer")
        self.word_bits = int(word_bits)
        self.prefix_bits = int(prefix_bits)
        self.shapes = {str(k): tuple(int(s) for s in v) for k, v in shapes.items()}
        self._bank_tasks: list[list[int]] = []
        self._used: list[dict[str, np.ndarray]] = []  # per bank: layer -> uint8 bits used
        self._task_bank: dict[int, int] = {}
        self._fields: dict[int, dict[str, CodedFields]] = {}
        self._masks: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._values: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._unions: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()

    # ------------------------------------------------------------------ structure
    @property
    def max_tasks_per_bank(self) -> int:
        """``2**P - 1``: prefix 0 ends a word."""
        return (1 << self.prefix_bits) - 1

    @property
    def banks(self) -> int:
        """Number of banks opened so far."""
        return len(self._bank_tasks)

    @property
    def tasks(self) -> list[int]:
        """Finished tasks, in the order they were added."""
        return list(self._fields)

    def bank(self, task: int) -> int:
        """The bank of a finished task."""
        self._check_task(task)
        return self._task_bank[task]

    def bank_tasks(self, bank: int) -> list[int]:
        """The tasks of a bank, by prefix (prefix = position + 1)."""
        return list(self._bank_tasks[self._check_bank(bank)])

    def bank_full(self, bank: int) -> bool:
        """Whether the bank has no free prefix left."""
        return len(self._bank_tasks[self._check_bank(bank)]) >= self.max_tasks_per_bank

    def open_bank(self) -> int:
        """Open a new, empty bank and return its index."""
        self._bank_tasks.append([])
        self._used.append({n: np.zeros(s, np.uint8) for n, s in self.shapes.items()})
        return len(self._bank_tasks) - 1

    def current_bank(self) -> int | None:
        """The latest bank (None before the first one is opened)."""
        return self.banks - 1 if self.banks else None

    def fields(self, task: int, layer: str) -> LayerFields:
        """What a finished task stored in a layer (decoded: dense mask and write set, codes)."""
        self._check_task(task)
        self._check_layer(layer)
        c = self._fields[task][layer]
        mask = np.array(self.mask(task, layer))
        if not c.written:
            empty = np.zeros(self.shapes[layer], np.bool_)
            return LayerFields(mask, empty, 0, np.zeros(0, np.float32), np.zeros(0, np.uint8))
        write = self._write(task, layer)
        codes = unpack_bits(c.codes, c.bits, c.written)
        return LayerFields(mask, write, c.bits, c.codebook.copy(), codes)

    def coded(self, task: int, layer: str) -> CodedFields:
        """What a finished task stored in a layer, as stored (coded; the arrays are shared)."""
        self._check_task(task)
        self._check_layer(layer)
        return self._fields[task][layer]

    def mask(self, task: int, layer: str) -> np.ndarray:
        """A finished task's bool mask in a layer (decoded and cached; read-only)."""
        self._check_task(task)
        key = (task, layer)
        hit = self._masks.get(key)
        if hit is not None:
            self._masks.move_to_end(key)
            return hit
        c = self._fields[task][layer]
        ctx = self.mask(c.mask_context, layer) if c.mask_context >= 0 else None
        mask = decode_coded_mask(c.mask, self.shapes[layer], ctx)
        mask.flags.writeable = False
        self._remember(self._masks, key, mask)
        return mask

    def _write(self, task: int, layer: str) -> np.ndarray | None:
        c = self._fields[task][layer]
        if not c.written:
            return None
        ctx = self.mask(task, layer)
        if c.write_context:
            ctx = ctx & ~self._written_before(task, layer)
        return decode_coded_mask(c.write, self.shapes[layer], ctx)

    def _written_before(self, task: int, layer: str) -> np.ndarray:
        # The positions the tasks of ``task``'s bank before it wrote (what has_field said then).
        tasks = self._bank_tasks[self._task_bank[task]]
        earlier = [t for t in tasks[: tasks.index(task)] if self._fields[t][layer].written]
        if not earlier:
            return np.zeros(self.shapes[layer], np.bool_)
        key = (earlier[-1], layer)
        hit = self._unions.get(key)
        if hit is None:
            hit = self._written_before(earlier[-1], layer) | self._write(earlier[-1], layer)
            self._remember(self._unions, key, hit)
        return hit

    def release_caches(self) -> None:
        """Drop the decoded masks, unions and values (re-decoded when next needed)."""
        self._masks.clear()
        self._values.clear()
        self._unions.clear()

    def _remember(self, cache: OrderedDict, key: tuple[int, str], value: np.ndarray) -> None:
        # _CACHE entries per layer, so a cache holds at most _CACHE x the layer's positions for
        # each layer (a count over all layers let the largest layers' entries accumulate)
        cache[key] = value
        same = [k for k in cache if k[1] == key[1]]
        for old in same[: len(same) - _CACHE]:
            del cache[old]

    # ------------------------------------------------------------------ bit accounting
    def used_bits(self, bank: int, layer: str) -> np.ndarray:
        """Bits occupied per word (layer shape, uint8, read-only view)."""
        self._check_layer(layer)
        v = self._used[self._check_bank(bank)][layer].view()
        v.flags.writeable = False
        return v

    def room(self, bank: int, layer: str) -> np.ndarray:
        """Free bits per word (layer shape, int)."""
        return self.word_bits - self.used_bits(bank, layer).astype(np.int64)

    def writable(self, bank: int, layer: str, bits: int) -> np.ndarray:
        """Positions whose word still has room for one more field of ``bits`` code bits."""
        return self.room(bank, layer) >= self.prefix_bits + int(bits)

    def has_field(self, bank: int, layer: str) -> np.ndarray:
        """Positions where some task of the bank wrote a field (reusable there)."""
        return self.used_bits(bank, layer) > 0

    def visible(self, bank: int, layer: str, upto: int | None = None) -> np.ndarray:
        """At every position, the value of the latest field of the bank (by tasks <= ``upto``).

        Zero where no such field exists. Float32, layer shape.
        """
        self._check_layer(layer)
        out = np.zeros(self.shapes[layer], np.float32)
        flat = out.reshape(-1)
        for t in self._bank_tasks[self._check_bank(bank)]:
            if upto is not None and t > upto:
                break
            c = self._fields[t][layer]
            write = self._write(t, layer)
            if write is not None:
                flat[np.flatnonzero(write)] = c.codebook[unpack_bits(c.codes, c.bits, c.written)]
        return out

    def values(self, task: int, layer: str) -> np.ndarray:
        """The values a finished task reads at every position (a few cached; read-only float32).

        Outside the task's mask they are whatever the bank holds there; multiply by the mask for
        the task's weights (:meth:`weights`).
        """
        self._check_task(task)
        key = (task, layer)
        hit = self._values.get(key)
        if hit is None:
            hit = self.visible(self._task_bank[task], layer, upto=task)
            hit.flags.writeable = False
            self._remember(self._values, key, hit)
        return hit

    def weights(self, task: int, layer: str) -> np.ndarray:
        """The task's weights: its mask times :meth:`values` (what ``pm.weights`` returns)."""
        return np.where(self.mask(task, layer), self.values(task, layer), np.float32(0))

    def field_bits(self, task: int) -> int:
        """Bits of all fields the task wrote: sum over layers of ``written * (P + b)``."""
        self._check_task(task)
        return sum(
            c.written * (self.prefix_bits + c.bits) for c in self._fields[task].values()
        )

    # ------------------------------------------------------------------ adding a task
    def check(self, bank: int, layers: Mapping[str, LayerFields]) -> None:
        """Raise ValueError if the task's fields could not be added to ``bank`` (see add_task)."""
        self._check_bank(bank)
        if self.bank_full(bank):
            raise ValueError(
                f"bank {bank} is full ({self.max_tasks_per_bank} tasks); open a new one"
            )
        for name, f in layers.items():
            self._check_layer(name)
            mask, write, n = _checked_fields(name, f, self.shapes[name])
            if n and not self.writable(bank, name, f.bits)[write].all():
                raise ValueError(
                    f"layer {name!r}: some written words of bank {bank} have no room for a "
                    f"{self.prefix_bits}+{f.bits}-bit field"
                )
            reuse = mask & ~write
            if (reuse & ~self.has_field(bank, name)).any():
                raise ValueError(
                    f"layer {name!r}: the mask reuses positions that no earlier task of bank "
                    f"{bank} wrote; add them to write"
                )

    def add_task(self, task: int, bank: int, layers: Mapping[str, LayerFields]) -> None:
        """Record a finished task's fields in ``bank``; a failed call changes nothing.

        ``task`` must be larger than every task added so far. Layers not mentioned get an empty
        mask.
        """
        task = check_int(task, "task", 0)
        if self._fields and task <= max(self._fields):
            raise ValueError(f"tasks are added in increasing order; {task} is not after "
                             f"{max(self._fields)}")
        self.check(bank, layers)
        earlier = self._bank_tasks[bank][-1] if self._bank_tasks[bank] else -1
        full: dict[str, CodedFields] = {}
        for name, shape in self.shapes.items():
            f = layers.get(name)
            if f is None:
                empty = np.zeros(shape, np.bool_)
                f = LayerFields(empty, empty, 0, np.zeros(0, np.float32), np.zeros(0, np.uint8))
            mask = _bool(f.mask, shape, "mask")
            write = _bool(f.write, shape, "write")
            ctx = self.mask(earlier, name) if earlier >= 0 else None
            coded_mask, used = code_mask(mask, ctx)
            n = int(write.sum())
            if n:
                implied = mask & ~self.has_field(bank, name)
                coded_write, context = code_write(write, mask, implied)
                c = CodedFields(coded_mask, earlier if used else -1, coded_write, int(f.bits),
                                f.codebook.copy(), pack_bits(f.codes, int(f.bits)), n, context)
            else:
                c = CodedFields(coded_mask, earlier if used else -1, np.zeros(0, np.uint8), 0,
                                np.zeros(0, np.float32), np.zeros(0, np.uint8), 0)
            full[name] = c
        for name, c in full.items():
            if c.written:
                self._used[bank][name][_bool(layers[name].write, self.shapes[name], "write")] += (
                    np.uint8(self.prefix_bits + c.bits))
        self._fields[task] = full
        self._task_bank[task] = bank
        self._bank_tasks[bank].append(task)

    # ------------------------------------------------------------------ export
    def export_layers(self, task: int) -> dict[str, dict[str, Any]]:
        """Per layer ``{"mask", "write", "codebook", "codes", "bits"}`` for ``bitsub_torch.export``.

        ``codes`` has the layer shape (0 outside ``write``). Layers where the task wrote nothing
        carry no codebook (``None``) and ``bits`` 0.
        """
        self._check_task(task)
        out: dict[str, dict[str, Any]] = {}
        for name in self._fields[task]:
            f = self.fields(task, name)
            codes = np.zeros(self.shapes[name], np.uint16 if f.bits > 8 else np.uint8)
            codes.reshape(-1)[np.flatnonzero(f.write)] = f.codes
            out[name] = {
                "mask": f.mask,
                "write": f.write,
                "codebook": f.codebook if f.bits else None,
                "codes": codes,
                "bits": int(f.bits),
            }
        return out

    def export_bank(self, task: int) -> int | str:
        """The ``bank`` argument for ``PackedModel.add_task``: "new" for a bank's first task."""
        b = self.bank(task)
        return "new" if self._bank_tasks[b][0] == task else b

    # ------------------------------------------------------------------ state
    def nbytes(self) -> int:
        """Bytes the finished tasks take (coded arrays; the per-bank bit counts not included)."""
        return sum(c.nbytes() for layers in self._fields.values() for c in layers.values())

    def state_dict(self) -> dict[str, Any]:
        """Compact state of tensors, numbers, lists and dicts (the coded arrays, shared).

        Loadable with ``torch.load(..., weights_only=True)``, as the trainer's checkpoints are.
        """
        tasks = {}
        for t, layers in self._fields.items():
            tasks[int(t)] = {
                name: {
                    "mask": torch.from_numpy(c.mask),
                    "mask_context": int(c.mask_context),
                    "write": torch.from_numpy(c.write),
                    "bits": int(c.bits),
                    "codebook": torch.from_numpy(c.codebook),
                    "codes": torch.from_numpy(c.codes),
                    "written": int(c.written),
                    "write_context": int(c.write_context),
                }
                for name, c in layers.items()
            }
        return {
            "word_bits": self.word_bits,
            "prefix_bits": self.prefix_bits,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "bank_tasks": [[int(t) for t in b] for b in self._bank_tasks],
            "tasks": tasks,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> FieldStore:
        """Rebuild a store from :meth:`state_dict` (re-adding the tasks re-checks every rule).

        Also reads the state of earlier versions (masks bit-packed, one int32 code per field).
        """
        shapes = {k: tuple(int(s) for s in v) for k, v in state["shapes"].items()}
        word_bits, prefix_bits = int(state["word_bits"]), int(state["prefix_bits"])
        store = cls(shapes, word_bits=word_bits, prefix_bits=prefix_bits)
        order = sorted((int(t), b) for b, ts in enumerate(state["bank_tasks"]) for t in ts)
        for _ in state["bank_tasks"]:
            store.open_bank()
        for t, b in order:
            layers = {}
            for name, d in state["tasks"][t].items():
                layers[name] = store._decode_state(t, b, name, d)
            store.add_task(t, b, layers)
        return store

    def _decode_state(self, task: int, bank: int, name: str, d: Mapping[str, Any]) -> LayerFields:
        shape = self.shapes[name]
        bits = int(d["bits"])
        codebook = np.asarray(d["codebook"], dtype=np.float32)
        if "mask_context" not in d:  # an earlier version's state
            n = math.prod(shape)

            def unpack(a: Any) -> np.ndarray:
                return np.unpackbits(np.asarray(a, dtype=np.uint8), count=n).astype(bool)

            codes = np.asarray(d["codes"]).astype(np.uint16 if bits > 8 else np.uint8)
            return LayerFields(unpack(d["mask"]).reshape(shape), unpack(d["write"]).reshape(shape),
                               bits, codebook, codes)
        ctx = int(d["mask_context"])
        if ctx >= 0 and (ctx not in self._fields or ctx >= task):
            raise ValueError(f"task {task}, layer {name!r}: mask context {ctx} is not stored")
        mask = decode_coded_mask(d["mask"], shape, self.mask(ctx, name) if ctx >= 0 else None)
        written = int(d["written"])
        if not written:
            empty = np.zeros(shape, np.bool_)
            return LayerFields(mask, empty, 0, np.zeros(0, np.float32), np.zeros(0, np.uint8))
        ctx = mask & ~self.has_field(bank, name) if int(d["write_context"]) else mask
        write = decode_coded_mask(d["write"], shape, ctx)
        codes = unpack_bits(np.asarray(d["codes"], dtype=np.uint8), bits, written)
        return LayerFields(mask, write, bits, codebook, codes)

    # ------------------------------------------------------------------ checks
    def _check_task(self, task: int) -> None:
        if task not in self._fields:
            raise KeyError(f"task {task} is not stored; finished tasks are {list(self._fields)}")

    def _check_bank(self, bank: int) -> int:
        if not self.banks:
            raise ValueError(f"bank {bank} does not exist (no bank is open yet)")
        return check_int(bank, "bank", 0, self.banks - 1)

    def _check_layer(self, layer: str) -> None:
        if layer not in self.shapes:
            raise KeyError(f"no layer {layer!r}; layers are {list(self.shapes)}")

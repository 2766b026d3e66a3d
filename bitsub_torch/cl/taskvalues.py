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

Per task and layer it keeps the mask, the write set, the bit-width, the codebook and one code per
written position; dense values are rebuilt on demand (and cached), so checkpoints stay small.
:func:`install_values` plugs a store into a model's task layers through their ``values(task)``
indirection: a finished task reads its stored values; the task being trained reads its trainable
positions from the layer's ``weight`` (scratch) and every other position from the frozen fields of
its bank.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bitsub.validate import check_int

__all__ = ["FieldStore", "LayerFields", "install_values", "uninstall_values"]


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
        self._fields: dict[int, dict[str, LayerFields]] = {}
        self._cache: dict[tuple[int, str], np.ndarray] = {}

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
        """What a finished task stored in a layer."""
        self._check_task(task)
        self._check_layer(layer)
        return self._fields[task][layer]

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
            f = self._fields[t][layer]
            if f.codes.size:
                flat[np.flatnonzero(f.write)] = f.values()
        return out

    def values(self, task: int, layer: str) -> np.ndarray:
        """The values a finished task reads at every position (cached; read-only float32).

        Outside the task's mask they are whatever the bank holds there; multiply by the mask for
        the task's weights (:meth:`weights`).
        """
        self._check_task(task)
        key = (task, layer)
        if key not in self._cache:
            v = self.visible(self._task_bank[task], layer, upto=task)
            v.flags.writeable = False
            self._cache[key] = v
        return self._cache[key]

    def weights(self, task: int, layer: str) -> np.ndarray:
        """The task's weights: its mask times :meth:`values` (what ``pm.weights`` returns)."""
        return np.where(self.fields(task, layer).mask, self.values(task, layer), np.float32(0))

    def field_bits(self, task: int) -> int:
        """Bits of all fields the task wrote: sum over layers of ``written * (P + b)``."""
        self._check_task(task)
        return sum(
            int(f.write.sum()) * (self.prefix_bits + f.bits) for f in self._fields[task].values()
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
        full: dict[str, LayerFields] = {}
        for name, shape in self.shapes.items():
            f = layers.get(name)
            if f is None:
                empty = np.zeros(shape, np.bool_)
                f = LayerFields(empty, empty, 0, np.zeros(0, np.float32), np.zeros(0, np.uint8))
            mask = _bool(f.mask, shape, "mask").copy()
            write = _bool(f.write, shape, "write").copy()
            if write.any():
                f = LayerFields(mask, write, int(f.bits), f.codebook.copy(), f.codes.copy())
            else:
                f = LayerFields(mask, write, 0, np.zeros(0, np.float32), np.zeros(0, np.uint8))
            full[name] = f
            if f.bits:
                self._used[bank][name][f.write] += np.uint8(self.prefix_bits + f.bits)
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
        for name, f in self._fields[task].items():
            codes = np.zeros(self.shapes[name], np.uint16 if f.bits > 8 else np.uint8)
            codes.reshape(-1)[np.flatnonzero(f.write)] = f.codes
            out[name] = {
                "mask": f.mask.copy(),
                "write": f.write.copy(),
                "codebook": f.codebook.copy() if f.bits else None,
                "codes": codes,
                "bits": int(f.bits),
            }
        return out

    def export_bank(self, task: int) -> int | str:
        """The ``bank`` argument for ``PackedModel.add_task``: "new" for a bank's first task."""
        b = self.bank(task)
        return "new" if self._bank_tasks[b][0] == task else b

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Compact state of tensors, numbers, lists and dicts (masks bit-packed).

        Loadable with ``torch.load(..., weights_only=True)``, as the trainer's checkpoints are.
        """
        tasks = {}
        for t, layers in self._fields.items():
            tasks[int(t)] = {
                name: {
                    "mask": torch.from_numpy(np.packbits(f.mask.reshape(-1))),
                    "write": torch.from_numpy(np.packbits(f.write.reshape(-1))),
                    "bits": int(f.bits),
                    "codebook": torch.from_numpy(f.codebook.copy()),
                    "codes": torch.from_numpy(f.codes.astype(np.int32)),
                }
                for name, f in layers.items()
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
        """Rebuild a store from :meth:`state_dict` (re-adding the tasks re-checks every rule)."""
        shapes = {k: tuple(int(s) for s in v) for k, v in state["shapes"].items()}
        word_bits, prefix_bits = int(state["word_bits"]), int(state["prefix_bits"])
        store = cls(shapes, word_bits=word_bits, prefix_bits=prefix_bits)
        order = sorted((int(t), b) for b, ts in enumerate(state["bank_tasks"]) for t in ts)
        for _ in state["bank_tasks"]:
            store.open_bank()
        for t, b in order:
            layers = {}
            for name, d in state["tasks"][t].items():
                shape = store.shapes[name]
                n = math.prod(shape)

                def unpack(a: Any, n: int = n, shape: tuple[int, ...] = shape) -> np.ndarray:
                    bits = np.unpackbits(np.asarray(a, dtype=np.uint8), count=n)
                    return bits.astype(bool).reshape(shape)

                bits = int(d["bits"])
                codes = np.asarray(d["codes"]).astype(np.uint16 if bits > 8 else np.uint8)
                layers[name] = LayerFields(
                    unpack(d["mask"]),
                    unpack(d["write"]),
                    bits,
                    np.asarray(d["codebook"], dtype=np.float32),
                    codes,
                )
            store.add_task(t, b, layers)
        return store

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


# ---------------------------------------------------------------------- torch side


def _stored_values(self: Any, task: int) -> torch.Tensor:
    """``values(task)`` of a task layer backed by a FieldStore (installed per instance)."""
    hook = self._bitsub_values
    return hook.values(self, task)


class _ValuesHook:
    """What ``install_values`` attaches to a layer: the store, the layer name, the current task."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner  # the strategy: has .store, .current (task, bank, trainable, override)
        self.name = name
        # Dense values of finished tasks, built from ``store`` on ``device``; dropped whole when
        # the owner's store or the layer's device changes (a reloaded store is a new object).
        self._store: FieldStore | None = None
        self._device: torch.device | None = None
        self._tensors: dict[int, torch.Tensor] = {}

    def values(self, layer: Any, task: int) -> torch.Tensor:
        owner = self.owner
        store: FieldStore = owner.store
        cur = owner.current_values(self.name, task, layer)
        if cur is not None:
            return cur
        if task not in store.tasks:
            return layer.weight
        device = layer.weight.device
        if store is not self._store or device != self._device:
            self._store, self._device, self._tensors = store, device, {}
        t = self._tensors.get(task)
        if t is None:
            # Built uncached on the store's side: only this tensor is kept.
            dense = store.visible(store.bank(task), self.name, upto=task)
            t = self._tensors[task] = torch.from_numpy(dense).to(device)
        return t


def install_values(model: Any, owner: Any) -> None:
    """Route every task layer's ``values(task)`` through ``owner``'s FieldStore.

    ``owner`` provides ``store`` (a :class:`FieldStore`) and ``current_values(name, task, layer)``
    returning the tensor the task being trained reads (or None to fall back to the store, then to
    ``layer.weight`` for tasks the store does not hold).
    """
    for name, layer in model.masked_layers().items():
        layer._bitsub_values = _ValuesHook(owner, name)
        layer.values = types.MethodType(_stored_values, layer)


def uninstall_values(model: Any) -> None:
    """Undo :func:`install_values` (layers read ``weight`` again)."""
    for layer in model.masked_layers().values():
        layer.__dict__.pop("values", None)
        layer.__dict__.pop("_bitsub_values", None)

"""What a task layer remembers of each task, in bits: coded masks and stored (quantized) values.

A `TaskMemory` belongs to one task layer (`bitsub_torch.nn.layers`) and holds, per task, only
buffers that grow with the tasks and cost about what the packed store counts:

- ``mask{t}``: the task's mask, coded by `bitsub.encode_mask` (Huffman; alone or in the context
  of the nearest earlier task's mask, whichever is smaller);
- ``meta{t}``: int64 ``[context task or -1, bank or -1, bits, written, write context]``;
- for tasks whose values are stored (the quantizing strategies): ``write{t}``, the positions the
  task wrote, coded in the context of its own mask (write context 0) or of the positions of its
  mask that no earlier task of its bank wrote (1: free when the task writes exactly those, as
  TinySubNets does), whichever is smaller; ``codes{t}``, one code per written position
  packed at ``bits`` bits (`bitsub.pack_bits`); ``codebook{t}``, its float32 centroids.

A stored task reads, as in the packed store (the read rule), at every position the value of the
latest field of its bank written by a task <= it. Masks and values are decoded on demand and
kept in small caches (a few tasks), never one dense copy per task. Because everything is a
buffer, ``state_dict()`` alone restores a layer's tasks in a fresh process, and ``.to(device)``,
``copy.deepcopy`` and pickling carry them.

A mask set with `TaskMemory.set_mask` stays dense (pending) until `TaskMemory.seal` codes it: on
``state_dict()``, or when another task's mask is set, so a strategy may set a task's mask many
times while it searches (post-pruning) without coding it each time, and at most the task in
training holds a dense mask.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from bitsub.codecs.bitfield import pack_bits, unpack_bits
from bitsub.codecs.maskcodec import decode_mask, encode_mask, encode_mask_best

__all__ = ["TaskMemory", "code_mask", "code_write", "decode_coded_mask"]

_KINDS = ("mask", "meta", "write", "codes", "codebook")
_CACHE = 2  # decoded masks / values kept per layer


def code_mask(mask: np.ndarray, context: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Code a bool mask alone and in ``context`` (if given); keep the smaller.

    Returns
    -------
    (np.ndarray of uint8, bool)
        The coded bytes and whether they were coded in the context.
    """
    if context is None:
        return np.frombuffer(encode_mask(mask), dtype=np.uint8).copy(), False
    best = encode_mask_best(mask, [context])
    return np.frombuffer(best.data, dtype=np.uint8).copy(), best.index == 1


def code_write(write: np.ndarray, mask: np.ndarray, implied: np.ndarray) -> tuple[np.ndarray, int]:
    """Code a task's written positions in the context of its mask or of ``implied``.

    ``implied`` is the part of the mask no earlier task of the bank wrote. Returns the smaller
    coding and its context: 0 the mask, 1 ``implied``.
    """
    best = encode_mask_best(write, [mask, implied])
    if best.index == 0:  # alone is never needed: the mask context is as small
        return np.frombuffer(encode_mask(write, context=mask), dtype=np.uint8).copy(), 0
    return np.frombuffer(best.data, dtype=np.uint8).copy(), best.index - 1


def decode_coded_mask(data: Any, shape: tuple[int, ...], context: np.ndarray | None) -> np.ndarray:
    """Decode `code_mask` bytes (a uint8 array or tensor) back to a bool mask of ``shape``."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    mask = decode_mask(np.asarray(data, dtype=np.uint8), context, max_positions=math.prod(shape))
    if mask.shape != tuple(shape):
        raise ValueError(f"a coded mask of shape {mask.shape} where {tuple(shape)} was expected")
    return mask


class TaskMemory(nn.Module):
    """Per-task coded masks and stored values of one layer (see the module docstring).

    Length: masks (pending, sealed, released when their context changes), stored values with
    the read rule, and the torch habits (state_dict that grows the buffers, pickling without
    caches) share the same per-task buffers; splitting them would split one record.

    Parameters
    ----------
    shape : tuple of int
        The layer's weight shape.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.version = 0  # counts mask changes (caches of derived tensors compare it)
        self._fresh_caches()

    def _fresh_caches(self) -> None:
        self._pending: dict[int, np.ndarray] = {}
        self._masks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._values: OrderedDict[int, np.ndarray] = OrderedDict()
        self._unions: OrderedDict[int, np.ndarray] = OrderedDict()

    def cached_nbytes(self) -> int:
        """Bytes of the decoded masks, unions and values held in the caches (not pending masks)."""
        return sum(a.nbytes for c in (self._masks, self._values, self._unions) for a in c.values())

    def release_caches(self) -> None:
        """Drop the decoded masks, unions and values (they are decoded again when next needed).

        Pending (not yet coded) masks are state, not cache: they stay. Nothing computed changes.
        """
        self._masks.clear()
        self._values.clear()
        self._unions.clear()

    # ------------------------------------------------------------------ buffers
    def _get(self, kind: str, task: int) -> torch.Tensor | None:
        return self._buffers.get(f"{kind}{task}")

    def _put(self, kind: str, task: int, value: torch.Tensor | None) -> None:
        name = f"{kind}{task}"
        if value is None:
            self._buffers.pop(name, None)
        else:
            self.register_buffer(name, value)

    def _meta(self, task: int) -> list[int]:
        meta = self._get("meta", task)
        return [-1, -1, 0, 0, 0] if meta is None else [int(v) for v in meta.tolist()]

    def _set_meta(self, task: int, meta: list[int]) -> None:
        old = self._get("meta", task)
        device = None if old is None else old.device
        self._put("meta", task, torch.tensor(meta, dtype=torch.int64, device=device))

    def tasks(self) -> list[int]:
        """Tasks that have a mask, ascending."""
        return sorted(int(k[4:]) for k in self._buffers if k.startswith("meta"))

    def nbytes(self) -> int:
        """Bytes of the coded state (the buffers; pending masks count 1 bit per position)."""
        coded = sum(b.numel() * b.element_size() for b in self._buffers.values())
        return coded + sum(math.ceil(m.size / 8) for m in self._pending.values())

    # ------------------------------------------------------------------ masks
    def has_mask(self, task: int) -> bool:
        """Whether ``task`` has a mask."""
        return f"meta{task}" in self._buffers

    def mask(self, task: int) -> np.ndarray:
        """The task's bool mask (decoded and cached; do not write to it)."""
        if task in self._pending:
            return self._pending[task]
        hit = self._masks.get(task)
        if hit is not None:
            self._masks.move_to_end(task)
            return hit
        coded = self._get("mask", task)
        if coded is None:
            raise KeyError(f"task {task} has no mask")
        ctx = self._meta(task)[0]
        mask = decode_coded_mask(coded, self.shape, self.mask(ctx) if ctx >= 0 else None)
        mask.flags.writeable = False
        self._masks[task] = mask
        while len(self._masks) > _CACHE:
            self._masks.popitem(last=False)
        return mask

    def set_mask(self, task: int, mask: np.ndarray) -> None:
        """Give ``task`` this bool mask (kept dense until `seal`)."""
        if self._get("codes", task) is not None or self._get("write", task) is not None:
            raise ValueError(
                f"task {task}'s values are stored: its mask is fixed (finished tasks never change)"
            )
        mask = np.array(mask, dtype=np.bool_, copy=True).reshape(self.shape)
        self._release(task)
        self._put("mask", task, None)
        meta = self._meta(task)
        meta[0] = -1
        self._set_meta(task, meta)
        self._pending[task] = mask
        self.seal(keep=task)  # another task's mask changes: the others are done
        self._changed()

    def clear_mask(self, task: int) -> None:
        """Forget ``task``'s mask (it reads the dense weight again)."""
        if not self.has_mask(task):
            return
        if self._get("codes", task) is not None or self._get("write", task) is not None:
            raise ValueError(f"task {task}'s values are stored: its mask is fixed")
        self._release(task)
        for kind in _KINDS:
            self._put(kind, task, None)
        self._pending.pop(task, None)
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._masks.clear()
        self._values.clear()
        self._unions.clear()

    def _release(self, task: int) -> None:
        # Masks coded in the context of ``task``'s mask are decoded before it changes and become
        # pending again (pending masks have no context yet: `seal` picks one).
        for other in self.tasks():
            if other != task and self._meta(other)[0] == task and other not in self._pending:
                mask = np.array(self.mask(other))
                self._pending[other] = mask
                self._put("mask", other, None)
                meta = self._meta(other)
                meta[0] = -1
                self._set_meta(other, meta)

    def seal(self, keep: int | None = None) -> None:
        """Code every pending mask but ``keep``'s (in the context of the nearest earlier mask)."""
        for task in sorted(t for t in self._pending if t != keep):
            mask = self._pending[task]
            earlier = [t for t in self.tasks() if t < task and t not in self._pending]
            ctx = earlier[-1] if earlier else -1
            data, used = code_mask(mask, self.mask(ctx) if ctx >= 0 else None)
            old = self._get("meta", task)
            device = None if old is None else old.device
            self._put("mask", task, torch.from_numpy(data).to(device))
            meta = self._meta(task)
            meta[0] = ctx if used else -1
            self._set_meta(task, meta)
            del self._pending[task]
            mask.flags.writeable = False
            self._masks[task] = mask

    def adopt_mask(self, task: int, data: np.ndarray, context: int) -> None:
        """Take an already coded mask (`code_mask` bytes, in ``context``'s mask or -1).

        The bytes are shared, not copied, when they are a CPU NumPy array.
        """
        if context >= 0 and (context >= task or not self.has_mask(context)):
            raise ValueError(f"context {context} of task {task} must be an earlier masked task")
        ctx_mask = self.mask(context) if context >= 0 else None
        mask = decode_coded_mask(data, self.shape, ctx_mask)  # checks the bytes
        self._release(task)
        self._pending.pop(task, None)
        self._put("mask", task, torch.from_numpy(np.asarray(data, dtype=np.uint8)))
        meta = self._meta(task)
        meta[0] = int(context)
        self._set_meta(task, meta)
        self._changed()
        mask.flags.writeable = False
        self._masks[task] = mask

    # ------------------------------------------------------------------ stored values
    def has_values(self, task: int) -> bool:
        """Whether ``task`` reads stored values (else the layer's weight)."""
        return self.has_mask(task) and self._meta(task)[1] >= 0

    def set_values(self, task: int, bank: int, write: np.ndarray, codebook: np.ndarray,
                   codes: np.ndarray, bits: int) -> None:
        """Store the fields ``task`` wrote: one code per written position (C order), its codebook.

        ``write`` must be inside the task's mask; ``codes`` unsigned, below ``len(codebook)``.
        """
        if not self.has_mask(task):
            raise ValueError(f"task {task} needs a mask before its values")
        self.seal()
        write = np.asarray(write, dtype=np.bool_).reshape(self.shape)
        mask = self.mask(task)
        if (write & ~mask).any():
            raise ValueError("write must be inside the task's mask")
        n = int(write.sum())
        codes = np.asarray(codes).reshape(-1)
        codebook = np.asarray(codebook, dtype=np.float32).reshape(-1)
        bad = n and (codes.dtype.kind != "u" or int(codes.max()) >= codebook.size)
        if codes.size != n or bad:
            raise ValueError(f"need {n} unsigned codes below the codebook size {codebook.size}")
        bits = int(bits) if n else 0
        packed = pack_bits(codes, bits) if n else np.zeros(0, np.uint8)
        self._set_bank(task, bank)
        coded, context = code_write(write, mask, mask & ~self._written_before(task))
        self.adopt_values(task, bank, coded, codebook, packed, bits, n, context)

    def _set_bank(self, task: int, bank: int) -> None:
        meta = self._meta(task)
        meta[1] = int(bank)
        self._set_meta(task, meta)

    def adopt_values(self, task: int, bank: int, write: np.ndarray, codebook: np.ndarray,
                     packed: np.ndarray, bits: int, written: int, write_context: int = 0) -> None:
        """Take already coded values: ``write`` as `code_write` codes it, ``packed`` codes.

        NumPy arrays are shared, not copied.
        """
        if not self.has_mask(task):
            raise ValueError(f"task {task} needs a mask before its values")
        if int(bank) < 0:
            raise ValueError(f"bank must be >= 0, got {bank}")
        self.seal()
        self._put("write", task, torch.from_numpy(np.asarray(write, dtype=np.uint8)))
        self._put("codes", task, torch.from_numpy(np.asarray(packed, dtype=np.uint8)))
        self._put("codebook", task, torch.from_numpy(np.asarray(codebook, dtype=np.float32)))
        meta = self._meta(task)
        meta[1:] = [int(bank), int(bits), int(written), int(write_context)]
        self._set_meta(task, meta)
        self._changed()

    def write(self, task: int) -> np.ndarray:
        """The positions a stored task wrote (bool, layer shape)."""
        coded = self._get("write", task)
        if coded is None:
            raise KeyError(f"task {task} has no stored values")
        if not self._meta(task)[3]:  # wrote nothing in this layer
            return np.zeros(self.shape, np.bool_)
        mask = self.mask(task)
        if self._meta(task)[4]:
            mask = mask & ~self._written_before(task)
        return decode_coded_mask(coded, self.shape, mask)

    def _written_before(self, task: int) -> np.ndarray:
        # The positions the stored tasks of ``task``'s bank before it wrote.
        bank = self._meta(task)[1]
        earlier = [t for t in self.tasks() if t < task and self._meta(t)[1] == bank
                   and self._meta(t)[3]]
        if not earlier:
            return np.zeros(self.shape, np.bool_)
        last = earlier[-1]
        hit = self._unions.get(last)
        if hit is None:
            hit = self._written_before(last) | self.write(last)
            self._unions[last] = hit
            while len(self._unions) > _CACHE:
                self._unions.popitem(last=False)
        return hit

    def values(self, task: int) -> np.ndarray:
        """Float32 values a stored task reads (the latest field of its bank at every position).

        Zero where no task of the bank <= ``task`` wrote. Cached; do not write to it.
        """
        hit = self._values.get(task)
        if hit is not None:
            self._values.move_to_end(task)
            return hit
        bank = self._meta(task)[1]
        if bank < 0:
            raise KeyError(f"task {task} has no stored values")
        chain = [t for t in self.tasks() if t <= task and self._meta(t)[1] == bank]
        start, out = 0, None
        for i in range(len(chain) - 1, 0, -1):  # continue from a cached earlier task of the bank
            hit = self._values.get(chain[i - 1])
            if hit is not None:
                start, out = i, hit.copy()
                break
        if out is None:
            out = np.zeros(self.shape, np.float32)
        flat = out.reshape(-1)
        for t in chain[start:]:
            _, _, bits, written, _ = self._meta(t)
            if not written:
                continue
            codes = unpack_bits(self._get("codes", t).cpu().numpy(), bits, written)
            flat[np.flatnonzero(self.write(t))] = self._get("codebook", t).cpu().numpy()[codes]
        out.flags.writeable = False
        self._values[task] = out
        while len(self._values) > _CACHE:
            self._values.popitem(last=False)
        return out

    # ------------------------------------------------------------------ torch habits
    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        self.seal()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        # The tasks of the incoming state replace ours: buffers are made to its names and sizes.
        # (a buffer of the same name, dtype and size is written in place: it may be shared)
        names = set()
        for key, value in state_dict.items():
            if key.startswith(prefix) and "." not in key[len(prefix):]:
                name = key[len(prefix):]
                kind = name.rstrip("0123456789")
                if kind in _KINDS and name[len(kind):].isdigit():
                    names.add(name)
                    old = self._buffers.get(name)
                    if old is None or old.shape != value.shape or old.dtype != value.dtype:
                        self.register_buffer(name, torch.empty_like(value, device="cpu"))
        for name in [n for n in self._buffers if n not in names]:
            del self._buffers[name]
        self._fresh_caches()
        self.version += 1
        super()._load_from_state_dict(state_dict, prefix, *args)

    def __getstate__(self) -> dict:
        """Pickle / deepcopy without the caches (pending masks are sealed first)."""
        self.seal()
        state = dict(self.__dict__)
        for key in ("_pending", "_masks", "_values", "_unions"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:  # noqa: D105
        super().__setstate__(state)
        self._fresh_caches()

    def extra_repr(self) -> str:  # noqa: D102
        return f"shape={self.shape}, tasks={len(self.tasks())}, bytes={self.nbytes()}"

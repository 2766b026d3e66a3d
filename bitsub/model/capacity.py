"""Capacity accounting of a packed model, as in TinySubNets' Tables 1 and 5.

The capacity of a packed model is the number of bits it needs for all tasks: fields (prefix +
code per written position), codebooks and encoded masks, as a percentage of the dense float32
model (32 bits x number of weight positions, one copy). Task-private parameters (heads, biases,
norms) are counted separately, as the paper does.

How we read the paper's case study (TinySubNets, appendix "Case study")
----------------------------------------------------------------------
Two layers of 6 weights: 384 bits dense. Task 1 keeps 4 weights per layer at 2 bits:
``4*2 + 4*2 + 136 = 152``. Task 2 adds 1 weight per layer at 1 bit: ``152 + 2*1 + 66 = 220``.
Task 3 only reuses weights: ``220``. So:

- a field costs its code bits only (no prefix bits counted);
- a task has one codebook for all its layers, and ``136 = 4 * (32 + 2)``, ``66 = 2 * (32 + 1)``:
  every centroid is stored as a pair (b-bit index, 32-bit value), matching the paper's description
  of the codebook as a "dictionary in which mapping is stored (pairs ...)";
- masks are not counted (task 3 adds nothing, though it has its own masks).

A task's mask is stored (and counted) for every layer, also the layers it does not use (an
empty mask costs only the codec's small header).

``capacity(pm, padding=False, masks=False, codebook_scope="task", codebook_index=True)``
reproduces these numbers. Other readings give the same totals (e.g. 16-bit centroids per layer
plus one extra bit per field); the options below let a caller state theirs.

The defaults count exactly what a format 4 file stores (:mod:`bitsub.storage.hdf5`), so that the
total plus the private parameters, divided by 8, is the file's payload in bytes: per task and
layer its codes packed at its bit-width (each layer's stream padded to a whole byte; raw float32
fields 32 bits each; no prefix: prefixes are implied by the task order), its float32 codebook as
stored (``len(codebook)`` centroids), its Huffman-coded mask exactly as stored (alone or in the
context of its bank's earlier masks, whichever is smaller; see
:meth:`bitsub.PackedModel.encoded_mask`) and its write mask where it is not implied
(:meth:`bitsub.PackedModel.write_coding`). Beside them, a :class:`Capacity` reports the masks
coded alone (``mask_alone_bits``) and at 1 bit per position per task (``mask_raw_bits``), the
measured file size after ``save`` or ``load`` (``file_bytes``) and the size of a plain
``np.savez`` of one dense float32 copy of the weights and private parameters
(``dense_file_bytes``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bitsub.codecs.bitfield import packed_size
from bitsub.codecs.maskcodec import encode_mask
from bitsub.validate import check_bool

if TYPE_CHECKING:
    from bitsub.model.packed import PackedModel

__all__ = ["Capacity", "capacity"]

COMPONENTS = ("fields", "codebooks", "masks")


@dataclass(frozen=True)
class Capacity:
    """Bits a packed model needs, per component, task and layer.

    Attributes
    ----------
    bits : dict str -> int
        Totals per component: ``"fields"``, ``"codebooks"``, ``"masks"`` and ``"private"``.
    dense_bits : int
        The dense float32 model: 32 x number of weight positions (one copy).
    by_task : list of dict
        Per task (index = task id): its bank and the bits it added per component.
    by_layer : dict str -> dict
        Per layer: its shape and the bits per component over all tasks. With
        ``codebook_scope="task"`` codebooks belong to no layer and are 0 here.
    options : dict
        The accounting options used.
    mask_alone_bits : int
        The same tasks' masks each coded alone (8 x bytes), for comparison with ``"masks"``
        (0 with ``masks=False``).
    mask_raw_bits : int
        Masks at 1 bit per weight position per task (tasks x positions; 0 with ``masks=False``).
    """

    bits: dict[str, int]
    dense_bits: int
    by_task: list[dict[str, Any]] = field(default_factory=list)
    by_layer: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    mask_alone_bits: int = 0
    mask_raw_bits: int = 0
    file_bytes: int | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    @property
    def payload_bytes(self) -> int:
        """``(total + private) / 8``: with the default options, the bytes a file stores."""
        return (self.total + self.bits["private"] + 7) // 8

    @property
    def overhead_bytes(self) -> int | None:
        """``file_bytes - payload_bytes``: the file's fixed cost (seal, index, HDF5 headers)."""
        return None if self.file_bytes is None else self.file_bytes - self.payload_bytes

    @property
    def dense_file_bytes(self) -> int:
        """Bytes of ``np.savez`` of one dense float32 copy of every layer and private array.

        The comparison a user would make with ``ls -l`` (a ``torch.save`` of the same tensors
        differs by a few hundred bytes of framing); computed by running ``np.savez`` into a
        byte counter, without holding the dense arrays.
        """
        return dense_savez_bytes(self.shapes)

    @property
    def mask_saving(self) -> float:
        """Percent saved by the counted masks against 1 bit per weight per task."""
        if not self.mask_raw_bits:
            return 0.0
        return 100.0 * (1.0 - self.bits["masks"] / self.mask_raw_bits)

    @property
    def total(self) -> int:
        """Fields + codebooks + masks, in bits (private parameters excluded)."""
        return sum(self.bits[c] for c in COMPONENTS)

    @property
    def percent(self) -> float:
        """``total`` as a percentage of ``dense_bits``."""
        return 100.0 * self.total / self.dense_bits if self.dense_bits else 0.0

    @property
    def private_percent(self) -> float:
        """Private parameters as a percentage of ``dense_bits`` (reported separately)."""
        return 100.0 * self.bits["private"] / self.dense_bits if self.dense_bits else 0.0

    def _pct(self, bits: int) -> str:
        return f"{100.0 * bits / self.dense_bits:8.3f}" if self.dense_bits else "       -"

    def __str__(self) -> str:
        head = ("component", "bits", "% dense")
        lines = [
            f"capacity: {self.percent:.3f}% of the dense float32 model "
            f"({self.total} of {self.dense_bits} bits)",
            "options: " + ", ".join(f"{k}={v!r}" for k, v in self.options.items()),
            "",
            f"{head[0]:<22}{head[1]:>14}{head[2]:>10}",
        ]
        for c in COMPONENTS:
            lines.append(f"{c:<22}{self.bits[c]:>14}  {self._pct(self.bits[c])}")
        lines.append(f"{'total':<22}{self.total:>14}  {self._pct(self.total)}")
        lines.append(f"{'private (separate)':<22}{self.bits['private']:>14}  "
                     f"{self._pct(self.bits['private'])}")
        for label, value in (("masks coded alone", self.mask_alone_bits),
                             ("masks at 1 bit/weight", self.mask_raw_bits)):
            lines.append(f"{label:<22}{value:>14}  {self._pct(value)}")
        lines.append(f"mask saving vs 1 bit per weight per task: {self.mask_saving:.1f}%")
        lines.append(f"payload (total + private): {self.payload_bytes} bytes")
        if self.file_bytes is not None:
            lines.append(f"file: {self.file_bytes} bytes ({self.overhead_bytes} of seal, index "
                         f"and HDF5 headers); np.savez of one dense float32 copy: "
                         f"{self.dense_file_bytes} bytes")
        lines += ["", f"{'task':>5}{'bank':>6}" + "".join(f"{c:>12}" for c in COMPONENTS)
                  + f"{'private':>12}{'cumul. %':>11}"]
        running = 0
        for t, row in enumerate(self.by_task):
            running += sum(row[c] for c in COMPONENTS)
            pct = 100.0 * running / self.dense_bits if self.dense_bits else 0.0
            lines.append(f"{t:>5}{row['bank']:>6}" + "".join(f"{row[c]:>12}" for c in COMPONENTS)
                         + f"{row['private']:>12}{pct:>11.3f}")
        lines += ["", f"{'layer':<16}{'shape':<18}" + "".join(f"{c:>12}" for c in COMPONENTS)]
        for name, row in self.by_layer.items():
            shape = "x".join(str(s) for s in row["shape"])
            lines.append(f"{name:<16}{shape:<18}" + "".join(f"{row[c]:>12}" for c in COMPONENTS))
        return "\n".join(lines)


class _Counter(io.RawIOBase):
    """A seekable file that keeps only its size (np.savez writes through zipfile into it)."""

    def __init__(self) -> None:
        self.pos = self.size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = memoryview(b).nbytes
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos


def dense_savez_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    """Bytes ``np.savez`` writes for one float32 array per entry of ``shapes``."""
    out = _Counter()
    arrays = {name.replace("/", "_") or "_": np.broadcast_to(np.float32(0), shape)
              for name, shape in shapes.items()}
    np.savez(out, **arrays)
    return out.size


def capacity(
    pm: PackedModel,
    *,
    prefix: bool = False,
    padding: bool = True,
    masks: bool = True,
    codebook_bits: int = 32,
    codebook_scope: str = "layer",
    codebook_index: bool = False,
    mask_coding: str = "stored",
    upto: int | None = None,
) -> Capacity:
    """Count the bits of a packed model per component, task and layer.

    Parameters
    ----------
    pm : PackedModel
        The model.
    prefix : bool
        Count the P prefix bits of every field too (what the in-memory words hold; a file
        stores none).
    padding : bool
        Count each task's codes of a layer as the file stores them, padded to a whole byte
        (False: bits x fields exactly, the papers' reading).
    masks : bool
        Count the Huffman-coded masks (8 x encoded bytes per task and layer, every layer) and
        the stored write masks (:meth:`~bitsub.PackedModel.write_coding`).
    codebook_bits : int
        Bits per stored centroid (32 = float32 as stored; 16 for a float16 reading).
    codebook_scope : {"layer", "task"}
        ``"layer"``: one codebook per (task, layer) as stored. ``"task"``: one codebook per task
        shared by its layers, sized by its largest codebook (the case study's reading).
    codebook_index : bool
        Count a b-bit index beside every centroid (the codebook as a dictionary of pairs).
    mask_coding : {"stored", "alone", "union"}
        Which mask sizes ``"masks"`` counts: ``"stored"``, the bytes the file stores
        (:meth:`~bitsub.PackedModel.encoded_mask`); ``"alone"``, each mask coded alone;
        ``"union"``, each mask coded in the context of the union of all earlier tasks' masks
        of the layer, whatever their bank (a comparison figure; not what is stored).
    upto : int, optional
        Count only tasks ``0..upto`` (the model as it was right after task ``upto``).

    Returns
    -------
    Capacity
        Raw float32 fields count 32 bits (plus the prefix with ``prefix=True``) and have no
        codebook.
    """
    prefix = check_bool(prefix, "prefix")
    padding = check_bool(padding, "padding")
    masks = check_bool(masks, "masks")
    codebook_index = check_bool(codebook_index, "codebook_index")
    if mask_coding not in ("stored", "alone", "union"):
        raise ValueError(f"mask_coding must be 'stored', 'alone' or 'union', got {mask_coding!r}")
    if isinstance(codebook_bits, bool) or not isinstance(codebook_bits, int):
        raise TypeError(f"codebook_bits must be an int, got {codebook_bits!r}")
    if codebook_bits < 0:
        raise ValueError(f"codebook_bits must be >= 0, got {codebook_bits}")
    if codebook_scope not in ("layer", "task"):
        raise ValueError(f"codebook_scope must be 'layer' or 'task', got {codebook_scope!r}")
    n_tasks = len(pm.tasks)
    if upto is not None:
        if isinstance(upto, bool) or not isinstance(upto, int):
            raise TypeError(f"upto must be an int task id, got {upto!r}")
        if not 0 <= upto < n_tasks:
            raise ValueError(f"upto must be a task id in 0..{n_tasks - 1}, got {upto}")
        n_tasks = upto + 1
    p_bits = pm.prefix_bits if prefix else 0
    dense = 32 * sum(math.prod(pm.shape(name)) for name in pm.layers)
    by_layer = {name: {"shape": pm.shape(name), **dict.fromkeys(COMPONENTS, 0)}
                for name in pm.layers}
    by_task = []
    union = ({name: np.zeros(pm.shape(name), bool) for name in pm.layers}
             if masks and mask_coding == "union" else {})
    alone_bits = raw_bits = 0
    for t in range(n_tasks):
        row = {"bank": pm.bank(t), **dict.fromkeys(COMPONENTS, 0), "private": 0}
        task_entries, task_index_bits = 0, 0
        for name in pm.layers:
            b = pm.bits(t, name)
            n = pm.fields(t, name)
            f = n * (p_bits + b)
            if padding and not p_bits:
                f = 8 * (4 * n if b == 32 else packed_size(n, b) if b else 0)
            cb = pm.codebook(t, name)
            k = 0 if cb is None else int(cb.size)
            index_bits = b if k else 0
            c = 0
            if codebook_scope == "layer":
                c = k * (codebook_bits + (index_bits if codebook_index else 0))
            else:
                task_entries = max(task_entries, k)
                task_index_bits = max(task_index_bits, index_bits)
            m = 0
            if masks:
                alone = 8 * pm.alone_mask_bytes(t, name)
                alone_bits += alone
                raw_bits += math.prod(pm.shape(name))
                if mask_coding == "union":
                    mask = pm.mask(t, name)
                    m = 8 * len(encode_mask(mask, context=union[name]))
                    union[name] |= mask
                elif mask_coding == "alone":
                    m = alone
                else:
                    m = 8 * (len(pm.encoded_mask(t, name)) + len(pm.write_coding(t, name)[1]))
            for comp, val in (("fields", f), ("codebooks", c), ("masks", m)):
                row[comp] += val
                by_layer[name][comp] += val
        if codebook_scope == "task":
            row["codebooks"] += task_entries * (
                codebook_bits + (task_index_bits if codebook_index else 0))
        row["private"] = 32 * sum(int(a.size) for a in pm.private(t).values())
        by_task.append(row)
    bits = {c: sum(r[c] for r in by_task) for c in (*COMPONENTS, "private")}
    shapes = {name: pm.shape(name) for name in pm.layers}
    for t in pm.tasks:
        shapes.update({f"task{t}.{k}": a.shape for k, a in pm.private(t).items()})
    options = {"prefix": prefix, "padding": padding, "masks": masks, "codebook_bits": codebook_bits,
               "codebook_scope": codebook_scope, "codebook_index": codebook_index,
               "mask_coding": mask_coding, "upto": upto}
    return Capacity(bits=bits, dense_bits=dense, by_task=by_task, by_layer=by_layer,
                    options=options, mask_alone_bits=alone_bits, mask_raw_bits=raw_bits,
                    file_bytes=pm.file_bytes if upto is None else None, shapes=shapes)

"""Per-task matmul plan: one task's weights of one layer as compact indices and small codes.

A :class:`Plan` is derived once from what the read rule resolves for (task, layer): the mask, the
task that wrote the field read at each position (its *source*) and that field's code. It holds no
dense float32 copy of the weights: only column indices, small integer codes into one *combined
codebook* (the concatenation of the writers' codebooks) and row bookkeeping.

Two layouts (a plan may hold both):

- ``"sell"``: sliced ELLPACK with slices of ``SLICE`` consecutive rows (SELL-C). Within a slice
  the entries are stored column-major: entry ``l`` of row ``s * SLICE + r`` is at
  ``slice_ptr[s] + l * SLICE + r``, for ``l < slice_len[s]`` (the longest row of the slice).
  Shorter rows are padded with column 0 and the code of the combined codebook's last entry,
  which is 0.0. A CPU kernel runs ``SLICE`` rows in SIMD lanes; a GPU warp reads coalesced
  entries. Any codebook size; about 3 bytes per used position.
- ``"lut"``: for combined codebooks of at most 16 centroids, one mask bit and one 4-bit code per
  position (5 bits a position whatever the density), in slices of 16 rows: for every column,
  the 16 rows' codes (8 bytes) and mask bits (16 bits) sit together. A CPU kernel decodes the
  16 weights of a slice's column with one in-register table look-up of the codebook and adds
  them, times the input, to 16 row sums held in one vector.

Raw float32 fields (a writer without a codebook) have no codes: the distinct float32 values they
contribute to this (task, layer) are appended to the combined codebook and their positions get
the index of their value there. The combined codebook is therefore small for quantized writers
(sum of ``2**bits``) and at most one entry per distinct raw value otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BOTH_MAX_DENSITY", "BOTH_MIN_POSITIONS", "LUT_CHUNK", "LUT_MIN_DENSITY", "SLICE", "Plan",
    "build_plan", "model_plan",
]

SLICE = 16
"""Rows per slice of a ``"sell"`` plan (SIMD lanes of the CPU kernel)."""

LUT_CHUNK = 16
"""Rows per slice of a ``"lut"`` plan (one 512-bit vector of float32), and its most centroids."""

LUT_MIN_DENSITY = 0.03
"""Below this task density, ``layout=None`` picks ``"sell"`` even where ``"lut"`` would fit."""

BOTH_MAX_DENSITY = 0.25
"""Below this task density, ``layout=None`` keeps ``"sell"`` arrays beside ``"lut"`` ones
(``"both"``) in layers of at least ``BOTH_MIN_POSITIONS``: there the large-batch kernel that
visits only used positions beats a dense product."""

BOTH_MIN_POSITIONS = 1 << 20
"""Smaller layers never get ``"both"``: BLAS on decoded tiles wins for them at any density."""


@dataclass(frozen=True, eq=False)
class Plan:
    """One task's weights of one layer, ready for the packed sparse matmul.

    Two layouts hold the same weights (see the module docstring): ``"sell"`` (sliced ELLPACK of
    the used positions: any codebook size, cost per used position) and ``"lut"`` (a bitmap and a
    4-bit code for every position: combined codebooks of at most 16 entries, cost per position,
    decoded 16 weights at a time with an in-register table look-up). ``"both"`` holds both;
    otherwise the arrays of the other layout are empty.

    Attributes
    ----------
    shape : tuple of int
        The layer's weight shape: (out, in) or (out, in, kh, kw).
    layout : {"sell", "lut", "both"}
    cols_in : int
        Input size: the product of ``shape[1:]``.
    row_len : ndarray of int32, (out,)
        Used positions of each row.
    codebook : ndarray of float32
        The combined codebook; its last entry is 0.0 (the padding value of ``"sell"``). With
        ``"lut"`` arrays it has 17 entries: the centroids, zero-filled to 16, then that 0.0.
    slice_ptr : ndarray of int64, (n_slices + 1,)
        ``"sell"``: start of each slice in ``cols`` / ``codes``; the last item is their length.
    slice_len : ndarray of int32, (n_slices,)
        ``"sell"``: entries per row stored in each slice (its longest row).
    cols : ndarray of uint16 or int32
        ``"sell"``: column (in the layer flattened to (out, in*kh*kw)) of each entry.
    codes : ndarray of uint8, uint16 or uint32
        ``"sell"``: index of each entry's value in ``codebook``.
    lut_codes : ndarray of uint8, (n_lut_slices * in * 8,)
        ``"lut"``: per slice of 16 rows and column, 8 bytes; byte p holds the code of row p in
        its low nibble and of row 8 + p in its high nibble (rows of the slice).
    lut_mask : ndarray of uint16, (n_lut_slices * in,)
        ``"lut"``: per slice and column, bit r set where row r of the slice uses the column.
    positions : int
        ``out * cols_in``.
    nnz : int
        Number of used positions.
    lut_args : tuple
        ``(lut_codes, lut_mask, codebook)``, the arguments of the ``"lut"`` kernels.
    """

    shape: tuple[int, ...]
    layout: str
    cols_in: int
    row_len: np.ndarray
    codebook: np.ndarray
    slice_ptr: np.ndarray
    slice_len: np.ndarray
    cols: np.ndarray
    codes: np.ndarray
    lut_codes: np.ndarray
    lut_mask: np.ndarray
    positions: int = field(init=False)
    nnz: int = field(init=False)
    lut_args: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Precomputed for the hot path of small matmuls (every look-up costs there).
        object.__setattr__(self, "positions", self.shape[0] * self.cols_in)
        object.__setattr__(self, "nnz", int(self.row_len.sum()))
        object.__setattr__(self, "lut_args", (self.lut_codes, self.lut_mask, self.codebook))

    @property
    def rows(self) -> int:
        """Output size: ``shape[0]``."""
        return self.shape[0]

    def arrays(self) -> tuple[np.ndarray, ...]:
        """All arrays of the plan."""
        return (self.row_len, self.codebook, self.slice_ptr, self.slice_len, self.cols,
                self.codes, self.lut_codes, self.lut_mask)

    @property
    def nbytes(self) -> int:
        """Bytes held by the plan's arrays."""
        return sum(a.nbytes for a in self.arrays())

    def dense(self) -> np.ndarray:
        """Decode to dense float32 weights of ``shape`` (for tests and debugging only)."""
        out, n_in = self.rows, self.cols_in
        if self.layout != "sell":
            ns = -(-out // LUT_CHUNK)
            b = self.lut_codes.reshape(ns, n_in, 8)
            code = np.concatenate([b & 15, b >> 4], axis=2)  # (slice, column, row in slice)
            bits = np.unpackbits(self.lut_mask.view(np.uint8).reshape(ns, n_in, 2), axis=2,
                                 bitorder="little").astype(bool)
            w = np.where(bits, self.codebook[code], np.float32(0.0))
            w = w.transpose(0, 2, 1).reshape(ns * LUT_CHUNK, n_in)[:out]
            return np.ascontiguousarray(w, dtype=np.float32).reshape(self.shape)
        w = np.zeros((out, n_in), np.float32)
        for i in range(out):
            s, r = divmod(i, SLICE)
            pos = self.slice_ptr[s] + np.arange(self.row_len[i]) * SLICE + r
            w[i, self.cols[pos]] = self.codebook[self.codes[pos]]
        return w.reshape(self.shape)


def _code_dtype(k: int) -> np.dtype:
    if k <= 1 << 8:
        return np.dtype(np.uint8)
    if k <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def build_plan(mask: np.ndarray, source: np.ndarray, codes: np.ndarray,
               codebooks: Mapping[int, np.ndarray | None], layout: str | None = None) -> Plan:
    """Build the matmul plan of one (task, layer) from its resolved fields.

    Parameters
    ----------
    mask : ndarray of bool, layer shape (out, in) or (out, in, kh, kw)
        The task's mask.
    source : ndarray of int, layer shape
        Id of the task whose field is read at each position (any value where ``mask`` is 0).
    codes : ndarray of uint32, layer shape
        That field's code; for a raw float32 writer, the float32 bit pattern.
    codebooks : dict int -> ndarray of float32 or None
        Codebook of every task that appears in ``source`` under the mask; None for a writer of
        raw float32 fields.
    layout : {None, "sell", "lut", "both"}
        None: where the combined codebook has at most 16 entries and the task density is at
        least ``LUT_MIN_DENSITY``, ``"lut"`` (``"both"`` below ``BOTH_MAX_DENSITY`` in layers of
        at least ``BOTH_MIN_POSITIONS``), else
        ``"sell"``. ``"lut"`` or ``"both"`` with a larger combined codebook is an error.

    Returns
    -------
    Plan
    """
    mask = np.asarray(mask)
    source = np.asarray(source)
    codes = np.asarray(codes)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a bool array, got dtype {mask.dtype}")
    if mask.ndim not in (2, 4) or min(mask.shape) < 1:
        raise ValueError(f"mask must have shape (out, in) or (out, in, kh, kw) with no zero "
                         f"dimension, got {mask.shape}")
    if source.shape != mask.shape or codes.shape != mask.shape:
        raise ValueError(f"mask, source and codes must have one shape, got {mask.shape}, "
                         f"{source.shape}, {codes.shape}")
    if not np.issubdtype(source.dtype, np.integer) or not np.issubdtype(codes.dtype, np.integer):
        raise TypeError("source and codes must be integer arrays")
    if not isinstance(codebooks, Mapping):
        raise TypeError(f"codebooks must be a dict task -> codebook or None, "
                        f"got {type(codebooks).__name__}")
    shape = tuple(int(d) for d in mask.shape)
    out = shape[0]
    n_in = math.prod(shape[1:])
    if n_in > np.iinfo(np.int32).max:
        raise ValueError(f"layer too wide for a plan: {n_in} inputs")

    m2 = mask.reshape(out, n_in)
    rows, cols = np.nonzero(m2)  # row-major order: entries of a row are in column order
    src = source.reshape(out, n_in)[rows, cols].astype(np.int64)
    code = codes.reshape(out, n_in)[rows, cols].astype(np.uint32)

    # Combined codebook: writers' codebooks (or raw values) one after another, then a 0.0.
    combined = np.zeros(rows.size, np.int64)
    parts: list[np.ndarray] = []
    offset = 0
    for w in np.unique(src):
        w = int(w)
        if w not in codebooks:
            raise ValueError(f"source names task {w} under the mask but codebooks has no entry "
                             f"for it; give its codebook (or None for raw float32 fields)")
        sel = src == w
        cb = codebooks[w]
        if cb is None:
            values, inverse = np.unique(code[sel], return_inverse=True)
            part = values.astype(np.uint32).view(np.float32)
            combined[sel] = offset + inverse.reshape(-1)
        else:
            part = np.asarray(cb, dtype=np.float32).reshape(-1)
            bad = code[sel] >= part.size
            if bad.any():
                raise ValueError(f"task {w} has code {int(code[sel][bad][0])} but a codebook of "
                                 f"{part.size} entries")
            combined[sel] = offset + code[sel].astype(np.int64)
        parts.append(part)
        offset += part.size
    parts.append(np.zeros(1, np.float32))
    codebook = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    row_len = np.bincount(rows, minlength=out).astype(np.int32)
    real = codebook.size - 1  # entries before the padding zero
    if layout is None:
        density = rows.size / max(1, mask.size)
        layout = "sell"
        if real <= LUT_CHUNK and density >= LUT_MIN_DENSITY:
            big = mask.size >= BOTH_MIN_POSITIONS
            layout = "both" if density < BOTH_MAX_DENSITY and big else "lut"
    if layout not in ("sell", "lut", "both"):
        raise ValueError(f"layout must be None, 'sell', 'lut' or 'both', got {layout!r}")
    arrays = {"slice_ptr": np.zeros(1, np.int64), "slice_len": np.zeros(0, np.int32),
              "cols": np.zeros(0, np.uint16), "codes": np.zeros(0, np.uint8),
              "lut_codes": np.zeros(0, np.uint8), "lut_mask": np.zeros(0, np.uint16)}
    if layout != "sell":
        if real > LUT_CHUNK:
            raise ValueError(f"layout {layout!r} needs a combined codebook of at most "
                             f"{LUT_CHUNK} entries, this one has {real}; use layout='sell' or "
                             f"None")
        arrays.update(_lut_arrays(out, n_in, rows, cols, combined))
        lut_book = np.zeros(LUT_CHUNK + 1, np.float32)
        lut_book[:real] = codebook[:real]
        codebook = lut_book
    if layout != "lut":
        arrays.update(_sell_arrays(out, n_in, rows, cols, combined, codebook.size))
    for a in (row_len, codebook, *arrays.values()):
        a.flags.writeable = False  # a plan is shared and cached: nobody may change it
    return Plan(shape=shape, layout=layout, cols_in=n_in, row_len=row_len, codebook=codebook,
                **arrays)


def _sell_arrays(out: int, n_in: int, rows: np.ndarray, cols: np.ndarray, combined: np.ndarray,
                 k: int) -> dict[str, np.ndarray]:
    n_slices = -(-out // SLICE)
    row_len_pad = np.zeros(n_slices * SLICE, np.int64)
    row_len_pad[:out] = np.bincount(rows, minlength=out)
    slice_len = row_len_pad.reshape(n_slices, SLICE).max(axis=1)
    slice_ptr = np.zeros(n_slices + 1, np.int64)
    np.cumsum(slice_len * SLICE, out=slice_ptr[1:])
    row_start = np.zeros(out + 1, np.int64)
    np.cumsum(row_len_pad[:out], out=row_start[1:])
    rank = np.arange(rows.size, dtype=np.int64) - row_start[rows]
    pos = slice_ptr[rows // SLICE] + rank * SLICE + rows % SLICE
    total = int(slice_ptr[-1])
    plan_cols = np.zeros(total, np.uint16 if n_in <= 1 << 16 else np.int32)
    plan_cols[pos] = cols
    plan_codes = np.full(total, k - 1, _code_dtype(k))  # padding: the trailing 0.0
    plan_codes[pos] = combined
    return {"slice_ptr": slice_ptr, "slice_len": slice_len.astype(np.int32), "cols": plan_cols,
            "codes": plan_codes}


def _lut_arrays(out: int, n_in: int, rows: np.ndarray, cols: np.ndarray, combined: np.ndarray
                ) -> dict[str, np.ndarray]:
    ns = -(-out // LUT_CHUNK)
    code = np.zeros((ns * LUT_CHUNK, n_in), np.uint8)
    code[rows, cols] = combined
    used = np.zeros((ns * LUT_CHUNK, n_in), bool)
    used[rows, cols] = True
    c = code.reshape(ns, LUT_CHUNK, n_in).transpose(0, 2, 1)  # (slice, column, row in slice)
    packed = np.ascontiguousarray(c[:, :, :8] | (c[:, :, 8:] << 4)).reshape(-1)
    bits = np.packbits(used.reshape(ns, LUT_CHUNK, n_in).transpose(0, 2, 1), axis=2,
                       bitorder="little")
    lut_mask = np.ascontiguousarray(bits).view("<u2").astype(np.uint16).reshape(-1)
    return {"lut_codes": packed, "lut_mask": lut_mask}


def model_plan(model: object, task: int, layer: str) -> Plan:
    """Build the plan of ``task`` in ``layer`` of a packed model (through ``model.resolve``).

    Parameters
    ----------
    model : PackedModel
        Anything with ``resolve(task, layer)`` and ``codebook(task, layer)``.
    task : int
    layer : str

    Returns
    -------
    Plan
    """
    mask, source, codes = model.resolve(task, layer)
    writers = np.unique(source[mask]) if mask.any() else np.zeros(0, np.int64)
    codebooks = {int(w): model.codebook(int(w), layer) for w in writers}
    return build_plan(mask, source, codes, codebooks)

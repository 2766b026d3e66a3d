"""Per-task matmul plan: one task's weights of one layer as compact indices and small codes.

A :class:`Plan` is derived once from what the read rule resolves for (task, layer): the mask, the
task that wrote the field read at each position (its *source*) and that field's code. It holds no
dense float32 copy of the weights: only column indices, small integer codes into one *combined
codebook* (the concatenation of the writers' codebooks) and row bookkeeping.

Layout: sliced ELLPACK with slices of ``SLICE`` consecutive rows (SELL-C). Within a slice the
entries are stored column-major: entry ``l`` of row ``s * SLICE + r`` is at
``slice_ptr[s] + l * SLICE + r``, for ``l < slice_len[s]`` (the longest row of the slice). Shorter
rows are padded with column 0 and the code of the combined codebook's last entry, which is 0.0.
This lets a CPU kernel run ``SLICE`` rows in SIMD lanes and a GPU warp read coalesced entries.

Raw float32 fields (a writer without a codebook) have no codes: the distinct float32 values they
contribute to this (task, layer) are appended to the combined codebook and their positions get
the index of their value there. The combined codebook is therefore small for quantized writers
(sum of ``2**bits``) and at most one entry per distinct raw value otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["SLICE", "Plan", "build_plan", "model_plan"]

SLICE = 16
"""Rows per slice of a plan (SIMD lanes of the CPU kernel; a power of two)."""


@dataclass(frozen=True, eq=False)
class Plan:
    """One task's weights of one layer, ready for the packed sparse matmul.

    Attributes
    ----------
    shape : tuple of int
        The layer's weight shape: (out, in) or (out, in, kh, kw).
    slice_ptr : ndarray of int64, (n_slices + 1,)
        Start of each slice in ``cols`` / ``codes``; the last item is their length.
    slice_len : ndarray of int32, (n_slices,)
        Entries per row stored in each slice (its longest row).
    row_len : ndarray of int32, (out,)
        Entries of each row (used positions).
    cols : ndarray of uint16 or int32
        Column index (in the layer flattened to (out, in*kh*kw)) of each entry.
    codes : ndarray of uint8, uint16 or uint32
        Index of each entry's value in ``codebook``.
    codebook : ndarray of float32
        The combined codebook; its last entry is 0.0 (the padding value).
    """

    shape: tuple[int, ...]
    slice_ptr: np.ndarray
    slice_len: np.ndarray
    row_len: np.ndarray
    cols: np.ndarray
    codes: np.ndarray
    codebook: np.ndarray

    @property
    def rows(self) -> int:
        """Output size: ``shape[0]``."""
        return self.shape[0]

    @property
    def cols_in(self) -> int:
        """Input size: the product of ``shape[1:]``."""
        return math.prod(self.shape[1:])

    @property
    def nnz(self) -> int:
        """Number of used positions (non-padding entries)."""
        return int(self.row_len.sum())

    @property
    def nbytes(self) -> int:
        """Bytes held by the plan's arrays."""
        return sum(a.nbytes for a in (self.slice_ptr, self.slice_len, self.row_len, self.cols,
                                      self.codes, self.codebook))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The kernel arguments: (slice_ptr, slice_len, row_len, cols, codes, codebook)."""
        return (self.slice_ptr, self.slice_len, self.row_len, self.cols, self.codes,
                self.codebook)

    def dense(self) -> np.ndarray:
        """Decode to dense float32 weights of ``shape`` (for tests and debugging only)."""
        out, n_in = self.rows, self.cols_in
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
               codebooks: Mapping[int, np.ndarray | None]) -> Plan:
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
    zero_code = codebook.size - 1

    # SELL-C layout.
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
    col_dtype = np.uint16 if n_in <= 1 << 16 else np.int32
    plan_cols = np.zeros(total, col_dtype)
    plan_cols[pos] = cols
    plan_codes = np.full(total, zero_code, _code_dtype(codebook.size))
    plan_codes[pos] = combined
    arrays = [slice_ptr, slice_len.astype(np.int32), row_len_pad[:out].astype(np.int32),
              plan_cols, plan_codes, codebook]
    for a in arrays:
        a.flags.writeable = False  # a plan is shared and cached: nobody may change it
    return Plan(shape, *arrays)


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

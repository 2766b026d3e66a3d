"""Streaming task data: rows of shared base arrays, gathered batch by batch.

A permuted task is the base images with its pixels permuted, a split task the base rows of its
classes. Instead of a copy per task, a task's inputs are a `LazyRows`: the base array (shared by
every task of the scenario), the row indices of the split and the task's column permutation.
Indexing it gathers only the rows asked for, exactly the values (bit for bit) that the eager copy
``base[rows][:, columns]`` holds there, so a stream of N tasks holds the base arrays once plus
index vectors, whatever N.

`TaskDataset` is a torch ``Dataset`` over one task's ``(x, y)`` whose items are whole batches
(one index vector in, one batch out), and `batch_loader` drives it with a ``DataLoader`` over a
given sequence of index batches: the batches are chosen by the caller (the trainer's seeded order),
so worker processes (``workers``) and pinned memory change the speed, never the batches.
``numpy.asarray`` of a `LazyRows` materialises it (for the code that needs a whole split at once).

Compact bases: when the values take few distinct values (standardised 8-bit pixels take 256),
the base can hold small integer codes and the view a ``table`` of the values: a gather returns
``table[codes]``, the same float32 values bit for bit, from a base a quarter of the size
(`encode_table` builds and checks the codes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["LazyRows", "TaskDataset", "batch_loader", "encode_table", "held_bytes"]


def _index(n: int) -> np.dtype:
    return np.dtype(np.int32 if n < 2**31 else np.int64)


class LazyRows:
    """Array-like ``base[rows][:, columns]`` whose rows are gathered on access.

    Parameters
    ----------
    base : np.ndarray
        The shared array, (N, ...) ; never copied or written.
    rows : array of int, optional
        The rows of ``base`` in this view, in order (default all).
    columns : array of int, optional
        A permutation of axis 1 applied to every gathered row (``base`` must be 2-D).
    table : 1-D np.ndarray, optional
        The values of the codes: ``base`` holds unsigned integer codes below ``len(table)``
        and the view's values are ``table[base[rows]][:, columns]`` (dtype ``table.dtype``).

    Indexing with an int, a slice, an integer or boolean array (optionally followed by indices
    of the other axes) returns a NumPy array; ``np.asarray(view)`` materialises the whole view.
    """

    def __init__(self, base: np.ndarray, rows: Any = None, columns: Any = None,
                 table: np.ndarray | None = None):
        if not isinstance(base, np.ndarray) or base.ndim < 1:
            raise TypeError("base must be a NumPy array with at least one axis")
        if table is not None:
            table = np.asarray(table)
            if table.ndim != 1 or base.dtype.kind != "u" or (
                    base.size and int(base.max()) >= len(table)):
                raise ValueError("a table needs 1-D values and a base of unsigned codes below "
                                 "its length")
        self.table = table
        self.base = base
        self.rows = None if rows is None else np.asarray(rows).astype(_index(len(base)), copy=False)
        if columns is not None:
            if base.ndim != 2:
                raise ValueError(f"a column permutation needs a 2-D base, got {base.shape}")
            columns = np.asarray(columns).astype(_index(base.shape[1]), copy=False)
            if sorted(columns.tolist()) != list(range(base.shape[1])):
                raise ValueError("columns must be a permutation of the base's columns")
        self.columns = columns

    # ------------------------------------------------------------------ array protocol
    @property
    def shape(self) -> tuple[int, ...]:
        """The view's shape: its rows, then the base's other axes."""
        n = len(self.base) if self.rows is None else len(self.rows)
        return (n, *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the values (the table's, else the base's)."""
        return self.base.dtype if self.table is None else self.table.dtype

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return self.base.ndim

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the materialised view (as an ndarray's ``nbytes``)."""
        return self.size * self.dtype.itemsize

    @property
    def index_bytes(self) -> int:
        """Bytes this view holds besides the shared base: its row and column indices, table."""
        return sum(a.nbytes for a in (self.rows, self.columns, self.table) if a is not None)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        permuted = self.columns is not None
        return f"LazyRows(shape={self.shape}, dtype={self.dtype}, permuted={permuted})"

    def _gather(self, key: Any) -> np.ndarray:
        if self.rows is None:
            out = self.base[key]
        else:
            if isinstance(key, slice) or np.ndim(key) == 0:
                picked = self.rows[key]
            else:
                key = np.asarray(key)
                if key.size == 0 and key.dtype != bool:
                    key = key.astype(np.intp)  # ``[]`` selects no rows, as for an ndarray
                if key.dtype == bool and key.shape != self.rows.shape:
                    raise IndexError(f"boolean index of shape {key.shape} for {len(self)} rows")
                picked = self.rows[key]
            out = np.take(self.base, picked, axis=0)
        if self.columns is not None:
            out = np.take(out, self.columns, axis=out.ndim - 1)
        elif self.rows is None and self.table is None:
            out = np.array(out)  # a copy: callers may write to what they get
        return out if self.table is None else self.table[out]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            return self._gather(key)
        if not key:
            return self._gather(slice(None))
        out = self._gather(key[0])
        scalar = not isinstance(key[0], slice) and np.ndim(key[0]) == 0
        return out[key[1:]] if scalar else out[(slice(None), *key[1:])]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._gather(slice(None))
        return out if dtype is None else out.astype(dtype, copy=False)


def encode_table(x: np.ndarray, table: np.ndarray, chunk: int = 512) -> np.ndarray | None:
    """uint8 codes ``c`` with ``table[c]`` equal to ``x`` bit for bit, or None if there are none.

    ``table``: at most 256 values, strictly increasing (NaN-free). Row chunk by row chunk, so
    that only ``x`` and the codes are held whole.
    """
    table = np.asarray(table)
    if table.ndim != 1 or not 0 < len(table) <= 256 or table.dtype != x.dtype:
        return None
    if not (np.all(np.isfinite(table)) and np.all(table[1:] > table[:-1])):
        return None
    raw = table.view(np.dtype(f"u{table.itemsize}"))
    codes = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        c = np.searchsorted(table, part).clip(0, len(table) - 1).astype(np.uint8)
        if not np.array_equal(raw[c], part.view(raw.dtype)):
            return None
        codes[start : start + chunk] = c
    return codes


def held_bytes(*arrays: Any) -> int:
    """Bytes held by ``arrays``: each distinct NumPy base counted once, plus `LazyRows` indices."""
    seen: dict[int, int] = {}
    total = 0
    for a in arrays:
        if isinstance(a, LazyRows):
            total += a.index_bytes
            a = a.base
        if isinstance(a, np.ndarray):
            owner = a
            while isinstance(owner.base, np.ndarray):
                owner = owner.base
            seen[id(owner)] = owner.nbytes
    return total + sum(seen.values())


# ---------------------------------------------------------------------------------- torch side


class TaskDataset(Dataset):
    """One task's ``(x, y)`` as a torch ``Dataset`` whose items are batches.

    ``dataset[index]`` with a vector of row numbers returns ``(x[index], y[index])`` as a float32
    and an int64 tensor; ``x`` may be an ndarray or a `LazyRows`.
    """

    def __init__(self, x: Any, y: Any):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x
        self.y = np.ascontiguousarray(y, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(index, dtype=np.int64)
        xb = np.ascontiguousarray(self.x[index], dtype=np.float32)
        return torch.from_numpy(xb), torch.from_numpy(self.y[index])


def batch_loader(dataset: Dataset, batches: Iterable[Any], *, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` yielding ``dataset[b]`` for each index vector ``b`` of ``batches``.

    ``batches`` may be endless (a generator); ``workers`` > 0 gathers them in that many forked
    processes (in the order of ``batches``), ``pin_memory`` returns page-locked tensors for
    asynchronous copies to an accelerator.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=workers,
                      pin_memory=bool(pin_memory) and torch.cuda.is_available())

"""CIFAR-10 from its python pickles (``cifar-10-python.tar.gz`` unpacked), for ``scifar10``.

``load_cifar10(data_dir)`` reads ``cifar-10-batches-py/data_batch_1 .. data_batch_5`` and
``test_batch`` (or those files directly in ``data_dir``) and returns ``(x_train, y_train, x_test,
y_test)``: images (N, 3, 32, 32) scaled to [0, 1] and standardised per channel with the training
set's statistics, labels int64 in 0..9. The pickles are read with an unpickler that builds only
plain containers and NumPy arrays, so a data file cannot run code. Nothing downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bitsub_torch.data.files import load_data_pickle, scale_pixels

__all__ = ["TRAIN_FILES", "load_cifar10"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_HINT = (
    "CIFAR-10 is read from the python version of the data set: give data_dir= (bitsub-train "
    "--data-dir) a directory holding cifar-10-batches-py/data_batch_1..5 and test_batch (or the "
    "six files directly). Nothing downloads."
)


def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = load_data_pickle(path)
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path}: a CIFAR-10 pickle needs 'data' and 'labels'")
    x = np.asarray(d["data"])
    y = np.asarray(d["labels"])
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.ndim != 1 or len(x) != len(y) or not len(y):
        raise ValueError(f"{path}: 'data' must be (N, 3072) with N = len(labels) > 0, found "
                         f"{x.shape} and {y.shape} labels")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
        raise ValueError(f"{path}: labels must be integers in 0..9")
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' must be uint8 pixels, found {x.dtype}")
    return scale_pixels(x.reshape(-1, 3, 32, 32)), y.astype(np.int64)


def load_cifar10(data_dir: str | os.PathLike | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images and labels of CIFAR-10 (see the module docstring)."""
    if data_dir is None:
        raise FileNotFoundError(_HINT)
    root = Path(data_dir)
    base = next((d for d in (root / "cifar-10-batches-py", root)
                 if (d / "test_batch").is_file()), None)
    missing = [] if base is None else [f for f in TRAIN_FILES if not (base / f).is_file()]
    if base is None or missing:
        raise FileNotFoundError(f"no complete CIFAR-10 python pickles under {root} "
                                f"({', '.join(missing) or 'test_batch'} missing). {_HINT}")
    parts = [_batch(base / f) for f in TRAIN_FILES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _batch(base / "test_batch")
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64, keepdims=True)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (((x_train - mean) / std).astype(np.float32), y_train,
            ((x_test - mean) / std).astype(np.float32), y_test)

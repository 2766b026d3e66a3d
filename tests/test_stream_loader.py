"""MNIST / Fashion-MNIST read straight into uint8 codes: the standardised values, the mean and the
standard deviation are those of the float32 path (tests/naive.py) bit for bit, without a float32
copy of the images."""

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub_torch.data import scenarios
from bitsub_torch.data.files import load_idx_dataset, load_idx_images
from bitsub_torch.data.streaming import LazyRows
from tests.naive import naive_idx_standardise

# Fashion-MNIST where it may be installed (Debian's dataset-fashion-mnist, or its unpacked .deb).
REAL_FMNIST = [Path("/usr/share/datasets/fashion-mnist"),
               Path("/tmp/fmnist_deb/usr/share/datasets/fashion-mnist")]


def write_idx(path, arr, gz=False, dtype=">u1"):
    type_code = {">u1": 0x08, ">i2": 0x0B}[dtype]
    header = bytes([0, 0, type_code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    raw = header + np.ascontiguousarray(arr, dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_images(d, train, test, gz=False, dtype=">u1"):
    d.mkdir(parents=True, exist_ok=True)
    for stem, x in (("train", train), ("t10k", test)):
        suffix = ".gz" if gz else ""
        write_idx(d / f"{stem}-images-idx3-ubyte{suffix}", x.reshape(len(x), 28, 28), gz, dtype)
        write_idx(d / f"{stem}-labels-idx1-ubyte{suffix}", np.arange(len(x)) % 10, gz)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def order_sensitive_images():
    # 6,000 white images push the running sum of the pixel values past 2**22, where a float64
    # no longer holds every multiple of 2**-31; the dark pixels after them then round, so the
    # sum depends on the order in which NumPy adds its buffers.
    rng = np.random.default_rng(0)
    dark = rng.choice(np.array([1, 2, 3, 5], np.uint8), size=(2000, 784))
    return np.concatenate([np.full((6000, 784), 255, np.uint8), dark])


def check_against_float32_path(train, test, table, mean, std):
    want_train, want_test, want_mean, want_std = naive_idx_standardise(train, test)
    assert same_bits(mean, want_mean) and same_bits(std, want_std)
    assert same_bits(table[train], want_train) and same_bits(table[test], want_test)


def moments_and_table(train):
    values = scenarios._pixel_values()
    mean, std = scenarios._code_moments(train, values)
    table = np.empty(256, np.float32)
    table[:] = (values.reshape(-1) - mean) / std
    return mean, std, table


def test_order_sensitive_sum_is_numpys():
    x = order_sensitive_images()
    mean, std, table = moments_and_table(x)
    check_against_float32_path(x, x[:10], table, mean, std)
    # the case can fail: the exact sum, or steps that are not whole buffers, give another mean
    values = scenarios._pixel_values().reshape(-1)
    exact = int((values.astype(np.float64)[x] * 2.0**32).astype(np.int64).sum()) * 2.0**-32
    assert exact / x.size != mean
    total = np.float64(0.0)
    for start in range(0, len(x), 500):  # 500 rows: 392,000 values, not whole 8192-buffers
        total = np.add.reduce(values[x[start : start + 500]], axis=None, dtype=np.float64,
                              initial=total)
    assert total / x.size != mean


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 700), width=st.sampled_from([1, 3, 16, 100, 784]),
       low=st.integers(0, 255), seed=st.integers(0, 2**16))
def test_moments_equal_the_float32_path(rows, width, low, seed):
    rng = np.random.default_rng(seed)
    train = rng.integers(low, 256, size=(rows, width), dtype=np.uint8)
    test = rng.integers(0, 256, size=(max(1, rows // 3), width), dtype=np.uint8)
    mean, std, table = moments_and_table(train)
    check_against_float32_path(train, test, table, mean, std)


def test_constant_images_keep_std_one():
    train = np.full((5, 784), 7, np.uint8)
    mean, std, table = moments_and_table(train)
    check_against_float32_path(train, train, table, mean, std)
    assert std == 1.0


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("coded", [True, False])
def test_idx_scenario_data_equal_the_float32_path(tmp_path, gz, coded):
    train = order_sensitive_images()
    test = np.random.default_rng(1).integers(0, 256, size=(300, 784), dtype=np.uint8)
    write_images(tmp_path, train, test, gz=gz)
    got = scenarios._mnist(tmp_path, coded)
    want_train, want_test, _, _ = naive_idx_standardise(train, test)
    for x, want in ((got[0], want_train), (got[2], want_test)):
        if coded:  # the file's bytes are the codes, one per pixel
            assert isinstance(x, LazyRows) and x.base.dtype == np.uint8 and x.table.size == 256
        else:
            assert isinstance(x, np.ndarray)
        assert same_bits(np.asarray(x), want)
    assert same_bits(got[1], np.arange(len(train)) % 10)
    # the float loader of the same files scales as before
    x_train, _, x_test, _ = load_idx_dataset(tmp_path, "MNIST", ())
    assert same_bits(x_train[:7], (train[:7].astype(np.float32) / np.float32(255.0)))
    assert same_bits(load_idx_images(tmp_path, "MNIST", ())[0], train)


def test_images_of_other_types_take_the_float32_path(tmp_path):
    rng = np.random.default_rng(4)
    train, test = (rng.integers(0, 256, size=(n, 784)) for n in (90, 30))
    write_images(tmp_path, train, test, dtype=">i2")  # 16-bit pixels: no uint8 codes
    got = scenarios._mnist(tmp_path, coded=True)
    want_train, want_test, _, _ = naive_idx_standardise(train.astype(np.int16),
                                                        test.astype(np.int16))
    assert same_bits(got[0], want_train) and same_bits(got[2], want_test)


def test_scenarios_hold_no_float32_copy_of_the_images(tmp_path):
    train = np.random.default_rng(2).integers(0, 256, size=(600, 784), dtype=np.uint8)
    write_images(tmp_path, train, train[:100])
    sc = scenarios.get_scenario("pfmnist", tasks=3, data_dir=tmp_path)
    assert sc.held_bytes() < train.nbytes * 2  # codes (1 byte a pixel) and indices, not floats


@pytest.mark.skipif(not any(d.is_dir() for d in REAL_FMNIST), reason="no Fashion-MNIST IDX files")
def test_real_fashion_mnist_equals_the_float32_path():
    d = next(d for d in REAL_FMNIST if d.is_dir())
    train, _, test, _ = load_idx_images(d, "Fashion-MNIST", ())
    assert train.dtype == np.uint8 and train.shape == (60000, 784)
    mean, std, table = moments_and_table(train)
    check_against_float32_path(train, test, table, mean, std)
    got = scenarios._fmnist(d, coded=True)
    assert same_bits(got[0].table, table) and got[0].base.dtype == np.uint8


def test_train_lets_the_data_go_before_the_retest_and_the_figure(tmp_path, monkeypatch):
    import importlib
    import weakref

    from bitsub_torch import cli

    export = importlib.import_module("bitsub_torch.export")  # the module, not its function

    rng = np.random.default_rng(3)
    write_images(tmp_path / "data", rng.integers(0, 256, size=(200, 784), dtype=np.uint8),
                 rng.integers(0, 256, size=(40, 784), dtype=np.uint8))
    bases = {}
    get_scenario, packed_predictions = scenarios.get_scenario, export.packed_predictions

    def recorded_scenario(*args, **kwargs):
        sc = get_scenario(*args, **kwargs)
        bases["train"] = weakref.ref(sc.tasks[0].x_train.base)
        bases["test"] = weakref.ref(sc.tasks[0].x_test.base)
        return sc

    seen = []

    def retest(*args, **kwargs):  # the re-test needs the test images only
        seen.append(("retest", bases["train"]() is None, bases["test"]() is None))
        return packed_predictions(*args, **kwargs)

    def figure(*args, **kwargs):
        seen.append(("figure", bases["train"]() is None, bases["test"]() is None))

    monkeypatch.setattr(scenarios, "get_scenario", recorded_scenario)
    monkeypatch.setattr(export, "packed_predictions", retest)
    monkeypatch.setattr(cli, "plot_accuracy_matrix", figure)
    report = cli.train(strategy="wsn", scenario="splitmnist", tasks=2, epochs=1,
                       data_dir=tmp_path / "data", out=tmp_path / "run", progress=False,
                       batch_size=64)
    assert report["acc"] is not None
    assert seen == [("retest", True, False)] * 2 + [("figure", True, True)]

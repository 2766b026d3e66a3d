"""Streaming scenarios: lazy tasks hold the same values as the eager ones, in memory that does not
grow with the number of tasks, and reach the trainer through a DataLoader."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub_torch.data.scenarios import get_scenario
from bitsub_torch.data.streaming import (
    LazyRows,
    TaskDataset,
    batch_loader,
    encode_table,
    held_bytes,
)
from tests.naive import naive_lazy_rows_gather

SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name,tasks", [("pmnist5k", 3), ("splitmnist5k", 5)])
def test_lazy_tasks_equal_eager_bit_for_bit(name, tasks):
    lazy = get_scenario(name, tasks=tasks, seed=3)
    eager = get_scenario(name, tasks=tasks, seed=3, streaming=False)
    assert isinstance(lazy.tasks[0].x_train, LazyRows)
    assert isinstance(eager.tasks[0].x_train, np.ndarray)
    for a, b in zip(lazy.tasks, eager.tasks):
        assert a.classes == b.classes
        for split in SPLITS:
            assert same_bits(getattr(a, split), getattr(b, split)), split
        # a batch gathered from the view is the eager rows at those indices
        idx = np.random.default_rng(0).permutation(len(b.y_train))[:128]
        xa, ya = TaskDataset(a.x_train, a.y_train)[idx]
        xb, yb = TaskDataset(b.x_train, b.y_train)[idx]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_memory_does_not_scale_with_tasks():
    one = get_scenario("pmnist5k", tasks=1)
    ten = get_scenario("pmnist5k", tasks=10)
    eager = get_scenario("pmnist5k", tasks=10, streaming=False)
    t = ten.tasks[0]
    rows = len(t.y_train) + len(t.y_val) + len(t.y_test)
    # per extra task: row indices (int32), labels (int64) and the permutation in each of the
    # three views, never a row of 784 floats
    assert ten.held_bytes() - one.held_bytes() <= 9 * (rows * (4 + 8) + 3 * 784 * 4)
    base = 5000 * 784 * 4
    assert ten.held_bytes() < 1.2 * base < eager.held_bytes() / 8


def test_held_bytes_counts_a_shared_base_once():
    base = np.zeros((10, 4), np.float32)
    views = [LazyRows(base, [1, 2], [3, 2, 1, 0]) for _ in range(3)]
    assert held_bytes(*views) == base.nbytes + 3 * (2 * 4 + 4 * 4)
    assert held_bytes(base, base[2:], base.T) == base.nbytes


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_lazy_rows_against_naive(data):
    n = data.draw(st.integers(0, 7))
    f = data.draw(st.integers(1, 5))
    base = np.arange(n * f, dtype=np.float32).reshape(n, f) if n else np.zeros((0, f), np.float32)
    rows = data.draw(st.none() | st.lists(st.integers(0, n - 1), max_size=9)) if n else None
    cols = data.draw(st.none() | st.permutations(range(f)))
    view = LazyRows(base, rows, cols)
    want = naive_lazy_rows_gather(base, rows, cols)
    assert view.shape == want.shape and len(view) == len(want)
    assert same_bits(np.asarray(view), want)
    m = len(want)
    keys = [slice(None), slice(1, None, 2), np.arange(m)[::-1], np.ones(m, bool),
            np.zeros(0, np.int64)]
    if m:
        keys += [0, -1, m - 1, data.draw(st.lists(st.integers(-m, m - 1), max_size=6))]
    for key in keys:
        assert same_bits(view[key], want[key])
    if m:
        assert same_bits(view[0, 1 % f], want[0, 1 % f])
        assert same_bits(view[:, 0], want[:, 0])
        with pytest.raises(IndexError):
            view[m]
    assert not np.shares_memory(view[:], base)  # what a caller gets is its own copy


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_coded_lazy_rows_against_naive(data):
    n = data.draw(st.integers(0, 6))
    f = data.draw(st.integers(1, 4))
    k = data.draw(st.integers(1, 256))
    table = np.sort(np.random.default_rng(k).standard_normal(k)).astype(np.float32)
    base = np.asarray(data.draw(st.lists(st.integers(0, k - 1), min_size=n * f,
                                         max_size=n * f)), np.uint8).reshape(n, f)
    rows = data.draw(st.none() | st.lists(st.integers(0, n - 1), max_size=8)) if n else None
    cols = data.draw(st.none() | st.permutations(range(f)))
    view = LazyRows(base, rows, cols, table)
    want = naive_lazy_rows_gather(base, rows, cols, table)
    assert view.dtype == np.float32 and view.shape == want.shape
    assert view.nbytes == want.nbytes
    assert same_bits(np.asarray(view), want)
    for key in (slice(None), np.arange(len(want))[::-1], np.zeros(0, np.int64)):
        assert same_bits(view[key], want[key])
    if len(want):
        assert same_bits(view[0], want[0]) and same_bits(view[:, f - 1], want[:, f - 1])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_encode_table_codes_exactly_or_refuses(data):
    k = data.draw(st.integers(1, 256))
    table = np.unique(np.random.default_rng(k).standard_normal(k).astype(np.float32))
    n = data.draw(st.integers(0, 9))
    idx = np.asarray(data.draw(st.lists(st.integers(0, len(table) - 1), min_size=3 * n,
                                        max_size=3 * n)), np.int64).reshape(n, 3)
    x = table[idx]
    codes = encode_table(x, table, chunk=data.draw(st.integers(1, 4)))
    assert codes is not None and codes.dtype == np.uint8 and same_bits(table[codes], x)
    if n:  # one value off the table by one ulp: no exact coding
        y = x.copy()
        y[n - 1, 2] = np.nextafter(y[n - 1, 2], np.float32(np.inf))
        assert encode_table(y, table) is None
    assert encode_table(x, table[::-1]) is None if len(table) > 1 else True  # not increasing
    assert encode_table(x, np.zeros(257, np.float32)) is None


def test_encode_table_compares_bits_not_values():
    table = np.array([-1.0, 0.0, 1.0], np.float32)
    assert same_bits(encode_table(np.array([[1.0, 0.0]], np.float32), table),
                     np.array([[2, 1]], np.uint8))
    # -0.0 == 0.0, but a decoded 0.0 would not be the same bits
    assert encode_table(np.array([[1.0, -0.0]], np.float32), table) is None
    assert encode_table(np.array([[np.nan]], np.float32), table) is None


def test_lazy_rows_rejects_bad_arguments():
    base = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="permutation"):
        LazyRows(base, None, [0, 1, 1, 2])
    with pytest.raises(ValueError, match="2-D"):
        LazyRows(np.zeros((3, 2, 2)), None, [0, 1])
    with pytest.raises(TypeError):
        LazyRows([1, 2, 3])
    with pytest.raises(ValueError, match="codes below"):
        LazyRows(np.array([[0, 3]], np.uint8), None, None, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="unsigned codes"):
        LazyRows(np.zeros((2, 2), np.float32), None, None, np.zeros(3, np.float32))


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_loader_keeps_the_given_batches(workers):
    base = np.random.default_rng(1).standard_normal((50, 6)).astype(np.float32)
    view = LazyRows(base, np.arange(40)[::-1], [5, 4, 3, 2, 1, 0])
    y = np.arange(40) % 3
    batches = [np.array([3, 1, 2]), np.arange(40), np.array([39])]
    got = list(batch_loader(TaskDataset(view, y), iter(batches), workers=workers))
    assert len(got) == 3
    for idx, (xb, yb) in zip(batches, got):
        assert torch.equal(xb, torch.from_numpy(np.asarray(view)[idx]))
        assert torch.equal(yb, torch.from_numpy(y[idx]))
    with pytest.raises(ValueError, match="workers"):
        batch_loader(TaskDataset(view, y), iter(batches), workers=-1)


def test_trainer_results_do_not_depend_on_streaming_or_workers():
    from bitsub_torch.cl.strategies import get_strategy
    from bitsub_torch.cl.trainer import Trainer
    from bitsub_torch.nn.models import mlp

    rows = []
    for streaming, workers in ((False, 0), (True, 0), (True, 2)):
        sc = get_scenario("splitmnist5k", tasks=2, streaming=streaming)
        torch.manual_seed(0)
        net = mlp(sc.input_shape, sc.num_classes, 2, width=16)
        trainer = Trainer(net, get_strategy("finetune"), sc, epochs=1, batch_size=64,
                          progress=False, workers=workers)
        rows.append(trainer.run().accuracy_matrix)
    assert np.array_equal(rows[0], rows[1]) and np.array_equal(rows[0], rows[2])


@pytest.mark.parametrize("strategy,flags,match", [
    ("wsn", ["--workers", "-1"], "--workers must be an int >= 0"),
    ("er", ["--workers", "2"], "--workers and --pin-memory are for the task-incremental"),
])
def test_cli_rejects_bad_workers_before_writing(tmp_path, capsys, strategy, flags, match):
    from bitsub_torch.cli import train_main

    out = tmp_path / "run"
    rc = train_main(["--strategy", strategy, "--scenario", "splitdigits", "--out", str(out),
                     "--no-progress", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not out.exists()

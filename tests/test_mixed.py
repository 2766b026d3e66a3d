"""The heterogeneous ``mixed`` scenario: sources, shapes, labels, upsampling and padding."""

import numpy as np
import pytest

from bitsub_torch.data.mixed import MAX_TEST, MAX_TRAIN, TASKS, mixed_tasks
from bitsub_torch.data.scenarios import get_scenario


def fake(features, n_train=300, n_test=100, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_train, features)).astype(np.float32) * 3 + 1,
            np.arange(n_train) % 10, rng.standard_normal((n_test, features)).astype(np.float32),
            np.arange(n_test) % 10)


SOURCES = {"mnist": fake(784), "fmnist": fake(784, seed=1), "digits": fake(64, seed=2),
           "mnist1d": fake(40, seed=3)}


def test_every_task_has_five_classes_in_784_features():
    parts = mixed_tasks(SOURCES, 10, seed=0)
    assert len(parts) == len(TASKS) == 10
    for (_name, first), (x_tr, y_tr, x_te, y_te, classes) in zip(TASKS, parts, strict=True):
        assert x_tr.shape[1] == x_te.shape[1] == 784 and x_tr.dtype == np.float32
        assert classes == tuple(range(first, first + 5))
        assert set(np.unique(y_tr)) == set(range(5)) and set(np.unique(y_te)) == set(range(5))
        assert len(y_tr) == 150 and len(y_te) == 50


def test_upsampling_and_padding_match_the_obvious_loops():
    parts = mixed_tasks(SOURCES, 8, seed=0)
    x, y = SOURCES["digits"][0], SOURCES["digits"][1]
    mean, std = x.mean(), x.std()
    rows = np.flatnonzero(np.isin(y, range(5)))
    img = ((x[rows[0]] - mean) / std).reshape(8, 8)
    want = np.array([[img[i * 8 // 28, j * 8 // 28] for j in range(28)] for i in range(28)])
    np.testing.assert_allclose(parts[4][0][0].reshape(28, 28), want, rtol=1e-5, atol=1e-6)
    x1 = SOURCES["mnist1d"][0]
    rows = np.flatnonzero(np.isin(SOURCES["mnist1d"][1], range(5, 10)))
    sig = (x1[rows[0]] - x1.mean()) / x1.std()
    got = parts[7][0][0]
    np.testing.assert_allclose(got[:40], sig, rtol=1e-5, atol=1e-6)
    assert not got[40:].any()


def test_permuted_tasks_depend_on_the_seed_and_the_rest_does_not():
    a, b = mixed_tasks(SOURCES, 10, seed=0), mixed_tasks(SOURCES, 10, seed=1)
    for t in range(8):
        np.testing.assert_array_equal(a[t][0], b[t][0])
    assert not np.array_equal(a[8][0], b[8][0])
    # the permuted task holds the same pixels as task 0, reordered
    np.testing.assert_array_equal(np.sort(a[8][0], axis=1), np.sort(a[0][0], axis=1))


def test_subsampling_caps_each_task():
    big = {"mnist": fake(784, n_train=3 * MAX_TRAIN, n_test=3 * MAX_TEST)}
    parts = mixed_tasks(big, 2, seed=0)
    assert all(len(p[1]) == MAX_TRAIN and len(p[3]) == MAX_TEST for p in parts)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="1..10 tasks"):
        mixed_tasks(SOURCES, 11, seed=0)
    with pytest.raises(ValueError, match="needs the fmnist data"):
        mixed_tasks({"mnist": SOURCES["mnist"]}, 3, seed=0)
    with pytest.raises(ValueError, match="784"):
        mixed_tasks({"mnist": fake(1000)}, 1, seed=0)
    with pytest.raises(ValueError, match="mixed has 1..10"):
        get_scenario("mixed", tasks=11)


def test_the_first_two_tasks_need_only_shipped_data():
    sc = get_scenario("mixed", tasks=2, seed=3)
    assert sc.name == "mixed" and sc.input_shape == (784,) and sc.num_classes == 5
    assert [t.classes for t in sc.tasks] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert all(len(t.y_val) > 0 and t.x_train.shape[1] == 784 for t in sc.tasks)

"""ACC, BWT, FWT and forgetting against small matrices computed by hand."""

import math

import numpy as np
import pytest

from bitsub_torch.cl.metrics import acc, bwt, forgetting, fwt

R = [
    [0.9, 0.1, 0.2],
    [0.8, 0.7, 0.3],
    [0.6, 0.5, 0.4],
]
B = [0.1, 0.2, 0.25]


def test_hand_computed_3x3():
    assert math.isclose(acc(R), (0.6 + 0.5 + 0.4) / 3)
    assert math.isclose(bwt(R), ((0.6 - 0.9) + (0.5 - 0.7)) / 2)
    assert math.isclose(fwt(R, B), ((0.1 - 0.2) + (0.3 - 0.25)) / 2)
    assert math.isclose(forgetting(R), ((0.9 - 0.6) + (0.7 - 0.5)) / 2)


def test_forgetting_takes_the_best_row_after_learning():
    r = [
        [0.5, 0.9, 0.0],  # 0.9 is task 1 before it was learned: not knowledge to forget
        [0.7, 0.6, 0.0],
        [0.6, 0.6, 0.8],
    ]
    assert math.isclose(forgetting(r), ((0.7 - 0.6) + (0.6 - 0.6)) / 2)
    assert math.isclose(bwt(r), ((0.6 - 0.5) + (0.6 - 0.6)) / 2)


def test_forget_free_matrix_has_zero_bwt_and_forgetting():
    r = np.array([[0.9, 0.2], [0.9, 0.8]])
    assert bwt(r) == 0.0
    assert forgetting(r) == 0.0
    assert acc(r) == pytest.approx(0.85)


def test_single_task():
    assert acc([[0.7]]) == pytest.approx(0.7)
    assert bwt([[0.7]]) == 0.0
    assert fwt([[0.7]], [0.1]) == 0.0
    assert forgetting([[0.7]]) == 0.0


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2]], [0.1, 0.2], np.zeros((2, 3))])
def test_rejects_non_square(bad):
    with pytest.raises(ValueError, match="square"):
        acc(bad)
    with pytest.raises(ValueError, match="square"):
        bwt(bad)


def test_fwt_needs_one_baseline_per_task():
    with pytest.raises(ValueError, match="random_init"):
        fwt(R, [0.1, 0.2])


def test_fwt_on_a_hand_worked_4x4_example():
    # Lopez-Paz & Ranzato's FWT: task j's accuracy *before* training it (row j-1, column j) minus
    # the random-init accuracy b_j, for j = 1..3; the diagonal and the lower triangle do not count.
    r = [
        [0.90, 0.30, 0.20, 0.40],
        [0.80, 0.95, 0.35, 0.10],
        [0.70, 0.85, 0.99, 0.50],
        [0.60, 0.75, 0.89, 0.97],
    ]
    b = [0.10, 0.10, 0.25, 0.40]
    # (0.30 - 0.10) + (0.35 - 0.25) + (0.50 - 0.40) = 0.20 + 0.10 + 0.10 = 0.40, over 3 tasks
    assert fwt(r, b) == pytest.approx(0.40 / 3, abs=1e-12)
    assert fwt(r, [0.0] * 4) == pytest.approx((0.30 + 0.35 + 0.50) / 3, abs=1e-12)

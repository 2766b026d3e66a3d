"""bench/mask_context.py: the ideal costs it prints, against hand computations."""

import importlib.util
import math
from pathlib import Path

import numpy as np

_PATH = Path(__file__).resolve().parent.parent / "bench" / "mask_context.py"
_SPEC = importlib.util.spec_from_file_location("mask_context", _PATH)
mc = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mc)


def test_entropy_bits_by_hand():
    assert mc.entropy_bits(0, 10) == 0.0 and mc.entropy_bits(10, 10) == 0.0
    assert mc.entropy_bits(0, 0) == 0.0
    assert math.isclose(mc.entropy_bits(4, 8), 8.0)  # p = 1/2: one bit a position
    # p = 1/4 over 8 positions: 8 (1/4 log2 4 + 3/4 log2 4/3)
    assert math.isclose(mc.entropy_bits(2, 8), 8 * (0.5 + 0.75 * math.log2(4 / 3)))


def test_conditional_bits_splits_by_class():
    mask = np.array([1, 1, 1, 1, 0, 0, 1, 0], bool)
    # a context that separates the mask exactly costs nothing ...
    assert mc.conditional_bits(mask, mask.astype(np.int64)) == 0.0
    # ... one class is the mask alone, and two classes add their own costs
    assert math.isclose(mc.conditional_bits(mask, np.zeros(8, np.int64)), mc.entropy_bits(5, 8))
    classes = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert math.isclose(mc.conditional_bits(mask, classes), mc.entropy_bits(1, 4))


def test_magnitude_quartile():
    values = np.array([0.0, -4.0, 1.0, -2.0, 3.0, 9.0], np.float32)
    inside = np.array([False, True, True, True, True, False])
    # |values| inside: 4, 1, 2, 3; quartile edges 1.75, 2.5, 3.25
    assert mc.magnitude_quartile(values, inside).tolist() == [0, 4, 1, 2, 3, 0]
    assert mc.magnitude_quartile(values, np.zeros(6, bool)).tolist() == [0] * 6

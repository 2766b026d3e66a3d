"""Tests written to kill the mutants that matter of the sampled mutation run (``make mutation``).

They pin the read rule (``PackedModel.resolve`` / ``weights``), the word checks that verify a
stored model, the bit packing and the continual-learning metrics on small hand-built cases, each
with an exact expected result worked out by hand in the comments.
"""

import math

import numpy as np
import pytest

from bitsub import PackedModel, TaskLayer, pack_bits, unpack_bits
from bitsub_torch.cl.metrics import acc, bwt, forgetting, fwt

F = np.float32
SHAPE = (2, 3)


def m(*positions):
    """A bool mask of SHAPE with the given flat positions set."""
    out = np.zeros(6, bool)
    out[list(positions)] = True
    return out.reshape(SHAPE)


def three_tasks(word_bits=32, prefix_bits=2):
    """Three tasks of one bank over 6 positions (flat indices 0..5):

    - task 0 writes 0..4 with 2-bit codes 3,2,1,0,3 into [-1.5, -0.5, 0.5, 1.5];
    - task 1 reuses 0,1, writes 2,3 with 1-bit codes 1,0 into [10, 20], leaves 4,5 out;
    - task 2 writes 0 again (a second field in that word: code 1 into [7, 8]) and reuses 2, 4.
    """
    pm = PackedModel(word_bits=word_bits, prefix_bits=prefix_bits)
    pm.add_layer("w", SHAPE)
    codes0 = np.array([3, 2, 1, 0, 3, 0]).reshape(SHAPE)
    pm.add_task({"w": TaskLayer(m(0, 1, 2, 3, 4), m(0, 1, 2, 3, 4), bits=2,
                                codebook=[-1.5, -0.5, 0.5, 1.5], codes=codes0)})
    codes1 = np.array([0, 0, 1, 0, 0, 0]).reshape(SHAPE)
    pm.add_task({"w": TaskLayer(m(0, 1, 2, 3), m(2, 3), bits=1, codebook=[10, 20],
                                codes=codes1)})
    codes2 = np.array([1, 0, 0, 0, 0, 0]).reshape(SHAPE)
    pm.add_task({"w": TaskLayer(m(0, 2, 4), m(0), bits=1, codebook=[7, 8], codes=codes2)})
    return pm


# what each task reads, by the read rule: (source task, code, value) per flat position
READ = {
    0: [(0, 3, 1.5), (0, 2, 0.5), (0, 1, -0.5), (0, 0, -1.5), (0, 3, 1.5), None],
    # task 1 reads task 0's fields at 0, 1 and its own at 2, 3 (task 0's field at 2 is older)
    1: [(0, 3, 1.5), (0, 2, 0.5), (1, 1, 20.0), (1, 0, 10.0), None, None],
    # task 2 reads its own field at 0 (the latest), task 1's at 2, task 0's at 4
    2: [(2, 1, 8.0), None, (1, 1, 20.0), None, (0, 3, 1.5), None],
}


def expected(task):
    mask = np.array([r is not None for r in READ[task]]).reshape(SHAPE)
    source = np.array([-1 if r is None else r[0] for r in READ[task]], np.int32).reshape(SHAPE)
    codes = np.array([0 if r is None else r[1] for r in READ[task]], np.uint32).reshape(SHAPE)
    values = np.array([0.0 if r is None else r[2] for r in READ[task]], F).reshape(SHAPE)
    return mask, source, codes, values


@pytest.mark.parametrize("word_bits, prefix_bits", [(32, 2), (64, 3), (32, 5)])
def test_read_rule_by_hand(word_bits, prefix_bits):
    pm = three_tasks(word_bits, prefix_bits)
    for t in range(3):
        mask, source, codes, values = expected(t)
        got_mask, got_source, got_codes = pm.resolve(t, "w")
        np.testing.assert_array_equal(got_mask, mask)
        np.testing.assert_array_equal(got_source, source)
        np.testing.assert_array_equal(got_codes, codes)
        assert got_source.dtype == np.int32 and got_codes.dtype == np.uint32
        w = pm.weights(t, "w")
        assert w.dtype == F and w.shape == SHAPE
        assert w.tobytes() == values.tobytes(), (t, w)


def test_read_rule_raw_fields_and_a_second_bank():
    pm = PackedModel(word_bits=64, prefix_bits=2)
    pm.add_layer("w", SHAPE)
    raw = np.array([0.1, -2.5, 3.25, 1e-30, -0.0, 7.0], F).reshape(SHAPE)
    pm.add_task({"w": TaskLayer(m(0, 1, 2, 3, 4), m(0, 1, 2, 3, 4), values=raw, bits=32)})
    # task 1 reuses 1, 4 (raw float32 of task 0) and writes 5 with a 3-bit code 6 into 8 values
    book = np.arange(8, dtype=F) / 4
    pm.add_task({"w": TaskLayer(m(1, 4, 5), m(5), bits=3, codebook=book,
                                codes=np.full(SHAPE, 6))})
    # task 2 in a new bank: its own fields only, source ids are global task ids
    pm.add_task({"w": TaskLayer(m(0, 5), m(0, 5), bits=1, codebook=[-1, 1],
                                codes=np.array([1, 0, 0, 0, 0, 0]).reshape(SHAPE))}, bank="new")
    assert [pm.bank(t) for t in range(3)] == [0, 0, 1]
    want = {
        0: np.where(m(0, 1, 2, 3, 4), raw, F(0)),
        1: np.array([0, -2.5, 0, 0, -0.0, 1.5], F).reshape(SHAPE),
        2: np.array([1, 0, 0, 0, 0, -1], F).reshape(SHAPE),
    }
    for t, w in want.items():
        assert pm.weights(t, "w").tobytes() == w.tobytes(), t
    _, source, codes = pm.resolve(1, "w")
    np.testing.assert_array_equal(source.reshape(-1), [-1, 0, -1, -1, 0, 1])
    assert codes.reshape(-1)[1] == np.array(-2.5, F).view(np.uint32)  # a raw field's code
    assert codes.reshape(-1)[5] == 6
    _, source, _ = pm.resolve(2, "w")
    np.testing.assert_array_equal(source.reshape(-1), [2, -1, -1, -1, -1, 2])


def test_words_hold_the_fields_bit_for_bit():
    # word_bits 32, prefix 2: task 0 writes [01][11] at the MSB of word 0 (prefix 1, code 3),
    # task 2 appends [11][1] after task 1's nothing there: word 0 = 0111 11 1 then zeros
    pm = three_tasks()
    word0 = int(pm.words("w", 0)[0])
    assert word0 >> 28 == 0b0111  # prefix 1, code 3
    assert (word0 >> 25) & 0b111 == 0b111  # prefix 3, code 1
    assert word0 & ((1 << 25) - 1) == 0
    word2 = int(pm.words("w", 0)[2])  # task 0 [01][01], task 1 [10][1]
    assert word2 >> 25 == 0b0101101


@pytest.mark.parametrize("bits", [1, 2, 3, 7, 8, 9, 13, 16])
def test_pack_bits_by_hand(bits):
    codes = np.array([(1 << bits) - 1, 0, 1, (1 << bits) - 2 if bits > 1 else 1, 5 % (1 << bits)])
    data = pack_bits(codes, bits)
    stream = "".join(format(int(c), f"0{bits}b") for c in codes)  # MSB first
    stream += "0" * (-len(stream) % 8)
    assert bytes(data) == int(stream, 2).to_bytes(len(stream) // 8, "big")
    np.testing.assert_array_equal(unpack_bits(data, bits, len(codes)), codes)
    assert len(bytes(data)) == math.ceil(len(codes) * bits / 8)


def test_metrics_by_hand_with_negative_forgetting():
    # the last row improves on every earlier one: forgetting is negative, the max runs over the
    # rows after task j was learned and before the last (rows j..T-2), never the last row itself
    r = [[0.5, 0.0, 0.0], [0.4, 0.6, 0.0], [0.9, 0.8, 0.7]]
    # column 0: max(0.5, 0.4) - 0.9 = -0.4; column 1: max(0.6) - 0.8 = -0.2
    assert forgetting(r) == pytest.approx(-0.3, abs=1e-12)
    assert bwt(r) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.6)) / 2, abs=1e-12)
    assert acc(r) == pytest.approx(0.8, abs=1e-12)
    assert fwt(r, [0.1, 0.0, 0.0]) == 0.0  # R[0,1] - 0 + R[1,2] - 0 = 0


@pytest.mark.parametrize("bits", [1, 4, 8, 9, 16])
def test_unpack_bits_dtype(bits):
    codes = np.array([0, 1, (1 << bits) - 1])
    got = unpack_bits(pack_bits(codes, bits), bits, 3)
    assert got.dtype == (np.uint8 if bits <= 8 else np.uint16)
    np.testing.assert_array_equal(got, codes)


@pytest.mark.parametrize("call, exc, message", [
    (lambda: pack_bits([1], 0), ValueError, r"^bits must be in 1\.\.16, got 0$"),
    (lambda: pack_bits([1], 17), ValueError, r"^bits must be in 1\.\.16, got 17$"),
    (lambda: pack_bits([0.5], 2), TypeError,
     r"^codes must be an integer array, got dtype float64; cast it first$"),
    (lambda: pack_bits([2, -1], 2), ValueError, r"^codes must be non-negative, found -1$"),
    (lambda: pack_bits([4], 2), ValueError,
     r"^code 4 does not fit in 2 bits \(max 3\); raise bits$"),
    (lambda: unpack_bits(b"\x00" * 8, 17, 1), ValueError, r"^bits must be in 1\.\.16, got 17$"),
    (lambda: unpack_bits(b"\x00", 1, True), TypeError,
     r"^count must be a non-negative integer, got a bool$"),
    (lambda: unpack_bits(b"\x00", 1, "1"), TypeError,
     r"^count must be a non-negative integer, got str$"),
    (lambda: unpack_bits(np.zeros(2), 1, 1), TypeError,
     r"^data must be bytes or a uint8 array, got dtype float64$"),
    (lambda: unpack_bits([0, 1], 1, 1), TypeError,
     r"^data must be bytes or a uint8 array, got list$"),
])
def test_bit_packing_errors_say_what_to_do(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_metrics_of_a_boolean_matrix():
    # 0/1 accuracies as bools: the metrics work in float64, never in NumPy's bool arithmetic
    r = np.array([[True, False], [False, True]])
    assert bwt(r) == -1.0  # R[1,0] - R[0,0] = 0 - 1
    assert forgetting(r) == 1.0  # max(R[0,0]) - R[1,0] = 1 - 0
    assert acc(r) == 0.5
    assert fwt(r, np.array([False, False])) == 0.0  # R[0,1] - b_1 = 0 - 0


def test_unpack_bits_reads_any_shape_of_uint8_array():
    codes = np.arange(10) % 8
    data = pack_bits(codes, 3)  # 30 bits: 4 bytes
    grid = np.ascontiguousarray(np.concatenate([data, [0, 0]]).reshape(2, 3).astype(np.uint8))
    np.testing.assert_array_equal(unpack_bits(grid, 3, 10), codes)

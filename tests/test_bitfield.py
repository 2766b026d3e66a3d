"""Bit fields: pack_bits/unpack_bits and the Numba field primitives against tests/naive.py."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub.codecs.bitfield import (
    field_shift,
    pack_bits,
    packed_size,
    read_field,
    unpack_bits,
    write_field,
)
from bitsub.config import NJIT
from tests.naive import naive_pack_bits, naive_read_field, naive_unpack_bits, naive_write_field

ALL_PACK_BITS = list(range(1, 17))


@st.composite
def codes_and_bits(draw, max_size=80):
    bits = draw(st.integers(1, 16))
    kind = draw(st.sampled_from(["random", "zeros", "ones"]))
    n = draw(st.integers(0, max_size))
    if kind == "zeros":
        codes = [0] * n
    elif kind == "ones":
        codes = [(1 << bits) - 1] * n
    else:
        codes = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.uint32, np.int64, np.int32]))
    if bits > 8 and dtype == np.uint8:
        dtype = np.uint16
    return np.array(codes, dtype=dtype), bits


@settings(max_examples=100, deadline=None)
@given(codes_and_bits())
def test_pack_matches_naive_and_round_trips(cb):
    codes, bits = cb
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8
    assert packed.size == (codes.size * bits + 7) // 8 == packed_size(codes.size, bits)
    assert packed.tolist() == naive_pack_bits(codes, bits)
    out = unpack_bits(packed, bits, codes.size)
    assert out.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert out.shape == (codes.size,)
    assert out.tolist() == codes.tolist()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 16),
    st.binary(min_size=0, max_size=40),
    st.data(),
)
def test_unpack_matches_naive_on_arbitrary_bytes(bits, data, d):
    count = d.draw(st.integers(0, len(data) * 8 // bits))
    out = unpack_bits(data, bits, count)
    assert out.tolist() == naive_unpack_bits(data, bits, count)
    # Extra trailing bytes are ignored; a uint8 array works like bytes.
    out2 = unpack_bits(np.frombuffer(data + b"\xff", dtype=np.uint8), bits, count)
    assert out2.tolist() == out.tolist()


@pytest.mark.parametrize("bits", ALL_PACK_BITS)
def test_every_bit_width_edges(bits):
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 8, 9, 63, 1001):
        codes = rng.integers(0, 1 << bits, n)
        for arr in (codes, np.zeros(n, np.int64), np.full(n, (1 << bits) - 1)):
            packed = pack_bits(arr, bits)
            assert packed.tolist() == naive_pack_bits(arr, bits)
            assert unpack_bits(packed, bits, n).tolist() == arr.tolist()


def test_pack_any_shape_flattens_c_order():
    codes = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 8
    assert pack_bits(codes, 3).tolist() == pack_bits(codes.reshape(-1), 3).tolist()
    fortran = np.asfortranarray(codes)
    assert pack_bits(fortran, 3).tolist() == pack_bits(codes.reshape(-1), 3).tolist()
    assert pack_bits(np.array([True, False, True]), 1).tolist() == [0b10100000]


def test_msb_first_layout():
    assert pack_bits([1], 1).tolist() == [0x80]
    assert pack_bits([0xABC], 12).tolist() == [0xAB, 0xC0]
    assert pack_bits([1, 2, 3], 2).tolist() == [0b01101100]


@pytest.mark.parametrize(
    ("codes", "bits", "exc"),
    [
        ([1.0, 2.0], 4, TypeError),
        ([-1, 2], 4, ValueError),
        ([16], 4, ValueError),
        ([1], 0, ValueError),
        ([1], 17, ValueError),
        ([1], 2.0, TypeError),
        ([1], True, TypeError),
        (["a"], 4, TypeError),
    ],
)
def test_pack_rejects_bad_input(codes, bits, exc):
    with pytest.raises(exc):
        pack_bits(codes, bits)


def test_pack_empty_any_dtype():
    assert pack_bits([], 5).size == 0
    assert pack_bits(np.zeros((0, 3), np.float32), 5).size == 0


@pytest.mark.parametrize(
    ("data", "bits", "count", "exc"),
    [
        (b"\x00", 4, 3, ValueError),
        (b"", 1, 1, ValueError),
        (b"\x00", 4, -1, ValueError),
        (b"\x00", 4, 1.0, TypeError),
        (b"\x00", 0, 1, ValueError),
        (np.zeros(4, np.int8), 4, 1, TypeError),
        ([0, 0], 4, 1, TypeError),
    ],
)
def test_unpack_rejects_bad_input(data, bits, count, exc):
    with pytest.raises(exc):
        unpack_bits(data, bits, count)


# ------------------------------------------------------------------------ field primitives


@st.composite
def field_case(draw):
    word_bits = draw(st.sampled_from([32, 64]))
    bits = draw(st.integers(1, 32 if word_bits == 32 else 64))
    shift = draw(st.integers(0, word_bits - bits))
    word = draw(
        st.sampled_from([0, (1 << word_bits) - 1]) | st.integers(0, (1 << word_bits) - 1)
    )
    value = draw(st.integers(0, (1 << bits) - 1))
    return word_bits, bits, shift, word, value


@settings(max_examples=100, deadline=None)
@given(field_case())
def test_read_write_field_match_naive(case):
    word_bits, bits, shift, word, value = case
    dtype = np.uint32 if word_bits == 32 else np.uint64
    words = np.array([0, word, 0], dtype=dtype)
    assert int(read_field(words, 1, shift, bits)) == naive_read_field(word, shift, bits)
    write_field(words, 1, shift, bits, np.uint64(value))
    assert int(words[1]) == naive_write_field(word, shift, bits, value)
    assert int(read_field(words, 1, shift, bits)) == value
    assert words[0] == 0 and words[2] == 0


def test_write_field_masks_wide_value():
    words = np.zeros(1, np.uint32)
    write_field(words, 0, 4, 4, 0xFFF)
    assert int(words[0]) == 0xF0


def test_field_shift():
    assert field_shift(32, 0, 32) == 0
    assert field_shift(32, 3, 5) == 24
    assert field_shift(64, 60, 8) == -4


@numba.njit(**NJIT)
def _fill_word(words, prefix_bits, code_bits, prefix, codes):
    # Packs [prefix][code] fields from the MSB down into each word, the way the packed model does.
    word_bits = words.itemsize * 8
    for i in range(words.size):
        used = 0
        for c in codes:
            s = field_shift(word_bits, used, prefix_bits + code_bits)
            if s < 0:
                break
            write_field(words, i, s + code_bits, prefix_bits, prefix)
            write_field(words, i, s, code_bits, c)
            used += prefix_bits + code_bits
    out = np.zeros((words.size, codes.size), dtype=np.uint64)
    for i in range(words.size):
        used = 0
        for j in range(codes.size):
            s = field_shift(word_bits, used, prefix_bits + code_bits)
            if s < 0:
                break
            out[i, j] = read_field(words, i, s, code_bits)
            used += prefix_bits + code_bits
    return out


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_primitives_callable_from_njit(dtype):
    codes = np.array([5, 0, 7, 3, 1, 6, 2, 4, 7, 7], dtype=np.int64)
    words = np.zeros(3, dtype=dtype)
    out = _fill_word(words, 2, 3, 1, codes)
    nfit = min((np.dtype(dtype).itemsize * 8) // 5, codes.size)
    assert out[:, :nfit].tolist() == [codes[:nfit].tolist()] * 3
    w = int(words[0])
    width = np.dtype(dtype).itemsize * 8
    for j in range(nfit):
        field = naive_read_field(w, width - 5 * (j + 1), 5)
        assert field == (1 << 3) | int(codes[j])

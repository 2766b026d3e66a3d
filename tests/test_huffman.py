"""Canonical Huffman (bitsub.codecs.huffman) against the dictionary coder of tests/naive.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub.codecs.huffman import (
    MAX_CODE_LENGTH,
    canonical_codes,
    check_code_lengths,
    code_lengths,
    decode_symbols,
    encode_symbols,
)
from tests.naive import (
    naive_canonical_code,
    naive_huffman_decode,
    naive_huffman_encode,
    naive_huffman_lengths,
    naive_limited_huffman_cost,
)

freq_lists = st.lists(st.integers(0, 10**6), min_size=0, max_size=300)
skewed = st.lists(st.integers(0, 60), min_size=2, max_size=80).map(lambda e: [2**x for x in e])


def cost(freqs, lengths):
    return int(np.dot(np.asarray(freqs, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))


@settings(max_examples=100, deadline=None)
@given(st.one_of(freq_lists, skewed))
def test_lengths_optimal_and_complete(freqs):
    lengths = code_lengths(np.array(freqs, dtype=np.int64))
    assert check_code_lengths(lengths) is None
    assert lengths.max(initial=0) <= MAX_CODE_LENGTH
    assert np.all((lengths > 0) == (np.array(freqs, dtype=np.int64) > 0))
    naive = naive_huffman_lengths(freqs)
    if max(naive, default=0) <= MAX_CODE_LENGTH:
        assert cost(freqs, lengths) == cost(freqs, naive)
    else:
        assert cost(freqs, lengths) >= cost(freqs, naive)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=6), st.integers(1, 4))
def test_length_limit_is_optimal(freqs, max_length):
    used = sum(f > 0 for f in freqs)
    if used > 2**max_length:
        with pytest.raises(ValueError, match="max_length"):
            code_lengths(np.array(freqs), max_length)
        return
    lengths = code_lengths(np.array(freqs), max_length)
    assert lengths.max() <= max_length
    assert check_code_lengths(lengths, max_length) is None
    assert cost(freqs, lengths) == naive_limited_huffman_cost(freqs, max_length)


@settings(max_examples=100, deadline=None)
@given(st.one_of(freq_lists, skewed), st.data())
def test_canonical_codes_and_stream_match_dictionary_coder(freqs, data):
    freqs = np.array(freqs, dtype=np.int64)
    lengths = code_lengths(freqs)
    codes = canonical_codes(lengths)
    naive = naive_canonical_code(lengths.tolist())
    for s, c in naive.items():
        assert format(int(codes[s]), f"0{lengths[s]}b") == c
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return
    symbols = np.array(data.draw(st.lists(st.sampled_from(used.tolist()), max_size=400)))
    enc = encode_symbols(symbols.astype(np.int64), lengths)
    assert enc == naive_huffman_encode(symbols, naive)
    assert naive_huffman_decode(enc, naive, len(symbols)) == symbols.tolist()
    np.testing.assert_array_equal(decode_symbols(enc, lengths, len(symbols)), symbols)


@pytest.mark.parametrize(
    "lengths, why",
    [
        ([1, 1, 1], "over"),
        ([1, 2, 0], "under"),
        ([2], "single"),
        ([MAX_CODE_LENGTH + 1, 1, MAX_CODE_LENGTH + 1], "exceeds"),
    ],
)
def test_bad_lengths_are_refused(lengths, why):
    assert why in check_code_lengths(np.array(lengths))
    with pytest.raises(ValueError):
        decode_symbols(b"\x00", np.array(lengths), 1)


def test_decode_refuses_short_and_long_data():
    lengths = code_lengths(np.array([5, 3, 1, 1]))
    enc = encode_symbols(np.array([0, 1, 2, 3, 0, 0, 1]), lengths)
    with pytest.raises(ValueError, match="ends before"):
        decode_symbols(enc[:-1], lengths, 7)
    with pytest.raises(ValueError, match="left over"):
        decode_symbols(enc + b"\x00", lengths, 7)


def test_single_symbol_code_rejects_other_bits():
    lengths = np.array([0, 1, 0])
    enc = encode_symbols(np.array([1, 1, 1]), lengths)
    assert enc == b"\x00"
    np.testing.assert_array_equal(decode_symbols(enc, lengths, 3), [1, 1, 1])
    with pytest.raises(ValueError, match="invalid code"):
        decode_symbols(b"\x80", lengths, 3)


def test_input_validation():
    with pytest.raises(TypeError):
        code_lengths(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match=">= 0"):
        code_lengths(np.array([1, -1]))
    with pytest.raises(ValueError, match="nonzero code length"):
        encode_symbols(np.array([0, 2]), np.array([1, 1, 0]))
    with pytest.raises(ValueError, match="symbols must be in"):
        encode_symbols(np.array([3]), np.array([1, 1]))

"""The runs kernels of the mask codec against their naive twins (tests/naive.py).

Scans (`find_runs`, `run_histogram`), the runs coders (`encode_runs_kernel`,
`encode_alt_kernel`), the multi-run look-up table (`run_groups`) and the runs decoders
(`decode_runs_kernel`, `decode_alt_kernel`), on random bits and on the edge cases: empty, all
majority (one run covering everything), all minority, alternating, n not a multiple of 8, one or
two segments split anywhere.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub.codecs.huffman import (
    TABLE_BITS,
    canonical_codes,
    code_lengths,
    decode_table,
    stream_words,
)
from bitsub.codecs.maskdecode import (
    alt_tables,
    decode_alt_kernel,
    decode_runs_kernel,
    lane_words,
    run_groups,
)
from bitsub.codecs.maskencode import code_table, encode_alt_kernel, encode_runs_kernel
from bitsub.codecs.maskio import segment_payloads
from bitsub.codecs.maskscan import find_runs, run_histogram
from tests.naive import (
    naive_alt_payload,
    naive_canonical_code,
    naive_decode_runs_payload,
    naive_find_runs,
    naive_run_groups,
    naive_runs_payload,
)

EDGE = {
    "empty": [],
    "one": [1],
    "zero": [0],
    "all0-13": [0] * 13,
    "all1-13": [1] * 13,
    "all0-64": [0] * 64,
    "all1-65": [1] * 65,
    "alternating-77": [i % 2 for i in range(77)],
    "alternating-128": [(i + 1) % 2 for i in range(128)],
    "lone-end-200": [0] * 199 + [1],
    "lone-start-129": [1] + [0] * 128,
}


@st.composite
def bit_lists(draw, max_size=700):
    """Random bits (i.i.d., runs or an edge case) and a split point for two segments."""
    kind = draw(st.sampled_from(["iid", "runs", "edge"]))
    if kind == "edge":
        bits = EDGE[draw(st.sampled_from(sorted(EDGE)))]
    else:
        n = draw(st.integers(0, max_size))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if kind == "iid":
            bits = (rng.random(n) < draw(st.sampled_from([0.01, 0.1, 0.3, 0.5, 0.9]))).tolist()
        else:
            bits = (np.cumsum(rng.random(n) < draw(st.sampled_from([0.02, 0.2]))) % 2).tolist()
        bits = [int(b) for b in bits]
    split = draw(st.integers(0, len(bits)))
    two = draw(st.booleans())
    return bits, ([split, len(bits)] if two else [len(bits)])


def packed_words(bits):
    packed = np.packbits(np.array(bits, dtype=np.uint8), bitorder="little")
    words = np.zeros((packed.size + 7) // 8 * 8, dtype=np.uint8)
    words[: packed.size] = packed
    return words.view("<u8")


def lanes(payloads):
    """Payload words back to back, and where each starts (as the decoder lays them out)."""
    parts = [stream_words(p) for p in payloads]
    wb = np.zeros(3, dtype=np.int64)
    wb[1] = parts[0].size
    wb[2] = wb[1] + (parts[1].size if len(parts) == 2 else 0)
    return np.concatenate(parts), wb


@settings(max_examples=150, deadline=None)
@given(bit_lists(), st.booleans(), st.sampled_from([3, 9, 4097]))
def test_find_runs_matches_naive(case, invert, hist_size):
    bits, seg_ends = case
    minority = 0 if invert else 1
    marks = sum(1 for b in bits if b == minority)
    runs, hist, seg_runs, big = find_runs(
        packed_words(bits), len(bits), invert, np.array(seg_ends, dtype=np.int64), marks,
        hist_size,
    )
    want = naive_find_runs(bits, minority, seg_ends, hist_size)
    assert runs.tolist() == want[0]
    assert hist.tolist() == want[1]
    assert seg_runs.tolist() == want[2]
    assert big.tolist() == want[3]
    assert big.dtype == np.int64


def test_run_histogram_edges():
    hist, big = run_histogram(np.zeros(0, dtype=np.uint32), 5)
    assert hist.tolist() == [0] * 5 and big.size == 0
    runs = np.array([4, 3, 0, 9, 4, 4, 2**31], dtype=np.uint32)
    hist, big = run_histogram(runs, 5)
    assert hist.tolist() == [1, 0, 0, 1, 5]
    assert big.tolist() == [4, 9, 4, 4, 2**31]


def random_code(rng, m):
    """Code lengths of a random complete code over m symbols (all used)."""
    freqs = rng.integers(1, 1000, m) ** rng.integers(1, 4)
    return code_lengths(freqs)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 40), st.integers(0, 3))
def test_run_groups_match_naive(seed, m, extra):
    rng = np.random.default_rng(seed)
    lengths = random_code(rng, m)
    esc = int(rng.integers(-1, m))
    table_bits = int(rng.integers(min(int(lengths.max()), TABLE_BITS), TABLE_BITS + 1))
    table = decode_table(lengths, table_bits)
    groups = run_groups(table[0], table[1], esc, extra)
    want = naive_run_groups(naive_canonical_code(lengths.tolist()), table_bits, esc, extra)
    for v, (used, offsets) in enumerate(want):
        g = int(groups[v])
        if not offsets:
            assert g == 0
            continue
        offsets = offsets + [offsets[-1]] * (4 - len(offsets))
        assert g & 31 == used
        assert (g >> 5) & 2047 == offsets[-1] + 1
        assert [(g >> (16 + 10 * j)) & 1023 for j in range(4)] == offsets


@settings(max_examples=150, deadline=None)
@given(bit_lists(), st.booleans(), st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 8, 64]),
       st.integers(0, 3))
def test_runs_coder_and_decoder_match_naive(case, invert, seed, m, extra):
    bits, seg_ends = case
    rng = np.random.default_rng(seed)
    minority = 0 if invert else 1
    lengths = random_code(rng, m)
    code = naive_canonical_code(lengths.tolist())
    starts = [0] + seg_ends[:-1]
    segments = [bits[a:b] for a, b in zip(starts, seg_ends)]
    want = [naive_runs_payload(s, minority, code, m - 1, extra) for s in segments]
    # Coder: the runs of find_runs' twin, coded by the kernel.
    runs, _, seg_runs, _ = naive_find_runs(bits, minority, seg_ends, 4097)
    total = sum(len(w) for w in want) * 8
    out = np.zeros(total // 32 + 8, dtype=np.uint32)
    seg_bits = np.zeros(len(seg_ends), dtype=np.int64)
    encode_runs_kernel(np.array(runs, dtype=np.uint32), np.array(seg_runs, dtype=np.int64),
                       code_table(canonical_codes(lengths), lengths), m - 1, extra, out, seg_bits)
    assert [bytes(p) for p in segment_payloads(out, seg_bits)] == want
    # Decoder: the naive payloads back to bits, up to four runs a look-up.
    for seg, payload in zip(segments, want):
        assert naive_decode_runs_payload(payload, len(seg), minority, code, m - 1, extra) == seg
    table = decode_table(lengths, TABLE_BITS)
    words, wb = lanes(want)
    got = np.full(len(bits), not minority, dtype=np.bool_)
    ends = decode_runs_kernel(
        words, wb, np.array([0] + seg_ends, dtype=np.int64), got, bool(minority), m - 1, extra,
        run_groups(table[0], table[1], m - 1, extra), *table,
    )
    assert got.astype(int).tolist() == bits
    assert list(ends)[: len(want)] == [int(b) for b in seg_bits]


def alt_values(bits):
    """Alternating runs of one segment as the runs01 scheme stores them."""
    values, cur, run, first = [], 0, 0, True
    for b in bits:
        if b == cur:
            run += 1
            continue
        values.append(run - (0 if first else 1))
        first, cur, run = False, b, 1
    values.append(run - (0 if first else 1))
    return values


@settings(max_examples=150, deadline=None)
@given(bit_lists(), st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 8, 64]),
       st.sampled_from([2, 5, 64]))
def test_alt_coder_and_decoder_match_naive(case, seed, m0, m1):
    bits, seg_ends = case
    rng = np.random.default_rng(seed)
    lengths = [random_code(rng, m0), random_code(rng, m1)]
    codes = [naive_canonical_code(x.tolist()) for x in lengths]
    escapes = [m0 - 1, m1 - 1]
    starts = [0] + seg_ends[:-1]
    seg_values = [alt_values(bits[a:b]) for a, b in zip(starts, seg_ends)]
    want = [naive_alt_payload(v, codes, escapes) for v in seg_values]
    values = [v for vs in seg_values for v in vs]
    seg_runs = np.cumsum([len(vs) for vs in seg_values]).astype(np.int64)
    table = np.zeros((2, max(m0, m1)), dtype=np.uint64)
    for par in (0, 1):
        table[par, : lengths[par].size] = code_table(canonical_codes(lengths[par]), lengths[par])
    out = np.zeros(sum(len(w) for w in want) * 8 // 32 + 8, dtype=np.uint32)
    seg_bits = np.zeros(len(seg_ends), dtype=np.int64)
    esc = np.array(escapes, dtype=np.int64)
    encode_alt_kernel(np.array(values, dtype=np.uint32), seg_runs, table, esc, out, seg_bits)
    assert [bytes(p) for p in segment_payloads(out, seg_bits)] == want
    tab, first, count, offset, symbols, table_bits, max_length = alt_tables(
        lengths[0].astype(np.int64), lengths[1].astype(np.int64), TABLE_BITS
    )
    words, wb = lanes(want)
    got = np.zeros(len(bits), dtype=np.bool_)
    ends = decode_alt_kernel(words, wb, np.array([0] + seg_ends, dtype=np.int64), got, esc, tab,
                             table_bits, max_length, first, count, offset, symbols)
    assert got.astype(int).tolist() == bits
    assert list(ends)[: len(want)] == [int(b) for b in seg_bits]


@pytest.mark.parametrize("m0, m1", [(2, 2), (3, 700), (300, 5)])
def test_alt_tables_match_decode_table(m0, m1):
    rng = np.random.default_rng(m0 * m1)
    lengths = [random_code(rng, m0), random_code(rng, m1)]
    tab, first, count, offset, symbols, table_bits, max_length = alt_tables(
        lengths[0].astype(np.int64), lengths[1].astype(np.int64), TABLE_BITS
    )
    assert max_length == max(int(x.max()) for x in lengths)
    assert table_bits == min(max_length, TABLE_BITS)
    for par in (0, 1):
        want = decode_table(lengths[par], table_bits, max_length)
        for got, ref in zip((tab, first, count, offset), (want[0], want[3], want[4], want[5])):
            np.testing.assert_array_equal(got[par], ref)
        np.testing.assert_array_equal(symbols[par, : want[6].size], want[6])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=23), st.binary(max_size=23), st.booleans())
def test_lane_words_match_stream_words(first, second, two):
    """lane_words against stream_words per payload (MSB-first words, two zero words after)."""
    payloads = [first, second] if two else [first]
    want_words, want_wb = lanes(payloads)
    as_array = [np.frombuffer(p, dtype=np.uint8) for p in (first, second)]
    words, wb = lane_words(as_array[0], as_array[1], two)
    assert words.dtype == np.uint32
    np.testing.assert_array_equal(words, want_words)
    np.testing.assert_array_equal(wb, want_wb)

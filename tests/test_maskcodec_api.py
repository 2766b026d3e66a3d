"""Mask codec: public helpers (parse_mask, encode_mask_best, bounds), old encodings, bytes twin."""

import json
import math
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitsub import FormatError, decode_mask, encode_mask
from bitsub.codecs.maskcodec import (
    DEFAULT_MAX_POSITIONS,
    MAX_POSITIONS,
    MaskCoding,
    decode_stream,
    encode_mask_best,
    mask_scheme,
    parse_mask,
)
from bitsub.codecs.maskdecode import parse_stream
from bitsub.codecs.maskencode import BYTES
from bitsub.codecs.maskio import Reader, varint
from tests.naive import naive_bytes_payload, naive_canonical_code, naive_decode_bytes_payload

COMPAT = Path(__file__).parent / "data" / "maskcodec_v1.json"


def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def compat_mask(kind: str, n: int, seed: int) -> np.ndarray:
    """The masks tests/data/maskcodec_v1.json was written from (by the encoder before the split)."""
    rng = np.random.default_rng(seed)
    if kind.startswith("iid"):
        return rng.random(n) < float(kind[3:])
    if kind == "blocks":
        return np.repeat(rng.random(n // 16 + 1) < 0.25, 16)[:n]
    runs = rng.geometric(1 / 40, n // 10 + 4)
    return np.repeat(np.arange(runs.size) % 2 == 1, runs)[:n]


@pytest.mark.parametrize("case", json.loads(COMPAT.read_text()), ids=lambda c: c["kind"])
def test_encodings_of_the_earlier_encoder_still_decode(case):
    """Bytes written before the codec was split (every scheme, two segments, a context)."""
    data = bytes.fromhex(case["hex"])
    if case["kind"] == "context":
        rng = np.random.default_rng(case["seed"])
        ctx = rng.random(case["n"]) < 0.5
        want = ctx & (rng.random(case["n"]) < 0.9)
    else:
        ctx = None
        want = compat_mask(case["kind"], case["n"], case["seed"])
    assert mask_scheme(data, ctx) == case["scheme"]
    np.testing.assert_array_equal(decode_mask(data, ctx), want)


def test_schemes_of_the_compat_file_cover_every_scheme():
    seen = {s for c in json.loads(COMPAT.read_text()) for s in c["scheme"]}
    assert seen == {"zeros", "ones", "raw", "bytes", "runs1", "runs0", "runs01"}


# --------------------------------------------------------------------------- allocation bound


def huge_constant(n: int) -> bytes:
    """A valid encoding of n ones: 17 bytes for n = 2**32."""
    return with_crc(b"BSMK\x01\x00\x01" + varint(n) + b"\x01")


def test_huge_constant_mask_is_refused_before_allocating():
    data = huge_constant(2**32)
    assert len(data) == 17
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="max_positions"):
            decode_mask(data)
        with pytest.raises(FormatError, match="bound 1000"):
            decode_mask(data, max_positions=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_bound_is_inclusive_and_default_applies():
    n = 5000
    m = np.random.default_rng(0).random(n) < 0.1
    enc = encode_mask(m)
    np.testing.assert_array_equal(decode_mask(enc, max_positions=n), m)
    with pytest.raises(FormatError, match=f"bound {n - 1}"):
        decode_mask(enc, max_positions=n - 1)
    with pytest.raises(FormatError, match=f"bound {n - 1}"):
        parse_mask(enc, max_positions=n - 1)
    # parse_mask applies the same bound as decode_mask and allocates nothing of the mask.
    assert parse_mask(huge_constant(DEFAULT_MAX_POSITIONS)).shape == (DEFAULT_MAX_POSITIONS,)
    with pytest.raises(FormatError, match="max_positions"):
        parse_mask(huge_constant(DEFAULT_MAX_POSITIONS + 1))
    assert parse_mask(huge_constant(2**32), max_positions=MAX_POSITIONS).sizes == [2**32]


@pytest.mark.parametrize("bad", [-1, MAX_POSITIONS + 1, 1.5, True, "10"])
def test_bad_bound_is_refused(bad):
    enc = encode_mask(np.zeros(10, bool))
    with pytest.raises((TypeError, ValueError), match="max_positions"):
        decode_mask(enc, max_positions=bad)


# --------------------------------------------------------------------- header and streams


def test_parse_mask_matches_decode():
    rng = np.random.default_rng(1)
    ctx = rng.random((40, 50)) < 0.4
    m = ctx & (rng.random((40, 50)) < 0.8)
    enc = encode_mask(m, ctx)
    head = parse_mask(enc, ctx)
    assert head.shape == (40, 50)
    assert head.sizes == [int((~ctx).sum()), int(ctx.sum())]
    assert head.schemes == mask_scheme(enc, ctx)
    s0, s1 = (decode_stream(p, n) for p, n in zip(head.streams, head.sizes))
    np.testing.assert_array_equal(s0, m[~ctx])
    np.testing.assert_array_equal(s1, m[ctx])
    np.testing.assert_array_equal(head.context, ctx.reshape(-1))


# ----------------------------------------------------------------------- encode_mask_best


def test_encode_mask_best_picks_the_smallest_and_decodes():
    rng = np.random.default_rng(2)
    prev = rng.random((64, 80)) < 0.3
    union = prev | (rng.random((64, 80)) < 0.2)
    m = prev & (rng.random((64, 80)) < 0.9)
    coding = encode_mask_best(m, [prev, union])
    assert isinstance(coding, MaskCoding)
    sizes = (len(encode_mask(m)), len(encode_mask(m, prev)), len(encode_mask(m, union)))
    assert coding.sizes == sizes
    assert coding.index == int(np.argmin(sizes))
    assert len(coding.data) == min(sizes)
    ctx = [None, prev, union][coding.index]
    np.testing.assert_array_equal(decode_mask(coding.data, ctx), m)
    # Alone wins for a mask unrelated to its contexts; ties go to the earliest candidate.
    other = rng.random((64, 80)) < 0.02
    assert encode_mask_best(other, [prev]).index == 0
    assert encode_mask_best(m, [prev, prev]).index in (0, 1)


@pytest.mark.parametrize("value", [False, True])
@pytest.mark.parametrize("shape", [(0,), (7,), (30, 9)])
def test_encode_mask_best_constant_masks(value, shape):
    m = np.full(shape, value)
    ctx = np.random.default_rng(3).random(shape) < 0.5
    coding = encode_mask_best(m, [ctx, ~ctx])
    assert coding.index == 0
    want = (len(encode_mask(m)), len(encode_mask(m, ctx)), len(encode_mask(m, ~ctx)))
    assert coding.sizes == want
    np.testing.assert_array_equal(decode_mask(coding.data), m)


def test_encode_mask_best_refuses_bad_contexts():
    with pytest.raises(ValueError, match="context shape"):
        encode_mask_best(np.zeros(4, bool), [np.zeros(5, bool)])
    with pytest.raises(TypeError, match="boolean"):
        encode_mask_best(np.zeros(4, bool), [np.zeros(4, np.float32)])


# ------------------------------------------------------------------- bytes scheme, naive twin


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(8, 30000), st.sampled_from([0.12, 0.25, 0.33, 0.4]), st.integers(0, 2**32 - 1))
def test_bytes_scheme_matches_naive_coder(n, p, seed):
    m = np.random.default_rng(seed).random(n) < p
    enc = encode_mask(m)
    if mask_scheme(enc) != ["bytes"]:
        return
    reader = Reader(memoryview(enc), len(enc) - 4)
    reader.pos = 7
    reader.varint("shape", MAX_POSITIONS)
    scheme, _, lengths, payloads, _ = parse_stream(reader, n)
    assert scheme == BYTES and len(payloads) == 1
    code = naive_canonical_code(lengths.tolist())
    bits = m.astype(int).tolist()
    assert bytes(payloads[0]) == naive_bytes_payload(bits, code)
    assert naive_decode_bytes_payload(payloads[0], n, code) == bits


def test_bytes_scheme_is_seen_by_the_twin():
    m = np.random.default_rng(4).random(30000) < 0.33
    assert mask_scheme(encode_mask(m)) == ["bytes"]


# ---------------------------------------------------------------------- mid-density sizes


@pytest.mark.parametrize("p", [0.1, 0.11, 0.15, 0.2, 0.3])
@pytest.mark.parametrize("n", [10**6, 4 * 10**6])
def test_mid_density_size_bar(n, p):
    """The fast mid-density path stays within 1.02 n H(p) + 64 bytes."""
    m = np.random.default_rng(int(p * 100) + n).random(n) < p
    enc = encode_mask(m)
    q = m.mean()
    entropy = n * -(q * math.log2(q) + (1 - q) * math.log2(1 - q)) / 8
    assert len(enc) <= 1.02 * entropy + 64
    np.testing.assert_array_equal(decode_mask(enc), m)


# ------------------------------------------------------------------------------ boundaries


def test_codec_modules_import_no_private_names_and_stay_small():
    """The codecs subpackage imports only public names of other modules, <= 600 lines."""
    import ast

    import bitsub.codecs

    root = Path(bitsub.codecs.__file__).parent
    for path in sorted(root.glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 600, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bitsub"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


# ------------------------------------------- bytes scheme: three symbols a look-up, naive twin


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 700), st.integers(0, 700),
       st.sampled_from([0.5, 1.0, 2.0, 4.0]))
def test_bytes_triples_kernel_matches_naive_decoder(seed, n0, n1, skew):
    """The three-symbols-a-look-up kernel decodes one or two segments (codes up to 20 bits, so
    some past the 13-bit table, and segment ends at every offset) as the naive dict decoder."""
    from bitsub.codecs.huffman import code_lengths, decode_table
    from bitsub.codecs.maskbytes import (
        BYTE_BITS,
        TRIPLE_TABLE_BITS,
        byte_triples,
        decode_bytes_triples_kernel,
    )
    from tests.naive import naive_huffman_decode, naive_huffman_encode

    rng = np.random.default_rng(seed)
    freqs = np.floor(rng.pareto(skew, 256) * 50).astype(np.int64) + (rng.random(256) < 0.7)
    freqs[rng.integers(0, 256)] += 1
    lengths = code_lengths(freqs, 20).astype(np.int64)
    code = naive_canonical_code(lengths.tolist())
    used = np.flatnonzero(lengths)
    segments = [rng.choice(used, size, p=freqs[used] / freqs[used].sum()) for size in (n0, n1)
                if size]
    payloads = [naive_huffman_encode(s.tolist(), code) for s in segments]
    words = []
    for p in payloads:
        buf = np.zeros(((len(p) + 3) // 4 + 2) * 4, dtype=np.uint8)
        buf[: len(p)] = np.frombuffer(p, dtype=np.uint8)
        words.append(buf.view(">u4").astype(np.uint32))
    wb = np.array([0, words[0].size, sum(w.size for w in words)], dtype=np.int64)
    sizes = [s.size for s in segments]
    bounds = np.array([0, *np.cumsum(sizes)], dtype=np.int64)
    out = np.zeros(bounds[-1], dtype=np.uint64)
    table = decode_table(lengths, min(TRIPLE_TABLE_BITS, int(lengths.max())))
    ends = decode_bytes_triples_kernel(np.concatenate(words), wb, bounds, out, BYTE_BITS,
                                       byte_triples(table[0], table[1]), *table)
    got = np.packbits(out.view(np.bool_).reshape(-1, 8), axis=1, bitorder="little").ravel()
    want = [s for p, size in zip(payloads, sizes) for s in naive_huffman_decode(p, code, size)]
    assert got.tolist() == want
    for end, p, seg in zip(ends, payloads, segments):
        assert end == int(lengths[seg].sum())
        assert (end + 7) // 8 == len(p)

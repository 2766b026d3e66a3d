import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitsub
from bitsub import FormatError, decode_mask, encode_mask
from bitsub.maskcodec import MAX_POSITIONS, mask_scheme

SHAPES = [(), (0,), (1,), (7,), (8,), (9,), (0, 5), (3, 5), (64,), (65,), (100, 37), (2, 3, 4)]


@st.composite
def masks(draw, max_size=3000):
    """Random masks: any shape, i.i.d. density or structure (rows / blocks pruned together)."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, 40 if ndim > 1 else max_size)) for _ in range(ndim))
    while int(np.prod(shape)) > max_size:
        shape = tuple(max(1, d // 2) for d in shape)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p = draw(st.sampled_from([0.0, 1.0, 0.5, 0.2, 0.05, 0.01, 0.001, 0.99, 0.8]))
    m = rng.random(shape) < p
    kind = draw(st.sampled_from(["iid", "rows", "blocks", "runs"]))
    if kind == "rows" and m.ndim >= 1 and m.size:
        keep = rng.random(shape[0]) < rng.random()
        m = np.broadcast_to(keep.reshape((-1,) + (1,) * (m.ndim - 1)), shape) & (
            rng.random(shape) < 0.9
        )
    elif kind == "blocks" and m.size:
        flat = np.repeat(rng.random(m.size // 16 + 1) < 0.3, 16)[: m.size]
        m = flat.reshape(shape)
    elif kind == "runs" and m.size:
        flat = (np.cumsum(rng.random(m.size) < 0.02) % 2).astype(bool)
        m = flat.reshape(shape)
    return np.ascontiguousarray(m)


def roundtrip(m, context=None):
    data = encode_mask(m, context)
    assert isinstance(data, bytes)
    out = decode_mask(data, context)
    assert out.dtype == np.bool_
    assert out.shape == m.shape
    np.testing.assert_array_equal(out, m)
    return data


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 1.0, 0.5, 0.1, 0.9])
def test_roundtrip_shapes(shape, p):
    m = np.random.default_rng(0).random(shape) < p
    roundtrip(m)
    roundtrip(m, np.random.default_rng(1).random(shape) < 0.5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks())
def test_roundtrip_property(m):
    roundtrip(m)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks(), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.3, 0.9, 1.0]))
def test_roundtrip_with_context(m, seed, q):
    rng = np.random.default_rng(seed)
    context = rng.random(m.shape) < q
    roundtrip(m, context)
    roundtrip(m & context, context)


def test_accepts_01_integers_and_noncontiguous():
    rng = np.random.default_rng(3)
    m = rng.random((30, 40)) < 0.3
    np.testing.assert_array_equal(decode_mask(encode_mask(m.astype(np.int64))), m)
    np.testing.assert_array_equal(decode_mask(encode_mask(m.T)), m.T)
    np.testing.assert_array_equal(decode_mask(encode_mask(m[::3, 1::2])), m[::3, 1::2])


def test_rejects_bad_input():
    with pytest.raises(TypeError, match="boolean"):
        encode_mask(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="0 and 1"):
        encode_mask(np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="context shape"):
        encode_mask(np.zeros(4, bool), np.zeros(5, bool))
    with pytest.raises(TypeError, match="bytes"):
        decode_mask("not bytes")


def test_context_mismatch_raises():
    rng = np.random.default_rng(4)
    m = rng.random(500) < 0.2
    ctx = rng.random(500) < 0.5
    data = encode_mask(m, ctx)
    with pytest.raises(FormatError, match="context"):
        decode_mask(data)
    other = ctx.copy()
    other[17] ^= True
    with pytest.raises(FormatError, match="context"):
        decode_mask(data, other)
    with pytest.raises(FormatError, match="context"):
        decode_mask(data, ctx[:-1])
    with pytest.raises(FormatError, match="without a context"):
        decode_mask(encode_mask(m), ctx)


def test_context_makes_reuse_small():
    rng = np.random.default_rng(5)
    ctx = rng.random(100_000) < 0.5
    m = ctx & (rng.random(100_000) < 0.95)
    assert len(encode_mask(m, ctx)) < 0.5 * len(encode_mask(m))


def test_schemes_are_chosen_by_density():
    rng = np.random.default_rng(6)
    assert mask_scheme(encode_mask(np.zeros(1000, bool))) == ["zeros"]
    assert mask_scheme(encode_mask(np.ones(1000, bool))) == ["ones"]
    assert mask_scheme(encode_mask(rng.random(100_000) < 0.5)) == ["raw"]
    assert mask_scheme(encode_mask(rng.random(100_000) < 0.02)) == ["runs1"]
    assert mask_scheme(encode_mask(rng.random(100_000) < 0.98)) == ["runs0"]


# ------------------------------------------------------------------------------ corruption


def decode_or_same(data, m, context=None):
    """Corrupted bytes must raise FormatError or, if still a valid encoding, give the same mask."""
    try:
        out = decode_mask(data, context)
    except FormatError as e:
        assert str(e)
        return False
    np.testing.assert_array_equal(out, m)
    assert out.shape == m.shape
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks(max_size=2000), st.data())
def test_corruption_flip(m, data):
    enc = encode_mask(m)
    i = data.draw(st.integers(0, len(enc) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(enc)
    bad[i] ^= 1 << bit
    decode_or_same(bytes(bad), m)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks(max_size=2000), st.data())
def test_corruption_truncate_extend(m, data):
    enc = encode_mask(m)
    cut = data.draw(st.integers(0, len(enc) - 1))
    with pytest.raises(FormatError):
        decode_mask(enc[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=20))
    with pytest.raises(FormatError):
        decode_mask(enc + extra)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_garbage(garbage):
    with pytest.raises(FormatError):
        decode_mask(garbage)
    with pytest.raises(FormatError):
        decode_mask(b"BSMK\x01" + garbage)


def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks(max_size=1000), st.data())
def test_corruption_with_fixed_checksum(m, data):
    """Corruption behind a recomputed checksum: only the structure checks stand in the way.

    Such bytes may be a valid encoding of another mask; the decoder must then return a boolean
    array that encodes and decodes consistently, and otherwise raise FormatError, never crash.
    """
    enc = encode_mask(m)
    body = bytearray(enc[:-4])
    n_flips = data.draw(st.integers(1, 3))
    for _ in range(n_flips):
        i = data.draw(st.integers(5, len(body) - 1))
        body[i] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(5, len(body)))
    tail = data.draw(st.binary(min_size=1, max_size=8))
    for bad in (bytes(body), bytes(body[:cut]), bytes(body) + tail):
        try:
            out = decode_mask(with_crc(bad))
        except FormatError as e:
            assert str(e)
            continue
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(decode_mask(encode_mask(out)), out)


def test_wrong_version_and_magic():
    enc = encode_mask(np.ones(10, bool))
    with pytest.raises(FormatError, match="version"):
        decode_mask(enc[:4] + b"\x02" + enc[5:])
    with pytest.raises(FormatError, match="magic"):
        decode_mask(b"XXXX" + enc[4:])


def test_absurd_shape_is_refused():
    body = b"BSMK\x01\x00\x02" + bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) * 2 + b"\x00"
    with pytest.raises(FormatError, match="positions"):
        decode_mask(with_crc(body))
    big = MAX_POSITIONS + 1
    body = b"BSMK\x01\x00\x01" + bitsub.maskcodec._varint(big) + b"\x01"
    with pytest.raises(FormatError, match="limit"):
        decode_mask(with_crc(body))

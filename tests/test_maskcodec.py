import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitsub import FormatError, decode_mask, encode_mask
from bitsub.codecs.maskcodec import MAX_POSITIONS, mask_scheme
from bitsub.codecs.maskdecode import parse_stream
from bitsub.codecs.maskencode import RUNS0, RUNS1
from bitsub.codecs.maskio import (
    Reader,
    length_table_bits,
    read_length_table_kernel,
    varint,
    write_length_table,
)
from tests.naive import naive_length_table

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
    body = b"BSMK\x01\x00\x01" + varint(big) + b"\x01"
    with pytest.raises(FormatError, match="limit"):
        decode_mask(with_crc(body))


# ------------------------------------------------------------------- large masks, two segments


@pytest.mark.parametrize("n", [32767, 32768, 100_003, 300_001])
@pytest.mark.parametrize("p", [0.02, 0.4, 0.98])
def test_large_roundtrip_and_corruption(n, p):
    rng = np.random.default_rng(n + int(100 * p))
    m = rng.random(n) < p
    enc = roundtrip(m)
    expected = {0.02: "runs1", 0.4: "bytes", 0.98: "runs0"}[p]
    assert mask_scheme(enc) == [expected]
    for i in rng.integers(0, len(enc), 12):
        bad = bytearray(enc)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        decode_or_same(bytes(bad), m)
    body = bytearray(enc[:-4])
    for i in rng.integers(5, len(body), 12):
        bad = bytearray(body)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        try:
            out = decode_mask(with_crc(bytes(bad)))
        except FormatError:
            continue
        assert out.dtype == np.bool_


def test_runs_scheme_matches_naive_coder():
    """Runs payloads are byte for byte those of the naive dictionary coder, and decode back."""
    from tests.naive import naive_canonical_code, naive_decode_runs_payload, naive_runs_payload

    rng = np.random.default_rng(8)
    seen_extra = set()
    for n, p in [(999, 0.05), (3000, 0.02), (5000, 0.001), (20000, 0.2), (30000, 0.9995),
                 (30000, 0.0003), (4000, 0.97)]:
        m = rng.random(n) < p
        m[0] = not m[0]
        enc = encode_mask(m)
        reader = Reader(memoryview(enc), len(enc) - 4)
        reader.pos = 7
        reader.varint("shape", MAX_POSITIONS)
        scheme, size, lengths, payloads, extra = parse_stream(reader, n)
        assert scheme in (RUNS0, RUNS1) and len(payloads) == 1
        minority = 1 if scheme == RUNS1 else 0
        code = naive_canonical_code(lengths.tolist())
        bits = m.astype(int).tolist()
        assert bytes(payloads[0]) == naive_runs_payload(bits, minority, code, size - 1, extra)
        assert naive_decode_runs_payload(payloads[0], n, minority, code, size - 1, extra) == bits
        seen_extra.add(extra > 0)
    assert seen_extra == {False, True}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=300))
def test_length_table_roundtrip(lengths):
    lengths = np.array(lengths)
    data = write_length_table(lengths)
    assert data == naive_length_table(lengths)
    assert len(data) == (length_table_bits(lengths) + 7) // 8
    out = np.zeros(lengths.size, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    assert read_length_table_kernel(buf, 0, len(data), out) == len(data)
    np.testing.assert_array_equal(out, lengths)
    if len(data):
        assert read_length_table_kernel(buf, 0, len(data) - 1, out) == -1


# ---------------------------------------------------------------------------- the size bar


@pytest.mark.parametrize("p", [0.5, 0.2, 0.05, 0.01])
def test_size_bar_iid(p):
    """10**7 i.i.d. bits within 1.02 n H(p) + 64 bytes and no larger than zlib / zstd."""
    n = 10**7
    m = np.random.default_rng(int(p * 1000)).random(n) < p
    size = len(encode_mask(m))
    entropy = n * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
    packed = np.packbits(m).tobytes()
    huff = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    others = {
        "zlib-9": len(zlib.compress(packed, 9)),
        "zlib-huffman": len(huff.compress(packed) + huff.flush()),
    }
    try:
        import zstandard
    except ImportError:  # zstandard comes with the bench extra
        pass
    else:
        others["zstd-19"] = len(zstandard.ZstdCompressor(level=19).compress(packed))
    print(f"p={p}: {size} B = {size / entropy:.4f} n H(p); " + ", ".join(
        f"{k} {v / size:.4f}x ours" for k, v in others.items()))
    assert size <= 1.02 * entropy + 64
    for name, other in others.items():
        assert size <= other, name


def test_too_many_dimensions_is_refused():
    body = b"BSMK\x01\x00" + bytes([65]) + b"\x01" * 65 + b"\x00"
    with pytest.raises(FormatError, match="dimensions"):
        decode_mask(with_crc(body))


def test_context_streams_use_their_own_schemes():
    rng = np.random.default_rng(9)
    ctx = rng.random(50_000) < 0.5
    m = ctx & (rng.random(50_000) < 0.97)
    schemes = mask_scheme(encode_mask(m, ctx), ctx)
    assert schemes == ["zeros", "runs0"]


@pytest.mark.parametrize("n", [1, 63, 64, 65, 5000, 40_000, 100_001])
def test_clustered_masks_use_alternating_runs(n):
    rng = np.random.default_rng(n)
    runs = rng.geometric(1 / 40, n // 10 + 4)
    m = np.repeat(np.arange(runs.size) % 2 == 1, runs)[:n]
    enc = roundtrip(m)
    if n >= 5000:
        assert mask_scheme(enc) == ["runs01"]
        assert len(enc) < len(zlib.compress(np.packbits(m).tobytes(), 9))
    m[0] = True
    m[-1] = True
    roundtrip(m)
    for i in rng.integers(0, len(enc), 10):
        bad = bytearray(enc)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        decode_or_same(bytes(bad), decode_mask(enc))


@pytest.mark.parametrize("scheme", ["bytes", "runs1", "runs01"])
def test_huge_shape_with_tiny_payload_is_refused_before_allocating(scheme):
    table = write_length_table(np.array([1, 1]))
    body = b"BSMK\x01\x00\x01" + varint(MAX_POSITIONS)
    if scheme == "bytes":
        body += b"\x03" + write_length_table(np.array([1, 1] + [0] * 254))
    elif scheme == "runs1":
        body += b"\x04\x00" + varint(2) + table
    else:
        body += b"\x06" + (varint(2) + table) * 2
    body += b"\x01\x01\x00"
    with pytest.raises(FormatError, match="cannot cover"):
        decode_mask(with_crc(body), max_positions=MAX_POSITIONS)


def test_decode_accepts_byte_buffers():
    m = np.random.default_rng(10).random((20, 30)) < 0.1
    enc = encode_mask(m)
    for data in (bytearray(enc), memoryview(enc), np.frombuffer(enc, np.uint8), np.void(enc)):
        np.testing.assert_array_equal(decode_mask(data), m)
    with pytest.raises(TypeError, match="uint8"):
        decode_mask(np.frombuffer(enc, np.uint8).astype(np.float32))


@pytest.mark.parametrize("p", [1e-4, 1e-3])
def test_very_sparse_masks_use_extra_bits(p):
    """Long runs: low bits sent as they are keep very sparse masks near the entropy."""
    n = 2 * 10**6
    m = np.random.default_rng(11).random(n) < p
    enc = roundtrip(m)
    q = m.mean()
    entropy = n * -(q * np.log2(q) + (1 - q) * np.log2(1 - q)) / 8
    assert len(enc) <= 1.02 * entropy + 64
    assert len(enc) < len(zlib.compress(np.packbits(m).tobytes(), 9))


"""Load's mask helpers (bitsub.storage.masks) against the plain NumPy way: masks coded in a
context merged from packed streams, masks without context packed, contexts unpacked (no GIL),
and write masks from their stored reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import bitsub
from bitsub.storage import masks
from bitsub.storage.masks import decode_packed_mask, unpack_context, write_mask


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5000),
       density=st.sampled_from([0.0, 0.02, 0.5, 0.98, 1.0]),
       ctx_density=st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def test_context_merge_matches_decode_mask(seed, n, density, ctx_density):
    rng = np.random.default_rng(seed)
    shape = (1, n)
    mask = rng.random(shape) < density
    ctx = rng.random(shape) < ctx_density
    enc = bitsub.encode_mask(mask, context=ctx)
    want = np.packbits(bitsub.decode_mask(enc, context=ctx).reshape(-1))
    assert want.tolist() == np.packbits(mask.reshape(-1)).tolist()
    assert decode_packed_mask(enc, ctx, shape).tolist() == want.tolist()
    assert decode_packed_mask(enc, ctx, shape, np.packbits(ctx.reshape(-1))).tolist() \
        == want.tolist()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), reference=st.integers(0, 2))
def test_write_mask_matches_numpy(seed, n, reference):
    rng = np.random.default_rng(seed)
    mask, written, diff = (np.packbits(rng.random(n) < rng.random()) for _ in range(3))
    new = mask & ~written
    want = [new, mask, new ^ diff][reference]
    before = written.copy()
    got, count, outside = write_mask(mask, written, reference, diff if reference == 2 else None)
    assert got.tolist() == want.tolist()
    assert count == int(np.unpackbits(want).sum())
    assert outside == int(np.unpackbits(want & ~mask).sum())
    assert written.tolist() == (before | want).tolist()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 7, 8, 9, 63, 64, 65, 1000, 70001]),
       density=st.sampled_from([0.0, 0.02, 0.5, 0.98, 1.0]))
def test_mask_without_context_matches_packbits(seed, n, density):
    # every scheme the encoder picks (zeros, ones, raw, runs, bytes), packed without the GIL
    rng = np.random.default_rng(seed)
    mask = rng.random((1, n)) < density
    got = decode_packed_mask(bitsub.encode_mask(mask), None, (1, n))
    assert got.tolist() == np.packbits(mask.reshape(-1)).tolist()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 7, 8, 9, 63, 64, 65, 1000]),
       density=st.sampled_from([0.0, 0.5, 1.0]), slack=st.integers(0, 9))
def test_pack_and_unpack_match_numpy(seed, n, density, slack):
    rng = np.random.default_rng(seed)
    bits = rng.random(n) < density
    packed = masks._packed(bits, slack)
    assert packed.tolist() == np.packbits(bits).tolist() + [0] * slack
    assert unpack_context(np.packbits(bits), (1, n)).tolist() == [bits.tolist()]
    # a view that starts inside a word: no alignment assumed
    assert masks._packed(bits[1:], 0).tolist() == np.packbits(bits[1:]).tolist()

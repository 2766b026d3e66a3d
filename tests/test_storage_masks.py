"""Load's mask helpers (bitsub.storage.masks) against the plain NumPy way: masks coded in a
context merged a byte at a time, and write masks from their stored reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import bitsub
from bitsub.storage.masks import decode_packed_mask, write_mask


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

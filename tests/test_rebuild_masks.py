"""The packed-mask passes of add_banks (load) against their naive twins: the mask counts of
prepare_layer and build_banks' check that reused positions were written, on random and edge
masks whose sizes cross the kernels' eight-byte groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsub import PackedModel, TaskLayer
from bitsub.model import placement, rebuild
from bitsub.model.placement import PackedMask
from tests.naive import naive_packed_mask_stats

DENSITIES = [0.0, 0.03, 0.5, 0.97, 1.0]


def packed(rng, n_bytes, density):
    return np.packbits(rng.random(8 * n_bytes) < density)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_bytes=st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, 300]),
       dm=st.sampled_from(DENSITIES), dw=st.sampled_from(DENSITIES))
def test_packed_mask_stats_match_naive(seed, n_bytes, dm, dw):
    rng = np.random.default_rng(seed)
    mask, write = packed(rng, n_bytes, dm), packed(rng, n_bytes, dw)
    got = tuple(int(x) for x in placement._packed_mask_stats(mask, write))
    assert got == naive_packed_mask_stats(mask, write)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_bytes=st.sampled_from([1, 7, 8, 9, 300]),
       d=st.sampled_from(DENSITIES), one=st.booleans())
def test_any_lost_matches_numpy(seed, n_bytes, d, one):
    rng = np.random.default_rng(seed)
    mask, write, written = (packed(rng, n_bytes, d) for _ in range(3))
    if one:  # exactly one lost position, anywhere (the last byte included)
        mask[:] = write[:] = written[:] = 0
        i = int(rng.integers(0, 8 * n_bytes))
        mask[i // 8] = 0x80 >> (i % 8)
    want = bool((mask & ~write & ~written).any())
    assert rebuild._any_lost(mask, write, written) == want


@pytest.mark.parametrize("n", [1, 9, 65, 4099])
def test_add_banks_refuses_unwritten_reuse_in_packed_masks(n):
    # the first lost position is named, and nothing is added
    rng = np.random.default_rng(n)
    first = rng.random(n) < 0.5
    second_write = np.zeros(n, bool)
    second_mask = first.copy()
    lost = int(rng.integers(0, n))
    first[lost] = second_mask[lost] = True
    first[lost] = False
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (1, n))
    cb = np.zeros(2, np.float32)

    def layer(mask, write):
        return {"fc": TaskLayer(PackedMask(np.packbits(mask)), PackedMask(np.packbits(write)),
                                bits=1, codebook=cb,
                                codes=np.zeros((1, n), np.uint8))}

    with pytest.raises(ValueError, match=rf"position \(0, {lost}\) is in mask but not in write"):
        pm.add_banks([layer(first.reshape(1, n), first.reshape(1, n)),
                      layer(second_mask.reshape(1, n), second_write.reshape(1, n))], [0, 0])
    assert pm.tasks == []


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 9, 64, 4099]))
def test_add_banks_with_the_most_tasks_matches_add_task(seed, n):
    # a full bank (7 tasks: 3-bit prefixes), random writes and reuse, some tasks writing
    # nothing: one pass of add_banks from packed masks builds add_task's words
    rng = np.random.default_rng(seed)
    pm = PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc", (1, n))
    cb = np.array([0.0, 1.0], np.float32)
    layers = []
    written = np.zeros(n, bool)
    for _ in range(pm.max_tasks_per_bank):
        write = (rng.random(n) < rng.choice([0.0, 0.5, 1.0])) & ~written
        mask = write | (written & (rng.random(n) < 0.5))
        codes = rng.integers(0, 2, (1, n), dtype=np.uint8)
        pm.add_task({"fc": TaskLayer(mask.reshape(1, n), write.reshape(1, n), bits=1,
                                     codebook=cb, codes=codes)})
        layers.append({"fc": TaskLayer(PackedMask(np.packbits(mask)),
                                       PackedMask(np.packbits(write)), bits=1, codebook=cb,
                                       codes=codes)})
        written |= write
    fast = PackedModel(word_bits=32, prefix_bits=3)
    fast.add_layer("fc", (1, n))
    fast.add_banks(layers, [0] * len(layers))
    assert fast.words("fc", 0).tolist() == pm.words("fc", 0).tolist()
    assert fast.words_hash("fc", 0) == pm.words_hash("fc", 0)

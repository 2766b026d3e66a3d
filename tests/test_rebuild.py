"""Fast paths of format 4: codes gathered from the words into packed bytes (save), fields
written straight from packed codes (load), each against the plain path bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitsub import PackedModel, TaskLayer, pack_bits
from bitsub.codecs.bitfield import packed_size
from bitsub.model.placement import PackedCodes
from bitsub.model.readrule import packed_codes_of
from tests.naive import naive_codes_of, naive_pack_bits
from tests.test_packed import run_random_sequence

SHAPES = {"a": (3, 5), "b": (2, 2, 2, 1), "c": (1, 17)}


def gather(pm, t, name, count=None):
    """packed_codes_of for task t, through the public API; returns (found, bytes)."""
    bank, b = pm.bank(t), pm.bits(t, name)
    count = pm.fields(t, name) if count is None else count
    bits_by_prefix = np.zeros(1 << pm.prefix_bits, np.int64)
    for p, u in enumerate(pm.bank_tasks(bank), start=1):
        bits_by_prefix[p] = pm.bits(u, name)
    out = np.zeros(packed_size(count, b), np.uint8)
    words = np.array(pm.words(name, bank))
    got = packed_codes_of(words, pm.write_mask(t, name).reshape(-1), pm.prefix(t),
                          pm.prefix_bits, pm.word_bits, bits_by_prefix, count, out)
    return got, out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n_tasks=st.integers(1, 9))
def test_packed_codes_match_pack_bits_and_naive(seed, word_bits, prefix_bits, n_tasks):
    pm = run_random_sequence(seed, word_bits, prefix_bits, n_tasks, SHAPES)[0]
    for t in pm.tasks:
        bank = pm.bank(t)
        for name in pm.layers:
            b, n = pm.bits(t, name), pm.fields(t, name)
            if not 1 <= b <= 16:
                continue
            got, out = gather(pm, t, name)
            assert got == n
            assert out.tobytes() == pack_bits(pm.codes(t, name), b).tobytes()
            bits_of_prefix = [0] + [pm.bits(u, name) for u in pm.bank_tasks(bank)]
            _, codes = naive_codes_of(pm.words(name, bank), pm.word_bits, pm.prefix_bits,
                                      bits_of_prefix, pm.prefix(t))
            assert out.tolist() == naive_pack_bits(codes, b)


@given(bits=st.integers(1, 16), side=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_every_bit_width_one_task_and_short_counts(bits, side, seed):
    rng = np.random.default_rng(seed)
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (1, side))
    write = rng.random((1, side)) < 0.6
    k = 1 << bits
    codes = rng.integers(0, k, (1, side))
    pm.add_task({"fc": TaskLayer(write, write, bits=bits, codebook=np.arange(k, dtype=np.float32),
                                 codes=codes)})
    n = int(write.sum())
    got, out = gather(pm, 0, "fc")
    assert got == n
    assert out.tolist() == naive_pack_bits(codes[write], bits)
    # a smaller count stops the walk there and never writes past its bytes
    if n:
        got, out = gather(pm, 0, "fc", count=n - 1)
        assert got == n - 1
        assert out.tolist() == naive_pack_bits(codes[write][: n - 1], bits)


def test_empty_and_full_masks():
    pm = PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc", (7, 9))
    full, empty = np.ones((7, 9), bool), np.zeros((7, 9), bool)
    codes = np.arange(63).reshape(7, 9) % 8
    pm.add_task({"fc": TaskLayer(full, full, bits=3, codebook=np.arange(8.0), codes=codes)})
    pm.add_task({"fc": TaskLayer(empty, empty)})
    pm.add_task({"fc": TaskLayer(full, full, bits=5, codebook=np.arange(32.0), codes=codes * 3)})
    assert gather(pm, 0, "fc")[1].tolist() == naive_pack_bits(codes, 3)
    assert gather(pm, 2, "fc")[1].tolist() == naive_pack_bits(codes * 3, 5)
    got, out = gather(pm, 1, "fc", count=0)
    assert got == 0 and out.size == 0


# ------------------------------------------------ load: fields written from packed codes


def packed_twin(pm):
    """pm rebuilt through add_task with every code layer given as PackedCodes."""
    twin = PackedModel(word_bits=pm.word_bits, prefix_bits=pm.prefix_bits)
    for name in pm.layers:
        twin.add_layer(name, pm.shape(name))
    for t in pm.tasks:
        layers = {}
        for name in pm.layers:
            b, n = pm.bits(t, name), pm.fields(t, name)
            mask, write = pm.mask(t, name), pm.write_mask(t, name)
            if b == 32:
                values = np.zeros(mask.shape, np.float32)
                values[write] = pm.codes(t, name).view(np.float32)
                layers[name] = TaskLayer(mask, write, values=values, bits=32)
            elif b:
                data = pack_bits(pm.codes(t, name), b)
                data.flags.writeable = False  # as np.frombuffer gives them at load
                layers[name] = TaskLayer(mask, write, bits=b, codebook=pm.codebook(t, name),
                                         codes=PackedCodes(data, n))
            else:
                layers[name] = TaskLayer(mask, write)
        bank = pm.bank(t)
        twin.add_task(layers, pm.private(t), bank=bank if bank < twin.banks else "new")
    return twin


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n_tasks=st.integers(0, 9))
def test_packed_codes_give_the_same_words_as_compact_codes(seed, word_bits, prefix_bits,
                                                           n_tasks):
    pm = run_random_sequence(seed, word_bits, prefix_bits, n_tasks, SHAPES)[0]
    twin = packed_twin(pm)
    assert twin.banks == pm.banks
    for name in pm.layers:
        for k in range(pm.banks):
            np.testing.assert_array_equal(twin.words(name, k), pm.words(name, k))
    assert twin == pm


@given(bits=st.integers(1, 16), side=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       k_less=st.booleans())
@settings(max_examples=40, deadline=None)
def test_packed_codes_every_bit_width_and_codebook_bound(bits, side, seed, k_less):
    rng = np.random.default_rng(seed)
    write = rng.random((1, side)) < 0.6
    n = int(write.sum())
    k = max(1, (1 << bits) - 1) if k_less else 1 << bits
    codes = rng.integers(0, 1 << bits, n)
    layer = TaskLayer(write, write, bits=bits, codebook=np.arange(k, dtype=np.float32),
                      codes=PackedCodes(pack_bits(codes, bits), n))
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (1, side))
    if n and codes.max() >= k:  # refused, model unchanged
        before = PackedModel(word_bits=32, prefix_bits=2)
        before.add_layer("fc", (1, side))
        with pytest.raises(ValueError, match="codebook size"):
            pm.add_task({"fc": layer})
        assert pm == before
        return
    pm.add_task({"fc": layer})
    ref = PackedModel(word_bits=32, prefix_bits=2)
    ref.add_layer("fc", (1, side))
    ref.add_task({"fc": TaskLayer(write, write, bits=bits, codebook=np.arange(k, dtype=np.float32),
                                  codes=codes)})
    np.testing.assert_array_equal(pm.words("fc", 0), ref.words("fc", 0))
    assert pm == ref


def test_packed_codes_bad_input():
    write = np.ones((2, 3), bool)
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (2, 3))
    cb = np.arange(4.0)
    for codes, err, match in [
        (PackedCodes(np.zeros(2, np.uint8), 5), ValueError, "5 packed codes for 6"),
        (PackedCodes(np.zeros(3, np.uint8), 6), ValueError, "take 2 bytes, got 3"),
        (PackedCodes(np.zeros(2, np.int16), 6), TypeError, "1-D uint8"),
        (PackedCodes(np.zeros(2, np.uint8), True), TypeError, "integer"),
    ]:
        with pytest.raises(err, match=match):
            pm.add_task({"fc": TaskLayer(write, write, bits=2, codebook=cb, codes=codes)})
    assert pm.tasks == []
    # no room: the packed path refuses a full bank like the plain one
    big = np.arange(1 << 13, dtype=np.float32)
    full = TaskLayer(write, write, bits=13, codebook=big,
                     codes=PackedCodes(np.zeros(10, np.uint8), 6))
    pm.add_task({"fc": full})
    pm.add_task({"fc": full})
    with pytest.raises(ValueError, match="free bits"):
        pm.add_task({"fc": full}, bank=0)
    assert pm.tasks == [0, 1] and pm.banks == 1

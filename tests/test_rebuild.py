"""Fast paths of format 4: codes gathered from the words into packed bytes (save), fields
written straight from packed codes (load, through add_task or whole banks through add_banks),
the file's crc32 from parts, each against the plain path bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitsub import PackedModel, TaskLayer, pack_bits
from bitsub.model.placement import PackedCodes, PackedMask
from bitsub.model.readrule import bank_packed_codes
from bitsub.model.rebuild import SLACK
from tests.naive import naive_codes_of, naive_pack_bits
from tests.test_packed import run_random_sequence

SHAPES = {"a": (3, 5), "b": (2, 2, 2, 1), "c": (1, 17)}


def gather(pm, bank, name):
    """PackedModel.bank_codes as lists: {task: packed bytes} for every task of the bank."""
    got = {t: data.tolist() for t, data in pm.bank_codes(bank, name).items()}
    return {t: got.get(t, []) for t in pm.bank_tasks(bank)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n_tasks=st.integers(1, 9))
def test_bank_codes_match_pack_bits_and_naive(seed, word_bits, prefix_bits, n_tasks):
    pm = run_random_sequence(seed, word_bits, prefix_bits, n_tasks, SHAPES)[0]
    for bank in range(pm.banks):
        tasks = pm.bank_tasks(bank)
        for name in pm.layers:
            got = gather(pm, bank, name)
            bits_of_prefix = [0] + [pm.bits(u, name) for u in tasks]
            for p, t in enumerate(tasks, start=1):
                b = pm.bits(t, name)
                _, codes = naive_codes_of(pm.words(name, bank), pm.word_bits, pm.prefix_bits,
                                          bits_of_prefix, p)
                if b == 0:
                    assert got[t] == []
                elif b == 32:  # raw fields: big-endian uint32
                    assert got[t] == np.asarray(codes, ">u4").view(np.uint8).tolist()
                else:
                    assert got[t] == pack_bits(pm.codes(t, name), b).tolist()
                    assert got[t] == naive_pack_bits(codes, b)


@given(bits=st.lists(st.integers(1, 16), min_size=1, max_size=3), side=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_every_bit_width(bits, side, seed):
    rng = np.random.default_rng(seed)
    pm = PackedModel(word_bits=64, prefix_bits=2)
    pm.add_layer("fc", (1, side))
    codes = {}
    for t, b in enumerate(bits):
        write = rng.random((1, side)) < 0.6
        c = rng.integers(0, 1 << b, (1, side))
        pm.add_task({"fc": TaskLayer(write, write, bits=b, codebook=np.arange(1 << b, dtype=float),
                                     codes=c)}, bank=0 if t else "new")
        codes[t] = c[write]
    got = gather(pm, 0, "fc")
    for t, b in enumerate(bits):
        assert got[t] == naive_pack_bits(codes[t], b)


def test_empty_and_full_masks():
    pm = PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc", (7, 9))
    full, empty = np.ones((7, 9), bool), np.zeros((7, 9), bool)
    codes = np.arange(63).reshape(7, 9) % 8
    pm.add_task({"fc": TaskLayer(full, full, bits=3, codebook=np.arange(8.0), codes=codes)})
    pm.add_task({"fc": TaskLayer(empty, empty)})
    pm.add_task({"fc": TaskLayer(full, full, bits=5, codebook=np.arange(32.0), codes=codes * 3)})
    assert gather(pm, 0, "fc") == {0: naive_pack_bits(codes, 3), 1: [],
                                   2: naive_pack_bits(codes * 3, 5)}


def test_fields_of_a_missing_prefix_are_reported():
    # a word whose prefix names no task of the bank: counted in found[0], nothing indexed
    # prefix 1 with its 2-bit code 3, then prefix 3, which no task of the bank has
    words = np.array([0b01 << 30 | 0b11 << 28 | 0b11 << 26], np.uint32)
    bits_by_prefix = np.array([0, 2, 0, 0], np.int64)
    out = np.zeros(1, np.uint8)
    found = bank_packed_codes(words, 2, 32, bits_by_prefix, np.array([0, 1, 0, 0]),
                              np.array([0, 0, 1, 1, 1]), out)
    assert found.tolist() == [1, 1, 0, 0] and out.tolist() == [0b11 << 6]


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


# ------------------------------------------ load: whole banks at once (add_banks, build_words)


def stored_layers(pm, shared):
    """Every task of pm as a file holds it: packed masks, packed codes (raw fields as values).

    ``shared``: all codes in one buffer with slack after it (as load reads a file), else each
    stream in an array of its own (add_banks copies them together).
    """
    streams, tasks = [], []
    for t in pm.tasks:
        layers = {}
        for name in pm.layers:
            b, n = pm.bits(t, name), pm.fields(t, name)
            mask = PackedMask(np.packbits(pm.mask(t, name).reshape(-1)))
            write = PackedMask(np.packbits(pm.write_mask(t, name).reshape(-1)))
            if b == 32:
                values = np.zeros(pm.shape(name), np.float32)
                values[pm.write_mask(t, name)] = pm.codes(t, name).view(np.float32)
                layers[name] = TaskLayer(mask, write, values=values, bits=32)
            elif b:
                data = pack_bits(pm.codes(t, name), b)
                layers[name] = [mask, write, b, pm.codebook(t, name), data, n]
                streams.append(data)
            else:
                layers[name] = TaskLayer(mask, write)
        tasks.append(layers)
    buf = np.concatenate([*streams, np.zeros(SLACK, np.uint8)])
    pos = 0
    for layers in tasks:
        for name, spec in layers.items():
            if isinstance(spec, list):
                mask, write, b, cb, data, n = spec
                codes = PackedCodes(buf, n, pos) if shared else PackedCodes(data, n)
                layers[name] = TaskLayer(mask, write, bits=b, codebook=cb, codes=codes)
                pos += data.size
    return tasks


def empty_like(pm):
    out = PackedModel(word_bits=pm.word_bits, prefix_bits=pm.prefix_bits)
    for name in pm.layers:
        out.add_layer(name, pm.shape(name))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n_tasks=st.integers(0, 9), shared=st.booleans())
def test_add_banks_builds_the_model_add_task_builds(seed, word_bits, prefix_bits, n_tasks,
                                                     shared):
    from tests.naive import naive_words_hash

    pm = run_random_sequence(seed, word_bits, prefix_bits, n_tasks, SHAPES)[0]
    twin = empty_like(pm)
    ids = twin.add_banks(stored_layers(pm, shared), [pm.bank(t) for t in pm.tasks],
                         [pm.private(t) for t in pm.tasks])
    assert ids == pm.tasks and twin == pm
    for k in range(pm.banks):
        assert twin.bank_tasks(k) == pm.bank_tasks(k)
        for name in pm.layers:
            np.testing.assert_array_equal(twin.words(name, k), pm.words(name, k))
            h = naive_words_hash(pm.words(name, k))
            assert twin.words_hash(name, k) == pm.words_hash(name, k) == h
            # the packed codes a file stores, gathered back from the words
            for t, data in pm.bank_codes(k, name).items():
                codes = pm.codes(t, name)
                want = (codes.astype(">u4").view(np.uint8) if pm.bits(t, name) == 32
                        else pack_bits(codes, pm.bits(t, name)))
                assert data.tolist() == want.tolist()
    # a task added after add_banks sees the same words and used bits
    if pm.banks:
        m = np.ones(pm.shape("a"), bool)
        extra = {"a": TaskLayer(m, m, bits=1, codebook=[0.0, 1.0], codes=np.zeros(15, int))}
        for model in (pm, twin):
            try:
                model.add_task(extra, bank="new")
            except ValueError:
                pass
        assert twin == pm


@pytest.mark.parametrize("n, density, bits", [(200_003, 1.0, 4), (200_003, 0.5, 3),
                                              (150_001, 0.9, 16), (9, 1.0, 7)])
def test_build_large_layers_over_threads(n, density, bits):
    # large enough to be split over the engine threads, odd bit-widths: each part starts its
    # streams mid-byte
    from bitsub.model.rebuild import build_words

    rng = np.random.default_rng(n)
    writes = np.stack([np.packbits(rng.random(n) < density) for _ in range(3)])
    widths = [bits, 5, 1]
    streams = [pack_bits(rng.integers(0, 1 << b, int(np.bitwise_count(w).sum())), b)
               for w, b in zip(writes, widths)]
    starts = np.cumsum([0] + [s.size for s in streams])[:-1].tolist()
    data = np.concatenate([*streams, np.zeros(SLACK, np.uint8)])
    words, used, h, bad, full = build_words(writes, data, starts, widths,
                                            [1 << b for b in widths], 2, 64, n)
    assert bad.tolist() == [0, 0, 0] and full == 0
    from tests.naive import naive_words_hash

    assert h == naive_words_hash(words)
    # the streams gathered back from the words (the save's kernel)
    counts = np.array([0, *(int(np.bitwise_count(w).sum()) for w in writes)], np.int64)
    widths4 = np.array([0, *widths], np.int64)
    offsets = np.concatenate([[0], np.cumsum((counts * widths4 + 7) // 8)]).astype(np.int64)
    out = np.zeros(int(offsets[-1]), np.uint8)
    found = bank_packed_codes(words, 2, 64, widths4, counts, offsets, out)
    assert found.tolist() == counts.tolist() and out.tobytes() == data[:-SLACK].tobytes()
    # the used bits: every written field counted
    want = sum(np.unpackbits(w, count=n).astype(np.int64) * (2 + b)
               for w, b in zip(writes, widths))
    np.testing.assert_array_equal(used, want)


def refusing(pm, tasks, banks, match, private=None):
    before = copy.deepcopy(pm)
    with pytest.raises(ValueError, match=match):
        pm.add_banks(tasks, banks, private)
    assert pm == before


def test_add_banks_refuses_what_add_task_refuses():
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (2, 4))
    m = np.ones((2, 4), bool)
    half = np.zeros((2, 4), bool)
    half[0] = True
    cb3 = np.arange(3, dtype=np.float32)
    bad_codes = TaskLayer(m, m, bits=2, codebook=cb3, codes=PackedCodes(
        pack_bits(np.full(8, 3), 2), 8))
    refusing(pm, [{"fc": bad_codes}], [0], r"task 0, layer 'fc': codes must be in 0..2")
    wide = {"fc": TaskLayer(m, m, bits=13, codebook=np.arange(8.0), codes=np.zeros(8, int))}
    refusing(pm, [wide, wide, wide], [0, 0, 0], "do not fit their 32-bit words")
    reuse = TaskLayer(PackedMask(np.packbits(m.reshape(-1))), PackedMask(np.packbits(
        half.reshape(-1))), bits=1, codebook=[0.0, 1.0], codes=np.zeros(4, int))
    first = {"fc": TaskLayer(half, half, bits=1, codebook=[0.0, 1.0], codes=np.zeros(4, int))}
    refusing(pm, [first, {"fc": reuse}], [0, 0],
             r"task 1, layer 'fc': position \(1, 0\) is in mask")
    refusing(pm, [first, first], [1, 0], "numbered 0, 1")
    refusing(pm, [first] * 4, [0] * 4, "more than 3 tasks")
    refusing(pm, [first], [0, 0], "one of each per task")
    with pytest.raises(TypeError, match="dicts str -> TaskLayer"):
        pm.add_banks([TaskLayer(m, m)], [0])
    # the fine ones go in, reuse included
    whole = TaskLayer(m, m, bits=1, codebook=[0.0, 1.0], codes=np.zeros(8, int))
    ids = pm.add_banks([{"fc": whole}, {"fc": TaskLayer(m, half, bits=1, codebook=[0.0, 1.0],
                                                        codes=np.ones(4, int))}], [0, 0])
    assert ids == [0, 1] and pm.banks == 1 and pm.weights(1, "fc")[1].tolist() == [0.0] * 4


def test_packed_mask_checks():
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (1, 3))
    m = np.ones((1, 3), bool)
    for data, err, match in [(np.zeros(2, np.uint8), TypeError, "1 uint8 bytes"),
                             (np.array([0xFF], np.uint8), ValueError, "pad bits")]:
        for add in (lambda tl: pm.add_task({"fc": tl}),
                    lambda tl: pm.add_banks([{"fc": tl}], [0])):
            with pytest.raises(err, match=match):
                add(TaskLayer(PackedMask(data), m))
    # add_task takes a PackedMask too (unpacked)
    tl = TaskLayer(PackedMask(np.array([0b11100000], np.uint8)), m, codebook=[1.0, 2.0],
                   codes=[1, 0, 1])
    pm.add_task({"fc": tl})
    assert pm.weights(0, "fc").tolist() == [[2.0, 1.0, 2.0]]


# ------------------------------------------------ the file's crc32 from parts


@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=6))
@settings(max_examples=60, deadline=None)
def test_crc32_segments_and_combine_match_zlib(data, cuts):
    import zlib

    from bitsub.storage.crc import crc32_combine, crc32_segments

    cuts = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    view = memoryview(data)
    segments, whole = crc32_segments(view, cuts)
    assert whole == zlib.crc32(data)
    assert segments == [zlib.crc32(data[a:b]) for a, b in zip(cuts, cuts[1:])]
    for c in cuts:
        a, b = data[:c], data[c:]
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(data)


def test_crc32_segments_over_threads():
    import os
    import zlib

    from bitsub.storage.crc import crc32_segments

    data = os.urandom(3 << 20)
    cuts = [5, 1000, 1 << 20, (1 << 20) + 1, 3 << 20]
    segments, whole = crc32_segments(memoryview(data), cuts)
    assert whole == zlib.crc32(data[5:])
    assert segments == [zlib.crc32(data[a:b]) for a, b in zip(cuts, cuts[1:])]

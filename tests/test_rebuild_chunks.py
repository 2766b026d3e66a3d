"""The chunked rebuild (load) and gather (save) kernels against their naive twins, on layouts
that cross chunks and thread splits: every task writing all, none, whole chunks, random or few
positions of a layer, bit-widths 1..16 and raw 32-bit fields, codes at or above their bound
and fields without room."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitsub
from bitsub import PackedModel, TaskLayer, pack_bits
from bitsub.model import rebuild
from bitsub.model.rebuild import CHUNK_BYTES, SLACK, build_words, gather_codes
from tests.naive import naive_build_words, naive_pack_bits, naive_words_hash

CHUNK = 8 * CHUNK_BYTES  # positions per chunk
LAYOUTS = ["all", "none", "chunks", "half", "few", "reuse"]


def random_write(rng, layout, n):
    if layout == "all":
        return np.ones(n, bool)
    if layout == "none":
        return np.zeros(n, bool)
    if layout == "chunks":  # whole chunks written or not (the regular path, chunk by chunk)
        keep = rng.random(-(-n // CHUNK)) < 0.5
        return np.repeat(keep, CHUNK)[:n]
    if layout == "half":
        return rng.random(n) < 0.5
    if layout == "few":  # the sparse path
        return rng.random(n) < 0.05
    # a run of whole positions and a random tail: chunks that change path mid-layer
    write = np.zeros(n, bool)
    a = int(rng.integers(0, n + 1))
    write[:a] = True
    write[a:] = rng.random(n - a) < 0.3
    return write


@pytest.fixture(params=["one part", "split"])
def parts(request, monkeypatch):
    if request.param == "split":  # every call split over the engine threads, however small
        monkeypatch.setattr(rebuild, "PARALLEL_MIN_BYTES", 1)
    return request.param


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n=st.sampled_from([1, 9, CHUNK - 3, CHUNK, 2 * CHUNK + 5,
                                                        3 * CHUNK + 17]),
       data=st.data())
def test_build_and_gather_match_naive(parts, seed, word_bits, prefix_bits, n, data):
    rng = np.random.default_rng(seed)
    n_tasks = data.draw(st.integers(1, min(4, (1 << prefix_bits) - 1)))
    widths = list(range(1, 17)) + ([32] if word_bits == 64 else [])
    writes, codes, bits, limits = [], [], [], []
    for _ in range(n_tasks):
        write = random_write(rng, data.draw(st.sampled_from(LAYOUTS)), n)
        b = data.draw(st.sampled_from(widths))
        top = 1 << b
        limit = top if b == 32 or rng.random() < 0.5 else int(rng.integers(1, top + 1))
        # codes mostly below the bound, some at or above it (they must be counted)
        c = rng.integers(0, top, int(write.sum()), dtype=np.int64)
        if rng.random() < 0.7:
            c %= limit
        writes.append(write)
        codes.append(c)
        bits.append(b)
        limits.append(limit)
    streams = [np.asarray(c, ">u4").view(np.uint8) if b == 32 else pack_bits(c, b)
               for c, b in zip(codes, bits)]
    starts = np.cumsum([0] + [s.size + int(rng.integers(0, 3)) for s in streams])
    buf = np.zeros(int(starts[-1]) + SLACK, np.uint8)
    for s, a in zip(streams, starts):
        buf[a : a + s.size] = s
    packed = np.stack([np.packbits(w) for w in writes])
    words, used, h, bad, full = build_words(packed, buf, starts[:-1].tolist(), bits, limits,
                                            prefix_bits, word_bits, n)
    want, want_used, want_full = naive_build_words(
        [w.tolist() for w in writes], [c.tolist() for c in codes], bits, prefix_bits, word_bits)
    assert full == want_full
    assert bad.tolist() == [int((c >= lim).sum()) for c, lim in zip(codes, limits)]
    assert words.dtype == (np.uint32 if word_bits == 32 else np.uint64)
    if want_full:
        return  # words with fields that did not fit are refused: not compared
    assert words.tolist() == want
    assert used.tolist() == want_used
    assert h == naive_words_hash(want)
    # save's gather, from the naive words: each task's stream as pack_bits writes it
    got = gather_codes(np.array(want, words.dtype), packed, bits, prefix_bits, word_bits)
    for p, (c, b) in enumerate(zip(codes, bits)):
        if b == 32:
            assert got[p].tolist() == np.asarray(c, ">u4").view(np.uint8).tolist()
        else:
            assert got[p].tolist() == naive_pack_bits(c, b)


def test_gather_refuses_words_with_wrong_prefixes(parts):
    # words that add_task cannot have built (a field whose prefix is another task's)
    n = 2 * CHUNK + 3
    writes = np.stack([np.packbits(np.ones(n, bool))])
    words = np.full(n, 2 << 29, np.uint32)  # prefix 2 where task 1 (prefix 1) wrote
    with pytest.raises(RuntimeError, match="prefix"):
        gather_codes(words, writes, [4], 3, 32)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       layouts=st.lists(st.sampled_from(LAYOUTS + ["raw"]), min_size=1, max_size=7))
def test_large_models_round_trip(parts, tmp_path_factory, seed, word_bits, layouts):
    # save / load of layers of several chunks: the model, its words and weights unchanged
    rng = np.random.default_rng(seed)
    shape = (5, CHUNK // 2 + 7)  # 2.5 chunks
    n = shape[0] * shape[1]
    pm = PackedModel(word_bits=word_bits, prefix_bits=3)
    pm.add_layer("fc", shape)
    pm.add_layer("small", (3, 3))
    written = np.zeros(n, bool)
    for t, layout in enumerate(layouts):
        if t and rng.random() < 0.3 or t % 4 == 0:
            written[:] = False
            bank = "new" if t else None
        else:
            bank = pm.banks - 1
        if layout == "raw" and word_bits == 32:
            layout = "half"
        write = random_write(rng, "half" if layout == "raw" else layout, n) & ~written
        mask = write | (written & (rng.random(n) < 0.5))
        if layout == "raw":
            values = rng.standard_normal(n).astype(np.float32)
            tl = TaskLayer(mask.reshape(shape), write.reshape(shape), values=values.reshape(shape),
                           bits=32)
        else:
            b = int(rng.integers(1, 5))
            tl = TaskLayer(mask.reshape(shape), write.reshape(shape), bits=b,
                           codebook=np.sort(rng.standard_normal(1 << b)),
                           codes=rng.integers(0, 1 << b, shape))
        empty = np.zeros((3, 3), bool)
        pm.add_task({"fc": tl, "small": TaskLayer(empty, empty)}, bank=bank)
        written |= write
    path = tmp_path_factory.mktemp("m") / "m.h5"
    pm.save(path)
    back = bitsub.load(path)
    assert back == pm
    for k in range(pm.banks):
        np.testing.assert_array_equal(back.words("fc", k), pm.words("fc", k))
        assert back.words_hash("fc", k) == naive_words_hash(pm.words("fc", k))
    for t in pm.tasks:
        assert back.weights(t, "fc").tobytes() == pm.weights(t, "fc").tobytes()

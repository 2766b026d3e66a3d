"""Capacity: the TinySubNets case study and an independent count on random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitsub import PackedModel, TaskLayer
from bitsub.model.capacity import Capacity, capacity
from tests.test_packed import run_random_sequence

CASE_STUDY = dict(padding=False, masks=False, codebook_scope="task", codebook_index=True)


def case_study_model():
    """TinySubNets appendix: two layers of 6 weights; 3 tasks sharing one bank.

    Task 1 keeps 4 weights per layer at 2 bits (one 4-centroid codebook for both layers), task 2
    adds 1 weight per layer at 1 bit (a 2-centroid codebook), task 3 writes nothing: it reuses
    task 2's new weights and a subset of task 1's.
    """
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("L1", (2, 3))
    pm.add_layer("L2", (3, 2))
    rng = np.random.default_rng(0)
    cb1 = np.array([-0.3576, -0.1, 0.2, 0.41], np.float32)
    cb2 = np.array([-0.5, 0.5], np.float32)
    t1, t2, t3 = {}, {}, {}
    for name, shape in (("L1", (2, 3)), ("L2", (3, 2))):
        m1 = np.zeros(6, bool)
        m1[:4] = True
        w2 = np.zeros(6, bool)
        w2[4] = True
        m1, w2 = m1.reshape(shape), w2.reshape(shape)
        t1[name] = TaskLayer(m1, m1, bits=2, codebook=cb1, codes=rng.integers(0, 4, shape))
        t2[name] = TaskLayer(m1 | w2, w2, bits=1, codebook=cb2, codes=rng.integers(0, 2, shape))
        shared = m1.copy()
        shared.reshape(-1)[0] = False  # task 3 shares a subset of task 1's weights
        t3[name] = TaskLayer(shared | w2, np.zeros(shape, bool))
    for layers in (t1, t2, t3):
        pm.add_task(layers)
    return pm


def test_case_study_152_220_220():
    pm = case_study_model()
    cumulative = [capacity(pm, upto=t, **CASE_STUDY).total for t in pm.tasks]
    assert capacity(pm, **CASE_STUDY).dense_bits == 384
    assert cumulative == [152, 220, 220]
    cap = pm.capacity(**CASE_STUDY)
    # the pieces as the paper writes them: 4*2b + 4*2b + 136b, then 2*1b + 66b, then 0
    assert [(r["fields"], r["codebooks"]) for r in cap.by_task] == [(16, 136), (2, 66), (0, 0)]
    assert cap.percent == pytest.approx(100 * 220 / 384)
    assert pm.banks == 1


def stored_mask_bits(pm, t, name):
    """The stored rule, recomputed: the smallest of the mask coded alone, against the previous
    task of the bank, against the union of the bank's earlier tasks (ties to the first)."""
    from bitsub.codecs.maskcodec import encode_mask

    mask = pm.mask(t, name)
    earlier = [pm.mask(u, name) for u in pm.bank_tasks(pm.bank(t)) if u < t]
    sizes = [len(encode_mask(mask))]
    if earlier:
        sizes.append(len(encode_mask(mask, context=earlier[-1])))
        sizes.append(len(encode_mask(mask, context=np.logical_or.reduce(earlier))))
    return 8 * min(sizes)


def stored_write_bits(specs, banks, t, name, shape):
    """The write mask as a format 4 file stores it, from the specs: nothing when it is the mask
    minus the bank's earlier writes, or the whole mask; else that difference Huffman-coded."""
    from bitsub.codecs.maskcodec import encode_mask

    if name not in specs[t]:
        return 0
    mask, write = specs[t][name][0], specs[t][name][1]
    new = mask.copy()
    for u in banks[t]:
        if name in specs[u]:
            new &= ~specs[u][name][1]
    if np.array_equal(write, new) or np.array_equal(write, mask):
        return 0
    return 8 * len(encode_mask((write ^ new).reshape(shape)))


def independent_count(pm, specs):
    """Bits per component from the generated task specs (not from the model), plus masks."""
    fields = codebooks = masks = private = 0
    earlier = {t: [u for u in pm.bank_tasks(pm.bank(t)) if u < t] for t in pm.tasks}
    for t in pm.tasks:
        for name in pm.layers:
            masks += stored_mask_bits(pm, t, name)
            masks += stored_write_bits(specs, earlier, t, name, pm.shape(name))
            if name in specs[t]:
                mask, write, bits, _, centroids = specs[t][name]
                np.testing.assert_array_equal(pm.mask(t, name), mask)
                n = int(write.sum())
                fields += 32 * n if bits == 32 else 8 * -(-n * bits // 8)  # whole bytes
                codebooks += 32 * centroids
        private += 32 * 6  # run_random_sequence gives every task a (2, 3) head
    return {"fields": fields, "codebooks": codebooks, "masks": masks, "private": private}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4))
def test_capacity_equals_independent_count(seed, word_bits, prefix_bits):
    shapes = {"fc1": (4, 3), "conv": (2, 2, 1, 3)}
    specs = {}
    pm, _, _ = run_random_sequence(seed, word_bits, prefix_bits, 6, shapes, record=specs)
    cap = pm.capacity()
    assert isinstance(cap, Capacity)
    assert cap.bits == independent_count(pm, specs)
    assert cap.dense_bits == 32 * sum(math.prod(s) for s in shapes.values())
    assert cap.total == cap.bits["fields"] + cap.bits["codebooks"] + cap.bits["masks"]
    assert cap.percent == pytest.approx(100 * cap.total / cap.dense_bits)
    for comp in ("fields", "codebooks", "masks", "private"):
        assert sum(r[comp] for r in cap.by_task) == cap.bits[comp]
    for comp in ("fields", "codebooks", "masks"):
        assert sum(r[comp] for r in cap.by_layer.values()) == cap.bits[comp]
    if pm.tasks:
        last = pm.tasks[-1]
        assert pm.capacity(upto=last).bits == cap.bits
    text = str(cap)
    assert "fields" in text and "private" in text and f"{cap.total}" in text


def test_options_and_validation():
    pm = case_study_model()
    with_prefix = pm.capacity(prefix=True)
    exact = pm.capacity(padding=False)
    assert with_prefix.bits["fields"] - exact.bits["fields"] == 10 * pm.prefix_bits
    assert pm.capacity().bits["fields"] == 8 * 4  # four streams of one byte each (8, 8, 1, 1 bits)
    half = pm.capacity(codebook_bits=16)
    assert half.bits["codebooks"] == 16 * (4 + 4 + 2 + 2)
    assert pm.capacity(masks=False).bits["masks"] == 0
    with pytest.raises(ValueError, match="codebook_scope"):
        pm.capacity(codebook_scope="model")
    with pytest.raises(ValueError, match="upto"):
        pm.capacity(upto=3)
    with pytest.raises(TypeError):
        pm.capacity(prefix=1)
    empty = PackedModel()
    assert empty.capacity().percent == 0.0 and empty.capacity().total == 0


def test_mask_coding_union_counts_masks_coded_against_all_earlier_tasks():
    from bitsub.codecs.maskcodec import decode_mask, encode_mask

    shapes = {"fc1": (6, 5), "conv": (2, 2, 1, 3)}
    pm, _, _ = run_random_sequence(4, 32, 3, 7, shapes)
    cap = pm.capacity(mask_coding="union")
    expected = 0
    for name in pm.layers:
        union = np.zeros(pm.shape(name), bool)
        for t in pm.tasks:
            mask = pm.mask(t, name)
            data = encode_mask(mask, context=union)
            np.testing.assert_array_equal(decode_mask(data, context=union), mask)
            expected += 8 * len(data)
            union |= mask
    assert cap.bits["masks"] == expected
    plain = pm.capacity()
    assert cap.bits["fields"] == plain.bits["fields"]
    assert cap.bits["codebooks"] == plain.bits["codebooks"]
    with pytest.raises(ValueError, match="mask_coding"):
        pm.capacity(mask_coding="previous")


def test_capacity_masks_are_the_stored_bytes_and_alone_is_reported():
    from tests.test_packed import reuse_model

    pm = reuse_model()
    stored = sum(8 * len(pm.encoded_mask(t, n)) for t in pm.tasks for n in pm.layers)
    assert all(pm.write_coding(t, n)[1] == b"" for t in pm.tasks for n in pm.layers)
    alone = sum(8 * len(pm.encoded_mask(t, n, alone=True)) for t in pm.tasks for n in pm.layers)
    raw = len(pm.tasks) * sum(math.prod(pm.shape(n)) for n in pm.layers)
    cap = pm.capacity()
    assert cap.bits["masks"] == stored < alone
    assert cap.mask_alone_bits == alone and cap.mask_raw_bits == raw
    assert cap.mask_saving == pytest.approx(100 * (1 - stored / raw))
    coded_alone = pm.capacity(mask_coding="alone")
    assert coded_alone.bits["masks"] == alone == coded_alone.mask_alone_bits
    assert "mask saving vs 1 bit per weight per task" in str(cap)
    for t in pm.tasks:  # the count up to a task is the stored bytes of tasks 0..t
        upto = pm.capacity(upto=t)
        assert upto.bits["masks"] == sum(8 * len(pm.encoded_mask(u, n))
                                         for u in range(t + 1) for n in pm.layers)
    assert pm.capacity(masks=False).mask_raw_bits == 0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n_tasks=st.integers(0, 6))
def test_capacity_is_the_file_payload(tmp_path_factory, seed, word_bits, prefix_bits, n_tasks):
    """Total + private, in bytes, is the size of the file's payload dataset as h5py reads it;
    the rest of the file (seal, index, HDF5 headers) is a small fixed overhead."""
    import h5py

    shapes = {"fc1": (7, 5), "conv": (2, 2, 1, 3)}
    pm = run_random_sequence(seed, word_bits, prefix_bits, n_tasks, shapes)[0]
    path = tmp_path_factory.mktemp("cap") / "m.h5"
    assert pm.capacity().file_bytes is None
    size = pm.save(path)
    cap = pm.capacity()
    assert size == path.stat().st_size == cap.file_bytes == pm.file_bytes
    with h5py.File(path, "r") as f:
        assert f["payload"].size == cap.payload_bytes
    assert 0 < cap.overhead_bytes <= 16 * 1024
    assert capacity(bitsub_load(path)).payload_bytes == cap.payload_bytes


def bitsub_load(path):
    from bitsub import load

    return load(path)


def test_dense_file_bytes_is_what_np_savez_writes(tmp_path):
    pm = case_study_model()
    pm.add_task({}, private={"head": np.ones((3, 4))})
    got = pm.capacity().dense_file_bytes
    path = tmp_path / "dense.npz"
    np.savez(path, L1=np.zeros((2, 3), np.float32), L2=np.zeros((3, 2), np.float32),
             **{"task3.head": np.zeros((3, 4), np.float32)})
    assert got == path.stat().st_size

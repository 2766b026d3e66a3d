"""FieldStore: per-task stored fields on the torch side, checked against bitsub.PackedModel."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitsub
from bitsub_torch.cl.taskvalues import FieldStore, LayerFields

SHAPES = {"a": (3, 5), "b": (2, 2, 2, 2)}


def _naive_values(history, bank, task, layer, shape):
    """Latest field of the bank written by a task <= task, position by position (dict walk)."""
    out = np.zeros(int(np.prod(shape)), np.float32)
    for t, b, fields in history:
        if b != bank or t > task:
            continue
        f = fields[layer]
        for j, i in enumerate(np.flatnonzero(f.write)):
            out[i] = f.codebook[f.codes[j]]
    return out.reshape(shape)


def _random_task(rng, store, bank, bits):
    layers = {}
    for name, shape in store.shapes.items():
        room = store.writable(bank, name, bits)
        has = store.has_field(bank, name)
        write = room & (rng.random(shape) < 0.5)
        reuse = has & ~write & (rng.random(shape) < 0.5)
        mask = write | reuse
        n = int(write.sum())
        codebook = np.sort(rng.normal(size=1 << bits)).astype(np.float32)
        codes = rng.integers(0, 1 << bits, n).astype(np.uint8)
        layers[name] = LayerFields(mask, write, bits, codebook, codes)
    return layers


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_tasks=st.integers(1, 7),
    word_bits=st.sampled_from([32, 64]),
    prefix_bits=st.integers(1, 3),
)
def test_store_matches_packed_model_and_naive_reader(seed, n_tasks, word_bits, prefix_bits):
    rng = np.random.default_rng(seed)
    store = FieldStore(SHAPES, word_bits=word_bits, prefix_bits=prefix_bits)
    pm = bitsub.PackedModel(word_bits=word_bits, prefix_bits=prefix_bits)
    for name, shape in SHAPES.items():
        pm.add_layer(name, shape)
    history = []
    snapshots = {}
    for t in range(n_tasks):
        bank = store.current_bank()
        if bank is None or store.bank_full(bank) or rng.random() < 0.2:
            bank = store.open_bank()
        bits = int(rng.integers(1, 9))
        layers = _random_task(rng, store, bank, bits)
        store.add_task(t, bank, layers)
        history.append((t, bank, layers))
        exported = store.export_layers(t)
        tid = pm.add_task(
            {n: bitsub.TaskLayer(e["mask"], e["write"], bits=e["bits"] or None,
                                 codebook=e["codebook"], codes=e["codes"])
             if e["bits"] else bitsub.TaskLayer(e["mask"], e["write"])
             for n, e in exported.items()},
            bank=store.export_bank(t),
        )
        assert tid == t and pm.bank(t) == bank
        for name, shape in SHAPES.items():
            np.testing.assert_array_equal(
                store.values(t, name), _naive_values(history, bank, t, name, shape)
            )
            snapshots[(t, name)] = store.weights(t, name).copy()
    for (t, name), w in snapshots.items():
        # Forget-free: later tasks never change an earlier task's weights; the engine agrees.
        np.testing.assert_array_equal(store.weights(t, name), w)
        assert store.weights(t, name).tobytes() == pm.weights(t, name).tobytes()
        # The word-level bit accounting is the engine's.
        used = store.used_bits(store.bank(t), name).reshape(-1)
        assert (store.word_bits - used >= 0).all()
    rebuilt = FieldStore.from_state_dict(store.state_dict())
    for (t, name), w in snapshots.items():
        np.testing.assert_array_equal(rebuilt.weights(t, name), w)
        np.testing.assert_array_equal(
            rebuilt.used_bits(rebuilt.bank(t), name), store.used_bits(store.bank(t), name)
        )


def test_state_dict_is_torch_weights_only_loadable(tmp_path):
    store = FieldStore({"a": (4, 4)}, prefix_bits=2)
    store.open_bank()
    m = np.ones((4, 4), bool)
    store.add_task(0, 0, {"a": LayerFields(m, m, 2, np.arange(4, dtype=np.float32),
                                            np.arange(16, dtype=np.uint8) % 4)})
    path = tmp_path / "s.pt"
    torch.save(store.state_dict(), path)
    back = FieldStore.from_state_dict(torch.load(path, weights_only=True))
    np.testing.assert_array_equal(back.weights(0, "a"), store.weights(0, "a"))
    assert back.field_bits(0) == 16 * (2 + 2)


def test_room_and_bank_limits_are_enforced():
    store = FieldStore({"a": (2, 2)}, word_bits=32, prefix_bits=2)
    store.open_bank()
    m = np.ones((2, 2), bool)
    cb = np.zeros(256, np.float32)
    codes = np.zeros(4, np.uint8)
    # 32 bits hold three 2+8-bit fields, not four.
    for t in range(3):
        assert store.writable(0, "a", 8).all()
        store.add_task(t, 0, {"a": LayerFields(m, m, 8, cb, codes)})
    assert not store.writable(0, "a", 8).any()
    assert store.bank_full(0)  # 2**2 - 1 = 3 tasks
    with pytest.raises(ValueError, match="full"):
        store.add_task(3, 0, {"a": LayerFields(m, m, 1, cb[:2], codes)})
    store.open_bank()
    with pytest.raises(ValueError, match="no earlier task"):
        store.add_task(3, 1, {"a": LayerFields(m, np.zeros_like(m), 0, cb[:0], codes[:0])})
    with pytest.raises(ValueError, match="increasing"):
        store.add_task(1, 1, {"a": LayerFields(m, m, 1, cb[:2], codes)})
    with pytest.raises(ValueError, match="subset"):
        store.add_task(3, 1, {"a": LayerFields(~np.eye(2, dtype=bool), m, 1, cb[:2], codes)})
    store.add_task(3, 1, {"a": LayerFields(m, m, 1, cb[:2], codes)})
    assert store.export_bank(3) == "new" and store.export_bank(1) == 0


def test_bad_construction():
    with pytest.raises(ValueError, match="word_bits"):
        FieldStore({"a": (2,)}, word_bits=16)
    with pytest.raises(ValueError, match="prefix_bits"):
        FieldStore({"a": (2,)}, prefix_bits=9)
    with pytest.raises(ValueError, match="at least one layer"):
        FieldStore({})


def test_decoding_caches_hold_two_entries_per_layer():
    # A count over all layers let the largest layer's entries accumulate task after task (its
    # bytes grew up to 2 x layers x the largest layer); the caches keep 2 entries per layer.
    shapes = {"small": (2, 3), "big": (40, 50)}
    store = FieldStore(shapes, word_bits=32, prefix_bits=3)
    rng = np.random.default_rng(0)
    bank = store.open_bank()
    for task in range(6):
        store.add_task(task, bank, _random_task(rng, store, bank, 2))
        for t in range(task + 1):  # what evaluating every finished task reads
            store.values(t, "big")
            store.mask(t, "big")
    for cache in (store._masks, store._values, store._unions):
        per_layer = {name: sum(1 for key in cache if key[1] == name) for name in shapes}
        assert max(per_layer.values()) <= 2, per_layer
        assert sum(a.nbytes for a in cache.values()) <= 2 * sum(np.prod(s) * 4 for s in
                                                                 shapes.values())
    assert sum(1 for key in store._masks if key[1] == "big") == 2

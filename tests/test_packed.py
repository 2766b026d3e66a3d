"""PackedModel: the read rule, forget-freedom, bank placement, against an independent oracle."""

from __future__ import annotations

import copy
import math
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitsub
from bitsub import PackedModel, TaskLayer
from bitsub.quant.kmeans import kmeans_1d
from tests.naive import naive_packed_weights

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------ oracle


class Oracle:
    """Independent bookkeeping of what PackedModel must do: bits used and last value per word."""

    def __init__(self, word_bits, prefix_bits, shapes):
        self.word_bits = word_bits
        self.prefix_bits = prefix_bits
        self.shapes = shapes
        self.banks = []  # dicts: used[layer] int array, value[layer] float32 array, ntasks

    def new_bank(self):
        return {
            "used": {n: np.zeros(math.prod(s), np.int64) for n, s in self.shapes.items()},
            "value": {n: np.zeros(math.prod(s), np.float32) for n, s in self.shapes.items()},
            "ntasks": 0,
        }

    def fits(self, k, spec):
        b = self.banks[k]
        if b["ntasks"] >= (1 << self.prefix_bits) - 1:
            return False
        for name, (_mask, write, bits, _, _) in spec.items():
            if write.any():
                top = b["used"][name][write.reshape(-1)].max()
                if top + self.prefix_bits + bits > self.word_bits:
                    return False
        return True

    def reuse_ok(self, k, spec):
        for name, (mask, write, _, _, _) in spec.items():
            reuse = (mask & ~write).reshape(-1)
            if reuse.any() and (k is None or (self.banks[k]["used"][name][reuse] == 0).any()):
                return False
        return True

    def place(self, spec, bank):
        """Bank the task must land in, or None if add_task must raise."""
        nb = len(self.banks)
        has_reuse = any((m & ~w).any() for m, w, _, _, _ in spec.values())
        if bank == "new" or nb == 0 and bank is None:
            return None if has_reuse else nb
        if bank is not None:
            return bank if self.fits(bank, spec) and self.reuse_ok(bank, spec) else None
        k = nb - 1
        if self.fits(k, spec):
            return k if self.reuse_ok(k, spec) else None
        return None if has_reuse else nb

    def add(self, spec, k):
        """Record the task in bank k; return its expected dense weights per layer."""
        if k == len(self.banks):
            self.banks.append(self.new_bank())
        b = self.banks[k]
        b["ntasks"] += 1
        expected = {}
        for name, shape in self.shapes.items():
            if name not in spec:
                expected[name] = np.zeros(shape, np.float32)
                continue
            mask, write, bits, vals, _ = spec[name]
            w = write.reshape(-1)
            if w.any():
                b["used"][name][w] += self.prefix_bits + bits
                b["value"][name][w] = vals.reshape(-1)[w]
            expected[name] = np.where(mask.reshape(-1), b["value"][name], 0).astype(
                np.float32).reshape(shape)
        return expected


def random_task(rng, oracle, target, word_bits, prefix_bits, sloppy):
    """Random TaskLayers (and the oracle's view) aimed at bank ``target`` (an index or None)."""
    layers, spec = {}, {}
    for name, shape in oracle.shapes.items():
        if rng.random() < 0.15:
            continue  # layer not mentioned: empty mask
        n = math.prod(shape)
        if word_bits == 64 and prefix_bits + 32 <= 64 and rng.random() < 0.2:
            bits = 32
        else:
            bits = int(rng.integers(1, 9))
        write = rng.random(n) < rng.choice([0.0, 0.3, 0.7, 1.0])
        reuse = np.zeros(n, bool)
        if target is not None and target < len(oracle.banks):
            written = oracle.banks[target]["used"][name] > 0
            reuse = written & (rng.random(n) < 0.5) & ~write
        if sloppy:
            reuse |= (rng.random(n) < 0.1) & ~write
        mask = write | reuse
        mask, write = mask.reshape(shape), write.reshape(shape)
        if bits == 32:
            vals = rng.standard_normal(n).astype(np.float32)
            # edge values a file stores bit for bit (non-finite ones are refused, see
            # test_stored_values_must_be_finite_and_below_2_pow_60)
            specials = np.array([0.0, -0.0, 1e-45, -2.0**60, 65504.0], np.float32)
            pick = rng.random(n) < 0.1
            vals[pick] = rng.choice(specials, int(pick.sum()))
            vals = vals.reshape(shape)
            layers[name] = TaskLayer(mask, write, values=vals, bits=32)
            centroids_stored = 0
        elif rng.random() < 0.15:  # quantized by bitsub (kmeans_1d over the written values)
            vals = rng.standard_normal(n).astype(np.float32)
            layers[name] = TaskLayer(mask, write, values=vals.reshape(shape).copy(), bits=bits)
            w = write.reshape(-1)
            if w.any():
                centroids, c = kmeans_1d(vals[w], 1 << bits)
                vals[w] = np.asarray(centroids)[np.asarray(c)]
            vals = vals.reshape(shape)
            centroids_stored = 1 << bits
        else:
            k = int(rng.integers(1, (1 << bits) + 1))
            codebook = np.sort(rng.standard_normal(k)).astype(np.float32)
            codes = rng.integers(0, k, n).reshape(shape)
            use_bits = bits if rng.random() < 0.5 else None
            layers[name] = TaskLayer(mask, write, bits=use_bits, codebook=codebook, codes=codes)
            if use_bits is None:
                bits = max(1, (k - 1).bit_length())
            vals = codebook[codes]
            centroids_stored = k
        written = write.any()
        spec[name] = (mask, write, bits if written else 0, vals,
                      centroids_stored if written else 0)
    return layers, spec


def snapshot(pm):
    return {(t, name): pm.weights(t, name) for t in pm.tasks for name in pm.layers}


def assert_same_bits(a, b):
    assert a.dtype == b.dtype == np.float32
    assert a.shape == b.shape
    assert a.view(np.uint32).tolist() == b.view(np.uint32).tolist()


def run_random_sequence(seed, word_bits, prefix_bits, n_tasks, shapes, reload_dir=None,
                        record=None):
    """Add random tasks, checking the oracle and forget-freedom after every step.

    With ``reload_dir``, the model is sometimes saved and loaded back mid-sequence, and the
    sequence goes on with the loaded model. ``record`` (a dict) receives each added task's spec:
    ``{layer: (mask, write, bits, values, centroids stored)}``.
    """
    rng = np.random.default_rng(seed)
    pm = PackedModel(word_bits=word_bits, prefix_bits=prefix_bits)
    for name, shape in shapes.items():
        pm.add_layer(name, shape)
    oracle = Oracle(word_bits, prefix_bits, shapes)
    frozen = {}
    failures = 0
    for _ in range(n_tasks):
        nb = len(oracle.banks)
        r = rng.random()
        if r < 0.15:
            bank = "new"
        elif r < 0.3 and nb:
            bank = int(rng.integers(0, nb))
        else:
            bank = None
        target = bank if isinstance(bank, int) else (nb - 1 if bank is None and nb else None)
        layers, spec = random_task(rng, oracle, target, word_bits, prefix_bits,
                                   sloppy=rng.random() < 0.1)
        want = oracle.place(spec, bank)
        before = copy.deepcopy(pm)
        if want is None:
            with pytest.raises(ValueError):
                pm.add_task(layers, bank=bank)
            failures += 1
            assert pm == before  # a failed add_task leaves the model unchanged
            continue
        t = pm.add_task(layers, private={"head.weight": rng.standard_normal((2, 3))}, bank=bank)
        assert t == len(frozen) // len(shapes)
        assert pm.bank(t) == want
        expected = oracle.add(spec, want)
        if record is not None:
            record[t] = spec
        assert pm.prefix(t) == oracle.banks[want]["ntasks"]
        for name in shapes:
            w = pm.weights(t, name)
            assert_same_bits(w, expected[name])
            frozen[(t, name)] = w
        # forget-free: every earlier task bit-for-bit as it was right after it was added
        for key, w in frozen.items():
            assert_same_bits(pm.weights(*key), w)
        if reload_dir is not None and rng.random() < 0.4:
            path = os.path.join(reload_dir, "m.h5")
            pm.save(path)
            pm = bitsub.load(path)
            for key, w in frozen.items():
                assert_same_bits(pm.weights(*key), w)
    return pm, frozen, failures


SHAPES = st.sampled_from([
    {"fc1": (3, 4)},
    {"fc1": (1, 1)},
    {"fc1": (5, 3), "conv": (2, 2, 1, 3)},
    {"a": (2, 7), "b": (1, 5), "c": (3, 1, 2, 2)},
])


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n_tasks=st.integers(1, 16), shapes=SHAPES)
def test_forget_free_and_oracle(seed, word_bits, prefix_bits, n_tasks, shapes):
    with tempfile.TemporaryDirectory() as tmp:
        pm, frozen, _ = run_random_sequence(seed, word_bits, prefix_bits, n_tasks, shapes,
                                            reload_dir=tmp)
    for t in pm.tasks:
        for name in pm.layers:
            assert_same_bits(naive_packed_weights(pm, t, name), frozen[(t, name)])


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), shapes=SHAPES)
def test_resolve_matches_weights_and_invariants(seed, word_bits, prefix_bits, shapes):
    pm, _, _ = run_random_sequence(seed, word_bits, prefix_bits, 8, shapes)
    for t in pm.tasks:
        bank_members = pm.bank_tasks(pm.bank(t))
        for name in pm.layers:
            mask, source, codes = pm.resolve(t, name)
            assert mask.dtype == np.bool_ and source.dtype == np.int32
            assert codes.dtype == np.uint32
            assert np.array_equal(mask, pm.mask(t, name))
            assert (source[~mask] == -1).all() and (codes[~mask] == 0).all()
            used = source[mask]
            assert (used <= t).all()
            assert set(used.tolist()) <= set(bank_members)
            # rebuild the weights from resolve + codebooks
            w = np.zeros(mask.shape, np.float32)
            for s in set(used.tolist()):
                at = source == s
                cb = pm.codebook(s, name)
                w[at] = codes[at].view(np.float32) if cb is None else cb[codes[at]]
            assert_same_bits(w, pm.weights(t, name))


def test_words_layout_is_msb_first():
    pm = PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc", (1, 2))
    m = np.ones((1, 2), bool)
    pm.add_task({"fc": TaskLayer(m, m, bits=2, codebook=[0.0, 1.0, 2.0, 3.0], codes=[[3, 1]])})
    w = np.array([[True, False]])
    pm.add_task({"fc": TaskLayer(m, w, bits=1, codebook=[7.0, 9.0], codes=[[1, 0]])})
    words = pm.words("fc", 0)
    # word 0: [001][11][010][1] then zeros; word 1: [001][01] then zeros
    assert int(words[0]) == int("001" "11" "010" "1", 2) << (32 - 9)
    assert int(words[1]) == int("001" "01", 2) << (32 - 5)
    assert not words.flags.writeable
    np.testing.assert_array_equal(pm.weights(1, "fc"), [[9.0, 1.0]])
    np.testing.assert_array_equal(pm.weights(0, "fc"), [[3.0, 1.0]])


def test_max_tasks_per_bank_and_overflow():
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (2, 2))
    m = np.ones((2, 2), bool)
    tl = TaskLayer(m, m, bits=1, codebook=[-1.0, 1.0], codes=np.zeros((2, 2), int))
    for _ in range(3):
        assert pm.bank(pm.add_task({"fc": tl})) == 0
    assert pm.max_tasks_per_bank == 3
    with pytest.raises(ValueError, match="full"):
        pm.add_task({"fc": tl}, bank=0)
    assert pm.bank(pm.add_task({"fc": tl})) == 1  # prefix space exhausted: next bank
    assert pm.prefix(3) == 1
    reuse = TaskLayer(m, np.zeros((2, 2), bool))
    assert pm.bank(pm.add_task({"fc": reuse})) == 1
    for t in range(3):
        np.testing.assert_array_equal(pm.weights(t, "fc"), -np.ones((2, 2)))


def test_bit_overflow_opens_bank_and_reuse_cannot_move():
    pm = PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc", (1, 3))
    m = np.ones((1, 3), bool)
    cb = np.arange(256, dtype=np.float32)
    full = TaskLayer(m, m, bits=8, codebook=cb, codes=[[1, 2, 3]])
    assert pm.bank(pm.add_task({"fc": full})) == 0
    assert pm.bank(pm.add_task({"fc": full})) == 0  # 22 of 32 bits used
    one = np.array([[True, False, False]])
    # 11 more bits do not fit; the task reuses positions 1, 2 of bank 0, so it cannot move
    with pytest.raises(ValueError, match="cannot move"):
        pm.add_task({"fc": TaskLayer(m, one, bits=8, codebook=cb, codes=[[5, 0, 0]])})
    assert pm.banks == 1 and len(pm.tasks) == 2
    t = pm.add_task({"fc": TaskLayer(one, one, bits=8, codebook=cb, codes=[[5, 0, 0]])})
    assert pm.bank(t) == 1
    np.testing.assert_array_equal(pm.weights(t, "fc"), [[5.0, 0.0, 0.0]])
    # a 4-bit field still fits bank 0 (25 + 7 = 32)
    small = TaskLayer(m, one, bits=4, codebook=np.arange(16.0), codes=[[9, 0, 0]])
    t = pm.add_task({"fc": small}, bank=0)
    np.testing.assert_array_equal(pm.weights(t, "fc"), [[9.0, 2.0, 3.0]])


def test_new_bank_forced_and_explicit_bank_rules():
    pm = PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc", (2, 2))
    m = np.ones((2, 2), bool)
    tl = TaskLayer(m, m, bits=1, codebook=[0.5, 1.5], codes=np.ones((2, 2), int))
    pm.add_task({"fc": tl})
    assert pm.bank(pm.add_task({"fc": tl}, bank="new")) == 1
    with pytest.raises(ValueError, match="new bank"):
        pm.add_task({"fc": TaskLayer(m, np.zeros((2, 2), bool))}, bank="new")
    with pytest.raises(ValueError, match="does not exist"):
        pm.add_task({"fc": tl}, bank=5)
    with pytest.raises(ValueError, match="bank must be"):
        pm.add_task({"fc": tl}, bank="latest")
    assert pm.bank(pm.add_task({"fc": tl}, bank=0)) == 0
    assert pm.bank_tasks(0) == [0, 2] and pm.bank_tasks(1) == [1]


def test_reuse_without_earlier_writer_is_an_error():
    pm = PackedModel()
    pm.add_layer("fc", (2, 2))
    m = np.ones((2, 2), bool)
    w = np.array([[True, False], [False, False]])
    with pytest.raises(ValueError, match="no earlier task"):
        pm.add_task({"fc": TaskLayer(m, w, codebook=[1.0], codes=np.zeros((2, 2), int))})
    pm.add_task({"fc": TaskLayer(w, w, codebook=[1.0], codes=[0])})
    with pytest.raises(ValueError, match=r"position \(0, 1\)"):
        pm.add_task({"fc": TaskLayer(m, np.zeros((2, 2), bool))})
    assert len(pm.tasks) == 1


def test_unmentioned_and_empty_layers():
    pm = PackedModel()
    pm.add_layer("a", (2, 3))
    pm.add_layer("b", (2, 1, 3, 3))
    m = np.ones((2, 3), bool)
    t = pm.add_task({"a": TaskLayer(m, m, bits=3, codebook=np.arange(8.0), codes=np.ones((2, 3),
                                                                                          int))})
    assert not pm.mask(t, "b").any() and pm.mask(t, "b").shape == (2, 1, 3, 3)
    assert pm.bits(t, "b") == 0 and pm.codebook(t, "b").size == 0
    np.testing.assert_array_equal(pm.weights(t, "b"), np.zeros((2, 1, 3, 3)))
    pm.add_layer("late", (1, 2))  # layers may be added later: earlier tasks have empty masks
    assert pm.weights(t, "late").tolist() == [[0.0, 0.0]]
    mask, source, codes = pm.resolve(t, "late")
    assert not mask.any() and (source == -1).all() and (codes == 0).all()
    assert pm.layers == ["a", "b", "late"] and pm.shape("b") == (2, 1, 3, 3)


def test_raw_float32_fields_are_lossless():
    pm = PackedModel(word_bits=64, prefix_bits=4)
    pm.add_layer("fc", (2, 4))
    vals = np.array([[0.1, -0.0, 2.0**60, -1e-38], [1e-45, -3.5, 65504.0, -2.0**60]], np.float32)
    m = np.ones((2, 4), bool)
    t = pm.add_task({"fc": TaskLayer(m, m, values=vals, bits=32)})
    assert pm.codebook(t, "fc") is None and pm.bits(t, "fc") == 32
    assert_same_bits(pm.weights(t, "fc"), vals)
    _, _, codes = pm.resolve(t, "fc")
    assert codes.tolist() == vals.view(np.uint32).tolist()
    with pytest.raises(ValueError, match="word_bits=64"):
        pm32 = PackedModel(word_bits=32)
        pm32.add_layer("fc", (2, 4))
        pm32.add_task({"fc": TaskLayer(m, m, values=vals, bits=32)})


def test_private_and_network():
    pm = PackedModel()
    pm.add_layer("fc", (1, 1))
    m = np.ones((1, 1), bool)
    t = pm.add_task({"fc": TaskLayer(m, m, codebook=[2.0], codes=[[0]])},
                    private={"head.weight": np.ones((3, 1)), "head.bias": [1, 2, 3]})
    priv = pm.private(t)
    assert sorted(priv) == ["head.bias", "head.weight"]
    assert priv["head.bias"].dtype == np.float32 and not priv["head.bias"].flags.writeable
    steps = [{"op": "linear", "layer": "fc", "bias": None}, {"op": "relu"},
             {"op": "head", "weight": "head.weight", "bias": "head.bias"}]
    pm.set_network(steps)
    assert pm.network == steps
    pm.network[0]["op"] = "changed"  # a copy
    assert pm.network == steps
    with pytest.raises(TypeError):
        pm.set_network([{"op": "linear", "x": object()}])
    with pytest.raises(ValueError, match="'op'"):
        pm.set_network([{"layer": "fc"}])
    with pytest.raises(TypeError):
        pm.set_network({"op": "relu"})
    with pytest.raises(TypeError, match="private"):
        pm.add_task({}, private={"w": np.array(["a"])})


def test_input_validation_messages():
    with pytest.raises(ValueError, match="32 or 64"):
        PackedModel(word_bits=16)
    with pytest.raises(ValueError, match="prefix_bits"):
        PackedModel(prefix_bits=0)
    pm = PackedModel()
    with pytest.raises(ValueError, match="out, in"):
        pm.add_layer("x", (3,))
    pm.add_layer("fc", (2, 2))
    with pytest.raises(ValueError, match="already exists"):
        pm.add_layer("fc", (2, 2))
    m = np.ones((2, 2), bool)
    with pytest.raises(ValueError, match="no layer"):
        pm.add_task({"nope": TaskLayer(m, m)})
    with pytest.raises(KeyError, match="no layer"):
        pm.shape("nope")
    with pytest.raises(ValueError, match="shape"):
        pm.add_task({"fc": TaskLayer(np.ones((3, 2), bool), m)})
    with pytest.raises(ValueError, match="subset"):
        pm.add_task({"fc": TaskLayer(~np.eye(2, dtype=bool), m, codebook=[0.0],
                                     codes=np.zeros((2, 2), int))})
    with pytest.raises(ValueError, match="values \\+ bits"):
        pm.add_task({"fc": TaskLayer(m, m)})
    with pytest.raises(ValueError, match="bits"):
        pm.add_task({"fc": TaskLayer(m, m, values=np.ones((2, 2)))})
    with pytest.raises(ValueError, match="codes must be in"):
        pm.add_task({"fc": TaskLayer(m, m, codebook=[0.0, 1.0], codes=np.full((2, 2), 2))})
    with pytest.raises(ValueError, match="does not fit"):
        pm.add_task({"fc": TaskLayer(m, m, bits=1, codebook=[0.0, 1.0, 2.0],
                                     codes=np.zeros((2, 2), int))})
    with pytest.raises(TypeError, match="boolean"):
        pm.add_task({"fc": TaskLayer(np.full((2, 2), 0.5), m)})
    with pytest.raises(TypeError, match="TaskLayer"):
        pm.add_task({"fc": m})
    with pytest.raises(IndexError):
        pm.weights(0, "fc")
    assert len(pm.tasks) == 0 and pm.banks == 0


def test_codes_one_per_written_position():
    pm = PackedModel()
    pm.add_layer("fc", (2, 3))
    w = np.array([[True, False, True], [False, True, False]])
    t = pm.add_task({"fc": TaskLayer(w, w, codebook=[1.0, 2.0, 3.0], codes=[2, 0, 1])})
    np.testing.assert_array_equal(pm.weights(t, "fc"), [[3.0, 0, 1.0], [0, 2.0, 0]])
    assert pm.bits(t, "fc") == 2


# ------------------------------------------------------------------------ stored mask coding


def reuse_model(side=(48, 64), seed=0):
    """Four tasks in one bank whose masks favour each mask reference in turn.

    Task 0: a random half of the positions. Task 1: task 0's mask with a fifth of it dropped
    and a few new positions (coded best against the previous mask). Task 2: the union of the
    earlier masks and a few new positions (best against the union). Task 3: an unrelated
    random half (best alone). Layer "idle" is never used (empty masks).
    """
    rng = np.random.default_rng(seed)
    pm = PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc", side)
    pm.add_layer("idle", (3, 5))
    codes = rng.integers(0, 4, side)
    cb = [-1.0, -0.5, 0.5, 1.0]

    def add(mask, written):
        write = mask & ~written
        pm.add_task({"fc": TaskLayer(mask, write, bits=2, codebook=cb, codes=codes)})
        return written | write

    a = rng.random(side) < 0.5
    written = add(a, np.zeros(side, bool))
    m1 = (a & (rng.random(side) > 0.2)) | (rng.random(side) < 0.01)
    written = add(m1, written)
    m2 = a | m1 | (rng.random(side) < 0.01)
    written = add(m2, written)
    add(rng.random(side) < 0.5, written)
    return pm


def test_stored_masks_pick_the_smallest_reference_and_decode():
    from bitsub.codecs.maskcodec import decode_mask, encode_mask

    pm = reuse_model()
    refs = [pm.mask_reference(t, "fc") for t in pm.tasks]
    assert refs[:3] == [0, 1, 2]
    for t in pm.tasks:
        mask = pm.mask(t, "fc")
        earlier = [pm.mask(u, "fc") for u in pm.bank_tasks(pm.bank(t)) if u < t]
        sizes = {0: len(encode_mask(mask))}
        if earlier:
            sizes[1] = len(encode_mask(mask, context=earlier[-1]))
            sizes[2] = len(encode_mask(mask, context=np.logical_or.reduce(earlier)))
        best = min(sizes, key=lambda r: (sizes[r], r))
        assert pm.mask_reference(t, "fc") == best
        assert len(pm.encoded_mask(t, "fc")) == sizes[best]
        assert len(pm.encoded_mask(t, "fc", alone=True)) == sizes[0]
        ctx = pm.mask_context(t, "fc")
        assert (ctx is None) == (best == 0)
        np.testing.assert_array_equal(decode_mask(pm.encoded_mask(t, "fc"), context=ctx), mask)
        assert pm.mask_reference(t, "idle") == 0 and pm.mask_context(t, "idle") is None
    with pytest.raises(TypeError, match="alone"):
        pm.encoded_mask(0, "fc", alone=1)


def test_a_mask_reusing_its_predecessor_is_much_smaller():
    pm = reuse_model()
    stored, alone = len(pm.encoded_mask(1, "fc")), len(pm.encoded_mask(1, "fc", alone=True))
    # a fifth of 1536 positions dropped + 1% new: ~0.7 bits per context-1 position vs ~1
    # bit per position alone; the union of task 2 (1% new) costs far less still
    assert stored < 0.6 * alone
    assert len(pm.encoded_mask(2, "fc")) < 0.25 * len(pm.encoded_mask(2, "fc", alone=True))


# ------------------------------------------------------------------------ what a file stores


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n_tasks=st.integers(1, 6), shapes=SHAPES)
def test_codes_and_write_masks_match_naive(seed, word_bits, prefix_bits, n_tasks, shapes):
    """codes() and write_mask() against a bit-string walk of the words; write_coding() decodes
    back to the write mask from the task's mask and its bank's earlier writes."""
    from bitsub.codecs.maskcodec import decode_mask
    from tests.naive import naive_codes_of

    pm = run_random_sequence(seed, word_bits, prefix_bits, n_tasks, shapes)[0]
    for t in pm.tasks:
        k = pm.bank(t)
        earlier = [u for u in pm.bank_tasks(k) if u < t]
        for name in pm.layers:
            bits_of_prefix = [0] + [pm.bits(u, name) for u in pm.bank_tasks(k)]
            write, codes = naive_codes_of(pm.words(name, k), word_bits, prefix_bits,
                                          bits_of_prefix, pm.prefix(t))
            assert np.array_equal(pm.write_mask(t, name).reshape(-1), write)
            assert np.array_equal(pm.codes(t, name), np.array(codes, np.uint32))
            assert pm.fields(t, name) == len(codes)
            mask = pm.mask(t, name).reshape(-1)
            new = mask.copy()
            for u in earlier:
                new &= ~pm.write_mask(u, name).reshape(-1)
            ref, data = pm.write_coding(t, name)
            got = {0: new, 1: mask}.get(ref)
            if ref == 2:
                got = new ^ decode_mask(data).reshape(-1)  # coded in the layer shape
            else:
                assert data == b""
            assert np.array_equal(got, write)


def test_stored_values_must_be_finite_and_below_2_pow_60():
    pm = PackedModel(word_bits=64, prefix_bits=2)
    pm.add_layer("fc", (2, 2))
    m = np.ones((2, 2), bool)
    for bad in (np.inf, np.nan, 3e38, -2.0**61):
        with pytest.raises(ValueError, match="finite value of magnitude <= 2"):
            pm.add_task({"fc": TaskLayer(m, m, codebook=[0.0, bad], codes=np.zeros((2, 2), int))})
        with pytest.raises(ValueError, match="finite value of magnitude <= 2"):
            pm.add_task({"fc": TaskLayer(m, m, values=np.full((2, 2), bad), bits=32)})
    assert pm.tasks == []
    pm.add_task({"fc": TaskLayer(m, m, values=np.full((2, 2), 2.0**60), bits=32)})


def test_words_hash_inputs():
    from tests.naive import naive_words_hash

    w = np.arange(7, dtype=np.uint64) << np.uint64(40)
    ro = w.view()
    ro.flags.writeable = False
    words_hash = bitsub.model.packed.words_hash
    assert words_hash(ro) == words_hash(w) == naive_words_hash(w)
    assert bitsub.model.packed.words_hash(np.zeros(0, np.uint32)) == 0
    with pytest.raises(TypeError, match="uint32 or uint64"):
        bitsub.model.packed.words_hash(np.zeros(3, np.int32))


def test_words_hash_split_over_threads_equals_the_naive_sum():
    # above PARALLEL_MIN the hash is summed over ranges run on the engine threads
    from bitsub.model.readrule import PARALLEL_MIN
    from tests.naive import naive_words_hash

    rng = np.random.default_rng(3)
    for dtype, n in ((np.uint32, PARALLEL_MIN + 7), (np.uint64, 2 * PARALLEL_MIN + 1)):
        w = rng.integers(0, np.iinfo(dtype).max, n, dtype=dtype, endpoint=True)
        assert bitsub.model.packed.words_hash(w) == naive_words_hash(w)

"""HDF5 storage: round trips, atomic save, and refusal of truncated/corrupted/newer files."""

from __future__ import annotations

import os
import zlib

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitsub
import bitsub.storage.hdf5 as storage
from bitsub import FormatError, PackedModel, TaskLayer, atomic
from tests.test_packed import assert_same_bits, reuse_model, run_random_sequence

NETWORK = [{"op": "linear", "layer": "fc1", "bias": None}, {"op": "relu"},
           {"op": "head", "weight": "head.weight", "bias": None}]


def small_model(word_bits=32, seed=3):
    pm, frozen, _ = run_random_sequence(seed, word_bits, 2, 7, {"fc1": (4, 3),
                                                                "conv": (2, 1, 2, 2)})
    pm.set_network(NETWORK)
    return pm, frozen


def word_regions(path):
    """(offset, size) of the bytes of every word dataset, as the seal lists them."""
    regions = []

    def visit(name, obj):
        if str(obj.attrs.get("encoding-type", "")).startswith("bitsub.words"):
            regions.append((obj.id.get_offset(), obj.id.get_storage_size()))

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError:  # not HDF5 at all: no regions
        pass
    return sorted(regions)


def index_region(path):
    """(offset, size) of the bytes of the index dataset."""
    with h5py.File(path, "r") as f:
        ds = f[storage.INDEX]
        return ds.id.get_offset(), ds.id.get_storage_size()


def reseal(path):
    """Rewrite the index from the objects as h5py sees them and recompute the file-level seal,
    so that only the inner (per-object) checks can object."""
    with h5py.File(path, "r+") as f:
        storage._write_index(f)
    regions = word_regions(path)
    index = index_region(path)
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    storage._seal_image(data, regions, index)
    with open(path, "wb") as fh:
        fh.write(data)


def assert_same_model(a, b, frozen=None):
    assert a == b
    for t in a.tasks:
        for name in a.layers:
            assert_same_bits(b.weights(t, name), a.weights(t, name))
            if frozen is not None:
                assert_same_bits(b.weights(t, name), frozen[(t, name)])
        pa, pb = a.private(t), b.private(t)
        assert sorted(pa) == sorted(pb)
        for k in pa:
            assert pa[k].tobytes() == pb[k].tobytes()
    assert a.network == b.network
    assert a.capacity().bits == b.capacity().bits


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), word_bits=st.sampled_from([32, 64]),
       prefix_bits=st.integers(1, 4), n_tasks=st.integers(0, 9))
def test_round_trip_is_bit_exact(tmp_path, seed, word_bits, prefix_bits, n_tasks):
    pm, frozen, _ = run_random_sequence(seed, word_bits, prefix_bits, n_tasks,
                                        {"a": (3, 5), "b": (2, 2, 2, 1)})
    path = tmp_path / "m.h5"
    pm.save(path)
    back = bitsub.load(path)
    assert_same_model(pm, back, frozen)
    # a loaded model keeps growing exactly like the original
    m = np.ones((3, 5), bool)
    tl = {"a": TaskLayer(m, m, bits=1, codebook=[0.25, 0.75], codes=np.ones((3, 5), int))}
    assert pm.add_task(tl, bank="new") == back.add_task(tl, bank="new")
    assert pm == back


def test_layout_is_readable_with_plain_h5py(tmp_path):
    pm, _ = small_model(word_bits=64)
    path = tmp_path / "m.h5"
    pm.save(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["encoding-type"] == "bitsub.packed-model"
        assert f.attrs["encoding-version"] == storage.FORMAT_VERSION
        assert f.attrs["word_bits"] == 64
        for i, name in enumerate(pm.layers):
            g = f[f"layers/{i}"]
            assert g.attrs["name"] == name
            assert tuple(g.attrs["shape"]) == pm.shape(name)
            for k in range(pm.banks):
                pairs = g[f"bank_{k}"][()]
                assert pairs.dtype == np.uint32 and pairs.shape == (pm.words(name, k).size, 2)
                words = (pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1]
                np.testing.assert_array_equal(words, pm.words(name, k))
        for t in pm.tasks:
            g = f[f"tasks/{t}"]
            assert g.attrs["bank"] == pm.bank(t) and g.attrs["prefix"] == pm.prefix(t)
            assert g["bits"][()].tolist() == [pm.bits(t, n) for n in pm.layers]
            refs = g["mask_refs"][()]
            assert refs.tolist() == [pm.mask_reference(t, n) for n in pm.layers]
            for i, name in enumerate(pm.layers):
                mask = bitsub.codecs.maskcodec.decode_mask(g[f"masks/{i}"][()].tobytes(),
                                                    context=pm.mask_context(t, name))
                np.testing.assert_array_equal(mask, pm.mask(t, name))

        def visit(path, obj):
            assert "encoding-type" in obj.attrs and "encoding-version" in obj.attrs, path
            assert "crc32" in obj.attrs, path

        f.visititems(visit)
    assert path.read_bytes()[:8] == storage.MAGIC


def test_mask_references_round_trip(tmp_path):
    pm = reuse_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    back = bitsub.load(path)
    assert_same_model(pm, back)
    refs = [[pm.mask_reference(t, n) for n in pm.layers] for t in pm.tasks]
    assert {r for row in refs for r in row} == {0, 1, 2}
    assert [[back.mask_reference(t, n) for n in pm.layers] for t in pm.tasks] == refs
    for t in pm.tasks:
        for n in pm.layers:
            assert back.encoded_mask(t, n) == pm.encoded_mask(t, n)
            assert back.encoded_mask(t, n, alone=True) == pm.encoded_mask(t, n, alone=True)
    assert back.capacity() == pm.capacity()
    # the loaded model codes the masks of new tasks the same way
    m = pm.mask(1, "fc")
    tl = {"fc": TaskLayer(m, np.zeros_like(m))}
    assert pm.add_task(tl) == back.add_task(tl) == 4
    assert back.mask_reference(4, "fc") == pm.mask_reference(4, "fc") != 0
    assert back.encoded_mask(4, "fc") == pm.encoded_mask(4, "fc")


@pytest.mark.parametrize("task, refs, match", [
    (0, [1, 0], "task 0 is the first task of bank 0"),
    (1, [3, 0], "unknown mask reference 3"),
    (1, [0, 0], "encoded with a context"),
    (2, [1, 0], "context differs"),
    (3, [2, 0], "encoded without a context"),
])
def test_inconsistent_mask_references_are_refused(tmp_path, task, refs, match):
    pm = reuse_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    rewrite(path, f"tasks/{task}/mask_refs", np.array(refs, "|u1"))
    with pytest.raises(FormatError, match=match):
        bitsub.load(path)


def test_values_path_quantizes_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    pm = PackedModel(word_bits=32, prefix_bits=3)
    pm.add_layer("fc1", (16, 8))
    vals = rng.standard_normal((16, 8))
    m = np.ones((16, 8), bool)
    t = pm.add_task({"fc1": TaskLayer(m, m, values=vals, bits=3)},
                    private={"head.weight": rng.standard_normal((4, 8))})
    cb = pm.codebook(t, "fc1")
    assert cb.dtype == np.float32 and cb.size == 8 and (np.diff(cb) >= 0).all()
    w = pm.weights(t, "fc1")
    # every weight is its nearest centroid (1-D k-means assignment)
    nearest = cb[np.abs(vals.astype(np.float32)[..., None] - cb).argmin(-1)]
    np.testing.assert_allclose(np.abs(w - vals), np.abs(nearest - vals), atol=1e-6)
    pm.save(tmp_path / "m.h5")
    assert_same_model(pm, bitsub.load(tmp_path / "m.h5"))


def test_save_overwrites_atomically_and_cleans_up(tmp_path, monkeypatch):
    pm, frozen = small_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    before = path.read_bytes()
    bigger = small_model(seed=11)[0]

    calls = {"n": 0}
    real = storage._dataset

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "_dataset", failing)
    with pytest.raises(OSError, match="disk on fire"):
        bigger.save(path)
    assert path.read_bytes() == before  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]  # no temporary left behind
    monkeypatch.setattr(storage, "_dataset", real)

    def no_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(storage.os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        bigger.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]
    monkeypatch.undo()
    assert_same_model(pm, bitsub.load(path), frozen)
    bigger.save(path)
    assert_same_model(bigger, bitsub.load(path))


def test_save_to_new_file_that_fails_leaves_nothing(tmp_path, monkeypatch):
    pm, _ = small_model()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "_write_h5", boom)
    with pytest.raises(KeyboardInterrupt):
        pm.save(tmp_path / "new.h5")
    assert list(tmp_path.iterdir()) == []


def corrupt_cases(data, n, seed):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        kind = rng.integers(0, 4)
        if kind == 0:  # truncation
            yield bytes(data[: int(rng.integers(0, len(data)))])
        elif kind == 1:  # one bit flipped
            b = bytearray(data)
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
            yield bytes(b)
        elif kind == 2:  # a few random bytes overwritten
            b = bytearray(data)
            for i in rng.integers(0, len(b), int(rng.integers(1, 9))):
                b[int(i)] = int(rng.integers(0, 256))
            yield bytes(b)
        else:  # bytes appended or a block zeroed
            b = bytearray(data)
            if rng.random() < 0.5:
                b += bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
            else:
                i = int(rng.integers(0, len(b)))
                m = min(int(rng.integers(1, 256)), len(b) - i)
                b[i : i + m] = bytes(m)
            yield bytes(b)


def check_corruptions(tmp_path, n, seed):
    pm, frozen = small_model(word_bits=64 if seed % 2 else 32)
    path = tmp_path / "m.h5"
    pm.save(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.h5"
    refused = 0
    for case in corrupt_cases(data, n, seed):
        bad.write_bytes(case)
        changed = case != data
        try:
            back = bitsub.load(bad)
        except FormatError as exc:
            assert str(exc)
            refused += 1
            continue
        assert not changed
        assert_same_model(pm, back, frozen)
    return refused


def test_1000_random_corruptions_refused_or_identical(tmp_path):
    # a few seconds: the seal (checked before HDF5 parses anything) refuses nearly every case
    refused = check_corruptions(tmp_path, 500, seed=7)
    refused += check_corruptions(tmp_path, 500, seed=8)
    assert refused >= 900  # the rest left the bytes as they were (e.g. zeros over zeros)


def dataset_regions(path):
    """(HDF5 path, file offset, size) of every dataset stored contiguously in the file."""
    regions = []

    def visit(name, obj):
        # (the index is rewritten by reseal: its bytes are covered by the seal alone)
        if (isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None
                and name != storage.INDEX):
            size = obj.id.get_storage_size()
            if size:
                regions.append(("/" + name, obj.id.get_offset(), size))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return regions


def test_corrupted_datasets_behind_a_recomputed_seal_are_named(tmp_path):
    # With the seal recomputed, HDF5 parses the damaged bytes; the per-dataset checksums must
    # refuse any change to a dataset's stored bytes and name the dataset. (Random damage to
    # HDF5's own metadata behind a valid seal can crash libhdf5 itself: the seal is what keeps
    # such bytes away from it.)
    rng = np.random.default_rng(5)
    for word_bits in (32, 64):
        pm, _ = small_model(word_bits=word_bits)
        path = tmp_path / "m.h5"
        pm.save(path)
        data = path.read_bytes()
        regions = dataset_regions(path)
        assert any("bank_" in r[0] for r in regions)
        bad = tmp_path / "bad.h5"
        for _ in range(60):
            name, offset, size = regions[int(rng.integers(0, len(regions)))]
            b = bytearray(data)
            i = offset + int(rng.integers(0, size))
            b[i] ^= 1 << int(rng.integers(0, 8))
            bad.write_bytes(b)
            reseal(bad)
            with pytest.raises(FormatError, match=f"{name}: checksum mismatch"):
                bitsub.load(bad)


def test_dataset_checksum_names_the_dataset(tmp_path):
    pm, _ = small_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    with h5py.File(path, "r+") as f:
        ds = f["layers/0/bank_0"]
        w = ds[()]
        w[0] ^= 1
        ds[...] = w
    reseal(path)
    with pytest.raises(FormatError, match=r"/layers/0/bank_0: checksum mismatch"):
        bitsub.load(path)


def test_attribute_change_is_caught(tmp_path):
    pm, _ = small_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    with h5py.File(path, "r+") as f:
        f["tasks/1"].attrs["bank"] = 0 if pm.bank(1) else 1
    reseal(path)
    with pytest.raises(FormatError, match=r"/tasks/1: checksum mismatch"):
        bitsub.load(path)


@pytest.mark.parametrize("delta, match", [(1, "is newer"), (-1, "is not supported")])
def test_other_versions_are_refused(tmp_path, delta, match):
    pm, _ = small_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    version = storage.FORMAT_VERSION + delta
    data = bytearray(path.read_bytes())
    fields = list(storage._HEAD.unpack_from(data))
    fields[1] = version
    end = storage._HEAD.size + fields[5] * storage._REGION.size
    head = storage._HEAD.pack(*fields) + bytes(data[storage._HEAD.size : end])
    data[: end + 4] = head + storage._HEAD_CRC.pack(zlib.crc32(head))
    path.write_bytes(data)
    with pytest.raises(FormatError, match=f"format version {version} {match}"):
        bitsub.load(path)

    pm.save(path)
    with h5py.File(path, "r+") as f:
        g = f["tasks/0"]
        g.attrs["encoding-version"] = version
        g.attrs["crc32"] = np.uint32(storage._object_crc(g))
    reseal(path)
    with pytest.raises(FormatError, match=f"/tasks/0: encoding-version {version} {match}"):
        bitsub.load(path)


def test_truncated_garbage_and_empty_files(tmp_path):
    pm, _ = small_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data[:-1])
    with pytest.raises(FormatError, match="truncated"):
        bitsub.load(bad)
    bad.write_bytes(data + b"\0")
    with pytest.raises(FormatError, match="after the end"):
        bitsub.load(bad)
    bad.write_bytes(b"")
    with pytest.raises(FormatError, match="truncated"):
        bitsub.load(bad)
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(FormatError, match="not a bitsub file"):
        bitsub.load(bad)
    # a plain HDF5 file (not ours)
    with h5py.File(bad, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(FormatError):
        bitsub.load(bad)
    # our magic and a valid seal over bytes that are not HDF5, with an index in or out of them
    junk = bytearray(storage.USERBLOCK) + bytearray(b"\xff" * 2048)
    storage._seal_image(junk, [], (storage.USERBLOCK + 8, 100))
    bad.write_bytes(junk)
    with pytest.raises(FormatError, match="index: not JSON"):
        bitsub.load(bad)
    for index in [(storage.USERBLOCK + 2000, 100), (0, 10), (storage.USERBLOCK, 0)]:
        storage._seal_image(junk, [], index)
        bad.write_bytes(junk)
        with pytest.raises(FormatError, match="header index"):
            bitsub.load(bad)
    table = f'{{"format": {storage.FORMAT_VERSION}, "objects": {{"/": 1}}}}'.encode()
    junk[storage.USERBLOCK : storage.USERBLOCK + 40] = table.ljust(40)
    storage._seal_image(junk, [], (storage.USERBLOCK, 40))
    bad.write_bytes(junk)
    with pytest.raises(FormatError, match="/: missing"):
        bitsub.load(bad)
    with pytest.raises(FileNotFoundError):
        bitsub.load(tmp_path / "missing.h5")


def test_save_validation(tmp_path):
    with pytest.raises(TypeError, match="PackedModel"):
        storage.save("not a model", tmp_path / "x.h5")
    with pytest.raises(IsADirectoryError):
        PackedModel().save(tmp_path)
    empty = PackedModel(word_bits=64, prefix_bits=5)
    empty.save(tmp_path / "e.h5")
    assert_same_model(empty, bitsub.load(tmp_path / "e.h5"))


def rewrite(path, dspath, arr):
    """Replace a dataset (keeping its attributes) with valid checksums, and reseal the file."""
    arr = np.ascontiguousarray(arr)
    with h5py.File(path, "r+") as f:
        attrs = {k: v for k, v in f[dspath].attrs.items() if k != "crc32"}
        del f[dspath]
        ds = f.create_dataset(dspath, data=arr)
        words = str(attrs["encoding-type"]).startswith("bitsub.words")
        if words:
            attrs["hash"] = np.uint64(bitsub.model.packed.words_hash(arr))
        for k, v in attrs.items():
            ds.attrs[k] = v
        ds.attrs["crc32"] = np.uint32(storage._object_crc(ds, b"" if words else arr.reshape(-1)))
    reseal(path)


def structural_model():
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (2, 3))
    m = np.ones((2, 3), bool)
    one = np.zeros((2, 3), bool)
    one[0, 0] = True
    pm.add_task({"fc": TaskLayer(one, one, bits=2, codebook=[1.0, 2.0, 3.0], codes=[2])})
    pm.add_task({"fc": TaskLayer(m, ~one, bits=1, codebook=[5.0, 6.0],
                                 codes=np.ones((2, 3), int))})
    return pm


@pytest.mark.parametrize("case", ["unknown-prefix", "code-outside-codebook", "trailing-bits",
                                  "decreasing-prefixes", "field-count", "orphan", "bad-bits",
                                  "codebook-too-big", "mask-shape", "bank-attr"])
def test_structural_checks_behind_valid_checksums(tmp_path, case):
    pm = structural_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    words = pm.words("fc", 0).copy()
    top = 30  # prefix of the first field sits at bits 31..30
    if case == "unknown-prefix":
        words[1] = np.uint32(3) << top
        rewrite(path, "layers/0/bank_0", words)
        match = "word 1 holds malformed fields"
    elif case == "code-outside-codebook":
        words[0] = (np.uint32(1) << top) | (np.uint32(3) << 28)  # code 3, codebook of 3
        rewrite(path, "layers/0/bank_0", words)
        match = "word 0 holds malformed fields"
    elif case == "trailing-bits":
        words[2] |= np.uint32(1)
        rewrite(path, "layers/0/bank_0", words)
        match = "word 2 holds malformed fields"
    elif case == "decreasing-prefixes":
        words[3] = (np.uint32(2) << top) | (np.uint32(1) << 29) | (np.uint32(1) << 27)
        rewrite(path, "layers/0/bank_0", words)
        match = "word 3 holds malformed fields"
    elif case == "field-count":
        rewrite(path, "tasks/1/fields", np.array([4], "<i8"))
        match = "task 1 has 5 fields"
    elif case == "orphan":
        rewrite(path, "tasks/0/masks/0",
                np.frombuffer(bitsub.encode_mask(np.ones((2, 3), bool)), np.uint8))
        match = "task 0 uses 5 positions"
    elif case == "bad-bits":
        rewrite(path, "tasks/0/bits", np.array([17], "<i4"))
        match = "bit-width 17"
    elif case == "codebook-too-big":
        rewrite(path, "tasks/1/codebooks/0", np.arange(3, dtype="<f4"))
        match = "3 centroids for 1-bit codes"
    elif case == "mask-shape":
        rewrite(path, "tasks/1/masks/0",
                np.frombuffer(bitsub.encode_mask(np.ones((3, 2), bool)), np.uint8))
        match = "mask of shape"
    else:
        with h5py.File(path, "r+") as f:
            g = f["tasks/1"]
            g.attrs["prefix"] = 1
            g.attrs["crc32"] = np.uint32(storage._object_crc(g))
        reseal(path)
        match = "prefix 1 in bank 0, expected 2"
    with pytest.raises(FormatError, match=match):
        bitsub.load(path)


def test_crash_while_writing_the_file_keeps_the_previous_one(tmp_path, monkeypatch):
    pm, frozen = small_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    before = path.read_bytes()
    real_open = open

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data)[: len(data) // 2])
            self.fh.flush()
            raise OSError("no space left on device")

    def half_open(*a, **k):
        return HalfWriter(real_open(*a, **k))

    monkeypatch.setattr(atomic, "open", half_open, raising=False)
    with pytest.raises(OSError, match="no space"):
        small_model(seed=12)[0].save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]

    def no_fsync(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(atomic.os, "fsync", no_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        small_model(seed=12)[0].save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]
    assert_same_model(pm, bitsub.load(path), frozen)


def test_saved_file_mode_follows_umask_and_late_layers_round_trip(tmp_path):
    pm = PackedModel()
    pm.add_layer("a", (2, 2))
    m = np.ones((2, 2), bool)
    pm.add_task({"a": TaskLayer(m, m, codebook=[1.0, 2.0], codes=np.eye(2, dtype=int))})
    pm.add_layer("late", (1, 3))  # task 0 has no entry for it
    pm.add_task({"late": TaskLayer(np.ones((1, 3), bool), np.ones((1, 3), bool),
                                   codebook=[4.0], codes=[[0, 0, 0]])})
    path = tmp_path / "m.h5"
    pm.save(path)
    umask = os.umask(0o22)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert_same_model(pm, bitsub.load(path))


def test_constant_masks_and_odd_sizes_round_trip(tmp_path):
    pm = PackedModel(word_bits=32, prefix_bits=2)
    for name, shape in (("a", (3, 5)), ("b", (2, 4)), ("c", (1, 1))):
        pm.add_layer(name, shape)
    ones = {n: np.ones(pm.shape(n), bool) for n in pm.layers}
    pm.add_task({n: TaskLayer(m, m, codebook=[1.0, 2.0], codes=np.ones(m.shape, int))
                 for n, m in ones.items()})
    pm.add_task({"a": TaskLayer(ones["a"], np.zeros((3, 5), bool))})  # b, c: empty masks
    path = tmp_path / "m.h5"
    pm.save(path)
    assert_same_model(pm, bitsub.load(path))


def test_word_arrays_are_checked_by_their_hash_not_the_seal(tmp_path):
    pm = reuse_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    data = path.read_bytes()
    regions = word_regions(path)
    assert storage._HEAD.unpack_from(data)[5] == len(regions) == 2
    assert [storage._REGION.unpack_from(data, storage._HEAD.size + 16 * j)
            for j in range(2)] == regions
    off, size = next(r for r in regions if r[1] == 4 * 48 * 64)  # layers/0/bank_0
    index = index_region(path)
    bad = bytearray(data)
    bad[off + size // 2] ^= 0x10  # the seal does not cover these bytes: the hash does
    path.write_bytes(bad)
    with pytest.raises(FormatError, match=r"/layers/0/bank_0: checksum mismatch"):
        bitsub.load(path)
    # a seal whose region is not the word dataset's bytes is refused before they are used
    head = bytearray(data)
    storage._seal_image(head, sorted([(off + 4, size - 4)]
                                     + [r for r in regions if r[0] != off]), index)
    path.write_bytes(head)
    with pytest.raises(FormatError, match="not a region listed in the file's seal"):
        bitsub.load(path)
    storage._seal_image(head, [r for r in regions if r[0] != off], index)
    path.write_bytes(head)
    with pytest.raises(FormatError, match="not a region listed"):
        bitsub.load(path)
    storage._seal_image(head, sorted(regions + [(off + size + 8192, 8)]), index)
    path.write_bytes(head)
    with pytest.raises(FormatError, match="outside the file|regions, the file has"):
        bitsub.load(path)


def test_many_word_arrays_grow_the_user_block(tmp_path):
    pm = PackedModel(word_bits=64, prefix_bits=1)
    for i in range(40):
        pm.add_layer(f"l{i}", (1, 2))
    m = np.ones((1, 2), bool)
    tl = {f"l{i}": TaskLayer(m, m, codebook=[float(i)], codes=[[0, 0]]) for i in range(40)}
    pm.add_task(tl)
    pm.add_task(tl)  # a second bank: 80 word arrays
    assert pm.banks == 2
    path = tmp_path / "m.h5"
    pm.save(path)
    data = path.read_bytes()
    assert storage._HEAD.unpack_from(data)[4:6] == (2048, 80)
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 2048
    assert_same_model(pm, bitsub.load(path))
    assert check_corruptions_of(tmp_path, pm, 60, seed=3) >= 50


def check_corruptions_of(tmp_path, pm, n, seed):
    path = tmp_path / "c.h5"
    pm.save(path)
    data = path.read_bytes()
    refused = 0
    for case in corrupt_cases(data, n, seed):
        path.write_bytes(case)
        try:
            back = bitsub.load(path)
        except FormatError:
            refused += 1
            continue
        assert case == data
        assert_same_model(pm, back)
    return refused


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), ctx_density=st.sampled_from([0.0, 0.5, 1.0]))
def test_packed_mask_decode_matches_decode_mask(seed, n, density, ctx_density):
    rng = np.random.default_rng(seed)
    shape = (1, n) if n % 2 else (n // 2 or 1, 2 if n else 0)
    mask = rng.random(shape) < density
    ctx = rng.random(shape) < ctx_density
    for context in (None, ctx):
        enc = bitsub.encode_mask(mask, context=context)
        want = np.packbits(bitsub.decode_mask(enc, context=context).reshape(-1))
        np.testing.assert_array_equal(storage._packed_mask(enc, context, shape), want)
        np.testing.assert_array_equal(want, np.packbits(mask.reshape(-1)))
    with pytest.raises(FormatError):
        storage._packed_mask(bitsub.encode_mask(mask, context=ctx), ~ctx if n else None, shape)


def test_words_are_checked_piece_by_piece_as_read(tmp_path, monkeypatch):
    # load checks each piece of a word array once the reader thread has read it; with small
    # pieces a word array spans many, and damage or a malformed word in a late one is found
    monkeypatch.setattr(storage, "_PIECE", 1024)
    pm = reuse_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    assert_same_model(pm, bitsub.load(path))
    off, size = next(r for r in word_regions(path) if r[1] == 4 * 48 * 64)  # layers/0/bank_0
    assert size > 8 * storage._PIECE
    data = path.read_bytes()
    for at in (off + 5, off + size // 2, off + size - 3):
        bad = bytearray(data)
        bad[at] ^= 0x10
        path.write_bytes(bad)
        with pytest.raises(FormatError, match=r"/layers/0/bank_0: checksum mismatch"):
            bitsub.load(path)
    path.write_bytes(data)
    words = pm.words("fc", 0).copy()
    words[-3] |= np.uint32(1)  # 4 fields of 3 + 2 bits never reach bit 0
    rewrite(path, "layers/0/bank_0", words)
    with pytest.raises(FormatError, match=f"word {words.size - 3} holds malformed fields"):
        bitsub.load(path)
    assert check_corruptions_of(tmp_path, pm, 60, seed=4) >= 50


def test_check_bank_from_a_start_adds_up_to_one_pass():
    # _check_words checks a word array in pieces (start, end): the counts add up and the
    # hashes sum to those of one pass, on the threaded path too
    from bitsub.model.packed import PARALLEL_MIN, _check_bank, _check_serial

    pm = reuse_model(side=(2 * PARALLEL_MIN // 256 + 3, 256), seed=3)
    words = np.array(pm.words("fc", 0))
    n = words.size
    size = 8
    bits = np.zeros(size, np.int64)
    limit = np.zeros(size, np.uint64)
    for j, t in enumerate(pm.bank_tasks(0)):
        bits[j + 1] = pm.bits(t, "fc")
        limit[j + 1] = pm.codebook(t, "fc").size
    masks = np.stack([np.packbits(pm.mask(t, "fc").reshape(-1)) for t in pm.bank_tasks(0)])

    def run(fn, *extra, end=n):
        out = (np.zeros(n, np.uint8), np.zeros(size, np.int64), np.zeros(size, np.int64))
        r = fn(words[:end], 32, 3, 4, bits, limit, masks, *out, *extra)
        return int(r[0]), int(r[1]), out

    bad, h, (used, counts, orphans) = run(_check_serial)
    assert bad == -1 and h == bitsub.model.packed.words_hash(words)
    cuts = [0, 1000, PARALLEL_MIN + 77, n]
    total, got_counts, got_used = 0, np.zeros(size, np.int64), np.zeros(n, np.uint8)
    for lo, hi in zip(cuts, cuts[1:]):
        b, part, (u, c, o) = run(_check_bank, lo, end=hi)
        assert b == -1 and not o.any()
        total = (total + part) % 2**64
        got_counts += c
        got_used[lo:hi] = u[lo:hi]
    assert total == h
    np.testing.assert_array_equal(got_counts, counts)
    np.testing.assert_array_equal(got_used, used)
    words[n - 5] |= np.uint32(1)
    assert run(_check_bank, PARALLEL_MIN)[0] == n - 5

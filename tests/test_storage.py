"""HDF5 storage (format 4): round trips, atomic save, refusal of bad files, file = capacity."""

from __future__ import annotations

import json
import os
import struct
import zlib

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitsub
import bitsub.storage.hdf5 as storage
from bitsub import FormatError, PackedModel, TaskLayer, atomic
from bitsub.storage.masks import decode_packed_mask
from tests.test_packed import assert_same_bits, reuse_model, run_random_sequence

NETWORK = [{"op": "linear", "layer": "fc1", "bias": None}, {"op": "relu"},
           {"op": "head", "weight": "head.weight", "bias": None}]
USERBLOCK = 512
HEAD = struct.Struct("<8sIQIQQ")  # the seal as the module docstring specifies it


def small_model(word_bits=32, seed=3):
    pm, frozen, _ = run_random_sequence(seed, word_bits, 2, 7, {"fc1": (4, 3),
                                                                "conv": (2, 1, 2, 2)})
    pm.set_network(NETWORK)
    return pm, frozen


def reseal(data, index=None, version=4):
    """Recompute the seal of a file image (bytearray) from the documented layout."""
    if index is None:
        index = HEAD.unpack_from(data)[4:6]
    head = HEAD.pack(b"BITSUB\x00\x01", version, len(data), zlib.crc32(data[USERBLOCK:]),
                     *index)
    head += struct.pack("<I", zlib.crc32(head))
    data[:USERBLOCK] = head + bytes(USERBLOCK - len(head))


def read_index(data):
    off, size = HEAD.unpack_from(data)[4:6]
    return json.loads(bytes(data[off : off + size]))


def write_index(data, doc, recompute=True):
    """Append a new index to the image (the old bytes stay) and point the seal at it; with
    ``recompute``, the index's own crc is recomputed too: every checksum is valid."""
    if recompute:
        canon = json.dumps(doc["model"], sort_keys=True, separators=(",", ":")).encode()
        doc["crc"] = zlib.crc32(canon)
    text = json.dumps(doc).encode()
    off = len(data)
    data += text
    reseal(data, (off, len(text)))


def task_payloads(data):
    """Each task's payload bytes, as the index locates them."""
    model = read_index(data)["model"]
    pos = model["payload"][0]
    out = []
    for entry in model["tasks"]:
        out.append(bytes(data[pos : pos + entry["bytes"]]))
        pos += entry["bytes"]
    return out


def set_payload(data, t, blob):
    """Replace task t's payload (any length) with every checksum recomputed."""
    doc = read_index(data)
    model = doc["model"]
    blobs = task_payloads(data)
    blobs[t] = blob
    model["payload"] = [len(data), sum(map(len, blobs))]
    data += b"".join(blobs)
    for entry, b in zip(model["tasks"], blobs):
        entry["bytes"], entry["crc"] = len(b), zlib.crc32(b)
    write_index(data, doc)


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
    size = pm.save(path)
    back = bitsub.load(path)
    assert_same_model(pm, back, frozen)
    for name in pm.layers:  # the rebuilt words are the original words
        for k in range(pm.banks):
            np.testing.assert_array_equal(back.words(name, k), pm.words(name, k))
    assert back.file_bytes == size == path.stat().st_size
    assert back.capacity().payload_bytes == pm.capacity().payload_bytes
    # a loaded model keeps growing exactly like the original
    m = np.ones((3, 5), bool)
    tl = {"a": TaskLayer(m, m, bits=1, codebook=[0.25, 0.75], codes=np.ones((3, 5), int))}
    assert pm.add_task(tl, bank="new") == back.add_task(tl, bank="new")
    assert pm == back and back.file_bytes is None


def test_layout_is_readable_with_plain_h5py(tmp_path):
    """The payload holds, per task and layer, the mask, the write mask where not implied, the
    codes packed at the bit-width (raw float32 values for 32) and the codebook; then the private
    arrays: read here with h5py and the codecs, as the module docstring describes it."""
    pm, _ = small_model(word_bits=64)
    path = tmp_path / "m.h5"
    pm.save(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["encoding-type"] == "bitsub.packed-model"
        assert f.attrs["encoding-version"] == storage.FORMAT_VERSION == 4
        payload = f["payload"][()].tobytes()
        doc = json.loads(f["index"][()].tobytes())
    model = doc["model"]
    assert model["word_bits"] == 64 and model["network"] == NETWORK
    assert [tuple(s) for _, s in model["layers"]] == [pm.shape(n) for n in pm.layers]
    pos = 0
    for t, entry in enumerate(model["tasks"]):
        blob = payload[pos : pos + entry["bytes"]]
        pos += entry["bytes"]
        assert entry["bank"] == pm.bank(t) and zlib.crc32(blob) == entry["crc"]
        at = 0
        for i, name in enumerate(pm.layers):
            bits, n, mref, mlen, wref, wlen, k = entry["layers"][i]
            assert (bits, n, mref, wref) == (pm.bits(t, name), pm.fields(t, name),
                                             pm.mask_reference(t, name),
                                             pm.write_coding(t, name)[0])
            mask = bitsub.decode_mask(blob[at : at + mlen], context=pm.mask_context(t, name))
            np.testing.assert_array_equal(mask, pm.mask(t, name))
            at += mlen + wlen
            if bits == 32:
                vals = np.frombuffer(blob[at : at + 4 * n], "<f4")
                at += 4 * n
                assert_same_bits(vals, pm.weights(t, name)[pm.write_mask(t, name)])
            elif bits:
                nbytes = -(-n * bits // 8)
                codes = bitsub.unpack_bits(np.frombuffer(blob[at : at + nbytes], np.uint8),
                                           bits, n)
                cb = np.frombuffer(blob[at + nbytes : at + nbytes + 4 * k], "<f4")
                at += nbytes + 4 * k
                assert_same_bits(cb[codes], pm.weights(t, name)[pm.write_mask(t, name)])
        for key, shape in entry["private"]:
            size = 4 * int(np.prod(shape))
            assert blob[at : at + size] == pm.private(t)[key].astype("<f4").tobytes()
            at += size
        assert at == len(blob)
    assert pos == len(payload)
    assert path.read_bytes()[:8] == b"BITSUB\x00\x01"


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


@pytest.mark.parametrize("task, ref, match", [
    (0, 1, "first of its bank"),
    (1, 3, "not an integer in 0..2"),
    (1, 0, "encoded with a context"),
    (2, 1, "context differs"),
    (3, 2, "encoded without a context"),
])
def test_inconsistent_mask_references_are_refused(tmp_path, task, ref, match):
    pm = reuse_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    data = bytearray(path.read_bytes())
    doc = read_index(data)
    doc["model"]["tasks"][task]["layers"][0][2] = ref
    write_index(data, doc)
    path.write_bytes(data)
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
    real = storage._task_payload

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "_task_payload", failing)
    with pytest.raises(OSError, match="disk on fire"):
        bigger.save(path)
    assert path.read_bytes() == before  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]  # no temporary left behind
    monkeypatch.setattr(storage, "_task_payload", real)

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


def test_the_same_model_saves_to_the_same_bytes(tmp_path):
    pm = reuse_model()
    pm.save(tmp_path / "a.h5")
    back = bitsub.load(tmp_path / "a.h5")
    back.save(tmp_path / "b.h5")
    pm.save(tmp_path / "c.h5")
    a = (tmp_path / "a.h5").read_bytes()
    assert a == (tmp_path / "b.h5").read_bytes() == (tmp_path / "c.h5").read_bytes()


def test_save_to_new_file_that_fails_leaves_nothing(tmp_path, monkeypatch):
    pm, _ = small_model()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    # interrupted while the payload goes into the temporary file HDF5 has written
    monkeypatch.setattr(storage, "_pwrite_all", boom)
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
    # a few seconds: the seal (checked before anything is parsed) refuses nearly every case
    refused = check_corruptions(tmp_path, 500, seed=7)
    refused += check_corruptions(tmp_path, 500, seed=8)
    assert refused >= 900  # the rest left the bytes as they were (e.g. zeros over zeros)


def test_save_validation(tmp_path):
    with pytest.raises(TypeError, match="PackedModel"):
        storage.save("not a model", tmp_path / "x.h5")
    with pytest.raises(IsADirectoryError):
        PackedModel().save(tmp_path)
    empty = PackedModel(word_bits=64, prefix_bits=5)
    empty.save(tmp_path / "e.h5")
    assert_same_model(empty, bitsub.load(tmp_path / "e.h5"))


def test_crash_while_writing_the_file_keeps_the_previous_one(tmp_path, monkeypatch):
    pm, frozen = small_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    before = path.read_bytes()
    real_pwrite = os.pwrite

    def half_pwrite(fd, data, offset):  # the disk fills up halfway through the payload
        real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
        raise OSError("no space left on device")

    monkeypatch.setattr(storage.os, "pwrite", half_pwrite)
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
        np.testing.assert_array_equal(decode_packed_mask(enc, context, shape), want)
        np.testing.assert_array_equal(want, np.packbits(mask.reshape(-1)))
    with pytest.raises(FormatError):
        decode_packed_mask(bitsub.encode_mask(mask, context=ctx), ~ctx if n else None, shape)


@pytest.mark.parametrize("version, match", [
    (5, "format version 5 is newer than this bitsub supports"),
    (3, "format version 3 is not supported .* to convert it, re-run the bitsub-train command"),
])
def test_other_versions_are_refused(tmp_path, version, match):
    pm, _ = small_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    data = bytearray(path.read_bytes())
    reseal(data, version=version)
    path.write_bytes(data)
    with pytest.raises(FormatError, match=match):
        bitsub.load(path)
    doc = read_index(data)
    doc["format"] = version
    reseal(data)
    write_index(data, doc)
    path.write_bytes(data)
    with pytest.raises(FormatError, match=f"index: format {version}, expected 4"):
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
    with h5py.File(bad, "w") as f:  # a plain HDF5 file (not ours)
        f["x"] = np.arange(3)
    with pytest.raises(FormatError):
        bitsub.load(bad)
    # our magic and a valid seal over bytes that are not JSON, with an index in or out of them
    junk = bytearray(USERBLOCK) + bytearray(b"\xff" * 2048)
    reseal(junk, (USERBLOCK + 8, 100))
    bad.write_bytes(junk)
    with pytest.raises(FormatError, match="index: not JSON"):
        bitsub.load(bad)
    for index in [(USERBLOCK + 2000, 100), (0, 10), (USERBLOCK, 0)]:
        reseal(junk, index)
        bad.write_bytes(junk)
        with pytest.raises(FormatError, match="header index"):
            bitsub.load(bad)
    with pytest.raises(FileNotFoundError):
        bitsub.load(tmp_path / "missing.h5")
    with pytest.raises(IsADirectoryError):
        bitsub.load(tmp_path)


# ------------------------------------------------------------ semantic checks ------
# Files whose every checksum is valid but whose content is inconsistent: written by a save whose
# model accessors lie, or by editing the index and payload and recomputing every checksum.


def lying_save(tmp_path, monkeypatch, pm, method, fake):
    real = getattr(PackedModel, method)

    def lie(self, t, name, *args):
        got = fake(self, t, name, real(self, t, name, *args))
        return real(self, t, name, *args) if got is None else got

    monkeypatch.setattr(PackedModel, method, lie)
    path = tmp_path / "lie.h5"
    pm.save(path)
    monkeypatch.undo()
    return path


def raw_model():
    pm = PackedModel(word_bits=64, prefix_bits=2)
    pm.add_layer("fc", (3, 4))
    m = np.arange(12).reshape(3, 4) % 3 != 0
    pm.add_task({"fc": TaskLayer(m, m, values=np.linspace(-1, 1, 12).reshape(3, 4), bits=32)})
    pm.add_task({"fc": TaskLayer(m, np.zeros_like(m))}, private={"head": np.ones((2, 3))})
    return pm


@pytest.mark.parametrize("method, fake, match", [
    # a write mask reaching outside the task's mask
    ("write_coding", lambda pm, t, n, got: (2, bitsub.encode_mask(~pm.mask(t, n))) if t == 1
     else None, "fields outside the task's mask"),
    # a centroid of 3e38 (or inf): refused, as add_task refuses it
    ("codebook", lambda pm, t, n, got: np.full_like(got, 3e38) if t == 0 else None,
     "finite value of magnitude <= 2"),
    ("codebook", lambda pm, t, n, got: np.full_like(got, np.inf) if t == 0 else None,
     "finite value of magnitude <= 2"),
    # the mask of another layer shape: refused before it is decoded
    ("encoded_mask", lambda pm, t, n, got: bitsub.encode_mask(np.ones((1, 2), bool))
     if t == 0 else None, r"mask of shape \(1, 2\), expected"),
])
def test_inconsistent_content_behind_valid_checksums(tmp_path, monkeypatch, method, fake, match):
    pm = reuse_model() if method != "codebook" else small_model()[0]
    path = lying_save(tmp_path, monkeypatch, pm, method, fake)
    with pytest.raises(FormatError, match=match):
        bitsub.load(path)


def test_codes_outside_the_codebook_are_refused(tmp_path):
    # a codebook smaller than the bit-width allows, and stored codes (all ones: 7) beyond it,
    # behind valid checksums: refused by add_task's check of the packed codes
    pm = PackedModel(word_bits=32, prefix_bits=2)
    pm.add_layer("fc", (3, 4))
    m = np.ones((3, 4), bool)
    pm.add_task({"fc": TaskLayer(m, m, bits=3, codebook=[0.0, 1.0, 2.0],
                                 codes=np.ones((3, 4), int))})
    path = tmp_path / "m.h5"
    pm.save(path)
    data = bytearray(path.read_bytes())
    b, n, _, mlen, _, wlen, k = read_index(data)["model"]["tasks"][0]["layers"][0]
    assert (b, n, k) == (3, 12, 3)
    blob = bytearray(task_payloads(data)[0])
    start = mlen + wlen
    blob[start : start + (n * b + 7) // 8] = b"\xff" * ((n * b + 7) // 8)
    set_payload(data, 0, bytes(blob))
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="codes must be in 0..2"):
        bitsub.load(path)


def test_raw_fields_must_be_finite_and_bounded(tmp_path):
    pm = raw_model()
    path = tmp_path / "m.h5"
    pm.save(path)
    data = bytearray(path.read_bytes())
    blob = bytearray(task_payloads(data)[0])
    enc_len = read_index(data)["model"]["tasks"][0]["layers"][0][3]
    blob[enc_len : enc_len + 4] = np.array([np.inf], "<f4").tobytes()
    set_payload(data, 0, bytes(blob))
    path.write_bytes(data)
    with pytest.raises(FormatError, match="finite value"):
        bitsub.load(path)


PRIVATE_CASES = ("bytes of the payload are not described", "runs past the end",
                 "expected a non-empty string")


@pytest.mark.parametrize("edit, match", [
    # a private array dropped from the list: its bytes are left over, never silently ignored
    (lambda m: m["tasks"][1]["private"].pop(), "bytes of the payload are not described"),
    (lambda m: m["tasks"][1]["private"].append(["extra", [1]]), "runs past the end"),
    (lambda m: m["tasks"][1]["private"][0].__setitem__(0, 7), "expected a non-empty string"),
    # field counts that do not match the write mask
    (lambda m: m["tasks"][0]["layers"][0].__setitem__(1, 5), "the index says 5"),
    # the payload pointing into the seal, or over the index, or off the end
    (lambda m: m["payload"].__setitem__(0, 0), "payload offset"),
    (lambda m: m["payload"].__setitem__(1, 10**9), "payload size"),
    (lambda m: m["tasks"][0].__setitem__("bytes", 10**6), "task 0: bytes"),
    # tasks in a bank that does not exist yet, a bank with a hole, a wrong hash count
    (lambda m: m["tasks"][0].__setitem__("bank", 1), "bank: 1 is not an integer in 0..0"),
    (lambda m: m["hashes"].append([0]), "banks listed, the tasks use"),
    (lambda m: m["hashes"][0].__setitem__(0, m["hashes"][0][0] ^ 1), "do not match"),
    # crafted types where numbers or names are expected: never reach NumPy
    (lambda m: m["layers"][0].__setitem__(1, ["<f4'", 3]), "not an integer"),
    (lambda m: m["layers"][0].__setitem__(1, [3, 2**40]), "not an integer in 0.."),
    (lambda m: m.__setitem__("word_bits", "32"), "word_bits"),
    (lambda m: m.__setitem__("network", "<f4"), "network"),
    (lambda m: m["tasks"][0]["layers"][0].__setitem__(0, 17), "bit-width 17"),
    (lambda m: m["tasks"][0]["layers"][0].__setitem__(6, 1000), "centroids: 1000"),
])
def test_index_edits_behind_valid_checksums_are_refused(tmp_path, edit, match):
    pm = raw_model() if match in PRIVATE_CASES else small_model()[0]
    path = tmp_path / "m.h5"
    pm.save(path)
    data = bytearray(path.read_bytes())
    doc = read_index(data)
    edit(doc["model"])
    write_index(data, doc)
    path.write_bytes(data)
    with pytest.raises(FormatError, match=match):
        bitsub.load(path)


def int_slots(obj, out=None):
    """(container, key) of every integer in a JSON document."""
    out = [] if out is None else out
    for key in (range(len(obj)) if isinstance(obj, list) else list(obj)):
        v = obj[key]
        if isinstance(v, (list, dict)):
            int_slots(v, out)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append((obj, key))
    return out


def structured_mutations(data, n, seed):
    """Mutations of the payload and the index that keep every checksum valid (the seal, each
    task's crc32 and the index's): they reach the decoders. Yields (kind, new image)."""
    rng = np.random.default_rng(seed)
    doc0 = read_index(data)
    blobs0 = task_payloads(data)
    for _ in range(n):
        d = bytearray(data)
        if rng.random() < 0.5 and any(blobs0):  # payload bytes flipped or overwritten
            t = int(rng.choice([t for t, b in enumerate(blobs0) if b]))
            blob = bytearray(blobs0[t])
            for _ in range(int(rng.integers(1, 4))):
                i = int(rng.integers(0, len(blob)))
                blob[i] = blob[i] ^ (1 << int(rng.integers(0, 8))) if rng.random() < 0.7 \
                    else int(rng.integers(0, 256))
            set_payload(d, t, bytes(blob))
            yield "payload", d
        else:  # an integer of the index moved a little
            doc = json.loads(json.dumps(doc0))
            slots = int_slots(doc["model"])
            obj, key = slots[int(rng.integers(0, len(slots)))]
            obj[key] += int(rng.choice([-2, -1, 1, 2, 7, 1 << 20]))
            write_index(d, doc)
            yield "index", d


def check_structured(tmp_path, pm, n, seed):
    path = tmp_path / "s.h5"
    pm.save(path)
    data = bytearray(path.read_bytes())
    outcomes = {"refused": 0, "identical": 0, "other": 0}
    for _, case in structured_mutations(data, n, seed):
        path.write_bytes(case)
        try:
            back = bitsub.load(path)
        except FormatError as exc:
            assert str(exc)
            outcomes["refused"] += 1
            continue
        if back == pm:
            outcomes["identical"] += 1
            continue
        # accepted and different: only values no hash covers (centroids, private arrays) can
        # differ, and the model is consistent: every task decodes as the naive twin reads it
        from tests.naive import naive_packed_weights

        outcomes["other"] += 1
        for t in back.tasks:
            assert back.bank(t) == pm.bank(t) and back.prefix(t) == pm.prefix(t)
            for name in back.layers:
                assert np.array_equal(back.mask(t, name), pm.mask(t, name))
                np.testing.assert_array_equal(back.words(name, back.bank(t)),
                                              pm.words(name, pm.bank(t)))
                assert_same_bits(back.weights(t, name), naive_packed_weights(back, t, name))
    return outcomes


def test_sampled_structured_mutations_refused_identical_or_consistent(tmp_path):
    """A fast sample of the 10,000-case throwaway run (see bench/fuzz_storage.py)."""
    total = {"refused": 0, "identical": 0, "other": 0}
    for seed, pm in enumerate([small_model()[0], reuse_model(), raw_model()]):
        for k, v in check_structured(tmp_path, pm, 60, seed).items():
            total[k] += v
    assert total["refused"] >= 100

r"""One HDF5 file per packed model: atomic save, verified load.

File layout (format version 1)
------------------------------
The first 512 bytes are an HDF5 user block holding a seal::

    magic      b"BITSUB\x00\x01"     8 bytes
    version    uint32 little-endian  format version (1)
    length     uint64                total file length in bytes
    crc32      uint32                zlib.crc32 of bytes [512, length)
    head_crc   uint32                zlib.crc32 of the 24 bytes above
    (zeros up to byte 512)

:func:`load` reads the whole file, checks the seal, and only then lets HDF5 parse the bytes
(from memory), so a truncated or corrupted file is refused before the HDF5 library sees it.
Inside the HDF5 file (readable with plain h5py, no bitsub needed):

- ``/`` attributes: ``word_bits``, ``prefix_bits``, ``n_layers``, ``n_tasks``, ``n_banks``,
  ``network`` (JSON text), ``bitsub_version``.
- ``/layers/<i>`` (i = 0, 1, ... in layer order) with attributes ``name`` and ``shape``, and one
  dataset per bank, ``bank_<k>``: the word array, flat, one word per weight position. 32-bit
  words are ``uint32 (n,)``; 64-bit words are ``uint32 (n, 2)`` pairs ``[high, low]``
  (word = high << 32 | low). Fields inside a word: see :mod:`bitsub.packed`.
- ``/tasks/<t>`` with attributes ``bank`` and ``prefix``, and datasets ``bits`` (int32, one per
  layer; 0 = no field, 32 = raw float32 fields, else code bit-width), ``fields`` (int64, number
  of fields the task wrote per layer), ``codebooks/<i>`` (float32 centroids, for layers with
  1..16-bit codes), ``masks/<i>`` (uint8, the mask Huffman-coded by
  :func:`bitsub.maskcodec.encode_mask`), ``private/<j>`` (float32, attribute ``name``).

Every group and dataset has the attributes ``encoding-type``, ``encoding-version`` and ``crc32``:
zlib.crc32 over the object's other attributes (canonical JSON) and, for a dataset, its raw
little-endian bytes. Load checks every one of them.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bitsub.errors import FormatError
from bitsub.maskcodec import decode_mask
from bitsub.packed import (
    MAX_CODE_BITS,
    MAX_PREFIX_BITS,
    RAW_BITS,
    PackedModel,
    _Bank,
    _count_orphans,
    _scan_words,
    _Task,
    check_network,
)

__all__ = ["FORMAT_VERSION", "load", "save"]

FORMAT_VERSION = 1
USERBLOCK = 512
MAGIC = b"BITSUB\x00\x01"
_HEAD = struct.Struct("<8sIQI")  # magic, version, length, crc32 of the body
_HEAD_CRC = struct.Struct("<I")

ROOT_TYPE = "bitsub.packed-model"


# ------------------------------------------------------------------------ checksums


def _canon(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"array": value.dtype.str, "shape": list(value.shape),
                "data": [_canon(v) for v in value.reshape(-1).tolist()]}
    if isinstance(value, np.generic):
        return _canon(value.item())
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    return value


def _object_crc(obj: h5py.HLObject, data: Any = b"") -> int:
    attrs = {k: _canon(obj.attrs[k]) for k in sorted(obj.attrs) if k != "crc32"}
    text = json.dumps(attrs, sort_keys=True).encode()
    return zlib.crc32(data, zlib.crc32(text))


def _seal(obj: h5py.HLObject, kind: str, data: Any = b"", **attrs: Any) -> None:
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = FORMAT_VERSION
    for k, v in attrs.items():
        obj.attrs[k] = v
    obj.attrs["crc32"] = np.uint32(_object_crc(obj, data))


def _dataset(group: h5py.Group, key: str, arr: np.ndarray, kind: str, **attrs: Any) -> None:
    arr = np.ascontiguousarray(arr)
    ds = group.create_dataset(key, data=arr)
    _seal(ds, kind, arr.reshape(-1), **attrs)


def _group(parent: h5py.Group, key: str, kind: str, **attrs: Any) -> h5py.Group:
    g = parent.create_group(key)
    _seal(g, kind, **attrs)
    return g


# ------------------------------------------------------------------------ save


def _write_h5(pm: PackedModel, target: Any) -> None:
    from bitsub import __version__

    names = pm.layers
    with h5py.File(target, "w", userblock_size=USERBLOCK) as f:
        layers = _group(f, "layers", "bitsub.layers")
        for i, name in enumerate(names):
            g = layers.create_group(str(i))
            for k in range(pm.banks):
                w = pm.words(name, k)
                if pm.word_bits == 32:
                    _dataset(g, f"bank_{k}", w.astype("<u4", copy=False), "bitsub.words-u32")
                else:
                    pairs = np.empty((w.size, 2), "<u4")
                    pairs[:, 0] = w >> np.uint64(32)
                    pairs[:, 1] = w & np.uint64(0xFFFFFFFF)
                    _dataset(g, f"bank_{k}", pairs, "bitsub.words-u64-as-u32-pairs")
            _seal(g, "bitsub.layer", name=name, shape=np.array(pm.shape(name), np.int64))
        tasks = _group(f, "tasks", "bitsub.tasks")
        for t in pm.tasks:
            g = tasks.create_group(str(t))
            bits = np.array([pm.bits(t, n) for n in names], "<i4")
            _dataset(g, "bits", bits, "bitsub.bit-widths")
            _dataset(g, "fields", np.array([pm.fields(t, n) for n in names], "<i8"),
                     "bitsub.field-counts")
            cbs = g.create_group("codebooks")
            masks = g.create_group("masks")
            for i, name in enumerate(names):
                if 1 <= bits[i] <= MAX_CODE_BITS:
                    _dataset(cbs, str(i), pm.codebook(t, name).astype("<f4"), "bitsub.codebook")
                enc = np.frombuffer(pm.encoded_mask(t, name), np.uint8)
                _dataset(masks, str(i), enc, "bitsub.mask-huffman")
            _seal(cbs, "bitsub.codebooks")
            _seal(masks, "bitsub.masks")
            priv = g.create_group("private")
            for j, (key, arr) in enumerate(pm.private(t).items()):
                _dataset(priv, str(j), arr.astype("<f4"), "bitsub.private-float32", name=key)
            _seal(priv, "bitsub.private")
            _seal(g, "bitsub.task", bank=pm.bank(t), prefix=pm.prefix(t))
        _seal(f, ROOT_TYPE, word_bits=pm.word_bits, prefix_bits=pm.prefix_bits,
              n_layers=len(names), n_tasks=len(pm.tasks), n_banks=pm.banks,
              network=json.dumps(pm.network), bitsub_version=__version__)


def _head(body_crc: int, length: int) -> bytes:
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, length, body_crc)
    return head + _HEAD_CRC.pack(zlib.crc32(head))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(pm: PackedModel, path: str | os.PathLike[str]) -> None:
    """Write ``pm`` to one HDF5 file at ``path``, atomically.

    The file is written to a temporary file beside ``path``, flushed and fsync'ed, then renamed
    over ``path`` (and the directory fsync'ed). A crash at any point leaves either the previous
    file or the new one at ``path``, never a partial one.

    Parameters
    ----------
    pm : PackedModel
        The model.
    path : str or path-like
        Target file.
    """
    if not isinstance(pm, PackedModel):
        raise TypeError(f"save needs a PackedModel, got {type(pm).__name__}")
    target = Path(os.fspath(path))
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; give a file path")
    directory = target.parent if str(target.parent) else Path(".")
    # Build the whole file in memory, seal it, then write it out in one go.
    image = io.BytesIO()
    _write_h5(pm, image)
    buf = image.getbuffer()
    buf[: _HEAD.size + _HEAD_CRC.size] = _head(zlib.crc32(buf[USERBLOCK:]), len(buf))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0o22)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        buf.release()
    _fsync_dir(directory)


# ------------------------------------------------------------------------ load


def _check_seal(data: bytes, where: str, header_only: bool = False) -> None:
    need = _HEAD.size + _HEAD_CRC.size
    if len(data) < need:
        raise FormatError(f"{where}: truncated: {len(data)} bytes, not even a bitsub header")
    magic, version, length, body_crc = _HEAD.unpack_from(data)
    (head_crc,) = _HEAD_CRC.unpack_from(data, _HEAD.size)
    if magic != MAGIC:
        raise FormatError(f"{where}: not a bitsub file (bad magic {magic!r})")
    if zlib.crc32(data[: _HEAD.size]) != head_crc:
        raise FormatError(f"{where}: header checksum mismatch: the file is corrupted")
    if len(data) >= USERBLOCK and any(data[need:USERBLOCK]):
        raise FormatError(f"{where}: bytes {need}..{USERBLOCK} of the header are not zero: "
                          "the file is corrupted")
    if version > FORMAT_VERSION:
        raise FormatError(f"{where}: format version {version} is newer than this bitsub "
                          f"supports ({FORMAT_VERSION}); upgrade bitsub")
    if header_only:
        return
    if len(data) < length:
        raise FormatError(f"{where}: truncated: {len(data)} of {length} bytes")
    if len(data) > length:
        raise FormatError(f"{where}: {len(data) - length} unexpected bytes after the end")
    if zlib.crc32(memoryview(data)[USERBLOCK:]) != body_crc:
        raise FormatError(f"{where}: checksum mismatch over bytes {USERBLOCK}..{length}: "
                          "the file is corrupted")


def _open_image(data: bytes) -> h5py.File:
    # HDF5 parses the bytes already verified against the seal, never the file on disk (which
    # could change in between). io.BytesIO shares the bytes without copying them.
    return h5py.File(io.BytesIO(data), "r")


class _Reader:
    """Checked access to the objects of one file; every error names the object."""

    def __init__(self, f: h5py.File) -> None:
        self.f = f

    def obj(self, path: str, kind: str, *, dataset: bool) -> Any:
        try:
            o = self.f[path]
        except KeyError:
            raise FormatError(f"{path}: missing") from None
        if dataset != isinstance(o, h5py.Dataset):
            raise FormatError(f"{path}: expected a {'dataset' if dataset else 'group'}")
        got = o.attrs.get("encoding-type")
        if got != kind:
            raise FormatError(f"{path}: encoding-type is {got!r}, expected {kind!r}")
        ver = o.attrs.get("encoding-version")
        if not isinstance(ver, (int, np.integer)):
            raise FormatError(f"{path}: encoding-version missing or not an integer")
        if ver > FORMAT_VERSION:
            raise FormatError(f"{path}: encoding-version {ver} is newer than this bitsub "
                              f"supports ({FORMAT_VERSION}); upgrade bitsub")
        return o

    def _verify(self, o: Any, path: str, data: Any = b"") -> None:
        stored = o.attrs.get("crc32")
        if not isinstance(stored, (int, np.integer)) or int(stored) != _object_crc(o, data):
            raise FormatError(f"{path}: checksum mismatch: the file is corrupted")

    def group(self, path: str, kind: str) -> h5py.Group:
        g = self.obj(path, kind, dataset=False)
        self._verify(g, path)
        return g

    def array(self, path: str, kind: str, dtype: str, shape: tuple[int, ...] | None = None,
              ndim: int | None = None) -> tuple[np.ndarray, h5py.Dataset]:
        ds = self.obj(path, kind, dataset=True)
        if ds.dtype != np.dtype(dtype):
            raise FormatError(f"{path}: dtype {ds.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and ds.shape != shape:
            raise FormatError(f"{path}: shape {ds.shape}, expected {shape}")
        if ndim is not None and len(ds.shape or ()) != ndim:
            raise FormatError(f"{path}: {len(ds.shape or ())} dimensions, expected {ndim}")
        arr = np.ascontiguousarray(ds[()]).astype(dtype, copy=False)
        self._verify(ds, path, arr.reshape(-1))
        return arr, ds


def _attr_int(o: Any, key: str, path: str, low: int, high: int) -> int:
    v = o.attrs.get(key)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise FormatError(f"{path}: attribute {key!r} missing or not an integer")
    if not low <= int(v) <= high:
        raise FormatError(f"{path}: attribute {key!r} = {int(v)} outside {low}..{high}")
    return int(v)


def _attr_str(o: Any, key: str, path: str) -> str:
    v = o.attrs.get(key)
    if isinstance(v, bytes):
        try:
            v = v.decode()
        except UnicodeDecodeError:
            raise FormatError(f"{path}: attribute {key!r} is not UTF-8 text") from None
    if not isinstance(v, str):
        raise FormatError(f"{path}: attribute {key!r} missing or not text")
    return v


def _build(f: h5py.File) -> PackedModel:
    r = _Reader(f)
    root = r.group("/", ROOT_TYPE)
    word_bits = _attr_int(root, "word_bits", "/", 32, 64)
    if word_bits not in (32, 64):
        raise FormatError(f"/: word_bits = {word_bits}, expected 32 or 64")
    prefix_bits = _attr_int(root, "prefix_bits", "/", 1, MAX_PREFIX_BITS)
    n_layers = _attr_int(root, "n_layers", "/", 0, 1 << 20)
    n_tasks = _attr_int(root, "n_tasks", "/", 0, 1 << 24)
    n_banks = _attr_int(root, "n_banks", "/", 0, n_tasks)
    if (n_banks == 0) != (n_tasks == 0):
        raise FormatError(f"/: {n_tasks} tasks in {n_banks} banks")
    try:
        network = check_network(json.loads(_attr_str(root, "network", "/")))
    except (ValueError, TypeError) as exc:
        raise FormatError(f"/: attribute 'network' is not a valid network: {exc}") from None

    pm = PackedModel(word_bits=word_bits, prefix_bits=prefix_bits)
    pm._network = network
    dtype = pm._dtype
    r.group("/layers", "bitsub.layers")
    names = []
    layer_words: list[list[np.ndarray]] = []
    for i in range(n_layers):
        path = f"/layers/{i}"
        g = r.group(path, "bitsub.layer")
        name = _attr_str(g, "name", path)
        shape_attr = g.attrs.get("shape")
        if not (isinstance(shape_attr, np.ndarray) and shape_attr.dtype.kind in "iu"):
            raise FormatError(f"{path}: attribute 'shape' missing or not integers")
        try:
            pm.add_layer(name, tuple(int(s) for s in shape_attr))
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{path}: bad layer: {exc}") from None
        n = math.prod(pm.shape(name))
        banks = []
        for k in range(n_banks):
            wpath = f"{path}/bank_{k}"
            if word_bits == 32:
                w, _ = r.array(wpath, "bitsub.words-u32", "<u4", shape=(n,))
                banks.append(w.astype(dtype, copy=False))
            else:
                pairs, _ = r.array(wpath, "bitsub.words-u64-as-u32-pairs", "<u4", shape=(n, 2))
                banks.append((pairs[:, 0].astype(np.uint64) << np.uint64(32))
                             | pairs[:, 1].astype(np.uint64))
        names.append(name)
        layer_words.append(banks)

    r.group("/tasks", "bitsub.tasks")
    tasks: list[_Task] = []
    members: list[list[int]] = [[] for _ in range(n_banks)]
    for t in range(n_tasks):
        path = f"/tasks/{t}"
        g = r.group(path, "bitsub.task")
        bank = _attr_int(g, "bank", path, 0, n_banks - 1)
        prefix = _attr_int(g, "prefix", path, 1, (1 << prefix_bits) - 1)
        if prefix != len(members[bank]) + 1:
            raise FormatError(f"{path}: prefix {prefix} in bank {bank}, expected "
                              f"{len(members[bank]) + 1} (tasks take prefixes in order)")
        members[bank].append(t)
        bits, _ = r.array(f"{path}/bits", "bitsub.bit-widths", "<i4", shape=(n_layers,))
        counts, _ = r.array(f"{path}/fields", "bitsub.field-counts", "<i8", shape=(n_layers,))
        r.group(f"{path}/codebooks", "bitsub.codebooks")
        r.group(f"{path}/masks", "bitsub.masks")
        priv_group = r.group(f"{path}/private", "bitsub.private")
        task = _Task(bank=bank, prefix=prefix, bits={}, fields={}, codebooks={}, masks={},
                     private={}, encoded_masks={})
        for i, name in enumerate(names):
            b = int(bits[i])
            shape = pm.shape(name)
            if not (b == 0 or 1 <= b <= MAX_CODE_BITS or b == RAW_BITS):
                raise FormatError(f"{path}/bits: layer {i}: bit-width {b} is not 0, 1..16 or 32")
            if b and prefix_bits + b > word_bits:
                raise FormatError(f"{path}/bits: layer {i}: a {prefix_bits} + {b}-bit field "
                                  f"does not fit a {word_bits}-bit word")
            if not 0 <= counts[i] <= math.prod(shape) or (b == 0) != (counts[i] == 0):
                raise FormatError(f"{path}/fields: layer {i}: {int(counts[i])} fields with "
                                  f"bit-width {b}")
            if 1 <= b <= MAX_CODE_BITS:
                cb, _ = r.array(f"{path}/codebooks/{i}", "bitsub.codebook", "<f4", ndim=1)
                if not 1 <= cb.size <= 1 << b:
                    raise FormatError(f"{path}/codebooks/{i}: {cb.size} centroids for "
                                      f"{b}-bit codes")
                cb.flags.writeable = False
                task.codebooks[name] = cb
            elif b == RAW_BITS:
                task.codebooks[name] = None
            else:
                task.codebooks[name] = np.zeros(0, np.float32)
            enc, _ = r.array(f"{path}/masks/{i}", "bitsub.mask-huffman", "|u1", ndim=1)
            try:
                mask = decode_mask(enc.tobytes())
            except (ValueError, TypeError) as exc:  # FormatError is a ValueError
                raise FormatError(f"{path}/masks/{i}: bad mask encoding: {exc}") from None
            if mask.shape != shape or mask.dtype != np.bool_:
                raise FormatError(f"{path}/masks/{i}: mask of shape {mask.shape}, expected "
                                  f"{shape}")
            task.bits[name] = b
            task.fields[name] = int(counts[i])
            task.masks[name] = np.packbits(mask.reshape(-1))
            task.encoded_masks[name] = enc.tobytes()
        for j in range(len(priv_group)):
            ppath = f"{path}/private/{j}"
            arr, ds = r.array(ppath, "bitsub.private-float32", "<f4")
            key = _attr_str(ds, "name", ppath)
            if not key or key in task.private:
                raise FormatError(f"{ppath}: empty or repeated private name {key!r}")
            arr = arr.astype(np.float32, copy=False)
            arr.flags.writeable = False
            task.private[key] = arr
        tasks.append(task)

    # Words: well-formed fields of known tasks, codes inside codebooks, and every used position
    # of every task has a field of a task <= it (the read rule is total).
    size = 1 << prefix_bits
    layer_used: list[list[np.ndarray]] = [[] for _ in names]
    for i, name in enumerate(names):
        n = math.prod(pm.shape(name))
        for k in range(n_banks):
            words = layer_words[i][k]
            bits_by_prefix = np.zeros(size, np.int64)
            limit = np.zeros(size, np.uint64)
            for j, t in enumerate(members[k]):
                bits_by_prefix[j + 1] = tasks[t].bits[name]
                cb = tasks[t].codebooks[name]
                limit[j + 1] = np.uint64(1 << 32) if cb is None else cb.size
            used = np.zeros(n, np.uint8)
            counts = np.zeros(size, np.int64)
            bad = _scan_words(words, prefix_bits, word_bits, bits_by_prefix, len(members[k]),
                              limit, used, counts)
            where = f"/layers/{i}/bank_{k}"
            if bad >= 0:
                raise FormatError(f"{where}: word {bad} holds malformed fields")
            for j, t in enumerate(members[k]):
                if counts[j + 1] != tasks[t].fields[name]:
                    raise FormatError(f"{where}: task {t} has {int(counts[j + 1])} fields, "
                                      f"/tasks/{t}/fields says {tasks[t].fields[name]}")
                orphans = _count_orphans(tasks[t].masks[name], words, j + 1, prefix_bits,
                                         word_bits)
                if orphans:
                    raise FormatError(f"/tasks/{t}/masks/{i}: task {t} uses {orphans} "
                                      f"positions of layer {name!r} that no task <= {t} of "
                                      f"bank {k} wrote")
            layer_used[i].append(used)
    for k in range(n_banks):
        pm._banks.append(_Bank(
            words={name: layer_words[i][k] for i, name in enumerate(names)},
            used={name: layer_used[i][k] for i, name in enumerate(names)},
            tasks=members[k],
        ))
    pm._tasks = tasks
    return pm


def load(path: str | os.PathLike[str]) -> PackedModel:
    """Read a packed model written by :func:`save`, verifying everything.

    Raises
    ------
    bitsub.FormatError
        If the file is truncated, corrupted (any checksum), malformed, or from a newer format
        version; the message names what is wrong and where.
    OSError
        If the file cannot be read at all (missing, permissions).
    """
    p = Path(os.fspath(path))
    where = str(p)
    with open(p, "rb") as fh:
        data = fh.read(USERBLOCK)
        if len(data) == USERBLOCK:
            _check_seal(data, where, header_only=True)  # refuse a foreign file before reading it
            data += fh.read()
    _check_seal(data, where)
    try:
        with _open_image(data) as f:
            return _build(f)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
            AttributeError, UnicodeDecodeError, OverflowError, struct.error) as exc:
        raise FormatError(f"{where}: unreadable HDF5 content ({type(exc).__name__}: {exc})") \
            from None
